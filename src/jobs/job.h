/* A job run: the contract between the scheduler (main) and each job type in src/jobs/. */
#ifndef PV_JOBS_JOB_H
#define PV_JOBS_JOB_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <jansson.h>

#include "config/config.h"
#include "util/error.h"

struct event_base;
struct evdns_base;
struct pv_state;

enum pv_run_result {
	PV_RUN_OK,
	PV_RUN_FAILED,
	PV_RUN_TIMEOUT,
	PV_RUN_CANCELLED,
	PV_RUN_INTERRUPTED, /* the daemon died while it ran (found at start) */
};
const char *pv_run_result_name(enum pv_run_result r);

struct pv_job_run;
typedef void (*pv_job_done_fn)(struct pv_job_run *run);

struct pv_job_run {
	int64_t id;                      /* state row id */
	struct pv_config *cfg;           /* reference held for the run: the config it started with */
	const struct pv_config_job *job; /* points into cfg */
	struct event_base *base;
	struct evdns_base *dns;
	struct pv_state *state;
	time_t scheduled_for; /* calendar slot, or 0 for interval / manual runs */
	time_t started;       /* wall clock */
	double started_mono;  /* monotonic seconds */
	double deadline_mono; /* started_mono + timeout */
	const char *trigger;  /* "schedule", "catch_up", "manual" */

	/* Filled by the job before it calls finish. */
	enum pv_run_result result;
	char cause[512];         /* why it failed; empty when ok */
	json_t *figures;         /* object of measured figures; owned by the run */
	uint64_t progress_bytes; /* for `pgvigilctl jobs` */

	/* Set by the runner. The job calls pv_job_run_finish() exactly once. */
	pv_job_done_fn on_done;
	void *runner_arg;
	void *impl; /* job-private state */
	bool cancel_requested;
};

struct pv_job_ops {
	enum pv_job_type type;
	/* Start the run asynchronously; false = could not start (run->cause filled). */
	bool (*start)(struct pv_job_run *run);
	/* Ask a started run to stop soon; it still calls pv_job_run_finish(). */
	void (*cancel)(struct pv_job_run *run);
	/* Optional: bytes processed so far, for `pgvigilctl jobs`. */
	uint64_t (*progress)(const struct pv_job_run *run);
};

/* The implementation of a type, or NULL when that type is not available in this build yet. */
const struct pv_job_ops *pv_jobs_ops(enum pv_job_type type);

/* Record the outcome and hand the run back to the runner (which frees it). */
void pv_job_run_finish(struct pv_job_run *run, enum pv_run_result result, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* Monotonic seconds. */
double pv_now_mono(void);

#endif
