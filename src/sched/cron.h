/* Cron expressions and time zones: parsing and next-run computation (pure, clock injected). */
#ifndef PV_SCHED_CRON_H
#define PV_SCHED_CRON_H

#include <stdbool.h>
#include <time.h>

#include "util/error.h"

struct pv_cron; /* opaque, immutable once parsed */
struct pv_tz;   /* opaque, immutable once loaded; a zone's full rules */

/*
 * Parse 5 fields "min hour dom month dow" (lists, ranges, steps, JAN-DEC, SUN-SAT, 7 = Sunday,
 * `L` in day-of-month = last day of month) or one of @hourly @daily @midnight @weekly @monthly
 * @yearly @annually. Errors (PV_ERR_SCHEDULE) name the field and the offending text.
 * Day-of-month and day-of-week follow Vixie cron: when both are restricted, either matches.
 */
bool pv_cron_parse(const char *expr, struct pv_cron **out, struct pv_error *err);
void pv_cron_free(struct pv_cron *cron);
/* The text it was parsed from. */
const char *pv_cron_text(const struct pv_cron *cron);

/* Load an IANA zone ("Europe/Paris", "UTC"); PV_ERR_TIMEZONE if unknown. */
bool pv_tz_load(const char *name, struct pv_tz **out, struct pv_error *err);
void pv_tz_free(struct pv_tz *tz);
const char *pv_tz_name(const struct pv_tz *tz);
/* UTC offset in seconds east of UTC in force at instant t, and its abbreviation (may be NULL). */
int pv_tz_offset(const struct pv_tz *tz, time_t t, const char **abbrev);

/*
 * The first scheduled instant strictly after `after`, evaluated in zone `tz`.
 * DST gap: a wall time that does not exist runs once, at the first instant after the gap.
 * DST overlap: a wall time that occurs twice runs once, at its first occurrence.
 * Returns false when no time matches within 8 years (e.g. "0 0 30 2 *").
 */
bool pv_cron_next(const struct pv_cron *cron, const struct pv_tz *tz, time_t after, time_t *next);

/*
 * The latest scheduled instant t with since < t <= now, if any (used for catch-up after
 * downtime: a calendar run missed while the daemon was down runs once at start).
 */
bool pv_cron_prev_in(const struct pv_cron *cron, const struct pv_tz *tz, time_t since, time_t now,
                     time_t *missed);

#endif
