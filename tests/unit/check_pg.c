/* Unit tests for src/pg: async connect, deadlines, queries and health against a throwaway PostgreSQL. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <jansson.h>

#include "config/config.h"
#include "pg/pg.h"
#include "pg/pg_internal.h"
#include "util/mem.h"

#include "testlib.h"

/* Set in main() before the suite forks: one cluster for every test. */
static struct pv_test_cluster cluster;

/* ---- fake servers ---- */

static int
listen_tcp(int *port)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(fd, 0);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(fd, 16), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	*port = ntohs(sa.sin_port);
	return fd;
}

/* A port nobody listens on: bound and closed again. */
static int
closed_port(void)
{
	int port;
	int fd = listen_tcp(&port);
	close(fd);
	return port;
}

/*
 * A server that accepts TCP connections. In "silent" mode it never reads or writes. Otherwise it
 * refuses SSL/GSS negotiation with 'N' like a plain server, reads the startup packet, then stalls.
 */
struct fake_pg {
	struct event_base *base;
	int lfd;
	int port;
	bool silent;
	struct event *accept_ev;
	int fds[8];
	struct event *evs[8];
	int nfds;
	bool got_startup;
};

static void
fake_pg_read(evutil_socket_t fd, short what, void *arg)
{
	struct fake_pg *f = arg;
	unsigned char buf[1024];
	ssize_t n = read(fd, buf, sizeof(buf));
	uint32_t len, code;

	if (n < 8)
		return;
	memcpy(&len, buf, 4);
	memcpy(&code, buf + 4, 4);
	len = ntohl(len);
	code = ntohl(code);
	if (len == 8 && (code == 80877103 || code == 80877104)) {
		ssize_t w = write(fd, "N", 1);
		ck_assert_int_eq(w, 1);
	} else if (code == 196608) {
		f->got_startup = true; /* protocol 3.0 startup: now say nothing, ever */
	}
}

static void
fake_pg_accept(evutil_socket_t lfd, short what, void *arg)
{
	struct fake_pg *f = arg;
	int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0 || f->nfds == 8) {
		if (fd >= 0)
			close(fd);
		return;
	}
	f->fds[f->nfds] = fd;
	if (!f->silent) {
		f->evs[f->nfds] = event_new(f->base, fd, EV_READ | EV_PERSIST, fake_pg_read, f);
		event_add(f->evs[f->nfds], NULL);
	}
	f->nfds++;
}

static void
fake_pg_start(struct fake_pg *f, struct event_base *base, bool silent)
{
	memset(f, 0, sizeof(*f));
	f->base = base;
	f->silent = silent;
	f->lfd = listen_tcp(&f->port);
	f->accept_ev = event_new(base, f->lfd, EV_READ | EV_PERSIST, fake_pg_accept, f);
	event_add(f->accept_ev, NULL);
}

static void
fake_pg_stop(struct fake_pg *f)
{
	for (int i = 0; i < f->nfds; i++) {
		if (f->evs[i])
			event_free(f->evs[i]);
		close(f->fds[i]);
	}
	event_free(f->accept_ev);
	close(f->lfd);
}

/* ---- result collectors ---- */

struct health_wait {
	struct event_base *base;
	int calls;
	double finished;
	struct pv_pg_health r;
};

static void
health_cb(const struct pv_pg_health *r, void *arg)
{
	struct health_wait *w = arg;
	w->calls++;
	w->finished = pv_pg_now();
	w->r = *r;
	event_base_loopbreak(w->base);
}

/* Run one health probe to completion and return its result. */
static struct health_wait
run_health(struct pv_test_loop *l, const char *conninfo, const char *password, double timeout)
{
	struct health_wait w;
	memset(&w, 0, sizeof(w));
	w.base = l->base;
	ck_assert_ptr_nonnull(
	        pv_pg_health_start(l->base, l->dns, conninfo, password, timeout, health_cb, &w));
	ck_assert_int_eq(w.calls, 0); /* never synchronous */
	pv_test_loop_run(l, timeout + 5);
	ck_assert_int_eq(w.calls, 1);
	return w;
}

struct connect_wait {
	struct event_base *base;
	int calls;
	bool ok;
	double finished;
	struct pv_error err;
};

static void
connect_cb(struct pv_pg_conn *conn, bool ok, const struct pv_error *err, void *arg)
{
	struct connect_wait *w = arg;
	w->calls++;
	w->ok = ok;
	w->finished = pv_pg_now();
	if (err)
		w->err = *err;
	event_base_loopbreak(w->base);
}

static struct pv_pg_conn *
connect_sync(struct pv_test_loop *l, const char *conninfo, const char *password, double timeout,
             struct connect_wait *w)
{
	struct pv_error err;
	struct pv_pg_conn *conn;

	memset(w, 0, sizeof(*w));
	w->base = l->base;
	conn = pv_pg_connect(l->base, l->dns, conninfo, password, timeout, connect_cb, w, &err);
	ck_assert_msg(conn != NULL, "pv_pg_connect: %s", err.msg);
	pv_test_loop_run(l, timeout + 5);
	ck_assert_int_eq(w->calls, 1);
	return conn;
}

struct query_wait {
	struct event_base *base;
	int calls;
	bool ok;
	double finished;
	char value[256];
	struct pv_error err;
};

static void
query_cb(struct pv_pg_conn *conn, const PGresult *res, const struct pv_error *err, void *arg)
{
	struct query_wait *w = arg;
	w->calls++;
	w->finished = pv_pg_now();
	w->ok = err == NULL;
	if (err)
		w->err = *err;
	else if (PQntuples(res) > 0)
		pv_strlcpy(w->value, PQgetvalue(res, 0, 0), sizeof(w->value));
	event_base_loopbreak(w->base);
}

static void
query_sync(struct pv_test_loop *l, struct pv_pg_conn *conn, const char *sql, const char *param,
           double timeout, struct query_wait *w)
{
	struct pv_error err;
	const char *params[1] = {param};

	memset(w, 0, sizeof(*w));
	w->base = l->base;
	ck_assert_msg(pv_pg_query_start(conn, sql, param ? 1 : 0, param ? params : NULL, timeout, query_cb, w,
	                                &err),
	              "query: %s", err.msg);
	pv_test_loop_run(l, timeout > 0 ? timeout + 5 : 10);
	ck_assert_int_eq(w->calls, 1);
}

static char *
tcp_conninfo(const char *host, int port)
{
	return pv_asprintf("host=%s port=%d dbname=demo user=vigil sslmode=disable", host, port);
}

/* ---- tests ---- */

START_TEST(test_pg__health_tcp_password)
{
	struct pv_test_loop l;
	struct health_wait w;
	char *ci = tcp_conninfo("127.0.0.1", cluster.port);

	pv_test_loop_init(&l, false);
	w = run_health(&l, ci, "vigil-secret", 10);
	ck_assert_msg(w.r.ok, "health failed: %s", w.r.error.msg);
	ck_assert_int_ge(w.r.server_version_num, 150000);
	ck_assert(strncmp(w.r.server_version, "15", 2) >= 0);
	ck_assert(w.r.connect_seconds > 0 && w.r.connect_seconds < 10);
	ck_assert(w.r.query_seconds > 0 && w.r.query_seconds < 10);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pg__health_unix_socket)
{
	struct pv_test_loop l;
	struct health_wait w;
	char *ci = pv_asprintf("host=%s port=%d dbname=demo user=vigil", cluster.sock, cluster.port);

	pv_test_loop_init(&l, false);
	w = run_health(&l, ci, NULL, 10);
	ck_assert_msg(w.r.ok, "health failed: %s", w.r.error.msg);
	ck_assert_int_ge(w.r.server_version_num, 150000);
	ck_assert(w.r.server_version[0] != '\0');
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pg__health_uri_form)
{
	struct pv_test_loop l;
	struct health_wait w;
	char *ci = pv_asprintf("postgresql://vigil:vigil-secret@127.0.0.1:%d/demo?sslmode=disable",
	                       cluster.port);

	pv_test_loop_init(&l, false);
	w = run_health(&l, ci, NULL, 10);
	ck_assert_msg(w.r.ok, "health failed: %s", w.r.error.msg);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

/* localhost is a name: evdns (from /etc/hosts) resolves it and libpq gets it as hostaddr. */
START_TEST(test_pg__localhost_resolved_with_evdns)
{
	struct pv_test_loop l;
	struct connect_wait w;
	struct pv_pg_conn *conn;
	char *ci = tcp_conninfo("localhost", cluster.port);

	pv_test_loop_init(&l, true);
	conn = connect_sync(&l, ci, "vigil-secret", 10, &w);
	ck_assert_msg(w.ok, "connect failed: %s", w.err.msg);
	ck_assert_ptr_nonnull(pv_pg_resolved_hostaddr(conn));
	ck_assert_ptr_nonnull(strstr(pv_pg_resolved_hostaddr(conn), "127.0.0.1"));
	ck_assert_int_ge(pv_pg_server_version(conn), 150000);
	ck_assert(pv_pg_connect_seconds(conn) > 0);
	pv_pg_close(conn);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pg__hostname_via_dns_server)
{
	struct pv_test_loop l;
	struct pv_test_dns d;
	struct health_wait w;
	char *ci = tcp_conninfo("db.pgvigil.test", cluster.port);

	pv_test_loop_init(&l, false);
	pv_test_dns_start(&d, l.base, l.dns);
	w = run_health(&l, ci, "vigil-secret", 10);
	ck_assert_msg(w.r.ok, "health failed: %s", w.r.error.msg);
	ck_assert_int_ge(d.queries, 1);
	pv_test_dns_stop(&d);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

/* Host and port lists: the first host is refused, libpq moves on to the second. */
START_TEST(test_pg__host_list_falls_through)
{
	struct pv_test_loop l;
	struct pv_test_dns d;
	struct connect_wait w;
	struct pv_pg_conn *conn;
	char *ci = pv_asprintf("host=db.pgvigil.test,%s port=%d,%d dbname=demo user=vigil", cluster.sock,
	                       closed_port(), cluster.port);

	pv_test_loop_init(&l, false);
	pv_test_dns_start(&d, l.base, l.dns);
	conn = connect_sync(&l, ci, NULL, 10, &w);
	ck_assert_msg(w.ok, "connect failed: %s", w.err.msg);
	ck_assert_str_eq(pv_pg_resolved_hostaddr(conn), "127.0.0.1,");
	pv_pg_close(conn);
	pv_test_dns_stop(&d);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pg__wrong_password)
{
	struct pv_test_loop l;
	struct health_wait w;
	char *ci = tcp_conninfo("127.0.0.1", cluster.port);

	pv_test_loop_init(&l, false);
	w = run_health(&l, ci, "not-the-password", 10);
	ck_assert(!w.r.ok);
	ck_assert_int_eq(w.r.error.code, PV_ERR_PG_CONNECT);
	ck_assert_msg(strstr(w.r.error.msg, "password authentication failed") != NULL, "msg: %s",
	              w.r.error.msg);
	ck_assert_ptr_null(strchr(w.r.error.msg, '\n'));
	ck_assert_ptr_null(strstr(w.r.error.msg, "not-the-password"));
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pg__connection_refused)
{
	struct pv_test_loop l;
	struct health_wait w;
	char *ci = tcp_conninfo("127.0.0.1", closed_port());
	double t0;

	pv_test_loop_init(&l, false);
	t0 = pv_pg_now();
	w = run_health(&l, ci, "vigil-secret", 10);
	ck_assert(!w.r.ok);
	ck_assert_int_eq(w.r.error.code, PV_ERR_PG_CONNECT);
	ck_assert_msg(strstr(w.r.error.msg, "Connection refused") != NULL, "msg: %s", w.r.error.msg);
	ck_assert(w.finished - t0 < 1.0);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pg__unknown_host)
{
	struct pv_test_loop l;
	struct pv_test_dns d;
	struct health_wait w;
	char *ci = tcp_conninfo("nonexistent.invalid", cluster.port);
	double t0;

	pv_test_loop_init(&l, false);
	pv_test_dns_start(&d, l.base, l.dns);
	t0 = pv_pg_now();
	w = run_health(&l, ci, "vigil-secret", 10);
	ck_assert(!w.r.ok);
	ck_assert_int_eq(w.r.error.code, PV_ERR_PG_CONNECT);
	ck_assert_msg(strstr(w.r.error.msg, "could not translate host name \"nonexistent.invalid\"") != NULL,
	              "msg: %s", w.r.error.msg);
	ck_assert(w.finished - t0 < 2.0);
	pv_test_dns_stop(&d);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

/* The deadline fires on time while the rest of the loop keeps running. */
static void
assert_timeout_without_stall(struct pv_test_loop *l, const char *conninfo, double timeout)
{
	struct connect_wait w;
	struct pv_error err;
	struct pv_pg_conn *conn;
	double t0 = pv_pg_now(), elapsed;
	char expect[64];

	memset(&w, 0, sizeof(w));
	w.base = l->base;
	pv_test_loop_start_ticker(l);
	conn = pv_pg_connect(l->base, l->dns, conninfo, "vigil-secret", timeout, connect_cb, &w, &err);
	ck_assert_ptr_nonnull(conn);
	pv_test_loop_run(l, timeout + 3);
	elapsed = w.finished - t0;
	ck_assert_int_eq(w.calls, 1);
	ck_assert(!w.ok);
	ck_assert_int_eq(w.err.code, PV_ERR_PG_TIMEOUT);
	snprintf(expect, sizeof(expect), "connection timed out after %.1fs", timeout);
	ck_assert_str_eq(w.err.msg, expect);
	ck_assert_msg(elapsed >= timeout - 0.1 && elapsed <= timeout + 1.0, "elapsed %.3f", elapsed);
	ck_assert_msg(l->ticks >= 8, "ticks %d", l->ticks);
	ck_assert_msg(l->max_gap < 0.3, "max gap %.3f", l->max_gap);
	pv_pg_close(conn);
}

START_TEST(test_pg__accept_never_answers)
{
	struct pv_test_loop l;
	struct fake_pg f;
	char *ci;

	pv_test_loop_init(&l, false);
	fake_pg_start(&f, l.base, true);
	ci = pv_asprintf("host=127.0.0.1 port=%d dbname=demo user=vigil", f.port);
	assert_timeout_without_stall(&l, ci, 1.0);
	ck_assert_int_ge(f.nfds, 1);
	fake_pg_stop(&f);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pg__stall_after_startup)
{
	struct pv_test_loop l;
	struct fake_pg f;
	char *ci;

	pv_test_loop_init(&l, false);
	fake_pg_start(&f, l.base, false);
	/* sslmode=prefer: the SSLRequest is refused with 'N' first, then the startup packet stalls. */
	ci = pv_asprintf("host=127.0.0.1 port=%d dbname=demo user=vigil sslmode=prefer", f.port);
	assert_timeout_without_stall(&l, ci, 1.0);
	ck_assert(f.got_startup);
	fake_pg_stop(&f);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pg__dns_never_answers)
{
	struct pv_test_loop l;
	struct pv_test_dns d;
	char *ci;

	pv_test_loop_init(&l, false);
	pv_test_dns_start(&d, l.base, l.dns);
	ci = tcp_conninfo("silent.pgvigil.test", cluster.port);
	assert_timeout_without_stall(&l, ci, 1.0);
	ck_assert_int_ge(d.queries, 1);
	pv_test_dns_stop(&d);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pg__health_timeout)
{
	struct pv_test_loop l;
	struct fake_pg f;
	struct health_wait w;
	char *ci;

	pv_test_loop_init(&l, false);
	fake_pg_start(&f, l.base, false);
	ci = pv_asprintf("host=127.0.0.1 port=%d dbname=demo user=vigil", f.port);
	w = run_health(&l, ci, "vigil-secret", 1.0);
	ck_assert(!w.r.ok);
	ck_assert_int_eq(w.r.error.code, PV_ERR_PG_TIMEOUT);
	ck_assert_str_eq(w.r.error.msg, "connection timed out after 1.0s");
	fake_pg_stop(&f);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

/* Count of pg_stat_activity rows for pid, as seen from another session. */
static int
backend_count(struct pv_test_loop *l, struct pv_pg_conn *observer, int pid, const char *extra)
{
	struct query_wait q;
	char pidbuf[16];
	char *sql = pv_asprintf("SELECT count(*) FROM pg_stat_activity WHERE pid = $1%s", extra);

	snprintf(pidbuf, sizeof(pidbuf), "%d", pid);
	query_sync(l, observer, sql, pidbuf, 5, &q);
	free(sql);
	ck_assert_msg(q.ok, "pg_stat_activity: %s", q.err.msg);
	return atoi(q.value);
}

START_TEST(test_pg__query_deadline_ends_backend)
{
	struct pv_test_loop l;
	struct connect_wait cw;
	struct query_wait q;
	struct pv_pg_conn *conn, *observer;
	char *ci = pv_asprintf("host=%s port=%d dbname=demo user=vigil", cluster.sock, cluster.port);
	struct pv_error err;
	double t0, deadline_at;
	int pid, n = 1;

	pv_test_loop_init(&l, false);
	observer = connect_sync(&l, ci, NULL, 10, &cw);
	ck_assert_msg(cw.ok, "%s", cw.err.msg);
	conn = connect_sync(&l, ci, NULL, 10, &cw);
	ck_assert_msg(cw.ok, "%s", cw.err.msg);
	pid = pv_pg_backend_pid(conn);
	ck_assert_int_gt(pid, 0);

	memset(&q, 0, sizeof(q));
	q.base = l.base;
	t0 = pv_pg_now();
	ck_assert(pv_pg_query_start(conn, "SELECT pg_sleep(5)", 0, NULL, 1.5, query_cb, &q, &err));
	/* While it sleeps the backend is active (so the check below can tell "gone" apart). The
	 * observer may ask before the server has read the query: look again for up to a second. */
	for (int i = 0; i < 20 && backend_count(&l, observer, pid, " AND state = 'active'") != 1; i++)
		usleep(50 * 1000);
	ck_assert_int_eq(backend_count(&l, observer, pid, " AND state = 'active'"), 1);
	ck_assert_int_eq(q.calls, 0);
	pv_test_loop_run(&l, 5);
	ck_assert_int_eq(q.calls, 1);
	ck_assert(!q.ok);
	ck_assert_int_eq(q.err.code, PV_ERR_PG_TIMEOUT);
	ck_assert_str_eq(q.err.msg, "query timed out after 1.5s");
	ck_assert_msg(q.finished - t0 >= 1.45 && q.finished - t0 < 2.5, "elapsed %.3f", q.finished - t0);
	deadline_at = q.finished;

	/* The connection is unusable afterwards. */
	ck_assert(!pv_pg_query_start(conn, "SELECT 1", 0, NULL, 1, query_cb, &q, &err));

	/* The server aborts the sleep well before its 5 s are up. */
	while (pv_pg_now() - deadline_at < 3.5) {
		n = backend_count(&l, observer, pid, "");
		if (n == 0)
			break;
		usleep(100 * 1000);
	}
	ck_assert_msg(n == 0, "backend %d still present %.1fs after the deadline", pid,
	              pv_pg_now() - deadline_at);
	ck_assert(pv_pg_now() - t0 < 5.0);
	pv_pg_close(conn);
	pv_pg_close(observer);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pg__query_error_keeps_connection)
{
	struct pv_test_loop l;
	struct connect_wait cw;
	struct query_wait q;
	struct pv_pg_conn *conn;
	char *ci = pv_asprintf("host=%s port=%d dbname=demo user=vigil", cluster.sock, cluster.port);

	pv_test_loop_init(&l, false);
	conn = connect_sync(&l, ci, NULL, 10, &cw);
	ck_assert_msg(cw.ok, "%s", cw.err.msg);
	query_sync(&l, conn, "SELECT 1/0", NULL, 5, &q);
	ck_assert(!q.ok);
	ck_assert_int_eq(q.err.code, PV_ERR_PG_QUERY);
	ck_assert_str_eq(q.err.msg, "division by zero");
	query_sync(&l, conn, "SELECT $1::int + 1", "41", 5, &q);
	ck_assert(q.ok);
	ck_assert_str_eq(q.value, "42");
	/* The session was started with our application_name. */
	query_sync(&l, conn, "SELECT current_setting('application_name')", NULL, 5, &q);
	ck_assert_str_eq(q.value, "pgvigil");
	pv_pg_close(conn);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

/* Close at 200 ms, then keep the loop running past the deadline: the callback must never run. */
static void
close_cb(evutil_socket_t fd, short what, void *arg)
{
	pv_pg_close(arg);
}

static void
assert_close_silences(struct pv_test_loop *l, const char *conninfo)
{
	struct connect_wait w;
	struct pv_error err;
	struct pv_pg_conn *conn;
	struct timeval tv = pv_test_tv(0.2);
	struct event *ev;

	memset(&w, 0, sizeof(w));
	w.base = l->base;
	conn = pv_pg_connect(l->base, l->dns, conninfo, NULL, 1.0, connect_cb, &w, &err);
	ck_assert_ptr_nonnull(conn);
	ev = evtimer_new(l->base, close_cb, conn);
	evtimer_add(ev, &tv);
	pv_test_loop_run(l, 1.6);
	ck_assert_int_eq(w.calls, 0);
	event_free(ev);
}

START_TEST(test_pg__close_during_connect)
{
	struct pv_test_loop l;
	struct fake_pg f;
	char *ci;

	pv_test_loop_init(&l, false);
	fake_pg_start(&f, l.base, false);
	ci = pv_asprintf("host=127.0.0.1 port=%d dbname=demo user=vigil", f.port);
	assert_close_silences(&l, ci);
	ck_assert(f.got_startup);
	fake_pg_stop(&f);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pg__close_during_dns)
{
	struct pv_test_loop l;
	struct pv_test_dns d;
	char *ci;

	pv_test_loop_init(&l, false);
	pv_test_dns_start(&d, l.base, l.dns);
	ci = tcp_conninfo("silent.pgvigil.test", cluster.port);
	assert_close_silences(&l, ci);
	ck_assert_int_ge(d.queries, 1);
	pv_test_dns_stop(&d);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pg__close_during_query)
{
	struct pv_test_loop l;
	struct connect_wait cw;
	struct query_wait q;
	struct pv_pg_conn *conn;
	struct pv_error err;
	struct timeval tv = pv_test_tv(0.2);
	struct event *ev;
	char *ci = pv_asprintf("host=%s port=%d dbname=demo user=vigil", cluster.sock, cluster.port);

	pv_test_loop_init(&l, false);
	conn = connect_sync(&l, ci, NULL, 10, &cw);
	ck_assert_msg(cw.ok, "%s", cw.err.msg);
	memset(&q, 0, sizeof(q));
	q.base = l.base;
	ck_assert(pv_pg_query_start(conn, "SELECT pg_sleep(3)", 0, NULL, 1.0, query_cb, &q, &err));
	ev = evtimer_new(l.base, close_cb, conn);
	evtimer_add(ev, &tv);
	pv_test_loop_run(&l, 1.5);
	ck_assert_int_eq(q.calls, 0);
	event_free(ev);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

static void
cancel_cb(evutil_socket_t fd, short what, void *arg)
{
	pv_pg_health_cancel(arg);
}

START_TEST(test_pg__health_cancel)
{
	struct pv_test_loop l;
	struct fake_pg f;
	struct health_wait w;
	struct pv_pg_health_op *op;
	struct timeval tv = pv_test_tv(0.2);
	struct event *ev;
	char *ci;

	pv_test_loop_init(&l, false);
	fake_pg_start(&f, l.base, true);
	ci = pv_asprintf("host=127.0.0.1 port=%d dbname=demo user=vigil", f.port);
	memset(&w, 0, sizeof(w));
	w.base = l.base;
	op = pv_pg_health_start(l.base, l.dns, ci, NULL, 1.0, health_cb, &w);
	ev = evtimer_new(l.base, cancel_cb, op);
	evtimer_add(ev, &tv);
	pv_test_loop_run(&l, 1.6);
	ck_assert_int_eq(w.calls, 0);
	pv_pg_health_cancel(NULL);
	event_free(ev);
	fake_pg_stop(&f);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pg__bad_conninfo)
{
	struct pv_test_loop l;
	struct pv_error err;
	struct health_wait w;

	pv_test_loop_init(&l, false);
	ck_assert_ptr_null(pv_pg_connect(l.base, l.dns, "host=x nosuchkey=1 password=hunter2", NULL, 1,
	                                 connect_cb, NULL, &err));
	ck_assert_int_eq(err.code, PV_ERR_PG_CONNECT);
	ck_assert_msg(strstr(err.msg, "invalid conninfo") != NULL, "msg: %s", err.msg);
	ck_assert_ptr_null(strstr(err.msg, "hunter2"));
	/* The health probe reports it through its callback, from the loop. */
	w = run_health(&l, "host=x nosuchkey=1", NULL, 1);
	ck_assert(!w.r.ok);
	ck_assert_int_eq(w.r.error.code, PV_ERR_PG_CONNECT);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pg__conninfo_redact)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
	        {"host=db password=secret user=x", "host=db password=**** user=x"},
	        {"password=secret", "password=****"},
	        {"host=db password = 'se cret\\' x' user=x", "host=db password=**** user=x"},
	        {"host=db sslpassword=k dbname=d", "host=db sslpassword=**** dbname=d"},
	        {"host=db mypassword=keep", "host=db mypassword=keep"},
	        {"host=db user=x", "host=db user=x"},
	        {"", ""},
	        {"password='unterminated", "password=****"},
	        {"postgresql://u:secret@db:5432/x", "postgresql://u:****@db:5432/x"},
	        {"postgres://u@db/x?password=secret&sslmode=require",
	         "postgres://u@db/x?password=****&sslmode=require"},
	        {"postgresql://u:p@db/x?sslmode=require&password=s",
	         "postgresql://u:****@db/x?sslmode=require&password=****"},
	        {"postgresql://db/x", "postgresql://db/x"},
	        {"postgresql:///x?host=/run/postgresql", "postgresql:///x?host=/run/postgresql"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *r = pv_pg_conninfo_redact(cases[i].in);
		ck_assert_msg(strcmp(r, cases[i].out) == 0, "case %zu: got \"%s\" want \"%s\"", i, r,
		              cases[i].out);
		free(r);
	}
	{
		char *r = pv_pg_conninfo_redact(NULL);
		ck_assert_str_eq(r, "");
		free(r);
	}
}
END_TEST

/* ---- extended health: schema checks and error classes ---- */

struct health_opts_wait {
	struct event_base *base;
	int calls;
	struct pv_pg_health r;
	json_t *missing; /* a copy: the result's array is valid only during the callback */
};

static void
health_opts_cb(const struct pv_pg_health *r, void *arg)
{
	struct health_opts_wait *w = arg;
	w->calls++;
	w->r = *r;
	w->r.missing_critical_tables = NULL;
	w->missing = r->missing_critical_tables ? json_deep_copy(r->missing_critical_tables) : NULL;
	event_base_loopbreak(w->base);
}

static struct health_opts_wait
run_health_opts(struct pv_test_loop *l, const struct pv_pg_health_opts *o)
{
	struct health_opts_wait w;
	memset(&w, 0, sizeof(w));
	w.base = l->base;
	ck_assert_ptr_nonnull(pv_pg_health_start_opts(l->base, l->dns, o, health_opts_cb, &w));
	ck_assert_int_eq(w.calls, 0);
	pv_test_loop_run(l, o->timeout + 5);
	ck_assert_int_eq(w.calls, 1);
	return w;
}

START_TEST(test_pg__health_schema_ok)
{
	struct pv_test_loop l;
	struct health_opts_wait w;
	char *crit[] = {"users", "public.group_trips", "\"private_bookings\"", " PUBLIC . USERS "};
	struct pv_strv cv = {crit, 4};
	struct pv_pg_health_opts o = {
	        .password = "vigil-secret", .timeout = 10, .expected_tables = 4, .critical_tables = &cv};
	char *ci = tcp_conninfo("127.0.0.1", cluster.port);

	o.conninfo = ci;
	pv_test_loop_init(&l, false);
	w = run_health_opts(&l, &o);
	ck_assert_msg(w.r.ok, "health failed: %s", w.r.error.msg);
	ck_assert(w.r.connected);
	ck_assert_ptr_null(w.r.error_class);
	ck_assert_int_eq(w.r.tables, 4);
	ck_assert_int_gt(w.r.database_size_bytes, 1000000);
	ck_assert_int_ge(w.r.server_version_num, 100000);
	ck_assert(w.r.server_version[0] != '\0');
	ck_assert_int_eq(json_array_size(w.missing), 0);
	json_decref(w.missing);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pg__health_schema_mismatch)
{
	struct pv_test_loop l;
	struct health_opts_wait w;
	char *crit[] = {"users", "missing_one", "nosuch.users", "Users_Typo", "a", "b", "c", "d"};
	struct pv_strv cv = {crit, 8};
	struct pv_pg_health_opts o = {.timeout = 10, .expected_tables = 67, .critical_tables = &cv};
	char *ci = pv_asprintf("host=%s port=%d dbname=demo user=vigil", cluster.sock, cluster.port);

	o.conninfo = ci;
	pv_test_loop_init(&l, false);
	w = run_health_opts(&l, &o);
	ck_assert(!w.r.ok);
	ck_assert(w.r.connected);
	ck_assert_str_eq(w.r.error_class, "schema");
	ck_assert_str_eq(w.r.error.msg, "expected 67 tables, found 4; critical tables missing: missing_one, "
	                                "nosuch.users, Users_Typo, a, b and 2 more");
	ck_assert_int_eq(w.r.tables, 4);
	ck_assert_int_gt(w.r.database_size_bytes, 0);
	ck_assert_int_eq(json_array_size(w.missing), 7);
	ck_assert_str_eq(json_string_value(json_array_get(w.missing, 2)), "Users_Typo");
	json_decref(w.missing);

	/* Only the count: the cause names nothing else. */
	o.critical_tables = NULL;
	o.expected_tables = 2;
	w = run_health_opts(&l, &o);
	ck_assert_str_eq(w.r.error.msg, "expected 2 tables, found 4");
	ck_assert_int_eq(json_array_size(w.missing), 0);
	json_decref(w.missing);
	free(ci);
	pv_test_loop_free(&l);
}
END_TEST

/* Each way a connection fails has its own class, and the message keeps libpq's or the server's words. */
START_TEST(test_pg__health_error_classes)
{
	struct pv_test_loop l;
	struct pv_test_dns d;
	struct fake_pg f;
	struct health_opts_wait w;
	struct pv_pg_health_opts o = {.password = "vigil-secret", .timeout = 5, .expected_tables = -1};
	char *ci;

	pv_test_loop_init(&l, false);
	pv_test_dns_start(&d, l.base, l.dns);
	fake_pg_start(&f, l.base, true);

	ci = tcp_conninfo("127.0.0.1", cluster.port);
	o.conninfo = ci;
	o.password = "wrong";
	w = run_health_opts(&l, &o);
	ck_assert_str_eq(w.r.error_class, "auth");
	ck_assert(!w.r.connected);
	ck_assert_msg(strstr(w.r.error.msg, "password authentication failed for user \"vigil\""), "%s",
	              w.r.error.msg);
	o.password = "vigil-secret";
	free(ci);

	ci = pv_asprintf("host=127.0.0.1 port=%d dbname=demo user=vigil sslmode=require", cluster.port);
	o.conninfo = ci;
	w = run_health_opts(&l, &o);
	ck_assert_msg(strcmp(w.r.error_class, "tls") == 0, "%s: %s", w.r.error_class, w.r.error.msg);
	ck_assert_msg(strstr(w.r.error.msg, "SSL"), "%s", w.r.error.msg);
	free(ci);

	ci = tcp_conninfo("127.0.0.1", closed_port());
	o.conninfo = ci;
	w = run_health_opts(&l, &o);
	ck_assert_str_eq(w.r.error_class, "refused");
	ck_assert_msg(strstr(w.r.error.msg, "Connection refused"), "%s", w.r.error.msg);
	free(ci);

	ci = pv_asprintf("host=%s/nowhere port=%d dbname=demo user=vigil", cluster.dir, cluster.port);
	o.conninfo = ci;
	w = run_health_opts(&l, &o);
	ck_assert_msg(strcmp(w.r.error_class, "refused") == 0, "%s: %s", w.r.error_class, w.r.error.msg);
	free(ci);

	ci = tcp_conninfo("nonexistent.invalid", cluster.port);
	o.conninfo = ci;
	w = run_health_opts(&l, &o);
	ck_assert_str_eq(w.r.error_class, "dns");
	ck_assert_msg(strstr(w.r.error.msg, "nonexistent.invalid"), "%s", w.r.error.msg);
	free(ci);

	ci = pv_asprintf("host=127.0.0.1 port=%d dbname=demo user=vigil", f.port);
	o.conninfo = ci;
	o.timeout = 1.0;
	w = run_health_opts(&l, &o);
	ck_assert_str_eq(w.r.error_class, "timeout");
	ck_assert_str_eq(w.r.error.msg, "connection timed out after 1.0s");
	free(ci);

	ci = pv_asprintf("host=127.0.0.1 port=%d dbname=nosuchdb user=vigil sslmode=disable", cluster.port);
	o.conninfo = ci;
	o.timeout = 5;
	w = run_health_opts(&l, &o);
	ck_assert_msg(strcmp(w.r.error_class, "other") == 0, "%s: %s", w.r.error_class, w.r.error.msg);
	ck_assert_msg(strstr(w.r.error.msg, "database \"nosuchdb\" does not exist"), "%s", w.r.error.msg);
	free(ci);

	fake_pg_stop(&f);
	pv_test_dns_stop(&d);
	pv_test_loop_free(&l);
}
END_TEST

START_TEST(test_pg__error_class_table)
{
	static const struct {
		enum pv_errcode code;
		bool connected;
		const char *msg;
		const char *class;
	} cases[] = {
	        {PV_ERR_PG_TIMEOUT, false, "connection timed out after 5.0s", "timeout"},
	        {PV_ERR_PG_TIMEOUT, true, "health check timed out after 5.0s waiting for SELECT 1",
	         "timeout"},
	        {PV_ERR_PG_CONNECT, false,
	         "could not translate host name \"x\" to address: nodename nor servname", "dns"},
	        {PV_ERR_PG_CONNECT, false, "could not resolve host name \"x\"", "dns"},
	        {PV_ERR_PG_CONNECT, false,
	         "connection to server at \"10.0.0.1\", port 5432 failed: Connection refused", "refused"},
	        {PV_ERR_PG_CONNECT, false,
	         "connection to server on socket \"/run/postgresql/.s.PGSQL.5432\" failed: No such file or "
	         "directory",
	         "refused"},
	        {PV_ERR_PG_CONNECT, false,
	         "connection to server at \"h\", port 5432 failed: FATAL:  password authentication failed "
	         "for "
	         "user \"u\"",
	         "auth"},
	        {PV_ERR_PG_CONNECT, false,
	         "connection to server at \"h\", port 5432 failed: FATAL:  no pg_hba.conf entry for host "
	         "\"1.2.3.4\", user \"u\", database \"d\", SSL off",
	         "auth"},
	        {PV_ERR_PG_CONNECT, false, "connection to server failed: fe_sendauth: no password supplied",
	         "auth"},
	        {PV_ERR_PG_CONNECT, false, "connection to server failed: FATAL:  role \"x\" does not exist",
	         "auth"},
	        {PV_ERR_PG_CONNECT, false,
	         "connection to server failed: FATAL:  permission denied for database \"d\"", "auth"},
	        {PV_ERR_PG_CONNECT, false,
	         "connection to server failed: server does not support SSL, but SSL was required", "tls"},
	        {PV_ERR_PG_CONNECT, false,
	         "connection to server failed: SSL error: certificate verify failed", "tls"},
	        {PV_ERR_PG_CONNECT, false,
	         "connection to server failed: root certificate file \"x\" does not exist", "tls"},
	        {PV_ERR_PG_CONNECT, false, "connection to server failed: Connection timed out", "timeout"},
	        {PV_ERR_PG_CONNECT, false,
	         "connection to server failed: FATAL:  database \"d\" does not exist", "other"},
	        {PV_ERR_PG_CONNECT, false,
	         "connection to server failed: FATAL:  sorry, too many clients already", "other"},
	        {PV_ERR_PG_QUERY, true, "permission denied for function pg_database_size", "query"},
	        {PV_ERR_PG_QUERY, false, "server closed the connection unexpectedly", "other"},
	};
	struct pv_error e;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		pv_error_set(&e, cases[i].code, "%s", cases[i].msg);
		ck_assert_msg(strcmp(pv_pg_error_class(&e, cases[i].connected), cases[i].class) == 0,
		              "case %zu: %s -> %s, expected %s", i, cases[i].msg,
		              pv_pg_error_class(&e, cases[i].connected), cases[i].class);
	}
	pv_error_clear(&e);
	ck_assert_ptr_null(pv_pg_error_class(&e, false));
	ck_assert_ptr_null(pv_pg_error_class(NULL, false));
}
END_TEST

/* ---- harness ---- */

int
main(void)
{
	Suite *s = suite_create("pg");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	if (!pv_test_cluster_start(&cluster, "check_pg"))
		return EXIT_FAILURE;

	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_pg__health_tcp_password);
	tcase_add_test(tc, test_pg__health_unix_socket);
	tcase_add_test(tc, test_pg__health_uri_form);
	tcase_add_test(tc, test_pg__localhost_resolved_with_evdns);
	tcase_add_test(tc, test_pg__hostname_via_dns_server);
	tcase_add_test(tc, test_pg__host_list_falls_through);
	tcase_add_test(tc, test_pg__wrong_password);
	tcase_add_test(tc, test_pg__connection_refused);
	tcase_add_test(tc, test_pg__unknown_host);
	tcase_add_test(tc, test_pg__accept_never_answers);
	tcase_add_test(tc, test_pg__stall_after_startup);
	tcase_add_test(tc, test_pg__dns_never_answers);
	tcase_add_test(tc, test_pg__health_timeout);
	tcase_add_test(tc, test_pg__query_deadline_ends_backend);
	tcase_add_test(tc, test_pg__query_error_keeps_connection);
	tcase_add_test(tc, test_pg__close_during_connect);
	tcase_add_test(tc, test_pg__close_during_dns);
	tcase_add_test(tc, test_pg__close_during_query);
	tcase_add_test(tc, test_pg__health_cancel);
	tcase_add_test(tc, test_pg__bad_conninfo);
	tcase_add_test(tc, test_pg__conninfo_redact);
	tcase_add_test(tc, test_pg__health_schema_ok);
	tcase_add_test(tc, test_pg__health_schema_mismatch);
	tcase_add_test(tc, test_pg__health_error_classes);
	tcase_add_test(tc, test_pg__error_class_table);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);

	pv_test_cluster_stop(&cluster);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
