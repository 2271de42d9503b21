/* Unit tests for foreign-key orphan detection (src/pg/integrity.c, src/jobs/integrity.c) and the
 * health job's figures, against a throwaway PostgreSQL. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "config/config.h"
#include "jobs/health.h"
#include "jobs/integrity.h"
#include "jobs/job.h"
#include "pg/pg.h"
#include "pg/pg_internal.h"
#include "state/state.h"
#include "util/mem.h"

#include "testlib.h"

/* Set in main() before the suite forks: one cluster for every test. */
static struct pv_test_cluster cluster;

/*
 * The fixture database "fk": every constraint with its exact number of orphaned rows. Orphans are
 * inserted first and the foreign key added NOT VALID afterwards (where PostgreSQL allows it), or
 * inserted with session_replication_role = replica past a valid key (partitioned tables).
 */
static const char *const FIXTURE[] = {
        "CREATE DATABASE fk OWNER vigil",
        NULL, /* the rest runs in database fk */
        "SET ROLE vigil",
        "CREATE SCHEMA sales",
        "CREATE SCHEMA \"Odd Schema\"",
        "CREATE TABLE public.customers (id bigint PRIMARY KEY)",
        "INSERT INTO public.customers SELECT g FROM generate_series(1, 10) g",
        "CREATE TABLE public.regions (country text, code int, PRIMARY KEY (country, code))",
        "INSERT INTO public.regions VALUES ('fr', 1), ('fr', 2), ('de', 1)",
        /* composite, MATCH SIMPLE: NULL in any column is no orphan; (fr,9) and (xx,1) are */
        "CREATE TABLE public.stores (id int PRIMARY KEY, country text, code int)",
        "INSERT INTO public.stores VALUES (1, 'fr', 1), (2, 'de', 1), (3, 'fr', 9), (4, 'xx', 1), "
        "(5, NULL, 1), (6, 'fr', NULL), (7, NULL, NULL)",
        "ALTER TABLE public.stores ADD CONSTRAINT stores_region_fk FOREIGN KEY (country, code) "
        "REFERENCES public.regions NOT VALID",
        /* composite, MATCH FULL: all NULL is fine; partial NULLs and (de,7) are not */
        "CREATE TABLE public.kiosks (id int PRIMARY KEY, country text, code int)",
        "INSERT INTO public.kiosks VALUES (1, 'fr', 1), (2, NULL, NULL), (3, 'fr', NULL), (4, NULL, 2), "
        "(5, 'de', 7)",
        "ALTER TABLE public.kiosks ADD CONSTRAINT kiosks_region_fk FOREIGN KEY (country, code) "
        "REFERENCES public.regions MATCH FULL NOT VALID",
        /* cross-schema, ON DELETE CASCADE: customers 11, 12, 12 do not exist */
        "CREATE TABLE sales.orders (id bigint PRIMARY KEY, customer_id bigint)",
        "INSERT INTO sales.orders VALUES (1, 1), (2, 2), (3, 11), (4, 12), (5, 12), (6, NULL)",
        "ALTER TABLE sales.orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) "
        "REFERENCES public.customers ON DELETE CASCADE NOT VALID",
        /* ON DELETE SET NULL, valid, NULL-able: no orphans */
        "CREATE TABLE sales.invoices (id int PRIMARY KEY, order_id bigint REFERENCES sales.orders "
        "ON DELETE SET NULL)",
        "INSERT INTO sales.invoices VALUES (1, 1), (2, NULL), (3, 2)",
        /* names that need quoting, int referencing bigint (cross-type operator), SET NULL */
        "CREATE TABLE \"Odd Schema\".\"Line Items\" (\"Order Id\" int)",
        "INSERT INTO \"Odd Schema\".\"Line Items\" VALUES (1), (2), (99), (NULL)",
        "ALTER TABLE \"Odd Schema\".\"Line Items\" ADD CONSTRAINT \"li fk\" FOREIGN KEY (\"Order Id\") "
        "REFERENCES sales.orders ON DELETE SET NULL NOT VALID",
        /* partitioned referencing table: checked once through the parent */
        "CREATE TABLE public.events (id int, customer_id bigint REFERENCES public.customers) "
        "PARTITION BY RANGE (id)",
        "CREATE TABLE public.events_1 PARTITION OF public.events FOR VALUES FROM (0) TO (100)",
        "CREATE TABLE public.events_2 PARTITION OF public.events FOR VALUES FROM (100) TO (200)",
        "INSERT INTO public.events VALUES (1, 1), (150, 2)",
        /* partitioned referenced table */
        "CREATE TABLE public.zones (id int PRIMARY KEY) PARTITION BY RANGE (id)",
        "CREATE TABLE public.zones_a PARTITION OF public.zones FOR VALUES FROM (0) TO (100)",
        "INSERT INTO public.zones VALUES (1), (50)",
        "CREATE TABLE public.zone_refs (zone_id int REFERENCES public.zones)",
        "INSERT INTO public.zone_refs VALUES (1), (50)",
        /* the table the deadline test locks */
        "CREATE TABLE public.m_locked (id int, customer_id bigint REFERENCES public.customers "
        "ON DELETE CASCADE)",
        "INSERT INTO public.m_locked VALUES (1, 1)",
        "RESET ROLE",
        /* vigil may not read it: its count fails, the check goes on */
        "CREATE TABLE public.secret (id int, customer_id bigint REFERENCES public.customers)",
        "SET session_replication_role = replica",
        "INSERT INTO public.events VALUES (2, 77), (151, 88)",
        "INSERT INTO public.zone_refs VALUES (60)",
        "RESET session_replication_role",
};

#define N_CONSTRAINTS 9

static const struct {
	const char *name;
	long long orphans; /* -1: error */
	bool validated;
} EXPECT[N_CONSTRAINTS] = {
        {"\"Odd Schema\".\"Line Items\".\"li fk\"", 1, false},
        {"public.events.events_customer_id_fkey", 2, true},
        {"public.kiosks.kiosks_region_fk", 3, false},
        {"public.m_locked.m_locked_customer_id_fkey", 0, true},
        {"public.secret.secret_customer_id_fkey", -1, true},
        {"public.stores.stores_region_fk", 2, false},
        {"public.zone_refs.zone_refs_zone_id_fkey", 1, true},
        {"sales.invoices.invoices_order_id_fkey", 0, true},
        {"sales.orders.orders_customer_fk", 3, false},
};

static char *
fk_conninfo(void)
{
	return pv_asprintf("host=%s port=%d dbname=fk user=vigil", cluster.sock, cluster.port);
}

/* A blocking superuser session for fixtures and locks (tests only). */
static PGconn *
admin_connect(const char *db)
{
	char *ci = pv_asprintf("host=%s port=%d dbname=%s user=postgres", cluster.sock, cluster.port, db);
	PGconn *c = PQconnectdb(ci);
	free(ci);
	if (PQstatus(c) != CONNECTION_OK) {
		fprintf(stderr, "check_integrity: %s", PQerrorMessage(c));
		PQfinish(c);
		return NULL;
	}
	return c;
}

static bool
admin_exec(PGconn *c, const char *sql)
{
	PGresult *r = PQexec(c, sql);
	bool ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
	if (!ok)
		fprintf(stderr, "check_integrity: %s: %s", sql, PQresultErrorMessage(r));
	PQclear(r);
	return ok;
}

/* ---- integrity ---- */

struct integ_wait {
	struct event_base *base;
	int calls;
	double finished;
	json_t *report;
	bool failed;
	struct pv_error err;
};

static void
integ_cb(json_t *report, const struct pv_error *err, void *arg)
{
	struct integ_wait *w = arg;
	w->calls++;
	w->finished = pv_pg_now();
	w->report = report ? json_incref(report) : NULL;
	w->failed = err != NULL;
	if (err)
		w->err = *err;
	event_base_loopbreak(w->base);
}

static void
run_integrity(struct pv_test_loop *l, const struct pv_pg_integrity_opts *opts, struct integ_wait *w)
{
	struct pv_error err;

	memset(w, 0, sizeof(*w));
	w->base = l->base;
	ck_assert_msg(pv_pg_integrity_start(l->base, l->dns, opts, integ_cb, w, &err) != NULL, "start: %s",
	              err.msg);
	ck_assert_int_eq(w->calls, 0);
	pv_test_loop_run(l, opts->timeout + 10);
	ck_assert_int_eq(w->calls, 1);
}

static json_t *
find_detail(json_t *report, const char *name)
{
	size_t i;
	json_t *d;
	json_array_foreach(json_object_get(report, "details"), i,
	                   d) if (strcmp(json_string_value(json_object_get(d, "constraint")), name) ==
	                          0) return d;
	return NULL;
}

static long long
figure(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	ck_assert_msg(json_is_integer(v), "figure %s missing", key);
	return (long long)json_integer_value(v);
}

/* Every constraint found, with its exact count, or the error expected for it. */
static void
assert_expected_counts(json_t *report, const char *timed_out)
{
	for (size_t i = 0; i < N_CONSTRAINTS; i++) {
		json_t *d = find_detail(report, EXPECT[i].name);
		ck_assert_msg(d != NULL, "constraint %s not reported", EXPECT[i].name);
		ck_assert_msg(json_is_true(json_object_get(d, "validated")) == EXPECT[i].validated,
		              "%s validated", EXPECT[i].name);
		if (timed_out != NULL && strcmp(EXPECT[i].name, timed_out) == 0) {
			ck_assert_str_eq(json_string_value(json_object_get(d, "error")), "timeout");
			ck_assert_ptr_null(json_object_get(d, "orphans"));
		} else if (EXPECT[i].orphans < 0) {
			const char *e = json_string_value(json_object_get(d, "error"));
			ck_assert_msg(e && strstr(e, "permission denied for table secret"), "%s: %s",
			              EXPECT[i].name, e ? e : "(no error)");
		} else {
			ck_assert_msg(json_is_integer(json_object_get(d, "orphans")), "%s has no count",
			              EXPECT[i].name);
			ck_assert_msg(figure(d, "orphans") == EXPECT[i].orphans,
			              "%s: %lld orphans, expected %lld", EXPECT[i].name, figure(d, "orphans"),
			              EXPECT[i].orphans);
		}
	}
}

START_TEST(test_integrity__orphans_per_constraint)
{
	struct pv_test_loop l;
	struct integ_wait w;
	struct pv_pg_integrity_opts o = {.timeout = 20};
	char *ci = fk_conninfo();
	json_t *details;

	o.conninfo = ci;
	pv_test_loop_init(&l, false);
	run_integrity(&l, &o, &w);
	ck_assert_msg(!w.failed, "integrity: %s", w.err.msg);
	ck_assert_ptr_nonnull(w.report);
	ck_assert_int_eq(figure(w.report, "constraints"), N_CONSTRAINTS);
	ck_assert_int_eq(figure(w.report, "checked"), N_CONSTRAINTS - 1);
	ck_assert_int_eq(figure(w.report, "orphaned_constraints"), 6);
	ck_assert_int_eq(figure(w.report, "orphans"), 12);
	ck_assert_int_eq(figure(w.report, "errors"), 1);
	ck_assert_int_eq(figure(w.report, "timeouts"), 0);
	ck_assert_int_eq(figure(w.report, "not_checked"), 0);
	ck_assert_int_eq(figure(w.report, "details_omitted"), 0);
	assert_expected_counts(w.report, NULL);
	/* Problems first: the two clean constraints come last. */
	details = json_object_get(w.report, "details");
	ck_assert_int_eq(json_array_size(details), N_CONSTRAINTS);
	for (size_t i = 0; i < N_CONSTRAINTS; i++) {
		json_t *n = json_object_get(json_array_get(details, i), "orphans");
		ck_assert_msg((i >= N_CONSTRAINTS - 2) == (json_is_integer(n) && json_integer_value(n) == 0),
		              "detail %zu out of order", i);
	}
	json_decref(w.report);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_integrity__details_capped)
{
	struct pv_test_loop l;
	struct integ_wait w;
	struct pv_pg_integrity_opts o = {.timeout = 20, .max_details = 2};
	char *ci = fk_conninfo();
	json_t *details;

	o.conninfo = ci;
	pv_test_loop_init(&l, false);
	run_integrity(&l, &o, &w);
	ck_assert_ptr_nonnull(w.report);
	details = json_object_get(w.report, "details");
	ck_assert_int_eq(json_array_size(details), 2);
	ck_assert_int_eq(figure(w.report, "details_omitted"), N_CONSTRAINTS - 2);
	/* The first problems in name order, never a clean constraint. */
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(details, 0), "constraint")),
	                 "\"Odd Schema\".\"Line Items\".\"li fk\"");
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(details, 1), "constraint")),
	                 "public.events.events_customer_id_fkey");
	json_decref(w.report);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

/* A count blocked by a lock is abandoned at its deadline; the check reconnects and goes on. */
START_TEST(test_integrity__locked_table_times_out)
{
	struct pv_test_loop l;
	struct integ_wait w;
	struct pv_pg_integrity_opts o = {.timeout = 20, .query_timeout = 1.0};
	char *ci = fk_conninfo();
	PGconn *locker = admin_connect("fk");
	double t0;

	ck_assert_ptr_nonnull(locker);
	ck_assert(admin_exec(locker, "BEGIN"));
	ck_assert(admin_exec(locker, "LOCK TABLE public.m_locked IN ACCESS EXCLUSIVE MODE"));
	o.conninfo = ci;
	pv_test_loop_init(&l, false);
	pv_test_loop_start_ticker(&l);
	t0 = pv_pg_now();
	run_integrity(&l, &o, &w);
	ck_assert_msg(!w.failed, "integrity: %s", w.err.msg);
	ck_assert_msg(w.finished - t0 >= 1.0 && w.finished - t0 < 6.0, "elapsed %.3f", w.finished - t0);
	ck_assert_int_eq(figure(w.report, "timeouts"), 1);
	ck_assert_int_eq(figure(w.report, "checked"), N_CONSTRAINTS - 2);
	ck_assert_int_eq(figure(w.report, "orphans"), 12);
	assert_expected_counts(w.report, "public.m_locked.m_locked_customer_id_fkey");
	ck_assert_msg(l.max_gap < 0.3, "the loop stalled for %.3fs", l.max_gap);
	ck_assert_int_ge(l.ticks, 9);
	json_decref(w.report);
	PQfinish(locker);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

/* The whole check's deadline: the blocked count is cut short, the rest are "not checked". */
START_TEST(test_integrity__overall_deadline)
{
	struct pv_test_loop l;
	struct integ_wait w;
	struct pv_pg_integrity_opts o = {.timeout = 1.5, .query_timeout = 10};
	char *ci = fk_conninfo();
	PGconn *locker = admin_connect("fk");
	double t0;
	json_t *d;

	ck_assert_ptr_nonnull(locker);
	ck_assert(admin_exec(locker, "BEGIN"));
	ck_assert(admin_exec(locker, "LOCK TABLE public.m_locked IN ACCESS EXCLUSIVE MODE"));
	o.conninfo = ci;
	pv_test_loop_init(&l, false);
	t0 = pv_pg_now();
	run_integrity(&l, &o, &w);
	ck_assert(w.failed);
	ck_assert_int_eq(w.err.code, PV_ERR_PG_TIMEOUT);
	ck_assert_str_eq(w.err.msg,
	                 "integrity check timed out after 1.5s with 5 of 9 constraints not checked");
	ck_assert_msg(w.finished - t0 >= 1.4 && w.finished - t0 < 2.5, "elapsed %.3f", w.finished - t0);
	ck_assert_ptr_nonnull(w.report);
	ck_assert_int_eq(figure(w.report, "checked"), 3);
	ck_assert_int_eq(figure(w.report, "timeouts"), 1);
	ck_assert_int_eq(figure(w.report, "not_checked"), 5);
	d = find_detail(w.report, "sales.orders.orders_customer_fk");
	ck_assert_str_eq(json_string_value(json_object_get(d, "error")), "not checked");
	json_decref(w.report);
	PQfinish(locker);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_integrity__unreachable)
{
	struct pv_test_loop l;
	struct integ_wait w;
	struct pv_pg_integrity_opts o = {.timeout = 5};
	char *ci = pv_asprintf("host=%s port=%d dbname=nosuchdb user=vigil", cluster.sock, cluster.port);

	o.conninfo = ci;
	pv_test_loop_init(&l, false);
	run_integrity(&l, &o, &w);
	ck_assert(w.failed);
	ck_assert_ptr_null(w.report);
	ck_assert_int_eq(w.err.code, PV_ERR_PG_CONNECT);
	ck_assert_msg(strstr(w.err.msg, "database \"nosuchdb\" does not exist"), "msg: %s", w.err.msg);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_integrity__cancel_returns_nothing_before_catalog)
{
	struct pv_test_loop l;
	struct integ_wait w;
	struct pv_pg_integrity_opts o = {.timeout = 5};
	char *ci = fk_conninfo();
	struct pv_error err;
	struct pv_pg_integrity_op *op;

	o.conninfo = ci;
	pv_test_loop_init(&l, false);
	memset(&w, 0, sizeof(w));
	w.base = l.base;
	op = pv_pg_integrity_start(l.base, l.dns, &o, integ_cb, &w, &err);
	ck_assert_ptr_nonnull(op);
	ck_assert_ptr_null(pv_pg_integrity_cancel(op));
	pv_test_loop_run(&l, 0.5);
	ck_assert_int_eq(w.calls, 0);
	ck_assert_ptr_null(pv_pg_integrity_start(
	        l.base, l.dns, &(struct pv_pg_integrity_opts){.conninfo = "port=notanumber x", .timeout = 1},
	        integ_cb, &w, &err));
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

/* ---- the job types, with a state database ---- */

struct job_env {
	struct pv_test_loop l;
	char dir[64];
	struct pv_state *st;
	struct pv_config_database db;
	struct pv_config_job job;
	struct pv_job_run run;
	int done;
};

static void
job_done(struct pv_job_run *run)
{
	struct job_env *e = run->runner_arg;
	e->done++;
	event_base_loopbreak(e->l.base);
}

static void
env_init(struct job_env *e, enum pv_job_type type, const char *conninfo)
{
	struct pv_error err;
	char *path;

	memset(e, 0, sizeof(*e));
	pv_test_loop_init(&e->l, false);
	pv_strlcpy(e->dir, "/tmp/pgvigil-check-integ-XXXXXX", sizeof(e->dir));
	ck_assert_ptr_nonnull(mkdtemp(e->dir));
	path = pv_asprintf("%s/state.db", e->dir);
	ck_assert_msg(pv_state_open(path, &e->st, &err), "state: %s", err.msg);
	free(path);
	e->db.name = "fk";
	e->db.conninfo = (char *)conninfo;
	e->db.expected_tables = -1;
	e->job.name = type == PV_JOB_HEALTH ? "health" : "integrity";
	e->job.type = type;
	e->job.database = &e->db;
	e->job.timeout = 10;
}

/* A finished run in the state, as the runner would have recorded it. */
static void
env_past_run(struct job_env *e, time_t started, const char *result, const char *figures)
{
	struct pv_error err;
	int64_t id;
	ck_assert(pv_state_run_begin(e->st, e->job.name, pv_job_type_name(e->job.type), "fk", "schedule", 0,
	                             started, &id, &err));
	ck_assert(pv_state_run_end(e->st, id, started + 1, 1.0, result, NULL, figures, &err));
}

static void
env_run(struct job_env *e)
{
	struct pv_error err;
	const struct pv_job_ops *ops = pv_jobs_ops(e->job.type);

	ck_assert_ptr_nonnull(ops);
	e->run.job = &e->job;
	e->run.base = e->l.base;
	e->run.dns = e->l.dns;
	e->run.state = e->st;
	e->run.started = time(NULL);
	e->run.started_mono = pv_now_mono();
	e->run.deadline_mono = e->run.started_mono + (double)pv_config_job_timeout(&e->job);
	e->run.trigger = "manual";
	e->run.figures = json_object();
	e->run.on_done = job_done;
	e->run.runner_arg = e;
	ck_assert(pv_state_run_begin(e->st, e->job.name, pv_job_type_name(e->job.type), "fk", "manual", 0,
	                             e->run.started, &e->run.id, &err));
	ck_assert_msg(ops->start(&e->run), "start: %s", e->run.cause);
	pv_test_loop_run(&e->l, 20);
	ck_assert_int_eq(e->done, 1);
}

static void
env_free(struct job_env *e)
{
	char *cmd = pv_asprintf("rm -rf %s", e->dir);
	json_decref(e->run.figures);
	pv_state_close(e->st);
	pv_test_loop_free(&e->l);
	ck_assert_int_eq(system(cmd), 0);
	free(cmd);
}

START_TEST(test_integrity__job_fails_naming_orphans)
{
	struct job_env e;
	char *ci = fk_conninfo();

	env_init(&e, PV_JOB_INTEGRITY, ci);
	env_run(&e);
	ck_assert_int_eq(e.run.result, PV_RUN_FAILED);
	ck_assert_str_eq(e.run.cause,
	                 "12 orphaned rows in 6 foreign keys: \"Odd Schema\".\"Line Items\".\"li fk\" "
	                 "(1), public.events.events_customer_id_fkey (2), "
	                 "public.kiosks.kiosks_region_fk (3) and 3 more; 1 foreign key not checked: "
	                 "public.secret.secret_customer_id_fkey (permission denied for table secret)");
	ck_assert_int_eq(figure(e.run.figures, "constraints"), N_CONSTRAINTS);
	ck_assert_int_eq(figure(e.run.figures, "orphaned_constraints"), 6);
	assert_expected_counts(e.run.figures, NULL);
	env_free(&e);
	free(ci);
}
END_TEST

START_TEST(test_integrity__health_job_failing_since)
{
	struct job_env e;
	char *ci = pv_asprintf("host=127.0.0.1 port=1 dbname=fk user=vigil connect_timeout=1");
	json_t *fs;

	/* An earlier failure started the streak at 1000; a cancelled run in between has no say. */
	env_init(&e, PV_JOB_HEALTH, ci);
	env_past_run(&e, 500, "ok", "{\"connected\": true}");
	env_past_run(&e, 1000, "failed", "{\"connected\": false, \"failing_since\": 1000}");
	env_past_run(&e, 1060, "cancelled", NULL);
	env_run(&e);
	ck_assert_int_eq(e.run.result, PV_RUN_FAILED);
	ck_assert(json_is_false(json_object_get(e.run.figures, "connected")));
	ck_assert_str_eq(json_string_value(json_object_get(e.run.figures, "error_class")), "refused");
	fs = json_object_get(e.run.figures, "failing_since");
	ck_assert_int_eq(json_integer_value(fs), 1000);
	ck_assert_msg(strstr(e.run.cause, "Connection refused"), "cause: %s", e.run.cause);
	env_free(&e);

	/* After a success the streak starts with this run. */
	env_init(&e, PV_JOB_HEALTH, ci);
	env_past_run(&e, 1000, "failed", "{\"connected\": false, \"failing_since\": 1000}");
	env_past_run(&e, 1060, "ok", "{\"connected\": true}");
	env_run(&e);
	ck_assert_int_eq(json_integer_value(json_object_get(e.run.figures, "failing_since")), e.run.started);
	env_free(&e);
	free(ci);
}
END_TEST

START_TEST(test_integrity__health_job_figures)
{
	struct job_env e;
	char *ci = fk_conninfo();
	char *crit[] = {"customers", "sales.orders", "\"Odd Schema\".\"Line Items\"", "nosuch",
	                "public.orders"};
	json_t *missing;

	env_init(&e, PV_JOB_HEALTH, ci);
	e.db.critical_tables.v = crit;
	e.db.critical_tables.n = 5;
	e.db.expected_tables = 14;
	env_run(&e);
	/* customers regions stores kiosks sales.orders sales.invoices "Line Items" events events_1
	 * events_2 zones zones_a zone_refs m_locked secret: 15 */
	ck_assert_int_eq(e.run.result, PV_RUN_FAILED);
	ck_assert_str_eq(e.run.cause,
	                 "expected 14 tables, found 15; critical tables missing: nosuch, public.orders");
	ck_assert(json_is_true(json_object_get(e.run.figures, "connected")));
	ck_assert_str_eq(json_string_value(json_object_get(e.run.figures, "error_class")), "schema");
	ck_assert_int_eq(figure(e.run.figures, "tables"), 15);
	ck_assert_int_gt(figure(e.run.figures, "database_size_bytes"), 1000000);
	ck_assert_int_ge(figure(e.run.figures, "server_version_num"), 100000);
	ck_assert(json_is_string(json_object_get(e.run.figures, "server_version")));
	ck_assert(json_is_real(json_object_get(e.run.figures, "connect_seconds")));
	ck_assert(json_is_real(json_object_get(e.run.figures, "query_seconds")));
	ck_assert_ptr_null(json_object_get(e.run.figures, "failing_since"));
	missing = json_object_get(e.run.figures, "missing_critical_tables");
	ck_assert_int_eq(json_array_size(missing), 2);
	ck_assert_str_eq(json_string_value(json_array_get(missing, 0)), "nosuch");
	env_free(&e);

	env_init(&e, PV_JOB_HEALTH, ci);
	e.db.critical_tables.v = crit;
	e.db.critical_tables.n = 3;
	e.db.expected_tables = 15;
	env_run(&e);
	ck_assert_msg(e.run.result == PV_RUN_OK, "cause: %s", e.run.cause);
	ck_assert_int_eq(json_array_size(json_object_get(e.run.figures, "missing_critical_tables")), 0);
	ck_assert_ptr_null(json_object_get(e.run.figures, "error_class"));
	env_free(&e);
	free(ci);
}
END_TEST

/* ---- harness ---- */

static bool
load_fixture(void)
{
	PGconn *c = admin_connect("postgres");
	size_t i = 0;
	bool ok = c != NULL;

	for (; ok && FIXTURE[i] != NULL; i++)
		ok = admin_exec(c, FIXTURE[i]);
	PQfinish(c);
	if (!ok)
		return false;
	c = admin_connect("fk");
	ok = c != NULL;
	for (i++; ok && i < sizeof(FIXTURE) / sizeof(FIXTURE[0]); i++)
		ok = admin_exec(c, FIXTURE[i]);
	PQfinish(c);
	return ok;
}

int
main(void)
{
	Suite *s = suite_create("integrity");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	if (!pv_test_cluster_start(&cluster, "check_integrity"))
		return EXIT_FAILURE;
	if (!load_fixture()) {
		pv_test_cluster_stop(&cluster);
		return EXIT_FAILURE;
	}

	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_integrity__orphans_per_constraint);
	tcase_add_test(tc, test_integrity__details_capped);
	tcase_add_test(tc, test_integrity__locked_table_times_out);
	tcase_add_test(tc, test_integrity__overall_deadline);
	tcase_add_test(tc, test_integrity__unreachable);
	tcase_add_test(tc, test_integrity__cancel_returns_nothing_before_catalog);
	tcase_add_test(tc, test_integrity__job_fails_naming_orphans);
	tcase_add_test(tc, test_integrity__health_job_failing_since);
	tcase_add_test(tc, test_integrity__health_job_figures);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);

	pv_test_cluster_stop(&cluster);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
