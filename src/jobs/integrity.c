/* The `integrity` job type: one pv_pg integrity check per run; the report is the run's figures. */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "jobs/integrity.h"
#include "jobs/job.h"
#include "pg/pg.h"

/* How many constraints a cause names before "and N more". */
#define CAUSE_NAMES 3
/* Finish on our own a little before the runner's deadline, so the report is recorded. */
#define DEADLINE_MARGIN 1.0
/* Each count gets at most this share of the job's timeout, so one blocked table leaves time for the rest. */
#define QUERY_SHARE 4.0

/* Replace the run's figures with the report's members (a new report, or a partial one). */
static void
set_figures(struct pv_job_run *run, json_t *report)
{
	if (run->figures == NULL)
		run->figures = json_object();
	if (report != NULL)
		json_object_update(run->figures, report);
}

/* Append the constraints of one kind to the cause: "a (3), b (1) and 2 more". */
static size_t
cause_list(char *out, size_t size, size_t len, json_t *details, bool orphans, long long total)
{
	size_t i, named = 0;
	json_t *d;

	json_array_foreach(details, i, d)
	{
		json_t *n = json_object_get(d, "orphans");
		json_t *e = json_object_get(d, "error");
		const char *name = json_string_value(json_object_get(d, "constraint"));
		if (len >= size || named == CAUSE_NAMES)
			break;
		if (orphans && json_integer_value(n) > 0)
			len += (size_t)snprintf(out + len, size - len, "%s%s (%lld)", named ? ", " : "", name,
			                        (long long)json_integer_value(n));
		else if (!orphans && json_is_string(e) && strcmp(json_string_value(e), "not checked") != 0)
			len += (size_t)snprintf(out + len, size - len, "%s%s (%s)", named ? ", " : "", name,
			                        json_string_value(e));
		else
			continue;
		named++;
	}
	if ((long long)named < total && len < size)
		len += (size_t)snprintf(out + len, size - len, " and %lld more", total - (long long)named);
	return len;
}

static void
on_report(json_t *report, const struct pv_error *err, void *arg)
{
	struct pv_job_run *run = arg;
	char cause[sizeof(run->cause)];
	size_t len = 0;
	long long orphaned, orphans, failed;
	json_t *details;

	run->impl = NULL; /* the op frees itself before calling us */
	if (report == NULL) {
		pv_job_run_finish(run, err->code == PV_ERR_PG_TIMEOUT ? PV_RUN_TIMEOUT : PV_RUN_FAILED, "%s",
		                  err->msg);
		return;
	}
	set_figures(run, report);
	orphaned = json_integer_value(json_object_get(report, "orphaned_constraints"));
	orphans = json_integer_value(json_object_get(report, "orphans"));
	failed = json_integer_value(json_object_get(report, "timeouts")) +
	         json_integer_value(json_object_get(report, "errors"));
	details = json_object_get(report, "details");
	cause[0] = '\0';
	if (orphaned > 0) {
		len += (size_t)snprintf(cause, sizeof(cause),
		                        "%lld orphaned row%s in %lld foreign key%s: ", orphans,
		                        orphans == 1 ? "" : "s", orphaned, orphaned == 1 ? "" : "s");
		len = cause_list(cause, sizeof(cause), len, details, true, orphaned);
	}
	if (failed > 0 && len < sizeof(cause)) {
		len += (size_t)snprintf(cause + len, sizeof(cause) - len,
		                        "%s%lld foreign key%s not checked: ", len ? "; " : "", failed,
		                        failed == 1 ? "" : "s");
		len = cause_list(cause, sizeof(cause), len, details, false, failed);
	}
	if (err != NULL && len < sizeof(cause))
		snprintf(cause + len, sizeof(cause) - len, "%s%s", len ? "; " : "", err->msg);
	if (err != NULL)
		pv_job_run_finish(run, err->code == PV_ERR_PG_TIMEOUT ? PV_RUN_TIMEOUT : PV_RUN_FAILED, "%s",
		                  cause);
	else if (cause[0] != '\0')
		pv_job_run_finish(run, PV_RUN_FAILED, "%s", cause);
	else
		pv_job_run_finish(run, PV_RUN_OK, "%s", "");
}

static bool
start(struct pv_job_run *run)
{
	const struct pv_config_database *db = run->job->database;
	struct pv_pg_integrity_opts opts;
	struct pv_error err;
	double timeout = (double)pv_config_job_timeout(run->job);

	if (db == NULL || db->conninfo == NULL) {
		snprintf(run->cause, sizeof(run->cause), "job %s has no database", run->job->name);
		return false;
	}
	memset(&opts, 0, sizeof(opts));
	opts.conninfo = db->conninfo;
	opts.password = db->password.value;
	opts.timeout = timeout > 2 * DEADLINE_MARGIN ? timeout - DEADLINE_MARGIN : timeout;
	opts.query_timeout = timeout / QUERY_SHARE >= 1.0 ? timeout / QUERY_SHARE : 1.0;
	run->impl = pv_pg_integrity_start(run->base, run->dns, &opts, on_report, run, &err);
	if (run->impl == NULL) {
		snprintf(run->cause, sizeof(run->cause), "%s", err.msg);
		return false;
	}
	return true;
}

static void
cancel(struct pv_job_run *run)
{
	json_t *partial;

	if (run->impl == NULL)
		return; /* already finished */
	partial = pv_pg_integrity_cancel(run->impl);
	run->impl = NULL;
	set_figures(run, partial);
	if (partial)
		json_decref(partial);
	pv_job_run_finish(run, PV_RUN_CANCELLED, "cancelled");
}

const struct pv_job_ops pv_job_integrity_ops = {
        .type = PV_JOB_INTEGRITY,
        .start = start,
        .cancel = cancel,
};
