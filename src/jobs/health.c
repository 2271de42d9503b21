/* The `health` job type: one pv_pg health probe per run, its figures recorded on the run. */
#include <stdio.h>

#include <jansson.h>

#include "jobs/health.h"
#include "jobs/job.h"
#include "pg/pg.h"

static void
on_result(const struct pv_pg_health *r, void *arg)
{
	struct pv_job_run *run = arg;
	enum pv_run_result result;

	run->impl = NULL; /* the op frees itself before calling us */
	if (run->figures == NULL)
		run->figures = json_object();
	if (r->ok || r->connect_seconds > 0)
		json_object_set_new(run->figures, "connect_seconds", json_real(r->connect_seconds));
	if (r->ok) {
		json_object_set_new(run->figures, "query_seconds", json_real(r->query_seconds));
		json_object_set_new(run->figures, "server_version", json_string(r->server_version));
		json_object_set_new(run->figures, "server_version_num", json_integer(r->server_version_num));
		pv_job_run_finish(run, PV_RUN_OK, "%s", "");
		return;
	}
	result = r->error.code == PV_ERR_PG_TIMEOUT ? PV_RUN_TIMEOUT : PV_RUN_FAILED;
	pv_job_run_finish(run, result, "%s", r->error.msg);
}

static bool
start(struct pv_job_run *run)
{
	const struct pv_config_database *db = run->job->database;

	if (db == NULL || db->conninfo == NULL) {
		snprintf(run->cause, sizeof(run->cause), "job %s has no database", run->job->name);
		return false;
	}
	run->impl = pv_pg_health_start(run->base, run->dns, db->conninfo, db->password.value,
	                               (double)pv_config_job_timeout(run->job), on_result, run);
	return true;
}

static void
cancel(struct pv_job_run *run)
{
	if (run->impl == NULL)
		return; /* already finished */
	pv_pg_health_cancel(run->impl);
	run->impl = NULL;
	pv_job_run_finish(run, PV_RUN_CANCELLED, "cancelled");
}

const struct pv_job_ops pv_job_health_ops = {
        .type = PV_JOB_HEALTH,
        .start = start,
        .cancel = cancel,
};
