/* Digests: events kept per notifier in the state database's key/value store ("digest:NAME", a JSON array)
 * and sent as one message at each time of the notifier's digest schedule. */
#include "notify/digest.h"

#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto/crypto.h"
#include "notify/outbox.h"
#include "sched/cron.h"
#include "state/state.h"
#include "util/log.h"
#include "util/mem.h"

/* Events kept per digest at most; older ones are counted, not listed. */
#define DIGEST_MAX_EVENTS 500
/* Lines listed in one digest message; the rest are summed up. */
#define DIGEST_MAX_LINES 40

struct sched {
	struct pv_digest *dg;
	char *notifier;
	struct pv_cron *cron; /* a copy: the configuration may go away on reload */
	struct event *timer;
	time_t next;
};

struct pv_digest {
	struct event_base *base;
	struct pv_state *st;
	struct pv_outbox *ob;
	struct pv_tz *tz;
	struct sched *v;
	size_t n;
};

static char *
kv_key(const char *notifier)
{
	return pv_asprintf("digest:%s", notifier);
}

static json_t *
load(struct pv_digest *dg, const char *notifier)
{
	char *key = kv_key(notifier), *text = NULL;
	json_t *j = NULL;
	struct pv_error err;

	if (pv_state_kv_get(dg->st, key, &text, &err))
		j = json_loads(text, 0, NULL);
	else if (err.code != PV_ERR_NOT_FOUND)
		pv_log_error("cannot read a digest notifier=%s error=%s", notifier, pv_log_quote(err.msg));
	free(text);
	free(key);
	if (!json_is_object(j)) {
		json_decref(j);
		j = json_pack("{s:[],s:i}", "events", "dropped", 0);
	}
	return j;
}

static bool
save(struct pv_digest *dg, const char *notifier, json_t *j, struct pv_error *err)
{
	char *key = kv_key(notifier), *text = json_dumps(j, JSON_COMPACT);
	bool ok = text != NULL && pv_state_kv_set(dg->st, key, text, err);

	if (text == NULL)
		pv_error_set(err, PV_ERR_INTERNAL, "out of memory");
	free(text);
	free(key);
	return ok;
}

bool
pv_digest_takes(const struct pv_config_notifier *nf, const struct pv_notification *n)
{
	return nf->digest != NULL && n->status == PV_NOTIFY_INFO && n->severity == PV_SEV_INFO;
}

bool
pv_digest_add(struct pv_digest *dg, const struct pv_notification *n, struct pv_error *err)
{
	json_t *j = load(dg, n->notifier), *events = json_object_get(j, "events");
	bool ok;

	if (json_array_size(events) >= DIGEST_MAX_EVENTS) {
		json_array_remove(events, 0);
		json_object_set_new(j, "dropped",
		                    json_integer(json_integer_value(json_object_get(j, "dropped")) + 1));
	}
	json_array_append_new(events, json_pack("{s:s?,s:s?,s:s?,s:s?,s:s?,s:I}", "rule", n->rule, "database",
	                                        n->database, "job", n->job, "title", n->title, "value",
	                                        n->value, "at", (json_int_t)n->at));
	ok = save(dg, n->notifier, j, err);
	json_decref(j);
	return ok;
}

static const char *
jstr(json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s != NULL ? s : "";
}

void
pv_digest_flush(struct pv_digest *dg, const char *notifier, time_t slot)
{
	json_t *j = load(dg, notifier), *events = json_object_get(j, "events"), *e;
	size_t n = json_array_size(events), i, lines = 0;
	int64_t dropped = json_integer_value(json_object_get(j, "dropped"));
	struct pv_notification msg = {0};
	struct pv_crypto_sha256 *h;
	char hex[PV_CRYPTO_SHA256_HEX_LEN + 1], *seed, *text = NULL;
	struct pv_error err;
	size_t len = 0;
	FILE *f;

	if (n == 0) {
		json_decref(j);
		return;
	}
	f = open_memstream(&text, &len);
	if (f == NULL)
		abort();
	json_array_foreach(events, i, e)
	{
		char when[32];
		time_t at = (time_t)json_integer_value(json_object_get(e, "at"));
		struct tm tm;

		if (lines++ >= DIGEST_MAX_LINES)
			break;
		gmtime_r(&at, &tm);
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M", &tm);
		fprintf(f, "%s  %s\n", when, jstr(e, "title")[0] ? jstr(e, "title") : jstr(e, "rule"));
	}
	if (n > DIGEST_MAX_LINES)
		fprintf(f, "... and %zu more\n", n - DIGEST_MAX_LINES);
	if (dropped > 0)
		fprintf(f, "(%lld older events were not kept)\n", (long long)dropped);
	fclose(f);

	msg.notifier = pv_strdup(notifier);
	msg.rule = pv_strdup("digest");
	msg.severity = PV_SEV_INFO;
	msg.status = PV_NOTIFY_INFO;
	msg.title =
	        pv_asprintf("pgvigil digest: %zu event%s", n + (size_t)dropped, n + dropped == 1 ? "" : "s");
	msg.value = pv_asprintf("%zu", n + (size_t)dropped);
	msg.at = slot;
	msg.text = text;
	/* One digest per notifier and period: queueing it twice (a crash before the events are forgotten)
	 * queues nothing new. */
	seed = pv_asprintf("digest\n%s\n%lld", notifier, (long long)slot);
	h = pv_crypto_sha256_new();
	pv_crypto_sha256_update(h, seed, strlen(seed));
	pv_crypto_sha256_final_hex(h, hex);
	pv_crypto_sha256_free(h);
	free(seed);
	msg.idempotency_key = pv_asprintf("pgvigil-%.32s", hex);
	if (!pv_outbox_enqueue(dg->ob, &msg, &err)) {
		pv_log_error("cannot queue a digest, keeping its events notifier=%s error=%s", notifier,
		             pv_log_quote(err.msg));
	} else {
		json_t *empty = json_pack("{s:[],s:i}", "events", "dropped", 0);
		pv_log_info("digest queued notifier=%s events=%zu", notifier, n);
		if (!save(dg, notifier, empty, &err))
			pv_log_error("cannot clear a sent digest, its events may be sent again notifier=%s "
			             "error=%s",
			             notifier, pv_log_quote(err.msg));
		json_decref(empty);
	}
	pv_notification_clear(&msg);
	json_decref(j);
}

static void
arm(struct sched *s)
{
	time_t now = time(NULL);
	struct timeval tv;

	if (!pv_cron_next(s->cron, s->dg->tz, now, &s->next)) {
		pv_log_warn("digest schedule never fires notifier=%s", s->notifier);
		return;
	}
	/* Re-checked at least every hour, so a wall-clock jump does not hold a digest back for long. */
	tv.tv_sec = s->next - now < 3600 ? s->next - now : 3600;
	tv.tv_usec = 0;
	evtimer_add(s->timer, &tv);
}

static void
due(evutil_socket_t fd, short what, void *arg)
{
	struct sched *s = arg;

	if (time(NULL) >= s->next)
		pv_digest_flush(s->dg, s->notifier, s->next);
	arm(s);
}

struct pv_digest *
pv_digest_new(struct event_base *base, struct pv_state *st, struct pv_outbox *ob)
{
	struct pv_digest *dg = pv_calloc(1, sizeof(*dg));

	dg->base = base;
	dg->st = st;
	dg->ob = ob;
	return dg;
}

static void
scheds_clear(struct pv_digest *dg)
{
	for (size_t i = 0; i < dg->n; i++) {
		event_free(dg->v[i].timer);
		free(dg->v[i].notifier);
		pv_cron_free(dg->v[i].cron);
	}
	free(dg->v);
	dg->v = NULL;
	dg->n = 0;
}

void
pv_digest_free(struct pv_digest *dg)
{
	if (dg == NULL)
		return;
	scheds_clear(dg);
	pv_tz_free(dg->tz);
	free(dg);
}

void
pv_digest_set_notifiers(struct pv_digest *dg, const struct pv_config_notifier *v, size_t n,
                        const char *timezone)
{
	struct pv_error err;
	size_t count = 0;

	scheds_clear(dg);
	pv_tz_free(dg->tz);
	dg->tz = NULL;
	if (!pv_tz_load(timezone != NULL ? timezone : "UTC", &dg->tz, &err) &&
	    !pv_tz_load("UTC", &dg->tz, &err)) {
		pv_log_error("digests disabled: no time zone error=%s", pv_log_quote(err.msg));
		return;
	}
	for (size_t i = 0; i < n; i++)
		if (v[i].digest != NULL)
			count++;
	if (count == 0)
		return;
	dg->v = pv_calloc(count, sizeof(*dg->v));
	for (size_t i = 0; i < n; i++) {
		struct sched *s;

		if (v[i].digest == NULL)
			continue;
		s = &dg->v[dg->n];
		if (!pv_cron_parse(pv_cron_text(v[i].digest), &s->cron, &err)) {
			pv_log_error("digest schedule refused notifier=%s error=%s", v[i].name,
			             pv_log_quote(err.msg));
			continue;
		}
		dg->n++;
		s->dg = dg;
		s->notifier = pv_strdup(v[i].name);
		s->timer = evtimer_new(dg->base, due, s);
		arm(s);
	}
}
