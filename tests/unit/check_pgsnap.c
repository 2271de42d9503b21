/* Unit tests for src/pg/snapshot.c: exported snapshots, expected values, pg_dump round trip, measure. */
#include <check.h>
#include <fcntl.h>
#include <glob.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "config/config.h"
#include "pg/pg.h"
#include "pg/pg_internal.h"
#include "util/mem.h"

#include "testlib.h"

/* Set in main() before the suite forks: one cluster for every test. */
static struct pv_test_cluster cluster;
static char pg_bin[256];

#define PASSWORD "vigil-secret"

/*
 * The fixture database: every common column type, two more schemas, a partitioned table, a
 * composite primary key, a table whose data is excluded, names that need quoting, a view, a
 * materialized view and an extension-owned table (these three are not tables of the backup).
 * Mutating tests work on their own copies (CREATE DATABASE ... TEMPLATE), made before any test runs.
 */
static const char *const FIXTURE_SQL =
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');"
        "CREATE TABLE public.items (id bigint PRIMARY KEY, j json, jb jsonb, ia int[], ta text[], b bytea,"
        " m mood, n numeric(20,6), tz timestamptz, ts timestamp, d date, iv interval, u uuid, ip inet,"
        " f boolean, big text, r real, dp double precision, mn money);"
        "INSERT INTO items SELECT g, json_build_object('g', g, 's', 'x' || g),"
        " jsonb_build_object('k', g, 'arr', jsonb_build_array(g, g * 2, 'é')), ARRAY[g::int, g::int + 1],"
        " ARRAY['a' || g, NULL, 'quote\"' || g, 'comma,' || g], decode(md5(g::text), 'hex'),"
        " (ARRAY['sad','ok','happy']::mood[])[1 + g % 3], g * 1.234567,"
        " timestamptz '2024-03-10 01:30:00+00' + g * interval '37 minutes',"
        " timestamp '2024-01-01' + g * interval '1 hour', date '2024-02-28' + g::int,"
        " make_interval(days => g::int, secs => g * 0.5), md5(g::text)::uuid,"
        " ('10.0.' || (g % 256) || '.1')::inet, g % 2 = 0, NULL, g / 3.0, g / 7.0, g * 1.5"
        " FROM generate_series(1, 1000) g;"
        "UPDATE items SET j = NULL, jb = NULL, ia = NULL, b = NULL, m = NULL, n = NULL, tz = NULL"
        " WHERE id % 10 = 0;"
        /* > 1 MB, TOASTed, little compression */
        "UPDATE items SET big = (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 40000) i)"
        " WHERE id IN (1, 2);"
        /* Columns named like the row alias and the table: the hash must still cover whole rows. */
        "CREATE TABLE public.users (id bigint PRIMARY KEY, email text NOT NULL, pv_row int, users text);"
        "INSERT INTO users SELECT g, 'user' || g || '@example.com', g, 'u' FROM generate_series(1, 200) g;"
        "CREATE TABLE public.audit_log (id bigserial PRIMARY KEY, msg text);"
        "INSERT INTO audit_log (msg) SELECT 'event ' || g FROM generate_series(1, 300) g;"
        "CREATE SCHEMA sales;"
        "CREATE TABLE sales.orders (id bigint, placed date NOT NULL, total numeric(12,2),"
        " PRIMARY KEY (id, placed)) PARTITION BY RANGE (placed);"
        "CREATE TABLE sales.orders_2023 PARTITION OF sales.orders FOR VALUES FROM ('2023-01-01') TO "
        "('2024-01-01');"
        "CREATE TABLE sales.orders_2024 PARTITION OF sales.orders FOR VALUES FROM ('2024-01-01') TO "
        "('2025-01-01');"
        "INSERT INTO sales.orders SELECT g, date '2023-06-01' + (g % 400)::int, g * 3.5"
        " FROM generate_series(1, 500) g;"
        "CREATE TABLE sales.order_lines (order_id bigint, line int, sku text, qty int,"
        " PRIMARY KEY (order_id, line));"
        "INSERT INTO sales.order_lines SELECT g / 3, g % 3, 'sku-' || g, g % 7 FROM generate_series(3, 1502) "
        "g;"
        "CREATE SCHEMA \"Mixed Schema\";"
        "CREATE TABLE \"Mixed Schema\".\"Weird.Name\" (id int PRIMARY KEY, \"Val\" text);"
        "INSERT INTO \"Mixed Schema\".\"Weird.Name\" SELECT g, 'v' || g FROM generate_series(1, 7) g;"
        "CREATE SCHEMA scratch;"
        "CREATE TABLE scratch.tmp (id int);"
        "INSERT INTO scratch.tmp SELECT generate_series(1, 5);"
        /* Same name as public.audit_log: an unqualified "audit_log" must mean the search path's. */
        "CREATE TABLE scratch.audit_log (id int);"
        "INSERT INTO scratch.audit_log VALUES (1), (2);"
        "CREATE VIEW public.v_users AS SELECT id FROM users;"
        "CREATE MATERIALIZED VIEW public.mv AS SELECT count(*) FROM users;"
        /* pgcrypto is trusted: the database owner may create it and add its own table to it. */
        "CREATE EXTENSION pgcrypto;"
        "CREATE TABLE public.ext_cfg (k int);"
        "ALTER EXTENSION pgcrypto ADD TABLE public.ext_cfg;";

/* Tables of the fixture as the backup sees them, sorted by byte value. */
static const char *const ALL_TABLES[] = {
        "\"Mixed Schema\".\"Weird.Name\"",
        "public.audit_log",
        "public.items",
        "public.users",
        "sales.order_lines",
        "sales.orders",
        "sales.orders_2023",
        "sales.orders_2024",
        "scratch.audit_log",
        "scratch.tmp",
};
#define NALL (sizeof(ALL_TABLES) / sizeof(ALL_TABLES[0]))

/* ---- blocking helpers for setup and for the "other session" (never inside the loop under test) ---- */

static PGconn *
db_open(const char *db, const char *user)
{
	char *ci = pv_asprintf("host=%s port=%d dbname=%s user=%s", cluster.sock, cluster.port, db, user);
	PGconn *c = PQconnectdb(ci);
	free(ci);
	return c;
}

/* Run sql (may hold several statements); false with the server's message in err. */
static bool
db_run(const char *db, const char *user, const char *sql, char *err, size_t errsize)
{
	PGconn *c = db_open(db, user);
	PGresult *res;
	bool ok;

	if (PQstatus(c) != CONNECTION_OK) {
		snprintf(err, errsize, "%s", PQerrorMessage(c));
		PQfinish(c);
		return false;
	}
	res = PQexec(c, sql);
	ok = PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK;
	if (!ok)
		snprintf(err, errsize, "%s", PQerrorMessage(c));
	PQclear(res);
	PQfinish(c);
	return ok;
}

static void
db_exec(PGconn *c, const char *sql)
{
	PGresult *res = PQexec(c, sql);
	ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK,
	              "%s: %s", sql, PQerrorMessage(c));
	PQclear(res);
}

static void
sql_ok(const char *db, const char *user, const char *sql)
{
	char err[1024];
	ck_assert_msg(db_run(db, user, sql, err, sizeof(err)), "%s: %s", sql, err);
}

/* First value of a one-row query, as a number. */
static long long
db_number(const char *db, const char *sql)
{
	PGconn *c = db_open(db, "vigil");
	PGresult *res = PQexec(c, sql);
	long long v;

	ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1, "%s: %s", sql,
	              PQerrorMessage(c));
	v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	PQfinish(c);
	return v;
}

static char *
tcp_conninfo(const char *db)
{
	return pv_asprintf("host=127.0.0.1 port=%d dbname=%s user=vigil sslmode=disable", cluster.port, db);
}

/* ---- collectors ---- */

struct wait {
	struct event_base *base;
	int calls;
	bool ok;
	json_t *json;
	struct pv_pg_snapshot *snap;
	struct pv_error err;
	double finished;
};

static void
wait_reset(struct wait *w, struct pv_test_loop *l)
{
	memset(w, 0, sizeof(*w));
	w->base = l->base;
}

static void
snap_cb(struct pv_pg_snapshot *snap, bool ok, const struct pv_error *err, void *arg)
{
	struct wait *w = arg;
	w->calls++;
	w->ok = ok;
	w->snap = snap;
	w->finished = pv_pg_now();
	if (err)
		w->err = *err;
	event_base_loopbreak(w->base);
}

static void
expect_cb(struct pv_pg_snapshot *snap, json_t *expected, const struct pv_error *err, void *arg)
{
	struct wait *w = arg;
	w->calls++;
	w->ok = expected != NULL;
	w->json = expected;
	w->finished = pv_pg_now();
	if (err)
		w->err = *err;
	event_base_loopbreak(w->base);
}

static void
measure_cb(json_t *measured, const struct pv_error *err, void *arg)
{
	struct wait *w = arg;
	w->calls++;
	w->ok = measured != NULL;
	w->json = measured;
	w->finished = pv_pg_now();
	if (err)
		w->err = *err;
	event_base_loopbreak(w->base);
}

struct names {
	const char *schemas[4], *exclude_schemas[4], *exclude_table_data[4], *critical[4];
};

static struct pv_strv
strv_of(const char *const *v)
{
	struct pv_strv s;
	s.v = (char **)v;
	s.n = 0;
	while (s.n < 4 && v[s.n] != NULL)
		s.n++;
	return s;
}

/* Begin a snapshot on db and wait for it; asserts success. */
static struct pv_pg_snapshot *
snap_begin(struct pv_test_loop *l, const char *db, const struct names *nm, double timeout)
{
	struct pv_pg_snapshot_opts o;
	struct pv_strv s1, s2, s3, s4;
	struct names empty;
	struct wait w;
	struct pv_error err;
	struct pv_pg_snapshot *snap;
	char *ci = tcp_conninfo(db);

	memset(&empty, 0, sizeof(empty));
	if (nm == NULL)
		nm = &empty;
	s1 = strv_of(nm->schemas);
	s2 = strv_of(nm->exclude_schemas);
	s3 = strv_of(nm->exclude_table_data);
	s4 = strv_of(nm->critical);
	memset(&o, 0, sizeof(o));
	o.conninfo = ci;
	o.password = PASSWORD;
	o.timeout = timeout;
	o.schemas = &s1;
	o.exclude_schemas = &s2;
	o.exclude_table_data = &s3;
	o.critical_tables = &s4;
	wait_reset(&w, l);
	snap = pv_pg_snapshot_begin(l->base, l->dns, &o, snap_cb, &w, &err);
	ck_assert_msg(snap != NULL, "begin: %s", err.msg);
	ck_assert_int_eq(w.calls, 0); /* never synchronous */
	pv_test_loop_run(l, timeout + 5);
	ck_assert_int_eq(w.calls, 1);
	ck_assert_msg(w.ok, "begin failed: %s", w.err.msg);
	free(ci);
	return snap;
}

/* Run expect; returns the JSON or NULL with w filled. */
static json_t *
snap_expect(struct pv_test_loop *l, struct pv_pg_snapshot *snap, struct wait *w, double max)
{
	struct pv_error err;

	wait_reset(w, l);
	ck_assert_msg(pv_pg_snapshot_expect(snap, expect_cb, w, &err), "expect: %s", err.msg);
	ck_assert_int_eq(w->calls, 0);
	pv_test_loop_run(l, max);
	ck_assert_int_eq(w->calls, 1);
	return w->json;
}

/* Begin, expect, end; asserts success. */
static json_t *
expect_of(struct pv_test_loop *l, const char *db, const struct names *nm)
{
	struct wait w;
	struct pv_pg_snapshot *snap = snap_begin(l, db, nm, 10);
	json_t *j = snap_expect(l, snap, &w, 30);
	ck_assert_msg(j != NULL, "expect failed: %s", w.err.msg);
	pv_pg_snapshot_end(snap);
	return j;
}

static json_t *
measure_of(struct pv_test_loop *l, const char *db, const json_t *expected, double timeout, struct wait *w)
{
	struct pv_error err;
	char *ci = tcp_conninfo(db);
	struct pv_pg_measure_op *op;

	wait_reset(w, l);
	op = pv_pg_measure_start(l->base, l->dns, ci, PASSWORD, timeout, expected, measure_cb, w, &err);
	ck_assert_msg(op != NULL, "measure: %s", err.msg);
	ck_assert_int_eq(w->calls, 0);
	pv_test_loop_run(l, timeout + 30);
	ck_assert_int_eq(w->calls, 1);
	free(ci);
	return w->json;
}

static long long
count_of(const json_t *j, const char *table)
{
	json_t *v = json_object_get(json_object_get(j, "row_counts"), table);
	ck_assert_msg(json_is_integer(v), "no row count for %s", table);
	return json_integer_value(v);
}

static const char *
hash_of(const json_t *j, const char *table)
{
	json_t *v = json_object_get(json_object_get(j, "critical_table_hashes"), table);
	ck_assert_msg(json_is_string(v), "no hash for %s", table);
	return json_string_value(v);
}

static void
assert_json_equal(const json_t *a, const json_t *b)
{
	if (!json_equal((json_t *)a, (json_t *)b)) {
		char *sa = json_dumps(a, JSON_SORT_KEYS), *sb = json_dumps(b, JSON_SORT_KEYS);
		ck_abort_msg("json differs:\n%s\n%s", sa, sb);
	}
}

/* ---- children ---- */

/* Run argv (argv[0] a path) with PGPASSWORD only in the child's environment; stdout to out_path. */
static int
run_child(char *const argv[], const char *out_path, char *errout, size_t errsize)
{
	char errpath[300];
	char *const envp[] = {"PGPASSWORD=" PASSWORD, "PATH=/usr/bin:/bin", "LC_ALL=C.UTF-8", NULL};
	pid_t pid;
	int status = 0, fd;
	ssize_t n;

	snprintf(errpath, sizeof(errpath), "%s/child.err", cluster.dir);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int out = open(out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0600);
		int err = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (out < 0 || err < 0)
			_exit(126);
		dup2(out, 1);
		dup2(err, 2);
		execve(argv[0], argv, envp);
		_exit(127);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	errout[0] = '\0';
	fd = open(errpath, O_RDONLY);
	if (fd >= 0) {
		n = read(fd, errout, errsize - 1);
		errout[n > 0 ? n : 0] = '\0';
		close(fd);
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ---- pure helpers ---- */

START_TEST(test_pgsnap__name_split)
{
	static const struct {
		const char *in;
		size_t max;
		int n; /* -1: error */
		const char *a, *b;
	} cases[] = {
	        {"users", 2, 1, "users", NULL},
	        {"Users", 2, 1, "users", NULL},
	        {"public.users", 2, 2, "public", "users"},
	        {"  public . Users ", 2, 2, "public", "users"},
	        {"\"Mixed Schema\".\"Weird.Name\"", 2, 2, "Mixed Schema", "Weird.Name"},
	        {"\"a\"\"b\"", 2, 1, "a\"b", NULL},
	        {"\"CamelCase\"", 1, 1, "CamelCase", NULL},
	        {"sales", 1, 1, "sales", NULL},
	        {"a.b.c", 2, -1, NULL, NULL},
	        {"a.b", 1, -1, NULL, NULL},
	        {"", 2, -1, NULL, NULL},
	        {"a.", 2, -1, NULL, NULL},
	        {".a", 2, -1, NULL, NULL},
	        {"\"unterminated", 2, -1, NULL, NULL},
	        {"\"\"", 2, -1, NULL, NULL},
	        {"my table", 2, -1, NULL, NULL},
	        {"a\"b\"", 2, -1, NULL, NULL},
	        {"x; DROP TABLE users", 2, -1, NULL, NULL},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *parts[2] = {NULL, NULL};
		size_t n = 99;
		struct pv_error err;
		bool ok = pv_pg_name_split(cases[i].in, cases[i].max, parts, &n, &err);
		if (cases[i].n < 0) {
			ck_assert_msg(!ok, "case %zu (%s) should fail", i, cases[i].in);
			ck_assert_int_eq(err.code, PV_ERR_CONFIG_VALUE);
			ck_assert_msg(strstr(err.msg, "invalid name") != NULL, "case %zu: %s", i, err.msg);
			ck_assert_ptr_null(parts[0]);
			continue;
		}
		ck_assert_msg(ok, "case %zu (%s): %s", i, cases[i].in, err.msg);
		ck_assert_int_eq((int)n, cases[i].n);
		ck_assert_str_eq(parts[0], cases[i].a);
		if (n == 2)
			ck_assert_str_eq(parts[1], cases[i].b);
		free(parts[0]);
		free(parts[1]);
	}
}
END_TEST

START_TEST(test_pgsnap__pooler_decision)
{
	struct pv_error err;

	ck_assert(pv_pg_session_check(4242, 4242, &err));
	ck_assert(!pv_pg_session_check(4242, 4243, &err));
	ck_assert_int_eq(err.code, PV_ERR_PG_CONNECT);
	ck_assert_msg(strstr(err.msg,
	                     "the connection goes through a transaction-mode pooler (backend changed "
	                     "between transactions") != NULL,
	              "%s", err.msg);
	ck_assert_msg(strstr(err.msg, "a consistent backup needs a session: HINT: connect to PostgreSQL "
	                              "directly or to the pooler's session-mode port") != NULL,
	              "%s", err.msg);
	ck_assert(!pv_pg_session_check(0, 4242, &err));
	ck_assert_int_eq(err.code, PV_ERR_PG_QUERY);
	ck_assert(!pv_pg_session_check(4242, 0, &err));
}
END_TEST

/* ---- against the server ---- */

START_TEST(test_pgsnap__snapshot_id_and_version)
{
	struct pv_test_loop l;
	struct pv_pg_snapshot *snap;
	regex_t re;
	PGconn *other;
	char *sql;

	pv_test_loop_init(&l, false);
	snap = snap_begin(&l, "snapsrc", NULL, 10);
	ck_assert_int_eq(regcomp(&re, "^[0-9A-F]{8}-[0-9A-F]{8}-[0-9]+$", REG_EXTENDED), 0);
	ck_assert_msg(regexec(&re, pv_pg_snapshot_id(snap), 0, NULL, 0) == 0, "id %s",
	              pv_pg_snapshot_id(snap));
	regfree(&re);
	ck_assert_int_eq(pv_pg_snapshot_server_version(snap),
	                 db_number("snapsrc", "SELECT current_setting('server_version_num')::int"));
	ck_assert_ptr_nonnull(pv_pg_snapshot_server_version_str(snap));
	ck_assert_int_eq(atoi(pv_pg_snapshot_server_version_str(snap)),
	                 pv_pg_snapshot_server_version(snap) / 10000);

	/* Importable by another session (what pg_dump --snapshot does) while the snapshot is open... */
	other = db_open("snapsrc", "vigil");
	db_exec(other, "BEGIN ISOLATION LEVEL REPEATABLE READ");
	sql = pv_asprintf("SET TRANSACTION SNAPSHOT '%s'", pv_pg_snapshot_id(snap));
	db_exec(other, sql);
	db_exec(other, "COMMIT");
	/* ...and gone once it ended. */
	pv_pg_snapshot_end(snap);
	usleep(200 * 1000);
	db_exec(other, "BEGIN ISOLATION LEVEL REPEATABLE READ");
	{
		PGresult *res = PQexec(other, sql);
		ck_assert_int_eq(PQresultStatus(res), PGRES_FATAL_ERROR);
		PQclear(res);
	}
	db_exec(other, "ROLLBACK");
	PQfinish(other);
	free(sql);
	pv_pg_snapshot_end(NULL);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pgsnap__expected_values)
{
	struct pv_test_loop l;
	struct names nm = {.exclude_table_data = {"audit_log"},
	                   .critical = {"users", "items", "sales.orders"}};
	json_t *a, *b, *tables, *excluded;
	double t0, t_expect;

	pv_test_loop_init(&l, false);
	t0 = pv_pg_now();
	a = expect_of(&l, "snapsrc", &nm);
	t_expect = pv_pg_now() - t0;
	b = expect_of(&l, "snapsrc", &nm);

	ck_assert_str_eq(json_string_value(json_object_get(a, "method")), "pgvigil-rowhash-v1");
	tables = json_object_get(a, "tables");
	ck_assert_int_eq(json_array_size(tables), NALL);
	for (size_t i = 0; i < NALL; i++)
		ck_assert_str_eq(json_string_value(json_array_get(tables, i)), ALL_TABLES[i]);
	ck_assert_int_eq(json_object_size(json_object_get(a, "row_counts")), NALL);

	/* Exact counts, as a direct count(*) sees them; ONLY: a partitioned table stores nothing itself. */
	for (size_t i = 0; i < NALL; i++) {
		char *sql = pv_asprintf("SELECT count(*) FROM ONLY %s", ALL_TABLES[i]);
		long long want =
		        strcmp(ALL_TABLES[i], "public.audit_log") == 0 ? 0 : db_number("snapsrc", sql);
		ck_assert(strcmp(ALL_TABLES[i], "scratch.audit_log") != 0 || want == 2);
		ck_assert_msg(count_of(a, ALL_TABLES[i]) == want, "%s: %lld want %lld", ALL_TABLES[i],
		              count_of(a, ALL_TABLES[i]), want);
		free(sql);
	}
	ck_assert_int_eq(count_of(a, "public.items"), 1000);
	ck_assert_int_eq(count_of(a, "sales.orders"), 0);
	ck_assert_int_eq(count_of(a, "sales.orders_2023") + count_of(a, "sales.orders_2024"), 500);
	excluded = json_object_get(a, "data_excluded");
	ck_assert_int_eq(json_array_size(excluded), 1);
	ck_assert_str_eq(json_string_value(json_array_get(excluded, 0)), "public.audit_log");

	/* Hashes: "<count>:<sum>"; the partitioned table's covers its partitions. */
	ck_assert_int_eq(json_object_size(json_object_get(a, "critical_table_hashes")), 3);
	ck_assert(strncmp(hash_of(a, "public.users"), "200:", 4) == 0);
	ck_assert(strncmp(hash_of(a, "public.items"), "1000:", 5) == 0);
	ck_assert(strncmp(hash_of(a, "sales.orders"), "500:", 4) == 0);
	{
		/* The sum is what the documented query gives on a plain session. */
		PGconn *c = db_open("snapsrc", "vigil");
		PGresult *res;
		char *want;
		db_exec(c, "SET TimeZone = 'UTC'");
		res = PQexec(c, "SELECT count(*) || ':' || coalesce(sum(hashtextextended(t::text, 0)), 0) "
		                "FROM ONLY public.users t");
		ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
		want = pv_strdup(PQgetvalue(res, 0, 0));
		PQclear(res);
		PQfinish(c);
		ck_assert_str_eq(hash_of(a, "public.users"), want);
		free(want);
	}
	/* Stable across runs. */
	assert_json_equal(a, b);
	fprintf(stderr, "check_pgsnap: expected values of %zu tables (3 hashed, 1.3 MB TOAST) in %.3fs\n",
	        NALL, t_expect);
	json_decref(a);
	json_decref(b);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pgsnap__hash_changes_with_one_byte)
{
	struct pv_test_loop l;
	struct names nm = {.critical = {"users", "items"}};
	struct wait w;
	json_t *a, *b, *m;

	pv_test_loop_init(&l, false);
	a = expect_of(&l, "snap_hash", &nm);
	/* One byte in the middle of one TOASTed value of one row. */
	sql_ok("snap_hash", "vigil",
	       "UPDATE items SET big = overlay(big placing 'Z' from 600000 for 1) WHERE id = 2");
	b = expect_of(&l, "snap_hash", &nm);
	ck_assert_str_ne(hash_of(a, "public.items"), hash_of(b, "public.items"));
	ck_assert_str_eq(hash_of(a, "public.users"), hash_of(b, "public.users"));
	assert_json_equal(json_object_get(a, "row_counts"), json_object_get(b, "row_counts"));
	/* Row order does not matter: rewrite the table in another physical order. */
	sql_ok("snap_hash", "vigil",
	       "CLUSTER users USING users_pkey; UPDATE users SET id = id WHERE id % 2 = 0");
	/* A restore target whose defaults print values differently: the pinned session settings win. */
	sql_ok("snap_hash", "vigil",
	       "ALTER DATABASE snap_hash SET TimeZone = 'Asia/Kolkata';"
	       "ALTER DATABASE snap_hash SET DateStyle = 'SQL, DMY';"
	       "ALTER DATABASE snap_hash SET IntervalStyle = 'iso_8601';"
	       "ALTER DATABASE snap_hash SET bytea_output = 'escape';"
	       "ALTER DATABASE snap_hash SET extra_float_digits = -2;"
	       "ALTER DATABASE snap_hash SET statement_timeout = '1ms';");
	m = measure_of(&l, "snap_hash", b, 10, &w);
	ck_assert_msg(m != NULL, "%s", w.err.msg);
	/* measure and expect agree on the same data. */
	assert_json_equal(b, m);
	json_decref(a);
	json_decref(b);
	json_decref(m);
	pv_test_loop_free(&l);
}
END_TEST

/* The end-to-end proof: what pg_dump --snapshot writes restores to exactly the expected values. */
START_TEST(test_pgsnap__isolation_and_pg_dump_round_trip)
{
	struct pv_test_loop l;
	struct names nm = {.exclude_table_data = {"audit_log"},
	                   .critical = {"users", "items", "sales.orders", "\"Mixed Schema\".\"Weird.Name\""}};
	struct pv_pg_snapshot *snap;
	struct wait w;
	json_t *exp, *m, *live;
	char dump[300], port[16], errbuf[4096], *snaparg, *exclarg;
	double t0, t_expect, t_dump, t_restore, t_measure;
	int rc;

	pv_test_loop_init(&l, false);
	snap = snap_begin(&l, "snap_iso", &nm, 10);
	/* Committed after the export, by another session: invisible in the snapshot. */
	sql_ok("snap_iso", "vigil",
	       "INSERT INTO users SELECT g, 'late' || g, g, 'x' FROM generate_series(1001, 1050) g;"
	       "UPDATE items SET n = n + 1 WHERE id = 3; DELETE FROM sales.order_lines WHERE order_id < 10;"
	       "INSERT INTO sales.orders VALUES (9999, '2024-05-05', 1);"
	       "CREATE TABLE public.late_table (id int); INSERT INTO public.late_table VALUES (1);");
	ck_assert_int_eq(db_number("snap_iso", "SELECT count(*) FROM users"), 250);
	t0 = pv_pg_now();
	exp = snap_expect(&l, snap, &w, 30);
	t_expect = pv_pg_now() - t0;
	ck_assert_msg(exp != NULL, "%s", w.err.msg);
	ck_assert_int_eq(count_of(exp, "public.users"), 200);
	ck_assert_int_eq(count_of(exp, "sales.order_lines"), 1500);
	ck_assert_int_eq(count_of(exp, "sales.orders_2023") + count_of(exp, "sales.orders_2024"), 500);
	ck_assert_ptr_null(json_object_get(json_object_get(exp, "row_counts"), "public.late_table"));
	ck_assert(strncmp(hash_of(exp, "\"Mixed Schema\".\"Weird.Name\""), "7:", 2) == 0);

	ck_assert_int_eq(count_of(exp, "public.audit_log"), 0);
	ck_assert_int_eq(count_of(exp, "scratch.audit_log"), 2);
	/* pg_dump in the snapshot, as the backup job runs it: configured names passed as they are. */
	snprintf(dump, sizeof(dump), "%s/round.dump", cluster.dir);
	snprintf(port, sizeof(port), "%d", cluster.port);
	snaparg = pv_asprintf("--snapshot=%s", pv_pg_snapshot_id(snap));
	exclarg = pv_asprintf("--exclude-table-data=%s", nm.exclude_table_data[0]);
	{
		char *pgdump = pv_asprintf("%s/pg_dump", pg_bin);
		char *argv[] = {pgdump, "-Fc", "-Z0", snaparg, exclarg, "-h",       "127.0.0.1",
		                "-p",   port,  "-U",  "vigil", "-d",    "snap_iso", "--no-password",
		                NULL};
		t0 = pv_pg_now();
		rc = run_child(argv, dump, errbuf, sizeof(errbuf));
		t_dump = pv_pg_now() - t0;
		ck_assert_msg(rc == 0, "pg_dump exit %d: %s", rc, errbuf);
		free(pgdump);
	}
	pv_pg_snapshot_end(snap);

	sql_ok("postgres", "postgres", "CREATE DATABASE snap_iso_r OWNER vigil");
	{
		char *pgrestore = pv_asprintf("%s/pg_restore", pg_bin);
		char *argv[] = {pgrestore,
		                "--no-owner",
		                "--no-privileges",
		                "--exit-on-error",
		                "-h",
		                "127.0.0.1",
		                "-p",
		                port,
		                "-U",
		                "vigil",
		                "-d",
		                "snap_iso_r",
		                "--no-password",
		                dump,
		                NULL};
		t0 = pv_pg_now();
		rc = run_child(argv, NULL, errbuf, sizeof(errbuf));
		t_restore = pv_pg_now() - t0;
		ck_assert_msg(rc == 0, "pg_restore exit %d: %s", rc, errbuf);
		free(pgrestore);
	}
	t0 = pv_pg_now();
	m = measure_of(&l, "snap_iso_r", exp, 10, &w);
	t_measure = pv_pg_now() - t0;
	ck_assert_msg(m != NULL, "%s", w.err.msg);
	assert_json_equal(exp, m);
	json_decref(m);

	/* The live source has moved on: the same measurement shows it. */
	live = measure_of(&l, "snap_iso", exp, 10, &w);
	ck_assert_msg(live != NULL, "%s", w.err.msg);
	ck_assert_int_eq(count_of(live, "public.users"), 250);
	ck_assert_int_eq(count_of(live, "public.late_table"), 1);
	ck_assert_int_eq(count_of(live, "public.audit_log"), 300); /* measure counts what is there */
	ck_assert_str_ne(hash_of(live, "public.items"), hash_of(exp, "public.items"));
	ck_assert_str_ne(hash_of(live, "sales.orders"), hash_of(exp, "sales.orders"));
	json_decref(live);

	fprintf(stderr,
	        "check_pgsnap: round trip: expect %.3fs, pg_dump --snapshot %.3fs, pg_restore %.3fs, "
	        "measure %.3fs\n",
	        t_expect, t_dump, t_restore, t_measure);
	json_decref(exp);
	free(snaparg);
	free(exclarg);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pgsnap__schema_filters)
{
	struct pv_test_loop l;
	/* pg_dump would not exclude an unqualified order_lines here (not on the search path): neither do we.
	 */
	struct names inc = {.schemas = {"sales", "\"Mixed Schema\""},
	                    .exclude_table_data = {"order_lines"},
	                    .critical = {"order_lines", "Orders"}};
	struct names exc = {.exclude_schemas = {"scratch", "\"Mixed Schema\""},
	                    .exclude_table_data = {"nosuch"}};
	static const char *const want_inc[] = {"\"Mixed Schema\".\"Weird.Name\"", "sales.order_lines",
	                                       "sales.orders", "sales.orders_2023", "sales.orders_2024"};
	static const char *const want_exc[] = {"public.audit_log",  "public.items", "public.users",
	                                       "sales.order_lines", "sales.orders", "sales.orders_2023",
	                                       "sales.orders_2024"};
	json_t *j, *t;

	pv_test_loop_init(&l, false);
	j = expect_of(&l, "snapsrc", &inc);
	t = json_object_get(j, "tables");
	ck_assert_int_eq(json_array_size(t), 5);
	for (size_t i = 0; i < 5; i++)
		ck_assert_str_eq(json_string_value(json_array_get(t, i)), want_inc[i]);
	/* Unqualified critical names are looked up in the included schemas. */
	ck_assert(strncmp(hash_of(j, "sales.order_lines"), "1500:", 5) == 0);
	ck_assert(strncmp(hash_of(j, "sales.orders"), "500:", 4) == 0);
	ck_assert_int_eq(count_of(j, "sales.order_lines"), 1500);
	ck_assert_int_eq(json_array_size(json_object_get(j, "data_excluded")), 0);
	json_decref(j);

	j = expect_of(&l, "snapsrc", &exc);
	t = json_object_get(j, "tables");
	ck_assert_int_eq(json_array_size(t), 7);
	for (size_t i = 0; i < 7; i++)
		ck_assert_str_eq(json_string_value(json_array_get(t, i)), want_exc[i]);
	/* An exclude_table_data entry that matches nothing is no error (as in pg_dump). */
	ck_assert_int_eq(json_array_size(json_object_get(j, "data_excluded")), 0);
	ck_assert_int_eq(count_of(j, "public.audit_log"), 300);
	ck_assert_int_eq(json_object_size(json_object_get(j, "critical_table_hashes")), 0);
	json_decref(j);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pgsnap__critical_table_errors)
{
	struct pv_test_loop l;
	struct names missing = {.critical = {"users", "nosuch"}};
	struct names qualified = {.critical = {"sales.users"}};
	struct names filtered = {.exclude_schemas = {"sales"}, .critical = {"sales.orders"}};
	struct names excluded = {.exclude_table_data = {"users"}, .critical = {"public.users"}};
	struct names badname = {.critical = {"a.b.c"}};
	struct pv_pg_snapshot *snap;
	struct wait w;
	struct pv_error err;
	struct pv_pg_snapshot_opts o;
	struct pv_strv s;
	char *ci;

	pv_test_loop_init(&l, false);
	snap = snap_begin(&l, "snapsrc", &missing, 10);
	ck_assert_ptr_null(snap_expect(&l, snap, &w, 10));
	ck_assert_int_eq(w.err.code, PV_ERR_NOT_FOUND);
	ck_assert_str_eq(w.err.msg,
	                 "critical table \"nosuch\" not found: no table \"nosuch\" in schema \"public\" "
	                 "among the tables in the backup");
	/* No query failed: the snapshot is still usable (the same error again, not "unusable"). */
	ck_assert_ptr_null(snap_expect(&l, snap, &w, 10));
	ck_assert_int_eq(w.err.code, PV_ERR_NOT_FOUND);
	pv_pg_snapshot_end(snap);

	snap = snap_begin(&l, "snapsrc", &qualified, 10);
	ck_assert_ptr_null(snap_expect(&l, snap, &w, 10));
	ck_assert_msg(strstr(w.err.msg,
	                     "critical table \"sales.users\" not found: no table \"users\" in schema "
	                     "\"sales\"") != NULL,
	              "%s", w.err.msg);
	pv_pg_snapshot_end(snap);

	snap = snap_begin(&l, "snapsrc", &filtered, 10);
	ck_assert_ptr_null(snap_expect(&l, snap, &w, 10));
	ck_assert_int_eq(w.err.code, PV_ERR_NOT_FOUND);
	pv_pg_snapshot_end(snap);

	snap = snap_begin(&l, "snapsrc", &excluded, 10);
	ck_assert_ptr_null(snap_expect(&l, snap, &w, 10));
	ck_assert_int_eq(w.err.code, PV_ERR_CONFIG_VALUE);
	ck_assert_msg(strstr(w.err.msg,
	                     "critical table \"public.users\" (public.users) is in exclude_table_data") !=
	                      NULL,
	              "%s", w.err.msg);
	pv_pg_snapshot_end(snap);

	/* A malformed name fails before connecting. */
	ci = tcp_conninfo("snapsrc");
	s = strv_of(badname.critical);
	memset(&o, 0, sizeof(o));
	o.conninfo = ci;
	o.password = PASSWORD;
	o.timeout = 5;
	o.critical_tables = &s;
	ck_assert_ptr_null(pv_pg_snapshot_begin(l.base, l.dns, &o, snap_cb, &w, &err));
	ck_assert_int_eq(err.code, PV_ERR_CONFIG_VALUE);
	ck_assert_msg(strstr(err.msg, "invalid name \"a.b.c\"") != NULL, "%s", err.msg);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pgsnap__measure_shows_differences)
{
	struct pv_test_loop l;
	struct names nm = {.critical = {"users", "items", "scratch.tmp"}};
	struct wait w;
	json_t *exp, *m, *h;

	pv_test_loop_init(&l, false);
	exp = expect_of(&l, "snap_diff", &nm);
	sql_ok("snap_diff", "vigil",
	       "DROP TABLE scratch.tmp; UPDATE users SET email = 'changed@example.com' WHERE id = 5;"
	       "DELETE FROM sales.order_lines WHERE order_id = 7; CREATE TABLE public.extra (id int)");
	m = measure_of(&l, "snap_diff", exp, 10, &w);
	ck_assert_msg(m != NULL, "%s", w.err.msg);
	ck_assert(!json_equal(exp, m));
	/* Missing and extra tables show in the list and counts. */
	ck_assert_int_eq(json_array_size(json_object_get(m, "tables")), NALL);
	ck_assert_ptr_null(json_object_get(json_object_get(m, "row_counts"), "scratch.tmp"));
	ck_assert_int_eq(count_of(m, "public.extra"), 0);
	ck_assert_int_eq(count_of(m, "sales.order_lines"), count_of(exp, "sales.order_lines") - 3);
	/* Same count, changed content; a missing critical table's hash is null. */
	ck_assert_int_eq(count_of(m, "public.users"), count_of(exp, "public.users"));
	ck_assert_str_ne(hash_of(m, "public.users"), hash_of(exp, "public.users"));
	ck_assert_str_eq(hash_of(m, "public.items"), hash_of(exp, "public.items"));
	h = json_object_get(m, "critical_table_hashes");
	ck_assert(json_is_null(json_object_get(h, "scratch.tmp")));
	json_decref(exp);
	json_decref(m);

	/* Malformed expected values are refused up front. */
	{
		struct pv_error err;
		json_t *bad = json_pack("{s:s}", "method", "something-else");
		ck_assert_ptr_null(
		        pv_pg_measure_start(l.base, l.dns, "dbname=x", NULL, 1, bad, measure_cb, &w, &err));
		ck_assert_msg(strstr(err.msg, "pgvigil-rowhash-v1") != NULL, "%s", err.msg);
		json_decref(bad);
	}
	pv_test_loop_free(&l);
}
END_TEST

static PGconn *
lock_users(const char *db)
{
	PGconn *locker = db_open(db, "vigil");
	ck_assert_int_eq(PQstatus(locker), CONNECTION_OK);
	db_exec(locker, "BEGIN");
	db_exec(locker, "LOCK TABLE public.users IN ACCESS EXCLUSIVE MODE");
	return locker;
}

/* A count that blocks behind a lock ends at the deadline, and the loop stays live meanwhile. */
START_TEST(test_pgsnap__deadline_on_blocked_count)
{
	struct pv_test_loop l;
	struct pv_pg_snapshot *snap;
	struct wait w;
	struct pv_error err;
	PGconn *locker;
	json_t *exp;
	double t0, elapsed;

	pv_test_loop_init(&l, false);
	/* Expected values for measure below, taken before the lock. */
	exp = expect_of(&l, "snap_lock", NULL);
	snap = snap_begin(&l, "snap_lock", NULL, 1.0);
	locker = lock_users("snap_lock");
	pv_test_loop_start_ticker(&l);
	t0 = pv_pg_now();
	ck_assert_ptr_null(snap_expect(&l, snap, &w, 5));
	elapsed = w.finished - t0;
	ck_assert_int_eq(w.err.code, PV_ERR_PG_TIMEOUT);
	ck_assert_msg(strstr(w.err.msg, "counting rows of") != NULL &&
	                      strstr(w.err.msg, "query timed out after 1.0s"),
	              "%s", w.err.msg);
	ck_assert_msg(elapsed >= 0.95 && elapsed < 2.0, "elapsed %.3f", elapsed);
	ck_assert_msg(l.ticks >= 8, "ticks %d", l.ticks);
	ck_assert_msg(l.max_gap < 0.3, "max gap %.3f", l.max_gap);
	/* The connection was closed at the deadline: the snapshot is done for. */
	ck_assert(!pv_pg_snapshot_expect(snap, expect_cb, &w, &err));
	ck_assert_msg(strstr(err.msg, "no longer usable") != NULL, "%s", err.msg);
	pv_pg_snapshot_end(snap);

	/* measure has the same deadline. */
	t0 = pv_pg_now();
	ck_assert_ptr_null(measure_of(&l, "snap_lock", exp, 1.0, &w));
	ck_assert_int_eq(w.err.code, PV_ERR_PG_TIMEOUT);
	ck_assert_msg(w.finished - t0 < 2.5, "elapsed %.3f", w.finished - t0);

	db_exec(locker, "ROLLBACK");
	PQfinish(locker);
	json_decref(exp);
	pv_test_loop_free(&l);
}
END_TEST

static void
end_snap_cb(evutil_socket_t fd, short what, void *arg)
{
	pv_pg_snapshot_end(arg);
}

static void
cancel_measure_cb(evutil_socket_t fd, short what, void *arg)
{
	pv_pg_measure_cancel(arg);
}

/* end() and cancel() at any moment: no callback afterwards, nothing leaks (ASan). */
START_TEST(test_pgsnap__end_during_operation)
{
	struct pv_test_loop l;
	struct pv_pg_snapshot *snap;
	struct pv_pg_measure_op *op;
	struct pv_pg_snapshot_opts o;
	struct wait w, e;
	struct pv_error err;
	struct timeval tv = pv_test_tv(0.3);
	struct event *ev;
	PGconn *locker;
	json_t *exp;
	char *ci = tcp_conninfo("snap_lock");

	pv_test_loop_init(&l, false);
	exp = expect_of(&l, "snap_lock", NULL);

	/* During the connect. */
	memset(&o, 0, sizeof(o));
	o.conninfo = ci;
	o.password = PASSWORD;
	o.timeout = 1.0;
	wait_reset(&w, &l);
	snap = pv_pg_snapshot_begin(l.base, l.dns, &o, snap_cb, &w, &err);
	ck_assert_ptr_nonnull(snap);
	pv_pg_snapshot_end(snap);
	pv_test_loop_run(&l, 0.5);
	ck_assert_int_eq(w.calls, 0);

	/* During expect, blocked on a lock, before its 1 s deadline. */
	locker = lock_users("snap_lock");
	snap = snap_begin(&l, "snap_lock", NULL, 1.0);
	wait_reset(&e, &l);
	ck_assert(pv_pg_snapshot_expect(snap, expect_cb, &e, &err));
	ck_assert(!pv_pg_snapshot_expect(snap, expect_cb, &e, &err)); /* one at a time */
	ck_assert_msg(strstr(err.msg, "busy") != NULL, "%s", err.msg);
	ev = evtimer_new(l.base, end_snap_cb, snap);
	evtimer_add(ev, &tv);
	pv_test_loop_run(&l, 1.6);
	ck_assert_int_eq(e.calls, 0);
	event_free(ev);

	/* measure, cancelled while blocked. */
	wait_reset(&w, &l);
	op = pv_pg_measure_start(l.base, l.dns, ci, PASSWORD, 1.0, exp, measure_cb, &w, &err);
	ck_assert_ptr_nonnull(op);
	ev = evtimer_new(l.base, cancel_measure_cb, op);
	evtimer_add(ev, &tv);
	pv_test_loop_run(&l, 1.6);
	ck_assert_int_eq(w.calls, 0);
	event_free(ev);
	pv_pg_measure_cancel(NULL);

	db_exec(locker, "ROLLBACK");
	PQfinish(locker);
	json_decref(exp);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pgsnap__connect_failures)
{
	struct pv_test_loop l;
	struct pv_pg_snapshot_opts o;
	struct pv_pg_snapshot *snap;
	struct wait w;
	struct pv_error err;
	char *ci = tcp_conninfo("snapsrc");

	pv_test_loop_init(&l, false);
	memset(&o, 0, sizeof(o));
	o.conninfo = ci;
	o.password = "not-the-password";
	o.timeout = 5;
	wait_reset(&w, &l);
	snap = pv_pg_snapshot_begin(l.base, l.dns, &o, snap_cb, &w, &err);
	ck_assert_ptr_nonnull(snap);
	pv_test_loop_run(&l, 6);
	ck_assert_int_eq(w.calls, 1);
	ck_assert(!w.ok);
	ck_assert_int_eq(w.err.code, PV_ERR_PG_CONNECT);
	ck_assert_msg(strstr(w.err.msg, "password authentication failed") != NULL, "%s", w.err.msg);
	ck_assert_ptr_null(strstr(w.err.msg, "not-the-password"));
	/* Freed before the callback (ASan would see a leak or a double free otherwise). */
	ck_assert_ptr_null(w.snap);

	o.conninfo = "host=x nosuchkey=1";
	ck_assert_ptr_null(pv_pg_snapshot_begin(l.base, l.dns, &o, snap_cb, &w, &err));
	ck_assert_int_eq(err.code, PV_ERR_PG_CONNECT);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

/* ---- harness ---- */

/* pg_dump/pg_restore of at least the server's major: PG_BIN_DIR, else the newest installed. */
static bool
find_pg_bin(void)
{
	const char *env = getenv("PG_BIN_DIR");
	glob_t g;
	int best = -1;

	if (env != NULL) {
		pv_strlcpy(pg_bin, env, sizeof(pg_bin));
		return true;
	}
	if (glob("/usr/lib/postgresql/*/bin/pg_dump", 0, NULL, &g) != 0)
		return false;
	for (size_t i = 0; i < g.gl_pathc; i++) {
		int v = atoi(g.gl_pathv[i] + strlen("/usr/lib/postgresql/"));
		if (v > best) {
			best = v;
			snprintf(pg_bin, sizeof(pg_bin), "/usr/lib/postgresql/%d/bin", v);
		}
	}
	globfree(&g);
	return best >= 0;
}

static bool
make_fixture(void)
{
	static const char *const copies[] = {"snap_hash", "snap_iso", "snap_diff", "snap_lock"};
	char err[2048];

	if (!db_run("postgres", "postgres", "CREATE DATABASE snapsrc OWNER vigil", err, sizeof(err)) ||
	    !db_run("snapsrc", "vigil", FIXTURE_SQL, err, sizeof(err))) {
		fprintf(stderr, "check_pgsnap: fixture: %s\n", err);
		return false;
	}
	for (size_t i = 0; i < sizeof(copies) / sizeof(copies[0]); i++) {
		char *sql = pv_asprintf("CREATE DATABASE %s TEMPLATE snapsrc OWNER vigil", copies[i]);
		bool ok = db_run("postgres", "postgres", sql, err, sizeof(err));
		free(sql);
		if (!ok) {
			fprintf(stderr, "check_pgsnap: fixture copy: %s\n", err);
			return false;
		}
	}
	return true;
}

int
main(void)
{
	Suite *s = suite_create("pgsnap");
	TCase *pure = tcase_create("pure");
	TCase *tc = tcase_create("server");
	SRunner *sr;
	int failed;

	if (!find_pg_bin()) {
		fprintf(stderr, "check_pgsnap: pg_dump not found: install the Debian package 'postgresql'\n");
		return EXIT_FAILURE;
	}
	if (!pv_test_cluster_start(&cluster, "check_pgsnap"))
		return EXIT_FAILURE;
	if (!make_fixture()) {
		pv_test_cluster_stop(&cluster);
		return EXIT_FAILURE;
	}

	tcase_add_test(pure, test_pgsnap__name_split);
	tcase_add_test(pure, test_pgsnap__pooler_decision);
	suite_add_tcase(s, pure);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_pgsnap__snapshot_id_and_version);
	tcase_add_test(tc, test_pgsnap__expected_values);
	tcase_add_test(tc, test_pgsnap__hash_changes_with_one_byte);
	tcase_add_test(tc, test_pgsnap__isolation_and_pg_dump_round_trip);
	tcase_add_test(tc, test_pgsnap__schema_filters);
	tcase_add_test(tc, test_pgsnap__critical_table_errors);
	tcase_add_test(tc, test_pgsnap__measure_shows_differences);
	tcase_add_test(tc, test_pgsnap__deadline_on_blocked_count);
	tcase_add_test(tc, test_pgsnap__end_during_operation);
	tcase_add_test(tc, test_pgsnap__connect_failures);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);

	pv_test_cluster_stop(&cluster);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
