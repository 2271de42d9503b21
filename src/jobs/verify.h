/* Verifying stored backups: re-hash, authenticated decryption, and a full read by pg_restore. */
#ifndef PV_JOBS_VERIFY_H
#define PV_JOBS_VERIFY_H

#include <stdbool.h>

#include "jobs/job.h"
#include "state/state.h"

struct event_base;
struct pv_crypto_keyring;
struct pv_verify_op;

extern const struct pv_job_ops pv_job_verify_ops;

/* ok, or the first problem found; seconds is the whole verification. */
typedef void (*pv_verify_cb)(bool ok, const char *cause, double seconds, void *arg);

/*
 * Verify one catalogued backup: its manifest still matches the catalog, and every stored file
 * (the dump and, with schema_copy, the schema dump) re-hashes to the recorded SHA-256, decrypts
 * with authenticated chunks, decompresses completely and is read end to end by
 * `pg_restore -f /dev/null` (which, unlike --list, reads every data block). pg_restore is
 * found for the backup's server version. The callback runs exactly once unless cancelled.
 */
struct pv_verify_op *pv_verify_start(struct event_base *base, const struct pv_state_backup *b,
                                     const struct pv_crypto_keyring *ring, const char *pg_bin_dir,
                                     pv_verify_cb cb, void *arg);
void pv_verify_cancel(struct pv_verify_op *op);

#endif
