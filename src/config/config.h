/* The configuration: YAML -> immutable, validated, reference-counted struct (SPEC §3). */
#ifndef PV_CONFIG_CONFIG_H
#define PV_CONFIG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "util/error.h"
#include "util/log.h"

struct pv_cron;
struct pv_tz;

/* A list of strings. */
struct pv_strv {
	char **v;
	size_t n;
};

/*
 * A resolved secret. The configuration accepts, for a secret KEY, either `KEY: value`,
 * `KEY: env:NAME` (read from the environment at load time), or `KEY_file: /path`
 * (file must not be group- or world-readable; one trailing newline is stripped).
 */
struct pv_secret {
	char *value;  /* NULL when not configured */
	char *source; /* "inline", "env:NAME" or "file:/path"; safe to print */
};

enum pv_job_type {
	PV_JOB_BACKUP,
	PV_JOB_HEALTH,
	PV_JOB_INTEGRITY,
	PV_JOB_VERIFY,
	PV_JOB_STORAGE,
	PV_JOB_RESTORE_PROBE,
	PV_JOB_DRILL,
	PV_JOB_TYPE_COUNT
};

enum pv_severity { PV_SEV_INFO = 0, PV_SEV_WARNING = 1, PV_SEV_CRITICAL = 2 };
#define PV_SEV_MASK(s) (1u << (s))

enum pv_compression { PV_COMPRESSION_ZSTD, PV_COMPRESSION_NONE };

enum pv_notifier_type { PV_NOTIFIER_SLACK, PV_NOTIFIER_WEBHOOK, PV_NOTIFIER_EMAIL, PV_NOTIFIER_HEARTBEAT };

enum pv_starttls { PV_STARTTLS_REQUIRED, PV_STARTTLS_IMPLICIT, PV_STARTTLS_NONE };

/* Durations are in seconds; 0 means "not set" where the schema makes it optional. */

#define PV_CONFIG_KEEP_HISTORY_DEFAULT (90 * 86400)
#define PV_CONFIG_KEEP_HISTORY_MIN     (31 * 86400)

struct pv_config_daemon {
	char *state_dir;             /* default /var/lib/pgvigil */
	char *socket;                /* default /run/pgvigil/pgvigil.sock */
	struct pv_strv admins;       /* user names and "@group" names; default [root] */
	char *timezone;              /* default UTC */
	int max_parallel_jobs;       /* default 2, >= 1 */
	enum pv_log_level log_level; /* default info */
	char *metrics_listen;        /* "host:port" or NULL */
	char *pg_bin_dir;            /* or NULL */
	int64_t keep_history;        /* seconds of runs, sent notifications, alert log; default 90d */
};

struct pv_config_storage {
	char *path; /* default /var/lib/pgvigil/backups */
	enum pv_compression compression;
	int compression_level;     /* 1..19, default 3 */
	char *encryption_key_file; /* or NULL */
	struct pv_strv old_key_files;
};

struct pv_config_restore_target {
	char *name;
	char *conninfo;
	struct pv_secret password;
};

struct pv_config_database {
	char *name;
	char *conninfo;
	struct pv_secret password;
	struct pv_strv critical_tables;
	int expected_tables;                             /* -1 when not set */
	int64_t rpo;                                     /* objectives.rpo, 0 when not set */
	int64_t rto;                                     /* objectives.rto, 0 when not set */
	char *restore_target_name;                       /* or NULL */
	struct pv_config_restore_target *restore_target; /* resolved reference, or NULL */
	struct pv_strv assertions;
};

struct pv_config_job {
	char *name;
	enum pv_job_type type;
	char *database_name;                 /* NULL for verify/storage when not given */
	struct pv_config_database *database; /* resolved reference, or NULL */

	/* Exactly one of schedule / every. */
	struct pv_cron *cron; /* parsed `schedule`, or NULL */
	int64_t every;        /* `every`, 0 when calendar */
	struct pv_tz *tz;     /* job timezone, else daemon.timezone */
	int64_t timeout;      /* 0 = default for the type (see pv_config_job_timeout) */
	int64_t jitter;       /* default 0 */
	bool catch_up;        /* default true for calendar jobs, false for `every` */
	int64_t grace;        /* default: 5m for calendar jobs, the interval (at least 1m) for `every` */
	bool heavy;           /* backup, verify, restore_probe, drill: bound by max_parallel_jobs */

	/* backup */
	int keep;   /* >= 1; required for backup */
	char *tier; /* "daily", "weekly", "monthly", ... default inferred from name, else job name */
	struct pv_strv schemas;            /* -n */
	struct pv_strv exclude_schemas;    /* -N */
	struct pv_strv exclude_table_data; /* --exclude-table-data */
	bool schema_copy;                  /* also keep a schema-only dump */

	/* health */
	bool keep_connection; /* reuse one connection between runs instead of connecting each time */
};

/* The alert rules of SPEC §4; alerts.rules[PV_RULE_X] is rule X (all present, defaults filled in). */
enum pv_rule {
	PV_RULE_BACKUP_STALE,         /* critical, after 24h */
	PV_RULE_CONNECTIVITY_LOST,    /* critical, after 5m */
	PV_RULE_RESTORE_FAILURES,     /* critical, consecutive 3 */
	PV_RULE_RPO_BREACH,           /* critical */
	PV_RULE_BACKUP_SIZE_ANOMALY,  /* warning, change 50% */
	PV_RULE_BACKUP_SLOW,          /* warning, factor 2.0 */
	PV_RULE_STORAGE_USAGE,        /* warning, above 80% */
	PV_RULE_RTO_BREACH,           /* warning */
	PV_RULE_BACKUP_SUCCEEDED,     /* info */
	PV_RULE_RESTORE_PROBE_RESULT, /* info */
	PV_RULE_DRILL_SUMMARY,        /* info */
	PV_RULE_JOB_MISSED,           /* warning */
	PV_RULE_NOTIFIER_BROKEN,      /* critical */
	PV_RULE_COUNT
};

struct pv_config_rule {
	char *name; /* e.g. "backup_stale" */
	enum pv_rule id;
	bool enabled;
	enum pv_severity severity;
	int64_t after;   /* backup_stale, connectivity_lost */
	int consecutive; /* restore_failures */
	double change;   /* backup_size_anomaly, fraction (0.5 = 50%) */
	double factor;   /* backup_slow */
	double above;    /* storage_usage, fraction */
};

struct pv_config_alerts {
	int64_t group_wait;           /* default 30s */
	int64_t repeat_every;         /* default 4h */
	bool send_resolved;           /* default true */
	struct pv_config_rule *rules; /* every known rule, indexed by enum pv_rule, defaults filled in */
	size_t n_rules;
};

struct pv_config_notifier {
	char *name;
	enum pv_notifier_type type;
	unsigned severities;    /* PV_SEV_MASK bits; default all (heartbeat: 0, it carries no alerts) */
	struct pv_cron *digest; /* or NULL */
	int64_t max_age;        /* default 24h */
	/* slack */
	struct pv_secret webhook_url;
	/* webhook */
	struct pv_secret url; /* webhook `url`, heartbeat `url` / `url_file` */
	struct pv_secret secret;
	/* email */
	char *smtp_url;
	enum pv_starttls starttls; /* default implicit for smtps://, else required */
	char *username;
	struct pv_secret password;
	char *from;
	struct pv_strv to;
	char *ca_file; /* CA certificates to trust instead of the system's (HTTPS, SMTP over TLS) */
	/* heartbeat */
	int64_t every; /* default 5m */
	bool post;     /* method: POST (default GET) */
};

struct pv_config {
	int refcount;
	char *path; /* file it was loaded from */
	struct pv_config_daemon daemon;
	struct pv_config_storage storage;
	struct pv_config_database *databases;
	size_t n_databases;
	struct pv_config_restore_target *restore_targets;
	size_t n_restore_targets;
	struct pv_config_job *jobs;
	size_t n_jobs;
	struct pv_config_alerts alerts;
	struct pv_config_notifier *notifiers;
	size_t n_notifiers;
};

/* Diagnostics collected while loading: every error, not only the first, and warnings. */
struct pv_config_diag {
	struct pv_strv errors;   /* "FILE:LINE:COL: KEY.PATH: message" */
	struct pv_strv warnings; /* same shape */
};

/*
 * Load and validate. On failure returns NULL, fills err with the first error (code is one of
 * PV_ERR_CONFIG_*), and diag (may be NULL) with all of them. Warnings go to diag on success too.
 */
struct pv_config *pv_config_load(const char *path, struct pv_config_diag *diag, struct pv_error *err);
/* Same, from a string (for tests); `name` is used as FILE in messages. */
struct pv_config *pv_config_load_string(const char *name, const char *yaml, struct pv_config_diag *diag,
                                        struct pv_error *err);
struct pv_config *pv_config_ref(struct pv_config *cfg);
void pv_config_unref(struct pv_config *cfg); /* NULL is a no-op */
void pv_config_diag_free(struct pv_config_diag *diag);

/* Print the effective configuration as YAML, secrets shown as "<redacted: SOURCE>". */
void pv_config_dump(const struct pv_config *cfg, FILE *out);

const struct pv_config_job *pv_config_job_find(const struct pv_config *cfg, const char *name);
const struct pv_config_database *pv_config_database_find(const struct pv_config *cfg, const char *name);
const struct pv_config_rule *pv_config_rule_find(const struct pv_config *cfg, const char *name);

const char *pv_job_type_name(enum pv_job_type type); /* "backup", "restore_probe", ... */
const char *pv_severity_name(enum pv_severity sev);
/*
 * Effective timeout: the job's, else a default per type: backup 6h, health 30s, integrity 30m,
 * verify 6h, storage 10m, restore_probe 6h, drill 12h.
 */
int64_t pv_config_job_timeout(const struct pv_config_job *job);

/* Parse "30s", "5m", "4h", "7d", "2w", combinations "1h30m", plain seconds "90". */
bool pv_duration_parse(const char *s, int64_t *out);
/* Format seconds as the shortest duration string ("1h30m"); buf >= 32 bytes. */
const char *pv_duration_format(int64_t secs, char *buf, size_t size);

#endif
