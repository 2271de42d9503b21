/* Heartbeat notifiers: a request to a URL every `every` while the daemon is healthy, so that an outside
 * dead-man's switch notices when pgvigil stops (or stops evaluating alerts). */
#ifndef PV_NOTIFY_HEARTBEAT_H
#define PV_NOTIFY_HEARTBEAT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"

struct event_base;
struct pv_http;
struct pv_heartbeat;

/* Whether the daemon is healthy enough to vouch for itself now; when not, why (into why, size bytes). */
typedef bool (*pv_heartbeat_healthy_fn)(void *arg, char *why, size_t size);

/* http is borrowed and must outlive the heartbeat. */
struct pv_heartbeat *pv_heartbeat_new(struct event_base *base, struct pv_http *http,
                                      pv_heartbeat_healthy_fn healthy, void *arg);
void pv_heartbeat_free(struct pv_heartbeat *hb); /* NULL is a no-op; pings in flight are abandoned */
/*
 * Take the heartbeat notifiers of v (others are ignored), at start and on reload. The first ping of each
 * goes out at once, then one every `every`; a ping is skipped (and the skip logged once) while the daemon
 * is not healthy, and while the previous ping is still in flight. A ping is never retried: the next one
 * is due soon, and a late ping would tell the outside service something that is no longer true.
 */
void pv_heartbeat_set_notifiers(struct pv_heartbeat *hb, const struct pv_config_notifier *v, size_t n);
/* {"NAME": {"pings", "failures", "skipped", "last_ok", "last_error"}} for status. */
json_t *pv_heartbeat_status_json(const struct pv_heartbeat *hb);

#endif
