/* Disaster-recovery readiness: achieved RPO/RTO and the `report` command, as JSON and Markdown. */
#include "ctl/report.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alert/engine.h"
#include "alert/rules.h"
#include "config/config.h"
#include "daemon.h"
#include "state/state.h"
#include "util/mem.h"

#define TOP_ORPHANS 10
/* A store that fills within this many days at the current growth puts every database at risk. */
#define STORAGE_FULL_SOON_DAYS 7.0

static const char READY[] = "READY", AT_RISK[] = "AT RISK", NOT_READY[] = "NOT READY";

static bool
eq(const char *a, const char *b)
{
	return a != NULL && b != NULL && strcmp(a, b) == 0;
}

static bool
verified(const struct pv_state_backup *b)
{
	return eq(b->verify_result, "ok") && eq(b->status, "ok");
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

static json_t *
opt_string(const char *s)
{
	return s != NULL ? json_string(s) : json_null();
}

static json_t *
opt_time(time_t t)
{
	return t > 0 ? json_integer((json_int_t)t) : json_null();
}

static bool
job_of_db(const struct pv_config_job *job, const char *dbname)
{
	return job->database != NULL && eq(job->database->name, dbname);
}

/* ---- runs ---- */

enum pick {
	PICK_FINISHED,   /* any ended run */
	PICK_CONCLUSIVE, /* ended, not cancelled by a stopping daemon */
	PICK_OK,         /* succeeded */
};

static bool
picks(const struct pv_state_run *r, enum pick pick)
{
	if (r->result == NULL || r->finished <= 0)
		return false;
	switch (pick) {
	case PICK_FINISHED: return true;
	case PICK_CONCLUSIVE: return !eq(r->result, "cancelled");
	case PICK_OK: return eq(r->result, "ok");
	}
	return false;
}

/*
 * The newest run (by finished) of the jobs of the types in `types` (a mask of 1 << type) that belong
 * to `dbname` (NULL: any job of those types), as recorded (the run's own database must match too, so
 * history from before a job was pointed elsewhere is not counted). Reads runs in growing pages:
 * probes that fail for months still end the search.
 */
static bool
newest_run(struct pv_state *st, const struct pv_config *cfg, const char *dbname, unsigned types,
           enum pick pick, struct pv_state_run *out)
{
	bool have = false;

	for (size_t j = 0; j < cfg->n_jobs; j++) {
		const struct pv_config_job *job = &cfg->jobs[j];
		int limit = 16;
		bool found = false;

		if (!(types & (1u << job->type)) || (dbname != NULL && !job_of_db(job, dbname)))
			continue;
		while (!found) {
			struct pv_state_run *runs = NULL;
			size_t n = 0;
			if (!pv_state_runs_list(st, job->name, limit, &runs, &n, NULL))
				break;
			for (size_t i = 0; i < n && !found; i++) {
				struct pv_state_run *r = &runs[i];
				if (!picks(r, pick) || (dbname != NULL && !eq(r->database, dbname)))
					continue;
				found = true;
				if (!have || r->finished > out->finished ||
				    (r->finished == out->finished && r->id > out->id)) {
					if (have)
						pv_state_run_clear(out);
					*out = *r;
					memset(r, 0, sizeof(*r));
					have = true;
				}
			}
			pv_state_runs_free(runs, n);
			if (n < (size_t)limit)
				break;
			limit *= 4;
		}
	}
	return have;
}

/* Runs of a job, newest first, reaching back before `since` (or all there are). */
static bool
runs_since(struct pv_state *st, const char *job, time_t since, struct pv_state_run **out, size_t *n)
{
	for (int limit = 64;; limit *= 4) {
		if (!pv_state_runs_list(st, job, limit, out, n, NULL))
			return false;
		if (*n < (size_t)limit || (*out)[*n - 1].started < since)
			return true;
		pv_state_runs_free(*out, *n);
	}
}

/* ---- RPO / RTO ---- */

static int
cmp_time(const void *a, const void *b)
{
	time_t x = *(const time_t *)a, y = *(const time_t *)b;
	return x < y ? -1 : x > y;
}

static bool
catalogued(const struct pv_state_backup *list, size_t n, const char *job, const char *id)
{
	for (size_t i = 0; i < n; i++)
		if (eq(list[i].job, job) && eq(list[i].id, id))
			return true;
	return false;
}

/*
 * The largest time between consecutive verified backups over the window, and from the newest to now.
 * The gap that ends at the first backup inside the window counts whole: a disaster just before that
 * backup would have lost everything since the one before. Retention deletes old backups from the
 * catalog, so successful backup runs (a run succeeds only once its backup verified) whose backup is
 * no longer catalogued stand in for them; a catalogued backup that has since failed verification or
 * gone missing does not count.
 */
static json_t *
largest_gap(struct pv_state *st, const struct pv_config *cfg, const struct pv_config_database *db,
            const struct pv_state_backup *list, size_t n, time_t now)
{
	time_t since = now - PV_REPORT_GAP_WINDOW, prev = 0, *pts = NULL, gap = 0;
	size_t np = 0, cap = 0;

#define ADD_POINT(t)                                                                                         \
	do {                                                                                                 \
		if (np == cap) {                                                                             \
			cap = cap ? cap * 2 : 32;                                                            \
			pts = pv_realloc(pts, cap * sizeof(*pts));                                           \
		}                                                                                            \
		pts[np++] = (t);                                                                             \
	} while (0)

	for (size_t i = 0; i < n; i++)
		if (verified(&list[i]) && list[i].finished <= now)
			ADD_POINT(list[i].finished);
	for (size_t j = 0; j < cfg->n_jobs; j++) {
		const struct pv_config_job *job = &cfg->jobs[j];
		struct pv_state_run *runs = NULL;
		size_t nr = 0;

		if (job->type != PV_JOB_BACKUP || !job_of_db(job, db->name) ||
		    !runs_since(st, job->name, since, &runs, &nr))
			continue;
		for (size_t i = 0; i < nr; i++) {
			json_t *f;
			const char *id;
			if (!eq(runs[i].result, "ok") || !eq(runs[i].database, db->name) ||
			    runs[i].finished <= 0 || runs[i].finished > now)
				continue;
			f = figures_of(&runs[i]);
			id = json_string_value(json_object_get(f, "backup_id"));
			if (id != NULL && !catalogued(list, n, job->name, id))
				ADD_POINT(runs[i].finished);
			json_decref(f);
		}
		pv_state_runs_free(runs, nr);
	}
#undef ADD_POINT

	if (np == 0)
		return json_null();
	qsort(pts, np, sizeof(*pts), cmp_time);
	for (size_t i = 0; i < np; i++) {
		if (pts[i] < since) {
			prev = pts[i];
			continue;
		}
		if (prev > 0 && pts[i] - prev > gap)
			gap = pts[i] - prev;
		prev = pts[i];
	}
	if (now - prev > gap)
		gap = now - prev;
	free(pts);
	return json_integer((json_int_t)gap);
}

static json_t *
met_json(bool have, double value, int64_t objective)
{
	if (objective <= 0)
		return json_null();
	return json_boolean(have && value <= (double)objective);
}

static json_t *
rpo_json(struct pv_state *st, const struct pv_config *cfg, const struct pv_config_database *db, time_t now)
{
	struct pv_state_backup *list = NULL;
	const struct pv_state_backup *newest = NULL;
	json_t *o = json_object();
	size_t n = 0;
	time_t age = 0;

	if (!pv_state_backups_list(st, db->name, NULL, &list, &n, NULL))
		n = 0;
	for (size_t i = 0; i < n && newest == NULL; i++)
		if (verified(&list[i]))
			newest = &list[i];
	if (newest != NULL)
		age = newest->finished < now ? now - newest->finished : 0;
	json_object_set_new(o, "seconds", newest != NULL ? json_integer((json_int_t)age) : json_null());
	json_object_set_new(o, "objective", db->rpo > 0 ? json_integer(db->rpo) : json_null());
	json_object_set_new(o, "met", met_json(newest != NULL, (double)age, db->rpo));
	json_object_set_new(o, "newest_verified_backup", opt_string(newest ? newest->id : NULL));
	json_object_set_new(o, "job", opt_string(newest ? newest->job : NULL));
	json_object_set_new(o, "at", opt_time(newest ? newest->finished : 0));
	json_object_set_new(o, "largest_gap_30d", largest_gap(st, cfg, db, list, n, now));
	pv_state_backups_free(list, n);
	return o;
}

static json_t *
rto_json(struct pv_state *st, const struct pv_config *cfg, const struct pv_config_database *db)
{
	struct pv_state_run r = {0};
	json_t *o = json_object();
	bool have =
	        newest_run(st, cfg, db->name, 1u << PV_JOB_RESTORE_PROBE | 1u << PV_JOB_DRILL, PICK_OK, &r);
	double secs = 0;

	if (have) {
		json_t *f = figures_of(&r);
		json_t *t = json_object_get(f, "total_seconds");
		secs = json_is_number(t) ? json_number_value(t) : r.duration;
		json_decref(f);
	}
	json_object_set_new(o, "seconds", have ? json_real(secs) : json_null());
	json_object_set_new(o, "objective", db->rto > 0 ? json_integer(db->rto) : json_null());
	json_object_set_new(o, "met", met_json(have, secs, db->rto));
	json_object_set_new(o, "measured_by", opt_string(have ? r.type : NULL));
	json_object_set_new(o, "run", have ? json_integer(r.id) : json_null());
	json_object_set_new(o, "job", opt_string(have ? r.job : NULL));
	json_object_set_new(o, "at", opt_time(have ? r.finished : 0));
	pv_state_run_clear(&r);
	return o;
}

json_t *
pv_report_rpo_rto(struct pv_state *st, const struct pv_config *cfg, const struct pv_config_database *db,
                  time_t now)
{
	json_t *o = json_object();
	json_object_set_new(o, "rpo", rpo_json(st, cfg, db, now));
	json_object_set_new(o, "rto", rto_json(st, cfg, db));
	return o;
}

/* ---- formatting ---- */

const char *
pv_report_duration(double secs, char *buf, size_t size)
{
	long s;

	if (secs < 0)
		secs = 0;
	s = lround(secs);
	if (secs > 0 && secs < 0.9995)
		snprintf(buf, size, "%.0fms", secs * 1000);
	else if (secs < 9.95 && secs != floor(secs))
		snprintf(buf, size, "%.1fs", secs);
	else if (s < 60)
		snprintf(buf, size, "%lds", s);
	else if (s < 3600)
		snprintf(buf, size, s % 60 ? "%ldm%02lds" : "%ldm", s / 60, s % 60);
	else if (s < 86400)
		snprintf(buf, size, s % 3600 / 60 ? "%ldh%02ldm" : "%ldh", s / 3600, s % 3600 / 60);
	else
		snprintf(buf, size, s % 86400 / 3600 ? "%ldd%02ldh" : "%ldd", s / 86400, s % 86400 / 3600);
	return buf;
}

const char *
pv_report_size(double bytes, char *buf, size_t size)
{
	static const char *units[] = {"B", "kB", "MB", "GB", "TB", "PB"};
	int u = 0;

	while (fabs(bytes) >= 1000 && u < 5) {
		bytes /= 1000;
		u++;
	}
	snprintf(buf, size, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
	return buf;
}

static const char *
iso(time_t t, char *buf, size_t size)
{
	struct tm tm;
	if (t <= 0) {
		snprintf(buf, size, "-");
		return buf;
	}
	gmtime_r(&t, &tm);
	strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
	return buf;
}

/* ---- the report ---- */

struct reasons {
	json_t *list;
	bool not_ready, at_risk;
};

static void add_reason(struct reasons *rs, const char *level, const char *code, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

static void
add_reason(struct reasons *rs, const char *level, const char *code, const char *fmt, ...)
{
	char text[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	if (level == NOT_READY)
		rs->not_ready = true;
	else
		rs->at_risk = true;
	json_array_append_new(rs->list,
	                      json_pack("{s:s,s:s,s:s}", "level", level, "code", code, "text", text));
}

static void
copy_figure(json_t *to, json_t *fig, const char *key)
{
	json_t *v = json_object_get(fig, key);
	if (v != NULL)
		json_object_set(to, key, v);
}

/* The common part of a run in the report. */
static json_t *
run_summary(const struct pv_state_run *r)
{
	return json_pack("{s:I,s:s?,s:o,s:o,s:s?,s:o,s:f}", "run", (json_int_t)r->id, "job", r->job,
	                 "started", opt_time(r->started), "at", opt_time(r->finished), "result", r->result,
	                 "cause", opt_string(r->cause && r->cause[0] ? r->cause : NULL), "duration",
	                 r->duration);
}

static json_t *
health_section(struct pv_state *st, const struct pv_config *cfg, const struct pv_config_database *db,
               json_t **schema, struct reasons *rs)
{
	struct pv_state_run r = {0};
	json_t *h, *f;
	char when[32];

	*schema = json_pack("{s:o,s:o,s:o,s:o,s:o}", "tables", json_null(), "expected_tables",
	                    db->expected_tables >= 0 ? json_integer(db->expected_tables) : json_null(),
	                    "tables_ok", json_null(), "critical_tables", json_array(),
	                    "missing_critical_tables", json_null());
	for (size_t i = 0; i < db->critical_tables.n; i++)
		json_array_append_new(json_object_get(*schema, "critical_tables"),
		                      json_string(db->critical_tables.v[i]));
	if (!newest_run(st, cfg, db->name, 1u << PV_JOB_HEALTH, PICK_FINISHED, &r))
		return json_null();
	h = run_summary(&r);
	f = figures_of(&r);
	for (const char **k = (const char *[]){"connected", "connect_seconds", "query_seconds",
	                                       "server_version", "database_size_bytes", "failing_since",
	                                       "error_class", "reused_connection", NULL};
	     *k != NULL; k++)
		copy_figure(h, f, *k);
	if (!eq(r.result, "ok")) {
		json_t *since = json_object_get(f, "failing_since");
		if (json_is_false(json_object_get(f, "connected")) && json_integer_value(since) > 0)
			add_reason(rs, AT_RISK, "unreachable", "database unreachable since %s (%s): %s",
			           iso((time_t)json_integer_value(since), when, sizeof(when)),
			           json_string_value(json_object_get(f, "error_class")) ?: "other",
			           r.cause ? r.cause : "no cause recorded");
		else if (json_object_get(f, "tables") == NULL)
			add_reason(rs, AT_RISK, "health_failed", "latest health check failed: %s",
			           r.cause ? r.cause : "no cause recorded");
	}
	if (json_is_integer(json_object_get(f, "tables"))) {
		json_int_t tables = json_integer_value(json_object_get(f, "tables"));
		json_t *missing = json_object_get(f, "missing_critical_tables");

		json_object_set(*schema, "tables", json_object_get(f, "tables"));
		json_object_set_new(*schema, "checked_at", opt_time(r.finished));
		json_object_set_new(*schema, "tables_ok",
		                    db->expected_tables >= 0 ? json_boolean(tables == db->expected_tables)
		                                             : json_null());
		json_object_set_new(*schema, "missing_critical_tables",
		                    json_is_array(missing) ? json_deep_copy(missing) : json_array());
		if (db->expected_tables >= 0 && tables != db->expected_tables)
			add_reason(rs, AT_RISK, "table_count", "expected %d user tables, found %lld",
			           db->expected_tables, (long long)tables);
		if (json_array_size(missing) > 0) {
			char *names = NULL;
			size_t i;
			json_t *m;
			json_array_foreach(missing, i, m)
			{
				char *next = pv_asprintf("%s%s%s", names ? names : "", names ? ", " : "",
				                         json_string_value(m) ?: "?");
				free(names);
				names = next;
			}
			add_reason(rs, AT_RISK, "missing_critical_tables", "critical table%s missing: %s",
			           json_array_size(missing) == 1 ? "" : "s", names);
			free(names);
		}
	}
	json_decref(f);
	pv_state_run_clear(&r);
	return h;
}

static int
cmp_orphans(const void *a, const void *b)
{
	json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "orphans"));
	json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "orphans"));
	return x > y ? -1 : x < y;
}

static json_t *
integrity_section(struct pv_state *st, const struct pv_config *cfg, const struct pv_config_database *db,
                  struct reasons *rs)
{
	struct pv_state_run r = {0};
	json_t *o, *f, *details, *top = json_array();
	json_t **v;
	size_t n = 0, i;
	json_t *d;
	json_int_t orphans;

	if (!newest_run(st, cfg, db->name, 1u << PV_JOB_INTEGRITY, PICK_CONCLUSIVE, &r)) {
		json_decref(top);
		return json_null();
	}
	o = run_summary(&r);
	f = figures_of(&r);
	for (const char **k = (const char *[]){"constraints", "checked", "orphaned_constraints", "orphans",
	                                       "timeouts", "errors", "not_checked", NULL};
	     *k != NULL; k++)
		copy_figure(o, f, *k);
	details = json_object_get(f, "details");
	v = pv_calloc(json_array_size(details) + 1, sizeof(*v));
	json_array_foreach(details, i, d)
	{
		if (json_integer_value(json_object_get(d, "orphans")) > 0)
			v[n++] = d;
	}
	qsort(v, n, sizeof(*v), cmp_orphans);
	for (i = 0; i < n && i < TOP_ORPHANS; i++)
		json_array_append_new(top, json_pack("{s:O,s:O}", "constraint",
		                                     json_object_get(v[i], "constraint"), "orphans",
		                                     json_object_get(v[i], "orphans")));
	free(v);
	json_object_set_new(o, "top_orphans", top);
	orphans = json_integer_value(json_object_get(f, "orphans"));
	if (orphans > 0)
		add_reason(rs, AT_RISK, "orphans", "%lld orphaned row%s in %lld foreign key%s",
		           (long long)orphans, orphans == 1 ? "" : "s",
		           (long long)json_integer_value(json_object_get(f, "orphaned_constraints")),
		           json_integer_value(json_object_get(f, "orphaned_constraints")) == 1 ? "" : "s");
	else if (!eq(r.result, "ok"))
		add_reason(rs, AT_RISK, "integrity_failed", "latest integrity check %s: %s", r.result,
		           r.cause ? r.cause : "no cause recorded");
	json_decref(f);
	pv_state_run_clear(&r);
	return o;
}

static json_t *
backups_section(struct pv_state *st, const struct pv_config *cfg, const struct pv_config_database *db,
                time_t now, struct reasons *rs)
{
	struct pv_state_backup *list = NULL;
	json_t *o = json_object(), *tiers = json_array(), *jobs = json_array();
	size_t n = 0;
	json_int_t bytes = 0, failed = 0, unverified = 0, unavailable = 0;

	if (!pv_state_backups_list(st, db->name, NULL, &list, &n, NULL))
		n = 0;
	for (size_t i = 0; i < n; i++) {
		const struct pv_state_backup *b = &list[i];
		bool seen = false;
		size_t k;
		json_t *t;

		if (!eq(b->status, "missing"))
			bytes += b->size;
		if (!eq(b->status, "ok"))
			unavailable++;
		else if (b->verify_result == NULL)
			unverified++;
		else if (!eq(b->verify_result, "ok"))
			failed++;
		json_array_foreach(tiers, k, t) seen =
		        seen || eq(json_string_value(json_object_get(t, "tier")), b->tier);
		if (seen || !verified(b))
			continue;
		/* Newest first: the first verified backup of a tier is its newest. */
		json_array_append_new(
		        tiers, json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:o}", "tier", b->tier, "job", b->job,
		                         "id", b->id, "finished", (json_int_t)b->finished, "age",
		                         (json_int_t)(now > b->finished ? now - b->finished : 0), "size",
		                         (json_int_t)b->size, "verified_at", opt_time(b->verified_at)));
	}
	/* Tiers configured but without any verified backup are shown too. */
	for (size_t j = 0; j < cfg->n_jobs; j++) {
		const struct pv_config_job *job = &cfg->jobs[j];
		struct pv_state_run r = {0};
		bool seen = false;
		size_t k;
		json_t *t, *jo;

		if (job->type != PV_JOB_BACKUP || !job_of_db(job, db->name))
			continue;
		json_array_foreach(tiers, k, t) seen =
		        seen || eq(json_string_value(json_object_get(t, "tier")), job->tier);
		if (!seen)
			json_array_append_new(
			        tiers, json_pack("{s:s,s:s,s:n}", "tier", job->tier, "job", job->name, "id"));
		jo = json_pack("{s:s,s:s}", "job", job->name, "tier", job->tier);
		if (pv_state_run_last_finished(st, job->name, &r, NULL)) {
			json_object_set_new(jo, "last_run", run_summary(&r));
			if (!eq(r.result, "ok") && !eq(r.result, "cancelled"))
				add_reason(rs, AT_RISK, "backup_failed", "latest run of backup job %s %s: %s",
				           job->name, r.result,
				           r.cause && r.cause[0] ? r.cause : "no cause recorded");
			pv_state_run_clear(&r);
		} else {
			json_object_set_new(jo, "last_run", json_null());
		}
		json_array_append_new(jobs, jo);
	}
	json_object_set_new(o, "newest_verified_per_tier", tiers);
	json_object_set_new(o, "jobs", jobs);
	json_object_set_new(o, "count", json_integer((json_int_t)n));
	json_object_set_new(o, "bytes", json_integer(bytes));
	json_object_set_new(o, "failed_verification", json_integer(failed));
	json_object_set_new(o, "not_verified", json_integer(unverified));
	json_object_set_new(o, "unavailable", json_integer(unavailable));
	pv_state_backups_free(list, n);
	return o;
}

static json_t *
restore_test(struct pv_state *st, const struct pv_config *cfg, const struct pv_config_database *db,
             enum pv_job_type type, struct pv_state_run *last)
{
	json_t *o, *f;

	if (!newest_run(st, cfg, db->name, 1u << type, PICK_CONCLUSIVE, last))
		return json_null();
	o = run_summary(last);
	f = figures_of(last);
	for (const char **k =
	             (const char *[]){"total_seconds", "restore_seconds", "validation_seconds",
	                              "drop_seconds", "backup_id", "backup_job", "backup_age_seconds",
	                              "tables", "rows", "mismatches", "consecutive_failures", "summary",
	                              "rto_seconds", "rto_objective_seconds", "rto_met", NULL};
	     *k != NULL; k++)
		copy_figure(o, f, *k);
	json_decref(f);
	return o;
}

static void
restore_reasons(const struct pv_config *cfg, const struct pv_config_database *db, struct pv_state_run *probe,
                struct pv_state_run *drill, json_t *rto, struct reasons *rs)
{
	struct pv_state_run *last = probe;
	bool configured = false;
	const char *what;
	const struct pv_config_rule *rule = &cfg->alerts.rules[PV_RULE_RESTORE_FAILURES];

	for (size_t j = 0; j < cfg->n_jobs; j++)
		if ((cfg->jobs[j].type == PV_JOB_RESTORE_PROBE || cfg->jobs[j].type == PV_JOB_DRILL) &&
		    job_of_db(&cfg->jobs[j], db->name))
			configured = true;
	if (last->result == NULL || (drill->result != NULL && drill->finished > last->finished))
		last = drill;
	what = last == drill ? "drill" : "restore probe";
	if (last->result != NULL && !eq(last->result, "ok")) {
		json_t *f = figures_of(last);
		json_int_t cons = json_integer_value(json_object_get(f, "consecutive_failures"));
		char extra[64] = "";
		if (cons > 1)
			snprintf(extra, sizeof(extra), " (%lld in a row%s)", (long long)cons,
			         rule->enabled && cons >= rule->consecutive
			                 ? ", restore_failures threshold reached"
			                 : "");
		add_reason(rs, NOT_READY, "restore_failed", "last %s %s%s: %s", what, last->result, extra,
		           last->cause && last->cause[0] ? last->cause : "no cause recorded");
		json_decref(f);
	} else if (json_is_null(json_object_get(rto, "seconds"))) {
		if (configured)
			add_reason(rs, AT_RISK, "restore_never_tested",
			           "no restore probe or drill has succeeded yet");
		else
			add_reason(rs, AT_RISK, "restore_not_configured",
			           "no restore_probe or drill job: recoverability is not proven");
	}
}

static void
rpo_rto_reasons(json_t *rr, struct reasons *rs)
{
	json_t *rpo = json_object_get(rr, "rpo"), *rto = json_object_get(rr, "rto");
	char a[32], b[32];

	if (json_is_null(json_object_get(rpo, "seconds"))) {
		add_reason(rs, NOT_READY, "no_verified_backup", "no verified backup");
	} else if (json_is_false(json_object_get(rpo, "met"))) {
		add_reason(rs, NOT_READY, "rpo_breached",
		           "RPO breached: the newest verified backup is %s old (objective %s)",
		           pv_report_duration((double)json_integer_value(json_object_get(rpo, "seconds")), a,
		                              sizeof(a)),
		           pv_report_duration((double)json_integer_value(json_object_get(rpo, "objective")),
		                              b, sizeof(b)));
	}
	if (json_is_false(json_object_get(rto, "met")) && !json_is_null(json_object_get(rto, "seconds")))
		add_reason(
		        rs, AT_RISK, "rto_breached",
		        "RTO breached: the last restore %s took %s (objective %s)",
		        eq(json_string_value(json_object_get(rto, "measured_by")), "drill") ? "drill"
		                                                                            : "probe",
		        pv_report_duration(json_number_value(json_object_get(rto, "seconds")), a, sizeof(a)),
		        pv_report_duration((double)json_integer_value(json_object_get(rto, "objective")), b,
		                           sizeof(b)));
}

static json_t *
storage_section(struct pv_state *st, const struct pv_config *cfg)
{
	struct pv_state_run r = {0};
	json_t *o, *f;
	json_t *days;

	if (!newest_run(st, cfg, NULL, 1u << PV_JOB_STORAGE, PICK_FINISHED, &r))
		return json_pack("{s:s,s:n}", "path", cfg->storage.path, "run");
	o = run_summary(&r);
	json_object_set_new(o, "path", json_string(cfg->storage.path));
	f = figures_of(&r);
	for (const char **k = (const char *[]){"total_bytes", "available_bytes", "used_bytes", "used_ratio",
	                                       "growth_bytes_per_day", "days_until_full", NULL};
	     *k != NULL; k++)
		copy_figure(o, f, *k);
	days = json_object_get(f, "days_until_full");
	json_object_set_new(o, "full_at",
	                    json_is_number(days) && json_number_value(days) < 1e5
	                            ? json_integer((json_int_t)(r.finished + json_number_value(days) * 86400))
	                            : json_null());
	json_decref(f);
	pv_state_run_clear(&r);
	return o;
}

static void
storage_reasons(const struct pv_config *cfg, json_t *storage, struct reasons *rs)
{
	const struct pv_config_rule *rule = &cfg->alerts.rules[PV_RULE_STORAGE_USAGE];
	json_t *ratio = json_object_get(storage, "used_ratio"),
	       *days = json_object_get(storage, "days_until_full");

	if (rule->enabled && json_is_number(ratio) && json_number_value(ratio) > rule->above)
		add_reason(rs, AT_RISK, "storage_usage", "backup storage %.0f%% full (threshold %.0f%%)",
		           json_number_value(ratio) * 100, rule->above * 100);
	if (json_is_number(days) && json_number_value(days) < STORAGE_FULL_SOON_DAYS)
		add_reason(rs, AT_RISK, "storage_filling",
		           "backup storage full in %.1f days at the current growth", json_number_value(days));
}

/* The alerts firing for a database, from the alert set the daemon persists after each evaluation. */
static json_t *
alerts_section(struct pv_state *st, const struct pv_config_database *db)
{
	json_t *list = json_array(), *j;
	struct pv_alert_set set = {0};
	char *text = NULL;

	if (pv_state_kv_get(st, "alerts", &text, NULL) && text != NULL &&
	    (j = json_loads(text, 0, NULL)) != NULL) {
		if (pv_alert_set_from_json(j, &set, NULL)) {
			for (size_t i = 0; i < set.n; i++) {
				const struct pv_alert_state *a = &set.v[i];
				if (a->status != PV_ALERT_FIRING || a->database == NULL ||
				    strcmp(a->database, db->name) != 0)
					continue;
				json_array_append_new(list,
				                      json_pack("{s:s,s:s,s:s?,s:s?,s:s?,s:I}", "rule",
				                                pv_alert_rule_name(a->rule), "severity",
				                                pv_severity_name(a->severity), "value",
				                                a->value, "threshold", a->threshold, "job",
				                                a->job, "since", (json_int_t)a->fired_at));
			}
		}
		pv_alert_set_clear(&set);
		json_decref(j);
	}
	free(text);
	return json_pack("{s:b,s:o}", "available", 1, "firing", list);
}

static json_t *
database_report(struct pv_state *st, const struct pv_config *cfg, const struct pv_config_database *db,
                json_t *storage, time_t now)
{
	struct reasons rs = {.list = json_array()};
	struct pv_state_run probe = {0}, drill = {0};
	json_t *o = json_object(), *schema, *rr = pv_report_rpo_rto(st, cfg, db, now);

	json_object_set_new(o, "name", json_string(db->name));
	/* Reasons in the order a reader should act on them: recoverability first. */
	rpo_rto_reasons(rr, &rs);
	json_object_set_new(o, "restore_probe", restore_test(st, cfg, db, PV_JOB_RESTORE_PROBE, &probe));
	json_object_set_new(o, "drill", restore_test(st, cfg, db, PV_JOB_DRILL, &drill));
	restore_reasons(cfg, db, &probe, &drill, json_object_get(rr, "rto"), &rs);
	json_object_set_new(o, "backups", backups_section(st, cfg, db, now, &rs));
	json_object_set_new(o, "health", health_section(st, cfg, db, &schema, &rs));
	json_object_set_new(o, "schema", schema);
	json_object_set_new(o, "integrity", integrity_section(st, cfg, db, &rs));
	storage_reasons(cfg, storage, &rs);
	json_object_set(o, "rpo", json_object_get(rr, "rpo"));
	json_object_set(o, "rto", json_object_get(rr, "rto"));
	json_object_set_new(o, "alerts", alerts_section(st, db));
	json_object_set_new(o, "headline",
	                    json_string(rs.not_ready ? NOT_READY
	                                : rs.at_risk ? AT_RISK
	                                             : READY));
	json_object_set_new(o, "reasons", rs.list);
	pv_state_run_clear(&probe);
	pv_state_run_clear(&drill);
	json_decref(rr);
	return o;
}

json_t *
pv_report_build(struct pv_state *st, const struct pv_config *cfg, time_t now)
{
	json_t *o = json_object(), *dbs = json_array();
	json_t *storage = storage_section(st, cfg);

	json_object_set_new(o, "generated", json_integer((json_int_t)now));
	json_object_set_new(o, "version", json_string(PV_VERSION));
	for (size_t i = 0; i < cfg->n_databases; i++)
		json_array_append_new(dbs, database_report(st, cfg, &cfg->databases[i], storage, now));
	json_object_set_new(o, "databases", dbs);
	json_object_set_new(o, "storage", storage);
	return o;
}

/* ---- Markdown ---- */

static const char *
jstr(const json_t *o, const char *key, const char *dflt)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s != NULL ? s : dflt;
}

static double
jnum(const json_t *o, const char *key)
{
	return json_number_value(json_object_get(o, key));
}

static time_t
jtime(const json_t *o, const char *key)
{
	return (time_t)json_integer_value(json_object_get(o, key));
}

/* Table cells and list items must not break the Markdown: newlines and pipes are replaced. */
static void
md_text(FILE *out, const char *s)
{
	for (; s != NULL && *s; s++) {
		if (*s == '\n' || *s == '\r')
			fputc(' ', out);
		else if (*s == '|')
			fputs("\\|", out);
		else
			fputc(*s, out);
	}
}

static void
md_run_line(FILE *out, const json_t *r)
{
	char when[32];

	fprintf(out, "%s at %s (job %s, run %lld)", jstr(r, "result", "?"),
	        iso(jtime(r, "at"), when, sizeof(when)), jstr(r, "job", "?"),
	        (long long)json_integer_value(json_object_get(r, "run")));
}

/* Latencies: "14 ms", "0.4 ms". */
static const char *
ms(double secs, char *buf, size_t size)
{
	snprintf(buf, size, secs < 0.01 ? "%.1f ms" : "%.0f ms", secs * 1000);
	return buf;
}

static void
md_health(FILE *out, const json_t *db)
{
	const json_t *h = json_object_get(db, "health");
	const json_t *sc = json_object_get(db, "schema");
	char a[32], b[32];

	fprintf(out, "### Connection health\n\n");
	if (!json_is_object(h)) {
		fprintf(out, "No health check has run for this database.\n\n");
	} else {
		fprintf(out, "- Latest check: ");
		md_run_line(out, h);
		fprintf(out, "\n");
		if (json_is_number(json_object_get(h, "connect_seconds"))) {
			fprintf(out, "- Connect latency: %s", ms(jnum(h, "connect_seconds"), a, sizeof(a)));
			if (json_is_number(json_object_get(h, "query_seconds")))
				fprintf(out, ", query %s", ms(jnum(h, "query_seconds"), a, sizeof(a)));
			fprintf(out, "\n");
		} else if (json_is_true(json_object_get(h, "reused_connection"))) {
			fprintf(out, "- Session kept from an earlier check (keep_connection)");
			if (json_is_number(json_object_get(h, "query_seconds")))
				fprintf(out, ", query %s", ms(jnum(h, "query_seconds"), a, sizeof(a)));
			fprintf(out, "\n");
		}
		if (jstr(h, "server_version", NULL) != NULL) {
			fprintf(out, "- Server: PostgreSQL ");
			md_text(out, jstr(h, "server_version", ""));
			fprintf(out, "\n");
		}
		if (json_is_integer(json_object_get(h, "database_size_bytes")))
			fprintf(out, "- Database size: %s\n",
			        pv_report_size(
			                (double)json_integer_value(json_object_get(h, "database_size_bytes")),
			                a, sizeof(a)));
		if (json_is_false(json_object_get(h, "connected")))
			fprintf(out, "- **Unreachable** since %s (%s)\n",
			        iso(jtime(h, "failing_since"), b, sizeof(b)),
			        jstr(h, "error_class", "other"));
		if (jstr(h, "cause", NULL) != NULL) {
			fprintf(out, "- Cause: ");
			md_text(out, jstr(h, "cause", ""));
			fprintf(out, "\n");
		}
		fprintf(out, "\n");
	}

	fprintf(out, "### Schema validation\n\n");
	if (!json_is_integer(json_object_get(sc, "tables"))) {
		fprintf(out, "Not checked: no health check has read the schema.\n\n");
	} else {
		const json_t *missing = json_object_get(sc, "missing_critical_tables");
		const json_t *crit = json_object_get(sc, "critical_tables");
		size_t i;
		json_t *m;

		fprintf(out, "- User tables: %lld",
		        (long long)json_integer_value(json_object_get(sc, "tables")));
		if (json_is_integer(json_object_get(sc, "expected_tables")))
			fprintf(out, " (expected %lld: %s)",
			        (long long)json_integer_value(json_object_get(sc, "expected_tables")),
			        json_is_true(json_object_get(sc, "tables_ok")) ? "ok" : "**MISMATCH**");
		else
			fprintf(out, " (no expected_tables configured)");
		fprintf(out, "\n- Critical tables: ");
		if (json_array_size(crit) == 0)
			fprintf(out, "none configured\n");
		else if (json_array_size(missing) == 0)
			fprintf(out, "all %zu present\n", json_array_size(crit));
		else {
			fprintf(out, "**missing** ");
			json_array_foreach(missing, i, m)
			{
				fprintf(out, "%s`", i ? ", " : "");
				md_text(out, json_string_value(m));
				fprintf(out, "`");
			}
			fprintf(out, " (of %zu configured)\n", json_array_size(crit));
		}
		fprintf(out, "\n");
	}
}

static void
md_integrity(FILE *out, const json_t *db)
{
	const json_t *in = json_object_get(db, "integrity");
	const json_t *top = json_object_get(in, "top_orphans");
	size_t i;
	json_t *t;

	fprintf(out, "### Data integrity\n\n");
	if (!json_is_object(in)) {
		fprintf(out, "No integrity check has run for this database.\n\n");
		return;
	}
	fprintf(out, "- Latest check: ");
	md_run_line(out, in);
	fprintf(out, "\n- Foreign keys: %lld, checked %lld; ",
	        (long long)json_integer_value(json_object_get(in, "constraints")),
	        (long long)json_integer_value(json_object_get(in, "checked")));
	if (json_integer_value(json_object_get(in, "orphans")) == 0)
		fprintf(out, "no orphaned rows");
	else
		fprintf(out, "%lld orphaned row%s in %lld of them",
		        (long long)json_integer_value(json_object_get(in, "orphans")),
		        json_integer_value(json_object_get(in, "orphans")) == 1 ? "" : "s",
		        (long long)json_integer_value(json_object_get(in, "orphaned_constraints")));
	if (json_integer_value(json_object_get(in, "timeouts")) +
	            json_integer_value(json_object_get(in, "errors")) +
	            json_integer_value(json_object_get(in, "not_checked")) >
	    0)
		fprintf(out, "; %lld timed out, %lld failed, %lld not checked",
		        (long long)json_integer_value(json_object_get(in, "timeouts")),
		        (long long)json_integer_value(json_object_get(in, "errors")),
		        (long long)json_integer_value(json_object_get(in, "not_checked")));
	fprintf(out, "\n");
	if (!eq(jstr(in, "result", NULL), "ok") && jstr(in, "cause", NULL) != NULL) {
		fprintf(out, "- Cause: ");
		md_text(out, jstr(in, "cause", ""));
		fprintf(out, "\n");
	}
	if (json_array_size(top) > 0) {
		fprintf(out, "\n| Foreign key | Orphaned rows |\n|---|---:|\n");
		json_array_foreach(top, i, t)
		{
			fprintf(out, "| `");
			md_text(out, jstr(t, "constraint", "?"));
			fprintf(out, "` | %lld |\n",
			        (long long)json_integer_value(json_object_get(t, "orphans")));
		}
		if (json_integer_value(json_object_get(in, "orphaned_constraints")) >
		    (json_int_t)json_array_size(top))
			fprintf(out, "\nShowing the %zu foreign keys with the most orphans.\n",
			        json_array_size(top));
	}
	fprintf(out, "\n");
}

static void
md_backups(FILE *out, const json_t *db)
{
	const json_t *bk = json_object_get(db, "backups");
	const json_t *tiers = json_object_get(bk, "newest_verified_per_tier");
	const json_t *jobs = json_object_get(bk, "jobs");
	char a[32], b[32], c[32];
	size_t i;
	json_t *t;

	fprintf(out, "### Backups\n\n");
	if (json_array_size(tiers) > 0) {
		fprintf(out, "| Tier | Newest verified backup | Finished | Age | Size "
		             "|\n|---|---|---|---|---:|\n");
		json_array_foreach(tiers, i, t)
		{
			fprintf(out, "| ");
			md_text(out, jstr(t, "tier", "?"));
			if (jstr(t, "id", NULL) == NULL) {
				fprintf(out, " | **none** (job ");
				md_text(out, jstr(t, "job", "?"));
				fprintf(out, ") | - | - | - |\n");
				continue;
			}
			fprintf(out, " | ");
			md_text(out, jstr(t, "id", "?"));
			fprintf(out, " (job ");
			md_text(out, jstr(t, "job", "?"));
			fprintf(out, ") | %s | %s | %s |\n", iso(jtime(t, "finished"), a, sizeof(a)),
			        pv_report_duration((double)json_integer_value(json_object_get(t, "age")), b,
			                           sizeof(b)),
			        pv_report_size((double)json_integer_value(json_object_get(t, "size")), c,
			                       sizeof(c)));
		}
		fprintf(out, "\n");
	}
	fprintf(out, "- Stored: %lld backup%s, %s",
	        (long long)json_integer_value(json_object_get(bk, "count")),
	        json_integer_value(json_object_get(bk, "count")) == 1 ? "" : "s",
	        pv_report_size((double)json_integer_value(json_object_get(bk, "bytes")), a, sizeof(a)));
	if (json_integer_value(json_object_get(bk, "failed_verification")) > 0)
		fprintf(out, "; **%lld failed verification**",
		        (long long)json_integer_value(json_object_get(bk, "failed_verification")));
	if (json_integer_value(json_object_get(bk, "not_verified")) > 0)
		fprintf(out, "; %lld not verified yet",
		        (long long)json_integer_value(json_object_get(bk, "not_verified")));
	if (json_integer_value(json_object_get(bk, "unavailable")) > 0)
		fprintf(out, "; **%lld missing, changed or unreadable**",
		        (long long)json_integer_value(json_object_get(bk, "unavailable")));
	fprintf(out, "\n");
	json_array_foreach(jobs, i, t)
	{
		const json_t *r = json_object_get(t, "last_run");
		fprintf(out, "- Job ");
		md_text(out, jstr(t, "job", "?"));
		fprintf(out, " (tier ");
		md_text(out, jstr(t, "tier", "?"));
		fprintf(out, "): ");
		if (!json_is_object(r)) {
			fprintf(out, "never run\n");
			continue;
		}
		fprintf(out, "latest run %s at %s", jstr(r, "result", "?"),
		        iso(jtime(r, "at"), a, sizeof(a)));
		if (!eq(jstr(r, "result", NULL), "ok") && jstr(r, "cause", NULL) != NULL) {
			fprintf(out, ": ");
			md_text(out, jstr(r, "cause", ""));
		}
		fprintf(out, "\n");
	}
	fprintf(out, "\n");
}

static void
md_restore_test(FILE *out, const char *what, const json_t *r)
{
	char a[32], b[32], c[32];
	const json_t *mis = json_object_get(r, "mismatches");
	const json_t *summary = json_object_get(r, "summary");

	fprintf(out, "- Last %s: ", what);
	if (!json_is_object(r)) {
		fprintf(out, "none\n");
		return;
	}
	md_run_line(out, r);
	fprintf(out, "\n");
	if (json_is_number(json_object_get(r, "total_seconds"))) {
		fprintf(out, "  - Measured: total %s",
		        pv_report_duration(jnum(r, "total_seconds"), a, sizeof(a)));
		if (json_is_number(json_object_get(r, "restore_seconds")))
			fprintf(out, ", restore %s",
			        pv_report_duration(jnum(r, "restore_seconds"), b, sizeof(b)));
		if (json_is_number(json_object_get(r, "validation_seconds")))
			fprintf(out, ", validation %s",
			        pv_report_duration(jnum(r, "validation_seconds"), c, sizeof(c)));
		fprintf(out, "\n");
	}
	if (jstr(r, "backup_id", NULL) != NULL) {
		fprintf(out, "  - Backup: ");
		md_text(out, jstr(r, "backup_id", ""));
		if (json_is_integer(json_object_get(r, "tables")))
			fprintf(out, ", %lld tables, %lld rows restored",
			        (long long)json_integer_value(json_object_get(r, "tables")),
			        (long long)json_integer_value(json_object_get(r, "rows")));
		fprintf(out, "\n");
	}
	if (!eq(jstr(r, "result", NULL), "ok")) {
		fprintf(out, "  - Cause: ");
		md_text(out, jstr(r, "cause", "no cause recorded"));
		fprintf(out, "\n");
		if (json_integer_value(json_object_get(r, "consecutive_failures")) > 0)
			fprintf(out, "  - Consecutive failures: %lld\n",
			        (long long)json_integer_value(json_object_get(r, "consecutive_failures")));
	}
	if (json_array_size(mis) > 0) {
		size_t i;
		json_t *m;
		fprintf(out, "  - Mismatches:\n");
		json_array_foreach(mis, i, m)
		{
			fprintf(out, "    - ");
			md_text(out, json_is_string(m) ? json_string_value(m) : "?");
			fprintf(out, "\n");
		}
	}
	if (json_is_string(summary)) {
		fprintf(out, "  - Summary: ");
		md_text(out, json_string_value(summary));
		fprintf(out, "\n");
	} else if (summary != NULL && !json_is_null(summary)) {
		char *s = json_dumps(summary, JSON_COMPACT | JSON_SORT_KEYS);
		fprintf(out, "  - Summary: `");
		md_text(out, s);
		fprintf(out, "`\n");
		free(s);
	}
}

static void
md_objective(FILE *out, const char *label, const char *achieved, const json_t *obj)
{
	char a[32];
	const json_t *objective = json_object_get(obj, "objective"), *met = json_object_get(obj, "met");

	fprintf(out, "| %s | %s | %s | %s |\n", label, achieved,
	        json_is_integer(objective)
	                ? pv_report_duration((double)json_integer_value(objective), a, sizeof(a))
	                : "not set",
	        json_is_true(met)    ? "met"
	        : json_is_false(met) ? "**BREACHED**"
	                             : "-");
}

static void
md_rpo_rto(FILE *out, const json_t *db)
{
	const json_t *rpo = json_object_get(db, "rpo"), *rto = json_object_get(db, "rto");
	char a[32], b[32];
	char line[256];
	json_t *gap;

	fprintf(out, "### Achieved RPO and RTO\n\n| | Achieved | Objective | Status |\n|---|---|---|---|\n");
	if (json_is_integer(json_object_get(rpo, "seconds")))
		snprintf(line, sizeof(line), "%s (newest verified backup %s)",
		         pv_report_duration((double)json_integer_value(json_object_get(rpo, "seconds")), a,
		                            sizeof(a)),
		         jstr(rpo, "newest_verified_backup", "?"));
	else
		snprintf(line, sizeof(line), "no verified backup");
	md_objective(out, "RPO", line, rpo);
	if (json_is_integer(json_object_get(rpo, "largest_gap_30d"))) {
		json_int_t g = json_integer_value(json_object_get(rpo, "largest_gap_30d"));
		json_int_t o = json_integer_value(json_object_get(rpo, "objective"));
		snprintf(line, sizeof(line), "%s", pv_report_duration((double)g, a, sizeof(a)));
		gap = json_pack("{s:O,s:o}", "objective", json_object_get(rpo, "objective"), "met",
		                o > 0 ? json_boolean(g <= o) : json_null());
		md_objective(out, "Largest gap, 30 days", line, gap);
		json_decref(gap);
	}
	if (json_is_number(json_object_get(rto, "seconds")))
		snprintf(line, sizeof(line), "%s (%s run %lld at %s)",
		         pv_report_duration(jnum(rto, "seconds"), a, sizeof(a)),
		         eq(jstr(rto, "measured_by", NULL), "drill") ? "drill" : "restore probe",
		         (long long)json_integer_value(json_object_get(rto, "run")),
		         iso(jtime(rto, "at"), b, sizeof(b)));
	else
		snprintf(line, sizeof(line), "never measured");
	md_objective(out, "RTO", line, rto);
	fprintf(out, "\n");
}

static void
md_storage(FILE *out, const json_t *s)
{
	char a[32], b[32], c[32], when[32];

	fprintf(out, "## Storage\n\n- Path: `");
	md_text(out, jstr(s, "path", "?"));
	fprintf(out, "`\n");
	if (!json_is_integer(json_object_get(s, "total_bytes"))) {
		fprintf(out, "- No storage check has run.\n\n");
		return;
	}
	fprintf(out, "- Used %s of %s (%.0f%%), %s free, as of %s\n",
	        pv_report_size((double)json_integer_value(json_object_get(s, "used_bytes")), a, sizeof(a)),
	        pv_report_size((double)json_integer_value(json_object_get(s, "total_bytes")), b, sizeof(b)),
	        jnum(s, "used_ratio") * 100,
	        pv_report_size((double)json_integer_value(json_object_get(s, "available_bytes")), c,
	                       sizeof(c)),
	        iso(jtime(s, "at"), when, sizeof(when)));
	if (!json_is_number(json_object_get(s, "growth_bytes_per_day")))
		fprintf(out, "- Forecast: not enough history yet (storage checks over at least an hour are "
		             "needed)\n");
	else if (jnum(s, "growth_bytes_per_day") <= 0)
		fprintf(out, "- Forecast: not filling (growth %s/day)\n",
		        pv_report_size(jnum(s, "growth_bytes_per_day"), a, sizeof(a)));
	else
		fprintf(out, "- Forecast: growing %s/day; full in about %.1f days (around %s)\n",
		        pv_report_size(jnum(s, "growth_bytes_per_day"), a, sizeof(a)),
		        jnum(s, "days_until_full"), iso(jtime(s, "full_at"), b, sizeof(b)));
	fprintf(out, "\n");
}

char *
pv_report_markdown(const json_t *report)
{
	const json_t *dbs = json_object_get(report, "databases");
	char *buf = NULL;
	size_t len = 0, i;
	FILE *out = open_memstream(&buf, &len);
	char when[32], a[32];
	json_t *db;

	if (out == NULL)
		abort(); /* only out of memory */
	fprintf(out,
	        "# Disaster-recovery readiness report\n\nGenerated %s by pgvigil %s for %zu database%s.\n\n",
	        iso(jtime(report, "generated"), when, sizeof(when)), jstr(report, "version", "?"),
	        json_array_size(dbs), json_array_size(dbs) == 1 ? "" : "s");
	json_array_foreach(dbs, i, db)
	{
		fprintf(out, "- **%s**: ", jstr(db, "headline", "?"));
		md_text(out, jstr(db, "name", "?"));
		fprintf(out, "\n");
	}
	fprintf(out, "\n");
	json_array_foreach(dbs, i, db)
	{
		const json_t *reasons = json_object_get(db, "reasons");
		const json_t *sz = json_object_get(json_object_get(db, "backups"), "bytes");
		size_t k;
		json_t *r;

		fprintf(out, "## ");
		md_text(out, jstr(db, "name", "?"));
		fprintf(out, ": %s\n\n", jstr(db, "headline", "?"));
		if (json_array_size(reasons) == 0)
			fprintf(out, "Every check passes.\n\n");
		json_array_foreach(reasons, k, r)
		{
			fprintf(out, "- %s: ", jstr(r, "level", "?"));
			md_text(out, jstr(r, "text", "?"));
			fprintf(out, "\n");
		}
		if (json_array_size(reasons) > 0)
			fprintf(out, "\n");
		md_health(out, db);
		md_integrity(out, db);
		md_backups(out, db);
		fprintf(out, "### Restore tests\n\n");
		md_restore_test(out, "restore probe", json_object_get(db, "restore_probe"));
		md_restore_test(out, "drill", json_object_get(db, "drill"));
		fprintf(out, "\n");
		md_rpo_rto(out, db);
		fprintf(out, "### Firing alerts\n\n");
		{
			json_t *firing = json_object_get(json_object_get(db, "alerts"), "firing");
			size_t ai;
			json_t *al;

			if (json_array_size(firing) == 0)
				fprintf(out, "none\n\n");
			json_array_foreach(firing, ai, al)
			{
				fprintf(out, "- %s %s: %s (threshold %s)\n", jstr(al, "severity", "?"),
				        jstr(al, "rule", "?"), jstr(al, "value", "?"),
				        jstr(al, "threshold", "-"));
			}
			if (json_array_size(firing) > 0)
				fprintf(out, "\n");
		}
		fprintf(out,
		        "### Storage\n\nThis database's backups use %s; the store is shared (see "
		        "Storage).\n\n",
		        pv_report_size((double)json_integer_value(sz), a, sizeof(a)));
	}
	md_storage(out, json_object_get(report, "storage"));
	fclose(out);
	return buf;
}

bool
pv_ctl_report(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	*data = pv_report_build(pv_daemon_state(ctx), pv_daemon_config(ctx), time(NULL));
	return true;
}
