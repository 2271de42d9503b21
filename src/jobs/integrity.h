/* The `integrity` job type: orphaned rows of every foreign key of a configured database. */
#ifndef PV_JOBS_INTEGRITY_H
#define PV_JOBS_INTEGRITY_H

#include "jobs/job.h"

extern const struct pv_job_ops pv_job_integrity_ops;

#endif
