/* The alert state machine (pure): pending, firing, repeating and resolving alerts, and what to send. */
#include "alert/engine.h"

#include <stdlib.h>
#include <string.h>

#include "util/mem.h"

static const char *const status_names[] = {"pending", "firing", "resolved"};
static const char *const kind_names[] = {"firing", "repeat", "severity", "resolved", "event"};
/* The engine does not depend on the config loader's tables: these match pv_severity_name(). */
static const char *const severity_names[] = {"info", "warning", "critical"};

const char *
pv_alert_status_name(enum pv_alert_status status)
{
	return (unsigned)status < 3 ? status_names[status] : "?";
}

const char *
pv_alert_kind_name(enum pv_alert_kind kind)
{
	return (unsigned)kind < 5 ? kind_names[kind] : "?";
}

static char *
dup_or_null(const char *s)
{
	return s != NULL ? pv_strdup(s) : NULL;
}

static bool
streq(const char *a, const char *b)
{
	return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static void
replace(char **dst, const char *src)
{
	if (streq(*dst, src))
		return;
	free(*dst);
	*dst = dup_or_null(src);
}

static void
state_free(struct pv_alert_state *s)
{
	free(s->fingerprint);
	free(s->value);
	free(s->threshold);
	free(s->database);
	free(s->job);
	free(s->notifier);
}

void
pv_alert_set_clear(struct pv_alert_set *set)
{
	for (size_t i = 0; i < set->n; i++)
		state_free(&set->v[i]);
	free(set->v);
	set->v = NULL;
	set->n = set->cap = 0;
}

const struct pv_alert_state *
pv_alert_set_find(const struct pv_alert_set *set, const char *fingerprint)
{
	for (size_t i = 0; i < set->n; i++)
		if (strcmp(set->v[i].fingerprint, fingerprint) == 0)
			return &set->v[i];
	return NULL;
}

static struct pv_alert_state *
set_append(struct pv_alert_set *set)
{
	if (set->n == set->cap) {
		set->cap = set->cap ? set->cap * 2 : 16;
		set->v = pv_realloc(set->v, set->cap * sizeof(*set->v));
	}
	memset(&set->v[set->n], 0, sizeof(set->v[0]));
	return &set->v[set->n++];
}

void
pv_alert_notifications_clear(struct pv_alert_notifications *n)
{
	for (size_t i = 0; i < n->n; i++) {
		free(n->v[i].fingerprint);
		free(n->v[i].value);
		free(n->v[i].threshold);
		free(n->v[i].database);
		free(n->v[i].job);
		free(n->v[i].notifier);
	}
	free(n->v);
	n->v = NULL;
	n->n = n->cap = 0;
}

bool
pv_alert_suppressed(const struct pv_alert_suppress *sup, enum pv_rule rule, const char *database, time_t now,
                    int64_t *silence_id)
{
	if (silence_id != NULL)
		*silence_id = 0;
	if (sup == NULL)
		return false;
	for (size_t i = 0; i < sup->n_silences; i++) {
		const struct pv_alert_silence *s = &sup->silences[i];
		if (s->rule == rule && now < s->until &&
		    (s->database == NULL || streq(s->database, database))) {
			if (silence_id != NULL)
				*silence_id = s->id;
			return true;
		}
	}
	return now < sup->maintenance_until;
}

/* Step context. */
struct step {
	const struct pv_config_alerts *acfg;
	const struct pv_alert_suppress *sup;
	time_t now;
	struct pv_alert_notifications *out;
};

static struct pv_alert_notification *
notify(struct step *st, enum pv_alert_kind kind, enum pv_rule rule, enum pv_severity sev, const char *fp,
       const char *value, const char *threshold, const char *database, const char *job, const char *notifier,
       time_t at, time_t fired_at)
{
	struct pv_alert_notifications *o = st->out;
	struct pv_alert_notification *n;

	if (o->n == o->cap) {
		o->cap = o->cap ? o->cap * 2 : 16;
		o->v = pv_realloc(o->v, o->cap * sizeof(*o->v));
	}
	n = &o->v[o->n++];
	*n = (struct pv_alert_notification){
	        .kind = kind,
	        .rule = rule,
	        .severity = sev,
	        .fingerprint = pv_strdup(fp),
	        .value = pv_strdup(value != NULL ? value : ""),
	        .threshold = pv_strdup(threshold != NULL ? threshold : ""),
	        .database = dup_or_null(database),
	        .job = dup_or_null(job),
	        .notifier = dup_or_null(notifier),
	        .at = at,
	        .fired_at = fired_at,
	};
	n->suppressed = pv_alert_suppressed(st->sup, rule, database, st->now, &n->silence_id);
	return n;
}

/* A notification about a stateful alert; remembers whether it was suppressed. */
static void
notify_state(struct step *st, struct pv_alert_state *s, enum pv_alert_kind kind)
{
	struct pv_alert_notification *n =
	        notify(st, kind, s->rule, s->severity, s->fingerprint, s->value, s->threshold, s->database,
	               s->job, s->notifier, st->now, s->fired_at);
	if (kind != PV_ALERT_NOTIFY_RESOLVED) {
		s->last_sent = st->now;
		s->last_suppressed = n->suppressed;
	}
}

static void
take_condition(struct pv_alert_state *s, const struct pv_alert_condition *c)
{
	replace(&s->value, c->value);
	replace(&s->threshold, c->threshold);
	replace(&s->database, c->database);
	replace(&s->job, c->job);
	replace(&s->notifier, c->notifier);
}

static void
maybe_fire(struct step *st, struct pv_alert_state *s)
{
	if (s->status != PV_ALERT_PENDING || st->now - s->first_seen < st->acfg->group_wait)
		return;
	s->status = PV_ALERT_FIRING;
	s->fired_at = st->now;
	notify_state(st, s, PV_ALERT_NOTIFY_FIRING);
}

static void
start_episode(struct step *st, struct pv_alert_state *s, const struct pv_alert_condition *c)
{
	s->status = PV_ALERT_PENDING;
	s->severity = c->severity;
	s->first_seen = st->now;
	s->fired_at = s->last_sent = s->resolved_at = 0;
	s->last_suppressed = false;
	take_condition(s, c);
	maybe_fire(st, s);
}

/* Advance one known alert; false when it is to be forgotten. */
static bool
advance(struct step *st, struct pv_alert_state *s, const struct pv_alert_condition *c)
{
	const struct pv_config_alerts *a = st->acfg;

	if (a->rules != NULL && (size_t)s->rule < a->n_rules && !a->rules[s->rule].enabled)
		return false;
	switch (s->status) {
	case PV_ALERT_PENDING:
		if (c == NULL)
			return false; /* resolved within group_wait: never sent */
		s->severity = c->severity;
		take_condition(s, c);
		maybe_fire(st, s);
		return true;
	case PV_ALERT_FIRING:
		if (c == NULL) {
			s->status = PV_ALERT_RESOLVED;
			s->resolved_at = st->now;
			if (a->send_resolved)
				notify_state(st, s, PV_ALERT_NOTIFY_RESOLVED);
			return true;
		}
		take_condition(s, c);
		if (c->severity != s->severity) {
			s->severity = c->severity;
			notify_state(st, s, PV_ALERT_NOTIFY_SEVERITY);
		} else if (s->last_suppressed &&
		           !pv_alert_suppressed(st->sup, s->rule, s->database, st->now, NULL)) {
			notify_state(st, s, PV_ALERT_NOTIFY_FIRING);
		} else if (a->repeat_every > 0 && st->now - s->last_sent >= a->repeat_every) {
			notify_state(st, s, PV_ALERT_NOTIFY_REPEAT);
		}
		return true;
	case PV_ALERT_RESOLVED:
		if (c != NULL) {
			start_episode(st, s, c);
			return true;
		}
		return st->now - s->resolved_at < PV_ALERT_RESOLVED_KEEP;
	}
	return false;
}

static const struct pv_alert_condition *
find_stateful(const struct pv_alert_conditions *c, const char *fp)
{
	for (size_t i = 0; c != NULL && i < c->n; i++)
		if (!c->v[i].oneshot && strcmp(c->v[i].fingerprint, fp) == 0)
			return &c->v[i];
	return NULL;
}

void
pv_alert_engine_step(const struct pv_config_alerts *acfg, struct pv_alert_set *states,
                     const struct pv_alert_conditions *now_true, const struct pv_alert_suppress *sup,
                     time_t now, struct pv_alert_notifications *out)
{
	struct step st = {.acfg = acfg, .sup = sup, .now = now, .out = out};
	size_t keep = 0;

	pv_alert_notifications_clear(out);
	for (size_t i = 0; i < states->n; i++) {
		struct pv_alert_state *s = &states->v[i];
		if (advance(&st, s, find_stateful(now_true, s->fingerprint))) {
			if (keep != i)
				states->v[keep] = *s;
			keep++;
		} else {
			state_free(s);
		}
	}
	states->n = keep;

	for (size_t i = 0; now_true != NULL && i < now_true->n; i++) {
		const struct pv_alert_condition *c = &now_true->v[i];
		struct pv_alert_state *s;

		if (c->oneshot) {
			notify(&st, PV_ALERT_NOTIFY_EVENT, c->rule, c->severity, c->fingerprint, c->value,
			       c->threshold, c->database, c->job, c->notifier, c->at > 0 ? c->at : now, 0);
			continue;
		}
		if (pv_alert_set_find(states, c->fingerprint) != NULL)
			continue; /* known (advanced above), or a duplicate of a condition added just now */
		if (acfg->rules != NULL && (size_t)c->rule < acfg->n_rules && !acfg->rules[c->rule].enabled)
			continue;
		s = set_append(states);
		s->fingerprint = pv_strdup(c->fingerprint);
		s->rule = c->rule;
		start_episode(&st, s, c);
	}
}

time_t
pv_alert_engine_next_due(const struct pv_config_alerts *acfg, const struct pv_alert_set *states)
{
	time_t due = 0;

	for (size_t i = 0; i < states->n; i++) {
		const struct pv_alert_state *s = &states->v[i];
		time_t t = 0;
		if (s->status == PV_ALERT_PENDING)
			t = s->first_seen + (time_t)acfg->group_wait;
		else if (s->status == PV_ALERT_FIRING && acfg->repeat_every > 0)
			t = s->last_sent + (time_t)acfg->repeat_every;
		if (t > 0 && (due == 0 || t < due))
			due = t;
	}
	return due;
}

static json_t *
opt_str(const char *s)
{
	return s != NULL ? json_string(s) : json_null();
}

json_t *
pv_alert_set_to_json(const struct pv_alert_set *set)
{
	json_t *arr = json_array();

	for (size_t i = 0; i < set->n; i++) {
		const struct pv_alert_state *s = &set->v[i];
		json_t *o = json_object();
		json_object_set_new(o, "fingerprint", json_string(s->fingerprint));
		json_object_set_new(o, "rule", json_string(pv_alert_rule_name(s->rule)));
		json_object_set_new(o, "severity", json_string(severity_names[s->severity]));
		json_object_set_new(o, "status", json_string(pv_alert_status_name(s->status)));
		json_object_set_new(o, "first_seen", json_integer((json_int_t)s->first_seen));
		json_object_set_new(o, "fired_at", json_integer((json_int_t)s->fired_at));
		json_object_set_new(o, "last_sent", json_integer((json_int_t)s->last_sent));
		json_object_set_new(o, "resolved_at", json_integer((json_int_t)s->resolved_at));
		json_object_set_new(o, "last_suppressed", json_boolean(s->last_suppressed));
		json_object_set_new(o, "value", opt_str(s->value));
		json_object_set_new(o, "threshold", opt_str(s->threshold));
		json_object_set_new(o, "database", opt_str(s->database));
		json_object_set_new(o, "job", opt_str(s->job));
		json_object_set_new(o, "notifier", opt_str(s->notifier));
		json_array_append_new(arr, o);
	}
	return json_pack("{s:i,s:o}", "version", 1, "alerts", arr);
}

static bool
name_index(const char *const *names, int n, const char *name, int *out)
{
	for (int i = 0; name != NULL && i < n; i++)
		if (strcmp(names[i], name) == 0) {
			*out = i;
			return true;
		}
	return false;
}

static bool
get_time(const json_t *o, const char *key, time_t *out)
{
	const json_t *v = json_object_get(o, key);
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return false;
	*out = (time_t)json_integer_value(v);
	return true;
}

/* An optional string member: absent or null is NULL; anything else but a string is an error. */
static bool
get_opt_str(const json_t *o, const char *key, char **out)
{
	const json_t *v = json_object_get(o, key);
	if (v == NULL || json_is_null(v))
		return true;
	if (!json_is_string(v))
		return false;
	*out = pv_strdup(json_string_value(v));
	return true;
}

static bool
state_from_json(const json_t *o, struct pv_alert_state *s, size_t i, struct pv_error *err)
{
	const char *fp = json_string_value(json_object_get(o, "fingerprint"));
	const char *rule = json_string_value(json_object_get(o, "rule"));
	int sev, status;
	const json_t *sup = json_object_get(o, "last_suppressed");

	if (!json_is_object(o) || fp == NULL || *fp == '\0')
		return pv_error_set(err, PV_ERR_STATE, "alert set: alert %zu: missing fingerprint", i);
	s->fingerprint = pv_strdup(fp);
	if (!pv_alert_rule_from_name(rule, &s->rule))
		return pv_error_set(err, PV_ERR_STATE, "alert set: alert %s: unknown rule \"%s\"", fp,
		                    rule ? rule : "");
	if (!name_index(severity_names, 3, json_string_value(json_object_get(o, "severity")), &sev))
		return pv_error_set(err, PV_ERR_STATE, "alert set: alert %s: bad severity", fp);
	if (!name_index(status_names, 3, json_string_value(json_object_get(o, "status")), &status))
		return pv_error_set(err, PV_ERR_STATE, "alert set: alert %s: bad status", fp);
	s->severity = (enum pv_severity)sev;
	s->status = (enum pv_alert_status)status;
	if (!get_time(o, "first_seen", &s->first_seen) || !get_time(o, "fired_at", &s->fired_at) ||
	    !get_time(o, "last_sent", &s->last_sent) || !get_time(o, "resolved_at", &s->resolved_at))
		return pv_error_set(err, PV_ERR_STATE, "alert set: alert %s: bad or missing time", fp);
	if (sup != NULL && !json_is_boolean(sup))
		return pv_error_set(err, PV_ERR_STATE, "alert set: alert %s: bad last_suppressed", fp);
	s->last_suppressed = json_is_true(sup);
	if (!get_opt_str(o, "value", &s->value) || !get_opt_str(o, "threshold", &s->threshold) ||
	    !get_opt_str(o, "database", &s->database) || !get_opt_str(o, "job", &s->job) ||
	    !get_opt_str(o, "notifier", &s->notifier))
		return pv_error_set(err, PV_ERR_STATE, "alert set: alert %s: a text field is not a string",
		                    fp);
	return true;
}

bool
pv_alert_set_from_json(const json_t *j, struct pv_alert_set *set, struct pv_error *err)
{
	const json_t *arr = json_object_get(j, "alerts");
	const json_t *ver = json_object_get(j, "version");
	size_t i;
	json_t *o;

	pv_alert_set_clear(set);
	if (!json_is_object(j) || !json_is_integer(ver) || !json_is_array(arr))
		return pv_error_set(err, PV_ERR_STATE,
		                    "alert set: not an object with \"version\" and \"alerts\"");
	if (json_integer_value(ver) != 1)
		return pv_error_set(err, PV_ERR_STATE, "alert set: unsupported version %lld",
		                    (long long)json_integer_value(ver));
	json_array_foreach(arr, i, o)
	{
		struct pv_alert_state *s = set_append(set);
		if (!state_from_json(o, s, i, err)) {
			pv_alert_set_clear(set);
			return false;
		}
		if (pv_alert_set_find(set, s->fingerprint) != s) {
			pv_error_set(err, PV_ERR_STATE, "alert set: duplicate fingerprint %s",
			             s->fingerprint);
			pv_alert_set_clear(set);
			return false;
		}
	}
	return true;
}
