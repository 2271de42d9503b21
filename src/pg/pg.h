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

/*
 * Consistent snapshot for a backup (see snapshot.c). begin connects, checks that the session is
 * not multiplexed by a transaction-mode pooler, pins output settings (TimeZone, DateStyle, ...)
 * and opens BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY, then exports the snapshot for
 * `pg_dump --snapshot`. cb runs once, from the loop. On failure the snapshot has been freed
 * before cb runs and cb gets snap == NULL; on success the caller ends it with
 * pv_pg_snapshot_end (which may also cancel it while it starts). Returns NULL (err filled, cb
 * never called) only when the request cannot even be made (bad conninfo or name, no event).
 * opts->timeout is the deadline of every step: the connect and each statement.
 * Names in opts lists follow SQL identifier rules like pg_dump's -n/-N/-t patterns without
 * wildcards: unquoted letters fold to lower case, "Quoted" names keep their case; a table name
 * may be schema-qualified. An unqualified table name means the table the role's default
 * search_path finds (pg_dump's rule for --exclude-table-data); a critical table is also looked up
 * in the `schemas` filter, in its order.
 */
#include <jansson.h>

struct pv_strv;
struct pv_pg_snapshot;
struct pv_pg_snapshot_opts {
	const char *conninfo;
	const char *password; /* may be NULL */
	double timeout;       /* per step deadline, seconds */
	/* config lists; each may be NULL or empty */
	const struct pv_strv *schemas, *exclude_schemas, *exclude_table_data, *critical_tables;
};
typedef void (*pv_pg_snapshot_cb)(struct pv_pg_snapshot *snap, bool ok, const struct pv_error *err,
                                  void *arg);
struct pv_pg_snapshot *pv_pg_snapshot_begin(struct event_base *base, struct evdns_base *dns,
                                            const struct pv_pg_snapshot_opts *opts, pv_pg_snapshot_cb cb,
                                            void *arg, struct pv_error *err);
const char *pv_pg_snapshot_id(const struct pv_pg_snapshot *snap); /* for pg_dump --snapshot; NULL before */
int pv_pg_snapshot_server_version(const struct pv_pg_snapshot *snap);             /* server_version_num */
const char *pv_pg_snapshot_server_version_str(const struct pv_pg_snapshot *snap); /* "15.18 (Debian ...)" */

/*
 * The expected values, computed in the exported snapshot (so they describe exactly what pg_dump
 * --snapshot dumps). The JSON layout ("pgvigil-rowhash-v1") is documented at the top of snapshot.c;
 * the manifest stores it verbatim under "expected". expected is a new reference the callee owns,
 * NULL on error. A query error aborts the transaction (PostgreSQL then discards the exported
 * snapshot) and a deadline closes the connection: either way the snapshot is unusable afterwards
 * and the backup must fail. Returns false (err filled, cb never called) when the snapshot is not
 * ready or busy. cb may call pv_pg_snapshot_end.
 */
typedef void (*pv_pg_expect_cb)(struct pv_pg_snapshot *snap, json_t *expected, const struct pv_error *err,
                                void *arg);
bool pv_pg_snapshot_expect(struct pv_pg_snapshot *snap, pv_pg_expect_cb cb, void *arg, struct pv_error *err);
/* Close the connection, which ends the transaction (and the exported snapshot). Safe at any time:
 * an operation in flight is abandoned and its callback never runs. NULL is a no-op. */
void pv_pg_snapshot_end(struct pv_pg_snapshot *snap);

/*
 * The same figures on a restored copy (restoration probe): a plain connection, the same session
 * settings and the same queries, every step under `timeout`. expected (only read during this call)
 * says which critical tables to hash; every table present is listed and counted, so missing and
 * extra tables both show. A critical table that is missing gets a JSON null hash. measured has the
 * same shape as expected ("data_excluded" is copied from expected) so that equal copies compare
 * equal with json_equal. The op is freed before cb runs. Returns NULL (err filled, cb never
 * called) when the request cannot be made or expected is malformed.
 */
struct pv_pg_measure_op;
typedef void (*pv_pg_measure_cb)(json_t *measured, const struct pv_error *err, void *arg);
struct pv_pg_measure_op *pv_pg_measure_start(struct event_base *base, struct evdns_base *dns,
                                             const char *conninfo, const char *password, double timeout,
                                             const json_t *expected, pv_pg_measure_cb cb, void *arg,
                                             struct pv_error *err);
/* Abort; cb is not called. NULL is a no-op. */
void pv_pg_measure_cancel(struct pv_pg_measure_op *op);

#endif
