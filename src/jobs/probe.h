/* The `restore_probe` job type: restore the newest verified backup into a scratch database and prove it. */
#ifndef PV_JOBS_PROBE_H
#define PV_JOBS_PROBE_H

#include "jobs/job.h"

struct event_base;
struct evdns_base;

extern const struct pv_job_ops pv_job_probe_ops;

/*
 * Drop the scratch databases a crashed daemon left behind: for every configured restore target,
 * list the databases named pgvigil_probe_* whose embedded start time is before this call, and drop
 * each (logged). Asynchronous and self-contained: it copies what it needs from cfg, never
 * blocks, bounds every step, and only logs failures. Call once at daemon start, after the loop
 * exists and before the first job can start.
 */
void pv_probe_cleanup_start(struct event_base *base, struct evdns_base *dns, const struct pv_config *cfg);

#endif
