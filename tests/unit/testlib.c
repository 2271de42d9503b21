/* Fixtures shared by the unit tests: see testlib.h. */
#include <arpa/inet.h>
#include <check.h>
#include <ctype.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pg/pg_internal.h"
#include "util/mem.h"

#include "testlib.h"

/* ---- event loop ---- */

static void
stop_cb(evutil_socket_t fd, short what, void *arg)
{
	event_base_loopbreak(arg);
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_test_loop *l = arg;
	double now = pv_pg_now();
	if (now - l->last_tick > l->max_gap)
		l->max_gap = now - l->last_tick;
	l->last_tick = now;
	l->ticks++;
}

struct timeval
pv_test_tv(double s)
{
	struct timeval tv;
	tv.tv_sec = (time_t)s;
	tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
	return tv;
}

void
pv_test_loop_init(struct pv_test_loop *l, bool system_dns)
{
	memset(l, 0, sizeof(*l));
	l->base = event_base_new();
	ck_assert_ptr_nonnull(l->base);
	l->dns = evdns_base_new(l->base, system_dns ? EVDNS_BASE_INITIALIZE_NAMESERVERS : 0);
	ck_assert_ptr_nonnull(l->dns);
}

void
pv_test_loop_start_ticker(struct pv_test_loop *l)
{
	struct timeval tv = pv_test_tv(0.1);
	l->tick = event_new(l->base, -1, EV_PERSIST, tick_cb, l);
	l->last_tick = pv_pg_now();
	l->max_gap = 0;
	l->ticks = 0;
	event_add(l->tick, &tv);
}

void
pv_test_loop_run(struct pv_test_loop *l, double max)
{
	struct timeval tv = pv_test_tv(max);
	if (l->safety == NULL)
		l->safety = evtimer_new(l->base, stop_cb, l->base);
	evtimer_add(l->safety, &tv);
	event_base_dispatch(l->base);
	evtimer_del(l->safety);
}

void
pv_test_loop_free(struct pv_test_loop *l)
{
	if (l->tick)
		event_free(l->tick);
	if (l->safety)
		event_free(l->safety);
	/* evdns reports cancelled lookups from deferred callbacks: let them run so nothing leaks. */
	event_base_loop(l->base, EVLOOP_NONBLOCK);
	evdns_base_free(l->dns, 1);
	event_base_free(l->base);
}

/* ---- fake DNS server ---- */

static void
dns_read(evutil_socket_t fd, short what, void *arg)
{
	struct pv_test_dns *d = arg;
	unsigned char q[512], r[600];
	struct sockaddr_storage from;
	socklen_t fromlen = sizeof(from);
	ssize_t n = recvfrom(fd, q, sizeof(q), 0, (struct sockaddr *)&from, &fromlen);
	char name[256] = "";
	size_t pos = 12, namelen = 0, rlen;
	unsigned qtype;
	int rcode = 0, answers = 0;

	if (n < 17)
		return;
	d->queries++;
	while (pos < (size_t)n && q[pos] != 0) {
		size_t l = q[pos];
		if (pos + 1 + l > (size_t)n || namelen + l + 2 > sizeof(name))
			return;
		if (namelen > 0)
			name[namelen++] = '.';
		for (size_t i = 0; i < l; i++)
			name[namelen++] = (char)tolower(q[pos + 1 + i]); /* evdns randomises case (0x20) */
		name[namelen] = '\0';
		pos += 1 + l;
	}
	pos++;
	if (pos + 4 > (size_t)n)
		return;
	qtype = (unsigned)(q[pos] << 8 | q[pos + 1]);
	pos += 4;
	if (strcmp(name, "silent.pgvigil.test") == 0)
		return;
	if (strcmp(name, "db.pgvigil.test") == 0)
		answers = qtype == 1 ? 1 : 0;
	else
		rcode = 3;
	memcpy(r, q, pos); /* id, then the question echoed */
	r[2] = 0x81;
	r[3] = (unsigned char)(0x80 | rcode);
	r[4] = 0;
	r[5] = 1;
	r[6] = 0;
	r[7] = (unsigned char)answers;
	memset(r + 8, 0, 4);
	rlen = pos;
	if (answers) {
		static const unsigned char rr[] = {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1};
		memcpy(r + rlen, rr, sizeof(rr));
		rlen += sizeof(rr);
	}
	sendto(fd, r, rlen, 0, (struct sockaddr *)&from, fromlen);
}

void
pv_test_dns_start(struct pv_test_dns *d, struct event_base *base, struct evdns_base *dns)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	char ns[64];

	memset(d, 0, sizeof(*d));
	d->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(d->fd, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(bind(d->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(getsockname(d->fd, (struct sockaddr *)&sa, &len), 0);
	d->port = ntohs(sa.sin_port);
	d->ev = event_new(base, d->fd, EV_READ | EV_PERSIST, dns_read, d);
	event_add(d->ev, NULL);
	snprintf(ns, sizeof(ns), "127.0.0.1:%d", d->port);
	ck_assert_int_eq(evdns_base_nameserver_ip_add(dns, ns), 0);
}

void
pv_test_dns_stop(struct pv_test_dns *d)
{
	event_free(d->ev);
	close(d->fd);
}

/* ---- temporary directory ---- */

static char tmpdir[PATH_MAX];

/* parent/pgvigil-<who>-XXXXXX, with who's underscores as dashes (check_state: pgvigil-check-state-). */
static char *
dir_template(const char *parent, const char *who)
{
	char *tmpl = pv_asprintf("%s/pgvigil-%s-XXXXXX", parent, who);

	for (char *p = tmpl + strlen(parent); *p != '\0'; p++)
		if (*p == '_')
			*p = '-';
	return tmpl;
}

void
pv_test_tmpdir_setup(const char *who)
{
	const char *parent = getenv("TMPDIR");
	char *tmpl = dir_template(parent != NULL ? parent : "/tmp", who);

	if (!pv_strlcpy(tmpdir, tmpl, sizeof(tmpdir)) || mkdtemp(tmpdir) == NULL) {
		perror(tmpl);
		abort();
	}
	free(tmpl);
}

void
pv_test_tmpdir_teardown(void)
{
	if (tmpdir[0] != '\0')
		pv_test_rmtree(tmpdir);
	tmpdir[0] = '\0';
}

const char *
pv_test_tmpdir(void)
{
	return tmpdir;
}

void
pv_test_tmpdir_sub(char *dir, size_t size)
{
	ck_assert_msg(tmpdir[0] != '\0', "pv_test_tmpdir_sub before pv_test_tmpdir_setup");
	snprintf(dir, size, "%s/t-XXXXXX", tmpdir);
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

static int
remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(path);
}

int
pv_test_rmtree(const char *path)
{
	return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- throwaway PostgreSQL ---- */

static int
pgtmp(const char *args)
{
	const char *srcdir = getenv("srcdir");
	char *cmd = pv_asprintf("%s/tests/lib/pgtmp %s >/dev/null", srcdir ? srcdir : ".", args);
	int rc = system(cmd);
	free(cmd);
	return rc;
}

int
pv_test_free_port(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = 0;

	if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
		port = ntohs(sa.sin_port);
	if (fd >= 0)
		close(fd);
	return port > 0 ? port : 54000 + getpid() % 1000;
}

bool
pv_test_cluster_start(struct pv_test_cluster *c, const char *who)
{
	char *tmpl = dir_template("/tmp", who);
	char *args;
	int rc;

	memset(c, 0, sizeof(*c));
	if (mkdtemp(tmpl) == NULL) {
		perror("mkdtemp");
		free(tmpl);
		return false;
	}
	pv_strlcpy(c->dir, tmpl, sizeof(c->dir));
	free(tmpl);
	snprintf(c->sock, sizeof(c->sock), "%s/sock", c->dir);
	/* A port the kernel says is free; another start takes it first now and then: try another. */
	for (int attempt = 0;; attempt++) {
		c->port = pv_test_free_port();
		args = pv_asprintf("start %s %d", c->dir, c->port);
		rc = pgtmp(args);
		if (!WIFEXITED(rc) || WEXITSTATUS(rc) != 75 || attempt == 4)
			break;
		free(args);
	}
	if (rc != 0) {
		fprintf(stderr, "%s: could not start a throwaway PostgreSQL (tests/lib/pgtmp %s)\n", who,
		        args);
		free(args);
		rmdir(c->dir);
		return false;
	}
	free(args);
	return true;
}

void
pv_test_cluster_stop(struct pv_test_cluster *c)
{
	char *args = pv_asprintf("stop %s", c->dir);
	pgtmp(args);
	free(args);
}
