/* Unit tests for src/config: schema, errors with positions, secrets, defaults, references, dump. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"
#include "sched/cron.h"
#include "sched/sched.h"
#include "util/mem.h"

/* A minimal valid configuration that error cases below are variations of. */
#define BASE_DB "databases:\n  db:\n    conninfo: \"dbname=x\"\n"

static char tmpdir[256];
static const char *current_case = ""; /* names the table row in failure messages */

static void
tmp_setup(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/check_config.XXXXXX");
	if (mkdtemp(tmpdir) == NULL)
		abort();
}

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void
tmp_teardown(void)
{
	nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Write a file under tmpdir with the given mode; returns its path (static buffer per slot). */
static const char *
tmp_file(int slot, const char *name, const char *content, mode_t mode)
{
	static char paths[8][512];
	FILE *f;

	snprintf(paths[slot], sizeof(paths[slot]), "%s/%s", tmpdir, name);
	f = fopen(paths[slot], "w");
	ck_assert_ptr_nonnull(f);
	fputs(content, f);
	fclose(f);
	ck_assert_int_eq(chmod(paths[slot], mode), 0);
	return paths[slot];
}

static struct pv_config *
load_ok(const char *yaml, struct pv_config_diag *diag)
{
	struct pv_error err;
	struct pv_config *cfg = pv_config_load_string("t.yaml", yaml, diag, &err);

	if (cfg == NULL) {
		for (size_t i = 0; i < diag->errors.n; i++)
			fprintf(stderr, "unexpected: %s\n", diag->errors.v[i]);
	}
	ck_assert_ptr_nonnull(cfg);
	ck_assert_int_eq(diag->errors.n, 0);
	return cfg;
}

/* Load `yaml`, expect failure with exactly one error "t.yaml:POS: PATH: ..." containing `frag`. */
static void
expect_error(const char *yaml, enum pv_errcode code, const char *pos, const char *path, const char *frag)
{
	struct pv_config_diag diag = {0};
	struct pv_error err;
	struct pv_config *cfg = pv_config_load_string("t.yaml", yaml, &diag, &err);
	char *prefix;

	if (cfg != NULL || diag.errors.n != 1) {
		for (size_t i = 0; i < diag.errors.n; i++)
			fprintf(stderr, "  got: %s\n", diag.errors.v[i]);
	}
	ck_assert_msg(cfg == NULL, "%s: loaded", current_case);
	ck_assert_msg(diag.errors.n == 1, "%s: %zu errors", current_case, diag.errors.n);
	prefix = path != NULL ? pv_asprintf("t.yaml:%s: %s: ", pos, path) : pv_asprintf("t.yaml:%s: ", pos);
	ck_assert_msg(strncmp(diag.errors.v[0], prefix, strlen(prefix)) == 0, "expected prefix '%s' in '%s'",
	              prefix, diag.errors.v[0]);
	ck_assert_msg(strstr(diag.errors.v[0], frag) != NULL, "expected '%s' in '%s'", frag,
	              diag.errors.v[0]);
	ck_assert_str_eq(err.msg, diag.errors.v[0]);
	ck_assert_msg(err.code == code, "code %s, expected %s (%s)", pv_error_code_name(err.code),
	              pv_error_code_name(code), diag.errors.v[0]);
	free(prefix);
	pv_config_diag_free(&diag);
}

static bool
has_warning(const struct pv_config_diag *diag, const char *frag)
{
	for (size_t i = 0; i < diag->warnings.n; i++)
		if (strstr(diag->warnings.v[i], frag) != NULL)
			return true;
	return false;
}

struct error_case {
	const char *name;
	const char *yaml;
	enum pv_errcode code;
	const char *pos;
	const char *path;
	const char *frag;
};

static const struct error_case error_cases[] = {
        /* YAML itself */
        {"syntax", "jobs:\n  a: [1, 2\n", PV_ERR_CONFIG_SYNTAX, "3:1", NULL,
         "syntax error: did not find expected"},
        {"syntax_tab", "daemon:\n\tsocket: /x\n", PV_ERR_CONFIG_SYNTAX, "2:1", NULL, "syntax error"},
        {"empty", "", PV_ERR_CONFIG_MISSING, "1:1", NULL, "the configuration is empty"},
        {"only_comments", "# nothing here\n\n", PV_ERR_CONFIG_MISSING, "1:1", NULL, "empty"},
        {"root_list", "- a\n- b\n", PV_ERR_CONFIG_TYPE, "1:1", NULL, "expected a mapping of sections"},
        {"two_documents", BASE_DB "---\nfoo: 1\n", PV_ERR_CONFIG_SYNTAX, "5:1", NULL, "second YAML document"},
        /* unknown keys */
        {"unknown_top_suggest", "databses: {}\n", PV_ERR_CONFIG_UNKNOWN_KEY, "1:1", "databses",
         "did you mean \"databases\"?"},
        {"unknown_daemon_suggest", "daemon:\n  log_levle: info\n", PV_ERR_CONFIG_UNKNOWN_KEY, "2:3",
         "daemon.log_levle", "did you mean \"log_level\"?"},
        {"unknown_allowed_list", "storage:\n  frobnicate: 1\n", PV_ERR_CONFIG_UNKNOWN_KEY, "2:3",
         "storage.frobnicate", "allowed keys: path, compression, compression_level"},
        {"unknown_job_key_suggest",
         BASE_DB "jobs:\n  b: { type: backup, database: db, every: 1h, keep: 3, shema_copy: true }\n",
         PV_ERR_CONFIG_UNKNOWN_KEY, "5:56", "jobs.b.shema_copy", "did you mean \"schema_copy\"?"},
        {"key_not_for_job_type",
         BASE_DB "jobs:\n  h:\n    type: health\n    database: db\n    every: 1m\n    keep: 7\n",
         PV_ERR_CONFIG_UNKNOWN_KEY, "9:5", "jobs.h.keep", "not valid for a health job (only for: backup)"},
        {"keep_connection_not_for_backup",
         BASE_DB "jobs:\n  b: { type: backup, database: db, every: 1h, keep: 3, keep_connection: true }\n",
         PV_ERR_CONFIG_UNKNOWN_KEY, "5:56", "jobs.b.keep_connection",
         "not valid for a backup job (only for: health)"},
        {"keep_connection_bool",
         BASE_DB "jobs:\n  h: { type: health, database: db, every: 1m, keep_connection: 1 }\n",
         PV_ERR_CONFIG_VALUE, "5:47", "jobs.h.keep_connection", "expected true or false, got \"1\""},
        {"key_not_for_notifier_type",
         "notifiers:\n  hb: { type: heartbeat, url: \"https://x\", severities: [info] }\n",
         PV_ERR_CONFIG_UNKNOWN_KEY, "2:44", "notifiers.hb.severities", "not valid for a heartbeat notifier"},
        {"rule_foreign_param", "alerts:\n  rules:\n    rpo_breach: { after: 1h }\n",
         PV_ERR_CONFIG_UNKNOWN_KEY, "3:19", "alerts.rules.rpo_breach.after",
         "allowed keys: severity, enabled"},
        {"rule_unknown_suggest", "alerts:\n  rules:\n    backup_stal: {}\n", PV_ERR_CONFIG_UNKNOWN_KEY, "3:5",
         "alerts.rules.backup_stal", "did you mean \"backup_stale\"?"},
        /* wrong types */
        {"type_section_list", "daemon: [a]\n", PV_ERR_CONFIG_TYPE, "1:1", "daemon",
         "expected a mapping, got a list"},
        {"type_scalar_got_list", "daemon:\n  state_dir: [a, b]\n", PV_ERR_CONFIG_TYPE, "2:3",
         "daemon.state_dir", "expected a string, got a list"},
        {"type_list_got_scalar", "daemon:\n  admins: root\n", PV_ERR_CONFIG_TYPE, "2:3", "daemon.admins",
         "expected a list, got a scalar"},
        {"type_list_item", "daemon:\n  admins: [root, {a: b}]\n", PV_ERR_CONFIG_TYPE, "2:18",
         "daemon.admins[1]", "expected a string, got a mapping"},
        {"admin_empty_group", "daemon:\n  admins:\n    - root\n    - \"@\"\n", PV_ERR_CONFIG_VALUE, "4:7",
         "daemon.admins[1]", "needs a group name"},
        {"type_job_scalar", BASE_DB "jobs:\n  b: backup\n", PV_ERR_CONFIG_TYPE, "5:3", "jobs.b",
         "expected a mapping, got a scalar"},
        {"type_null_string", "daemon:\n  socket:\n", PV_ERR_CONFIG_TYPE, "2:3", "daemon.socket",
         "expected a string, got nothing (null)"},
        {"type_bool",
         BASE_DB "jobs:\n  b: { type: backup, database: db, every: 1h, keep: 1, schema_copy: yes }\n",
         PV_ERR_CONFIG_VALUE, "5:56", "jobs.b.schema_copy", "expected true or false, got \"yes\""},
        /* values */
        {"keep_history_too_short", "daemon:\n  keep_history: 7d\n", PV_ERR_CONFIG_VALUE, "2:3",
         "daemon.keep_history", "expected a duration of at least 4w3d, got \"7d\""},
        {"bad_duration", "alerts:\n  group_wait: 5x\n", PV_ERR_CONFIG_VALUE, "2:3", "alerts.group_wait",
         "expected a duration such as 30s, 5m, 4h, 7d, 2w or 1h30m, got \"5x\""},
        {"bad_duration_order", "alerts:\n  repeat_every: 30m1h\n", PV_ERR_CONFIG_VALUE, "2:3",
         "alerts.repeat_every", "got \"30m1h\""},
        {"duration_too_short", BASE_DB "jobs:\n  h: { type: health, database: db, every: 0s }\n",
         PV_ERR_CONFIG_VALUE, "5:36", "jobs.h.every", "at least 1s"},
        /* Found with the config fuzz target: the planner takes jitter and grace as int seconds, and an
         * interval's grace defaults to the interval; larger values loaded, then broke the planner. */
        {"duration_too_long", BASE_DB "jobs:\n  h: { type: health, database: db, every: 521w }\n",
         PV_ERR_CONFIG_VALUE, "5:36", "jobs.h.every", "expected a duration of at most 520w, got \"521w\""},
        /* Found with the config fuzz target: a job name that is not a valid tier became the tier, and the
         * printed configuration did not load. */
        {"tier_from_job_name",
         BASE_DB "jobs:\n  db.full: { type: backup, database: db, schedule: \"@daily\", keep: 3 }\n",
         PV_ERR_CONFIG_VALUE, "5:3", "jobs.db.full", "the job name cannot be its tier"},
        {"jitter_too_long",
         BASE_DB "jobs:\n  h: { type: health, database: db, every: 1m, jitter: 4294967295s }\n",
         PV_ERR_CONFIG_VALUE, "5:47", "jobs.h.jitter", "at most 520w"},
        {"bad_percent", "alerts:\n  rules:\n    storage_usage: { above: 80 }\n", PV_ERR_CONFIG_VALUE, "3:22",
         "alerts.rules.storage_usage.above", "expected a percentage such as \"80%\", got \"80\""},
        {"percent_range", "alerts:\n  rules:\n    storage_usage: { above: 150% }\n", PV_ERR_CONFIG_VALUE,
         "3:22", "alerts.rules.storage_usage.above", "between 1% and 100%"},
        {"bad_factor", "alerts:\n  rules:\n    backup_slow: { factor: fast }\n", PV_ERR_CONFIG_VALUE, "3:20",
         "alerts.rules.backup_slow.factor", "expected a number greater than 1"},
        {"bad_cron",
         BASE_DB
         "jobs:\n  b:\n    type: backup\n    database: db\n    schedule: \"61 2 * * *\"\n    keep: 7\n",
         PV_ERR_CONFIG_VALUE, "8:5", "jobs.b.schedule", "61"},
        {"bad_cron_fields", BASE_DB "jobs:\n  v: { type: verify, schedule: \"0 2 * *\" }\n",
         PV_ERR_CONFIG_VALUE, "5:22", "jobs.v.schedule", ""},
        {"cron_never_runs", BASE_DB "jobs:\n  v: { type: verify, schedule: \"0 0 30 2 *\" }\n",
         PV_ERR_CONFIG_VALUE, "5:22", "jobs.v.schedule", "never runs"},
        {"bad_digest_cron",
         "notifiers:\n  s: { type: slack, webhook_url: \"https://x\", digest: \"nope\" }\n",
         PV_ERR_CONFIG_VALUE, "2:47", "notifiers.s.digest", ""},
        {"bad_job_timezone", BASE_DB "jobs:\n  v: { type: verify, every: 1h, timezone: Mars/Olympus_Mons }\n",
         PV_ERR_CONFIG_VALUE, "5:33", "jobs.v.timezone", "Mars/Olympus_Mons"},
        {"bad_daemon_timezone", "daemon:\n  timezone: Europe/Atlantis\n", PV_ERR_CONFIG_VALUE, "2:3",
         "daemon.timezone", "Europe/Atlantis"},
        {"schedule_and_every", BASE_DB "jobs:\n  v: { type: verify, schedule: \"@daily\", every: 1h }\n",
         PV_ERR_CONFIG_VALUE, "5:42", "jobs.v.every", "either schedule or every, not both"},
        {"neither_schedule_nor_every", BASE_DB "jobs:\n  v: { type: verify }\n", PV_ERR_CONFIG_MISSING, "5:3",
         "jobs.v", "missing required key \"schedule\" or \"every\""},
        {"bad_enum_compression", "storage:\n  compression: lz4\n", PV_ERR_CONFIG_VALUE, "2:3",
         "storage.compression", "expected zstd or none, got \"lz4\""},
        {"bad_enum_severity", "alerts:\n  rules:\n    job_missed: { severity: loud }\n", PV_ERR_CONFIG_VALUE,
         "3:19", "alerts.rules.job_missed.severity", "expected info, warning or critical, got \"loud\""},
        {"bad_enum_log_level", "daemon:\n  log_level: chatty\n", PV_ERR_CONFIG_VALUE, "2:3",
         "daemon.log_level", "got \"chatty\""},
        {"bad_enum_starttls",
         "notifiers:\n  m:\n    type: email\n    smtp_url: smtp://h\n    starttls: maybe\n    from: a@b\n    "
         "to: [c@d]\n",
         PV_ERR_CONFIG_VALUE, "5:5", "notifiers.m.starttls", "expected required, implicit or none"},
        {"bad_enum_heartbeat_method",
         "notifiers:\n  hb: { type: heartbeat, url: \"https://x\", method: PUT }\n", PV_ERR_CONFIG_VALUE,
         "2:44", "notifiers.hb.method", "expected GET or POST, got \"PUT\""},
        {"unreadable_ca_file",
         "notifiers:\n  s: { type: slack, webhook_url: \"https://x\", ca_file: /nonexistent/ca.pem }\n",
         PV_ERR_CONFIG_VALUE, "2:47", "notifiers.s.ca_file", "cannot read \"/nonexistent/ca.pem\""},
        {"bad_enum_notifier_type", "notifiers:\n  p: { type: pager }\n", PV_ERR_CONFIG_VALUE, "2:8",
         "notifiers.p.type", "expected slack, webhook, email or heartbeat, got \"pager\""},
        {"bad_enum_job_type", BASE_DB "jobs:\n  x: { type: vacuum, every: 1h }\n", PV_ERR_CONFIG_VALUE, "5:8",
         "jobs.x.type", "got \"vacuum\""},
        {"bad_notifier_severity",
         "notifiers:\n  s: { type: slack, webhook_url: \"https://x\", severities: [critical, "
         "loud] }\n",
         PV_ERR_CONFIG_VALUE, "2:70", "notifiers.s.severities[1]", "got \"loud\""},
        {"range_max_parallel", "daemon:\n  max_parallel_jobs: 0\n", PV_ERR_CONFIG_VALUE, "2:3",
         "daemon.max_parallel_jobs", "expected an integer between 1 and 64, got \"0\""},
        {"range_compression_level", "storage:\n  compression_level: 20\n", PV_ERR_CONFIG_VALUE, "2:3",
         "storage.compression_level", "between 1 and 19, got \"20\""},
        {"range_keep_zero", BASE_DB "jobs:\n  b: { type: backup, database: db, every: 1d, keep: 0 }\n",
         PV_ERR_CONFIG_VALUE, "5:47", "jobs.b.keep", "expected an integer >= 1, got \"0\""},
        {"keep_not_integer",
         BASE_DB "jobs:\n  daily-backup:\n    type: backup\n    database: db\n    schedule: \"0 2 * * *\"\n  "
                 "  keep: seven\n",
         PV_ERR_CONFIG_VALUE, "9:5", "jobs.daily-backup.keep", "expected an integer >= 1, got \"seven\""},
        {"bad_metrics_listen", "daemon:\n  metrics_listen: localhost\n", PV_ERR_CONFIG_VALUE, "2:3",
         "daemon.metrics_listen", "expected HOST:PORT"},
        {"bad_name", BASE_DB "jobs:\n  \"../etc\": { type: verify, every: 1h }\n", PV_ERR_CONFIG_VALUE, "5:3",
         "jobs.../etc", "invalid job name"},
        {"bad_smtp_url", "notifiers:\n  m: { type: email, smtp_url: \"http://h\", from: a@b, to: [c@d] }\n",
         PV_ERR_CONFIG_VALUE, "2:21", "notifiers.m.smtp_url", "expected an smtp:// or smtps:// URL"},
        {"smtps_with_starttls",
         "notifiers:\n  m: { type: email, smtp_url: \"smtps://h\", starttls: required, from: a@b, to: [c@d] "
         "}\n",
         PV_ERR_CONFIG_VALUE, "2:44", "notifiers.m.starttls", "implicit TLS"},
        {"bad_recipient",
         "notifiers:\n  m: { type: email, smtp_url: \"smtp://h\", from: a@b, to: [nobody] }\n",
         PV_ERR_CONFIG_VALUE, "2:59", "notifiers.m.to[0]", "expected an email address"},
        /* missing required keys */
        {"missing_type", BASE_DB "jobs:\n  b: { database: db, every: 1h }\n", PV_ERR_CONFIG_MISSING, "5:3",
         "jobs.b", "missing required key \"type\""},
        {"missing_backup_database", BASE_DB "jobs:\n  b: { type: backup, every: 1h, keep: 1 }\n",
         PV_ERR_CONFIG_MISSING, "5:3", "jobs.b", "missing required key \"database\""},
        {"missing_health_database", BASE_DB "jobs:\n  h: { type: health, every: 1m }\n",
         PV_ERR_CONFIG_MISSING, "5:3", "jobs.h", "missing required key \"database\""},
        {"missing_keep", BASE_DB "jobs:\n  b: { type: backup, database: db, every: 1h }\n",
         PV_ERR_CONFIG_MISSING, "5:3", "jobs.b", "missing required key \"keep\""},
        {"missing_conninfo", "databases:\n  db:\n    critical_tables: [t]\n", PV_ERR_CONFIG_MISSING, "2:3",
         "databases.db", "missing required key \"conninfo\""},
        {"missing_slack_url", "notifiers:\n  s: { type: slack }\n", PV_ERR_CONFIG_MISSING, "2:3",
         "notifiers.s", "missing required key \"webhook_url\" (or \"webhook_url_file\")"},
        {"missing_email_to", "notifiers:\n  m: { type: email, smtp_url: \"smtp://h\", from: a@b }\n",
         PV_ERR_CONFIG_MISSING, "2:3", "notifiers.m", "missing required key \"to\""},
        /* references */
        {"dangling_job_database", BASE_DB "jobs:\n  h: { type: health, database: prod, every: 1m }\n",
         PV_ERR_CONFIG_REFERENCE, "5:22", "jobs.h.database", "unknown database \"prod\"; defined: db"},
        {"dangling_job_database_suggest",
         "databases:\n  production: { conninfo: \"\" }\njobs:\n  h: { type: health, database: Production, "
         "every: 1m }\n",
         PV_ERR_CONFIG_REFERENCE, "4:22", "jobs.h.database", "did you mean \"production\"?"},
        {"dangling_restore_target", "databases:\n  db:\n    conninfo: x\n    restore_target: scratch\n",
         PV_ERR_CONFIG_REFERENCE, "4:5", "databases.db.restore_target", "unknown restore target \"scratch\""},
        {"probe_without_restore_target",
         BASE_DB "jobs:\n  p: { type: restore_probe, database: db, schedule: \"@weekly\" }\n",
         PV_ERR_CONFIG_REFERENCE, "5:29", "jobs.p.database",
         "has no restore_target, which a restore_probe job needs"},
        {"drill_without_restore_target",
         BASE_DB "jobs:\n  d: { type: drill, database: db, schedule: \"@monthly\" }\n",
         PV_ERR_CONFIG_REFERENCE, "5:21", "jobs.d.database",
         "has no restore_target, which a drill job needs"},
        /* duplicates */
        {"duplicate_job",
         BASE_DB "jobs:\n  v: { type: verify, every: 1h }\n  v: { type: verify, every: 2h }\n",
         PV_ERR_CONFIG_DUPLICATE, "6:3", "jobs.v", "duplicate key (first defined at line 5, column 3)"},
        {"duplicate_key_in_job", BASE_DB "jobs:\n  v:\n    type: verify\n    every: 1h\n    every: 2h\n",
         PV_ERR_CONFIG_DUPLICATE, "8:5", "jobs.v.every", "duplicate key (first defined at line 7, column 5)"},
        {"duplicate_section", BASE_DB "daemon: {}\ndaemon: {}\n", PV_ERR_CONFIG_DUPLICATE, "5:1", "daemon",
         "duplicate key"},
        {"duplicate_flow_key", "alerts: { group_wait: 1s, group_wait: 2s }\n", PV_ERR_CONFIG_DUPLICATE,
         "1:27", "alerts.group_wait", "first defined at line 1, column 11"},
        /* secrets (files are covered by their own tests) */
        {"secret_env_unset",
         "databases:\n  db:\n    conninfo: x\n    password: env:PGVIGIL_TEST_SURELY_UNSET\n",
         PV_ERR_CONFIG_SECRET, "4:5", "databases.db.password",
         "environment variable PGVIGIL_TEST_SURELY_UNSET is not set"},
        {"secret_env_bad_name", "databases:\n  db:\n    conninfo: x\n    password: \"env:1X\"\n",
         PV_ERR_CONFIG_VALUE, "4:5", "databases.db.password", "invalid environment variable name"},
        {"secret_wrong_type", "restore_targets:\n  s:\n    conninfo: x\n    password: [a]\n",
         PV_ERR_CONFIG_TYPE, "4:5", "restore_targets.s.password", "expected a string, got a list"},
};

START_TEST(test_config__error_table)
{
	const struct error_case *c = &error_cases[_i];

	current_case = c->name;
	unsetenv("PGVIGIL_TEST_SURELY_UNSET");
	expect_error(c->yaml, c->code, c->pos, c->path, c->frag);
}
END_TEST

START_TEST(test_config__all_errors_collected_in_file_order)
{
	struct pv_config_diag diag = {0};
	struct pv_error err;
	const char *yaml = "daemon:\n  max_parallel_jobs: 0\n" BASE_DB
	                   "jobs:\n  b: { type: backup, database: nope, every: 1h, keep: 0 }\n"
	                   "storage:\n  compression: lz4\n";
	struct pv_config *cfg = pv_config_load_string("t.yaml", yaml, &diag, &err);

	ck_assert_ptr_null(cfg);
	ck_assert_uint_eq(diag.errors.n, 4);
	ck_assert_ptr_nonnull(strstr(diag.errors.v[0], "t.yaml:2:3: daemon.max_parallel_jobs:"));
	ck_assert_ptr_nonnull(strstr(diag.errors.v[1], "t.yaml:7:22: jobs.b.database:"));
	ck_assert_ptr_nonnull(strstr(diag.errors.v[2], "t.yaml:7:49: jobs.b.keep:"));
	ck_assert_ptr_nonnull(strstr(diag.errors.v[3], "t.yaml:9:3: storage.compression:"));
	ck_assert_int_eq(err.code, PV_ERR_CONFIG_VALUE);
	ck_assert_str_eq(err.msg, diag.errors.v[0]);
	pv_config_diag_free(&diag);
}
END_TEST

START_TEST(test_config__secret_never_in_errors)
{
	struct pv_config_diag diag = {0};
	struct pv_error err;
	const char *yaml = "notifiers:\n  s: { type: slack, webhook_url: \"ftp://T0PS3CRET\" }\n"
	                   "  h: { type: webhook, url: \"https://x\", secret: [T0PS3CRET] }\n";

	ck_assert_ptr_null(pv_config_load_string("t.yaml", yaml, &diag, &err));
	ck_assert_uint_eq(diag.errors.n, 2);
	for (size_t i = 0; i < diag.errors.n; i++)
		ck_assert_ptr_null(strstr(diag.errors.v[i], "T0PS3CRET"));
	ck_assert_ptr_nonnull(
	        strstr(diag.errors.v[0], "notifiers.s.webhook_url: expected an http:// or https:// URL"));
	pv_config_diag_free(&diag);
}
END_TEST

static char *
secret_yaml(const char *line)
{
	return pv_asprintf("databases:\n  db:\n    conninfo: \"host=h\"\n    %s\n", line);
}

START_TEST(test_config__secret_file_0600_ok)
{
	struct pv_config_diag diag = {0};
	const char *path = tmp_file(0, "pw", "s3cr3t-pw\n", 0600);
	char *line = pv_asprintf("password_file: %s", path);
	char *yaml = secret_yaml(line);
	char *source = pv_asprintf("file:%s", path);
	struct pv_config *cfg = load_ok(yaml, &diag);

	ck_assert_str_eq(cfg->databases[0].password.value, "s3cr3t-pw");
	ck_assert_str_eq(cfg->databases[0].password.source, source);
	pv_config_unref(cfg);
	pv_config_diag_free(&diag);
	free(source);
	free(yaml);
	free(line);
}
END_TEST

START_TEST(test_config__secret_file_only_one_newline_stripped)
{
	struct pv_config_diag diag = {0};
	const char *path = tmp_file(0, "pw", "a b\n\n", 0400);
	char *line = pv_asprintf("password_file: %s", path);
	char *yaml = secret_yaml(line);
	struct pv_config *cfg = load_ok(yaml, &diag);

	ck_assert_str_eq(cfg->databases[0].password.value, "a b\n");
	pv_config_unref(cfg);
	pv_config_diag_free(&diag);
	free(yaml);
	free(line);
}
END_TEST

START_TEST(test_config__secret_file_0644_refused)
{
	const char *path = tmp_file(0, "pw", "leaky\n", 0644);
	char *line = pv_asprintf("password_file: %s", path);
	char *yaml = secret_yaml(line);

	expect_error(yaml, PV_ERR_CONFIG_SECRET, "4:5", "databases.db.password_file",
	             "is accessible by group or others (mode 0644); HINT: chmod 600");
	free(yaml);
	free(line);
}
END_TEST

START_TEST(test_config__secret_file_0640_refused)
{
	const char *path = tmp_file(0, "pw", "leaky\n", 0640);
	char *line = pv_asprintf("password_file: %s", path);
	char *yaml = secret_yaml(line);

	expect_error(yaml, PV_ERR_CONFIG_SECRET, "4:5", "databases.db.password_file", "mode 0640");
	free(yaml);
	free(line);
}
END_TEST

START_TEST(test_config__secret_file_missing)
{
	char *line = pv_asprintf("password_file: %s/does-not-exist", tmpdir);
	char *yaml = secret_yaml(line);

	expect_error(yaml, PV_ERR_CONFIG_SECRET, "4:5", "databases.db.password_file",
	             "No such file or directory");
	free(yaml);
	free(line);
}
END_TEST

START_TEST(test_config__secret_file_not_regular)
{
	char *line = pv_asprintf("password_file: %s", tmpdir);
	char *yaml = secret_yaml(line);

	expect_error(yaml, PV_ERR_CONFIG_SECRET, "4:5", "databases.db.password_file",
	             "is not a regular file");
	free(yaml);
	free(line);
}
END_TEST

START_TEST(test_config__secret_file_empty)
{
	const char *path = tmp_file(0, "pw", "\n", 0600);
	char *line = pv_asprintf("password_file: %s", path);
	char *yaml = secret_yaml(line);

	expect_error(yaml, PV_ERR_CONFIG_SECRET, "4:5", "databases.db.password_file", "is empty");
	free(yaml);
	free(line);
}
END_TEST

START_TEST(test_config__secret_env_set)
{
	struct pv_config_diag diag = {0};
	char *yaml = secret_yaml("password: env:PGVIGIL_TEST_PW");
	struct pv_config *cfg;

	setenv("PGVIGIL_TEST_PW", "from-env", 1);
	cfg = load_ok(yaml, &diag);
	ck_assert_str_eq(cfg->databases[0].password.value, "from-env");
	ck_assert_str_eq(cfg->databases[0].password.source, "env:PGVIGIL_TEST_PW");
	unsetenv("PGVIGIL_TEST_PW");
	pv_config_unref(cfg);
	pv_config_diag_free(&diag);
	free(yaml);
}
END_TEST

START_TEST(test_config__secret_env_empty)
{
	char *yaml = secret_yaml("password: env:PGVIGIL_TEST_PW");

	setenv("PGVIGIL_TEST_PW", "", 1);
	expect_error(yaml, PV_ERR_CONFIG_SECRET, "4:5", "databases.db.password",
	             "environment variable PGVIGIL_TEST_PW is empty");
	unsetenv("PGVIGIL_TEST_PW");
	free(yaml);
}
END_TEST

START_TEST(test_config__secret_inline)
{
	struct pv_config_diag diag = {0};
	char *yaml = secret_yaml("password: hunter2");
	struct pv_config *cfg = load_ok(yaml, &diag);

	ck_assert_str_eq(cfg->databases[0].password.value, "hunter2");
	ck_assert_str_eq(cfg->databases[0].password.source, "inline");
	pv_config_unref(cfg);
	pv_config_diag_free(&diag);
	free(yaml);
}
END_TEST

START_TEST(test_config__secret_both_forms_refused)
{
	const char *path = tmp_file(0, "pw", "x\n", 0600);
	char *yaml = pv_asprintf(
	        "databases:\n  db:\n    conninfo: x\n    password: inline\n    password_file: %s\n", path);

	expect_error(yaml, PV_ERR_CONFIG_SECRET, "5:5", "databases.db.password_file",
	             "give either password or password_file, not both");
	free(yaml);
}
END_TEST

START_TEST(test_config__secret_forms_on_notifiers)
{
	struct pv_config_diag diag = {0};
	const char *url = tmp_file(0, "hook.url", "https://hooks.example/T0PS3CRET\n", 0600);
	const char *sec = tmp_file(1, "hook.secret", "hmac-key", 0600);
	const char *hb = tmp_file(2, "hc.url", "https://hc.example/ping/abc\n", 0600);
	char *yaml;
	struct pv_config *cfg;

	setenv("PGVIGIL_TEST_SMTP", "smtp-pw", 1);
	yaml = pv_asprintf("notifiers:\n"
	                   "  s: { type: slack, webhook_url_file: %s }\n"
	                   "  w: { type: webhook, url: \"https://w.example/hook\", secret_file: %s }\n"
	                   "  m: { type: email, smtp_url: \"smtps://m.example\", username: u, password: "
	                   "env:PGVIGIL_TEST_SMTP, from: a@b, to: [c@d] }\n"
	                   "  h: { type: heartbeat, url_file: %s }\n",
	                   url, sec, hb);
	cfg = load_ok(yaml, &diag);
	ck_assert_uint_eq(cfg->n_notifiers, 4);
	ck_assert_str_eq(cfg->notifiers[0].webhook_url.value, "https://hooks.example/T0PS3CRET");
	ck_assert_str_eq(cfg->notifiers[1].url.value, "https://w.example/hook");
	ck_assert_str_eq(cfg->notifiers[1].url.source, "inline");
	ck_assert_str_eq(cfg->notifiers[1].secret.value, "hmac-key");
	ck_assert_str_eq(cfg->notifiers[2].password.value, "smtp-pw");
	ck_assert_int_eq(cfg->notifiers[2].starttls, PV_STARTTLS_IMPLICIT);
	ck_assert_str_eq(cfg->notifiers[3].url.value, "https://hc.example/ping/abc");
	ck_assert_int_eq(cfg->notifiers[3].every, 300);
	ck_assert_uint_eq(cfg->notifiers[3].severities, 0);
	ck_assert_int_eq(cfg->notifiers[0].max_age, 86400);
	unsetenv("PGVIGIL_TEST_SMTP");
	pv_config_unref(cfg);
	pv_config_diag_free(&diag);
	free(yaml);
}
END_TEST

START_TEST(test_config__dump_redacts_secrets)
{
	struct pv_config_diag diag = {0};
	const char *file = tmp_file(0, "slack.url", "https://hooks.slack.com/services/T0PS3CRET\n", 0600);
	char *yaml =
	        pv_asprintf("databases:\n"
	                    "  db:\n"
	                    "    conninfo: \"host=h password='pa ss\\\\'wd' user=u\"\n"
	                    "    password: INLINE-S3CRET\n"
	                    "    restore_target: t\n"
	                    "restore_targets:\n"
	                    "  t: { conninfo: \"postgresql://u:URI-S3CRET@h/db?password=Q-S3CRET&x=1\" }\n"
	                    "notifiers:\n"
	                    "  s: { type: slack, webhook_url_file: %s }\n"
	                    "  h: { type: heartbeat, url: env:PGVIGIL_TEST_HB }\n",
	                    file);
	struct pv_config *cfg;
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);
	char *expect;

	setenv("PGVIGIL_TEST_HB", "https://hc.example/ENV-S3CRET", 1);
	cfg = load_ok(yaml, &diag);
	ck_assert(has_warning(&diag, "databases.db.conninfo: conninfo contains a password"));
	pv_config_dump(cfg, f);
	fclose(f);
	ck_assert_ptr_null(strstr(out, "S3CRET"));
	ck_assert_ptr_null(strstr(out, "wd'"));
	ck_assert_ptr_nonnull(strstr(out, "password: \"<redacted: inline>\""));
	expect = pv_asprintf("webhook_url: \"<redacted: file:%s>\"", file);
	ck_assert_ptr_nonnull(strstr(out, expect));
	ck_assert_ptr_nonnull(strstr(out, "url: \"<redacted: env:PGVIGIL_TEST_HB>\""));
	ck_assert_ptr_nonnull(strstr(out, "conninfo: host=h password=**** user=u"));
	ck_assert_ptr_nonnull(strstr(out, "postgresql://u:****@h/db?password=****&x=1"));
	unsetenv("PGVIGIL_TEST_HB");
	free(expect);
	free(out);
	free(yaml);
	pv_config_unref(cfg);
	pv_config_diag_free(&diag);
}
END_TEST

START_TEST(test_config__dump_round_trips)
{
	struct pv_config_diag diag = {0}, diag2 = {0};
	const char *yaml =
	        "daemon: { admins: [root, \"@ops\"], timezone: Europe/Paris, metrics_listen: \"[::1]:9187\" "
	        "}\n"
	        "databases:\n"
	        "  db: { conninfo: \"dbname=x\", critical_tables: [\"a b\", \"c:d\"], expected_tables: 0,\n"
	        "        objectives: { rpo: 1d1h, rto: 90m }, restore_target: t,\n"
	        "        assertions: [\"SELECT true # comment-like\", \"SELECT 'x'\"] }\n"
	        "restore_targets: { t: { conninfo: \"\" } }\n"
	        "jobs:\n"
	        "  b: { type: backup, database: db, schedule: \"* * * * *\", keep: 2, tier: \"null\",\n"
	        "       exclude_table_data: [\"-x\"], timezone: Asia/Tokyo, jitter: 30s, grace: 10m }\n"
	        "  p: { type: restore_probe, database: db, every: 1w, timeout: 2h }\n"
	        "notifiers:\n"
	        "  m: { type: email, smtp_url: \"smtp://h:25\", starttls: none, from: \"x <a@b>\", to: "
	        "[c@d], digest: \"@weekly\", severities: [info] }\n";
	struct pv_config *cfg = load_ok(yaml, &diag);
	struct pv_config *cfg2;
	char *out = NULL, *out2 = NULL;
	size_t len = 0, len2 = 0;
	FILE *f = open_memstream(&out, &len);

	pv_config_dump(cfg, f);
	fclose(f);
	cfg2 = load_ok(out, &diag2);
	f = open_memstream(&out2, &len2);
	pv_config_dump(cfg2, f);
	fclose(f);
	ck_assert_str_eq(out, out2);
	ck_assert_ptr_nonnull(strstr(out, "    objectives:\n      rpo: 1d1h\n      rto: 1h30m\n"));
	ck_assert_ptr_nonnull(strstr(out, "    timezone: Asia/Tokyo\n"));
	pv_config_unref(cfg);
	pv_config_unref(cfg2);
	pv_config_diag_free(&diag);
	pv_config_diag_free(&diag2);
	free(out);
	free(out2);
}
END_TEST

/* Inputs that found bugs with the config fuzz target (tests/fuzz/README.md): each either fails to load,
 * or loads into jobs the planner accepts as the daemon hands them over, and prints a configuration that
 * loads again and prints the same (unless it holds secrets, which are printed redacted). */
START_TEST(test_config__fuzz_regressions)
{
	const char *dir_name = "tests/fuzz/regress/config";
	DIR *dir = opendir(dir_name);
	struct dirent *de;
	int files = 0;

	ck_assert_msg(dir != NULL, "%s: %s (run from the source tree)", dir_name, strerror(errno));
	while ((de = readdir(dir)) != NULL) {
		struct pv_config_diag diag = {0}, diag2 = {0};
		struct pv_error err;
		struct pv_config *cfg, *again;
		struct pv_sched *sched;
		struct pv_sched_job *jobs;
		char *path, *out = NULL, *out2 = NULL;
		size_t len = 0, len2 = 0;
		FILE *f;

		if (de->d_name[0] == '.')
			continue;
		files++;
		path = pv_asprintf("%s/%s", dir_name, de->d_name);
		cfg = pv_config_load(path, &diag, &err);
		if (cfg == NULL) {
			ck_assert_msg(diag.errors.n > 0, "%s: failed without an error", path);
			pv_config_diag_free(&diag);
			free(path);
			continue;
		}
		jobs = pv_calloc(cfg->n_jobs + 1, sizeof(*jobs));
		for (size_t i = 0; i < cfg->n_jobs; i++)
			jobs[i] = (struct pv_sched_job){
			        .name = cfg->jobs[i].name,
			        .cron = cfg->jobs[i].cron,
			        .tz = cfg->jobs[i].tz,
			        .every = (double)cfg->jobs[i].every,
			        .jitter = (int)cfg->jobs[i].jitter,
			        .grace = (int)cfg->jobs[i].grace,
			        .catch_up = cfg->jobs[i].catch_up,
			        .heavy = cfg->jobs[i].heavy,
			};
		sched = pv_sched_new(cfg->daemon.max_parallel_jobs);
		ck_assert_msg(pv_sched_configure(sched, jobs, cfg->n_jobs, 1795485600, 1000.0, &err),
		              "%s: the planner refuses its jobs: %s", path, err.msg);
		f = open_memstream(&out, &len);
		pv_config_dump(cfg, f);
		fclose(f);
		again = pv_config_load_string(path, out, &diag2, &err);
		ck_assert_msg(again != NULL, "%s: the printed configuration does not load: %s\n%s", path,
		              err.msg, out);
		f = open_memstream(&out2, &len2);
		pv_config_dump(again, f);
		fclose(f);
		ck_assert_msg(strcmp(out, out2) == 0 || strstr(out, "<redacted: ") != NULL,
		              "%s: the printed configuration loads differently:\n%s\n---\n%s", path, out,
		              out2);
		free(out2);
		out2 = NULL;
		pv_config_unref(again);
		pv_sched_free(sched);
		free(jobs);
		free(out);
		pv_config_unref(cfg);
		pv_config_diag_free(&diag);
		pv_config_diag_free(&diag2);
		free(path);
	}
	closedir(dir);
	ck_assert_int_gt(files, 0);
}
END_TEST

/* Found with the config fuzz target's round trip: "%g" printed factor 1.0000001 as 1, which the loader
 * refuses; NEL, LS and PS were printed raw, which YAML reads as line breaks, and the other C1 controls,
 * U+FFFE and U+FFFF, which YAML refuses. */
START_TEST(test_config__dump_round_trips_edge_values)
{
	struct pv_config_diag diag = {0}, diag2 = {0};
	struct pv_config *cfg = load_ok(
	        BASE_DB "    critical_tables: [\"a\\u2028b\", \"x\\u0085y\", \"p\\u2029\", \"\\u0084\", "
	                "\"\\ufffe\"]\n"
	                "alerts:\n  rules:\n    backup_slow: { factor: 1.0000001 }\n"
	                "    backup_size_anomaly: { change: 33.3% }\n"
	                "    storage_usage: { above: 99.99999% }\n",
	        &diag);
	struct pv_config *cfg2;
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);

	pv_config_dump(cfg, f);
	fclose(f);
	ck_assert_ptr_nonnull(
	        strstr(out, "critical_tables: [\"a\\Lb\", \"x\\x85y\", \"p\\P\", \"\\x84\", \"\\uFFFE\"]\n"));
	ck_assert_ptr_nonnull(strstr(out, "factor: 1.0000001 }"));
	ck_assert_ptr_nonnull(strstr(out, "change: \"33.3%\" }"));
	cfg2 = load_ok(out, &diag2);
	ck_assert(cfg2->alerts.rules[PV_RULE_BACKUP_SLOW].factor ==
	          cfg->alerts.rules[PV_RULE_BACKUP_SLOW].factor);
	ck_assert(cfg2->alerts.rules[PV_RULE_STORAGE_USAGE].above ==
	          cfg->alerts.rules[PV_RULE_STORAGE_USAGE].above);
	ck_assert(cfg2->alerts.rules[PV_RULE_BACKUP_SIZE_ANOMALY].change ==
	          cfg->alerts.rules[PV_RULE_BACKUP_SIZE_ANOMALY].change);
	for (size_t i = 0; i < 5; i++)
		ck_assert_str_eq(cfg2->databases[0].critical_tables.v[i],
		                 cfg->databases[0].critical_tables.v[i]);
	pv_config_unref(cfg);
	pv_config_unref(cfg2);
	pv_config_diag_free(&diag);
	pv_config_diag_free(&diag2);
	free(out);
}
END_TEST

START_TEST(test_config__defaults)
{
	struct pv_config_diag diag = {0};
	struct pv_config *cfg = load_ok(
	        BASE_DB "jobs:\n"
	                "  nightly: { type: backup, database: db, schedule: \"@daily\", keep: 3 }\n"
	                "  weekly-full: { type: backup, database: db, schedule: \"@weekly\", keep: 3 }\n"
	                "  h: { type: health, database: db, every: 30s }\n"
	                "  s: { type: storage, every: 15m }\n",
	        &diag);
	const struct pv_config_job *b = pv_config_job_find(cfg, "nightly");
	const struct pv_config_job *h = pv_config_job_find(cfg, "h");
	const struct pv_config_job *s = pv_config_job_find(cfg, "s");

	ck_assert_str_eq(cfg->path, "t.yaml");
	ck_assert_str_eq(cfg->daemon.state_dir, "/var/lib/pgvigil");
	ck_assert_str_eq(cfg->daemon.socket, "/run/pgvigil/pgvigil.sock");
	ck_assert_uint_eq(cfg->daemon.admins.n, 1);
	ck_assert_str_eq(cfg->daemon.admins.v[0], "root");
	ck_assert_str_eq(cfg->daemon.timezone, "UTC");
	ck_assert_int_eq(cfg->daemon.max_parallel_jobs, 2);
	ck_assert_int_eq(cfg->daemon.log_level, PV_LOG_INFO);
	ck_assert_ptr_null(cfg->daemon.metrics_listen);
	ck_assert_int_eq(cfg->daemon.keep_history, 90 * 86400);
	ck_assert_ptr_null(cfg->daemon.pg_bin_dir);
	ck_assert_str_eq(cfg->storage.path, "/var/lib/pgvigil/backups");
	ck_assert_int_eq(cfg->storage.compression, PV_COMPRESSION_ZSTD);
	ck_assert_int_eq(cfg->storage.compression_level, 3);
	ck_assert_ptr_null(cfg->storage.encryption_key_file);
	ck_assert_int_eq(cfg->databases[0].expected_tables, -1);
	ck_assert_int_eq(cfg->databases[0].rpo, 0);
	ck_assert_ptr_null(cfg->databases[0].password.value);
	ck_assert_int_eq(cfg->alerts.group_wait, 30);
	ck_assert_int_eq(cfg->alerts.repeat_every, 4 * 3600);
	ck_assert(cfg->alerts.send_resolved);

	ck_assert(b->catch_up);
	ck_assert(b->heavy);
	ck_assert_int_eq(b->grace, 300);
	ck_assert_int_eq(b->every, 0);
	ck_assert_ptr_nonnull(b->cron);
	ck_assert_int_eq(b->jitter, 0);
	ck_assert_int_eq(b->timeout, 0);
	ck_assert_int_eq(pv_config_job_timeout(b), 6 * 3600);
	ck_assert_str_eq(b->tier, "nightly");
	ck_assert_str_eq(pv_config_job_find(cfg, "weekly-full")->tier, "weekly");
	ck_assert(!b->schema_copy);
	ck_assert_str_eq(pv_tz_name(b->tz), "UTC");

	ck_assert(!h->catch_up);
	ck_assert(!h->heavy);
	ck_assert_int_eq(h->every, 30);
	ck_assert_ptr_null(h->cron);
	ck_assert_int_eq(h->grace, 60);
	ck_assert_int_eq(pv_config_job_timeout(h), 30);
	ck_assert(!s->heavy);
	ck_assert_int_eq(s->grace, 900);
	ck_assert_ptr_null(s->database);
	ck_assert_ptr_null(s->database_name);
	ck_assert_ptr_null(pv_config_job_find(cfg, "nope"));
	pv_config_unref(cfg);
	pv_config_diag_free(&diag);
}
END_TEST

START_TEST(test_config__all_rules_with_defaults)
{
	static const struct {
		const char *name;
		enum pv_severity sev;
	} want[PV_RULE_COUNT] = {
	        {"backup_stale", PV_SEV_CRITICAL},       {"connectivity_lost", PV_SEV_CRITICAL},
	        {"restore_failures", PV_SEV_CRITICAL},   {"rpo_breach", PV_SEV_CRITICAL},
	        {"backup_size_anomaly", PV_SEV_WARNING}, {"backup_slow", PV_SEV_WARNING},
	        {"storage_usage", PV_SEV_WARNING},       {"rto_breach", PV_SEV_WARNING},
	        {"backup_succeeded", PV_SEV_INFO},       {"restore_probe_result", PV_SEV_INFO},
	        {"drill_summary", PV_SEV_INFO},          {"job_missed", PV_SEV_WARNING},
	        {"notifier_broken", PV_SEV_CRITICAL},
	};
	struct pv_config_diag diag = {0};
	struct pv_config *cfg = load_ok(BASE_DB, &diag);
	const struct pv_config_rule *r = cfg->alerts.rules;

	ck_assert_uint_eq(cfg->alerts.n_rules, 13);
	for (int i = 0; i < PV_RULE_COUNT; i++) {
		ck_assert_str_eq(r[i].name, want[i].name);
		ck_assert_int_eq(r[i].id, i);
		ck_assert_int_eq(r[i].severity, want[i].sev);
		ck_assert(r[i].enabled);
		ck_assert_ptr_eq(pv_config_rule_find(cfg, want[i].name), &r[i]);
	}
	ck_assert_int_eq(r[PV_RULE_BACKUP_STALE].after, 86400);
	ck_assert_int_eq(r[PV_RULE_CONNECTIVITY_LOST].after, 300);
	ck_assert_int_eq(r[PV_RULE_RESTORE_FAILURES].consecutive, 3);
	ck_assert_double_eq_tol(r[PV_RULE_BACKUP_SIZE_ANOMALY].change, 0.5, 1e-9);
	ck_assert_double_eq_tol(r[PV_RULE_BACKUP_SLOW].factor, 2.0, 1e-9);
	ck_assert_double_eq_tol(r[PV_RULE_STORAGE_USAGE].above, 0.8, 1e-9);
	ck_assert_ptr_null(pv_config_rule_find(cfg, "nope"));
	pv_config_unref(cfg);
	pv_config_diag_free(&diag);
}
END_TEST

START_TEST(test_config__rule_overrides)
{
	struct pv_config_diag diag = {0};
	struct pv_config *cfg = load_ok(BASE_DB "alerts:\n"
	                                        "  group_wait: 0s\n"
	                                        "  repeat_every: 1h30m\n"
	                                        "  send_resolved: false\n"
	                                        "  rules:\n"
	                                        "    backup_stale: { after: 2d, severity: warning }\n"
	                                        "    connectivity_lost:\n"
	                                        "      after: 90s\n"
	                                        "    restore_failures: { consecutive: 1 }\n"
	                                        "    backup_size_anomaly: { change: 12.5% }\n"
	                                        "    backup_slow: { factor: 3.5 }\n"
	                                        "    storage_usage: { above: 95%, enabled: false }\n"
	                                        "    backup_succeeded:\n"
	                                        "    job_missed: { severity: critical }\n",
	                                &diag);
	const struct pv_config_rule *r = cfg->alerts.rules;

	ck_assert_int_eq(cfg->alerts.group_wait, 0);
	ck_assert_int_eq(cfg->alerts.repeat_every, 5400);
	ck_assert(!cfg->alerts.send_resolved);
	ck_assert_int_eq(r[PV_RULE_BACKUP_STALE].after, 2 * 86400);
	ck_assert_int_eq(r[PV_RULE_BACKUP_STALE].severity, PV_SEV_WARNING);
	ck_assert_int_eq(r[PV_RULE_CONNECTIVITY_LOST].after, 90);
	ck_assert_int_eq(r[PV_RULE_RESTORE_FAILURES].consecutive, 1);
	ck_assert_double_eq_tol(r[PV_RULE_BACKUP_SIZE_ANOMALY].change, 0.125, 1e-9);
	ck_assert_double_eq_tol(r[PV_RULE_BACKUP_SLOW].factor, 3.5, 1e-9);
	ck_assert_double_eq_tol(r[PV_RULE_STORAGE_USAGE].above, 0.95, 1e-9);
	ck_assert(!r[PV_RULE_STORAGE_USAGE].enabled);
	ck_assert(r[PV_RULE_BACKUP_SUCCEEDED].enabled);
	ck_assert_int_eq(r[PV_RULE_BACKUP_SUCCEEDED].severity, PV_SEV_INFO);
	ck_assert_int_eq(r[PV_RULE_JOB_MISSED].severity, PV_SEV_CRITICAL);
	ck_assert_int_eq(r[PV_RULE_RPO_BREACH].severity, PV_SEV_CRITICAL);
	pv_config_unref(cfg);
	pv_config_diag_free(&diag);
}
END_TEST

START_TEST(test_config__references_resolved)
{
	struct pv_config_diag diag = {0};
	struct pv_config *cfg =
	        load_ok("restore_targets:\n  t1: { conninfo: a }\n  t2: { conninfo: b }\n"
	                "databases:\n"
	                "  one: { conninfo: x, restore_target: t2 }\n"
	                "  two: { conninfo: y }\n"
	                "jobs:\n"
	                "  b2: { type: backup, database: two, every: 1d, keep: 1 }\n"
	                "  p1: { type: restore_probe, database: one, schedule: \"0 4 * * 0\" }\n"
	                "  v: { type: verify, every: 1d }\n"
	                "  v1: { type: verify, database: one, every: 1d }\n",
	                &diag);

	ck_assert_ptr_eq(cfg->databases[0].restore_target, &cfg->restore_targets[1]);
	ck_assert_str_eq(cfg->databases[0].restore_target_name, "t2");
	ck_assert_ptr_null(cfg->databases[1].restore_target);
	ck_assert_ptr_eq(pv_config_job_find(cfg, "b2")->database, &cfg->databases[1]);
	ck_assert_ptr_eq(pv_config_job_find(cfg, "p1")->database, &cfg->databases[0]);
	ck_assert_ptr_eq(pv_config_job_find(cfg, "p1")->database->restore_target, &cfg->restore_targets[1]);
	ck_assert_ptr_null(pv_config_job_find(cfg, "v")->database);
	ck_assert_ptr_eq(pv_config_job_find(cfg, "v1")->database, pv_config_database_find(cfg, "one"));
	ck_assert_ptr_null(pv_config_database_find(cfg, "three"));
	ck_assert(has_warning(&diag, "t.yaml:5:3: databases.one: no backup job backs up this database"));
	pv_config_unref(cfg);
	pv_config_diag_free(&diag);
}
END_TEST

START_TEST(test_config__job_timezone_precedence)
{
	struct pv_config_diag diag = {0};
	struct pv_config *cfg =
	        load_ok("daemon: { timezone: America/New_York }\n" BASE_DB "jobs:\n"
	                "  a: { type: verify, schedule: \"0 1 * * *\" }\n"
	                "  b: { type: verify, schedule: \"0 1 * * *\", timezone: Europe/Paris }\n",
	                &diag);

	ck_assert_str_eq(pv_tz_name(pv_config_job_find(cfg, "a")->tz), "America/New_York");
	ck_assert_str_eq(pv_tz_name(pv_config_job_find(cfg, "b")->tz), "Europe/Paris");
	pv_config_unref(cfg);
	pv_config_diag_free(&diag);
}
END_TEST

START_TEST(test_config__backup_keys)
{
	struct pv_config_diag diag = {0};
	struct pv_config *cfg = load_ok(BASE_DB "jobs:\n"
	                                        "  b:\n"
	                                        "    type: backup\n"
	                                        "    database: db\n"
	                                        "    schedule: \"30 2 * * 0\"\n"
	                                        "    keep: 4\n"
	                                        "    tier: weekly\n"
	                                        "    schemas: [public, app]\n"
	                                        "    exclude_schemas:\n"
	                                        "      - auth\n"
	                                        "      - storage\n"
	                                        "    exclude_table_data: [audit_log]\n"
	                                        "    schema_copy: true\n"
	                                        "    timeout: 2h\n"
	                                        "    jitter: 1m\n"
	                                        "    catch_up: false\n"
	                                        "    grace: 1h\n",
	                                &diag);
	const struct pv_config_job *b = &cfg->jobs[0];

	ck_assert_int_eq(b->keep, 4);
	ck_assert_str_eq(b->tier, "weekly");
	ck_assert_uint_eq(b->schemas.n, 2);
	ck_assert_str_eq(b->schemas.v[1], "app");
	ck_assert_uint_eq(b->exclude_schemas.n, 2);
	ck_assert_str_eq(b->exclude_schemas.v[1], "storage");
	ck_assert_str_eq(b->exclude_table_data.v[0], "audit_log");
	ck_assert(b->schema_copy);
	ck_assert_int_eq(pv_config_job_timeout(b), 7200);
	ck_assert_int_eq(b->jitter, 60);
	ck_assert(!b->catch_up);
	ck_assert_int_eq(b->grace, 3600);
	pv_config_unref(cfg);
	pv_config_diag_free(&diag);
}
END_TEST

START_TEST(test_config__warnings)
{
	struct pv_config_diag diag = {0};
	struct pv_config *cfg =
	        load_ok("databases:\n"
	                "  a: { conninfo: x, objectives: { rpo: 4h, rto: 1h } }\n"
	                "  b: { conninfo: y, objectives: { rpo: 4h } }\n"
	                "  c: { conninfo: z, objectives: { rpo: 2d } }\n"
	                "jobs:\n"
	                "  a-daily: { type: backup, database: a, schedule: \"0 2 * * *\", keep: 7 }\n"
	                "  b-daily: { type: backup, database: b, schedule: \"0 2 * * *\", keep: 7 }\n"
	                "  b-often: { type: backup, database: b, every: 4h, keep: 7 }\n"
	                "  c-daily: { type: backup, database: c, schedule: \"0 2 * * *\", keep: 7 }\n"
	                "  h: { type: health, database: a, every: 1m, catch_up: true }\n",
	                &diag);

	ck_assert(has_warning(&diag,
	                      "t.yaml:2:3: databases.a: objectives.rpo (4h) is shorter than the longest gap "
	                      "between its scheduled backups (1d)"));
	ck_assert(has_warning(&diag, "t.yaml:2:3: databases.a: objectives.rto is set but no restore_probe"));
	ck_assert(!has_warning(&diag, "databases.b:"));
	ck_assert(!has_warning(&diag, "databases.c:"));
	ck_assert(has_warning(&diag, "t.yaml:10:46: jobs.h.catch_up: has no effect"));
	ck_assert(has_warning(&diag, "no notifiers"));
	ck_assert(!pv_config_job_find(cfg, "h")->catch_up);
	pv_config_unref(cfg);
	pv_config_diag_free(&diag);
}
END_TEST

START_TEST(test_config__durations)
{
	static const struct {
		const char *s;
		int64_t v;
		const char *fmt;
	} ok[] = {
	        {"30s", 30, "30s"},         {"5m", 300, "5m"},
	        {"4h", 14400, "4h"},        {"7d", 604800, "1w"},
	        {"2w", 1209600, "2w"},      {"1h30m", 5400, "1h30m"},
	        {"90", 90, "1m30s"},        {"0", 0, "0s"},
	        {"1d12h", 129600, "1d12h"}, {"1w2d3h4m5s", 788645, "1w2d3h4m5s"},
	        {"120m", 7200, "2h"},
	};
	static const char *const bad[] = {"",
	                                  "s",
	                                  "5x",
	                                  "1h1h",
	                                  "30m1h",
	                                  "-5m",
	                                  "1.5h",
	                                  " 5m",
	                                  "5m ",
	                                  "1h 30m",
	                                  "99999999999999999999s",
	                                  "4 h"};
	char buf[32];

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		int64_t v = -1;
		ck_assert_msg(pv_duration_parse(ok[i].s, &v), "%s", ok[i].s);
		ck_assert_int_eq(v, ok[i].v);
		ck_assert_str_eq(pv_duration_format(v, buf, sizeof(buf)), ok[i].fmt);
	}
	for (size_t i = 1; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int64_t v;
		ck_assert_msg(!pv_duration_parse(bad[i], &v), "accepted '%s'", bad[i]);
	}
	ck_assert(!pv_duration_parse("", NULL));
}
END_TEST

START_TEST(test_config__names)
{
	ck_assert_str_eq(pv_job_type_name(PV_JOB_BACKUP), "backup");
	ck_assert_str_eq(pv_job_type_name(PV_JOB_RESTORE_PROBE), "restore_probe");
	ck_assert_str_eq(pv_job_type_name(PV_JOB_DRILL), "drill");
	ck_assert_str_eq(pv_job_type_name(PV_JOB_TYPE_COUNT), "unknown");
	ck_assert_str_eq(pv_severity_name(PV_SEV_CRITICAL), "critical");
	ck_assert_str_eq(pv_severity_name(PV_SEV_INFO), "info");
}
END_TEST

START_TEST(test_config__refcount)
{
	struct pv_config_diag diag = {0};
	struct pv_config *cfg = load_ok(BASE_DB, &diag);

	ck_assert_ptr_eq(pv_config_ref(cfg), cfg);
	ck_assert_int_eq(cfg->refcount, 2);
	pv_config_unref(cfg);
	ck_assert_int_eq(cfg->refcount, 1);
	ck_assert_str_eq(cfg->databases[0].name, "db");
	pv_config_unref(cfg); /* frees; ASan reports a leak or a use-after-free otherwise */
	pv_config_unref(NULL);
	ck_assert_ptr_null(pv_config_ref(NULL));
	pv_config_diag_free(&diag);
	pv_config_diag_free(NULL);
}
END_TEST

START_TEST(test_config__load_file_errors)
{
	struct pv_config_diag diag = {0};
	struct pv_error err;
	char *missing = pv_asprintf("%s/none.yaml", tmpdir);
	const char *bad = tmp_file(0, "bad.yaml", "daemon:\n  socket: [x]\n", 0600);
	char *prefix = pv_asprintf("%s:2:3: daemon.socket: ", bad);

	ck_assert_ptr_null(pv_config_load(missing, &diag, &err));
	ck_assert_int_eq(err.code, PV_ERR_IO);
	ck_assert_ptr_nonnull(strstr(err.msg, "No such file"));
	pv_config_diag_free(&diag);
	ck_assert_ptr_null(pv_config_load(bad, NULL, &err));
	ck_assert_int_eq(err.code, PV_ERR_CONFIG_TYPE);
	ck_assert_msg(strncmp(err.msg, prefix, strlen(prefix)) == 0, "%s", err.msg);
	free(prefix);
	free(missing);
}
END_TEST

START_TEST(test_config__world_readable_inline_secret_warns)
{
	struct pv_config_diag diag = {0};
	struct pv_error err;
	const char *open_file = tmp_file(0, "open.yaml", BASE_DB "    password: inline\n", 0644);
	const char *closed = tmp_file(1, "closed.yaml", BASE_DB "    password: inline\n", 0600);
	struct pv_config *cfg = pv_config_load(open_file, &diag, &err);

	ck_assert_ptr_nonnull(cfg);
	ck_assert(has_warning(&diag, "readable by others and holds inline secrets"));
	pv_config_unref(cfg);
	pv_config_diag_free(&diag);
	cfg = pv_config_load(closed, &diag, &err);
	ck_assert_ptr_nonnull(cfg);
	ck_assert(!has_warning(&diag, "inline secrets"));
	pv_config_unref(cfg);
	pv_config_diag_free(&diag);
}
END_TEST

START_TEST(test_config__encryption_key_files)
{
	struct pv_config_diag diag = {0};
	/* 32 raw bytes (not all hex digits: 32 hex digits would be a 128-bit key, refused below). */
	const char *raw = tmp_file(0, "raw.key", "0123456789abcdef0123456789abcdeZ", 0600);
	const char *hex128 = tmp_file(4, "hex128.key", "0123456789abcdef0123456789abcdef", 0600);
	const char *hex = tmp_file(
	        1, "hex.key", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n", 0400);
	const char *open_key = tmp_file(2, "open.key", "0123456789abcdef0123456789abcdef", 0644);
	const char *short_key = tmp_file(3, "short.key", "abc\n", 0600);
	char *yaml =
	        pv_asprintf(BASE_DB "storage: { encryption_key_file: %s, old_key_files: [%s] }\n", raw, hex);
	struct pv_config *cfg = load_ok(yaml, &diag);

	ck_assert_str_eq(cfg->storage.encryption_key_file, raw);
	ck_assert_str_eq(cfg->storage.old_key_files.v[0], hex);
	pv_config_unref(cfg);
	pv_config_diag_free(&diag);
	free(yaml);

	yaml = pv_asprintf("storage:\n  encryption_key_file: %s\n", open_key);
	expect_error(yaml, PV_ERR_CONFIG_SECRET, "2:3", "storage.encryption_key_file", "mode 0644");
	free(yaml);
	yaml = pv_asprintf("storage:\n  encryption_key_file: %s\n", hex128);
	expect_error(yaml, PV_ERR_CONFIG_SECRET, "2:3", "storage.encryption_key_file", "128-bit key");
	free(yaml);
	yaml = pv_asprintf("storage:\n  old_key_files:\n    - %s\n", short_key);
	expect_error(yaml, PV_ERR_CONFIG_SECRET, "3:7", "storage.old_key_files[0]",
	             "32 raw bytes or 64 hex digits");
	free(yaml);
}
END_TEST

START_TEST(test_config__example_loads)
{
	struct pv_config_diag diag = {0};
	struct pv_error err;
	const char *srcdir = getenv("PGVIGIL_SRCDIR");
	char *path = pv_asprintf("%s/etc/pgvigil.yaml", srcdir != NULL ? srcdir : ".");
	struct pv_config *cfg;
	const struct pv_config_job *j;
	char *out = NULL;
	size_t len = 0;
	FILE *f;

	setenv("PGVIGIL_PRODUCTION_PASSWORD", "PROD-S3CRET", 1);
	setenv("PGVIGIL_SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/SLACK-S3CRET", 1);
	setenv("PGVIGIL_SMTP_PASSWORD", "SMTP-S3CRET", 1);
	cfg = pv_config_load(path, &diag, &err);
	for (size_t i = 0; i < diag.errors.n; i++)
		fprintf(stderr, "%s\n", diag.errors.v[i]);
	ck_assert_ptr_nonnull(cfg);
	ck_assert_uint_eq(diag.errors.n, 0);
	ck_assert_uint_eq(cfg->n_jobs, 9);
	ck_assert_uint_eq(cfg->n_notifiers, 2);
	ck_assert_uint_eq(cfg->alerts.n_rules, 13);
	j = pv_config_job_find(cfg, "daily-backup");
	ck_assert_int_eq(j->keep, 7);
	ck_assert_str_eq(pv_cron_text(j->cron), "0 2 * * *");
	ck_assert_int_eq(pv_config_job_find(cfg, "weekly-backup")->keep, 4);
	ck_assert_int_eq(pv_config_job_find(cfg, "monthly-backup")->keep, 12);
	ck_assert_int_eq(pv_config_job_find(cfg, "health")->every, 60);
	ck_assert_int_eq(pv_config_job_find(cfg, "storage")->every, 900);
	ck_assert_int_eq(pv_config_job_find(cfg, "restore-test")->type, PV_JOB_RESTORE_PROBE);
	ck_assert_int_eq(pv_config_job_find(cfg, "dr-drill")->type, PV_JOB_DRILL);
	ck_assert_int_eq(cfg->databases[0].rpo, 4 * 3600);
	ck_assert_int_eq(cfg->databases[0].rto, 3600);
	f = open_memstream(&out, &len);
	pv_config_dump(cfg, f);
	fclose(f);
	ck_assert_ptr_null(strstr(out, "S3CRET"));
	free(out);
	unsetenv("PGVIGIL_PRODUCTION_PASSWORD");
	unsetenv("PGVIGIL_SLACK_WEBHOOK_URL");
	unsetenv("PGVIGIL_SMTP_PASSWORD");
	pv_config_unref(cfg);
	pv_config_diag_free(&diag);
	free(path);
}
END_TEST

START_TEST(test_config__diag_optional)
{
	struct pv_error err;
	struct pv_config *cfg = pv_config_load_string("t.yaml", BASE_DB, NULL, NULL);

	ck_assert_ptr_nonnull(cfg);
	pv_config_unref(cfg);
	ck_assert_ptr_null(pv_config_load_string("t.yaml", "daemon: 1\n", NULL, &err));
	ck_assert_int_eq(err.code, PV_ERR_CONFIG_TYPE);
	ck_assert_ptr_null(pv_config_load_string("t.yaml", "daemon: 1\n", NULL, NULL));
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_unchecked_fixture(tc, tmp_setup, tmp_teardown);
	tcase_add_loop_test(tc, test_config__error_table, 0,
	                    (int)(sizeof(error_cases) / sizeof(error_cases[0])));
	tcase_add_test(tc, test_config__all_errors_collected_in_file_order);
	tcase_add_test(tc, test_config__secret_never_in_errors);
	tcase_add_test(tc, test_config__secret_file_0600_ok);
	tcase_add_test(tc, test_config__secret_file_only_one_newline_stripped);
	tcase_add_test(tc, test_config__secret_file_0644_refused);
	tcase_add_test(tc, test_config__secret_file_0640_refused);
	tcase_add_test(tc, test_config__secret_file_missing);
	tcase_add_test(tc, test_config__secret_file_not_regular);
	tcase_add_test(tc, test_config__secret_file_empty);
	tcase_add_test(tc, test_config__secret_env_set);
	tcase_add_test(tc, test_config__secret_env_empty);
	tcase_add_test(tc, test_config__secret_inline);
	tcase_add_test(tc, test_config__secret_both_forms_refused);
	tcase_add_test(tc, test_config__secret_forms_on_notifiers);
	tcase_add_test(tc, test_config__dump_redacts_secrets);
	tcase_add_test(tc, test_config__dump_round_trips);
	tcase_add_test(tc, test_config__defaults);
	tcase_add_test(tc, test_config__all_rules_with_defaults);
	tcase_add_test(tc, test_config__rule_overrides);
	tcase_add_test(tc, test_config__references_resolved);
	tcase_add_test(tc, test_config__job_timezone_precedence);
	tcase_add_test(tc, test_config__backup_keys);
	tcase_add_test(tc, test_config__warnings);
	tcase_add_test(tc, test_config__durations);
	tcase_add_test(tc, test_config__fuzz_regressions);
	tcase_add_test(tc, test_config__dump_round_trips_edge_values);
	tcase_add_test(tc, test_config__names);
	tcase_add_test(tc, test_config__refcount);
	tcase_add_test(tc, test_config__load_file_errors);
	tcase_add_test(tc, test_config__world_readable_inline_secret_warns);
	tcase_add_test(tc, test_config__encryption_key_files);
	tcase_add_test(tc, test_config__example_loads);
	tcase_add_test(tc, test_config__diag_optional);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
