/* Retention: which backups of a job may go, and deleting them safely (SPEC §2). */
#include "jobs/retention.h"

#include <string.h>

#include "crypto/crypto.h"
#include "storage/storage.h"
#include "util/log.h"
#include "util/mem.h"

const char *
pv_retention_verdict_name(enum pv_retention_verdict v)
{
	switch (v) {
	case PV_RETAIN_KEEP: return "keep";
	case PV_RETAIN_NEWER: return "keep-newer";
	case PV_RETAIN_NEWEST_VERIFIED: return "keep-newest-verified";
	case PV_RETAIN_IN_USE: return "keep-in-use";
	case PV_RETAIN_KEY_MISSING: return "keep-key-missing";
	case PV_RETAIN_DELETE: return "delete";
	}
	return "unknown";
}

static bool
verified_ok(const struct pv_state_backup *b)
{
	return b->verify_result != NULL && strcmp(b->verify_result, "ok") == 0 && b->status != NULL &&
	       strcmp(b->status, "ok") == 0;
}

void
pv_retention_plan(const struct pv_state_backup *list, size_t n, int keep, enum pv_retention_verdict *out)
{
	int kept = 0;
	bool window_closed = false;
	bool newest_seen = false;

	for (size_t i = 0; i < n; i++) {
		const struct pv_state_backup *b = &list[i];
		bool ok = verified_ok(b);

		if (ok && !newest_seen) {
			newest_seen = true;
			out[i] = kept < keep ? PV_RETAIN_KEEP : PV_RETAIN_NEWEST_VERIFIED;
			kept++;
			if (kept >= keep)
				window_closed = true;
		} else if (!window_closed) {
			/* Inside the window: verified ones fill it, others ride along until it closes. */
			out[i] = ok ? PV_RETAIN_KEEP : PV_RETAIN_NEWER;
			if (ok && ++kept >= keep)
				window_closed = true;
		} else {
			out[i] = PV_RETAIN_DELETE;
		}
		if (out[i] == PV_RETAIN_DELETE && b->in_use > 0)
			out[i] = PV_RETAIN_IN_USE;
	}
}

bool
pv_retention_apply(struct pv_state *st, const struct pv_config_job *job, const struct pv_crypto_keyring *ring,
                   bool dry_run, json_t *report, struct pv_error *err)
{
	struct pv_state_backup *list;
	enum pv_retention_verdict *v;
	size_t n;
	bool ok = true;

	if (job->database == NULL)
		return true;
	if (!pv_state_backups_list(st, job->database->name, job->name, &list, &n, err))
		return false;
	v = pv_calloc(n + 1, sizeof(*v));
	pv_retention_plan(list, n, job->keep, v);
	for (size_t i = 0; i < n; i++) {
		struct pv_state_backup *b = &list[i];
		json_t *o = json_object();
		bool deleted = false;

		if (v[i] == PV_RETAIN_DELETE && ring != NULL && b->key_fingerprint != NULL &&
		    pv_crypto_keyring_find(ring, b->key_fingerprint) == NULL) {
			v[i] = PV_RETAIN_KEY_MISSING;
			pv_log_error(
			        "backup encrypted with a key that is not configured is kept backup=%s/%s/%s "
			        "key_fingerprint=%s: HINT: add that key to storage.old_key_files, or delete "
			        "the "
			        "backup by hand",
			        b->database, b->job, b->id, b->key_fingerprint);
		}
		if (v[i] == PV_RETAIN_DELETE && !dry_run) {
			struct pv_error derr;
			/* The catalog row first: its delete refuses a backup in use, atomically. Files left
			 * behind by a failed removal are catalogued again from their manifest at start. */
			if (pv_state_backup_delete(st, b->database, b->job, b->id, &derr) &&
			    pv_store_remove_backup(b->dir, &derr)) {
				deleted = true;
				pv_log_notice("backup deleted by retention backup=%s/%s/%s keep=%d",
				              b->database, b->job, b->id, job->keep);
			} else {
				pv_log_error("retention could not delete backup=%s/%s/%s error=%s",
				             b->database, b->job, b->id, pv_log_quote(derr.msg));
				if (ok)
					*err = derr;
				ok = false;
			}
		}
		if (report != NULL) {
			json_object_set_new(o, "database", json_string(b->database));
			json_object_set_new(o, "job", json_string(b->job));
			json_object_set_new(o, "id", json_string(b->id));
			json_object_set_new(o, "finished", json_integer((json_int_t)b->finished));
			json_object_set_new(o, "verdict", json_string(pv_retention_verdict_name(v[i])));
			json_object_set_new(o, "deleted", json_boolean(deleted));
			json_array_append_new(report, o);
		} else {
			json_decref(o);
		}
	}
	free(v);
	pv_state_backups_free(list, n);
	return ok;
}
