/* Unit tests for src/metrics: the exposition text (HELP/TYPE, escaping, one block per family, no duplicate
 * series, values from a real temporary state database) and the HTTP endpoint on a real event loop. */
#include <check.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "alert/engine.h"
#include "config/config.h"
#include "metrics/metrics.h"
#include "state/state.h"
#include "util/error.h"
#include "util/mem.h"
#include "testlib.h"

#define NOW  ((time_t)1800000000) /* 2027-01-15T08:00:00Z */
#define HOUR 3600

static const char CONFIG[] =
        "storage:\n"
        "  path: /nonexistent/backups\n"
        "databases:\n"
        "  prod:\n"
        "    conninfo: \"host=localhost dbname=prod\"\n"
        "    objectives: { rpo: 4h, rto: 1h }\n"
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
        "  probe: { type: restore_probe, database: prod, schedule: \"0 4 * * 0\" }\n"
        "  storage: { type: storage, every: 15m }\n"
        "  other-bk: { type: backup, database: other, schedule: \"0 3 * * *\", keep: 2 }\n"
        "notifiers:\n"
        "  hook: { type: webhook, url: \"https://example.com/secret-hook-token\" }\n";

/* Every family SPEC §6 names, with its type. */
static const char *const SPEC_FAMILIES[][2] = {
        {"pgvigil_up", "gauge"},
        {"pgvigil_database_up", "gauge"},
        {"pgvigil_connect_seconds", "gauge"},
        {"pgvigil_backup_last_success_timestamp_seconds", "gauge"},
        {"pgvigil_backup_size_bytes", "gauge"},
        {"pgvigil_backup_duration_seconds", "gauge"},
        {"pgvigil_rpo_seconds", "gauge"},
        {"pgvigil_restore_probe_last_success_timestamp_seconds", "gauge"},
        {"pgvigil_restore_probe_duration_seconds", "gauge"},
        {"pgvigil_storage_used_ratio", "gauge"},
        {"pgvigil_alerts_firing", "gauge"},
        {"pgvigil_notifications_pending", "gauge"},
        {"pgvigil_notifications_failed_total", "counter"},
        {"pgvigil_job_runs_total", "counter"},
};

/* The directory for this binary's state databases, removed even when a forked test fails (testlib.h). */
static void
base_setup(void)
{
	pv_test_tmpdir_setup("check_metrics");
}

struct fx {
	char path[PATH_MAX + 16];
	struct pv_state *st;
	struct pv_config *cfg;
	struct pv_alert_set alerts;
};

static struct fx
fx_open(void)
{
	struct fx fx = {0};
	struct pv_error err = {0};
	struct pv_config_diag diag = {0};
	char dir[PATH_MAX];

	pv_test_tmpdir_sub(dir, sizeof(dir));
	snprintf(fx.path, sizeof(fx.path), "%s/state.db", dir);
	if (!pv_state_open(fx.path, &fx.st, &err))
		ck_abort_msg("pv_state_open(%s): %s", fx.path, err.msg);
	fx.cfg = pv_config_load_string("t.yaml", CONFIG, &diag, &err);
	for (size_t i = 0; i < diag.errors.n; i++)
		fprintf(stderr, "config: %s\n", diag.errors.v[i]);
	ck_assert_msg(fx.cfg != NULL, "config: %s", err.msg);
	pv_config_diag_free(&diag);
	return fx;
}

static void
fx_close(struct fx *fx)
{
	pv_alert_set_clear(&fx->alerts);
	pv_state_close(fx->st);
	pv_config_unref(fx->cfg);
}

static int64_t
add_run(struct fx *fx, const char *job, const char *type, const char *db, time_t finished, double duration,
        const char *result, const char *figures)
{
	struct pv_error err = {0};
	int64_t id;

	if (!pv_state_run_begin(fx->st, job, type, db, "schedule", 0, finished - (time_t)duration, &id,
	                        &err) ||
	    (result != NULL &&
	     !pv_state_run_end(fx->st, id, finished, duration, result, NULL, figures, &err)))
		ck_abort_msg("run %s: %s", job, err.msg);
	return id;
}

static void
add_backup(struct fx *fx, const char *db, const char *job, const char *id, time_t finished, int64_t size,
           double duration, const char *verify)
{
	struct pv_state_backup b = {0};
	struct pv_error err = {0};

	b.database = (char *)db;
	b.job = (char *)job;
	b.id = (char *)id;
	b.tier = "daily";
	b.dir = "/nonexistent/backups/x";
	b.sha256 = "00";
	b.format = "zst";
	b.verify_result = (char *)verify;
	b.verified_at = verify != NULL ? finished + 60 : 0;
	b.started = finished - (time_t)duration;
	b.finished = finished;
	b.duration = duration;
	b.size = size;
	b.archive_size = size * 2;
	if (!pv_state_backup_add(fx->st, &b, &err))
		ck_abort_msg("backup %s: %s", id, err.msg);
}

static void
add_alert(struct fx *fx, const char *fp, enum pv_rule rule, enum pv_severity sev, enum pv_alert_status status)
{
	struct pv_alert_state *a;

	fx->alerts.v = pv_realloc(fx->alerts.v, (fx->alerts.n + 1) * sizeof(*fx->alerts.v));
	a = &fx->alerts.v[fx->alerts.n++];
	memset(a, 0, sizeof(*a));
	a->fingerprint = pv_strdup(fp);
	a->rule = rule;
	a->severity = sev;
	a->status = status;
	a->database = pv_strdup("prod");
	fx->alerts.cap = fx->alerts.n;
}

static char *
render(struct fx *fx, struct pv_metrics_runs *runs)
{
	struct pv_metrics_view v = {
	        .state = fx->st,
	        .cfg = fx->cfg,
	        .alerts = &fx->alerts,
	        .now = NOW,
	        .started = NOW - HOUR,
	        .reload_ok = true,
	        .running = 2,
	};
	size_t len;
	char *text = pv_metrics_render(&v, runs, &len);

	ck_assert_ptr_nonnull(text);
	ck_assert_uint_eq(strlen(text), len);
	return text;
}

/* ---- a strict reader of the exposition format ---- */

#define MAX_FAMILIES 128
#define MAX_SERIES   1024

struct parsed {
	char families[MAX_FAMILIES][128];
	char types[MAX_FAMILIES][16];
	size_t n_families;
	char *series[MAX_SERIES];
	size_t n_series;
};

static void
parsed_free(struct parsed *p)
{
	for (size_t i = 0; i < p->n_series; i++)
		free(p->series[i]);
}

/* Labels from s (just after '{') to the closing '}': name="value" pairs, only \\ \" \n escapes. Returns
 * the position after '}', or NULL with *why. */
static const char *
parse_labels(const char *s, const char **why)
{
	for (;;) {
		const char *name = s;
		while ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_' ||
		       (s > name && *s >= '0' && *s <= '9'))
			s++;
		if (s == name || s[0] != '=' || s[1] != '"') {
			*why = "bad label name";
			return NULL;
		}
		for (s += 2; *s != '"'; s++) {
			if (*s == '\0' || *s == '\n') {
				*why = "unterminated label value";
				return NULL;
			}
			if (*s == '\\') {
				s++;
				if (*s != '\\' && *s != '"' && *s != 'n') {
					*why = "bad escape in a label value";
					return NULL;
				}
			}
		}
		s++;
		if (*s == '}')
			return s + 1;
		if (*s != ',') {
			*why = "expected , or } after a label";
			return NULL;
		}
		s++;
	}
}

/* Every line checked; the first problem aborts the test with the line. */
static void
parse_strict(const char *text, struct parsed *p)
{
	char *copy = pv_strdup(text), *save = NULL, *line;
	const char *fam = NULL, *why = NULL;
	bool need_type = false;

	memset(p, 0, sizeof(*p));
	ck_assert_msg(text[0] != '\0' && text[strlen(text) - 1] == '\n', "the text must end with a newline");
	for (line = strtok_r(copy, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "# HELP ", 7) == 0) {
			char name[128];
			ck_assert_msg(!need_type, "HELP without TYPE before: %s", line);
			ck_assert_msg(sscanf(line + 7, "%127s", name) == 1, "HELP: %s", line);
			for (size_t i = 0; i < p->n_families; i++)
				ck_assert_msg(strcmp(p->families[i], name) != 0, "family %s appears twice",
				              name);
			ck_assert_uint_lt(p->n_families, MAX_FAMILIES);
			snprintf(p->families[p->n_families], sizeof(p->families[0]), "%s", name);
			ck_assert_msg(strlen(line) > 8 + strlen(name), "empty HELP text: %s", line);
			fam = p->families[p->n_families++];
			need_type = true;
			continue;
		}
		if (strncmp(line, "# TYPE ", 7) == 0) {
			char name[128], type[32];
			ck_assert_msg(need_type, "TYPE without HELP: %s", line);
			ck_assert_msg(sscanf(line + 7, "%127s %31s", name, type) == 2, "TYPE: %s", line);
			ck_assert_msg(strcmp(name, fam) == 0, "TYPE of %s after HELP of %s", name, fam);
			ck_assert_msg(strcmp(type, "gauge") == 0 || strcmp(type, "counter") == 0, "type: %s",
			              line);
			snprintf(p->types[p->n_families - 1], sizeof(p->types[0]), "%s", type);
			need_type = false;
			continue;
		}
		ck_assert_msg(line[0] != '#', "unexpected comment: %s", line);
		ck_assert_msg(fam != NULL && !need_type, "sample outside a family: %s", line);
		{
			size_t nl = strlen(fam);
			const char *s = line + nl, *end;
			char *value_end;
			double value;

			ck_assert_msg(strncmp(line, fam, nl) == 0 && (*s == '{' || *s == ' '),
			              "sample of another family inside %s: %s", fam, line);
			if (*s == '{') {
				s = parse_labels(s + 1, &why);
				ck_assert_msg(s != NULL, "%s: %s", why, line);
			}
			ck_assert_msg(*s == ' ', "no space before the value: %s", line);
			end = s;
			value = strtod(s + 1, &value_end);
			ck_assert_msg(*value_end == '\0' && value_end != s + 1, "bad value: %s", line);
			ck_assert_msg(!isnan(value), "NaN value: %s", line);
			for (size_t i = 0; i < p->n_series; i++)
				ck_assert_msg(strncmp(p->series[i], line, (size_t)(end - line)) != 0 ||
				                      p->series[i][end - line] != '\0',
				              "duplicate series: %s", line);
			ck_assert_uint_lt(p->n_series, MAX_SERIES);
			p->series[p->n_series++] = pv_strndup(line, (size_t)(end - line));
		}
	}
	ck_assert_msg(!need_type, "the last HELP has no TYPE");
	free(copy);
}

static const char *
family_type(const struct parsed *p, const char *name)
{
	for (size_t i = 0; i < p->n_families; i++)
		if (strcmp(p->families[i], name) == 0)
			return p->types[i];
	return NULL;
}

/* The value of one series ("name{labels}" exactly as written); NAN when absent. */
static double
value_of(const char *text, const char *series)
{
	size_t n = strlen(series);

	for (const char *l = text; l != NULL && *l != '\0'; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
		if (strncmp(l, series, n) == 0 && l[n] == ' ')
			return strtod(l + n + 1, NULL);
	return NAN;
}

#define ck_value(text, series, expected)                                                                     \
	do {                                                                                                 \
		double v_ = value_of(text, series);                                                          \
		ck_assert_msg(fabs(v_ - (double)(expected)) < 1e-9, "%s = %.17g, expected %.17g", series,    \
		              v_, (double)(expected));                                                       \
	} while (0)

#define ck_absent(text, series) ck_assert_msg(isnan(value_of(text, series)), "%s should be absent", series)

/* ---- tests ---- */

START_TEST(test_metrics__escape_label)
{
	static const char *const cases[][2] = {
	        {"prod", "prod"},
	        {"", ""},
	        {"a\\b", "a\\\\b"},
	        {"say \"hi\"", "say \\\"hi\\\""},
	        {"two\nlines", "two\\nlines"},
	        {"\\\"\n", "\\\\\\\"\\n"},
	        {"tab\tand caf\xc3\xa9", "tab\tand caf\xc3\xa9"}, /* only the three are escaped */
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char out[64];
		pv_metrics_escape_label(cases[i][0], out);
		ck_assert_str_eq(out, cases[i][1]);
	}
}
END_TEST

START_TEST(test_metrics__empty_state_has_every_family)
{
	struct fx fx = fx_open();
	struct parsed p;
	char *text = render(&fx, NULL);

	parse_strict(text, &p);
	for (size_t i = 0; i < sizeof(SPEC_FAMILIES) / sizeof(SPEC_FAMILIES[0]); i++) {
		const char *type = family_type(&p, SPEC_FAMILIES[i][0]);
		ck_assert_msg(type != NULL, "family %s missing", SPEC_FAMILIES[i][0]);
		ck_assert_msg(strcmp(type, SPEC_FAMILIES[i][1]) == 0, "%s is a %s", SPEC_FAMILIES[i][0],
		              type);
	}
	ck_value(text, "pgvigil_up", 1);
	ck_value(text, "pgvigil_jobs_running", 2);
	ck_value(text, "pgvigil_start_time_seconds", NOW - HOUR);
	ck_value(text, "pgvigil_config_last_reload_successful", 1);
	/* Unknown is absent, never a made-up 0. */
	ck_absent(text, "pgvigil_database_up{database=\"prod\"}");
	ck_absent(text, "pgvigil_rpo_seconds{database=\"prod\"}");
	ck_absent(text, "pgvigil_storage_used_ratio");
	ck_absent(text, "pgvigil_backup_size_bytes{database=\"prod\",job=\"daily\"}");
	/* Objectives are configuration: known from the start. */
	ck_value(text, "pgvigil_rpo_objective_seconds{database=\"prod\"}", 4 * HOUR);
	ck_value(text, "pgvigil_rto_objective_seconds{database=\"prod\"}", HOUR);
	ck_value(text, "pgvigil_database_info{database=\"prod\"}", 1);
	ck_value(text, "pgvigil_database_info{database=\"other\"}", 1);
	ck_absent(text, "pgvigil_rpo_objective_seconds{database=\"other\"}");
	/* Every severity, every job and result, every notifier: present at 0. */
	ck_value(text, "pgvigil_alerts_firing{severity=\"critical\"}", 0);
	ck_value(text, "pgvigil_alerts_firing{severity=\"warning\"}", 0);
	ck_value(text, "pgvigil_alerts_firing{severity=\"info\"}", 0);
	ck_value(text, "pgvigil_job_runs_total{job=\"other-bk\",result=\"interrupted\"}", 0);
	ck_value(text, "pgvigil_notifications_pending{notifier=\"hook\"}", 0);
	ck_value(text, "pgvigil_notifications_failed_total{notifier=\"hook\"}", 0);
	ck_value(text, "pgvigil_metrics_collect_errors", 0);
	ck_value(text, "pgvigil_silences_active", 0);
	ck_assert_msg(strstr(text, "secret-hook-token") == NULL, "a notifier URL leaked");
	parsed_free(&p);
	free(text);
	fx_close(&fx);
}
END_TEST

START_TEST(test_metrics__values_from_state)
{
	struct fx fx = fx_open();
	struct parsed p;
	char *text;
	struct pv_error err;
	int64_t id;
	bool added;

	/* Health: an old success, then the newest one failed to connect. */
	add_run(&fx, "health", "health", "prod", NOW - 120, 0.1, "ok",
	        "{\"connected\": true, \"connect_seconds\": 0.012, \"database_size_bytes\": 123456789}");
	add_run(&fx, "health", "health", "prod", NOW - 60, 0.1, "failed",
	        "{\"connected\": false, \"failing_since\": 1799999940, \"error_class\": \"refused\"}");
	/* A cancelled health check says nothing about connectivity: skipped. */
	add_run(&fx, "health", "health", "prod", NOW - 30, 0.1, "cancelled", "{}");
	/* Backups: daily succeeded twice (the newest verified one is what the size and duration describe). */
	add_run(&fx, "daily", "backup", "prod", NOW - 26 * HOUR, 40, "ok",
	        "{\"backup_id\": \"a\", \"size\": 1000}");
	add_backup(&fx, "prod", "daily", "a", NOW - 26 * HOUR, 1000, 40, "ok");
	add_run(&fx, "daily", "backup", "prod", NOW - 2 * HOUR, 50.5, "ok",
	        "{\"backup_id\": \"b\", \"size\": 2000}");
	add_backup(&fx, "prod", "daily", "b", NOW - 2 * HOUR, 2048, 50.5, "ok");
	add_run(&fx, "daily", "backup", "prod", NOW - HOUR, 5, "failed", NULL);
	add_run(&fx, "weekly", "backup", "prod", NOW - 3 * HOUR, 5, "timeout", NULL);
	/* Runs recorded for another database under the same job name do not count as prod's success. */
	add_run(&fx, "other-bk", "backup", "prod", NOW - 10, 5, "ok", NULL);
	/* A probe succeeded, then the newest one failed. */
	add_run(&fx, "probe", "restore_probe", "prod", NOW - 5 * HOUR, 300, "ok",
	        "{\"total_seconds\": 321.5}");
	add_run(&fx, "probe", "restore_probe", "prod", NOW - 4 * HOUR, 30, "failed",
	        "{\"total_seconds\": 29.25}");
	/* Storage: 10% used, full in 2 days at the current growth. */
	add_run(&fx, "storage", "storage", NULL, NOW - 600, 0.1, "ok",
	        "{\"used_ratio\": 0.1, \"used_bytes\": 100, \"total_bytes\": 1000, \"days_until_full\": "
	        "2.0}");
	/* Running runs are not counted until they end. */
	add_run(&fx, "daily", "backup", "prod", NOW, 0, NULL, NULL);
	/* Alerts: two critical firing, one warning pending (not firing), one info resolved. */
	add_alert(&fx, "rpo_breach/prod", PV_RULE_RPO_BREACH, PV_SEV_CRITICAL, PV_ALERT_FIRING);
	add_alert(&fx, "backup_stale/prod", PV_RULE_BACKUP_STALE, PV_SEV_CRITICAL, PV_ALERT_FIRING);
	add_alert(&fx, "backup_slow/daily", PV_RULE_BACKUP_SLOW, PV_SEV_WARNING, PV_ALERT_PENDING);
	add_alert(&fx, "storage_usage/storage", PV_RULE_STORAGE_USAGE, PV_SEV_WARNING, PV_ALERT_RESOLVED);
	/* Notifications: one pending, one failed for good. */
	ck_assert(pv_state_outbox_add(fx.st, "hook", NOW, 0, "{}", "k1", &id, &added, &err));
	ck_assert(pv_state_outbox_add(fx.st, "hook", NOW, 0, "{}", "k2", &id, &added, &err));
	ck_assert(pv_state_outbox_mark_failed(fx.st, id, "HTTP 404", &err));
	/* Silences: one in force, one expired, one removed. */
	{
		struct pv_state_silence sil = {.rule = "backup_slow",
		                               .created = NOW - HOUR,
		                               .until = NOW + HOUR,
		                               .comment = "planned",
		                               .author = "root"};
		int64_t sid;
		ck_assert(pv_state_silence_add(fx.st, &sil, &sid, &err));
		sil.until = NOW - 1;
		ck_assert(pv_state_silence_add(fx.st, &sil, &sid, &err));
		sil.until = NOW + HOUR;
		ck_assert(pv_state_silence_add(fx.st, &sil, &sid, &err));
		ck_assert(pv_state_silence_remove(fx.st, sid, NOW - 60, "root", &err));
	}

	text = render(&fx, NULL);
	parse_strict(text, &p);
	ck_value(text, "pgvigil_database_up{database=\"prod\"}", 0);
	ck_value(text, "pgvigil_health_check_timestamp_seconds{database=\"prod\"}", NOW - 60);
	ck_absent(text, "pgvigil_connect_seconds{database=\"prod\"}"); /* not from an older check */
	ck_absent(text, "pgvigil_database_up{database=\"other\"}");    /* no health job */
	ck_value(text, "pgvigil_backup_last_success_timestamp_seconds{database=\"prod\",job=\"daily\"}",
	         NOW - 2 * HOUR);
	ck_value(text, "pgvigil_backup_size_bytes{database=\"prod\",job=\"daily\"}", 2048);
	ck_value(text, "pgvigil_backup_duration_seconds{database=\"prod\",job=\"daily\"}", 50.5);
	ck_absent(text, "pgvigil_backup_last_success_timestamp_seconds{database=\"prod\",job=\"weekly\"}");
	ck_absent(text, "pgvigil_backup_last_success_timestamp_seconds{database=\"other\",job=\"other-bk\"}");
	ck_value(text, "pgvigil_rpo_seconds{database=\"prod\"}", 2 * HOUR);
	ck_value(text, "pgvigil_rto_seconds{database=\"prod\"}", 321.5);
	ck_value(text, "pgvigil_restore_probe_last_success_timestamp_seconds{database=\"prod\"}",
	         NOW - 5 * HOUR);
	ck_value(text, "pgvigil_restore_probe_duration_seconds{database=\"prod\"}", 29.25);
	ck_value(text, "pgvigil_restore_probe_success{database=\"prod\"}", 0);
	ck_value(text, "pgvigil_storage_used_ratio", 0.1);
	ck_assert_ptr_nonnull(strstr(text, "\npgvigil_storage_used_ratio 0.1\n")); /* shortest form */
	ck_value(text, "pgvigil_storage_size_bytes", 1000);
	ck_value(text, "pgvigil_storage_forecast_full_timestamp_seconds", NOW - 600 + 2 * 86400);
	ck_value(text, "pgvigil_silences_active", 1);
	ck_value(text, "pgvigil_alerts_firing{severity=\"critical\"}", 2);
	ck_value(text, "pgvigil_alerts_firing{severity=\"warning\"}", 0);
	ck_value(text, "pgvigil_alerts_firing{severity=\"info\"}", 0);
	ck_value(text, "pgvigil_notifications_pending{notifier=\"hook\"}", 1);
	ck_value(text, "pgvigil_notifications_failed_total{notifier=\"hook\"}", 1);
	ck_value(text, "pgvigil_job_runs_total{job=\"daily\",result=\"ok\"}", 2);
	ck_value(text, "pgvigil_job_runs_total{job=\"daily\",result=\"failed\"}", 1);
	ck_value(text, "pgvigil_job_runs_total{job=\"weekly\",result=\"timeout\"}", 1);
	ck_value(text, "pgvigil_job_runs_total{job=\"health\",result=\"cancelled\"}", 1);
	ck_value(text, "pgvigil_job_runs_total{job=\"other-bk\",result=\"ok\"}", 1);
	ck_absent(text, "pgvigil_database_size_bytes{database=\"prod\"}");
	parsed_free(&p);
	free(text);

	/* Connected again: up, with this check's latency and size. */
	add_run(&fx, "health", "health", "prod", NOW - 5, 0.1, "ok",
	        "{\"connected\": true, \"connect_seconds\": 0.0125, \"database_size_bytes\": 123456789}");
	text = render(&fx, NULL);
	ck_value(text, "pgvigil_database_up{database=\"prod\"}", 1);
	ck_value(text, "pgvigil_connect_seconds{database=\"prod\"}", 0.0125);
	ck_value(text, "pgvigil_database_size_bytes{database=\"prod\"}", 123456789);
	ck_value(text, "pgvigil_health_check_timestamp_seconds{database=\"prod\"}", NOW - 5);
	free(text);
	fx_close(&fx);
}
END_TEST

START_TEST(test_metrics__label_values_escaped_in_render)
{
	struct fx fx = fx_open();
	struct parsed p;
	char *text;
	struct pv_config_database *db = &fx.cfg->databases[0];

	/* The configuration refuses such names today; the text must stay well-formed if that changes. */
	free(db->name);
	db->name = pv_strdup("we\"ird\\na\nme");
	text = render(&fx, NULL);
	parse_strict(text, &p);
	ck_value(text, "pgvigil_rpo_objective_seconds{database=\"we\\\"ird\\\\na\\nme\"}", 4 * HOUR);
	parsed_free(&p);
	free(text);
	fx_close(&fx);
}
END_TEST

START_TEST(test_metrics__run_counts_carried_between_scrapes)
{
	struct fx fx = fx_open();
	struct pv_metrics_runs *runs = pv_metrics_runs_new();
	struct pv_error err;
	int64_t long_run;
	char *text;

	add_run(&fx, "daily", "backup", "prod", NOW - 100, 10, "ok", NULL);
	long_run = add_run(&fx, "weekly", "backup", "prod", NOW, 0, NULL, NULL); /* still running */
	add_run(&fx, "health", "health", "prod", NOW - 50, 1, "ok", "{\"connected\": true}");

	for (int scrape = 0; scrape < 3; scrape++) { /* asking again counts nothing twice */
		text = render(&fx, runs);
		ck_value(text, "pgvigil_job_runs_total{job=\"daily\",result=\"ok\"}", 1);
		ck_value(text, "pgvigil_job_runs_total{job=\"health\",result=\"ok\"}", 1);
		ck_value(text, "pgvigil_job_runs_total{job=\"weekly\",result=\"ok\"}", 0);
		free(text);
	}
	add_run(&fx, "health", "health", "prod", NOW - 40, 1, "failed", "{\"connected\": false}");
	ck_assert(pv_state_run_end(fx.st, long_run, NOW + 10, 10, "ok", NULL, NULL, &err));
	add_run(&fx, "daily", "backup", "prod", NOW + 20, 10, "ok", NULL);
	for (int scrape = 0; scrape < 2; scrape++) {
		text = render(&fx, runs);
		ck_value(text, "pgvigil_job_runs_total{job=\"daily\",result=\"ok\"}", 2);
		ck_value(text, "pgvigil_job_runs_total{job=\"health\",result=\"ok\"}", 1);
		ck_value(text, "pgvigil_job_runs_total{job=\"health\",result=\"failed\"}", 1);
		ck_value(text, "pgvigil_job_runs_total{job=\"weekly\",result=\"ok\"}", 1);
		ck_value(text,
		         "pgvigil_backup_last_success_timestamp_seconds{database=\"prod\",job=\"daily\"}",
		         NOW + 20);
		free(text);
	}
	/* The same as counting from scratch. */
	text = render(&fx, NULL);
	ck_value(text, "pgvigil_job_runs_total{job=\"daily\",result=\"ok\"}", 2);
	ck_value(text, "pgvigil_job_runs_total{job=\"weekly\",result=\"ok\"}", 1);
	free(text);
	pv_metrics_runs_free(runs);
	pv_metrics_runs_free(NULL);
	fx_close(&fx);
}
END_TEST

START_TEST(test_metrics__state_failure_counted_not_fatal)
{
	struct fx fx = fx_open();
	struct parsed p;
	sqlite3 *raw = NULL;
	char *text;

	/* The runs table vanishes behind the state module's back: every run read fails, the rest renders. */
	add_run(&fx, "daily", "backup", "prod", NOW - 100, 10, "ok", NULL);
	ck_assert_int_eq(sqlite3_open(fx.path, &raw), SQLITE_OK);
	ck_assert_int_eq(sqlite3_exec(raw, "DROP TABLE runs", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(raw);
	text = render(&fx, NULL);
	parse_strict(text, &p);
	ck_value(text, "pgvigil_up", 1);
	ck_value(text, "pgvigil_alerts_firing{severity=\"critical\"}", 0);
	ck_assert_msg(value_of(text, "pgvigil_metrics_collect_errors") >= 2, "errors not counted:\n%.2000s",
	              text);
	/* Counters that cannot be read are absent, not 0 (which would look like a reset). */
	ck_absent(text, "pgvigil_job_runs_total{job=\"daily\",result=\"ok\"}");
	ck_absent(text, "pgvigil_backup_last_success_timestamp_seconds{database=\"prod\",job=\"daily\"}");
	parsed_free(&p);
	free(text);
	fx_close(&fx);
}
END_TEST

/* ---- the endpoint on a real loop ---- */

static void
view_fn(void *arg, struct pv_metrics_view *out)
{
	struct fx *fx = arg;
	out->state = fx->st;
	out->cfg = fx->cfg;
	out->alerts = &fx->alerts;
	out->now = NOW;
	out->started = NOW;
	out->reload_ok = true;
}

/* A port on 127.0.0.1 that was free a moment ago. */
static int
free_port(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	port = ntohs(a.sin_port);
	close(fd);
	return port;
}

/* One request to 127.0.0.1:port, the loop turned while the answer comes; returns the whole response. */
static char *
http_request(struct event_base *base, int port, const char *request)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	size_t len = 0, cap = 1 << 16;
	char *buf = pv_malloc(cap);
	ssize_t n;

	a.sin_port = htons((uint16_t)port);
	ck_assert_int_ge(fd, 0);
	ck_assert(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0 || errno == EINPROGRESS);
	for (int i = 0; i < 200; i++) {
		struct pollfd pfd = {.fd = fd, .events = POLLOUT};
		event_base_loop(base, EVLOOP_NONBLOCK);
		if (poll(&pfd, 1, 10) == 1)
			break;
	}
	if (write(fd, request, strlen(request)) != (ssize_t)strlen(request)) {
		/* Nobody listening: an empty answer. */
		ck_assert_int_eq(errno, ECONNREFUSED);
		close(fd);
		buf[0] = '\0';
		return buf;
	}
	for (int i = 0; i < 500; i++) {
		event_base_loop(base, EVLOOP_NONBLOCK);
		n = read(fd, buf + len, cap - len - 1);
		if (n == 0)
			break;
		if (n > 0) {
			len += (size_t)n;
			ck_assert_uint_lt(len, cap - 1);
			continue;
		}
		ck_assert_int_eq(errno, EAGAIN);
		usleep(2000);
	}
	close(fd);
	buf[len] = '\0';
	return buf;
}

START_TEST(test_metrics__http_paths_methods_and_moves)
{
	struct fx fx = fx_open();
	struct event_base *base = event_base_new();
	struct pv_error err = {0};
	struct pv_metrics *m;
	char addr[64], blocked_addr[64], *resp;
	int port = free_port(), blocked_port, blocker;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);

	/* A port someone else holds. */
	blocker = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_eq(bind(blocker, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(blocker, 1), 0);
	ck_assert_int_eq(getsockname(blocker, (struct sockaddr *)&a, &alen), 0);
	blocked_port = ntohs(a.sin_port);
	snprintf(blocked_addr, sizeof(blocked_addr), "127.0.0.1:%d", blocked_port);

	m = pv_metrics_new(base, blocked_addr, view_fn, &fx, &err);
	ck_assert_ptr_null(m);
	ck_assert_msg(strstr(err.msg, blocked_addr) != NULL &&
	                      strstr(err.msg, "Address already in use") != NULL &&
	                      strstr(err.msg, "daemon.metrics_listen") != NULL,
	              "message: %s", err.msg);

	/* Idle, then started. */
	m = pv_metrics_new(base, NULL, view_fn, &fx, &err);
	ck_assert_ptr_nonnull(m);
	ck_assert_ptr_null(pv_metrics_address(m));
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
	ck_assert_msg(pv_metrics_listen(m, addr, &err), "listen: %s", err.msg);
	ck_assert_str_eq(pv_metrics_address(m), addr);

	resp = http_request(base, port, "GET /metrics HTTP/1.0\r\n\r\n");
	ck_assert_msg(strncmp(resp, "HTTP/1.0 200", 12) == 0 || strncmp(resp, "HTTP/1.1 200", 12) == 0, "%s",
	              resp);
	ck_assert_ptr_nonnull(strstr(resp, "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
	ck_assert_ptr_nonnull(strstr(resp, "\r\n\r\n# HELP pgvigil_up "));
	ck_assert_ptr_nonnull(strstr(resp, "\npgvigil_up 1\n"));
	free(resp);
	resp = http_request(base, port, "GET /metrics?debug=1 HTTP/1.0\r\n\r\n");
	ck_assert_msg(strstr(resp, " 200 ") != NULL, "query string: %.400s", resp);
	free(resp);
	resp = http_request(base, port, "GET /other HTTP/1.0\r\n\r\n");
	ck_assert_msg(strstr(resp, " 404 ") != NULL, "%.400s", resp);
	free(resp);
	resp = http_request(base, port, "GET / HTTP/1.0\r\n\r\n");
	ck_assert_msg(strstr(resp, " 404 ") != NULL, "%.400s", resp);
	free(resp);
	resp = http_request(base, port, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
	ck_assert_msg(strstr(resp, " 405 ") != NULL && strstr(resp, "Allow: GET, HEAD\r\n") != NULL, "%s",
	              resp);
	free(resp);
	resp = http_request(base, port, "DELETE /metrics HTTP/1.0\r\n\r\n");
	ck_assert_msg(strstr(resp, " 405 ") != NULL, "%.400s", resp);
	free(resp);
	resp = http_request(base, port, "HEAD /metrics HTTP/1.0\r\n\r\n");
	ck_assert_msg(strstr(resp, " 200 ") != NULL && strstr(resp, "# HELP") == NULL &&
	                      strstr(resp, "Content-Length: ") != NULL,
	              "%.400s", resp);
	free(resp);

	/* The same address again: nothing happens. A blocked new address: the old one keeps serving. */
	ck_assert(pv_metrics_listen(m, addr, &err));
	ck_assert(!pv_metrics_listen(m, blocked_addr, &err));
	ck_assert_msg(strstr(err.msg, "Address already in use") != NULL, "message: %s", err.msg);
	ck_assert_str_eq(pv_metrics_address(m), addr);
	resp = http_request(base, port, "GET /metrics HTTP/1.0\r\n\r\n");
	ck_assert_msg(strstr(resp, " 200 ") != NULL, "old address after a failed move: %.400s", resp);
	free(resp);
	/* Same port, another host part: only we stand in the way, so it moves. */
	snprintf(addr, sizeof(addr), "*:%d", port);
	ck_assert_msg(pv_metrics_listen(m, addr, &err), "move to *: %s", err.msg);
	ck_assert_str_eq(pv_metrics_address(m), addr);
	resp = http_request(base, port, "GET /metrics HTTP/1.0\r\n\r\n");
	ck_assert_msg(strstr(resp, " 200 ") != NULL, "after the move: %.400s", resp);
	free(resp);
	/* Stopped. */
	ck_assert(pv_metrics_listen(m, NULL, &err));
	ck_assert_ptr_null(pv_metrics_address(m));
	resp = http_request(base, port, "GET /metrics HTTP/1.0\r\n\r\n");
	ck_assert_str_eq(resp, "");
	free(resp);

	pv_metrics_free(m);
	pv_metrics_free(NULL);
	close(blocker);
	event_base_free(base);
	fx_close(&fx);
}
END_TEST

static bool
address_is(struct pv_metrics *m, const char *want)
{
	const char *a = pv_metrics_address(m);
	return a != NULL && strcmp(a, want) == 0;
}

/* Run the loop in short slices until the endpoint serves `want`, at most max seconds. */
static bool
run_until_address(struct pv_test_loop *l, struct pv_metrics *m, const char *want, double max)
{
	for (double t = 0; t < max && !address_is(m, want); t += 0.05)
		pv_test_loop_run(l, 0.05);
	return address_is(m, want);
}

/*
 * With a DNS base, a move to a name is looked up off the loop: the old address serves until the answer
 * comes; NXDOMAIN leaves it serving; a newer move cancels a lookup under way; freeing the endpoint with
 * one under way leaks nothing (the sanitizer build checks).
 */
START_TEST(test_metrics__named_address_looked_up_async)
{
	struct fx fx = fx_open();
	struct pv_test_loop l;
	struct pv_test_dns dns;
	struct pv_error err = {0};
	struct pv_metrics *m;
	char a1[64], named[96], bad[96], silent[96];
	int p1 = free_port(), p2 = free_port(), queries;
	char *resp;

	pv_test_loop_init(&l, false);
	pv_test_dns_start(&dns, l.base, l.dns);
	snprintf(a1, sizeof(a1), "127.0.0.1:%d", p1);
	m = pv_metrics_new(l.base, a1, view_fn, &fx, &err);
	ck_assert_msg(m != NULL, "%s", err.msg);
	pv_metrics_set_dns(m, l.dns);

	snprintf(named, sizeof(named), "db.pgvigil.test:%d", p2);
	ck_assert(pv_metrics_listen(m, named, &err));
	ck_assert(address_is(m, a1)); /* nothing moved before the answer */
	ck_assert_msg(run_until_address(&l, m, named, 5), "still at %s", pv_metrics_address(m));
	ck_assert_int_ge(dns.queries, 1);
	resp = http_request(l.base, p2, "GET /metrics HTTP/1.0\r\n\r\n");
	ck_assert_msg(strstr(resp, " 200 ") != NULL, "after the move: %.300s", resp);
	free(resp);
	resp = http_request(l.base, p1, "GET /metrics HTTP/1.0\r\n\r\n");
	ck_assert_str_eq(resp, ""); /* the old address is closed */
	free(resp);

	/* NXDOMAIN: the endpoint stays where it is. */
	queries = dns.queries;
	snprintf(bad, sizeof(bad), "nonexistent.invalid:%d", p1);
	ck_assert(pv_metrics_listen(m, bad, &err));
	for (double t = 0; t < 5 && dns.queries == queries; t += 0.05)
		pv_test_loop_run(&l, 0.05);
	pv_test_loop_run(&l, 0.3);
	ck_assert_int_gt(dns.queries, queries);
	ck_assert(address_is(m, named));
	resp = http_request(l.base, p2, "GET /metrics HTTP/1.0\r\n\r\n");
	ck_assert_msg(strstr(resp, " 200 ") != NULL, "after a failed lookup: %.300s", resp);
	free(resp);

	/* A lookup that never ends is cancelled by the next move, which wins. */
	snprintf(silent, sizeof(silent), "silent.pgvigil.test:%d", p1);
	ck_assert(pv_metrics_listen(m, silent, &err));
	pv_test_loop_run(&l, 0.2);
	ck_assert(address_is(m, named));
	ck_assert_msg(pv_metrics_listen(m, a1, &err), "%s", err.msg);
	ck_assert(address_is(m, a1));
	pv_test_loop_run(&l, 0.3);
	ck_assert(address_is(m, a1));

	/* Freed with a lookup under way. */
	ck_assert(pv_metrics_listen(m, silent, &err));
	pv_test_loop_run(&l, 0.1);
	pv_metrics_free(m);
	pv_test_dns_stop(&dns);
	pv_test_loop_free(&l);
	fx_close(&fx);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("metrics");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_unchecked_fixture(tc, base_setup, pv_test_tmpdir_teardown);
	tcase_add_test(tc, test_metrics__escape_label);
	tcase_add_test(tc, test_metrics__empty_state_has_every_family);
	tcase_add_test(tc, test_metrics__values_from_state);
	tcase_add_test(tc, test_metrics__label_values_escaped_in_render);
	tcase_add_test(tc, test_metrics__run_counts_carried_between_scrapes);
	tcase_add_test(tc, test_metrics__state_failure_counted_not_fatal);
	tcase_add_test(tc, test_metrics__http_paths_methods_and_moves);
	tcase_add_test(tc, test_metrics__named_address_looked_up_async);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
