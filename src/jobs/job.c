/* Job runs: the table of job types and the completion path shared by all of them. */
#include "jobs/job.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "jobs/backup.h"
#include "jobs/health.h"
#include "jobs/integrity.h"
#include "jobs/probe.h"
#include "jobs/storage.h"
#include "jobs/verify.h"

static const struct pv_job_ops *const job_types[PV_JOB_TYPE_COUNT] = {
        [PV_JOB_BACKUP] = &pv_job_backup_ops,       [PV_JOB_HEALTH] = &pv_job_health_ops,
        [PV_JOB_INTEGRITY] = &pv_job_integrity_ops, [PV_JOB_VERIFY] = &pv_job_verify_ops,
        [PV_JOB_STORAGE] = &pv_job_storage_ops,     [PV_JOB_RESTORE_PROBE] = &pv_job_probe_ops,
        [PV_JOB_DRILL] = &pv_job_drill_ops,
};

const struct pv_job_ops *
pv_jobs_ops(enum pv_job_type type)
{
	if ((int)type < 0 || type >= PV_JOB_TYPE_COUNT)
		return NULL;
	return job_types[type];
}

const char *
pv_run_result_name(enum pv_run_result r)
{
	switch (r) {
	case PV_RUN_OK: return "ok";
	case PV_RUN_FAILED: return "failed";
	case PV_RUN_TIMEOUT: return "timeout";
	case PV_RUN_CANCELLED: return "cancelled";
	case PV_RUN_INTERRUPTED: return "interrupted";
	}
	return "unknown";
}

void
pv_job_run_finish(struct pv_job_run *run, enum pv_run_result result, const char *fmt, ...)
{
	va_list ap;

	run->result = result;
	run->cause[0] = '\0';
	if (fmt != NULL) {
		va_start(ap, fmt);
		vsnprintf(run->cause, sizeof(run->cause), fmt, ap);
		va_end(ap);
	}
	run->on_done(run);
}

double
pv_now_mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
