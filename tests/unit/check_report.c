/* Unit tests for src/ctl/report.c: achieved RPO/RTO, readiness headlines and the Markdown report, on a real
 * temporary state database filled through pv_state_*. */
#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "ctl/report.h"
#include "state/state.h"
#include "util/error.h"
#include "util/mem.h"

#include "testlib.h"

#define NOW  ((time_t)1800000000) /* 2027-01-15T08:00:00Z */
#define MIN  60
#define HOUR 3600
#define DAY  86400

static const char CONFIG[] =
        "storage:\n"
        "  path: /nonexistent/backups\n"
        "databases:\n"
        "  prod:\n"
        "    conninfo: \"host=localhost dbname=prod\"\n"
        "    objectives: { rpo: 4h, rto: 1h }\n"
        "    expected_tables: 5\n"
        "    critical_tables: [users, orders]\n"
        "    restore_target: scratch\n"
        "  other:\n"
        "    conninfo: \"host=localhost dbname=other\"\n"
        "restore_targets:\n"
        "  scratch:\n"
        "    conninfo: \"host=localhost dbname=postgres\"\n"
        "jobs:\n"
        "  daily: { type: backup, database: prod, schedule: \"0 2 * * *\", keep: 7 }\n"
        "  weekly: { type: backup, database: prod, schedule: \"30 2 * * 0\", keep: 4 }\n"
        "  health: { type: health, database: prod, every: 1m }\n"
        "  check: { type: integrity, database: prod, schedule: \"0 6 * * *\" }\n"
        "  probe: { type: restore_probe, database: prod, schedule: \"0 4 * * 0\" }\n"
        "  drill: { type: drill, database: prod, schedule: \"0 5 1 * *\" }\n"
        "  storage: { type: storage, every: 15m }\n"
        "  other-bk: { type: backup, database: other, schedule: \"0 3 * * *\", keep: 2 }\n";

/* The directory for this binary's state databases, removed even when a forked test fails (testlib.h). */
static void
base_setup(void)
{
	pv_test_tmpdir_setup("check_report");
}

struct fx {
	struct pv_state *st;
	struct pv_config *cfg;
	const struct pv_config_database *prod, *other;
};

static struct fx
fx_open(void)
{
	struct fx fx = {0};
	struct pv_error err = {0};
	struct pv_config_diag diag = {0};
	char dir[PATH_MAX], path[PATH_MAX + 16];

	pv_test_tmpdir_sub(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/state.db", dir);
	if (!pv_state_open(path, &fx.st, &err))
		ck_abort_msg("pv_state_open(%s): %s", path, err.msg);
	fx.cfg = pv_config_load_string("t.yaml", CONFIG, &diag, &err);
	for (size_t i = 0; i < diag.errors.n; i++)
		fprintf(stderr, "config: %s\n", diag.errors.v[i]);
	ck_assert_msg(fx.cfg != NULL, "config: %s", err.msg);
	pv_config_diag_free(&diag);
	fx.prod = pv_config_database_find(fx.cfg, "prod");
	fx.other = pv_config_database_find(fx.cfg, "other");
	return fx;
}

static void
fx_close(struct fx *fx)
{
	pv_state_close(fx->st);
	pv_config_unref(fx->cfg);
}

static int64_t
add_run(struct fx *fx, const char *job, const char *type, const char *db, time_t finished, double duration,
        const char *result, const char *cause, const char *figures)
{
	struct pv_error err = {0};
	time_t started = finished - (time_t)duration;
	int64_t id;

	if (!pv_state_run_begin(fx->st, job, type, db, "schedule", 0, started, &id, &err) ||
	    !pv_state_run_end(fx->st, id, finished, duration, result, cause, figures, &err))
		ck_abort_msg("run %s: %s", job, err.msg);
	return id;
}

/* verify: "ok", "failed" or NULL (never verified). */
static void
add_backup(struct fx *fx, const char *db, const char *job, const char *tier, const char *id, time_t finished,
           const char *verify, const char *status)
{
	struct pv_state_backup b = {0};
	struct pv_error err = {0};

	b.database = (char *)db;
	b.job = (char *)job;
	b.id = (char *)id;
	b.tier = (char *)tier;
	b.dir = "/nonexistent/backups/x";
	b.sha256 = "00";
	b.format = "zst";
	b.status = (char *)status;
	b.verify_result = (char *)verify;
	b.verified_at = verify != NULL ? finished + 60 : 0;
	b.started = finished - 600;
	b.finished = finished;
	b.duration = 600;
	b.size = 2100000;
	b.archive_size = 4000000;
	if (!pv_state_backup_add(fx->st, &b, &err))
		ck_abort_msg("backup %s: %s", id, err.msg);
}

static json_t *
rr(struct fx *fx, const struct pv_config_database *db)
{
	return pv_report_rpo_rto(fx->st, fx->cfg, db, NOW);
}

static json_int_t
geti(json_t *o, const char *a, const char *b)
{
	json_t *v = json_object_get(json_object_get(o, a), b);
	ck_assert_msg(json_is_integer(v), "%s.%s is not an integer", a, b);
	return json_integer_value(v);
}

static json_t *
get(json_t *o, const char *a, const char *b)
{
	return json_object_get(json_object_get(o, a), b);
}

static json_t *
db_report(json_t *report, const char *name)
{
	size_t i;
	json_t *d;

	json_array_foreach(json_object_get(report, "databases"), i, d)
	{
		if (strcmp(json_string_value(json_object_get(d, "name")), name) == 0)
			return d;
	}
	ck_abort_msg("no database %s in the report", name);
	return NULL;
}

/* The reason codes of a database, space-separated, in order. */
static void
codes(json_t *d, char *buf, size_t size)
{
	size_t i;
	json_t *r;

	buf[0] = '\0';
	json_array_foreach(json_object_get(d, "reasons"), i, r)
	{
		size_t len = strlen(buf);
		snprintf(buf + len, size - len, "%s%s", i ? " " : "",
		         json_string_value(json_object_get(r, "code")));
	}
}

static const char *
reason_text(json_t *d, const char *code)
{
	size_t i;
	json_t *r;

	json_array_foreach(json_object_get(d, "reasons"), i, r)
	{
		if (strcmp(json_string_value(json_object_get(r, "code")), code) == 0)
			return json_string_value(json_object_get(r, "text"));
	}
	ck_abort_msg("no reason %s", code);
	return NULL;
}

/* Everything well for prod: a fresh verified backup, a passing probe, clean health, integrity, storage. */
static void
all_well(struct fx *fx)
{
	add_backup(fx, "prod", "daily", "daily", "D1", NOW - 3 * HOUR - 12 * MIN, "ok", NULL);
	add_backup(fx, "prod", "weekly", "weekly", "W1", NOW - 2 * DAY, "ok", NULL);
	add_run(fx, "probe", "restore_probe", "prod", NOW - 2 * HOUR, 41.2, "ok", NULL,
	        "{\"total_seconds\": 41.2, \"restore_seconds\": 30.5, \"validation_seconds\": 9.1, "
	        "\"backup_id\": \"D1\", \"mismatches\": [], \"consecutive_failures\": 0, \"tables\": 5, "
	        "\"rows\": 1000}");
	add_run(fx, "health", "health", "prod", NOW - MIN, 0.01, "ok", NULL,
	        "{\"connected\": true, \"connect_seconds\": 0.004, \"query_seconds\": 0.002, "
	        "\"server_version\": \"15.8 (Debian)\", \"tables\": 5, \"database_size_bytes\": 123456789, "
	        "\"missing_critical_tables\": []}");
	add_run(fx, "check", "integrity", "prod", NOW - HOUR, 2, "ok", NULL,
	        "{\"constraints\": 3, \"checked\": 3, \"orphaned_constraints\": 0, \"orphans\": 0, "
	        "\"timeouts\": 0, "
	        "\"errors\": 0, \"not_checked\": 0, \"details\": []}");
	add_run(fx, "storage", "storage", NULL, NOW - 5 * MIN, 0.1, "ok", NULL,
	        "{\"total_bytes\": 100000000000, \"available_bytes\": 60000000000, \"used_bytes\": "
	        "40000000000, "
	        "\"used_ratio\": 0.4, \"growth_bytes_per_day\": 1000000000, \"days_until_full\": 60.0}");
}

START_TEST(test_report__rpo_none)
{
	struct fx fx = fx_open();
	json_t *o = rr(&fx, fx.other), *p;

	ck_assert(json_is_null(get(o, "rpo", "seconds")));
	ck_assert(json_is_null(get(o, "rpo", "objective")));
	ck_assert(json_is_null(get(o, "rpo", "met")));
	ck_assert(json_is_null(get(o, "rpo", "newest_verified_backup")));
	ck_assert(json_is_null(get(o, "rpo", "largest_gap_30d")));
	ck_assert(json_is_null(get(o, "rto", "seconds")));
	ck_assert(json_is_null(get(o, "rto", "met")));
	/* With an objective, nothing verified is a breach; nothing measured is not met either. */
	p = rr(&fx, fx.prod);
	ck_assert_int_eq(geti(p, "rpo", "objective"), 4 * HOUR);
	ck_assert(json_is_false(get(p, "rpo", "met")));
	ck_assert_int_eq(geti(p, "rto", "objective"), HOUR);
	ck_assert(json_is_false(get(p, "rto", "met")));
	json_decref(o);
	json_decref(p);
	fx_close(&fx);
}
END_TEST

START_TEST(test_report__rpo_newest_verified_only)
{
	struct fx fx = fx_open();
	json_t *o;

	add_backup(&fx, "prod", "daily", "daily", "A", NOW - 3 * HOUR - 12 * MIN, "ok", NULL);
	/* Newer, but not usable: failed verification, never verified, verified but its file went missing;
	 * and another database's. */
	add_backup(&fx, "prod", "daily", "daily", "B", NOW - 2 * HOUR, "failed", NULL);
	add_backup(&fx, "prod", "weekly", "weekly", "C", NOW - HOUR, NULL, NULL);
	add_backup(&fx, "prod", "weekly", "weekly", "D", NOW - 30 * MIN, "ok", "missing");
	add_backup(&fx, "other", "other-bk", "daily", "E", NOW - 10 * MIN, "ok", NULL);
	o = rr(&fx, fx.prod);
	ck_assert_int_eq(geti(o, "rpo", "seconds"), 3 * HOUR + 12 * MIN);
	ck_assert_str_eq(json_string_value(get(o, "rpo", "newest_verified_backup")), "A");
	ck_assert_int_eq(geti(o, "rpo", "at"), NOW - 3 * HOUR - 12 * MIN);
	ck_assert(json_is_true(get(o, "rpo", "met")));
	/* Only A counts: the gap is from A to now. */
	ck_assert_int_eq(geti(o, "rpo", "largest_gap_30d"), 3 * HOUR + 12 * MIN);
	json_decref(o);
	o = rr(&fx, fx.other);
	ck_assert_int_eq(geti(o, "rpo", "seconds"), 10 * MIN);
	ck_assert(json_is_null(get(o, "rpo", "met")));
	json_decref(o);
	fx_close(&fx);
}
END_TEST

START_TEST(test_report__rpo_breach)
{
	struct fx fx = fx_open();
	json_t *o, *rep, *d;
	char got[256];

	add_backup(&fx, "prod", "daily", "daily", "A", NOW - 5 * HOUR - 2 * MIN, "ok", NULL);
	o = rr(&fx, fx.prod);
	ck_assert_int_eq(geti(o, "rpo", "seconds"), 5 * HOUR + 2 * MIN);
	ck_assert(json_is_false(get(o, "rpo", "met")));
	rep = pv_report_build(fx.st, fx.cfg, NOW);
	d = db_report(rep, "prod");
	ck_assert_str_eq(json_string_value(json_object_get(d, "headline")), "NOT READY");
	codes(d, got, sizeof(got));
	ck_assert_msg(strncmp(got, "rpo_breached ", 13) == 0, "codes: %s", got);
	ck_assert_str_eq(reason_text(d, "rpo_breached"),
	                 "RPO breached: the newest verified backup is 5h02m old (objective 4h)");
	json_decref(o);
	json_decref(rep);
	fx_close(&fx);
}
END_TEST

/* Exactly at the objective is met. */
START_TEST(test_report__rpo_at_objective_is_met)
{
	struct fx fx = fx_open();
	json_t *o;

	add_backup(&fx, "prod", "daily", "daily", "A", NOW - 4 * HOUR, "ok", NULL);
	o = rr(&fx, fx.prod);
	ck_assert(json_is_true(get(o, "rpo", "met")));
	json_decref(o);
	fx_close(&fx);
}
END_TEST

START_TEST(test_report__largest_gap)
{
	struct fx fx = fx_open();
	json_t *o;

	/* Before the window: only the last one counts, as the start of the gap into the window. */
	add_backup(&fx, "prod", "monthly", "monthly", "M0", NOW - 60 * DAY, "ok", NULL);
	add_backup(&fx, "prod", "monthly", "monthly", "M1", NOW - 40 * DAY, "ok", NULL);
	add_backup(&fx, "prod", "daily", "daily", "A", NOW - 20 * DAY, "ok", NULL);
	add_backup(&fx, "prod", "daily", "daily", "B", NOW - 9 * DAY, "ok", NULL);
	add_backup(&fx, "prod", "daily", "daily", "C", NOW - 2 * DAY, "ok", NULL);
	add_backup(&fx, "prod", "daily", "daily", "D", NOW - HOUR, "ok", NULL);
	o = rr(&fx, fx.prod);
	/* M1 -> A is 20 days and ends inside the window. */
	ck_assert_int_eq(geti(o, "rpo", "largest_gap_30d"), 20 * DAY);
	ck_assert_int_eq(geti(o, "rpo", "seconds"), HOUR);
	json_decref(o);
	fx_close(&fx);
}
END_TEST

START_TEST(test_report__largest_gap_to_now)
{
	struct fx fx = fx_open();
	json_t *o;

	add_backup(&fx, "prod", "daily", "daily", "A", NOW - 12 * DAY, "ok", NULL);
	add_backup(&fx, "prod", "daily", "daily", "B", NOW - 10 * DAY, "ok", NULL);
	/* A newer backup that failed verification does not close the gap. */
	add_backup(&fx, "prod", "daily", "daily", "C", NOW - 5 * DAY, "failed", NULL);
	o = rr(&fx, fx.prod);
	ck_assert_int_eq(geti(o, "rpo", "largest_gap_30d"), 10 * DAY);
	ck_assert_int_eq(geti(o, "rpo", "seconds"), 10 * DAY);
	json_decref(o);
	fx_close(&fx);
}
END_TEST

/* Retention removes old backups from the catalog: their successful runs still close the gaps. */
START_TEST(test_report__largest_gap_counts_retired_backups)
{
	struct fx fx = fx_open();
	json_t *o;

	add_backup(&fx, "prod", "weekly", "weekly", "W1", NOW - 14 * DAY, "ok", NULL);
	add_backup(&fx, "prod", "weekly", "weekly", "W2", NOW - 7 * DAY, "ok", NULL);
	add_backup(&fx, "prod", "daily", "daily", "D9", NOW - HOUR, "ok", NULL);
	/* Daily runs 13..2 days ago whose backups are gone; the one 3 days ago failed, so there is a 2-day
	 * gap from 4 days ago to 2 days ago. */
	for (int day = 13; day >= 2; day--) {
		char fig[64];
		snprintf(fig, sizeof(fig), "{\"backup_id\": \"old-%d\"}", day);
		add_run(&fx, "daily", "backup", "prod", NOW - day * DAY, 100, day == 3 ? "failed" : "ok",
		        NULL, fig);
	}
	/* A run whose backup is still catalogued but has since failed verification does not count. */
	add_backup(&fx, "prod", "daily", "daily", "D8", NOW - 3 * DAY + HOUR, "failed", NULL);
	add_run(&fx, "daily", "backup", "prod", NOW - 3 * DAY + HOUR, 100, "ok", NULL,
	        "{\"backup_id\": \"D8\"}");
	o = rr(&fx, fx.prod);
	/* Points: W1 -14d, -13d ... -4d, W2 -7d, -2d, D9 -1h: without the retired runs the largest gap would
	 * be 7d - 1h; counting the failed run or D8 would make it 2d - 1h. */
	ck_assert_int_eq(geti(o, "rpo", "largest_gap_30d"), 2 * DAY);
	json_decref(o);
	fx_close(&fx);
}
END_TEST

START_TEST(test_report__rto_probe_and_drill)
{
	struct fx fx = fx_open();
	json_t *o;

	add_run(&fx, "probe", "restore_probe", "prod", NOW - 3 * DAY, 41.5, "ok", NULL,
	        "{\"total_seconds\": 41.5, \"restore_seconds\": 30.0}");
	/* A later failure does not erase the last measurement. */
	add_run(&fx, "probe", "restore_probe", "prod", NOW - 2 * DAY, 12, "failed", "restore failed",
	        "{\"total_seconds\": 12.0, \"consecutive_failures\": 1}");
	o = rr(&fx, fx.prod);
	ck_assert(json_real_value(get(o, "rto", "seconds")) == 41.5);
	ck_assert_str_eq(json_string_value(get(o, "rto", "measured_by")), "restore_probe");
	ck_assert_str_eq(json_string_value(get(o, "rto", "job")), "probe");
	ck_assert_int_eq(geti(o, "rto", "run"), 1);
	ck_assert_int_eq(geti(o, "rto", "at"), NOW - 3 * DAY);
	ck_assert(json_is_true(get(o, "rto", "met")));
	json_decref(o);

	/* A newer drill measures it; a drill over the objective breaches it. */
	add_run(&fx, "drill", "drill", "prod", NOW - DAY, 7300, "ok", NULL,
	        "{\"total_seconds\": 7250.5, \"rto_seconds\": 7250.5, \"summary\": \"restored 5 tables\"}");
	o = rr(&fx, fx.prod);
	ck_assert(json_real_value(get(o, "rto", "seconds")) == 7250.5);
	ck_assert_str_eq(json_string_value(get(o, "rto", "measured_by")), "drill");
	ck_assert(json_is_false(get(o, "rto", "met")));
	json_decref(o);
	fx_close(&fx);
}
END_TEST

START_TEST(test_report__rto_ignores_other_databases_and_cancelled)
{
	struct fx fx = fx_open();
	json_t *o;

	/* A run recorded for another database under the same job name (the job was re-pointed). */
	add_run(&fx, "probe", "restore_probe", "other", NOW - DAY, 10, "ok", NULL,
	        "{\"total_seconds\": 10.0}");
	add_run(&fx, "probe", "restore_probe", "prod", NOW - HOUR, 5, "cancelled", "daemon stopping", NULL);
	o = rr(&fx, fx.prod);
	ck_assert(json_is_null(get(o, "rto", "seconds")));
	json_decref(o);
	fx_close(&fx);
}
END_TEST

START_TEST(test_report__ready)
{
	struct fx fx = fx_open();
	json_t *rep, *d;
	char got[256];

	all_well(&fx);
	rep = pv_report_build(fx.st, fx.cfg, NOW);
	d = db_report(rep, "prod");
	codes(d, got, sizeof(got));
	ck_assert_msg(strcmp(json_string_value(json_object_get(d, "headline")), "READY") == 0, "reasons: %s",
	              got);
	ck_assert_int_eq(json_array_size(json_object_get(d, "reasons")), 0);
	ck_assert_int_eq(geti(d, "rpo", "seconds"), 3 * HOUR + 12 * MIN);
	ck_assert(json_real_value(get(d, "rto", "seconds")) == 41.2);
	ck_assert_int_eq(geti(d, "schema", "tables"), 5);
	ck_assert(json_is_true(get(d, "schema", "tables_ok")));
	ck_assert_int_eq(json_array_size(get(d, "backups", "newest_verified_per_tier")), 2);
	ck_assert(json_is_true(get(d, "alerts", "available")));
	ck_assert_int_eq(json_array_size(get(d, "alerts", "firing")), 0);
	ck_assert_int_eq(geti(rep, "storage", "full_at"), NOW - 5 * MIN + 60 * DAY);
	/* other has nothing at all. */
	d = db_report(rep, "other");
	ck_assert_str_eq(json_string_value(json_object_get(d, "headline")), "NOT READY");
	codes(d, got, sizeof(got));
	ck_assert_str_eq(got, "no_verified_backup restore_not_configured");
	json_decref(rep);
	fx_close(&fx);
}
END_TEST

START_TEST(test_report__last_probe_failed)
{
	struct fx fx = fx_open();
	json_t *rep, *d;
	char got[256];

	all_well(&fx);
	add_run(&fx, "probe", "restore_probe", "prod", NOW - HOUR, 20, "failed",
	        "restored copy of prod/daily/D1 does not match: 1 mismatch: table users: 10 rows, manifest "
	        "says 11",
	        "{\"total_seconds\": 20.0, \"consecutive_failures\": 3, \"mismatches\": [\"table users: 10 "
	        "rows, "
	        "manifest says 11\"]}");
	rep = pv_report_build(fx.st, fx.cfg, NOW);
	d = db_report(rep, "prod");
	ck_assert_str_eq(json_string_value(json_object_get(d, "headline")), "NOT READY");
	codes(d, got, sizeof(got));
	ck_assert_str_eq(got, "restore_failed");
	ck_assert_msg(strstr(reason_text(d, "restore_failed"),
	                     "last restore probe failed (3 in a row, restore_failures threshold reached): "
	                     "restored copy") != NULL,
	              "%s", reason_text(d, "restore_failed"));
	/* RTO still shows the last successful measurement. */
	ck_assert(json_real_value(get(d, "rto", "seconds")) == 41.2);
	json_decref(rep);

	/* A later successful drill restores readiness. */
	add_run(&fx, "drill", "drill", "prod", NOW - 10 * MIN, 50, "ok", NULL, "{\"total_seconds\": 50.0}");
	rep = pv_report_build(fx.st, fx.cfg, NOW);
	d = db_report(rep, "prod");
	ck_assert_str_eq(json_string_value(json_object_get(d, "headline")), "READY");
	ck_assert_str_eq(json_string_value(get(d, "rto", "measured_by")), "drill");
	json_decref(rep);
	fx_close(&fx);
}
END_TEST

START_TEST(test_report__at_risk_reasons)
{
	struct fx fx = fx_open();
	json_t *rep, *d, *top;
	char got[512], fig[4096] = "{\"constraints\": 12, \"checked\": 12, \"orphaned_constraints\": 12, "
	                           "\"orphans\": 78, \"details\": [";

	all_well(&fx);
	/* Slower than the objective; unreachable now, after a check that found a table missing; orphans in 12
	 * foreign keys; storage about to fill; the weekly backup job's latest run failed. */
	add_run(&fx, "probe", "restore_probe", "prod", NOW - HOUR, 4000, "ok", NULL,
	        "{\"total_seconds\": 3900.0}");
	add_run(&fx, "health", "health", "prod", NOW - 30, 0.01, "ok", NULL,
	        "{\"connected\": true, \"tables\": 4, \"missing_critical_tables\": [\"orders\"]}");
	add_run(&fx, "health", "health", "prod", NOW - 20, 5, "failed", "connection refused",
	        "{\"connected\": false, \"failing_since\": 1799999990, \"error_class\": \"refused\"}");
	for (int i = 1; i <= 12; i++) {
		size_t len = strlen(fig);
		snprintf(fig + len, sizeof(fig) - len,
		         "%s{\"constraint\": \"public.t%d.fk\", \"orphans\": %d}", i > 1 ? ", " : "", i,
		         i == 12 ? 1 : i);
	}
	strcat(fig, ", {\"constraint\": \"public.clean.fk\", \"orphans\": 0}]}");
	add_run(&fx, "check", "integrity", "prod", NOW - 10, 2, "failed", "78 orphaned rows", fig);
	add_run(&fx, "storage", "storage", NULL, NOW - 5, 0.1, "ok", NULL,
	        "{\"total_bytes\": 100, \"available_bytes\": 15, \"used_bytes\": 85, \"used_ratio\": 0.85, "
	        "\"growth_bytes_per_day\": 5, \"days_until_full\": 3.0}");
	add_run(&fx, "weekly", "backup", "prod", NOW - 2, 10, "failed", "pg_dump: error: connection refused",
	        NULL);

	rep = pv_report_build(fx.st, fx.cfg, NOW);
	d = db_report(rep, "prod");
	codes(d, got, sizeof(got));
	ck_assert_str_eq(json_string_value(json_object_get(d, "headline")), "AT RISK");
	ck_assert_str_eq(got, "rto_breached backup_failed unreachable orphans storage_usage storage_filling");
	ck_assert_str_eq(reason_text(d, "rto_breached"),
	                 "RTO breached: the last restore probe took 1h05m (objective 1h)");
	ck_assert_str_eq(reason_text(d, "unreachable"),
	                 "database unreachable since 2027-01-15T07:59:50Z (refused): connection refused");
	ck_assert_str_eq(reason_text(d, "orphans"), "78 orphaned rows in 12 foreign keys");
	/* Top 10 by orphans, largest first; clean constraints not listed. */
	top = get(d, "integrity", "top_orphans");
	ck_assert_int_eq(json_array_size(top), 10);
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(top, 0), "constraint")),
	                 "public.t11.fk");
	ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(top, 9), "orphans")), 2);
	json_decref(rep);

	/* The schema as of the latest check that could read it. */
	add_run(&fx, "health", "health", "prod", NOW - 1, 0.01, "failed",
	        "expected 5 tables, found 4; critical "
	        "table missing: orders",
	        "{\"connected\": true, \"tables\": 4, \"missing_critical_tables\": [\"orders\"]}");
	rep = pv_report_build(fx.st, fx.cfg, NOW);
	d = db_report(rep, "prod");
	codes(d, got, sizeof(got));
	ck_assert_str_eq(
	        got, "rto_breached backup_failed table_count missing_critical_tables orphans storage_usage "
	             "storage_filling");
	ck_assert_str_eq(reason_text(d, "table_count"), "expected 5 user tables, found 4");
	ck_assert_str_eq(reason_text(d, "missing_critical_tables"), "critical table missing: orders");
	ck_assert(json_is_false(get(d, "schema", "tables_ok")));
	json_decref(rep);
	fx_close(&fx);
}
END_TEST

START_TEST(test_report__never_tested)
{
	struct fx fx = fx_open();
	json_t *rep, *d;
	char got[256];

	add_backup(&fx, "prod", "daily", "daily", "A", NOW - HOUR, "ok", NULL);
	rep = pv_report_build(fx.st, fx.cfg, NOW);
	d = db_report(rep, "prod");
	codes(d, got, sizeof(got));
	ck_assert_str_eq(json_string_value(json_object_get(d, "headline")), "AT RISK");
	ck_assert_str_eq(got, "restore_never_tested");
	/* The weekly tier has no verified backup yet: listed as such. */
	ck_assert_int_eq(json_array_size(get(d, "backups", "newest_verified_per_tier")), 2);
	ck_assert(json_is_null(
	        json_object_get(json_array_get(get(d, "backups", "newest_verified_per_tier"), 1), "id")));
	json_decref(rep);
	fx_close(&fx);
}
END_TEST

static void
assert_contains(const char *md, const char *frag)
{
	ck_assert_msg(strstr(md, frag) != NULL, "missing \"%s\" in:\n%s", frag, md);
}

START_TEST(test_report__markdown_sections)
{
	struct fx fx = fx_open();
	json_t *rep;
	char *md;

	all_well(&fx);
	add_run(&fx, "check", "integrity", "prod", NOW - 10, 2, "failed", "3 orphaned rows",
	        "{\"constraints\": 3, \"checked\": 3, \"orphaned_constraints\": 1, \"orphans\": 3, "
	        "\"details\": [{\"constraint\": \"public.child.child_parent_fkey\", \"orphans\": 3}]}");
	add_run(&fx, "drill", "drill", "prod", NOW - 3 * DAY, 60, "ok", NULL,
	        "{\"total_seconds\": 60.0, \"summary\": \"restored 5 tables | 1000 rows\"}");
	rep = pv_report_build(fx.st, fx.cfg, NOW);
	md = pv_report_markdown(rep);
	assert_contains(md, "# Disaster-recovery readiness report\n");
	assert_contains(md, "Generated 2027-01-15T08:00:00Z by pgvigil ");
	assert_contains(md, "- **AT RISK**: prod\n- **NOT READY**: other\n");
	assert_contains(md, "## prod: AT RISK\n\n- AT RISK: 3 orphaned rows in 1 foreign key\n");
	assert_contains(md, "### Connection health\n");
	assert_contains(md, "- Connect latency: 4.0 ms, query 2.0 ms\n");
	assert_contains(md, "- Server: PostgreSQL 15.8 (Debian)\n");
	assert_contains(
	        md, "### Schema validation\n\n- User tables: 5 (expected 5: ok)\n- Critical tables: all 2 "
	            "present\n");
	assert_contains(md, "### Data integrity\n");
	assert_contains(md, "| `public.child.child_parent_fkey` | 3 |\n");
	assert_contains(md, "### Backups\n");
	assert_contains(md, "| daily | D1 (job daily) | 2027-01-15T04:48:00Z | 3h12m | 2.1 MB |\n");
	assert_contains(md, "### Restore tests\n");
	assert_contains(md, "- Last restore probe: ok at 2027-01-15T06:00:00Z (job probe, run ");
	assert_contains(md, "  - Measured: total 41s, restore 31s, validation 9.1s\n");
	assert_contains(md, "- Last drill: ok at ");
	assert_contains(md, "  - Summary: restored 5 tables \\| 1000 rows\n");
	assert_contains(md, "### Achieved RPO and RTO\n");
	assert_contains(md, "| RPO | 3h12m (newest verified backup D1) | 4h | met |\n");
	assert_contains(md, "| RTO | 41s (restore probe run ");
	assert_contains(md, "### Firing alerts\n\nnone\n");
	assert_contains(md, "## other: NOT READY\n\n- NOT READY: no verified backup\n");
	assert_contains(md, "| RPO | no verified backup | not set | - |\n");
	assert_contains(md, "| RTO | never measured | not set | - |\n");
	assert_contains(md, "## Storage\n");
	assert_contains(md, "- Used 40.0 GB of 100.0 GB (40%), 60.0 GB free, as of 2027-01-15T07:55:00Z\n");
	assert_contains(
	        md,
	        "- Forecast: growing 1.0 GB/day; full in about 60.0 days (around 2027-03-16T07:55:00Z)\n");
	free(md);
	json_decref(rep);
	fx_close(&fx);
}
END_TEST

START_TEST(test_report__markdown_empty_state)
{
	struct fx fx = fx_open();
	json_t *rep = pv_report_build(fx.st, fx.cfg, NOW);
	char *md = pv_report_markdown(rep);

	assert_contains(md, "No health check has run for this database.\n");
	assert_contains(md, "Not checked: no health check has read the schema.\n");
	assert_contains(md, "No integrity check has run for this database.\n");
	assert_contains(md, "| daily | **none** (job daily) | - | - | - |\n");
	assert_contains(md, "- Last restore probe: none\n- Last drill: none\n");
	assert_contains(md, "- No storage check has run.\n");
	free(md);
	json_decref(rep);
	fx_close(&fx);
}
END_TEST

static const struct {
	double secs;
	const char *want;
} durations[] = {
        {0, "0s"},        {0.25, "250ms"},     {4.25, "4.2s"}, {41, "41s"},      {41.7, "42s"},
        {60, "1m"},       {61, "1m01s"},       {3600, "1h"},   {11532, "3h12m"}, {86400, "1d"},
        {90000, "1d01h"}, {30 * 86400, "30d"}, {-5, "0s"},
};

START_TEST(test_report__duration_format)
{
	char buf[32];
	ck_assert_str_eq(pv_report_duration(durations[_i].secs, buf, sizeof(buf)), durations[_i].want);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("report");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_unchecked_fixture(tc, base_setup, pv_test_tmpdir_teardown);
	tcase_add_test(tc, test_report__rpo_none);
	tcase_add_test(tc, test_report__rpo_newest_verified_only);
	tcase_add_test(tc, test_report__rpo_breach);
	tcase_add_test(tc, test_report__rpo_at_objective_is_met);
	tcase_add_test(tc, test_report__largest_gap);
	tcase_add_test(tc, test_report__largest_gap_to_now);
	tcase_add_test(tc, test_report__largest_gap_counts_retired_backups);
	tcase_add_test(tc, test_report__rto_probe_and_drill);
	tcase_add_test(tc, test_report__rto_ignores_other_databases_and_cancelled);
	tcase_add_test(tc, test_report__ready);
	tcase_add_test(tc, test_report__last_probe_failed);
	tcase_add_test(tc, test_report__at_risk_reasons);
	tcase_add_test(tc, test_report__never_tested);
	tcase_add_test(tc, test_report__markdown_sections);
	tcase_add_test(tc, test_report__markdown_empty_state);
	tcase_add_loop_test(tc, test_report__duration_format, 0,
	                    (int)(sizeof(durations) / sizeof(durations[0])));
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
