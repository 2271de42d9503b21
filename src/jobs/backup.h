/* The `backup` job type: a consistent pg_dump streamed through zstd, SHA-256 and AES-256-GCM. */
#ifndef PV_JOBS_BACKUP_H
#define PV_JOBS_BACKUP_H

#include "jobs/job.h"

extern const struct pv_job_ops pv_job_backup_ops;

#endif
