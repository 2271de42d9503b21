/* The `health` job type: connect latency and server version of a configured database. */
#ifndef PV_JOBS_HEALTH_H
#define PV_JOBS_HEALTH_H

#include "jobs/job.h"

extern const struct pv_job_ops pv_job_health_ops;

/*
 * The configuration in force, at start and after every reload: closes the sessions kept for
 * keep_connection (the next runs connect anew). NULL at shutdown, before the event base goes.
 */
void pv_job_health_configure(const struct pv_config *cfg);

#endif
