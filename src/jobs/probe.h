/* Restoring a stored backup and proving the copy: the `restore_probe` and `drill` job types and the
 * emergency `restore` command share this code. */
#ifndef PV_JOBS_PROBE_H
#define PV_JOBS_PROBE_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "jobs/job.h"

struct event_base;
struct evdns_base;
struct pv_state;
struct pv_config;

enum pv_probe_mode {
	PV_PROBE_PROBE,   /* restore_probe: scratch database, manifest validation, drop */
	PV_PROBE_DRILL,   /* drill: a probe that also hashes every table, checks sequences and
	                   * indexes, and records a summary with the measured RTO */
	PV_PROBE_RESTORE, /* emergency restore: the operator's database, validated, never dropped */
};

extern const struct pv_job_ops pv_job_probe_ops;
extern const struct pv_job_ops pv_job_drill_ops;

/*
 * Drop the scratch databases a crashed daemon left behind: for every configured restore target,
 * list the databases named pgvigil_probe_* whose embedded start time is before this call, and drop
 * each (logged), except those a running probe or drill of this daemon uses. Asynchronous and
 * self-contained: it copies what it needs from cfg, never blocks, bounds every step, and only logs
 * failures. Called at daemon start, after the loop exists and before the first job can start, and
 * at the start of every probe and drill.
 */
void pv_probe_cleanup_start(struct event_base *base, struct evdns_base *dns, const struct pv_config *cfg);

/*
 * Emergency restore of a stored backup into the database that `to` names (its dbname), on the
 * server `to` points at: the database is created (through the same server's `postgres`
 * database) when it does not exist; an existing one with user tables is refused unless force,
 * and then restored over with pg_restore --clean --if-exists. The backup is streamed as a probe
 * streams it, then validated like a probe (tables, exact row counts, critical table hashes, FK
 * orphans, the database's assertions). The target is never dropped.
 *
 * backup is "latest" (the newest verified backup of database) or a reference for
 * pv_state_backup_find, which must belong to database. cfg is referenced for the whole restore.
 * Returns NULL (err filled, cb never called) when the restore cannot start: bad arguments, an
 * unknown database or backup, an unreadable manifest or key. Otherwise cb runs exactly once,
 * from the loop, with the report (stolen; err is NULL: a failed restore is a report with "ok"
 * false and its "cause").
 *
 * The report: {"ok": bool, "cause": text|null, "backup": {...}, "database": DB, "target": NAME,
 * "created": bool, "forced": bool, "restore_seconds", "validation_seconds", "total_seconds",
 * "archive_bytes", "tables", "rows", "fk_constraints", "fk_orphans", "assertions",
 * "assertions_passed", "mismatches": [text...]}.
 */
struct pv_probe;
struct pv_probe_restore_opts {
	struct event_base *base;
	struct evdns_base *dns;
	struct pv_state *state;
	struct pv_config *cfg;
	const char *backup;
	const char *database;
	const char *to;
	bool force;
};
typedef void (*pv_probe_restore_cb)(json_t *report, const struct pv_error *err, void *arg);
struct pv_probe *pv_probe_restore_start(const struct pv_probe_restore_opts *opts, pv_probe_restore_cb cb,
                                        void *arg, struct pv_error *err);
/* Stop soon (pg_restore is killed); cb still runs, with the failure named by why. */
void pv_probe_restore_cancel(struct pv_probe *p, const char *why);

struct pv_probe_progress {
	const char *phase;  /* static text */
	uint64_t bytes;     /* archive bytes restored so far */
	uint64_t total;     /* archive bytes of the backup (0 unknown) */
	double elapsed;     /* seconds since the start */
	const char *backup; /* DATABASE/JOB/ID; valid until cb runs */
	const char *target; /* the target database name */
};
void pv_probe_restore_progress(const struct pv_probe *p, struct pv_probe_progress *out);

#endif
