/* Consistent snapshots for backups; the same row counts and content hashes measured on restored copies. */
#include <stdarg.h>
#include <stdint.h>
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

/*
 * The expected values ("expected" in manifest.json), method "pgvigil-rowhash-v1":
 *
 *   {"method": "pgvigil-rowhash-v1",
 *    "tables": ["public.users", "sales.orders", ...],
 *    "row_counts": {"public.users": 200, "sales.orders": 0, ...},
 *    "data_excluded": ["public.audit_log"],
 *    "critical_table_hashes": {"public.users": "200:-1234567890123"}}
 *
 * tables: every ordinary (relkind r) and partitioned (p) table pg_dump dumps after the schema
 *   filters, named schema.table with the server's quote_ident rules (format('%I.%I')), sorted by
 *   byte value. Such a name is also an exact pg_dump -t / --exclude-table-data pattern. Left out:
 *   pg_catalog, information_schema and every other pg_* schema (toast, temp), temporary tables,
 *   tables that belong to an extension (pg_depend deptype 'e': CREATE EXTENSION recreates them,
 *   and pg_dump dumps their data only for marked configuration tables), views, materialized views
 *   and foreign tables (pg_dump dumps no data for them).
 * row_counts: exact count(*) FROM ONLY the table, in the snapshot. ONLY because every row is then
 *   counted once, in the table that stores it: a partitioned table counts 0 (its rows are in its
 *   partitions) and an inheritance parent counts its own rows. Tables listed in data_excluded
 *   count 0, as their copies will.
 * critical_table_hashes: "<count>:<sum>" where sum is the exact numeric sum of
 *   hashtextextended(row::text, 0) over the rows. The sum is order independent, so no sort is
 *   needed: measured on 7 million rows it takes 1.9 s where md5(string_agg(row::text ORDER BY pk))
 *   takes 11 s, and it needs no primary key. For a partitioned table it covers the whole
 *   partition tree (what "the events table" means to its users); otherwise ONLY the table.
 *   Limits: it detects any changed, missing or extra row with probability 1 - 2^-64 per change
 *   but is not cryptographic (colliding edits can be constructed on purpose); row::text goes
 *   through each type's output function, so the copy must run on the same or a compatible major
 *   version with the same extensions, which is the case for a restore probe. The session
 *   settings that change output (TimeZone, DateStyle, IntervalStyle, extra_float_digits,
 *   bytea_output, lc_monetary, search_path for reg* types) are pinned on both sides.
 *   hashtextextended itself is stable across versions because hash partitioning stores its
 *   results on disk.
 *
 * Names from the configuration (schemas, exclude_schemas, exclude_table_data, critical_tables)
 * follow SQL identifier rules, like pg_dump's -n / -N / -t patterns without wildcards: unquoted
 * letters fold to lower case, "Quoted" keeps case. An unqualified table name means the table that
 * the session's default search_path finds, because pg_dump resolves an unqualified
 * --exclude-table-data that way (so the backup job may pass configured names to pg_dump as they
 * are); critical tables, which pg_dump never sees, are also looked up in the schemas of the
 * `schemas` filter, in their order. A configured schema or an
 * exclude_table_data entry that matches nothing is not an error (pg_dump without --strict-names
 * agrees); a critical table that matches nothing is.
 *
 * Config strings never become SQL text: they are parsed here and passed as query parameters.
 * The statements that name tables use names the server quoted itself (format('%I.%I')).
 */

#define METHOD "pgvigil-rowhash-v1"

/* Tables counted per statement: one round trip for typical schemas, bounded statement size. */
#define COUNT_BATCH 64

/*
 * Every session (the snapshot's and the restored copy's) prints values the same way, and neither
 * is cut short by server-side timeouts meant for applications: our own deadlines apply, and the
 * snapshot's session must survive being idle in its transaction while pg_dump runs (pg_dump sets
 * the same two timeouts to 0 for itself). search_path '' also keeps user objects from shadowing
 * the functions and operators used below (pg_catalog is searched implicitly).
 */
#define SQL_SESSION                                                                                          \
	"SELECT pg_catalog.pg_backend_pid(), pg_catalog.set_config('search_path', '', false), "              \
	"pg_catalog.set_config('TimeZone', 'UTC', false), "                                                  \
	"pg_catalog.set_config('DateStyle', 'ISO, YMD', false), "                                            \
	"pg_catalog.set_config('IntervalStyle', 'postgres', false), "                                        \
	"pg_catalog.set_config('extra_float_digits', '3', false), "                                          \
	"pg_catalog.set_config('bytea_output', 'hex', false), "                                              \
	"pg_catalog.set_config('lc_monetary', 'C', false), "                                                 \
	"pg_catalog.set_config('statement_timeout', '0', false), "                                           \
	"pg_catalog.set_config('idle_in_transaction_session_timeout', '0', false)"
/* The session's default search path: pg_dump resolves unqualified table patterns with it. */
#define SQL_PATH                                                                                             \
	"SELECT pg_catalog.pg_backend_pid(), "                                                               \
	"pg_catalog.array_to_json(pg_catalog.current_schemas(false))::text"
#define SQL_BEGIN "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
#define SQL_EXPORT                                                                                           \
	"SELECT pg_catalog.pg_export_snapshot(), pg_catalog.pg_backend_pid(), "                              \
	"pg_catalog.current_setting('server_version'), pg_catalog.current_setting('server_version_num')"
/* $1 schemas to include (empty: all), $2 schemas to exclude; both exact names. */
#define SQL_LIST                                                                                             \
	"SELECT n.nspname, c.relname, pg_catalog.format('%I.%I', n.nspname, c.relname), c.relkind "          \
	"FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "               \
	"WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' "                                         \
	"AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' "                                     \
	"AND (pg_catalog.cardinality($1::text[]) = 0 OR n.nspname = ANY ($1::text[])) "                      \
	"AND NOT (n.nspname = ANY ($2::text[])) "                                                            \
	"AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d "                                              \
	"WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid "                  \
	"AND d.deptype = 'e') "                                                                              \
	"ORDER BY pg_catalog.format('%I.%I', n.nspname, c.relname) COLLATE \"C\""
/* Parts of the generated statements; %s is a name the server quoted, pv_row is the row alias. */
#define SQL_COUNT_PART "SELECT %zu, pg_catalog.count(*), NULL::text FROM ONLY %s"
#define SQL_HASH                                                                                             \
	"SELECT %zu, pg_catalog.count(*), coalesce(pg_catalog.sum(pg_catalog.hashtextextended("              \
	"ROW(pv_row.*)::text, 0)), 0)::text FROM %s%s AS pv_row"

/* ---- pure helpers ---- */

bool
pv_pg_session_check(int pid_first, int pid_second, struct pv_error *err)
{
	if (pid_first <= 0 || pid_second <= 0)
		return pv_error_set(err, PV_ERR_PG_QUERY, "the server reported no backend pid");
	if (pid_first != pid_second)
		return pv_error_set(err, PV_ERR_PG_CONNECT,
		                    "the connection goes through a transaction-mode pooler (backend changed "
		                    "between transactions, pid %d then %d): a consistent backup needs a "
		                    "session: HINT: connect to PostgreSQL directly or to the pooler's "
		                    "session-mode port",
		                    pid_first, pid_second);
	return true;
}

static void
free_parts(char **parts, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(parts[i]);
		parts[i] = NULL;
	}
}

bool
pv_pg_name_split(const char *s, size_t max, char **parts, size_t *n, struct pv_error *err)
{
	const char *p = s;
	size_t count = 0;

	*n = 0;
	for (;;) {
		char *buf = pv_malloc(strlen(s) + 1);
		size_t len = 0;
		bool quoted = false;

		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '"') {
			quoted = true;
			for (p++;; p++) {
				if (*p == '\0') {
					free(buf);
					free_parts(parts, count);
					return pv_error_set(
					        err, PV_ERR_CONFIG_VALUE,
					        "invalid name \"%s\": unterminated quoted identifier", s);
				}
				if (*p == '"') {
					if (p[1] != '"')
						break;
					p++;
				}
				buf[len++] = *p;
			}
			p++;
		} else {
			/* As PostgreSQL's downcase_identifier: ASCII only, other bytes kept. */
			for (; *p != '\0' && *p != '.' && *p != '"' && *p != ' ' && *p != '\t'; p++)
				buf[len++] = (*p >= 'A' && *p <= 'Z') ? (char)(*p + ('a' - 'A')) : *p;
		}
		buf[len] = '\0';
		while (*p == ' ' || *p == '\t')
			p++;
		if (len == 0 || count == max || (*p != '.' && *p != '\0')) {
			const char *why =
			        len == 0 ? (quoted ? "zero-length quoted identifier" : "empty name part")
			        : count == max ? "too many dotted parts"
			                       : "unexpected character (quote names with spaces or quotes)";
			free(buf);
			free_parts(parts, count);
			return pv_error_set(err, PV_ERR_CONFIG_VALUE, "invalid name \"%s\": %s", s, why);
		}
		parts[count++] = buf;
		if (*p == '\0')
			break;
		p++; /* the dot */
	}
	*n = count;
	return true;
}

/* A text[] literal for a query parameter: every element quoted, so any name is safe. */
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

/* ---- the measurement, shared by the snapshot and the restored copy ---- */

/* A table name from the configuration (or an expected manifest), parsed, and what it matched. */
struct ref {
	char *orig;
	char *schema; /* NULL when unqualified */
	char *name;
	size_t table; /* index into calc.tables, SIZE_MAX when nothing matched */
};

struct table {
	char *nsp;
	char *rel;
	char *qname;
	char kind;
	bool data_excluded;
	bool critical;
	long long count;
	char *hash;
};

struct item {
	size_t table;
	bool hash;
};

struct calc;
/* broken: a query failed or timed out, so the transaction (or connection) is unusable. */
typedef void (*calc_done_cb)(struct calc *calc, json_t *result, const struct pv_error *err, bool broken,
                             void *arg);

struct calc {
	/* What to measure; set once by the owner. */
	bool measure; /* restored copy: no filters, nothing excluded, missing critical tables are null */
	double timeout;
	char **inc;
	size_t ninc;
	char **exc;
	size_t nexc;
	char **path; /* the session's default search path, for unqualified names */
	size_t npath;
	struct ref *data;
	size_t ndata;
	struct ref *crit;
	size_t ncrit;
	json_t *data_excluded_copy; /* measure: copied from expected */

	/* One run. */
	struct pv_pg_conn *conn;
	double started;
	struct table *tables;
	size_t ntables;
	struct item *items;
	size_t nitems;
	size_t next;
	size_t batch_end;
	calc_done_cb done;
	void *arg;
};

static void
refs_free(struct ref *refs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(refs[i].orig);
		free(refs[i].schema);
		free(refs[i].name);
	}
	free(refs);
}

static void
strs_free(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static void
calc_reset(struct calc *calc)
{
	for (size_t i = 0; i < calc->ntables; i++) {
		free(calc->tables[i].nsp);
		free(calc->tables[i].rel);
		free(calc->tables[i].qname);
		free(calc->tables[i].hash);
	}
	free(calc->tables);
	calc->tables = NULL;
	calc->ntables = 0;
	free(calc->items);
	calc->items = NULL;
	calc->nitems = 0;
	calc->next = 0;
	calc->conn = NULL;
}

static void
calc_free(struct calc *calc)
{
	calc_reset(calc);
	strs_free(calc->inc, calc->ninc);
	strs_free(calc->exc, calc->nexc);
	strs_free(calc->path, calc->npath);
	refs_free(calc->data, calc->ndata);
	refs_free(calc->crit, calc->ncrit);
	if (calc->data_excluded_copy)
		json_decref(calc->data_excluded_copy);
	memset(calc, 0, sizeof(*calc));
}

/* Schema names: one part each. */
static bool
parse_schemas(const struct pv_strv *list, char ***out, size_t *nout, struct pv_error *err)
{
	size_t n = list ? list->n : 0;

	*out = pv_calloc(n + 1, sizeof(char *));
	*nout = 0;
	for (size_t i = 0; i < n; i++) {
		char *part[1];
		size_t np;
		if (!pv_pg_name_split(list->v[i], 1, part, &np, err))
			return false;
		(*out)[(*nout)++] = part[0];
	}
	return true;
}

static bool
parse_ref(const char *s, struct ref *r, struct pv_error *err)
{
	char *parts[2];
	size_t np;

	if (!pv_pg_name_split(s, 2, parts, &np, err))
		return false;
	r->orig = pv_strdup(s);
	r->schema = np == 2 ? parts[0] : NULL;
	r->name = np == 2 ? parts[1] : parts[0];
	r->table = SIZE_MAX;
	return true;
}

static bool
parse_refs(const struct pv_strv *list, struct ref **out, size_t *nout, struct pv_error *err)
{
	size_t n = list ? list->n : 0;

	*out = pv_calloc(n + 1, sizeof(struct ref));
	*nout = 0;
	for (size_t i = 0; i < n; i++) {
		if (!parse_ref(list->v[i], &(*out)[*nout], err))
			return false;
		(*nout)++;
	}
	return true;
}

static size_t
find_table(const struct calc *calc, const char *nsp, const char *rel)
{
	for (size_t i = 0; i < calc->ntables; i++)
		if (strcmp(calc->tables[i].nsp, nsp) == 0 && strcmp(calc->tables[i].rel, rel) == 0)
			return i;
	return SIZE_MAX;
}

/*
 * An unqualified name means the table the session's default search path finds, because that is
 * what pg_dump matches for an unqualified --exclude-table-data (it runs RESET search_path for
 * its pattern lookups). A critical table, which pg_dump never sees, may also be found in the
 * schemas of the `schemas` filter, in their order.
 */
static size_t
resolve(const struct calc *calc, const struct ref *r, bool critical)
{
	if (r->schema != NULL)
		return find_table(calc, r->schema, r->name);
	for (size_t i = 0; i < calc->npath; i++) {
		size_t t = find_table(calc, calc->path[i], r->name);
		if (t != SIZE_MAX)
			return t;
	}
	for (size_t i = 0; critical && i < calc->ninc; i++) {
		size_t t = find_table(calc, calc->inc[i], r->name);
		if (t != SIZE_MAX)
			return t;
	}
	return SIZE_MAX;
}

/* The schemas resolve() looks in for an unqualified critical name, for error messages. */
static char *
searched_schemas(const struct calc *calc)
{
	char *where = pv_strdup("");
	size_t n = 0;

	for (size_t k = 0; k < calc->npath + calc->ninc; k++) {
		const char *nsp = k < calc->npath ? calc->path[k] : calc->inc[k - calc->npath];
		char *w = pv_asprintf("%s%s\"%s\"", where, n++ ? ", " : "", nsp);
		free(where);
		where = w;
	}
	if (n == 0) {
		free(where);
		where = pv_strdup("(the search path is empty)");
	}
	return where;
}

static void
calc_finish(struct calc *calc, json_t *result, const struct pv_error *err, bool broken)
{
	calc_done_cb done = calc->done;
	void *arg = calc->arg;

	if (result != NULL)
		pv_log_debug("postgres %s values computed tables=%zu seconds=%.3f",
		             calc->measure ? "measured" : "expected", calc->ntables,
		             pv_pg_now() - calc->started);
	calc_reset(calc);
	done(calc, result, err, broken, arg);
}

static void calc_fail(struct calc *calc, const struct pv_error *err, bool broken, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

static void
calc_fail(struct calc *calc, const struct pv_error *err, bool broken, const char *fmt, ...)
{
	struct pv_error e = *err;
	char prefix[PV_ERROR_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	pv_error_prefix(&e, "%s", prefix);
	calc_finish(calc, NULL, &e, broken);
}

static json_t *
build_result(struct calc *calc)
{
	json_t *o = json_object();
	json_t *tables = json_array(), *counts = json_object(), *excluded, *hashes = json_object();

	json_object_set_new(o, "method", json_string(METHOD));
	for (size_t i = 0; i < calc->ntables; i++) {
		struct table *t = &calc->tables[i];
		json_array_append_new(tables, json_string(t->qname));
		json_object_set_new(counts, t->qname, json_integer(t->count));
		if (t->critical)
			json_object_set_new(hashes, t->qname, json_string(t->hash ? t->hash : ""));
	}
	if (calc->measure) {
		excluded = json_deep_copy(calc->data_excluded_copy);
		for (size_t i = 0; i < calc->ncrit; i++)
			if (calc->crit[i].table == SIZE_MAX)
				json_object_set_new(hashes, calc->crit[i].orig, json_null());
	} else {
		excluded = json_array();
		for (size_t i = 0; i < calc->ntables; i++)
			if (calc->tables[i].data_excluded)
				json_array_append_new(excluded, json_string(calc->tables[i].qname));
	}
	json_object_set_new(o, "tables", tables);
	json_object_set_new(o, "row_counts", counts);
	json_object_set_new(o, "data_excluded", excluded);
	json_object_set_new(o, "critical_table_hashes", hashes);
	return o;
}

static void run_next(struct calc *calc);

static void
on_batch(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct calc *calc = arg;
	const struct item *first = &calc->items[calc->next];
	size_t n = calc->batch_end - calc->next;
	struct pv_error e;

	if (err != NULL) {
		const char *q = calc->tables[first->table].qname;
		if (first->hash)
			calc_fail(calc, err, true, "hashing critical table %s: ", q);
		else
			calc_fail(calc, err, true, "counting rows of %zu table%s from %s: ", n,
			          n == 1 ? "" : "s", q);
		return;
	}
	if ((size_t)PQntuples(res) != n || PQnfields(res) != 3) {
		pv_error_set(&e, PV_ERR_PG_QUERY, "unexpected answer to the row count query");
		calc_finish(calc, NULL, &e, true);
		return;
	}
	for (int r = 0; r < PQntuples(res); r++) {
		size_t idx = (size_t)strtoull(PQgetvalue(res, r, 0), NULL, 10);
		const struct item *it;
		struct table *t;
		if (idx < calc->next || idx >= calc->batch_end) {
			pv_error_set(&e, PV_ERR_PG_QUERY,
			             "unexpected row in the answer to the row count query");
			calc_finish(calc, NULL, &e, true);
			return;
		}
		it = &calc->items[idx];
		t = &calc->tables[it->table];
		if (it->hash) {
			free(t->hash);
			t->hash = pv_asprintf("%s:%s", PQgetvalue(res, r, 1), PQgetvalue(res, r, 2));
			/* A partitioned table's hash covers its partitions; its own count stays 0. */
			if (t->kind == 'r')
				t->count = strtoll(PQgetvalue(res, r, 1), NULL, 10);
		} else {
			t->count = strtoll(PQgetvalue(res, r, 1), NULL, 10);
		}
	}
	calc->next = calc->batch_end;
	run_next(calc);
}

static void
run_next(struct calc *calc)
{
	struct pv_error e;
	size_t cap = 0, len = 0;
	char *sql = NULL;
	bool ok;

	if (calc->next == calc->nitems) {
		calc_finish(calc, build_result(calc), NULL, false);
		return;
	}
	/* A hash runs alone, so its deadline and its error name one table; counts go in batches. */
	calc->batch_end = calc->next;
	do {
		const struct item *it = &calc->items[calc->batch_end];
		const struct table *t = &calc->tables[it->table];
		char *part = it->hash ? pv_asprintf(SQL_HASH, calc->batch_end, t->kind == 'r' ? "ONLY " : "",
		                                    t->qname)
		                      : pv_asprintf(SQL_COUNT_PART, calc->batch_end, t->qname);
		size_t need = len + strlen(part) + 16;
		if (need > cap) {
			cap = need * 2;
			sql = pv_realloc(sql, cap);
		}
		len += (size_t)snprintf(sql + len, cap - len, "%s%s", len > 0 ? " UNION ALL " : "", part);
		free(part);
		calc->batch_end++;
		if (it->hash)
			break;
	} while (calc->batch_end < calc->nitems && !calc->items[calc->batch_end].hash &&
	         calc->batch_end - calc->next < COUNT_BATCH);
	ok = pv_pg_query_start(calc->conn, sql, 0, NULL, calc->timeout, on_batch, calc, &e);
	free(sql);
	if (!ok)
		calc_finish(calc, NULL, &e, true);
}

static void
add_item(struct calc *calc, size_t table, bool hash)
{
	calc->items = pv_realloc(calc->items, (calc->nitems + 1) * sizeof(*calc->items));
	calc->items[calc->nitems].table = table;
	calc->items[calc->nitems].hash = hash;
	calc->nitems++;
}

static void
on_list(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct calc *calc = arg;
	struct pv_error e;
	int n;

	if (err != NULL) {
		calc_fail(calc, err, true, "listing tables: ");
		return;
	}
	if (PQnfields(res) != 4) {
		pv_error_set(&e, PV_ERR_PG_QUERY, "unexpected answer to the table list query");
		calc_finish(calc, NULL, &e, true);
		return;
	}
	n = PQntuples(res);
	calc->tables = pv_calloc((size_t)n + 1, sizeof(struct table));
	for (int r = 0; r < n; r++) {
		struct table *t = &calc->tables[calc->ntables++];
		t->nsp = pv_strdup(PQgetvalue(res, r, 0));
		t->rel = pv_strdup(PQgetvalue(res, r, 1));
		t->qname = pv_strdup(PQgetvalue(res, r, 2));
		t->kind = PQgetvalue(res, r, 3)[0];
	}

	for (size_t i = 0; i < calc->ndata; i++) {
		calc->data[i].table = resolve(calc, &calc->data[i], false);
		if (calc->data[i].table != SIZE_MAX)
			calc->tables[calc->data[i].table].data_excluded = true;
		else
			pv_log_debug("postgres exclude_table_data entry matches no table name=%s",
			             pv_log_quote(calc->data[i].orig));
	}
	for (size_t i = 0; i < calc->ncrit; i++) {
		struct ref *r = &calc->crit[i];
		r->table = resolve(calc, r, true);
		if (r->table == SIZE_MAX) {
			if (calc->measure)
				continue;
			if (r->schema != NULL) {
				pv_error_set(
				        &e, PV_ERR_NOT_FOUND,
				        "critical table \"%s\" not found: no table \"%s\" in schema \"%s\" "
				        "among the tables in the backup",
				        r->orig, r->name, r->schema);
			} else {
				char *where = searched_schemas(calc);
				pv_error_set(&e, PV_ERR_NOT_FOUND,
				             "critical table \"%s\" not found: no table \"%s\" in schema%s "
				             "%s among "
				             "the tables in the backup",
				             r->orig, r->name, calc->npath + calc->ninc > 1 ? "s" : "",
				             where);
				free(where);
			}
			calc_finish(calc, NULL, &e, false);
			return;
		}
		if (calc->tables[r->table].data_excluded) {
			pv_error_set(&e, PV_ERR_CONFIG_VALUE,
			             "critical table \"%s\" (%s) is in exclude_table_data: its content would "
			             "not be "
			             "in the backup",
			             r->orig, calc->tables[r->table].qname);
			calc_finish(calc, NULL, &e, false);
			return;
		}
		calc->tables[r->table].critical = true;
	}

	for (size_t i = 0; i < calc->ntables; i++) {
		struct table *t = &calc->tables[i];
		/* Hashes first: they are the slow part, and a critical ordinary table's hash brings its
		 * count, so it is scanned once. A partitioned table stores no rows: no count query. */
		if (t->critical)
			add_item(calc, i, true);
	}
	for (size_t i = 0; i < calc->ntables; i++) {
		struct table *t = &calc->tables[i];
		if (t->kind == 'r' && !(t->critical) && !(t->data_excluded && !calc->measure))
			add_item(calc, i, false);
	}
	run_next(calc);
}

static void
calc_list(struct calc *calc)
{
	char *inc = array_literal(calc->measure ? NULL : calc->inc, calc->measure ? 0 : calc->ninc);
	char *exc = array_literal(calc->measure ? NULL : calc->exc, calc->measure ? 0 : calc->nexc);
	const char *params[2] = {inc, exc};
	struct pv_error e;
	bool ok = pv_pg_query_start(calc->conn, SQL_LIST, 2, params, calc->timeout, on_list, calc, &e);

	free(inc);
	free(exc);
	if (!ok)
		calc_finish(calc, NULL, &e, true);
}

static void
calc_start(struct calc *calc, struct pv_pg_conn *conn, calc_done_cb done, void *arg)
{
	calc->conn = conn;
	calc->done = done;
	calc->arg = arg;
	calc->started = pv_pg_now();
	calc_list(calc);
}

/* ---- snapshot ---- */

enum snap_state {
	SNAP_STARTING, /* connect, session checks, BEGIN, export */
	SNAP_READY,
	SNAP_BUSY, /* expect in flight */
	SNAP_BROKEN,
};

struct pv_pg_snapshot {
	struct pv_pg_conn *conn;
	enum snap_state state;
	double timeout;
	int pid_first;
	char *id;
	int version;
	char version_str[128];
	struct calc calc;
	pv_pg_snapshot_cb cb;
	void *arg;
	pv_pg_expect_cb ecb;
	void *earg;
};

/* On failure the snapshot is freed before cb runs (cb gets NULL): there is nothing left to end. */
static void
snap_done(struct pv_pg_snapshot *snap, const struct pv_error *err, const char *step)
{
	pv_pg_snapshot_cb cb = snap->cb;
	void *arg = snap->arg;

	if (err != NULL) {
		struct pv_error e = *err;
		if (step != NULL)
			pv_error_prefix(&e, "%s: ", step);
		/* The closed connection also ends a transaction already begun. */
		pv_pg_snapshot_end(snap);
		cb(NULL, false, &e, arg);
		return;
	}
	snap->state = SNAP_READY;
	cb(snap, true, NULL, arg);
}

static void
on_export(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct pv_pg_snapshot *snap = arg;
	struct pv_error e;

	if (err != NULL) {
		snap_done(snap, err, "exporting the snapshot");
		return;
	}
	if (PQntuples(res) != 1 || PQnfields(res) != 4) {
		pv_error_set(&e, PV_ERR_PG_QUERY, "unexpected answer to pg_export_snapshot()");
		snap_done(snap, &e, NULL);
		return;
	}
	/* A third look: the transaction holding the snapshot is still on the same backend. */
	if (!pv_pg_session_check(snap->pid_first, atoi(PQgetvalue(res, 0, 1)), &e)) {
		snap_done(snap, &e, NULL);
		return;
	}
	snap->id = pv_strdup(PQgetvalue(res, 0, 0));
	pv_strlcpy(snap->version_str, PQgetvalue(res, 0, 2), sizeof(snap->version_str));
	snap->version = atoi(PQgetvalue(res, 0, 3));
	pv_log_debug("postgres snapshot exported id=%s backend_pid=%d server_version=%d", snap->id,
	             snap->pid_first, snap->version);
	snap_done(snap, NULL, NULL);
}

static void
on_begin(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct pv_pg_snapshot *snap = arg;
	struct pv_error e;

	if (err != NULL) {
		snap_done(snap, err, "beginning the snapshot transaction");
		return;
	}
	if (!pv_pg_query_start(conn, SQL_EXPORT, 0, NULL, snap->timeout, on_export, snap, &e))
		snap_done(snap, &e, "exporting the snapshot");
}

/*
 * The search-path query and the settings query are two autocommit transactions: a
 * transaction-mode pooler may hand them to different backends, which shows. It may also hand both
 * to the same idle backend, so this catches a busy pooler, not every one; then pg_dump usually
 * fails to import the snapshot ("invalid snapshot identifier") and the backup job reports that.
 */
static void
on_session(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct pv_pg_snapshot *snap = arg;
	struct pv_error e;

	if (err != NULL) {
		snap_done(snap, err, "setting up the session");
		return;
	}
	if (!pv_pg_session_check(snap->pid_first, PQntuples(res) == 1 ? atoi(PQgetvalue(res, 0, 0)) : 0,
	                         &e)) {
		snap_done(snap, &e, NULL);
		return;
	}
	if (!pv_pg_query_start(conn, SQL_BEGIN, 0, NULL, snap->timeout, on_begin, snap, &e))
		snap_done(snap, &e, "beginning the snapshot transaction");
}

static void
on_path(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct pv_pg_snapshot *snap = arg;
	struct pv_error e;
	json_t *path;
	size_t i;
	json_t *v;

	if (err != NULL) {
		snap_done(snap, err, "reading the search path");
		return;
	}
	path = PQntuples(res) == 1 && PQnfields(res) == 2 ? json_loads(PQgetvalue(res, 0, 1), 0, NULL) : NULL;
	if (!json_is_array(path)) {
		json_decref(path);
		pv_error_set(&e, PV_ERR_PG_QUERY, "unexpected answer to the search path query");
		snap_done(snap, &e, NULL);
		return;
	}
	snap->calc.path = pv_calloc(json_array_size(path) + 1, sizeof(char *));
	json_array_foreach(path, i, v)
	{
		if (json_is_string(v))
			snap->calc.path[snap->calc.npath++] = pv_strdup(json_string_value(v));
	}
	json_decref(path);
	snap->pid_first = atoi(PQgetvalue(res, 0, 0));
	if (snap->pid_first != pv_pg_backend_pid(conn))
		pv_log_debug("postgres connection goes through a pooler startup_pid=%d backend_pid=%d",
		             pv_pg_backend_pid(conn), snap->pid_first);
	if (!pv_pg_query_start(conn, SQL_SESSION, 0, NULL, snap->timeout, on_session, snap, &e))
		snap_done(snap, &e, "setting up the session");
}

static void
on_snap_connect(struct pv_pg_conn *conn, bool ok, const struct pv_error *err, void *arg)
{
	struct pv_pg_snapshot *snap = arg;
	struct pv_error e;

	if (!ok) {
		snap_done(snap, err, NULL);
		return;
	}
	if (!pv_pg_query_start(conn, SQL_PATH, 0, NULL, snap->timeout, on_path, snap, &e))
		snap_done(snap, &e, "reading the search path");
}

struct pv_pg_snapshot *
pv_pg_snapshot_begin(struct event_base *base, struct evdns_base *dns, const struct pv_pg_snapshot_opts *opts,
                     pv_pg_snapshot_cb cb, void *arg, struct pv_error *err)
{
	struct pv_pg_snapshot *snap = pv_calloc(1, sizeof(*snap));

	snap->cb = cb;
	snap->arg = arg;
	snap->timeout = opts->timeout;
	snap->state = SNAP_STARTING;
	snap->calc.timeout = opts->timeout;
	/* Names are checked now: a typo in the configuration fails before any connection. */
	if (!parse_schemas(opts->schemas, &snap->calc.inc, &snap->calc.ninc, err) ||
	    !parse_schemas(opts->exclude_schemas, &snap->calc.exc, &snap->calc.nexc, err) ||
	    !parse_refs(opts->exclude_table_data, &snap->calc.data, &snap->calc.ndata, err) ||
	    !parse_refs(opts->critical_tables, &snap->calc.crit, &snap->calc.ncrit, err)) {
		pv_pg_snapshot_end(snap);
		return NULL;
	}
	snap->conn = pv_pg_connect(base, dns, opts->conninfo, opts->password, opts->timeout, on_snap_connect,
	                           snap, err);
	if (snap->conn == NULL) {
		pv_pg_snapshot_end(snap);
		return NULL;
	}
	return snap;
}

const char *
pv_pg_snapshot_id(const struct pv_pg_snapshot *snap)
{
	return snap ? snap->id : NULL;
}

int
pv_pg_snapshot_server_version(const struct pv_pg_snapshot *snap)
{
	return snap ? snap->version : 0;
}

const char *
pv_pg_snapshot_server_version_str(const struct pv_pg_snapshot *snap)
{
	return snap && snap->version_str[0] ? snap->version_str : NULL;
}

static void
on_expect_done(struct calc *calc, json_t *result, const struct pv_error *err, bool broken, void *arg)
{
	struct pv_pg_snapshot *snap = arg;
	pv_pg_expect_cb cb = snap->ecb;
	void *earg = snap->earg;

	snap->state = broken ? SNAP_BROKEN : SNAP_READY;
	cb(snap, result, err, earg);
}

bool
pv_pg_snapshot_expect(struct pv_pg_snapshot *snap, pv_pg_expect_cb cb, void *arg, struct pv_error *err)
{
	if (snap == NULL || snap->state != SNAP_READY)
		return pv_error_set(err, PV_ERR_PG_QUERY, "the snapshot is %s",
		                    snap == NULL                 ? "missing"
		                    : snap->state == SNAP_BUSY   ? "busy"
		                    : snap->state == SNAP_BROKEN ? "no longer usable"
		                                                 : "not ready");
	snap->state = SNAP_BUSY;
	snap->ecb = cb;
	snap->earg = arg;
	calc_start(&snap->calc, snap->conn, on_expect_done, snap);
	return true;
}

/*
 * Closing the connection ends the transaction: the server rolls it back (a read-only transaction
 * has nothing to commit) and drops the exported snapshot. No ROLLBACK round trip, so this never
 * waits and works at any moment, also with a query in flight.
 */
void
pv_pg_snapshot_end(struct pv_pg_snapshot *snap)
{
	if (snap == NULL)
		return;
	pv_pg_close(snap->conn);
	calc_free(&snap->calc);
	free(snap->id);
	free(snap);
}

/* ---- measure ---- */

struct pv_pg_measure_op {
	struct pv_pg_conn *conn;
	struct calc calc;
	pv_pg_measure_cb cb;
	void *arg;
};

static void
measure_free(struct pv_pg_measure_op *op)
{
	pv_pg_close(op->conn);
	calc_free(&op->calc);
	free(op);
}

static void
measure_finish(struct pv_pg_measure_op *op, json_t *result, const struct pv_error *err)
{
	pv_pg_measure_cb cb = op->cb;
	void *arg = op->arg;
	struct pv_error e;

	if (err != NULL)
		e = *err;
	measure_free(op);
	cb(result, err ? &e : NULL, arg);
}

static void
on_measure_done(struct calc *calc, json_t *result, const struct pv_error *err, bool broken, void *arg)
{
	measure_finish(arg, result, err);
}

static void
on_measure_session(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct pv_pg_measure_op *op = arg;
	struct pv_error e;

	if (err != NULL) {
		e = *err;
		pv_error_prefix(&e, "setting up the session: ");
		measure_finish(op, NULL, &e);
		return;
	}
	calc_start(&op->calc, conn, on_measure_done, op);
}

static void
on_measure_connect(struct pv_pg_conn *conn, bool ok, const struct pv_error *err, void *arg)
{
	struct pv_pg_measure_op *op = arg;
	struct pv_error e;

	if (!ok) {
		measure_finish(op, NULL, err);
		return;
	}
	if (!pv_pg_query_start(conn, SQL_SESSION, 0, NULL, op->calc.timeout, on_measure_session, op, &e)) {
		pv_error_prefix(&e, "setting up the session: ");
		measure_finish(op, NULL, &e);
	}
}

struct pv_pg_measure_op *
pv_pg_measure_start(struct event_base *base, struct evdns_base *dns, const char *conninfo,
                    const char *password, double timeout, const json_t *expected, pv_pg_measure_cb cb,
                    void *arg, struct pv_error *err)
{
	struct pv_pg_measure_op *op = pv_calloc(1, sizeof(*op));
	json_t *method = json_object_get(expected, "method");
	json_t *hashes = json_object_get(expected, "critical_table_hashes");
	json_t *excluded = json_object_get(expected, "data_excluded");
	const char *key;
	json_t *val;

	op->cb = cb;
	op->arg = arg;
	op->calc.measure = true;
	op->calc.timeout = timeout;
	if (!json_is_object(expected) || !json_is_string(method) ||
	    strcmp(json_string_value(method), METHOD) != 0 || (hashes != NULL && !json_is_object(hashes)) ||
	    (excluded != NULL && !json_is_array(excluded))) {
		pv_error_set(err, PV_ERR_INTERNAL, "expected values are not in the %s format", METHOD);
		measure_free(op);
		return NULL;
	}
	op->calc.data_excluded_copy = excluded ? json_deep_copy(excluded) : json_array();
	op->calc.crit = pv_calloc(json_object_size(hashes) + 1, sizeof(struct ref));
	json_object_foreach((json_t *)hashes, key, val)
	{
		if (!parse_ref(key, &op->calc.crit[op->calc.ncrit], err)) {
			measure_free(op);
			return NULL;
		}
		op->calc.ncrit++;
	}
	op->conn = pv_pg_connect(base, dns, conninfo, password, timeout, on_measure_connect, op, err);
	if (op->conn == NULL) {
		measure_free(op);
		return NULL;
	}
	return op;
}

void
pv_pg_measure_cancel(struct pv_pg_measure_op *op)
{
	if (op == NULL)
		return;
	measure_free(op);
}
