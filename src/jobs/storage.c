/* The `storage` job type: backup file-system usage, growth, forecast, and the catalog check. */
#include "jobs/storage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "jobs/catalog.h"
#include "state/state.h"
#include "storage/storage.h"
#include "util/log.h"

/* Growth is measured against this job's own earlier runs, up to a week back. */
#define GROWTH_WINDOW (7 * 86400)

/* Bytes per day the used space grew, from the oldest run of this job in the window. */
static bool
growth_per_day(struct pv_job_run *run, uint64_t used_now, double *out)
{
	struct pv_state_run *runs;
	size_t n;
	bool found = false;

	if (!pv_state_runs_list(run->state, run->job->name, 2000, &runs, &n, NULL))
		return false;
	for (size_t i = n; i-- > 0;) { /* oldest first */
		json_t *f;
		json_int_t used;
		double days;

		if (runs[i].result == NULL || strcmp(runs[i].result, "ok") != 0 || runs[i].figures == NULL ||
		    run->started - runs[i].started > GROWTH_WINDOW)
			continue;
		days = (double)(run->started - runs[i].started) / 86400.0;
		if (days < 1.0 / 24) /* under an hour: too short to say anything */
			break;
		f = json_loads(runs[i].figures, 0, NULL);
		used = json_integer_value(json_object_get(f, "used_bytes"));
		json_decref(f);
		if (used <= 0)
			continue;
		*out = ((double)used_now - (double)used) / days;
		found = true;
		break;
	}
	pv_state_runs_free(runs, n);
	return found;
}

static bool
start(struct pv_job_run *run)
{
	const char *path = run->cfg->storage.path;
	struct pv_catalog_report rep;
	struct pv_error err;
	uint64_t total, avail;
	double ratio, growth;
	struct stat st;

	if (stat(path, &st) != 0 && !pv_store_mkdirs(path, &err)) {
		snprintf(run->cause, sizeof(run->cause), "%s", err.msg);
		return false;
	}
	if (!pv_store_fs_usage(path, &total, &avail, &err)) {
		snprintf(run->cause, sizeof(run->cause), "%s", err.msg);
		return false;
	}
	ratio = total > 0 ? (double)(total - avail) / (double)total : 0;
	json_object_set_new(run->figures, "total_bytes", json_integer((json_int_t)total));
	json_object_set_new(run->figures, "available_bytes", json_integer((json_int_t)avail));
	json_object_set_new(run->figures, "used_bytes", json_integer((json_int_t)(total - avail)));
	json_object_set_new(run->figures, "used_ratio", json_real(ratio));
	if (growth_per_day(run, total - avail, &growth)) {
		json_object_set_new(run->figures, "growth_bytes_per_day", json_real(growth));
		if (growth > 0)
			json_object_set_new(run->figures, "days_until_full",
			                    json_real((double)avail / growth));
	}
	/* Temporaries belong to backups that may be running: only start-up removes them. */
	if (!pv_catalog_sync(run->state, path, false, &rep, &err)) {
		pv_job_run_finish(run, PV_RUN_FAILED, "checking the catalog: %s", err.msg);
		return true;
	}
	json_object_set_new(run->figures, "backups_missing", json_integer((json_int_t)rep.missing));
	json_object_set_new(run->figures, "backups_changed", json_integer((json_int_t)rep.changed));
	json_object_set_new(run->figures, "backups_unreadable", json_integer((json_int_t)rep.unreadable));
	if (rep.missing + rep.changed + rep.unreadable > 0)
		pv_job_run_finish(run, PV_RUN_FAILED,
		                  "%zu catalogued backup(s) missing, %zu changed, %zu unreadable",
		                  rep.missing, rep.changed, rep.unreadable);
	else
		pv_job_run_finish(run, PV_RUN_OK, NULL);
	return true;
}

const struct pv_job_ops pv_job_storage_ops = {
        .type = PV_JOB_STORAGE,
        .start = start,
};
