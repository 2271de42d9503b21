/* Heartbeat pings: one timer per heartbeat notifier, requests through the shared http client. */
#include "notify/heartbeat.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "notify/http.h"
#include "util/log.h"
#include "util/mem.h"

/* A ping may take at most this long (or `every`, when shorter). */
#define PING_TIMEOUT_MS 10000

struct beat {
	struct pv_heartbeat *hb;
	char *name;
	char *url;
	char *ca_file;
	bool post;
	int64_t every;
	struct event *timer;
	struct pv_http_req *req;
	uint64_t pings, failures, skipped;
	time_t last_ok;
	char last_error[256];
	bool failing, unhealthy; /* for logging transitions once */
};

struct pv_heartbeat {
	struct event_base *base;
	struct pv_http *http;
	pv_heartbeat_healthy_fn healthy;
	void *arg;
	struct beat **beats;
	size_t n;
};

static void
beat_free(struct beat *b)
{
	if (b->req != NULL)
		pv_http_cancel(b->req);
	if (b->timer != NULL)
		event_free(b->timer);
	free(b->name);
	if (b->url != NULL) {
		explicit_bzero(b->url, strlen(b->url));
		free(b->url);
	}
	free(b->ca_file);
	free(b);
}

static void
ping_done(const struct pv_http_result *res, void *arg)
{
	struct beat *b = arg;

	b->req = NULL;
	if (res->status >= 200 && res->status < 300) {
		b->pings++;
		b->last_ok = time(NULL);
		b->last_error[0] = '\0';
		if (b->failing)
			pv_log_notice("heartbeat delivered again notifier=%s", b->name);
		else
			pv_log_debug("heartbeat delivered notifier=%s seconds=%.3f", b->name, res->seconds);
		b->failing = false;
		return;
	}
	b->failures++;
	if (res->status != 0)
		snprintf(b->last_error, sizeof(b->last_error), "HTTP %ld", res->status);
	else
		snprintf(b->last_error, sizeof(b->last_error), "%s",
		         res->error != NULL ? res->error : "no answer");
	if (!b->failing)
		pv_log_warn("heartbeat not delivered, next ping in %llds notifier=%s error=%s",
		            (long long)b->every, b->name, pv_log_quote(b->last_error));
	b->failing = true;
}

static void
tick(evutil_socket_t fd, short what, void *arg)
{
	struct beat *b = arg;
	struct pv_heartbeat *hb = b->hb;
	struct pv_http_request req = {0};
	struct pv_error err;
	char why[256] = "";

	if (b->req != NULL) {
		b->skipped++;
		return; /* the last ping is still on its way */
	}
	if (hb->healthy != NULL && !hb->healthy(hb->arg, why, sizeof(why))) {
		b->skipped++;
		if (!b->unhealthy)
			pv_log_warn("heartbeat withheld: the daemon is not healthy notifier=%s reason=%s",
			            b->name, pv_log_quote(why));
		b->unhealthy = true;
		return;
	}
	if (b->unhealthy)
		pv_log_notice("heartbeat resumed notifier=%s", b->name);
	b->unhealthy = false;
	req.method = b->post ? "POST" : "GET";
	req.url = b->url;
	req.ca_file = b->ca_file;
	req.timeout_ms = b->every * 1000 < PING_TIMEOUT_MS ? b->every * 1000 : PING_TIMEOUT_MS;
	if (b->post) {
		req.body = "";
		req.body_len = 0;
	}
	b->req = pv_http_start(hb->http, &req, ping_done, b, &err);
	if (b->req == NULL) {
		b->failures++;
		snprintf(b->last_error, sizeof(b->last_error), "%s", err.msg);
		pv_log_error("heartbeat request failed to start notifier=%s error=%s", b->name,
		             pv_log_quote(err.msg));
	}
}

struct pv_heartbeat *
pv_heartbeat_new(struct event_base *base, struct pv_http *http, pv_heartbeat_healthy_fn healthy, void *arg)
{
	struct pv_heartbeat *hb = pv_calloc(1, sizeof(*hb));

	hb->base = base;
	hb->http = http;
	hb->healthy = healthy;
	hb->arg = arg;
	return hb;
}

void
pv_heartbeat_free(struct pv_heartbeat *hb)
{
	if (hb == NULL)
		return;
	for (size_t i = 0; i < hb->n; i++)
		beat_free(hb->beats[i]);
	free(hb->beats);
	free(hb);
}

static bool
same(const struct beat *b, const struct pv_config_notifier *nf)
{
	return strcmp(b->name, nf->name) == 0 && strcmp(b->url, nf->url.value) == 0 && b->post == nf->post &&
	       b->every == (nf->every > 0 ? nf->every : 300) &&
	       ((b->ca_file == NULL && nf->ca_file == NULL) ||
	        (b->ca_file != NULL && nf->ca_file != NULL && strcmp(b->ca_file, nf->ca_file) == 0));
}

void
pv_heartbeat_set_notifiers(struct pv_heartbeat *hb, const struct pv_config_notifier *v, size_t n)
{
	struct beat **keep = pv_calloc(n + 1, sizeof(*keep));
	size_t count = 0;

	/* A heartbeat whose settings did not change keeps its rhythm and counters across a reload. */
	for (size_t i = 0; i < n; i++) {
		struct beat *b = NULL;
		struct timeval tv = {0, 0};

		if (v[i].type != PV_NOTIFIER_HEARTBEAT || v[i].url.value == NULL)
			continue;
		for (size_t k = 0; k < hb->n && b == NULL; k++)
			if (hb->beats[k] != NULL && same(hb->beats[k], &v[i])) {
				b = hb->beats[k];
				hb->beats[k] = NULL;
			}
		if (b == NULL) {
			b = pv_calloc(1, sizeof(*b));
			b->hb = hb;
			b->name = pv_strdup(v[i].name);
			b->url = pv_strdup(v[i].url.value);
			b->ca_file = v[i].ca_file != NULL ? pv_strdup(v[i].ca_file) : NULL;
			b->post = v[i].post;
			b->every = v[i].every > 0 ? v[i].every : 300;
			b->timer = event_new(hb->base, -1, EV_PERSIST, tick, b);
			tv.tv_sec = (time_t)b->every;
			event_add(b->timer, &tv);
			tick(-1, 0, b); /* the first ping now */
		}
		keep[count++] = b;
	}
	for (size_t k = 0; k < hb->n; k++)
		if (hb->beats[k] != NULL)
			beat_free(hb->beats[k]);
	free(hb->beats);
	hb->beats = keep;
	hb->n = count;
}

json_t *
pv_heartbeat_status_json(const struct pv_heartbeat *hb)
{
	json_t *o = json_object();

	for (size_t i = 0; hb != NULL && i < hb->n; i++) {
		const struct beat *b = hb->beats[i];
		char when[32] = "";
		struct tm tm;

		if (b->last_ok > 0) {
			gmtime_r(&b->last_ok, &tm);
			strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
		}
		json_object_set_new(o, b->name,
		                    json_pack("{s:I,s:I,s:I,s:o,s:o}", "pings", (json_int_t)b->pings,
		                              "failures", (json_int_t)b->failures, "skipped",
		                              (json_int_t)b->skipped, "last_ok",
		                              b->last_ok > 0 ? json_string(when) : json_null(), "last_error",
		                              b->last_error[0] ? json_string(b->last_error) : json_null()));
	}
	return o;
}
