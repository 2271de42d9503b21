/* The control command table: each command's name, whether it changes the daemon, and its handler. */
#include "ctl/commands.h"

#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/config.h"
#include "crypto/crypto.h"
#include "daemon.h"
#include "ctl/report.h"
#include "ctl/restore.h"
#include "jobs/retention.h"
#include "jobs/verify.h"
#include "state/state.h"
#include "util/log.h"
#include "util/mem.h"

static bool
cmd_status(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	*data = pv_daemon_status_json(ctx);
	return true;
}

static bool
cmd_jobs(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	*data = json_pack("{s:o}", "jobs", pv_daemon_jobs_json(ctx));
	return true;
}

/* `alerts`: the firing and pending alerts; `alerts history`: the alert log (every notification produced,
 * delivered or suppressed), newest first. */
static bool
cmd_alerts(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	bool history = json_is_true(json_object_get(args, "history"));
	json_t *limit = json_object_get(args, "limit");

	*data = json_pack("{s:b,s:o}", "history", history, "alerts",
	                  history ? pv_daemon_alert_log_json(ctx, json_is_integer(limit)
	                                                                  ? (int)json_integer_value(limit)
	                                                                  : 100)
	                          : pv_daemon_alerts_json(ctx, false, false));
	return true;
}

/* Who ran a command: the peer's user name, else "uid N". */
static void
peer_user(const struct pv_ctl_peer *peer, char *buf, size_t size)
{
	struct passwd pw, *pwp = NULL;
	char pbuf[4096];

	if (getpwuid_r(peer->uid, &pw, pbuf, sizeof(pbuf), &pwp) == 0 && pwp != NULL)
		snprintf(buf, size, "%s", pw.pw_name);
	else
		snprintf(buf, size, "uid %d", (int)peer->uid);
}

static bool
cmd_silence_add(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	char who[256];

	peer_user(peer, who, sizeof(who));
	return pv_daemon_silence_add(ctx, json_string_value(json_object_get(args, "rule")),
	                             json_string_value(json_object_get(args, "database")),
	                             json_integer_value(json_object_get(args, "for")),
	                             json_string_value(json_object_get(args, "comment")), who, data, err);
}

static bool
cmd_silence_remove(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data,
                   struct pv_error *err)
{
	json_t *id = json_object_get(args, "id");
	char who[256];

	if (!json_is_integer(id))
		return pv_error_set(err, PV_ERR_USAGE, "silence remove: missing \"id\"");
	peer_user(peer, who, sizeof(who));
	if (!pv_daemon_silence_remove(ctx, json_integer_value(id), who, err))
		return false;
	*data = json_pack("{s:I}", "removed", json_integer_value(id));
	return true;
}

static bool
cmd_silences(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	*data = json_pack("{s:o}", "silences",
	                  pv_daemon_silences_json(ctx, json_is_true(json_object_get(args, "all"))));
	return true;
}

static bool
cmd_maintenance(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	json_t *on = json_object_get(args, "on");
	char who[256];

	if (!json_is_boolean(on))
		return pv_error_set(err, PV_ERR_USAGE, "maintenance: missing \"on\"");
	peer_user(peer, who, sizeof(who));
	return pv_daemon_maintenance(ctx, json_is_true(on), json_integer_value(json_object_get(args, "for")),
	                             json_string_value(json_object_get(args, "comment")), who, data, err);
}

static bool
cmd_run(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	const char *job = json_string_value(json_object_get(args, "job"));
	int64_t id;

	if (job == NULL)
		return pv_error_set(err, PV_ERR_USAGE, "run: missing \"job\"");
	if (!pv_daemon_run_job(ctx, job, &id, err))
		return false;
	*data = json_pack("{s:s,s:I}", "job", job, "run", (json_int_t)id);
	return true;
}

static bool
cmd_reload(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	if (!pv_daemon_reload(ctx, err))
		return pv_error_prefix(err, "reload failed, previous configuration kept: ");
	*data = json_pack("{s:b}", "reloaded", 1);
	return true;
}

static json_t *
backup_json(const struct pv_state_backup *b)
{
	json_t *o = json_object();

	json_object_set_new(o, "database", json_string(b->database));
	json_object_set_new(o, "job", json_string(b->job));
	json_object_set_new(o, "id", json_string(b->id));
	json_object_set_new(o, "tier", json_string(b->tier));
	json_object_set_new(o, "finished", json_integer((json_int_t)b->finished));
	json_object_set_new(o, "duration", json_real(b->duration));
	json_object_set_new(o, "size", json_integer(b->size));
	json_object_set_new(o, "archive_size", json_integer(b->archive_size));
	json_object_set_new(o, "format", json_string(b->format));
	json_object_set_new(o, "encrypted", json_boolean(b->key_fingerprint != NULL));
	json_object_set_new(o, "key_fingerprint",
	                    b->key_fingerprint ? json_string(b->key_fingerprint) : json_null());
	json_object_set_new(o, "status", json_string(b->status));
	json_object_set_new(o, "verified_at",
	                    b->verified_at ? json_integer((json_int_t)b->verified_at) : json_null());
	json_object_set_new(o, "verify_result",
	                    b->verify_result ? json_string(b->verify_result) : json_null());
	json_object_set_new(o, "verify_cause", b->verify_cause ? json_string(b->verify_cause) : json_null());
	json_object_set_new(o, "in_use", json_integer(b->in_use));
	json_object_set_new(o, "dir", json_string(b->dir));
	return o;
}

static bool
cmd_backups(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	const char *database = json_string_value(json_object_get(args, "database"));
	struct pv_state_backup *list;
	json_t *arr;
	size_t n;

	if (database != NULL && pv_config_database_find(pv_daemon_config(ctx), database) == NULL)
		return pv_error_set(err, PV_ERR_NOT_FOUND, "no database named \"%s\"", database);
	if (!pv_state_backups_list(pv_daemon_state(ctx), database, NULL, &list, &n, err))
		return false;
	arr = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(arr, backup_json(&list[i]));
	pv_state_backups_free(list, n);
	*data = json_pack("{s:o}", "backups", arr);
	return true;
}

struct verify_call {
	struct pv_daemon *d;
	struct pv_ctl_call *call;
	struct pv_state_backup b;
	struct pv_crypto_keyring *ring;
};

static void
verify_done(bool ok, const char *cause, double seconds, void *arg)
{
	struct verify_call *vc = arg;
	struct pv_state *st = pv_daemon_state(vc->d);
	struct pv_error err;
	json_t *data;

	pv_state_backup_use(st, vc->b.database, vc->b.job, vc->b.id, -1, NULL);
	if (!pv_state_backup_verified(st, vc->b.database, vc->b.job, vc->b.id, time(NULL), seconds, ok, cause,
	                              &err))
		pv_log_error("cannot record verification backup=%s/%s/%s error=%s", vc->b.database, vc->b.job,
		             vc->b.id, pv_log_quote(err.msg));
	pv_log_notice("backup verified on request backup=%s/%s/%s result=%s duration=%.3fs%s%s",
	              vc->b.database, vc->b.job, vc->b.id, ok ? "ok" : "failed", seconds,
	              ok ? "" : " cause=", ok ? "" : pv_log_quote(cause));
	data = json_pack("{s:s,s:s,s:s,s:b,s:s?,s:f}", "database", vc->b.database, "job", vc->b.job, "id",
	                 vc->b.id, "ok", ok, "cause", cause, "seconds", seconds);
	pv_ctl_call_done(vc->call, data, NULL);
	pv_state_backup_clear(&vc->b);
	pv_crypto_keyring_free(vc->ring);
	free(vc);
}

static void
cmd_verify(void *ctx, struct pv_ctl_call *call, json_t *args)
{
	const char *ref = json_string_value(json_object_get(args, "backup"));
	const struct pv_config_storage *st = &pv_daemon_config(ctx)->storage;
	struct verify_call *vc;
	struct pv_error err;

	if (ref == NULL) {
		pv_error_set(&err, PV_ERR_USAGE, "verify: missing \"backup\"");
		pv_ctl_call_done(call, NULL, &err);
		return;
	}
	vc = pv_calloc(1, sizeof(*vc));
	vc->d = ctx;
	vc->call = call;
	if (!pv_state_backup_find(pv_daemon_state(ctx), ref, &vc->b, &err) ||
	    (vc->ring = pv_crypto_keyring_load(st->encryption_key_file, st->old_key_files.v,
	                                       st->old_key_files.n, &err)) == NULL) {
		pv_ctl_call_done(call, NULL, &err);
		pv_state_backup_clear(&vc->b);
		free(vc);
		return;
	}
	pv_state_backup_use(pv_daemon_state(ctx), vc->b.database, vc->b.job, vc->b.id, +1, NULL);
	pv_verify_start(pv_daemon_base(ctx), &vc->b, vc->ring, pv_daemon_config(ctx)->daemon.pg_bin_dir,
	                verify_done, vc);
}

static bool
cmd_prune(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	const struct pv_config *cfg = pv_daemon_config(ctx);
	bool dry_run = json_is_true(json_object_get(args, "dry_run"));
	json_t *report = json_array();
	bool ok = true;
	struct pv_crypto_keyring *ring =
	        pv_crypto_keyring_load(cfg->storage.encryption_key_file, cfg->storage.old_key_files.v,
	                               cfg->storage.old_key_files.n, err);

	if (ring == NULL) {
		json_decref(report);
		return false;
	}

	for (size_t i = 0; i < cfg->n_jobs; i++) {
		struct pv_error jerr;
		if (cfg->jobs[i].type != PV_JOB_BACKUP)
			continue;
		if (!pv_retention_apply(pv_daemon_state(ctx), &cfg->jobs[i], ring, dry_run, report, &jerr)) {
			if (ok)
				*err = jerr;
			ok = false;
		}
	}
	pv_crypto_keyring_free(ring);
	if (!ok) {
		json_decref(report);
		return false;
	}
	*data = json_pack("{s:b,s:o}", "dry_run", dry_run, "backups", report);
	return true;
}

const struct pv_ctl_command pv_ctl_commands[] = {
        {.name = "status", .handler = cmd_status},
        {.name = "jobs", .handler = cmd_jobs},
        {.name = "run", .mutating = true, .handler = cmd_run},
        {.name = "reload", .mutating = true, .handler = cmd_reload},
        {.name = "backups", .handler = cmd_backups},
        {.name = "verify", .async = cmd_verify},
        {.name = "prune", .mutating = true, .handler = cmd_prune},
        {.name = "restore", .mutating = true, .async = pv_ctl_restore},
        {.name = "restore-progress", .handler = pv_ctl_restore_progress},
        {.name = "report", .handler = pv_ctl_report},
        {.name = "alerts", .handler = cmd_alerts},
        {.name = "silences", .handler = cmd_silences},
        {.name = "silence-add", .mutating = true, .handler = cmd_silence_add},
        {.name = "silence-remove", .mutating = true, .handler = cmd_silence_remove},
        {.name = "maintenance", .mutating = true, .handler = cmd_maintenance},
        {.name = NULL},
};
