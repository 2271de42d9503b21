/* Internals shared by src/pg/ files only: the async query helper and connection introspection. */
#ifndef PV_PG_PG_INTERNAL_H
#define PV_PG_PG_INTERNAL_H

#include <libpq-fe.h>

#include "pg/pg.h"

/*
 * Result of one query. res is the last result of the statement (NULL when err is set) and is
 * freed by the helper after the callback returns. err is NULL on success. The callback may start
 * the next query on the same connection, or close it.
 */
typedef void (*pv_pg_query_cb)(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err,
                               void *arg);

/*
 * Send one statement on an idle connection and collect its results on the event loop.
 * timeout <= 0 means no deadline of its own. When the deadline passes the connection is closed
 * (see conn.c for why this stands in for a cancel request) and cb gets PV_ERR_PG_TIMEOUT; the
 * connection is unusable afterwards. Returns false (err filled, cb never called) when the query
 * cannot be sent.
 */
bool pv_pg_query_start(struct pv_pg_conn *conn, const char *sql, int nparams, const char *const *params,
                       double timeout, pv_pg_query_cb cb, void *arg, struct pv_error *err);

/* Backend process id of an established connection, 0 otherwise. */
int pv_pg_backend_pid(const struct pv_pg_conn *conn);

/* The hostaddr list pgvigil resolved and passed to libpq, or NULL when nothing was resolved. */
const char *pv_pg_resolved_hostaddr(const struct pv_pg_conn *conn);

/* Monotonic seconds (src/pg/ must not depend on src/jobs/ for its clock). */
double pv_pg_now(void);

#endif
