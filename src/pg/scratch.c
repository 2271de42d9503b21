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

enum kind { K_CREATE, K_DROP, K_LIST, K_ASSERT };

struct pv_pg_scratch_op {
	enum kind kind;
	struct event_base *base;
	struct pv_pg_conn *conn;
	struct event *deliver; /* reports a failure found before the loop ran */
	double started, timeout;
	char *name;      /* create, drop */
	char *sql;       /* the statement of create, drop, assert */
	bool terminated; /* drop before 13: pg_terminate_backend done */
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

static void
on_statement(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct pv_pg_scratch_op *op = arg;

	if (err != NULL) {
		switch (op->kind) {
		case K_CREATE: fail(op, err, "creating database %s", op->name); return;
		case K_DROP: fail(op, err, "dropping database %s", op->name); return;
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
		if (op->res.server_version >= 130000) {
			op->terminated = true;
			free(op->sql);
			op->sql = pv_asprintf("DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", op->name);
			send_sql(op, op->sql, 0, NULL);
		} else {
			params[0] = op->name;
			send_sql(op, SQL_TERMINATE, 1, params);
		}
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
	p += sprintf(p, "%s='", key);
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
