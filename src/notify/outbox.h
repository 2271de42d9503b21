/* The durable outbox sender: delivers queued notifications with backoff, pacing and permanent-error handling.
 */
#ifndef PV_NOTIFY_OUTBOX_H
#define PV_NOTIFY_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "notify/notify.h"
#include "util/error.h"

struct event_base;
struct pv_http;
struct pv_outbox;
struct pv_state;

/*
 * Delivery (SPEC §4), at least once:
 *   - every notification is in the state database (pv_state_outbox_*) before any attempt;
 *   - 2xx marks it sent;
 *   - a permanent error (pv_slack_classify / pv_webhook_classify) marks it failed, logs an error and calls
 *     on_broken, through which the daemon raises notifier_broken on the other channels;
 *   - anything else (5xx, 429, timeouts, refused connections) is retried after an exponential backoff with
 *     jitter (half to all of backoff_initial_ms * 2^(attempts-1), at most backoff_max_ms), or, when the
 *     answer has Retry-After, after exactly that long; a 429 also holds back every message to that URL;
 *   - a message older than its notifier's max_age is dropped with a warning instead of being sent;
 *   - at most one request at a time, and one start per slack_interval_ms, per Slack webhook URL.
 * A crash between a request and its mark sends the message again after restart with the same
 * idempotency key. Email goes through the same client as an SMTP submission (pv_email_classify judges the
 * answer); heartbeat notifiers carry no messages.
 */

enum pv_outbox_event_kind { PV_OUTBOX_SENT, PV_OUTBOX_RETRY, PV_OUTBOX_FAILED, PV_OUTBOX_DROPPED };

/* What happened to one message (for metrics and tests); pointers are valid only during the callback. */
struct pv_outbox_event {
	enum pv_outbox_event_kind kind;
	int64_t id;
	const char *notifier;
	const char *idempotency_key;
	long status;             /* HTTP status, 0 when none */
	const char *error;       /* NULL when sent */
	int64_t attempts;        /* attempts ended so far, this one included */
	int64_t next_attempt_ms; /* RETRY only */
};

typedef void (*pv_outbox_event_cb)(const struct pv_outbox_event *ev, void *arg);
/* A notifier answered with a permanent error; reason is e.g. "HTTP 404: no_service". */
typedef void (*pv_outbox_broken_cb)(const char *notifier, const char *reason, void *arg);

struct pv_outbox_options {
	int64_t request_timeout_ms; /* 0 = 10 s */
	int64_t backoff_initial_ms; /* 0 = 5 s */
	int64_t backoff_max_ms;     /* 0 = 10 min */
	int64_t slack_interval_ms;  /* 0 = 1 s */
	int max_in_flight;          /* requests at once; 0 = 16 */
	int max_per_endpoint;       /* requests at once to one webhook URL; 0 = 4 (Slack: always 1) */
	pv_outbox_broken_cb on_broken;
	pv_outbox_event_cb on_event;
	void *arg; /* for both callbacks */
};

/* st and http are borrowed and must outlive the outbox. opts NULL = defaults. Nothing is sent until
 * pv_outbox_set_notifiers has named the notifiers; pending messages from before a restart are then sent. */
struct pv_outbox *pv_outbox_new(struct event_base *base, struct pv_state *st, struct pv_http *http,
                                const struct pv_outbox_options *opts, struct pv_error *err);
/* Requests in flight are abandoned; their messages stay pending and go out after the next start. */
void pv_outbox_free(struct pv_outbox *ob); /* NULL is a no-op */
/* Copy the notifiers (at start and on reload); pacing state per URL is kept across calls. */
void pv_outbox_set_notifiers(struct pv_outbox *ob, const struct pv_config_notifier *v, size_t n);
/*
 * Queue n for n->notifier, durably, and start delivery. Makes an idempotency key when n has none (set in
 * n->idempotency_key) and sets n->id. A known key queues nothing and sets n->id to the message already
 * queued. When the state database cannot take it (disk full, I/O error), the message is held in memory,
 * n->id is 0, and it is offered again every 2 s until it is recorded; only a stop before then loses it
 * (logged). Fails only when no idempotency key can be made.
 */
bool pv_outbox_enqueue(struct pv_outbox *ob, struct pv_notification *n, struct pv_error *err);
/* Look at the outbox now (e.g. after another process queued messages). */
void pv_outbox_kick(struct pv_outbox *ob);

struct pv_outbox_stats {
	uint64_t sent, retried, failed, dropped;
	size_t in_flight;
};
void pv_outbox_stats(const struct pv_outbox *ob, struct pv_outbox_stats *out);

#endif
