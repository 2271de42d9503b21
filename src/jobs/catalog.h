/* The backup catalog against the files in storage: temporaries, rebuilds, missing or changed backups. */
#ifndef PV_JOBS_CATALOG_H
#define PV_JOBS_CATALOG_H

#include <stdbool.h>

#include "state/state.h"
#include "util/error.h"

struct pv_catalog_report {
	size_t temporaries_removed; /* .tmp-* left by a crash */
	size_t rebuilt;             /* manifests found on disk but not in the catalog: added back */
	size_t missing;             /* catalogued, directory gone */
	size_t changed;             /* catalogued, manifest no longer matches */
	size_t unreadable;          /* directories without a valid manifest */
};

/*
 * Bring the catalog in line with storage. Never deletes a catalogued backup: a missing or
 * changed one is marked ('missing', 'changed') and logged as an error so it is alerted on.
 * Blocking file-system work: run at start-up before the loop, or from a job's worker.
 */
bool pv_catalog_sync(struct pv_state *st, const char *storage_path, bool remove_temporaries,
                     struct pv_catalog_report *report, struct pv_error *err);

#endif
