/* Persistent state in SQLite: opening, migrations, and the queries for runs, scheduling, kv, the
 * backup catalog with its verification ledger, and the notification outbox. */
#include "state/state.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/log.h"
#include "util/mem.h"

/* 0x70677667, "pgvg": marks the file as ours, so a foreign SQLite database is refused, not migrated.
 * Migration 1 writes it as a literal (pragmas take no expressions); a mismatch fails every reopen test. */
#define STATE_APPLICATION_ID  1885828711
#define STATE_BUSY_TIMEOUT_MS 5000

/*
 * Schema migrations, applied in order: migrations[i] takes the schema from version i to i + 1.
 * Append only; never edit one that has shipped, since databases in the field already ran it.
 * Column names "database" and "trigger" are SQL keywords, hence quoted everywhere.
 * Run ids appear in logs, so AUTOINCREMENT: an id is never reused after rows are deleted.
 */
static const char *const migrations[] = {
        /* 1: run history, scheduler bookkeeping, daemon facts. */
        "PRAGMA application_id = 1885828711;\n"
        "CREATE TABLE runs (\n"
        "	id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
        "	job TEXT NOT NULL,\n"
        "	type TEXT NOT NULL,\n"
        "	\"database\" TEXT,\n"
        "	\"trigger\" TEXT NOT NULL,\n"
        "	scheduled_for INTEGER,\n"
        "	started INTEGER NOT NULL,\n"
        "	finished INTEGER,\n"
        "	duration REAL,\n"
        "	result TEXT,\n"
        "	cause TEXT,\n"
        "	figures TEXT\n"
        ");\n"
        "CREATE INDEX runs_job_id ON runs (job, id);\n"
        "CREATE TABLE sched (job TEXT PRIMARY KEY, last_slot INTEGER NOT NULL) WITHOUT ROWID;\n"
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;\n",
        /*
         * 2: backup catalog and verification ledger. A backup id is unique only within its database/job.
         * run_id has no foreign key: run history may be trimmed while the backup it made is kept.
         * The ledger has none either: it outlives the backups it describes.
         */
        "CREATE TABLE backups (\n"
        "	\"database\" TEXT NOT NULL,\n"
        "	job TEXT NOT NULL,\n"
        "	id TEXT NOT NULL,\n"
        "	tier TEXT NOT NULL,\n"
        "	dir TEXT NOT NULL,\n"
        "	run_id INTEGER,\n"
        "	started INTEGER NOT NULL,\n"
        "	finished INTEGER NOT NULL,\n"
        "	duration REAL NOT NULL,\n"
        "	size INTEGER NOT NULL,\n"
        "	archive_size INTEGER NOT NULL,\n"
        "	sha256 TEXT NOT NULL,\n"
        "	format TEXT NOT NULL CHECK (format IN ('zst', 'zst.enc', 'none')),\n"
        "	key_fingerprint TEXT,\n"
        "	schema_copy INTEGER NOT NULL DEFAULT 0 CHECK (schema_copy IN (0, 1)),\n"
        "	status TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'missing', 'changed', "
        "'unreadable')),\n"
        "	verified_at INTEGER,\n"
        "	verify_result TEXT CHECK (verify_result IN ('ok', 'failed')),\n"
        "	verify_cause TEXT,\n"
        "	verify_count INTEGER NOT NULL DEFAULT 0,\n"
        "	in_use INTEGER NOT NULL DEFAULT 0 CHECK (in_use >= 0),\n"
        "	PRIMARY KEY (\"database\", job, id)\n"
        ") WITHOUT ROWID;\n"
        "CREATE INDEX backups_finished ON backups (\"database\", job, finished);\n"
        "CREATE INDEX backups_id ON backups (id);\n"
        "CREATE TABLE verifications (\n"
        "	id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
        "	\"database\" TEXT NOT NULL,\n"
        "	job TEXT NOT NULL,\n"
        "	backup_id TEXT NOT NULL,\n"
        "	at INTEGER NOT NULL,\n"
        "	duration REAL NOT NULL,\n"
        "	result TEXT NOT NULL CHECK (result IN ('ok', 'failed')),\n"
        "	cause TEXT\n"
        ");\n"
        "CREATE INDEX verifications_backup ON verifications (\"database\", job, backup_id, at);\n",
        /*
         * 3: the notification outbox. A notification is written here before any attempt to send it, so it
         * survives restarts and endpoint outages. next_attempt is in milliseconds since the epoch (Slack
         * pacing and short backoffs need better than seconds); created and sent_at are seconds like every
         * other time here. The idempotency key travels with each attempt, so a receiver can drop the
         * duplicates that at-least-once delivery allows; UNIQUE makes enqueueing the same key twice a no-op.
         */
        "CREATE TABLE outbox (\n"
        "	id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
        "	notifier TEXT NOT NULL,\n"
        "	created INTEGER NOT NULL,\n"
        "	next_attempt INTEGER NOT NULL,\n"
        "	attempts INTEGER NOT NULL DEFAULT 0,\n"
        "	status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed', "
        "'dropped')),\n"
        "	payload TEXT NOT NULL,\n"
        "	idempotency_key TEXT NOT NULL UNIQUE,\n"
        "	last_error TEXT,\n"
        "	sent_at INTEGER\n"
        ");\n"
        "CREATE INDEX outbox_due ON outbox (status, next_attempt, id);\n"
        "CREATE INDEX outbox_notifier ON outbox (notifier, status);\n",
        /* 3 -> 4: silences and the alert log. A silence is never deleted, only removed (removed set),
         * so `silence list --all` shows who silenced what. The alert log keeps every notification the
         * alert engine produced, delivered or suppressed, for `alerts history`. */
        "CREATE TABLE silences (\n"
        "	id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
        "	rule TEXT NOT NULL,\n"
        "	\"database\" TEXT,\n"
        "	created INTEGER NOT NULL,\n"
        "	until INTEGER NOT NULL,\n"
        "	comment TEXT NOT NULL,\n"
        "	author TEXT NOT NULL,\n"
        "	removed INTEGER,\n"
        "	removed_by TEXT\n"
        ");\n"
        "CREATE TABLE alert_log (\n"
        "	id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
        "	at INTEGER NOT NULL,\n"
        "	kind TEXT NOT NULL,\n"
        "	rule TEXT NOT NULL,\n"
        "	severity TEXT NOT NULL,\n"
        "	fingerprint TEXT NOT NULL,\n"
        "	\"database\" TEXT,\n"
        "	job TEXT,\n"
        "	value TEXT,\n"
        "	threshold TEXT,\n"
        "	suppressed TEXT\n"
        ");\n"
        "CREATE INDEX alert_log_at ON alert_log (at);\n",
};

#define MIGRATION_COUNT ((int)(sizeof(migrations) / sizeof(migrations[0])))

#define RUN_COLUMNS                                                                                          \
	"id, job, type, \"database\", \"trigger\", scheduled_for, started, finished, duration, "             \
	"result, cause, figures"

#define OUTBOX_COLUMNS                                                                                       \
	"id, notifier, created, next_attempt, attempts, status, payload, idempotency_key, last_error, "      \
	"sent_at"

#define BACKUP_COLUMNS                                                                                       \
	"\"database\", job, id, tier, dir, run_id, started, finished, duration, size, archive_size, "        \
	"sha256, format, key_fingerprint, schema_copy, status, verified_at, verify_result, verify_cause, "   \
	"verify_count, in_use"

/* Ties on finish time broken by key, so listings are stable. */
#define BACKUP_NEWEST_FIRST " ORDER BY finished DESC, id DESC, \"database\", job"

enum stmt_id {
	STMT_RUN_BEGIN,
	STMT_RUN_END,
	STMT_RUN_STATE,
	STMT_RUN_LAST,
	STMT_RUN_LAST_FINISHED,
	STMT_RUNS_LIST_JOB,
	STMT_RUNS_LIST_ALL,
	STMT_RUNS_COUNT_JOB,
	STMT_RUNS_COUNT_ALL,
	STMT_RUNS_SETTLED,
	STMT_RUNS_TALLY,
	STMT_SCHED_GET,
	STMT_SCHED_SET,
	STMT_KV_GET,
	STMT_KV_SET,
	STMT_BEGIN,
	STMT_COMMIT,
	STMT_ROLLBACK,
	STMT_BACKUP_ADD,
	STMT_BACKUP_VERIFIED,
	STMT_VERIFICATION_ADD,
	STMT_BACKUP_SET_STATUS,
	STMT_BACKUP_USE,
	STMT_BACKUP_USE_CLAMP,
	STMT_BACKUP_DELETE,
	STMT_BACKUP_IN_USE,
	STMT_BACKUPS_LIST_DB_JOB,
	STMT_BACKUPS_LIST_ANY,
	STMT_BACKUP_GET,
	STMT_BACKUP_FIND_ID,
	STMT_BACKUP_NEWEST_VERIFIED,
	STMT_BACKUPS_TO_VERIFY,
	STMT_VERIFICATIONS_LIST,
	STMT_OUTBOX_ADD,
	STMT_OUTBOX_BY_KEY,
	STMT_OUTBOX_GET,
	STMT_OUTBOX_DUE,
	STMT_OUTBOX_NEXT_DUE,
	STMT_OUTBOX_SENT,
	STMT_OUTBOX_RETRY,
	STMT_OUTBOX_FAILED,
	STMT_OUTBOX_DROPPED,
	STMT_OUTBOX_STATUS,
	STMT_OUTBOX_COUNTS,
	STMT_SILENCE_ADD,
	STMT_SILENCES_LIST,
	STMT_SILENCE_REMOVE,
	STMT_ALERT_LOG_ADD,
	STMT_ALERT_LOG_PRUNE,
	STMT_RUNS_PRUNE,
	STMT_OUTBOX_PRUNE,
	STMT_ALERT_LOG_LIST,
	STMT_COUNT
};

static const char *const stmt_sql[STMT_COUNT] = {
        [STMT_RUN_BEGIN] = "INSERT INTO runs (job, type, \"database\", \"trigger\", scheduled_for, started) "
                           "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        /* "result IS NULL": a run ends once; a second end is a caller bug, not an overwrite. */
        [STMT_RUN_END] =
                "UPDATE runs SET finished = ?2, duration = ?3, result = ?4, cause = ?5, figures = ?6 "
                "WHERE id = ?1 AND result IS NULL",
        [STMT_RUN_STATE] = "SELECT result FROM runs WHERE id = ?1",
        [STMT_RUN_LAST] = "SELECT " RUN_COLUMNS " FROM runs WHERE job = ?1 ORDER BY id DESC LIMIT 1",
        [STMT_RUN_LAST_FINISHED] =
                "SELECT " RUN_COLUMNS
                " FROM runs WHERE job = ?1 AND result IS NOT NULL ORDER BY id DESC LIMIT 1",
        /* Separate statements with and without a job, so the (job, id) index is usable. */
        [STMT_RUNS_LIST_JOB] = "SELECT " RUN_COLUMNS " FROM runs WHERE job = ?1 ORDER BY id DESC LIMIT ?2",
        [STMT_RUNS_LIST_ALL] = "SELECT " RUN_COLUMNS " FROM runs ORDER BY id DESC LIMIT ?1",
        [STMT_RUNS_COUNT_JOB] = "SELECT count(*) FROM runs WHERE job = ?1 AND (?2 IS NULL OR result = ?2)",
        [STMT_RUNS_COUNT_ALL] = "SELECT count(*) FROM runs WHERE ?1 IS NULL OR result = ?1",
        /* Both walk the rowid range after ?1 only: the tally reads what changed since it was last asked. */
        [STMT_RUNS_SETTLED] =
                "SELECT coalesce((SELECT id - 1 FROM runs WHERE id > ?1 AND id <= ?2 AND result IS NULL "
                "ORDER BY id LIMIT 1), (SELECT max(id) FROM runs WHERE id > ?1 AND id <= ?2), ?1)",
        [STMT_RUNS_TALLY] = "SELECT job, \"database\", result, count(*), max(finished), id <= ?2 FROM runs "
                            "WHERE id > ?1 AND id <= ?3 AND result IS NOT NULL "
                            "GROUP BY job, \"database\", result, id <= ?2",
        [STMT_SCHED_GET] = "SELECT last_slot FROM sched WHERE job = ?1",
        [STMT_SCHED_SET] = "INSERT INTO sched (job, last_slot) VALUES (?1, ?2) "
                           "ON CONFLICT (job) DO UPDATE SET last_slot = excluded.last_slot",
        [STMT_KV_GET] = "SELECT value FROM kv WHERE key = ?1",
        [STMT_KV_SET] = "INSERT INTO kv (key, value) VALUES (?1, ?2) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        /* IMMEDIATE takes the write lock up front, so a multi-statement change never fails half-way
         * on a lock upgrade. */
        [STMT_BEGIN] = "BEGIN IMMEDIATE",
        [STMT_COMMIT] = "COMMIT",
        [STMT_ROLLBACK] = "ROLLBACK",
        [STMT_BACKUP_ADD] =
                "INSERT INTO backups (" BACKUP_COLUMNS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, "
                "?9, ?10, ?11, ?12, ?13, ?14, ?15, coalesce(?16, 'ok'), ?17, ?18, ?19, ?20, 0)",
        [STMT_BACKUP_VERIFIED] =
                "UPDATE backups SET verified_at = ?4, verify_result = ?5, verify_cause = ?6, "
                "verify_count = verify_count + 1 "
                "WHERE \"database\" = ?1 AND job = ?2 AND id = ?3",
        [STMT_VERIFICATION_ADD] = "INSERT INTO verifications (\"database\", job, backup_id, at, duration, "
                                  "result, cause) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        [STMT_BACKUP_SET_STATUS] =
                "UPDATE backups SET status = ?4 WHERE \"database\" = ?1 AND job = ?2 AND id = ?3",
        /* A release without a matching use is a bookkeeping bug: the first statement refuses to go below 0,
         * so the caller can log it, and the second clamps. */
        [STMT_BACKUP_USE] = "UPDATE backups SET in_use = in_use + ?4 "
                            "WHERE \"database\" = ?1 AND job = ?2 AND id = ?3 AND in_use + ?4 >= 0",
        [STMT_BACKUP_USE_CLAMP] = "UPDATE backups SET in_use = max(0, in_use + ?4) "
                                  "WHERE \"database\" = ?1 AND job = ?2 AND id = ?3",
        /* "in_use = 0" in the same statement: nothing can start using it between a check and the delete. */
        [STMT_BACKUP_DELETE] =
                "DELETE FROM backups WHERE \"database\" = ?1 AND job = ?2 AND id = ?3 AND in_use = 0",
        [STMT_BACKUP_IN_USE] = "SELECT in_use FROM backups WHERE \"database\" = ?1 AND job = ?2 AND id = ?3",
        /* With both given the (database, job, finished) index serves the order; otherwise a scan of a
         * catalog of at most a few thousand rows. */
        [STMT_BACKUPS_LIST_DB_JOB] = "SELECT " BACKUP_COLUMNS " FROM backups WHERE \"database\" = ?1 AND "
                                     "job = ?2" BACKUP_NEWEST_FIRST,
        [STMT_BACKUPS_LIST_ANY] =
                "SELECT " BACKUP_COLUMNS " FROM backups WHERE (?1 IS NULL OR \"database\" = "
                "?1) AND (?2 IS NULL OR job = ?2)" BACKUP_NEWEST_FIRST,
        [STMT_BACKUP_GET] =
                "SELECT " BACKUP_COLUMNS " FROM backups WHERE \"database\" = ?1 AND job = ?2 AND id = ?3",
        [STMT_BACKUP_FIND_ID] =
                "SELECT " BACKUP_COLUMNS " FROM backups WHERE id = ?1 ORDER BY \"database\", job",
        [STMT_BACKUP_NEWEST_VERIFIED] =
                "SELECT " BACKUP_COLUMNS " FROM backups WHERE \"database\" = ?1 AND (?2 IS NULL OR job = ?2) "
                "AND verify_result = 'ok' AND status = 'ok'" BACKUP_NEWEST_FIRST " LIMIT 1",
        [STMT_BACKUPS_TO_VERIFY] = "SELECT " BACKUP_COLUMNS " FROM backups WHERE status <> 'missing' "
                                   "ORDER BY verified_at IS NOT NULL, verified_at, finished, "
                                   "\"database\", job, id LIMIT ?1",
        [STMT_VERIFICATIONS_LIST] = "SELECT id, at, duration, result, cause FROM verifications "
                                    "WHERE \"database\" = ?1 AND job = ?2 AND backup_id = ?3 "
                                    "ORDER BY at DESC, id DESC LIMIT ?4",
        /* DO NOTHING on a known key: the caller re-enqueueing after a crash gets the existing row back. */
        [STMT_OUTBOX_ADD] = "INSERT INTO outbox (notifier, created, next_attempt, payload, idempotency_key) "
                            "VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (idempotency_key) DO NOTHING",
        [STMT_OUTBOX_BY_KEY] = "SELECT id FROM outbox WHERE idempotency_key = ?1",
        [STMT_OUTBOX_GET] = "SELECT " OUTBOX_COLUMNS " FROM outbox WHERE id = ?1",
        [STMT_OUTBOX_DUE] = "SELECT " OUTBOX_COLUMNS " FROM outbox WHERE status = 'pending' AND "
                            "next_attempt <= ?1 ORDER BY next_attempt, id LIMIT ?2",
        [STMT_OUTBOX_NEXT_DUE] =
                "SELECT min(next_attempt) FROM outbox WHERE status = 'pending' AND next_attempt > ?1",
        /* Every mark moves only a pending message: a message leaves "pending" once and for all. */
        [STMT_OUTBOX_SENT] = "UPDATE outbox SET status = 'sent', attempts = attempts + 1, sent_at = ?2 "
                             "WHERE id = ?1 AND status = 'pending'",
        [STMT_OUTBOX_RETRY] = "UPDATE outbox SET attempts = attempts + 1, next_attempt = ?2, last_error = ?3 "
                              "WHERE id = ?1 AND status = 'pending'",
        [STMT_OUTBOX_FAILED] =
                "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = ?2 "
                "WHERE id = ?1 AND status = 'pending'",
        [STMT_OUTBOX_DROPPED] = "UPDATE outbox SET status = 'dropped', last_error = coalesce(?2, last_error) "
                                "WHERE id = ?1 AND status = 'pending'",
        [STMT_OUTBOX_STATUS] = "SELECT status FROM outbox WHERE id = ?1",
        [STMT_OUTBOX_COUNTS] = "SELECT status, count(*) FROM outbox WHERE ?1 IS NULL OR notifier = ?1 "
                               "GROUP BY status",
        [STMT_SILENCE_ADD] = "INSERT INTO silences (rule, \"database\", created, until, comment, author) "
                             "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        [STMT_SILENCES_LIST] = "SELECT id, rule, \"database\", created, until, comment, author, removed, "
                               "removed_by FROM silences WHERE ?1 = 0 OR (removed IS NULL AND until > ?1) "
                               "ORDER BY id",
        [STMT_SILENCE_REMOVE] = "UPDATE silences SET removed = ?2, removed_by = ?3 "
                                "WHERE id = ?1 AND removed IS NULL AND until > ?2",
        [STMT_ALERT_LOG_ADD] = "INSERT INTO alert_log (at, kind, rule, severity, fingerprint, \"database\", "
                               "job, value, threshold, suppressed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, "
                               "?9, ?10)",
        [STMT_ALERT_LOG_PRUNE] = "DELETE FROM alert_log WHERE id IN (SELECT id FROM alert_log WHERE at < ?1 "
                                 "ORDER BY id LIMIT ?2)",
        /* The newest PV_STATE_RUNS_KEPT (?3) of a job stay: its id must be below the ?3-th newest. */
        [STMT_RUNS_PRUNE] =
                "DELETE FROM runs WHERE id IN (SELECT r.id FROM runs r WHERE r.finished IS NOT NULL "
                "AND r.started < ?1 AND r.id < (SELECT n.id FROM runs n WHERE n.job = r.job "
                "ORDER BY n.id DESC LIMIT 1 OFFSET ?3 - 1) ORDER BY r.id LIMIT ?2)",
        [STMT_OUTBOX_PRUNE] =
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE status <> 'pending' "
                "AND created < ?1 ORDER BY id LIMIT ?2)",
        [STMT_ALERT_LOG_LIST] = "SELECT id, at, kind, rule, severity, fingerprint, \"database\", job, value, "
                                "threshold, suppressed FROM alert_log ORDER BY id DESC LIMIT ?1",
};

/* A release of a backup (negative use delta) the database refused (disk full, I/O error): applied
 * before the next use change or deletion, so a passing failure does not pin the backup against
 * retention until the next start (which resets every count). */
struct pending_release {
	struct pending_release *next;
	char *database, *job, *id;
	int delta;
};

struct pv_state {
	sqlite3 *db;
	char *path;
	int version;
	sqlite3_stmt *stmts[STMT_COUNT]; /* prepared on first use, finalized at close */
	struct pending_release *releases, **releases_tail;
};

static bool releases_flush(struct pv_state *st);

/* Fill err with "<doing>: <sqlite's message>"; read the message before any reset can change it. */
static bool __attribute__((format(printf, 3, 4)))
db_fail(sqlite3 *db, struct pv_error *err, const char *fmt, ...)
{
	char doing[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(doing, sizeof(doing), fmt, ap);
	va_end(ap);
	return pv_error_set(err, PV_ERR_STATE, "%s: %s", doing, sqlite3_errmsg(db));
}

/* Reset promptly: a statement left mid-result keeps a read transaction open and blocks checkpoints. */
static void
stmt_done(sqlite3_stmt *s)
{
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
}

/* Take the message first: resetting the statement may replace it. */
static bool
stmt_fail(struct pv_state *st, sqlite3_stmt *s, const char *doing, struct pv_error *err)
{
	db_fail(st->db, err, "%s", doing);
	stmt_done(s);
	return false;
}

static sqlite3_stmt *
stmt_get(struct pv_state *st, enum stmt_id id, const char *doing, struct pv_error *err)
{
	if (st->stmts[id] == NULL && sqlite3_prepare_v3(st->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
	                                                &st->stmts[id], NULL) != SQLITE_OK) {
		db_fail(st->db, err, "%s: preparing statement", doing);
		return NULL;
	}
	return st->stmts[id];
}

/* Binding helpers chain through *rc so a sequence of binds needs one check at the end. */
static void
bind_text(sqlite3_stmt *s, int i, const char *v, int *rc)
{
	if (*rc == SQLITE_OK)
		*rc = sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC); /* NULL v binds SQL NULL */
}

static void
bind_int64(sqlite3_stmt *s, int i, int64_t v, int *rc)
{
	if (*rc == SQLITE_OK)
		*rc = sqlite3_bind_int64(s, i, v);
}

/* The interface uses 0 for "no time"; store that as NULL so SQL sees it as absent. */
static void
bind_time(sqlite3_stmt *s, int i, time_t v, int *rc)
{
	if (*rc != SQLITE_OK)
		return;
	*rc = v == 0 ? sqlite3_bind_null(s, i) : sqlite3_bind_int64(s, i, (sqlite3_int64)v);
}

/* Step a statement that returns no rows (in autocommit mode, DONE means committed and synced). */
static bool
step_write(struct pv_state *st, sqlite3_stmt *s, const char *doing, struct pv_error *err)
{
	if (sqlite3_step(s) != SQLITE_DONE)
		return stmt_fail(st, s, doing, err);
	stmt_done(s);
	return true;
}

static char *
col_text(sqlite3_stmt *s, int i)
{
	const unsigned char *t = sqlite3_column_text(s, i);
	return t == NULL ? NULL : pv_strdup((const char *)t);
}

static void
read_run(sqlite3_stmt *s, struct pv_state_run *run)
{
	run->id = sqlite3_column_int64(s, 0);
	run->job = col_text(s, 1);
	run->type = col_text(s, 2);
	run->database = col_text(s, 3);
	run->trigger = col_text(s, 4);
	run->scheduled_for = (time_t)sqlite3_column_int64(s, 5);
	run->started = (time_t)sqlite3_column_int64(s, 6);
	run->finished = (time_t)sqlite3_column_int64(s, 7);
	run->duration = sqlite3_column_double(s, 8);
	run->result = col_text(s, 9);
	run->cause = col_text(s, 10);
	run->figures = col_text(s, 11);
}

static bool
exec(sqlite3 *db, const char *sql, const char *doing, struct pv_error *err)
{
	char *msg = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		pv_error_set(err, PV_ERR_STATE, "%s: %s", doing, msg != NULL ? msg : sqlite3_errmsg(db));
		sqlite3_free(msg);
		return false;
	}
	return true;
}

/* Run a single-value query (a pragma); *text gets a malloc'ed copy of the first column of the first row. */
static bool
query_text(sqlite3 *db, const char *sql, char **text, const char *doing, struct pv_error *err)
{
	sqlite3_stmt *s = NULL;
	int rc;

	*text = NULL;
	if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
		return db_fail(db, err, "%s", doing);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*text = col_text(s, 0);
	} else if (rc != SQLITE_DONE) {
		db_fail(db, err, "%s", doing);
		sqlite3_finalize(s);
		return false;
	}
	sqlite3_finalize(s);
	if (*text == NULL)
		return pv_error_set(err, PV_ERR_STATE, "%s: no answer", doing);
	return true;
}

static bool
query_int(sqlite3 *db, const char *sql, int *value, const char *doing, struct pv_error *err)
{
	char *text;

	if (!query_text(db, sql, &text, doing, err))
		return false;
	*value = atoi(text);
	free(text);
	return true;
}

/*
 * Create the file ourselves so it is 0600 whatever the umask (SQLite gives the -wal and -shm files
 * the database's mode), and look at the header before SQLite does: a file that is not an SQLite
 * database must be reported and left alone, never reinitialised.
 */
static bool
create_and_inspect(const char *path, struct pv_error *err)
{
	static const char magic[16] = "SQLite format 3";
	char header[16];
	struct stat sb;
	ssize_t got;
	int fd;

	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return pv_error_set(err, PV_ERR_STATE, "opening state database %s: %s", path,
		                    strerror(errno));
	if (fstat(fd, &sb) != 0) {
		pv_error_set(err, PV_ERR_STATE, "opening state database %s: %s", path, strerror(errno));
		close(fd);
		return false;
	}
	if (!S_ISREG(sb.st_mode)) {
		close(fd);
		return pv_error_set(err, PV_ERR_STATE, "opening state database %s: not a regular file", path);
	}
	if (sb.st_size == 0) {
		close(fd);
		return true;
	}
	do
		got = pread(fd, header, sizeof(header), 0);
	while (got < 0 && errno == EINTR);
	if (got < 0) {
		pv_error_set(err, PV_ERR_STATE, "reading state database %s: %s", path, strerror(errno));
		close(fd);
		return false;
	}
	/* Closed before SQLite opens the file: closing any descriptor drops the process's POSIX locks. */
	close(fd);
	if (got != (ssize_t)sizeof(header) || memcmp(header, magic, sizeof(magic)) != 0)
		return pv_error_set(
		        err, PV_ERR_STATE,
		        "state database %s is not an SQLite database; refusing to use or overwrite it. "
		        "HINT: move the file aside and pgvigild will create a new one",
		        path);
	return true;
}

/* Refuse corrupt files, other applications' databases and schemas from a newer pgvigil, before any write. */
static bool
check_identity(struct pv_state *st, struct pv_error *err)
{
	char doing[512];
	char *check;
	int app_id, objects;

	snprintf(doing, sizeof(doing), "checking state database %s", st->path);
	if (!query_text(st->db, "PRAGMA quick_check", &check, doing, err))
		return false;
	if (strcmp(check, "ok") != 0) {
		pv_error_set(
		        err, PV_ERR_STATE,
		        "state database %s is corrupt: %s. HINT: restore it from a copy, or move it aside "
		        "and pgvigild will rebuild its backup catalog from the manifests in storage",
		        st->path, check);
		free(check);
		return false;
	}
	free(check);
	if (!query_int(st->db, "PRAGMA application_id", &app_id, doing, err) ||
	    !query_int(st->db, "PRAGMA user_version", &st->version, doing, err) ||
	    !query_int(st->db, "SELECT count(*) FROM sqlite_master", &objects, doing, err))
		return false;
	if (app_id != STATE_APPLICATION_ID && (st->version != 0 || objects != 0))
		return pv_error_set(
		        err, PV_ERR_STATE,
		        "%s is an SQLite database but not a pgvigil state database (application_id %d); "
		        "refusing to modify it",
		        st->path, app_id);
	if (st->version > MIGRATION_COUNT)
		return pv_error_set(
		        err, PV_ERR_STATE,
		        "state database %s has schema version %d, newer than the %d this pgvigil knows; "
		        "refusing to open it. HINT: run the newer pgvigil that wrote it",
		        st->path, st->version, MIGRATION_COUNT);
	return true;
}

static bool
configure(struct pv_state *st, struct pv_error *err)
{
	char doing[512];
	char *mode;
	bool wal;

	snprintf(doing, sizeof(doing), "setting journal_mode=wal on state database %s", st->path);
	if (!query_text(st->db, "PRAGMA journal_mode = WAL", &mode, doing, err))
		return false;
	/* SQLite answers with the mode in force, which stays the old one when WAL is unavailable. */
	wal = strcmp(mode, "wal") == 0;
	if (!wal)
		pv_error_set(err, PV_ERR_STATE,
		             "setting journal_mode=wal on state database %s: journal mode is still %s. "
		             "HINT: WAL needs shared memory; put state_dir on a local filesystem",
		             st->path, mode);
	free(mode);
	if (!wal)
		return false;
	/* FULL syncs the WAL on every commit: a run recorded before a crash or power loss stays recorded. */
	snprintf(doing, sizeof(doing), "configuring state database %s", st->path);
	return exec(st->db, "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON", doing, err);
}

/* Each migration and its version bump commit together; re-reading the version under the write lock
 * keeps two processes opening the same file at once from applying a step twice. */
static bool
migrate(struct pv_state *st, struct pv_error *err)
{
	char doing[512];

	for (;;) {
		int v;

		snprintf(doing, sizeof(doing), "migrating state database %s", st->path);
		if (!exec(st->db, "BEGIN IMMEDIATE", doing, err))
			return false;
		if (!query_int(st->db, "PRAGMA user_version", &v, doing, err))
			goto rollback;
		if (v >= MIGRATION_COUNT) {
			st->version = v;
			return exec(st->db, "COMMIT", doing, err);
		}
		snprintf(doing, sizeof(doing), "migrating state database %s to schema version %d", st->path,
		         v + 1);
		if (!exec(st->db, migrations[v], doing, err))
			goto rollback;
		char bump[64];
		snprintf(bump, sizeof(bump), "PRAGMA user_version = %d", v + 1);
		if (!exec(st->db, bump, doing, err) || !exec(st->db, "COMMIT", doing, err))
			goto rollback;
		pv_log_info("state database migrated path=%s version=%d", pv_log_quote(st->path), v + 1);
	}
rollback:
	sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	return false;
}

/* A run with no result was running when the daemon died; we cannot know when it stopped. */
static bool
mark_interrupted(struct pv_state *st, struct pv_error *err)
{
	char doing[512];
	int n;

	snprintf(doing, sizeof(doing), "marking unfinished runs as interrupted in %s", st->path);
	if (!exec(st->db,
	          "UPDATE runs SET result = 'interrupted', cause = 'daemon stopped while running', "
	          "finished = started, duration = 0 WHERE result IS NULL",
	          doing, err))
		return false;
	n = sqlite3_changes(st->db);
	if (n > 0)
		pv_log_warn("runs left unfinished by a previous daemon marked interrupted count=%d", n);
	return true;
}

/* in_use counts verifies, probes and restores of this daemon; none survives a restart. */
static bool
release_in_use(struct pv_state *st, struct pv_error *err)
{
	char doing[512];
	int n;

	snprintf(doing, sizeof(doing), "releasing backups left in use in %s", st->path);
	if (!exec(st->db, "UPDATE backups SET in_use = 0 WHERE in_use <> 0", doing, err))
		return false;
	n = sqlite3_changes(st->db);
	if (n > 0)
		pv_log_warn("backups left in use by a previous daemon released count=%d", n);
	return true;
}

int
pv_state_schema_latest(void)
{
	return MIGRATION_COUNT;
}

bool
pv_state_open(const char *path, struct pv_state **out, struct pv_error *err)
{
	struct pv_state *st;
	int rc;

	*out = NULL;
	if (!create_and_inspect(path, err))
		return false;
	st = pv_calloc(1, sizeof(*st));
	st->path = pv_strdup(path);
	st->releases_tail = &st->releases;
	/* No SQLITE_OPEN_CREATE: the file exists now, and if it vanished we want an error, not a new one. */
	rc = sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		if (st->db == NULL)
			pv_error_set(err, PV_ERR_STATE, "opening state database %s: %s", path,
			             sqlite3_errstr(rc));
		else
			db_fail(st->db, err, "opening state database %s", path);
		goto fail;
	}
	sqlite3_extended_result_codes(st->db, 1);
	sqlite3_busy_timeout(st->db, STATE_BUSY_TIMEOUT_MS);
	if (!check_identity(st, err) || !configure(st, err) || !migrate(st, err) ||
	    !mark_interrupted(st, err) || !release_in_use(st, err))
		goto fail;
	*out = st;
	return true;
fail:
	pv_state_close(st);
	return false;
}

void
pv_state_close(struct pv_state *st)
{
	if (st == NULL)
		return;
	while (st->releases != NULL) {
		struct pending_release *r = st->releases;
		st->releases = r->next;
		free(r->database);
		free(r->job);
		free(r->id);
		free(r);
	}
	for (int i = 0; i < STMT_COUNT; i++)
		sqlite3_finalize(st->stmts[i]);
	/* The last connection to close checkpoints the WAL into the main file and removes it. */
	if (st->db != NULL && sqlite3_close(st->db) != SQLITE_OK)
		pv_log_warn("closing state database failed path=%s error=%s", pv_log_quote(st->path),
		            pv_log_quote(sqlite3_errmsg(st->db)));
	free(st->path);
	free(st);
}

int
pv_state_schema_version(struct pv_state *st)
{
	return st->version;
}

bool
pv_state_run_begin(struct pv_state *st, const char *job, const char *type, const char *database,
                   const char *trigger, time_t scheduled_for, time_t started, int64_t *id,
                   struct pv_error *err)
{
	const char *doing = "recording run start";
	sqlite3_stmt *s;
	int rc = SQLITE_OK;

	releases_flush(st); /* runs start often: a deferred release does not wait long */
	s = stmt_get(st, STMT_RUN_BEGIN, doing, err);
	if (s == NULL)
		return false;
	bind_text(s, 1, job, &rc);
	bind_text(s, 2, type, &rc);
	bind_text(s, 3, database, &rc);
	bind_text(s, 4, trigger, &rc);
	bind_time(s, 5, scheduled_for, &rc);
	bind_int64(s, 6, (int64_t)started, &rc);
	if (rc != SQLITE_OK)
		return stmt_fail(st, s, doing, err);
	if (!step_write(st, s, doing, err))
		return false;
	*id = sqlite3_last_insert_rowid(st->db);
	return true;
}

bool
pv_state_run_end(struct pv_state *st, int64_t id, time_t finished, double duration, const char *result,
                 const char *cause, const char *figures_json, struct pv_error *err)
{
	const char *doing = "recording run end";
	sqlite3_stmt *s;
	int rc = SQLITE_OK;

	/* A NULL result would leave the run looking unfinished, to be marked interrupted at next start. */
	if (result == NULL)
		return pv_error_set(err, PV_ERR_INTERNAL, "%s: run %lld: no result given", doing,
		                    (long long)id);
	s = stmt_get(st, STMT_RUN_END, doing, err);
	if (s == NULL)
		return false;
	bind_int64(s, 1, id, &rc);
	bind_int64(s, 2, (int64_t)finished, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_double(s, 3, duration);
	bind_text(s, 4, result, &rc);
	bind_text(s, 5, cause, &rc);
	bind_text(s, 6, figures_json, &rc);
	if (rc != SQLITE_OK)
		return stmt_fail(st, s, doing, err);
	if (!step_write(st, s, doing, err))
		return false;
	if (sqlite3_changes(st->db) == 1)
		return true;

	/* Nothing updated: say whether the run is missing or already ended. */
	s = stmt_get(st, STMT_RUN_STATE, doing, err);
	if (s == NULL)
		return false;
	rc = sqlite3_bind_int64(s, 1, id);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		char *prev = col_text(s, 0);
		pv_error_set(err, PV_ERR_STATE, "%s: run %lld already ended with result %s", doing,
		             (long long)id, prev != NULL ? prev : "(none)");
		free(prev);
	} else if (rc == SQLITE_DONE) {
		pv_error_set(err, PV_ERR_NOT_FOUND, "%s: no run with id %lld", doing, (long long)id);
	} else {
		db_fail(st->db, err, "%s", doing);
	}
	stmt_done(s);
	return false;
}

static bool
run_last(struct pv_state *st, enum stmt_id id, const char *job, struct pv_state_run *out,
         struct pv_error *err)
{
	const char *doing = "reading last run";
	sqlite3_stmt *s;
	int rc = SQLITE_OK;

	memset(out, 0, sizeof(*out));
	s = stmt_get(st, id, doing, err);
	if (s == NULL)
		return false;
	bind_text(s, 1, job, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		read_run(s, out);
		stmt_done(s);
		return true;
	}
	if (rc == SQLITE_DONE)
		pv_error_set(err, PV_ERR_NOT_FOUND, "no run recorded for job %s", job);
	else
		db_fail(st->db, err, "%s of job %s", doing, job);
	stmt_done(s);
	return false;
}

bool
pv_state_run_last(struct pv_state *st, const char *job, struct pv_state_run *out, struct pv_error *err)
{
	return run_last(st, STMT_RUN_LAST, job, out, err);
}

bool
pv_state_run_last_finished(struct pv_state *st, const char *job, struct pv_state_run *out,
                           struct pv_error *err)
{
	return run_last(st, STMT_RUN_LAST_FINISHED, job, out, err);
}

/* limit <= 0 means no limit. */
bool
pv_state_runs_list(struct pv_state *st, const char *job, int limit, struct pv_state_run **out, size_t *n,
                   struct pv_error *err)
{
	const char *doing = "listing runs";
	struct pv_state_run *runs = NULL;
	size_t count = 0, cap = 0;
	sqlite3_stmt *s;
	int rc = SQLITE_OK;

	*out = NULL;
	*n = 0;
	s = stmt_get(st, job != NULL ? STMT_RUNS_LIST_JOB : STMT_RUNS_LIST_ALL, doing, err);
	if (s == NULL)
		return false;
	if (job != NULL)
		bind_text(s, 1, job, &rc);
	bind_int64(s, job != NULL ? 2 : 1, limit > 0 ? limit : -1, &rc);
	while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		if (count == cap) {
			cap = cap ? cap * 2 : 16;
			runs = pv_realloc(runs, cap * sizeof(*runs));
		}
		read_run(s, &runs[count++]);
		rc = SQLITE_OK;
	}
	if (rc != SQLITE_DONE) {
		pv_state_runs_free(runs, count);
		return stmt_fail(st, s, doing, err);
	}
	stmt_done(s);
	*out = runs;
	*n = count;
	return true;
}

bool
pv_state_runs_count(struct pv_state *st, const char *job, const char *result, int64_t *count,
                    struct pv_error *err)
{
	const char *doing = "counting runs";
	sqlite3_stmt *s;
	int rc = SQLITE_OK;

	s = stmt_get(st, job != NULL ? STMT_RUNS_COUNT_JOB : STMT_RUNS_COUNT_ALL, doing, err);
	if (s == NULL)
		return false;
	if (job != NULL)
		bind_text(s, 1, job, &rc);
	bind_text(s, job != NULL ? 2 : 1, result, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc != SQLITE_ROW)
		return stmt_fail(st, s, doing, err);
	*count = sqlite3_column_int64(s, 0);
	stmt_done(s);
	return true;
}

bool
pv_state_runs_tally(struct pv_state *st, int64_t after_id, int64_t max_rows, int64_t *settled_id,
                    struct pv_state_run_tally **out, size_t *n, struct pv_error *err)
{
	int64_t upto = max_rows > 0 && after_id < INT64_MAX - max_rows ? after_id + max_rows : INT64_MAX;
	const char *doing = "counting runs by result";
	struct pv_state_run_tally *v = NULL;
	size_t count = 0, cap = 0;
	sqlite3_stmt *s;
	int64_t settled;
	int rc = SQLITE_OK;

	*out = NULL;
	*n = 0;
	/* Settled first: a run that ends between the two statements is then counted as unsettled, never
	 * missed, and no run at or below the settled id can still change. */
	s = stmt_get(st, STMT_RUNS_SETTLED, doing, err);
	if (s == NULL)
		return false;
	bind_int64(s, 1, after_id, &rc);
	bind_int64(s, 2, upto, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc != SQLITE_ROW)
		return stmt_fail(st, s, doing, err);
	settled = sqlite3_column_int64(s, 0);
	stmt_done(s);

	s = stmt_get(st, STMT_RUNS_TALLY, doing, err);
	if (s == NULL)
		return false;
	rc = SQLITE_OK;
	bind_int64(s, 1, after_id, &rc);
	bind_int64(s, 2, settled, &rc);
	bind_int64(s, 3, upto, &rc);
	while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		struct pv_state_run_tally *t;
		if (count == cap) {
			cap = cap ? cap * 2 : 16;
			v = pv_realloc(v, cap * sizeof(*v));
		}
		t = &v[count++];
		t->job = col_text(s, 0);
		t->database = col_text(s, 1);
		t->result = col_text(s, 2);
		t->count = sqlite3_column_int64(s, 3);
		t->last_finished = (time_t)sqlite3_column_int64(s, 4);
		t->settled = sqlite3_column_int(s, 5) != 0;
		rc = SQLITE_OK;
	}
	if (rc != SQLITE_DONE) {
		pv_state_run_tallies_free(v, count);
		return stmt_fail(st, s, doing, err);
	}
	stmt_done(s);
	*settled_id = settled;
	*out = v;
	*n = count;
	return true;
}

void
pv_state_run_tallies_free(struct pv_state_run_tally *v, size_t n)
{
	for (size_t i = 0; v != NULL && i < n; i++) {
		free(v[i].job);
		free(v[i].database);
		free(v[i].result);
	}
	free(v);
}

void
pv_state_run_clear(struct pv_state_run *run)
{
	if (run == NULL)
		return;
	free(run->job);
	free(run->type);
	free(run->database);
	free(run->trigger);
	free(run->result);
	free(run->cause);
	free(run->figures);
	memset(run, 0, sizeof(*run));
}

void
pv_state_runs_free(struct pv_state_run *runs, size_t n)
{
	if (runs == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		pv_state_run_clear(&runs[i]);
	free(runs);
}

bool
pv_state_sched_get(struct pv_state *st, const char *job, time_t *last_slot, struct pv_error *err)
{
	const char *doing = "reading scheduler slot";
	sqlite3_stmt *s = stmt_get(st, STMT_SCHED_GET, doing, err);
	int rc = SQLITE_OK;

	if (s == NULL)
		return false;
	bind_text(s, 1, job, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*last_slot = (time_t)sqlite3_column_int64(s, 0);
		stmt_done(s);
		return true;
	}
	if (rc == SQLITE_DONE)
		pv_error_set(err, PV_ERR_NOT_FOUND, "no scheduler slot recorded for job %s", job);
	else
		db_fail(st->db, err, "%s of job %s", doing, job);
	stmt_done(s);
	return false;
}

bool
pv_state_sched_set(struct pv_state *st, const char *job, time_t last_slot, struct pv_error *err)
{
	const char *doing = "recording scheduler slot";
	sqlite3_stmt *s = stmt_get(st, STMT_SCHED_SET, doing, err);
	int rc = SQLITE_OK;

	if (s == NULL)
		return false;
	bind_text(s, 1, job, &rc);
	bind_int64(s, 2, (int64_t)last_slot, &rc);
	if (rc != SQLITE_OK)
		return stmt_fail(st, s, doing, err);
	return step_write(st, s, doing, err);
}

bool
pv_state_kv_get(struct pv_state *st, const char *key, char **value, struct pv_error *err)
{
	const char *doing = "reading state value";
	sqlite3_stmt *s = stmt_get(st, STMT_KV_GET, doing, err);
	int rc = SQLITE_OK;

	*value = NULL;
	if (s == NULL)
		return false;
	bind_text(s, 1, key, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*value = col_text(s, 0);
		stmt_done(s);
		return true;
	}
	if (rc == SQLITE_DONE)
		pv_error_set(err, PV_ERR_NOT_FOUND, "no state value stored for key %s", key);
	else
		db_fail(st->db, err, "%s %s", doing, key);
	stmt_done(s);
	return false;
}

bool
pv_state_kv_set(struct pv_state *st, const char *key, const char *value, struct pv_error *err)
{
	const char *doing = "recording state value";
	sqlite3_stmt *s = stmt_get(st, STMT_KV_SET, doing, err);
	int rc = SQLITE_OK;

	if (s == NULL)
		return false;
	bind_text(s, 1, key, &rc);
	bind_text(s, 2, value, &rc);
	if (rc != SQLITE_OK)
		return stmt_fail(st, s, doing, err);
	return step_write(st, s, doing, err);
}

/* Backup catalog and verification ledger. */

/* For messages: a key part the caller left NULL (a bug SQLite will also refuse) still prints. */
static const char *
str_or_none(const char *s)
{
	return s != NULL ? s : "(none)";
}

static void
bind_double(sqlite3_stmt *s, int i, double v, int *rc)
{
	if (*rc == SQLITE_OK)
		*rc = sqlite3_bind_double(s, i, v);
}

/* 0 means "none" for ids, as for times. */
static void
bind_id(sqlite3_stmt *s, int i, int64_t v, int *rc)
{
	if (*rc != SQLITE_OK)
		return;
	*rc = v == 0 ? sqlite3_bind_null(s, i) : sqlite3_bind_int64(s, i, v);
}

/* Parameters 1-3 of every statement addressing one backup. */
static void
bind_key(sqlite3_stmt *s, const char *database, const char *job, const char *id, int *rc)
{
	bind_text(s, 1, database, rc);
	bind_text(s, 2, job, rc);
	bind_text(s, 3, id, rc);
}

/* "<doing> DATABASE/JOB/ID: <sqlite's message>", then reset. */
static bool
key_fail(struct pv_state *st, sqlite3_stmt *s, const char *doing, const char *database, const char *job,
         const char *id, struct pv_error *err)
{
	db_fail(st->db, err, "%s %s/%s/%s", doing, str_or_none(database), str_or_none(job), str_or_none(id));
	if (s != NULL)
		stmt_done(s);
	return false;
}

static bool
not_catalogued(const char *database, const char *job, const char *id, struct pv_error *err)
{
	return pv_error_set(err, PV_ERR_NOT_FOUND, "no backup %s/%s/%s catalogued", str_or_none(database),
	                    str_or_none(job), str_or_none(id));
}

static void
read_backup(sqlite3_stmt *s, struct pv_state_backup *b)
{
	b->database = col_text(s, 0);
	b->job = col_text(s, 1);
	b->id = col_text(s, 2);
	b->tier = col_text(s, 3);
	b->dir = col_text(s, 4);
	b->run_id = sqlite3_column_int64(s, 5);
	b->started = (time_t)sqlite3_column_int64(s, 6);
	b->finished = (time_t)sqlite3_column_int64(s, 7);
	b->duration = sqlite3_column_double(s, 8);
	b->size = sqlite3_column_int64(s, 9);
	b->archive_size = sqlite3_column_int64(s, 10);
	b->sha256 = col_text(s, 11);
	b->format = col_text(s, 12);
	b->key_fingerprint = col_text(s, 13);
	b->schema_copy = sqlite3_column_int64(s, 14) != 0;
	b->status = col_text(s, 15);
	b->verified_at = (time_t)sqlite3_column_int64(s, 16);
	b->verify_result = col_text(s, 17);
	b->verify_cause = col_text(s, 18);
	b->verify_count = sqlite3_column_int64(s, 19);
	b->in_use = sqlite3_column_int64(s, 20);
}

/* Step a bound SELECT of BACKUP_COLUMNS to the end, collecting every row. */
static bool
collect_backups(struct pv_state *st, sqlite3_stmt *s, int rc, const char *doing, struct pv_state_backup **out,
                size_t *n, struct pv_error *err)
{
	struct pv_state_backup *v = NULL;
	size_t count = 0, cap = 0;

	while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		if (count == cap) {
			cap = cap ? cap * 2 : 16;
			v = pv_realloc(v, cap * sizeof(*v));
		}
		memset(&v[count], 0, sizeof(v[count]));
		read_backup(s, &v[count++]);
		rc = SQLITE_OK;
	}
	if (rc != SQLITE_DONE) {
		pv_state_backups_free(v, count);
		return stmt_fail(st, s, doing, err);
	}
	stmt_done(s);
	*out = v;
	*n = count;
	return true;
}

/*
 * Explicit transactions, for changes of several statements that must commit together. A failed
 * statement may already have rolled SQLite back (SQLITE_FULL, I/O errors), hence the autocommit test;
 * the rollback's own failure is not reported over the error that caused it.
 */
static bool
tx_begin(struct pv_state *st, const char *doing, struct pv_error *err)
{
	sqlite3_stmt *s = stmt_get(st, STMT_BEGIN, doing, err);

	return s != NULL && step_write(st, s, doing, err);
}

static bool
tx_commit(struct pv_state *st, const char *doing, struct pv_error *err)
{
	sqlite3_stmt *s = stmt_get(st, STMT_COMMIT, doing, err);

	return s != NULL && step_write(st, s, doing, err);
}

static void
tx_rollback(struct pv_state *st)
{
	sqlite3_stmt *s;

	if (sqlite3_get_autocommit(st->db))
		return;
	s = stmt_get(st, STMT_ROLLBACK, "rolling back", NULL);
	if (s == NULL || sqlite3_step(s) != SQLITE_DONE)
		pv_log_warn("rolling back state transaction failed path=%s error=%s", pv_log_quote(st->path),
		            pv_log_quote(sqlite3_errmsg(st->db)));
	if (s != NULL)
		stmt_done(s);
}

bool
pv_state_batch_begin(struct pv_state *st, struct pv_error *err)
{
	return tx_begin(st, "beginning a batch", err);
}

bool
pv_state_batch_commit(struct pv_state *st, struct pv_error *err)
{
	if (tx_commit(st, "committing a batch", err))
		return true;
	tx_rollback(st);
	return false;
}

bool
pv_state_backup_add(struct pv_state *st, const struct pv_state_backup *b, struct pv_error *err)
{
	const char *doing = "recording backup";
	sqlite3_stmt *s = stmt_get(st, STMT_BACKUP_ADD, doing, err);
	int rc = SQLITE_OK;

	if (s == NULL)
		return false;
	bind_key(s, b->database, b->job, b->id, &rc);
	bind_text(s, 4, b->tier, &rc);
	bind_text(s, 5, b->dir, &rc);
	bind_id(s, 6, b->run_id, &rc);
	bind_int64(s, 7, (int64_t)b->started, &rc);
	bind_int64(s, 8, (int64_t)b->finished, &rc);
	bind_double(s, 9, b->duration, &rc);
	bind_int64(s, 10, b->size, &rc);
	bind_int64(s, 11, b->archive_size, &rc);
	bind_text(s, 12, b->sha256, &rc);
	bind_text(s, 13, b->format, &rc);
	bind_text(s, 14, b->key_fingerprint, &rc);
	bind_int64(s, 15, b->schema_copy ? 1 : 0, &rc);
	bind_text(s, 16, b->status, &rc);
	bind_time(s, 17, b->verified_at, &rc);
	bind_text(s, 18, b->verify_result, &rc);
	bind_text(s, 19, b->verify_cause, &rc);
	bind_int64(s, 20, b->verify_count, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc == SQLITE_DONE) {
		stmt_done(s);
		return true;
	}
	if (rc == SQLITE_CONSTRAINT_PRIMARYKEY) {
		stmt_done(s);
		return pv_error_set(err, PV_ERR_STATE, "%s: backup %s/%s/%s already catalogued", doing,
		                    str_or_none(b->database), str_or_none(b->job), str_or_none(b->id));
	}
	return key_fail(st, s, doing, b->database, b->job, b->id, err);
}

bool
pv_state_backup_verified(struct pv_state *st, const char *database, const char *job, const char *id,
                         time_t at, double duration, bool ok, const char *cause, struct pv_error *err)
{
	const char *doing = "recording verification of backup";
	const char *result = ok ? "ok" : "failed";
	sqlite3_stmt *s;
	int rc = SQLITE_OK;

	if (!tx_begin(st, doing, err))
		return false;
	s = stmt_get(st, STMT_BACKUP_VERIFIED, doing, err);
	if (s == NULL)
		goto rollback;
	bind_key(s, database, job, id, &rc);
	bind_int64(s, 4, (int64_t)at, &rc);
	bind_text(s, 5, result, &rc);
	bind_text(s, 6, cause, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc != SQLITE_DONE) {
		key_fail(st, s, doing, database, job, id, err);
		goto rollback;
	}
	stmt_done(s);
	if (sqlite3_changes(st->db) == 0) {
		not_catalogued(database, job, id, err);
		goto rollback;
	}

	s = stmt_get(st, STMT_VERIFICATION_ADD, doing, err);
	if (s == NULL)
		goto rollback;
	rc = SQLITE_OK;
	bind_key(s, database, job, id, &rc);
	bind_int64(s, 4, (int64_t)at, &rc);
	bind_double(s, 5, duration, &rc);
	bind_text(s, 6, result, &rc);
	bind_text(s, 7, cause, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc != SQLITE_DONE) {
		key_fail(st, s, doing, database, job, id, err);
		goto rollback;
	}
	stmt_done(s);
	if (tx_commit(st, doing, err))
		return true;
rollback:
	tx_rollback(st);
	return false;
}

/* Run a bound UPDATE of one backup; NOT_FOUND when it matched no row. */
static bool
update_one(struct pv_state *st, sqlite3_stmt *s, int rc, const char *doing, const char *database,
           const char *job, const char *id, struct pv_error *err)
{
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc != SQLITE_DONE)
		return key_fail(st, s, doing, database, job, id, err);
	stmt_done(s);
	if (sqlite3_changes(st->db) == 0)
		return not_catalogued(database, job, id, err);
	return true;
}

bool
pv_state_backup_set_status(struct pv_state *st, const char *database, const char *job, const char *id,
                           const char *status, struct pv_error *err)
{
	const char *doing = "recording status of backup";
	sqlite3_stmt *s = stmt_get(st, STMT_BACKUP_SET_STATUS, doing, err);
	int rc = SQLITE_OK;

	if (s == NULL)
		return false;
	bind_key(s, database, job, id, &rc);
	bind_text(s, 4, status, &rc);
	return update_one(st, s, rc, doing, database, job, id, err);
}

static bool
use_apply(struct pv_state *st, const char *database, const char *job, const char *id, int delta,
          struct pv_error *err)
{
	const char *doing = "recording use of backup";
	sqlite3_stmt *s = stmt_get(st, STMT_BACKUP_USE, doing, err);
	int rc = SQLITE_OK;

	if (s == NULL)
		return false;
	bind_key(s, database, job, id, &rc);
	bind_int64(s, 4, delta, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc != SQLITE_DONE)
		return key_fail(st, s, doing, database, job, id, err);
	stmt_done(s);
	if (sqlite3_changes(st->db) == 1)
		return true;

	/* Not catalogued, or the count would go below 0. */
	s = stmt_get(st, STMT_BACKUP_USE_CLAMP, doing, err);
	if (s == NULL)
		return false;
	rc = SQLITE_OK;
	bind_key(s, database, job, id, &rc);
	bind_int64(s, 4, delta, &rc);
	if (!update_one(st, s, rc, doing, database, job, id, err))
		return false;
	pv_log_warn(
	        "backup released more often than used, in-use count kept at 0 database=%s job=%s backup=%s",
	        pv_log_quote(database), pv_log_quote(job), pv_log_quote(id));
	return true;
}

/* Apply the deferred releases, oldest first; false while some remain. */
static bool
releases_flush(struct pv_state *st)
{
	while (st->releases != NULL) {
		struct pending_release *r = st->releases;
		struct pv_error err;

		if (!use_apply(st, r->database, r->job, r->id, r->delta, &err))
			return false;
		pv_log_notice("deferred release of backup recorded database=%s job=%s backup=%s",
		              pv_log_quote(r->database), pv_log_quote(r->job), pv_log_quote(r->id));
		st->releases = r->next;
		if (st->releases == NULL)
			st->releases_tail = &st->releases;
		free(r->database);
		free(r->job);
		free(r->id);
		free(r);
	}
	return true;
}

bool
pv_state_backup_use(struct pv_state *st, const char *database, const char *job, const char *id, int delta,
                    struct pv_error *err)
{
	struct pv_error e;
	struct pending_release *r;

	releases_flush(st);
	if (use_apply(st, database, job, id, delta, &e))
		return true;
	if (err != NULL)
		*err = e;
	if (delta >= 0)
		return false;
	r = pv_calloc(1, sizeof(*r));
	r->database = pv_strdup(database);
	r->job = pv_strdup(job);
	r->id = pv_strdup(id);
	r->delta = delta;
	*st->releases_tail = r;
	st->releases_tail = &r->next;
	pv_log_warn("release of backup deferred until the state database takes it database=%s job=%s "
	            "backup=%s error=%s",
	            pv_log_quote(database), pv_log_quote(job), pv_log_quote(id), pv_log_quote(e.msg));
	return false;
}

bool
pv_state_backup_delete(struct pv_state *st, const char *database, const char *job, const char *id,
                       struct pv_error *err)
{
	const char *doing = "deleting backup";
	sqlite3_stmt *s;
	int rc = SQLITE_OK;

	releases_flush(st); /* a deferred release may be what makes it deletable */
	s = stmt_get(st, STMT_BACKUP_DELETE, doing, err);

	if (s == NULL)
		return false;
	bind_key(s, database, job, id, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc != SQLITE_DONE)
		return key_fail(st, s, doing, database, job, id, err);
	stmt_done(s);
	if (sqlite3_changes(st->db) == 1)
		return true;

	/* Nothing deleted: say whether it is missing or in use. */
	s = stmt_get(st, STMT_BACKUP_IN_USE, doing, err);
	if (s == NULL)
		return false;
	rc = SQLITE_OK;
	bind_key(s, database, job, id, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc == SQLITE_ROW)
		pv_error_set(err, PV_ERR_BUSY, "%s %s/%s/%s: in use by %lld verify, probe or restore", doing,
		             database, job, id, (long long)sqlite3_column_int64(s, 0));
	else if (rc == SQLITE_DONE)
		not_catalogued(database, job, id, err);
	else
		return key_fail(st, s, doing, database, job, id, err);
	stmt_done(s);
	return false;
}

bool
pv_state_backups_list(struct pv_state *st, const char *database, const char *job,
                      struct pv_state_backup **out, size_t *n, struct pv_error *err)
{
	const char *doing = "listing backups";
	bool both = database != NULL && job != NULL;
	sqlite3_stmt *s;
	int rc = SQLITE_OK;

	*out = NULL;
	*n = 0;
	s = stmt_get(st, both ? STMT_BACKUPS_LIST_DB_JOB : STMT_BACKUPS_LIST_ANY, doing, err);
	if (s == NULL)
		return false;
	bind_text(s, 1, database, &rc);
	bind_text(s, 2, job, &rc);
	return collect_backups(st, s, rc, doing, out, n, err);
}

/* Read the single row of a bound SELECT of BACKUP_COLUMNS; false (err untouched) at SQLITE_DONE. */
static bool
read_one_backup(struct pv_state *st, sqlite3_stmt *s, int rc, const char *doing, struct pv_state_backup *out,
                bool *found, struct pv_error *err)
{
	*found = false;
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		read_backup(s, out);
		*found = true;
	} else if (rc != SQLITE_DONE) {
		return stmt_fail(st, s, doing, err);
	}
	stmt_done(s);
	return true;
}

/* "DATABASE/JOB/ID": the id and job are the last two parts, the database may itself contain '/'. */
static bool
find_by_key(struct pv_state *st, const char *ref, struct pv_state_backup *out, struct pv_error *err)
{
	const char *doing = "finding backup";
	const char *id = strrchr(ref, '/') + 1;
	const char *job_end = id - 1, *job = job_end;
	char *database, *job_copy;
	sqlite3_stmt *s;
	bool ok, found = false;
	int rc = SQLITE_OK;

	while (job > ref && job[-1] != '/')
		job--;
	if (job == ref || job - 1 == ref || job == job_end || *id == '\0')
		return pv_error_set(
		        err, PV_ERR_USAGE,
		        "backup reference \"%s\": give ID or DATABASE/JOB/ID, each part non-empty", ref);
	database = pv_strndup(ref, (size_t)(job - 1 - ref));
	job_copy = pv_strndup(job, (size_t)(job_end - job));
	s = stmt_get(st, STMT_BACKUP_GET, doing, err);
	ok = s != NULL;
	if (ok) {
		bind_key(s, database, job_copy, id, &rc);
		ok = read_one_backup(st, s, rc, doing, out, &found, err);
	}
	if (ok && !found)
		ok = not_catalogued(database, job_copy, id, err);
	free(database);
	free(job_copy);
	return ok;
}

/* "a", "a and b", "a, b and c" */
static void
append_name(char *buf, size_t size, size_t i, size_t total, const char *database, const char *job)
{
	size_t len = strlen(buf);

	snprintf(buf + len, size - len, "%s%s/%s",
	         i == 0           ? ""
	         : i + 1 == total ? " and "
	                          : ", ",
	         database, job);
}

static bool
find_by_id(struct pv_state *st, const char *id, struct pv_state_backup *out, struct pv_error *err)
{
	const char *doing = "finding backup";
	struct pv_state_backup *v;
	char names[PV_ERROR_MSG_MAX] = "";
	size_t n;
	sqlite3_stmt *s = stmt_get(st, STMT_BACKUP_FIND_ID, doing, err);
	int rc = SQLITE_OK;

	if (s == NULL)
		return false;
	bind_text(s, 1, id, &rc);
	if (!collect_backups(st, s, rc, doing, &v, &n, err))
		return false;
	if (n == 1) {
		*out = v[0];
		free(v);
		return true;
	}
	if (n == 0)
		return pv_error_set(err, PV_ERR_NOT_FOUND, "no backup %s catalogued", id);
	for (size_t i = 0; i < n; i++)
		append_name(names, sizeof(names), i, n, v[i].database, v[i].job);
	pv_state_backups_free(v, n);
	return pv_error_set(err, PV_ERR_USAGE, "ambiguous: %s exists for %s; use DATABASE/JOB/ID", id, names);
}

bool
pv_state_backup_find(struct pv_state *st, const char *ref, struct pv_state_backup *out, struct pv_error *err)
{
	memset(out, 0, sizeof(*out));
	if (ref == NULL || *ref == '\0')
		return pv_error_set(err, PV_ERR_USAGE, "no backup given: give ID or DATABASE/JOB/ID");
	return strchr(ref, '/') != NULL ? find_by_key(st, ref, out, err) : find_by_id(st, ref, out, err);
}

bool
pv_state_backup_newest_verified(struct pv_state *st, const char *database, const char *job,
                                struct pv_state_backup *out, struct pv_error *err)
{
	const char *doing = "reading newest verified backup";
	sqlite3_stmt *s;
	bool found;
	int rc = SQLITE_OK;

	memset(out, 0, sizeof(*out));
	s = stmt_get(st, STMT_BACKUP_NEWEST_VERIFIED, doing, err);
	if (s == NULL)
		return false;
	bind_text(s, 1, database, &rc);
	bind_text(s, 2, job, &rc);
	if (!read_one_backup(st, s, rc, doing, out, &found, err))
		return false;
	if (!found)
		return pv_error_set(err, PV_ERR_NOT_FOUND, "no verified backup of database %s%s%s",
		                    str_or_none(database), job != NULL ? " by job " : "",
		                    job != NULL ? job : "");
	return true;
}

bool
pv_state_backups_to_verify(struct pv_state *st, int limit, struct pv_state_backup **out, size_t *n,
                           struct pv_error *err)
{
	const char *doing = "listing backups to verify";
	sqlite3_stmt *s;
	int rc = SQLITE_OK;

	*out = NULL;
	*n = 0;
	s = stmt_get(st, STMT_BACKUPS_TO_VERIFY, doing, err);
	if (s == NULL)
		return false;
	bind_int64(s, 1, limit > 0 ? limit : -1, &rc);
	return collect_backups(st, s, rc, doing, out, n, err);
}

bool
pv_state_verifications_list(struct pv_state *st, const char *database, const char *job, const char *id,
                            int limit, struct pv_state_verification **out, size_t *n, struct pv_error *err)
{
	const char *doing = "listing verifications";
	struct pv_state_verification *v = NULL;
	size_t count = 0, cap = 0;
	sqlite3_stmt *s;
	int rc = SQLITE_OK;

	*out = NULL;
	*n = 0;
	s = stmt_get(st, STMT_VERIFICATIONS_LIST, doing, err);
	if (s == NULL)
		return false;
	bind_key(s, database, job, id, &rc);
	bind_int64(s, 4, limit > 0 ? limit : -1, &rc);
	while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		if (count == cap) {
			cap = cap ? cap * 2 : 16;
			v = pv_realloc(v, cap * sizeof(*v));
		}
		v[count].id = sqlite3_column_int64(s, 0);
		v[count].at = (time_t)sqlite3_column_int64(s, 1);
		v[count].duration = sqlite3_column_double(s, 2);
		v[count].result = col_text(s, 3);
		v[count].cause = col_text(s, 4);
		count++;
		rc = SQLITE_OK;
	}
	if (rc != SQLITE_DONE) {
		pv_state_verifications_free(v, count);
		return key_fail(st, s, doing, database, job, id, err);
	}
	stmt_done(s);
	*out = v;
	*n = count;
	return true;
}

void
pv_state_backup_clear(struct pv_state_backup *b)
{
	if (b == NULL)
		return;
	free(b->database);
	free(b->job);
	free(b->id);
	free(b->tier);
	free(b->dir);
	free(b->sha256);
	free(b->format);
	free(b->key_fingerprint);
	free(b->status);
	free(b->verify_result);
	free(b->verify_cause);
	memset(b, 0, sizeof(*b));
}

void
pv_state_backups_free(struct pv_state_backup *v, size_t n)
{
	if (v == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		pv_state_backup_clear(&v[i]);
	free(v);
}

void
pv_state_verifications_free(struct pv_state_verification *v, size_t n)
{
	if (v == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		free(v[i].result);
		free(v[i].cause);
	}
	free(v);
}

/* Notification outbox. */

static void
read_outbox(sqlite3_stmt *s, struct pv_state_outbox_msg *m)
{
	m->id = sqlite3_column_int64(s, 0);
	m->notifier = col_text(s, 1);
	m->created = (time_t)sqlite3_column_int64(s, 2);
	m->next_attempt_ms = sqlite3_column_int64(s, 3);
	m->attempts = sqlite3_column_int64(s, 4);
	m->status = col_text(s, 5);
	m->payload = col_text(s, 6);
	m->idempotency_key = col_text(s, 7);
	m->last_error = col_text(s, 8);
	m->sent_at = (time_t)sqlite3_column_int64(s, 9);
}

bool
pv_state_outbox_add(struct pv_state *st, const char *notifier, time_t created, int64_t next_attempt_ms,
                    const char *payload, const char *idempotency_key, int64_t *id, bool *added,
                    struct pv_error *err)
{
	const char *doing = "queueing notification";
	sqlite3_stmt *s = stmt_get(st, STMT_OUTBOX_ADD, doing, err);
	int rc = SQLITE_OK;

	if (added != NULL)
		*added = false;
	if (s == NULL)
		return false;
	bind_text(s, 1, notifier, &rc);
	bind_int64(s, 2, (int64_t)created, &rc);
	bind_int64(s, 3, next_attempt_ms, &rc);
	bind_text(s, 4, payload, &rc);
	bind_text(s, 5, idempotency_key, &rc);
	if (rc != SQLITE_OK)
		return stmt_fail(st, s, doing, err);
	if (!step_write(st, s, doing, err))
		return false;
	if (sqlite3_changes(st->db) == 1) {
		*id = sqlite3_last_insert_rowid(st->db);
		if (added != NULL)
			*added = true;
		return true;
	}

	/* The key is known: hand back the message already queued under it. */
	s = stmt_get(st, STMT_OUTBOX_BY_KEY, doing, err);
	if (s == NULL)
		return false;
	bind_text(s, 1, idempotency_key, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc != SQLITE_ROW)
		return stmt_fail(st, s, doing, err);
	*id = sqlite3_column_int64(s, 0);
	stmt_done(s);
	return true;
}

bool
pv_state_outbox_get(struct pv_state *st, int64_t id, struct pv_state_outbox_msg *out, struct pv_error *err)
{
	const char *doing = "reading notification";
	sqlite3_stmt *s = stmt_get(st, STMT_OUTBOX_GET, doing, err);
	int rc = SQLITE_OK;

	memset(out, 0, sizeof(*out));
	if (s == NULL)
		return false;
	bind_int64(s, 1, id, &rc);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		read_outbox(s, out);
		stmt_done(s);
		return true;
	}
	if (rc == SQLITE_DONE)
		pv_error_set(err, PV_ERR_NOT_FOUND, "no notification %lld in the outbox", (long long)id);
	else
		db_fail(st->db, err, "%s %lld", doing, (long long)id);
	stmt_done(s);
	return false;
}

bool
pv_state_outbox_due(struct pv_state *st, int64_t now_ms, int limit, struct pv_state_outbox_msg **out,
                    size_t *n, struct pv_error *err)
{
	const char *doing = "listing notifications due";
	struct pv_state_outbox_msg *v = NULL;
	size_t count = 0, cap = 0;
	sqlite3_stmt *s;
	int rc = SQLITE_OK;

	*out = NULL;
	*n = 0;
	s = stmt_get(st, STMT_OUTBOX_DUE, doing, err);
	if (s == NULL)
		return false;
	bind_int64(s, 1, now_ms, &rc);
	bind_int64(s, 2, limit > 0 ? limit : -1, &rc);
	while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		if (count == cap) {
			cap = cap ? cap * 2 : 16;
			v = pv_realloc(v, cap * sizeof(*v));
		}
		memset(&v[count], 0, sizeof(v[count]));
		read_outbox(s, &v[count++]);
		rc = SQLITE_OK;
	}
	if (rc != SQLITE_DONE) {
		pv_state_outbox_msgs_free(v, count);
		return stmt_fail(st, s, doing, err);
	}
	stmt_done(s);
	*out = v;
	*n = count;
	return true;
}

bool
pv_state_outbox_next_due(struct pv_state *st, int64_t after_ms, int64_t *next_ms, struct pv_error *err)
{
	const char *doing = "reading next notification due";
	sqlite3_stmt *s = stmt_get(st, STMT_OUTBOX_NEXT_DUE, doing, err);
	int rc;

	if (s == NULL)
		return false;
	rc = sqlite3_bind_int64(s, 1, after_ms);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc != SQLITE_ROW)
		return stmt_fail(st, s, doing, err);
	if (sqlite3_column_type(s, 0) == SQLITE_NULL) {
		stmt_done(s);
		return pv_error_set(err, PV_ERR_NOT_FOUND, "no notification pending after %lld",
		                    (long long)after_ms);
	}
	*next_ms = sqlite3_column_int64(s, 0);
	stmt_done(s);
	return true;
}

/* Run a bound UPDATE of one pending message; when it matched nothing, say whether the message is missing
 * or has already left "pending". */
static bool
outbox_update(struct pv_state *st, sqlite3_stmt *s, int rc, const char *doing, int64_t id,
              struct pv_error *err)
{
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc != SQLITE_DONE) {
		db_fail(st->db, err, "%s %lld", doing, (long long)id);
		stmt_done(s);
		return false;
	}
	stmt_done(s);
	if (sqlite3_changes(st->db) == 1)
		return true;

	s = stmt_get(st, STMT_OUTBOX_STATUS, doing, err);
	if (s == NULL)
		return false;
	rc = sqlite3_bind_int64(s, 1, id);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		char *prev = col_text(s, 0);
		pv_error_set(err, PV_ERR_STATE, "%s %lld: already %s", doing, (long long)id,
		             prev != NULL ? prev : "(none)");
		free(prev);
	} else if (rc == SQLITE_DONE) {
		pv_error_set(err, PV_ERR_NOT_FOUND, "%s: no notification %lld in the outbox", doing,
		             (long long)id);
	} else {
		db_fail(st->db, err, "%s %lld", doing, (long long)id);
	}
	stmt_done(s);
	return false;
}

bool
pv_state_outbox_mark_sent(struct pv_state *st, int64_t id, time_t sent_at, struct pv_error *err)
{
	const char *doing = "recording notification sent";
	sqlite3_stmt *s = stmt_get(st, STMT_OUTBOX_SENT, doing, err);
	int rc = SQLITE_OK;

	if (s == NULL)
		return false;
	bind_int64(s, 1, id, &rc);
	bind_int64(s, 2, (int64_t)sent_at, &rc);
	return outbox_update(st, s, rc, doing, id, err);
}

bool
pv_state_outbox_mark_retry(struct pv_state *st, int64_t id, int64_t next_attempt_ms, const char *error,
                           struct pv_error *err)
{
	const char *doing = "recording notification retry";
	sqlite3_stmt *s = stmt_get(st, STMT_OUTBOX_RETRY, doing, err);
	int rc = SQLITE_OK;

	if (s == NULL)
		return false;
	bind_int64(s, 1, id, &rc);
	bind_int64(s, 2, next_attempt_ms, &rc);
	bind_text(s, 3, error, &rc);
	return outbox_update(st, s, rc, doing, id, err);
}

bool
pv_state_outbox_mark_failed(struct pv_state *st, int64_t id, const char *error, struct pv_error *err)
{
	const char *doing = "recording notification failed";
	sqlite3_stmt *s = stmt_get(st, STMT_OUTBOX_FAILED, doing, err);
	int rc = SQLITE_OK;

	if (s == NULL)
		return false;
	bind_int64(s, 1, id, &rc);
	bind_text(s, 2, error, &rc);
	return outbox_update(st, s, rc, doing, id, err);
}

bool
pv_state_outbox_mark_dropped(struct pv_state *st, int64_t id, const char *reason, struct pv_error *err)
{
	const char *doing = "recording notification dropped";
	sqlite3_stmt *s = stmt_get(st, STMT_OUTBOX_DROPPED, doing, err);
	int rc = SQLITE_OK;

	if (s == NULL)
		return false;
	bind_int64(s, 1, id, &rc);
	bind_text(s, 2, reason, &rc);
	return outbox_update(st, s, rc, doing, id, err);
}

bool
pv_state_outbox_counts(struct pv_state *st, const char *notifier, struct pv_state_outbox_counts *out,
                       struct pv_error *err)
{
	const char *doing = "counting notifications";
	sqlite3_stmt *s = stmt_get(st, STMT_OUTBOX_COUNTS, doing, err);
	int rc = SQLITE_OK;

	memset(out, 0, sizeof(*out));
	if (s == NULL)
		return false;
	bind_text(s, 1, notifier, &rc);
	while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		const char *status = (const char *)sqlite3_column_text(s, 0);
		int64_t count = sqlite3_column_int64(s, 1);

		if (strcmp(status, "pending") == 0)
			out->pending = count;
		else if (strcmp(status, "sent") == 0)
			out->sent = count;
		else if (strcmp(status, "failed") == 0)
			out->failed = count;
		else if (strcmp(status, "dropped") == 0)
			out->dropped = count;
		rc = SQLITE_OK;
	}
	if (rc != SQLITE_DONE)
		return stmt_fail(st, s, doing, err);
	stmt_done(s);
	return true;
}

void
pv_state_outbox_msg_clear(struct pv_state_outbox_msg *m)
{
	if (m == NULL)
		return;
	free(m->notifier);
	free(m->status);
	free(m->payload);
	free(m->idempotency_key);
	free(m->last_error);
	memset(m, 0, sizeof(*m));
}

void
pv_state_outbox_msgs_free(struct pv_state_outbox_msg *v, size_t n)
{
	if (v == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		pv_state_outbox_msg_clear(&v[i]);
	free(v);
}

/* Silences and the alert log (schema version 4). */

bool
pv_state_silence_add(struct pv_state *st, const struct pv_state_silence *sil, int64_t *id,
                     struct pv_error *err)
{
	const char *doing = "recording a silence";
	sqlite3_stmt *s = stmt_get(st, STMT_SILENCE_ADD, doing, err);
	int rc = SQLITE_OK;

	if (s == NULL)
		return false;
	bind_text(s, 1, sil->rule, &rc);
	bind_text(s, 2, sil->database, &rc);
	bind_int64(s, 3, (int64_t)sil->created, &rc);
	bind_int64(s, 4, (int64_t)sil->until, &rc);
	bind_text(s, 5, sil->comment != NULL ? sil->comment : "", &rc);
	bind_text(s, 6, sil->author != NULL ? sil->author : "", &rc);
	if (rc != SQLITE_OK)
		return stmt_fail(st, s, doing, err);
	if (!step_write(st, s, doing, err))
		return false;
	*id = sqlite3_last_insert_rowid(st->db);
	return true;
}

bool
pv_state_silences_list(struct pv_state *st, time_t active_at, struct pv_state_silence **out, size_t *n,
                       struct pv_error *err)
{
	const char *doing = "listing silences";
	sqlite3_stmt *s = stmt_get(st, STMT_SILENCES_LIST, doing, err);
	struct pv_state_silence *v = NULL;
	size_t count = 0;
	int rc = SQLITE_OK;

	*out = NULL;
	*n = 0;
	if (s == NULL)
		return false;
	bind_int64(s, 1, (int64_t)active_at, &rc);
	while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		struct pv_state_silence *x;

		v = pv_realloc(v, (count + 1) * sizeof(*v));
		x = &v[count++];
		x->id = sqlite3_column_int64(s, 0);
		x->rule = col_text(s, 1);
		x->database = col_text(s, 2);
		x->created = (time_t)sqlite3_column_int64(s, 3);
		x->until = (time_t)sqlite3_column_int64(s, 4);
		x->comment = col_text(s, 5);
		x->author = col_text(s, 6);
		x->removed = (time_t)sqlite3_column_int64(s, 7);
		x->removed_by = col_text(s, 8);
		rc = SQLITE_OK;
	}
	if (rc != SQLITE_DONE) {
		pv_state_silences_free(v, count);
		return stmt_fail(st, s, doing, err);
	}
	stmt_done(s);
	*out = v;
	*n = count;
	return true;
}

bool
pv_state_silence_remove(struct pv_state *st, int64_t id, time_t at, const char *by, struct pv_error *err)
{
	const char *doing = "removing a silence";
	sqlite3_stmt *s = stmt_get(st, STMT_SILENCE_REMOVE, doing, err);
	int rc = SQLITE_OK;

	if (s == NULL)
		return false;
	bind_int64(s, 1, id, &rc);
	bind_int64(s, 2, (int64_t)at, &rc);
	bind_text(s, 3, by != NULL ? by : "", &rc);
	if (rc != SQLITE_OK)
		return stmt_fail(st, s, doing, err);
	if (!step_write(st, s, doing, err))
		return false;
	if (sqlite3_changes(st->db) == 0)
		return pv_error_set(err, PV_ERR_NOT_FOUND, "no active silence %lld", (long long)id);
	return true;
}

void
pv_state_silences_free(struct pv_state_silence *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i].rule);
		free(v[i].database);
		free(v[i].comment);
		free(v[i].author);
		free(v[i].removed_by);
	}
	free(v);
}

bool
pv_state_alert_log_add(struct pv_state *st, const struct pv_state_alert_event *e, struct pv_error *err)
{
	const char *doing = "recording an alert notification";
	sqlite3_stmt *s = stmt_get(st, STMT_ALERT_LOG_ADD, doing, err);
	int rc = SQLITE_OK;

	if (s == NULL)
		return false;
	bind_int64(s, 1, (int64_t)e->at, &rc);
	bind_text(s, 2, e->kind, &rc);
	bind_text(s, 3, e->rule, &rc);
	bind_text(s, 4, e->severity, &rc);
	bind_text(s, 5, e->fingerprint, &rc);
	bind_text(s, 6, e->database, &rc);
	bind_text(s, 7, e->job, &rc);
	bind_text(s, 8, e->value, &rc);
	bind_text(s, 9, e->threshold, &rc);
	bind_text(s, 10, e->suppressed, &rc);
	if (rc != SQLITE_OK)
		return stmt_fail(st, s, doing, err);
	return step_write(st, s, doing, err);
}

bool
pv_state_alert_log_list(struct pv_state *st, int limit, struct pv_state_alert_event **out, size_t *n,
                        struct pv_error *err)
{
	const char *doing = "listing the alert log";
	sqlite3_stmt *s = stmt_get(st, STMT_ALERT_LOG_LIST, doing, err);
	struct pv_state_alert_event *v = NULL;
	size_t count = 0;
	int rc = SQLITE_OK;

	*out = NULL;
	*n = 0;
	if (s == NULL)
		return false;
	bind_int64(s, 1, limit > 0 ? limit : -1, &rc);
	while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		struct pv_state_alert_event *x;

		v = pv_realloc(v, (count + 1) * sizeof(*v));
		x = &v[count++];
		x->id = sqlite3_column_int64(s, 0);
		x->at = (time_t)sqlite3_column_int64(s, 1);
		x->kind = col_text(s, 2);
		x->rule = col_text(s, 3);
		x->severity = col_text(s, 4);
		x->fingerprint = col_text(s, 5);
		x->database = col_text(s, 6);
		x->job = col_text(s, 7);
		x->value = col_text(s, 8);
		x->threshold = col_text(s, 9);
		x->suppressed = col_text(s, 10);
		rc = SQLITE_OK;
	}
	if (rc != SQLITE_DONE) {
		pv_state_alert_events_free(v, count);
		return stmt_fail(st, s, doing, err);
	}
	stmt_done(s);
	*out = v;
	*n = count;
	return true;
}

void
pv_state_alert_events_free(struct pv_state_alert_event *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i].kind);
		free(v[i].rule);
		free(v[i].severity);
		free(v[i].fingerprint);
		free(v[i].database);
		free(v[i].job);
		free(v[i].value);
		free(v[i].threshold);
		free(v[i].suppressed);
	}
	free(v);
}

/* ---- history ---- */

static bool
prune_one(struct pv_state *st, enum stmt_id id, time_t before, size_t limit, size_t *deleted,
          const char *doing, struct pv_error *err)
{
	sqlite3_stmt *s = stmt_get(st, id, doing, err);
	int rc = SQLITE_OK;

	*deleted = 0;
	if (s == NULL)
		return false;
	bind_int64(s, 1, (int64_t)before, &rc);
	bind_int64(s, 2, (int64_t)limit, &rc);
	if (id == STMT_RUNS_PRUNE)
		bind_int64(s, 3, PV_STATE_RUNS_KEPT, &rc);
	if (rc != SQLITE_OK)
		return stmt_fail(st, s, doing, err);
	if (!step_write(st, s, doing, err))
		return false;
	*deleted = (size_t)sqlite3_changes(st->db);
	return true;
}

bool
pv_state_prune_history(struct pv_state *st, time_t before, size_t limit, struct pv_state_pruned *out,
                       struct pv_error *err)
{
	memset(out, 0, sizeof(*out));
	return prune_one(st, STMT_RUNS_PRUNE, before, limit, &out->runs, "forgetting old runs", err) &&
	       prune_one(st, STMT_OUTBOX_PRUNE, before, limit, &out->notifications,
	                 "forgetting old notifications", err) &&
	       prune_one(st, STMT_ALERT_LOG_PRUNE, before, limit, &out->alert_log,
	                 "forgetting old alert log rows", err);
}
