/* Scratch databases for restoration probes: create, drop, list leftovers, run user assertions. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "pg/pg.h"
#include "pg/pg_internal.h"
#include "util/log.h"
#include "util/mem.h"

#define BOOLOID 16

/* Other sessions on the database go first where DROP DATABASE has no FORCE (before 13). */
#define SQL_TERMINATE                                                                                        \
	"SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "                      \
	"WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid()"
#define SQL_LIST                                                                                             \
	"SELECT datname FROM pg_catalog.pg_database "                                                        \
	"WHERE pg_catalog.left(datname::text, pg_catalog.length($1)) = $1 ORDER BY datname"

/* Rounds of plain DROP and removal of other sessions after the first, all within the deadline. */
#define DROP_ROUNDS 3

enum kind { K_CREATE, K_DROP, K_LIST, K_ASSERT };

struct pv_pg_scratch_op {
	enum kind kind;
	struct event_base *base;
	struct pv_pg_conn *conn;
	struct event *deliver; /* reports a failure found before the loop ran */
	double started, timeout;
	char *name;              /* create, drop */
	char *sql;               /* the statement of create, drop, assert */
	bool terminated;         /* drop before 13: pg_terminate_backend done */
	bool escalated;          /* the plain DROP failed: other sessions are being removed */
	int rounds;              /* plain DROP then removal, repeated while a superuser process holds on */
	struct pv_error removal; /* why removing the other sessions last failed */
	struct pv_pg_scratch_result res;
	pv_pg_scratch_cb cb;
	void *arg;
};

static void
free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

static void
op_free(struct pv_pg_scratch_op *op)
{
	pv_pg_close(op->conn);
	if (op->deliver != NULL)
		event_free(op->deliver);
	free_names(op->res.names, op->res.n);
	free(op->name);
	free(op->sql);
	free(op);
}

/* The op is gone when cb runs; the names live until cb returns. */
static void
finish(struct pv_pg_scratch_op *op)
{
	struct pv_pg_scratch_result res = op->res;
	pv_pg_scratch_cb cb = op->cb;
	void *arg = op->arg;

	op->res.names = NULL;
	op->res.n = 0;
	op_free(op);
	cb(&res, arg);
	free_names(res.names, res.n);
}

static void fail(struct pv_pg_scratch_op *op, const struct pv_error *err, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* fmt (may be NULL) says which step failed; a timeout names the whole deadline. */
static void
fail(struct pv_pg_scratch_op *op, const struct pv_error *err, const char *fmt, ...)
{
	op->res.ok = false;
	op->res.error = *err;
	if (fmt != NULL) {
		char step[256];
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(step, sizeof(step), fmt, ap);
		va_end(ap);
		if (err->code == PV_ERR_PG_TIMEOUT)
			snprintf(op->res.error.msg, sizeof(op->res.error.msg), "%s: timed out after %.1fs",
			         step, op->timeout);
		else
			pv_error_prefix(&op->res.error, "%s: ", step);
	}
	finish(op);
}

static double
remaining(const struct pv_pg_scratch_op *op)
{
	return op->timeout - (pv_pg_now() - op->started);
}

static void
deliver_cb(evutil_socket_t fd, short what, void *arg)
{
	finish(arg);
}

bool
pv_pg_scratch_name_ok(const char *name)
{
	size_t len = name != NULL ? strlen(name) : 0;

	if (len <= strlen(PV_PG_SCRATCH_PREFIX) || len > 63 ||
	    strncmp(name, PV_PG_SCRATCH_PREFIX, strlen(PV_PG_SCRATCH_PREFIX)) != 0)
		return false;
	for (const char *p = name; *p != '\0'; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
			return false;
	return true;
}

static void on_statement(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg);

static bool
send_sql(struct pv_pg_scratch_op *op, const char *sql, int nparams, const char *const *params)
{
	struct pv_error e;
	double left = remaining(op);

	if (left <= 0) {
		pv_error_set(&e, PV_ERR_PG_TIMEOUT, "timeout");
		fail(op, &e, "%s", op->kind == K_ASSERT ? "assertion" : op->name ? op->name : "listing");
		return false;
	}
	if (!pv_pg_query_start(op->conn, sql, nparams, params, left, on_statement, op, &e)) {
		fail(op, &e, NULL);
		return false;
	}
	op->res.sent = true;
	return true;
}

static void
assertion_result(struct pv_pg_scratch_op *op, const PGresult *res)
{
	op->res.ok = true;
	if (PQntuples(res) != 1)
		pv_error_set(&op->res.error, PV_ERR_PG_QUERY, "returned %d rows, not one", PQntuples(res));
	else if (PQnfields(res) != 1)
		pv_error_set(&op->res.error, PV_ERR_PG_QUERY, "returned %d columns, not one boolean",
		             PQnfields(res));
	else if (PQftype(res, 0) != BOOLOID)
		pv_error_set(&op->res.error, PV_ERR_PG_QUERY, "returned %s, not a boolean",
		             PQgetisnull(res, 0, 0) ? "NULL" : PQgetvalue(res, 0, 0));
	else if (PQgetisnull(res, 0, 0))
		pv_error_set(&op->res.error, PV_ERR_PG_QUERY, "returned NULL");
	else if (strcmp(PQgetvalue(res, 0, 0), "t") != 0)
		pv_error_set(&op->res.error, PV_ERR_PG_QUERY, "returned false");
	else
		op->res.holds = true;
}

/* The plain DROP failed (someone else is connected): remove the other sessions and retry. */
static void
escalate_drop(struct pv_pg_scratch_op *op)
{
	const char *params[1];

	op->escalated = true;
	if (op->res.server_version >= 130000) {
		op->terminated = true;
		free(op->sql);
		op->sql = pv_asprintf("DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", op->name);
		send_sql(op, op->sql, 0, NULL);
	} else {
		op->terminated = false;
		params[0] = op->name;
		send_sql(op, SQL_TERMINATE, 1, params);
	}
}

/*
 * Removing the other sessions failed: typically an autovacuum worker (a superuser process, which
 * only a superuser or pg_signal_backend may end) entered the database after the plain DROP had made
 * the last one leave. Another plain DROP makes it leave again; then the removal is tried again.
 */
static void
retry_drop(struct pv_pg_scratch_op *op)
{
	op->escalated = false;
	op->terminated = true;
	op->rounds++;
	free(op->sql);
	op->sql = pv_asprintf("DROP DATABASE IF EXISTS \"%s\"", op->name);
	send_sql(op, op->sql, 0, NULL);
}

static void
on_statement(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct pv_pg_scratch_op *op = arg;

	if (err != NULL && op->kind == K_DROP && err->code != PV_ERR_PG_TIMEOUT && remaining(op) > 0) {
		if (!op->escalated) {
			pv_log_info("plain drop failed, removing other sessions database=%s error=%s",
			            op->name, pv_log_quote(err->msg));
			escalate_drop(op);
			return;
		}
		if (op->rounds < DROP_ROUNDS) {
			pv_log_info("removing other sessions failed, dropping again database=%s error=%s",
			            op->name, pv_log_quote(err->msg));
			op->removal = *err;
			retry_drop(op);
			return;
		}
	}
	if (err != NULL) {
		switch (op->kind) {
		case K_CREATE: fail(op, err, "creating database %s", op->name); return;
		case K_DROP:
			/* Out of time on another round: the removal's refusal is the cause, not the clock. */
			if (op->rounds > 0 && err->code == PV_ERR_PG_TIMEOUT)
				fail(op, &op->removal,
				     "dropping database %s (other sessions remained after %d attempts)",
				     op->name, op->rounds + 1);
			else
				fail(op, err, "dropping database %s", op->name);
			return;
		case K_LIST: fail(op, err, "listing probe databases"); return;
		case K_ASSERT: fail(op, err, NULL); return;
		}
	}
	switch (op->kind) {
	case K_DROP:
		if (!op->terminated) {
			op->terminated = true;
			send_sql(op, op->sql, 0, NULL);
			return;
		}
		/* fall through */
	case K_CREATE: op->res.ok = true; break;
	case K_LIST:
		op->res.names = pv_calloc((size_t)PQntuples(res) + 1, sizeof(char *));
		for (int r = 0; r < PQntuples(res); r++)
			if (pv_pg_scratch_name_ok(PQgetvalue(res, r, 0)))
				op->res.names[op->res.n++] = pv_strdup(PQgetvalue(res, r, 0));
		op->res.ok = true;
		break;
	case K_ASSERT: assertion_result(op, res); break;
	}
	finish(op);
}

static void
on_connect(struct pv_pg_conn *conn, bool ok, const struct pv_error *err, void *arg)
{
	struct pv_pg_scratch_op *op = arg;
	const char *params[1];

	if (!ok) {
		fail(op, err, NULL); /* the connection's own message names host and cause */
		return;
	}
	op->res.server_version = pv_pg_server_version(conn);
	switch (op->kind) {
	case K_CREATE:
	case K_ASSERT: send_sql(op, op->sql, 0, NULL); break;
	case K_DROP:
		/* A plain DROP first: it makes autovacuum workers on the copy exit by itself, which
		 * FORCE cannot do for a role without pg_signal_backend. */
		op->terminated = true;
		send_sql(op, op->sql, 0, NULL);
		break;
	case K_LIST:
		params[0] = PV_PG_SCRATCH_PREFIX;
		send_sql(op, SQL_LIST, 1, params);
		break;
	}
}

static struct pv_pg_scratch_op *
start(enum kind kind, struct event_base *base, struct evdns_base *dns, const char *conninfo,
      const char *password, const char *name, const char *sql, double timeout, pv_pg_scratch_cb cb, void *arg,
      struct pv_error *err)
{
	struct pv_pg_scratch_op *op;

	if ((kind == K_CREATE || kind == K_DROP) && !pv_pg_scratch_name_ok(name)) {
		pv_error_set(err, PV_ERR_INTERNAL, "refusing database name %s: not a pgvigil probe database",
		             pv_log_quote(name ? name : ""));
		return NULL;
	}
	op = pv_calloc(1, sizeof(*op));
	op->kind = kind;
	op->base = base;
	op->cb = cb;
	op->arg = arg;
	op->timeout = timeout;
	op->started = pv_pg_now();
	pv_error_clear(&op->res.error);
	/* The name is checked above: only [a-z0-9_], so double quotes suffice as quoting. */
	if (name != NULL)
		op->name = pv_strdup(name);
	if (kind == K_CREATE)
		op->sql = pv_asprintf("CREATE DATABASE \"%s\" TEMPLATE template0", name);
	else if (kind == K_DROP)
		op->sql = pv_asprintf("DROP DATABASE IF EXISTS \"%s\"", name);
	else if (kind == K_ASSERT)
		op->sql = pv_strdup(sql);
	op->conn = pv_pg_connect(base, dns, conninfo, password, timeout, on_connect, op, &op->res.error);
	if (op->conn == NULL) {
		/* Reported from the loop like every other failure, so callers have one path. */
		op->deliver = event_new(base, -1, 0, deliver_cb, op);
		if (op->deliver == NULL)
			abort(); /* only fails on out-of-memory */
		event_active(op->deliver, 0, 0);
	}
	return op;
}

struct pv_pg_scratch_op *
pv_pg_scratch_create(struct event_base *base, struct evdns_base *dns, const char *conninfo,
                     const char *password, const char *name, double timeout, pv_pg_scratch_cb cb, void *arg,
                     struct pv_error *err)
{
	return start(K_CREATE, base, dns, conninfo, password, name, NULL, timeout, cb, arg, err);
}

struct pv_pg_scratch_op *
pv_pg_scratch_drop(struct event_base *base, struct evdns_base *dns, const char *conninfo,
                   const char *password, const char *name, double timeout, pv_pg_scratch_cb cb, void *arg,
                   struct pv_error *err)
{
	return start(K_DROP, base, dns, conninfo, password, name, NULL, timeout, cb, arg, err);
}

struct pv_pg_scratch_op *
pv_pg_scratch_list(struct event_base *base, struct evdns_base *dns, const char *conninfo,
                   const char *password, double timeout, pv_pg_scratch_cb cb, void *arg, struct pv_error *err)
{
	return start(K_LIST, base, dns, conninfo, password, NULL, NULL, timeout, cb, arg, err);
}

struct pv_pg_scratch_op *
pv_pg_assert_start(struct event_base *base, struct evdns_base *dns, const char *conninfo,
                   const char *password, const char *sql, double timeout, pv_pg_scratch_cb cb, void *arg,
                   struct pv_error *err)
{
	return start(K_ASSERT, base, dns, conninfo, password, NULL, sql, timeout, cb, arg, err);
}

void
pv_pg_scratch_cancel(struct pv_pg_scratch_op *op)
{
	if (op == NULL)
		return;
	op_free(op);
}

/* ---- conninfo for client programs ---- */

static void
append_kv(char **buf, size_t *len, const char *key, const char *val)
{
	size_t need = *len + strlen(key) + 2 * strlen(val) + 5;
	char *p;

	*buf = pv_realloc(*buf, need);
	p = *buf + *len;
	if (*len > 0)
		*p++ = ' ';
	p += snprintf(p, need - (size_t)(p - *buf), "%s='", key);
	for (const char *s = val; *s != '\0'; s++) {
		if (*s == '\'' || *s == '\\')
			*p++ = '\\';
		*p++ = *s;
	}
	*p++ = '\'';
	*p = '\0';
	*len = (size_t)(p - *buf);
}

char *
pv_pg_conninfo_set_dbname(const char *conninfo, const char *dbname, char **password, struct pv_error *err)
{
	char *errmsg = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo ? conninfo : "", &errmsg);
	char *buf = NULL;
	size_t len = 0;

	*password = NULL;
	if (opts == NULL) {
		char msg[256];
		pv_strlcpy(msg, errmsg ? errmsg : "out of memory", sizeof(msg));
		msg[strcspn(msg, "\n")] = '\0';
		PQfreemem(errmsg);
		pv_error_set(err, PV_ERR_PG_CONNECT, "invalid conninfo: %s", msg);
		return NULL;
	}
	buf = pv_strdup("");
	for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
		if (o->val == NULL || strcmp(o->keyword, "dbname") == 0)
			continue;
		if (strcmp(o->keyword, "password") == 0) {
			*password = pv_strdup(o->val);
			continue;
		}
		append_kv(&buf, &len, o->keyword, o->val);
	}
	PQconninfoFree(opts);
	append_kv(&buf, &len, "dbname", dbname);
	return buf;
}

/* ---- drill checks on a restored copy; the emergency restore's target database ---- */

/* Sequences owned by an integer column (OWNED BY: deptype 'a'; identity: 'i'), each with the
 * value its next nextval() returns and the column's max (min for a descending sequence). The
 * per-table values come from query_to_xml so that one statement covers every sequence; every
 * name in the generated statements is quoted by the server (format %I). */
#define SQL_SEQUENCES                                                                                        \
	"SELECT seq, tbl, col, last_value, is_called, edge, "                                                \
	"CASE WHEN edge IS NULL THEN false "                                                                 \
	"WHEN inc > 0 THEN (CASE WHEN is_called THEN last_value < edge ELSE last_value <= edge END) "        \
	"ELSE (CASE WHEN is_called THEN last_value > edge ELSE last_value >= edge END) END "                 \
	"FROM (SELECT pg_catalog.format('%I.%I', sn.nspname, s.relname) AS seq, "                            \
	"pg_catalog.format('%I.%I', tn.nspname, t.relname) AS tbl, "                                         \
	"pg_catalog.format('%I', a.attname) AS col, sq.seqincrement AS inc, "                                \
	"((pg_catalog.xpath('/row/v/text()', pg_catalog.query_to_xml(pg_catalog.format("                     \
	"'SELECT last_value AS v FROM %I.%I', sn.nspname, s.relname), false, true, '')))[1])::text"          \
	"::pg_catalog.numeric AS last_value, "                                                               \
	"((pg_catalog.xpath('/row/c/text()', pg_catalog.query_to_xml(pg_catalog.format("                     \
	"'SELECT is_called AS c FROM %I.%I', sn.nspname, s.relname), false, true, '')))[1])::text"           \
	"::pg_catalog.bool AS is_called, "                                                                   \
	"((pg_catalog.xpath('/row/m/text()', pg_catalog.query_to_xml(pg_catalog.format("                     \
	"'SELECT pg_catalog.%s(%I)::pg_catalog.numeric AS m FROM %I.%I', "                                   \
	"CASE WHEN sq.seqincrement > 0 THEN 'max' ELSE 'min' END, a.attname, tn.nspname, t.relname), "       \
	"false, true, '')))[1])::text::pg_catalog.numeric AS edge "                                          \
	"FROM pg_catalog.pg_depend d "                                                                       \
	"JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' "                                 \
	"JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace "                                        \
	"JOIN pg_catalog.pg_sequence sq ON sq.seqrelid = s.oid "                                             \
	"JOIN pg_catalog.pg_class t ON t.oid = d.refobjid AND t.relkind IN ('r', 'p') "                      \
	"JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace "                                        \
	"JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid "                 \
	"WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass "                                      \
	"AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass "                                     \
	"AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0 "                                                 \
	"AND a.atttypid IN ('pg_catalog.int2'::pg_catalog.regtype, 'pg_catalog.int4'::pg_catalog.regtype, "  \
	"'pg_catalog.int8'::pg_catalog.regtype, 'pg_catalog.numeric'::pg_catalog.regtype) "                  \
	"AND sn.nspname <> 'information_schema' AND sn.nspname !~ '^pg_') x "                                \
	"ORDER BY seq COLLATE \"C\""
/* Every index of a user table, with the flags CREATE INDEX CONCURRENTLY or a failed build leave. */
#define SQL_INDEXES                                                                                          \
	"SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), "                                          \
	"pg_catalog.format('%I.%I', tn.nspname, t.relname), i.indisvalid, i.indisready "                     \
	"FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "                     \
	"JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "                                          \
	"JOIN pg_catalog.pg_class t ON t.oid = i.indrelid "                                                  \
	"JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace "                                        \
	"WHERE n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' "                                   \
	"ORDER BY 1"
#define SQL_DB_EXISTS "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1"
/* The rules of snapshot.c's table list: what a restore would put there. */
#define SQL_USER_TABLES                                                                                      \
	"WITH t AS (SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS q "                           \
	"FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "               \
	"WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' "                                         \
	"AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' "                                     \
	"AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d "                                              \
	"WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid "                  \
	"AND d.deptype = 'e')) "                                                                             \
	"SELECT (SELECT pg_catalog.count(*) FROM t), "                                                       \
	"(SELECT pg_catalog.string_agg(q, ', ') FROM (SELECT q FROM t ORDER BY q COLLATE \"C\" LIMIT 3) s)"

enum rstep { R_SEQUENCES, R_INDEXES, R_EXISTS, R_CREATE, R_TABLES };

struct pv_pg_restore_op {
	struct event_base *base;
	struct evdns_base *dns;
	struct pv_pg_conn *conn;
	struct event *deliver;
	double started, timeout;
	enum rstep step;
	char *name, *db_conninfo, *password;
	json_t *report; /* drill checks */
	struct pv_pg_target_result target;
	struct pv_error error;
	bool failed;
	pv_pg_drill_check_cb check_cb;
	pv_pg_target_cb target_cb;
	void *arg;
};

static void
rop_free(struct pv_pg_restore_op *op)
{
	pv_pg_close(op->conn);
	if (op->deliver != NULL)
		event_free(op->deliver);
	json_decref(op->report);
	free(op->name);
	free(op->db_conninfo);
	free(op->password);
	free(op);
}

static void
rop_finish(struct pv_pg_restore_op *op)
{
	pv_pg_drill_check_cb ccb = op->check_cb;
	pv_pg_target_cb tcb = op->target_cb;
	void *arg = op->arg;
	struct pv_pg_target_result target = op->target;
	struct pv_error e = op->error;
	json_t *report = op->failed ? NULL : json_incref(op->report);
	bool failed = op->failed;

	rop_free(op);
	if (ccb != NULL)
		ccb(report, failed ? &e : NULL, arg);
	else {
		target.ok = !failed;
		target.error = e;
		tcb(&target, arg);
	}
	json_decref(report);
}

static void
rop_fail(struct pv_pg_restore_op *op, const struct pv_error *err, const char *step)
{
	op->failed = true;
	op->error = *err;
	if (step != NULL) {
		if (err->code == PV_ERR_PG_TIMEOUT)
			snprintf(op->error.msg, sizeof(op->error.msg), "%s: timed out after %.1fs", step,
			         op->timeout);
		else
			pv_error_prefix(&op->error, "%s: ", step);
	}
	rop_finish(op);
}

static void
rop_deliver_cb(evutil_socket_t fd, short what, void *arg)
{
	rop_finish(arg);
}

static const char *const rstep_names[] = {
        [R_SEQUENCES] = "checking sequences",
        [R_INDEXES] = "checking indexes",
        [R_EXISTS] = "looking for the database",
        [R_CREATE] = "creating the database",
        [R_TABLES] = "counting the tables of the database",
};

static void rop_on_result(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err,
                          void *arg);

static void
rop_send(struct pv_pg_restore_op *op, enum rstep step)
{
	const char *params[1] = {op->name};
	char *sql = NULL;
	const char *text;
	struct pv_error e;
	double left = op->timeout - (pv_pg_now() - op->started);
	bool ok;

	op->step = step;
	if (left <= 0) {
		pv_error_set(&e, PV_ERR_PG_TIMEOUT, "timeout");
		rop_fail(op, &e, rstep_names[step]);
		return;
	}
	switch (step) {
	case R_SEQUENCES: text = SQL_SEQUENCES; break;
	case R_INDEXES: text = SQL_INDEXES; break;
	case R_EXISTS: text = SQL_DB_EXISTS; break;
	case R_TABLES: text = SQL_USER_TABLES; break;
	case R_CREATE:
	default: {
		/* An identifier in double quotes, embedded quotes doubled: any name is safe. */
		size_t len = 0, size = 2 * strlen(op->name) + 64;
		sql = pv_malloc(size);
		len += (size_t)snprintf(sql, size, "CREATE DATABASE \"");
		for (const char *s = op->name; *s != '\0'; s++) {
			if (*s == '"')
				sql[len++] = '"';
			sql[len++] = *s;
		}
		snprintf(sql + len, size - len, "\" TEMPLATE template0");
		text = sql;
		break;
	}
	}
	ok = pv_pg_query_start(op->conn, text, step == R_EXISTS ? 1 : 0, step == R_EXISTS ? params : NULL,
	                       left, rop_on_result, op, &e);
	free(sql);
	if (!ok)
		rop_fail(op, &e, rstep_names[step]);
}

static void rop_on_connect(struct pv_pg_conn *conn, bool ok, const struct pv_error *err, void *arg);

static void
rop_connect(struct pv_pg_restore_op *op, const char *conninfo, struct pv_error *err)
{
	double left = op->timeout - (pv_pg_now() - op->started);

	pv_pg_close(op->conn);
	op->conn = pv_pg_connect(op->base, op->dns, conninfo, op->password, left > 0.1 ? left : 0.1,
	                         rop_on_connect, op, err);
	if (op->conn == NULL) {
		op->failed = true;
		op->error = *err;
		/* Reported from the loop like every other failure, so callers have one path. */
		op->deliver = event_new(op->base, -1, 0, rop_deliver_cb, op);
		if (op->deliver == NULL)
			abort();
		event_active(op->deliver, 0, 0);
	}
}

static void
sequences_result(struct pv_pg_restore_op *op, const PGresult *res)
{
	json_t *behind = json_array();

	for (int r = 0; r < PQntuples(res); r++) {
		if (strcmp(PQgetvalue(res, r, 6), "t") != 0)
			continue;
		json_array_append_new(behind, json_pack("{s:s,s:s,s:s,s:s,s:b,s:s}", "sequence",
		                                        PQgetvalue(res, r, 0), "table", PQgetvalue(res, r, 1),
		                                        "column", PQgetvalue(res, r, 2), "last_value",
		                                        PQgetvalue(res, r, 3), "is_called",
		                                        strcmp(PQgetvalue(res, r, 4), "t") == 0,
		                                        "column_edge", PQgetvalue(res, r, 5)));
	}
	json_object_set_new(op->report, "sequences", json_integer(PQntuples(res)));
	json_object_set_new(op->report, "sequences_behind", behind);
}

static void
indexes_result(struct pv_pg_restore_op *op, const PGresult *res)
{
	json_t *invalid = json_array();

	for (int r = 0; r < PQntuples(res); r++) {
		bool valid = strcmp(PQgetvalue(res, r, 2), "t") == 0,
		     ready = strcmp(PQgetvalue(res, r, 3), "t") == 0;
		if (valid && ready)
			continue;
		json_array_append_new(invalid,
		                      json_pack("{s:s,s:s,s:b,s:b}", "index", PQgetvalue(res, r, 0), "table",
		                                PQgetvalue(res, r, 1), "valid", valid, "ready", ready));
	}
	json_object_set_new(op->report, "indexes", json_integer(PQntuples(res)));
	json_object_set_new(op->report, "indexes_invalid", invalid);
}

static void
rop_on_result(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct pv_pg_restore_op *op = arg;
	struct pv_error e;

	if (err != NULL) {
		rop_fail(op, err, rstep_names[op->step]);
		return;
	}
	switch (op->step) {
	case R_SEQUENCES:
		sequences_result(op, res);
		rop_send(op, R_INDEXES);
		return;
	case R_INDEXES: indexes_result(op, res); break;
	case R_EXISTS:
		if (PQntuples(res) == 0) {
			rop_send(op, R_CREATE);
			return;
		}
		op->target.existed = true;
		rop_connect(op, op->db_conninfo, &e);
		return;
	case R_CREATE: op->target.created = true; break;
	case R_TABLES:
		op->target.user_tables = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		pv_strlcpy(op->target.some_tables, PQgetisnull(res, 0, 1) ? "" : PQgetvalue(res, 0, 1),
		           sizeof(op->target.some_tables));
		break;
	}
	rop_finish(op);
}

static void
rop_on_connect(struct pv_pg_conn *conn, bool ok, const struct pv_error *err, void *arg)
{
	struct pv_pg_restore_op *op = arg;

	if (!ok) {
		rop_fail(op, err, NULL);
		return;
	}
	if (op->check_cb != NULL)
		rop_send(op, R_SEQUENCES);
	else if (!op->target.existed)
		rop_send(op, R_EXISTS);
	else
		rop_send(op, R_TABLES);
}

static struct pv_pg_restore_op *
rop_new(struct event_base *base, struct evdns_base *dns, const char *password, double timeout, void *arg)
{
	struct pv_pg_restore_op *op = pv_calloc(1, sizeof(*op));

	op->base = base;
	op->dns = dns;
	op->arg = arg;
	op->timeout = timeout;
	op->started = pv_pg_now();
	op->password = password ? pv_strdup(password) : NULL;
	pv_error_clear(&op->error);
	return op;
}

struct pv_pg_restore_op *
pv_pg_drill_check_start(struct event_base *base, struct evdns_base *dns, const char *conninfo,
                        const char *password, double timeout, pv_pg_drill_check_cb cb, void *arg,
                        struct pv_error *err)
{
	struct pv_pg_restore_op *op = rop_new(base, dns, password, timeout, arg);

	op->check_cb = cb;
	op->report = json_object();
	rop_connect(op, conninfo, err);
	return op;
}

struct pv_pg_restore_op *
pv_pg_target_prepare(struct event_base *base, struct evdns_base *dns, const char *admin_conninfo,
                     const char *db_conninfo, const char *password, const char *name, double timeout,
                     pv_pg_target_cb cb, void *arg, struct pv_error *err)
{
	struct pv_pg_restore_op *op;

	if (name == NULL || name[0] == '\0' || strlen(name) > 63) {
		pv_error_set(err, PV_ERR_USAGE, "the target database name must be 1 to 63 bytes long");
		return NULL;
	}
	op = rop_new(base, dns, password, timeout, arg);
	op->target_cb = cb;
	op->name = pv_strdup(name);
	op->db_conninfo = pv_strdup(db_conninfo);
	rop_connect(op, admin_conninfo, err);
	return op;
}

void
pv_pg_restore_op_cancel(struct pv_pg_restore_op *op)
{
	if (op != NULL)
		rop_free(op);
}

bool
pv_pg_conninfo_dbname(const char *conninfo, char **dbname, struct pv_error *err)
{
	char *errmsg = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo ? conninfo : "", &errmsg);

	*dbname = NULL;
	if (opts == NULL) {
		char msg[256];
		pv_strlcpy(msg, errmsg ? errmsg : "out of memory", sizeof(msg));
		msg[strcspn(msg, "\n")] = '\0';
		PQfreemem(errmsg);
		return pv_error_set(err, PV_ERR_USAGE, "invalid conninfo: %s", msg);
	}
	for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
		if (strcmp(o->keyword, "dbname") == 0 && o->val != NULL && o->val[0] != '\0')
			*dbname = pv_strdup(o->val);
	PQconninfoFree(opts);
	if (*dbname == NULL)
		return pv_error_set(err, PV_ERR_USAGE, "the conninfo names no database: add dbname=NAME");
	return true;
}
