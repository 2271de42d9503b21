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

/*
 * Snapshot helpers (snapshot.c), pure so they can be tested without a server.
 * pv_pg_session_check: pg_backend_pid() seen in two separate transactions of one connection;
 * different pids mean a transaction-mode pooler hands each transaction to another server backend,
 * where an exported snapshot cannot serve a backup. Fills err (PV_ERR_PG_CONNECT, with a HINT).
 */
bool pv_pg_session_check(int pid_first, int pid_second, struct pv_error *err);
/*
 * Split a possibly qualified SQL name ("public.users", "\"My Schema\".t") into at most max parts
 * with identifier rules: surrounding spaces ignored, unquoted ASCII letters folded to lower case,
 * "" inside quotes is one quote. parts[] get malloc'ed strings; *n the count. False (err filled,
 * nothing allocated) for an empty part, an unterminated quote or too many parts.
 */
bool pv_pg_name_split(const char *s, size_t max, char **parts, size_t *n, struct pv_error *err);

#endif
