/* Notifications as the outbox stores them, and the Slack and webhook formatters that turn them into requests.
 */
#ifndef PV_NOTIFY_NOTIFY_H
#define PV_NOTIFY_NOTIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "config/config.h"
#include "util/error.h"

enum pv_notify_status { PV_NOTIFY_FIRING, PV_NOTIFY_RESOLVED, PV_NOTIFY_INFO };

/*
 * One message to one notifier. Strings are owned by the struct (pv_notification_clear frees them); every
 * one except notifier, rule and title may be NULL. value and threshold are already formatted for people
 * ("26h", "80%"). The idempotency key must be unique across all notifiers (the outbox makes one when it is
 * NULL); it is sent with every attempt, so a receiver can drop the duplicates at-least-once delivery allows.
 */
struct pv_notification {
	int64_t id; /* outbox id; 0 until queued */
	char *notifier;
	char *rule;
	enum pv_severity severity;
	enum pv_notify_status status;
	char *database;
	char *job;
	char *title;
	char *value;
	char *threshold;
	time_t at; /* when the condition was observed */
	char *idempotency_key;
	char *thread_key; /* the idempotency key of the first message about this alert (email threading), or
	                     NULL */
	char *text;       /* longer plain text (a digest's list of events), or NULL */
};

const char *pv_notify_status_name(enum pv_notify_status status); /* "firing", "resolved", "info" */
bool pv_notify_status_parse(const char *s, enum pv_notify_status *out);
const char *pv_notify_severity_name(enum pv_severity sev); /* "info", "warning", "critical" */
bool pv_notify_severity_parse(const char *s, enum pv_severity *out);

/* The outbox payload: a JSON object of every field but id. Never NULL (aborts on out-of-memory). */
char *pv_notification_to_json(const struct pv_notification *n);
/* Parse a payload back; fails with PV_ERR_INTERNAL naming the bad field. id is left 0. */
bool pv_notification_from_json(const char *json, struct pv_notification *out, struct pv_error *err);
void pv_notification_clear(struct pv_notification *n);

/* What an endpoint's answer means for a message. */
enum pv_notify_verdict {
	PV_NOTIFY_DELIVERED, /* 2xx */
	PV_NOTIFY_RETRY,     /* try again later: 5xx, 429, transport errors, unknown answers */
	PV_NOTIFY_PERMANENT, /* the request or the endpoint is wrong; retrying cannot help */
};

/* ---- Slack incoming webhooks (slack.c) ---- */

/* Slack keeps at most this many characters of a message; pgvigil stays well below it. */
#define PV_SLACK_MAX_TEXT 4000

/*
 * One attachment coloured by severity (green once resolved) with the title and the fields Database, Job,
 * Rule, Value, Threshold and Time, plus a plain "text" fallback for notifications and clients without
 * attachments. Long strings are cut on a UTF-8 boundary with "…" so the whole body stays under
 * PV_SLACK_MAX_TEXT characters of text. Never NULL.
 */
char *pv_slack_format(const struct pv_notification *n);
/* SPEC §4: 400 invalid_payload, 403, 404 no_service / channel_not_found and 410 channel_is_archived are
 * permanent; 2xx is delivered; everything else is retried. body may be NULL. */
enum pv_notify_verdict pv_slack_classify(long status, const char *body);

/* ---- generic webhooks (webhook.c) ---- */

#define PV_WEBHOOK_SIGNATURE_HEADER   "X-Pgvigil-Signature"
#define PV_WEBHOOK_IDEMPOTENCY_HEADER "X-Pgvigil-Idempotency-Key"
/* "sha256=" and 64 hex digits */
#define PV_WEBHOOK_SIGNATURE_LEN (7 + 64)

/* The documented JSON body (see webhook.c). Never NULL. */
char *pv_webhook_format(const struct pv_notification *n);
/* "sha256=<hex HMAC-SHA256(secret, body)>" into out (size > PV_WEBHOOK_SIGNATURE_LEN). */
void pv_webhook_sign(const char *secret, const void *body, size_t len,
                     char out[PV_WEBHOOK_SIGNATURE_LEN + 1]);
/* 2xx delivered; 400, 401, 403, 404 and 410 permanent; everything else retried. */
enum pv_notify_verdict pv_webhook_classify(long status, const char *body);

/* ---- email through SMTP (email.c) ---- */

/*
 * The whole RFC 5322 message, CRLF line ends: Date, From, To, Subject (RFC 2047 encoded when not ASCII),
 * Message-ID <idempotency_key@domain of from>, In-Reply-To and References <thread_key@domain> when the
 * message follows the alert's first one, Auto-Submitted: auto-generated, X-Auto-Response-Suppress: All,
 * and a plain-text UTF-8 body of short lines, readable on a phone. `now` is the Date. Never NULL.
 */
char *pv_email_format(const struct pv_notification *n, const char *from, const char *const *to, size_t n_to,
                      time_t now);
/* The address in "Name <a@example.com>" or "a@example.com", as "<a@example.com>" for the SMTP envelope. */
char *pv_email_envelope(const char *address);
/* curl_code and the SMTP reply code from pv_http_result: delivered on success; permanent for 5xx replies,
 * refused logins, a server without STARTTLS when it is required, and certificate failures; else retried. */
enum pv_notify_verdict pv_email_classify(int curl_code, long smtp_code);

#endif
