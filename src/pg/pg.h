/* Async PostgreSQL on the event loop: connections with pgvigil's own deadlines; all SQL lives in src/pg/. */
#ifndef PV_PG_PG_H
#define PV_PG_PG_H

#include <stdbool.h>
#include <stdint.h>

#include "util/error.h"

struct event_base;
struct evdns_base;
struct pv_pg_conn;

/*
 * Connection. libpq's connect_timeout is ignored in non-blocking mode and PQconnectStart can
 * block on DNS, so: host names are resolved with evdns first and passed as hostaddr (host kept
 * for TLS verification), PQconnectPoll is driven by socket events re-reading PQsocket() after
 * every poll, and a libevent timer enforces `timeout` seconds for the whole connect.
 * password may be NULL (then libpq's usual sources apply: PGPASSFILE, ~/.pgpass).
 */
typedef void (*pv_pg_connect_cb)(struct pv_pg_conn *conn, bool ok, const struct pv_error *err, void *arg);

struct pv_pg_conn *pv_pg_connect(struct event_base *base, struct evdns_base *dns, const char *conninfo,
                                 const char *password, double timeout, pv_pg_connect_cb cb, void *arg,
                                 struct pv_error *err);
/* Close now; an operation in flight is abandoned by closing the connection (the server notices
 * through client_connection_check_interval) and its callback is never called. NULL is a no-op. */
void pv_pg_close(struct pv_pg_conn *conn);
int pv_pg_server_version(const struct pv_pg_conn *conn); /* e.g. 150018 */
double pv_pg_connect_seconds(const struct pv_pg_conn *conn);

/* Redact password=... from a conninfo string for logs; caller frees. */
char *pv_pg_conninfo_redact(const char *conninfo);

/*
 * Health probe: connect, then `SELECT 1` and the server version, under one deadline.
 * Never stalls the loop, also against a server that accepts the TCP connection and never answers.
 */
struct pv_pg_health {
	bool ok;
	double connect_seconds;  /* time to an established session */
	double query_seconds;    /* SELECT 1 round trip */
	int server_version_num;  /* 150018 */
	char server_version[64]; /* "15.18 (Debian 15.18-0+deb12u1)" */
	struct pv_error error;   /* when !ok: PV_ERR_PG_CONNECT, PV_ERR_PG_QUERY or PV_ERR_PG_TIMEOUT */
};
struct pv_pg_health_op;
typedef void (*pv_pg_health_cb)(const struct pv_pg_health *result, void *arg);
struct pv_pg_health_op *pv_pg_health_start(struct event_base *base, struct evdns_base *dns,
                                           const char *conninfo, const char *password, double timeout,
                                           pv_pg_health_cb cb, void *arg);
/* Abort; cb is not called. */
void pv_pg_health_cancel(struct pv_pg_health_op *op);

#endif
