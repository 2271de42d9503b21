/* The backup catalog against the files in storage: temporaries, rebuilds, missing or changed backups. */
#include "jobs/catalog.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>

#include "storage/storage.h"
#include "util/log.h"
#include "util/mem.h"

struct scan_ctx {
	struct pv_state *st;
	struct pv_catalog_report *rep;
};

/* "YYYY-MM-DDTHH:MM:SS[.fraction]Z", as pv_store_manifest_validate accepts it; the fraction is dropped. */
static time_t
parse_time(const char *s)
{
	struct tm tm;
	const char *rest;

	memset(&tm, 0, sizeof(tm));
	if (s == NULL || (rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm)) == NULL)
		return 0;
	if (rest[0] == '.')
		rest += 1 + strspn(rest + 1, "0123456789");
	if (strcmp(rest, "Z") != 0)
		return 0;
	return timegm(&tm);
}

static const char *
jstr(json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

static void
on_backup_dir(const char *dir, json_t *m, void *arg)
{
	struct scan_ctx *ctx = arg;
	struct pv_state_backup b = {0}, have = {0};
	struct pv_error err;
	json_t *enc;
	char *ref;

	if (m == NULL) {
		ctx->rep->unreadable++;
		pv_log_error("backup directory without a valid manifest path=%s", dir);
		return;
	}
	ref = pv_asprintf("%s/%s/%s", jstr(m, "database") ?: "?", jstr(m, "job") ?: "?",
	                  jstr(m, "id") ?: "?");
	if (pv_state_backup_find(ctx->st, ref, &have, NULL)) {
		pv_state_backup_clear(&have);
		free(ref);
		return;
	}
	enc = json_object_get(m, "encryption");
	b.database = (char *)jstr(m, "database");
	b.job = (char *)jstr(m, "job");
	b.id = (char *)jstr(m, "id");
	b.tier = (char *)jstr(m, "tier");
	b.dir = (char *)dir;
	b.started = parse_time(jstr(m, "started"));
	b.finished = parse_time(jstr(m, "finished"));
	b.duration = json_number_value(json_object_get(m, "duration"));
	b.size = json_integer_value(json_object_get(m, "size"));
	b.archive_size = json_integer_value(json_object_get(m, "archive_size"));
	b.sha256 = (char *)jstr(m, "sha256");
	b.key_fingerprint = json_is_object(enc) ? (char *)jstr(enc, "key_fingerprint") : NULL;
	b.schema_copy = json_is_object(json_object_get(m, "schema_copy"));
	b.status = "ok";
	{
		const char *name = jstr(m, "file");
		const char *dot = name != NULL ? strchr(name, '.') : NULL;
		b.format = (char *)(dot != NULL ? dot + 1 : "none");
	}
	if (b.database == NULL || b.job == NULL || b.id == NULL || b.sha256 == NULL) {
		ctx->rep->unreadable++;
		pv_log_error("backup manifest lacks required fields path=%s", dir);
	} else if (!pv_state_backup_add(ctx->st, &b, &err)) {
		pv_log_error("cannot catalogue backup path=%s error=%s", dir, pv_log_quote(err.msg));
	} else {
		ctx->rep->rebuilt++;
		pv_log_notice("backup catalogued from its manifest backup=%s path=%s (not verified yet)", ref,
		              dir);
	}
	free(ref);
}

bool
pv_catalog_sync(struct pv_state *st, const char *storage_path, bool remove_temporaries,
                struct pv_catalog_report *rep, struct pv_error *err)
{
	struct scan_ctx ctx = {st, rep};
	struct pv_state_backup *list;
	size_t n;
	struct stat sb;

	memset(rep, 0, sizeof(*rep));
	if (stat(storage_path, &sb) != 0) {
		if (errno == ENOENT)
			return true; /* nothing stored yet */
		return pv_error_set(err, PV_ERR_IO, "cannot read storage %s: %s", storage_path,
		                    strerror(errno));
	}
	if (remove_temporaries)
		rep->temporaries_removed = pv_store_cleanup_temp(storage_path);
	if (!pv_store_scan(storage_path, on_backup_dir, &ctx, err))
		return false;
	if (!pv_state_backups_list(st, NULL, NULL, &list, &n, err))
		return false;
	for (size_t i = 0; i < n; i++) {
		struct pv_state_backup *b = &list[i];
		struct pv_error merr;
		const char *status = NULL;
		json_t *m;

		if (strcmp(b->status, "missing") == 0)
			continue;
		if (stat(b->dir, &sb) != 0 && errno == ENOENT) {
			status = "missing";
			rep->missing++;
			pv_log_error("catalogued backup has disappeared backup=%s/%s/%s path=%s", b->database,
			             b->job, b->id, b->dir);
		} else if ((m = pv_store_manifest_read(b->dir, &merr)) == NULL) {
			status = "changed";
			rep->changed++;
			pv_log_error("catalogued backup has an unreadable manifest backup=%s/%s/%s error=%s",
			             b->database, b->job, b->id, pv_log_quote(merr.msg));
		} else {
			const char *sha = jstr(m, "sha256");
			if (sha == NULL || strcmp(sha, b->sha256) != 0) {
				status = "changed";
				rep->changed++;
				pv_log_error("catalogued backup has changed backup=%s/%s/%s "
				             "recorded_sha256=%s manifest_sha256=%s",
				             b->database, b->job, b->id, b->sha256, sha ? sha : "none");
			}
			json_decref(m);
		}
		if (status != NULL && strcmp(status, b->status) != 0 &&
		    !pv_state_backup_set_status(st, b->database, b->job, b->id, status, &merr))
			pv_log_error("cannot mark backup backup=%s/%s/%s error=%s", b->database, b->job,
			             b->id, pv_log_quote(merr.msg));
	}
	pv_state_backups_free(list, n);
	return true;
}
