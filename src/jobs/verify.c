/* Verifying stored backups: re-hash, authenticated decryption, and a full read by pg_restore. */
#include "jobs/verify.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "crypto/crypto.h"
#include "jobs/pgtools.h"
#include "loop/proc.h"
#include "storage/storage.h"
#include "util/log.h"
#include "util/mem.h"

/* One stored file to check. */
struct vfile {
	char *path;
	char *sha256;
};

struct pv_verify_op {
	struct event_base *base;
	const struct pv_crypto_keyring *ring;
	char *label; /* DATABASE/JOB/ID, for messages */
	struct vfile files[2];
	int nfiles, current;
	char *pg_restore;
	struct pv_pgtool_op *tool;
	struct pv_store_reader *reader;
	struct pv_proc *restore;
	bool reader_done, restore_done;
	struct pv_store_result rres;
	struct pv_proc_result pres;
	char restore_err[512];
	double started;
	struct event *defer;
	char cause[1024];
	pv_verify_cb cb;
	void *arg;
	bool cancelled;
};

static void next_file(struct pv_verify_op *op);

static void
op_free(struct pv_verify_op *op)
{
	for (int i = 0; i < op->nfiles; i++) {
		free(op->files[i].path);
		free(op->files[i].sha256);
	}
	if (op->defer != NULL)
		event_free(op->defer);
	free(op->pg_restore);
	free(op->label);
	free(op);
}

/* Completion always leaves the caller's frame first. */
static void
report_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_verify_op *op = arg;
	bool ok = op->cause[0] == '\0';

	if (!op->cancelled)
		op->cb(ok, ok ? NULL : op->cause, pv_now_mono() - op->started, op->arg);
	op_free(op);
}

static void finish(struct pv_verify_op *op, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
finish(struct pv_verify_op *op, const char *fmt, ...)
{
	if (fmt != NULL && op->cause[0] == '\0') {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(op->cause, sizeof(op->cause), fmt, ap);
		va_end(ap);
	}
	if (op->defer == NULL)
		op->defer = event_new(op->base, -1, 0, report_cb, op);
	event_active(op->defer, EV_TIMEOUT, 0);
}

static void
file_done(struct pv_verify_op *op)
{
	const char *name = op->files[op->current].path;

	if (!op->reader_done || !op->restore_done)
		return;
	op->reader = NULL;
	op->restore = NULL;
	if (op->cancelled) {
		finish(op, "cancelled");
		return;
	}
	/* The stored bytes decide first: a consumer failing on a corrupt stream is a consequence. */
	if (!op->rres.ok) {
		finish(op, "%s", op->rres.error.msg); /* it names the file */
		return;
	}
	if (op->pres.cause != PV_PROC_EXITED || op->pres.exit_code != 0) {
		finish(op, "%s: pg_restore could not read the archive: %s%s%s", name, op->pres.text,
		       op->restore_err[0] ? ": " : "", op->restore_err);
		return;
	}
	op->current++;
	next_file(op);
}

static void
on_reader(struct pv_store_reader *r, const struct pv_store_result *res, void *arg)
{
	struct pv_verify_op *op = arg;

	op->rres = *res;
	op->reader_done = true;
	op->reader = NULL; /* freed when this returns */
	/* pg_restore would otherwise wait for input that never comes. */
	if (!res->ok && op->restore != NULL)
		pv_proc_cancel(op->restore);
	file_done(op);
}

static void
on_restore_stderr(struct pv_proc *proc, const char *line, void *arg)
{
	struct pv_verify_op *op = arg;

	pv_log_info("pg_restore: %s backup=%s", line, op->label);
	if (op->restore_err[0] == '\0')
		pv_strlcpy(op->restore_err, line, sizeof(op->restore_err));
}

static void
on_restore(struct pv_proc *proc, const struct pv_proc_result *res, void *arg)
{
	struct pv_verify_op *op = arg;

	op->pres = *res;
	op->restore_done = true;
	op->restore = NULL; /* freed when this returns */
	if (op->reader != NULL && (res->cause != PV_PROC_EXITED || res->exit_code != 0))
		pv_store_reader_cancel(op->reader);
	file_done(op);
}

static void
next_file(struct pv_verify_op *op)
{
	struct vfile *f;
	struct pv_store_reader_opts ro = {0};
	struct pv_proc_opts po = {0};
	const char *argv[5];
	char **env;
	struct pv_error err;
	int p[2];

	if (op->current >= op->nfiles) {
		finish(op, NULL);
		return;
	}
	f = &op->files[op->current];
	op->reader_done = op->restore_done = false;
	op->restore_err[0] = '\0';
	if (pipe2(p, O_CLOEXEC) != 0) {
		finish(op, "cannot create a pipe: %s", strerror(errno));
		return;
	}
	argv[0] = op->pg_restore;
	argv[1] = "-f";
	argv[2] = "/dev/null";
	argv[3] = NULL;
	env = pv_pgtool_env("pgvigil-verify", NULL);
	po.argv = argv;
	po.envp = (const char *const *)env;
	po.stdin_fd = p[0];
	po.stdout_fd = -1;
	po.on_stderr = on_restore_stderr;
	po.on_done = on_restore;
	po.arg = op;
	op->restore = pv_proc_spawn(op->base, &po, &err);
	pv_pgtool_env_free(env);
	close(p[0]);
	if (op->restore == NULL) {
		close(p[1]);
		finish(op, "%s", err.msg);
		return;
	}
	ro.path = f->path;
	ro.ring = op->ring;
	ro.out_fd = p[1];
	ro.expect_sha256 = f->sha256;
	op->reader = pv_store_reader_start(op->base, &ro, on_reader, op, &err);
	if (op->reader == NULL) {
		close(p[1]);
		op->rres.ok = false;
		op->rres.error = err;
		op->reader_done = true;
		pv_proc_cancel(op->restore);
	}
}

static void
on_tool(const char *path, int major, const char *version, const struct pv_error *err, void *arg)
{
	struct pv_verify_op *op = arg;

	op->tool = NULL;
	if (path == NULL) {
		finish(op, "%s", err->msg);
		return;
	}
	op->pg_restore = pv_strdup(path);
	next_file(op);
}

static const char *
jstr(json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

struct pv_verify_op *
pv_verify_start(struct event_base *base, const struct pv_state_backup *b,
                const struct pv_crypto_keyring *ring, const char *pg_bin_dir, pv_verify_cb cb, void *arg)
{
	struct pv_verify_op *op = pv_calloc(1, sizeof(*op));
	struct pv_error err;
	json_t *m, *sc;
	int server;

	op->base = base;
	op->ring = ring;
	op->cb = cb;
	op->arg = arg;
	op->started = pv_now_mono();
	op->label = pv_asprintf("%s/%s/%s", b->database, b->job, b->id);

	m = pv_store_manifest_read(b->dir, &err);
	if (m == NULL) {
		finish(op, "%s", err.msg);
		return op;
	}
	/* The catalog and the manifest must agree: a swapped or rewritten backup is not "ok". */
	if (jstr(m, "sha256") == NULL || strcmp(jstr(m, "sha256"), b->sha256) != 0) {
		finish(op, "manifest of %s names sha256 %s but the catalog recorded %s", op->label,
		       jstr(m, "sha256") ? jstr(m, "sha256") : "none", b->sha256);
		json_decref(m);
		return op;
	}
	/* The dump first, then the schema-only copy if there is one. */
	op->files[op->nfiles].path = pv_asprintf("%s/%s", b->dir, jstr(m, "file"));
	op->files[op->nfiles].sha256 = pv_strdup(jstr(m, "sha256"));
	op->nfiles++;
	sc = json_object_get(m, "schema_copy");
	if (json_is_object(sc)) {
		op->files[op->nfiles].path = pv_asprintf("%s/%s", b->dir, jstr(sc, "file"));
		op->files[op->nfiles].sha256 = pv_strdup(jstr(sc, "sha256"));
		op->nfiles++;
	}
	server = (int)json_integer_value(json_object_get(m, "server_version_num"));
	json_decref(m);

	op->tool = pv_pgtool_find(base, "pg_restore", pg_bin_dir, server > 0 ? server : 100000, on_tool, op);
	return op;
}

void
pv_verify_cancel(struct pv_verify_op *op)
{
	if (op == NULL)
		return;
	op->cancelled = true;
	if (op->tool != NULL) {
		pv_pgtool_cancel(op->tool);
		op->tool = NULL;
		finish(op, "cancelled");
		return;
	}
	if (op->reader != NULL)
		pv_store_reader_cancel(op->reader);
	if (op->restore != NULL)
		pv_proc_cancel(op->restore);
	if (op->reader == NULL && op->restore == NULL)
		finish(op, "cancelled");
}

/* ---- the `verify` job type ---- */

struct vjob {
	struct pv_job_run *run;
	struct pv_crypto_keyring *ring;
	struct pv_state_backup *list;
	size_t n, next;
	struct pv_verify_op *op;
	double budget_end; /* monotonic: start no new verification after this */
	int verified, failed, pruned;
	char first_failure[512];
};

static void vjob_next(struct vjob *vj);

static void
vjob_end(struct vjob *vj)
{
	struct pv_job_run *run = vj->run;
	size_t skipped = vj->n - vj->next;
	enum pv_run_result result;
	char cause[512] = "";

	json_object_set_new(run->figures, "verified", json_integer(vj->verified));
	json_object_set_new(run->figures, "failed", json_integer(vj->failed));
	json_object_set_new(run->figures, "not_reached", json_integer((json_int_t)skipped));
	json_object_set_new(run->figures, "pruned", json_integer(vj->pruned));
	if (run->cancel_requested)
		snprintf(cause, sizeof(cause), "cancelled");
	else if (vj->failed > 0)
		snprintf(cause, sizeof(cause), "%d of %d backups failed verification; first: %s", vj->failed,
		         vj->failed + vj->verified, vj->first_failure);
	result = run->cancel_requested ? PV_RUN_CANCELLED : vj->failed > 0 ? PV_RUN_FAILED : PV_RUN_OK;
	pv_state_backups_free(vj->list, vj->n);
	pv_crypto_keyring_free(vj->ring);
	run->impl = NULL;
	free(vj);
	pv_job_run_finish(run, result, "%s", cause);
}

static void
vjob_done(bool ok, const char *cause, double seconds, void *arg)
{
	struct vjob *vj = arg;
	struct pv_state_backup *b = &vj->list[vj->next - 1];
	struct pv_error err;

	vj->op = NULL;
	pv_state_backup_use(vj->run->state, b->database, b->job, b->id, -1, NULL);
	if (!pv_state_backup_verified(vj->run->state, b->database, b->job, b->id, time(NULL), seconds, ok,
	                              cause, &err))
		pv_log_error("cannot record verification backup=%s/%s/%s error=%s", b->database, b->job,
		             b->id, pv_log_quote(err.msg));
	if (ok) {
		vj->verified++;
		pv_log_info("backup verified backup=%s/%s/%s duration=%.3fs", b->database, b->job, b->id,
		            seconds);
	} else {
		vj->failed++;
		if (vj->first_failure[0] == '\0')
			snprintf(vj->first_failure, sizeof(vj->first_failure), "%s/%s/%s: %s", b->database,
			         b->job, b->id, cause);
		pv_log_error("backup failed verification backup=%s/%s/%s cause=%s", b->database, b->job,
		             b->id, pv_log_quote(cause));
	}
	vjob_next(vj);
}

static void
vjob_next(struct vjob *vj)
{
	struct pv_job_run *run = vj->run;
	struct pv_state_backup *b;
	struct pv_error err;

	for (;;) {
		if (run->cancel_requested || vj->next >= vj->n || pv_now_mono() > vj->budget_end) {
			vjob_end(vj);
			return;
		}
		b = &vj->list[vj->next++];
		/* In use from now on, so retention leaves it alone. The list was taken when the run started:
		 * a backup pruned since (retention after a newer backup of its job) is not there to verify.
		 */
		if (pv_state_backup_use(run->state, b->database, b->job, b->id, +1, &err))
			break;
		if (err.code != PV_ERR_NOT_FOUND) {
			pv_log_warn("cannot mark backup in use backup=%s/%s/%s error=%s", b->database, b->job,
			            b->id, pv_log_quote(err.msg));
			break;
		}
		vj->pruned++;
		pv_log_info("backup pruned before its verification, skipped backup=%s/%s/%s", b->database,
		            b->job, b->id);
	}
	vj->op = pv_verify_start(run->base, b, vj->ring, run->cfg->daemon.pg_bin_dir, vjob_done, vj);
}

static bool
vjob_start(struct pv_job_run *run)
{
	struct vjob *vj = pv_calloc(1, sizeof(*vj));
	const struct pv_config_storage *st = &run->cfg->storage;
	struct pv_error err;
	struct pv_state_backup *all;
	size_t n;

	vj->run = run;
	vj->ring = pv_crypto_keyring_load(st->encryption_key_file, st->old_key_files.v, st->old_key_files.n,
	                                  &err);
	if (vj->ring == NULL) {
		snprintf(run->cause, sizeof(run->cause), "%s", err.msg);
		free(vj);
		return false;
	}
	if (!pv_state_backups_to_verify(run->state, 0, &all, &n, &err)) {
		snprintf(run->cause, sizeof(run->cause), "%s", err.msg);
		pv_crypto_keyring_free(vj->ring);
		free(vj);
		return false;
	}
	/* A verify job with a database checks only that database's backups. */
	vj->list = pv_calloc(n + 1, sizeof(*vj->list));
	for (size_t i = 0; i < n; i++) {
		if (run->job->database == NULL || strcmp(all[i].database, run->job->database->name) == 0)
			vj->list[vj->n++] = all[i];
		else
			pv_state_backup_clear(&all[i]);
	}
	free(all);
	/* Leave a tenth of the timeout to finish the verification in progress. */
	vj->budget_end = run->started_mono + 0.9 * (double)pv_config_job_timeout(run->job);
	run->impl = vj;
	vjob_next(vj);
	return true;
}

static void
vjob_cancel(struct pv_job_run *run)
{
	struct vjob *vj = run->impl;

	if (vj == NULL)
		return;
	if (vj->op != NULL) {
		struct pv_verify_op *op = vj->op;
		vj->op = NULL;
		pv_verify_cancel(op);
		pv_state_backup_use(run->state, vj->list[vj->next - 1].database, vj->list[vj->next - 1].job,
		                    vj->list[vj->next - 1].id, -1, NULL);
		vjob_end(vj);
	}
	/* else: between verifications; vjob_next sees cancel_requested */
}

const struct pv_job_ops pv_job_verify_ops = {
        .type = PV_JOB_VERIFY,
        .start = vjob_start,
        .cancel = vjob_cancel,
};
