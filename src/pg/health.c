/* Health probe: connect, SELECT 1 and the server version under one deadline, on the event loop. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "pg/pg.h"
#include "pg/pg_internal.h"
#include "util/mem.h"

#define SQL_PING    "SELECT 1"
#define SQL_VERSION "SELECT current_setting('server_version'), current_setting('server_version_num')"

struct pv_pg_health_op {
	struct pv_pg_conn *conn;
	struct event *deliver; /* reports a failure found before the loop ran, never synchronously */
	double started;
	double timeout;
	double query_started;
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
	free(op);
}

/* The op is gone when cb runs, so a callback that cancels or starts another probe is safe. */
static void
finish(struct pv_pg_health_op *op)
{
	struct pv_pg_health result = op->result;
	pv_pg_health_cb cb = op->cb;
	void *arg = op->arg;

	op_free(op);
	cb(&result, arg);
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

static void
on_version(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct pv_pg_health_op *op = arg;
	struct pv_error e;

	if (err != NULL) {
		fail(op, err, "the server version");
		return;
	}
	if (PQntuples(res) != 1 || PQnfields(res) != 2) {
		pv_error_set(&e, PV_ERR_PG_QUERY, "unexpected answer to the server version query");
		fail(op, &e, NULL);
		return;
	}
	pv_strlcpy(op->result.server_version, PQgetvalue(res, 0, 0), sizeof(op->result.server_version));
	op->result.server_version_num = atoi(PQgetvalue(res, 0, 1));
	op->result.ok = true;
	finish(op);
}

static void
on_ping(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct pv_pg_health_op *op = arg;
	struct pv_error e;
	double left;

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
	left = remaining(op);
	if (left <= 0) {
		pv_error_set(&e, PV_ERR_PG_TIMEOUT, "timeout");
		fail(op, &e, "the server version");
		return;
	}
	if (!pv_pg_query_start(conn, SQL_VERSION, 0, NULL, left, on_version, op, &e))
		fail(op, &e, NULL);
}

static void
on_connect(struct pv_pg_conn *conn, bool ok, const struct pv_error *err, void *arg)
{
	struct pv_pg_health_op *op = arg;
	struct pv_error e;
	double left;

	if (!ok) {
		fail(op, err, NULL); /* the connect timer's own message already names the deadline */
		return;
	}
	op->result.connect_seconds = pv_pg_connect_seconds(conn);
	op->result.server_version_num = pv_pg_server_version(conn);
	left = remaining(op);
	if (left <= 0) {
		pv_error_set(&e, PV_ERR_PG_TIMEOUT, "timeout");
		fail(op, &e, "SELECT 1");
		return;
	}
	op->query_started = pv_pg_now();
	if (!pv_pg_query_start(conn, SQL_PING, 0, NULL, left, on_ping, op, &e))
		fail(op, &e, NULL);
}

struct pv_pg_health_op *
pv_pg_health_start(struct event_base *base, struct evdns_base *dns, const char *conninfo,
                   const char *password, double timeout, pv_pg_health_cb cb, void *arg)
{
	struct pv_pg_health_op *op = pv_calloc(1, sizeof(*op));

	op->cb = cb;
	op->arg = arg;
	op->timeout = timeout;
	op->started = pv_pg_now();
	pv_error_clear(&op->result.error);
	op->conn = pv_pg_connect(base, dns, conninfo, password, timeout, on_connect, op, &op->result.error);
	if (op->conn == NULL) {
		op->deliver = event_new(base, -1, 0, deliver_cb, op);
		if (op->deliver == NULL)
			abort(); /* only fails on out-of-memory */
		event_active(op->deliver, 0, 0);
	}
	return op;
}

void
pv_pg_health_cancel(struct pv_pg_health_op *op)
{
	if (op == NULL)
		return;
	op_free(op);
}
