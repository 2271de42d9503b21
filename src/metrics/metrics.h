/* The Prometheus endpoint: GET /metrics on libevent's HTTP server, in the text exposition format 0.0.4. */
#ifndef PV_METRICS_METRICS_H
#define PV_METRICS_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "util/error.h"

struct event_base;
struct pv_state;
struct pv_config;
struct pv_alert_set;

#define PV_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* What a scrape reads besides the state database: the daemon as it is at that moment (borrowed). */
struct pv_metrics_view {
	struct pv_state *state;
	const struct pv_config *cfg;
	const struct pv_alert_set *alerts; /* the alert set in force, or NULL */
	time_t now;
	time_t started; /* when the daemon started (wall clock) */
	bool reload_ok; /* the last reload succeeded, or there was none */
	int running;    /* job runs in progress */
};

/* Run counts carried from one scrape to the next, so a scrape reads only the runs since the oldest
 * one still running (see pv_state_runs_tally). */
struct pv_metrics_runs;
struct pv_metrics_runs *pv_metrics_runs_new(void);
void pv_metrics_runs_free(struct pv_metrics_runs *runs); /* NULL is a no-op */

/*
 * The exposition text for `v` (malloc'ed, NUL-terminated; its length in *len). Every family has its
 * HELP and TYPE lines even without samples; a value that is not known (no health check yet, no verified
 * backup, no objective) has no sample rather than a made-up one. A state read that fails is logged and
 * counted in pgvigil_metrics_collect_errors; the rest is still rendered. `runs` may be NULL (every run
 * is then counted afresh). Only the state database and memory are read: no network, bounded work.
 */
char *pv_metrics_render(const struct pv_metrics_view *v, struct pv_metrics_runs *runs, size_t *len);

/* Append `s` to out as a label value: backslash, double quote and newline escaped. out must hold
 * 2 * strlen(s) + 1 bytes. */
void pv_metrics_escape_label(const char *s, char *out);

/* Fills the view at each scrape. */
typedef void (*pv_metrics_view_fn)(void *arg, struct pv_metrics_view *out);

struct pv_metrics;

/*
 * An endpoint on base serving view's daemon. `listen` is daemon.metrics_listen: "HOST:PORT",
 * "[IPV6]:PORT" or "*:PORT" (every address); NULL binds nothing (pv_metrics_listen can start it later).
 * HOST may be a name: every address it resolves to is bound (one that does not exist on this host is
 * skipped while another binds). On failure returns NULL with err naming the address and the reason.
 */
struct pv_metrics *pv_metrics_new(struct event_base *base, const char *listen, pv_metrics_view_fn view,
                                  void *arg, struct pv_error *err);
/*
 * Move the endpoint to `listen` (NULL: stop serving). The same address as now changes nothing. The new
 * address is bound before the old one is closed; when only the old one stands in the way (same port),
 * it is closed first and reopened if the new one still fails. On failure the endpoint keeps its
 * address and err says why.
 */
bool pv_metrics_listen(struct pv_metrics *m, const char *listen, struct pv_error *err);
/*
 * From now on, a move to an address whose host is a name looks the name up with evdns on the loop
 * instead of getaddrinfo: pv_metrics_listen then returns true at once, and the move, or the error that
 * prevents it ("metrics endpoint not moved"), is logged when the answer comes. Numeric hosts and "*" are
 * never looked up. pv_metrics_new, before the loop runs, resolves names with getaddrinfo.
 */
struct evdns_base;
void pv_metrics_set_dns(struct pv_metrics *m, struct evdns_base *dns);
/* The address served, or NULL. */
const char *pv_metrics_address(const struct pv_metrics *m);
void pv_metrics_free(struct pv_metrics *m); /* NULL is a no-op */

#endif
