/* Persistent state: the only caller of sqlite3_*. WAL mode, versioned migrations. */
#ifndef PV_STATE_STATE_H
#define PV_STATE_STATE_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "util/error.h"

struct pv_state;

/* One job run as stored. Strings are owned by the struct (pv_state_run_clear frees them). */
struct pv_state_run {
	int64_t id;
	char *job;
	char *type;
	char *database;       /* NULL when the job has none */
	char *trigger;        /* "schedule", "catch_up", "manual" */
	time_t scheduled_for; /* 0 when none */
	time_t started;
	time_t finished; /* 0 while running */
	double duration; /* seconds */
	char *result;    /* NULL while running; else "ok", "failed", "timeout", "cancelled", "interrupted" */
	char *cause;     /* NULL or text */
	char *figures;   /* JSON object text or NULL */
};

/*
 * Open (creating if needed) the database at `path` with journal_mode=WAL, synchronous=FULL,
 * foreign_keys=ON, busy_timeout; apply pending migrations in one transaction each; then mark
 * runs left without an end (the daemon died) as "interrupted" with cause "daemon stopped while running".
 * The file is created 0600.
 */
bool pv_state_open(const char *path, struct pv_state **out, struct pv_error *err);
void pv_state_close(struct pv_state *st); /* NULL is a no-op */
int pv_state_schema_version(struct pv_state *st);
/* The schema version this build migrates to (the number of migrations it knows). */
int pv_state_schema_latest(void);

/* Runs. Each call is its own committed transaction (durable when it returns). */
bool pv_state_run_begin(struct pv_state *st, const char *job, const char *type, const char *database,
                        const char *trigger, time_t scheduled_for, time_t started, int64_t *id,
                        struct pv_error *err);
/* Writes between these commit together, with one sync (the run starts of one scheduler tick). A failed
 * commit rolls back every write since pv_state_batch_begin(). */
bool pv_state_batch_begin(struct pv_state *st, struct pv_error *err);
bool pv_state_batch_commit(struct pv_state *st, struct pv_error *err);
bool pv_state_run_end(struct pv_state *st, int64_t id, time_t finished, double duration, const char *result,
                      const char *cause, const char *figures_json, struct pv_error *err);
/* Most recent run of a job (finished or not); false with PV_ERR_NOT_FOUND when none. */
bool pv_state_run_last(struct pv_state *st, const char *job, struct pv_state_run *out, struct pv_error *err);
/* Most recent run of a job that has ended; PV_ERR_NOT_FOUND when none. */
bool pv_state_run_last_finished(struct pv_state *st, const char *job, struct pv_state_run *out,
                                struct pv_error *err);
/* Most recent runs, newest first; job NULL = all jobs; limit <= 0 = no limit.
 * *out is malloc'ed (NULL when none); free with pv_state_runs_free. */
bool pv_state_runs_list(struct pv_state *st, const char *job, int limit, struct pv_state_run **out, size_t *n,
                        struct pv_error *err);
/* Number of runs of a job (NULL = all jobs) with a given result (NULL = any). */
bool pv_state_runs_count(struct pv_state *st, const char *job, const char *result, int64_t *count,
                         struct pv_error *err);
/* Ended runs counted by job, database and result: the source of the run counters (pgvigil_job_runs_total). */
struct pv_state_run_tally {
	char *job;
	char *database; /* NULL when the runs had none */
	char *result;
	int64_t count;
	time_t last_finished; /* the latest finish among them */
	bool settled;         /* counts runs up to *settled_id only: final, they never change */
};
/*
 * Count the ended runs with id > after_id (and id <= after_id + max_rows when max_rows > 0, so a long
 * history can be read in steps). *settled_id is set to the largest id up to which every run has ended
 * (>= after_id, within the range). A run ends once and is never deleted, so the counts of the settled
 * entries are final: a caller adds them to its totals and next asks with after_id = *settled_id,
 * reading only the runs since the oldest one still running. The entries with settled false count the
 * runs of the range after *settled_id that have ended so far. *out is malloc'ed (NULL when none); free
 * with pv_state_run_tallies_free.
 */
bool pv_state_runs_tally(struct pv_state *st, int64_t after_id, int64_t max_rows, int64_t *settled_id,
                         struct pv_state_run_tally **out, size_t *n, struct pv_error *err);
void pv_state_run_tallies_free(struct pv_state_run_tally *v, size_t n);
void pv_state_run_clear(struct pv_state_run *run);
void pv_state_runs_free(struct pv_state_run *runs, size_t n);

/* Scheduler bookkeeping, for catch-up after downtime: the last calendar slot handled for a job
 * (run, or deliberately skipped). false with PV_ERR_NOT_FOUND when never recorded. */
bool pv_state_sched_get(struct pv_state *st, const char *job, time_t *last_slot, struct pv_error *err);
bool pv_state_sched_set(struct pv_state *st, const char *job, time_t last_slot, struct pv_error *err);

/* Small key/value store for daemon-level facts (e.g. "last_reload"). Caller frees *value. */
bool pv_state_kv_get(struct pv_state *st, const char *key, char **value, struct pv_error *err);
bool pv_state_kv_set(struct pv_state *st, const char *key, const char *value, struct pv_error *err);

/*
 * Backup catalog (schema version 2). A backup is keyed by (database, job, id): the id, e.g.
 * "20261124T020000Z-daily", is unique only within one database/job. Strings are owned by the struct
 * (pv_state_backup_clear frees them). Each call is its own committed transaction.
 */
struct pv_state_backup {
	char *database, *job, *id;
	char *tier;
	char *dir;             /* absolute path of the committed backup directory */
	char *sha256;          /* hex SHA-256 of the stored file */
	char *format;          /* "zst", "zst.enc", "none" */
	char *key_fingerprint; /* NULL when not encrypted */
	char *status;          /* "ok", "missing", "changed", "unreadable"; NULL at add = "ok" */
	char *verify_result;   /* NULL = never verified; else "ok", "failed" */
	char *verify_cause;    /* NULL or text, from the last verification */
	int64_t run_id;        /* the run that made it; 0 = none */
	time_t started, finished;
	time_t verified_at;   /* 0 = never */
	double duration;      /* seconds */
	int64_t size;         /* bytes of the stored file */
	int64_t archive_size; /* bytes of the plaintext custom-format archive */
	int64_t verify_count; /* verifications recorded */
	int64_t in_use;       /* running verifies/probes/restores using it; reset to 0 at open */
	bool schema_copy;
};

/* One verification ledger entry. result is "ok" or "failed"; cause NULL or text. */
struct pv_state_verification {
	int64_t id;
	time_t at;
	double duration;
	char *result, *cause;
};

/* Catalog a committed backup. verified_at/verify_result/verify_cause/verify_count are stored as given
 * (a catalog rebuilt from manifests may know them); in_use is always 0. A duplicate key fails with
 * PV_ERR_STATE "... backup DATABASE/JOB/ID already catalogued". */
bool pv_state_backup_add(struct pv_state *st, const struct pv_state_backup *b, struct pv_error *err);
/* Record a verification: sets verified_at/verify_result/verify_cause, increments verify_count and appends
 * a ledger row, in one transaction (both or neither). PV_ERR_NOT_FOUND when the backup is not catalogued. */
bool pv_state_backup_verified(struct pv_state *st, const char *database, const char *job, const char *id,
                              time_t at, double duration, bool ok, const char *cause, struct pv_error *err);
/* status: "ok", "missing", "changed", "unreadable" (anything else fails with PV_ERR_STATE). */
bool pv_state_backup_set_status(struct pv_state *st, const char *database, const char *job, const char *id,
                                const char *status, struct pv_error *err);
/* in_use += delta, clamped at 0 (a decrement below 0 is logged as a bookkeeping bug). */
bool pv_state_backup_use(struct pv_state *st, const char *database, const char *job, const char *id,
                         int delta, struct pv_error *err);
/* Remove from the catalog (the ledger keeps its rows). Refused with PV_ERR_BUSY while in_use > 0, so
 * check-and-delete is atomic; PV_ERR_NOT_FOUND when not catalogued. */
bool pv_state_backup_delete(struct pv_state *st, const char *database, const char *job, const char *id,
                            struct pv_error *err);
/* Newest first by finished; database / job NULL = any. *out is malloc'ed (NULL when none);
 * free with pv_state_backups_free. */
bool pv_state_backups_list(struct pv_state *st, const char *database, const char *job,
                           struct pv_state_backup **out, size_t *n, struct pv_error *err);
/* Find by "ID" or "DATABASE/JOB/ID" (the database part may itself contain '/'). A bare ID catalogued
 * under several database/job pairs fails with PV_ERR_USAGE "ambiguous: ID exists for db/job and
 * db2/job2; use DATABASE/JOB/ID"; a malformed reference with PV_ERR_USAGE; none with PV_ERR_NOT_FOUND. */
bool pv_state_backup_find(struct pv_state *st, const char *ref, struct pv_state_backup *out,
                          struct pv_error *err);
/* Newest (by finished) backup of a database, of one job or any (job NULL), whose last verification
 * succeeded and whose status is "ok". PV_ERR_NOT_FOUND when none. */
bool pv_state_backup_newest_verified(struct pv_state *st, const char *database, const char *job,
                                     struct pv_state_backup *out, struct pv_error *err);
/* Backups to verify, in order: never verified (oldest finished first), then least recently verified.
 * Every status except "missing". limit <= 0 = all. */
bool pv_state_backups_to_verify(struct pv_state *st, int limit, struct pv_state_backup **out, size_t *n,
                                struct pv_error *err);
/* The ledger of one backup, newest first (kept after the backup is deleted); limit <= 0 = all.
 * Free with pv_state_verifications_free. */
bool pv_state_verifications_list(struct pv_state *st, const char *database, const char *job, const char *id,
                                 int limit, struct pv_state_verification **out, size_t *n,
                                 struct pv_error *err);
void pv_state_backup_clear(struct pv_state_backup *b);
void pv_state_backups_free(struct pv_state_backup *v, size_t n);
void pv_state_verifications_free(struct pv_state_verification *v, size_t n);

/*
 * Notification outbox (schema version 3). Every notification is written here before any attempt to
 * send it; the sender (src/notify/outbox) then moves it from "pending" to "sent", "failed" (a permanent
 * error) or "dropped" (older than the notifier's max_age), each exactly once. Times: created and sent_at
 * in seconds, next_attempt_ms in milliseconds since the epoch. Strings are owned by the struct
 * (pv_state_outbox_msg_clear frees them). Each call is its own committed transaction.
 */
struct pv_state_outbox_msg {
	int64_t id;
	char *notifier;
	time_t created;
	int64_t next_attempt_ms;
	int64_t attempts; /* attempts that have ended (sent, retried or failed) */
	char *status;     /* "pending", "sent", "failed", "dropped" */
	char *payload;    /* JSON text */
	char *idempotency_key;
	char *last_error; /* NULL or text */
	time_t sent_at;   /* 0 until sent */
};

struct pv_state_outbox_counts {
	int64_t pending, sent, failed, dropped;
};

/* Queue a message, due at next_attempt_ms. The idempotency key is unique across the whole outbox: adding
 * a known key changes nothing and returns the id already queued under it, with *added (may be NULL)
 * false. */
bool pv_state_outbox_add(struct pv_state *st, const char *notifier, time_t created, int64_t next_attempt_ms,
                         const char *payload, const char *idempotency_key, int64_t *id, bool *added,
                         struct pv_error *err);
/* PV_ERR_NOT_FOUND when there is no such message. */
bool pv_state_outbox_get(struct pv_state *st, int64_t id, struct pv_state_outbox_msg *out,
                         struct pv_error *err);
/* Pending messages with next_attempt_ms <= now_ms, earliest first (ties by id); limit <= 0 = all.
 * Free with pv_state_outbox_msgs_free. */
bool pv_state_outbox_due(struct pv_state *st, int64_t now_ms, int limit, struct pv_state_outbox_msg **out,
                         size_t *n, struct pv_error *err);
/* The earliest next_attempt_ms after after_ms of any pending message (what a sender waits for once it has
 * taken everything due); PV_ERR_NOT_FOUND when there is none. */
bool pv_state_outbox_next_due(struct pv_state *st, int64_t after_ms, int64_t *next_ms, struct pv_error *err);
/*
 * The marks move a pending message only. On a message that has already left "pending" they fail with
 * PV_ERR_STATE ("... already sent"), on an unknown id with PV_ERR_NOT_FOUND. sent, retry and failed
 * count an attempt; retry also sets the next attempt and last_error; dropped keeps last_error when
 * reason is NULL.
 */
bool pv_state_outbox_mark_sent(struct pv_state *st, int64_t id, time_t sent_at, struct pv_error *err);
bool pv_state_outbox_mark_retry(struct pv_state *st, int64_t id, int64_t next_attempt_ms, const char *error,
                                struct pv_error *err);
bool pv_state_outbox_mark_failed(struct pv_state *st, int64_t id, const char *error, struct pv_error *err);
bool pv_state_outbox_mark_dropped(struct pv_state *st, int64_t id, const char *reason, struct pv_error *err);
/* Messages per status for one notifier (NULL = all notifiers). */
bool pv_state_outbox_counts(struct pv_state *st, const char *notifier, struct pv_state_outbox_counts *out,
                            struct pv_error *err);
void pv_state_outbox_msg_clear(struct pv_state_outbox_msg *m);
void pv_state_outbox_msgs_free(struct pv_state_outbox_msg *v, size_t n);

/*
 * Silences (schema version 4): `rule` (for `database` only, unless NULL) is silenced while
 * created <= now < until and it has not been removed. Rows are kept after they expire or are removed.
 */
struct pv_state_silence {
	int64_t id;
	char *rule;
	char *database; /* or NULL: every database */
	time_t created, until;
	char *comment;
	char *author;     /* the user who added it */
	time_t removed;   /* 0 unless removed */
	char *removed_by; /* or NULL */
};

/* Add one (id, removed and removed_by are ignored); sets *id. */
bool pv_state_silence_add(struct pv_state *st, const struct pv_state_silence *sil, int64_t *id,
                          struct pv_error *err);
/* Silences active at active_at (not removed, until > active_at), or every silence ever when active_at is 0;
 * oldest first. Free with pv_state_silences_free. */
bool pv_state_silences_list(struct pv_state *st, time_t active_at, struct pv_state_silence **out, size_t *n,
                            struct pv_error *err);
/* End an active silence early; PV_ERR_NOT_FOUND when there is no active silence with that id. */
bool pv_state_silence_remove(struct pv_state *st, int64_t id, time_t at, const char *by,
                             struct pv_error *err);
void pv_state_silences_free(struct pv_state_silence *v, size_t n);

/* The alert log: one row per notification the alert engine produced, sent or suppressed. */
struct pv_state_alert_event {
	int64_t id;
	time_t at;
	char *kind; /* "firing", "repeat", "severity", "resolved", "event" */
	char *rule;
	char *severity; /* "info", "warning", "critical" */
	char *fingerprint;
	char *database;   /* or NULL */
	char *job;        /* or NULL */
	char *value;      /* or NULL */
	char *threshold;  /* or NULL */
	char *suppressed; /* NULL when delivered; else "silence 3" or "maintenance" */
};

/* Append one (id is ignored). pv_state_prune_history forgets old rows. */
bool pv_state_alert_log_add(struct pv_state *st, const struct pv_state_alert_event *e, struct pv_error *err);
/* The newest `limit` rows (<= 0: all), newest first. Free with pv_state_alert_events_free. */
bool pv_state_alert_log_list(struct pv_state *st, int limit, struct pv_state_alert_event **out, size_t *n,
                             struct pv_error *err);
void pv_state_alert_events_free(struct pv_state_alert_event *v, size_t n);

/*
 * History kept for daemon.keep_history: one batch of deletions, at most `limit` rows of each kind.
 * Runs that finished and started before `before`, except the newest PV_STATE_RUNS_KEPT of each job
 * (status, failure streaks and the rules read them however old they are); notifications sent,
 * dropped or failed that were created before it (pending ones stay); alert log rows before it.
 * A count equal to `limit` means there may be more.
 */
#define PV_STATE_RUNS_KEPT 100
struct pv_state_pruned {
	size_t runs, notifications, alert_log;
};
bool pv_state_prune_history(struct pv_state *st, time_t before, size_t limit, struct pv_state_pruned *out,
                            struct pv_error *err);

#endif
