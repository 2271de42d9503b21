/* Configuration loading: the pgvigil.yaml schema (SPEC §3), validation, references, refcounting. */
#include "config/config.h"

#include <ctype.h>
#include <time.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "config/internal.h"
#include "pg/pg.h"
#include "sched/cron.h"
#include "util/mem.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

#define JT(x) (1u << PV_JOB_##x)
#define NT(x) (1u << PV_NOTIFIER_##x)

static const char *const job_type_names[] = {"backup",  "health",        "integrity", "verify",
                                             "storage", "restore_probe", "drill",     NULL};
static const char *const job_kind_names[] = {"a backup job", "a health job",  "an integrity job",
                                             "a verify job", "a storage job", "a restore_probe job",
                                             "a drill job"};
static const char *const notifier_type_names[] = {"slack", "webhook", "email", "heartbeat", NULL};
static const char *const notifier_kind_names[] = {"a slack notifier", "a webhook notifier",
                                                  "an email notifier", "a heartbeat notifier"};
static const char *const severity_names[] = {"info", "warning", "critical"};
static const char *const compression_names[] = {"zstd", "none"};
static const char *const starttls_names[] = {"required", "implicit", "none"};
static const char *const heartbeat_method_names[] = {"GET", "POST"};

static const struct keydef top_keys[] = {
        {"daemon", 0}, {"storage", 0}, {"databases", 0}, {"restore_targets", 0},
        {"jobs", 0},   {"alerts", 0},  {"notifiers", 0},
};
static const struct keydef daemon_keys[] = {
        {"state_dir", 0},         {"socket", 0},    {"admins", 0},         {"timezone", 0},
        {"max_parallel_jobs", 0}, {"log_level", 0}, {"metrics_listen", 0}, {"pg_bin_dir", 0},
        {"keep_history", 0},
};
static const struct keydef storage_keys[] = {
        {"path", 0},          {"compression", 0}, {"compression_level", 0}, {"encryption_key_file", 0},
        {"old_key_files", 0},
};
static const struct keydef database_keys[] = {
        {"conninfo", 0},        {"password", 0},   {"password_file", 0},  {"critical_tables", 0},
        {"expected_tables", 0}, {"objectives", 0}, {"restore_target", 0}, {"assertions", 0},
};
static const struct keydef objectives_keys[] = {{"rpo", 0}, {"rto", 0}};
static const struct keydef target_keys[] = {{"conninfo", 0}, {"password", 0}, {"password_file", 0}};
static const struct keydef job_keys[] = {
        {"type", 0},
        {"database", 0},
        {"schedule", 0},
        {"every", 0},
        {"timezone", 0},
        {"timeout", 0},
        {"jitter", 0},
        {"catch_up", 0},
        {"grace", 0},
        {"keep", JT(BACKUP)},
        {"tier", JT(BACKUP)},
        {"schemas", JT(BACKUP)},
        {"exclude_schemas", JT(BACKUP)},
        {"exclude_table_data", JT(BACKUP)},
        {"schema_copy", JT(BACKUP)},
        {"keep_connection", JT(HEALTH)},
};
static const struct keydef alerts_keys[] = {
        {"group_wait", 0}, {"repeat_every", 0}, {"send_resolved", 0}, {"rules", 0}};
static const struct keydef notifier_keys[] = {
        {"type", 0},
        {"severities", NT(SLACK) | NT(WEBHOOK) | NT(EMAIL)},
        {"digest", NT(SLACK) | NT(WEBHOOK) | NT(EMAIL)},
        {"max_age", 0},
        {"webhook_url", NT(SLACK)},
        {"webhook_url_file", NT(SLACK)},
        {"url", NT(WEBHOOK) | NT(HEARTBEAT)},
        {"url_file", NT(WEBHOOK) | NT(HEARTBEAT)},
        {"secret", NT(WEBHOOK)},
        {"secret_file", NT(WEBHOOK)},
        {"smtp_url", NT(EMAIL)},
        {"starttls", NT(EMAIL)},
        {"username", NT(EMAIL)},
        {"password", NT(EMAIL)},
        {"password_file", NT(EMAIL)},
        {"from", NT(EMAIL)},
        {"to", NT(EMAIL)},
        {"every", NT(HEARTBEAT)},
        {"method", NT(HEARTBEAT)},
        {"ca_file", 0},
};

enum rule_param { P_NONE, P_AFTER, P_CONSECUTIVE, P_CHANGE, P_FACTOR, P_ABOVE };

static const struct {
	const char *name;
	enum pv_severity severity;
	enum rule_param param;
	double def;
} rule_defs[PV_RULE_COUNT] = {
        [PV_RULE_BACKUP_STALE] = {"backup_stale", PV_SEV_CRITICAL, P_AFTER, 24 * 3600},
        [PV_RULE_CONNECTIVITY_LOST] = {"connectivity_lost", PV_SEV_CRITICAL, P_AFTER, 5 * 60},
        [PV_RULE_RESTORE_FAILURES] = {"restore_failures", PV_SEV_CRITICAL, P_CONSECUTIVE, 3},
        [PV_RULE_RPO_BREACH] = {"rpo_breach", PV_SEV_CRITICAL, P_NONE, 0},
        [PV_RULE_BACKUP_SIZE_ANOMALY] = {"backup_size_anomaly", PV_SEV_WARNING, P_CHANGE, 0.5},
        [PV_RULE_BACKUP_SLOW] = {"backup_slow", PV_SEV_WARNING, P_FACTOR, 2.0},
        [PV_RULE_STORAGE_USAGE] = {"storage_usage", PV_SEV_WARNING, P_ABOVE, 0.8},
        [PV_RULE_RTO_BREACH] = {"rto_breach", PV_SEV_WARNING, P_NONE, 0},
        [PV_RULE_BACKUP_SUCCEEDED] = {"backup_succeeded", PV_SEV_INFO, P_NONE, 0},
        [PV_RULE_RESTORE_PROBE_RESULT] = {"restore_probe_result", PV_SEV_INFO, P_NONE, 0},
        [PV_RULE_DRILL_SUMMARY] = {"drill_summary", PV_SEV_INFO, P_NONE, 0},
        [PV_RULE_JOB_MISSED] = {"job_missed", PV_SEV_WARNING, P_NONE, 0},
        [PV_RULE_NOTIFIER_BROKEN] = {"notifier_broken", PV_SEV_CRITICAL, P_NONE, 0},
};
static const char *const param_names[] = {NULL, "after", "consecutive", "change", "factor", "above"};

/* Names become directory names (STORAGE/DATABASE/JOB) and metric labels: keep them plain. */
static bool
valid_name(const char *s)
{
	if (s[0] == '\0' || s[0] == '.' || s[0] == '-' || strlen(s) > 100)
		return false;
	for (; *s != '\0'; s++)
		if (!(isalnum((unsigned char)*s) || *s == '-' || *s == '_' || *s == '.'))
			return false;
	return true;
}

static bool
check_name(struct loader *ld, const yaml_node_t *key, const char *path, const char *what)
{
	if (valid_name(ld_scalar(key)))
		return true;
	ld_error(ld, PV_ERR_CONFIG_VALUE, key, path,
	         "invalid %s name: use letters, digits, '-', '_' and '.', not starting with '.' or '-' (at "
	         "most 100)",
	         what);
	return false;
}

static yaml_node_t *
section(struct loader *ld, const yaml_node_t *root, const char *key, yaml_node_t **key_node)
{
	return ld_get(ld, root, key, key_node);
}

/* A name-keyed section (databases, jobs, ...): a mapping of mappings; returns the entry count. */
static size_t
named_section(struct loader *ld, const yaml_node_t *root, const char *key, yaml_node_t **value)
{
	yaml_node_t *k;
	yaml_node_t *v = section(ld, root, key, &k);

	*value = NULL;
	if (v == NULL || !ld_check_map(ld, v, k, key, NULL, 0, 0, NULL, NULL) || ld_is_null(v))
		return 0;
	*value = v;
	return ld_map_len(v);
}

/* The sequence item nodes of map[key], for positions of per-item errors. */
static yaml_node_t *
item_node(struct loader *ld, const yaml_node_t *map, const char *key, size_t i)
{
	yaml_node_t *seq = ld_get(ld, map, key, NULL);

	if (seq == NULL || seq->type != YAML_SEQUENCE_NODE ||
	    i >= (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start))
		return NULL;
	return ld_node(ld, seq->data.sequence.items.start[i]);
}

static void
load_daemon(struct loader *ld, const yaml_node_t *root)
{
	struct pv_config_daemon *d = &ld->cfg->daemon;
	yaml_node_t *k;
	yaml_node_t *node = section(ld, root, "daemon", &k);
	char *level = NULL;

	d->state_dir = pv_strdup("/var/lib/pgvigil");
	d->socket = pv_strdup("/run/pgvigil/pgvigil.sock");
	d->timezone = pv_strdup("UTC");
	d->max_parallel_jobs = 2;
	d->log_level = PV_LOG_INFO;
	d->keep_history = PV_CONFIG_KEEP_HISTORY_DEFAULT;
	if (!ld_check_map(ld, node, k, "daemon", daemon_keys, N(daemon_keys), 0, NULL, NULL))
		return;
	ld_str(ld, node, "daemon", "state_dir", &d->state_dir);
	ld_str(ld, node, "daemon", "socket", &d->socket);
	if (ld_get(ld, node, "admins", NULL) != NULL) {
		ld_strv(ld, node, "daemon", "admins", &d->admins);
		for (size_t i = 0; i < d->admins.n; i++) {
			char p[PATH_MAX_LEN];
			if (strcmp(d->admins.v[i], "@") != 0)
				continue;
			snprintf(p, sizeof(p), "daemon.admins[%zu]", i);
			ld_error(ld, PV_ERR_CONFIG_VALUE, item_node(ld, node, "admins", i), p,
			         "\"@\" needs a group name");
		}
	} else {
		ld_strv_push(&d->admins, "root");
	}
	if (ld_str(ld, node, "daemon", "timezone", &d->timezone)) {
		struct pv_tz *tz = NULL;
		struct pv_error e;
		if (!pv_tz_load(d->timezone, &tz, &e)) {
			ld_error(ld, PV_ERR_CONFIG_VALUE, ld_get(ld, node, "timezone", &k) ? k : NULL,
			         "daemon.timezone", "%s", e.msg);
			free(d->timezone);
			d->timezone = pv_strdup("UTC");
		}
		pv_tz_free(tz);
	}
	ld_int(ld, node, "daemon", "max_parallel_jobs", 1, 64, &d->max_parallel_jobs);
	/* At least 31 days: the report's largest RPO gap over 30 days reads the backup runs. */
	ld_duration(ld, node, "daemon", "keep_history", PV_CONFIG_KEEP_HISTORY_MIN, &d->keep_history);
	if (ld_str(ld, node, "daemon", "log_level", &level) && !pv_log_level_parse(level, &d->log_level)) {
		char q[256];
		ld_get(ld, node, "log_level", &k);
		ld_error(ld, PV_ERR_CONFIG_VALUE, k, "daemon.log_level",
		         "expected debug, info, notice, warning, error or crit, got %s",
		         ld_quote(level, q, sizeof(q)));
	}
	free(level);
	if (ld_str(ld, node, "daemon", "metrics_listen", &d->metrics_listen)) {
		const char *colon = strrchr(d->metrics_listen, ':');
		char *end;
		long port = colon != NULL ? strtol(colon + 1, &end, 10) : 0;
		if (colon == NULL || colon == d->metrics_listen || colon[1] == '\0' || *end != '\0' ||
		    port < 1 || port > 65535) {
			char q[256];
			ld_get(ld, node, "metrics_listen", &k);
			ld_error(ld, PV_ERR_CONFIG_VALUE, k, "daemon.metrics_listen",
			         "expected HOST:PORT such as 127.0.0.1:9187, got %s",
			         ld_quote(d->metrics_listen, q, sizeof(q)));
		}
	}
	ld_str(ld, node, "daemon", "pg_bin_dir", &d->pg_bin_dir);
}

static void
load_storage(struct loader *ld, const yaml_node_t *root)
{
	struct pv_config_storage *s = &ld->cfg->storage;
	yaml_node_t *k;
	yaml_node_t *node = section(ld, root, "storage", &k);
	int v;
	size_t size;

	s->path = pv_strdup("/var/lib/pgvigil/backups");
	s->compression = PV_COMPRESSION_ZSTD;
	s->compression_level = 3;
	if (!ld_check_map(ld, node, k, "storage", storage_keys, N(storage_keys), 0, NULL, NULL))
		return;
	ld_str(ld, node, "storage", "path", &s->path);
	if (ld_enum(ld, node, "storage", "compression", compression_names, N(compression_names), &v))
		s->compression = (enum pv_compression)v;
	if (ld_int(ld, node, "storage", "compression_level", 1, 19, &s->compression_level) &&
	    s->compression == PV_COMPRESSION_NONE) {
		ld_get(ld, node, "compression_level", &k);
		ld_warning(ld, k, "storage.compression_level", "has no effect with compression: none");
	}
	if (ld_str(ld, node, "storage", "encryption_key_file", &s->encryption_key_file)) {
		ld_get(ld, node, "encryption_key_file", &k);
		ld_private_file(ld, k, "storage.encryption_key_file", s->encryption_key_file, &size);
	}
	if (ld_strv(ld, node, "storage", "old_key_files", &s->old_key_files)) {
		for (size_t i = 0; i < s->old_key_files.n; i++) {
			char p[PATH_MAX_LEN];
			snprintf(p, sizeof(p), "storage.old_key_files[%zu]", i);
			ld_private_file(ld, item_node(ld, node, "old_key_files", i), p, s->old_key_files.v[i],
			                &size);
		}
		if (s->encryption_key_file == NULL && s->old_key_files.n > 0) {
			ld_get(ld, node, "old_key_files", &k);
			ld_warning(ld, k, "storage.old_key_files",
			           "old keys are given but no encryption_key_file: new backups will not be "
			           "encrypted");
		}
	}
}

static bool
conninfo_has_password(const char *conninfo)
{
	char *red = pv_pg_conninfo_redact(conninfo);
	bool has = strcmp(red, conninfo) != 0;

	free(red);
	return has;
}

static void
load_conninfo(struct loader *ld, const yaml_node_t *owner, const yaml_node_t *node, const char *path,
              char **conninfo)
{
	char sub[PATH_MAX_LEN];
	yaml_node_t *k;

	ld_path(sub, path, "conninfo");
	if (ld_get(ld, node, "conninfo", NULL) == NULL) {
		ld_error(ld, PV_ERR_CONFIG_MISSING, owner, path, "missing required key \"conninfo\"");
		return;
	}
	if (ld_str(ld, node, path, "conninfo", conninfo) && conninfo_has_password(*conninfo)) {
		ld_get(ld, node, "conninfo", &k);
		ld->inline_secrets++;
		ld_warning(ld, k, sub,
		           "conninfo contains a password; HINT: use password_file or password: env:NAME");
	}
}

static void
load_restore_targets(struct loader *ld, const yaml_node_t *root)
{
	struct pv_config *cfg = ld->cfg;
	yaml_node_t *sec;
	size_t n = named_section(ld, root, "restore_targets", &sec);

	cfg->restore_targets = pv_calloc(n, sizeof(*cfg->restore_targets));
	for (size_t i = 0; i < n; i++) {
		struct pv_config_restore_target *t = &cfg->restore_targets[cfg->n_restore_targets];
		yaml_node_t *key, *val;
		char path[PATH_MAX_LEN];

		if (!ld_map_entry(ld, sec, i, &key, &val))
			continue;
		ld_path(path, "restore_targets", ld_scalar(key));
		check_name(ld, key, path, "restore target");
		cfg->n_restore_targets++;
		t->name = pv_strdup(ld_scalar(key));
		if (!ld_check_map(ld, val, key, path, target_keys, N(target_keys), 0, NULL, NULL))
			continue;
		load_conninfo(ld, key, val, path, &t->conninfo);
		ld_secret(ld, val, path, "password", &t->password);
	}
}

static struct pv_config_restore_target *
find_target(struct pv_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_restore_targets; i++)
		if (strcmp(cfg->restore_targets[i].name, name) == 0)
			return &cfg->restore_targets[i];
	return NULL;
}

static struct pv_config_database *
find_database(struct pv_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_databases; i++)
		if (strcmp(cfg->databases[i].name, name) == 0)
			return &cfg->databases[i];
	return NULL;
}

/* "unknown X "name"; defined: a, b" — or a suggestion when one is close. */
static void
dangling(struct loader *ld, const yaml_node_t *at, const char *path, const char *what, const char *name,
         const char *const *names, size_t n)
{
	char q[256], list[512];
	size_t o = 0;
	const char *best = NULL;
	size_t best_len = 0;

	list[0] = '\0';
	for (size_t i = 0; i < n && o < sizeof(list); i++)
		o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s", i ? ", " : "", names[i]);
	/* A case-insensitive match or a shared prefix of 4+ characters is worth suggesting. */
	for (size_t i = 0; i < n; i++) {
		size_t l = 0;
		if (strcasecmp(names[i], name) == 0) {
			best = names[i];
			break;
		}
		while (names[i][l] != '\0' && names[i][l] == name[l])
			l++;
		if (l >= 4 && l > best_len) {
			best = names[i];
			best_len = l;
		}
	}
	if (best != NULL)
		ld_error(ld, PV_ERR_CONFIG_REFERENCE, at, path, "unknown %s %s; did you mean \"%s\"?", what,
		         ld_quote(name, q, sizeof(q)), best);
	else if (n > 0)
		ld_error(ld, PV_ERR_CONFIG_REFERENCE, at, path, "unknown %s %s; defined: %s", what,
		         ld_quote(name, q, sizeof(q)), list);
	else
		ld_error(ld, PV_ERR_CONFIG_REFERENCE, at, path, "unknown %s %s; none is defined", what,
		         ld_quote(name, q, sizeof(q)));
}

static void
load_databases(struct loader *ld, const yaml_node_t *root, yaml_node_t ***keys_out)
{
	struct pv_config *cfg = ld->cfg;
	yaml_node_t *sec;
	size_t n = named_section(ld, root, "databases", &sec);
	yaml_node_t **keys = pv_calloc(n, sizeof(*keys));

	cfg->databases = pv_calloc(n, sizeof(*cfg->databases));
	for (size_t i = 0; i < n; i++) {
		struct pv_config_database *db = &cfg->databases[cfg->n_databases];
		yaml_node_t *key, *val, *k, *obj;
		char path[PATH_MAX_LEN], sub[PATH_MAX_LEN];

		if (!ld_map_entry(ld, sec, i, &key, &val))
			continue;
		ld_path(path, "databases", ld_scalar(key));
		check_name(ld, key, path, "database");
		keys[cfg->n_databases++] = key;
		db->name = pv_strdup(ld_scalar(key));
		db->expected_tables = -1;
		if (!ld_check_map(ld, val, key, path, database_keys, N(database_keys), 0, NULL, NULL))
			continue;
		load_conninfo(ld, key, val, path, &db->conninfo);
		ld_secret(ld, val, path, "password", &db->password);
		ld_strv(ld, val, path, "critical_tables", &db->critical_tables);
		ld_int(ld, val, path, "expected_tables", 0, INT_MAX, &db->expected_tables);
		ld_strv(ld, val, path, "assertions", &db->assertions);
		obj = ld_get(ld, val, "objectives", &k);
		ld_path(sub, path, "objectives");
		if (obj != NULL &&
		    ld_check_map(ld, obj, k, sub, objectives_keys, N(objectives_keys), 0, NULL, NULL)) {
			ld_duration(ld, obj, sub, "rpo", 1, &db->rpo);
			ld_duration(ld, obj, sub, "rto", 1, &db->rto);
		}
		if (ld_str(ld, val, path, "restore_target", &db->restore_target_name)) {
			db->restore_target = find_target(cfg, db->restore_target_name);
			if (db->restore_target == NULL) {
				const char **names = pv_calloc(cfg->n_restore_targets + 1, sizeof(*names));
				for (size_t t = 0; t < cfg->n_restore_targets; t++)
					names[t] = cfg->restore_targets[t].name;
				ld_get(ld, val, "restore_target", &k);
				ld_path(sub, path, "restore_target");
				dangling(ld, k, sub, "restore target", db->restore_target_name, names,
				         cfg->n_restore_targets);
				free(names);
			}
		}
	}
	*keys_out = keys;
}

static const char *
infer_tier(const char *name)
{
	static const char *const tiers[] = {"hourly", "daily", "weekly", "monthly", "yearly"};

	for (size_t i = 0; i < N(tiers); i++)
		if (strstr(name, tiers[i]) != NULL)
			return tiers[i];
	return name;
}

static bool
valid_tier(const char *s)
{
	if (s[0] == '\0' || strlen(s) > 32)
		return false;
	for (; *s != '\0'; s++)
		if (!(isalnum((unsigned char)*s) || *s == '-' || *s == '_'))
			return false;
	return true;
}

static void
load_job_schedule(struct loader *ld, const yaml_node_t *owner, const yaml_node_t *val, const char *path,
                  struct pv_config_job *job)
{
	yaml_node_t *sk, *ek, *k;
	yaml_node_t *sv = ld_get(ld, val, "schedule", &sk);
	yaml_node_t *ev = ld_get(ld, val, "every", &ek);
	char sub[PATH_MAX_LEN];
	char *text = NULL, *zone = NULL;
	struct pv_error e;

	if (sv != NULL && ev != NULL) {
		ld_path(sub, path, "every");
		ld_error(ld, PV_ERR_CONFIG_VALUE, ek, sub, "give either schedule or every, not both");
	} else if (sv == NULL && ev == NULL) {
		ld_error(ld, PV_ERR_CONFIG_MISSING, owner, path,
		         "missing required key \"schedule\" or \"every\"");
	} else if (sv != NULL) {
		if (ld_str(ld, val, path, "schedule", &text) && !pv_cron_parse(text, &job->cron, &e)) {
			ld_path(sub, path, "schedule");
			ld_error(ld, PV_ERR_CONFIG_VALUE, sk, sub, "%s", e.msg);
		}
	} else {
		ld_duration(ld, val, path, "every", 1, &job->every);
	}
	free(text);

	if (ld_str(ld, val, path, "timezone", &zone)) {
		if (!pv_tz_load(zone, &job->tz, &e)) {
			ld_get(ld, val, "timezone", &k);
			ld_path(sub, path, "timezone");
			ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub, "%s", e.msg);
		}
		free(zone);
	}
	if (job->tz != NULL && ev != NULL) {
		ld_get(ld, val, "timezone", &k);
		ld_path(sub, path, "timezone");
		ld_warning(ld, k, sub,
		           "has no effect on an `every` job: intervals do not depend on the time zone");
	}
	/* Job zone, else daemon.timezone (already validated; UTC if it was bad). */
	if (job->tz == NULL && !pv_tz_load(ld->cfg->daemon.timezone, &job->tz, &e))
		pv_tz_load("UTC", &job->tz, &e);
	if (job->cron != NULL) {
		time_t next;
		if (!pv_cron_next(job->cron, job->tz, time(NULL), &next)) {
			ld_path(sub, path, "schedule");
			ld_error(ld, PV_ERR_CONFIG_VALUE, sk, sub,
			         "schedule \"%s\" never runs (no match within 8 years)",
			         pv_cron_text(job->cron));
		}
	}

	ld_duration(ld, val, path, "timeout", 1, &job->timeout);
	ld_duration(ld, val, path, "jitter", 0, &job->jitter);
	job->catch_up = job->every == 0;
	if (ld_bool(ld, val, path, "catch_up", &job->catch_up) && job->catch_up && ev != NULL) {
		ld_get(ld, val, "catch_up", &k);
		ld_path(sub, path, "catch_up");
		ld_warning(ld, k, sub, "has no effect on an `every` job: only calendar runs are caught up");
		job->catch_up = false;
	}
	if (!ld_duration(ld, val, path, "grace", 1, &job->grace))
		job->grace = job->every == 0 ? 300 : job->every < 60 ? 60 : job->every;
	if (job->jitter > 0) {
		char a[32], b[32];
		ld_get(ld, val, "jitter", &k);
		ld_path(sub, path, "jitter");
		if (job->every > 0 && job->jitter >= job->every)
			ld_warning(ld, k, sub, "jitter (%s) is not shorter than the interval (%s)",
			           pv_duration_format(job->jitter, a, sizeof(a)),
			           pv_duration_format(job->every, b, sizeof(b)));
		else if (job->every == 0 && job->jitter >= job->grace)
			ld_warning(
			        ld, k, sub,
			        "jitter (%s) is not shorter than grace (%s): runs may be reported as missed",
			        pv_duration_format(job->jitter, a, sizeof(a)),
			        pv_duration_format(job->grace, b, sizeof(b)));
	}
}

static void
load_job(struct loader *ld, yaml_node_t *key, yaml_node_t *val, struct pv_config_job *job)
{
	struct pv_config *cfg = ld->cfg;
	char path[PATH_MAX_LEN], sub[PATH_MAX_LEN];
	yaml_node_t *tk, *dk, *k;
	int type = -1;
	unsigned kind_bit = 0;
	const char *kind = "a job";

	ld_path(path, "jobs", ld_scalar(key));
	check_name(ld, key, path, "job");
	job->name = pv_strdup(ld_scalar(key));
	if (ld_get(ld, val, "type", &tk) == NULL) {
		if (val->type == YAML_MAPPING_NODE || ld_is_null(val))
			ld_error(ld, PV_ERR_CONFIG_MISSING, key, path, "missing required key \"type\"");
	} else if (ld_enum(ld, val, path, "type", job_type_names, PV_JOB_TYPE_COUNT, &type)) {
		job->type = (enum pv_job_type)type;
		kind_bit = 1u << type;
		kind = job_kind_names[type];
	}
	if (!ld_check_map(ld, val, key, path, job_keys, N(job_keys), kind_bit, kind, job_type_names))
		return;
	if (type < 0)
		job->type = PV_JOB_TYPE_COUNT; /* unknown: validate the common keys only */

	if (ld_str(ld, val, path, "database", &job->database_name)) {
		ld_get(ld, val, "database", &dk);
		ld_path(sub, path, "database");
		job->database = find_database(cfg, job->database_name);
		if (job->database == NULL) {
			const char **names = pv_calloc(cfg->n_databases + 1, sizeof(*names));
			for (size_t d = 0; d < cfg->n_databases; d++)
				names[d] = cfg->databases[d].name;
			dangling(ld, dk, sub, "database", job->database_name, names, cfg->n_databases);
			free(names);
		} else if ((type == PV_JOB_RESTORE_PROBE || type == PV_JOB_DRILL) &&
		           job->database->restore_target_name == NULL) {
			ld_error(ld, PV_ERR_CONFIG_REFERENCE, dk, sub,
			         "database \"%s\" has no restore_target, which %s needs; HINT: add "
			         "restore_target to "
			         "databases.%s",
			         job->database->name, kind, job->database->name);
		}
	} else if (ld_get(ld, val, "database", NULL) == NULL && type >= 0 && type != PV_JOB_VERIFY &&
	           type != PV_JOB_STORAGE) {
		ld_error(ld, PV_ERR_CONFIG_MISSING, key, path,
		         "missing required key \"database\" (%s needs one)", kind);
	}

	load_job_schedule(ld, key, val, path, job);
	job->heavy = type == PV_JOB_BACKUP || type == PV_JOB_VERIFY || type == PV_JOB_RESTORE_PROBE ||
	             type == PV_JOB_DRILL;

	if (type == PV_JOB_HEALTH)
		ld_bool(ld, val, path, "keep_connection", &job->keep_connection);
	if (type != PV_JOB_BACKUP)
		return;
	if (ld_get(ld, val, "keep", NULL) == NULL)
		ld_error(ld, PV_ERR_CONFIG_MISSING, key, path,
		         "missing required key \"keep\" (how many backups to retain)");
	else
		ld_int(ld, val, path, "keep", 1, INT_MAX, &job->keep);
	if (ld_str(ld, val, path, "tier", &job->tier) && !valid_tier(job->tier)) {
		char q[256];
		ld_get(ld, val, "tier", &k);
		ld_path(sub, path, "tier");
		ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub,
		         "expected a short word of letters, digits, '-' and '_' (at most 32), got %s",
		         ld_quote(job->tier, q, sizeof(q)));
	}
	if (job->tier == NULL) {
		/* The job name stands in for the tier only when it could have been written as one. */
		job->tier = pv_strdup(infer_tier(job->name));
		if (!valid_tier(job->tier))
			ld_error(ld, PV_ERR_CONFIG_VALUE, key, path,
			         "the job name cannot be its tier (at most 32 letters, digits, '-' and '_', "
			         "unless it contains hourly, daily, weekly, monthly or yearly); HINT: set "
			         "\"tier\"");
	}
	ld_strv(ld, val, path, "schemas", &job->schemas);
	ld_strv(ld, val, path, "exclude_schemas", &job->exclude_schemas);
	ld_strv(ld, val, path, "exclude_table_data", &job->exclude_table_data);
	ld_bool(ld, val, path, "schema_copy", &job->schema_copy);
}

static void
load_jobs(struct loader *ld, const yaml_node_t *root, yaml_node_t ***keys_out)
{
	struct pv_config *cfg = ld->cfg;
	yaml_node_t *sec;
	size_t n = named_section(ld, root, "jobs", &sec);
	yaml_node_t **keys = pv_calloc(n, sizeof(*keys));

	cfg->jobs = pv_calloc(n, sizeof(*cfg->jobs));
	for (size_t i = 0; i < n; i++) {
		yaml_node_t *key, *val;
		if (!ld_map_entry(ld, sec, i, &key, &val))
			continue;
		keys[cfg->n_jobs] = key;
		load_job(ld, key, val, &cfg->jobs[cfg->n_jobs++]);
	}
	*keys_out = keys;
}

static void
load_rule(struct loader *ld, const yaml_node_t *key, const yaml_node_t *val, const char *path,
          struct pv_config_rule *r)
{
	enum rule_param p = rule_defs[r->id].param;
	struct keydef keys[3] = {{"severity", 0}, {"enabled", 0}, {param_names[p], 0}};
	int v;

	if (!ld_check_map(ld, val, key, path, keys, p == P_NONE ? 2 : 3, 0, NULL, NULL))
		return;
	if (ld_enum(ld, val, path, "severity", severity_names, N(severity_names), &v))
		r->severity = (enum pv_severity)v;
	ld_bool(ld, val, path, "enabled", &r->enabled);
	switch (p) {
	case P_NONE: break;
	case P_AFTER: ld_duration(ld, val, path, "after", 1, &r->after); break;
	case P_CONSECUTIVE: ld_int(ld, val, path, "consecutive", 1, 1000, &r->consecutive); break;
	case P_CHANGE: ld_percent(ld, val, path, "change", 1, 10000, &r->change); break;
	case P_FACTOR: ld_double(ld, val, path, "factor", 1.0, 1000.0, &r->factor); break;
	case P_ABOVE: ld_percent(ld, val, path, "above", 1, 100, &r->above); break;
	}
}

static void
load_alerts(struct loader *ld, const yaml_node_t *root)
{
	struct pv_config_alerts *a = &ld->cfg->alerts;
	yaml_node_t *k, *rk;
	yaml_node_t *node = section(ld, root, "alerts", &k);
	yaml_node_t *rules;
	struct keydef rule_keys[PV_RULE_COUNT];

	a->group_wait = 30;
	a->repeat_every = 4 * 3600;
	a->send_resolved = true;
	a->n_rules = PV_RULE_COUNT;
	a->rules = pv_calloc(PV_RULE_COUNT, sizeof(*a->rules));
	for (int i = 0; i < PV_RULE_COUNT; i++) {
		struct pv_config_rule *r = &a->rules[i];
		r->id = (enum pv_rule)i;
		r->name = pv_strdup(rule_defs[i].name);
		r->enabled = true;
		r->severity = rule_defs[i].severity;
		if (rule_defs[i].param == P_AFTER)
			r->after = (int64_t)rule_defs[i].def;
		else if (rule_defs[i].param == P_CONSECUTIVE)
			r->consecutive = (int)rule_defs[i].def;
		else if (rule_defs[i].param == P_CHANGE)
			r->change = rule_defs[i].def;
		else if (rule_defs[i].param == P_FACTOR)
			r->factor = rule_defs[i].def;
		else if (rule_defs[i].param == P_ABOVE)
			r->above = rule_defs[i].def;
		rule_keys[i].name = rule_defs[i].name;
		rule_keys[i].types = 0;
	}
	if (!ld_check_map(ld, node, k, "alerts", alerts_keys, N(alerts_keys), 0, NULL, NULL))
		return;
	ld_duration(ld, node, "alerts", "group_wait", 0, &a->group_wait);
	ld_duration(ld, node, "alerts", "repeat_every", 60, &a->repeat_every);
	ld_bool(ld, node, "alerts", "send_resolved", &a->send_resolved);
	rules = ld_get(ld, node, "rules", &rk);
	if (rules == NULL ||
	    !ld_check_map(ld, rules, rk, "alerts.rules", rule_keys, PV_RULE_COUNT, 0, NULL, NULL))
		return;
	for (size_t i = 0; i < ld_map_len(rules); i++) {
		yaml_node_t *key, *val;
		char path[PATH_MAX_LEN];
		if (!ld_map_entry(ld, rules, i, &key, &val))
			continue;
		for (int r = 0; r < PV_RULE_COUNT; r++) {
			if (strcmp(rule_defs[r].name, ld_scalar(key)) != 0)
				continue;
			ld_path(path, "alerts.rules", rule_defs[r].name);
			load_rule(ld, key, val, path, &a->rules[r]);
		}
	}
}

static bool
is_http_url(const char *s)
{
	return strncmp(s, "https://", 8) == 0 || strncmp(s, "http://", 7) == 0;
}

/* A URL secret: required, and shaped like http(s) without ever echoing it. */
static void
url_secret(struct loader *ld, const yaml_node_t *owner, const yaml_node_t *val, const char *path,
           const char *key, struct pv_secret *out, bool required)
{
	char fkey[64], sub[PATH_MAX_LEN];
	yaml_node_t *k = NULL;

	snprintf(fkey, sizeof(fkey), "%s_file", key);
	if (ld_get(ld, val, key, NULL) == NULL && ld_get(ld, val, fkey, NULL) == NULL) {
		if (required)
			ld_error(ld, PV_ERR_CONFIG_MISSING, owner, path,
			         "missing required key \"%s\" (or \"%s\")", key, fkey);
		return;
	}
	if (!ld_secret(ld, val, path, key, out))
		return;
	if (!is_http_url(out->value)) {
		if (ld_get(ld, val, key, &k) == NULL)
			ld_get(ld, val, fkey, &k);
		ld_path(sub, path, ld_get(ld, val, key, NULL) != NULL ? key : fkey);
		ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub,
		         "expected an http:// or https:// URL (value not shown: %s)", out->source);
	}
}

static void
load_notifier(struct loader *ld, yaml_node_t *key, yaml_node_t *val, struct pv_config_notifier *nt)
{
	char path[PATH_MAX_LEN], sub[PATH_MAX_LEN], q[256];
	yaml_node_t *k;
	int type = -1;
	unsigned kind_bit = 0;
	const char *kind = "a notifier";
	char *digest = NULL;
	struct pv_error e;
	struct pv_strv sevs = {0};

	ld_path(path, "notifiers", ld_scalar(key));
	check_name(ld, key, path, "notifier");
	nt->name = pv_strdup(ld_scalar(key));
	nt->max_age = 24 * 3600;
	nt->severities =
	        PV_SEV_MASK(PV_SEV_INFO) | PV_SEV_MASK(PV_SEV_WARNING) | PV_SEV_MASK(PV_SEV_CRITICAL);
	if (ld_get(ld, val, "type", NULL) == NULL) {
		if (val->type == YAML_MAPPING_NODE || ld_is_null(val))
			ld_error(ld, PV_ERR_CONFIG_MISSING, key, path, "missing required key \"type\"");
	} else if (ld_enum(ld, val, path, "type", notifier_type_names, 4, &type)) {
		nt->type = (enum pv_notifier_type)type;
		kind_bit = 1u << type;
		kind = notifier_kind_names[type];
	}
	if (!ld_check_map(ld, val, key, path, notifier_keys, N(notifier_keys), kind_bit, kind,
	                  notifier_type_names))
		return;
	if (type == PV_NOTIFIER_HEARTBEAT)
		nt->severities = 0;
	if (ld_strv(ld, val, path, "severities", &sevs)) {
		nt->severities = 0;
		for (size_t i = 0; i < sevs.n; i++) {
			size_t s;
			for (s = 0; s < N(severity_names); s++)
				if (strcmp(sevs.v[i], severity_names[s]) == 0)
					break;
			if (s == N(severity_names)) {
				snprintf(sub, sizeof(sub), "%s.severities[%zu]", path, i);
				ld_error(ld, PV_ERR_CONFIG_VALUE, item_node(ld, val, "severities", i), sub,
				         "expected critical, warning or info, got %s",
				         ld_quote(sevs.v[i], q, sizeof(q)));
			} else {
				nt->severities |= PV_SEV_MASK(s);
			}
		}
		if (sevs.n == 0) {
			ld_get(ld, val, "severities", &k);
			ld_path(sub, path, "severities");
			ld_warning(ld, k, sub, "empty: this notifier receives nothing");
		}
	}
	ld_strv_free(&sevs);
	if (ld_str(ld, val, path, "digest", &digest)) {
		ld_get(ld, val, "digest", &k);
		ld_path(sub, path, "digest");
		if (!pv_cron_parse(digest, &nt->digest, &e))
			ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub, "%s", e.msg);
		else if (!(nt->severities & PV_SEV_MASK(PV_SEV_INFO)))
			ld_warning(ld, k, sub, "has no effect: this notifier does not receive info events");
	}
	free(digest);
	ld_duration(ld, val, path, "max_age", 60, &nt->max_age);
	if (ld_str(ld, val, path, "ca_file", &nt->ca_file) && access(nt->ca_file, R_OK) != 0) {
		ld_get(ld, val, "ca_file", &k);
		ld_path(sub, path, "ca_file");
		ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub, "cannot read %s: %s",
		         ld_quote(nt->ca_file, q, sizeof(q)), strerror(errno));
	}

	switch (type) {
	case PV_NOTIFIER_SLACK: url_secret(ld, key, val, path, "webhook_url", &nt->webhook_url, true); break;
	case PV_NOTIFIER_WEBHOOK:
		url_secret(ld, key, val, path, "url", &nt->url, true);
		ld_secret(ld, val, path, "secret", &nt->secret);
		break;
	case PV_NOTIFIER_HEARTBEAT: {
		int method;
		url_secret(ld, key, val, path, "url", &nt->url, true);
		nt->every = 300;
		ld_duration(ld, val, path, "every", 1, &nt->every);
		if (ld_enum(ld, val, path, "method", heartbeat_method_names, 2, &method))
			nt->post = method == 1;
		break;
	}
	case PV_NOTIFIER_EMAIL: {
		int v;
		bool smtps = false;
		if (ld_get(ld, val, "smtp_url", NULL) == NULL) {
			ld_error(ld, PV_ERR_CONFIG_MISSING, key, path, "missing required key \"smtp_url\"");
		} else if (ld_str(ld, val, path, "smtp_url", &nt->smtp_url)) {
			smtps = strncmp(nt->smtp_url, "smtps://", 8) == 0;
			if (!smtps && strncmp(nt->smtp_url, "smtp://", 7) != 0) {
				ld_get(ld, val, "smtp_url", &k);
				ld_path(sub, path, "smtp_url");
				ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub,
				         "expected an smtp:// or smtps:// URL, got %s",
				         ld_quote(nt->smtp_url, q, sizeof(q)));
			}
		}
		nt->starttls = smtps ? PV_STARTTLS_IMPLICIT : PV_STARTTLS_REQUIRED;
		if (ld_enum(ld, val, path, "starttls", starttls_names, N(starttls_names), &v)) {
			nt->starttls = (enum pv_starttls)v;
			ld_get(ld, val, "starttls", &k);
			ld_path(sub, path, "starttls");
			/* The URL scheme decides how curl speaks TLS; a contradicting setting is a mistake.
			 */
			if (smtps && nt->starttls != PV_STARTTLS_IMPLICIT)
				ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub,
				         "smtps:// means implicit TLS; use starttls: implicit or an smtp:// "
				         "URL");
			else if (!smtps && nt->smtp_url != NULL && nt->starttls == PV_STARTTLS_IMPLICIT)
				ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub,
				         "implicit TLS needs an smtps:// URL");
		}
		ld_str(ld, val, path, "username", &nt->username);
		if (ld_secret(ld, val, path, "password", &nt->password) && nt->starttls == PV_STARTTLS_NONE) {
			ld_get(ld, val, "starttls", &k);
			ld_path(sub, path, "starttls");
			ld_warning(ld, k, sub, "none: the SMTP password is sent in clear text");
		}
		if (ld_get(ld, val, "from", NULL) == NULL)
			ld_error(ld, PV_ERR_CONFIG_MISSING, key, path, "missing required key \"from\"");
		else if (ld_str(ld, val, path, "from", &nt->from) && strchr(nt->from, '@') == NULL) {
			ld_get(ld, val, "from", &k);
			ld_path(sub, path, "from");
			ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub, "expected an email address, got %s",
			         ld_quote(nt->from, q, sizeof(q)));
		}
		if (ld_get(ld, val, "to", NULL) == NULL) {
			ld_error(ld, PV_ERR_CONFIG_MISSING, key, path, "missing required key \"to\"");
		} else if (ld_strv(ld, val, path, "to", &nt->to)) {
			for (size_t i = 0; i < nt->to.n; i++) {
				if (strchr(nt->to.v[i], '@') != NULL)
					continue;
				snprintf(sub, sizeof(sub), "%s.to[%zu]", path, i);
				ld_error(ld, PV_ERR_CONFIG_VALUE, item_node(ld, val, "to", i), sub,
				         "expected an email address, got %s",
				         ld_quote(nt->to.v[i], q, sizeof(q)));
			}
			if (nt->to.n == 0) {
				ld_get(ld, val, "to", &k);
				ld_path(sub, path, "to");
				ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub, "expected at least one recipient");
			}
		}
		break;
	}
	default: break;
	}
}

static void
load_notifiers(struct loader *ld, const yaml_node_t *root)
{
	struct pv_config *cfg = ld->cfg;
	yaml_node_t *sec;
	size_t n = named_section(ld, root, "notifiers", &sec);

	cfg->notifiers = pv_calloc(n, sizeof(*cfg->notifiers));
	for (size_t i = 0; i < n; i++) {
		yaml_node_t *key, *val;
		if (!ld_map_entry(ld, sec, i, &key, &val))
			continue;
		load_notifier(ld, key, val, &cfg->notifiers[cfg->n_notifiers++]);
	}
}

/*
 * The longest stretch without a scheduled backup of a database, over a year from a fixed
 * start: `every` jobs bound it by their interval, calendar jobs by the gaps of their union.
 */
static int64_t
longest_backup_gap(const struct pv_config *cfg, const struct pv_config_database *db)
{
	const time_t start = 1767225600; /* 2026-01-01T00:00:00Z */
	const time_t horizon = start + 400 * 86400;
	int64_t gap = INT64_MAX, cal_gap = 0;
	time_t t = start, prev = 0;
	bool any_cal = false;

	for (size_t i = 0; i < cfg->n_jobs; i++) {
		const struct pv_config_job *j = &cfg->jobs[i];
		if (j->type != PV_JOB_BACKUP || j->database != db)
			continue;
		if (j->every > 0 && j->every < gap)
			gap = j->every;
		any_cal = any_cal || j->cron != NULL;
	}
	if (!any_cal)
		return gap;
	/* Bounded: a per-minute schedule would otherwise mean half a million steps. */
	for (int steps = 0; steps < 5000 && t < horizon; steps++) {
		time_t best = 0;
		for (size_t i = 0; i < cfg->n_jobs; i++) {
			const struct pv_config_job *j = &cfg->jobs[i];
			time_t next;
			if (j->type != PV_JOB_BACKUP || j->database != db || j->cron == NULL)
				continue;
			if (pv_cron_next(j->cron, j->tz, t, &next) && (best == 0 || next < best))
				best = next;
		}
		if (best == 0)
			break;
		if (prev != 0 && best - prev > cal_gap)
			cal_gap = best - prev;
		prev = best;
		t = best;
	}
	if (cal_gap > 0 && cal_gap < gap)
		gap = cal_gap;
	return gap;
}

static void
cross_checks(struct loader *ld, yaml_node_t **db_keys, yaml_node_t **job_keys_nodes)
{
	const struct pv_config *cfg = ld->cfg;
	char path[PATH_MAX_LEN];

	for (size_t i = 0; i < cfg->n_databases; i++) {
		const struct pv_config_database *db = &cfg->databases[i];
		bool backup = false, probe = false;
		for (size_t j = 0; j < cfg->n_jobs; j++) {
			if (cfg->jobs[j].database != db)
				continue;
			backup = backup || cfg->jobs[j].type == PV_JOB_BACKUP;
			probe = probe || cfg->jobs[j].type == PV_JOB_RESTORE_PROBE ||
			        cfg->jobs[j].type == PV_JOB_DRILL;
		}
		ld_path(path, "databases", db->name);
		if (!backup) {
			ld_warning(ld, db_keys[i], path, "no backup job backs up this database");
		} else if (db->rpo > 0) {
			int64_t gap = longest_backup_gap(cfg, db);
			char a[32], b[32];
			if (gap != INT64_MAX && gap > db->rpo)
				ld_warning(ld, db_keys[i], path,
				           "objectives.rpo (%s) is shorter than the longest gap between its "
				           "scheduled "
				           "backups (%s): rpo_breach will fire; HINT: add a more frequent "
				           "backup job or "
				           "relax the objective",
				           pv_duration_format(db->rpo, a, sizeof(a)),
				           pv_duration_format(gap, b, sizeof(b)));
		}
		if (db->rto > 0 && !probe)
			ld_warning(ld, db_keys[i], path,
			           "objectives.rto is set but no restore_probe or drill job measures it");
	}
	if (cfg->n_notifiers == 0 && cfg->n_jobs > 0)
		ld_warning(ld, NULL, "notifiers", "no notifiers: alerts are only logged");
	(void)job_keys_nodes;
}

static void
config_free(struct pv_config *cfg)
{
	free(cfg->path);
	free(cfg->daemon.state_dir);
	free(cfg->daemon.socket);
	ld_strv_free(&cfg->daemon.admins);
	free(cfg->daemon.timezone);
	free(cfg->daemon.metrics_listen);
	free(cfg->daemon.pg_bin_dir);
	free(cfg->storage.path);
	free(cfg->storage.encryption_key_file);
	ld_strv_free(&cfg->storage.old_key_files);
	for (size_t i = 0; i < cfg->n_restore_targets; i++) {
		free(cfg->restore_targets[i].name);
		free(cfg->restore_targets[i].conninfo);
		ld_secret_free(&cfg->restore_targets[i].password);
	}
	free(cfg->restore_targets);
	for (size_t i = 0; i < cfg->n_databases; i++) {
		struct pv_config_database *db = &cfg->databases[i];
		free(db->name);
		free(db->conninfo);
		ld_secret_free(&db->password);
		ld_strv_free(&db->critical_tables);
		free(db->restore_target_name);
		ld_strv_free(&db->assertions);
	}
	free(cfg->databases);
	for (size_t i = 0; i < cfg->n_jobs; i++) {
		struct pv_config_job *j = &cfg->jobs[i];
		free(j->name);
		free(j->database_name);
		pv_cron_free(j->cron);
		pv_tz_free(j->tz);
		free(j->tier);
		ld_strv_free(&j->schemas);
		ld_strv_free(&j->exclude_schemas);
		ld_strv_free(&j->exclude_table_data);
	}
	free(cfg->jobs);
	for (size_t i = 0; i < cfg->alerts.n_rules; i++)
		free(cfg->alerts.rules[i].name);
	free(cfg->alerts.rules);
	for (size_t i = 0; i < cfg->n_notifiers; i++) {
		struct pv_config_notifier *n = &cfg->notifiers[i];
		free(n->name);
		pv_cron_free(n->digest);
		ld_secret_free(&n->webhook_url);
		ld_secret_free(&n->url);
		ld_secret_free(&n->secret);
		free(n->smtp_url);
		free(n->ca_file);
		free(n->username);
		ld_secret_free(&n->password);
		free(n->from);
		ld_strv_free(&n->to);
	}
	free(cfg->notifiers);
	free(cfg);
}

static void
syntax_error(struct loader *ld, const yaml_parser_t *parser)
{
	yaml_node_t at;
	char ctx[256] = "";

	memset(&at, 0, sizeof(at));
	at.start_mark = parser->problem_mark;
	if (parser->error == YAML_READER_ERROR) {
		/* Reader errors carry a byte offset, not a mark. */
		ld_error(ld, PV_ERR_CONFIG_SYNTAX, NULL, NULL, "syntax error at byte %zu: %s",
		         parser->problem_offset,
		         parser->problem != NULL ? parser->problem : "unreadable input");
		return;
	}
	if (parser->context != NULL)
		snprintf(ctx, sizeof(ctx), " (%s at line %zu, column %zu)", parser->context,
		         parser->context_mark.line + 1, parser->context_mark.column + 1);
	ld_error(ld, PV_ERR_CONFIG_SYNTAX, &at, NULL, "syntax error: %s%s",
	         parser->problem != NULL ? parser->problem : "invalid YAML", ctx);
}

static struct pv_config *
load(const char *name, const char *data, size_t len, struct pv_config_diag *diag, struct pv_error *err,
     bool world_readable)
{
	struct loader ld = {0};
	yaml_parser_t parser;
	yaml_document_t doc, extra;
	yaml_node_t *root;
	yaml_node_t **db_keys = NULL, **jkeys = NULL;
	struct pv_config *cfg;

	ld.file = name;
	yaml_parser_initialize(&parser);
	yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
	if (!yaml_parser_load(&parser, &doc)) {
		syntax_error(&ld, &parser);
		yaml_parser_delete(&parser);
		ld_finish(&ld, diag, err);
		return NULL;
	}
	ld.doc = &doc;
	root = yaml_document_get_root_node(&doc);
	if (root == NULL) {
		yaml_node_t at;
		memset(&at, 0, sizeof(at));
		ld_error(&ld, PV_ERR_CONFIG_MISSING, &at, NULL, "the configuration is empty");
		yaml_document_delete(&doc);
		yaml_parser_delete(&parser);
		ld_finish(&ld, diag, err);
		return NULL;
	}
	if (!yaml_parser_load(&parser, &extra)) {
		syntax_error(&ld, &parser);
	} else {
		yaml_node_t *r2 = yaml_document_get_root_node(&extra);
		if (r2 != NULL)
			ld_error(&ld, PV_ERR_CONFIG_SYNTAX, r2, NULL,
			         "a second YAML document; the configuration is one document");
		yaml_document_delete(&extra);
	}
	yaml_parser_delete(&parser);

	cfg = pv_calloc(1, sizeof(*cfg));
	cfg->refcount = 1;
	cfg->path = pv_strdup(name);
	ld.cfg = cfg;
	if (root->type != YAML_MAPPING_NODE) {
		ld_error(&ld, PV_ERR_CONFIG_TYPE, root, NULL,
		         "expected a mapping of sections at the top level, got %s",
		         root->type == YAML_SEQUENCE_NODE ? "a list" : "a scalar");
	} else {
		ld_check_map(&ld, root, NULL, "", top_keys, N(top_keys), 0, NULL, NULL);
	}
	/* Order matters: references point backwards (jobs -> databases -> restore targets). */
	load_daemon(&ld, root);
	load_storage(&ld, root);
	load_restore_targets(&ld, root);
	load_databases(&ld, root, &db_keys);
	load_jobs(&ld, root, &jkeys);
	load_alerts(&ld, root);
	load_notifiers(&ld, root);
	if (ld.errors.n == 0)
		cross_checks(&ld, db_keys, jkeys);
	if (ld.errors.n == 0 && world_readable && ld.inline_secrets > 0)
		ld_warning(&ld, NULL, NULL,
		           "the file is readable by others and holds inline secrets; HINT: chmod 600, or use "
		           "*_file / env: secrets");
	free(db_keys);
	free(jkeys);
	yaml_document_delete(&doc);
	if (ld_finish(&ld, diag, err) != PV_OK) {
		config_free(cfg);
		return NULL;
	}
	return cfg;
}

struct pv_config *
pv_config_load_string(const char *name, const char *yaml, struct pv_config_diag *diag, struct pv_error *err)
{
	return load(name, yaml, strlen(yaml), diag, err, false);
}

struct pv_config *
pv_config_load(const char *path, struct pv_config_diag *diag, struct pv_error *err)
{
	FILE *f = fopen(path, "rb");
	char *data = NULL;
	size_t len = 0, cap = 0;
	struct stat st;
	struct pv_config *cfg;
	bool world = false;

	if (f == NULL) {
		pv_error_set(err, PV_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
		if (diag != NULL)
			ld_strv_push(&diag->errors, err != NULL ? err->msg : path);
		return NULL;
	}
	if (fstat(fileno(f), &st) == 0)
		world = (st.st_mode & 007) != 0;
	for (;;) {
		size_t r;
		if (cap - len < 4096) {
			cap = cap ? cap * 2 : 8192;
			data = pv_realloc(data, cap);
		}
		r = fread(data + len, 1, cap - len - 1, f);
		len += r;
		if (r == 0)
			break;
	}
	if (ferror(f)) {
		pv_error_set(err, PV_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
		if (diag != NULL)
			ld_strv_push(&diag->errors, err != NULL ? err->msg : path);
		fclose(f);
		free(data);
		return NULL;
	}
	fclose(f);
	data[len] = '\0';
	cfg = load(path, data, len, diag, err, world);
	free(data);
	return cfg;
}

struct pv_config *
pv_config_ref(struct pv_config *cfg)
{
	if (cfg != NULL)
		__atomic_add_fetch(&cfg->refcount, 1, __ATOMIC_RELAXED);
	return cfg;
}

void
pv_config_unref(struct pv_config *cfg)
{
	if (cfg == NULL)
		return;
	if (__atomic_sub_fetch(&cfg->refcount, 1, __ATOMIC_ACQ_REL) == 0)
		config_free(cfg);
}

void
pv_config_diag_free(struct pv_config_diag *diag)
{
	if (diag == NULL)
		return;
	ld_strv_free(&diag->errors);
	ld_strv_free(&diag->warnings);
}

const struct pv_config_job *
pv_config_job_find(const struct pv_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_jobs; i++)
		if (strcmp(cfg->jobs[i].name, name) == 0)
			return &cfg->jobs[i];
	return NULL;
}

const struct pv_config_database *
pv_config_database_find(const struct pv_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_databases; i++)
		if (strcmp(cfg->databases[i].name, name) == 0)
			return &cfg->databases[i];
	return NULL;
}

const struct pv_config_rule *
pv_config_rule_find(const struct pv_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->alerts.n_rules; i++)
		if (strcmp(cfg->alerts.rules[i].name, name) == 0)
			return &cfg->alerts.rules[i];
	return NULL;
}

const char *
pv_job_type_name(enum pv_job_type type)
{
	if ((int)type < 0 || type >= PV_JOB_TYPE_COUNT)
		return "unknown";
	return job_type_names[type];
}

const char *
pv_severity_name(enum pv_severity sev)
{
	if ((int)sev < 0 || (size_t)sev >= N(severity_names))
		return "unknown";
	return severity_names[sev];
}

int64_t
pv_config_job_timeout(const struct pv_config_job *job)
{
	if (job->timeout > 0)
		return job->timeout;
	switch (job->type) {
	case PV_JOB_BACKUP: return 6 * 3600;
	case PV_JOB_HEALTH: return 30;
	case PV_JOB_INTEGRITY: return 30 * 60;
	case PV_JOB_VERIFY: return 6 * 3600;
	case PV_JOB_STORAGE: return 10 * 60;
	case PV_JOB_RESTORE_PROBE: return 6 * 3600;
	case PV_JOB_DRILL: return 12 * 3600;
	case PV_JOB_TYPE_COUNT: break;
	}
	return 3600;
}
