/* Unit tests for src/state: file creation and WAL mode, migrations, queries, refusal of bad files, kill -9.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "state/state.h"
#include "util/error.h"
#include "util/mem.h"

#include "testlib.h"

/* The directory for this binary's state databases, removed even when a forked test fails (testlib.h). */
static void
base_setup(void)
{
	pv_test_tmpdir_setup("check_state");
}

/* A fresh directory for one test, and the state database path inside it. */
static void
test_paths(char *dir, size_t dir_size, char *db, size_t db_size)
{
	pv_test_tmpdir_sub(dir, dir_size);
	snprintf(db, db_size, "%s/state.db", dir);
}

#define TEST_PATHS()                                                                                         \
	char dir[PATH_MAX], path[PATH_MAX + 16];                                                             \
	test_paths(dir, sizeof(dir), path, sizeof(path))

static struct pv_state *
open_ok(const char *path)
{
	struct pv_state *st = NULL;
	struct pv_error err = {0};

	if (!pv_state_open(path, &st, &err))
		ck_abort_msg("pv_state_open(%s) failed: %s", path, err.msg);
	ck_assert_ptr_nonnull(st);
	return st;
}

/* Direct SQLite access, to look at the file independently of the module under test. */
static sqlite3 *
raw_open(const char *path)
{
	sqlite3 *db = NULL;

	ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
	                 SQLITE_OK);
	sqlite3_busy_timeout(db, 5000);
	return db;
}

static void
raw_exec(sqlite3 *db, const char *sql)
{
	char *msg = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
		ck_abort_msg("%s: %s", sql, msg);
}

/* First column of the first row as a malloc'ed string; NULL when no row or SQL NULL. */
static char *
raw_text(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *s = NULL;
	char *out = NULL;
	int rc;

	if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
		ck_abort_msg("%s: %s", sql, sqlite3_errmsg(db));
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL)
		out = pv_strdup((const char *)sqlite3_column_text(s, 0));
	else if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		ck_abort_msg("%s: %s", sql, sqlite3_errmsg(db));
	sqlite3_finalize(s);
	return out;
}

static long long
raw_int(sqlite3 *db, const char *sql)
{
	char *t = raw_text(db, sql);
	long long v;

	ck_assert_ptr_nonnull(t);
	v = atoll(t);
	free(t);
	return v;
}

static char *
read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	long n;

	ck_assert_ptr_nonnull(f);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = pv_malloc((size_t)n + 1);
	ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = '\0';
	fclose(f);
	*len = (size_t)n;
	return buf;
}

static void
write_file(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");

	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(data, 1, len, f), len);
	ck_assert_int_eq(fclose(f), 0);
}

static bool
exists(const char *path)
{
	struct stat sb;
	return stat(path, &sb) == 0;
}

/* Redirect stderr (where pv_log writes) to a file, to assert on the log lines a test produces. */
static int saved_stderr = -1;

static void
capture_begin(const char *file)
{
	int fd;

	fflush(stderr);
	saved_stderr = dup(STDERR_FILENO);
	fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	dup2(fd, STDERR_FILENO);
	close(fd);
}

static char *
capture_end(const char *file)
{
	size_t len;

	fflush(stderr);
	dup2(saved_stderr, STDERR_FILENO);
	close(saved_stderr);
	return read_file(file, &len);
}

START_TEST(test_state__open_creates_private_wal_file)
{
	TEST_PATHS();
	char wal[PATH_MAX + 32], shm[PATH_MAX + 32], logf[PATH_MAX + 16];
	struct pv_state *st;
	struct stat sb;
	sqlite3 *db;
	char *mode, *log;

	snprintf(wal, sizeof(wal), "%s-wal", path);
	snprintf(shm, sizeof(shm), "%s-shm", path);
	snprintf(logf, sizeof(logf), "%s/log", dir);
	/* With umask 0 a mode taken from defaults would show: 0600 must be asked for explicitly. */
	umask(0);
	capture_begin(logf);
	st = open_ok(path);
	log = capture_end(logf);
	ck_assert_ptr_nonnull(strstr(log, "state database migrated"));
	ck_assert_ptr_nonnull(strstr(log, "version=1"));
	free(log);

	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_int_eq(sb.st_mode & 07777, 0600);
	ck_assert_int_eq(stat(wal, &sb), 0);
	ck_assert_int_eq(sb.st_mode & 07777, 0600);
	ck_assert_int_eq(stat(shm, &sb), 0);
	ck_assert_int_eq(sb.st_mode & 07777, 0600);

	ck_assert_int_ge(pv_state_schema_latest(), 1);
	ck_assert_int_eq(pv_state_schema_version(st), pv_state_schema_latest());

	db = raw_open(path);
	mode = raw_text(db, "PRAGMA journal_mode");
	ck_assert_str_eq(mode, "wal");
	free(mode);
	ck_assert_int_eq(raw_int(db, "PRAGMA user_version"), pv_state_schema_latest());
	ck_assert_int_eq(raw_int(db, "PRAGMA application_id"), 0x70677667); /* "pgvg" */
	ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM sqlite_master WHERE name IN "
	                             "('runs', 'runs_job_id', 'sched', 'kv')"),
	                 4);
	sqlite3_close(db);
	ck_assert(pv_state_kv_set(st, "k", "v", NULL));
	pv_state_close(st);

	/* Reopening migrates nothing and keeps the data. */
	capture_begin(logf);
	st = open_ok(path);
	log = capture_end(logf);
	ck_assert_str_eq(log, "");
	free(log);
	ck_assert_int_eq(pv_state_schema_version(st), pv_state_schema_latest());
	{
		char *v = NULL;
		ck_assert(pv_state_kv_get(st, "k", &v, NULL));
		ck_assert_str_eq(v, "v");
		free(v);
	}
	pv_state_close(st);
	pv_state_close(NULL);
}
END_TEST

START_TEST(test_state__newer_schema_refused)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	char sql[64], want_have[64], want_know[64];
	sqlite3 *db;
	int newer = pv_state_schema_latest() + 1;

	pv_state_close(st);
	db = raw_open(path);
	snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", newer);
	raw_exec(db, sql);
	sqlite3_close(db);

	st = (struct pv_state *)&err; /* must be reset to NULL on failure */
	ck_assert(!pv_state_open(path, &st, &err));
	ck_assert_ptr_null(st);
	ck_assert_int_eq(err.code, PV_ERR_STATE);
	snprintf(want_have, sizeof(want_have), "schema version %d", newer);
	snprintf(want_know, sizeof(want_know), "the %d this pgvigil knows", pv_state_schema_latest());
	ck_assert_msg(strstr(err.msg, want_have) != NULL, "message: %s", err.msg);
	ck_assert_msg(strstr(err.msg, want_know) != NULL, "message: %s", err.msg);
	ck_assert_ptr_nonnull(strstr(err.msg, path));

	db = raw_open(path);
	ck_assert_int_eq(raw_int(db, "PRAGMA user_version"), newer);
	sqlite3_close(db);
}
END_TEST

START_TEST(test_state__runs_round_trip)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	struct pv_state_run run, *runs;
	int64_t a, b, c, count;
	size_t n;

	ck_assert(
	        pv_state_run_begin(st, "nightly", "backup", "production", "schedule", 1000, 1005, &a, &err));
	ck_assert(pv_state_run_begin(st, "health", "health", NULL, "manual", 0, 1010, &b, &err));
	ck_assert(
	        pv_state_run_begin(st, "nightly", "backup", "production", "catch_up", 2000, 2001, &c, &err));
	ck_assert_int_lt(a, b);
	ck_assert_int_lt(b, c);

	/* A running run: no finish, no result. */
	ck_assert(pv_state_run_last(st, "nightly", &run, &err));
	ck_assert_int_eq(run.id, c);
	ck_assert_str_eq(run.job, "nightly");
	ck_assert_str_eq(run.type, "backup");
	ck_assert_str_eq(run.database, "production");
	ck_assert_str_eq(run.trigger, "catch_up");
	ck_assert_int_eq(run.scheduled_for, 2000);
	ck_assert_int_eq(run.started, 2001);
	ck_assert_int_eq(run.finished, 0);
	ck_assert_ptr_null(run.result);
	ck_assert_ptr_null(run.cause);
	ck_assert_ptr_null(run.figures);
	pv_state_run_clear(&run);

	ck_assert(pv_state_run_end(st, a, 1065, 60.5, "ok", NULL, "{\"bytes\": 1234}", &err));
	ck_assert(pv_state_run_end(st, b, 1011, 1.25, "failed", "connection refused", NULL, &err));
	ck_assert(pv_state_run_end(st, c, 2002, 1.0, "ok", NULL, NULL, &err));

	ck_assert(pv_state_run_last(st, "health", &run, &err));
	ck_assert_int_eq(run.id, b);
	ck_assert_ptr_null(run.database);
	ck_assert_int_eq(run.scheduled_for, 0);
	ck_assert_int_eq(run.finished, 1011);
	ck_assert_double_eq(run.duration, 1.25);
	ck_assert_str_eq(run.result, "failed");
	ck_assert_str_eq(run.cause, "connection refused");
	ck_assert_ptr_null(run.figures);
	pv_state_run_clear(&run);
	pv_state_run_clear(&run); /* cleared twice is harmless */

	ck_assert(pv_state_runs_list(st, NULL, 0, &runs, &n, &err));
	ck_assert_uint_eq(n, 3);
	ck_assert_int_eq(runs[0].id, c);
	ck_assert_int_eq(runs[1].id, b);
	ck_assert_int_eq(runs[2].id, a);
	ck_assert_str_eq(runs[2].figures, "{\"bytes\": 1234}");
	ck_assert_double_eq(runs[2].duration, 60.5);
	ck_assert_ptr_null(runs[2].cause);
	pv_state_runs_free(runs, n);

	ck_assert(pv_state_runs_list(st, "nightly", 1, &runs, &n, &err));
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(runs[0].id, c);
	pv_state_runs_free(runs, n);

	ck_assert(pv_state_runs_list(st, "nightly", 10, &runs, &n, &err));
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(runs[0].id, c);
	ck_assert_int_eq(runs[1].id, a);
	pv_state_runs_free(runs, n);

	ck_assert(pv_state_runs_list(st, "nobody", 10, &runs, &n, &err));
	ck_assert_uint_eq(n, 0);
	pv_state_runs_free(runs, n);
	pv_state_runs_free(NULL, 0);

	ck_assert(pv_state_runs_count(st, "nightly", NULL, &count, &err));
	ck_assert_int_eq(count, 2);
	ck_assert(pv_state_runs_count(st, "nightly", "ok", &count, &err));
	ck_assert_int_eq(count, 2);
	ck_assert(pv_state_runs_count(st, "nightly", "failed", &count, &err));
	ck_assert_int_eq(count, 0);
	ck_assert(pv_state_runs_count(st, NULL, "failed", &count, &err));
	ck_assert_int_eq(count, 1);
	ck_assert(pv_state_runs_count(st, NULL, NULL, &count, &err));
	ck_assert_int_eq(count, 3);

	/* Missing rows and misuse are reported, not ignored. */
	ck_assert(!pv_state_run_last(st, "nobody", &run, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	ck_assert_ptr_nonnull(strstr(err.msg, "nobody"));
	pv_state_run_clear(&run);
	ck_assert(!pv_state_run_end(st, c + 100, 1, 1, "ok", NULL, NULL, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	ck_assert(!pv_state_run_end(st, a, 9999, 1, "failed", NULL, NULL, &err));
	ck_assert_int_eq(err.code, PV_ERR_STATE);
	ck_assert_msg(strstr(err.msg, "already ended with result ok") != NULL, "message: %s", err.msg);
	ck_assert(!pv_state_run_end(st, a, 9999, 1, NULL, NULL, NULL, &err));
	ck_assert_int_eq(err.code, PV_ERR_INTERNAL);
	ck_assert(pv_state_run_last(st, "nightly", &run, &err));
	ck_assert_int_eq(run.id, c);
	pv_state_run_clear(&run);
	ck_assert(pv_state_runs_list(st, "nightly", 0, &runs, &n, &err));
	ck_assert_int_eq(runs[1].finished, 1065); /* the refused second end changed nothing */
	pv_state_runs_free(runs, n);

	pv_state_close(st);
}
END_TEST

/* The tally entry for (job, database, result, settled), or NULL. */
static const struct pv_state_run_tally *
tally_find(const struct pv_state_run_tally *v, size_t n, const char *job, const char *database,
           const char *result, bool settled)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(v[i].job, job) == 0 && strcmp(v[i].result, result) == 0 &&
		    v[i].settled == settled &&
		    (database == NULL ? v[i].database == NULL
		                      : v[i].database != NULL && strcmp(v[i].database, database) == 0))
			return &v[i];
	return NULL;
}

START_TEST(test_state__runs_tally_settles_behind_running)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	struct pv_state_run_tally *v;
	const struct pv_state_run_tally *t;
	int64_t ids[6], settled = -1;
	size_t n;

	/* Empty: nothing counted, nothing settled beyond where we started. */
	ck_assert(pv_state_runs_tally(st, 0, 0, &settled, &v, &n, &err));
	ck_assert_uint_eq(n, 0);
	ck_assert_ptr_null(v);
	ck_assert_int_eq(settled, 0);

	ck_assert(pv_state_run_begin(st, "bk", "backup", "prod", "schedule", 0, 100, &ids[0], &err));
	ck_assert(pv_state_run_begin(st, "bk", "backup", "prod", "schedule", 0, 200, &ids[1], &err));
	ck_assert(pv_state_run_begin(st, "long", "backup", "prod", "manual", 0, 300, &ids[2], &err));
	ck_assert(pv_state_run_begin(st, "hc", "health", "prod", "schedule", 0, 310, &ids[3], &err));
	ck_assert(pv_state_run_begin(st, "st", "storage", NULL, "schedule", 0, 320, &ids[4], &err));
	ck_assert(pv_state_run_begin(st, "hc", "health", "prod", "schedule", 0, 330, &ids[5], &err));
	ck_assert(pv_state_run_end(st, ids[0], 150, 50, "ok", NULL, NULL, &err));
	ck_assert(pv_state_run_end(st, ids[1], 250, 50, "ok", NULL, NULL, &err));
	ck_assert(pv_state_run_end(st, ids[3], 311, 1, "failed", "refused", NULL, &err));
	ck_assert(pv_state_run_end(st, ids[4], 321, 1, "ok", NULL, NULL, &err));
	/* ids[2] ("long") and ids[5] are still running. */

	ck_assert(pv_state_runs_tally(st, 0, 0, &settled, &v, &n, &err));
	ck_assert_int_eq(settled, ids[1]);
	t = tally_find(v, n, "bk", "prod", "ok", true);
	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(t->count, 2);
	ck_assert_int_eq(t->last_finished, 250);
	/* Ended after the oldest running run: counted, but not final. */
	t = tally_find(v, n, "hc", "prod", "failed", false);
	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(t->count, 1);
	t = tally_find(v, n, "st", NULL, "ok", false);
	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(t->count, 1);
	ck_assert_int_eq(t->last_finished, 321);
	ck_assert_uint_eq(n, 3); /* running runs are not counted */
	pv_state_run_tallies_free(v, n);

	/* Asked again from the settled id: only what came after is read. */
	ck_assert(pv_state_run_end(st, ids[2], 400, 100, "timeout", "too slow", NULL, &err));
	ck_assert(pv_state_runs_tally(st, settled, 0, &settled, &v, &n, &err));
	ck_assert_int_eq(settled, ids[4]);
	ck_assert_ptr_null(tally_find(v, n, "bk", "prod", "ok", true));
	ck_assert_ptr_nonnull(tally_find(v, n, "long", "prod", "timeout", true));
	ck_assert_ptr_nonnull(tally_find(v, n, "hc", "prod", "failed", true));
	ck_assert_ptr_nonnull(tally_find(v, n, "st", NULL, "ok", true));
	ck_assert_uint_eq(n, 3);
	pv_state_run_tallies_free(v, n);

	/* Everything ended: settled reaches the newest id, and a further ask finds nothing new. */
	ck_assert(pv_state_run_end(st, ids[5], 331, 1, "ok", NULL, NULL, &err));
	ck_assert(pv_state_runs_tally(st, settled, 0, &settled, &v, &n, &err));
	ck_assert_int_eq(settled, ids[5]);
	ck_assert_uint_eq(n, 1);
	ck_assert_ptr_nonnull(tally_find(v, n, "hc", "prod", "ok", true));
	pv_state_run_tallies_free(v, n);
	ck_assert(pv_state_runs_tally(st, settled, 0, &settled, &v, &n, &err));
	ck_assert_int_eq(settled, ids[5]);
	ck_assert_uint_eq(n, 0);
	pv_state_run_tallies_free(v, n);
	pv_state_run_tallies_free(NULL, 0);

	/* In steps of two runs: each step settles at most two, and the steps add up to the same. */
	{
		int64_t total = 0, from = 0;
		int steps = 0;
		do {
			from = settled;
			if (steps == 0)
				from = 0;
			ck_assert(pv_state_runs_tally(st, from, 2, &settled, &v, &n, &err));
			ck_assert_int_le(settled - from, 2);
			for (size_t i = 0; i < n; i++) {
				ck_assert(v[i].settled);
				total += v[i].count;
			}
			pv_state_run_tallies_free(v, n);
			steps++;
		} while (settled > from);
		ck_assert_int_eq(settled, ids[5]);
		ck_assert_int_eq(total, 6);
		ck_assert_int_eq(steps, 4); /* 2 + 2 + 2, then an empty step */
	}
	/* A step stops at a running run. */
	{
		int64_t running;
		ck_assert(pv_state_run_begin(st, "bk", "backup", "prod", "schedule", 0, 500, &running, &err));
		ck_assert(pv_state_run_begin(st, "hc", "health", "prod", "schedule", 0, 510, &ids[0], &err));
		ck_assert(pv_state_run_end(st, ids[0], 511, 1, "ok", NULL, NULL, &err));
		ck_assert(pv_state_runs_tally(st, ids[5], 10, &settled, &v, &n, &err));
		ck_assert_int_eq(settled, ids[5]);
		ck_assert_uint_eq(n, 1);
		ck_assert(!v[0].settled);
		ck_assert_str_eq(v[0].job, "hc");
		pv_state_run_tallies_free(v, n);
		ck_assert(pv_state_run_end(st, running, 520, 20, "ok", NULL, NULL, &err));
	}

	/* From scratch, the settled counts add up to every ended run. */
	ck_assert(pv_state_runs_tally(st, 0, 0, &settled, &v, &n, &err));
	ck_assert_int_eq(settled, ids[0]); /* the newest run */
	{
		int64_t total = 0;
		for (size_t i = 0; i < n; i++) {
			ck_assert(v[i].settled);
			total += v[i].count;
		}
		ck_assert_int_eq(total, 8);
	}
	pv_state_run_tallies_free(v, n);
	pv_state_close(st);
}
END_TEST

START_TEST(test_state__error_names_action)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	int64_t id = -1;

	ck_assert(!pv_state_run_begin(st, NULL, "backup", NULL, "manual", 0, 1, &id, &err));
	ck_assert_int_eq(err.code, PV_ERR_STATE);
	ck_assert_msg(strstr(err.msg, "recording run start") == err.msg, "message: %s", err.msg);
	ck_assert_msg(strstr(err.msg, "NOT NULL constraint failed: runs.job") != NULL, "message: %s",
	              err.msg);
	ck_assert_int_eq(id, -1);
	/* The connection is still usable after a failed statement. */
	ck_assert(pv_state_run_begin(st, "j", "backup", NULL, "manual", 0, 1, &id, &err));
	pv_state_close(st);
}
END_TEST

START_TEST(test_state__unfinished_runs_marked_interrupted)
{
	TEST_PATHS();
	char logf[PATH_MAX + 16];
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	struct pv_state_run run;
	int64_t done, left, count;
	char *log;

	snprintf(logf, sizeof(logf), "%s/log", dir);
	ck_assert(
	        pv_state_run_begin(st, "nightly", "backup", "production", "schedule", 100, 105, &done, &err));
	ck_assert(pv_state_run_end(st, done, 110, 5, "ok", NULL, NULL, &err));
	ck_assert(
	        pv_state_run_begin(st, "nightly", "backup", "production", "schedule", 200, 205, &left, &err));
	pv_state_close(st);

	capture_begin(logf);
	st = open_ok(path);
	log = capture_end(logf);
	ck_assert_msg(strstr(log, "marked interrupted count=1") != NULL, "log: %s", log);
	free(log);

	ck_assert(pv_state_run_last(st, "nightly", &run, &err));
	ck_assert_int_eq(run.id, left);
	ck_assert_str_eq(run.result, "interrupted");
	ck_assert_str_eq(run.cause, "daemon stopped while running");
	ck_assert_int_eq(run.finished, 205);
	pv_state_run_clear(&run);
	ck_assert(pv_state_runs_count(st, "nightly", "ok", &count, &err));
	ck_assert_int_eq(count, 1);
	pv_state_close(st);

	/* Nothing left to mark: no second log line, the earlier marking stands. */
	capture_begin(logf);
	st = open_ok(path);
	log = capture_end(logf);
	ck_assert_str_eq(log, "");
	free(log);
	ck_assert(pv_state_runs_count(st, "nightly", "interrupted", &count, &err));
	ck_assert_int_eq(count, 1);
	pv_state_close(st);
}
END_TEST

START_TEST(test_state__sched_get_set)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	time_t slot = 42;

	ck_assert(!pv_state_sched_get(st, "nightly", &slot, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	ck_assert_ptr_nonnull(strstr(err.msg, "nightly"));
	ck_assert_int_eq(slot, 42);

	ck_assert(pv_state_sched_set(st, "nightly", 1700000000, &err));
	ck_assert(pv_state_sched_set(st, "hourly", 1700003600, &err));
	ck_assert(pv_state_sched_get(st, "nightly", &slot, &err));
	ck_assert_int_eq(slot, 1700000000);
	ck_assert(pv_state_sched_set(st, "nightly", 1700086400, &err));
	pv_state_close(st);

	st = open_ok(path);
	ck_assert(pv_state_sched_get(st, "nightly", &slot, &err));
	ck_assert_int_eq(slot, 1700086400);
	ck_assert(pv_state_sched_get(st, "hourly", &slot, &err));
	ck_assert_int_eq(slot, 1700003600);
	pv_state_close(st);
}
END_TEST

/* The run starts of one scheduler tick commit together; a batch does not nest. */
START_TEST(test_state__batch_commits_together)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	int64_t id, count = 0;

	ck_assert_msg(pv_state_batch_begin(st, &err), "%s", err.msg);
	for (int i = 0; i < 3; i++)
		ck_assert_msg(pv_state_run_begin(st, "health", "health", "prod", "schedule", 0,
		                                 1700000000 + i, &id, &err),
		              "%s", err.msg);
	ck_assert(pv_state_sched_set(st, "nightly", 1700000000, &err));
	ck_assert(!pv_state_batch_begin(st, &err)); /* already in one */
	ck_assert_msg(pv_state_batch_commit(st, &err), "%s", err.msg);
	ck_assert(!pv_state_batch_commit(st, &err)); /* nothing left to commit */
	/* Autocommit again: a single write stands on its own. */
	ck_assert(pv_state_run_begin(st, "health", "health", "prod", "schedule", 0, 1700000010, &id, &err));
	pv_state_close(st);

	st = open_ok(path);
	ck_assert(pv_state_runs_count(st, "health", NULL, &count, &err));
	ck_assert_int_eq(count, 4);
	pv_state_close(st);
}
END_TEST

START_TEST(test_state__kv_get_set)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	char *v = (char *)"sentinel";

	ck_assert(!pv_state_kv_get(st, "last_reload", &v, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	ck_assert_ptr_null(v);

	ck_assert(pv_state_kv_set(st, "last_reload", "2026-11-24T02:00:00Z ok", &err));
	ck_assert(pv_state_kv_get(st, "last_reload", &v, &err));
	ck_assert_str_eq(v, "2026-11-24T02:00:00Z ok");
	free(v);
	ck_assert(pv_state_kv_set(st, "last_reload", "", &err));
	ck_assert(pv_state_kv_get(st, "last_reload", &v, &err));
	ck_assert_str_eq(v, "");
	free(v);
	ck_assert(pv_state_kv_set(st, "last_reload", "later", &err));
	pv_state_close(st);

	st = open_ok(path);
	ck_assert(pv_state_kv_get(st, "last_reload", &v, &err));
	ck_assert_str_eq(v, "later");
	free(v);
	pv_state_close(st);
}
END_TEST

static void
assert_refused_untouched(const char *path, const void *content, size_t len, const char *expect)
{
	char wal[PATH_MAX + 32], shm[PATH_MAX + 32];
	struct pv_state *st = NULL;
	struct pv_error err = {0};
	size_t got_len;
	char *got;

	write_file(path, content, len);
	ck_assert(!pv_state_open(path, &st, &err));
	ck_assert_ptr_null(st);
	ck_assert_int_eq(err.code, PV_ERR_STATE);
	ck_assert_msg(strstr(err.msg, expect) != NULL, "message: %s", err.msg);
	ck_assert_ptr_nonnull(strstr(err.msg, path));
	got = read_file(path, &got_len);
	ck_assert_uint_eq(got_len, len);
	ck_assert(memcmp(got, content, len) == 0);
	free(got);
	snprintf(wal, sizeof(wal), "%s-wal", path);
	snprintf(shm, sizeof(shm), "%s-shm", path);
	ck_assert(!exists(wal));
	ck_assert(!exists(shm));
}

START_TEST(test_state__garbage_file_refused_untouched)
{
	TEST_PATHS();
	char garbage[8192];

	for (size_t i = 0; i < sizeof(garbage); i++)
		garbage[i] = (char)("not a database\n"[i % 15]);
	assert_refused_untouched(path, garbage, sizeof(garbage), "is not an SQLite database");
	/* Shorter than an SQLite header. */
	assert_refused_untouched(path, "SQLite", 6, "is not an SQLite database");
	/* Right magic, nonsense after it: SQLite itself must refuse it. */
	memcpy(garbage, "SQLite format 3", 16);
	assert_refused_untouched(path, garbage, sizeof(garbage), "file is not a database");
}
END_TEST

START_TEST(test_state__foreign_sqlite_database_refused)
{
	TEST_PATHS();
	struct pv_state *st = NULL;
	struct pv_error err = {0};
	sqlite3 *db = raw_open(path);

	raw_exec(db, "CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO photos VALUES (1, "
	             "'x')");
	sqlite3_close(db);

	ck_assert(!pv_state_open(path, &st, &err));
	ck_assert_ptr_null(st);
	ck_assert_int_eq(err.code, PV_ERR_STATE);
	ck_assert_msg(strstr(err.msg, "not a pgvigil state database") != NULL, "message: %s", err.msg);

	db = raw_open(path);
	ck_assert_int_eq(raw_int(db, "PRAGMA user_version"), 0);
	ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'runs'"), 0);
	ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM photos"), 1);
	sqlite3_close(db);
}
END_TEST

START_TEST(test_state__corrupt_database_refused)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	char filler[200];
	int64_t id;
	int fd;

	memset(filler, 'x', sizeof(filler) - 1);
	filler[sizeof(filler) - 1] = '\0';
	for (int i = 0; i < 200; i++)
		ck_assert(
		        pv_state_run_begin(st, "nightly", "backup", filler, "schedule", 0, i + 1, &id, &err));
	pv_state_close(st); /* checkpoints everything into the main file */

	/* Keep page 1 (header and schema), scribble over the table pages. */
	fd = open(path, O_WRONLY);
	ck_assert_int_ge(fd, 0);
	memset(filler, 0xa5, sizeof(filler));
	for (off_t off = 4096; off < 4096 * 6; off += (off_t)sizeof(filler))
		ck_assert_int_eq(pwrite(fd, filler, sizeof(filler), off), (ssize_t)sizeof(filler));
	close(fd);

	st = NULL;
	ck_assert(!pv_state_open(path, &st, &err));
	ck_assert_ptr_null(st);
	ck_assert_int_eq(err.code, PV_ERR_STATE);
	ck_assert_ptr_nonnull(strstr(err.msg, path));
	ck_assert_msg(strstr(err.msg, "corrupt") != NULL || strstr(err.msg, "malformed") != NULL,
	              "message: %s", err.msg);
}
END_TEST

START_TEST(test_state__unusable_path_refused)
{
	TEST_PATHS();
	char missing[PATH_MAX + 32];
	struct pv_state *st = NULL;
	struct pv_error err = {0};

	snprintf(missing, sizeof(missing), "%s/no/such/dir/state.db", dir);
	ck_assert(!pv_state_open(missing, &st, &err));
	ck_assert_ptr_null(st);
	ck_assert_int_eq(err.code, PV_ERR_STATE);
	ck_assert_msg(strstr(err.msg, missing) != NULL, "message: %s", err.msg);
	ck_assert_ptr_nonnull(strstr(err.msg, "No such file or directory"));

	/* A directory where the file should be. */
	ck_assert(!pv_state_open(dir, &st, &err));
	ck_assert_ptr_null(st);
	ck_assert_int_eq(err.code, PV_ERR_STATE);
}
END_TEST

/* Another process holding the write lock past busy_timeout: the caller gets a clear error. */
START_TEST(test_state__locked_database_reports_action)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	sqlite3 *db = raw_open(path);
	int64_t id;

	raw_exec(db, "BEGIN IMMEDIATE; INSERT INTO kv VALUES ('holder', 'x')");
	ck_assert(!pv_state_run_begin(st, "nightly", "backup", NULL, "manual", 0, 1, &id, &err));
	ck_assert_int_eq(err.code, PV_ERR_STATE);
	ck_assert_str_eq(err.msg, "recording run start: database is locked");
	raw_exec(db, "ROLLBACK");
	sqlite3_close(db);
	ck_assert(pv_state_run_begin(st, "nightly", "backup", NULL, "manual", 0, 1, &id, &err));
	pv_state_close(st);
}
END_TEST

/* Backup catalog. */

/* Migration 1 exactly as the first release applied it: the "old code path" a field database ran. */
static const char v1_schema[] =
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
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;\n";

/* A backup with every field set; strings point at literals (never clear it). */
static struct pv_state_backup
sample_backup(const char *database, const char *job, const char *id, time_t finished)
{
	struct pv_state_backup b = {0};

	b.database = (char *)database;
	b.job = (char *)job;
	b.id = (char *)id;
	b.tier = (char *)"daily";
	b.dir = (char *)"/var/lib/pgvigil/backups/x";
	b.sha256 = (char *)"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
	b.format = (char *)"zst";
	b.started = finished - 60;
	b.finished = finished;
	b.duration = 59.5;
	b.size = 1000;
	b.archive_size = 4000;
	return b;
}

static void
add_ok(struct pv_state *st, const char *database, const char *job, const char *id, time_t finished)
{
	struct pv_state_backup b = sample_backup(database, job, id, finished);
	struct pv_error err = {0};

	if (!pv_state_backup_add(st, &b, &err))
		ck_abort_msg("adding backup %s/%s/%s: %s", database, job, id, err.msg);
}

static void
verified_ok(struct pv_state *st, const char *database, const char *job, const char *id, time_t at, bool ok)
{
	struct pv_error err = {0};

	if (!pv_state_backup_verified(st, database, job, id, at, 1.5, ok, ok ? NULL : "hash mismatch", &err))
		ck_abort_msg("verifying backup %s/%s/%s: %s", database, job, id, err.msg);
}

/* "db/job/id" of each listed backup, space-separated, for compact order assertions. */
static void
keys_of(const struct pv_state_backup *v, size_t n, char *buf, size_t size)
{
	buf[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(buf);
		snprintf(buf + len, size - len, "%s%s/%s/%s", i ? " " : "", v[i].database, v[i].job, v[i].id);
	}
}

static void
assert_list(struct pv_state *st, const char *database, const char *job, const char *want)
{
	struct pv_state_backup *v;
	struct pv_error err = {0};
	char got[1024];
	size_t n;

	ck_assert_msg(pv_state_backups_list(st, database, job, &v, &n, &err), "%s", err.msg);
	keys_of(v, n, got, sizeof(got));
	ck_assert_str_eq(got, want);
	pv_state_backups_free(v, n);
}

static void
assert_to_verify(struct pv_state *st, int limit, const char *want)
{
	struct pv_state_backup *v;
	struct pv_error err = {0};
	char got[1024];
	size_t n;

	ck_assert_msg(pv_state_backups_to_verify(st, limit, &v, &n, &err), "%s", err.msg);
	keys_of(v, n, got, sizeof(got));
	ck_assert_str_eq(got, want);
	pv_state_backups_free(v, n);
}

START_TEST(test_state__backup_migration_from_v1)
{
	TEST_PATHS();
	char logf[PATH_MAX + 16];
	struct pv_state *st;
	struct pv_state_run run;
	struct pv_error err = {0};
	sqlite3 *db = raw_open(path);
	char *log, *v = NULL;

	snprintf(logf, sizeof(logf), "%s/log", dir);
	raw_exec(db, "PRAGMA journal_mode = WAL");
	raw_exec(db, v1_schema);
	raw_exec(db, "PRAGMA user_version = 1");
	raw_exec(db, "INSERT INTO runs (job, type, \"database\", \"trigger\", started, finished, duration, "
	             "result) "
	             "VALUES ('nightly', 'backup', 'production', 'schedule', 100, 160, 60, 'ok');"
	             "INSERT INTO runs (job, type, \"trigger\", started) VALUES ('health', 'health', "
	             "'manual', 200);"
	             "INSERT INTO kv VALUES ('last_reload', 'then');"
	             "INSERT INTO sched VALUES ('nightly', 86400)");
	sqlite3_close(db);

	capture_begin(logf);
	st = open_ok(path);
	log = capture_end(logf);
	ck_assert_msg(strstr(log, "state database migrated") != NULL && strstr(log, "version=2") != NULL,
	              "log: %s", log);
	ck_assert_msg(strstr(log, "version=1") == NULL, "migration 1 applied again: %s", log);
	ck_assert_msg(strstr(log, "marked interrupted count=1") != NULL, "log: %s", log);
	free(log);
	ck_assert_int_ge(pv_state_schema_latest(), 2);
	ck_assert_int_eq(pv_state_schema_version(st), pv_state_schema_latest());

	/* Version-1 data is intact and still served. */
	ck_assert(pv_state_run_last_finished(st, "nightly", &run, &err));
	ck_assert_str_eq(run.result, "ok");
	ck_assert_int_eq(run.finished, 160);
	pv_state_run_clear(&run);
	ck_assert(pv_state_kv_get(st, "last_reload", &v, &err));
	ck_assert_str_eq(v, "then");
	free(v);

	add_ok(st, "production", "daily", "20261124T020000Z-daily", 1000);
	verified_ok(st, "production", "daily", "20261124T020000Z-daily", 1100, true);
	pv_state_close(st);

	db = raw_open(path);
	ck_assert_int_eq(raw_int(db, "PRAGMA user_version"), pv_state_schema_latest());
	ck_assert_int_eq(
	        raw_int(db, "SELECT count(*) FROM sqlite_master WHERE name IN ('backups', "
	                    "'backups_finished', 'backups_id', 'verifications', 'verifications_backup')"),
	        5);
	ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM backups"), 1);
	ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM verifications"), 1);
	ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM runs"), 2);
	sqlite3_close(db);

	/* Reopening migrates nothing. */
	capture_begin(logf);
	st = open_ok(path);
	log = capture_end(logf);
	ck_assert_str_eq(log, "");
	free(log);
	pv_state_close(st);
}
END_TEST

START_TEST(test_state__backup_add_list_find)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	struct pv_state_backup b = sample_backup("production", "daily", "A", 1000), got;

	b.run_id = 42;
	b.format = (char *)"zst.enc";
	b.key_fingerprint = (char *)"sha256:abcd";
	b.schema_copy = true;
	b.dir = (char *)"/srv/backups/production/daily/A";
	ck_assert_msg(pv_state_backup_add(st, &b, &err), "%s", err.msg);
	add_ok(st, "production", "weekly", "A", 1500); /* same id, other job */
	add_ok(st, "production", "daily", "B", 2000);
	add_ok(st, "staging", "daily", "C", 3000);
	add_ok(st, "staging", "daily", "B", 500);

	assert_list(
	        st, NULL, NULL,
	        "staging/daily/C production/daily/B production/weekly/A production/daily/A staging/daily/B");
	assert_list(st, "production", NULL, "production/daily/B production/weekly/A production/daily/A");
	assert_list(st, "production", "daily", "production/daily/B production/daily/A");
	assert_list(st, NULL, "daily",
	            "staging/daily/C production/daily/B production/daily/A staging/daily/B");
	assert_list(st, "nobody", NULL, "");

	/* Every field round-trips; absent values come back as 0/NULL; defaults apply. */
	ck_assert_msg(pv_state_backup_find(st, "production/daily/A", &got, &err), "%s", err.msg);
	ck_assert_str_eq(got.database, "production");
	ck_assert_str_eq(got.job, "daily");
	ck_assert_str_eq(got.id, "A");
	ck_assert_str_eq(got.tier, "daily");
	ck_assert_str_eq(got.dir, "/srv/backups/production/daily/A");
	ck_assert_int_eq(got.run_id, 42);
	ck_assert_int_eq(got.started, 940);
	ck_assert_int_eq(got.finished, 1000);
	ck_assert_double_eq(got.duration, 59.5);
	ck_assert_int_eq(got.size, 1000);
	ck_assert_int_eq(got.archive_size, 4000);
	ck_assert_str_eq(got.sha256, b.sha256);
	ck_assert_str_eq(got.format, "zst.enc");
	ck_assert_str_eq(got.key_fingerprint, "sha256:abcd");
	ck_assert(got.schema_copy);
	ck_assert_str_eq(got.status, "ok");
	ck_assert_int_eq(got.verified_at, 0);
	ck_assert_ptr_null(got.verify_result);
	ck_assert_ptr_null(got.verify_cause);
	ck_assert_int_eq(got.verify_count, 0);
	ck_assert_int_eq(got.in_use, 0);
	pv_state_backup_clear(&got);
	pv_state_backup_clear(&got); /* twice is harmless */

	ck_assert_msg(pv_state_backup_find(st, "staging/daily/C", &got, &err), "%s", err.msg);
	ck_assert_int_eq(got.run_id, 0);
	ck_assert_ptr_null(got.key_fingerprint);
	ck_assert(!got.schema_copy);
	pv_state_backup_clear(&got);

	/* A bare id unique across the catalog. */
	ck_assert_msg(pv_state_backup_find(st, "C", &got, &err), "%s", err.msg);
	ck_assert_str_eq(got.database, "staging");
	ck_assert_str_eq(got.job, "daily");
	pv_state_backup_clear(&got);

	/* Ambiguous bare ids name every candidate. */
	ck_assert(!pv_state_backup_find(st, "A", &got, &err));
	ck_assert_int_eq(err.code, PV_ERR_USAGE);
	ck_assert_str_eq(
	        err.msg,
	        "ambiguous: A exists for production/daily and production/weekly; use DATABASE/JOB/ID");
	ck_assert_ptr_null(got.id);
	add_ok(st, "archive", "daily", "A", 10);
	ck_assert(!pv_state_backup_find(st, "A", &got, &err));
	ck_assert_str_eq(err.msg,
	                 "ambiguous: A exists for archive/daily, production/daily and production/weekly; "
	                 "use DATABASE/JOB/ID");
	ck_assert_msg(pv_state_backup_find(st, "production/weekly/A", &got, &err), "%s", err.msg);
	ck_assert_int_eq(got.finished, 1500);
	pv_state_backup_clear(&got);

	/* Not found, by either form. */
	ck_assert(!pv_state_backup_find(st, "Z", &got, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	ck_assert_ptr_nonnull(strstr(err.msg, "Z"));
	ck_assert(!pv_state_backup_find(st, "production/daily/Z", &got, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	ck_assert_str_eq(err.msg, "no backup production/daily/Z catalogued");
	ck_assert(!pv_state_backup_find(st, "production/monthly/A", &got, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);

	/* Malformed references. */
	static const char *const bad[] = {"", "daily/A", "/daily/A", "production//A", "production/daily/"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(!pv_state_backup_find(st, bad[i], &got, &err), "accepted \"%s\"", bad[i]);
		ck_assert_int_eq(err.code, PV_ERR_USAGE);
	}

	/* The id and job are the last two parts; a database name may contain '/'. */
	add_ok(st, "odd/name", "daily", "D", 4000);
	ck_assert_msg(pv_state_backup_find(st, "odd/name/daily/D", &got, &err), "%s", err.msg);
	ck_assert_str_eq(got.database, "odd/name");
	pv_state_backup_clear(&got);
	pv_state_close(st);
}
END_TEST

START_TEST(test_state__backup_duplicate_add_refused)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	struct pv_state_backup b = sample_backup("production", "daily", "A", 1000), got;

	add_ok(st, "production", "daily", "A", 1000);
	b.finished = 9999;
	b.dir = (char *)"/elsewhere";
	ck_assert(!pv_state_backup_add(st, &b, &err));
	ck_assert_int_eq(err.code, PV_ERR_STATE);
	ck_assert_str_eq(err.msg, "recording backup: backup production/daily/A already catalogued");
	ck_assert(pv_state_backup_find(st, "production/daily/A", &got, &err));
	ck_assert_int_eq(got.finished, 1000); /* the first stands */
	ck_assert_str_eq(got.dir, "/var/lib/pgvigil/backups/x");
	pv_state_backup_clear(&got);

	/* Constraint failures name the action and the backup. */
	b = sample_backup("production", "daily", "E", 1000);
	b.format = (char *)"gzip";
	ck_assert(!pv_state_backup_add(st, &b, &err));
	ck_assert_int_eq(err.code, PV_ERR_STATE);
	ck_assert_msg(strstr(err.msg, "recording backup production/daily/E: CHECK constraint failed") ==
	                      err.msg,
	              "message: %s", err.msg);
	b = sample_backup("production", "daily", "F", 1000);
	b.tier = NULL;
	ck_assert(!pv_state_backup_add(st, &b, &err));
	ck_assert_msg(strstr(err.msg, "NOT NULL constraint failed: backups.tier") != NULL, "message: %s",
	              err.msg);
	assert_list(st, NULL, NULL, "production/daily/A");

	/* Statuses outside the set are refused too. */
	ck_assert(!pv_state_backup_set_status(st, "production", "daily", "A", "gone", &err));
	ck_assert_int_eq(err.code, PV_ERR_STATE);
	ck_assert_msg(strstr(err.msg, "CHECK constraint failed") != NULL, "message: %s", err.msg);
	ck_assert(!pv_state_backup_set_status(st, "production", "daily", "Z", "missing", &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	ck_assert(pv_state_backup_set_status(st, "production", "daily", "A", "changed", &err));
	ck_assert(pv_state_backup_find(st, "A", &got, &err));
	ck_assert_str_eq(got.status, "changed");
	pv_state_backup_clear(&got);
	pv_state_close(st);
}
END_TEST

START_TEST(test_state__backup_verified_ledger)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	struct pv_state_verification *led;
	struct pv_state_backup got;
	sqlite3 *db;
	size_t n;

	add_ok(st, "production", "daily", "A", 1000);
	add_ok(st, "production", "weekly", "A", 1000);
	ck_assert(pv_state_backup_verified(st, "production", "daily", "A", 2000, 12.5, true, NULL, &err));
	ck_assert(pv_state_backup_find(st, "production/daily/A", &got, &err));
	ck_assert_int_eq(got.verified_at, 2000);
	ck_assert_str_eq(got.verify_result, "ok");
	ck_assert_ptr_null(got.verify_cause);
	ck_assert_int_eq(got.verify_count, 1);
	pv_state_backup_clear(&got);

	ck_assert(pv_state_backup_verified(st, "production", "daily", "A", 3000, 2.0, false,
	                                   "chunk 7: tag mismatch", &err));
	ck_assert(pv_state_backup_find(st, "production/daily/A", &got, &err));
	ck_assert_int_eq(got.verified_at, 3000);
	ck_assert_str_eq(got.verify_result, "failed");
	ck_assert_str_eq(got.verify_cause, "chunk 7: tag mismatch");
	ck_assert_int_eq(got.verify_count, 2);
	pv_state_backup_clear(&got);

	/* The same id under another job is a different backup with its own ledger. */
	ck_assert(pv_state_backup_find(st, "production/weekly/A", &got, &err));
	ck_assert_int_eq(got.verify_count, 0);
	pv_state_backup_clear(&got);
	ck_assert(pv_state_verifications_list(st, "production", "weekly", "A", 0, &led, &n, &err));
	ck_assert_uint_eq(n, 0);
	pv_state_verifications_free(led, n);

	ck_assert(pv_state_verifications_list(st, "production", "daily", "A", 0, &led, &n, &err));
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(led[0].at, 3000);
	ck_assert_str_eq(led[0].result, "failed");
	ck_assert_str_eq(led[0].cause, "chunk 7: tag mismatch");
	ck_assert_double_eq(led[0].duration, 2.0);
	ck_assert_int_eq(led[1].at, 2000);
	ck_assert_str_eq(led[1].result, "ok");
	ck_assert_ptr_null(led[1].cause);
	ck_assert_double_eq(led[1].duration, 12.5);
	ck_assert_int_lt(led[1].id, led[0].id);
	pv_state_verifications_free(led, n);
	ck_assert(pv_state_verifications_list(st, "production", "daily", "A", 1, &led, &n, &err));
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(led[0].at, 3000);
	pv_state_verifications_free(led, n);
	pv_state_verifications_free(NULL, 0);

	/* An uncatalogued backup: NOT_FOUND, and no ledger row appended. */
	ck_assert(!pv_state_backup_verified(st, "production", "daily", "Z", 4000, 1, true, NULL, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	ck_assert_str_eq(err.msg, "no backup production/daily/Z catalogued");
	db = raw_open(path);
	ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM verifications"), 2);

	/* One transaction: when the ledger insert fails, the backup's update is rolled back with it. */
	raw_exec(db, "CREATE TRIGGER ledger_full BEFORE INSERT ON verifications "
	             "BEGIN SELECT RAISE(ABORT, 'ledger refused'); END");
	ck_assert(!pv_state_backup_verified(st, "production", "daily", "A", 5000, 1, true, NULL, &err));
	ck_assert_int_eq(err.code, PV_ERR_STATE);
	ck_assert_str_eq(err.msg, "recording verification of backup production/daily/A: ledger refused");
	ck_assert(pv_state_backup_find(st, "production/daily/A", &got, &err));
	ck_assert_int_eq(got.verified_at, 3000);
	ck_assert_str_eq(got.verify_result, "failed");
	ck_assert_int_eq(got.verify_count, 2);
	pv_state_backup_clear(&got);
	ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM verifications"), 2);
	/* ... and no transaction is left open: another connection can write, and so can we. */
	raw_exec(db, "DROP TRIGGER ledger_full");
	sqlite3_close(db);
	ck_assert(pv_state_kv_set(st, "k", "v", &err));
	ck_assert(pv_state_backup_verified(st, "production", "daily", "A", 5000, 1, true, NULL, &err));
	pv_state_close(st);

	/* Durable: seen by a reopen. */
	st = open_ok(path);
	ck_assert(pv_state_backup_find(st, "production/daily/A", &got, &err));
	ck_assert_int_eq(got.verified_at, 5000);
	ck_assert_str_eq(got.verify_result, "ok");
	ck_assert_int_eq(got.verify_count, 3);
	pv_state_backup_clear(&got);
	ck_assert(pv_state_verifications_list(st, "production", "daily", "A", 0, &led, &n, &err));
	ck_assert_uint_eq(n, 3);
	pv_state_verifications_free(led, n);
	pv_state_close(st);
}
END_TEST

START_TEST(test_state__backup_newest_verified)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	struct pv_state_backup got;

	ck_assert(!pv_state_backup_newest_verified(st, "production", "daily", &got, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	ck_assert_ptr_nonnull(strstr(err.msg, "production"));

	add_ok(st, "production", "daily", "d1", 100); /* verified ok */
	add_ok(st, "production", "daily", "d2", 200); /* verified, failed */
	add_ok(st, "production", "daily", "d3", 300); /* never verified */
	add_ok(st, "production", "daily", "d4", 400); /* verified ok, then missing */
	add_ok(st, "production", "daily", "d5", 500); /* verified ok, then failed */
	add_ok(st, "production", "weekly", "w1", 250);
	add_ok(st, "staging", "daily", "s1", 900);
	verified_ok(st, "production", "daily", "d1", 1000, true);
	verified_ok(st, "production", "daily", "d2", 1000, false);
	verified_ok(st, "production", "daily", "d4", 1000, true);
	verified_ok(st, "production", "daily", "d5", 1000, true);
	verified_ok(st, "production", "daily", "d5", 1100, false);
	verified_ok(st, "production", "weekly", "w1", 1000, true);
	verified_ok(st, "staging", "daily", "s1", 1000, true);
	ck_assert(pv_state_backup_set_status(st, "production", "daily", "d4", "missing", &err));

	ck_assert_msg(pv_state_backup_newest_verified(st, "production", "daily", &got, &err), "%s", err.msg);
	ck_assert_str_eq(got.id, "d1");
	pv_state_backup_clear(&got);
	ck_assert(pv_state_backup_newest_verified(st, "production", NULL, &got, &err));
	ck_assert_str_eq(got.id, "w1");
	pv_state_backup_clear(&got);

	/* Found again: d4 back to ok. A changed file does not count. */
	ck_assert(pv_state_backup_set_status(st, "production", "daily", "d4", "ok", &err));
	ck_assert(pv_state_backup_newest_verified(st, "production", NULL, &got, &err));
	ck_assert_str_eq(got.id, "d4");
	pv_state_backup_clear(&got);
	ck_assert(pv_state_backup_set_status(st, "production", "daily", "d4", "changed", &err));
	ck_assert(pv_state_backup_newest_verified(st, "production", "daily", &got, &err));
	ck_assert_str_eq(got.id, "d1");
	pv_state_backup_clear(&got);

	ck_assert(pv_state_backup_newest_verified(st, "staging", NULL, &got, &err));
	ck_assert_str_eq(got.id, "s1");
	pv_state_backup_clear(&got);
	ck_assert(!pv_state_backup_newest_verified(st, "staging", "weekly", &got, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	ck_assert_ptr_null(got.id);
	pv_state_close(st);
}
END_TEST

START_TEST(test_state__backup_to_verify_order)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};

	assert_to_verify(st, 0, "");
	add_ok(st, "p", "daily", "new", 500);     /* never verified, newest */
	add_ok(st, "p", "daily", "old", 100);     /* never verified, oldest */
	add_ok(st, "p", "weekly", "mid", 300);    /* never verified */
	add_ok(st, "p", "daily", "v-late", 50);   /* verified at 3000 */
	add_ok(st, "p", "daily", "v-early", 400); /* verified at 2000 */
	add_ok(st, "p", "daily", "gone", 10);     /* never verified, but missing */
	add_ok(st, "p", "daily", "unread", 20);   /* verified at 2500, unreadable: still checked */
	add_ok(st, "p", "daily", "changed", 30);  /* verified at 1000 (failed), changed */
	verified_ok(st, "p", "daily", "v-late", 3000, true);
	verified_ok(st, "p", "daily", "v-early", 2000, true);
	verified_ok(st, "p", "daily", "unread", 2500, true);
	verified_ok(st, "p", "daily", "changed", 1000, false);
	ck_assert(pv_state_backup_set_status(st, "p", "daily", "gone", "missing", &err));
	ck_assert(pv_state_backup_set_status(st, "p", "daily", "unread", "unreadable", &err));
	ck_assert(pv_state_backup_set_status(st, "p", "daily", "changed", "changed", &err));

	assert_to_verify(
	        st, 0,
	        "p/daily/old p/weekly/mid p/daily/new p/daily/changed p/daily/v-early p/daily/unread "
	        "p/daily/v-late");
	assert_to_verify(st, 2, "p/daily/old p/weekly/mid");
	assert_to_verify(
	        st, -1,
	        "p/daily/old p/weekly/mid p/daily/new p/daily/changed p/daily/v-early p/daily/unread "
	        "p/daily/v-late");

	/* Verifying moves a backup to the back of the queue. */
	verified_ok(st, "p", "daily", "old", 4000, true);
	assert_to_verify(st, 3, "p/weekly/mid p/daily/new p/daily/changed");
	pv_state_close(st);
}
END_TEST

START_TEST(test_state__backup_in_use_and_delete)
{
	TEST_PATHS();
	char logf[PATH_MAX + 16];
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	struct pv_state_verification *led;
	struct pv_state_backup got;
	char *log;
	size_t n;

	snprintf(logf, sizeof(logf), "%s/log", dir);
	add_ok(st, "production", "daily", "A", 1000);
	add_ok(st, "production", "daily", "B", 2000);
	verified_ok(st, "production", "daily", "A", 1500, true);

	ck_assert(pv_state_backup_use(st, "production", "daily", "A", 1, &err));
	ck_assert(pv_state_backup_use(st, "production", "daily", "A", 1, &err));
	ck_assert(pv_state_backup_use(st, "production", "daily", "A", -1, &err));
	ck_assert(pv_state_backup_find(st, "production/daily/A", &got, &err));
	ck_assert_int_eq(got.in_use, 1);
	pv_state_backup_clear(&got);

	/* In use: not deleted, and the refusal says why. */
	ck_assert(!pv_state_backup_delete(st, "production", "daily", "A", &err));
	ck_assert_int_eq(err.code, PV_ERR_BUSY);
	ck_assert_msg(strstr(err.msg, "in use by 1") != NULL, "message: %s", err.msg);
	assert_list(st, "production", "daily", "production/daily/B production/daily/A");

	/* Never below 0: the excess release is clamped and logged. */
	capture_begin(logf);
	ck_assert(pv_state_backup_use(st, "production", "daily", "A", -3, &err));
	log = capture_end(logf);
	ck_assert_msg(strstr(log, "released more often than used") != NULL, "log: %s", log);
	free(log);
	ck_assert(pv_state_backup_find(st, "production/daily/A", &got, &err));
	ck_assert_int_eq(got.in_use, 0);
	pv_state_backup_clear(&got);
	ck_assert(pv_state_backup_use(st, "production", "daily", "A", -1, &err));
	ck_assert(pv_state_backup_find(st, "production/daily/A", &got, &err));
	ck_assert_int_eq(got.in_use, 0);
	pv_state_backup_clear(&got);

	ck_assert(!pv_state_backup_use(st, "production", "daily", "Z", 1, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	ck_assert(!pv_state_backup_use(st, "production", "daily", "Z", -1, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);

	/* Left in use by a daemon that stopped: released at the next open, and logged. */
	ck_assert(pv_state_backup_use(st, "production", "daily", "A", 2, &err));
	ck_assert(pv_state_backup_use(st, "production", "daily", "B", 1, &err));
	pv_state_close(st);
	capture_begin(logf);
	st = open_ok(path);
	log = capture_end(logf);
	ck_assert_msg(strstr(log, "backups left in use by a previous daemon released count=2") != NULL,
	              "log: %s", log);
	free(log);
	ck_assert(pv_state_backup_find(st, "production/daily/A", &got, &err));
	ck_assert_int_eq(got.in_use, 0);
	pv_state_backup_clear(&got);
	pv_state_close(st);
	capture_begin(logf);
	st = open_ok(path);
	log = capture_end(logf);
	ck_assert_str_eq(log, "");
	free(log);

	/* Delete: gone from the catalog, its ledger kept; a second delete is NOT_FOUND. */
	ck_assert_msg(pv_state_backup_delete(st, "production", "daily", "A", &err), "%s", err.msg);
	assert_list(st, NULL, NULL, "production/daily/B");
	ck_assert(!pv_state_backup_find(st, "A", &got, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	ck_assert(!pv_state_backup_delete(st, "production", "daily", "A", &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	ck_assert_str_eq(err.msg, "no backup production/daily/A catalogued");
	ck_assert(pv_state_verifications_list(st, "production", "daily", "A", 0, &led, &n, &err));
	ck_assert_uint_eq(n, 1);
	pv_state_verifications_free(led, n);
	/* The same key can be catalogued again (a catalog rebuilt from manifests). */
	add_ok(st, "production", "daily", "A", 1000);
	pv_state_close(st);
}
END_TEST

/* What the child reports through the pipe after each call returned: written whole (< PIPE_BUF). */
struct durable_rec {
	int64_t kind; /* 'B' run begun, 'E' run ended, 'K' kv counter set */
	int64_t value;
};

static void
send_rec(int fd, int64_t kind, int64_t value)
{
	struct durable_rec r = {kind, value};

	if (write(fd, &r, sizeof(r)) != (ssize_t)sizeof(r))
		_exit(10);
}

static void __attribute__((noreturn)) durable_child(const char *path, int fd)
{
	struct pv_state *st;
	struct pv_error err;
	char buf[32];

	if (!pv_state_open(path, &st, &err)) {
		fprintf(stderr, "child: %s\n", err.msg);
		_exit(3);
	}
	for (int64_t i = 1; i < 10000000; i++) {
		int64_t id;

		if (!pv_state_run_begin(st, "nightly", "backup", NULL, "schedule", 0, (time_t)i, &id, &err))
			_exit(4);
		send_rec(fd, 'B', id);
		if (!pv_state_run_end(st, id, (time_t)i + 1, 1.0, "ok", NULL, "{\"n\": 1}", &err))
			_exit(5);
		send_rec(fd, 'E', id);
		snprintf(buf, sizeof(buf), "%lld", (long long)i);
		if (!pv_state_kv_set(st, "counter", buf, &err))
			_exit(6);
		send_rec(fd, 'K', i);
	}
	_exit(0);
}

static void
read_recs(int fd, struct durable_rec **recs, size_t *n, size_t *cap, int timeout_ms)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	struct durable_rec r;
	ssize_t got;

	while (poll(&pfd, 1, timeout_ms) > 0) {
		got = read(fd, &r, sizeof(r));
		if (got == 0)
			return;
		ck_assert_int_eq(got, (ssize_t)sizeof(r));
		if (*n == *cap) {
			*cap = *cap ? *cap * 2 : 1024;
			*recs = pv_realloc(*recs, *cap * sizeof(**recs));
		}
		(*recs)[(*n)++] = r;
	}
}

START_TEST(test_state__durable_under_kill9)
{
	TEST_PATHS();
	static const int delays_ms[] = {2, 15, 40, 80, 150, 300};
	size_t total = 0;

	srand((unsigned)time(NULL) ^ (unsigned)getpid());
	for (size_t it = 0; it < sizeof(delays_ms) / sizeof(delays_ms[0]); it++) {
		struct durable_rec *recs = NULL;
		size_t n = 0, cap = 0;
		struct timespec until, now;
		struct pv_state *st;
		int fds[2], status;
		int64_t last_counter = 0;
		long delay_us = delays_ms[it] * 1000L + rand() % 5000;
		sqlite3 *db;
		char *check;
		pid_t pid;

		ck_assert_int_eq(pipe(fds), 0);
		pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			close(fds[0]);
			durable_child(path, fds[1]);
		}
		close(fds[1]);

		/* Keep draining so the child never blocks on a full pipe: the kill lands mid-work. */
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_nsec += (delay_us % 1000000) * 1000;
		until.tv_sec += delay_us / 1000000 + until.tv_nsec / 1000000000;
		until.tv_nsec %= 1000000000;
		for (;;) {
			clock_gettime(CLOCK_MONOTONIC, &now);
			if (now.tv_sec > until.tv_sec ||
			    (now.tv_sec == until.tv_sec && now.tv_nsec >= until.tv_nsec))
				break;
			read_recs(fds[0], &recs, &n, &cap, 0);
		}
		ck_assert_int_eq(kill(pid, SIGKILL), 0);
		ck_assert_int_eq(waitpid(pid, &status, 0), pid);
		ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
		              "child ended early, status %d", status);
		read_recs(fds[0], &recs, &n, &cap, -1);
		close(fds[0]);
		total += n;

		/* Look at the file before the module touches it again. */
		db = raw_open(path);
		check = raw_text(db, "PRAGMA integrity_check");
		ck_assert_str_eq(check, "ok");
		free(check);
		sqlite3_close(db);

		st = open_ok(path);
		db = raw_open(path);
		ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM runs WHERE result IS NULL"), 0);
		for (size_t i = 0; i < n; i++) {
			char sql[160];
			char *result;

			if (recs[i].kind == 'K') {
				last_counter = recs[i].value;
				continue;
			}
			snprintf(sql, sizeof(sql), "SELECT result FROM runs WHERE id = %lld",
			         (long long)recs[i].value);
			result = raw_text(db, sql);
			ck_assert_msg(result != NULL, "run %lld reported committed but missing",
			              (long long)recs[i].value);
			if (recs[i].kind == 'E') {
				ck_assert_str_eq(result, "ok");
				snprintf(sql, sizeof(sql),
				         "SELECT finished - started FROM runs WHERE id = %lld",
				         (long long)recs[i].value);
				ck_assert_int_eq(raw_int(db, sql), 1);
			} else {
				/* Its end may have committed unreported; otherwise the reopen marked it. */
				ck_assert(strcmp(result, "ok") == 0 || strcmp(result, "interrupted") == 0);
			}
			free(result);
		}
		if (last_counter > 0) {
			char *v = NULL;
			ck_assert(pv_state_kv_get(st, "counter", &v, NULL));
			ck_assert_int_ge(atoll(v), last_counter);
			free(v);
		}
		sqlite3_close(db);
		pv_state_close(st);
		free(recs);
	}
	/* A test that never saw a committed write would prove nothing. */
	ck_assert_uint_gt(total, 0);
}
END_TEST

/* Notification outbox (schema version 3). */

static int64_t
outbox_add_ok(struct pv_state *st, const char *notifier, time_t created, int64_t next_ms, const char *key)
{
	struct pv_error err = {0};
	int64_t id = 0;
	bool added = false;

	if (!pv_state_outbox_add(st, notifier, created, next_ms, "{\"title\":\"t\"}", key, &id, &added, &err))
		ck_abort_msg("pv_state_outbox_add(%s) failed: %s", key, err.msg);
	ck_assert(added);
	ck_assert_int_gt(id, 0);
	return id;
}

/* Ids of a due listing, "1,3,2". */
static void
due_ids(struct pv_state *st, int64_t now_ms, int limit, char *buf, size_t size)
{
	struct pv_state_outbox_msg *v;
	struct pv_error err = {0};
	size_t n, len = 0;

	ck_assert_msg(pv_state_outbox_due(st, now_ms, limit, &v, &n, &err), "%s", err.msg);
	buf[0] = '\0';
	for (size_t i = 0; i < n; i++)
		len += (size_t)snprintf(buf + len, size - len, "%s%lld", i ? "," : "", (long long)v[i].id);
	pv_state_outbox_msgs_free(v, n);
}

START_TEST(test_state__outbox_add_due_marks)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	struct pv_state_outbox_msg m;
	struct pv_state_outbox_counts c;
	int64_t a, b, c3, d, id, next;
	bool added = true;
	char got[128], want[64];

	a = outbox_add_ok(st, "slack", 100, 100000, "k-a");
	b = outbox_add_ok(st, "hook", 100, 105000, "k-b");
	c3 = outbox_add_ok(st, "slack", 101, 101000, "k-c");
	d = outbox_add_ok(st, "slack", 102, 500000, "k-d");

	/* A known key queues nothing and answers with the message already queued. */
	ck_assert(pv_state_outbox_add(st, "hook", 200, 200000, "{}", "k-b", &id, &added, &err));
	ck_assert(!added);
	ck_assert_int_eq(id, b);

	ck_assert(pv_state_outbox_get(st, a, &m, &err));
	ck_assert_int_eq(m.id, a);
	ck_assert_str_eq(m.notifier, "slack");
	ck_assert_int_eq(m.created, 100);
	ck_assert_int_eq(m.next_attempt_ms, 100000);
	ck_assert_int_eq(m.attempts, 0);
	ck_assert_str_eq(m.status, "pending");
	ck_assert_str_eq(m.payload, "{\"title\":\"t\"}");
	ck_assert_str_eq(m.idempotency_key, "k-a");
	ck_assert_ptr_null(m.last_error);
	ck_assert_int_eq(m.sent_at, 0);
	pv_state_outbox_msg_clear(&m);
	ck_assert(!pv_state_outbox_get(st, 999, &m, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);

	/* Earliest first, up to now, limited. */
	due_ids(st, 99999, 0, got, sizeof(got));
	ck_assert_str_eq(got, "");
	due_ids(st, 200000, 0, got, sizeof(got));
	snprintf(want, sizeof(want), "%lld,%lld,%lld", (long long)a, (long long)c3, (long long)b);
	ck_assert_str_eq(got, want);
	due_ids(st, 200000, 2, got, sizeof(got));
	snprintf(want, sizeof(want), "%lld,%lld", (long long)a, (long long)c3);
	ck_assert_str_eq(got, want);
	ck_assert(pv_state_outbox_next_due(st, 101000, &next, &err));
	ck_assert_int_eq(next, 105000);
	ck_assert(pv_state_outbox_next_due(st, 105000, &next, &err));
	ck_assert_int_eq(next, 500000);
	ck_assert(!pv_state_outbox_next_due(st, 500000, &next, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);

	/* A retry counts an attempt and moves the message back in the queue. */
	ck_assert_msg(pv_state_outbox_mark_retry(st, a, 300000, "HTTP 500", &err), "%s", err.msg);
	ck_assert(pv_state_outbox_get(st, a, &m, &err));
	ck_assert_int_eq(m.attempts, 1);
	ck_assert_int_eq(m.next_attempt_ms, 300000);
	ck_assert_str_eq(m.last_error, "HTTP 500");
	pv_state_outbox_msg_clear(&m);
	due_ids(st, 200000, 0, got, sizeof(got));
	snprintf(want, sizeof(want), "%lld,%lld", (long long)c3, (long long)b);
	ck_assert_str_eq(got, want);

	ck_assert(pv_state_outbox_mark_sent(st, a, 400, &err));
	ck_assert(pv_state_outbox_get(st, a, &m, &err));
	ck_assert_str_eq(m.status, "sent");
	ck_assert_int_eq(m.attempts, 2);
	ck_assert_int_eq(m.sent_at, 400);
	pv_state_outbox_msg_clear(&m);

	ck_assert(pv_state_outbox_mark_failed(st, b, "HTTP 404: no_service", &err));
	ck_assert(pv_state_outbox_mark_dropped(st, c3, NULL, &err));
	ck_assert(pv_state_outbox_get(st, c3, &m, &err));
	ck_assert_str_eq(m.status, "dropped");
	ck_assert_ptr_null(m.last_error);
	ck_assert_int_eq(m.attempts, 0);
	pv_state_outbox_msg_clear(&m);

	/* A message leaves "pending" once. */
	ck_assert(!pv_state_outbox_mark_sent(st, b, 500, &err));
	ck_assert_int_eq(err.code, PV_ERR_STATE);
	ck_assert_msg(strstr(err.msg, "already failed") != NULL, "%s", err.msg);
	ck_assert(!pv_state_outbox_mark_retry(st, a, 1, "x", &err));
	ck_assert_msg(strstr(err.msg, "already sent") != NULL, "%s", err.msg);
	ck_assert(!pv_state_outbox_mark_dropped(st, 999, "x", &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	due_ids(st, 1000000, 0, got, sizeof(got));
	snprintf(want, sizeof(want), "%lld", (long long)d);
	ck_assert_str_eq(got, want);

	ck_assert(pv_state_outbox_counts(st, "slack", &c, &err));
	ck_assert_int_eq(c.pending, 1);
	ck_assert_int_eq(c.sent, 1);
	ck_assert_int_eq(c.dropped, 1);
	ck_assert_int_eq(c.failed, 0);
	ck_assert(pv_state_outbox_counts(st, "hook", &c, &err));
	ck_assert_int_eq(c.failed, 1);
	ck_assert_int_eq(c.pending, 0);
	ck_assert(pv_state_outbox_counts(st, NULL, &c, &err));
	ck_assert_int_eq(c.pending + c.sent + c.failed + c.dropped, 4);
	ck_assert(pv_state_outbox_counts(st, "nobody", &c, &err));
	ck_assert_int_eq(c.pending + c.sent + c.failed + c.dropped, 0);
	pv_state_close(st);

	/* Durable: everything is there after reopening, and the key stays unique. */
	st = open_ok(path);
	ck_assert(pv_state_outbox_get(st, d, &m, &err));
	ck_assert_str_eq(m.status, "pending");
	ck_assert_str_eq(m.idempotency_key, "k-d");
	pv_state_outbox_msg_clear(&m);
	ck_assert(pv_state_outbox_add(st, "slack", 300, 1, "{}", "k-a", &id, NULL, &err));
	ck_assert_int_eq(id, a);
	pv_state_close(st);
}
END_TEST

/* A version-2 database gains the outbox and keeps its catalog. */
START_TEST(test_state__outbox_migration_from_v2)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	char logf[PATH_MAX + 16], *log;
	sqlite3 *db;

	snprintf(logf, sizeof(logf), "%s/log", dir);
	add_ok(st, "production", "daily", "A", 1000);
	pv_state_close(st);
	db = raw_open(path);
	raw_exec(db, "DROP TABLE outbox; DROP TABLE silences; DROP TABLE alert_log; PRAGMA user_version = 2");
	sqlite3_close(db);

	capture_begin(logf);
	st = open_ok(path);
	log = capture_end(logf);
	ck_assert_msg(strstr(log, "version=3") != NULL && strstr(log, "version=2") == NULL, "log: %s", log);
	free(log);
	ck_assert_int_ge(pv_state_schema_version(st), 3);
	outbox_add_ok(st, "hook", 1, 1000, "k");
	{
		struct pv_state_backup *v;
		size_t n;
		ck_assert(pv_state_backups_list(st, NULL, NULL, &v, &n, &err));
		ck_assert_uint_eq(n, 1);
		pv_state_backups_free(v, n);
	}
	pv_state_close(st);
	db = raw_open(path);
	ck_assert_int_eq(raw_int(db,
	                         "SELECT count(*) FROM sqlite_master WHERE name IN ('outbox', 'outbox_due', "
	                         "'outbox_notifier')"),
	                 3);
	sqlite3_close(db);
}
END_TEST

/* Silences: added, listed while active, removed once, expired ones only in the full list. */
START_TEST(test_state__silences)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	struct pv_state_silence a = {.rule = "backup_stale",
	                             .database = "production",
	                             .created = 1000,
	                             .until = 2000,
	                             .comment = "restore drill",
	                             .author = "alice"};
	struct pv_state_silence b = {.rule = "connectivity_lost",
	                             .created = 1000,
	                             .until = 1500,
	                             .comment = "network work",
	                             .author = "bob"};
	struct pv_state_silence *v;
	int64_t ida, idb;
	size_t n;

	ck_assert_msg(pv_state_silence_add(st, &a, &ida, &err), "%s", err.msg);
	ck_assert(pv_state_silence_add(st, &b, &idb, &err));
	ck_assert_int_gt(idb, ida);

	ck_assert(pv_state_silences_list(st, 1200, &v, &n, &err));
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(v[0].rule, "backup_stale");
	ck_assert_str_eq(v[0].database, "production");
	ck_assert_str_eq(v[0].author, "alice");
	ck_assert_ptr_null(v[1].database);
	pv_state_silences_free(v, n);

	/* b ends at 1500: not active at 1500 itself. */
	ck_assert(pv_state_silences_list(st, 1500, &v, &n, &err));
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(v[0].id, ida);
	pv_state_silences_free(v, n);

	ck_assert(pv_state_silence_remove(st, ida, 1600, "carol", &err));
	ck_assert(!pv_state_silence_remove(st, ida, 1601, "carol", &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	ck_assert(!pv_state_silence_remove(st, idb, 1601, "carol", &err)); /* expired */
	ck_assert(pv_state_silences_list(st, 1700, &v, &n, &err));
	ck_assert_uint_eq(n, 0);
	pv_state_silences_free(v, n);

	ck_assert(pv_state_silences_list(st, 0, &v, &n, &err));
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(v[0].removed, 1600);
	ck_assert_str_eq(v[0].removed_by, "carol");
	ck_assert_int_eq(v[1].removed, 0);
	pv_state_silences_free(v, n);
	pv_state_close(st);
}
END_TEST

/* The alert log: newest first, limited, pruned by age, suppression kept. */
START_TEST(test_state__alert_log)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	struct pv_state_alert_event *v;
	size_t n;

	for (int i = 0; i < 5; i++) {
		struct pv_state_alert_event e = {.at = 1000 + i * 100,
		                                 .kind = "firing",
		                                 .rule = "backup_stale",
		                                 .severity = "critical",
		                                 .fingerprint = "backup_stale/production",
		                                 .database = "production",
		                                 .value = "26h",
		                                 .suppressed = i == 2 ? "silence 7" : NULL};
		ck_assert_msg(pv_state_alert_log_add(st, &e, &err), "%s", err.msg);
	}
	ck_assert(pv_state_alert_log_list(st, 0, &v, &n, &err));
	ck_assert_uint_eq(n, 5);
	pv_state_alert_events_free(v, n);
	{
		struct pv_state_pruned pr;
		ck_assert_msg(pv_state_prune_history(st, 1150, 100, &pr, &err), "%s", err.msg);
		ck_assert_uint_eq(pr.alert_log, 2);
	}
	ck_assert(pv_state_alert_log_list(st, 0, &v, &n, &err));
	ck_assert_uint_eq(n, 3); /* 1000 and 1100 are older than 1150 */
	ck_assert_int_eq(v[0].at, 1400);
	ck_assert_str_eq(v[2].suppressed, "silence 7");
	ck_assert_ptr_null(v[0].suppressed);
	ck_assert_ptr_null(v[0].job);
	pv_state_alert_events_free(v, n);
	ck_assert(pv_state_alert_log_list(st, 2, &v, &n, &err));
	ck_assert_uint_eq(n, 2);
	pv_state_alert_events_free(v, n);
	pv_state_close(st);
}
END_TEST

static size_t
runs_of(struct pv_state *st, const char *job)
{
	int64_t n = 0;
	struct pv_error err;
	ck_assert_msg(pv_state_runs_count(st, job, NULL, &n, &err), "%s", err.msg);
	return (size_t)n;
}

/*
 * History: old finished runs go, except each job's newest PV_STATE_RUNS_KEPT and runs still going;
 * old notifications go unless pending; batches stop at the limit.
 */
START_TEST(test_state__prune_history)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	struct pv_state_pruned pr;
	int64_t id, unfinished = 0;
	size_t total = 0;

	/* "busy": 250 old runs, the first still unfinished (crashed daemon, not yet marked); "rare": 5
	 * old ones; "fresh": 10 recent ones. */
	for (int i = 0; i < 250; i++) {
		ck_assert(pv_state_run_begin(st, "busy", "health", "db", "schedule", 0, 1000 + i, &id, &err));
		if (i == 0)
			unfinished = id;
		else
			ck_assert(pv_state_run_end(st, id, 1000 + i, 0.01, "ok", NULL, "{}", &err));
	}
	for (int i = 0; i < 5; i++) {
		ck_assert(pv_state_run_begin(st, "rare", "backup", "db", "schedule", 0, 2000 + i, &id, &err));
		ck_assert(pv_state_run_end(st, id, 2000 + i, 1, "ok", NULL, "{}", &err));
	}
	for (int i = 0; i < 10; i++) {
		ck_assert(pv_state_run_begin(st, "fresh", "health", "db", "schedule", 0, 100000 + i, &id,
		                             &err));
		ck_assert(pv_state_run_end(st, id, 100000 + i, 0.01, "ok", NULL, "{}", &err));
	}
	/* Notifications: old sent, old pending, new sent. */
	ck_assert(pv_state_outbox_add(st, "hook", 1000, 1000000, "{}", "k-old-sent", &id, NULL, &err));
	ck_assert(pv_state_outbox_mark_sent(st, id, 1001, &err));
	ck_assert(pv_state_outbox_add(st, "hook", 1000, 1000000, "{}", "k-old-pending", &id, NULL, &err));
	ck_assert(pv_state_outbox_add(st, "hook", 100000, 100000000, "{}", "k-new-sent", &id, NULL, &err));
	ck_assert(pv_state_outbox_mark_sent(st, id, 100001, &err));

	/* Batches of 60: 149 old finished "busy" runs beyond the newest 100 and the unfinished one. */
	for (int round = 0; round < 10; round++) {
		ck_assert_msg(pv_state_prune_history(st, 50000, 60, &pr, &err), "%s", err.msg);
		ck_assert_uint_le(pr.runs, 60);
		total += pr.runs;
		if (pr.runs < 60)
			break;
	}
	ck_assert_uint_eq(total, 149);
	ck_assert_uint_eq(runs_of(st, "busy"), 101);
	ck_assert_uint_eq(runs_of(st, "rare"), 5);
	ck_assert_uint_eq(runs_of(st, "fresh"), 10);
	{
		struct pv_state_run r;
		ck_assert(pv_state_run_last(st, "busy", &r, &err));
		ck_assert_int_eq(r.started, 1249);
		pv_state_run_clear(&r);
	}
	{
		struct pv_state_outbox_counts c;
		ck_assert(pv_state_outbox_counts(st, NULL, &c, &err));
		ck_assert_int_eq(c.sent, 1);
		ck_assert_int_eq(c.pending, 1);
	}
	/* The unfinished run is still there (runs_count counts it among the 101). */
	{
		struct pv_state_run *runs = NULL;
		size_t n = 0;
		bool seen = false;
		ck_assert(pv_state_runs_list(st, "busy", 0, &runs, &n, &err));
		for (size_t i = 0; i < n; i++)
			seen |= runs[i].id == unfinished;
		pv_state_runs_free(runs, n);
		ck_assert(seen);
	}
	/* Nothing more to do: all zero. */
	ck_assert(pv_state_prune_history(st, 50000, 60, &pr, &err));
	ck_assert_uint_eq(pr.runs + pr.notifications + pr.alert_log, 0);
	pv_state_close(st);
}
END_TEST

/* A version 3 database gains the silence and alert log tables and keeps its outbox. */
START_TEST(test_state__migration_v3_to_v4)
{
	TEST_PATHS();
	struct pv_state *st = open_ok(path);
	struct pv_error err = {0};
	struct pv_state_silence a = {
	        .rule = "rpo_breach", .created = 1, .until = 2, .comment = "c", .author = "a"};
	int64_t id;
	sqlite3 *db;

	outbox_add_ok(st, "hook", 1, 1000, "k3");
	pv_state_close(st);
	db = raw_open(path);
	raw_exec(db, "DROP TABLE silences; DROP TABLE alert_log; PRAGMA user_version = 3");
	sqlite3_close(db);
	st = open_ok(path);
	ck_assert_int_eq(pv_state_schema_version(st), 4);
	ck_assert(pv_state_silence_add(st, &a, &id, &err));
	{
		struct pv_state_outbox_counts c;
		ck_assert(pv_state_outbox_counts(st, "hook", &c, &err));
		ck_assert_int_eq(c.pending, 1);
	}
	pv_state_close(st);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("state");
	TCase *tc = tcase_create("core");
	TCase *slow = tcase_create("slow");
	SRunner *sr;
	int failed;

	tcase_add_unchecked_fixture(tc, base_setup, pv_test_tmpdir_teardown);
	tcase_add_test(tc, test_state__open_creates_private_wal_file);
	tcase_add_test(tc, test_state__newer_schema_refused);
	tcase_add_test(tc, test_state__runs_round_trip);
	tcase_add_test(tc, test_state__runs_tally_settles_behind_running);
	tcase_add_test(tc, test_state__batch_commits_together);
	tcase_add_test(tc, test_state__error_names_action);
	tcase_add_test(tc, test_state__unfinished_runs_marked_interrupted);
	tcase_add_test(tc, test_state__sched_get_set);
	tcase_add_test(tc, test_state__kv_get_set);
	tcase_add_test(tc, test_state__garbage_file_refused_untouched);
	tcase_add_test(tc, test_state__foreign_sqlite_database_refused);
	tcase_add_test(tc, test_state__corrupt_database_refused);
	tcase_add_test(tc, test_state__unusable_path_refused);
	tcase_add_test(tc, test_state__backup_migration_from_v1);
	tcase_add_test(tc, test_state__backup_add_list_find);
	tcase_add_test(tc, test_state__backup_duplicate_add_refused);
	tcase_add_test(tc, test_state__backup_verified_ledger);
	tcase_add_test(tc, test_state__backup_newest_verified);
	tcase_add_test(tc, test_state__backup_to_verify_order);
	tcase_add_test(tc, test_state__backup_in_use_and_delete);
	tcase_add_test(tc, test_state__outbox_add_due_marks);
	tcase_add_test(tc, test_state__outbox_migration_from_v2);
	tcase_add_test(tc, test_state__silences);
	tcase_add_test(tc, test_state__alert_log);
	tcase_add_test(tc, test_state__prune_history);
	tcase_add_test(tc, test_state__migration_v3_to_v4);
	suite_add_tcase(s, tc);

	/* busy_timeout is 5 s, and the kill -9 loop runs several children. */
	tcase_add_unchecked_fixture(slow, base_setup, pv_test_tmpdir_teardown);
	tcase_set_timeout(slow, 60);
	tcase_add_test(slow, test_state__locked_database_reports_action);
	tcase_add_test(slow, test_state__durable_under_kill9);
	suite_add_tcase(s, slow);

	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
