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
bool pv_pg_idle(const struct pv_pg_conn *conn); /* connected, no query in flight: can take one */

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
	/* Extended checks (pv_pg_health_start_opts); see there. */
	bool connected;                         /* the server answered SELECT 1 */
	long long tables;                       /* user tables (snapshot.c's list rules); -1 unknown */
	long long database_size_bytes;          /* pg_database_size(current_database()); -1 unknown */
	struct json_t *missing_critical_tables; /* array of names as configured; NULL when not checked */
	const char *error_class;                /* static string when !ok (pv_pg_error_class), else NULL */
	/* With opts.keep (pv_pg_health_start_opts). */
	bool reused;             /* ran on opts.conn: no connection was made, connect_seconds is 0 */
	struct pv_pg_conn *conn; /* the idle session, when still usable: the callback's to keep or close */
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

/*
 * Scratch databases for restoration probes (scratch.c). Each operation opens its own connection
 * to `conninfo` (a maintenance database such as postgres on the restore target), runs its
 * statements under one deadline of `timeout` seconds (connect included) and closes it. The
 * callback runs exactly once, from the loop, never inside the starting call, and the op is freed
 * before it runs; pv_pg_scratch_cancel aborts without calling it. A start function returns NULL
 * (err filled, cb never called) only when the request cannot even be made.
 *
 * Database names are restricted to what pgvigil itself creates: PV_PG_SCRATCH_PREFIX followed by
 * [a-z0-9_], at most 63 bytes. Anything else is refused, so no code path here can drop a
 * database pgvigil did not name.
 */
#define PV_PG_SCRATCH_PREFIX "pgvigil_probe_"

struct pv_pg_scratch_result {
	bool ok;
	/* The statement reached the server (create: when !ok and error.code is not PV_ERR_PG_QUERY,
	 * whether the database exists is unknown). */
	bool sent;
	bool holds;            /* assertion: it returned one row with a true boolean */
	char **names;          /* list: the probe databases found, sorted; owned by the op */
	size_t n;              /* list: how many */
	int server_version;    /* of the connection, 0 when it never connected */
	struct pv_error error; /* when !ok: PV_ERR_PG_CONNECT, PV_ERR_PG_QUERY, PV_ERR_PG_TIMEOUT, ... */
};
struct pv_pg_scratch_op;
typedef void (*pv_pg_scratch_cb)(const struct pv_pg_scratch_result *res, void *arg);

/* True when name is one pgvigil may create and drop (see above). */
bool pv_pg_scratch_name_ok(const char *name);
/* CREATE DATABASE name TEMPLATE template0: an empty database owned by the connecting role. */
struct pv_pg_scratch_op *pv_pg_scratch_create(struct event_base *base, struct evdns_base *dns,
                                              const char *conninfo, const char *password, const char *name,
                                              double timeout, pv_pg_scratch_cb cb, void *arg,
                                              struct pv_error *err);
/* DROP DATABASE IF EXISTS name WITH (FORCE) on PostgreSQL 13+; before 13 the database's other
 * sessions are terminated with pg_terminate_backend first. Must not be connected to name. */
struct pv_pg_scratch_op *pv_pg_scratch_drop(struct event_base *base, struct evdns_base *dns,
                                            const char *conninfo, const char *password, const char *name,
                                            double timeout, pv_pg_scratch_cb cb, void *arg,
                                            struct pv_error *err);
/* The databases whose names start with PV_PG_SCRATCH_PREFIX and pass pv_pg_scratch_name_ok. */
struct pv_pg_scratch_op *pv_pg_scratch_list(struct event_base *base, struct evdns_base *dns,
                                            const char *conninfo, const char *password, double timeout,
                                            pv_pg_scratch_cb cb, void *arg, struct pv_error *err);
/*
 * Run one user assertion (a single SQL statement) on conninfo's database. It holds when it returns
 * exactly one row of one boolean column that is true; ok && !holds with error.msg saying what it
 * returned instead ("returned false", "returned 2 rows", ...); !ok for a query error or timeout.
 */
struct pv_pg_scratch_op *pv_pg_assert_start(struct event_base *base, struct evdns_base *dns,
                                            const char *conninfo, const char *password, const char *sql,
                                            double timeout, pv_pg_scratch_cb cb, void *arg,
                                            struct pv_error *err);
/* NULL is a no-op. A statement already sent may still complete on the server. */
void pv_pg_scratch_cancel(struct pv_pg_scratch_op *op);

/*
 * conninfo (key=value or URI) rebuilt as key=value with dbname replaced, for a client program's
 * -d. A password in conninfo is removed from the string (command lines are visible to every
 * user) and returned in *password (malloc'ed, NULL when none). NULL with err when conninfo cannot
 * be parsed.
 */
char *pv_pg_conninfo_set_dbname(const char *conninfo, const char *dbname, char **password,
                                struct pv_error *err);

/*
 * Health with the schema checks (appended): after SELECT 1, one more statement under the same
 * deadline reads the server version, counts the user tables (ordinary and partitioned, the rules
 * of snapshot.c's table list: no system schemas, no temporary or extension-owned tables), looks
 * up every critical table (names as in snapshot.c; an unqualified one is searched in the role's
 * default search_path) and reads pg_database_size(current_database()). The probe fails (ok false,
 * connected true, error_class "schema") when expected_tables >= 0 differs from the count
 * ("expected 67 tables, found 65") or a critical table is missing ("critical tables missing: a,
 * b"); the figures are filled either way. missing_critical_tables is valid only during cb.
 * Never returns NULL: a request that cannot even be made is reported through cb from the loop.
 */
struct pv_strv;
struct pv_pg_health_opts {
	const char *conninfo;
	const char *password;                  /* may be NULL */
	double timeout;                        /* the whole probe */
	int expected_tables;                   /* < 0: not checked */
	const struct pv_strv *critical_tables; /* may be NULL or empty */
	/*
	 * Reuse: conn (adopted, NULL for none) is an idle session of an earlier check with the same
	 * conninfo; when it turns out to be closed, the probe connects anew within its deadline. With
	 * keep, the session, if still usable at the end, is handed to cb in result.conn. conninfo and
	 * password must then live until cb has run.
	 */
	struct pv_pg_conn *conn;
	bool keep;
};
struct pv_pg_health_op *pv_pg_health_start_opts(struct event_base *base, struct evdns_base *dns,
                                                const struct pv_pg_health_opts *opts, pv_pg_health_cb cb,
                                                void *arg);

/*
 * A stable class for a failed connect or query, from pgvigil's error code and libpq's or the
 * server's message (libpq reports no SQLSTATE for a failed connection): "dns", "refused",
 * "timeout", "tls", "auth", "query" (the session was up: connected true) or "other". Pure.
 */
const char *pv_pg_error_class(const struct pv_error *err, bool connected);

/*
 * Integrity: orphaned rows of every foreign key of the live database (integrity.c). The
 * constraints are read from pg_constraint (contype 'f') in every schema but the system ones,
 * NOT VALID ones included; for each, one anti-join counts the referencing rows that have no
 * referenced row, with the constraint's own equality operators, casts and collation (as
 * PostgreSQL's RI_Initial_Check builds them). MATCH SIMPLE: a row with a NULL in any referencing
 * column is not an orphan; MATCH FULL: all NULL is fine, a partial NULL counts as an orphan.
 * Constraints cloned onto partitions are checked once, through the partitioned table.
 * Each count runs under min(query_timeout, what is left of timeout); a count that passes it is
 * abandoned by closing the connection (recorded as {"error": "timeout"}), then the check
 * reconnects and goes on with the next constraint. A query error (permission denied, ...) is
 * recorded for its constraint and the check goes on.
 *
 * The report, borrowed by cb: valid during the call only (json_incref it to keep it):
 *   {"constraints": N, "checked": n, "orphaned_constraints": K, "orphans": total rows,
 *    "timeouts": t, "errors": e, "not_checked": s,
 *    "details": [{"constraint": "schema.table.conname", "validated": bool, "orphans": n}
 *                or {"constraint": ..., "validated": ..., "error": "timeout" | message
 *                    | "not checked"}, ...],
 *    "details_omitted": m}
 * details lists constraints with orphans or errors first, then clean ones, each group in name
 * order, at most max_details entries (details_omitted counts the rest). Names are quote_ident'ed.
 * cb gets report NULL and err when the check could not start (connect, catalog query); a report
 * and err PV_ERR_PG_TIMEOUT when timeout ran out before every constraint was checked (the rest
 * are "not checked"); a report and err NULL otherwise (orphans are data, not an error).
 * Returns NULL (err filled, cb never called) when the request cannot be made (bad conninfo).
 */
struct pv_pg_integrity_op;
struct pv_pg_integrity_opts {
	const char *conninfo;
	const char *password; /* may be NULL */
	double timeout;       /* the whole check, seconds */
	double query_timeout; /* per constraint; <= 0: timeout */
	size_t max_details;   /* 0: 100 */
};
typedef void (*pv_pg_integrity_cb)(json_t *report, const struct pv_error *err, void *arg);
struct pv_pg_integrity_op *pv_pg_integrity_start(struct event_base *base, struct evdns_base *dns,
                                                 const struct pv_pg_integrity_opts *opts,
                                                 pv_pg_integrity_cb cb, void *arg, struct pv_error *err);
/* Abort; cb is not called. Returns the report so far (a new reference; constraints not yet
 * checked are "not checked"), or NULL when the catalog was not read yet. NULL op is a no-op. */
json_t *pv_pg_integrity_cancel(struct pv_pg_integrity_op *op);

/*
 * Drills and emergency restores (scratch.c). Both ops run their statements on their own
 * connections under one deadline of `timeout` seconds (connects included); the callback runs
 * exactly once, from the loop, after the op is freed; pv_pg_restore_op_cancel aborts without it.
 *
 * pv_pg_drill_check_start, on a restored copy: every sequence owned by an integer column
 * (pg_depend deptype 'a', OWNED BY; or 'i', identity) whose next value would not pass the
 * column's max (min when it descends), and every index of a user table that is not indisvalid
 * and indisready. The report, borrowed by cb:
 *   {"sequences": N, "sequences_behind": [{"sequence", "table", "column", "last_value",
 *    "is_called", "column_edge"}], "indexes": N, "indexes_invalid": [{"index", "table", "valid",
 *    "ready"}]}
 * (values as text: they may exceed what JSON integers hold). NULL report and err on failure.
 */
struct pv_pg_restore_op;
typedef void (*pv_pg_drill_check_cb)(json_t *report, const struct pv_error *err, void *arg);
struct pv_pg_restore_op *pv_pg_drill_check_start(struct event_base *base, struct evdns_base *dns,
                                                 const char *conninfo, const char *password, double timeout,
                                                 pv_pg_drill_check_cb cb, void *arg, struct pv_error *err);
/*
 * pv_pg_target_prepare, for an emergency restore into database `name` (any name: it is quoted):
 * on admin_conninfo (the same server's maintenance database) look the database up and CREATE
 * DATABASE name TEMPLATE template0 when it does not exist; when it does, connect to db_conninfo
 * and count its user tables (snapshot.c's rules). Never drops or changes an existing database.
 * Returns NULL (err filled, cb never called) only for an impossible name.
 */
struct pv_pg_target_result {
	bool ok;
	bool existed, created;
	long long user_tables; /* existed: tables a restore would collide with */
	char some_tables[256]; /* the first three of them, by name */
	struct pv_error error; /* when !ok */
};
typedef void (*pv_pg_target_cb)(const struct pv_pg_target_result *res, void *arg);
struct pv_pg_restore_op *pv_pg_target_prepare(struct event_base *base, struct evdns_base *dns,
                                              const char *admin_conninfo, const char *db_conninfo,
                                              const char *password, const char *name, double timeout,
                                              pv_pg_target_cb cb, void *arg, struct pv_error *err);
/* NULL is a no-op. A statement already sent (CREATE DATABASE) may still complete on the server. */
void pv_pg_restore_op_cancel(struct pv_pg_restore_op *op);
/* The dbname of a conninfo (key=value or URI); PV_ERR_USAGE when it cannot be parsed or names none. */
bool pv_pg_conninfo_dbname(const char *conninfo, char **dbname, struct pv_error *err);

#endif
