/* The `backup` job type: a consistent pg_dump streamed through zstd, SHA-256 and AES-256-GCM.
 *
 * Order of a run: open a REPEATABLE READ snapshot and export it; find a pg_dump at least as new
 * as the server; stream `pg_dump -Fc -Z0 --snapshot` through the storage writer (its own thread:
 * compress, encrypt, hash, write, fsync) into STORAGE/DB/JOB/.tmp-ID while the snapshot
 * connection counts rows and hashes critical tables in the same snapshot; optionally a
 * schema-only dump; then manifest, atomic rename, catalog, full verification, retention. */
#include "jobs/backup.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "crypto/crypto.h"
#include "jobs/pgtools.h"
#include "jobs/retention.h"
#include "jobs/verify.h"
#include "loop/proc.h"
#include "loop/work.h"
#include "pg/pg.h"
#include "state/state.h"
#include "storage/storage.h"
#include "util/log.h"
#include "util/mem.h"

enum phase { PH_SNAPSHOT, PH_TOOLS, PH_DUMP, PH_SCHEMA, PH_COMMIT, PH_VERIFY, PH_DONE };

/* One pg_dump streaming into one stored file. */
struct stream {
	struct pv_proc *proc;
	struct pv_store_writer *writer;
	bool proc_done, writer_done;
	struct pv_proc_result pres;
	struct pv_store_result wres;
	char file[32];        /* "dump.zst", "schema.zst.enc", ... */
	char first_err[512];  /* pg_dump's first "error:" line: what went wrong */
	char server_msg[512]; /* its "detail: Error message from server: ..." line, if any */
	char last_err[512];   /* the last line, when there was no "error:" line */
	bool snapshot_failed; /* the exported snapshot could not be imported */
};

struct backup {
	struct pv_job_run *run;
	const struct pv_config_job *job;
	const struct pv_config_database *db;
	struct pv_crypto_keyring *ring;
	const struct pv_crypto_key *key; /* current key, or NULL: not encrypted */
	enum phase phase;

	struct pv_pg_snapshot *snap;
	json_t *expected;
	bool expect_done;
	char expect_err[512];

	struct pv_pgtool_op *tool;
	char *pg_dump;
	int pg_dump_major;
	char pg_dump_version[128];

	char *id, *job_dir, *tmp_dir, *final_dir;
	time_t started;
	struct stream dump, schema;
	struct pv_verify_op *verify;
	struct commit_work *committing; /* manifest + rename in flight on a worker thread */
	char failure[1024];
	enum pv_run_result fail_result;
};

static void step(struct backup *b);

static const char *
ext(const struct backup *b)
{
	if (b->run->cfg->storage.compression == PV_COMPRESSION_NONE)
		return b->key != NULL ? ".enc" : "";
	return b->key != NULL ? ".zst.enc" : ".zst";
}

/* Remove the temporary directory and everything in it (regular files only, written by us). */
static void
remove_tmp(struct backup *b)
{
	struct pv_error err;

	if (b->tmp_dir == NULL)
		return;
	if (!pv_store_remove_backup(b->tmp_dir, &err) && err.code != PV_ERR_NOT_FOUND)
		pv_log_warn("cannot remove temporary backup directory path=%s error=%s", b->tmp_dir,
		            pv_log_quote(err.msg));
}

static void
backup_free(struct backup *b)
{
	json_decref(b->expected);
	pv_crypto_keyring_free(b->ring);
	free(b->pg_dump);
	free(b->id);
	free(b->job_dir);
	free(b->tmp_dir);
	free(b->final_dir);
	free(b);
}

/* Every asynchronous piece has reported: tear down and hand the run back. */
static void
complete(struct backup *b, enum pv_run_result result)
{
	struct pv_job_run *run = b->run;
	char cause[1024];

	if (result != PV_RUN_OK)
		remove_tmp(b);
	snprintf(cause, sizeof(cause), "%s", result == PV_RUN_OK ? "" : b->failure);
	run->impl = NULL;
	backup_free(b);
	pv_job_run_finish(run, result, "%s", cause);
}

static bool
busy(const struct backup *b)
{
	return b->snap != NULL || b->tool != NULL || b->verify != NULL || b->committing != NULL ||
	       (b->dump.proc && !b->dump.proc_done) || (b->dump.writer && !b->dump.writer_done) ||
	       (b->schema.proc && !b->schema.proc_done) || (b->schema.writer && !b->schema.writer_done);
}

static void
stop_streams(struct stream *s)
{
	if (s->proc != NULL && !s->proc_done)
		pv_proc_cancel(s->proc);
	if (s->writer != NULL && !s->writer_done)
		pv_store_writer_cancel(s->writer);
}

/* Record the first failure, stop everything, and complete once nothing is pending. */
static void fail(struct backup *b, enum pv_run_result result, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static void
fail(struct backup *b, enum pv_run_result result, const char *fmt, ...)
{
	if (b->phase != PH_DONE) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(b->failure, sizeof(b->failure), fmt, ap);
		va_end(ap);
		b->fail_result = result;
		b->phase = PH_DONE;
	}
	stop_streams(&b->dump);
	stop_streams(&b->schema);
	if (b->verify != NULL) {
		pv_verify_cancel(b->verify);
		b->verify = NULL;
	}
	if (b->tool != NULL) {
		pv_pgtool_cancel(b->tool);
		b->tool = NULL;
	}
	if (b->snap != NULL) {
		pv_pg_snapshot_end(b->snap);
		b->snap = NULL;
	}
	if (!busy(b))
		complete(b, b->fail_result);
}

/* ---- streams ---- */

static void
stream_check(struct backup *b)
{
	if (b->phase == PH_DONE) {
		if (!busy(b))
			complete(b, b->fail_result);
		return;
	}
	step(b);
}

static void
on_dump_stderr(struct pv_proc *proc, const char *line, void *arg)
{
	struct backup *b = arg;
	struct stream *s = proc == b->schema.proc ? &b->schema : &b->dump;

	pv_log_warn("pg_dump: %s job=%s run=%lld database=%s", line, b->job->name, (long long)b->run->id,
	            b->db->name);
	pv_strlcpy(s->last_err, line, sizeof(s->last_err));
	/* pg_dump prints "error:" first and "detail:" lines after it: the first says what failed. */
	if (s->first_err[0] == '\0' && strstr(line, "error:") != NULL)
		pv_strlcpy(s->first_err, line, sizeof(s->first_err));
	if (s->server_msg[0] == '\0' && strstr(line, "Error message from server:") != NULL)
		pv_strlcpy(s->server_msg, strstr(line, "Error message from server:") + 26,
		           sizeof(s->server_msg));
	if (strstr(line, "invalid snapshot identifier") != NULL ||
	    strstr(line, "could not import the requested snapshot") != NULL)
		s->snapshot_failed = true;
}

static void
on_dump_done(struct pv_proc *proc, const struct pv_proc_result *res, void *arg)
{
	struct backup *b = arg;
	struct stream *s = proc == b->schema.proc ? &b->schema : &b->dump;

	s->pres = *res;
	s->proc_done = true;
	/* A dump that failed leaves the writer with a partial archive: stop it. */
	if ((res->cause != PV_PROC_EXITED || res->exit_code != 0) && s->writer != NULL && !s->writer_done)
		pv_store_writer_cancel(s->writer);
	stream_check(b);
}

static void
on_writer_done(struct pv_store_writer *w, const struct pv_store_result *res, void *arg)
{
	struct backup *b = arg;
	struct stream *s = w == b->schema.writer ? &b->schema : &b->dump;

	s->wres = *res;
	s->writer_done = true;
	/* A writer that failed (disk full) cannot take more: stop pg_dump rather than let it block. */
	if (!res->ok && s->proc != NULL && !s->proc_done)
		pv_proc_cancel(s->proc);
	stream_check(b);
}

static bool
stream_start(struct backup *b, struct stream *s, bool schema_only)
{
	const struct pv_config_job *job = b->job;
	struct pv_store_writer_opts wo = {0};
	struct pv_proc_opts po = {0};
	struct pv_error err;
	const char **argv;
	size_t argc = 0, cap = 16 + 2 * (job->schemas.n + job->exclude_schemas.n + job->exclude_table_data.n);
	char **env, *path, *snapshot_arg, *db_arg;
	int p[2];

	snprintf(s->file, sizeof(s->file), "%s%s", schema_only ? "schema" : "dump", ext(b));
	path = pv_asprintf("%s/%s", b->tmp_dir, s->file);
	if (pipe2(p, O_CLOEXEC) != 0) {
		fail(b, PV_RUN_FAILED, "cannot create a pipe: %s", strerror(errno));
		free(path);
		return false;
	}
	/* A bigger pipe means fewer wake-ups between pg_dump and the writer thread. */
	fcntl(p[0], F_SETPIPE_SZ, 1 << 20);
	wo.in_fd = p[0];
	wo.path = path;
	wo.compression = b->run->cfg->storage.compression;
	wo.level = b->run->cfg->storage.compression_level;
	wo.key = b->key;
	s->writer = pv_store_writer_start(b->run->base, &wo, on_writer_done, b, &err);
	free(path);
	if (s->writer == NULL) {
		close(p[1]);
		fail(b, PV_RUN_FAILED, "%s", err.msg);
		return false;
	}

	argv = pv_calloc(cap, sizeof(*argv));
	snapshot_arg = pv_asprintf("--snapshot=%s", pv_pg_snapshot_id(b->snap));
	db_arg = pv_asprintf("--dbname=%s", b->db->conninfo);
	argv[argc++] = b->pg_dump;
	argv[argc++] = "--format=custom";
	argv[argc++] = "--compress=0";
	argv[argc++] = "--no-password";
	argv[argc++] = snapshot_arg;
	if (schema_only)
		argv[argc++] = "--schema-only";
	for (size_t i = 0; i < job->schemas.n; i++) {
		argv[argc++] = "--schema";
		argv[argc++] = job->schemas.v[i];
	}
	for (size_t i = 0; i < job->exclude_schemas.n; i++) {
		argv[argc++] = "--exclude-schema";
		argv[argc++] = job->exclude_schemas.v[i];
	}
	for (size_t i = 0; i < job->exclude_table_data.n; i++) {
		argv[argc++] = "--exclude-table-data";
		argv[argc++] = job->exclude_table_data.v[i];
	}
	argv[argc++] = db_arg;
	argv[argc] = NULL;

	env = pv_pgtool_env("pgvigil-backup", b->db->password.value);
	po.argv = argv;
	po.envp = (const char *const *)env;
	po.stdin_fd = -1;
	po.stdout_fd = p[1];
	po.on_stderr = on_dump_stderr;
	po.on_done = on_dump_done;
	po.arg = b;
	/* pg_dump gets what is left of the job's timeout; its whole process group goes at the end. */
	po.timeout = b->run->deadline_mono - pv_now_mono();
	if (po.timeout < 1)
		po.timeout = 1;
	s->proc = pv_proc_spawn(b->run->base, &po, &err);
	close(p[1]);
	pv_pgtool_env_free(env);
	free(snapshot_arg);
	free(db_arg);
	free(argv);
	if (s->proc == NULL) {
		/* The writer sees EOF at once and reports an empty archive; we fail first. */
		fail(b, PV_RUN_FAILED, "%s", err.msg);
		return false;
	}
	return true;
}

/* A failed stream, explained in the terms the operator can act on. */
static bool
stream_failed(struct backup *b, struct stream *s, const char *what)
{
	if (s->pres.cause == PV_PROC_EXITED && s->pres.exit_code == 0 && s->wres.ok)
		return false;
	if (!s->wres.ok && (s->pres.cause == PV_PROC_CANCELLED || s->pres.cause == PV_PROC_SIGNALED ||
	                    (s->pres.cause == PV_PROC_EXITED && s->pres.exit_code == 0))) {
		fail(b, PV_RUN_FAILED, "%s: storing the archive failed: %s", what, s->wres.error.msg);
		return true;
	}
	{
		const char *msg = s->first_err[0] ? s->first_err : s->last_err;
		const char *server = s->server_msg;

		while (*server == ' ')
			server++;
		if (s->snapshot_failed) {
			fail(b, PV_RUN_FAILED,
			     "%s: pg_dump could not import the exported snapshot (%s%s%s): HINT: the "
			     "connection "
			     "probably goes through a transaction-mode pooler; use the pooler's session-mode "
			     "port or "
			     "connect directly",
			     what, msg, *server ? ": " : "", server);
			return true;
		}
		fail(b, s->pres.cause == PV_PROC_TIMEOUT ? PV_RUN_TIMEOUT : PV_RUN_FAILED,
		     "%s: pg_dump %s%s%s%s%s", what, s->pres.text, *msg ? ": " : "", msg, *server ? ": " : "",
		     server);
	}
	return true;
}

/* ---- manifest and commit ---- */

static json_t *
file_json(const struct stream *s)
{
	json_t *f = json_object();
	json_object_set_new(f, "file", json_string(s->file));
	json_object_set_new(f, "size", json_integer((json_int_t)s->wres.bytes_out));
	json_object_set_new(f, "archive_size", json_integer((json_int_t)s->wres.bytes_in));
	json_object_set_new(f, "sha256", json_string(s->wres.sha256));
	return f;
}

static json_t *
strv_json(const struct pv_strv *sv)
{
	json_t *a = json_array();
	for (size_t i = 0; i < sv->n; i++)
		json_array_append_new(a, json_string(sv->v[i]));
	return a;
}

static json_t *
time_json(time_t t)
{
	char buf[32];
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
	return json_string(buf);
}

static json_t *
build_manifest(struct backup *b, time_t finished, double duration)
{
	const struct pv_config_storage *st = &b->run->cfg->storage;
	json_t *m = json_object();
	json_t *comp = json_object();
	json_t *scope = json_object();
	json_t *enc;

	json_object_set_new(m, "manifest_version", json_integer(PV_STORE_MANIFEST_VERSION));
	json_object_set_new(m, "pgvigil_version", json_string(PV_VERSION));
	json_object_set_new(m, "id", json_string(b->id));
	json_object_set_new(m, "database", json_string(b->db->name));
	json_object_set_new(m, "job", json_string(b->job->name));
	json_object_set_new(m, "tier", json_string(b->job->tier));
	json_object_set_new(m, "started", time_json(b->started));
	json_object_set_new(m, "finished", time_json(finished));
	json_object_set_new(m, "duration", json_real(duration));
	json_object_set_new(m, "size", json_integer((json_int_t)b->dump.wres.bytes_out));
	json_object_set_new(m, "archive_size", json_integer((json_int_t)b->dump.wres.bytes_in));
	json_object_set_new(m, "sha256", json_string(b->dump.wres.sha256));
	json_object_set_new(m, "file", json_string(b->dump.file));
	json_object_set_new(m, "format", json_string("custom"));
	json_object_set_new(comp, "algorithm",
	                    json_string(st->compression == PV_COMPRESSION_NONE ? "none" : "zstd"));
	if (st->compression != PV_COMPRESSION_NONE)
		json_object_set_new(comp, "level", json_integer(st->compression_level));
	json_object_set_new(m, "compression", comp);
	json_object_set_new(scope, "schemas", strv_json(&b->job->schemas));
	json_object_set_new(scope, "exclude_schemas", strv_json(&b->job->exclude_schemas));
	json_object_set_new(scope, "exclude_table_data", strv_json(&b->job->exclude_table_data));
	json_object_set_new(m, "scope", scope);
	if (b->key != NULL) {
		enc = json_object();
		json_object_set_new(enc, "algorithm", json_string(PV_CRYPTO_ALGORITHM_NAME));
		json_object_set_new(enc, "key_fingerprint", json_string(pv_crypto_key_fingerprint(b->key)));
		json_object_set_new(m, "encryption", enc);
	} else {
		json_object_set_new(m, "encryption", json_null());
	}
	json_object_set_new(m, "pg_dump_version", json_string(b->pg_dump_version));
	json_object_set_new(m, "server_version", json_string(pv_pg_snapshot_server_version_str(b->snap)));
	json_object_set_new(m, "server_version_num", json_integer(pv_pg_snapshot_server_version(b->snap)));
	json_object_set_new(m, "snapshot", json_string(pv_pg_snapshot_id(b->snap)));
	if (b->schema.writer != NULL)
		json_object_set_new(m, "schema_copy", file_json(&b->schema));
	json_object_set_new(m, "expected", json_incref(b->expected));
	return m;
}

static void
on_verified(bool ok, const char *cause, double seconds, void *arg)
{
	struct backup *b = arg;
	struct pv_job_run *run = b->run;
	struct pv_error err;

	b->verify = NULL;
	pv_state_backup_use(run->state, b->db->name, b->job->name, b->id, -1, NULL);
	if (!pv_state_backup_verified(run->state, b->db->name, b->job->name, b->id, time(NULL), seconds, ok,
	                              cause, &err))
		pv_log_error("cannot record verification backup=%s/%s/%s error=%s", b->db->name, b->job->name,
		             b->id, pv_log_quote(err.msg));
	json_object_set_new(run->figures, "verify_seconds", json_real(seconds));
	if (!ok) {
		b->phase = PH_VERIFY;
		fail(b, PV_RUN_FAILED, "backup %s was stored but failed verification: %s", b->id, cause);
		return;
	}
	/* Retention only after a new backup of the job has completed and verified. */
	if (!pv_retention_apply(run->state, b->job, b->ring, false, NULL, &err))
		pv_log_error("retention failed job=%s error=%s", b->job->name, pv_log_quote(err.msg));
	b->phase = PH_DONE;
	pv_log_info("backup done backup=%s/%s/%s size=%lld archive=%lld sha256=%s", b->db->name, b->job->name,
	            b->id, (long long)b->dump.wres.bytes_out, (long long)b->dump.wres.bytes_in,
	            b->dump.wres.sha256);
	complete(b, PV_RUN_OK);
}

/* The manifest write and the rename fsync files and directories: a worker thread does them, so
 * a slow disk never stalls the event loop. The worker owns this struct until done runs. */
struct commit_work {
	struct backup *b;
	json_t *manifest;
	char *tmp_dir, *final_dir;
	time_t finished;
	double duration;
	bool ok;
	struct pv_error err;
};

static void
commit_fn(void *arg)
{
	struct commit_work *w = arg;

	w->ok = pv_store_manifest_write(w->tmp_dir, w->manifest, &w->err) &&
	        pv_store_commit(w->tmp_dir, w->final_dir, &w->err);
}

static void committed(struct backup *b, time_t finished, double duration);

static void
commit_done(void *arg)
{
	struct commit_work *w = arg;
	struct backup *b = w->b;
	struct pv_error err;

	b->committing = NULL;
	json_decref(w->manifest);
	if (w->ok) {
		free(b->tmp_dir);
		b->tmp_dir = NULL; /* committed: nothing temporary left to remove */
	}
	if (b->phase == PH_DONE) {
		/* Failed or cancelled while committing: a stopped run leaves no visible backup. */
		if (w->ok && !pv_store_remove_backup(b->final_dir, &err))
			pv_log_error("cannot remove backup of a stopped run path=%s error=%s", b->final_dir,
			             pv_log_quote(err.msg));
		free(w->tmp_dir);
		free(w->final_dir);
		free(w);
		if (!busy(b))
			complete(b, b->fail_result);
		return;
	}
	if (!w->ok) {
		fail(b, PV_RUN_FAILED, "%s", w->err.msg);
	} else {
		committed(b, w->finished, w->duration);
	}
	free(w->tmp_dir);
	free(w->final_dir);
	free(w);
}

static void
commit(struct backup *b)
{
	struct pv_job_run *run = b->run;
	struct commit_work *w = pv_calloc(1, sizeof(*w));
	struct pv_error err;

	w->b = b;
	w->finished = time(NULL);
	w->duration = pv_now_mono() - run->started_mono;
	/* The manifest reads the server version from the snapshot: end it only afterwards. */
	w->manifest = build_manifest(b, w->finished, w->duration);
	pv_pg_snapshot_end(b->snap);
	b->snap = NULL;
	w->tmp_dir = pv_strdup(b->tmp_dir);
	w->final_dir = pv_strdup(b->final_dir);
	b->committing = w;
	if (!pv_work_run(run->base, commit_fn, w, commit_done, &err)) {
		b->committing = NULL;
		json_decref(w->manifest);
		free(w->tmp_dir);
		free(w->final_dir);
		free(w);
		fail(b, PV_RUN_FAILED, "%s", err.msg);
	}
}

static void
committed(struct backup *b, time_t finished, double duration)
{
	struct pv_job_run *run = b->run;
	struct pv_state_backup cat = {0};
	struct pv_error err;

	cat.database = (char *)b->db->name;
	cat.job = (char *)b->job->name;
	cat.id = b->id;
	cat.tier = b->job->tier;
	cat.dir = b->final_dir;
	cat.run_id = run->id;
	cat.started = b->started;
	cat.finished = finished;
	cat.duration = duration;
	cat.size = (int64_t)b->dump.wres.bytes_out;
	cat.archive_size = (int64_t)b->dump.wres.bytes_in;
	cat.sha256 = b->dump.wres.sha256;
	cat.format = (char *)(ext(b)[0] == '\0' ? "none" : ext(b) + 1);
	cat.key_fingerprint = b->key != NULL ? (char *)pv_crypto_key_fingerprint(b->key) : NULL;
	cat.schema_copy = b->schema.writer != NULL;
	cat.status = "ok";
	if (!pv_state_backup_add(run->state, &cat, &err)) {
		/* The files are complete and self-describing: the catalog is rebuilt from them at start. */
		fail(b, PV_RUN_FAILED, "backup %s stored but not catalogued: %s", b->id, err.msg);
		return;
	}
	json_object_set_new(run->figures, "backup_id", json_string(b->id));
	json_object_set_new(run->figures, "size", json_integer(cat.size));
	json_object_set_new(run->figures, "archive_size", json_integer(cat.archive_size));
	json_object_set_new(run->figures, "dump_seconds", json_real(duration));
	json_object_set_new(
	        run->figures, "tables",
	        json_integer((json_int_t)json_array_size(json_object_get(b->expected, "tables"))));
	pv_log_info("backup stored backup=%s/%s/%s size=%lld duration=%.3fs, verifying", b->db->name,
	            b->job->name, b->id, (long long)cat.size, duration);

	/* A fresh backup counts as the job's newest good one only once it is verified. */
	b->phase = PH_VERIFY;
	{
		struct pv_state_backup vb = cat;
		pv_state_backup_use(run->state, b->db->name, b->job->name, b->id, +1, NULL);
		b->verify =
		        pv_verify_start(run->base, &vb, b->ring, run->cfg->daemon.pg_bin_dir, on_verified, b);
	}
}

/* ---- the steps ---- */

static void
on_expected(struct pv_pg_snapshot *snap, json_t *expected, const struct pv_error *err, void *arg)
{
	struct backup *b = arg;

	b->expect_done = true;
	if (expected == NULL) {
		fail(b, err->code == PV_ERR_PG_TIMEOUT ? PV_RUN_TIMEOUT : PV_RUN_FAILED,
		     "measuring expected values in the snapshot: %s", err->msg);
		return;
	}
	b->expected = expected;
	step(b);
}

static void
on_tool(const char *path, int major, const char *version, const struct pv_error *err, void *arg)
{
	struct backup *b = arg;

	b->tool = NULL;
	if (path == NULL) {
		fail(b, PV_RUN_FAILED, "%s", err->msg);
		return;
	}
	b->pg_dump = pv_strdup(path);
	b->pg_dump_major = major;
	pv_strlcpy(b->pg_dump_version, version, sizeof(b->pg_dump_version));
	step(b);
}

static void
on_snapshot(struct pv_pg_snapshot *snap, bool ok, const struct pv_error *err, void *arg)
{
	struct backup *b = arg;

	if (!ok) {
		b->snap = NULL; /* the snapshot op frees itself on failure */
		fail(b, err->code == PV_ERR_PG_TIMEOUT ? PV_RUN_TIMEOUT : PV_RUN_FAILED, "%s", err->msg);
		return;
	}
	json_object_set_new(b->run->figures, "server_version",
	                    json_string(pv_pg_snapshot_server_version_str(b->snap)));
	step(b);
}

static bool
make_dirs(struct backup *b)
{
	struct pv_error err;

	if (!pv_store_mkdirs(b->job_dir, &err)) {
		fail(b, PV_RUN_FAILED, "%s", err.msg);
		return false;
	}
	if (mkdir(b->tmp_dir, 0700) != 0) {
		char *dir = b->tmp_dir;
		b->tmp_dir = NULL; /* not ours: never remove what we did not create */
		fail(b, PV_RUN_FAILED, "cannot create %s: %s", dir, strerror(errno));
		free(dir);
		return false;
	}
	return true;
}

/* Advance as far as the pieces that have reported allow. */
static void
step(struct backup *b)
{
	struct pv_error err;

	switch (b->phase) {
	case PH_SNAPSHOT:
		b->phase = PH_TOOLS;
		b->tool = pv_pgtool_find(b->run->base, "pg_dump", b->run->cfg->daemon.pg_bin_dir,
		                         pv_pg_snapshot_server_version(b->snap), on_tool, b);
		return;
	case PH_TOOLS:
		if (!make_dirs(b))
			return;
		b->phase = PH_DUMP;
		if (!pv_pg_snapshot_expect(b->snap, on_expected, b, &err)) {
			fail(b, PV_RUN_FAILED, "%s", err.msg);
			return;
		}
		stream_start(b, &b->dump, false);
		return;
	case PH_DUMP:
		if (!b->dump.proc_done || !b->dump.writer_done || !b->expect_done)
			return;
		if (stream_failed(b, &b->dump, "dump"))
			return;
		if (b->job->schema_copy) {
			b->phase = PH_SCHEMA;
			stream_start(b, &b->schema, true);
			return;
		}
		b->phase = PH_COMMIT;
		commit(b);
		return;
	case PH_SCHEMA:
		if (!b->schema.proc_done || !b->schema.writer_done)
			return;
		if (stream_failed(b, &b->schema, "schema copy"))
			return;
		b->phase = PH_COMMIT;
		commit(b);
		return;
	case PH_COMMIT:
	case PH_VERIFY:
	case PH_DONE: return;
	}
}

static bool
start(struct pv_job_run *run)
{
	const struct pv_config_storage *st = &run->cfg->storage;
	struct backup *b;
	struct pv_pg_snapshot_opts so = {0};
	struct pv_error err;

	if (run->job->database == NULL) {
		snprintf(run->cause, sizeof(run->cause), "job %s has no database", run->job->name);
		return false;
	}
	b = pv_calloc(1, sizeof(*b));
	b->run = run;
	b->job = run->job;
	b->db = run->job->database;
	b->ring = pv_crypto_keyring_load(st->encryption_key_file, st->old_key_files.v, st->old_key_files.n,
	                                 &err);
	if (b->ring == NULL) {
		snprintf(run->cause, sizeof(run->cause), "%s", err.msg);
		free(b);
		return false;
	}
	b->key = pv_crypto_keyring_current(b->ring);
	b->started = run->started;
	b->job_dir = pv_asprintf("%s/%s/%s", st->path, b->db->name, b->job->name);
	/* Ids have one-second resolution: a second run within the same second gets "-2", "-3"... */
	for (int n = 1;; n++) {
		char *base = pv_store_backup_id(b->started, b->job->tier);
		struct stat sb;

		b->id = n == 1 ? base : pv_asprintf("%s-%d", base, n);
		if (n > 1)
			free(base);
		b->tmp_dir = pv_asprintf("%s/.tmp-%s", b->job_dir, b->id);
		b->final_dir = pv_asprintf("%s/%s", b->job_dir, b->id);
		if (n >= 99 || (stat(b->final_dir, &sb) != 0 && stat(b->tmp_dir, &sb) != 0))
			break;
		free(b->id);
		free(b->tmp_dir);
		free(b->final_dir);
	}
	run->impl = b;

	so.conninfo = b->db->conninfo;
	so.password = b->db->password.value;
	so.timeout = (double)pv_config_job_timeout(b->job);
	so.schemas = &b->job->schemas;
	so.exclude_schemas = &b->job->exclude_schemas;
	so.exclude_table_data = &b->job->exclude_table_data;
	so.critical_tables = &b->db->critical_tables;
	b->snap = pv_pg_snapshot_begin(run->base, run->dns, &so, on_snapshot, b, &err);
	if (b->snap == NULL) {
		snprintf(run->cause, sizeof(run->cause), "%s", err.msg);
		run->impl = NULL;
		backup_free(b);
		return false;
	}
	return true;
}

static void
cancel(struct pv_job_run *run)
{
	struct backup *b = run->impl;

	if (b == NULL)
		return;
	fail(b, PV_RUN_CANCELLED, "cancelled");
}

/* Archive bytes streamed so far, for `pgvigilctl jobs`. */
static uint64_t
progress(const struct pv_job_run *run)
{
	const struct backup *b = run->impl;

	if (b == NULL)
		return 0;
	if (b->schema.writer != NULL && !b->schema.writer_done)
		return b->dump.wres.bytes_in + pv_store_writer_progress(b->schema.writer);
	if (b->dump.writer != NULL && !b->dump.writer_done)
		return pv_store_writer_progress(b->dump.writer);
	return b->dump.wres.bytes_in + b->schema.wres.bytes_in;
}

const struct pv_job_ops pv_job_backup_ops = {
        .type = PV_JOB_BACKUP,
        .start = start,
        .cancel = cancel,
        .progress = progress,
};
