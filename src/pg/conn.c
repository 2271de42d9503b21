/* Async libpq connections driven by libevent: evdns resolution, PQconnectPoll, own deadlines, queries. */
#include <arpa/inet.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <libpq-fe.h>

#include "pg/pg.h"
#include "pg/pg_internal.h"
#include "util/log.h"
#include "util/mem.h"

/* libpq would try every address of a name; we hand it at most this many per host. */
#define MAX_ADDRS_PER_HOST 8

/*
 * Server-side backends only notice a vanished client while they run a query if
 * client_connection_check_interval is set (PostgreSQL >= 14). We set it after connecting so that
 * closing the socket on a query deadline stops the query within this many milliseconds.
 */
#define CHECK_INTERVAL_SQL "SET client_connection_check_interval = 1000"

enum conn_state {
	ST_STARTING,   /* waiting for the first loop turn */
	ST_RESOLVING,  /* evdns lookups in flight */
	ST_CONNECTING, /* PQconnectPoll */
	ST_IDLE,
	ST_QUERY,
	ST_BROKEN, /* failed or timed out; only pv_pg_close is meaningful */
};

/*
 * The evdns callback can run after pv_pg_close (cancellation is reported asynchronously), so it
 * gets this small ticket instead of the connection; close detaches it and the callback frees it.
 */
struct resolve_ticket {
	struct pv_pg_conn *conn;
	bool in_call; /* inside evdns_getaddrinfo: the answer may arrive synchronously */
	bool answered;
	int result;
	struct evutil_addrinfo *ai;
};

struct pv_pg_conn {
	struct event_base *base;
	struct evdns_base *dns;
	enum conn_state state;
	PGconn *pg;
	char *redacted; /* conninfo for log lines */

	/* Keyword/value arrays for PQconnectStartParams, NULL-terminated, all strings owned. */
	char **keys;
	char **vals;
	size_t nparams;

	/* Host resolution: the host list split, and the lists handed to libpq built up as we go. */
	char **hosts;
	size_t nhosts;
	char **ports;
	size_t nports;
	size_t next_host;
	bool need_resolve;
	char *out_host;
	char *out_hostaddr;
	char *out_port;
	struct resolve_ticket *ticket;
	struct evdns_getaddrinfo_request *dns_req;

	struct event *kick;  /* first step, run from the loop so callbacks are never synchronous */
	struct event *io;    /* socket readiness, recreated whenever libpq's wishes or socket change */
	struct event *timer; /* connect deadline */
	double started;
	double timeout;
	double connect_seconds;
	pv_pg_connect_cb cb;
	void *arg;

	/* The query in flight. */
	struct event *qtimer;
	double qtimeout;
	bool flushing;
	bool qfailed;
	struct pv_error qerr;
	PGresult *qres;
	pv_pg_query_cb qcb;
	void *qarg;
};

static void resolve_next(struct pv_pg_conn *conn);
static void begin_connect(struct pv_pg_conn *conn);
static void query_io_cb(evutil_socket_t fd, short what, void *arg);

double
pv_pg_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
free_strv(char **v, size_t n)
{
	if (v == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* Split libpq's comma-separated host/port lists; an empty string yields one empty element. */
static char **
split_list(const char *s, size_t *n)
{
	char **v = NULL;
	size_t count = 0;
	const char *p = s;

	for (;;) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		v = pv_realloc(v, (count + 1) * sizeof(*v));
		v[count++] = pv_strndup(p, len);
		if (comma == NULL)
			break;
		p = comma + 1;
	}
	*n = count;
	return v;
}

static void
list_append(char **list, const char *item)
{
	char *old = *list;
	*list = old ? pv_asprintf("%s,%s", old, item) : pv_strdup(item);
	free(old);
}

static bool
is_socket_path(const char *host)
{
	/* libpq treats these as Unix-domain socket directories (and '@' as the abstract namespace). */
	return host[0] == '/' || host[0] == '@';
}

static bool
is_ip_literal(const char *host)
{
	unsigned char buf[sizeof(struct in6_addr)];
	return evutil_inet_pton(AF_INET, host, buf) == 1 || evutil_inet_pton(AF_INET6, host, buf) == 1;
}

static bool
host_needs_resolve(const char *host)
{
	return host[0] != '\0' && !is_socket_path(host) && !is_ip_literal(host);
}

static void
set_param(struct pv_pg_conn *conn, const char *key, const char *val)
{
	for (size_t i = 0; i < conn->nparams; i++) {
		if (strcmp(conn->keys[i], key) == 0) {
			free(conn->vals[i]);
			conn->vals[i] = pv_strdup(val);
			return;
		}
	}
	conn->keys = pv_realloc(conn->keys, (conn->nparams + 2) * sizeof(char *));
	conn->vals = pv_realloc(conn->vals, (conn->nparams + 2) * sizeof(char *));
	conn->keys[conn->nparams] = pv_strdup(key);
	conn->vals[conn->nparams] = pv_strdup(val);
	conn->nparams++;
	conn->keys[conn->nparams] = NULL;
	conn->vals[conn->nparams] = NULL;
}

static const char *
get_param(const struct pv_pg_conn *conn, const char *key)
{
	for (size_t i = 0; i < conn->nparams; i++)
		if (strcmp(conn->keys[i], key) == 0)
			return conn->vals[i];
	return NULL;
}

/*
 * libpq's message for a failed connect lists every host/address it tried, each starting with
 * "connection to server ..." and possibly followed by indented hints. The last attempt is the
 * interesting one (e.g. ::1 refused, then 127.0.0.1 rejected the password), so report the
 * first line of the last attempt; for a single attempt this is simply the first line.
 */
static void
pg_message(const char *msg, char *out, size_t size)
{
	const char *line = msg ? msg : "";
	const char *p = line;
	size_t len;

	while ((p = strstr(p, "connection to server")) != NULL) {
		if (p == msg || p[-1] == '\n')
			line = p;
		p++;
	}
	while (*line == ' ' || *line == '\t' || *line == '\n')
		line++;
	len = strcspn(line, "\n");
	while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t' || line[len - 1] == '\r'))
		len--;
	if (len == 0) {
		pv_strlcpy(out, "unknown libpq error", size);
		return;
	}
	if (len >= size)
		len = size - 1;
	memcpy(out, line, len);
	out[len] = '\0';
}

static void
notice_cb(void *arg, const char *message)
{
	struct pv_pg_conn *conn = arg;
	char line[512];
	pg_message(message, line, sizeof(line));
	pv_log_debug("postgres notice conninfo=%s msg=%s", pv_log_quote(conn->redacted), pv_log_quote(line));
}

static void
drop_events(struct pv_pg_conn *conn)
{
	if (conn->io) {
		event_free(conn->io);
		conn->io = NULL;
	}
	if (conn->timer) {
		event_free(conn->timer);
		conn->timer = NULL;
	}
	if (conn->qtimer) {
		event_free(conn->qtimer);
		conn->qtimer = NULL;
	}
	if (conn->kick) {
		event_free(conn->kick);
		conn->kick = NULL;
	}
}

static void
stop_resolving(struct pv_pg_conn *conn)
{
	if (conn->ticket) {
		conn->ticket->conn = NULL;
		conn->ticket = NULL;
	}
	if (conn->dns_req) {
		struct evdns_getaddrinfo_request *req = conn->dns_req;
		conn->dns_req = NULL;
		evdns_getaddrinfo_cancel(req);
	}
}

/* Events go before PQfinish: libevent must forget a descriptor before it is closed. */
static void
drop_connection(struct pv_pg_conn *conn)
{
	stop_resolving(conn);
	drop_events(conn);
	if (conn->pg) {
		PQfinish(conn->pg);
		conn->pg = NULL;
	}
	if (conn->qres) {
		PQclear(conn->qres);
		conn->qres = NULL;
	}
	conn->state = ST_BROKEN;
}

/* Report the connect outcome; the callback may close conn, so nothing touches it afterwards. */
static void connect_done(struct pv_pg_conn *conn, bool ok, enum pv_errcode code, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

static void
connect_done(struct pv_pg_conn *conn, bool ok, enum pv_errcode code, const char *fmt, ...)
{
	struct pv_error err;
	pv_pg_connect_cb cb = conn->cb;
	void *arg = conn->arg;

	pv_error_clear(&err);
	if (!ok) {
		va_list ap;
		err.code = code;
		va_start(ap, fmt);
		vsnprintf(err.msg, sizeof(err.msg), fmt, ap);
		va_end(ap);
		pv_log_debug("postgres connect failed conninfo=%s msg=%s", pv_log_quote(conn->redacted),
		             pv_log_quote(err.msg));
		drop_connection(conn);
	} else {
		if (conn->timer) {
			event_free(conn->timer);
			conn->timer = NULL;
		}
		conn->state = ST_IDLE;
		pv_log_debug("postgres connected conninfo=%s seconds=%.3f server_version=%d",
		             pv_log_quote(conn->redacted), conn->connect_seconds, PQserverVersion(conn->pg));
	}
	cb(conn, ok, ok ? NULL : &err, arg);
}

static void
connect_fail_pq(struct pv_pg_conn *conn)
{
	char msg[PV_ERROR_MSG_MAX];
	pg_message(conn->pg ? PQerrorMessage(conn->pg) : "out of memory", msg, sizeof(msg));
	connect_done(conn, false, PV_ERR_PG_CONNECT, "%s", msg);
}

static void
connect_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_pg_conn *conn = arg;
	connect_done(conn, false, PV_ERR_PG_TIMEOUT, "connection timed out after %.1fs", conn->timeout);
}

/* ---- resolution ---- */

static void
addr_to_string(const struct sockaddr *sa, char *buf, size_t size)
{
	buf[0] = '\0';
	if (sa->sa_family == AF_INET)
		evutil_inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, size);
	else if (sa->sa_family == AF_INET6)
		evutil_inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, size);
}

/* Append one host element (and its port when ports are per host) to the lists for libpq. */
static void
emit_host(struct pv_pg_conn *conn, size_t i, const char *hostaddr)
{
	list_append(&conn->out_host, conn->hosts[i]);
	list_append(&conn->out_hostaddr, hostaddr);
	if (conn->nports > 1)
		list_append(&conn->out_port, conn->ports[i]);
}

static void
resolved(struct pv_pg_conn *conn, int result, struct evutil_addrinfo *ai)
{
	size_t i = conn->next_host;
	size_t n = 0;

	if (result != 0) {
		connect_done(conn, false, PV_ERR_PG_CONNECT,
		             "could not translate host name \"%s\" to address: %s", conn->hosts[i],
		             evutil_gai_strerror(result));
		return;
	}
	for (struct evutil_addrinfo *p = ai; p != NULL && n < MAX_ADDRS_PER_HOST; p = p->ai_next) {
		char addr[INET6_ADDRSTRLEN];
		addr_to_string(p->ai_addr, addr, sizeof(addr));
		if (addr[0] == '\0')
			continue;
		emit_host(conn, i, addr);
		n++;
	}
	if (n == 0) {
		connect_done(conn, false, PV_ERR_PG_CONNECT,
		             "could not translate host name \"%s\" to address: no addresses", conn->hosts[i]);
		return;
	}
	conn->next_host++;
	resolve_next(conn);
}

static void
dns_cb(int result, struct evutil_addrinfo *ai, void *arg)
{
	struct resolve_ticket *t = arg;
	struct pv_pg_conn *conn = t->conn;

	if (t->in_call) {
		/* Answered synchronously (hosts file, cache): resolve_next picks it up. */
		t->answered = true;
		t->result = result;
		t->ai = ai;
		return;
	}
	free(t);
	if (conn == NULL || result == EVUTIL_EAI_CANCEL) {
		if (ai)
			evutil_freeaddrinfo(ai);
		return;
	}
	conn->ticket = NULL;
	conn->dns_req = NULL;
	resolved(conn, result, ai);
	if (ai)
		evutil_freeaddrinfo(ai);
}

static void
resolve_next(struct pv_pg_conn *conn)
{
	while (conn->next_host < conn->nhosts) {
		size_t i = conn->next_host;
		struct evutil_addrinfo hints;
		struct resolve_ticket *t;
		struct evdns_getaddrinfo_request *req;

		if (!host_needs_resolve(conn->hosts[i])) {
			emit_host(conn, i, "");
			conn->next_host++;
			continue;
		}
		memset(&hints, 0, sizeof(hints));
		hints.ai_family = AF_UNSPEC;
		hints.ai_socktype = SOCK_STREAM;
		hints.ai_protocol = IPPROTO_TCP;
		t = pv_calloc(1, sizeof(*t));
		t->conn = conn;
		t->in_call = true;
		conn->ticket = t;
		req = evdns_getaddrinfo(conn->dns, conn->hosts[i], NULL, &hints, dns_cb, t);
		t->in_call = false;
		if (t->answered) {
			int result = t->result;
			struct evutil_addrinfo *ai = t->ai;
			conn->ticket = NULL;
			free(t);
			resolved(conn, result, ai);
			if (ai)
				evutil_freeaddrinfo(ai);
			return;
		}
		if (req == NULL) {
			/* Neither answered nor pending: evdns refused the request outright. */
			conn->ticket = NULL;
			free(t);
			connect_done(conn, false, PV_ERR_PG_CONNECT, "could not resolve host name \"%s\"",
			             conn->hosts[i]);
			return;
		}
		conn->dns_req = req;
		return;
	}
	set_param(conn, "host", conn->out_host);
	set_param(conn, "hostaddr", conn->out_hostaddr);
	if (conn->out_port)
		set_param(conn, "port", conn->out_port);
	begin_connect(conn);
}

/* ---- PQconnectPoll ---- */

static void connect_io_cb(evutil_socket_t fd, short what, void *arg);

/* Wait for what libpq asked for on whatever socket it uses now (it changes between attempts). */
static void
connect_wait(struct pv_pg_conn *conn, PostgresPollingStatusType st)
{
	int fd = PQsocket(conn->pg);
	if (fd < 0) {
		connect_fail_pq(conn);
		return;
	}
	conn->io = event_new(conn->base, fd, st == PGRES_POLLING_READING ? EV_READ : EV_WRITE, connect_io_cb,
	                     conn);
	if (conn->io == NULL || event_add(conn->io, NULL) != 0) {
		connect_done(conn, false, PV_ERR_INTERNAL, "cannot watch postgres socket");
		return;
	}
}

static void connected(struct pv_pg_conn *conn);

static void
connect_io_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_pg_conn *conn = arg;
	PostgresPollingStatusType st;

	/* One-shot event, already inactive; free it before libpq may close its descriptor. */
	event_free(conn->io);
	conn->io = NULL;
	st = PQconnectPoll(conn->pg);
	switch (st) {
	case PGRES_POLLING_OK: connected(conn); break;
	case PGRES_POLLING_READING:
	case PGRES_POLLING_WRITING: connect_wait(conn, st); break;
	case PGRES_POLLING_FAILED:
	default: connect_fail_pq(conn); break;
	}
}

static void
begin_connect(struct pv_pg_conn *conn)
{
	conn->state = ST_CONNECTING;
	conn->pg = PQconnectStartParams((const char *const *)conn->keys, (const char *const *)conn->vals, 0);
	if (conn->pg == NULL || PQstatus(conn->pg) == CONNECTION_BAD) {
		connect_fail_pq(conn);
		return;
	}
	PQsetNoticeProcessor(conn->pg, notice_cb, conn);
	/* libpq's documented first step after PQconnectStart: wait until the socket is writable. */
	connect_wait(conn, PGRES_POLLING_WRITING);
}

static void
setup_done(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	if (conn->pg == NULL) {
		/* The connection itself broke during setup. */
		connect_done(conn, false,
		             err->code == PV_ERR_PG_TIMEOUT ? PV_ERR_PG_TIMEOUT : PV_ERR_PG_CONNECT, "%s",
		             err->msg);
		return;
	}
	/* Best effort: a pooler may refuse SET; queries then simply run to completion server-side. */
	if (err != NULL)
		pv_log_debug("postgres session setup failed conninfo=%s msg=%s", pv_log_quote(conn->redacted),
		             pv_log_quote(err->msg));
	connect_done(conn, true, PV_OK, "%s", "");
}

static void
connected(struct pv_pg_conn *conn)
{
	struct pv_error err;

	conn->connect_seconds = pv_pg_now() - conn->started;
	if (PQsetnonblocking(conn->pg, 1) != 0) {
		connect_fail_pq(conn);
		return;
	}
	conn->state = ST_IDLE;
	if (PQserverVersion(conn->pg) >= 140000) {
		/* The connect deadline timer keeps running and covers this round trip. */
		if (pv_pg_query_start(conn, CHECK_INTERVAL_SQL, 0, NULL, 0, setup_done, NULL, &err)) {
			conn->state = ST_QUERY;
			return;
		}
		pv_log_debug("postgres session setup failed conninfo=%s msg=%s", pv_log_quote(conn->redacted),
		             pv_log_quote(err.msg));
	}
	connect_done(conn, true, PV_OK, "%s", "");
}

static void
kick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_pg_conn *conn = arg;

	event_free(conn->kick);
	conn->kick = NULL;
	if (conn->need_resolve) {
		conn->state = ST_RESOLVING;
		resolve_next(conn);
	} else {
		begin_connect(conn);
	}
}

/* Parse conninfo and build the keyword arrays; host lists are split for resolution. */
static bool
prepare_params(struct pv_pg_conn *conn, const char *conninfo, const char *password, struct pv_error *err)
{
	char *errmsg = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &errmsg);
	const char *host, *hostaddr, *port;

	if (opts == NULL) {
		char msg[PV_ERROR_MSG_MAX];
		pg_message(errmsg ? errmsg : "out of memory", msg, sizeof(msg));
		PQfreemem(errmsg);
		return pv_error_set(err, PV_ERR_PG_CONNECT, "invalid conninfo: %s", msg);
	}
	conn->keys = pv_calloc(1, sizeof(char *));
	conn->vals = pv_calloc(1, sizeof(char *));
	for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
		if (o->val != NULL)
			set_param(conn, o->keyword, o->val);
	PQconninfoFree(opts);

	if (password != NULL)
		set_param(conn, "password", password);
	if (get_param(conn, "application_name") == NULL)
		set_param(conn, "application_name", "pgvigil");
	set_param(conn, "fallback_application_name", "pgvigil");

	/* libpq would read PGHOST/PGHOSTADDR/PGPORT itself; resolve those names too. */
	host = get_param(conn, "host");
	if (host == NULL)
		host = getenv("PGHOST");
	hostaddr = get_param(conn, "hostaddr");
	if (hostaddr == NULL)
		hostaddr = getenv("PGHOSTADDR");
	port = get_param(conn, "port");
	if (port == NULL)
		port = getenv("PGPORT");
	if (host == NULL || (hostaddr != NULL && hostaddr[0] != '\0'))
		return true;

	conn->hosts = split_list(host, &conn->nhosts);
	for (size_t i = 0; i < conn->nhosts; i++)
		if (host_needs_resolve(conn->hosts[i]))
			conn->need_resolve = true;
	if (!conn->need_resolve)
		return true;
	if (conn->dns == NULL)
		return pv_error_set(err, PV_ERR_INTERNAL, "cannot resolve host names without an evdns base");
	if (port != NULL && port[0] != '\0')
		conn->ports = split_list(port, &conn->nports);
	if (conn->nports > 1 && conn->nports != conn->nhosts)
		return pv_error_set(err, PV_ERR_PG_CONNECT,
		                    "invalid conninfo: could not match %zu port numbers to %zu hosts",
		                    conn->nports, conn->nhosts);
	return true;
}

struct pv_pg_conn *
pv_pg_connect(struct event_base *base, struct evdns_base *dns, const char *conninfo, const char *password,
              double timeout, pv_pg_connect_cb cb, void *arg, struct pv_error *err)
{
	struct pv_pg_conn *conn = pv_calloc(1, sizeof(*conn));

	conn->base = base;
	conn->dns = dns;
	conn->cb = cb;
	conn->arg = arg;
	conn->timeout = timeout;
	conn->started = pv_pg_now();
	conn->state = ST_STARTING;
	conn->redacted = pv_pg_conninfo_redact(conninfo ? conninfo : "");
	if (!prepare_params(conn, conninfo ? conninfo : "", password, err)) {
		pv_pg_close(conn);
		return NULL;
	}
	conn->kick = event_new(base, -1, 0, kick_cb, conn);
	if (conn->kick == NULL) {
		pv_pg_close(conn);
		pv_error_set(err, PV_ERR_INTERNAL, "cannot create event");
		return NULL;
	}
	event_active(conn->kick, 0, 0);
	if (timeout > 0) {
		struct timeval tv;
		tv.tv_sec = (time_t)timeout;
		tv.tv_usec = (suseconds_t)((timeout - (double)tv.tv_sec) * 1e6);
		conn->timer = evtimer_new(base, connect_timer_cb, conn);
		if (conn->timer == NULL || evtimer_add(conn->timer, &tv) != 0) {
			pv_pg_close(conn);
			pv_error_set(err, PV_ERR_INTERNAL, "cannot create timer");
			return NULL;
		}
	}
	pv_log_debug("postgres connecting conninfo=%s timeout=%.1f", pv_log_quote(conn->redacted), timeout);
	return conn;
}

/*
 * PQcancel blocks (it connects and writes synchronously), and libpq 15 exposes neither the cancel
 * key nor a non-blocking cancel, so an operation in flight is abandoned by closing the connection.
 * The server notices within client_connection_check_interval (set in connected()) and aborts the
 * query; on servers older than 14 it notices when it next writes to the socket.
 */
void
pv_pg_close(struct pv_pg_conn *conn)
{
	if (conn == NULL)
		return;
	drop_connection(conn);
	free(conn->redacted);
	free_strv(conn->keys, conn->nparams);
	free_strv(conn->vals, conn->nparams);
	free_strv(conn->hosts, conn->nhosts);
	free_strv(conn->ports, conn->nports);
	free(conn->out_host);
	free(conn->out_hostaddr);
	free(conn->out_port);
	free(conn);
}

int
pv_pg_server_version(const struct pv_pg_conn *conn)
{
	return conn && conn->pg ? PQserverVersion(conn->pg) : 0;
}

double
pv_pg_connect_seconds(const struct pv_pg_conn *conn)
{
	return conn ? conn->connect_seconds : 0;
}

bool
pv_pg_idle(const struct pv_pg_conn *conn)
{
	return conn != NULL && conn->state == ST_IDLE && conn->pg != NULL &&
	       PQstatus(conn->pg) == CONNECTION_OK;
}

int
pv_pg_backend_pid(const struct pv_pg_conn *conn)
{
	return conn && conn->pg ? PQbackendPID(conn->pg) : 0;
}

const char *
pv_pg_resolved_hostaddr(const struct pv_pg_conn *conn)
{
	return conn ? conn->out_hostaddr : NULL;
}

/* ---- queries ---- */

static void
query_done(struct pv_pg_conn *conn)
{
	PGresult *res = conn->qres;
	struct pv_error err = conn->qerr;
	bool failed = conn->qfailed;
	pv_pg_query_cb cb = conn->qcb;
	void *arg = conn->qarg;

	conn->qres = NULL;
	if (conn->io) {
		event_free(conn->io);
		conn->io = NULL;
	}
	if (conn->qtimer) {
		event_free(conn->qtimer);
		conn->qtimer = NULL;
	}
	if (conn->state == ST_QUERY)
		conn->state = ST_IDLE;
	cb(conn, failed ? NULL : res, failed ? &err : NULL, arg);
	PQclear(res);
}

/* The connection itself failed mid-query: it is unusable from now on. */
static void
query_broken(struct pv_pg_conn *conn, enum pv_errcode code, const char *msg)
{
	conn->qfailed = true;
	conn->qerr.code = code;
	pv_strlcpy(conn->qerr.msg, msg, sizeof(conn->qerr.msg));
	drop_connection(conn);
	query_done(conn);
}

static void
query_broken_pq(struct pv_pg_conn *conn)
{
	char msg[PV_ERROR_MSG_MAX];
	pg_message(PQerrorMessage(conn->pg), msg, sizeof(msg));
	query_broken(conn, PV_ERR_PG_QUERY, msg);
}

static void
query_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_pg_conn *conn = arg;
	char msg[128];

	pv_log_debug("postgres query deadline passed, closing connection conninfo=%s backend_pid=%d",
	             pv_log_quote(conn->redacted), pv_pg_backend_pid(conn));
	snprintf(msg, sizeof(msg), "query timed out after %.1fs", conn->qtimeout);
	query_broken(conn, PV_ERR_PG_TIMEOUT, msg);
}

static bool
query_watch(struct pv_pg_conn *conn)
{
	short what = EV_READ | EV_PERSIST | (conn->flushing ? EV_WRITE : 0);

	if (conn->io != NULL && event_get_events(conn->io) == what)
		return true;
	if (conn->io)
		event_free(conn->io);
	conn->io = event_new(conn->base, PQsocket(conn->pg), what, query_io_cb, conn);
	return conn->io != NULL && event_add(conn->io, NULL) == 0;
}

/* Returns false when the connection broke and the query was reported (conn may be gone). */
static bool
collect(struct pv_pg_conn *conn, PGresult *res)
{
	switch (PQresultStatus(res)) {
	case PGRES_FATAL_ERROR:
	case PGRES_BAD_RESPONSE:
	case PGRES_NONFATAL_ERROR:
		if (!conn->qfailed) {
			const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
			conn->qfailed = true;
			conn->qerr.code = PV_ERR_PG_QUERY;
			if (primary != NULL)
				pv_strlcpy(conn->qerr.msg, primary, sizeof(conn->qerr.msg));
			else
				pg_message(PQresultErrorMessage(res), conn->qerr.msg, sizeof(conn->qerr.msg));
		}
		PQclear(res);
		break;
	case PGRES_COPY_IN:
	case PGRES_COPY_OUT:
	case PGRES_COPY_BOTH:
		/* No SQL of ours uses COPY; treat it as a protocol misuse rather than hang. */
		PQclear(res);
		query_broken(conn, PV_ERR_PG_QUERY, "unexpected COPY in query result");
		return false;
	default:
		if (conn->qres)
			PQclear(conn->qres);
		conn->qres = res;
		break;
	}
	return true;
}

static void
query_io_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_pg_conn *conn = arg;

	if ((what & EV_READ) && !PQconsumeInput(conn->pg)) {
		query_broken_pq(conn);
		return;
	}
	if (conn->flushing) {
		int r = PQflush(conn->pg);
		if (r < 0) {
			query_broken_pq(conn);
			return;
		}
		conn->flushing = r == 1;
	}
	while (!PQisBusy(conn->pg)) {
		PGresult *res = PQgetResult(conn->pg);
		if (res == NULL) {
			query_done(conn);
			return;
		}
		if (!collect(conn, res))
			return;
	}
	if (!query_watch(conn))
		query_broken(conn, PV_ERR_INTERNAL, "cannot watch postgres socket");
}

bool
pv_pg_query_start(struct pv_pg_conn *conn, const char *sql, int nparams, const char *const *params,
                  double timeout, pv_pg_query_cb cb, void *arg, struct pv_error *err)
{
	int r;

	if (conn == NULL || conn->pg == NULL || conn->state != ST_IDLE)
		return pv_error_set(err, PV_ERR_PG_QUERY, "connection is %s",
		                    conn && conn->state == ST_QUERY ? "busy" : "not ready");
	if (!PQsendQueryParams(conn->pg, sql, nparams, NULL, params, NULL, NULL, 0)) {
		char msg[PV_ERROR_MSG_MAX];
		pg_message(PQerrorMessage(conn->pg), msg, sizeof(msg));
		return pv_error_set(err, PV_ERR_PG_QUERY, "%s", msg);
	}
	r = PQflush(conn->pg);
	if (r < 0) {
		char msg[PV_ERROR_MSG_MAX];
		pg_message(PQerrorMessage(conn->pg), msg, sizeof(msg));
		return pv_error_set(err, PV_ERR_PG_QUERY, "%s", msg);
	}
	conn->state = ST_QUERY;
	conn->flushing = r == 1;
	conn->qfailed = false;
	pv_error_clear(&conn->qerr);
	conn->qres = NULL;
	conn->qcb = cb;
	conn->qarg = arg;
	conn->qtimeout = timeout;
	if (!query_watch(conn)) {
		conn->state = ST_IDLE;
		return pv_error_set(err, PV_ERR_INTERNAL, "cannot watch postgres socket");
	}
	if (timeout > 0) {
		struct timeval tv;
		tv.tv_sec = (time_t)timeout;
		tv.tv_usec = (suseconds_t)((timeout - (double)tv.tv_sec) * 1e6);
		conn->qtimer = evtimer_new(conn->base, query_timer_cb, conn);
		if (conn->qtimer == NULL || evtimer_add(conn->qtimer, &tv) != 0) {
			/* Sent already: the connection cannot be reused in a known state. */
			drop_connection(conn);
			return pv_error_set(err, PV_ERR_INTERNAL, "cannot create timer");
		}
	}
	return true;
}
