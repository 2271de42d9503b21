/* Fill the alert rules' snapshot from what the jobs recorded in the state database. */
#ifndef PV_ALERT_SNAPSHOT_H
#define PV_ALERT_SNAPSHOT_H

#include <stdbool.h>
#include <time.h>

#include "alert/rules.h"
#include "config/config.h"
#include "util/error.h"

struct pv_state;

/*
 * Build the stateful part of a snapshot at `now`: per database the newest health figures, the newest
 * verified backup, the newest successful probe/drill and their consecutive failures; per backup job its
 * last run and the sizes and durations of the successful runs before it; the storage job's newest
 * figures. Missed runs, notifiers and events are left empty for the caller. Names are borrowed from cfg,
 * which must outlive the snapshot; everything else is owned (pv_alert_snapshot_free). `daemon_started`
 * is the age origin for a database or job with no recorded run. On failure *out is left empty.
 */
bool pv_alert_snapshot_build(struct pv_state *st, const struct pv_config *cfg, time_t now,
                             time_t daemon_started, struct pv_alert_snapshot *out, struct pv_error *err);
/* Free what pv_alert_snapshot_build allocated and zero *snap; NULL is a no-op. */
void pv_alert_snapshot_free(struct pv_alert_snapshot *snap);

#endif
