/* Unit tests for src/alert: every rule at its exact threshold, the alert state machine, silences, JSON. */
#include <check.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alert/engine.h"
#include "alert/rules.h"
#include "alert/snapshot.h"
#include "config/config.h"
#include "state/state.h"
#include "util/error.h"
#include "util/mem.h"

#include "testlib.h"

#define NOW  ((time_t)1800000000) /* 2027-01-15T08:00:00Z */
#define MIN  60
#define HOUR 3600
#define DAY  86400

static const char BASE[] = "storage:\n"
                           "  path: /nonexistent/backups\n"
                           "databases:\n"
                           "  prod:\n"
                           "    conninfo: \"host=localhost dbname=prod\"\n"
                           "    objectives: { rpo: 4h, rto: 1h }\n"
                           "    restore_target: scratch\n"
                           "restore_targets:\n"
                           "  scratch:\n"
                           "    conninfo: \"host=localhost dbname=postgres\"\n"
                           "jobs:\n"
                           "  daily: { type: backup, database: prod, schedule: \"0 2 * * *\", keep: 7 }\n"
                           "  monthly: { type: backup, database: prod, schedule: \"0 3 1 * *\", keep: 12 }\n"
                           "  health: { type: health, database: prod, every: 1m }\n"
                           "  probe: { type: restore_probe, database: prod, schedule: \"0 4 * * 0\" }\n"
                           "  storage: { type: storage, every: 15m }\n";

static struct pv_config *
load(const char *alerts)
{
	char *yaml = pv_asprintf("%s%s", BASE, alerts != NULL ? alerts : "");
	struct pv_error err = {0};
	struct pv_config *cfg = pv_config_load_string("t.yaml", yaml, NULL, &err);

	ck_assert_msg(cfg != NULL, "config: %s", err.msg);
	free(yaml);
	return cfg;
}

static bool
has(const struct pv_alert_conditions *c, const char *fp)
{
	return pv_alert_conditions_find(c, fp) != NULL;
}

/* ---- rules ---- */

START_TEST(test_alert__defaults_match_dr_guide)
{
	struct pv_config *cfg = load(NULL);
	const struct pv_config_alerts *a = &cfg->alerts;
	const struct pv_config_rule *r = a->rules;
	static const enum pv_severity sev[PV_RULE_COUNT] = {
	        [PV_RULE_BACKUP_STALE] = PV_SEV_CRITICAL,       [PV_RULE_CONNECTIVITY_LOST] = PV_SEV_CRITICAL,
	        [PV_RULE_RESTORE_FAILURES] = PV_SEV_CRITICAL,   [PV_RULE_RPO_BREACH] = PV_SEV_CRITICAL,
	        [PV_RULE_BACKUP_SIZE_ANOMALY] = PV_SEV_WARNING, [PV_RULE_BACKUP_SLOW] = PV_SEV_WARNING,
	        [PV_RULE_STORAGE_USAGE] = PV_SEV_WARNING,       [PV_RULE_RTO_BREACH] = PV_SEV_WARNING,
	        [PV_RULE_BACKUP_SUCCEEDED] = PV_SEV_INFO,       [PV_RULE_RESTORE_PROBE_RESULT] = PV_SEV_INFO,
	        [PV_RULE_DRILL_SUMMARY] = PV_SEV_INFO,          [PV_RULE_JOB_MISSED] = PV_SEV_WARNING,
	        [PV_RULE_NOTIFIER_BROKEN] = PV_SEV_CRITICAL,
	};

	ck_assert_int_eq(a->group_wait, 30);
	ck_assert_int_eq(a->repeat_every, 4 * HOUR);
	ck_assert(a->send_resolved);
	ck_assert_uint_eq(a->n_rules, PV_RULE_COUNT);
	for (int i = 0; i < PV_RULE_COUNT; i++) {
		ck_assert_msg(r[i].enabled, "%s enabled by default", r[i].name);
		ck_assert_int_eq(r[i].severity, sev[i]);
		ck_assert_str_eq(r[i].name, pv_alert_rule_name((enum pv_rule)i));
	}
	ck_assert_int_eq(r[PV_RULE_BACKUP_STALE].after, 24 * HOUR);
	ck_assert_int_eq(r[PV_RULE_CONNECTIVITY_LOST].after, 5 * MIN);
	ck_assert_int_eq(r[PV_RULE_RESTORE_FAILURES].consecutive, 3);
	ck_assert_double_eq(r[PV_RULE_BACKUP_SIZE_ANOMALY].change, 0.5);
	ck_assert_double_eq(r[PV_RULE_BACKUP_SLOW].factor, 2.0);
	ck_assert_double_eq(r[PV_RULE_STORAGE_USAGE].above, 0.8);
	ck_assert_int_eq(PV_ALERT_MEDIAN_MIN, 3);
	ck_assert_double_eq(PV_ALERT_FULL_SOON_DAYS, 7.0);
	pv_config_unref(cfg);
}
END_TEST

/* A snapshot with room for everything; makers set one rule's inputs just inside or on its threshold. */
struct fx {
	struct pv_alert_snapshot snap;
	struct pv_alert_snap_database db;
	struct pv_alert_snap_backup_job bk[2];
	int64_t sizes[PV_ALERT_RECENT_MAX];
	double durations[PV_ALERT_RECENT_MAX];
	struct pv_alert_snap_missed missed;
	struct pv_alert_snap_notifier notifier;
	struct pv_alert_snap_event event;
};

/* Healthy: nothing is true at NOW. */
static void
fx_init(struct fx *f)
{
	memset(f, 0, sizeof(*f));
	f->db = (struct pv_alert_snap_database){
	        .name = "prod",
	        .rpo = 4 * HOUR,
	        .rto = HOUR,
	        .since = NOW - 30 * DAY,
	        .newest_verified_finished = NOW - HOUR,
	        .newest_verified_id = "20270115T070000Z",
	        .have_health = true,
	        .connected = true,
	        .have_restore = true,
	        .restore_seconds = 600,
	        .restore_at = NOW - DAY,
	        .restore_kind = "restore_probe",
	};
	for (int i = 0; i < 3; i++) {
		f->sizes[i] = 1000;
		f->durations[i] = 100;
	}
	f->bk[0] = (struct pv_alert_snap_backup_job){
	        .name = "daily",
	        .database = "prod",
	        .since = NOW - 30 * DAY,
	        .last_success_finished = NOW - HOUR,
	        .recent_sizes = f->sizes,
	        .n_recent_sizes = 3,
	        .recent_durations = f->durations,
	        .n_recent_durations = 3,
	        .have_last = true,
	        .last_ok = true,
	        .last_size = 1000,
	        .last_duration = 100,
	        .last_finished = NOW - HOUR,
	        .last_backup_id = "20270115T070000Z",
	};
	/* A monthly job whose last success is weeks old must not make the database stale. */
	f->bk[1] = (struct pv_alert_snap_backup_job){
	        .name = "monthly",
	        .database = "prod",
	        .since = NOW - 60 * DAY,
	        .last_success_finished = NOW - 14 * DAY,
	};
	f->notifier = (struct pv_alert_snap_notifier){.name = "oncall"};
	f->snap = (struct pv_alert_snapshot){
	        .databases = &f->db,
	        .n_databases = 1,
	        .backups = f->bk,
	        .n_backups = 2,
	        .storage = {.have = true, .used_ratio = 0.5, .have_forecast = true, .days_until_full = 100},
	        .notifiers = &f->notifier,
	        .n_notifiers = 1,
	};
}

/* Each maker: `on` false puts the input on the not-true side of the boundary, true on the true side. */
static time_t
mk_backup_stale(struct fx *f, bool on)
{
	f->bk[0].last_success_finished = NOW - DAY;
	return on ? NOW : NOW - 1; /* inclusive: 24h - 1s is fresh, 24h is stale */
}

static time_t
mk_backup_stale_never(struct fx *f, bool on)
{
	/* Never succeeded: counted from when the earliest backup job was first configured. */
	f->bk[0].last_success_finished = f->bk[1].last_success_finished = 0;
	f->bk[0].since = NOW - DAY;
	f->bk[1].since = NOW - DAY + 10;
	return on ? NOW : NOW - 1;
}

static time_t
mk_connectivity(struct fx *f, bool on)
{
	f->db.connected = false;
	f->db.failing_since = NOW - 5 * MIN;
	return on ? NOW : NOW - 1; /* inclusive */
}

static time_t
mk_restore_failures(struct fx *f, bool on)
{
	f->db.consecutive_probe_failures = on ? 3 : 2; /* inclusive */
	return NOW;
}

static time_t
mk_rpo(struct fx *f, bool on)
{
	f->db.newest_verified_finished = NOW - 4 * HOUR;
	return on ? NOW + 1 : NOW; /* exclusive: exactly the objective is met */
}

static time_t
mk_rpo_never(struct fx *f, bool on)
{
	f->db.newest_verified_finished = 0;
	f->db.since = NOW - 4 * HOUR;
	return on ? NOW + 1 : NOW;
}

static time_t
mk_size_up(struct fx *f, bool on)
{
	f->bk[0].last_size = on ? 1501 : 1500; /* exclusive: +50% exactly is fine */
	return NOW;
}

static time_t
mk_size_down(struct fx *f, bool on)
{
	f->bk[0].last_size = on ? 499 : 500;
	return NOW;
}

static time_t
mk_slow(struct fx *f, bool on)
{
	f->bk[0].last_duration = on ? 200.5 : 200.0; /* exclusive: 2x the median is fine */
	return NOW;
}

static time_t
mk_storage(struct fx *f, bool on)
{
	f->snap.storage.used_ratio = on ? 0.8001 : 0.8; /* exclusive: "above" */
	return NOW;
}

static time_t
mk_full_soon(struct fx *f, bool on)
{
	f->snap.storage.days_until_full = on ? 6.99 : 7.0; /* exclusive: within 7 days */
	return NOW;
}

static time_t
mk_rto(struct fx *f, bool on)
{
	f->db.restore_seconds = on ? HOUR + 1 : HOUR; /* exclusive: exactly the objective is met */
	return NOW;
}

static time_t
mk_notifier(struct fx *f, bool on)
{
	f->notifier.broken = on;
	f->notifier.reason = "HTTP 404 no_service";
	return NOW;
}

static const struct {
	const char *name;
	enum pv_rule rule;
	const char *fp;
	time_t (*make)(struct fx *, bool);
	const char *threshold;
} threshold_cases[] = {
        {"backup_stale", PV_RULE_BACKUP_STALE, "backup_stale/prod", mk_backup_stale, "24h"},
        {"backup_stale never", PV_RULE_BACKUP_STALE, "backup_stale/prod", mk_backup_stale_never, "24h"},
        {"connectivity_lost", PV_RULE_CONNECTIVITY_LOST, "connectivity_lost/prod", mk_connectivity, "5m"},
        {"restore_failures", PV_RULE_RESTORE_FAILURES, "restore_failures/prod", mk_restore_failures,
         "3 in a row"},
        {"rpo_breach", PV_RULE_RPO_BREACH, "rpo_breach/prod", mk_rpo, "rpo 4h"},
        {"rpo_breach never", PV_RULE_RPO_BREACH, "rpo_breach/prod", mk_rpo_never, "rpo 4h"},
        {"size up", PV_RULE_BACKUP_SIZE_ANOMALY, "backup_size_anomaly/daily", mk_size_up, "50%"},
        {"size down", PV_RULE_BACKUP_SIZE_ANOMALY, "backup_size_anomaly/daily", mk_size_down, "50%"},
        {"backup_slow", PV_RULE_BACKUP_SLOW, "backup_slow/daily", mk_slow, "2x the median (3m20s)"},
        {"storage_usage", PV_RULE_STORAGE_USAGE, PV_ALERT_FP_STORAGE, mk_storage, "80%"},
        {"storage full soon", PV_RULE_STORAGE_USAGE, PV_ALERT_FP_FULL_SOON, mk_full_soon, "7 days"},
        {"rto_breach", PV_RULE_RTO_BREACH, "rto_breach/prod", mk_rto, "rto 1h"},
        {"notifier_broken", PV_RULE_NOTIFIER_BROKEN, "notifier_broken/oncall", mk_notifier,
         "no permanent error"},
};

/*
 * Each stateful rule: on the near side of its boundary nothing is true; on it the condition is true with
 * the configured severity, fires (group_wait 0) and resolves when the input is back on the near side.
 */
START_TEST(test_alert__rule_exact_threshold)
{
	struct pv_config *cfg = load("alerts:\n  group_wait: 0s\n");
	struct pv_alert_conditions c = {0};
	struct pv_alert_set set = {0};
	struct pv_alert_notifications out = {0};
	const struct pv_alert_condition *hit;
	struct fx f;
	time_t t;

	fx_init(&f);
	pv_alert_rules_eval(cfg, &f.snap, NOW, &c);
	ck_assert_msg(c.n == 0, "healthy snapshot: %zu conditions (first %s)", c.n,
	              c.n ? c.v[0].fingerprint : "");

	t = threshold_cases[_i].make(&f, false);
	pv_alert_rules_eval(cfg, &f.snap, t, &c);
	ck_assert_msg(!has(&c, threshold_cases[_i].fp), "%s: true before its threshold",
	              threshold_cases[_i].name);
	ck_assert_uint_eq(c.n, 0);

	fx_init(&f);
	t = threshold_cases[_i].make(&f, true);
	pv_alert_rules_eval(cfg, &f.snap, t, &c);
	hit = pv_alert_conditions_find(&c, threshold_cases[_i].fp);
	ck_assert_msg(hit != NULL, "%s: not true at its threshold", threshold_cases[_i].name);
	ck_assert_uint_eq(c.n, 1);
	ck_assert_int_eq(hit->rule, threshold_cases[_i].rule);
	ck_assert(!hit->oneshot);
	ck_assert_int_eq(hit->severity, cfg->alerts.rules[threshold_cases[_i].rule].severity);
	ck_assert_str_eq(hit->threshold, threshold_cases[_i].threshold);
	ck_assert(strlen(hit->value) > 0);
	ck_assert_int_eq(hit->at, t);

	/* Fires at once with group_wait 0 ... */
	pv_alert_engine_step(&cfg->alerts, &set, &c, NULL, t, &out);
	ck_assert_uint_eq(out.n, 1);
	ck_assert_int_eq(out.v[0].kind, PV_ALERT_NOTIFY_FIRING);
	ck_assert_str_eq(out.v[0].fingerprint, threshold_cases[_i].fp);
	/* ... and resolves once the input is back on the near side of the boundary. */
	fx_init(&f);
	t = threshold_cases[_i].make(&f, false);
	pv_alert_rules_eval(cfg, &f.snap, t, &c);
	ck_assert_uint_eq(c.n, 0);
	pv_alert_engine_step(&cfg->alerts, &set, &c, NULL, t + 10, &out);
	ck_assert_uint_eq(out.n, 1);
	ck_assert_int_eq(out.v[0].kind, PV_ALERT_NOTIFY_RESOLVED);
	ck_assert_str_eq(out.v[0].fingerprint, threshold_cases[_i].fp);

	pv_alert_notifications_clear(&out);
	pv_alert_set_clear(&set);
	pv_alert_conditions_clear(&c);
	pv_config_unref(cfg);
}
END_TEST

START_TEST(test_alert__rule_texts)
{
	struct pv_config *cfg = load(NULL);
	struct pv_alert_conditions c = {0};
	const struct pv_alert_condition *hit;
	struct fx f;

	fx_init(&f);
	f.bk[0].last_success_finished = NOW - 26 * HOUR;
	pv_alert_rules_eval(cfg, &f.snap, NOW, &c);
	hit = pv_alert_conditions_find(&c, "backup_stale/prod");
	ck_assert_ptr_nonnull(hit);
	ck_assert_str_eq(hit->value, "last successful backup 26h ago");
	ck_assert_str_eq(hit->threshold, "24h");
	ck_assert_str_eq(hit->database, "prod");
	ck_assert_ptr_null(hit->job);
	ck_assert_int_eq(hit->severity, PV_SEV_CRITICAL);

	fx_init(&f);
	f.bk[0].last_size = 3000;
	pv_alert_rules_eval(cfg, &f.snap, NOW, &c);
	hit = pv_alert_conditions_find(&c, "backup_size_anomaly/daily");
	ck_assert_ptr_nonnull(hit);
	ck_assert_str_eq(hit->job, "daily");
	ck_assert_str_eq(hit->database, "prod");
	ck_assert_msg(strstr(hit->value, "+200%") != NULL, "%s", hit->value);

	char buf[32];
	ck_assert_str_eq(pv_alert_duration(45, buf, sizeof(buf)), "45s");
	ck_assert_str_eq(pv_alert_duration(299, buf, sizeof(buf)), "4m59s");
	ck_assert_str_eq(pv_alert_duration(300, buf, sizeof(buf)), "5m");
	ck_assert_str_eq(pv_alert_duration(5400, buf, sizeof(buf)), "1h30m");
	ck_assert_str_eq(pv_alert_duration(47 * HOUR, buf, sizeof(buf)), "47h");
	ck_assert_str_eq(pv_alert_duration(7 * DAY, buf, sizeof(buf)), "7d");
	ck_assert_str_eq(pv_alert_duration(3 * DAY + 4 * HOUR, buf, sizeof(buf)), "3d4h");
	pv_alert_conditions_clear(&c);
	pv_config_unref(cfg);
}
END_TEST

START_TEST(test_alert__backup_stale_per_database)
{
	struct pv_config *cfg = load(NULL);
	struct pv_alert_conditions c = {0};
	struct fx f;

	/* The monthly job last succeeded 14 days ago; the daily one an hour ago: not stale. */
	fx_init(&f);
	pv_alert_rules_eval(cfg, &f.snap, NOW, &c);
	ck_assert(!has(&c, "backup_stale/prod"));
	/* Only the monthly job recent: still not stale, whichever job it was. */
	f.bk[0].last_success_finished = NOW - 10 * DAY;
	f.bk[1].last_success_finished = NOW - HOUR;
	pv_alert_rules_eval(cfg, &f.snap, NOW, &c);
	ck_assert(!has(&c, "backup_stale/prod"));
	/* A database without backup jobs has nothing to be stale about. */
	f.snap.n_backups = 0;
	pv_alert_rules_eval(cfg, &f.snap, NOW + 100 * DAY, &c);
	ck_assert(!has(&c, "backup_stale/prod"));
	pv_alert_conditions_clear(&c);
	pv_config_unref(cfg);
}
END_TEST

START_TEST(test_alert__unknown_inputs_raise_nothing)
{
	struct pv_config *cfg = load(NULL);
	struct pv_alert_conditions c = {0};
	struct fx f;

	fx_init(&f);
	f.db.have_health = false; /* no health run recorded yet */
	f.db.connected = false;
	f.db.failing_since = NOW - DAY;
	f.db.have_restore = false; /* no probe yet: no rto_breach */
	f.db.restore_seconds = 10 * HOUR;
	f.db.rpo = 0; /* no objective: no rpo_breach */
	f.db.newest_verified_finished = NOW - 30 * DAY;
	f.snap.storage.have = false;
	f.snap.storage.used_ratio = 0.99;
	f.bk[0].last_ok = false; /* a failed run's size and time are not judged */
	f.bk[0].last_size = 1;
	f.bk[0].last_duration = 1e6;
	pv_alert_rules_eval(cfg, &f.snap, NOW, &c);
	ck_assert_msg(c.n == 0, "%zu conditions (first %s)", c.n, c.n ? c.v[0].fingerprint : "");
	pv_alert_conditions_clear(&c);
	pv_config_unref(cfg);
}
END_TEST

START_TEST(test_alert__median_needs_three_successes)
{
	struct pv_config *cfg = load(NULL);
	struct pv_alert_conditions c = {0};
	struct fx f;

	fx_init(&f);
	f.bk[0].n_recent_sizes = f.bk[0].n_recent_durations = 2;
	f.bk[0].last_size = 100000;
	f.bk[0].last_duration = 100000;
	pv_alert_rules_eval(cfg, &f.snap, NOW, &c);
	ck_assert(!has(&c, "backup_size_anomaly/daily"));
	ck_assert(!has(&c, "backup_slow/daily"));

	f.bk[0].n_recent_sizes = f.bk[0].n_recent_durations = 3;
	pv_alert_rules_eval(cfg, &f.snap, NOW, &c);
	ck_assert(has(&c, "backup_size_anomaly/daily"));
	ck_assert(has(&c, "backup_slow/daily"));

	/* The median, not the mean: one huge outlier among four does not move the baseline. */
	fx_init(&f);
	f.sizes[0] = 1000;
	f.sizes[1] = 1000000;
	f.sizes[2] = 1100;
	f.sizes[3] = 900;
	f.bk[0].n_recent_sizes = 4; /* median (1000 + 1100) / 2 = 1050 */
	f.bk[0].last_size = 1575;   /* +50% exactly */
	pv_alert_rules_eval(cfg, &f.snap, NOW, &c);
	ck_assert(!has(&c, "backup_size_anomaly/daily"));
	f.bk[0].last_size = 1576;
	pv_alert_rules_eval(cfg, &f.snap, NOW, &c);
	ck_assert(has(&c, "backup_size_anomaly/daily"));

	/* Only the newest PV_ALERT_RECENT_MAX count: with all 15 the median would be 1000s, not 100s. */
	fx_init(&f);
	double many[PV_ALERT_RECENT_MAX + 5];
	for (int i = 0; i < PV_ALERT_RECENT_MAX + 5; i++)
		many[i] = i < 6 ? 100 : 1000;
	f.bk[0].recent_durations = many;
	f.bk[0].n_recent_durations = PV_ALERT_RECENT_MAX + 5;
	f.bk[0].last_duration = 250;
	pv_alert_rules_eval(cfg, &f.snap, NOW, &c);
	ck_assert(has(&c, "backup_slow/daily"));
	pv_alert_conditions_clear(&c);
	pv_config_unref(cfg);
}
END_TEST

START_TEST(test_alert__disabled_rules)
{
	struct pv_alert_conditions c = {0};
	struct fx f;
	char *yaml;
	struct pv_config *all_on = load(NULL), *cfg;
	const char *rule = pv_alert_rule_name((enum pv_rule)_i);
	size_t n_on;
	bool seen = false;

	/* Everything true at once. */
	fx_init(&f);
	f.bk[0].last_success_finished = f.bk[1].last_success_finished = NOW - 2 * DAY;
	f.db.connected = false;
	f.db.failing_since = NOW - HOUR;
	f.db.consecutive_probe_failures = 5;
	f.db.newest_verified_finished = NOW - 2 * DAY;
	f.db.restore_seconds = 2 * HOUR;
	f.bk[0].last_size = 10;
	f.bk[0].last_duration = 1000;
	f.snap.storage.used_ratio = 0.95;
	f.snap.storage.days_until_full = 2;
	f.notifier.broken = true;
	f.missed = (struct pv_alert_snap_missed){
	        .job = "daily", .database = "prod", .count = 1, .last_slot = NOW};
	f.snap.missed = &f.missed;
	f.snap.n_missed = 1;
	f.event = (struct pv_alert_snap_event){.rule = (enum pv_rule)_i, .job = "daily", .database = "prod"};
	if (pv_alert_rule_is_event((enum pv_rule)_i)) {
		f.snap.events = &f.event;
		f.snap.n_events = 1;
	}

	pv_alert_rules_eval(all_on, &f.snap, NOW, &c);
	n_on = c.n;
	for (size_t i = 0; i < c.n; i++)
		seen |= c.v[i].rule == (enum pv_rule)_i;
	ck_assert_msg(seen, "%s is not true in the all-true snapshot", rule);

	yaml = pv_asprintf("alerts:\n  rules:\n    %s: { enabled: false }\n", rule);
	cfg = load(yaml);
	pv_alert_rules_eval(cfg, &f.snap, NOW, &c);
	for (size_t i = 0; i < c.n; i++)
		ck_assert_msg(c.v[i].rule != (enum pv_rule)_i, "%s is disabled but %s is true", rule,
		              c.v[i].fingerprint);
	ck_assert_uint_lt(c.n, n_on);
	free(yaml);
	pv_alert_conditions_clear(&c);
	pv_config_unref(cfg);
	pv_config_unref(all_on);
}
END_TEST

START_TEST(test_alert__severity_from_config)
{
	struct pv_config *cfg =
	        load("alerts:\n  rules:\n    connectivity_lost: { severity: warning, after: 1m }\n");
	struct pv_alert_conditions c = {0};
	const struct pv_alert_condition *hit;
	struct fx f;

	fx_init(&f);
	f.db.connected = false;
	f.db.failing_since = NOW - MIN + 1;
	pv_alert_rules_eval(cfg, &f.snap, NOW, &c);
	ck_assert(!has(&c, "connectivity_lost/prod"));
	pv_alert_rules_eval(cfg, &f.snap, NOW + 1, &c);
	hit = pv_alert_conditions_find(&c, "connectivity_lost/prod");
	ck_assert_ptr_nonnull(hit);
	ck_assert_int_eq(hit->severity, PV_SEV_WARNING);
	ck_assert_str_eq(hit->threshold, "1m");
	pv_alert_conditions_clear(&c);
	pv_config_unref(cfg);
}
END_TEST

START_TEST(test_alert__info_events_and_job_missed_are_oneshot)
{
	struct pv_config *cfg = load(NULL);
	struct pv_alert_conditions c = {0};
	struct pv_alert_set set = {0};
	struct pv_alert_notifications out = {0};
	struct pv_alert_snap_event ev[3] = {
	        {.rule = PV_RULE_BACKUP_SUCCEEDED,
	         .job = "daily",
	         .database = "prod",
	         .backup_id = "20270115T020000Z",
	         .ok = true,
	         .size = 3 * 1024 * 1024,
	         .seconds = 192,
	         .at = NOW - 5},
	        {.rule = PV_RULE_RESTORE_PROBE_RESULT,
	         .job = "probe",
	         .database = "prod",
	         .backup_id = "20270115T020000Z",
	         .ok = false,
	         .seconds = 60,
	         .at = NOW - 4,
	         .detail = "assertion 1 failed"},
	        {.rule = PV_RULE_DRILL_SUMMARY,
	         .job = "drill",
	         .database = "prod",
	         .ok = true,
	         .seconds = 1800},
	};
	struct pv_alert_snap_missed m = {
	        .job = "daily", .database = "prod", .count = 2, .last_slot = NOW - 60};
	struct fx f;

	fx_init(&f);
	f.snap.events = ev;
	f.snap.n_events = 3;
	f.snap.missed = &m;
	f.snap.n_missed = 1;
	pv_alert_rules_eval(cfg, &f.snap, NOW, &c);
	ck_assert_uint_eq(c.n, 4);
	for (size_t i = 0; i < c.n; i++)
		ck_assert(c.v[i].oneshot);
	ck_assert_str_eq(pv_alert_conditions_find(&c, "job_missed/daily")->threshold, "grace 5m");
	ck_assert_int_eq(pv_alert_conditions_find(&c, "job_missed/daily")->severity, PV_SEV_WARNING);
	ck_assert_str_eq(pv_alert_conditions_find(&c, "backup_succeeded/daily")->value,
	                 "backup 20270115T020000Z: 3.0 MiB in 3m12s");
	ck_assert_int_eq(pv_alert_conditions_find(&c, "backup_succeeded/daily")->at, NOW - 5);
	ck_assert_int_eq(pv_alert_conditions_find(&c, "backup_succeeded/daily")->severity, PV_SEV_INFO);
	ck_assert_ptr_nonnull(strstr(pv_alert_conditions_find(&c, "restore_probe_result/probe")->value,
	                             "failed in 1m: assertion 1 failed"));
	ck_assert_int_eq(pv_alert_conditions_find(&c, "drill_summary/drill")->at, NOW);

	/* Sent in the step they appear in, despite group_wait 30s; no state is kept. */
	pv_alert_engine_step(&cfg->alerts, &set, &c, NULL, NOW, &out);
	ck_assert_uint_eq(out.n, 4);
	for (size_t i = 0; i < out.n; i++) {
		ck_assert_int_eq(out.v[i].kind, PV_ALERT_NOTIFY_EVENT);
		ck_assert_int_eq(out.v[i].fired_at, 0);
	}
	ck_assert_uint_eq(set.n, 0);
	/* Once: the next evaluation has no new events and sends nothing. */
	f.snap.n_events = f.snap.n_missed = 0;
	pv_alert_rules_eval(cfg, &f.snap, NOW + 60, &c);
	pv_alert_engine_step(&cfg->alerts, &set, &c, NULL, NOW + 60, &out);
	ck_assert_uint_eq(out.n, 0);

	pv_alert_notifications_clear(&out);
	pv_alert_set_clear(&set);
	pv_alert_conditions_clear(&c);
	pv_config_unref(cfg);
}
END_TEST

/* ---- engine ---- */

static struct pv_config_alerts
acfg(int64_t group_wait, int64_t repeat_every, bool send_resolved)
{
	return (struct pv_config_alerts){
	        .group_wait = group_wait, .repeat_every = repeat_every, .send_resolved = send_resolved};
}

static void
cond(struct pv_alert_conditions *c, const char *fp, enum pv_rule rule, enum pv_severity sev, const char *db)
{
	struct pv_alert_condition x = {.rule = rule,
	                               .severity = sev,
	                               .fingerprint = (char *)fp,
	                               .value = "v",
	                               .threshold = "t",
	                               .database = (char *)db};
	pv_alert_conditions_add(c, &x);
}

/* One step; returns the number of notifications. */
static size_t
step(const struct pv_config_alerts *a, struct pv_alert_set *set, const struct pv_alert_conditions *c,
     const struct pv_alert_suppress *sup, time_t now, struct pv_alert_notifications *out)
{
	pv_alert_engine_step(a, set, c, sup, now, out);
	return out->n;
}

START_TEST(test_alert__group_wait_swallows_flap)
{
	struct pv_config_alerts a = acfg(30, 4 * HOUR, true);
	struct pv_alert_conditions on = {0}, off = {0};
	struct pv_alert_set set = {0};
	struct pv_alert_notifications out = {0};

	cond(&on, "connectivity_lost/prod", PV_RULE_CONNECTIVITY_LOST, PV_SEV_CRITICAL, "prod");
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW, &out), 0);
	ck_assert_int_eq(pv_alert_set_find(&set, "connectivity_lost/prod")->status, PV_ALERT_PENDING);
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW + 29, &out), 0);
	ck_assert_uint_eq(step(&a, &set, &off, NULL, NOW + 29, &out), 0); /* gone within group_wait */
	ck_assert_uint_eq(set.n, 0);
	for (time_t t = NOW + 30; t < NOW + 10 * HOUR; t += 600)
		ck_assert_uint_eq(step(&a, &set, &off, NULL, t, &out), 0); /* and never a resolved notice */

	/* Held for exactly group_wait: fires. */
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW, &out), 0);
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW + 29, &out), 0);
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW + 30, &out), 1);
	ck_assert_int_eq(out.v[0].kind, PV_ALERT_NOTIFY_FIRING);
	ck_assert_int_eq(out.v[0].fired_at, NOW + 30);
	ck_assert_int_eq(out.v[0].severity, PV_SEV_CRITICAL);
	ck_assert_str_eq(out.v[0].database, "prod");
	ck_assert(!out.v[0].suppressed);
	ck_assert_int_eq(pv_alert_engine_next_due(&a, &set), NOW + 30 + 4 * HOUR);

	pv_alert_notifications_clear(&out);
	pv_alert_set_clear(&set);
	pv_alert_conditions_clear(&on);
	pv_alert_conditions_clear(&off);
}
END_TEST

START_TEST(test_alert__batch_fires_together)
{
	struct pv_config_alerts a = acfg(30, 4 * HOUR, true);
	struct pv_alert_conditions on = {0};
	struct pv_alert_set set = {0};
	struct pv_alert_notifications out = {0};

	cond(&on, "backup_stale/prod", PV_RULE_BACKUP_STALE, PV_SEV_CRITICAL, "prod");
	cond(&on, "rpo_breach/prod", PV_RULE_RPO_BREACH, PV_SEV_CRITICAL, "prod");
	cond(&on, "rpo_breach/prod", PV_RULE_RPO_BREACH, PV_SEV_CRITICAL, "prod"); /* duplicate: one alert */
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW, &out), 0);
	ck_assert_uint_eq(set.n, 2);
	ck_assert_int_eq(pv_alert_engine_next_due(&a, &set), NOW + 30);
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW + 45, &out), 2);
	ck_assert_str_eq(out.v[0].fingerprint, "backup_stale/prod");
	ck_assert_str_eq(out.v[1].fingerprint, "rpo_breach/prod");
	pv_alert_notifications_clear(&out);
	pv_alert_set_clear(&set);
	pv_alert_conditions_clear(&on);
}
END_TEST

START_TEST(test_alert__repeat_every)
{
	struct pv_config_alerts a = acfg(0, 4 * HOUR, true);
	struct pv_alert_conditions on = {0};
	struct pv_alert_set set = {0};
	struct pv_alert_notifications out = {0};

	cond(&on, "backup_stale/prod", PV_RULE_BACKUP_STALE, PV_SEV_CRITICAL, "prod");
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW, &out), 1);
	ck_assert_int_eq(out.v[0].kind, PV_ALERT_NOTIFY_FIRING);
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW + 60, &out), 0);
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW + 4 * HOUR - 1, &out), 0);
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW + 4 * HOUR, &out), 1);
	ck_assert_int_eq(out.v[0].kind, PV_ALERT_NOTIFY_REPEAT);
	ck_assert_int_eq(out.v[0].fired_at, NOW);
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW + 4 * HOUR + 1, &out), 0);
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW + 8 * HOUR - 1, &out), 0);
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW + 8 * HOUR, &out), 1);
	ck_assert_int_eq(out.v[0].kind, PV_ALERT_NOTIFY_REPEAT);
	/* A late evaluation repeats once, from when it was last sent. */
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW + 20 * HOUR, &out), 1);
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW + 24 * HOUR - 1, &out), 0);
	pv_alert_notifications_clear(&out);
	pv_alert_set_clear(&set);
	pv_alert_conditions_clear(&on);
}
END_TEST

START_TEST(test_alert__resolved_once_after_firing)
{
	struct pv_config_alerts a = acfg(30, 4 * HOUR, true);
	struct pv_alert_conditions on = {0}, off = {0};
	struct pv_alert_set set = {0};
	struct pv_alert_notifications out = {0};
	const struct pv_alert_state *s;

	cond(&on, "rto_breach/prod", PV_RULE_RTO_BREACH, PV_SEV_WARNING, "prod");
	step(&a, &set, &on, NULL, NOW, &out);
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW + 30, &out), 1);
	ck_assert_uint_eq(step(&a, &set, &off, NULL, NOW + 100, &out), 1);
	ck_assert_int_eq(out.v[0].kind, PV_ALERT_NOTIFY_RESOLVED);
	ck_assert_int_eq(out.v[0].fired_at, NOW + 30);
	ck_assert_int_eq(out.v[0].at, NOW + 100);
	s = pv_alert_set_find(&set, "rto_breach/prod");
	ck_assert_int_eq(s->status, PV_ALERT_RESOLVED);
	ck_assert_int_eq(s->resolved_at, NOW + 100);
	ck_assert_int_eq(pv_alert_engine_next_due(&a, &set), 0);
	/* Once. */
	ck_assert_uint_eq(step(&a, &set, &off, NULL, NOW + 200, &out), 0);
	ck_assert_uint_eq(step(&a, &set, &off, NULL, NOW + 5 * HOUR, &out), 0);
	/* True again: a new episode, with its own group_wait. */
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW + 6 * HOUR, &out), 0);
	ck_assert_int_eq(pv_alert_set_find(&set, "rto_breach/prod")->status, PV_ALERT_PENDING);
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW + 6 * HOUR + 30, &out), 1);
	ck_assert_int_eq(out.v[0].kind, PV_ALERT_NOTIFY_FIRING);
	ck_assert_int_eq(out.v[0].fired_at, NOW + 6 * HOUR + 30);
	/* A resolved alert is forgotten after PV_ALERT_RESOLVED_KEEP. */
	ck_assert_uint_eq(step(&a, &set, &off, NULL, NOW + 7 * HOUR, &out), 1);
	ck_assert_uint_eq(step(&a, &set, &off, NULL, NOW + 7 * HOUR + PV_ALERT_RESOLVED_KEEP - 1, &out), 0);
	ck_assert_uint_eq(set.n, 1);
	ck_assert_uint_eq(step(&a, &set, &off, NULL, NOW + 7 * HOUR + PV_ALERT_RESOLVED_KEEP, &out), 0);
	ck_assert_uint_eq(set.n, 0);
	pv_alert_notifications_clear(&out);
	pv_alert_set_clear(&set);
	pv_alert_conditions_clear(&on);
}
END_TEST

START_TEST(test_alert__send_resolved_false)
{
	struct pv_config_alerts a = acfg(0, 4 * HOUR, false);
	struct pv_alert_conditions on = {0}, off = {0};
	struct pv_alert_set set = {0};
	struct pv_alert_notifications out = {0};

	cond(&on, "storage_usage/storage", PV_RULE_STORAGE_USAGE, PV_SEV_WARNING, NULL);
	ck_assert_uint_eq(step(&a, &set, &on, NULL, NOW, &out), 1);
	ck_assert_uint_eq(step(&a, &set, &off, NULL, NOW + 10, &out), 0);
	ck_assert_int_eq(pv_alert_set_find(&set, "storage_usage/storage")->status, PV_ALERT_RESOLVED);
	ck_assert_uint_eq(step(&a, &set, &off, NULL, NOW + 5 * HOUR, &out), 0); /* no repeat either */
	pv_alert_notifications_clear(&out);
	pv_alert_set_clear(&set);
	pv_alert_conditions_clear(&on);
}
END_TEST

START_TEST(test_alert__severity_change_notified)
{
	struct pv_config_alerts a = acfg(30, 4 * HOUR, true);
	struct pv_alert_conditions warn = {0}, crit = {0};
	struct pv_alert_set set = {0};
	struct pv_alert_notifications out = {0};

	cond(&warn, "backup_slow/daily", PV_RULE_BACKUP_SLOW, PV_SEV_WARNING, "prod");
	cond(&crit, "backup_slow/daily", PV_RULE_BACKUP_SLOW, PV_SEV_CRITICAL, "prod");
	/* While pending, a change is simply taken: the firing notice carries the current severity. */
	step(&a, &set, &warn, NULL, NOW, &out);
	ck_assert_uint_eq(step(&a, &set, &crit, NULL, NOW + 10, &out), 0);
	ck_assert_uint_eq(step(&a, &set, &warn, NULL, NOW + 30, &out), 1);
	ck_assert_int_eq(out.v[0].kind, PV_ALERT_NOTIFY_FIRING);
	ck_assert_int_eq(out.v[0].severity, PV_SEV_WARNING);
	/* While firing, it is notified once. */
	ck_assert_uint_eq(step(&a, &set, &crit, NULL, NOW + 60, &out), 1);
	ck_assert_int_eq(out.v[0].kind, PV_ALERT_NOTIFY_SEVERITY);
	ck_assert_int_eq(out.v[0].severity, PV_SEV_CRITICAL);
	ck_assert_int_eq(out.v[0].fired_at, NOW + 30);
	ck_assert_uint_eq(step(&a, &set, &crit, NULL, NOW + 120, &out), 0);
	/* The repeat clock restarts at the severity notice. */
	ck_assert_uint_eq(step(&a, &set, &crit, NULL, NOW + 60 + 4 * HOUR - 1, &out), 0);
	ck_assert_uint_eq(step(&a, &set, &crit, NULL, NOW + 60 + 4 * HOUR, &out), 1);
	ck_assert_int_eq(out.v[0].kind, PV_ALERT_NOTIFY_REPEAT);
	pv_alert_notifications_clear(&out);
	pv_alert_set_clear(&set);
	pv_alert_conditions_clear(&warn);
	pv_alert_conditions_clear(&crit);
}
END_TEST

START_TEST(test_alert__silence_suppresses_and_expires)
{
	struct pv_config_alerts a = acfg(0, 4 * HOUR, true);
	struct pv_alert_conditions on = {0}, off = {0};
	struct pv_alert_set set = {0};
	struct pv_alert_notifications out = {0};
	struct pv_alert_silence sil[] = {
	        {.id = 7, .rule = PV_RULE_CONNECTIVITY_LOST, .database = "prod", .until = NOW + HOUR},
	        {.id = 8, .rule = PV_RULE_RPO_BREACH, .database = NULL, .until = NOW + HOUR},
	};
	struct pv_alert_suppress sup = {.silences = sil, .n_silences = 2};

	cond(&on, "connectivity_lost/prod", PV_RULE_CONNECTIVITY_LOST, PV_SEV_CRITICAL, "prod");
	cond(&on, "connectivity_lost/other", PV_RULE_CONNECTIVITY_LOST, PV_SEV_CRITICAL, "other");
	cond(&on, "rpo_breach/other", PV_RULE_RPO_BREACH, PV_SEV_CRITICAL, "other");
	ck_assert_uint_eq(step(&a, &set, &on, &sup, NOW, &out), 3);
	/* Produced (to be recorded), but marked. Evaluation goes on: all three fire. */
	ck_assert(out.v[0].suppressed);
	ck_assert_int_eq(out.v[0].silence_id, 7);
	ck_assert(!out.v[1].suppressed); /* another database */
	ck_assert_int_eq(out.v[1].silence_id, 0);
	ck_assert(out.v[2].suppressed); /* the silence names no database: every one */
	ck_assert_int_eq(out.v[2].silence_id, 8);
	for (size_t i = 0; i < set.n; i++)
		ck_assert_int_eq(set.v[i].status, PV_ALERT_FIRING);
	ck_assert_uint_eq(step(&a, &set, &on, &sup, NOW + HOUR - 1, &out), 0);
	/* Expiry (until is exclusive): the suppressed ones are sent now, not at the next repeat. */
	ck_assert_uint_eq(step(&a, &set, &on, &sup, NOW + HOUR, &out), 2);
	ck_assert_int_eq(out.v[0].kind, PV_ALERT_NOTIFY_FIRING);
	ck_assert_str_eq(out.v[0].fingerprint, "connectivity_lost/prod");
	ck_assert(!out.v[0].suppressed);
	ck_assert_int_eq(out.v[0].fired_at, NOW);
	ck_assert_str_eq(out.v[1].fingerprint, "rpo_breach/other");
	ck_assert(!out.v[1].suppressed);
	ck_assert_uint_eq(step(&a, &set, &on, &sup, NOW + HOUR + 1, &out), 0);

	/* A resolution during a silence is suppressed too. */
	sil[0].until = NOW + 10 * HOUR;
	ck_assert_uint_eq(step(&a, &set, &off, &sup, NOW + 2 * HOUR, &out), 3);
	ck_assert_int_eq(out.v[0].kind, PV_ALERT_NOTIFY_RESOLVED);
	ck_assert(out.v[0].suppressed);
	ck_assert(!out.v[1].suppressed);
	ck_assert(!out.v[2].suppressed);
	ck_assert(pv_alert_suppressed(&sup, PV_RULE_CONNECTIVITY_LOST, "prod", NOW + 10 * HOUR - 1, NULL));
	ck_assert(!pv_alert_suppressed(&sup, PV_RULE_CONNECTIVITY_LOST, "prod", NOW + 10 * HOUR, NULL));
	ck_assert(!pv_alert_suppressed(&sup, PV_RULE_BACKUP_STALE, "prod", NOW, NULL));
	pv_alert_notifications_clear(&out);
	pv_alert_set_clear(&set);
	pv_alert_conditions_clear(&on);
}
END_TEST

START_TEST(test_alert__maintenance_suppresses_everything)
{
	struct pv_config_alerts a = acfg(0, 4 * HOUR, true);
	struct pv_alert_conditions on = {0}, ev = {0};
	struct pv_alert_set set = {0};
	struct pv_alert_notifications out = {0};
	struct pv_alert_suppress sup = {.maintenance_until = NOW + 2 * HOUR};
	struct pv_alert_condition e = {.rule = PV_RULE_BACKUP_SUCCEEDED,
	                               .severity = PV_SEV_INFO,
	                               .oneshot = true,
	                               .fingerprint = "backup_succeeded/daily",
	                               .job = "daily",
	                               .at = NOW};

	cond(&on, "backup_stale/prod", PV_RULE_BACKUP_STALE, PV_SEV_CRITICAL, "prod");
	cond(&on, "notifier_broken/oncall", PV_RULE_NOTIFIER_BROKEN, PV_SEV_CRITICAL, NULL);
	ck_assert_uint_eq(step(&a, &set, &on, &sup, NOW, &out), 2);
	ck_assert(out.v[0].suppressed && out.v[1].suppressed);
	ck_assert_int_eq(out.v[0].silence_id, 0);
	ck_assert_int_eq(set.v[0].status, PV_ALERT_FIRING);
	pv_alert_conditions_add(&ev, &e);
	ck_assert_uint_eq(step(&a, &set, &ev, &sup, NOW + 60, &out), 3); /* the two resolve; the event */
	for (size_t i = 0; i < out.n; i++)
		ck_assert(out.v[i].suppressed);
	ck_assert_int_eq(out.v[2].kind, PV_ALERT_NOTIFY_EVENT);
	/* Maintenance over: delivered again. */
	ck_assert_uint_eq(step(&a, &set, &on, &sup, NOW + 2 * HOUR, &out), 2);
	ck_assert(!out.v[0].suppressed && !out.v[1].suppressed);
	pv_alert_notifications_clear(&out);
	pv_alert_set_clear(&set);
	pv_alert_conditions_clear(&on);
	pv_alert_conditions_clear(&ev);
}
END_TEST

START_TEST(test_alert__disabled_rule_forgets_alert_silently)
{
	struct pv_config *cfg = load(NULL);
	struct pv_config *off = load("alerts:\n  rules:\n    backup_stale: { enabled: false }\n");
	struct pv_alert_conditions on = {0};
	struct pv_alert_set set = {0};
	struct pv_alert_notifications out = {0};

	cond(&on, "backup_stale/prod", PV_RULE_BACKUP_STALE, PV_SEV_CRITICAL, "prod");
	step(&cfg->alerts, &set, &on, NULL, NOW, &out);
	ck_assert_uint_eq(step(&cfg->alerts, &set, &on, NULL, NOW + 30, &out), 1);
	/* A reload disabled the rule: no misleading "resolved", and no new state from stray conditions. */
	ck_assert_uint_eq(step(&off->alerts, &set, &on, NULL, NOW + 60, &out), 0);
	ck_assert_uint_eq(set.n, 0);
	pv_alert_notifications_clear(&out);
	pv_alert_set_clear(&set);
	pv_alert_conditions_clear(&on);
	pv_config_unref(cfg);
	pv_config_unref(off);
}
END_TEST

static void
assert_state_eq(const struct pv_alert_state *a, const struct pv_alert_state *b)
{
	ck_assert_str_eq(a->fingerprint, b->fingerprint);
	ck_assert_int_eq(a->rule, b->rule);
	ck_assert_int_eq(a->severity, b->severity);
	ck_assert_int_eq(a->status, b->status);
	ck_assert_int_eq(a->first_seen, b->first_seen);
	ck_assert_int_eq(a->fired_at, b->fired_at);
	ck_assert_int_eq(a->last_sent, b->last_sent);
	ck_assert_int_eq(a->resolved_at, b->resolved_at);
	ck_assert_int_eq(a->last_suppressed, b->last_suppressed);
	ck_assert_str_eq(a->value, b->value);
	ck_assert_str_eq(a->threshold, b->threshold);
	ck_assert_pstr_eq(a->database, b->database);
	ck_assert_pstr_eq(a->job, b->job);
	ck_assert_pstr_eq(a->notifier, b->notifier);
}

START_TEST(test_alert__json_round_trip)
{
	struct pv_config_alerts a = acfg(30, 4 * HOUR, true);
	struct pv_alert_conditions c1 = {0}, c2 = {0};
	struct pv_alert_set set = {0}, back = {0};
	struct pv_alert_notifications out = {0};
	struct pv_alert_silence sil = {.id = 1, .rule = PV_RULE_RPO_BREACH, .until = NOW + HOUR};
	struct pv_alert_suppress sup = {.silences = &sil, .n_silences = 1};
	struct pv_alert_condition nb = {.rule = PV_RULE_NOTIFIER_BROKEN,
	                                .severity = PV_SEV_CRITICAL,
	                                .fingerprint = "notifier_broken/oncall",
	                                .value = "404",
	                                .threshold = "none",
	                                .notifier = "oncall"};
	struct pv_error err = {0};
	json_t *j, *j2, *parsed;
	char *text, *text2;

	/* One of each status, one suppressed. */
	cond(&c1, "backup_stale/prod", PV_RULE_BACKUP_STALE, PV_SEV_CRITICAL, "prod");
	cond(&c1, "rpo_breach/prod", PV_RULE_RPO_BREACH, PV_SEV_CRITICAL, "prod");
	cond(&c1, "rto_breach/prod", PV_RULE_RTO_BREACH, PV_SEV_WARNING, "prod");
	step(&a, &set, &c1, &sup, NOW, &out);
	step(&a, &set, &c1, &sup, NOW + 30, &out);
	cond(&c2, "rpo_breach/prod", PV_RULE_RPO_BREACH, PV_SEV_CRITICAL, "prod");
	pv_alert_conditions_add(&c2, &nb);
	ck_assert_uint_eq(step(&a, &set, &c2, &sup, NOW + 40, &out), 2); /* two resolved */
	ck_assert_uint_eq(set.n, 4);

	j = pv_alert_set_to_json(&set);
	text = json_dumps(j, JSON_SORT_KEYS);
	parsed = json_loads(text, 0, NULL);
	ck_assert_ptr_nonnull(parsed);
	ck_assert_msg(pv_alert_set_from_json(parsed, &back, &err), "%s", err.msg);
	ck_assert_uint_eq(back.n, set.n);
	for (size_t i = 0; i < set.n; i++)
		assert_state_eq(&set.v[i], &back.v[i]);
	j2 = pv_alert_set_to_json(&back);
	text2 = json_dumps(j2, JSON_SORT_KEYS);
	ck_assert_str_eq(text, text2);

	/* After a "restart" nothing is re-sent, and a pending one still fires on time. */
	ck_assert_uint_eq(step(&a, &back, &c2, &sup, NOW + 41, &out), 0);
	ck_assert_uint_eq(step(&a, &back, &c2, &sup, NOW + 70, &out), 1);
	ck_assert_str_eq(out.v[0].fingerprint, "notifier_broken/oncall");
	/* The suppressed one is sent when the silence ends, as it would have been without the restart. */
	ck_assert_uint_eq(step(&a, &back, &c2, &sup, NOW + HOUR, &out), 1);
	ck_assert_str_eq(out.v[0].fingerprint, "rpo_breach/prod");
	ck_assert(!out.v[0].suppressed);

	json_decref(j);
	json_decref(j2);
	json_decref(parsed);
	free(text);
	free(text2);
	pv_alert_notifications_clear(&out);
	pv_alert_set_clear(&set);
	pv_alert_set_clear(&back);
	pv_alert_conditions_clear(&c1);
	pv_alert_conditions_clear(&c2);
}
END_TEST

static const char *const bad_json[] = {
        "[]",
        "{\"version\": 2, \"alerts\": []}",
        "{\"alerts\": []}",
        "{\"version\": 1, \"alerts\": {}}",
        "{\"version\": 1, \"alerts\": [1]}",
        "{\"version\": 1, \"alerts\": [{\"fingerprint\": \"x/y\", \"rule\": \"nope\", \"severity\": \"info\","
        " \"status\": \"firing\", \"first_seen\": 1, \"fired_at\": 1, \"last_sent\": 1, \"resolved_at\": "
        "0}]}",
        "{\"version\": 1, \"alerts\": [{\"fingerprint\": \"x/y\", \"rule\": \"rpo_breach\", \"severity\": "
        "\"x\","
        " \"status\": \"firing\", \"first_seen\": 1, \"fired_at\": 1, \"last_sent\": 1, \"resolved_at\": "
        "0}]}",
        "{\"version\": 1, \"alerts\": [{\"fingerprint\": \"x/y\", \"rule\": \"rpo_breach\", \"severity\": "
        "\"info\", \"status\": \"gone\", \"first_seen\": 1, \"fired_at\": 1, \"last_sent\": 1, "
        "\"resolved_at\": "
        "0}]}",
        "{\"version\": 1, \"alerts\": [{\"fingerprint\": \"x/y\", \"rule\": \"rpo_breach\", \"severity\": "
        "\"info\", \"status\": \"firing\", \"first_seen\": 1, \"fired_at\": 1, \"last_sent\": 1}]}",
        "{\"version\": 1, \"alerts\": [{\"fingerprint\": \"x/y\", \"rule\": \"rpo_breach\", \"severity\": "
        "\"info\", \"status\": \"firing\", \"first_seen\": 1, \"fired_at\": 1, \"last_sent\": 1, "
        "\"resolved_at\": "
        "0, \"value\": 5}]}",
        "{\"version\": 1, \"alerts\": [{\"fingerprint\": \"x/y\", \"rule\": \"rpo_breach\", \"severity\": "
        "\"info\", \"status\": \"firing\", \"first_seen\": 1, \"fired_at\": 1, \"last_sent\": 1, "
        "\"resolved_at\": "
        "0}, {\"fingerprint\": \"x/y\", \"rule\": \"rpo_breach\", \"severity\": \"info\", \"status\": "
        "\"firing\", "
        "\"first_seen\": 1, \"fired_at\": 1, \"last_sent\": 1, \"resolved_at\": 0}]}",
};

START_TEST(test_alert__json_rejects_malformed)
{
	struct pv_alert_set set = {0};
	struct pv_error err = {0};
	json_t *j = json_loads(bad_json[_i], 0, NULL);

	ck_assert_ptr_nonnull(j);
	ck_assert_msg(!pv_alert_set_from_json(j, &set, &err), "accepted: %s", bad_json[_i]);
	ck_assert_int_eq(err.code, PV_ERR_STATE);
	ck_assert_uint_eq(set.n, 0);
	ck_assert_ptr_null(set.v);
	json_decref(j);
}
END_TEST

/* ---- snapshot from the state database ---- */

/* The directory for this binary's state databases, removed even when a forked test fails (testlib.h). */
static void
base_setup(void)
{
	pv_test_tmpdir_setup("check_alert");
}

static void
snap_run(struct pv_state *st, const char *job, const char *db, time_t finished, const char *figures)
{
	struct pv_error err = {0};
	int64_t id;

	if (!pv_state_run_begin(st, job, "health", db, "schedule", 0, finished - 1, &id, &err) ||
	    !pv_state_run_end(st, id, finished, 1.0, "ok", NULL, figures, &err))
		ck_abort_msg("run %s: %s", job, err.msg);
}

/* Each database gets the newest connectivity of its own health jobs, whatever the order of jobs. */
START_TEST(test_alert__snapshot_health_per_database)
{
	static const char yaml[] = "storage:\n"
	                           "  path: /nonexistent/backups\n"
	                           "databases:\n"
	                           "  a: { conninfo: \"host=localhost dbname=a\" }\n"
	                           "  b: { conninfo: \"host=localhost dbname=b\" }\n"
	                           "  c: { conninfo: \"host=localhost dbname=c\" }\n"
	                           "jobs:\n"
	                           "  hb: { type: health, database: b, every: 10s }\n"
	                           "  ha1: { type: health, database: a, every: 10s }\n"
	                           "  ha2: { type: health, database: a, every: 1m }\n";
	struct pv_error err = {0};
	struct pv_config *cfg = pv_config_load_string("t.yaml", yaml, NULL, &err);
	struct pv_alert_snapshot snap;
	struct pv_state *st;
	char path[PATH_MAX + 16];

	ck_assert_msg(cfg != NULL, "config: %s", err.msg);
	snprintf(path, sizeof(path), "%s/state.db", pv_test_tmpdir());
	ck_assert_msg(pv_state_open(path, &st, &err), "%s", err.msg);
	snap_run(st, "ha1", "a", NOW - 100, "{\"connected\":true}");
	snap_run(st, "ha2", "a", NOW - 50, "{\"connected\":false,\"failing_since\":1799999800}");
	snap_run(st, "ha1", "a", NOW - 70, "{\"connected\":true}");
	snap_run(st, "hb", "b", NOW - 10, "{\"connected\":true}");

	ck_assert_msg(pv_alert_snapshot_build(st, cfg, NOW, NOW - 3600, &snap, &err), "%s", err.msg);
	ck_assert_uint_eq(snap.n_databases, 3);
	ck_assert_str_eq(snap.databases[0].name, "a");
	ck_assert(snap.databases[0].have_health);
	ck_assert(!snap.databases[0].connected); /* ha2's run is the newest of a's */
	ck_assert_int_eq(snap.databases[0].failing_since, NOW - 200);
	ck_assert_str_eq(snap.databases[1].name, "b");
	ck_assert(snap.databases[1].have_health);
	ck_assert(snap.databases[1].connected);
	ck_assert_str_eq(snap.databases[2].name, "c");
	ck_assert(!snap.databases[2].have_health);
	pv_alert_snapshot_free(&snap);

	snap_run(st, "ha1", "a", NOW - 5, "{\"connected\":true}");
	ck_assert_msg(pv_alert_snapshot_build(st, cfg, NOW, NOW - 3600, &snap, &err), "%s", err.msg);
	ck_assert(snap.databases[0].connected);
	ck_assert_int_eq(snap.databases[0].failing_since, 0);
	pv_alert_snapshot_free(&snap);
	pv_state_close(st);
	pv_config_unref(cfg);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("alert");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, test_alert__defaults_match_dr_guide);
	tcase_add_loop_test(tc, test_alert__rule_exact_threshold, 0,
	                    sizeof(threshold_cases) / sizeof(threshold_cases[0]));
	tcase_add_test(tc, test_alert__rule_texts);
	tcase_add_test(tc, test_alert__backup_stale_per_database);
	tcase_add_test(tc, test_alert__unknown_inputs_raise_nothing);
	tcase_add_test(tc, test_alert__median_needs_three_successes);
	tcase_add_loop_test(tc, test_alert__disabled_rules, 0, PV_RULE_COUNT);
	tcase_add_test(tc, test_alert__severity_from_config);
	tcase_add_test(tc, test_alert__info_events_and_job_missed_are_oneshot);
	tcase_add_test(tc, test_alert__group_wait_swallows_flap);
	tcase_add_test(tc, test_alert__batch_fires_together);
	tcase_add_test(tc, test_alert__repeat_every);
	tcase_add_test(tc, test_alert__resolved_once_after_firing);
	tcase_add_test(tc, test_alert__send_resolved_false);
	tcase_add_test(tc, test_alert__severity_change_notified);
	tcase_add_test(tc, test_alert__silence_suppresses_and_expires);
	tcase_add_test(tc, test_alert__maintenance_suppresses_everything);
	tcase_add_test(tc, test_alert__disabled_rule_forgets_alert_silently);
	tcase_add_test(tc, test_alert__json_round_trip);
	tcase_add_loop_test(tc, test_alert__json_rejects_malformed, 0,
	                    sizeof(bad_json) / sizeof(bad_json[0]));
	suite_add_tcase(s, tc);
	tc = tcase_create("snapshot");
	tcase_add_unchecked_fixture(tc, base_setup, pv_test_tmpdir_teardown);
	tcase_add_test(tc, test_alert__snapshot_health_per_database);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
