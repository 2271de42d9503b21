/* Private to src/sched: civil-date arithmetic and local-to-UTC resolution shared by cron.c and tz.c. */
#ifndef PV_SCHED_TZINT_H
#define PV_SCHED_TZINT_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "sched/cron.h"

/* Floor division, so dates before 1970 and negative offsets behave. */
static inline int64_t
pv_floordiv(int64_t a, int64_t b)
{
	int64_t q = a / b;

	if ((a % b != 0) && ((a < 0) != (b < 0)))
		q--;
	return q;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm). */
static inline int64_t
pv_days_from_civil(int64_t y, int m, int d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = pv_floordiv(y, 400);
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static inline void
pv_civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
	int64_t era, doe, yoe, doy, mp;

	z += 719468;
	era = pv_floordiv(z, 146097);
	doe = z - era * 146097;
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	*d = (int)(doy - (153 * mp + 2) / 5 + 1);
	*m = (int)(mp < 10 ? mp + 3 : mp - 9);
	*y = yoe + era * 400 + (*m <= 2);
}

/* 0 = Sunday. */
static inline int
pv_weekday_from_days(int64_t z)
{
	return (int)(((z % 7) + 11) % 7);
}

static inline bool
pv_is_leap(int64_t y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static inline int
pv_days_in_month(int64_t y, int m)
{
	static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

	return m == 2 && pv_is_leap(y) ? 29 : days[m - 1];
}

/*
 * Map a local wall time (seconds since 1970-01-01 00:00 as if the zone were UTC) to an instant:
 * the first occurrence when it occurs twice, the transition instant when it falls in a gap.
 */
time_t pv_tz_resolve(const struct pv_tz *tz, int64_t local);

/* Smallest and largest UTC offsets in force at any instant of [lo, hi]. */
void pv_tz_offset_range(const struct pv_tz *tz, time_t lo, time_t hi, int *min, int *max);

#endif
