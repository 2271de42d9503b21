/* The outbox sender, and the notification payload it stores: picks due messages from the state database,
 * formats them for their channel, sends them through the http client and records what happened. */
#include "notify/outbox.h"

#include <errno.h>
#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "crypto/crypto.h"
#include "notify/http.h"
#include "state/state.h"
#include "util/log.h"
#include "util/mem.h"

#define DEFAULT_REQUEST_TIMEOUT_MS 10000
#define DEFAULT_BACKOFF_INITIAL_MS 5000
#define DEFAULT_BACKOFF_MAX_MS     (10 * 60 * 1000)
#define DEFAULT_SLACK_INTERVAL_MS  1000
#define DEFAULT_MAX_IN_FLIGHT      16
#define DEFAULT_MAX_PER_ENDPOINT   4
#define DEFAULT_MAX_AGE            (24 * 3600)
/* Messages read per pass; enough to fill every lane, small enough to keep a pass short. */
#define DUE_BATCH 256
/* Bytes of an endpoint's answer kept in last_error and in log lines. */
#define ERROR_BODY_MAX 200
/* How often messages the state database refused are offered to it again. */
#define HELD_RETRY_MS 2000

/* ---- the payload ---- */

static const char *const severity_names[] = {"info", "warning", "critical"};
static const char *const status_names[] = {"firing", "resolved", "info"};

const char *
pv_notify_severity_name(enum pv_severity sev)
{
	return (unsigned)sev < 3 ? severity_names[sev] : "unknown";
}

bool
pv_notify_severity_parse(const char *s, enum pv_severity *out)
{
	for (int i = 0; i < 3; i++)
		if (s != NULL && strcmp(s, severity_names[i]) == 0) {
			*out = (enum pv_severity)i;
			return true;
		}
	return false;
}

const char *
pv_notify_status_name(enum pv_notify_status status)
{
	return (unsigned)status < 3 ? status_names[status] : "unknown";
}

bool
pv_notify_status_parse(const char *s, enum pv_notify_status *out)
{
	for (int i = 0; i < 3; i++)
		if (s != NULL && strcmp(s, status_names[i]) == 0) {
			*out = (enum pv_notify_status)i;
			return true;
		}
	return false;
}

static void
set_str(json_t *o, const char *key, const char *v)
{
	json_t *j = v != NULL ? json_string(v) : NULL;

	/* Invalid UTF-8 cannot be stored as a JSON string: keep the field, lossy. */
	if (v != NULL && j == NULL) {
		char *copy = pv_strdup(v);
		for (char *p = copy; *p != '\0'; p++)
			if ((unsigned char)*p >= 0x80)
				*p = '?';
		j = json_string(copy);
		free(copy);
	}
	json_object_set_new(o, key, j != NULL ? j : json_null());
}

char *
pv_notification_to_json(const struct pv_notification *n)
{
	json_t *o = json_object();
	char *text;

	set_str(o, "notifier", n->notifier);
	set_str(o, "rule", n->rule);
	set_str(o, "severity", pv_notify_severity_name(n->severity));
	set_str(o, "status", pv_notify_status_name(n->status));
	set_str(o, "database", n->database);
	set_str(o, "job", n->job);
	set_str(o, "title", n->title);
	set_str(o, "value", n->value);
	set_str(o, "threshold", n->threshold);
	json_object_set_new(o, "at", json_integer((json_int_t)n->at));
	set_str(o, "idempotency_key", n->idempotency_key);
	if (n->thread_key != NULL)
		set_str(o, "thread_key", n->thread_key);
	if (n->text != NULL)
		set_str(o, "text", n->text);
	text = json_dumps(o, JSON_COMPACT);
	if (text == NULL)
		abort();
	json_decref(o);
	return text;
}

static char *
get_str(json_t *o, const char *key)
{
	const char *v = json_string_value(json_object_get(o, key));
	return v != NULL ? pv_strdup(v) : NULL;
}

bool
pv_notification_from_json(const char *text, struct pv_notification *out, struct pv_error *err)
{
	json_error_t jerr;
	json_t *o = json_loads(text, 0, &jerr);
	const char *bad = NULL;

	memset(out, 0, sizeof(*out));
	if (o == NULL || !json_is_object(o)) {
		json_decref(o);
		return pv_error_set(err, PV_ERR_INTERNAL, "notification payload is not a JSON object: %s",
		                    o == NULL ? jerr.text : "another JSON value");
	}
	out->notifier = get_str(o, "notifier");
	out->rule = get_str(o, "rule");
	out->database = get_str(o, "database");
	out->job = get_str(o, "job");
	out->title = get_str(o, "title");
	out->value = get_str(o, "value");
	out->threshold = get_str(o, "threshold");
	out->idempotency_key = get_str(o, "idempotency_key");
	out->thread_key = get_str(o, "thread_key");
	out->text = get_str(o, "text");
	out->at = (time_t)json_integer_value(json_object_get(o, "at"));
	if (out->notifier == NULL)
		bad = "notifier";
	else if (out->rule == NULL)
		bad = "rule";
	else if (!pv_notify_severity_parse(json_string_value(json_object_get(o, "severity")), &out->severity))
		bad = "severity";
	else if (!pv_notify_status_parse(json_string_value(json_object_get(o, "status")), &out->status))
		bad = "status";
	else if (!json_is_integer(json_object_get(o, "at")))
		bad = "at";
	json_decref(o);
	if (bad != NULL) {
		pv_notification_clear(out);
		return pv_error_set(err, PV_ERR_INTERNAL, "notification payload: missing or bad \"%s\"", bad);
	}
	return true;
}

void
pv_notification_clear(struct pv_notification *n)
{
	if (n == NULL)
		return;
	free(n->notifier);
	free(n->rule);
	free(n->database);
	free(n->job);
	free(n->title);
	free(n->value);
	free(n->threshold);
	free(n->idempotency_key);
	free(n->thread_key);
	free(n->text);
	memset(n, 0, sizeof(*n));
}

/* ---- the sender ---- */

/* Requests to one URL share pacing: Slack counts its limit per webhook, and a 429 speaks for the URL. */
struct lane {
	struct lane *next;
	char *url;
	int in_flight;
	int64_t next_start_ms;    /* Slack: the earliest next start */
	int64_t blocked_until_ms; /* after a 429 */
};

struct notifier {
	char *name;
	enum pv_notifier_type type;
	char *url;    /* NULL when not configured */
	char *secret; /* webhook HMAC secret or NULL */
	int64_t max_age;
	char *ca_file;
	/* email */
	bool require_tls;
	char *username, *password, *from;
	char **to;
	size_t n_to;
};

/* One request in flight. */
struct attempt {
	struct attempt *prev, *next;
	struct pv_outbox *ob;
	struct pv_http_req *req;
	struct lane *lane;
	int64_t id;
	char *notifier;
	char *key;
	enum pv_notifier_type type;
	time_t created;
	int64_t max_age;
	int64_t attempts; /* ended before this one */
};

/* A message the state database could not take (disk full, I/O error): kept in memory and offered
 * again on every pass, so a passing failure does not lose it. */
struct held {
	struct held *next;
	char *notifier, *payload, *key;
	int64_t created_ms;
};

struct pv_outbox {
	struct event_base *base;
	struct pv_state *st;
	struct pv_http *http;
	struct pv_outbox_options opt;
	struct event *timer;
	struct notifier *notifiers;
	size_t n_notifiers;
	struct lane *lanes;
	struct attempt *attempts;
	size_t in_flight;
	struct pv_outbox_stats stats;
	uint64_t rng;
	struct held *held, **held_tail; /* oldest first */
};

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* xorshift64*: jitter needs spread, not secrecy. */
static uint64_t
rng_next(struct pv_outbox *ob)
{
	ob->rng ^= ob->rng >> 12;
	ob->rng ^= ob->rng << 25;
	ob->rng ^= ob->rng >> 27;
	return ob->rng * 2685821657736338717ULL;
}

static void
schedule(struct pv_outbox *ob, int64_t delay_ms)
{
	struct timeval tv;

	if (delay_ms < 0)
		delay_ms = 0;
	tv.tv_sec = delay_ms / 1000;
	tv.tv_usec = (delay_ms % 1000) * 1000;
	evtimer_add(ob->timer, &tv);
}

void
pv_outbox_kick(struct pv_outbox *ob)
{
	schedule(ob, 0);
}

static const struct notifier *
notifier_find(const struct pv_outbox *ob, const char *name)
{
	for (size_t i = 0; i < ob->n_notifiers; i++)
		if (strcmp(ob->notifiers[i].name, name) == 0)
			return &ob->notifiers[i];
	return NULL;
}

static struct lane *
lane_for(struct pv_outbox *ob, const char *url)
{
	struct lane *l;

	for (l = ob->lanes; l != NULL; l = l->next)
		if (strcmp(l->url, url) == 0)
			return l;
	l = pv_calloc(1, sizeof(*l));
	l->url = pv_strdup(url);
	l->next = ob->lanes;
	ob->lanes = l;
	return l;
}

static bool
in_flight(const struct pv_outbox *ob, int64_t id)
{
	for (const struct attempt *a = ob->attempts; a != NULL; a = a->next)
		if (a->id == id)
			return true;
	return false;
}

static void
emit(struct pv_outbox *ob, enum pv_outbox_event_kind kind, int64_t id, const char *notifier, const char *key,
     long status, const char *error, int64_t attempts, int64_t next_ms)
{
	struct pv_outbox_event ev = {kind, id, notifier, key, status, error, attempts, next_ms};

	if (ob->opt.on_event != NULL)
		ob->opt.on_event(&ev, ob->opt.arg);
}

/* Half to all of initial * 2^(attempts-1), capped: spread so that many messages failing together do not
 * come back together, yet never much sooner than the schedule. */
static int64_t
backoff_ms(struct pv_outbox *ob, int64_t attempts)
{
	int64_t d = ob->opt.backoff_initial_ms;

	for (int64_t i = 1; i < attempts && d < ob->opt.backoff_max_ms; i++)
		d *= 2;
	if (d > ob->opt.backoff_max_ms)
		d = ob->opt.backoff_max_ms;
	return d / 2 + (int64_t)(rng_next(ob) % (uint64_t)(d / 2 + 1));
}

/* "HTTP 404: no_service" (with the body made printable and cut) or "SMTP 535: Login denied". */
static char *
describe(const struct pv_http_result *res, enum pv_notifier_type type)
{
	char body[ERROR_BODY_MAX + 1];
	size_t n = 0;

	if (type == PV_NOTIFIER_EMAIL)
		return res->status != 0 ? pv_asprintf("SMTP %ld: %s", res->status,
		                                      res->error != NULL ? res->error : "accepted")
		                        : pv_asprintf("%s", res->error != NULL ? res->error : "no answer");
	if (res->status == 0)
		return pv_asprintf("%s", res->error != NULL ? res->error : "no answer");
	for (size_t i = 0; i < res->body_len && n < ERROR_BODY_MAX; i++) {
		unsigned char c = (unsigned char)res->body[i];
		body[n++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
	}
	while (n > 0 && body[n - 1] == ' ')
		n--;
	body[n] = '\0';
	return n > 0 ? pv_asprintf("HTTP %ld: %s", res->status, body) : pv_asprintf("HTTP %ld", res->status);
}

static void
attempt_free(struct attempt *a)
{
	struct pv_outbox *ob = a->ob;

	if (a->prev != NULL)
		a->prev->next = a->next;
	else
		ob->attempts = a->next;
	if (a->next != NULL)
		a->next->prev = a->prev;
	ob->in_flight--;
	a->lane->in_flight--;
	free(a->notifier);
	free(a->key);
	free(a);
}

static void
on_done(const struct pv_http_result *res, void *arg)
{
	struct attempt *a = arg;
	struct pv_outbox *ob = a->ob;
	struct pv_error err = {0};
	enum pv_notify_verdict verdict;
	int64_t now = now_ms(), attempts = a->attempts + 1;
	char *why = NULL;

	a->req = NULL;
	if (a->type == PV_NOTIFIER_EMAIL)
		verdict = pv_email_classify(res->curl_code, res->status);
	else if (res->status == 0)
		verdict = PV_NOTIFY_RETRY;
	else if (a->type == PV_NOTIFIER_SLACK)
		verdict = pv_slack_classify(res->status, res->body);
	else
		verdict = pv_webhook_classify(res->status, res->body);

	switch (verdict) {
	case PV_NOTIFY_DELIVERED:
		if (!pv_state_outbox_mark_sent(ob->st, a->id, (time_t)(now / 1000), &err))
			pv_log_error(
			        "recording a sent notification failed, it may be sent again id=%lld error=%s",
			        (long long)a->id, pv_log_quote(err.msg));
		pv_log_debug("notification sent notifier=%s id=%lld attempts=%lld seconds=%.3f",
		             pv_log_quote(a->notifier), (long long)a->id, (long long)attempts, res->seconds);
		ob->stats.sent++;
		emit(ob, PV_OUTBOX_SENT, a->id, a->notifier, a->key, res->status, NULL, attempts, 0);
		break;
	case PV_NOTIFY_PERMANENT:
		why = describe(res, a->type);
		if (!pv_state_outbox_mark_failed(ob->st, a->id, why, &err))
			pv_log_error("recording a failed notification failed id=%lld error=%s",
			             (long long)a->id, pv_log_quote(err.msg));
		pv_log_error("notifier refused a notification permanently, not retrying notifier=%s id=%lld "
		             "error=%s",
		             pv_log_quote(a->notifier), (long long)a->id, pv_log_quote(why));
		ob->stats.failed++;
		emit(ob, PV_OUTBOX_FAILED, a->id, a->notifier, a->key, res->status, why, attempts, 0);
		if (ob->opt.on_broken != NULL)
			ob->opt.on_broken(a->notifier, why, ob->opt.arg);
		break;
	case PV_NOTIFY_RETRY: {
		int64_t delay = backoff_ms(ob, attempts), next,
		        expiry = ((int64_t)a->created + a->max_age) * 1000;

		why = describe(res, a->type);
		if (res->status != 0 && res->retry_after >= 0 && (res->status == 429 || res->status == 503))
			delay = res->retry_after * 1000;
		if (res->status == 429 && now + delay > a->lane->blocked_until_ms)
			a->lane->blocked_until_ms = now + delay;
		/* Past its max age the next pass drops it; waiting longer would only delay the log line. */
		next = now + delay < expiry ? now + delay : expiry;
		if (!pv_state_outbox_mark_retry(ob->st, a->id, next, why, &err))
			pv_log_error("recording a notification retry failed id=%lld error=%s",
			             (long long)a->id, pv_log_quote(err.msg));
		pv_log_info("notification not delivered, will retry notifier=%s id=%lld attempts=%lld "
		            "retry_in=%.1fs error=%s",
		            pv_log_quote(a->notifier), (long long)a->id, (long long)attempts,
		            (double)(next - now) / 1000.0, pv_log_quote(why));
		ob->stats.retried++;
		emit(ob, PV_OUTBOX_RETRY, a->id, a->notifier, a->key, res->status, why, attempts, next);
		break;
	}
	}
	free(why);
	attempt_free(a);
	pv_outbox_kick(ob);
}

/* "24h", "1h30m", "90s": the form pgvigil.yaml uses. */
static void
format_age(int64_t secs, char *buf, size_t size)
{
	static const struct {
		char unit;
		int64_t secs;
	} units[] = {{'w', 604800}, {'d', 86400}, {'h', 3600}, {'m', 60}, {'s', 1}};
	size_t len = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]) && len + 1 < size; i++)
		if (secs >= units[i].secs) {
			len += (size_t)snprintf(buf + len, size - len, "%lld%c",
			                        (long long)(secs / units[i].secs), units[i].unit);
			secs %= units[i].secs;
		}
	if (len == 0)
		snprintf(buf, size, "0s");
}

/* Give up on a message, with a warning saying why and what the last attempt met. */
static void
drop(struct pv_outbox *ob, const struct pv_state_outbox_msg *m, const char *reason)
{
	struct pv_error err = {0};
	char *full = pv_asprintf("%s%s%s", reason, m->last_error != NULL ? "; last error: " : "",
	                         m->last_error != NULL ? m->last_error : "");

	if (!pv_state_outbox_mark_dropped(ob->st, m->id, full, &err))
		pv_log_error("recording a dropped notification failed id=%lld error=%s", (long long)m->id,
		             pv_log_quote(err.msg));
	pv_log_warn("notification dropped notifier=%s id=%lld attempts=%lld reason=%s",
	            pv_log_quote(m->notifier), (long long)m->id, (long long)m->attempts, pv_log_quote(full));
	ob->stats.dropped++;
	emit(ob, PV_OUTBOX_DROPPED, m->id, m->notifier, m->idempotency_key, 0, full, m->attempts, 0);
	free(full);
}

/* A message that cannot be formatted never will be: mark it failed (a bug, not the notifier's fault). */
static void
unsendable(struct pv_outbox *ob, const struct pv_state_outbox_msg *m, const char *why)
{
	struct pv_error err = {0};

	pv_log_error("notification cannot be sent notifier=%s id=%lld error=%s", pv_log_quote(m->notifier),
	             (long long)m->id, pv_log_quote(why));
	if (!pv_state_outbox_mark_failed(ob->st, m->id, why, &err))
		pv_log_error("recording a failed notification failed id=%lld error=%s", (long long)m->id,
		             pv_log_quote(err.msg));
	ob->stats.failed++;
	emit(ob, PV_OUTBOX_FAILED, m->id, m->notifier, m->idempotency_key, 0, why, m->attempts + 1, 0);
}

static void
send_one(struct pv_outbox *ob, const struct pv_state_outbox_msg *m, const struct notifier *nf,
         struct lane *lane, int64_t now)
{
	struct pv_notification n;
	struct pv_error err = {0};
	struct pv_http_request req = {0};
	char key_header[512], sig[PV_WEBHOOK_SIGNATURE_LEN + 1], sig_header[128];
	const char *headers[3];
	struct attempt *a;
	char *body, *envelope_from = NULL, **rcpt = NULL;

	if (!pv_notification_from_json(m->payload, &n, &err)) {
		unsendable(ob, m, err.msg);
		return;
	}
	if (nf->type == PV_NOTIFIER_EMAIL) {
		body = pv_email_format(&n, nf->from != NULL ? nf->from : "pgvigil",
		                       (const char *const *)nf->to, nf->n_to, (time_t)(now / 1000));
		envelope_from = pv_email_envelope(nf->from != NULL ? nf->from : "pgvigil");
		rcpt = pv_calloc(nf->n_to + 1, sizeof(char *));
		for (size_t i = 0; i < nf->n_to; i++)
			rcpt[i] = pv_email_envelope(nf->to[i]);
		req.mail_from = envelope_from;
		req.mail_rcpt = (const char *const *)rcpt;
		req.n_rcpt = nf->n_to;
		req.username = nf->username;
		req.password = nf->password;
		req.require_tls = nf->require_tls;
	} else {
		body = nf->type == PV_NOTIFIER_SLACK ? pv_slack_format(&n) : pv_webhook_format(&n);
		headers[req.n_headers++] = "Content-Type: application/json";
		snprintf(key_header, sizeof(key_header), PV_WEBHOOK_IDEMPOTENCY_HEADER ": %s",
		         m->idempotency_key);
		headers[req.n_headers++] = key_header;
		if (nf->type == PV_NOTIFIER_WEBHOOK && nf->secret != NULL) {
			pv_webhook_sign(nf->secret, body, strlen(body), sig);
			snprintf(sig_header, sizeof(sig_header), PV_WEBHOOK_SIGNATURE_HEADER ": %s", sig);
			headers[req.n_headers++] = sig_header;
		}
		req.method = "POST";
		req.headers = headers;
	}
	pv_notification_clear(&n);
	req.url = nf->url;
	req.ca_file = nf->ca_file;
	req.body = body;
	req.body_len = strlen(body);
	req.timeout_ms = ob->opt.request_timeout_ms;

	a = pv_calloc(1, sizeof(*a));
	a->ob = ob;
	a->lane = lane;
	a->id = m->id;
	a->notifier = pv_strdup(m->notifier);
	a->key = pv_strdup(m->idempotency_key);
	a->type = nf->type;
	a->created = m->created;
	a->max_age = nf->max_age;
	a->attempts = m->attempts;
	a->req = pv_http_start(ob->http, &req, on_done, a, &err);
	free(body);
	free(envelope_from);
	for (size_t i = 0; rcpt != NULL && rcpt[i] != NULL; i++)
		free(rcpt[i]);
	free(rcpt);
	if (a->req == NULL) {
		/* Not the endpoint's fault, and no attempt was made: try again after a backoff. */
		pv_log_error("starting a notification request failed notifier=%s id=%lld error=%s",
		             pv_log_quote(m->notifier), (long long)m->id, pv_log_quote(err.msg));
		if (!pv_state_outbox_mark_retry(ob->st, m->id, now + backoff_ms(ob, m->attempts + 1), err.msg,
		                                &err))
			pv_log_error("recording a notification retry failed id=%lld error=%s",
			             (long long)m->id, pv_log_quote(err.msg));
		free(a->notifier);
		free(a->key);
		free(a);
		return;
	}
	a->next = ob->attempts;
	if (ob->attempts != NULL)
		ob->attempts->prev = a;
	ob->attempts = a;
	ob->in_flight++;
	lane->in_flight++;
	if (nf->type == PV_NOTIFIER_SLACK)
		lane->next_start_ms = now + ob->opt.slack_interval_ms;
}

static void
held_free(struct held *h)
{
	free(h->notifier);
	free(h->payload);
	free(h->key);
	free(h);
}

/* Offer the held messages to the state database, oldest first; false while some remain. */
static bool
held_flush(struct pv_outbox *ob)
{
	while (ob->held != NULL) {
		struct held *h = ob->held;
		struct pv_error err = {0};
		int64_t id = 0;
		bool added = false;

		if (!pv_state_outbox_add(ob->st, h->notifier, (time_t)(h->created_ms / 1000), h->created_ms,
		                         h->payload, h->key, &id, &added, &err))
			return false;
		pv_log_notice("held notification recorded notifier=%s id=%lld", pv_log_quote(h->notifier),
		              (long long)id);
		ob->held = h->next;
		if (ob->held == NULL)
			ob->held_tail = &ob->held;
		held_free(h);
	}
	return true;
}

/* One look at the outbox: send what is due and may go now, drop what is too old, and set the timer for
 * the earliest moment something else may go (completions kick a new pass). */
static void
pass(evutil_socket_t fd, short what, void *arg)
{
	struct pv_outbox *ob = arg;
	struct pv_state_outbox_msg *due;
	struct pv_error err = {0};
	int64_t now = now_ms(), wake = INT64_MAX, next;
	size_t n;

	if (!held_flush(ob))
		wake = now + HELD_RETRY_MS;
	if (ob->n_notifiers == 0) {
		if (wake != INT64_MAX)
			schedule(ob, wake - now);
		return;
	}
	if (!pv_state_outbox_due(ob->st, now, DUE_BATCH, &due, &n, &err)) {
		pv_log_error("reading the notification outbox failed, trying again in 5s error=%s",
		             pv_log_quote(err.msg));
		schedule(ob, 5000);
		return;
	}
	for (size_t i = 0; i < n && ob->in_flight < (size_t)ob->opt.max_in_flight; i++) {
		const struct pv_state_outbox_msg *m = &due[i];
		const struct notifier *nf;
		struct lane *lane;

		if (in_flight(ob, m->id))
			continue;
		nf = notifier_find(ob, m->notifier);
		if (nf == NULL) {
			/* Removed from the configuration: nobody will ever send it. */
			drop(ob, m, "notifier no longer configured");
			continue;
		}
		if (nf->type == PV_NOTIFIER_HEARTBEAT)
			continue;
		if ((int64_t)m->created + nf->max_age <= now / 1000) {
			char age[32], reason[64];

			format_age(nf->max_age, age, sizeof(age));
			snprintf(reason, sizeof(reason), "not delivered within max_age %s", age);
			drop(ob, m, reason);
			continue;
		}
		if (nf->url == NULL) {
			unsendable(ob, m, "notifier has no url configured");
			continue;
		}
		lane = lane_for(ob, nf->url);
		if (lane->blocked_until_ms > now) {
			wake = lane->blocked_until_ms < wake ? lane->blocked_until_ms : wake;
			continue;
		}
		if (nf->type == PV_NOTIFIER_SLACK) {
			if (lane->in_flight > 0)
				continue;
			if (lane->next_start_ms > now) {
				wake = lane->next_start_ms < wake ? lane->next_start_ms : wake;
				continue;
			}
		} else if (lane->in_flight >= ob->opt.max_per_endpoint) {
			continue;
		}
		send_one(ob, m, nf, lane, now);
	}
	pv_state_outbox_msgs_free(due, n);
	if (pv_state_outbox_next_due(ob->st, now, &next, &err))
		wake = next < wake ? next : wake;
	else if (err.code != PV_ERR_NOT_FOUND)
		pv_log_error("reading the notification outbox failed error=%s", pv_log_quote(err.msg));
	if (wake != INT64_MAX)
		schedule(ob, wake - now_ms());
}

struct pv_outbox *
pv_outbox_new(struct event_base *base, struct pv_state *st, struct pv_http *http,
              const struct pv_outbox_options *opts, struct pv_error *err)
{
	struct pv_outbox *ob = pv_calloc(1, sizeof(*ob));

	ob->base = base;
	ob->st = st;
	ob->http = http;
	if (opts != NULL)
		ob->opt = *opts;
	if (ob->opt.request_timeout_ms <= 0)
		ob->opt.request_timeout_ms = DEFAULT_REQUEST_TIMEOUT_MS;
	if (ob->opt.backoff_initial_ms <= 0)
		ob->opt.backoff_initial_ms = DEFAULT_BACKOFF_INITIAL_MS;
	if (ob->opt.backoff_max_ms <= 0)
		ob->opt.backoff_max_ms = DEFAULT_BACKOFF_MAX_MS;
	if (ob->opt.backoff_max_ms < ob->opt.backoff_initial_ms)
		ob->opt.backoff_max_ms = ob->opt.backoff_initial_ms;
	if (ob->opt.slack_interval_ms <= 0)
		ob->opt.slack_interval_ms = DEFAULT_SLACK_INTERVAL_MS;
	if (ob->opt.max_in_flight <= 0)
		ob->opt.max_in_flight = DEFAULT_MAX_IN_FLIGHT;
	if (ob->opt.max_per_endpoint <= 0)
		ob->opt.max_per_endpoint = DEFAULT_MAX_PER_ENDPOINT;
	if (getrandom(&ob->rng, sizeof(ob->rng), GRND_NONBLOCK) != (ssize_t)sizeof(ob->rng))
		ob->rng = (uint64_t)now_ms();
	ob->rng |= 1; /* xorshift must not start at 0 */
	ob->held_tail = &ob->held;
	ob->timer = evtimer_new(base, pass, ob);
	if (ob->timer == NULL) {
		free(ob);
		pv_error_set(err, PV_ERR_INTERNAL, "creating the outbox timer failed");
		return NULL;
	}
	return ob;
}

static void
notifiers_free(struct notifier *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i].name);
		free(v[i].url);
		free(v[i].ca_file);
		free(v[i].username);
		free(v[i].from);
		for (size_t k = 0; k < v[i].n_to; k++)
			free(v[i].to[k]);
		free(v[i].to);
		if (v[i].secret != NULL) {
			explicit_bzero(v[i].secret, strlen(v[i].secret));
			free(v[i].secret);
		}
		if (v[i].password != NULL) {
			explicit_bzero(v[i].password, strlen(v[i].password));
			free(v[i].password);
		}
	}
	free(v);
}

void
pv_outbox_free(struct pv_outbox *ob)
{
	if (ob == NULL)
		return;
	if (!held_flush(ob)) {
		size_t lost = 0;
		for (struct held *h = ob->held; h != NULL; h = h->next)
			lost++;
		pv_log_error("notifications lost: the state database did not take them before the stop "
		             "count=%zu",
		             lost);
	}
	while (ob->held != NULL) {
		struct held *h = ob->held;
		ob->held = h->next;
		held_free(h);
	}
	while (ob->attempts != NULL) {
		pv_http_cancel(ob->attempts->req);
		attempt_free(ob->attempts);
	}
	while (ob->lanes != NULL) {
		struct lane *l = ob->lanes;
		ob->lanes = l->next;
		free(l->url);
		free(l);
	}
	notifiers_free(ob->notifiers, ob->n_notifiers);
	event_free(ob->timer);
	free(ob);
}

void
pv_outbox_set_notifiers(struct pv_outbox *ob, const struct pv_config_notifier *v, size_t n)
{
	struct notifier *copy = pv_calloc(n > 0 ? n : 1, sizeof(*copy));

	for (size_t i = 0; i < n; i++) {
		const char *url = v[i].type == PV_NOTIFIER_SLACK   ? v[i].webhook_url.value
		                  : v[i].type == PV_NOTIFIER_EMAIL ? v[i].smtp_url
		                                                   : v[i].url.value;

		copy[i].name = pv_strdup(v[i].name);
		copy[i].type = v[i].type;
		copy[i].url = url != NULL ? pv_strdup(url) : NULL;
		copy[i].secret = v[i].secret.value != NULL ? pv_strdup(v[i].secret.value) : NULL;
		copy[i].max_age = v[i].max_age > 0 ? v[i].max_age : DEFAULT_MAX_AGE;
		copy[i].ca_file = v[i].ca_file != NULL ? pv_strdup(v[i].ca_file) : NULL;
		if (v[i].type == PV_NOTIFIER_EMAIL) {
			copy[i].require_tls = v[i].starttls == PV_STARTTLS_REQUIRED;
			copy[i].username = v[i].username != NULL ? pv_strdup(v[i].username) : NULL;
			copy[i].password =
			        v[i].password.value != NULL ? pv_strdup(v[i].password.value) : NULL;
			copy[i].from = v[i].from != NULL ? pv_strdup(v[i].from) : NULL;
			copy[i].n_to = v[i].to.n;
			copy[i].to = pv_calloc(v[i].to.n + 1, sizeof(char *));
			for (size_t k = 0; k < v[i].to.n; k++)
				copy[i].to[k] = pv_strdup(v[i].to.v[k]);
		}
	}
	notifiers_free(ob->notifiers, ob->n_notifiers);
	ob->notifiers = copy;
	ob->n_notifiers = n;
	pv_outbox_kick(ob);
}

bool
pv_outbox_enqueue(struct pv_outbox *ob, struct pv_notification *n, struct pv_error *err)
{
	int64_t now = now_ms();
	char *payload;
	bool ok, behind, added = false;

	if (n->idempotency_key == NULL) {
		unsigned char raw[16];
		char hex[33];

		if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw))
			return pv_error_set(err, PV_ERR_INTERNAL, "making an idempotency key failed: %s",
			                    strerror(errno));
		pv_crypto_hex(raw, sizeof(raw), hex);
		n->idempotency_key = pv_asprintf("pgvigil-%s", hex);
	}
	payload = pv_notification_to_json(n);
	/* Held ones first, so the order stays; a new one waits behind them. */
	behind = !held_flush(ob);
	ok = !behind && pv_state_outbox_add(ob->st, n->notifier, (time_t)(now / 1000), now, payload,
	                                    n->idempotency_key, &n->id, &added, err);
	if (!ok) {
		struct held *h = pv_calloc(1, sizeof(*h));

		h->notifier = pv_strdup(n->notifier);
		h->payload = payload;
		h->key = pv_strdup(n->idempotency_key);
		h->created_ms = now;
		*ob->held_tail = h;
		ob->held_tail = &h->next;
		n->id = 0;
		pv_log_warn("notification held in memory until the state database takes it notifier=%s "
		            "error=%s",
		            pv_log_quote(n->notifier),
		            pv_log_quote(behind ? "earlier notifications are still held" : err->msg));
		schedule(ob, HELD_RETRY_MS);
		return true;
	}
	free(payload);
	if (!added)
		pv_log_debug("notification already queued notifier=%s id=%lld", pv_log_quote(n->notifier),
		             (long long)n->id);
	pv_outbox_kick(ob);
	return true;
}

void
pv_outbox_stats(const struct pv_outbox *ob, struct pv_outbox_stats *out)
{
	*out = ob->stats;
	out->in_flight = ob->in_flight;
}
