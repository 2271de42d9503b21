/* The job planner: which runs start now, which are missed (pure: both clocks are passed in on every call). */
#ifndef PV_SCHED_SCHED_H
#define PV_SCHED_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "sched/cron.h"
#include "util/error.h"

struct pv_sched; /* opaque */

/*
 * One job as the planner sees it. Exactly one of `cron` (calendar job, with `tz`) or `every` > 0
 * (interval job, on the monotonic clock). `cron` and `tz` are borrowed: they must outlive the
 * planner or the next pv_sched_configure() (the configuration that owns them is immutable).
 */
struct pv_sched_job {
	const char *name;
	const struct pv_cron *cron;
	const struct pv_tz *tz;
	double every;  /* seconds */
	int jitter;    /* seconds: each start is delayed by a per-job, per-slot offset in [0, jitter] */
	int grace;     /* seconds a run may wait for a heavy slot before it counts as missed; 0 = no limit */
	bool catch_up; /* run one missed calendar slot after downtime or a forward clock jump */
	bool heavy;    /* bounded by max_parallel_jobs; light jobs (health) never wait behind heavy ones */
	/* Persisted "last slot handled", read when the planner first sees the job (start-up). */
	bool has_last_slot;
	time_t last_slot;
};

enum pv_sched_trigger {
	PV_SCHED_SCHEDULE = 0,
	PV_SCHED_CATCH_UP = 1,
};

enum pv_sched_miss_reason {
	PV_SCHED_MISS_OVERLAP = 0, /* the job was still running (or waiting) when the slot came */
	PV_SCHED_MISS_GRACE = 1,   /* waited for a heavy slot longer than its grace */
	PV_SCHED_MISS_SKIPPED = 2, /* passed while down or over a clock jump, and catch_up is off */
};

/*
 * `job` points into the planner and stays valid until the next pv_sched_configure() or
 * pv_sched_free(). `slot` is the calendar slot (UTC); for interval jobs the wall time it came due.
 */
struct pv_sched_run {
	const char *job;
	enum pv_sched_trigger trigger;
	time_t slot;
	bool calendar;
	double due_mono; /* monotonic time it came due (jitter included), to measure how late it starts */
};

struct pv_sched_miss {
	const char *job;
	enum pv_sched_miss_reason reason;
	time_t slot;
	bool calendar;
};

/* Filled by pv_sched_tick(); release with pv_sched_tick_clear(). */
struct pv_sched_tick {
	struct pv_sched_run *runs;
	size_t nruns;
	struct pv_sched_miss *missed;
	size_t nmissed;
	bool clock_jumped; /* wall and monotonic clocks disagreed by more than a minute: plan recomputed */
};

/* How far the two clocks may drift apart between ticks before the plan is recomputed. */
#define PV_SCHED_JUMP_SECONDS 60.0
/* pv_sched_next_wakeup() never asks to sleep longer, so clock jumps are noticed within a minute. */
#define PV_SCHED_MAX_SLEEP 60.0

struct pv_sched *pv_sched_new(int max_parallel);
void pv_sched_free(struct pv_sched *s);
void pv_sched_set_max_parallel(struct pv_sched *s, int max_parallel);

/*
 * Replace the job list (start-up and reload). Jobs that keep their name keep their state (last
 * slot, running, waiting run); their next due time is recomputed only if the schedule changed.
 * New calendar jobs with a persisted last slot get one catch-up run (or a skipped miss when
 * catch_up is off) if a slot passed since. A removed job that is running still counts towards
 * max_parallel until pv_sched_run_finished(). On error (duplicate name, no schedule) nothing changes.
 */
bool pv_sched_configure(struct pv_sched *s, const struct pv_sched_job *jobs, size_t njobs, time_t now_wall,
                        double now_mono, struct pv_error *err);

/*
 * What to start now. Runs returned are marked running: report pv_sched_run_finished() when done
 * (also when starting failed). A calendar slot counts as handled once it is returned as a run or
 * a miss; pv_sched_last_slot() then gives the value to persist.
 */
void pv_sched_tick(struct pv_sched *s, time_t now_wall, double now_mono, struct pv_sched_tick *out);
void pv_sched_tick_clear(struct pv_sched_tick *out);

/* Seconds until the next tick is needed, in [0, PV_SCHED_MAX_SLEEP]. */
double pv_sched_next_wakeup(const struct pv_sched *s, time_t now_wall, double now_mono);

/* A run started outside the planner (manual trigger); PV_ERR_BUSY if the job is already running. */
bool pv_sched_run_started(struct pv_sched *s, const char *job, struct pv_error *err);
/* The run ended; frees its heavy slot. Unknown or idle jobs are ignored. */
void pv_sched_run_finished(struct pv_sched *s, const char *job);

bool pv_sched_is_running(const struct pv_sched *s, const char *job);
/* The latest calendar slot handled, to persist; false if none yet. */
bool pv_sched_last_slot(const struct pv_sched *s, const char *job, time_t *slot);
/* The next calendar slot (UTC, before jitter) of a job; false for interval or unknown jobs. */
bool pv_sched_next_due(const struct pv_sched *s, const char *job, time_t *slot);
/* When the job is next expected to start (wall clock, jitter included), for display: calendar jobs
 * from their next slot, interval jobs from the monotonic due time. false for unknown jobs. */
bool pv_sched_next_start(const struct pv_sched *s, const char *job, time_t now_wall, double now_mono,
                         time_t *when);
size_t pv_sched_running_heavy(const struct pv_sched *s);

/* The deterministic start delay in [0, jitter] of a job's slot (FNV-1a of name and slot). */
int pv_sched_jitter(const char *job, time_t slot, int jitter);

const char *pv_sched_trigger_name(enum pv_sched_trigger trigger);   /* "schedule", "catch_up" */
const char *pv_sched_miss_reason_name(enum pv_sched_miss_reason r); /* "overlap", "grace", "skipped" */

#endif
