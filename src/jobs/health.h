/* The `health` job type: connect latency and server version of a configured database. */
#ifndef PV_JOBS_HEALTH_H
#define PV_JOBS_HEALTH_H

#include "jobs/job.h"

extern const struct pv_job_ops pv_job_health_ops;

#endif
