/* The `restore_probe` job type: restore the newest verified backup into a scratch database and prove it.
 *
 * Order of a run: pick the newest verified backup of the database and mark it in use; find a
 * pg_restore for its server version; CREATE DATABASE pgvigil_probe_<db>_<time> on the restore
 * target; stream the stored file through the storage reader (its own thread: hash, decrypt,
 * decompress) into `pg_restore -d` over a pipe; measure the copy with the manifest's own queries
 * and compare; run the database's assertions; drop the scratch database. The drop happens on
 * every path that may have created it (failure, timeout, cancel), after pg_restore has exited and
 * every connection to the copy is closed, on a fresh connection with a short deadline of its own.
 *
 * Streamed, pg_restore cannot restore in parallel (-j needs a seekable file). On a machine with more
 * than one CPU, for an archive of at least PARALLEL_MIN_ARCHIVE bytes and when the storage file
 * system has room for it, the reader first writes the plaintext archive to a temporary file in
 * STORAGE/DB/JOB/.tmp-probe-NAME/ (a crash leaves it to pv_store_cleanup_temp at start-up), then
 * `pg_restore -j N FILE` runs, N = min(CPUs, PARALLEL_MAX_JOBS); the directory is removed as soon as
 * pg_restore has exited, on every path. */
#include "jobs/probe.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "crypto/crypto.h"
#include "jobs/pgtools.h"
#include "loop/proc.h"
#include "pg/pg.h"
#include "state/state.h"
#include "storage/storage.h"
#include "util/log.h"
#include "util/mem.h"

/* CREATE DATABASE is not cancelled once sent (we must learn whether it happened before dropping):
 * its deadline plus the drop's after a stop stay within the daemon's 20 s stop bound. */
#define CREATE_TIMEOUT    12.0
#define DROP_TIMEOUT      15.0
#define STOP_DROP_TIMEOUT 5.0
/* Parallel restore (-j N from a temporary file) from this archive size on. bench/probe at 1 GB:
 * pg_restore -j 1 streamed 10.7 s against -j 2 from a file 6.8 s plus 0.93 s to decompress the
 * file (the 946 MB database: -j 1 25.0 s, -j 2 9.0 s); decompressing costs about 1 s per
 * GB, while a small archive restores in well under a second either way, so below 16 MiB the extra
 * write and read of the file buys nothing and streaming stays. */
#define PARALLEL_MIN_ARCHIVE ((int64_t)16 << 20)
#define PARALLEL_MAX_JOBS    4

/* Scratch databases this daemon's probes and drills are using: the leftover cleanup, which runs
 * before every probe as well as at start, must never drop one of them. */
static struct probe_local {
	char **active;
	size_t n_active;
} probe_local;

static void
active_add(const char *name)
{
	probe_local.active = pv_realloc(probe_local.active, (probe_local.n_active + 1) * sizeof(char *));
	probe_local.active[probe_local.n_active++] = pv_strdup(name);
}

static void
active_remove(const char *name)
{
	for (size_t i = 0; i < probe_local.n_active; i++)
		if (strcmp(probe_local.active[i], name) == 0) {
			free(probe_local.active[i]);
			probe_local.active[i] = probe_local.active[--probe_local.n_active];
			if (probe_local.n_active == 0) {
				free(probe_local.active);
				probe_local.active = NULL;
			}
			return;
		}
}

static bool
active_has(const char *name)
{
	for (size_t i = 0; i < probe_local.n_active; i++)
		if (strcmp(probe_local.active[i], name) == 0)
			return true;
	return false;
}
/* Free space the temporary file needs: the archive plus 10 %, plus this margin. */
#define PARALLEL_SPACE_MARGIN ((uint64_t)64 << 20)
#define PARALLEL_TMP_PREFIX   PV_STORE_TEMP_PREFIX "probe-"
/* Runs read back to find the previous consecutive failure count. */
#define HISTORY_RUNS 50

enum phase {
	PH_START,
	PH_TOOL,
	PH_CREATE,
	PH_RESTORE,
	PH_RECHECK,
	PH_MEASURE,
	PH_ORPHANS,
	PH_CHECKS,
	PH_ASSERT,
	PH_DROP,
	PH_DONE
};

static const char *const phase_names[] = {
        [PH_START] = "starting",
        [PH_TOOL] = "looking for pg_restore",
        [PH_CREATE] = "creating the scratch database",
        [PH_RESTORE] = "restoring",
        [PH_RECHECK] = "re-reading the stored file",
        [PH_MEASURE] = "validating the restored copy",
        [PH_ORPHANS] = "checking foreign keys for orphaned rows",
        [PH_CHECKS] = "checking sequences and indexes",
        [PH_ASSERT] = "running assertions",
        [PH_DROP] = "dropping the scratch database",
        [PH_DONE] = "finished",
};

/* In restore mode the phases name the operator's database, not a scratch one. */
static const char *phase_name(const struct pv_probe *p);

struct pv_probe {
	enum pv_probe_mode mode;
	struct pv_job_run *run; /* job modes */
	/* What a run provides, copied so the restore command can run without one. */
	struct event_base *base;
	struct evdns_base *dns;
	struct pv_state *state;
	struct pv_config *cfg; /* restore mode: a reference held */
	time_t started;
	double started_mono, deadline_mono;
	char logctx[160]; /* "job=NAME run=ID" or "restore=DATABASE" */

	/* restore mode */
	char *backup_ref;
	char *target_admin_conninfo; /* the target server's postgres database */
	bool force, clean;
	struct pv_pg_restore_op *rop; /* target preparation or drill checks in flight */
	struct pv_pg_target_result target_res;
	pv_probe_restore_cb restore_cb;
	void *restore_arg;

	/* drill mode */
	json_t *measure_expected; /* expected with every table listed for hashing */
	json_t *table_hashes;     /* measured: every table */
	json_t *checks;           /* sequences and indexes report */
	double t_hash1;           /* the measure (counts and hashes) ended */

	double t_create0, t_create1;
	const struct pv_config_database *db;
	const struct pv_config_restore_target *target;
	enum phase phase;

	struct pv_state_backup backup;
	bool have_backup, in_use;
	char *label; /* DATABASE/JOB/ID */
	json_t *expected;
	int server_version_num;
	char *dump_path;
	struct pv_crypto_keyring *ring;

	char *scratch;          /* database name */
	bool scratch_active;    /* scratch is in probe_local.active */
	char *scratch_conninfo; /* the target's conninfo with dbname = scratch, no password */
	char *password;         /* the target's password (configured, or from its conninfo) */
	bool maybe_created;     /* the scratch database may exist: it must be dropped */
	bool drop_started, dropped;
	char drop_err[512];

	struct pv_pgtool_op *tool;
	char *pg_restore;
	char pg_restore_version[128];
	struct pv_pg_scratch_op *sop; /* create, assertion or drop in flight */

	struct pv_store_reader *reader;
	struct pv_proc *restore;
	bool reader_done, restore_done;
	struct pv_store_result rres;
	struct pv_proc_result pres;
	char restore_err[512];  /* pg_restore's first "error:" line */
	char restore_last[512]; /* its last line */
	struct pv_store_result recheck;
	/* parallel mode: the archive is decompressed to tmp_file first, then pg_restore -j jobs */
	bool parallel;
	int jobs;
	char *tmp_dir, *tmp_file;
	double t_decomp0, t_decomp1;

	struct pv_pg_measure_op *measure;
	struct pv_pg_integrity_op *orphans;
	json_int_t fk_constraints, fk_orphans;
	bool fk_checked;
	size_t next_assert, asserts_passed;
	size_t ntables;
	long long nrows;
	json_t *mismatches;

	double t_start, t_restore0, t_restore1, t_valid0, t_valid1, t_drop0, t_drop1;
	struct event *deadline;

	bool failed, stopping;
	enum pv_run_result fail_result;
	char failure[1024];
};

static void next(struct pv_probe *p);

/* ---- completion ---- */

static json_int_t
previous_failures(struct pv_probe *p)
{
	struct pv_state_run *runs = NULL;
	struct pv_error err;
	size_t n = 0;
	json_int_t prev = 0;

	if (!pv_state_runs_list(p->run->state, p->run->job->name, HISTORY_RUNS, &runs, &n, &err)) {
		pv_log_warn("cannot read previous probe runs job=%s error=%s", p->run->job->name,
		            pv_log_quote(err.msg));
		return 0;
	}
	/* Newest first; runs without the figure (interrupted by a crash) neither count nor reset. */
	for (size_t i = 0; i < n; i++) {
		json_t *f, *c;
		if (runs[i].id == p->run->id || runs[i].result == NULL)
			continue;
		if (strcmp(runs[i].result, "ok") == 0)
			break;
		f = runs[i].figures ? json_loads(runs[i].figures, 0, NULL) : NULL;
		c = json_object_get(f, "consecutive_failures");
		if (json_is_integer(c)) {
			prev = json_integer_value(c);
			json_decref(f);
			break;
		}
		json_decref(f);
	}
	pv_state_runs_free(runs, n);
	return prev;
}

/* Remove the parallel mode's temporary file and directory (idempotent). */
static void
remove_tmp(struct pv_probe *p)
{
	if (p->tmp_dir == NULL)
		return;
	if (p->tmp_file != NULL && unlink(p->tmp_file) != 0 && errno != ENOENT)
		pv_log_warn("cannot remove temporary file %s path=%s error=%s", p->logctx,
		            pv_log_quote(p->tmp_file), pv_log_quote(strerror(errno)));
	if (rmdir(p->tmp_dir) != 0 && errno != ENOENT)
		pv_log_warn(
		        "cannot remove temporary directory %s path=%s error=%s (it is removed at the next "
		        "start)",
		        p->logctx, pv_log_quote(p->tmp_dir), pv_log_quote(strerror(errno)));
	else
		pv_log_debug("temporary restore directory removed %s path=%s", p->logctx,
		             pv_log_quote(p->tmp_dir));
	free(p->tmp_file);
	free(p->tmp_dir);
	p->tmp_file = p->tmp_dir = NULL;
}

static void
probe_free(struct pv_probe *p)
{
	if (p->deadline != NULL)
		event_free(p->deadline);
	if (p->have_backup)
		pv_state_backup_clear(&p->backup);
	json_decref(p->expected);
	json_decref(p->mismatches);
	pv_crypto_keyring_free(p->ring);
	free(p->label);
	free(p->dump_path);
	if (p->scratch_active)
		active_remove(p->scratch);
	free(p->scratch);
	free(p->scratch_conninfo);
	free(p->password);
	free(p->pg_restore);
	free(p->backup_ref);
	free(p->target_admin_conninfo);
	json_decref(p->measure_expected);
	json_decref(p->table_hashes);
	json_decref(p->checks);
	remove_tmp(p);
	pv_config_unref(p->mode == PV_PROBE_RESTORE ? p->cfg : NULL);
	free(p);
}

static const char *
kind_name(const struct pv_probe *p)
{
	switch (p->mode) {
	case PV_PROBE_DRILL: return "drill";
	case PV_PROBE_RESTORE: return "restore";
	case PV_PROBE_PROBE: break;
	}
	return "restore probe";
}

static const char *
phase_name(const struct pv_probe *p)
{
	if (p->mode == PV_PROBE_RESTORE && p->phase == PH_CREATE)
		return "preparing the target database";
	return phase_names[p->phase];
}

static double
span(double t0, double t1, double now)
{
	if (t0 <= 0)
		return 0;
	return (t1 > 0 ? t1 : now) - t0;
}

/* The drill's record: what was restored, how long each phase took, the measured RTO. */
static json_t *
drill_summary(struct pv_probe *p, enum pv_run_result result, double now, double total)
{
	json_t *sum = json_object(), *phases = json_object(), *b;
	int64_t objective = p->db ? p->db->rto : 0;

	if (p->have_backup) {
		b = json_pack("{s:s,s:s,s:s,s:I,s:I,s:I}", "id", p->backup.id, "job", p->backup.job, "tier",
		              p->backup.tier ? p->backup.tier : "", "size", (json_int_t)p->backup.size,
		              "archive_size", (json_int_t)p->backup.archive_size, "age_seconds",
		              (json_int_t)(p->started - p->backup.finished));
		json_object_set_new(sum, "backup", b);
	}
	/* hash: the measure (every table counted and hashed, compared with the manifest); validate:
	 * what follows it (FK orphans, sequences, indexes, assertions). */
	json_object_set_new(phases, "create", json_real(span(p->t_create0, p->t_create1, now)));
	json_object_set_new(phases, "restore", json_real(span(p->t_restore0, p->t_restore1, now)));
	json_object_set_new(phases, "hash", json_real(span(p->t_valid0, p->t_hash1, now)));
	json_object_set_new(phases, "validate", json_real(span(p->t_hash1, p->t_valid1, now)));
	json_object_set_new(phases, "drop", json_real(span(p->t_drop0, p->t_drop1, now)));
	json_object_set_new(sum, "phases", phases);
	json_object_set_new(sum, "result", json_string(pv_run_result_name(result)));
	json_object_set_new(sum, "rto_seconds", json_real(total));
	json_object_set_new(sum, "rto_objective_seconds",
	                    objective > 0 ? json_integer(objective) : json_null());
	json_object_set_new(sum, "rto_met",
	                    objective > 0 ? json_boolean(total <= (double)objective) : json_null());
	json_object_set_new(sum, "tables", json_integer((json_int_t)p->ntables));
	json_object_set_new(sum, "rows", json_integer(p->nrows));
	if (p->table_hashes != NULL) {
		json_t *eh = json_object_get(p->expected, "critical_table_hashes");
		json_object_set_new(sum, "tables_hashed",
		                    json_integer((json_int_t)json_object_size(p->table_hashes)));
		json_object_set_new(sum, "hashes_compared", json_integer((json_int_t)json_object_size(eh)));
		json_object_set(sum, "table_hashes", p->table_hashes);
	}
	if (p->checks != NULL) {
		json_object_set(sum, "sequences", json_object_get(p->checks, "sequences"));
		json_object_set(sum, "sequences_behind", json_object_get(p->checks, "sequences_behind"));
		json_object_set(sum, "indexes", json_object_get(p->checks, "indexes"));
		json_object_set(sum, "indexes_invalid", json_object_get(p->checks, "indexes_invalid"));
	}
	json_object_set(sum, "mismatches", p->mismatches);
	return sum;
}

static const char *
jstr(json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

static void add_cause(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void
add_cause(char *buf, size_t size, const char *fmt, ...)
{
	size_t len = strlen(buf);
	va_list ap;

	if (len + 1 >= size)
		return;
	va_start(ap, fmt);
	vsnprintf(buf + len, size - len, fmt, ap);
	va_end(ap);
}

/* Nothing is pending any more: record the figures, release the backup, hand the result back. */
static void
complete(struct pv_probe *p)
{
	struct pv_job_run *run = p->run;
	json_t *fig = run != NULL ? run->figures : NULL;
	enum pv_run_result result = PV_RUN_OK;
	char cause[1024] = "";
	double now = pv_now_mono(), total = now - p->started_mono;
	size_t nmis = json_array_size(p->mismatches);

	p->phase = PH_DONE;
	if (p->failed) {
		result = p->fail_result;
		pv_strlcpy(cause, p->failure, sizeof(cause));
	} else if (nmis > 0) {
		result = PV_RUN_FAILED;
		snprintf(cause, sizeof(cause),
		         "restored copy of %s does not match: %zu mismatch%s: ", p->label, nmis,
		         nmis == 1 ? "" : "es");
		for (size_t i = 0; i < nmis; i++)
			add_cause(cause, sizeof(cause), "%s%s", i ? "; " : "",
			          json_string_value(json_array_get(p->mismatches, i)));
	}
	if (p->drop_started && !p->dropped) {
		if (result == PV_RUN_OK) {
			result = PV_RUN_FAILED;
			snprintf(cause, sizeof(cause), "the restored copy of %s passed, but %s", p->label,
			         p->drop_err);
		} else {
			add_cause(cause, sizeof(cause), "; and %s", p->drop_err);
		}
	}

	if (fig == NULL)
		fig = json_object();
	if (run != NULL)
		run->figures = fig;
	if (p->have_backup) {
		json_object_set_new(fig, "backup_id", json_string(p->backup.id));
		json_object_set_new(fig, "backup_job", json_string(p->backup.job));
		json_object_set_new(fig, "backup_age_seconds",
		                    json_integer((json_int_t)(p->started - p->backup.finished)));
	}
	if (p->scratch != NULL && p->mode != PV_PROBE_RESTORE) {
		json_object_set_new(fig, "scratch_database", json_string(p->scratch));
		json_object_set_new(fig, "restore_target", json_string(p->target->name));
		json_object_set_new(fig, "scratch_dropped", json_boolean(p->dropped || !p->maybe_created));
	}
	if (p->pg_restore_version[0])
		json_object_set_new(fig, "pg_restore_version", json_string(p->pg_restore_version));
	if (p->t_create0 > 0)
		json_object_set_new(fig, "create_seconds", json_real(span(p->t_create0, p->t_create1, now)));
	if (p->t_restore0 > 0) {
		json_object_set_new(fig, "restore_mode", json_string(p->parallel ? "parallel" : "stream"));
		json_object_set_new(fig, "restore_jobs", json_integer(p->parallel ? p->jobs : 1));
		if (p->parallel)
			json_object_set_new(fig, "decompress_seconds",
			                    json_real(span(p->t_decomp0, p->t_decomp1, now)));
		json_object_set_new(fig, "restore_seconds",
		                    json_real(span(p->t_restore0, p->t_restore1, now)));
		json_object_set_new(fig, "archive_bytes", json_integer((json_int_t)p->rres.bytes_in));
		json_object_set_new(fig, "stored_bytes", json_integer((json_int_t)p->rres.bytes_out));
	}
	if (p->t_valid0 > 0) {
		json_object_set_new(fig, "validation_seconds",
		                    json_real(span(p->t_valid0, p->t_valid1, now)));
		json_object_set_new(fig, "tables", json_integer((json_int_t)p->ntables));
		json_object_set_new(fig, "rows", json_integer(p->nrows));
		if (p->fk_checked) {
			json_object_set_new(fig, "fk_constraints", json_integer(p->fk_constraints));
			json_object_set_new(fig, "fk_orphans", json_integer(p->fk_orphans));
		}
		json_object_set_new(fig, "assertions", json_integer((json_int_t)p->db->assertions.n));
		json_object_set_new(fig, "assertions_passed", json_integer((json_int_t)p->asserts_passed));
	}
	if (p->t_drop0 > 0)
		json_object_set_new(fig, "drop_seconds", json_real(span(p->t_drop0, p->t_drop1, now)));
	json_object_set_new(fig, "total_seconds", json_real(total));
	json_object_set(fig, "mismatches", p->mismatches);
	if (p->mode == PV_PROBE_DRILL) {
		json_t *sum = drill_summary(p, result, now, total);
		json_object_set(fig, "rto_seconds", json_object_get(sum, "rto_seconds"));
		json_object_set(fig, "rto_objective_seconds", json_object_get(sum, "rto_objective_seconds"));
		json_object_set(fig, "rto_met", json_object_get(sum, "rto_met"));
		json_object_set_new(fig, "summary", sum);
	}
	if (run != NULL) {
		/* For the restore_failures rule: a cancel (daemon stopping) is neither failure nor success.
		 */
		json_int_t prev = previous_failures(p);
		json_object_set_new(fig, "consecutive_failures",
		                    json_integer(result == PV_RUN_OK          ? 0
		                                 : result == PV_RUN_CANCELLED ? prev
		                                                              : prev + 1));
	}

	if (p->in_use)
		pv_state_backup_use(p->state, p->backup.database, p->backup.job, p->backup.id, -1, NULL);
	if (result == PV_RUN_OK)
		pv_log_info("%s passed %s backup=%s database=%s restore=%.3fs validation=%.3fs tables=%zu "
		            "rows=%lld total=%.3fs",
		            kind_name(p), p->logctx, p->label, p->scratch, p->t_restore1 - p->t_restore0,
		            p->t_valid1 - p->t_valid0, p->ntables, p->nrows, total);
	else if (p->mode == PV_PROBE_RESTORE)
		pv_log_error("restore failed %s backup=%s database=%s cause=%s", p->logctx, p->label,
		             p->scratch, pv_log_quote(cause));
	if (p->mode == PV_PROBE_RESTORE) {
		pv_probe_restore_cb cb = p->restore_cb;
		void *arg = p->restore_arg;
		json_t *b = json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:I}", "database", p->backup.database, "job",
		                      p->backup.job, "id", p->backup.id, "tier",
		                      p->backup.tier ? p->backup.tier : "", "finished",
		                      (json_int_t)p->backup.finished, "size", (json_int_t)p->backup.size,
		                      "archive_size", (json_int_t)p->backup.archive_size);
		json_object_set_new(fig, "ok", json_boolean(result == PV_RUN_OK));
		json_object_set_new(fig, "cause", result == PV_RUN_OK ? json_null() : json_string(cause));
		json_object_set_new(fig, "backup", b);
		json_object_set_new(fig, "database", json_string(p->db->name));
		json_object_set_new(fig, "target", json_string(p->scratch));
		json_object_set_new(fig, "created", json_boolean(p->target_res.created));
		json_object_set_new(fig, "forced", json_boolean(p->clean));
		probe_free(p);
		cb(fig, NULL, arg);
		return;
	}
	run->impl = NULL;
	probe_free(p);
	pv_job_run_finish(run, result, "%s", cause);
}

static bool
busy(const struct pv_probe *p)
{
	return p->tool != NULL || p->sop != NULL || p->measure != NULL || p->orphans != NULL ||
	       p->rop != NULL || (p->reader != NULL && !p->reader_done) ||
	       (p->restore != NULL && !p->restore_done);
}

/* Stop what can be stopped; what cannot (a sent CREATE DATABASE, a drop) reports later. */
static void
stop_work(struct pv_probe *p)
{
	if (p->tool != NULL) {
		pv_pgtool_cancel(p->tool);
		p->tool = NULL;
	}
	if (p->measure != NULL) {
		pv_pg_measure_cancel(p->measure);
		p->measure = NULL;
	}
	if (p->orphans != NULL) {
		json_decref(pv_pg_integrity_cancel(p->orphans));
		p->orphans = NULL;
	}
	if (p->rop != NULL) {
		pv_pg_restore_op_cancel(p->rop);
		p->rop = NULL;
	}
	if (p->sop != NULL && p->phase == PH_ASSERT) {
		pv_pg_scratch_cancel(p->sop);
		p->sop = NULL;
	}
	if (p->restore != NULL && !p->restore_done)
		pv_proc_cancel(p->restore);
	if (p->reader != NULL && !p->reader_done)
		pv_store_reader_cancel(p->reader);
}

static void fail(struct pv_probe *p, enum pv_run_result result, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* Record the first failure, stop, and go on to the drop (next() decides when). */
static void
fail(struct pv_probe *p, enum pv_run_result result, const char *fmt, ...)
{
	if (!p->failed) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(p->failure, sizeof(p->failure), fmt, ap);
		va_end(ap);
		p->failed = true;
		p->fail_result = result;
	}
	stop_work(p);
	next(p);
}

/* A stop from outside (cancel, deadline): no new work except the drop. */
static void
stop(struct pv_probe *p, enum pv_run_result result, const char *why)
{
	p->stopping = true;
	if (p->phase == PH_DROP && !p->failed) {
		next(p); /* validation finished: let the drop end, the result stands */
		return;
	}
	if (p->failed) {
		stop_work(p);
		next(p);
		return;
	}
	fail(p, result, "%s while %s%s", why, phase_name(p),
	     p->mode != PV_PROBE_RESTORE && (p->maybe_created || p->phase == PH_CREATE)
	             ? "; the scratch database is dropped"
	             : "");
}

/* ---- drop ---- */

static void
on_drop(const struct pv_pg_scratch_result *res, void *arg)
{
	struct pv_probe *p = arg;

	p->sop = NULL;
	p->t_drop1 = pv_now_mono();
	if (res->ok) {
		p->dropped = true;
		pv_log_info("scratch database dropped %s database=%s target=%s seconds=%.3f", p->logctx,
		            p->scratch, p->target->name, p->t_drop1 - p->t_drop0);
	} else {
		snprintf(p->drop_err, sizeof(p->drop_err),
		         "the scratch database %s on restore target %s could not be dropped: %s", p->scratch,
		         p->target->name, res->error.msg);
		pv_log_error("cannot drop scratch database %s database=%s target=%s error=%s "
		             "(it is dropped at the next start)",
		             p->logctx, p->scratch, p->target->name, pv_log_quote(res->error.msg));
	}
	complete(p);
}

static void
start_drop(struct pv_probe *p)
{
	struct pv_error err;

	p->phase = PH_DROP;
	p->drop_started = true;
	p->t_drop0 = pv_now_mono();
	p->sop = pv_pg_scratch_drop(p->base, p->dns, p->target->conninfo, p->password, p->scratch,
	                            p->stopping ? STOP_DROP_TIMEOUT : DROP_TIMEOUT, on_drop, p, &err);
	if (p->sop == NULL) {
		snprintf(p->drop_err, sizeof(p->drop_err), "the scratch database %s could not be dropped: %s",
		         p->scratch, err.msg);
		complete(p);
	}
}

/* ---- assertions ---- */

static void start_assert(struct pv_probe *p);
static void start_orphans(struct pv_probe *p);
static void after_orphans(struct pv_probe *p);

static void
on_assert(const struct pv_pg_scratch_result *res, void *arg)
{
	struct pv_probe *p = arg;
	size_t i = p->next_assert++;
	const char *sql = p->db->assertions.v[i];

	p->sop = NULL;
	if (!res->ok)
		json_array_append_new(p->mismatches, json_sprintf("assertion %zu (%s) failed: %s", i + 1, sql,
		                                                  res->error.msg));
	else if (!res->holds)
		json_array_append_new(p->mismatches,
		                      json_sprintf("assertion %zu (%s) %s", i + 1, sql, res->error.msg));
	else
		p->asserts_passed++;
	start_assert(p);
}

static void
start_assert(struct pv_probe *p)
{
	struct pv_error err;
	double left;

	p->phase = PH_ASSERT;
	if (p->stopping || p->failed) {
		next(p);
		return;
	}
	if (p->next_assert >= p->db->assertions.n) {
		p->t_valid1 = pv_now_mono();
		if (p->mode == PV_PROBE_RESTORE)
			complete(p); /* the operator's database stays */
		else
			start_drop(p);
		return;
	}
	/* Half a second is kept so a stalled assertion is named before the job's own deadline. */
	left = p->deadline_mono - pv_now_mono() - 0.5;
	if (left < 0.1)
		left = 0.1;
	p->sop = pv_pg_assert_start(p->base, p->dns, p->scratch_conninfo, p->password,
	                            p->db->assertions.v[p->next_assert], left, on_assert, p, &err);
	if (p->sop == NULL) {
		struct pv_pg_scratch_result res = {.ok = false};
		res.error = err;
		on_assert(&res, p);
	}
}

/* ---- validation ---- */

static const char *
jstr_or(json_t *v, char *buf, size_t size)
{
	if (json_is_string(v))
		return json_string_value(v);
	if (json_is_integer(v))
		snprintf(buf, size, "%lld", (long long)json_integer_value(v));
	else
		snprintf(buf, size, "%s", "none");
	return buf;
}

static bool
array_has(json_t *a, const char *s)
{
	size_t i;
	json_t *v;

	json_array_foreach(a, i,
	                   v) if (json_is_string(v) && strcmp(json_string_value(v), s) == 0) return true;
	return false;
}

/* Every difference between what the manifest expects and what was restored, named. */
static void
compare(struct pv_probe *p, json_t *exp, json_t *got)
{
	json_t *et = json_object_get(exp, "tables"), *gt = json_object_get(got, "tables");
	json_t *ec = json_object_get(exp, "row_counts"), *gc = json_object_get(got, "row_counts");
	json_t *eh = json_object_get(exp, "critical_table_hashes"),
	       *gh = json_object_get(got, "critical_table_hashes");
	const char *key;
	json_t *v;
	size_t i;
	char b1[64], b2[64];

	json_array_foreach(et, i, v)
	{
		const char *t = json_string_value(v);
		if (t == NULL)
			continue;
		if (!array_has(gt, t))
			json_array_append_new(p->mismatches,
			                      json_sprintf("table %s is missing from the restored copy", t));
	}
	json_array_foreach(gt, i, v)
	{
		const char *t = json_string_value(v);
		if (t != NULL && !array_has(et, t))
			json_array_append_new(
			        p->mismatches,
			        json_sprintf("table %s is in the restored copy but not in the manifest", t));
	}
	json_object_foreach(ec, key, v)
	{
		json_t *g = json_object_get(gc, key);
		if (g == NULL || json_equal(v, g))
			continue; /* a missing table is named above */
		json_array_append_new(p->mismatches,
		                      json_sprintf("row count of %s: expected %s, restored %s", key,
		                                   jstr_or(v, b1, sizeof(b1)), jstr_or(g, b2, sizeof(b2))));
	}
	json_object_foreach(eh, key, v)
	{
		json_t *g = json_object_get(gh, key);
		if (json_equal(v, g))
			continue;
		if (g == NULL || json_is_null(g)) {
			if (!array_has(et, key) || array_has(gt, key))
				json_array_append_new(
				        p->mismatches,
				        json_sprintf("critical table %s is missing from the restored copy",
				                     key));
			continue;
		}
		json_array_append_new(
		        p->mismatches,
		        json_sprintf("content hash of critical table %s: expected %s, restored %s", key,
		                     jstr_or(v, b1, sizeof(b1)), jstr_or(g, b2, sizeof(b2))));
	}
	p->ntables = json_array_size(gt);
	p->nrows = 0;
	json_object_foreach(gc, key, v) p->nrows += json_integer_value(v);
}

static void
on_orphans(json_t *report, const struct pv_error *err, void *arg)
{
	struct pv_probe *p = arg;
	json_t *d;
	size_t i;

	p->orphans = NULL;
	if (report == NULL) {
		json_array_append_new(p->mismatches, json_sprintf("the foreign-key orphan check failed: %s",
		                                                  err ? err->msg : "unknown"));
		after_orphans(p);
		return;
	}
	p->fk_checked = true;
	p->fk_constraints = json_integer_value(json_object_get(report, "constraints"));
	p->fk_orphans = json_integer_value(json_object_get(report, "orphans"));
	json_array_foreach(json_object_get(report, "details"), i, d)
	{
		const char *name = json_string_value(json_object_get(d, "constraint"));
		json_t *e = json_object_get(d, "error");
		json_int_t n = json_integer_value(json_object_get(d, "orphans"));
		if (e != NULL)
			json_array_append_new(
			        p->mismatches,
			        json_sprintf("foreign key %s could not be checked: %s", name ? name : "?",
			                     json_is_string(e) ? json_string_value(e) : "error"));
		else if (n > 0)
			json_array_append_new(p->mismatches,
			                      json_sprintf("foreign key %s: %lld orphaned row%s",
			                                   name ? name : "?", (long long)n,
			                                   n == 1 ? "" : "s"));
	}
	if (json_integer_value(json_object_get(report, "details_omitted")) > 0)
		json_array_append_new(p->mismatches,
		                      json_sprintf("%lld more foreign keys not listed",
		                                   (long long)json_integer_value(
		                                           json_object_get(report, "details_omitted"))));
	/* Borrowed: integrity.c releases the report after this callback returns. */
	after_orphans(p);
}

static void
start_orphans(struct pv_probe *p)
{
	struct pv_pg_integrity_opts o = {0};
	struct pv_error err;
	double left = p->deadline_mono - pv_now_mono() - 0.5;

	p->phase = PH_ORPHANS;
	p->next_assert = 0;
	o.conninfo = p->scratch_conninfo;
	o.password = p->password;
	o.timeout = left > 0.1 ? left : 0.1;
	p->orphans = pv_pg_integrity_start(p->base, p->dns, &o, on_orphans, p, &err);
	if (p->orphans == NULL) {
		json_array_append_new(p->mismatches,
		                      json_sprintf("the foreign-key orphan check failed: %s", err.msg));
		after_orphans(p);
	}
}

/* ---- drill: sequences and indexes ---- */

static void
on_checks(json_t *report, const struct pv_error *err, void *arg)
{
	struct pv_probe *p = arg;
	json_t *v;
	size_t i;

	p->rop = NULL;
	if (report == NULL) {
		json_array_append_new(p->mismatches,
		                      json_sprintf("the sequence and index checks failed: %s", err->msg));
		start_assert(p);
		return;
	}
	p->checks = json_incref(report);
	json_array_foreach(json_object_get(report, "sequences_behind"), i, v)
	{
		json_array_append_new(
		        p->mismatches,
		        json_sprintf(
		                "sequence %s is behind its column %s.%s: last_value %s%s, but the column "
		                "holds %s (nextval would return a value already used)",
		                jstr(v, "sequence"), jstr(v, "table"), jstr(v, "column"),
		                jstr(v, "last_value"),
		                json_is_true(json_object_get(v, "is_called")) ? "" : " (not yet called)",
		                jstr(v, "column_edge")));
	}
	json_array_foreach(json_object_get(report, "indexes_invalid"), i, v)
	{
		json_array_append_new(
		        p->mismatches,
		        json_sprintf("index %s on %s is not %s", jstr(v, "index"), jstr(v, "table"),
		                     !json_is_true(json_object_get(v, "valid")) ? "valid" : "ready"));
	}
	start_assert(p);
}

static void
start_checks(struct pv_probe *p)
{
	struct pv_error err;
	double left = p->deadline_mono - pv_now_mono() - 0.5;

	p->phase = PH_CHECKS;
	if (p->stopping || p->failed) {
		next(p);
		return;
	}
	p->rop = pv_pg_drill_check_start(p->base, p->dns, p->scratch_conninfo, p->password,
	                                 left > 0.1 ? left : 0.1, on_checks, p, &err);
}

static void
after_orphans(struct pv_probe *p)
{
	if (p->mode == PV_PROBE_DRILL)
		start_checks(p);
	else
		start_assert(p);
}

static void
on_measured(json_t *measured, const struct pv_error *err, void *arg)
{
	struct pv_probe *p = arg;

	p->measure = NULL;
	if (measured == NULL) {
		fail(p, err->code == PV_ERR_PG_TIMEOUT ? PV_RUN_TIMEOUT : PV_RUN_FAILED,
		     "validating the restored copy of %s in %s: %s", p->label, p->scratch, err->msg);
		return;
	}
	p->t_hash1 = pv_now_mono();
	compare(p, p->expected, measured);
	if (p->mode == PV_PROBE_DRILL)
		p->table_hashes = json_incref(json_object_get(measured, "critical_table_hashes"));
	json_decref(measured);
	start_orphans(p);
}

static void
start_measure(struct pv_probe *p)
{
	struct pv_error err;
	double left = p->deadline_mono - pv_now_mono();

	p->phase = PH_MEASURE;
	p->t_valid0 = pv_now_mono();
	/* A drill hashes every table in the same pass: a hashed table's count comes with its hash. */
	p->measure = pv_pg_measure_start(
	        p->base, p->dns, p->scratch_conninfo, p->password, left > 0.1 ? left : 0.1,
	        p->measure_expected ? p->measure_expected : p->expected, on_measured, p, &err);
	if (p->measure == NULL)
		fail(p, PV_RUN_FAILED, "validating the restored copy of %s: %s", p->label, err.msg);
}

/* ---- restore ---- */

static void
on_recheck(struct pv_store_reader *r, const struct pv_store_result *res, void *arg)
{
	struct pv_probe *p = arg;

	p->reader = NULL;
	p->reader_done = true;
	p->recheck = *res;
	next(p);
}

/* pg_restore failed while the stored file was still being read: find out whether the file is
 * to blame, so the cause names corruption rather than its consequence. */
static bool
start_recheck(struct pv_probe *p)
{
	struct pv_store_reader_opts ro = {0};
	struct pv_error err;

	ro.path = p->dump_path;
	ro.ring = p->ring;
	ro.out_fd = -1;
	ro.expect_sha256 = p->backup.sha256;
	p->phase = PH_RECHECK;
	p->reader_done = false;
	p->reader = pv_store_reader_start(p->base, &ro, on_recheck, p, &err);
	if (p->reader == NULL) {
		p->reader_done = true;
		return false;
	}
	return true;
}

static void
restore_finished(struct pv_probe *p)
{
	const char *msg = p->restore_err[0] ? p->restore_err : p->restore_last;

	p->reader = NULL;
	p->restore = NULL;
	p->t_restore1 = pv_now_mono();
	remove_tmp(p); /* pg_restore has exited: the parallel mode's file is no longer needed */
	if (p->stopping || p->failed) {
		next(p);
		return;
	}
	/* The stored bytes decide first: pg_restore failing on a corrupt stream is a consequence. */
	if (!p->rres.ok && strstr(p->rres.error.msg, "consumer closed the pipe") == NULL) {
		fail(p, PV_RUN_FAILED, "the stored backup %s could not be read: %s", p->label,
		     p->rres.error.msg);
		return;
	}
	if (p->pres.cause != PV_PROC_EXITED || p->pres.exit_code != 0) {
		if (!p->rres.ok && start_recheck(p))
			return; /* next() words the failure when the re-read ends */
		fail(p, p->pres.cause == PV_PROC_TIMEOUT ? PV_RUN_TIMEOUT : PV_RUN_FAILED,
		     "pg_restore of %s into %s %s%s%s", p->label, p->scratch, p->pres.text, *msg ? ": " : "",
		     msg);
		return;
	}
	if (!p->rres.ok) {
		fail(p, PV_RUN_FAILED, "the stored backup %s could not be read: %s", p->label,
		     p->rres.error.msg);
		return;
	}
	pv_log_info("backup restored %s backup=%s scratch=%s seconds=%.3f archive_bytes=%llu", p->logctx,
	            p->label, p->scratch, p->t_restore1 - p->t_restore0,
	            (unsigned long long)p->rres.bytes_in);
	start_measure(p);
}

static void
on_reader(struct pv_store_reader *r, const struct pv_store_result *res, void *arg)
{
	struct pv_probe *p = arg;

	p->rres = *res;
	p->reader_done = true;
	/* pg_restore would otherwise wait for the rest of an archive that never comes. */
	if (!res->ok && p->restore != NULL && !p->restore_done)
		pv_proc_cancel(p->restore);
	if (p->restore_done)
		restore_finished(p);
}

static void
on_restore_stderr(struct pv_proc *proc, const char *line, void *arg)
{
	struct pv_probe *p = arg;

	pv_log_warn("pg_restore: %s %s scratch=%s", line, p->logctx, p->scratch);
	pv_strlcpy(p->restore_last, line, sizeof(p->restore_last));
	if (p->restore_err[0] == '\0' && strstr(line, "error:") != NULL)
		pv_strlcpy(p->restore_err, line, sizeof(p->restore_err));
}

static void
on_restore(struct pv_proc *proc, const struct pv_proc_result *res, void *arg)
{
	struct pv_probe *p = arg;

	p->pres = *res;
	p->restore_done = true;
	/* The reader then fails with EPIPE ("consumer closed the pipe") on its own. */
	if (p->reader_done)
		restore_finished(p);
}

/* Start pg_restore reading stdin_fd (stream) or file (parallel, with -j p->jobs). */
static bool
spawn_restore(struct pv_probe *p, int stdin_fd, const char *file, struct pv_error *err)
{
	struct pv_proc_opts po = {0};
	const char *argv[16];
	size_t argc = 0;
	char jobs[16];
	char **env;

	argv[argc++] = p->pg_restore;
	argv[argc++] = "--no-owner";
	argv[argc++] = "--no-privileges";
	argv[argc++] = "--exit-on-error";
	if (p->clean) {
		/* restore --force over a database that has tables: replace what the archive holds */
		argv[argc++] = "--clean";
		argv[argc++] = "--if-exists";
	}
	argv[argc++] = "--no-password";
	if (file != NULL) {
		snprintf(jobs, sizeof(jobs), "%d", p->jobs);
		argv[argc++] = "-j";
		argv[argc++] = jobs;
	}
	argv[argc++] = "-d";
	argv[argc++] = p->scratch_conninfo;
	if (file != NULL)
		argv[argc++] = file;
	argv[argc] = NULL;
	env = pv_pgtool_env(p->mode == PV_PROBE_RESTORE ? "pgvigil-restore" : "pgvigil-probe", p->password);
	po.argv = argv;
	po.envp = (const char *const *)env;
	po.stdin_fd = stdin_fd;
	po.stdout_fd = -1;
	po.on_stderr = on_restore_stderr;
	po.on_done = on_restore;
	po.arg = p;
	p->restore = pv_proc_spawn(p->base, &po, err);
	pv_pgtool_env_free(env);
	return p->restore != NULL;
}

/* Streamed: the reader writes into a pipe that is pg_restore's stdin. */
static void
start_stream(struct pv_probe *p)
{
	struct pv_store_reader_opts ro = {0};
	struct pv_error err;
	int fds[2];

	if (pipe2(fds, O_CLOEXEC) != 0) {
		p->restore_done = p->reader_done = true;
		fail(p, PV_RUN_FAILED, "cannot create a pipe: %s", strerror(errno));
		return;
	}
	fcntl(fds[1], F_SETPIPE_SZ, 1 << 20);
	if (!spawn_restore(p, fds[0], NULL, &err)) {
		close(fds[0]);
		close(fds[1]);
		p->restore_done = p->reader_done = true;
		fail(p, PV_RUN_FAILED, "%s", err.msg);
		return;
	}
	close(fds[0]);
	ro.path = p->dump_path;
	ro.ring = p->ring;
	ro.out_fd = fds[1];
	ro.expect_sha256 = p->backup.sha256;
	p->reader = pv_store_reader_start(p->base, &ro, on_reader, p, &err);
	if (p->reader == NULL) {
		p->rres.ok = false;
		p->rres.error = err;
		p->reader_done = true;
		pv_proc_cancel(p->restore);
	}
}

/* Parallel: the archive has been written to the temporary file; restore it with -j. */
static void
on_decompressed(struct pv_store_reader *r, const struct pv_store_result *res, void *arg)
{
	struct pv_probe *p = arg;
	struct pv_error err;

	(void)r;
	p->rres = *res;
	p->reader = NULL;
	p->reader_done = true;
	p->t_decomp1 = pv_now_mono();
	if (p->stopping || p->failed || !res->ok) {
		p->restore_done = true;
		p->t_restore1 = p->t_decomp1;
		remove_tmp(p);
		if (p->stopping || p->failed)
			next(p);
		else
			fail(p, PV_RUN_FAILED, "the stored backup %s could not be read: %s", p->label,
			     res->error.msg);
		return;
	}
	pv_log_info("backup decompressed for a parallel restore %s backup=%s seconds=%.3f archive_bytes=%llu",
	            p->logctx, p->label, p->t_decomp1 - p->t_decomp0, (unsigned long long)res->bytes_in);
	if (!spawn_restore(p, -1, p->tmp_file, &err)) {
		p->restore_done = true;
		p->t_restore1 = pv_now_mono();
		remove_tmp(p);
		fail(p, PV_RUN_FAILED, "%s", err.msg);
	}
}

/*
 * Parallel restore when it pays and is possible: more than one CPU, an archive of at least
 * PARALLEL_MIN_ARCHIVE, room for the temporary file next to the backup. Returns the temporary
 * file's descriptor (p->tmp_dir, p->tmp_file and p->jobs set), or -1 with the reason to stream.
 */
static int
prepare_parallel(struct pv_probe *p, char *reason, size_t size)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	int64_t archive = p->have_backup ? p->backup.archive_size : 0;
	const char *slash = p->backup.dir ? strrchr(p->backup.dir, '/') : NULL;
	uint64_t total, avail, need;
	struct pv_error err;
	char *jobdir, name[96];
	size_t n = 0;
	int fd;

	if (cpus <= 1) {
		snprintf(reason, size, "one CPU");
		return -1;
	}
	if (archive < PARALLEL_MIN_ARCHIVE) {
		snprintf(reason, size, "archive below %lld MiB", (long long)(PARALLEL_MIN_ARCHIVE >> 20));
		return -1;
	}
	if (slash == NULL || slash == p->backup.dir) {
		snprintf(reason, size, "backup directory has no parent");
		return -1;
	}
	jobdir = pv_strndup(p->backup.dir, (size_t)(slash - p->backup.dir));
	need = (uint64_t)archive + (uint64_t)archive / 10 + PARALLEL_SPACE_MARGIN;
	if (!pv_store_fs_usage(jobdir, &total, &avail, &err)) {
		snprintf(reason, size, "cannot measure free space: %s", err.msg);
		free(jobdir);
		return -1;
	}
	if (avail < need) {
		snprintf(reason, size, "%llu MiB free in storage, a temporary file needs %llu MiB",
		         (unsigned long long)(avail >> 20), (unsigned long long)(need >> 20));
		free(jobdir);
		return -1;
	}
	for (const char *c = p->scratch; *c != '\0' && n < sizeof(name) - 1; c++)
		name[n++] = ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
		             (*c >= '0' && *c <= '9') || *c == '_' || *c == '-')
		                    ? *c
		                    : '_';
	name[n] = '\0';
	p->tmp_dir = pv_asprintf("%s/%s%s", jobdir, PARALLEL_TMP_PREFIX, name);
	free(jobdir);
	if (mkdir(p->tmp_dir, 0700) != 0) {
		snprintf(reason, size, "cannot create %s: %s", p->tmp_dir, strerror(errno));
		free(p->tmp_dir);
		p->tmp_dir = NULL;
		return -1;
	}
	p->tmp_file = pv_asprintf("%s/archive", p->tmp_dir);
	fd = open(p->tmp_file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		snprintf(reason, size, "cannot create %s: %s", p->tmp_file, strerror(errno));
		remove_tmp(p);
		return -1;
	}
	p->jobs = cpus < PARALLEL_MAX_JOBS ? (int)cpus : PARALLEL_MAX_JOBS;
	snprintf(reason, size, "%ld CPUs, archive %lld MiB", cpus, (long long)(archive >> 20));
	return fd;
}

static void
start_restore(struct pv_probe *p)
{
	struct pv_store_reader_opts ro = {0};
	struct pv_error err;
	char reason[512];
	int fd;

	p->phase = PH_RESTORE;
	p->t_restore0 = pv_now_mono();
	p->restore_done = p->reader_done = false;
	fd = prepare_parallel(p, reason, sizeof(reason));
	if (fd < 0) {
		pv_log_info("restore mode=stream reason=%s %s backup=%s", pv_log_quote(reason), p->logctx,
		            p->label);
		start_stream(p);
		return;
	}
	p->parallel = true;
	pv_log_info("restore mode=parallel jobs=%d reason=%s %s backup=%s file=%s", p->jobs,
	            pv_log_quote(reason), p->logctx, p->label, pv_log_quote(p->tmp_file));
	p->t_decomp0 = pv_now_mono();
	ro.path = p->dump_path;
	ro.ring = p->ring;
	ro.out_fd = fd;
	ro.expect_sha256 = p->backup.sha256;
	p->reader = pv_store_reader_start(p->base, &ro, on_decompressed, p, &err);
	if (p->reader == NULL) {
		p->reader_done = p->restore_done = true;
		p->t_decomp1 = p->t_restore1 = pv_now_mono();
		remove_tmp(p);
		fail(p, PV_RUN_FAILED, "the stored backup %s could not be read: %s", p->label, err.msg);
	}
}

/* ---- create ---- */

static void
on_create(const struct pv_pg_scratch_result *res, void *arg)
{
	struct pv_probe *p = arg;

	p->sop = NULL;
	p->t_create1 = pv_now_mono();
	/* A name taken by someone else is not ours to drop; an unknown outcome is. */
	if (res->ok || (res->sent && res->error.code != PV_ERR_PG_QUERY))
		p->maybe_created = true;
	if (res->ok)
		pv_log_info("scratch database created %s database=%s target=%s", p->logctx, p->scratch,
		            p->target->name);
	if (p->stopping || p->failed) {
		next(p);
		return;
	}
	if (!res->ok) {
		fail(p, PV_RUN_FAILED, "cannot create the scratch database on restore target %s: %s",
		     p->target->name, res->error.msg);
		return;
	}
	start_restore(p);
}

/* Restore mode: the operator's database, created when missing, refused when it has tables. */
static void
on_target(const struct pv_pg_target_result *res, void *arg)
{
	struct pv_probe *p = arg;

	p->rop = NULL;
	p->t_create1 = pv_now_mono();
	p->target_res = *res;
	if (res->created)
		pv_log_notice("restore target database created %s database=%s", p->logctx, p->scratch);
	if (p->stopping || p->failed) {
		next(p);
		return;
	}
	if (!res->ok) {
		fail(p, PV_RUN_FAILED, "cannot prepare the target database %s: %s", p->scratch,
		     res->error.msg);
		return;
	}
	if (res->existed && res->user_tables > 0) {
		if (!p->force) {
			fail(p, PV_RUN_FAILED,
			     "the target database %s is not empty: it has %lld user table%s (%s%s); nothing "
			     "was "
			     "restored. HINT: restore into a new database, or use --force to restore over it "
			     "(pg_restore --clean --if-exists)",
			     p->scratch, res->user_tables, res->user_tables == 1 ? "" : "s", res->some_tables,
			     res->user_tables > 3 ? ", ..." : "");
			return;
		}
		p->clean = true;
		pv_log_warn("restoring over a non-empty database (--force) %s database=%s user_tables=%lld",
		            p->logctx, p->scratch, res->user_tables);
	}
	start_restore(p);
}

static void
start_create(struct pv_probe *p)
{
	struct pv_error err;
	double left = p->deadline_mono - pv_now_mono();

	p->phase = PH_CREATE;
	p->t_create0 = pv_now_mono();
	if (left > CREATE_TIMEOUT)
		left = CREATE_TIMEOUT;
	if (p->mode == PV_PROBE_RESTORE) {
		p->rop = pv_pg_target_prepare(p->base, p->dns, p->target_admin_conninfo, p->scratch_conninfo,
		                              p->password, p->scratch, CREATE_TIMEOUT, on_target, p, &err);
		if (p->rop == NULL)
			fail(p, PV_RUN_FAILED, "cannot prepare the target database: %s", err.msg);
		return;
	}
	p->sop = pv_pg_scratch_create(p->base, p->dns, p->target->conninfo, p->password, p->scratch,
	                              left > 0.1 ? left : 0.1, on_create, p, &err);
	if (p->sop == NULL)
		fail(p, PV_RUN_FAILED, "cannot create the scratch database: %s", err.msg);
}

static void
on_tool(const char *path, int major, const char *version, const struct pv_error *err, void *arg)
{
	struct pv_probe *p = arg;

	p->tool = NULL;
	if (path == NULL) {
		fail(p, PV_RUN_FAILED, "%s", err->msg);
		return;
	}
	p->pg_restore = pv_strdup(path);
	pv_strlcpy(p->pg_restore_version, version ? version : "", sizeof(p->pg_restore_version));
	start_create(p);
}

/* After a failure or stop: wait for what is in flight, drop what may exist, then complete. */
static void
next(struct pv_probe *p)
{
	if (busy(p))
		return;
	if (p->phase == PH_RECHECK && !p->failed) {
		const char *msg = p->restore_err[0] ? p->restore_err : p->restore_last;
		if (!p->recheck.ok && strcmp(p->recheck.error.msg, "cancelled") != 0)
			fail(p, PV_RUN_FAILED, "the stored backup %s is damaged: %s (pg_restore %s%s%s)",
			     p->label, p->recheck.error.msg, p->pres.text, *msg ? ": " : "", msg);
		else
			fail(p, PV_RUN_FAILED, "pg_restore of %s into %s %s%s%s", p->label, p->scratch,
			     p->pres.text, *msg ? ": " : "", msg);
		return;
	}
	if (p->maybe_created && !p->drop_started) {
		start_drop(p);
		return;
	}
	complete(p);
}

/* ---- the job ---- */

static void
deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_probe *p = arg;
	char why[64];

	snprintf(why, sizeof(why), "timeout after %llds", (long long)pv_config_job_timeout(p->run->job));
	pv_log_error("%s passed its deadline %s phase=%s", kind_name(p), p->logctx,
	             pv_log_quote(phase_name(p)));
	stop(p, PV_RUN_TIMEOUT, why);
}

/* pgvigil_probe_<db>_<YYYYMMDDtHHMMSS>: [a-z0-9_] only, the database part shortened to fit 63 bytes. */
static char *
scratch_name(const char *db, time_t t)
{
	char stamp[32], part[64];
	size_t max = 63 - strlen(PV_PG_SCRATCH_PREFIX) - 1 - 15, n = 0;
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(stamp, sizeof(stamp), "%Y%m%dt%H%M%S", &tm);
	for (const char *s = db; *s != '\0' && n < max; s++) {
		char c = *s;
		if (c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		part[n++] = ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) ? c : '_';
	}
	part[n] = '\0';
	return pv_asprintf("%s%s_%s", PV_PG_SCRATCH_PREFIX, part, stamp);
}

/* The backup chosen, marked in use, its manifest read: everything but the target. */
static bool
prepare_backup(struct pv_probe *p)
{
	const struct pv_config_storage *st = &p->cfg->storage;
	struct pv_error err;
	json_t *m;

	p->have_backup = true;
	p->label = pv_asprintf("%s/%s/%s", p->backup.database, p->backup.job, p->backup.id);
	/* Retention must not delete it under us. */
	if (pv_state_backup_use(p->state, p->backup.database, p->backup.job, p->backup.id, +1, &err))
		p->in_use = true;
	else
		pv_log_warn("cannot mark backup in use backup=%s error=%s", p->label, pv_log_quote(err.msg));

	m = pv_store_manifest_read(p->backup.dir, &err);
	if (m == NULL) {
		snprintf(p->failure, sizeof(p->failure), "backup %s: %s", p->label, err.msg);
		return false;
	}
	if (jstr(m, "sha256") == NULL || strcmp(jstr(m, "sha256"), p->backup.sha256) != 0) {
		snprintf(p->failure, sizeof(p->failure),
		         "manifest of %s names sha256 %s but the catalog recorded %s", p->label,
		         jstr(m, "sha256") ? jstr(m, "sha256") : "none", p->backup.sha256);
		json_decref(m);
		return false;
	}
	p->expected = json_incref(json_object_get(m, "expected"));
	p->server_version_num = (int)json_integer_value(json_object_get(m, "server_version_num"));
	p->dump_path = pv_asprintf("%s/%s", p->backup.dir, jstr(m, "file"));
	json_decref(m);
	if (!json_is_object(p->expected)) {
		snprintf(p->failure, sizeof(p->failure),
		         "manifest of %s has no expected values to validate against", p->label);
		return false;
	}
	if (p->mode == PV_PROBE_DRILL) {
		/* Every table listed for hashing; only the manifest's own hashes are compared. */
		json_t *hashes = json_object(), *v;
		const char *key;
		size_t i;

		p->measure_expected = json_deep_copy(p->expected);
		json_array_foreach(json_object_get(p->expected, "tables"), i, v) if (json_is_string(v))
		        json_object_set_new(hashes, json_string_value(v), json_string(""));
		json_object_foreach(json_object_get(p->expected, "critical_table_hashes"), key, v)
		        json_object_set_new(hashes, key, json_string(""));
		json_object_set_new(p->measure_expected, "critical_table_hashes", hashes);
	}

	p->ring = pv_crypto_keyring_load(st->encryption_key_file, st->old_key_files.v, st->old_key_files.n,
	                                 &err);
	if (p->ring == NULL) {
		snprintf(p->failure, sizeof(p->failure), "%s", err.msg);
		return false;
	}
	return true;
}

/* Everything that can be checked before the first asynchronous step; false with p->failure. */
static bool
prepare(struct pv_probe *p)
{
	struct pv_job_run *run = p->run;
	struct pv_error err;
	char *conn_password = NULL;

	if (p->db == NULL || p->target == NULL) {
		snprintf(p->failure, sizeof(p->failure), "job %s has no database with a restore_target",
		         run->job->name);
		return false;
	}
	if (!pv_state_backup_newest_verified(p->state, p->db->name, NULL, &p->backup, &err)) {
		if (err.code == PV_ERR_NOT_FOUND)
			snprintf(p->failure, sizeof(p->failure), "no verified backup of %s to %s",
			         p->db->name, p->mode == PV_PROBE_DRILL ? "drill with" : "probe");
		else
			snprintf(p->failure, sizeof(p->failure), "cannot read the backup catalog: %s",
			         err.msg);
		return false;
	}
	if (!prepare_backup(p))
		return false;
	p->scratch = scratch_name(p->db->name, run->started);
	active_add(p->scratch);
	p->scratch_active = true;
	p->scratch_conninfo =
	        pv_pg_conninfo_set_dbname(p->target->conninfo, p->scratch, &conn_password, &err);
	if (p->scratch_conninfo == NULL) {
		snprintf(p->failure, sizeof(p->failure), "restore target %s: %s", p->target->name, err.msg);
		free(conn_password);
		return false;
	}
	p->password = p->target->password.value ? pv_strdup(p->target->password.value) : conn_password;
	if (p->target->password.value)
		free(conn_password);
	return true;
}

static void
begin(struct pv_probe *p)
{
	p->phase = PH_TOOL;
	p->tool = pv_pgtool_find(p->base, "pg_restore", p->cfg->daemon.pg_bin_dir,
	                         p->server_version_num > 0 ? p->server_version_num : 100000, on_tool, p);
}

static bool
job_start(struct pv_job_run *run, enum pv_probe_mode mode)
{
	struct pv_probe *p = pv_calloc(1, sizeof(*p));
	struct timeval tv;
	double left;

	p->mode = mode;
	p->run = run;
	p->base = run->base;
	p->dns = run->dns;
	p->state = run->state;
	p->cfg = run->cfg;
	p->started = run->started;
	p->started_mono = run->started_mono;
	p->deadline_mono = run->deadline_mono;
	snprintf(p->logctx, sizeof(p->logctx), "job=%s run=%lld", run->job->name, (long long)run->id);
	p->db = run->job->database;
	p->target = p->db ? p->db->restore_target : NULL;
	p->mismatches = json_array();
	p->t_start = pv_now_mono();
	run->impl = p;
	if (!prepare(p)) {
		p->failed = true;
		p->fail_result = PV_RUN_FAILED;
		complete(p);
		return true;
	}
	pv_log_info("%s starting %s backup=%s scratch=%s target=%s", kind_name(p), p->logctx, p->label,
	            p->scratch, p->target->name);
	/* A crash can leave a scratch database the start-up cleanup did not see: one whose CREATE the
	 * server finished after the restart, or one stamped in the restart's own second. */
	pv_probe_cleanup_start(run->base, run->dns, run->cfg);
	left = run->deadline_mono - pv_now_mono();
	if (left < 0)
		left = 0;
	tv.tv_sec = (time_t)left;
	tv.tv_usec = (suseconds_t)((left - (double)tv.tv_sec) * 1e6);
	p->deadline = evtimer_new(run->base, deadline_cb, p);
	evtimer_add(p->deadline, &tv);
	begin(p);
	return true;
}

static bool
probe_start(struct pv_job_run *run)
{
	return job_start(run, PV_PROBE_PROBE);
}

static bool
drill_start(struct pv_job_run *run)
{
	return job_start(run, PV_PROBE_DRILL);
}

static void
probe_cancel(struct pv_job_run *run)
{
	struct pv_probe *p = run->impl;

	if (p == NULL)
		return;
	stop(p, PV_RUN_CANCELLED, "cancelled");
}

static uint64_t
probe_progress(const struct pv_job_run *run)
{
	const struct pv_probe *p = run->impl;

	if (p == NULL || p->reader == NULL || p->reader_done || p->phase != PH_RESTORE)
		return 0;
	return pv_store_reader_progress(p->reader);
}

const struct pv_job_ops pv_job_probe_ops = {
        .type = PV_JOB_RESTORE_PROBE,
        .start = probe_start,
        .cancel = probe_cancel,
        .progress = probe_progress,
};

const struct pv_job_ops pv_job_drill_ops = {
        .type = PV_JOB_DRILL,
        .start = drill_start,
        .cancel = probe_cancel,
        .progress = probe_progress,
};

/* ---- emergency restore ---- */

/* An emergency restore has no job timeout: the operator waits for it (or interrupts it). Every
 * statement still gets a bound, so a server that stops answering cannot hold it forever. */
#define RESTORE_BOUND (7.0 * 24 * 3600)

static struct pv_probe *
restore_fail(struct pv_probe *p, struct pv_error *err, enum pv_errcode code)
{
	pv_error_set(err, code, "%s", p->failure);
	if (p->in_use)
		pv_state_backup_use(p->state, p->backup.database, p->backup.job, p->backup.id, -1, NULL);
	probe_free(p);
	return NULL;
}

struct pv_probe *
pv_probe_restore_start(const struct pv_probe_restore_opts *o, pv_probe_restore_cb cb, void *arg,
                       struct pv_error *err)
{
	struct pv_probe *p;
	char *dbname = NULL, *pw1 = NULL, *pw2 = NULL;
	struct pv_error e;

	if (o->backup == NULL || o->backup[0] == '\0' || o->database == NULL || o->to == NULL) {
		pv_error_set(err, PV_ERR_USAGE, "restore: \"backup\", \"database\" and \"to\" are required");
		return NULL;
	}
	if (!pv_pg_conninfo_dbname(o->to, &dbname, err))
		return NULL;
	p = pv_calloc(1, sizeof(*p));
	p->mode = PV_PROBE_RESTORE;
	p->base = o->base;
	p->dns = o->dns;
	p->state = o->state;
	p->cfg = pv_config_ref(o->cfg);
	p->force = o->force;
	p->backup_ref = pv_strdup(o->backup);
	p->started = time(NULL);
	p->started_mono = p->t_start = pv_now_mono();
	p->deadline_mono = p->started_mono + RESTORE_BOUND;
	p->mismatches = json_array();
	p->restore_cb = cb;
	p->restore_arg = arg;
	p->scratch = dbname;
	snprintf(p->logctx, sizeof(p->logctx), "restore=%s", pv_log_quote(dbname));
	p->db = pv_config_database_find(p->cfg, o->database);
	if (p->db == NULL) {
		snprintf(p->failure, sizeof(p->failure), "no database named \"%s\" in the configuration",
		         o->database);
		return restore_fail(p, err, PV_ERR_NOT_FOUND);
	}
	if (strcmp(o->backup, "latest") == 0) {
		if (!pv_state_backup_newest_verified(p->state, p->db->name, NULL, &p->backup, &e)) {
			snprintf(p->failure, sizeof(p->failure), "%s", e.msg);
			if (e.code == PV_ERR_NOT_FOUND)
				snprintf(
				        p->failure, sizeof(p->failure),
				        "no verified backup of %s: HINT: name one with pgvigilctl backups %s",
				        p->db->name, p->db->name);
			return restore_fail(p, err, e.code);
		}
	} else if (!pv_state_backup_find(p->state, o->backup, &p->backup, &e)) {
		snprintf(p->failure, sizeof(p->failure), "%s", e.msg);
		return restore_fail(p, err, e.code);
	} else if (strcmp(p->backup.database, p->db->name) != 0) {
		snprintf(p->failure, sizeof(p->failure), "backup %s/%s/%s is a backup of %s, not of %s",
		         p->backup.database, p->backup.job, p->backup.id, p->backup.database, p->db->name);
		pv_state_backup_clear(&p->backup);
		return restore_fail(p, err, PV_ERR_USAGE);
	}
	if (!prepare_backup(p))
		return restore_fail(p, err, PV_ERR_INTERNAL);
	/* Passwords come out of the conninfo: pg_restore gets them through its environment. */
	p->scratch_conninfo = pv_pg_conninfo_set_dbname(o->to, dbname, &pw1, &e);
	p->target_admin_conninfo = pv_pg_conninfo_set_dbname(o->to, "postgres", &pw2, &e);
	free(pw2);
	if (p->scratch_conninfo == NULL || p->target_admin_conninfo == NULL) {
		free(pw1);
		snprintf(p->failure, sizeof(p->failure), "%s", e.msg);
		return restore_fail(p, err, PV_ERR_USAGE);
	}
	p->password = pw1;
	pv_log_notice("restore starting %s backup=%s", p->logctx, p->label);
	begin(p);
	return p;
}

void
pv_probe_restore_cancel(struct pv_probe *p, const char *why)
{
	stop(p, PV_RUN_CANCELLED, why);
}

void
pv_probe_restore_progress(const struct pv_probe *p, struct pv_probe_progress *out)
{
	memset(out, 0, sizeof(*out));
	out->phase = phase_name(p);
	if (p->reader != NULL && !p->reader_done && p->phase == PH_RESTORE)
		out->bytes = pv_store_reader_progress(p->reader);
	else if (p->t_restore1 > 0 || (p->parallel && p->reader_done && p->phase == PH_RESTORE))
		out->bytes = p->rres.bytes_in;
	out->total = p->have_backup && p->backup.archive_size > 0 ? (uint64_t)p->backup.archive_size : 0;
	out->elapsed = pv_now_mono() - p->started_mono;
	out->backup = p->label;
	out->target = p->scratch;
}

/* ---- start-up clean-up of scratch databases left by a crash ---- */

struct cleanup_target {
	char *name, *conninfo, *password;
};

struct cleanup {
	struct event_base *base;
	struct evdns_base *dns;
	struct cleanup_target *targets;
	size_t ntargets, current;
	char **names; /* to drop on the current target */
	size_t nnames, next_name;
	struct pv_pg_scratch_op *op;
	char cutoff[32]; /* YYYYMMDDtHHMMSS of the call: newer names belong to running probes */
	size_t dropped;
};

static void cleanup_next_target(struct cleanup *c);

static void
cleanup_free_names(struct cleanup *c)
{
	for (size_t i = 0; i < c->nnames; i++)
		free(c->names[i]);
	free(c->names);
	c->names = NULL;
	c->nnames = c->next_name = 0;
}

static void cleanup_next_name(struct cleanup *c);

static void
cleanup_on_drop(const struct pv_pg_scratch_result *res, void *arg)
{
	struct cleanup *c = arg;
	const char *name = c->names[c->next_name - 1];

	c->op = NULL;
	if (res->ok) {
		c->dropped++;
		pv_log_notice("dropped scratch database left by an earlier run target=%s database=%s",
		              c->targets[c->current].name, name);
	} else {
		pv_log_error(
		        "cannot drop scratch database left by an earlier run target=%s database=%s error=%s",
		        c->targets[c->current].name, name, pv_log_quote(res->error.msg));
	}
	cleanup_next_name(c);
}

static void
cleanup_next_name(struct cleanup *c)
{
	const struct cleanup_target *t = &c->targets[c->current];
	struct pv_error err;

	while (c->next_name < c->nnames) {
		const char *name = c->names[c->next_name++];
		c->op = pv_pg_scratch_drop(c->base, c->dns, t->conninfo, t->password, name, DROP_TIMEOUT,
		                           cleanup_on_drop, c, &err);
		if (c->op != NULL)
			return;
		pv_log_error("cannot drop scratch database target=%s database=%s error=%s", t->name, name,
		             pv_log_quote(err.msg));
	}
	cleanup_free_names(c);
	c->current++;
	cleanup_next_target(c);
}

/* The name's trailing stamp, or NULL when it has none (then it is not ours to judge by age). */
static const char *
name_stamp(const char *name)
{
	size_t len = strlen(name);
	const char *s;

	if (len < 16)
		return NULL;
	s = name + len - 15;
	if (s[-1] != '_' || s[8] != 't')
		return NULL;
	for (int i = 0; i < 15; i++)
		if (i != 8 && (s[i] < '0' || s[i] > '9'))
			return NULL;
	return s;
}

static void
cleanup_on_list(const struct pv_pg_scratch_result *res, void *arg)
{
	struct cleanup *c = arg;
	const struct cleanup_target *t = &c->targets[c->current];

	c->op = NULL;
	if (!res->ok) {
		pv_log_warn("cannot look for leftover scratch databases target=%s error=%s", t->name,
		            pv_log_quote(res->error.msg));
		c->current++;
		cleanup_next_target(c);
		return;
	}
	c->names = pv_calloc(res->n + 1, sizeof(char *));
	for (size_t i = 0; i < res->n; i++) {
		const char *stamp = name_stamp(res->names[i]);
		if (active_has(res->names[i]))
			continue; /* a running probe's */
		if (stamp == NULL || strcmp(stamp, c->cutoff) >= 0) {
			pv_log_info("scratch database left alone target=%s database=%s reason=%s", t->name,
			            res->names[i], stamp == NULL ? "no-time-in-name" : "newer-than-start");
			continue;
		}
		c->names[c->nnames++] = pv_strdup(res->names[i]);
	}
	cleanup_next_name(c);
}

static void
cleanup_end(struct cleanup *c)
{
	if (c->dropped > 0)
		pv_log_notice("scratch databases left by earlier runs dropped count=%zu", c->dropped);
	for (size_t i = 0; i < c->ntargets; i++) {
		free(c->targets[i].name);
		free(c->targets[i].conninfo);
		free(c->targets[i].password);
	}
	free(c->targets);
	free(c);
}

static void
cleanup_next_target(struct cleanup *c)
{
	struct pv_error err;

	while (c->current < c->ntargets) {
		const struct cleanup_target *t = &c->targets[c->current];
		c->op = pv_pg_scratch_list(c->base, c->dns, t->conninfo, t->password, DROP_TIMEOUT,
		                           cleanup_on_list, c, &err);
		if (c->op != NULL)
			return;
		pv_log_warn("cannot look for leftover scratch databases target=%s error=%s", t->name,
		            pv_log_quote(err.msg));
		c->current++;
	}
	cleanup_end(c);
}

void
pv_probe_cleanup_start(struct event_base *base, struct evdns_base *dns, const struct pv_config *cfg)
{
	struct cleanup *c;
	time_t now = time(NULL);
	struct tm tm;

	if (cfg->n_restore_targets == 0)
		return;
	c = pv_calloc(1, sizeof(*c));
	c->base = base;
	c->dns = dns;
	gmtime_r(&now, &tm);
	strftime(c->cutoff, sizeof(c->cutoff), "%Y%m%dt%H%M%S", &tm);
	c->targets = pv_calloc(cfg->n_restore_targets, sizeof(*c->targets));
	for (size_t i = 0; i < cfg->n_restore_targets; i++) {
		const struct pv_config_restore_target *t = &cfg->restore_targets[i];

		c->targets[c->ntargets].name = pv_strdup(t->name);
		c->targets[c->ntargets].conninfo = pv_strdup(t->conninfo);
		c->targets[c->ntargets].password = t->password.value ? pv_strdup(t->password.value) : NULL;
		c->ntargets++;
	}
	cleanup_next_target(c);
}
