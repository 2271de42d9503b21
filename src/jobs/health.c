/* The `health` job type: one pv_pg health probe per run, its figures recorded on the run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jobs/health.h"
#include "jobs/job.h"
#include "pg/pg.h"
#include "state/state.h"
#include "util/log.h"
#include "util/mem.h"

/*
 * The idle sessions that health jobs with keep_connection hand from one run to the next, indexed like
 * the jobs of the configuration in force. A run of another configuration (one that started before a
 * reload) neither takes nor leaves one, so a changed conninfo or password is always connected anew.
 */
static struct {
	const struct pv_config *cfg;
	struct pv_pg_conn **conns;
	size_t n;
} kept;

void
pv_job_health_configure(const struct pv_config *cfg)
{
	for (size_t i = 0; i < kept.n; i++)
		pv_pg_close(kept.conns[i]);
	free(kept.conns);
	kept.cfg = cfg;
	kept.n = cfg != NULL ? cfg->n_jobs : 0;
	kept.conns = kept.n > 0 ? pv_calloc(kept.n, sizeof(*kept.conns)) : NULL;
}

static struct pv_pg_conn **
kept_slot(const struct pv_job_run *run)
{
	size_t i;

	if (!run->job->keep_connection || run->cfg != kept.cfg || kept.n == 0)
		return NULL;
	i = (size_t)(run->job - kept.cfg->jobs);
	return i < kept.n ? &kept.conns[i] : NULL;
}

/* Runs looked at to carry failing_since over runs that recorded no connectivity (cancelled ones). */
#define STREAK_LOOKBACK 20

/*
 * failing_since: start time of the first run of the current streak of runs that could not reach
 * the database. The previous run's figures carry it; a successful run ends a streak, and failed runs
 * without a "connected" figure (cancelled, interrupted, older versions) neither end nor start one.
 */
static time_t
failing_since(const struct pv_job_run *run)
{
	struct pv_state_run *runs = NULL;
	struct pv_error err;
	size_t n = 0;
	time_t since = run->started;

	if (run->state == NULL)
		return since;
	if (!pv_state_runs_list(run->state, run->job->name, STREAK_LOOKBACK, &runs, &n, &err)) {
		pv_log_warn("cannot read previous health runs job=%s error=%s", run->job->name,
		            pv_log_quote(err.msg));
		return since;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *fig, *connected, *prev;
		bool decided = false;

		if (runs[i].id == run->id || runs[i].result == NULL)
			continue;
		if (strcmp(runs[i].result, "ok") == 0)
			break; /* reached the database: no streak before this run */
		if (runs[i].figures == NULL)
			continue;
		fig = json_loads(runs[i].figures, 0, NULL);
		connected = json_object_get(fig, "connected");
		if (json_is_boolean(connected)) {
			decided = true;
			prev = json_object_get(fig, "failing_since");
			if (!json_is_true(connected) && json_is_integer(prev) &&
			    json_integer_value(prev) > 0 && (time_t)json_integer_value(prev) <= since)
				since = (time_t)json_integer_value(prev);
		}
		json_decref(fig);
		if (decided)
			break;
	}
	pv_state_runs_free(runs, n);
	return since;
}

static void
on_result(const struct pv_pg_health *r, void *arg)
{
	struct pv_job_run *run = arg;
	json_t *fig;
	enum pv_run_result result;

	run->impl = NULL; /* the op frees itself before calling us */
	if (r->conn != NULL) {
		struct pv_pg_conn **slot = kept_slot(run);
		if (slot != NULL && *slot == NULL)
			*slot = r->conn;
		else
			pv_pg_close(r->conn);
	}
	if (run->figures == NULL)
		run->figures = json_object();
	fig = run->figures;
	json_object_set_new(fig, "connected", json_boolean(r->connected));
	if (r->reused)
		json_object_set_new(fig, "reused_connection", json_true());
	if (!r->reused && (r->ok || r->connect_seconds > 0))
		json_object_set_new(fig, "connect_seconds", json_real(r->connect_seconds));
	if (r->connected) {
		json_object_set_new(fig, "query_seconds", json_real(r->query_seconds));
		if (r->server_version_num > 0)
			json_object_set_new(fig, "server_version_num", json_integer(r->server_version_num));
		if (r->server_version[0] != '\0')
			json_object_set_new(fig, "server_version", json_string(r->server_version));
	}
	if (r->tables >= 0)
		json_object_set_new(fig, "tables", json_integer(r->tables));
	if (r->database_size_bytes >= 0)
		json_object_set_new(fig, "database_size_bytes", json_integer(r->database_size_bytes));
	if (r->missing_critical_tables != NULL)
		json_object_set_new(fig, "missing_critical_tables",
		                    json_deep_copy(r->missing_critical_tables));
	if (!r->connected)
		json_object_set_new(fig, "failing_since", json_integer((json_int_t)failing_since(run)));
	if (r->ok) {
		pv_job_run_finish(run, PV_RUN_OK, "%s", "");
		return;
	}
	json_object_set_new(fig, "error_class", json_string(r->error_class ? r->error_class : "other"));
	result = r->error.code == PV_ERR_PG_TIMEOUT ? PV_RUN_TIMEOUT : PV_RUN_FAILED;
	pv_job_run_finish(run, result, "%s", r->error.msg);
}

static bool
start(struct pv_job_run *run)
{
	const struct pv_config_database *db = run->job->database;
	struct pv_pg_health_opts opts;

	if (db == NULL || db->conninfo == NULL) {
		snprintf(run->cause, sizeof(run->cause), "job %s has no database", run->job->name);
		return false;
	}
	memset(&opts, 0, sizeof(opts));
	opts.conninfo = db->conninfo;
	opts.password = db->password.value;
	opts.timeout = (double)pv_config_job_timeout(run->job);
	opts.expected_tables = db->expected_tables;
	opts.critical_tables = &db->critical_tables;
	if (run->job->keep_connection) {
		struct pv_pg_conn **slot = kept_slot(run);
		opts.keep = true;
		if (slot != NULL) {
			opts.conn = *slot;
			*slot = NULL;
		}
	}
	run->impl = pv_pg_health_start_opts(run->base, run->dns, &opts, on_result, run);
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
