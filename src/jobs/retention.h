/* Retention: which backups of a job may go, and deleting them safely (SPEC §2). */
#ifndef PV_JOBS_RETENTION_H
#define PV_JOBS_RETENTION_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "config/config.h"
#include "state/state.h"

/* Why a backup is kept or deleted; stable words for `pgvigilctl prune`. */
enum pv_retention_verdict {
	PV_RETAIN_KEEP,            /* among the `keep` newest verified backups */
	PV_RETAIN_NEWER,           /* newer than the oldest kept one (e.g. not verified yet, or failed) */
	PV_RETAIN_NEWEST_VERIFIED, /* never deleted */
	PV_RETAIN_IN_USE,          /* a verify, probe or restore is reading it */
	PV_RETAIN_KEY_MISSING,     /* encrypted with a key that is not configured: reported, never deleted */
	PV_RETAIN_DELETE,
};
const char *pv_retention_verdict_name(enum pv_retention_verdict v);

/*
 * Decide for the backups of one job, given newest first by recorded finish time (never by
 * file name or mtime). `keep` counts verified backups: the `keep` newest verified ones stay,
 * as does anything newer than the oldest of them, the newest verified backup and any backup
 * in use. Older ones go. Pure.
 */
void pv_retention_plan(const struct pv_state_backup *list, size_t n, int keep,
                       enum pv_retention_verdict *out);

/*
 * Apply (or with dry_run only report) retention for one job: report is an array that gets one
 * object per backup considered ({database, job, id, finished, verdict, deleted}). Returns false
 * when something could not be deleted (err says what); the rest is still done.
 */
struct pv_crypto_keyring;
/* ring: the configured keys; a backup encrypted with a key not in it is kept and reported. */
bool pv_retention_apply(struct pv_state *st, const struct pv_config_job *job,
                        const struct pv_crypto_keyring *ring, bool dry_run, json_t *report,
                        struct pv_error *err);

#endif
