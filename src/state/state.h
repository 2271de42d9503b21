/* Persistent state: the only caller of sqlite3_*. WAL mode, versioned migrations. */
#ifndef PV_STATE_STATE_H
#define PV_STATE_STATE_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "util/error.h"

struct pv_state;

/* One job run as stored. Strings are owned by the struct (pv_state_run_clear frees them). */
struct pv_state_run {
	int64_t id;
	char *job;
	char *type;
	char *database;       /* NULL when the job has none */
	char *trigger;        /* "schedule", "catch_up", "manual" */
	time_t scheduled_for; /* 0 when none */
	time_t started;
	time_t finished; /* 0 while running */
	double duration; /* seconds */
	char *result;    /* NULL while running; else "ok", "failed", "timeout", "cancelled", "interrupted" */
	char *cause;     /* NULL or text */
	char *figures;   /* JSON object text or NULL */
};

/*
 * Open (creating if needed) the database at `path` with journal_mode=WAL, synchronous=FULL,
 * foreign_keys=ON, busy_timeout; apply pending migrations in one transaction each; then mark
 * runs left without an end (the daemon died) as "interrupted" with cause "daemon stopped while running".
 * The file is created 0600.
 */
bool pv_state_open(const char *path, struct pv_state **out, struct pv_error *err);
void pv_state_close(struct pv_state *st); /* NULL is a no-op */
int pv_state_schema_version(struct pv_state *st);
/* The schema version this build migrates to (the number of migrations it knows). */
int pv_state_schema_latest(void);

/* Runs. Each call is its own committed transaction (durable when it returns). */
bool pv_state_run_begin(struct pv_state *st, const char *job, const char *type, const char *database,
                        const char *trigger, time_t scheduled_for, time_t started, int64_t *id,
                        struct pv_error *err);
bool pv_state_run_end(struct pv_state *st, int64_t id, time_t finished, double duration, const char *result,
                      const char *cause, const char *figures_json, struct pv_error *err);
/* Most recent run of a job (finished or not); false with PV_ERR_NOT_FOUND when none. */
bool pv_state_run_last(struct pv_state *st, const char *job, struct pv_state_run *out, struct pv_error *err);
/* Most recent run of a job that has ended; PV_ERR_NOT_FOUND when none. */
bool pv_state_run_last_finished(struct pv_state *st, const char *job, struct pv_state_run *out,
                                struct pv_error *err);
/* Most recent runs, newest first; job NULL = all jobs; limit <= 0 = no limit.
 * *out is malloc'ed (NULL when none); free with pv_state_runs_free. */
bool pv_state_runs_list(struct pv_state *st, const char *job, int limit, struct pv_state_run **out, size_t *n,
                        struct pv_error *err);
/* Number of runs of a job (NULL = all jobs) with a given result (NULL = any). */
bool pv_state_runs_count(struct pv_state *st, const char *job, const char *result, int64_t *count,
                         struct pv_error *err);
void pv_state_run_clear(struct pv_state_run *run);
void pv_state_runs_free(struct pv_state_run *runs, size_t n);

/* Scheduler bookkeeping, for catch-up after downtime: the last calendar slot handled for a job
 * (run, or deliberately skipped). false with PV_ERR_NOT_FOUND when never recorded. */
bool pv_state_sched_get(struct pv_state *st, const char *job, time_t *last_slot, struct pv_error *err);
bool pv_state_sched_set(struct pv_state *st, const char *job, time_t last_slot, struct pv_error *err);

/* Small key/value store for daemon-level facts (e.g. "last_reload"). Caller frees *value. */
bool pv_state_kv_get(struct pv_state *st, const char *key, char **value, struct pv_error *err);
bool pv_state_kv_set(struct pv_state *st, const char *key, const char *value, struct pv_error *err);

#endif
