/* Health probe: connect, SELECT 1, version, table inventory and database size under one deadline. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "config/config.h"
#include "pg/pg.h"
#include "pg/pg_internal.h"
#include "util/log.h"
#include "util/mem.h"

#define SQL_PING "SELECT 1"

/*
 * Version, user tables, database size and the critical tables that are missing, in one round trip.
 * The table filter is snapshot.c's SQL_LIST without the schema filters. $1 the configured names,
 * $2 their schemas ('' when unqualified: a real schema name is never empty), $3 their table names;
 * an unqualified name may be in any schema of the role's default search path.
 */
#define USER_TABLES                                                                                          \
	"pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "                    \
	"WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' "                                         \
	"AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' "                                     \
	"AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d "                                              \
	"WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid "                  \
	"AND d.deptype = 'e')"
#define SQL_INVENTORY                                                                                        \
	"SELECT pg_catalog.current_setting('server_version'), "                                              \
	"pg_catalog.current_setting('server_version_num'), "                                                 \
	"(SELECT pg_catalog.count(*) FROM " USER_TABLES "), "                                                \
	"pg_catalog.pg_database_size(pg_catalog.current_database()), "                                       \
	"(SELECT pg_catalog.array_to_json(pg_catalog.array_agg(r.orig ORDER BY r.i))::text "                 \
	"FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), "                     \
	"pg_catalog.unnest($3::text[])) WITH ORDINALITY AS r(orig, nsp, rel, i) "                            \
	"WHERE NOT EXISTS (SELECT 1 FROM " USER_TABLES " AND c.relname = r.rel "                             \
	"AND (n.nspname = r.nsp OR (r.nsp = '' "                                                             \
	"AND n.nspname = ANY (pg_catalog.current_schemas(false))))))"

/* How many missing critical tables a cause names before "and N more". */
#define CAUSE_NAMES 5

struct pv_pg_health_op {
	struct pv_pg_conn *conn;
	struct event_base *base;
	struct evdns_base *dns;
	const char *conninfo, *password; /* the caller's, for a reconnect after a reused session died */
	bool keep;
	struct event *deliver; /* reports a failure found before the loop ran, never synchronously */
	double started;
	double timeout;
	double query_started;
	int expected_tables;
	char *params[3]; /* text[] literals for SQL_INVENTORY */
	struct pv_pg_health result;
	pv_pg_health_cb cb;
	void *arg;
};

static void
op_free(struct pv_pg_health_op *op)
{
	pv_pg_close(op->conn);
	if (op->deliver)
		event_free(op->deliver);
	for (size_t i = 0; i < 3; i++)
		free(op->params[i]);
	if (op->result.missing_critical_tables)
		json_decref(op->result.missing_critical_tables);
	free(op);
}

/* The op is gone when cb runs, so a callback that cancels or starts another probe is safe. */
static void
finish(struct pv_pg_health_op *op)
{
	struct pv_pg_health result = op->result;
	pv_pg_health_cb cb = op->cb;
	void *arg = op->arg;

	op->result.missing_critical_tables = NULL; /* ours now: freed after cb */
	if (op->keep && pv_pg_idle(op->conn)) {
		result.conn = op->conn; /* the callback's now */
		op->conn = NULL;
	}
	op_free(op);
	if (!result.ok && result.error_class == NULL)
		result.error_class = pv_pg_error_class(&result.error, result.connected);
	cb(&result, arg);
	if (result.missing_critical_tables)
		json_decref(result.missing_critical_tables);
}

static void
fail(struct pv_pg_health_op *op, const struct pv_error *err, const char *step)
{
	op->result.ok = false;
	op->result.error = *err;
	/* One deadline covers every step; name the step the query helper's own timer cut short. */
	if (err->code == PV_ERR_PG_TIMEOUT && step != NULL)
		snprintf(op->result.error.msg, sizeof(op->result.error.msg),
		         "health check timed out after %.1fs waiting for %s", op->timeout, step);
	finish(op);
}

static double
remaining(const struct pv_pg_health_op *op)
{
	return op->timeout - (pv_pg_now() - op->started);
}

static void
deliver_cb(evutil_socket_t fd, short what, void *arg)
{
	finish(arg);
}

/* "expected 67 tables, found 65; critical tables missing: a, b" or "" when all is well. */
static void
schema_cause(struct pv_pg_health_op *op, char *out, size_t size)
{
	const struct pv_pg_health *r = &op->result;
	size_t nmissing = r->missing_critical_tables ? json_array_size(r->missing_critical_tables) : 0;
	size_t len = 0;

	out[0] = '\0';
	if (op->expected_tables >= 0 && r->tables != op->expected_tables)
		len += (size_t)snprintf(out, size, "expected %d tables, found %lld", op->expected_tables,
		                        r->tables);
	if (nmissing > 0 && len < size) {
		len += (size_t)snprintf(out + len, size - len,
		                        "%scritical table%s missing: ", len ? "; " : "",
		                        nmissing == 1 ? "" : "s");
		for (size_t i = 0; i < nmissing && i < CAUSE_NAMES && len < size; i++)
			len += (size_t)snprintf(
			        out + len, size - len, "%s%s", i ? ", " : "",
			        json_string_value(json_array_get(r->missing_critical_tables, i)));
		if (nmissing > CAUSE_NAMES && len < size)
			snprintf(out + len, size - len, " and %zu more", nmissing - CAUSE_NAMES);
	}
}

static void
on_inventory(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct pv_pg_health_op *op = arg;
	struct pv_error e;
	char cause[PV_ERROR_MSG_MAX];
	json_t *missing;

	if (err != NULL) {
		fail(op, err, "the table inventory");
		return;
	}
	if (PQntuples(res) != 1 || PQnfields(res) != 5) {
		pv_error_set(&e, PV_ERR_PG_QUERY, "unexpected answer to the table inventory query");
		fail(op, &e, NULL);
		return;
	}
	pv_strlcpy(op->result.server_version, PQgetvalue(res, 0, 0), sizeof(op->result.server_version));
	op->result.server_version_num = atoi(PQgetvalue(res, 0, 1));
	op->result.tables = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
	op->result.database_size_bytes = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
	missing = PQgetisnull(res, 0, 4) ? json_array() : json_loads(PQgetvalue(res, 0, 4), 0, NULL);
	if (!json_is_array(missing)) {
		json_decref(missing);
		pv_error_set(&e, PV_ERR_PG_QUERY, "unexpected answer to the table inventory query");
		fail(op, &e, NULL);
		return;
	}
	op->result.missing_critical_tables = missing;
	schema_cause(op, cause, sizeof(cause));
	if (cause[0] != '\0') {
		pv_error_set(&e, PV_ERR_PG_QUERY, "%s", cause);
		op->result.error_class = "schema";
		fail(op, &e, NULL);
		return;
	}
	op->result.ok = true;
	finish(op);
}

static void on_connect(struct pv_pg_conn *conn, bool ok, const struct pv_error *err, void *arg);

static void
on_ping(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct pv_pg_health_op *op = arg;
	struct pv_error e;
	double left;

	if (err != NULL && op->result.reused && err->code != PV_ERR_PG_TIMEOUT && remaining(op) > 0) {
		/* The kept session died while idle (server restart, idle timeout): a new one decides. */
		pv_log_debug("kept postgres session unusable, connecting anew error=%s",
		             pv_log_quote(err->msg));
		pv_pg_close(op->conn);
		op->result.reused = false;
		op->conn = pv_pg_connect(op->base, op->dns, op->conninfo, op->password, remaining(op),
		                         on_connect, op, &e);
		if (op->conn == NULL)
			fail(op, &e, NULL);
		return;
	}
	if (err != NULL) {
		fail(op, err, "SELECT 1");
		return;
	}
	op->result.query_seconds = pv_pg_now() - op->query_started;
	if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "1") != 0) {
		pv_error_set(&e, PV_ERR_PG_QUERY, "unexpected answer to SELECT 1");
		fail(op, &e, NULL);
		return;
	}
	op->result.connected = true;
	left = remaining(op);
	if (left <= 0) {
		pv_error_set(&e, PV_ERR_PG_TIMEOUT, "timeout");
		fail(op, &e, "the table inventory");
		return;
	}
	if (!pv_pg_query_start(conn, SQL_INVENTORY, 3, (const char *const *)op->params, left, on_inventory,
	                       op, &e))
		fail(op, &e, NULL);
}

/* SELECT 1 on op->conn, a new session or a reused one. */
static void
ping(struct pv_pg_health_op *op)
{
	struct pv_error e;
	double left = remaining(op);

	op->result.server_version_num = pv_pg_server_version(op->conn);
	if (left <= 0) {
		pv_error_set(&e, PV_ERR_PG_TIMEOUT, "timeout");
		fail(op, &e, "SELECT 1");
		return;
	}
	op->query_started = pv_pg_now();
	if (!pv_pg_query_start(op->conn, SQL_PING, 0, NULL, left, on_ping, op, &e))
		fail(op, &e, NULL);
}

static void
on_connect(struct pv_pg_conn *conn, bool ok, const struct pv_error *err, void *arg)
{
	struct pv_pg_health_op *op = arg;

	if (!ok) {
		fail(op, err, NULL); /* the connect timer's own message already names the deadline */
		return;
	}
	op->result.connect_seconds = pv_pg_connect_seconds(conn);
	ping(op);
}

/* Send SELECT 1 on an idle session of an earlier check; false (conn closed) when it cannot take it. */
static bool
reuse(struct pv_pg_health_op *op, struct pv_pg_conn *conn)
{
	struct pv_error e;

	if (pv_pg_idle(conn)) {
		op->query_started = pv_pg_now();
		op->result.server_version_num = pv_pg_server_version(conn);
		if (pv_pg_query_start(conn, SQL_PING, 0, NULL, op->timeout, on_ping, op, &e)) {
			op->conn = conn;
			op->result.reused = true;
			return true;
		}
		pv_log_debug("kept postgres session unusable, connecting anew error=%s", pv_log_quote(e.msg));
	}
	pv_pg_close(conn);
	return false;
}

/* A text[] literal: every element quoted, so any name is safe as a parameter. */
static char *
array_literal(char *const *v, size_t n)
{
	size_t cap = 3;
	char *out, *o;

	for (size_t i = 0; i < n; i++)
		cap += 2 * strlen(v[i]) + 3;
	out = o = pv_malloc(cap);
	*o++ = '{';
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			*o++ = ',';
		*o++ = '"';
		for (const char *c = v[i]; *c; c++) {
			if (*c == '"' || *c == '\\')
				*o++ = '\\';
			*o++ = *c;
		}
		*o++ = '"';
	}
	*o++ = '}';
	*o = '\0';
	return out;
}

/* The three parameters of SQL_INVENTORY from the configured names. */
static bool
critical_params(struct pv_pg_health_op *op, const struct pv_strv *crit, struct pv_error *err)
{
	size_t n = crit ? crit->n : 0;
	char **orig = pv_calloc(n + 1, sizeof(char *));
	char **nsp = pv_calloc(n + 1, sizeof(char *));
	char **rel = pv_calloc(n + 1, sizeof(char *));
	size_t done = 0;
	bool ok = true;

	for (; done < n; done++) {
		char *parts[2];
		size_t np;
		if (!pv_pg_name_split(crit->v[done], 2, parts, &np, err)) {
			ok = false;
			break;
		}
		orig[done] = crit->v[done];
		nsp[done] = np == 2 ? parts[0] : pv_strdup("");
		rel[done] = np == 2 ? parts[1] : parts[0];
	}
	if (ok) {
		op->params[0] = array_literal(orig, n);
		op->params[1] = array_literal(nsp, n);
		op->params[2] = array_literal(rel, n);
	}
	for (size_t i = 0; i < done; i++) {
		free(nsp[i]);
		free(rel[i]);
	}
	free(orig);
	free(nsp);
	free(rel);
	return ok;
}

struct pv_pg_health_op *
pv_pg_health_start_opts(struct event_base *base, struct evdns_base *dns, const struct pv_pg_health_opts *opts,
                        pv_pg_health_cb cb, void *arg)
{
	struct pv_pg_health_op *op = pv_calloc(1, sizeof(*op));

	op->cb = cb;
	op->arg = arg;
	op->base = base;
	op->dns = dns;
	op->conninfo = opts->conninfo;
	op->password = opts->password;
	op->keep = opts->keep;
	op->timeout = opts->timeout;
	op->started = pv_pg_now();
	op->expected_tables = opts->expected_tables;
	op->result.tables = -1;
	op->result.database_size_bytes = -1;
	pv_error_clear(&op->result.error);
	if (!critical_params(op, opts->critical_tables, &op->result.error)) {
		pv_pg_close(opts->conn);
		op->result.error_class = "other";
	} else if (reuse(op, opts->conn)) {
		return op; /* the answer to SELECT 1 arrives from the loop */
	} else {
		op->conn = pv_pg_connect(base, dns, opts->conninfo, opts->password, opts->timeout, on_connect,
		                         op, &op->result.error);
	}
	if (op->conn == NULL) {
		op->deliver = event_new(base, -1, 0, deliver_cb, op);
		if (op->deliver == NULL)
			abort(); /* only fails on out-of-memory */
		event_active(op->deliver, 0, 0);
	}
	return op;
}

struct pv_pg_health_op *
pv_pg_health_start(struct event_base *base, struct evdns_base *dns, const char *conninfo,
                   const char *password, double timeout, pv_pg_health_cb cb, void *arg)
{
	struct pv_pg_health_opts opts = {
	        .conninfo = conninfo,
	        .password = password,
	        .timeout = timeout,
	        .expected_tables = -1,
	};
	return pv_pg_health_start_opts(base, dns, &opts, cb, arg);
}

void
pv_pg_health_cancel(struct pv_pg_health_op *op)
{
	if (op == NULL)
		return;
	op_free(op);
}

/* ---- error classes ---- */

static bool
has(const char *lower, const char *needle)
{
	return strstr(lower, needle) != NULL;
}

const char *
pv_pg_error_class(const struct pv_error *err, bool connected)
{
	char lower[PV_ERROR_MSG_MAX];
	size_t i;

	if (err == NULL || err->code == PV_OK)
		return NULL;
	if (err->code == PV_ERR_PG_TIMEOUT)
		return "timeout";
	for (i = 0; err->msg[i] != '\0' && i + 1 < sizeof(lower); i++)
		lower[i] = (char)tolower((unsigned char)err->msg[i]);
	lower[i] = '\0';

	if (connected)
		return err->code == PV_ERR_PG_CONNECT ? "other" : "query";
	if (has(lower, "could not translate host name") || has(lower, "could not resolve host name") ||
	    has(lower, "name or service not known") || has(lower, "temporary failure in name resolution"))
		return "dns";
	/* 28P01 / 28000 and CONNECT privilege (42501) before tls: "no pg_hba.conf entry ... SSL off". */
	if (has(lower, "password authentication failed") || has(lower, "no pg_hba.conf entry") ||
	    has(lower, "pg_hba.conf rejects") || has(lower, "authentication failed") ||
	    has(lower, "no password supplied") || has(lower, "permission denied for database") ||
	    has(lower, "scram") || (has(lower, "role \"") && has(lower, "does not exist")) ||
	    has(lower, "is not permitted to log in"))
		return "auth";
	if (has(lower, "ssl") || has(lower, "tls") || has(lower, "certificate") ||
	    has(lower, "gssapi encryption"))
		return "tls";
	/* Unix sockets: "No such file or directory" when nothing listens on that path. */
	if (has(lower, "connection refused") ||
	    (has(lower, "socket") && has(lower, "no such file or directory")))
		return "refused";
	if (has(lower, "timed out") || has(lower, "timeout expired"))
		return "timeout";
	return "other";
}
