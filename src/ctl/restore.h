/* The emergency `restore` control command and its read-only companion `restore-progress`. */
#ifndef PV_CTL_RESTORE_H
#define PV_CTL_RESTORE_H

#include <stdbool.h>

#include <jansson.h>

#include "ctl/server.h"
#include "util/error.h"

/*
 * restore (asynchronous, admins): args {"backup": "ID" | "DATABASE/JOB/ID" | "latest",
 * "database": DB, "to": CONNINFO, "force": bool}. Answers when the restore has finished, with the
 * report of pv_probe_restore_start (jobs/probe.h); "ok" false in it when the restore or its
 * validation failed. One restore runs at a time: a second is refused (PV_ERR_BUSY). A client
 * that goes away cancels its restore.
 */
void pv_ctl_restore(void *ctx, struct pv_ctl_call *call, json_t *args);

/*
 * restore-progress (read-only): {"running": bool, "bytes": n, "total": n, "phase": text,
 * "elapsed": seconds, "backup": "DATABASE/JOB/ID", "target": NAME}; only "running" false when no
 * restore runs.
 */
bool pv_ctl_restore_progress(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data,
                             struct pv_error *err);

#endif
