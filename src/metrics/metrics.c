/* The Prometheus endpoint: GET /metrics rendered from the state database and the daemon's memory. */
#include "metrics/metrics.h"

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>

#include "alert/engine.h"
#include "config/config.h"
#include "ctl/report.h"
#include "state/state.h"
#include "util/log.h"
#include "util/mem.h"

/* Runs read per job when looking for the newest health check or restore probe with a result: a few
 * cancelled ones in a row are skipped, and a scrape never reads a job's whole history. */
#define RECENT_RUNS 8
/* A client that has not sent its request within this long is dropped. */
#define HTTP_TIMEOUT_SEC 10
#define HTTP_MAX_HEADERS 8192
#define HTTP_MAX_BODY    4096
/* The run history is first counted in steps of this many runs, one step per loop turn (about 10 ms
 * each), so a long history (a year of one-minute health checks is 525,000 runs) never holds up jobs. */
#define PRIME_ROWS 10000
/* Beyond this the storage forecast means "not in any relevant future" (as in the report). */
#define FORECAST_MAX_DAYS 1e5

/* Every result a run can end with (pv_run_result_name): each job has all of them, 0 until seen, so
 * rate() and increase() work from the first run. */
static const char *const RESULTS[] = {"ok", "failed", "timeout", "cancelled", "interrupted"};
#define N_RESULTS (sizeof(RESULTS) / sizeof(RESULTS[0]))

static bool
eq(const char *a, const char *b)
{
	return a != NULL && b != NULL && strcmp(a, b) == 0;
}

/* Equal, NULL included (a run without a database). */
static bool
eq_null(const char *a, const char *b)
{
	return a == NULL ? b == NULL : eq(a, b);
}

/* ---- the text ---- */

struct out {
	char *p;
	size_t len, cap;
	int errors; /* state reads that failed during this render */
};

static void
out_reserve(struct out *o, size_t more)
{
	if (o->len + more + 1 <= o->cap)
		return;
	while (o->len + more + 1 > o->cap)
		o->cap = o->cap ? o->cap * 2 : 8192;
	o->p = pv_realloc(o->p, o->cap);
}

static void
out_puts(struct out *o, const char *s)
{
	size_t n = strlen(s);
	out_reserve(o, n);
	memcpy(o->p + o->len, s, n + 1);
	o->len += n;
}

void
pv_metrics_escape_label(const char *s, char *out)
{
	for (; *s != '\0'; s++) {
		switch (*s) {
		case '\\':
			*out++ = '\\';
			*out++ = '\\';
			break;
		case '"':
			*out++ = '\\';
			*out++ = '"';
			break;
		case '\n':
			*out++ = '\\';
			*out++ = 'n';
			break;
		default: *out++ = *s;
		}
	}
	*out = '\0';
}

/* HELP text escapes backslash and newline only. */
static void
out_help(struct out *o, const char *s)
{
	for (; *s != '\0'; s++) {
		out_reserve(o, 2);
		if (*s == '\\' || *s == '\n')
			o->p[o->len++] = '\\';
		o->p[o->len++] = *s == '\n' ? 'n' : *s;
	}
	o->p[o->len] = '\0';
}

/* Shortest text that reads back as the same double; integers without an exponent up to 2^53. */
static void
value_text(double v, char *buf, size_t size)
{
	if (isnan(v))
		snprintf(buf, size, "NaN");
	else if (isinf(v))
		snprintf(buf, size, v > 0 ? "+Inf" : "-Inf");
	else if (v == floor(v) && fabs(v) < 9007199254740992.0)
		snprintf(buf, size, "%.0f", v);
	else {
		snprintf(buf, size, "%.15g", v);
		if (strtod(buf, NULL) != v)
			snprintf(buf, size, "%.17g", v);
	}
}

/* One family block starts: its HELP and TYPE lines. Every family is written once, its samples after it. */
static void
family(struct out *o, const char *name, const char *type, const char *help)
{
	out_puts(o, "# HELP ");
	out_puts(o, name);
	out_puts(o, " ");
	out_help(o, help);
	out_puts(o, "\n# TYPE ");
	out_puts(o, name);
	out_puts(o, " ");
	out_puts(o, type);
	out_puts(o, "\n");
}

/* labels: name, value pairs ending with NULL (or labels NULL). */
static void
sample(struct out *o, const char *name, const char *const *labels, double value)
{
	char num[64];

	out_puts(o, name);
	for (size_t i = 0; labels != NULL && labels[i] != NULL; i += 2) {
		const char *val = labels[i + 1] != NULL ? labels[i + 1] : "";
		out_puts(o, i == 0 ? "{" : ",");
		out_puts(o, labels[i]);
		out_puts(o, "=\"");
		out_reserve(o, 2 * strlen(val));
		pv_metrics_escape_label(val, o->p + o->len);
		o->len += strlen(o->p + o->len);
		out_puts(o, "\"");
		if (labels[i + 2] == NULL)
			out_puts(o, "}");
	}
	value_text(value, num, sizeof(num));
	out_puts(o, " ");
	out_puts(o, num);
	out_puts(o, "\n");
}

#define LABELS(...) ((const char *const[]){__VA_ARGS__, NULL})

static void
read_failed(struct out *o, const char *what, const struct pv_error *err)
{
	o->errors++;
	pv_log_warn("metrics: cannot read %s error=%s", what, pv_log_quote(err->msg));
}

/* ---- run counts ---- */

struct tally {
	char *job, *database, *result;
	int64_t count;
	time_t last_finished;
};

struct pv_metrics_runs {
	int64_t settled_id; /* runs up to this id are in v for good */
	struct tally *v;
	size_t n, cap;
};

struct pv_metrics_runs *
pv_metrics_runs_new(void)
{
	return pv_calloc(1, sizeof(struct pv_metrics_runs));
}

void
pv_metrics_runs_free(struct pv_metrics_runs *runs)
{
	if (runs == NULL)
		return;
	for (size_t i = 0; i < runs->n; i++) {
		free(runs->v[i].job);
		free(runs->v[i].database);
		free(runs->v[i].result);
	}
	free(runs->v);
	free(runs);
}

static void
tally_add(struct pv_metrics_runs *runs, const struct pv_state_run_tally *t)
{
	struct tally *e = NULL;

	for (size_t i = 0; i < runs->n && e == NULL; i++)
		if (eq(runs->v[i].job, t->job) && eq_null(runs->v[i].database, t->database) &&
		    eq(runs->v[i].result, t->result))
			e = &runs->v[i];
	if (e == NULL) {
		if (runs->n == runs->cap) {
			runs->cap = runs->cap ? runs->cap * 2 : 32;
			runs->v = pv_realloc(runs->v, runs->cap * sizeof(*runs->v));
		}
		e = &runs->v[runs->n++];
		memset(e, 0, sizeof(*e));
		e->job = pv_strdup(t->job);
		e->database = t->database != NULL ? pv_strdup(t->database) : NULL;
		e->result = pv_strdup(t->result);
	}
	e->count += t->count;
	if (t->last_finished > e->last_finished)
		e->last_finished = t->last_finished;
}

/* The counts of this scrape: the settled ones carried over, plus the runs that ended since the oldest
 * one still running (read afresh each time). */
struct runs_now {
	struct pv_metrics_runs *settled;
	struct pv_metrics_runs fresh;
	bool ok; /* the counts could be read: without them the run families have no samples */
};

static void
runs_collect(struct out *o, struct pv_state *st, struct pv_metrics_runs *settled, struct runs_now *now)
{
	struct pv_state_run_tally *v = NULL;
	struct pv_error err;
	int64_t upto;
	size_t n = 0;

	now->settled = settled;
	memset(&now->fresh, 0, sizeof(now->fresh));
	now->ok = pv_state_runs_tally(st, settled->settled_id, 0, &upto, &v, &n, &err);
	if (!now->ok) {
		read_failed(o, "run counts", &err);
		return;
	}
	for (size_t i = 0; i < n; i++)
		tally_add(v[i].settled ? settled : &now->fresh, &v[i]);
	settled->settled_id = upto;
	pv_state_run_tallies_free(v, n);
}

static void
runs_now_clear(struct runs_now *now)
{
	for (size_t i = 0; i < now->fresh.n; i++) {
		free(now->fresh.v[i].job);
		free(now->fresh.v[i].database);
		free(now->fresh.v[i].result);
	}
	free(now->fresh.v);
	memset(&now->fresh, 0, sizeof(now->fresh));
}

/* Runs of job that ended with result, over every database they were recorded with. */
static int64_t
runs_count(const struct runs_now *now, const char *job, const char *result)
{
	const struct pv_metrics_runs *sets[] = {now->settled, &now->fresh};
	int64_t count = 0;

	for (size_t k = 0; k < 2; k++)
		for (size_t i = 0; i < sets[k]->n; i++)
			if (eq(sets[k]->v[i].job, job) && eq(sets[k]->v[i].result, result))
				count += sets[k]->v[i].count;
	return count;
}

/* The latest finish of a run of job, recorded for database, that ended with result; 0 when none. */
static time_t
runs_last(const struct runs_now *now, const char *job, const char *database, const char *result)
{
	const struct pv_metrics_runs *sets[] = {now->settled, &now->fresh};
	time_t last = 0;

	for (size_t k = 0; k < 2; k++)
		for (size_t i = 0; i < sets[k]->n; i++) {
			const struct tally *t = &sets[k]->v[i];
			if (eq(t->job, job) && eq_null(t->database, database) && eq(t->result, result) &&
			    t->last_finished > last)
				last = t->last_finished;
		}
	return last;
}

/* ---- what the jobs recorded ---- */

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
job_of_db(const struct pv_config_job *job, const char *db)
{
	return job->database != NULL && eq(job->database->name, db);
}

typedef bool (*run_filter)(const struct pv_state_run *r, json_t *figures);

/* Health checks that reached a verdict on connectivity (a cancelled one did not). */
static bool
has_connected(const struct pv_state_run *r, json_t *f)
{
	return json_is_boolean(json_object_get(f, "connected"));
}

/* Probes that ran to a result. */
static bool
conclusive(const struct pv_state_run *r, json_t *f)
{
	return !eq(r->result, "cancelled");
}

/*
 * The newest ended run (by finish) among the recent runs of db's jobs of `type` that `keep` accepts,
 * with its figures (*figures owned by the caller). false when there is none.
 */
static bool
newest_run(struct out *o, const struct pv_metrics_view *v, const char *db, enum pv_job_type type,
           run_filter keep, struct pv_state_run *best, json_t **figures)
{
	bool have = false;

	memset(best, 0, sizeof(*best));
	*figures = NULL;
	for (size_t j = 0; j < v->cfg->n_jobs; j++) {
		const struct pv_config_job *job = &v->cfg->jobs[j];
		struct pv_state_run *runs = NULL;
		struct pv_error err;
		size_t n = 0;

		if (job->type != type || !job_of_db(job, db))
			continue;
		if (!pv_state_runs_list(v->state, job->name, RECENT_RUNS, &runs, &n, &err)) {
			read_failed(o, "recent runs", &err);
			continue;
		}
		for (size_t i = 0; i < n; i++) {
			struct pv_state_run *r = &runs[i];
			json_t *f;

			if (r->result == NULL || r->finished <= 0 || !eq(r->database, db))
				continue;
			f = figures_of(r);
			if (!keep(r, f)) {
				json_decref(f);
				continue;
			}
			/* Newest first: the first run kept is this job's newest. */
			if (!have || r->finished > best->finished ||
			    (r->finished == best->finished && r->id > best->id)) {
				pv_state_run_clear(best);
				json_decref(*figures);
				*best = *r;
				memset(r, 0, sizeof(*r));
				*figures = f;
				have = true;
			} else {
				json_decref(f);
			}
			break;
		}
		pv_state_runs_free(runs, n);
	}
	return have;
}

/* A number from the figures, when there is one. */
static bool
figure(json_t *f, const char *key, double *out)
{
	json_t *x = json_object_get(f, key);
	if (!json_is_number(x))
		return false;
	*out = json_number_value(x);
	return true;
}

/* An optional value: a family's sample is written only when `have`. */
struct opt {
	bool have;
	double v;
};

static void
opt_set(struct opt *o, double v)
{
	o->have = true;
	o->v = v;
}

/* A number of a JSON object (the report's RPO/RTO), when it is not null. */
static struct opt
opt_json(json_t *o, const char *key)
{
	struct opt r = {0};
	json_t *x = json_object_get(o, key);
	if (json_is_number(x))
		opt_set(&r, json_number_value(x));
	return r;
}

struct db_facts {
	const char *name;
	struct opt up, connect, health_at, size;
	struct opt rpo, rpo_objective, rpo_gap, rto, rto_objective;
	struct opt probe_last_ok, probe_seconds, probe_success;
};

static void
collect_database(struct out *o, const struct pv_metrics_view *v, const struct runs_now *runs,
                 const struct pv_config_database *db, struct db_facts *df)
{
	struct pv_state_run r;
	json_t *f, *rr;
	double x;
	time_t last_ok = 0;

	df->name = db->name;
	if (newest_run(o, v, db->name, PV_JOB_HEALTH, has_connected, &r, &f)) {
		opt_set(&df->up, json_is_true(json_object_get(f, "connected")) ? 1 : 0);
		opt_set(&df->health_at, (double)r.finished);
		/* Only what this check measured: an older latency would describe another connection. */
		if (figure(f, "connect_seconds", &x))
			opt_set(&df->connect, x);
		if (figure(f, "database_size_bytes", &x))
			opt_set(&df->size, x);
		json_decref(f);
		pv_state_run_clear(&r);
	}

	/* The same achieved RPO/RTO as `pgvigilctl status` and the report. */
	rr = pv_report_rpo_rto(v->state, v->cfg, db, v->now);
	df->rpo = opt_json(json_object_get(rr, "rpo"), "seconds");
	df->rpo_objective = opt_json(json_object_get(rr, "rpo"), "objective");
	df->rpo_gap = opt_json(json_object_get(rr, "rpo"), "largest_gap_30d");
	df->rto = opt_json(json_object_get(rr, "rto"), "seconds");
	df->rto_objective = opt_json(json_object_get(rr, "rto"), "objective");
	json_decref(rr);

	for (size_t j = 0; j < v->cfg->n_jobs; j++) {
		const struct pv_config_job *job = &v->cfg->jobs[j];
		time_t t;
		if (job->type != PV_JOB_RESTORE_PROBE || !job_of_db(job, db->name))
			continue;
		t = runs_last(runs, job->name, db->name, "ok");
		if (t > last_ok)
			last_ok = t;
	}
	if (last_ok > 0)
		opt_set(&df->probe_last_ok, (double)last_ok);
	if (newest_run(o, v, db->name, PV_JOB_RESTORE_PROBE, conclusive, &r, &f)) {
		opt_set(&df->probe_seconds, figure(f, "total_seconds", &x) ? x : r.duration);
		opt_set(&df->probe_success, eq(r.result, "ok") ? 1 : 0);
		json_decref(f);
		pv_state_run_clear(&r);
	}
}

struct backup_facts {
	const char *job, *database;
	struct opt last_ok, size, duration;
};

static void
collect_backup(struct out *o, const struct pv_metrics_view *v, const struct runs_now *runs,
               const struct pv_config_job *job, struct backup_facts *bf)
{
	struct pv_state_backup b;
	struct pv_error err;
	time_t t;

	bf->job = job->name;
	bf->database = job->database->name;
	t = runs_last(runs, job->name, bf->database, "ok");
	if (t > 0)
		opt_set(&bf->last_ok, (double)t);
	if (pv_state_backup_newest_verified(v->state, bf->database, job->name, &b, &err)) {
		opt_set(&bf->size, (double)b.size);
		opt_set(&bf->duration, b.duration);
		pv_state_backup_clear(&b);
	} else if (err.code != PV_ERR_NOT_FOUND) {
		read_failed(o, "newest verified backup", &err);
	}
}

struct storage_facts {
	struct opt ratio, used, total, full_at;
};

/* The newest storage run over every storage job (like the alert rules and the report). */
static void
collect_storage(struct out *o, const struct pv_metrics_view *v, struct storage_facts *sf)
{
	time_t best = 0;

	for (size_t j = 0; j < v->cfg->n_jobs; j++) {
		struct pv_state_run r;
		struct pv_error err;
		json_t *f;
		double ratio, x;

		if (v->cfg->jobs[j].type != PV_JOB_STORAGE)
			continue;
		if (!pv_state_run_last_finished(v->state, v->cfg->jobs[j].name, &r, &err)) {
			if (err.code != PV_ERR_NOT_FOUND)
				read_failed(o, "storage figures", &err);
			continue;
		}
		f = figures_of(&r);
		if (figure(f, "used_ratio", &ratio) && r.finished >= best) {
			best = r.finished;
			memset(sf, 0, sizeof(*sf));
			opt_set(&sf->ratio, ratio);
			if (figure(f, "used_bytes", &x))
				opt_set(&sf->used, x);
			if (figure(f, "total_bytes", &x))
				opt_set(&sf->total, x);
			if (figure(f, "days_until_full", &x) && x >= 0 && x < FORECAST_MAX_DAYS)
				opt_set(&sf->full_at, (double)r.finished + x * 86400.0);
		}
		json_decref(f);
		pv_state_run_clear(&r);
	}
}

/* ---- rendering ---- */

#define EACH_DB(field, help, metric)                                                                         \
	do {                                                                                                 \
		family(&o, metric, "gauge", help);                                                           \
		for (size_t i = 0; i < ndb; i++)                                                             \
			if (dbs[i].field.have)                                                               \
				sample(&o, metric, LABELS("database", dbs[i].name), dbs[i].field.v);         \
	} while (0)

#define EACH_BACKUP(field, help, metric)                                                                     \
	do {                                                                                                 \
		family(&o, metric, "gauge", help);                                                           \
		for (size_t i = 0; i < nbk; i++)                                                             \
			if (bks[i].field.have)                                                               \
				sample(&o, metric, LABELS("database", bks[i].database, "job", bks[i].job),   \
				       bks[i].field.v);                                                      \
	} while (0)

#define STORAGE(field, help, metric)                                                                         \
	do {                                                                                                 \
		family(&o, metric, "gauge", help);                                                           \
		if (sf.field.have)                                                                           \
			sample(&o, metric, NULL, sf.field.v);                                                \
	} while (0)

char *
pv_metrics_render(const struct pv_metrics_view *v, struct pv_metrics_runs *runs, size_t *len)
{
	const struct pv_config *cfg = v->cfg;
	struct out o = {0};
	struct pv_metrics_runs *own = runs == NULL ? pv_metrics_runs_new() : NULL;
	struct runs_now rn;
	struct db_facts *dbs = pv_calloc(cfg->n_databases + 1, sizeof(*dbs));
	struct backup_facts *bks = pv_calloc(cfg->n_jobs + 1, sizeof(*bks));
	struct storage_facts sf = {0};
	size_t ndb = cfg->n_databases, nbk = 0;
	int firing[3] = {0, 0, 0};

	/* Gather first: a family's samples must be written together, and they come from several places. */
	runs_collect(&o, v->state, runs != NULL ? runs : own, &rn);
	for (size_t i = 0; i < ndb; i++)
		collect_database(&o, v, &rn, &cfg->databases[i], &dbs[i]);
	for (size_t j = 0; j < cfg->n_jobs; j++)
		if (cfg->jobs[j].type == PV_JOB_BACKUP && cfg->jobs[j].database != NULL)
			collect_backup(&o, v, &rn, &cfg->jobs[j], &bks[nbk++]);
	collect_storage(&o, v, &sf);
	for (size_t i = 0; v->alerts != NULL && i < v->alerts->n; i++) {
		const struct pv_alert_state *a = &v->alerts->v[i];
		if (a->status == PV_ALERT_FIRING && a->severity >= PV_SEV_INFO &&
		    a->severity <= PV_SEV_CRITICAL)
			firing[a->severity]++;
	}

	family(&o, "pgvigil_up", "gauge", "1 while pgvigild runs and answers scrapes.");
	sample(&o, "pgvigil_up", NULL, 1);
	family(&o, "pgvigil_build_info", "gauge", "Always 1; the version of pgvigild is in the label.");
	sample(&o, "pgvigil_build_info", LABELS("version", PV_VERSION), 1);
	family(&o, "pgvigil_start_time_seconds", "gauge",
	       "When pgvigild started, in seconds since the epoch.");
	sample(&o, "pgvigil_start_time_seconds", NULL, (double)v->started);
	family(&o, "pgvigil_config_last_reload_successful", "gauge",
	       "1 when the last configuration reload succeeded (or none was asked for), 0 when it failed and "
	       "the previous configuration is still in force.");
	sample(&o, "pgvigil_config_last_reload_successful", NULL, v->reload_ok ? 1 : 0);
	family(&o, "pgvigil_jobs_running", "gauge", "Job runs in progress.");
	sample(&o, "pgvigil_jobs_running", NULL, v->running);

	family(&o, "pgvigil_database_info", "gauge",
	       "Always 1, one per configured database (for joins and dashboard variables).");
	for (size_t i = 0; i < ndb; i++)
		sample(&o, "pgvigil_database_info", LABELS("database", dbs[i].name), 1);
	EACH_DB(up,
	        "1 when the newest health check connected to the database, 0 when it could not; absent "
	        "before "
	        "the first health check.",
	        "pgvigil_database_up");
	EACH_DB(connect, "Time to connect, measured by the newest health check.", "pgvigil_connect_seconds");
	EACH_DB(health_at,
	        "When the health check behind pgvigil_database_up finished, in seconds since the epoch.",
	        "pgvigil_health_check_timestamp_seconds");
	EACH_DB(size, "Database size measured by the newest health check.", "pgvigil_database_size_bytes");

	EACH_BACKUP(last_ok,
	            "When the newest successful run of the backup job finished (its backup stored and "
	            "verified), in seconds since the epoch.",
	            "pgvigil_backup_last_success_timestamp_seconds");
	EACH_BACKUP(size, "Stored size of the job's newest verified backup.", "pgvigil_backup_size_bytes");
	EACH_BACKUP(duration, "Time taken to dump and store the job's newest verified backup.",
	            "pgvigil_backup_duration_seconds");

	EACH_DB(rpo,
	        "Achieved RPO: age of the newest verified backup of the database whose file is present; "
	        "absent while there is none.",
	        "pgvigil_rpo_seconds");
	EACH_DB(rpo_objective, "The database's RPO objective (objectives.rpo).",
	        "pgvigil_rpo_objective_seconds");
	EACH_DB(rpo_gap,
	        "Largest time between consecutive verified backups over the last 30 days, the gap to now "
	        "included.",
	        "pgvigil_rpo_largest_gap_seconds");
	EACH_DB(rto, "Achieved RTO: total time of the newest successful restore probe or drill.",
	        "pgvigil_rto_seconds");
	EACH_DB(rto_objective, "The database's RTO objective (objectives.rto).",
	        "pgvigil_rto_objective_seconds");
	EACH_DB(probe_last_ok,
	        "When the newest successful restore probe of the database finished, in seconds since the "
	        "epoch.",
	        "pgvigil_restore_probe_last_success_timestamp_seconds");
	EACH_DB(probe_seconds,
	        "Total time (restore, validation, drop) of the newest restore probe that reached a result, "
	        "successful or not.",
	        "pgvigil_restore_probe_duration_seconds");
	EACH_DB(probe_success, "1 when the newest restore probe that reached a result succeeded, else 0.",
	        "pgvigil_restore_probe_success");

	STORAGE(ratio,
	        "Used fraction of the file system holding backup storage, from the newest storage job run.",
	        "pgvigil_storage_used_ratio");
	STORAGE(used, "Used bytes of the file system holding backup storage.", "pgvigil_storage_used_bytes");
	STORAGE(total, "Size of the file system holding backup storage.", "pgvigil_storage_size_bytes");
	STORAGE(full_at,
	        "When backup storage fills at the growth of the last week, in seconds since the epoch; "
	        "absent "
	        "while it is not growing.",
	        "pgvigil_storage_forecast_full_timestamp_seconds");

	{
		struct pv_state_silence *sil = NULL;
		struct pv_error err;
		size_t n = 0;
		family(&o, "pgvigil_silences_active", "gauge",
		       "Silences in force now (pgvigilctl silence): their alerts are evaluated but not "
		       "sent.");
		if (pv_state_silences_list(v->state, v->now, &sil, &n, &err))
			sample(&o, "pgvigil_silences_active", NULL, (double)n);
		else
			read_failed(&o, "silences", &err);
		pv_state_silences_free(sil, n);
	}
	family(&o, "pgvigil_alerts_firing", "gauge", "Alerts firing now, by severity.");
	for (int s = PV_SEV_CRITICAL; s >= PV_SEV_INFO; s--)
		sample(&o, "pgvigil_alerts_firing", LABELS("severity", pv_severity_name((enum pv_severity)s)),
		       firing[s]);

	{
		struct pv_state_outbox_counts *c = pv_calloc(cfg->n_notifiers + 1, sizeof(*c));
		bool *ok = pv_calloc(cfg->n_notifiers + 1, sizeof(*ok));
		for (size_t i = 0; i < cfg->n_notifiers; i++) {
			struct pv_error err;
			ok[i] = pv_state_outbox_counts(v->state, cfg->notifiers[i].name, &c[i], &err);
			if (!ok[i])
				read_failed(&o, "notification counts", &err);
		}
#define EACH_NOTIFIER(field, type, help, metric)                                                             \
	do {                                                                                                 \
		family(&o, metric, type, help);                                                              \
		for (size_t i = 0; i < cfg->n_notifiers; i++)                                                \
			if (ok[i])                                                                           \
				sample(&o, metric, LABELS("notifier", cfg->notifiers[i].name),               \
				       (double)c[i].field);                                                  \
	} while (0)
		EACH_NOTIFIER(pending, "gauge", "Notifications waiting in the outbox to be delivered.",
		              "pgvigil_notifications_pending");
		EACH_NOTIFIER(sent, "counter", "Notifications delivered.",
		              "pgvigil_notifications_sent_total");
		EACH_NOTIFIER(failed, "counter",
		              "Notifications given up after a permanent error from the notifier (they raise "
		              "notifier_broken).",
		              "pgvigil_notifications_failed_total");
		EACH_NOTIFIER(dropped, "counter",
		              "Notifications dropped undelivered after the notifier's max_age.",
		              "pgvigil_notifications_dropped_total");
#undef EACH_NOTIFIER
		free(c);
		free(ok);
	}

	family(&o, "pgvigil_job_runs_total", "counter", "Runs of each configured job that ended, by result.");
	for (size_t j = 0; rn.ok && j < cfg->n_jobs; j++) {
		const char *job = cfg->jobs[j].name;
		for (size_t k = 0; k < N_RESULTS; k++)
			sample(&o, "pgvigil_job_runs_total", LABELS("job", job, "result", RESULTS[k]),
			       (double)runs_count(&rn, job, RESULTS[k]));
	}

	/* Last: it counts the failures of everything above. */
	family(&o, "pgvigil_metrics_collect_errors", "gauge",
	       "State reads that failed while rendering this scrape (their samples are missing).");
	sample(&o, "pgvigil_metrics_collect_errors", NULL, o.errors);

	runs_now_clear(&rn);
	pv_metrics_runs_free(own);
	free(dbs);
	free(bks);
	*len = o.len;
	return o.p;
}

/* ---- the HTTP endpoint ---- */

/* Addresses of one metrics_listen bound at most. */
#define LISTEN_ADDRS_MAX 16

struct listen_addr;
struct lookup;

struct pv_metrics {
	struct event_base *base;
	struct evhttp *http; /* NULL while nothing is bound */
	char *address;
	pv_metrics_view_fn view;
	void *arg;
	struct pv_metrics_runs *runs;
	struct event *prime_ev; /* counts the run history in steps before the first scrape needs it */
	bool primed;
	struct evdns_base *dns;    /* set: a name in a new address is looked up without blocking */
	struct lookup *lookup;     /* such a lookup under way */
	struct listen_addr *addrs; /* what `address` resolved to when it was bound */
	size_t naddrs;
};

/* One step of counting the settled run history; true while there is more. */
static bool
runs_prime_step(struct pv_metrics_runs *runs, struct pv_state *st)
{
	struct pv_state_run_tally *v = NULL;
	struct pv_error err;
	int64_t from = runs->settled_id, upto;
	size_t n = 0;

	if (!pv_state_runs_tally(st, from, PRIME_ROWS, &upto, &v, &n, &err)) {
		pv_log_warn("metrics: cannot count runs error=%s", pv_log_quote(err.msg));
		return false;
	}
	for (size_t i = 0; i < n; i++)
		if (v[i].settled)
			tally_add(runs, &v[i]);
	runs->settled_id = upto;
	pv_state_run_tallies_free(v, n);
	/* A shorter step reached the newest run or one still running: scrapes read on from there. */
	return upto - from == PRIME_ROWS;
}

static void
prime_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_metrics *m = arg;
	struct pv_metrics_view view = {0};
	struct timeval now = {0, 0};

	m->view(m->arg, &view);
	if (runs_prime_step(m->runs, view.state)) {
		event_add(m->prime_ev, &now);
		return;
	}
	m->primed = true;
	pv_log_debug("metrics: run history counted up to run=%lld", (long long)m->runs->settled_id);
}

static double
mono_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
reply_text(struct evhttp_request *req, int code, const char *reason, const char *text)
{
	struct evbuffer *body = evbuffer_new();

	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
	                  "text/plain; charset=utf-8");
	evbuffer_add(body, text, strlen(text));
	evhttp_send_reply(req, code, reason, body);
	evbuffer_free(body);
}

static void
handle_request(struct evhttp_request *req, void *arg)
{
	struct pv_metrics *m = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
	struct pv_metrics_view view = {0};
	struct evbuffer *body;
	double t0 = mono_now();
	size_t len;
	char *text;

	if (!eq(path, "/metrics")) {
		reply_text(req, HTTP_NOTFOUND, "Not Found", "not found: metrics are at /metrics\n");
		return;
	}
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_add_header(headers, "Allow", "GET, HEAD");
		reply_text(req, HTTP_BADMETHOD, "Method Not Allowed", "method not allowed: use GET\n");
		return;
	}
	m->view(m->arg, &view);
	text = pv_metrics_render(&view, m->runs, &len);
	body = evbuffer_new();
	evhttp_add_header(headers, "Content-Type", PV_METRICS_CONTENT_TYPE);
	evhttp_add_header(headers, "Cache-Control", "no-store");
	if (cmd == EVHTTP_REQ_HEAD) {
		/* libevent 2.1 would send a body given to a HEAD reply: give it the length only. */
		char n[32];
		snprintf(n, sizeof(n), "%zu", len);
		evhttp_add_header(headers, "Content-Length", n);
	} else {
		evbuffer_add(body, text, len);
	}
	free(text);
	evhttp_send_reply(req, HTTP_OK, "OK", body);
	evbuffer_free(body);
	pv_log_debug("metrics scrape served bytes=%zu seconds=%.6f", len, mono_now() - t0);
}

/* "HOST:PORT", "[V6]:PORT", "*:PORT" -> host (NULL for every address) and port; the configuration
 * checked the port already. */
static bool
split_address(const char *address, char **host, char **port, struct pv_error *err)
{
	const char *colon = strrchr(address, ':');
	size_t hl;

	if (colon == NULL || colon == address || colon[1] == '\0')
		return pv_error_set(err, PV_ERR_CONFIG_VALUE,
		                    "daemon.metrics_listen %s: expected HOST:PORT such as 127.0.0.1:9187",
		                    address);
	hl = (size_t)(colon - address);
	if (address[0] == '[' && hl >= 2 && address[hl - 1] == ']')
		*host = pv_strndup(address + 1, hl - 2);
	else
		*host = pv_strndup(address, hl);
	if (strcmp(*host, "*") == 0) {
		free(*host);
		*host = NULL;
	}
	*port = pv_strdup(colon + 1);
	return true;
}

/* One resolved address to listen on, copied out of whichever resolver's list it came from. */
struct listen_addr {
	int family, socktype, protocol;
	socklen_t len;
	struct sockaddr_storage sa;
};

/* The addresses of an addrinfo list (glibc's or evdns'), at most LISTEN_ADDRS_MAX. */
static size_t
addrs_from(const struct addrinfo *res, struct listen_addr *out)
{
	size_t n = 0;

	for (const struct addrinfo *ai = res; ai != NULL && n < LISTEN_ADDRS_MAX; ai = ai->ai_next) {
		if (ai->ai_addrlen > sizeof(out[n].sa))
			continue;
		out[n].family = ai->ai_family;
		out[n].socktype = ai->ai_socktype;
		out[n].protocol = ai->ai_protocol;
		out[n].len = (socklen_t)ai->ai_addrlen;
		memcpy(&out[n].sa, ai->ai_addr, ai->ai_addrlen);
		n++;
	}
	return n;
}

static const char *
addr_text(const struct listen_addr *a, char *buf, size_t size)
{
	char h[NI_MAXHOST], p[NI_MAXSERV];

	if (getnameinfo((const struct sockaddr *)&a->sa, a->len, h, sizeof(h), p, sizeof(p),
	                NI_NUMERICHOST | NI_NUMERICSERV) != 0)
		return "?";
	snprintf(buf, size, a->family == AF_INET6 ? "[%s]:%s" : "%s:%s", h, p);
	return buf;
}

/* A listening socket for one address; -1 with errno and *what ("socket", "bind", "listen") on failure. */
static int
listen_one(const struct listen_addr *a, const char **what)
{
	int fd, one = 1, e;

	*what = "socket";
	fd = socket(a->family, a->socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->protocol);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* "*" binds IPv4 and IPv6 separately: a dual-stack IPv6 socket would take the IPv4 port too. */
	if (a->family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	*what = "bind";
	if (bind(fd, (const struct sockaddr *)&a->sa, a->len) != 0)
		goto fail;
	*what = "listen";
	if (listen(fd, 64) != 0)
		goto fail;
	return fd;
fail:
	e = errno;
	close(fd);
	errno = e;
	return -1;
}

/* A new evhttp listening on every one of addrs (what `address` resolved to), or NULL with err (errno
 * kept for the caller). */
static struct evhttp *
http_bind(struct event_base *base, const char *address, const struct listen_addr *addrs, size_t naddrs,
          void *arg, int *errno_out, struct pv_error *err)
{
	char where[NI_MAXHOST + NI_MAXSERV + 8];
	struct evhttp *http;
	int bound = 0, skipped_errno = 0;

	*errno_out = 0;
	http = evhttp_new(base);
	if (http == NULL) {
		pv_error_set(err, PV_ERR_INTERNAL,
		             "cannot serve metrics on %s: cannot create the HTTP server", address);
		return NULL;
	}
	evhttp_set_timeout(http, HTTP_TIMEOUT_SEC);
	evhttp_set_max_headers_size(http, HTTP_MAX_HEADERS);
	evhttp_set_max_body_size(http, HTTP_MAX_BODY);
	/* Every method reaches the handler, so the answer to a wrong one is 405 rather than libevent's 501.
	 */
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
	                                         EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
	                                         EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
	evhttp_set_gencb(http, handle_request, arg);
	for (size_t i = 0; i < naddrs; i++) {
		const char *what;
		int fd = listen_one(&addrs[i], &what);

		if (fd < 0) {
			int e = errno;
			/* A name may resolve to an address family this host lacks: skip it if another binds.
			 */
			if ((e == EADDRNOTAVAIL || e == EAFNOSUPPORT) && naddrs > 1) {
				pv_log_warn("metrics: skipping address=%s error=%s",
				            addr_text(&addrs[i], where, sizeof(where)),
				            pv_log_quote(strerror(e)));
				skipped_errno = e;
				continue;
			}
			*errno_out = e;
			pv_error_set(err, PV_ERR_IO,
			             "cannot serve metrics on %s (daemon.metrics_listen): %s %s: %s", address,
			             what, addr_text(&addrs[i], where, sizeof(where)), strerror(e));
			goto fail;
		}
		if (evhttp_accept_socket_with_handle(http, fd) == NULL) {
			close(fd);
			pv_error_set(err, PV_ERR_INTERNAL,
			             "cannot serve metrics on %s: libevent refused the socket", address);
			goto fail;
		}
		bound++;
	}
	if (bound > 0)
		return http;
	*errno_out = skipped_errno;
	pv_error_set(err, PV_ERR_IO, "cannot serve metrics on %s (daemon.metrics_listen): %s", address,
	             skipped_errno ? strerror(skipped_errno) : "no address to listen on");
fail:
	evhttp_free(http);
	return NULL;
}

static void
resolve_error(const char *address, const char *host, const char *why, struct pv_error *err)
{
	pv_error_set(err, PV_ERR_CONFIG_VALUE,
	             "cannot serve metrics on %s (daemon.metrics_listen): cannot resolve \"%s\": %s", address,
	             host != NULL ? host : "*", why);
}

/*
 * Resolve `address` with getaddrinfo. With numeric_only, a host that is a name is left alone: false
 * with *is_name set and err untouched. Otherwise false with err.
 */
static bool
resolve_now(const char *address, bool numeric_only, struct listen_addr *out, size_t *n, bool *is_name,
            struct pv_error *err)
{
	struct addrinfo hints = {0}, *res = NULL;
	char *host = NULL, *port = NULL;
	int rc;

	*is_name = false;
	if (!split_address(address, &host, &port, err))
		return false;
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV | (numeric_only ? AI_NUMERICHOST : 0);
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc == EAI_NONAME && numeric_only)
		*is_name = true;
	else if (rc != 0)
		resolve_error(address, host, gai_strerror(rc), err);
	else
		*n = addrs_from(res, out);
	if (res != NULL)
		freeaddrinfo(res);
	free(host);
	free(port);
	return rc == 0;
}

/* Serve on addrs, the resolution of `listen` (see pv_metrics_listen for the order of things). */
static bool
move_to(struct pv_metrics *m, const char *listen, const struct listen_addr *addrs, size_t naddrs,
        struct pv_error *err)
{
	struct evhttp *http;
	int e;

	http = http_bind(m->base, listen, addrs, naddrs, m, &e, err);
	if (http == NULL && e == EADDRINUSE && m->http != NULL) {
		/* Probably ourselves (same port, another host part): let go of the old address and try again.
		 */
		struct pv_error again;
		evhttp_free(m->http);
		m->http = NULL;
		http = http_bind(m->base, listen, addrs, naddrs, m, &e, &again);
		if (http == NULL) {
			struct pv_error back;
			if (err != NULL)
				*err = again;
			/* The old addresses as resolved then: reopening them needs no lookup. */
			m->http = http_bind(m->base, m->address, m->addrs, m->naddrs, m, &e, &back);
			if (m->http == NULL) {
				pv_log_error("metrics endpoint lost: cannot reopen the old address error=%s",
				             pv_log_quote(back.msg));
				free(m->address);
				m->address = NULL;
				m->naddrs = 0;
			}
		}
	}
	if (http == NULL)
		return false;
	if (m->http != NULL)
		evhttp_free(m->http);
	m->http = http;
	free(m->address);
	m->address = pv_strdup(listen);
	memcpy(m->addrs, addrs, naddrs * sizeof(*addrs));
	m->naddrs = naddrs;
	pv_log_notice("metrics endpoint listening address=%s path=/metrics", listen);
	if (!m->primed && !event_pending(m->prime_ev, EV_TIMEOUT, NULL)) {
		struct timeval now = {0, 0};
		event_add(m->prime_ev, &now);
	}
	return true;
}

/*
 * A name looked up by evdns for a move at reload. The callback may run after pv_metrics_free or a
 * newer move (cancellation is reported through it), so it gets this ticket, which they detach.
 */
struct lookup {
	struct pv_metrics *m; /* NULL once detached */
	char *address;
	struct evdns_getaddrinfo_request *req; /* NULL while evdns_getaddrinfo has not returned */
};

static void
lookup_detach(struct pv_metrics *m)
{
	struct lookup *lk = m->lookup;

	if (lk == NULL)
		return;
	m->lookup = NULL;
	lk->m = NULL;
	if (lk->req != NULL)
		evdns_getaddrinfo_cancel(lk->req); /* its callback frees lk */
}

static void
lookup_cb(int result, struct evutil_addrinfo *res, void *arg)
{
	struct lookup *lk = arg;
	struct pv_metrics *m = lk->m;
	struct listen_addr addrs[LISTEN_ADDRS_MAX];
	struct pv_error err;

	if (m != NULL) {
		m->lookup = NULL;
		if (result != 0) {
			char *host = NULL, *port = NULL;
			if (split_address(lk->address, &host, &port, &err))
				resolve_error(lk->address, host, evutil_gai_strerror(result), &err);
			free(host);
			free(port);
		}
		if (result != 0 || !move_to(m, lk->address, addrs, addrs_from(res, addrs), &err))
			pv_log_error("metrics endpoint not moved, still serving address=%s error=%s",
			             m->address ? m->address : "-", pv_log_quote(err.msg));
	}
	if (res != NULL)
		evutil_freeaddrinfo(res);
	free(lk->address);
	free(lk);
}

struct pv_metrics *
pv_metrics_new(struct event_base *base, const char *listen, pv_metrics_view_fn view, void *arg,
               struct pv_error *err)
{
	struct pv_metrics *m = pv_calloc(1, sizeof(*m));

	m->base = base;
	m->view = view;
	m->arg = arg;
	m->runs = pv_metrics_runs_new();
	m->prime_ev = evtimer_new(base, prime_cb, m);
	m->addrs = pv_calloc(LISTEN_ADDRS_MAX, sizeof(*m->addrs));
	if (listen != NULL && !pv_metrics_listen(m, listen, err)) {
		pv_metrics_free(m);
		return NULL;
	}
	return m;
}

void
pv_metrics_set_dns(struct pv_metrics *m, struct evdns_base *dns)
{
	m->dns = dns;
}

bool
pv_metrics_listen(struct pv_metrics *m, const char *listen, struct pv_error *err)
{
	struct listen_addr addrs[LISTEN_ADDRS_MAX];
	struct evutil_addrinfo hints = {0};
	struct evdns_getaddrinfo_request *req;
	struct lookup *lk;
	char *host = NULL, *port = NULL;
	size_t n = 0;
	bool is_name;

	lookup_detach(m); /* the configuration in force now decides */
	if (eq_null(listen, m->address))
		return true;
	if (listen == NULL) {
		pv_log_notice("metrics endpoint closed address=%s", m->address ? m->address : "-");
		if (m->http != NULL)
			evhttp_free(m->http);
		m->http = NULL;
		free(m->address);
		m->address = NULL;
		m->naddrs = 0;
		return true;
	}
	/* Numbers and "*" never wait for a resolver; a name does, so with evdns it is looked up async. */
	if (resolve_now(listen, m->dns != NULL, addrs, &n, &is_name, err))
		return move_to(m, listen, addrs, n, err);
	if (!is_name)
		return false;
	if (!split_address(listen, &host, &port, err))
		return false;
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = EVUTIL_AI_PASSIVE | EVUTIL_AI_NUMERICSERV;
	lk = pv_calloc(1, sizeof(*lk));
	lk->m = m;
	lk->address = pv_strdup(listen);
	m->lookup = lk;
	pv_log_info("metrics endpoint moving, resolving address=%s", listen);
	/* The callback may run before this returns (an answer from the hosts file, a failure). */
	req = evdns_getaddrinfo(m->dns, host, port, &hints, lookup_cb, lk);
	if (m->lookup == lk)
		lk->req = req; /* still under way */
	free(host);
	free(port);
	return true;
}

const char *
pv_metrics_address(const struct pv_metrics *m)
{
	return m->address;
}

void
pv_metrics_free(struct pv_metrics *m)
{
	if (m == NULL)
		return;
	lookup_detach(m);
	if (m->http != NULL)
		evhttp_free(m->http);
	if (m->prime_ev != NULL)
		event_free(m->prime_ev);
	free(m->addrs);
	pv_metrics_runs_free(m->runs);
	free(m->address);
	free(m);
}
