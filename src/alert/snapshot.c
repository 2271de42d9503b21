/* Fill the alert rules' snapshot from what the jobs recorded in the state database. */
#include "alert/snapshot.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "state/state.h"
#include "util/mem.h"

/* Health runs looked at for the newest one that recorded connectivity (cancelled ones do not). */
#define HEALTH_RUNS 32
/* Probe/drill runs looked at for the newest success and the newest conclusive result. */
#define RESTORE_RUNS 64

static bool
eq(const char *a, const char *b)
{
	return a != NULL && b != NULL && strcmp(a, b) == 0;
}

static json_t *
figures_of(const struct pv_state_run *r)
{
	json_t *f = r->figures != NULL ? json_loads(r->figures, 0, NULL) : NULL;
	if (f != NULL && !json_is_object(f)) {
		json_decref(f);
		f = NULL;
	}
	return f;
}

static bool
ended(const struct pv_state_run *r)
{
	return r->result != NULL && r->finished > 0;
}

/* The index in cfg->databases of the job's database, or -1: jobs are visited once, not once per database. */
static long
database_index(const struct pv_config *cfg, const struct pv_config_job *job)
{
	if (job->database == NULL)
		return -1;
	if (job->database >= cfg->databases && job->database < cfg->databases + cfg->n_databases)
		return job->database - cfg->databases;
	for (size_t i = 0; i < cfg->n_databases; i++)
		if (eq(cfg->databases[i].name, job->database->name))
			return (long)i;
	return -1;
}

/* The newest health run of the database's health jobs that recorded a "connected" figure; called for each
 * health job of the database in turn, *best carrying the newest finish seen so far. */
static bool
fill_health(struct pv_state *st, const struct pv_config_job *job, struct pv_alert_snap_database *sd,
            time_t *best_io, struct pv_error *err)
{
	time_t best = *best_io;
	struct pv_state_run *runs = NULL;
	size_t n = 0;

	if (!pv_state_runs_list(st, job->name, HEALTH_RUNS, &runs, &n, err))
		return false;
	for (size_t i = 0; i < n; i++) {
		json_t *f, *c;
		if (!ended(&runs[i]) || !eq(runs[i].database, sd->name))
			continue;
		f = figures_of(&runs[i]);
		c = json_object_get(f, "connected");
		if (!json_is_boolean(c)) {
			json_decref(f);
			continue;
		}
		if (runs[i].finished >= best) {
			best = runs[i].finished;
			sd->have_health = true;
			sd->connected = json_is_true(c);
			sd->failing_since =
			        sd->connected
			                ? 0
			                : (time_t)json_integer_value(json_object_get(f, "failing_since"));
			if (!sd->connected && sd->failing_since <= 0)
				sd->failing_since = runs[i].started;
		}
		json_decref(f);
		break;
	}
	pv_state_runs_free(runs, n);
	*best_io = best;
	return true;
}

/* The newest successful probe or drill (achieved RTO) and the largest current failure streak. */
static bool
fill_restore(struct pv_state *st, const struct pv_config_job *job, struct pv_alert_snap_database *sd,
             struct pv_error *err)
{
	struct pv_state_run *runs = NULL;
	size_t n = 0;
	bool streak_known = false;

	if (!pv_state_runs_list(st, job->name, RESTORE_RUNS, &runs, &n, err))
		return false;
	for (size_t i = 0; i < n; i++) {
		struct pv_state_run *r = &runs[i];
		json_t *f;
		if (!ended(r) || !eq(r->database, sd->name) || eq(r->result, "cancelled"))
			continue;
		f = figures_of(r);
		if (!streak_known) {
			json_t *c = json_object_get(f, "consecutive_failures");
			int cons = json_is_integer(c) ? (int)json_integer_value(c) : 0;
			streak_known = true;
			if (cons > sd->consecutive_probe_failures)
				sd->consecutive_probe_failures = cons;
		}
		if (eq(r->result, "ok")) {
			if (!sd->have_restore || r->finished > sd->restore_at) {
				json_t *t = json_object_get(f, "total_seconds");
				sd->have_restore = true;
				sd->restore_seconds = json_is_number(t) ? json_number_value(t) : r->duration;
				sd->restore_at = r->finished;
				sd->restore_kind = job->type == PV_JOB_DRILL ? "drill" : "restore_probe";
			}
			json_decref(f);
			break;
		}
		json_decref(f);
	}
	pv_state_runs_free(runs, n);
	return true;
}

/* Every run of a backup job (they are few): the last run, the baseline before it, the newest success. */
static bool
fill_backup_job(struct pv_state *st, const struct pv_config_job *job, time_t daemon_started,
                struct pv_alert_snap_backup_job *bj, struct pv_error *err)
{
	struct pv_state_run *runs = NULL;
	size_t n = 0;
	int64_t *sizes;
	double *durations;
	size_t ns = 0, nd = 0;
	bool seen_last = false;

	bj->name = job->name;
	bj->database = job->database != NULL ? job->database->name : NULL;
	bj->since = daemon_started;
	if (!pv_state_runs_list(st, job->name, 0, &runs, &n, err))
		return false;
	sizes = pv_calloc(PV_ALERT_RECENT_MAX, sizeof(*sizes));
	durations = pv_calloc(PV_ALERT_RECENT_MAX, sizeof(*durations));
	for (size_t i = 0; i < n; i++) {
		struct pv_state_run *r = &runs[i];
		json_t *f;
		bool ok;

		if (r->started > 0 && r->started < bj->since)
			bj->since = r->started;
		if (!ended(r) || eq(r->result, "cancelled") ||
		    (bj->database && !eq(r->database, bj->database)))
			continue;
		ok = eq(r->result, "ok");
		if (ok && r->finished > bj->last_success_finished)
			bj->last_success_finished = r->finished;
		f = figures_of(r);
		if (!seen_last) {
			json_t *id = json_object_get(f, "backup_id");
			seen_last = true;
			bj->have_last = true;
			bj->last_ok = ok;
			bj->last_size = json_integer_value(json_object_get(f, "size"));
			bj->last_duration = json_is_number(json_object_get(f, "dump_seconds"))
			                            ? json_number_value(json_object_get(f, "dump_seconds"))
			                            : r->duration;
			bj->last_finished = r->finished;
			bj->last_backup_id = json_is_string(id) ? pv_strdup(json_string_value(id)) : NULL;
		} else if (ok) {
			json_t *size = json_object_get(f, "size"), *secs = json_object_get(f, "dump_seconds");
			if (json_is_integer(size) && ns < PV_ALERT_RECENT_MAX)
				sizes[ns++] = json_integer_value(size);
			if (json_is_number(secs) && nd < PV_ALERT_RECENT_MAX)
				durations[nd++] = json_number_value(secs);
		}
		json_decref(f);
	}
	pv_state_runs_free(runs, n);
	bj->recent_sizes = sizes;
	bj->n_recent_sizes = ns;
	bj->recent_durations = durations;
	bj->n_recent_durations = nd;
	return true;
}

static bool
fill_storage(struct pv_state *st, const struct pv_config *cfg, struct pv_alert_snap_storage *s,
             struct pv_error *err)
{
	time_t best = 0;

	for (size_t j = 0; j < cfg->n_jobs; j++) {
		struct pv_state_run r = {0};
		struct pv_error lerr;
		json_t *f, *ratio, *days;

		if (cfg->jobs[j].type != PV_JOB_STORAGE)
			continue;
		if (!pv_state_run_last_finished(st, cfg->jobs[j].name, &r, &lerr)) {
			if (lerr.code == PV_ERR_NOT_FOUND)
				continue;
			if (err != NULL)
				*err = lerr;
			return false;
		}
		f = figures_of(&r);
		ratio = json_object_get(f, "used_ratio");
		days = json_object_get(f, "days_until_full");
		if (json_is_number(ratio) && r.finished >= best) {
			best = r.finished;
			s->have = true;
			s->used_ratio = json_number_value(ratio);
			s->have_forecast = json_is_number(days);
			s->days_until_full = s->have_forecast ? json_number_value(days) : 0;
		}
		json_decref(f);
		pv_state_run_clear(&r);
	}
	return true;
}

bool
pv_alert_snapshot_build(struct pv_state *st, const struct pv_config *cfg, time_t now, time_t daemon_started,
                        struct pv_alert_snapshot *out, struct pv_error *err)
{
	struct pv_alert_snap_database *dbs = pv_calloc(cfg->n_databases + 1, sizeof(*dbs));
	struct pv_alert_snap_backup_job *bjs = pv_calloc(cfg->n_jobs + 1, sizeof(*bjs));
	time_t *health_best = pv_calloc(cfg->n_databases + 1, sizeof(*health_best));
	size_t nb = 0;

	memset(out, 0, sizeof(*out));
	out->databases = dbs;
	out->n_databases = cfg->n_databases;
	out->backups = bjs;
	for (size_t j = 0; j < cfg->n_jobs; j++) {
		if (cfg->jobs[j].type != PV_JOB_BACKUP)
			continue;
		out->n_backups = nb + 1; /* so a failure frees what this one allocated */
		if (!fill_backup_job(st, &cfg->jobs[j], daemon_started, &bjs[nb++], err))
			goto fail;
	}
	for (size_t i = 0; i < cfg->n_databases; i++) {
		const struct pv_config_database *db = &cfg->databases[i];
		struct pv_alert_snap_database *sd = &dbs[i];
		struct pv_state_backup nv = {0};
		struct pv_error lerr;

		sd->name = db->name;
		sd->rpo = db->rpo;
		sd->rto = db->rto;
		sd->since = daemon_started;
		for (size_t j = 0; j < nb; j++)
			if (eq(bjs[j].database, db->name) && bjs[j].since < sd->since)
				sd->since = bjs[j].since;
		if (pv_state_backup_newest_verified(st, db->name, NULL, &nv, &lerr)) {
			sd->newest_verified_finished = nv.finished;
			sd->newest_verified_id = pv_strdup(nv.id);
			pv_state_backup_clear(&nv);
		} else if (lerr.code != PV_ERR_NOT_FOUND) {
			if (err != NULL)
				*err = lerr;
			goto fail;
		}
	}
	/* In job order, as each database's own health and restore jobs would be visited. */
	for (size_t j = 0; j < cfg->n_jobs; j++) {
		const struct pv_config_job *job = &cfg->jobs[j];
		long i = database_index(cfg, job);

		if (i < 0)
			continue;
		if (job->type == PV_JOB_HEALTH && !fill_health(st, job, &dbs[i], &health_best[i], err))
			goto fail;
		if ((job->type == PV_JOB_RESTORE_PROBE || job->type == PV_JOB_DRILL) &&
		    !fill_restore(st, job, &dbs[i], err))
			goto fail;
	}
	if (!fill_storage(st, cfg, &out->storage, err))
		goto fail;
	free(health_best);
	(void)now;
	return true;
fail:
	free(health_best);
	pv_alert_snapshot_free(out);
	return false;
}

void
pv_alert_snapshot_free(struct pv_alert_snapshot *snap)
{
	if (snap == NULL)
		return;
	for (size_t i = 0; snap->databases != NULL && i < snap->n_databases; i++)
		free((char *)snap->databases[i].newest_verified_id);
	for (size_t i = 0; snap->backups != NULL && i < snap->n_backups; i++) {
		free((int64_t *)snap->backups[i].recent_sizes);
		free((double *)snap->backups[i].recent_durations);
		free((char *)snap->backups[i].last_backup_id);
	}
	free((void *)snap->databases);
	free((void *)snap->backups);
	memset(snap, 0, sizeof(*snap));
}
