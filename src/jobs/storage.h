/* The `storage` job type: backup file-system usage, growth, forecast, and the catalog check. */
#ifndef PV_JOBS_STORAGE_H
#define PV_JOBS_STORAGE_H

#include "jobs/job.h"

extern const struct pv_job_ops pv_job_storage_ops;

#endif
