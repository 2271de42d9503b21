/* Generic webhooks: the documented JSON body, its HMAC-SHA256 signature, and what answers mean. */
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "notify/notify.h"
#include "util/mem.h"

/*
 * The body of every webhook request, one JSON object (UTF-8, Content-Type: application/json):
 *
 *   {
 *     "version": 1,                          format version; fields are only ever added
 *     "idempotency_key": "…",                also in the X-Pgvigil-Idempotency-Key header; the same on
 *                                            every attempt, so a receiver can drop duplicates
 *     "notifier": "hook",                    the notifier's name in pgvigil.yaml
 *     "rule": "backup_stale",
 *     "severity": "critical",                "info", "warning" or "critical"
 *     "status": "firing",                    "firing", "resolved" or "info" (an event, not a state)
 *     "database": "production",              null when the alert is not about a database
 *     "job": "daily-backup",                 null when the alert is not about a job
 *     "title": "no successful backup of production for 26h",
 *     "value": "26h",                        observed value, formatted for people; null when none
 *     "threshold": "24h",                    the rule's threshold, formatted; null when none
 *     "at": "2026-11-24T02:00:00Z",          when the condition was observed (UTC, RFC 3339)
 *     "at_unix": 1795485600,
 *     "text": "…"                            longer plain text (a digest's events, one per line); null
 *                                            when none
 *   }
 *
 * With secret_file, the request carries X-Pgvigil-Signature: sha256=<hex HMAC-SHA256 of the exact body
 * bytes keyed with the secret>; receivers should compare it in constant time before trusting the body.
 */
char *
pv_webhook_format(const struct pv_notification *n)
{
	char when[32], *body;
	struct tm tm;
	time_t at = n->at;
	json_t *root;

	gmtime_r(&at, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	root = json_object();
	json_object_set_new(root, "version", json_integer(1));
	json_object_set_new(root, "idempotency_key", json_string(n->idempotency_key));
	json_object_set_new(root, "notifier", json_string(n->notifier));
	json_object_set_new(root, "rule", json_string(n->rule));
	json_object_set_new(root, "severity", json_string(pv_notify_severity_name(n->severity)));
	json_object_set_new(root, "status", json_string(pv_notify_status_name(n->status)));
	/* json_string(NULL) and invalid UTF-8 give NULL, which json_object_set_new refuses: use null. */
	const char *names[] = {"database", "job", "title", "value", "threshold", "text"};
	const char *values[] = {n->database, n->job, n->title, n->value, n->threshold, n->text};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		json_t *v = values[i] != NULL ? json_string(values[i]) : NULL;
		json_object_set_new(root, names[i], v != NULL ? v : json_null());
	}
	json_object_set_new(root, "at", json_string(when));
	json_object_set_new(root, "at_unix", json_integer((json_int_t)n->at));
	body = json_dumps(root, JSON_COMPACT);
	if (body == NULL)
		abort();
	json_decref(root);
	return body;
}

void
pv_webhook_sign(const char *secret, const void *body, size_t len, char out[PV_WEBHOOK_SIGNATURE_LEN + 1])
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int mac_len = 0;

	if (HMAC(EVP_sha256(), secret, (int)strlen(secret), body, len, mac, &mac_len) == NULL ||
	    mac_len != PV_CRYPTO_SHA256_LEN)
		abort(); /* SHA-256 missing from OpenSSL: a broken installation */
	memcpy(out, "sha256=", 7);
	pv_crypto_hex(mac, mac_len, out + 7);
}

enum pv_notify_verdict
pv_webhook_classify(long status, const char *body)
{
	if (status >= 200 && status < 300)
		return PV_NOTIFY_DELIVERED;
	if (status == 400 || status == 401 || status == 403 || status == 404 || status == 410)
		return PV_NOTIFY_PERMANENT;
	return PV_NOTIFY_RETRY;
}
