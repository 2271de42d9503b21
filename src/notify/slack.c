/* Slack incoming webhooks: the attachment message for a notification, and what Slack's answers mean. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "notify/notify.h"
#include "util/mem.h"

/* Per string, so that with every field at its cap the message stays under PV_SLACK_MAX_TEXT characters. */
#define TITLE_MAX 300
#define FIELD_MAX 300
#define TEXT_MAX  900 /* a digest's list of events */

/* Slack's own palette: "good", "warning" and "danger" hues, and a neutral blue for info events. */
static const char *
colour(const struct pv_notification *n)
{
	if (n->status == PV_NOTIFY_RESOLVED)
		return "#2eb886";
	switch (n->severity) {
	case PV_SEV_CRITICAL: return "#d00000";
	case PV_SEV_WARNING: return "#daa038";
	case PV_SEV_INFO: break;
	}
	return "#439fe0";
}

static const char *
label(const struct pv_notification *n)
{
	if (n->status == PV_NOTIFY_RESOLVED)
		return "RESOLVED";
	switch (n->severity) {
	case PV_SEV_CRITICAL: return "CRITICAL";
	case PV_SEV_WARNING: return "WARNING";
	case PV_SEV_INFO: break;
	}
	return "INFO";
}

/* A copy of at most max characters (code points), cut on a character boundary and ending in "…" when cut,
 * so Slack never sees half a character. Invalid bytes count as one character each. */
static char *
cut(const char *s, size_t max)
{
	size_t chars = 0, i = 0, keep = 0;

	if (s == NULL)
		return NULL;
	while (s[i] != '\0') {
		size_t len = 1;
		unsigned char c = (unsigned char)s[i];

		if (c >= 0xf0)
			len = 4;
		else if (c >= 0xe0)
			len = 3;
		else if (c >= 0xc0)
			len = 2;
		for (size_t k = 1; k < len; k++)
			if (s[i + k] == '\0') {
				len = k;
				break;
			}
		if (chars == max - 1)
			keep = i;
		if (++chars > max) {
			char *out = pv_malloc(keep + 4);
			memcpy(out, s, keep);
			memcpy(out + keep, "\xe2\x80\xa6", 4); /* "…" and the NUL */
			return out;
		}
		i += len;
	}
	return pv_strdup(s);
}

static void
add_field(json_t *fields, const char *title, const char *value, bool is_short)
{
	char *v;

	if (value == NULL || *value == '\0')
		return;
	v = cut(value, FIELD_MAX);
	json_array_append_new(fields,
	                      json_pack("{s:s, s:s, s:b}", "title", title, "value", v, "short", is_short));
	free(v);
}

/* JSON strings must be UTF-8: jansson refuses anything else, so replace what is not. */
static char *
valid_utf8(const char *s)
{
	json_t *probe;
	char *out;

	if (s == NULL)
		return NULL;
	probe = json_string(s);
	if (probe != NULL) {
		json_decref(probe);
		return pv_strdup(s);
	}
	out = pv_strdup(s);
	for (char *p = out; *p != '\0'; p++)
		if ((unsigned char)*p >= 0x80)
			*p = '?';
	return out;
}

char *
pv_slack_format(const struct pv_notification *n)
{
	char when[64], *title, *fallback, *body, *t;
	json_t *root, *fields, *att;
	struct tm tm;
	time_t at = n->at;

	gmtime_r(&at, &tm);
	strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
	t = valid_utf8(n->title != NULL ? n->title : n->rule);
	title = cut(t, TITLE_MAX);
	free(t);
	fallback = pv_asprintf("[%s] %s", label(n), title);

	fields = json_array();
	{
		char *db = valid_utf8(n->database), *job = valid_utf8(n->job), *rule = valid_utf8(n->rule),
		     *value = valid_utf8(n->value), *threshold = valid_utf8(n->threshold);

		add_field(fields, "Database", db, true);
		add_field(fields, "Job", job, true);
		add_field(fields, "Rule", rule, true);
		add_field(fields, "Status", pv_notify_status_name(n->status), true);
		add_field(fields, "Value", value, true);
		add_field(fields, "Threshold", threshold, true);
		add_field(fields, "Time", when, false);
		free(db);
		free(job);
		free(rule);
		free(value);
		free(threshold);
	}
	att = json_pack("{s:s, s:s, s:s, s:o, s:s, s:I}", "color", colour(n), "fallback", fallback, "title",
	                fallback, "fields", fields, "footer", "pgvigil", "ts", (json_int_t)n->at);
	if (n->text != NULL) {
		char *v = valid_utf8(n->text), *c = cut(v, TEXT_MAX);
		json_object_set_new(att, "text", json_string(c));
		free(v);
		free(c);
	}
	root = json_pack("{s:s, s:[o]}", "text", fallback, "attachments", att);
	if (root == NULL)
		abort();
	body = json_dumps(root, JSON_COMPACT);
	if (body == NULL)
		abort();
	json_decref(root);
	free(title);
	free(fallback);
	return body;
}

enum pv_notify_verdict
pv_slack_classify(long status, const char *body)
{
	const char *b = body != NULL ? body : "";

	if (status >= 200 && status < 300)
		return PV_NOTIFY_DELIVERED;
	if ((status == 400 && strstr(b, "invalid_payload") != NULL) || status == 403 ||
	    (status == 404 && (strstr(b, "no_service") != NULL || strstr(b, "channel_not_found") != NULL)) ||
	    (status == 410 && strstr(b, "channel_is_archived") != NULL))
		return PV_NOTIFY_PERMANENT;
	return PV_NOTIFY_RETRY;
}
