/* Integrity of the live database: orphaned rows of every foreign key, each count under a deadline. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "pg/pg.h"
#include "pg/pg_internal.h"
#include "util/log.h"
#include "util/mem.h"

#define DEFAULT_MAX_DETAILS 100

/*
 * Our deadlines govern, not the role's settings; the server's statement_timeout ($1, a little past
 * the per-count deadline) still stops an abandoned count on servers older than 14, which do not
 * notice a closed client (see conn.c). search_path '' keeps user objects from shadowing anything
 * in the generated statements (they qualify every operator anyway). Read only: we only count.
 */
#define SQL_SESSION                                                                                          \
	"SELECT pg_catalog.set_config('search_path', '', false), "                                           \
	"pg_catalog.set_config('statement_timeout', $1, false), "                                            \
	"pg_catalog.set_config('lock_timeout', '0', false), "                                                \
	"pg_catalog.set_config('idle_in_transaction_session_timeout', '0', false), "                         \
	"pg_catalog.set_config('default_transaction_read_only', 'on', false)"

/*
 * Every foreign key outside the system schemas, NOT VALID ones included, with the count statement
 * the server builds for it: all names through format('%I'), so no identifier is ever quoted by us.
 * The join condition is RI_Initial_Check's: per column pair "pk OPERATOR(ns.op) fk" with the
 * constraint's own equality operator (conpfeqop), a cast where a column's type differs from the
 * operator's input type, and the referenced column's collation where the two differ. The
 * precondition on the referencing row is "no NULL" for MATCH SIMPLE and "not all NULL" for MATCH
 * FULL (a partial NULL then finds no match and counts, as it is a violation). ONLY, because each
 * row is checked once in the table that stores it; a partitioned table (either side) is read
 * whole, and the constraints cloned onto its partitions (conparentid <> 0) are skipped.
 */
#define SQL_FKEYS                                                                                            \
	"SELECT pg_catalog.format('%I.%I.%I', n.nspname, c.relname, k.conname), k.convalidated, "            \
	"pg_catalog.format('SELECT pg_catalog.count(*) FROM %s%I.%I AS c WHERE %s AND NOT EXISTS "           \
	"(SELECT 1 FROM %s%I.%I AS p WHERE %s)', "                                                           \
	"CASE WHEN c.relkind = 'p' THEN '' ELSE 'ONLY ' END, n.nspname, c.relname, "                         \
	"(SELECT CASE WHEN k.confmatchtype = 'f' "                                                           \
	"THEN '(' || pg_catalog.string_agg(pg_catalog.format('c.%I IS NOT NULL', a.attname), ' OR ' "        \
	"ORDER BY x.i) || ')' "                                                                              \
	"ELSE pg_catalog.string_agg(pg_catalog.format('c.%I IS NOT NULL', a.attname), ' AND ' "              \
	"ORDER BY x.i) END "                                                                                 \
	"FROM pg_catalog.unnest(k.conkey) WITH ORDINALITY AS x(attnum, i) "                                  \
	"JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = x.attnum), "               \
	"CASE WHEN pc.relkind = 'p' THEN '' ELSE 'ONLY ' END, pn.nspname, pc.relname, "                      \
	"(SELECT pg_catalog.string_agg(pg_catalog.format('p.%I%s OPERATOR(%I.%s) c.%I%s%s', "                \
	"pa.attname, "                                                                                       \
	"CASE WHEN pa.atttypid <> o.oprleft THEN '::' || pg_catalog.format_type(o.oprleft, NULL) "           \
	"ELSE '' END, "                                                                                      \
	"opn.nspname, o.oprname, fa.attname, "                                                               \
	"CASE WHEN fa.atttypid <> o.oprright THEN '::' || pg_catalog.format_type(o.oprright, NULL) "         \
	"ELSE '' END, "                                                                                      \
	"CASE WHEN pa.attcollation <> fa.attcollation AND pa.attcollation <> 0 THEN "                        \
	"(SELECT pg_catalog.format(' COLLATE %I.%I', cn.nspname, co.collname) "                              \
	"FROM pg_catalog.pg_collation co JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace "      \
	"WHERE co.oid = pa.attcollation) ELSE '' END), ' AND ' ORDER BY x.i) "                               \
	"FROM ROWS FROM (pg_catalog.unnest(k.conkey), pg_catalog.unnest(k.confkey), "                        \
	"pg_catalog.unnest(k.conpfeqop)) WITH ORDINALITY AS x(fk, pk, op, i) "                               \
	"JOIN pg_catalog.pg_attribute fa ON fa.attrelid = k.conrelid AND fa.attnum = x.fk "                  \
	"JOIN pg_catalog.pg_attribute pa ON pa.attrelid = k.confrelid AND pa.attnum = x.pk "                 \
	"JOIN pg_catalog.pg_operator o ON o.oid = x.op "                                                     \
	"JOIN pg_catalog.pg_namespace opn ON opn.oid = o.oprnamespace)) "                                    \
	"FROM pg_catalog.pg_constraint k "                                                                   \
	"JOIN pg_catalog.pg_class c ON c.oid = k.conrelid "                                                  \
	"JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "                                          \
	"JOIN pg_catalog.pg_class pc ON pc.oid = k.confrelid "                                               \
	"JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace "                                       \
	"WHERE k.contype = 'f' AND k.conparentid = 0 AND c.relpersistence <> 't' "                           \
	"AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' "                                     \
	"ORDER BY pg_catalog.format('%I.%I.%I', n.nspname, c.relname, k.conname) COLLATE \"C\""

enum fk_status {
	FK_PENDING,
	FK_DONE,
	FK_TIMEOUT,
	FK_ERROR,
};

struct fk {
	char *name; /* schema.table.conname, quote_ident'ed */
	char *sql;
	bool validated;
	enum fk_status status;
	long long orphans;
	char *error;
};

struct pv_pg_integrity_op {
	struct event_base *base;
	struct evdns_base *dns;
	char *conninfo;
	char *password;
	char stmt_timeout[32]; /* milliseconds, for SQL_SESSION */
	double started;
	double timeout;
	double query_timeout;
	size_t max_details;

	struct pv_pg_conn *conn;
	bool listed;
	struct fk *fks;
	size_t nfks;
	size_t next;
	double count_started;

	pv_pg_integrity_cb cb;
	void *arg;
};

static void connect_next(struct pv_pg_integrity_op *op);

static void
op_free(struct pv_pg_integrity_op *op)
{
	pv_pg_close(op->conn);
	for (size_t i = 0; i < op->nfks; i++) {
		free(op->fks[i].name);
		free(op->fks[i].sql);
		free(op->fks[i].error);
	}
	free(op->fks);
	free(op->conninfo);
	if (op->password) {
		memset(op->password, 0, strlen(op->password));
		free(op->password);
	}
	free(op);
}

static double
remaining(const struct pv_pg_integrity_op *op)
{
	return op->timeout - (pv_pg_now() - op->started);
}

static json_t *
detail(const struct fk *f)
{
	json_t *d = json_object();

	json_object_set_new(d, "constraint", json_string(f->name));
	json_object_set_new(d, "validated", json_boolean(f->validated));
	switch (f->status) {
	case FK_DONE: json_object_set_new(d, "orphans", json_integer(f->orphans)); break;
	case FK_TIMEOUT: json_object_set_new(d, "error", json_string("timeout")); break;
	case FK_ERROR: json_object_set_new(d, "error", json_string(f->error ? f->error : "error")); break;
	case FK_PENDING: json_object_set_new(d, "error", json_string("not checked")); break;
	}
	return d;
}

/* Problems first (orphans, timeouts, errors), then what was not checked, then clean constraints. */
static int
detail_group(const struct fk *f)
{
	if (f->status == FK_PENDING)
		return 1;
	if (f->status == FK_DONE && f->orphans == 0)
		return 2;
	return 0;
}

static json_t *
build_report(const struct pv_pg_integrity_op *op)
{
	json_t *r = json_object(), *details = json_array();
	long long checked = 0, orphaned = 0, orphans = 0, timeouts = 0, errors = 0, pending = 0;
	size_t listed = 0;

	for (size_t i = 0; i < op->nfks; i++) {
		const struct fk *f = &op->fks[i];
		switch (f->status) {
		case FK_DONE:
			checked++;
			orphans += f->orphans;
			orphaned += f->orphans > 0;
			break;
		case FK_TIMEOUT: timeouts++; break;
		case FK_ERROR: errors++; break;
		case FK_PENDING: pending++; break;
		}
	}
	for (int g = 0; g < 3; g++)
		for (size_t i = 0; i < op->nfks; i++)
			if (detail_group(&op->fks[i]) == g && listed < op->max_details) {
				json_array_append_new(details, detail(&op->fks[i]));
				listed++;
			}
	json_object_set_new(r, "constraints", json_integer((json_int_t)op->nfks));
	json_object_set_new(r, "checked", json_integer(checked));
	json_object_set_new(r, "orphaned_constraints", json_integer(orphaned));
	json_object_set_new(r, "orphans", json_integer(orphans));
	json_object_set_new(r, "timeouts", json_integer(timeouts));
	json_object_set_new(r, "errors", json_integer(errors));
	json_object_set_new(r, "not_checked", json_integer(pending));
	json_object_set_new(r, "details", details);
	json_object_set_new(r, "details_omitted", json_integer((json_int_t)(op->nfks - listed)));
	return r;
}

/* The op is freed before cb runs. */
static void
finish(struct pv_pg_integrity_op *op, const struct pv_error *err)
{
	pv_pg_integrity_cb cb = op->cb;
	void *arg = op->arg;
	json_t *report = op->listed ? build_report(op) : NULL;
	struct pv_error e;

	if (err != NULL)
		e = *err;
	pv_log_debug("postgres integrity check done constraints=%zu seconds=%.3f%s%s", op->nfks,
	             pv_pg_now() - op->started, err ? " error=" : "", err ? pv_log_quote(err->msg) : "");
	op_free(op);
	cb(report, err ? &e : NULL, arg);
	if (report)
		json_decref(report);
}

static void
finish_timeout(struct pv_pg_integrity_op *op)
{
	struct pv_error e;
	size_t left = 0;

	for (size_t i = 0; i < op->nfks; i++)
		left += op->fks[i].status == FK_PENDING;
	pv_error_set(&e, PV_ERR_PG_TIMEOUT,
	             "integrity check timed out after %.1fs with %zu of %zu constraint%s not checked",
	             op->timeout, left, op->nfks, op->nfks == 1 ? "" : "s");
	finish(op, &e);
}

static void run_next(struct pv_pg_integrity_op *op);

static void
on_count(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct pv_pg_integrity_op *op = arg;
	struct fk *f = &op->fks[op->next];

	op->next++;
	if (err == NULL && PQntuples(res) == 1 && PQnfields(res) == 1) {
		f->status = FK_DONE;
		f->orphans = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		pv_log_debug("postgres integrity constraint=%s orphans=%lld seconds=%.3f",
		             pv_log_quote(f->name), f->orphans, pv_pg_now() - op->count_started);
		run_next(op);
		return;
	}
	if (err != NULL && err->code == PV_ERR_PG_TIMEOUT) {
		f->status = FK_TIMEOUT;
	} else {
		f->status = FK_ERROR;
		f->error = pv_strdup(err ? err->msg : "unexpected answer to the orphan count");
	}
	pv_log_debug("postgres integrity constraint=%s error=%s", pv_log_quote(f->name),
	             pv_log_quote(f->status == FK_TIMEOUT ? "timeout" : f->error));
	if (pv_pg_backend_pid(conn) == 0) {
		/* The deadline (or the server) closed the connection: start a new one for the rest. */
		pv_pg_close(op->conn);
		op->conn = NULL;
		if (op->next == op->nfks) {
			finish(op, NULL);
			return;
		}
		connect_next(op);
		return;
	}
	run_next(op);
}

static void
run_next(struct pv_pg_integrity_op *op)
{
	struct pv_error e;
	double left = remaining(op), limit;

	if (op->next == op->nfks) {
		finish(op, NULL);
		return;
	}
	if (left <= 0) {
		finish_timeout(op);
		return;
	}
	limit = op->query_timeout < left ? op->query_timeout : left;
	op->count_started = pv_pg_now();
	if (!pv_pg_query_start(op->conn, op->fks[op->next].sql, 0, NULL, limit, on_count, op, &e)) {
		pv_error_prefix(&e, "checking %s: ", op->fks[op->next].name);
		finish(op, &e);
	}
}

static void
on_list(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct pv_pg_integrity_op *op = arg;
	struct pv_error e;
	int n;

	if (err != NULL) {
		e = *err;
		pv_error_prefix(&e, "listing foreign keys: ");
		finish(op, &e);
		return;
	}
	if (PQnfields(res) != 3) {
		pv_error_set(&e, PV_ERR_PG_QUERY, "unexpected answer to the foreign key list query");
		finish(op, &e);
		return;
	}
	n = PQntuples(res);
	op->fks = pv_calloc((size_t)n + 1, sizeof(struct fk));
	for (int r = 0; r < n; r++) {
		struct fk *f = &op->fks[op->nfks++];
		f->name = pv_strdup(PQgetvalue(res, r, 0));
		f->validated = PQgetvalue(res, r, 1)[0] == 't';
		f->sql = pv_strdup(PQgetvalue(res, r, 2));
	}
	op->listed = true;
	run_next(op);
}

static void
on_session(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct pv_pg_integrity_op *op = arg;
	struct pv_error e;
	double left = remaining(op);

	if (err != NULL) {
		e = *err;
		pv_error_prefix(&e, "setting up the session: ");
		finish(op, &e);
		return;
	}
	if (op->listed) {
		run_next(op);
		return;
	}
	if (left <= 0) {
		finish_timeout(op);
		return;
	}
	if (!pv_pg_query_start(conn, SQL_FKEYS, 0, NULL, left, on_list, op, &e))
		finish(op, &e);
}

static void
on_connect(struct pv_pg_conn *conn, bool ok, const struct pv_error *err, void *arg)
{
	struct pv_pg_integrity_op *op = arg;
	struct pv_error e;
	const char *params[1] = {op->stmt_timeout};
	double left = remaining(op);

	if (!ok) {
		if (err->code == PV_ERR_PG_TIMEOUT && op->listed) {
			finish_timeout(op);
			return;
		}
		e = *err;
		if (op->listed)
			pv_error_prefix(&e, "reconnecting: ");
		finish(op, &e);
		return;
	}
	if (left <= 0) {
		finish_timeout(op);
		return;
	}
	if (!pv_pg_query_start(conn, SQL_SESSION, 1, params, left, on_session, op, &e))
		finish(op, &e);
}

static void
connect_next(struct pv_pg_integrity_op *op)
{
	struct pv_error e;
	double left = remaining(op);

	if (left <= 0) {
		finish_timeout(op);
		return;
	}
	op->conn = pv_pg_connect(op->base, op->dns, op->conninfo, op->password, left, on_connect, op, &e);
	if (op->conn == NULL)
		finish(op, &e);
}

struct pv_pg_integrity_op *
pv_pg_integrity_start(struct event_base *base, struct evdns_base *dns,
                      const struct pv_pg_integrity_opts *opts, pv_pg_integrity_cb cb, void *arg,
                      struct pv_error *err)
{
	struct pv_pg_integrity_op *op = pv_calloc(1, sizeof(*op));

	op->base = base;
	op->dns = dns;
	op->conninfo = pv_strdup(opts->conninfo ? opts->conninfo : "");
	op->password = opts->password ? pv_strdup(opts->password) : NULL;
	op->timeout = opts->timeout;
	op->query_timeout = opts->query_timeout > 0 ? opts->query_timeout : opts->timeout;
	op->max_details = opts->max_details > 0 ? opts->max_details : DEFAULT_MAX_DETAILS;
	snprintf(op->stmt_timeout, sizeof(op->stmt_timeout), "%.0f",
	         op->query_timeout < 2000000 ? (op->query_timeout + 1.0) * 1000.0 : 2147483647.0);
	op->started = pv_pg_now();
	op->cb = cb;
	op->arg = arg;
	/* The first connect reports a bad conninfo here, synchronously; later ones through finish. */
	op->conn = pv_pg_connect(base, dns, op->conninfo, op->password, op->timeout, on_connect, op, err);
	if (op->conn == NULL) {
		op_free(op);
		return NULL;
	}
	return op;
}

json_t *
pv_pg_integrity_cancel(struct pv_pg_integrity_op *op)
{
	json_t *report;

	if (op == NULL)
		return NULL;
	report = op->listed ? build_report(op) : NULL;
	op_free(op);
	return report;
}
