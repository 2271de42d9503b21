/* Disaster-recovery readiness: achieved RPO/RTO per database and the `report` command (SPEC §6). */
#ifndef PV_CTL_REPORT_H
#define PV_CTL_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <jansson.h>

#include "ctl/server.h"
#include "util/error.h"

struct pv_state;
struct pv_config;
struct pv_config_database;

/* The window over which the largest gap between verified backups is measured. */
#define PV_REPORT_GAP_WINDOW (30 * 86400)

/*
 * Achieved RPO and RTO of one database at `now` (a new reference):
 *   {"rpo": {"seconds", "objective", "met", "newest_verified_backup", "at", "largest_gap_30d"},
 *    "rto": {"seconds", "objective", "met", "measured_by", "run", "job", "at"}}
 * RPO is the age of the newest backup whose last verification succeeded and whose file is present;
 * the largest gap also counts backups that were verified when taken and since removed by retention
 * (their successful backup runs), and the gap from the newest to now. RTO is total_seconds of the
 * newest successful restore_probe or drill run. Unknown values and unset objectives are null;
 * "met" is null without an objective and false when there is an objective but nothing measured.
 */
json_t *pv_report_rpo_rto(struct pv_state *st, const struct pv_config *cfg,
                          const struct pv_config_database *db, time_t now);

/* The whole report (a new reference): {"generated", "version", "databases": [...], "storage"}. Each
 * database has "headline" ("READY", "AT RISK", "NOT READY") and "reasons" [{"level", "code", "text"}]. */
json_t *pv_report_build(struct pv_state *st, const struct pv_config *cfg, time_t now);

/* The report as Markdown (malloc'ed). */
char *pv_report_markdown(const json_t *report);

/* "41s", "3h12m", "2d04h"; fractions below a minute as "4.2s". */
const char *pv_report_duration(double secs, char *buf, size_t size);
/* "2.1 MB" (decimal units). */
const char *pv_report_size(double bytes, char *buf, size_t size);

/* Control command `report`: the report JSON for every database. */
bool pv_ctl_report(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data,
                   struct pv_error *err);

#endif
