/* Digests: a notifier with `digest: CRON` gets its info events gathered into one message per period. */
#ifndef PV_NOTIFY_DIGEST_H
#define PV_NOTIFY_DIGEST_H

#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"
#include "notify/notify.h"
#include "util/error.h"

struct event_base;
struct pv_digest;
struct pv_outbox;
struct pv_state;

/* st and ob are borrowed and must outlive the digest. */
struct pv_digest *pv_digest_new(struct event_base *base, struct pv_state *st, struct pv_outbox *ob);
void pv_digest_free(struct pv_digest *dg); /* NULL is a no-op */
/* Take the notifiers with a digest schedule, evaluated in time zone `timezone` (at start and on reload). */
void pv_digest_set_notifiers(struct pv_digest *dg, const struct pv_config_notifier *v, size_t n,
                             const char *timezone);
/* Whether notifier nf gathers n into its digest instead of sending it now: info events only. */
bool pv_digest_takes(const struct pv_config_notifier *nf, const struct pv_notification *n);
/*
 * Keep n for its notifier's next digest, durably (in the state database). At each time of the digest's
 * schedule the events kept are sent as one message through the outbox (rule "digest", with one line per
 * event in its text) and forgotten; a period without events sends nothing. A crash between queueing the
 * digest and forgetting its events sends those events again in the next digest, never loses them.
 */
bool pv_digest_add(struct pv_digest *dg, const struct pv_notification *n, struct pv_error *err);
/* Send the digest of `notifier` now (tests, and at each scheduled time). */
void pv_digest_flush(struct pv_digest *dg, const char *notifier, time_t slot);

#endif
