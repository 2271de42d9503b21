/* Unit tests for src/notify: formatters, the curl-on-libevent client and the outbox sender against an
 * in-process HTTP sink (libevent's evhttp on 127.0.0.1, in the same event loop). */
#include <check.h>
#include <curl/curl.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "notify/heartbeat.h"
#include "notify/http.h"
#include "notify/notify.h"
#include "notify/outbox.h"
#include "state/state.h"
#include "util/log.h"
#include "util/mem.h"

#include "testlib.h"

/* ---- temporary directories ---- */

/* The directory for this binary's state databases, removed even when a forked test fails (testlib.h). */
static void
base_setup(void)
{
	pv_test_tmpdir_setup("check_notify");
}

static void
test_db_path(char *path, size_t size)
{
	char dir[PATH_MAX];

	pv_test_tmpdir_sub(dir, sizeof(dir));
	snprintf(path, size, "%s/state.db", dir);
}

static int64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t
wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the sink ---- */

/* What the sink answers, in order; after the script, 200 "ok". */
struct reply {
	int status;
	const char *body;
	const char *retry_after;
	bool stall; /* never answer */
};

struct received {
	char path[64];
	char *body;
	char key[256];
	char sig[128];
	bool sig_ok;   /* the signature matched our own HMAC of the body */
	int64_t at_ms; /* monotonic */
};

#define SINK_MAX 2048

struct sink {
	struct event_base *base;
	struct evhttp *http;
	int port;
	struct reply script[16];
	int n_script, next;
	const char *secret;
	struct received got[SINK_MAX];
	size_t n_got;
};

static void
sink_handle(struct evhttp_request *req, void *arg)
{
	struct sink *s = arg;
	struct evbuffer *in = evhttp_request_get_input_buffer(req), *out;
	struct evkeyvalq *h = evhttp_request_get_input_headers(req);
	struct received *r;
	struct reply rep = {200, "ok", NULL, false};
	size_t len = evbuffer_get_length(in);
	const char *v;

	ck_assert_uint_lt(s->n_got, SINK_MAX);
	r = &s->got[s->n_got++];
	snprintf(r->path, sizeof(r->path), "%s", evhttp_request_get_uri(req));
	r->body = pv_malloc(len + 1);
	evbuffer_remove(in, r->body, len);
	r->body[len] = '\0';
	r->at_ms = mono_ms();
	if ((v = evhttp_find_header(h, "X-Pgvigil-Idempotency-Key")) != NULL)
		snprintf(r->key, sizeof(r->key), "%s", v);
	if ((v = evhttp_find_header(h, "X-Pgvigil-Signature")) != NULL) {
		unsigned char mac[EVP_MAX_MD_SIZE];
		unsigned int mac_len = 0;
		char want[80] = "sha256=";

		snprintf(r->sig, sizeof(r->sig), "%s", v);
		if (s->secret != NULL) {
			HMAC(EVP_sha256(), s->secret, (int)strlen(s->secret), (unsigned char *)r->body, len,
			     mac, &mac_len);
			for (unsigned i = 0; i < mac_len; i++)
				snprintf(want + 7 + 2 * i, 3, "%02x", mac[i]);
			r->sig_ok = strcmp(want, v) == 0;
		}
	}
	if (s->next < s->n_script)
		rep = s->script[s->next++];
	if (rep.stall)
		return; /* never touched again: evhttp frees it when the client goes away */
	if (rep.retry_after != NULL)
		evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", rep.retry_after);
	out = evbuffer_new();
	evbuffer_add_printf(out, "%s", rep.body != NULL ? rep.body : "");
	evhttp_send_reply(req, rep.status, "whatever", out);
	evbuffer_free(out);
}

/* port 0 = any free port. */
static void
sink_start(struct sink *s, struct event_base *base, int port)
{
	struct evhttp_bound_socket *bound;
	struct sockaddr_in sa;
	socklen_t sl = sizeof(sa);

	s->base = base;
	s->http = evhttp_new(base);
	ck_assert_ptr_nonnull(s->http);
	evhttp_set_gencb(s->http, sink_handle, s);
	bound = evhttp_bind_socket_with_handle(s->http, "127.0.0.1", (ev_uint16_t)port);
	ck_assert_ptr_nonnull(bound);
	ck_assert_int_eq(getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&sa, &sl), 0);
	s->port = ntohs(sa.sin_port);
}

static void
sink_stop(struct sink *s)
{
	if (s->http != NULL)
		evhttp_free(s->http);
	s->http = NULL;
	for (size_t i = 0; i < s->n_got; i++)
		free(s->got[i].body);
	s->n_got = 0;
}

/* A port nothing listens on (bound, read, closed). */
static int
free_port(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
	port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

/* ---- the world: loop, state, client, outbox, sink ---- */

struct world {
	struct event_base *base;
	struct pv_state *st;
	struct pv_http *http;
	struct pv_outbox *ob;
	struct sink sink;
	char path[PATH_MAX];
	char url[128];
	struct pv_outbox_event events[SINK_MAX + 64];
	char *event_errors[SINK_MAX + 64];
	size_t n_events;
	size_t n_sent;
	int broken;
	char broken_notifier[64], broken_reason[512];
};

static void
on_event(const struct pv_outbox_event *ev, void *arg)
{
	struct world *w = arg;

	ck_assert_uint_lt(w->n_events, sizeof(w->events) / sizeof(w->events[0]));
	w->events[w->n_events] = *ev;
	w->events[w->n_events].notifier = NULL;
	w->events[w->n_events].idempotency_key = NULL;
	w->events[w->n_events].error = NULL;
	w->event_errors[w->n_events] = ev->error != NULL ? pv_strdup(ev->error) : NULL;
	w->n_events++;
	if (ev->kind == PV_OUTBOX_SENT)
		w->n_sent++;
}

static void
on_broken(const char *notifier, const char *reason, void *arg)
{
	struct world *w = arg;

	w->broken++;
	snprintf(w->broken_notifier, sizeof(w->broken_notifier), "%s", notifier);
	snprintf(w->broken_reason, sizeof(w->broken_reason), "%s", reason);
}

static struct pv_outbox_options
fast_options(void)
{
	struct pv_outbox_options o = {0};

	o.request_timeout_ms = 2000;
	o.backoff_initial_ms = 200;
	o.backoff_max_ms = 1000;
	o.slack_interval_ms = 1000;
	return o;
}

static void
world_open(struct world *w, const struct pv_outbox_options *opts)
{
	struct pv_error err = {0};
	struct pv_outbox_options o = opts != NULL ? *opts : fast_options();

	if (w->base == NULL)
		w->base = event_base_new();
	ck_assert_ptr_nonnull(w->base);
	if (w->path[0] == '\0')
		test_db_path(w->path, sizeof(w->path));
	ck_assert_msg(pv_state_open(w->path, &w->st, &err), "%s", err.msg);
	w->http = pv_http_new(w->base, &err);
	ck_assert_msg(w->http != NULL, "%s", err.msg);
	o.on_event = on_event;
	o.on_broken = on_broken;
	o.arg = w;
	w->ob = pv_outbox_new(w->base, w->st, w->http, &o, &err);
	ck_assert_msg(w->ob != NULL, "%s", err.msg);
}

/* The outbox, client and state go; the loop and the sink stay. */
static void
world_close(struct world *w)
{
	pv_outbox_free(w->ob);
	pv_http_free(w->http);
	pv_state_close(w->st);
	w->ob = NULL;
	w->http = NULL;
	w->st = NULL;
}

static void
world_free(struct world *w)
{
	world_close(w);
	sink_stop(&w->sink);
	for (size_t i = 0; i < w->n_events; i++)
		free(w->event_errors[i]);
	event_base_free(w->base);
}

static void
world_sink(struct world *w, int port)
{
	sink_start(&w->sink, w->base, port);
	snprintf(w->url, sizeof(w->url), "http://127.0.0.1:%d/hook", w->sink.port);
}

static struct pv_config_notifier
notifier(const char *name, enum pv_notifier_type type, const char *url, const char *secret)
{
	struct pv_config_notifier nf = {0};

	nf.name = (char *)name;
	nf.type = type;
	nf.max_age = 3600;
	if (type == PV_NOTIFIER_SLACK)
		nf.webhook_url.value = (char *)url;
	else
		nf.url.value = (char *)url;
	nf.secret.value = (char *)secret;
	return nf;
}

static void
enqueue(struct world *w, const char *notifier_name, const char *title, struct pv_notification *keep)
{
	struct pv_notification n = {0};
	struct pv_error err = {0};

	n.notifier = pv_strdup(notifier_name);
	n.rule = pv_strdup("backup_stale");
	n.severity = PV_SEV_CRITICAL;
	n.status = PV_NOTIFY_FIRING;
	n.database = pv_strdup("production");
	n.job = pv_strdup("daily-backup");
	n.title = pv_strdup(title);
	n.value = pv_strdup("26h");
	n.threshold = pv_strdup("24h");
	n.at = time(NULL);
	ck_assert_msg(pv_outbox_enqueue(w->ob, &n, &err), "%s", err.msg);
	ck_assert_int_gt(n.id, 0);
	ck_assert_ptr_nonnull(n.idempotency_key);
	if (keep != NULL)
		*keep = n;
	else
		pv_notification_clear(&n);
}

static void
tick(evutil_socket_t fd, short what, void *arg)
{
}

/* Run the loop until pred holds or timeout_ms passes; returns pred's final value. */
static bool
run_until(struct world *w, bool (*pred)(struct world *), int64_t timeout_ms)
{
	struct timeval tv = {0, 10000};
	struct event *t = event_new(w->base, -1, EV_PERSIST, tick, NULL);
	int64_t end = mono_ms() + timeout_ms;
	bool ok;

	event_add(t, &tv);
	while (!(ok = pred(w)) && mono_ms() < end)
		event_base_loop(w->base, EVLOOP_ONCE);
	event_free(t);
	return ok;
}

static bool
never(struct world *w)
{
	return false;
}

static size_t want_sent;
static bool
sent_enough(struct world *w)
{
	return w->n_sent >= want_sent;
}

static size_t want_got;
static bool
got_enough(struct world *w)
{
	return w->sink.n_got >= want_got;
}

static size_t
count_kind(struct world *w, enum pv_outbox_event_kind kind)
{
	size_t n = 0;

	for (size_t i = 0; i < w->n_events; i++)
		n += w->events[i].kind == kind;
	return n;
}

static bool
some_failed(struct world *w)
{
	return count_kind(w, PV_OUTBOX_FAILED) > 0;
}

static bool
some_dropped(struct world *w)
{
	return count_kind(w, PV_OUTBOX_DROPPED) > 0;
}

static void
msg_get(struct world *w, int64_t id, struct pv_state_outbox_msg *m)
{
	struct pv_error err = {0};

	ck_assert_msg(pv_state_outbox_get(w->st, id, m, &err), "%s", err.msg);
}

/* ---- stderr capture, to assert on log lines ---- */

static int saved_stderr = -1;
static char capture_path[PATH_MAX + 16];

static void
capture_begin(const char *db_path)
{
	int fd;

	snprintf(capture_path, sizeof(capture_path), "%s.log", db_path);
	fflush(stderr);
	saved_stderr = dup(STDERR_FILENO);
	fd = open(capture_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	dup2(fd, STDERR_FILENO);
	close(fd);
}

static char *
capture_end(void)
{
	FILE *f;
	char *buf;
	long n;

	fflush(stderr);
	dup2(saved_stderr, STDERR_FILENO);
	close(saved_stderr);
	f = fopen(capture_path, "rb");
	ck_assert_ptr_nonnull(f);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = pv_malloc((size_t)n + 1);
	ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* ---- formatters ---- */

static struct pv_notification
sample(void)
{
	struct pv_notification n = {0};

	n.notifier = "slack-ops";
	n.rule = "backup_stale";
	n.severity = PV_SEV_CRITICAL;
	n.status = PV_NOTIFY_FIRING;
	n.database = "production";
	n.job = "daily-backup";
	n.title = "no successful backup of production for 26h";
	n.value = "26h";
	n.threshold = "24h";
	n.at = 1795485600; /* 2026-11-24 02:00:00 UTC */
	n.idempotency_key = "k-1";
	return n;
}

static json_t *
parse(const char *text)
{
	json_error_t e;
	json_t *j = json_loads(text, 0, &e);

	ck_assert_msg(j != NULL, "not JSON (%s): %s", e.text, text);
	return j;
}

static const char *
slack_field(json_t *att, const char *title)
{
	json_t *fields = json_object_get(att, "fields");

	for (size_t i = 0; i < json_array_size(fields); i++) {
		json_t *f = json_array_get(fields, i);
		if (strcmp(json_string_value(json_object_get(f, "title")), title) == 0)
			return json_string_value(json_object_get(f, "value"));
	}
	return NULL;
}

START_TEST(test_notify__slack_format)
{
	static const struct {
		enum pv_severity sev;
		enum pv_notify_status status;
		const char *colour, *label;
	} cases[] = {
	        {PV_SEV_CRITICAL, PV_NOTIFY_FIRING, "#d00000", "[CRITICAL]"},
	        {PV_SEV_WARNING, PV_NOTIFY_FIRING, "#daa038", "[WARNING]"},
	        {PV_SEV_INFO, PV_NOTIFY_INFO, "#439fe0", "[INFO]"},
	        {PV_SEV_CRITICAL, PV_NOTIFY_RESOLVED, "#2eb886", "[RESOLVED]"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct pv_notification n = sample();
		char *body;
		json_t *j, *att;

		n.severity = cases[i].sev;
		n.status = cases[i].status;
		body = pv_slack_format(&n);
		j = parse(body);
		att = json_array_get(json_object_get(j, "attachments"), 0);
		ck_assert_ptr_nonnull(att);
		ck_assert_str_eq(json_string_value(json_object_get(att, "color")), cases[i].colour);
		ck_assert_msg(strstr(json_string_value(json_object_get(att, "title")), cases[i].label) !=
		                      NULL,
		              "%s", body);
		ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(j, "text")), n.title));
		ck_assert_str_eq(slack_field(att, "Database"), "production");
		ck_assert_str_eq(slack_field(att, "Rule"), "backup_stale");
		ck_assert_str_eq(slack_field(att, "Value"), "26h");
		ck_assert_str_eq(slack_field(att, "Threshold"), "24h");
		ck_assert_str_eq(slack_field(att, "Time"), "2026-11-24 02:00:00 UTC");
		ck_assert_str_eq(slack_field(att, "Status"), cases[i].status == PV_NOTIFY_RESOLVED
		                                                     ? "resolved"
		                                             : cases[i].status == PV_NOTIFY_INFO ? "info"
		                                                                                 : "firing");
		json_decref(j);
		free(body);
	}
}
END_TEST

/* Huge and broken strings still give valid JSON within Slack's limits, cut on character boundaries. */
START_TEST(test_notify__slack_size_limits)
{
	struct pv_notification n = sample();
	size_t big = 100000;
	char *title = pv_malloc(big * 3 + 1), *value = pv_malloc(big + 1), *body;
	json_t *j, *att;
	const char *t;

	for (size_t i = 0; i < big; i++)
		memcpy(title + 3 * i, "\xe2\x82\xac", 3); /* "€" */
	title[big * 3] = '\0';
	memset(value, 'v', big);
	value[big] = '\0';
	n.title = title;
	n.value = value;
	n.database = "bad\xff\xfe utf8";
	body = pv_slack_format(&n);
	j = parse(body);
	ck_assert_uint_lt(strlen(body), 3 * PV_SLACK_MAX_TEXT);
	att = json_array_get(json_object_get(j, "attachments"), 0);
	t = json_string_value(json_object_get(att, "title"));
	ck_assert_ptr_nonnull(t);
	ck_assert_uint_lt(strlen(t), 3 * 320);
	ck_assert_ptr_nonnull(strstr(t, "\xe2\x80\xa6")); /* "…" says it was cut */
	ck_assert_uint_le(strlen(slack_field(att, "Value")), 300 + 2);
	ck_assert_ptr_nonnull(slack_field(att, "Database"));
	json_decref(j);
	free(body);
	free(title);
	free(value);
}
END_TEST

START_TEST(test_notify__classify)
{
	static const struct {
		long status;
		const char *body;
		enum pv_notify_verdict slack, webhook;
	} cases[] = {
	        {200, "ok", PV_NOTIFY_DELIVERED, PV_NOTIFY_DELIVERED},
	        {204, NULL, PV_NOTIFY_DELIVERED, PV_NOTIFY_DELIVERED},
	        {400, "invalid_payload", PV_NOTIFY_PERMANENT, PV_NOTIFY_PERMANENT},
	        {400, "something_else", PV_NOTIFY_RETRY, PV_NOTIFY_PERMANENT},
	        {403, "action_prohibited", PV_NOTIFY_PERMANENT, PV_NOTIFY_PERMANENT},
	        {404, "no_service", PV_NOTIFY_PERMANENT, PV_NOTIFY_PERMANENT},
	        {404, "channel_not_found", PV_NOTIFY_PERMANENT, PV_NOTIFY_PERMANENT},
	        {404, "<html>not here</html>", PV_NOTIFY_RETRY, PV_NOTIFY_PERMANENT},
	        {410, "channel_is_archived", PV_NOTIFY_PERMANENT, PV_NOTIFY_PERMANENT},
	        {429, "rate_limited", PV_NOTIFY_RETRY, PV_NOTIFY_RETRY},
	        {500, "rollup_error", PV_NOTIFY_RETRY, PV_NOTIFY_RETRY},
	        {503, NULL, PV_NOTIFY_RETRY, PV_NOTIFY_RETRY},
	        {302, NULL, PV_NOTIFY_RETRY, PV_NOTIFY_RETRY},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		ck_assert_msg(pv_slack_classify(cases[i].status, cases[i].body) == cases[i].slack,
		              "slack %ld %s", cases[i].status, cases[i].body);
		ck_assert_msg(pv_webhook_classify(cases[i].status, cases[i].body) == cases[i].webhook,
		              "webhook %ld %s", cases[i].status, cases[i].body);
	}
}
END_TEST

START_TEST(test_notify__webhook_format_and_signature)
{
	struct pv_notification n = sample();
	char sig[PV_WEBHOOK_SIGNATURE_LEN + 1], *body;
	json_t *j;

	/* RFC 4231 test case 2. */
	pv_webhook_sign("Jefe", "what do ya want for nothing?", 28, sig);
	ck_assert_str_eq(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");

	n.job = NULL;
	body = pv_webhook_format(&n);
	j = parse(body);
	ck_assert_int_eq(json_integer_value(json_object_get(j, "version")), 1);
	ck_assert_str_eq(json_string_value(json_object_get(j, "idempotency_key")), "k-1");
	ck_assert_str_eq(json_string_value(json_object_get(j, "notifier")), "slack-ops");
	ck_assert_str_eq(json_string_value(json_object_get(j, "rule")), "backup_stale");
	ck_assert_str_eq(json_string_value(json_object_get(j, "severity")), "critical");
	ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "firing");
	ck_assert_str_eq(json_string_value(json_object_get(j, "database")), "production");
	ck_assert(json_is_null(json_object_get(j, "job")));
	ck_assert_str_eq(json_string_value(json_object_get(j, "value")), "26h");
	ck_assert_str_eq(json_string_value(json_object_get(j, "threshold")), "24h");
	ck_assert_str_eq(json_string_value(json_object_get(j, "at")), "2026-11-24T02:00:00Z");
	ck_assert_int_eq(json_integer_value(json_object_get(j, "at_unix")), 1795485600);
	json_decref(j);
	free(body);
}
END_TEST

START_TEST(test_notify__payload_round_trip)
{
	struct pv_notification n = sample(), back;
	struct pv_error err = {0};
	char *text;

	n.status = PV_NOTIFY_RESOLVED;
	n.severity = PV_SEV_WARNING;
	n.value = NULL;
	text = pv_notification_to_json(&n);
	ck_assert_msg(pv_notification_from_json(text, &back, &err), "%s", err.msg);
	ck_assert_str_eq(back.notifier, n.notifier);
	ck_assert_str_eq(back.rule, n.rule);
	ck_assert_str_eq(back.title, n.title);
	ck_assert_str_eq(back.database, n.database);
	ck_assert_str_eq(back.job, n.job);
	ck_assert_ptr_null(back.value);
	ck_assert_str_eq(back.threshold, n.threshold);
	ck_assert_str_eq(back.idempotency_key, n.idempotency_key);
	ck_assert_int_eq(back.severity, PV_SEV_WARNING);
	ck_assert_int_eq(back.status, PV_NOTIFY_RESOLVED);
	ck_assert_int_eq(back.at, n.at);
	pv_notification_clear(&back);
	free(text);

	ck_assert(!pv_notification_from_json("[1]", &back, &err));
	ck_assert(!pv_notification_from_json("{\"notifier\":\"a\",\"rule\":\"r\",\"severity\":\"loud\","
	                                     "\"status\":\"firing\",\"at\":1}",
	                                     &back, &err));
	ck_assert_ptr_nonnull(strstr(err.msg, "severity"));
}
END_TEST

/* ---- the http client ---- */

static bool http_done_flag;
static struct {
	long status;
	int64_t retry_after;
	size_t body_len;
	bool truncated, timed_out;
	char error[256];
} http_res;

static void
http_done(const struct pv_http_result *res, void *arg)
{
	http_done_flag = true;
	http_res.status = res->status;
	http_res.retry_after = res->retry_after;
	http_res.body_len = res->body_len;
	http_res.truncated = res->body_truncated;
	http_res.timed_out = res->timed_out;
	snprintf(http_res.error, sizeof(http_res.error), "%s", res->error != NULL ? res->error : "");
}

static bool
http_finished(struct world *w)
{
	return http_done_flag;
}

START_TEST(test_notify__http_client)
{
	struct world w = {0};
	struct pv_error err = {0};
	struct pv_http_request req = {0};
	char big[5000];
	const char *hdr[] = {"X-Test: 1"};

	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	w.base = event_base_new();
	world_sink(&w, 0);
	w.http = pv_http_new(w.base, &err);
	ck_assert_ptr_nonnull(w.http);

	/* Retry-After as an HTTP date in the past means "now"; as a delta, that many seconds; the body is
	 * capped. */
	w.sink.script[0] = (struct reply){429, big, "120", false};
	w.sink.script[1] = (struct reply){503, "busy", "Wed, 21 Oct 2015 07:28:00 GMT", false};
	w.sink.script[2] = (struct reply){200, "fine", NULL, false};
	w.sink.n_script = 3;
	req.url = w.url;
	req.headers = hdr;
	req.n_headers = 1;
	req.body = "{}";
	req.body_len = 2;
	req.max_response = 100;

	http_done_flag = false;
	ck_assert_ptr_nonnull(pv_http_start(w.http, &req, http_done, NULL, &err));
	ck_assert(!http_done_flag); /* never from inside pv_http_start */
	ck_assert_uint_eq(pv_http_in_flight(w.http), 1);
	ck_assert(run_until(&w, http_finished, 5000));
	ck_assert_int_eq(http_res.status, 429);
	ck_assert_int_eq(http_res.retry_after, 120);
	ck_assert_uint_eq(http_res.body_len, 100);
	ck_assert(http_res.truncated);
	ck_assert_uint_eq(pv_http_in_flight(w.http), 0);

	http_done_flag = false;
	ck_assert_ptr_nonnull(pv_http_start(w.http, &req, http_done, NULL, &err));
	ck_assert(run_until(&w, http_finished, 5000));
	ck_assert_int_eq(http_res.status, 503);
	ck_assert_int_eq(http_res.retry_after, 0);

	http_done_flag = false;
	req.method = "GET";
	ck_assert_ptr_nonnull(pv_http_start(w.http, &req, http_done, NULL, &err));
	ck_assert(run_until(&w, http_finished, 5000));
	ck_assert_int_eq(http_res.status, 200);
	ck_assert_int_eq(http_res.retry_after, -1);
	ck_assert(!http_res.truncated);

	/* A cancelled request never calls back. */
	w.sink.script[3] = (struct reply){0, NULL, NULL, true};
	w.sink.n_script = 4;
	http_done_flag = false;
	pv_http_cancel(pv_http_start(w.http, &req, http_done, NULL, &err));
	run_until(&w, never, 300);
	ck_assert(!http_done_flag);

	/* Only http and https. */
	req.url = "file:///etc/passwd";
	http_done_flag = false;
	ck_assert_ptr_nonnull(pv_http_start(w.http, &req, http_done, NULL, &err));
	ck_assert(run_until(&w, http_finished, 5000));
	ck_assert_int_eq(http_res.status, 0);
	ck_assert_str_ne(http_res.error, "");
	world_free(&w);
}
END_TEST

/* ---- the outbox ---- */

START_TEST(test_notify__retry_500_then_200)
{
	struct world w = {0};
	struct pv_config_notifier nf;
	struct pv_notification n;
	struct pv_state_outbox_msg m;

	world_open(&w, NULL);
	world_sink(&w, 0);
	w.sink.script[0] = (struct reply){500, "rollup_error", NULL, false};
	w.sink.n_script = 1;
	nf = notifier("hook", PV_NOTIFIER_WEBHOOK, w.url, NULL);
	pv_outbox_set_notifiers(w.ob, &nf, 1);
	enqueue(&w, "hook", "a", &n);
	want_sent = 1;
	ck_assert(run_until(&w, sent_enough, 5000));
	run_until(&w, never, 600); /* nothing more comes */
	ck_assert_uint_eq(w.sink.n_got, 2);
	ck_assert_str_eq(w.sink.got[0].key, n.idempotency_key);
	ck_assert_str_eq(w.sink.got[1].key, n.idempotency_key);
	/* Backoff: half to all of the initial 200 ms. */
	ck_assert_int_ge(w.sink.got[1].at_ms - w.sink.got[0].at_ms, 95);
	ck_assert_uint_eq(count_kind(&w, PV_OUTBOX_RETRY), 1);
	ck_assert_int_eq(w.events[0].status, 500);
	msg_get(&w, n.id, &m);
	ck_assert_str_eq(m.status, "sent");
	ck_assert_int_eq(m.attempts, 2);
	ck_assert_str_eq(m.last_error, "HTTP 500: rollup_error");
	ck_assert_int_gt(m.sent_at, 0);
	pv_state_outbox_msg_clear(&m);
	ck_assert_int_eq(w.broken, 0);
	pv_notification_clear(&n);
	world_free(&w);
}
END_TEST

START_TEST(test_notify__retry_after_429)
{
	struct world w = {0};
	struct pv_config_notifier nf;
	struct pv_notification n;
	int64_t before;

	world_open(&w, NULL);
	world_sink(&w, 0);
	w.sink.script[0] = (struct reply){429, "rate_limited", "2", false};
	w.sink.n_script = 1;
	nf = notifier("slack-ops", PV_NOTIFIER_SLACK, w.url, NULL);
	pv_outbox_set_notifiers(w.ob, &nf, 1);
	before = wall_ms();
	enqueue(&w, "slack-ops", "a", &n);
	want_sent = 1;
	ck_assert(run_until(&w, sent_enough, 6000));
	ck_assert_uint_eq(w.sink.n_got, 2);
	ck_assert_int_eq(w.events[0].kind, PV_OUTBOX_RETRY);
	ck_assert_int_eq(w.events[0].status, 429);
	ck_assert_int_ge(w.events[0].next_attempt_ms, before + 2000);
	ck_assert_int_ge(w.sink.got[1].at_ms - w.sink.got[0].at_ms, 1990);
	pv_notification_clear(&n);
	world_free(&w);
}
END_TEST

START_TEST(test_notify__slack_404_no_service_is_permanent)
{
	struct world w = {0};
	struct pv_config_notifier nf;
	struct pv_notification n;
	struct pv_state_outbox_msg m;
	struct pv_state_outbox_counts c;
	char *log;

	world_open(&w, NULL);
	world_sink(&w, 0);
	w.sink.script[0] = (struct reply){404, "no_service", NULL, false};
	w.sink.n_script = 1;
	nf = notifier("slack-ops", PV_NOTIFIER_SLACK, w.url, NULL);
	pv_outbox_set_notifiers(w.ob, &nf, 1);
	enqueue(&w, "slack-ops", "a", &n);
	capture_begin(w.path);
	ck_assert(run_until(&w, some_failed, 5000));
	run_until(&w, never, 1000);
	log = capture_end();
	ck_assert_uint_eq(w.sink.n_got, 1); /* not retried */
	ck_assert_int_eq(w.broken, 1);
	ck_assert_str_eq(w.broken_notifier, "slack-ops");
	ck_assert_str_eq(w.broken_reason, "HTTP 404: no_service");
	ck_assert_msg(strstr(log, "refused a notification permanently") != NULL, "log: %s", log);
	ck_assert_msg(strstr(log, w.url) == NULL, "the webhook url was logged: %s", log);
	free(log);
	msg_get(&w, n.id, &m);
	ck_assert_str_eq(m.status, "failed");
	ck_assert_str_eq(m.last_error, "HTTP 404: no_service");
	pv_state_outbox_msg_clear(&m);
	ck_assert(pv_state_outbox_counts(w.st, "slack-ops", &c, NULL));
	ck_assert_int_eq(c.failed, 1);
	ck_assert_int_eq(c.pending, 0);
	pv_notification_clear(&n);
	world_free(&w);
}
END_TEST

START_TEST(test_notify__400_invalid_payload_is_permanent)
{
	struct world w = {0};
	struct pv_config_notifier nf[2];
	struct pv_notification a, b;
	struct pv_state_outbox_msg m;

	world_open(&w, NULL);
	world_sink(&w, 0);
	w.sink.script[0] = (struct reply){400, "invalid_payload", NULL, false};
	w.sink.script[1] = (struct reply){400, "invalid_payload", NULL, false};
	w.sink.n_script = 2;
	nf[0] = notifier("slack-ops", PV_NOTIFIER_SLACK, w.url, NULL);
	nf[1] = notifier("hook", PV_NOTIFIER_WEBHOOK, w.url, "s3cret");
	pv_outbox_set_notifiers(w.ob, nf, 2);
	enqueue(&w, "slack-ops", "a", &a);
	enqueue(&w, "hook", "b", &b);
	run_until(&w, never, 1200);
	ck_assert_uint_eq(w.sink.n_got, 2);
	ck_assert_int_eq(w.broken, 2);
	msg_get(&w, a.id, &m);
	ck_assert_str_eq(m.status, "failed");
	ck_assert_int_eq(m.attempts, 1);
	pv_state_outbox_msg_clear(&m);
	msg_get(&w, b.id, &m);
	ck_assert_str_eq(m.status, "failed");
	pv_state_outbox_msg_clear(&m);
	pv_notification_clear(&a);
	pv_notification_clear(&b);
	world_free(&w);
}
END_TEST

static bool
refused_once(struct world *w)
{
	return count_kind(w, PV_OUTBOX_RETRY) >= 2;
}

START_TEST(test_notify__sink_down_then_up)
{
	struct world w = {0};
	struct pv_config_notifier nf;
	struct pv_notification n;
	struct pv_state_outbox_msg m;
	int port = free_port();

	world_open(&w, NULL);
	snprintf(w.url, sizeof(w.url), "http://127.0.0.1:%d/hook", port);
	nf = notifier("hook", PV_NOTIFIER_WEBHOOK, w.url, NULL);
	pv_outbox_set_notifiers(w.ob, &nf, 1);
	enqueue(&w, "hook", "a", &n);
	ck_assert(run_until(&w, refused_once, 5000));
	ck_assert_int_eq(w.events[0].status, 0);
	ck_assert_ptr_nonnull(w.event_errors[0]);
	ck_assert_int_eq(w.n_sent, 0);
	sink_start(&w.sink, w.base, port);
	want_sent = 1;
	ck_assert(run_until(&w, sent_enough, 5000));
	ck_assert_uint_eq(w.sink.n_got, 1);
	ck_assert_str_eq(w.sink.got[0].key, n.idempotency_key);
	msg_get(&w, n.id, &m);
	ck_assert_str_eq(m.status, "sent");
	ck_assert_int_ge(m.attempts, 3);
	pv_state_outbox_msg_clear(&m);
	ck_assert_int_eq(w.broken, 0);
	pv_notification_clear(&n);
	world_free(&w);
}
END_TEST

START_TEST(test_notify__slow_sink_times_out_and_retries)
{
	struct world w = {0};
	struct pv_outbox_options o = fast_options();
	struct pv_config_notifier nf;
	struct pv_notification n;

	o.request_timeout_ms = 300;
	world_open(&w, &o);
	world_sink(&w, 0);
	w.sink.script[0] = (struct reply){0, NULL, NULL, true};
	w.sink.n_script = 1;
	nf = notifier("hook", PV_NOTIFIER_WEBHOOK, w.url, NULL);
	pv_outbox_set_notifiers(w.ob, &nf, 1);
	enqueue(&w, "hook", "a", &n);
	want_sent = 1;
	ck_assert(run_until(&w, sent_enough, 5000));
	ck_assert_uint_eq(w.sink.n_got, 2);
	ck_assert_int_eq(w.events[0].kind, PV_OUTBOX_RETRY);
	ck_assert_int_eq(w.events[0].status, 0);
	ck_assert_msg(strcasestr(w.event_errors[0], "timed out") != NULL ||
	                      strcasestr(w.event_errors[0], "timeout") != NULL,
	              "error: %s", w.event_errors[0]);
	ck_assert_int_ge(w.sink.got[1].at_ms - w.sink.got[0].at_ms, 300);
	ck_assert_str_eq(w.sink.got[0].key, w.sink.got[1].key);
	pv_notification_clear(&n);
	world_free(&w);
}
END_TEST

START_TEST(test_notify__max_age_drops_with_log_line)
{
	struct world w = {0};
	struct pv_config_notifier nf;
	struct pv_error err = {0};
	struct pv_state_outbox_msg m;
	int64_t id;
	char *log;
	time_t now = time(NULL);

	world_open(&w, NULL);
	world_sink(&w, 0);
	nf = notifier("hook", PV_NOTIFIER_WEBHOOK, w.url, NULL);
	nf.max_age = 60;
	/* Queued 2 minutes ago and never delivered. */
	ck_assert_msg(pv_state_outbox_add(w.st, "hook", now - 120, (now - 120) * 1000,
	                                  "{\"notifier\":\"hook\",\"rule\":\"r\",\"severity\":\"info\","
	                                  "\"status\":\"info\",\"at\":1,\"idempotency_key\":\"old\"}",
	                                  "old", &id, NULL, &err),
	              "%s", err.msg);
	ck_assert(pv_state_outbox_mark_retry(w.st, id, (now - 60) * 1000, "HTTP 502", &err));
	capture_begin(w.path);
	pv_outbox_set_notifiers(w.ob, &nf, 1);
	ck_assert(run_until(&w, some_dropped, 3000));
	log = capture_end();
	ck_assert_uint_eq(w.sink.n_got, 0);
	ck_assert_msg(strstr(log, "notification dropped") != NULL && strstr(log, "max_age 1m") != NULL &&
	                      strstr(log, "HTTP 502") != NULL,
	              "log: %s", log);
	free(log);
	msg_get(&w, id, &m);
	ck_assert_str_eq(m.status, "dropped");
	ck_assert_ptr_nonnull(strstr(m.last_error, "max_age"));
	pv_state_outbox_msg_clear(&m);
	world_free(&w);
}
END_TEST

/* Written before any attempt: with no notifier configured nothing is sent, and a reopened database
 * still has every message, payload and key. */
START_TEST(test_notify__outbox_survives_reopen)
{
	struct world w = {0};
	struct pv_notification n[3];
	struct pv_state_outbox_msg *due;
	struct pv_error err = {0};
	size_t count;

	world_open(&w, NULL);
	for (int i = 0; i < 3; i++)
		enqueue(&w, "hook", i == 0 ? "first" : "other", &n[i]);
	world_close(&w);
	world_open(&w, NULL);
	ck_assert_msg(pv_state_outbox_due(w.st, wall_ms(), 0, &due, &count, &err), "%s", err.msg);
	ck_assert_uint_eq(count, 3);
	for (size_t i = 0; i < count; i++) {
		struct pv_notification back;

		ck_assert_int_eq(due[i].id, n[i].id);
		ck_assert_str_eq(due[i].idempotency_key, n[i].idempotency_key);
		ck_assert_str_eq(due[i].status, "pending");
		ck_assert_msg(pv_notification_from_json(due[i].payload, &back, &err), "%s", err.msg);
		ck_assert_str_eq(back.title, n[i].title);
		ck_assert_str_eq(back.idempotency_key, n[i].idempotency_key);
		pv_notification_clear(&back);
	}
	pv_state_outbox_msgs_free(due, count);

	/* Queueing a known key again queues nothing. */
	{
		struct pv_notification again = {0};
		again.notifier = pv_strdup("hook");
		again.rule = pv_strdup("backup_stale");
		again.title = pv_strdup("dup");
		again.idempotency_key = pv_strdup(n[1].idempotency_key);
		ck_assert(pv_outbox_enqueue(w.ob, &again, &err));
		ck_assert_int_eq(again.id, n[1].id);
		pv_notification_clear(&again);
	}
	for (int i = 0; i < 3; i++)
		pv_notification_clear(&n[i]);
	world_free(&w);
}
END_TEST

/* A real crash: a child process sends, the sink holds the request, the child is SIGKILLed before it can
 * record anything; a new sender delivers the message again with the same idempotency key. */
START_TEST(test_notify__redelivery_after_crash_keeps_key)
{
	struct world w = {0};
	struct pv_config_notifier nf;
	struct pv_state_outbox_msg *due;
	struct pv_error err = {0};
	size_t count;
	pid_t pid;
	int status;

	w.base = event_base_new();
	world_sink(&w, 0);
	w.sink.script[0] = (struct reply){0, NULL, NULL, true};
	w.sink.n_script = 1;
	test_db_path(w.path, sizeof(w.path));
	nf = notifier("hook", PV_NOTIFIER_WEBHOOK, w.url, "s3cret");
	w.sink.secret = "s3cret";

	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct world c = {0};

		snprintf(c.path, sizeof(c.path), "%s", w.path);
		c.base = event_base_new();
		world_open(&c, NULL);
		pv_outbox_set_notifiers(c.ob, &nf, 1);
		enqueue(&c, "hook", "crash", NULL);
		run_until(&c, never, 20000);
		_exit(3);
	}
	want_got = 1;
	ck_assert(run_until(&w, got_enough, 10000));
	kill(pid, SIGKILL);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFSIGNALED(status));

	world_open(&w, NULL);
	ck_assert(pv_state_outbox_due(w.st, wall_ms(), 0, &due, &count, &err));
	ck_assert_uint_eq(count, 1);
	ck_assert_int_eq(due[0].attempts, 0); /* the crashed attempt was never recorded */
	ck_assert_str_eq(due[0].idempotency_key, w.sink.got[0].key);
	pv_state_outbox_msgs_free(due, count);
	pv_outbox_set_notifiers(w.ob, &nf, 1);
	want_sent = 1;
	ck_assert(run_until(&w, sent_enough, 5000));
	ck_assert_uint_eq(w.sink.n_got, 2);
	ck_assert_str_eq(w.sink.got[1].key, w.sink.got[0].key);
	ck_assert(w.sink.got[0].sig_ok && w.sink.got[1].sig_ok);
	world_free(&w);
}
END_TEST

static int64_t
deliver_timed(const char *const *paths, size_t n_paths, size_t n_msgs)
{
	struct world w = {0};
	struct pv_config_notifier nf[4];
	char urls[4][128];
	int64_t start, elapsed;

	world_open(&w, NULL);
	world_sink(&w, 0);
	for (size_t i = 0; i < n_paths; i++) {
		char name[16];
		snprintf(urls[i], sizeof(urls[i]), "http://127.0.0.1:%d%s", w.sink.port, paths[i]);
		snprintf(name, sizeof(name), "slack-%zu", i);
		nf[i] = notifier(pv_strdup(name), PV_NOTIFIER_SLACK, urls[i], NULL);
	}
	for (size_t i = 0; i < n_msgs; i++)
		enqueue(&w, nf[i % n_paths].name, "m", NULL);
	start = mono_ms();
	pv_outbox_set_notifiers(w.ob, nf, n_paths);
	want_sent = n_msgs;
	ck_assert(run_until(&w, sent_enough, 15000));
	elapsed = mono_ms() - start;
	ck_assert_uint_eq(w.sink.n_got, n_msgs);
	/* Per webhook, starts at least about a second apart. */
	for (size_t i = 0; i < w.sink.n_got; i++)
		for (size_t j = i + 1; j < w.sink.n_got; j++)
			if (strcmp(w.sink.got[i].path, w.sink.got[j].path) == 0)
				ck_assert_int_ge(w.sink.got[j].at_ms - w.sink.got[i].at_ms, 950);
	for (size_t i = 0; i < n_paths; i++)
		free(nf[i].name);
	world_free(&w);
	return elapsed;
}

START_TEST(test_notify__slack_rate_limit_per_webhook)
{
	const char *one[] = {"/services/A"};
	const char *two[] = {"/services/A", "/services/B"};
	int64_t single = deliver_timed(one, 1, 5), split = deliver_timed(two, 2, 5);

	printf("slack pacing: 5 messages to one webhook in %lld ms, to two webhooks in %lld ms\n",
	       (long long)single, (long long)split);
	fflush(stdout);
	ck_assert_msg(single >= 3900, "5 messages to one webhook took %lld ms", (long long)single);
	ck_assert_msg(split < single - 1000, "5 messages to two webhooks took %lld ms (one: %lld ms)",
	              (long long)split, (long long)single);
}
END_TEST

START_TEST(test_notify__hmac_signature_verified_by_sink)
{
	struct world w = {0};
	struct pv_config_notifier nf[2];
	char plain_url[160];
	json_t *j;

	world_open(&w, NULL);
	world_sink(&w, 0);
	w.sink.secret = "correct horse battery staple";
	snprintf(plain_url, sizeof(plain_url), "%s-plain", w.url);
	nf[0] = notifier("signed", PV_NOTIFIER_WEBHOOK, w.url, "correct horse battery staple");
	nf[1] = notifier("plain", PV_NOTIFIER_WEBHOOK, plain_url, NULL);
	pv_outbox_set_notifiers(w.ob, nf, 2);
	enqueue(&w, "signed", "s", NULL);
	enqueue(&w, "plain", "p", NULL);
	want_sent = 2;
	ck_assert(run_until(&w, sent_enough, 5000));
	ck_assert_uint_eq(w.sink.n_got, 2);
	for (size_t i = 0; i < 2; i++) {
		struct received *r = &w.sink.got[i];

		j = parse(r->body);
		ck_assert_str_eq(json_string_value(json_object_get(j, "idempotency_key")), r->key);
		if (strcmp(r->path, "/hook") == 0) {
			ck_assert_str_eq(json_string_value(json_object_get(j, "notifier")), "signed");
			ck_assert_uint_eq(strlen(r->sig), PV_WEBHOOK_SIGNATURE_LEN);
			ck_assert(r->sig_ok);
		} else {
			ck_assert_str_eq(json_string_value(json_object_get(j, "notifier")), "plain");
			ck_assert_str_eq(r->sig, "");
		}
		json_decref(j);
	}
	/* The sink's check can fail: a different secret does not verify. */
	{
		char sig[PV_WEBHOOK_SIGNATURE_LEN + 1];
		pv_webhook_sign("wrong", w.sink.got[0].body, strlen(w.sink.got[0].body), sig);
		ck_assert_str_ne(sig, w.sink.got[0].sig[0] != '\0' ? w.sink.got[0].sig : w.sink.got[1].sig);
	}
	world_free(&w);
}
END_TEST

struct ticker {
	int64_t last, max_gap;
	int ticks;
};

static void
ticker_cb(evutil_socket_t fd, short what, void *arg)
{
	struct ticker *t = arg;
	int64_t now = mono_ms();

	if (t->last != 0 && now - t->last > t->max_gap)
		t->max_gap = now - t->last;
	t->last = now;
	t->ticks++;
}

START_TEST(test_notify__loop_never_blocks)
{
	struct world w = {0};
	struct pv_outbox_options o = fast_options();
	struct pv_config_notifier nf;
	struct ticker t = {0};
	struct timeval tv = {0, 50000};
	struct event *ev;
	struct pv_outbox_stats stats;

	o.request_timeout_ms = 5000;
	world_open(&w, &o);
	world_sink(&w, 0);
	w.sink.script[0] = (struct reply){0, NULL, NULL, true};
	w.sink.n_script = 1;
	nf = notifier("hook", PV_NOTIFIER_WEBHOOK, w.url, NULL);
	pv_outbox_set_notifiers(w.ob, &nf, 1);
	ev = event_new(w.base, -1, EV_PERSIST, ticker_cb, &t);
	event_add(ev, &tv);
	enqueue(&w, "hook", "stalled", NULL);
	want_got = 1;
	ck_assert(run_until(&w, got_enough, 3000));
	t.last = mono_ms();
	t.max_gap = 0;
	t.ticks = 0;
	run_until(&w, never, 1000);
	pv_outbox_stats(w.ob, &stats);
	ck_assert_uint_eq(stats.in_flight, 1); /* still waiting for the sink */
	ck_assert_msg(t.ticks >= 15, "ticks %d", t.ticks);
	ck_assert_msg(t.max_gap < 200, "the loop stalled for %lld ms", (long long)t.max_gap);
	event_free(ev);
	world_free(&w);
}
END_TEST

START_TEST(test_notify__throughput_1000)
{
	struct world w = {0};
	struct pv_outbox_options o = fast_options();
	struct pv_config_notifier nf;
	int64_t start, queued, elapsed;
	struct pv_state_outbox_counts c;

	o.max_in_flight = 16;
	o.max_per_endpoint = 16;
	world_open(&w, &o);
	world_sink(&w, 0);
	nf = notifier("hook", PV_NOTIFIER_WEBHOOK, w.url, "secret");
	start = mono_ms();
	for (int i = 0; i < 1000; i++)
		enqueue(&w, "hook", "burst", NULL);
	queued = mono_ms() - start;
	start = mono_ms();
	pv_outbox_set_notifiers(w.ob, &nf, 1);
	want_sent = 1000;
	ck_assert(run_until(&w, sent_enough, 120000));
	elapsed = mono_ms() - start;
	ck_assert_uint_eq(w.sink.n_got, 1000);
	ck_assert(pv_state_outbox_counts(w.st, "hook", &c, NULL));
	ck_assert_int_eq(c.sent, 1000);
	ck_assert_int_eq(c.pending, 0);
	printf("outbox throughput: 1000 queued in %lld ms (%.0f/s), delivered in %lld ms (%.0f messages/s)\n",
	       (long long)queued, 1000.0 * 1000 / (double)(queued > 0 ? queued : 1), (long long)elapsed,
	       1000.0 * 1000 / (double)(elapsed > 0 ? elapsed : 1));
	fflush(stdout);
	world_free(&w);
}
END_TEST

/* The email message: headers for threading and auto-replies, a readable body, no header injection. */
START_TEST(test_notify__email_format)
{
	struct pv_notification n = {0};
	const char *to[] = {"oncall@example.com", "Ops <ops@example.com>"};
	char *msg, *env;

	n.notifier = "oncall";
	n.rule = "connectivity_lost";
	n.severity = PV_SEV_CRITICAL;
	n.status = PV_NOTIFY_RESOLVED;
	n.database = "production";
	n.title = "resolved: connectivity_lost on production\r\nBcc: evil@example.com";
	n.value = "unreachable for 6m";
	n.threshold = "5m";
	n.at = 1795485600; /* 2026-11-24 02:00:00 UTC */
	n.idempotency_key = "pgvigil-aaaa";
	n.thread_key = "pgvigil-root";
	msg = pv_email_format(&n, "pgvigil <alerts@example.org>", to, 2, 1795485660);

	ck_assert_msg(strstr(msg, "Date: Tue, 24 Nov 2026 02:01:00 +0000\r\n") != NULL, "%s", msg);
	ck_assert(strstr(msg, "From: pgvigil <alerts@example.org>\r\n") != NULL);
	ck_assert(strstr(msg, "To: oncall@example.com,\r\n Ops <ops@example.com>\r\n") != NULL);
	ck_assert(strstr(msg, "Message-ID: <pgvigil-aaaa@example.org>\r\n") != NULL);
	ck_assert(strstr(msg, "In-Reply-To: <pgvigil-root@example.org>\r\n") != NULL);
	ck_assert(strstr(msg, "References: <pgvigil-root@example.org>\r\n") != NULL);
	ck_assert(strstr(msg, "Auto-Submitted: auto-generated\r\n") != NULL);
	ck_assert(strstr(msg, "Content-Type: text/plain; charset=utf-8\r\n") != NULL);
	/* The CR LF in the title cannot start a header of its own. */
	ck_assert_msg(strstr(msg, "\r\nBcc:") == NULL, "%s", msg);
	ck_assert(
	        strstr(msg, "Subject: [pgvigil RESOLVED] resolved: connectivity_lost on production  Bcc:") !=
	        NULL);
	ck_assert(strstr(msg, "\r\n\r\n") != NULL);
	ck_assert(strstr(msg, "Threshold: 5m\r\n") != NULL);
	ck_assert(strstr(msg, "Time:      2026-11-24 02:00:00 UTC\r\n") != NULL);
	/* Every line short enough for a phone and for SMTP; no bare LF. */
	for (const char *p = msg, *nl; (nl = strchr(p, '\n')) != NULL; p = nl + 1) {
		ck_assert_msg(nl > msg && nl[-1] == '\r', "bare LF at %ld", (long)(nl - msg));
		ck_assert_int_lt(nl - p, 998);
	}
	free(msg);

	/* The first message of an alert starts the thread; non-ASCII subjects are RFC 2047 words. */
	n.thread_key = "pgvigil-aaaa";
	n.title = "backup_stale on base_données: 26h";
	n.status = PV_NOTIFY_FIRING;
	msg = pv_email_format(&n, "alerts@example.org", to, 1, 1795485660);
	ck_assert(strstr(msg, "In-Reply-To:") == NULL && strstr(msg, "References:") == NULL);
	ck_assert_msg(strstr(msg, "Subject: =?UTF-8?B?") != NULL, "%s", msg);
	ck_assert(strstr(msg, "Message-ID: <pgvigil-aaaa@example.org>") != NULL);
	free(msg);

	env = pv_email_envelope("Ops Team <ops@example.com>");
	ck_assert_str_eq(env, "<ops@example.com>");
	free(env);
	env = pv_email_envelope("ops@example.com");
	ck_assert_str_eq(env, "<ops@example.com>");
	free(env);
}
END_TEST

START_TEST(test_notify__email_classify)
{
	ck_assert_int_eq(pv_email_classify(CURLE_OK, 250), PV_NOTIFY_DELIVERED);
	ck_assert_int_eq(pv_email_classify(CURLE_LOGIN_DENIED, 535), PV_NOTIFY_PERMANENT);
	ck_assert_int_eq(pv_email_classify(CURLE_SEND_ERROR, 550), PV_NOTIFY_PERMANENT);
	ck_assert_int_eq(pv_email_classify(CURLE_SEND_ERROR, 451), PV_NOTIFY_RETRY);
	ck_assert_int_eq(pv_email_classify(CURLE_USE_SSL_FAILED, 0), PV_NOTIFY_PERMANENT);
	ck_assert_int_eq(pv_email_classify(CURLE_PEER_FAILED_VERIFICATION, 0), PV_NOTIFY_PERMANENT);
	ck_assert_int_eq(pv_email_classify(CURLE_COULDNT_CONNECT, 0), PV_NOTIFY_RETRY);
	ck_assert_int_eq(pv_email_classify(CURLE_OPERATION_TIMEDOUT, 0), PV_NOTIFY_RETRY);
	ck_assert_int_eq(pv_email_classify(CURLE_RECV_ERROR, 421), PV_NOTIFY_RETRY);
}
END_TEST

/* Digest text and thread keys survive the outbox payload. */
START_TEST(test_notify__payload_keeps_thread_and_text)
{
	struct pv_notification n = {0}, back;
	struct pv_error err = {0};
	char *json;

	n.notifier = "mail";
	n.rule = "digest";
	n.status = PV_NOTIFY_INFO;
	n.at = 5;
	n.thread_key = "pgvigil-t";
	n.text = "line one\nline two";
	json = pv_notification_to_json(&n);
	ck_assert_msg(pv_notification_from_json(json, &back, &err), "%s", err.msg);
	ck_assert_str_eq(back.thread_key, "pgvigil-t");
	ck_assert_str_eq(back.text, "line one\nline two");
	pv_notification_clear(&back);
	free(json);
}
END_TEST

/* ---- heartbeat ---- */

static bool hb_is_healthy;

static bool
hb_healthy(void *arg, char *why, size_t size)
{
	if (!hb_is_healthy)
		snprintf(why, size, "test says no");
	return hb_is_healthy;
}

static void
run_for(struct event_base *base, int ms)
{
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

	event_base_loopexit(base, &tv);
	event_base_dispatch(base);
}

/* Pings every `every` while healthy, none while not (counted as skipped), the first one at once. */
START_TEST(test_notify__heartbeat_only_while_healthy)
{
	struct event_base *base = event_base_new();
	struct pv_error err = {0};
	struct pv_http *http = pv_http_new(base, &err);
	struct sink sink = {0};
	struct pv_config_notifier nf = {0};
	struct pv_heartbeat *hb;
	char url[128];
	json_t *st;

	ck_assert_ptr_nonnull(http);
	sink_start(&sink, base, 0);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/ping/abc", sink.port);
	nf.name = "deadman";
	nf.type = PV_NOTIFIER_HEARTBEAT;
	nf.url.value = url;
	nf.every = 1;
	hb_is_healthy = false;
	hb = pv_heartbeat_new(base, http, hb_healthy, NULL);
	pv_heartbeat_set_notifiers(hb, &nf, 1);
	run_for(base, 2300);
	ck_assert_uint_eq(sink.n_got, 0);
	st = pv_heartbeat_status_json(hb);
	ck_assert_int_ge(json_integer_value(json_object_get(json_object_get(st, "deadman"), "skipped")), 3);
	json_decref(st);

	hb_is_healthy = true;
	run_for(base, 2300);
	ck_assert_uint_ge(sink.n_got, 2);
	ck_assert_uint_le(sink.n_got, 3);
	ck_assert_str_eq(sink.got[0].path, "/ping/abc");
	ck_assert_str_eq(sink.got[0].body, "");
	st = pv_heartbeat_status_json(hb);
	ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(st, "deadman"), "pings")),
	                 (json_int_t)sink.n_got);
	ck_assert_ptr_nonnull(json_string_value(json_object_get(json_object_get(st, "deadman"), "last_ok")));
	json_decref(st);

	/* The endpoint failing is counted, and the pings go on. */
	sink.script[0] = (struct reply){503, "down", NULL, false};
	sink.script[1] = (struct reply){503, "down", NULL, false};
	sink.n_script = 2;
	sink.next = 0;
	run_for(base, 1500);
	st = pv_heartbeat_status_json(hb);
	ck_assert_int_ge(json_integer_value(json_object_get(json_object_get(st, "deadman"), "failures")), 1);
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(st, "deadman"), "last_error")),
	                 "HTTP 503");
	json_decref(st);

	/* A reload with the same settings keeps the heartbeat (its counters), a changed one starts anew. */
	pv_heartbeat_set_notifiers(hb, &nf, 1);
	st = pv_heartbeat_status_json(hb);
	ck_assert_int_ge(json_integer_value(json_object_get(json_object_get(st, "deadman"), "pings")), 2);
	json_decref(st);
	nf.every = 2;
	pv_heartbeat_set_notifiers(hb, &nf, 1);
	st = pv_heartbeat_status_json(hb);
	ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(st, "deadman"), "pings")), 0);
	json_decref(st);

	pv_heartbeat_free(hb);
	sink_stop(&sink);
	pv_http_free(http);
	event_base_free(base);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("notify");
	TCase *tc = tcase_create("core");
	TCase *slow = tcase_create("slow");
	SRunner *sr;
	int failed;

	signal(SIGPIPE, SIG_IGN);
	/* Warnings and errors only: the tests that assert on log lines capture them. */
	pv_log_set_level(PV_LOG_WARNING);
	tcase_add_unchecked_fixture(tc, base_setup, pv_test_tmpdir_teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_notify__slack_format);
	tcase_add_test(tc, test_notify__slack_size_limits);
	tcase_add_test(tc, test_notify__classify);
	tcase_add_test(tc, test_notify__webhook_format_and_signature);
	tcase_add_test(tc, test_notify__payload_round_trip);
	tcase_add_test(tc, test_notify__http_client);
	tcase_add_test(tc, test_notify__retry_500_then_200);
	tcase_add_test(tc, test_notify__retry_after_429);
	tcase_add_test(tc, test_notify__slack_404_no_service_is_permanent);
	tcase_add_test(tc, test_notify__400_invalid_payload_is_permanent);
	tcase_add_test(tc, test_notify__sink_down_then_up);
	tcase_add_test(tc, test_notify__slow_sink_times_out_and_retries);
	tcase_add_test(tc, test_notify__max_age_drops_with_log_line);
	tcase_add_test(tc, test_notify__outbox_survives_reopen);
	tcase_add_test(tc, test_notify__redelivery_after_crash_keeps_key);
	tcase_add_test(tc, test_notify__hmac_signature_verified_by_sink);
	tcase_add_test(tc, test_notify__loop_never_blocks);
	tcase_add_test(tc, test_notify__email_format);
	tcase_add_test(tc, test_notify__heartbeat_only_while_healthy);
	tcase_add_test(tc, test_notify__email_classify);
	tcase_add_test(tc, test_notify__payload_keeps_thread_and_text);
	suite_add_tcase(s, tc);

	tcase_add_unchecked_fixture(slow, base_setup, pv_test_tmpdir_teardown);
	tcase_set_timeout(slow, 180);
	tcase_add_test(slow, test_notify__slack_rate_limit_per_webhook);
	tcase_add_test(slow, test_notify__throughput_1000);
	suite_add_tcase(s, slow);

	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
