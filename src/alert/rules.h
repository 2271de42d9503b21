/* Alert rules (pure): a snapshot of what the jobs recorded, plus "now", in; the conditions that are true out.
 */
#ifndef PV_ALERT_RULES_H
#define PV_ALERT_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "config/config.h"

/*
 * Thresholds, each boundary stated (the unit tests pin them at the exact second / value):
 *
 *   backup_stale         age of the database's newest successful backup >= after      (inclusive)
 *   connectivity_lost    now - failing_since >= after                                 (inclusive)
 *   restore_failures     consecutive failed probes/drills >= consecutive              (inclusive)
 *   rpo_breach           age of the newest verified backup > objectives.rpo           (exclusive: "met" is
 * <=, as in the report) backup_size_anomaly  |size - median| / median > change (exclusive) backup_slow
 * duration > factor * median                                   (exclusive) storage_usage        used_ratio >
 * above                                           (exclusive) "storage full soon" days_until_full <
 * PV_ALERT_FULL_SOON_DAYS                   (exclusive) rto_breach           newest successful probe/drill
 * total_seconds > objectives.rto (exclusive)
 *
 * The medians use the job's successful runs before its last run, and only when there are at least
 * PV_ALERT_MEDIAN_MIN of them (at most PV_ALERT_RECENT_MAX newest are used).
 */
#define PV_ALERT_MEDIAN_MIN     3
#define PV_ALERT_RECENT_MAX     10
#define PV_ALERT_FULL_SOON_DAYS 7.0

/* Stable fingerprint keys for the storage conditions (they belong to no database or job). */
#define PV_ALERT_FP_STORAGE   "storage_usage/storage"
#define PV_ALERT_FP_FULL_SOON "storage_usage/full_soon"

/*
 * What the rules look at. Every pointer is borrowed for the duration of the call; the daemon fills this
 * from the state database (the rules never touch it). Times are UTC seconds; 0 means "none".
 */
struct pv_alert_snap_database {
	const char *name;
	int64_t rpo; /* objectives.rpo, 0 = no objective */
	int64_t rto; /* objectives.rto, 0 = no objective */
	/* When the database was first configured: the age origin for rpo_breach while no backup is verified.
	 */
	time_t since;
	time_t newest_verified_finished; /* 0: none */
	const char *newest_verified_id;  /* or NULL */
	/* Health: the newest health run that recorded a "connected" figure. */
	bool have_health;
	bool connected;
	time_t failing_since; /* start of the current failing streak when !connected */
	/* The newest successful restore probe or drill (the report's achieved RTO). */
	bool have_restore;
	double restore_seconds; /* its total_seconds */
	time_t restore_at;
	const char *restore_kind;       /* "restore_probe" or "drill"; or NULL */
	int consecutive_probe_failures; /* the largest consecutive_failures over its probe and drill jobs */
};

struct pv_alert_snap_backup_job {
	const char *name;
	const char *database;
	/* When the job was first configured: the age origin for backup_stale while it never succeeded. */
	time_t since;
	time_t last_success_finished; /* 0: never */
	/* Successful runs BEFORE the last run, newest first (the median baseline). */
	const int64_t *recent_sizes;
	size_t n_recent_sizes;
	const double *recent_durations;
	size_t n_recent_durations;
	/* The last finished run. */
	bool have_last;
	bool last_ok;
	int64_t last_size;
	double last_duration; /* dump_seconds */
	time_t last_finished;
	const char *last_backup_id; /* or NULL */
};

struct pv_alert_snap_storage {
	bool have; /* a storage run recorded figures */
	double used_ratio;
	bool have_forecast;
	double days_until_full;
};

/* Scheduled runs of a job that did not start within grace, since the last evaluation. */
struct pv_alert_snap_missed {
	const char *job;
	const char *database; /* or NULL */
	int count;
	time_t last_slot;
};

struct pv_alert_snap_notifier {
	const char *name;
	bool broken;
	const char *reason; /* or NULL */
};

/*
 * An info event since the last evaluation: rule is PV_RULE_BACKUP_SUCCEEDED (backup_id, size, seconds),
 * PV_RULE_RESTORE_PROBE_RESULT (ok, seconds, backup_id, detail) or PV_RULE_DRILL_SUMMARY (ok, seconds,
 * detail).
 */
struct pv_alert_snap_event {
	enum pv_rule rule;
	const char *job;
	const char *database;
	const char *backup_id; /* or NULL */
	bool ok;
	int64_t size;
	double seconds;
	time_t at;
	const char *detail; /* or NULL */
};

struct pv_alert_snapshot {
	const struct pv_alert_snap_database *databases;
	size_t n_databases;
	const struct pv_alert_snap_backup_job *backups;
	size_t n_backups;
	struct pv_alert_snap_storage storage;
	const struct pv_alert_snap_missed *missed;
	size_t n_missed;
	const struct pv_alert_snap_notifier *notifiers;
	size_t n_notifiers;
	const struct pv_alert_snap_event *events;
	size_t n_events;
};

/*
 * One true condition. Stateful ones are identified by their fingerprint "rule/database", "rule/job" or
 * "rule/notifier" (stable across evaluations and restarts). One-shot ones (the info events and
 * job_missed, which is an event too: a miss is not a state that could later "resolve") are sent once
 * by the engine and keep no state. All strings are owned.
 */
struct pv_alert_condition {
	enum pv_rule rule;
	enum pv_severity severity;
	bool oneshot;
	char *fingerprint;
	char *value;     /* what was observed: "last successful backup 26h ago" */
	char *threshold; /* what it was held against: "24h"; "" for events */
	char *database;  /* or NULL */
	char *job;       /* or NULL */
	char *notifier;  /* notifier_broken only, else NULL */
	time_t at;       /* when observed: now, or the event's time */
};

struct pv_alert_conditions {
	struct pv_alert_condition *v;
	size_t n;
	size_t cap;
};

/*
 * Evaluate every enabled rule of cfg->alerts. `out` must be zeroed or previously used; it is cleared
 * first. Uses cfg only for cfg->alerts.rules and the jobs' grace (job_missed threshold text).
 */
void pv_alert_rules_eval(const struct pv_config *cfg, const struct pv_alert_snapshot *snap, time_t now,
                         struct pv_alert_conditions *out);
void pv_alert_conditions_clear(struct pv_alert_conditions *c);
/* Append a copy (for the daemon's own conditions and for tests); strings may be NULL. */
void pv_alert_conditions_add(struct pv_alert_conditions *c, const struct pv_alert_condition *cond);
const struct pv_alert_condition *pv_alert_conditions_find(const struct pv_alert_conditions *c,
                                                          const char *fingerprint);

/* "backup_stale", ...; NULL when out of range. */
const char *pv_alert_rule_name(enum pv_rule rule);
bool pv_alert_rule_from_name(const char *name, enum pv_rule *out);
/* Info rules are events: sent once, never firing or resolved. */
bool pv_alert_rule_is_event(enum pv_rule rule);
/* Human duration: "45s", "4m59s", "26h", "1h30m", "3d4h". buf >= 32 bytes. */
const char *pv_alert_duration(double secs, char *buf, size_t size);

#endif
