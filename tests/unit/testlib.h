/*
 * Fixtures shared by the unit tests (linked into every tests/unit/check_*.c binary): an event loop
 * with a safety timer and a stall ticker, a fake DNS server on 127.0.0.1, a temporary directory per
 * TCase, and a throwaway PostgreSQL cluster started by tests/lib/pgtmp.
 */
#ifndef PV_TESTLIB_H
#define PV_TESTLIB_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/time.h>

#include <event2/dns.h>
#include <event2/event.h>

/* ---- event loop ---- */

struct pv_test_loop {
	struct event_base *base;
	struct evdns_base *dns;
	struct event *safety;
	struct event *tick;
	int ticks;
	double last_tick;
	double max_gap;
};

/* s seconds as a struct timeval. */
struct timeval pv_test_tv(double s);

/* system_dns: evdns configured from resolv.conf and /etc/hosts; else an empty evdns base. */
void pv_test_loop_init(struct pv_test_loop *l, bool system_dns);

/* A 100 ms ticker in the same loop: if anything blocks the loop, its gaps show it (ticks, max_gap). */
void pv_test_loop_start_ticker(struct pv_test_loop *l);

/* Run until something calls event_base_loopbreak, or max seconds. */
void pv_test_loop_run(struct pv_test_loop *l, double max);

void pv_test_loop_free(struct pv_test_loop *l);

/* ---- fake DNS server ---- */

/*
 * A DNS server on 127.0.0.1: db.pgvigil.test is 127.0.0.1 (no AAAA), nonexistent.invalid is
 * NXDOMAIN, silent.pgvigil.test is never answered. Tests then need no network.
 */
struct pv_test_dns {
	int fd;
	int port;
	struct event *ev;
	int queries;
};

/* Serve on base and add the server as a nameserver of dns. */
void pv_test_dns_start(struct pv_test_dns *d, struct event_base *base, struct evdns_base *dns);
void pv_test_dns_stop(struct pv_test_dns *d);

/* ---- temporary directory ---- */

/*
 * One directory for the tests of a TCase, made and removed by an unchecked fixture: Check runs
 * those in the parent, so the directory is removed even when a test fails in its forked child
 * (which skips a checked teardown). who names the binary in the directory's name:
 * $TMPDIR/pgvigil-check-state-XXXXXX for check_state, /tmp without TMPDIR. Aborts when the
 * directory cannot be made. tcase_add_unchecked_fixture takes void (void) functions: wrap the setup
 * in one that names the binary; the teardown fits as it is.
 */
void pv_test_tmpdir_setup(const char *who);
/* Removes the directory and everything in it. */
void pv_test_tmpdir_teardown(void);
/* The directory made by pv_test_tmpdir_setup. */
const char *pv_test_tmpdir(void);
/* A fresh subdirectory of it for one test (<tmpdir>/t-XXXXXX) into dir; fails the test if it cannot. */
void pv_test_tmpdir_sub(char *dir, size_t size);

/* Removes path and everything under it, not following symbolic links: 0, or -1 and errno. */
int pv_test_rmtree(const char *path);

/* ---- throwaway PostgreSQL ---- */

/*
 * One cluster for a whole test binary, started in main() before the suite forks: data and socket
 * directory under dir, TCP on 127.0.0.1:port, role "vigil" (password "vigil-secret"), database
 * "demo" (tests/lib/pgtmp). $srcdir, when set, is where tests/lib/pgtmp is found.
 */
struct pv_test_cluster {
	char dir[256];
	char sock[300];
	int port;
};

/* who names the binary in messages and the directory (/tmp/pgvigil-check-pg-XXXXXX for check_pg). */
bool pv_test_cluster_start(struct pv_test_cluster *c, const char *who);
/* Stops the cluster and removes its directory. */
void pv_test_cluster_stop(struct pv_test_cluster *c);

/* A TCP port on 127.0.0.1 that nothing listens on now (bound to 0, read, closed). */
int pv_test_free_port(void);

#endif
