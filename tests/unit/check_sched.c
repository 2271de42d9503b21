/* Unit tests for src/sched: cron parsing, time zones, next/previous runs, and the planner. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sched/cron.h"
#include "sched/sched.h"
#include "util/error.h"

/* --- helpers --------------------------------------------------------------------------------------- */

static time_t
T(const char *rfc3339)
{
	struct tm tm = {0};
	const char *end = strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ", &tm);

	ck_assert_msg(end != NULL && *end == '\0', "bad time literal %s", rfc3339);
	return timegm(&tm);
}

static const char *
iso(time_t t, char *buf, size_t len)
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
	return buf;
}

static struct pv_cron *
cron(const char *expr)
{
	struct pv_cron *c;
	struct pv_error err;

	ck_assert_msg(pv_cron_parse(expr, &c, &err), "parse %s: %s", expr, err.msg);
	return c;
}

static struct pv_tz *
zone(const char *name)
{
	struct pv_tz *tz;
	struct pv_error err;

	ck_assert_msg(pv_tz_load(name, &tz, &err), "load %s: %s", name, err.msg);
	return tz;
}

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* --- pv_cron_next table ------------------------------------------------------------------------------
 * Expected values were worked out by hand for the DST cases (see the comments) and all of them were
 * checked against an independent minute-by-minute brute force over Python's zoneinfo.
 * Paris: 2026-03-29 01:00Z 02:00 CET -> 03:00 CEST; 2026-10-25 01:00Z 03:00 CEST -> 02:00 CET.
 * New York: 2026-03-08 07:00Z 02:00 EST -> 03:00 EDT; 2026-11-01 06:00Z 02:00 EDT -> 01:00 EST.
 * Lord Howe: 2026-10-03 15:30Z 02:00 +1030 -> 02:30 +11; 2026-04-04 15:00Z 02:00 +11 -> 01:30 +1030.
 * 2040 dates lie after the last transition in the TZif files: they exercise the POSIX footer rule.
 */
static const struct next_case {
	const char *expr, *zone, *from, *expect; /* expect: space-separated UTC times, or "none" */
} next_cases[] = {
        {"0 2 * * *", "Europe/Paris", "2026-03-28T12:00:00Z", "2026-03-29T01:00:00Z 2026-03-30T00:00:00Z"},
        {"30 2 * * 0", "Europe/Paris", "2026-03-22T12:00:00Z", "2026-03-29T01:00:00Z 2026-04-05T00:30:00Z"},
        {"*/20 2 * * *", "Europe/Paris", "2026-03-28T12:00:00Z", "2026-03-29T01:00:00Z 2026-03-30T00:00:00Z"},
        {"0 2 * * *", "Europe/Paris", "2026-10-24T12:00:00Z", "2026-10-25T00:00:00Z 2026-10-26T01:00:00Z"},
        {"0 2 * * *", "Europe/Paris", "2026-10-25T00:00:00Z", "2026-10-26T01:00:00Z"},
        {"30 2 * * 0", "Europe/Paris", "2026-10-18T12:00:00Z", "2026-10-25T00:30:00Z 2026-11-01T01:30:00Z"},
        {"30 2 * * 0", "Europe/Paris", "2026-10-25T00:45:00Z", "2026-11-01T01:30:00Z"},
        {"*/30 * * * *", "Europe/Paris", "2026-10-24T23:50:00Z",
         "2026-10-25T00:00:00Z 2026-10-25T00:30:00Z 2026-10-25T02:00:00Z 2026-10-25T02:30:00Z "
         "2026-10-25T03:00:00Z 2026-10-25T03:30:00Z"},
        {"0 2 * * *", "America/New_York", "2026-03-07T12:00:00Z",
         "2026-03-08T07:00:00Z 2026-03-09T06:00:00Z"},
        {"30 2 * * 0", "America/New_York", "2026-03-01T12:00:00Z",
         "2026-03-08T07:00:00Z 2026-03-15T06:30:00Z"},
        {"*/30 1-3 * * *", "America/New_York", "2026-03-08T05:00:00Z",
         "2026-03-08T06:00:00Z 2026-03-08T06:30:00Z 2026-03-08T07:00:00Z 2026-03-08T07:30:00Z "
         "2026-03-09T05:00:00Z"},
        {"0 2 * * *", "America/New_York", "2026-10-31T12:00:00Z",
         "2026-11-01T07:00:00Z 2026-11-02T07:00:00Z"},
        {"30 2 * * 0", "America/New_York", "2026-10-31T12:00:00Z",
         "2026-11-01T07:30:00Z 2026-11-08T07:30:00Z"},
        {"30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z",
         "2026-11-01T05:30:00Z 2026-11-02T06:30:00Z"},
        {"30 1 * * *", "America/New_York", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"},
        {"0 2 * * *", "Australia/Lord_Howe", "2026-10-03T00:00:00Z",
         "2026-10-03T15:30:00Z 2026-10-04T15:00:00Z"},
        {"15 2 * * *", "Australia/Lord_Howe", "2026-10-03T00:00:00Z",
         "2026-10-03T15:30:00Z 2026-10-04T15:15:00Z"},
        {"45 1 * * *", "Australia/Lord_Howe", "2026-04-04T00:00:00Z",
         "2026-04-04T14:45:00Z 2026-04-05T15:15:00Z"},
        {"0 2 * * *", "Australia/Lord_Howe", "2026-04-04T00:00:00Z", "2026-04-04T15:30:00Z"},
        {"30 2 * * 0", "Australia/Lord_Howe", "2026-09-30T00:00:00Z",
         "2026-10-03T15:30:00Z 2026-10-10T15:30:00Z"},
        {"0 0 29 2 *", "UTC", "2026-01-01T00:00:00Z", "2028-02-29T00:00:00Z 2032-02-29T00:00:00Z"},
        {"0 0 29 2 *", "UTC", "2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"},
        {"0 12 29 * *", "UTC", "2027-01-30T00:00:00Z", "2027-03-29T12:00:00Z 2027-04-29T12:00:00Z"},
        {"0 12 29 * *", "UTC", "2028-01-30T00:00:00Z", "2028-02-29T12:00:00Z 2028-03-29T12:00:00Z"},
        {"0 0 L * *", "UTC", "2026-01-31T00:00:00Z",
         "2026-02-28T00:00:00Z 2026-03-31T00:00:00Z 2026-04-30T00:00:00Z 2026-05-31T00:00:00Z"},
        {"0 0 L 2 *", "UTC", "2027-01-01T00:00:00Z", "2027-02-28T00:00:00Z 2028-02-29T00:00:00Z"},
        {"30 23 L * *", "Europe/Paris", "2026-04-01T00:00:00Z",
         "2026-04-30T21:30:00Z 2026-05-31T21:30:00Z 2026-06-30T21:30:00Z"},
        {"0 6 1,L * *", "UTC", "2026-04-15T00:00:00Z",
         "2026-04-30T06:00:00Z 2026-05-01T06:00:00Z 2026-05-31T06:00:00Z"},
        {"0 0 31 * *", "UTC", "2026-03-31T00:00:00Z",
         "2026-05-31T00:00:00Z 2026-07-31T00:00:00Z 2026-08-31T00:00:00Z"},
        {"0 0 31 4,6,9,11 *", "UTC", "2026-01-01T00:00:00Z", "none"},
        {"0 0 30 2 *", "UTC", "2026-01-01T00:00:00Z", "none"},
        {"*/15 * * * *", "UTC", "2026-05-01T10:07:00Z",
         "2026-05-01T10:15:00Z 2026-05-01T10:30:00Z 2026-05-01T10:45:00Z"},
        {"1-30/5 * * * *", "UTC", "2026-05-01T10:27:00Z",
         "2026-05-01T11:01:00Z 2026-05-01T11:06:00Z 2026-05-01T11:11:00Z"},
        {"0 */6 * * *", "UTC", "2026-05-01T10:00:00Z",
         "2026-05-01T12:00:00Z 2026-05-01T18:00:00Z 2026-05-02T00:00:00Z"},
        {"5,10,50 9-10 * * *", "UTC", "2026-05-01T09:20:00Z",
         "2026-05-01T09:50:00Z 2026-05-01T10:05:00Z 2026-05-01T10:10:00Z 2026-05-01T10:50:00Z"},
        {"0 8-18/4 * * *", "UTC", "2026-05-01T09:00:00Z",
         "2026-05-01T12:00:00Z 2026-05-01T16:00:00Z 2026-05-02T08:00:00Z 2026-05-02T12:00:00Z"},
        {"10/20 * * * *", "UTC", "2026-05-01T10:00:00Z",
         "2026-05-01T10:10:00Z 2026-05-01T10:30:00Z 2026-05-01T10:50:00Z"},
        {"0 0 1-7/3 * *", "UTC", "2026-05-01T00:00:00Z",
         "2026-05-04T00:00:00Z 2026-05-07T00:00:00Z 2026-06-01T00:00:00Z"},
        {"* * * * *", "UTC", "2026-05-01T10:00:30Z", "2026-05-01T10:01:00Z 2026-05-01T10:02:00Z"},
        {"* * * * *", "Europe/Paris", "2026-03-29T00:59:00Z", "2026-03-29T01:00:00Z 2026-03-29T01:01:00Z"},
        {"0 9 * JAN,jul *", "UTC", "2026-02-01T00:00:00Z", "2026-07-01T09:00:00Z 2026-07-02T09:00:00Z"},
        {"0 9 1 mar-May *", "UTC", "2026-04-02T00:00:00Z", "2026-05-01T09:00:00Z 2027-03-01T09:00:00Z"},
        {"0 9 * * MON-FRI", "UTC", "2026-05-01T10:00:00Z",
         "2026-05-04T09:00:00Z 2026-05-05T09:00:00Z 2026-05-06T09:00:00Z"},
        {"0 9 * * sat,Sun", "UTC", "2026-05-01T10:00:00Z",
         "2026-05-02T09:00:00Z 2026-05-03T09:00:00Z 2026-05-09T09:00:00Z"},
        {"0 9 * * Wed", "UTC", "2026-05-01T10:00:00Z", "2026-05-06T09:00:00Z 2026-05-13T09:00:00Z"},
        {"0 0 * * 1-5/2", "UTC", "2026-05-01T10:00:00Z",
         "2026-05-04T00:00:00Z 2026-05-06T00:00:00Z 2026-05-08T00:00:00Z"},
        {"0 0 * * 7", "UTC", "2026-05-01T00:00:00Z", "2026-05-03T00:00:00Z 2026-05-10T00:00:00Z"},
        {"0 0 * * 5-7", "UTC", "2026-05-01T00:00:00Z",
         "2026-05-02T00:00:00Z 2026-05-03T00:00:00Z 2026-05-08T00:00:00Z 2026-05-09T00:00:00Z"},
        {"0 0 13 * 5", "UTC", "2026-02-01T00:00:00Z",
         "2026-02-06T00:00:00Z 2026-02-13T00:00:00Z 2026-02-20T00:00:00Z 2026-02-27T00:00:00Z"},
        {"0 0 1 * MON", "UTC", "2026-05-25T00:00:00Z",
         "2026-06-01T00:00:00Z 2026-06-08T00:00:00Z 2026-06-15T00:00:00Z"},
        {"0 0 */10 * 1", "UTC", "2026-05-01T00:00:00Z",
         "2026-05-11T00:00:00Z 2026-06-01T00:00:00Z 2026-08-31T00:00:00Z"},
        {"0 0 * * 0", "UTC", "2026-05-01T00:00:00Z", "2026-05-03T00:00:00Z"},
        {"@hourly", "UTC", "2026-05-01T10:00:00Z", "2026-05-01T11:00:00Z 2026-05-01T12:00:00Z"},
        {"@daily", "Europe/Paris", "2026-05-01T10:00:00Z", "2026-05-01T22:00:00Z 2026-05-02T22:00:00Z"},
        {"@midnight", "America/New_York", "2026-05-01T10:00:00Z", "2026-05-02T04:00:00Z"},
        {"@weekly", "UTC", "2026-05-01T10:00:00Z", "2026-05-03T00:00:00Z 2026-05-10T00:00:00Z"},
        {"@monthly", "UTC", "2026-05-01T00:00:00Z", "2026-06-01T00:00:00Z 2026-07-01T00:00:00Z"},
        {"@yearly", "UTC", "2026-05-01T00:00:00Z", "2027-01-01T00:00:00Z"},
        {"@ANNUALLY", "Australia/Lord_Howe", "2026-05-01T00:00:00Z", "2026-12-31T13:00:00Z"},
        {"0 2 * * *", "Asia/Kolkata", "2026-05-01T00:00:00Z", "2026-05-01T20:30:00Z 2026-05-02T20:30:00Z"},
        {"0 0 * * *", "Asia/Tokyo", "2026-12-31T14:59:00Z", "2026-12-31T15:00:00Z 2027-01-01T15:00:00Z"},
        {"0 3 1 * *", "Europe/Paris", "2026-01-15T00:00:00Z",
         "2026-02-01T02:00:00Z 2026-03-01T02:00:00Z 2026-04-01T01:00:00Z"},
        {"0 0 1 1 *", "Pacific/Kiritimati", "2026-06-01T00:00:00Z", "2026-12-31T10:00:00Z"},
        {"0 2 * * *", "Europe/Paris", "2040-03-24T12:00:00Z",
         "2040-03-25T01:00:00Z 2040-03-26T00:00:00Z 2040-03-27T00:00:00Z"},
        {"0 2 * * *", "Europe/Paris", "2040-10-27T12:00:00Z", "2040-10-28T00:00:00Z 2040-10-29T01:00:00Z"},
        {"30 2 * * 0", "America/New_York", "2040-03-04T00:00:00Z",
         "2040-03-04T07:30:00Z 2040-03-11T07:00:00Z"},
        {"30 1 * * *", "America/New_York", "2040-11-03T12:00:00Z",
         "2040-11-04T05:30:00Z 2040-11-05T06:30:00Z"},
        {"0 12 1 7 *", "America/New_York", "2045-01-01T00:00:00Z", "2045-07-01T16:00:00Z"},
        {"0 2 * * *", "Australia/Lord_Howe", "2040-10-06T00:00:00Z",
         "2040-10-06T15:30:00Z 2040-10-07T15:00:00Z"},
        {"45 1 * * *", "Australia/Lord_Howe", "2040-03-31T00:00:00Z",
         "2040-03-31T14:45:00Z 2040-04-01T15:15:00Z"},
        {"59 23 31 12 *", "UTC", "2026-12-31T23:59:00Z", "2027-12-31T23:59:00Z"},
        {"0 0 1 1 *", "Europe/Paris", "2026-12-31T22:00:00Z", "2026-12-31T23:00:00Z"},
};

START_TEST(test_sched__cron_next_table)
{
	const struct next_case *nc = &next_cases[_i];
	struct pv_cron *c = cron(nc->expr);
	struct pv_tz *tz = zone(nc->zone);
	char got[512] = "", buf[32];
	time_t t = T(nc->from), next;
	int want = 1;

	for (const char *p = nc->expect; *p != '\0'; p++)
		want += *p == ' ';
	for (int i = 0; i < want; i++) {
		if (i > 0)
			strcat(got, " ");
		if (!pv_cron_next(c, tz, t, &next)) {
			strcat(got, "none");
			break;
		}
		strcat(got, iso(next, buf, sizeof(buf)));
		t = next;
	}
	ck_assert_msg(strcmp(got, nc->expect) == 0, "\"%s\" %s from %s: got %s, want %s", nc->expr, nc->zone,
	              nc->from, got, nc->expect);
	pv_cron_free(c);
	pv_tz_free(tz);
}
END_TEST

/* --- pv_cron_prev_in table --------------------------------------------------------------------------- */

static const struct prev_case {
	const char *expr, *zone, *since, *now, *expect;
} prev_cases[] = {
        {"0 2 * * *", "UTC", "2026-05-01T02:00:00Z", "2026-05-04T10:00:00Z", "2026-05-04T02:00:00Z"},
        {"0 2 * * *", "UTC", "2026-05-04T02:00:00Z", "2026-05-04T10:00:00Z", "none"},
        {"0 2 * * *", "UTC", "2026-05-03T10:00:00Z", "2026-05-04T02:00:00Z", "2026-05-04T02:00:00Z"},
        {"0 2 * * *", "UTC", "2026-05-04T02:00:00Z", "2026-05-04T02:00:00Z", "none"},
        {"0 2 * * *", "UTC", "2026-05-04T03:00:00Z", "2026-05-04T02:00:00Z", "none"},
        {"0 2 * * *", "Europe/Paris", "2026-03-28T12:00:00Z", "2026-03-29T12:00:00Z", "2026-03-29T01:00:00Z"},
        {"0 2 * * *", "Europe/Paris", "2026-10-24T12:00:00Z", "2026-10-25T12:00:00Z", "2026-10-25T00:00:00Z"},
        {"30 2 * * 0", "Europe/Paris", "2026-10-25T00:45:00Z", "2026-10-25T01:45:00Z", "none"},
        {"30 2 * * *", "America/New_York", "2026-03-08T06:59:00Z", "2026-03-08T07:00:00Z",
         "2026-03-08T07:00:00Z"},
        {"30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", "2026-11-01T12:00:00Z",
         "2026-11-01T05:30:00Z"},
        {"*/15 * * * *", "UTC", "2026-05-01T00:00:00Z", "2027-05-01T00:07:00Z", "2027-05-01T00:00:00Z"},
        {"0 0 29 2 *", "UTC", "2026-01-01T00:00:00Z", "2030-01-01T00:00:00Z", "2028-02-29T00:00:00Z"},
        {"0 0 30 2 *", "UTC", "2026-01-01T00:00:00Z", "2030-01-01T00:00:00Z", "none"},
        {"0 3 1 * *", "Europe/Paris", "2026-01-15T00:00:00Z", "2026-04-20T00:00:00Z", "2026-04-01T01:00:00Z"},
        {"0 2 * * *", "Australia/Lord_Howe", "2026-10-02T00:00:00Z", "2026-10-03T16:00:00Z",
         "2026-10-03T15:30:00Z"},
        {"45 1 * * *", "Australia/Lord_Howe", "2040-03-30T00:00:00Z", "2040-03-31T15:00:00Z",
         "2040-03-31T14:45:00Z"},
};

START_TEST(test_sched__cron_prev_in_table)
{
	const struct prev_case *pc = &prev_cases[_i];
	struct pv_cron *c = cron(pc->expr);
	struct pv_tz *tz = zone(pc->zone);
	time_t missed;
	char buf[32];

	if (strcmp(pc->expect, "none") == 0) {
		ck_assert_msg(!pv_cron_prev_in(c, tz, T(pc->since), T(pc->now), &missed), "\"%s\": got %s",
		              pc->expr, iso(missed, buf, sizeof(buf)));
	} else {
		ck_assert_msg(pv_cron_prev_in(c, tz, T(pc->since), T(pc->now), &missed), "\"%s\": got none",
		              pc->expr);
		ck_assert_str_eq(iso(missed, buf, sizeof(buf)), pc->expect);
	}
	pv_cron_free(c);
	pv_tz_free(tz);
}
END_TEST

/* --- parse errors ------------------------------------------------------------------------------------ */

static const struct error_case {
	const char *expr, *msg;
} error_cases[] = {
        {"60 * * * *", "invalid minute field \"60\": value out of range 0-59"},
        {"* 25 * * *", "invalid hour field \"25\": value out of range 0-23"},
        {"* * 0 * *", "invalid day-of-month field \"0\": value out of range 1-31"},
        {"* * 1,32 * *", "invalid day-of-month field \"1,32\": value out of range 1-31"},
        {"* * * 13 *", "invalid month field \"13\": value out of range 1-12"},
        {"* * * 0 *", "invalid month field \"0\": value out of range 1-12"},
        {"* * * * 8", "invalid day-of-week field \"8\": value out of range 0-7"},
        {"* * * FOO *", "invalid month field \"FOO\": unknown name"},
        {"* * * * MONDAY", "invalid day-of-week field \"MONDAY\": expected a number or name"},
        {"* * * * XYZ", "invalid day-of-week field \"XYZ\": unknown name"},
        {"*/0 * * * *", "invalid minute field \"*/0\": step out of range 1-59"},
        {"* */24 * * *", "invalid hour field \"*/24\": step out of range 1-23"},
        {"*/ * * * *", "invalid minute field \"*/\": missing step"},
        {"*/a * * * *", "invalid minute field \"*/a\": step is not a number"},
        {"5-1 * * * *", "invalid minute field \"5-1\": range start is greater than its end"},
        {"1- * * * *", "invalid minute field \"1-\": missing value"},
        {"1,,2 * * * *", "invalid minute field \"1,,2\": empty list element"},
        {"1, * * * *", "invalid minute field \"1,\": empty list element"},
        {"x * * * *", "invalid minute field \"x\": expected a number"},
        {"5x * * * *", "invalid minute field \"5x\": expected a number"},
        {"* L * * *", "invalid hour field \"L\": expected a number"},
        {"* * L-5 * *", "invalid day-of-month field \"L-5\": expected a number"},
        {"* * * * L", "invalid day-of-week field \"L\": expected a number or name"},
        {"* * * JAN-FOO *", "invalid month field \"JAN-FOO\": unknown name"},
        {"* * * *",
         "invalid schedule \"* * * *\": expected 5 fields (minute hour day-of-month month day-of-week), "
         "got 4"},
        {"* * * * * *", "invalid schedule \"* * * * * *\": expected 5 fields (minute hour day-of-month month "
                        "day-of-week), got 6"},
        {"", "invalid schedule \"\": expected 5 fields (minute hour day-of-month month day-of-week), got 0"},
        {"@every 5m", "invalid schedule \"@every 5m\": unknown macro (expected @hourly, @daily, @midnight, "
                      "@weekly, @monthly, @yearly or @annually)"},
        {"@daily 3", "invalid schedule \"@daily 3\": unknown macro (expected @hourly, @daily, @midnight, "
                     "@weekly, @monthly, @yearly or @annually)"},
};

START_TEST(test_sched__cron_parse_errors)
{
	const struct error_case *ec = &error_cases[_i];
	struct pv_cron *c = (struct pv_cron *)1;
	struct pv_error err = {0};

	ck_assert_msg(!pv_cron_parse(ec->expr, &c, &err), "\"%s\" parsed", ec->expr);
	ck_assert_ptr_null(c);
	ck_assert_int_eq(err.code, PV_ERR_SCHEDULE);
	ck_assert_str_eq(err.msg, ec->msg);
}
END_TEST

START_TEST(test_sched__cron_text_and_whitespace)
{
	struct pv_cron *c = cron("  0\t2  * *   * ");
	struct pv_tz *tz = zone("UTC");
	time_t next;

	ck_assert_str_eq(pv_cron_text(c), "  0\t2  * *   * ");
	ck_assert(pv_cron_next(c, tz, T("2026-05-01T00:00:00Z"), &next));
	ck_assert_int_eq(next, T("2026-05-01T02:00:00Z"));
	pv_cron_free(c);
	c = cron("@Weekly");
	ck_assert_str_eq(pv_cron_text(c), "@Weekly");
	pv_cron_free(c);
	pv_cron_free(NULL);
	pv_tz_free(tz);
}
END_TEST

/* Must iterate by calendar fields, not minute by minute (sanitizer builds are slow: generous bound). */
START_TEST(test_sched__cron_next_is_fast)
{
	struct pv_cron *leap = cron("0 0 29 2 *"), *never = cron("0 0 30 2 *"), *every = cron("* * * * *");
	struct pv_tz *tz = zone("Europe/Paris");
	time_t next, missed;
	double t0 = now_us();

	ck_assert(pv_cron_next(leap, tz, T("2028-03-01T00:00:00Z"), &next));
	ck_assert_int_eq(next, T("2032-02-28T23:00:00Z"));
	ck_assert(!pv_cron_next(never, tz, T("2026-01-01T00:00:00Z"), &next));
	ck_assert(pv_cron_prev_in(every, tz, T("2020-01-01T00:00:00Z"), T("2026-06-01T00:00:30Z"), &missed));
	ck_assert_int_eq(missed, T("2026-06-01T00:00:00Z"));
	ck_assert(!pv_cron_prev_in(never, tz, T("2020-01-01T00:00:00Z"), T("2027-06-01T00:00:00Z"), &missed));
	ck_assert_msg(now_us() - t0 < 200000, "took %.0f us", now_us() - t0);
	pv_cron_free(leap);
	pv_cron_free(never);
	pv_cron_free(every);
	pv_tz_free(tz);
}
END_TEST

/* --- time zones --------------------------------------------------------------------------------------- */

static const struct offset_case {
	const char *zone, *at;
	int offset;
	const char *abbrev;
} offset_cases[] = {
        {"UTC", "2026-07-01T00:00:00Z", 0, "UTC"},
        {"Europe/Paris", "2026-01-15T12:00:00Z", 3600, "CET"},
        {"Europe/Paris", "2026-07-01T12:00:00Z", 7200, "CEST"},
        {"Europe/Paris", "2026-03-29T00:59:59Z", 3600, "CET"},
        {"Europe/Paris", "2026-03-29T01:00:00Z", 7200, "CEST"},
        {"Europe/Paris", "2040-07-01T12:00:00Z", 7200, "CEST"},
        {"Europe/Paris", "2040-12-01T12:00:00Z", 3600, "CET"},
        {"America/New_York", "2026-11-01T05:59:59Z", -4 * 3600, "EDT"},
        {"America/New_York", "2026-11-01T06:00:00Z", -5 * 3600, "EST"},
        {"America/New_York", "2050-07-04T16:00:00Z", -4 * 3600, "EDT"},
        {"Australia/Lord_Howe", "2026-07-01T00:00:00Z", 37800, "+1030"},
        {"Australia/Lord_Howe", "2040-01-01T00:00:00Z", 39600, "+11"},
        {"Asia/Kolkata", "2026-07-01T00:00:00Z", 19800, "IST"},
        {"Europe/Paris", "1900-01-01T00:00:00Z", 561, "PMT"},
};

START_TEST(test_sched__tz_offsets)
{
	const struct offset_case *oc = &offset_cases[_i];
	struct pv_tz *tz = zone(oc->zone);
	const char *abbrev = NULL;

	ck_assert_int_eq(pv_tz_offset(tz, T(oc->at), &abbrev), oc->offset);
	ck_assert_ptr_nonnull(abbrev);
	ck_assert_str_eq(abbrev, oc->abbrev);
	ck_assert_str_eq(pv_tz_name(tz), oc->zone);
	pv_tz_free(tz);
}
END_TEST

static const struct tz_error_case {
	const char *name, *msg_part;
} tz_error_cases[] = {
        {"../etc/passwd", "invalid time zone name \"../etc/passwd\""},
        {"Europe/../../etc/passwd", "invalid time zone name \"Europe/../../etc/passwd\""},
        {"/etc/localtime", "invalid time zone name \"/etc/localtime\""},
        {"", "invalid time zone name \"\""},
        {"Europe/Par is", "invalid time zone name \"Europe/Par is\""},
        {"Mars/Olympus_Mons",
         "unknown time zone \"Mars/Olympus_Mons\": /usr/share/zoneinfo/Mars/Olympus_Mons: No "
         "such file or directory"},
        {"Europe", "unknown time zone \"Europe\": /usr/share/zoneinfo/Europe is not a valid TZif file"},
        {"zone.tab", "unknown time zone \"zone.tab\": /usr/share/zoneinfo/zone.tab is not a valid TZif file"},
};

START_TEST(test_sched__tz_errors)
{
	const struct tz_error_case *tc = &tz_error_cases[_i];
	struct pv_tz *tz = (struct pv_tz *)1;
	struct pv_error err = {0};

	unsetenv("TZDIR");
	ck_assert_msg(!pv_tz_load(tc->name, &tz, &err), "%s loaded", tc->name);
	ck_assert_ptr_null(tz);
	ck_assert_int_eq(err.code, PV_ERR_TIMEZONE);
	ck_assert_msg(strstr(err.msg, tc->msg_part) != NULL, "message \"%s\" lacks \"%s\"", err.msg,
	              tc->msg_part);
}
END_TEST

static void
copy_prefix(const char *from, const char *to, long max)
{
	FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
	char buf[4096];
	size_t n;
	long total = 0;

	ck_assert(in != NULL && out != NULL);
	while ((n = fread(buf, 1, sizeof(buf), in)) > 0 && (max < 0 || total < max)) {
		if (max >= 0 && total + (long)n > max)
			n = (size_t)(max - total);
		fwrite(buf, 1, n, out);
		total += (long)n;
	}
	fclose(in);
	fclose(out);
}

/* TZDIR points the loader at a test directory: a copied zone loads, a truncated or fake one does not. */
START_TEST(test_sched__tz_tzdir)
{
	char dir[] = "/tmp/pv_sched_tzXXXXXX", path[256];
	struct pv_tz *tz;
	struct pv_error err;
	FILE *f;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/Test", dir);
	mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/Test/Zone", dir);
	copy_prefix("/usr/share/zoneinfo/America/New_York", path, -1);
	snprintf(path, sizeof(path), "%s/Truncated", dir);
	copy_prefix("/usr/share/zoneinfo/America/New_York", path, 600);
	snprintf(path, sizeof(path), "%s/Fake", dir);
	f = fopen(path, "w");
	fputs("TZif but not really\n", f);
	fclose(f);
	setenv("TZDIR", dir, 1);

	ck_assert(pv_tz_load("Test/Zone", &tz, &err));
	ck_assert_int_eq(pv_tz_offset(tz, T("2026-07-01T00:00:00Z"), NULL), -4 * 3600);
	pv_tz_free(tz);
	ck_assert(!pv_tz_load("Truncated", &tz, &err));
	ck_assert_int_eq(err.code, PV_ERR_TIMEZONE);
	ck_assert(strstr(err.msg, "\"Truncated\"") != NULL);
	ck_assert(!pv_tz_load("Fake", &tz, &err));
	ck_assert(strstr(err.msg, "is not a valid TZif file") != NULL);
	ck_assert(!pv_tz_load("Europe/Paris", &tz, &err));
	/* UTC needs no file: minimal containers ship without tzdata. */
	ck_assert(pv_tz_load("UTC", &tz, &err));
	ck_assert_int_eq(pv_tz_offset(tz, T("2026-07-01T00:00:00Z"), NULL), 0);
	pv_tz_free(tz);
	pv_tz_free(NULL);

	unsetenv("TZDIR");
	snprintf(path, sizeof(path), "%s/Test/Zone", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/Test", dir);
	rmdir(path);
	snprintf(path, sizeof(path), "%s/Truncated", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/Fake", dir);
	unlink(path);
	rmdir(dir);
}
END_TEST

/* --- planner ------------------------------------------------------------------------------------------ */

/* An injected pair of clocks: wall time and a monotonic counter that advance together unless jumped. */
struct clock {
	time_t wall;
	double mono;
};

static void
advance(struct clock *c, double secs)
{
	c->wall += (time_t)secs;
	c->mono += secs;
}

struct fixture {
	struct pv_sched *s;
	struct pv_tz *utc;
	struct pv_cron *crons[8];
	int ncrons;
	struct pv_sched_tick tick;
	struct clock clk;
};

static const struct pv_cron *
fx_cron(struct fixture *fx, const char *expr)
{
	fx->crons[fx->ncrons] = cron(expr);
	return fx->crons[fx->ncrons++];
}

static void
fx_init(struct fixture *fx, int max_parallel, const char *start)
{
	memset(fx, 0, sizeof(*fx));
	fx->s = pv_sched_new(max_parallel);
	fx->utc = zone("UTC");
	fx->clk.wall = T(start);
	fx->clk.mono = 1000.0;
}

static void
fx_done(struct fixture *fx)
{
	pv_sched_tick_clear(&fx->tick);
	pv_sched_free(fx->s);
	for (int i = 0; i < fx->ncrons; i++)
		pv_cron_free(fx->crons[i]);
	pv_tz_free(fx->utc);
}

static void
fx_configure(struct fixture *fx, const struct pv_sched_job *jobs, size_t n)
{
	struct pv_error err;

	ck_assert_msg(pv_sched_configure(fx->s, jobs, n, fx->clk.wall, fx->clk.mono, &err), "%s", err.msg);
}

static void
fx_tick(struct fixture *fx)
{
	pv_sched_tick_clear(&fx->tick);
	pv_sched_tick(fx->s, fx->clk.wall, fx->clk.mono, &fx->tick);
}

static struct pv_sched_job
calendar_job(struct fixture *fx, const char *name, const char *expr, bool heavy)
{
	return (struct pv_sched_job){
	        .name = name, .cron = fx_cron(fx, expr), .tz = fx->utc, .catch_up = true, .heavy = heavy};
}

static struct pv_sched_job
interval_job(const char *name, double every, bool heavy)
{
	return (struct pv_sched_job){.name = name, .every = every, .heavy = heavy};
}

static void
assert_run(const struct pv_sched_tick *t, size_t i, const char *job, enum pv_sched_trigger trigger,
           const char *slot)
{
	char buf[32];

	ck_assert_uint_gt(t->nruns, i);
	ck_assert_str_eq(t->runs[i].job, job);
	ck_assert_str_eq(pv_sched_trigger_name(t->runs[i].trigger), pv_sched_trigger_name(trigger));
	if (slot != NULL)
		ck_assert_str_eq(iso(t->runs[i].slot, buf, sizeof(buf)), slot);
}

static void
assert_miss(const struct pv_sched_tick *t, size_t i, const char *job, enum pv_sched_miss_reason reason,
            const char *slot)
{
	char buf[32];

	ck_assert_uint_gt(t->nmissed, i);
	ck_assert_str_eq(t->missed[i].job, job);
	ck_assert_str_eq(pv_sched_miss_reason_name(t->missed[i].reason), pv_sched_miss_reason_name(reason));
	if (slot != NULL)
		ck_assert_str_eq(iso(t->missed[i].slot, buf, sizeof(buf)), slot);
}

START_TEST(test_sched__catch_up_once_after_downtime)
{
	struct fixture fx;
	struct pv_sched_job job;
	time_t slot;

	fx_init(&fx, 2, "2026-05-04T10:00:00Z");
	job = calendar_job(&fx, "daily-backup", "0 2 * * *", true);
	/* Down since before the 05-02, 05-03 and 05-04 slots: one catch-up, for the latest. */
	job.has_last_slot = true;
	job.last_slot = T("2026-05-01T02:00:00Z");
	fx_configure(&fx, &job, 1);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 1);
	ck_assert_uint_eq(fx.tick.nmissed, 0);
	assert_run(&fx.tick, 0, "daily-backup", PV_SCHED_CATCH_UP, "2026-05-04T02:00:00Z");
	ck_assert(pv_sched_last_slot(fx.s, "daily-backup", &slot));
	ck_assert_int_eq(slot, T("2026-05-04T02:00:00Z"));
	ck_assert(pv_sched_next_due(fx.s, "daily-backup", &slot));
	ck_assert_int_eq(slot, T("2026-05-05T02:00:00Z"));

	advance(&fx.clk, 30);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 0);
	pv_sched_run_finished(fx.s, "daily-backup");
	advance(&fx.clk, 16 * 3600 - 30);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 1);
	assert_run(&fx.tick, 0, "daily-backup", PV_SCHED_SCHEDULE, "2026-05-05T02:00:00Z");
	fx_done(&fx);
}
END_TEST

START_TEST(test_sched__no_catch_up_when_disabled)
{
	struct fixture fx;
	struct pv_sched_job job;

	fx_init(&fx, 2, "2026-05-04T10:00:00Z");
	job = calendar_job(&fx, "daily-backup", "0 2 * * *", true);
	job.catch_up = false;
	job.has_last_slot = true;
	job.last_slot = T("2026-05-01T02:00:00Z");
	fx_configure(&fx, &job, 1);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 0);
	/* Reported (for the job_missed alert) but not run. */
	ck_assert_uint_eq(fx.tick.nmissed, 1);
	assert_miss(&fx.tick, 0, "daily-backup", PV_SCHED_MISS_SKIPPED, "2026-05-04T02:00:00Z");
	advance(&fx.clk, 60);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns + fx.tick.nmissed, 0);
	fx_done(&fx);
}
END_TEST

START_TEST(test_sched__no_catch_up_without_persisted_slot)
{
	struct fixture fx;
	struct pv_sched_job jobs[2];
	time_t due;

	fx_init(&fx, 2, "2026-05-04T10:00:00Z");
	jobs[0] = calendar_job(&fx, "daily-backup", "0 2 * * *", true);
	/* Persisted, but nothing was missed since. */
	jobs[1] = calendar_job(&fx, "weekly-backup", "30 2 * * 0", true);
	jobs[1].has_last_slot = true;
	jobs[1].last_slot = T("2026-05-03T02:30:00Z");
	fx_configure(&fx, jobs, 2);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns + fx.tick.nmissed, 0);
	ck_assert(pv_sched_next_due(fx.s, "daily-backup", &due));
	ck_assert_int_eq(due, T("2026-05-05T02:00:00Z"));
	ck_assert(pv_sched_next_due(fx.s, "weekly-backup", &due));
	ck_assert_int_eq(due, T("2026-05-10T02:30:00Z"));
	ck_assert(!pv_sched_last_slot(fx.s, "daily-backup", &due));
	fx_done(&fx);
}
END_TEST

START_TEST(test_sched__never_overlaps_itself)
{
	struct fixture fx;
	struct pv_sched_job jobs[2];

	fx_init(&fx, 2, "2026-05-04T09:59:00Z");
	jobs[0] = calendar_job(&fx, "verify", "*/5 * * * *", true);
	jobs[1] = interval_job("health", 60, false);
	fx_configure(&fx, jobs, 2);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 1);
	assert_run(&fx.tick, 0, "health", PV_SCHED_SCHEDULE, NULL);
	ck_assert(!fx.tick.runs[0].calendar);

	advance(&fx.clk, 60); /* 10:00: verify due, health due and still running */
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 1);
	assert_run(&fx.tick, 0, "verify", PV_SCHED_SCHEDULE, "2026-05-04T10:00:00Z");
	ck_assert_uint_eq(fx.tick.nmissed, 1);
	assert_miss(&fx.tick, 0, "health", PV_SCHED_MISS_OVERLAP, NULL);

	advance(&fx.clk, 300); /* 10:05: verify still running: skipped, not queued */
	pv_sched_run_finished(fx.s, "health");
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 1);
	assert_run(&fx.tick, 0, "health", PV_SCHED_SCHEDULE, NULL);
	ck_assert_uint_eq(fx.tick.nmissed, 1);
	assert_miss(&fx.tick, 0, "verify", PV_SCHED_MISS_OVERLAP, "2026-05-04T10:05:00Z");

	pv_sched_run_finished(fx.s, "verify");
	pv_sched_run_finished(fx.s, "health");
	advance(&fx.clk, 30);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns + fx.tick.nmissed, 0);
	advance(&fx.clk, 270); /* 10:10 */
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 2);
	fx_done(&fx);
}
END_TEST

/* due_mono lets the daemon measure how late a run starts: a late tick, a heavy slot freed later. */
START_TEST(test_sched__due_time_of_runs)
{
	struct fixture fx;
	struct pv_sched_job jobs[3];
	double t0;

	fx_init(&fx, 1, "2026-05-04T09:59:00Z");
	t0 = fx.clk.mono;
	jobs[0] = interval_job("health", 10, false);
	jobs[1] = calendar_job(&fx, "backup-a", "0 10 * * *", true);
	jobs[2] = calendar_job(&fx, "backup-b", "0 10 * * *", true);
	fx_configure(&fx, jobs, 3);
	fx_tick(&fx);
	assert_run(&fx.tick, 0, "health", PV_SCHED_SCHEDULE, NULL);
	ck_assert(fx.tick.runs[0].due_mono == t0);
	pv_sched_run_finished(fx.s, "health");

	advance(&fx.clk, 13); /* a tick 3 s late */
	fx_tick(&fx);
	assert_run(&fx.tick, 0, "health", PV_SCHED_SCHEDULE, NULL);
	ck_assert(fx.tick.runs[0].due_mono == t0 + 10);
	pv_sched_run_finished(fx.s, "health");

	advance(&fx.clk, 47); /* 10:00:00: both backups due, one heavy slot */
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 2); /* health (due at t0 + 20, phase kept) and backup-a */
	assert_run(&fx.tick, 1, "backup-a", PV_SCHED_SCHEDULE, "2026-05-04T10:00:00Z");
	ck_assert(fx.tick.runs[1].due_mono == t0 + 60);
	pv_sched_run_finished(fx.s, "health");
	advance(&fx.clk, 5);
	pv_sched_run_finished(fx.s, "backup-a");
	fx_tick(&fx);
	assert_run(&fx.tick, 0, "backup-b", PV_SCHED_SCHEDULE, "2026-05-04T10:00:00Z");
	ck_assert(fx.tick.runs[0].due_mono == t0 + 60); /* waited 5 s for the slot: still due at 10:00 */
	fx_done(&fx);
}
END_TEST

START_TEST(test_sched__max_parallel_queue_then_start)
{
	struct fixture fx;
	struct pv_sched_job jobs[3];

	fx_init(&fx, 1, "2026-05-04T02:00:00Z");
	jobs[0] = calendar_job(&fx, "a", "0 2 * * *", true);
	jobs[1] = calendar_job(&fx, "b", "0 2 * * *", true);
	jobs[2] = calendar_job(&fx, "c", "0 2 * * *", true);
	jobs[1].grace = 600;
	jobs[2].grace = 600;
	advance(&fx.clk, -1);
	fx_configure(&fx, jobs, 3);
	advance(&fx.clk, 1);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 1);
	assert_run(&fx.tick, 0, "a", PV_SCHED_SCHEDULE, "2026-05-04T02:00:00Z");
	ck_assert_uint_eq(fx.tick.nmissed, 0);
	ck_assert_uint_eq(pv_sched_running_heavy(fx.s), 1);
	/* Waiting with capacity full: wake up for the grace deadline, at most a minute away. */
	ck_assert(pv_sched_next_wakeup(fx.s, fx.clk.wall, fx.clk.mono) == 60.0);

	advance(&fx.clk, 300);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns + fx.tick.nmissed, 0);
	pv_sched_run_finished(fx.s, "a");
	ck_assert(pv_sched_next_wakeup(fx.s, fx.clk.wall, fx.clk.mono) == 0.0);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 1);
	assert_run(&fx.tick, 0, "b", PV_SCHED_SCHEDULE, "2026-05-04T02:00:00Z");
	ck_assert(pv_sched_next_wakeup(fx.s, fx.clk.wall, fx.clk.mono) == 60.0);
	advance(&fx.clk, 240);
	ck_assert(pv_sched_next_wakeup(fx.s, fx.clk.wall, fx.clk.mono) == 60.0);
	advance(&fx.clk, 30); /* 02:09:30: c's grace ends at 02:10:00 */
	ck_assert(pv_sched_next_wakeup(fx.s, fx.clk.wall, fx.clk.mono) == 30.0);
	advance(&fx.clk, 30);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 0);
	ck_assert_uint_eq(fx.tick.nmissed, 1);
	assert_miss(&fx.tick, 0, "c", PV_SCHED_MISS_GRACE, "2026-05-04T02:00:00Z");
	/* A missed slot is handled: persisted so a restart does not catch it up. */
	time_t last;
	ck_assert(pv_sched_last_slot(fx.s, "c", &last));
	ck_assert_int_eq(last, T("2026-05-04T02:00:00Z"));
	fx_done(&fx);
}
END_TEST

START_TEST(test_sched__max_parallel_two)
{
	struct fixture fx;
	struct pv_sched_job jobs[3];

	fx_init(&fx, 2, "2026-05-04T01:59:00Z");
	jobs[0] = calendar_job(&fx, "a", "0 2 * * *", true);
	jobs[1] = calendar_job(&fx, "b", "0 2 * * *", true);
	jobs[2] = calendar_job(&fx, "c", "0 2 * * *", true);
	fx_configure(&fx, jobs, 3);
	advance(&fx.clk, 60);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 2);
	assert_run(&fx.tick, 0, "a", PV_SCHED_SCHEDULE, NULL);
	assert_run(&fx.tick, 1, "b", PV_SCHED_SCHEDULE, NULL);
	/* grace 0: c waits as long as it takes. */
	advance(&fx.clk, 5 * 3600);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns + fx.tick.nmissed, 0);
	pv_sched_run_finished(fx.s, "b");
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 1);
	assert_run(&fx.tick, 0, "c", PV_SCHED_SCHEDULE, "2026-05-04T02:00:00Z");
	ck_assert_uint_eq(pv_sched_running_heavy(fx.s), 2);
	fx_done(&fx);
}
END_TEST

START_TEST(test_sched__light_jobs_not_blocked_by_heavy)
{
	struct fixture fx;
	struct pv_sched_job jobs[3];

	fx_init(&fx, 1, "2026-05-04T01:59:30Z");
	jobs[0] = calendar_job(&fx, "backup", "0 2 * * *", true);
	jobs[1] = calendar_job(&fx, "verify", "0 2 * * *", true);
	jobs[2] = interval_job("health", 60, false);
	fx_configure(&fx, jobs, 3);
	fx_tick(&fx);
	assert_run(&fx.tick, 0, "health", PV_SCHED_SCHEDULE, NULL);
	pv_sched_run_finished(fx.s, "health");
	advance(&fx.clk, 30);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 1);
	assert_run(&fx.tick, 0, "backup", PV_SCHED_SCHEDULE, NULL);
	for (int i = 0; i < 3; i++) {
		advance(&fx.clk, 30);
		fx_tick(&fx);
		ck_assert_uint_eq(fx.tick.nruns, 1);
		assert_run(&fx.tick, 0, "health", PV_SCHED_SCHEDULE, NULL);
		pv_sched_run_finished(fx.s, "health");
		advance(&fx.clk, 30);
	}
	ck_assert(pv_sched_is_running(fx.s, "backup"));
	ck_assert(!pv_sched_is_running(fx.s, "verify"));
	ck_assert_uint_eq(pv_sched_running_heavy(fx.s), 1);
	fx_done(&fx);
}
END_TEST

START_TEST(test_sched__jitter_bounds)
{
	struct fixture fx;
	struct pv_sched_job job;
	time_t slot = T("2026-05-04T02:00:00Z");
	int j, distinct = 0, first = pv_sched_jitter("daily-backup", slot, 300);
	char name[32];

	for (int i = 0; i < 2000; i++) {
		snprintf(name, sizeof(name), "job-%d", i % 50);
		j = pv_sched_jitter(name, slot + 86400 * (i / 50), 300);
		ck_assert_int_ge(j, 0);
		ck_assert_int_le(j, 300);
		ck_assert_int_eq(j, pv_sched_jitter(name, slot + 86400 * (i / 50), 300));
		distinct += j != first;
	}
	ck_assert_int_gt(distinct, 1500);
	ck_assert_int_eq(pv_sched_jitter("x", slot, 0), 0);
	ck_assert_int_le(pv_sched_jitter("x", slot, 1), 1);

	fx_init(&fx, 2, "2026-05-04T01:00:00Z");
	job = calendar_job(&fx, "daily-backup", "0 2 * * *", true);
	job.jitter = 300;
	fx_configure(&fx, &job, 1);
	j = pv_sched_jitter("daily-backup", slot, 300);
	advance(&fx.clk, 3600 + j - 1);
	ck_assert(pv_sched_next_wakeup(fx.s, fx.clk.wall, fx.clk.mono) == 1.0);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 0);
	advance(&fx.clk, 1);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 1);
	/* The slot stays the nominal time; only the start moves. */
	assert_run(&fx.tick, 0, "daily-backup", PV_SCHED_SCHEDULE, "2026-05-04T02:00:00Z");
	fx_done(&fx);
}
END_TEST

START_TEST(test_sched__clock_jump_forward_catches_up_once)
{
	struct fixture fx;
	struct pv_sched_job jobs[2];
	time_t due;

	fx_init(&fx, 2, "2026-05-04T10:30:00Z");
	jobs[0] = calendar_job(&fx, "hourly", "0 * * * *", false);
	jobs[1] = calendar_job(&fx, "hourly-nocatch", "0 * * * *", false);
	jobs[1].catch_up = false;
	fx_configure(&fx, jobs, 2);
	fx_tick(&fx);
	ck_assert(!fx.tick.clock_jumped);
	/* Small drift is not a jump. */
	fx.clk.wall += 50;
	fx.clk.mono += 5;
	fx_tick(&fx);
	ck_assert(!fx.tick.clock_jumped);
	/* Wall clock steps 3 hours forward while 30 s pass: 11:00, 12:00 and 13:00 were jumped over. */
	fx.clk.wall = T("2026-05-04T13:30:00Z");
	fx.clk.mono += 30;
	fx_tick(&fx);
	ck_assert(fx.tick.clock_jumped);
	ck_assert_uint_eq(fx.tick.nruns, 1);
	assert_run(&fx.tick, 0, "hourly", PV_SCHED_CATCH_UP, "2026-05-04T13:00:00Z");
	ck_assert_uint_eq(fx.tick.nmissed, 1);
	assert_miss(&fx.tick, 0, "hourly-nocatch", PV_SCHED_MISS_SKIPPED, "2026-05-04T13:00:00Z");
	ck_assert(pv_sched_next_due(fx.s, "hourly", &due));
	ck_assert_int_eq(due, T("2026-05-04T14:00:00Z"));
	ck_assert(pv_sched_next_due(fx.s, "hourly-nocatch", &due));
	ck_assert_int_eq(due, T("2026-05-04T14:00:00Z"));
	pv_sched_run_finished(fx.s, "hourly");
	advance(&fx.clk, 60);
	fx_tick(&fx);
	ck_assert(!fx.tick.clock_jumped);
	ck_assert_uint_eq(fx.tick.nruns + fx.tick.nmissed, 0);
	fx_done(&fx);
}
END_TEST

START_TEST(test_sched__clock_jump_backward_no_rerun)
{
	struct fixture fx;
	struct pv_sched_job job;
	time_t due;

	fx_init(&fx, 2, "2026-05-04T01:59:00Z");
	job = calendar_job(&fx, "daily-backup", "0 2 * * *", true);
	fx_configure(&fx, &job, 1);
	advance(&fx.clk, 60);
	fx_tick(&fx);
	assert_run(&fx.tick, 0, "daily-backup", PV_SCHED_SCHEDULE, "2026-05-04T02:00:00Z");
	pv_sched_run_finished(fx.s, "daily-backup");
	advance(&fx.clk, 1800);
	fx_tick(&fx);
	/* 02:30 -> 01:30 while a minute passes: 02:00 today must not run again. */
	fx.clk.wall = T("2026-05-04T01:30:00Z");
	fx.clk.mono += 60;
	fx_tick(&fx);
	ck_assert(fx.tick.clock_jumped);
	ck_assert_uint_eq(fx.tick.nruns + fx.tick.nmissed, 0);
	ck_assert(pv_sched_next_due(fx.s, "daily-backup", &due));
	ck_assert_int_eq(due, T("2026-05-05T02:00:00Z"));
	for (int i = 0; i < 60; i++) {
		advance(&fx.clk, 60);
		fx_tick(&fx);
		ck_assert(!fx.tick.clock_jumped);
		ck_assert_uint_eq(fx.tick.nruns + fx.tick.nmissed, 0);
	}
	fx.clk.wall = T("2026-05-05T02:00:00Z");
	fx.clk.mono += 24 * 3600 - 1800;
	ck_assert(pv_sched_next_wakeup(fx.s, fx.clk.wall, fx.clk.mono) == 0.0);
	fx_tick(&fx);
	ck_assert(!fx.tick.clock_jumped);
	assert_run(&fx.tick, 0, "daily-backup", PV_SCHED_SCHEDULE, "2026-05-05T02:00:00Z");
	fx_done(&fx);
}
END_TEST

START_TEST(test_sched__reload_keeps_state)
{
	struct fixture fx;
	struct pv_sched_job jobs[3], again[3];
	struct pv_error err;
	time_t due;

	fx_init(&fx, 1, "2026-05-04T01:59:00Z");
	jobs[0] = calendar_job(&fx, "backup", "0 2 * * *", true);
	jobs[1] = calendar_job(&fx, "old", "0 2 * * *", false);
	jobs[2] = calendar_job(&fx, "probe", "0 4 * * *", true);
	fx_configure(&fx, jobs, 3);
	advance(&fx.clk, 60);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 2);

	/* Reload: backup unchanged (new cron object, same text), old removed, probe rescheduled, new added.
	 */
	again[0] = calendar_job(&fx, "backup", "0 2 * * *", true);
	again[1] = calendar_job(&fx, "probe", "0 3 * * *", true);
	again[2] = calendar_job(&fx, "new", "0 5 * * *", false);
	again[2].has_last_slot = true;
	again[2].last_slot = T("2026-05-03T05:00:00Z");
	fx_configure(&fx, again, 3);
	ck_assert(pv_sched_is_running(fx.s, "backup"));
	ck_assert(!pv_sched_run_started(fx.s, "backup", &err));
	ck_assert_int_eq(err.code, PV_ERR_BUSY);
	ck_assert(pv_sched_last_slot(fx.s, "backup", &due));
	ck_assert_int_eq(due, T("2026-05-04T02:00:00Z"));
	ck_assert(pv_sched_next_due(fx.s, "backup", &due));
	ck_assert_int_eq(due, T("2026-05-05T02:00:00Z"));
	ck_assert(pv_sched_next_due(fx.s, "probe", &due));
	ck_assert_int_eq(due, T("2026-05-04T03:00:00Z"));
	ck_assert(!pv_sched_next_due(fx.s, "old", &due));
	ck_assert(!pv_sched_run_started(fx.s, "old", &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	ck_assert_uint_eq(pv_sched_running_heavy(fx.s), 1);
	pv_sched_run_finished(fx.s, "old");
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns + fx.tick.nmissed, 0);

	/* probe at 03:00 waits for backup's heavy slot; a removed job's finish does not free it. */
	advance(&fx.clk, 3600);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 0);
	pv_sched_run_finished(fx.s, "backup");
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 1);
	assert_run(&fx.tick, 0, "probe", PV_SCHED_SCHEDULE, "2026-05-04T03:00:00Z");
	fx_done(&fx);
}
END_TEST

START_TEST(test_sched__reload_removed_running_holds_slot)
{
	struct fixture fx;
	struct pv_sched_job jobs[2];

	fx_init(&fx, 1, "2026-05-04T01:59:00Z");
	jobs[0] = calendar_job(&fx, "drill", "0 2 * * *", true);
	jobs[1] = calendar_job(&fx, "backup", "0 3 * * *", true);
	fx_configure(&fx, jobs, 2);
	advance(&fx.clk, 60);
	fx_tick(&fx);
	assert_run(&fx.tick, 0, "drill", PV_SCHED_SCHEDULE, NULL);
	fx_configure(&fx, &jobs[1], 1);
	ck_assert_uint_eq(pv_sched_running_heavy(fx.s), 1);
	advance(&fx.clk, 3600);
	fx_tick(&fx);
	ck_assert_uint_eq(fx.tick.nruns, 0);
	pv_sched_run_finished(fx.s, "drill");
	ck_assert_uint_eq(pv_sched_running_heavy(fx.s), 0);
	fx_tick(&fx);
	assert_run(&fx.tick, 0, "backup", PV_SCHED_SCHEDULE, "2026-05-04T03:00:00Z");
	fx_done(&fx);
}
END_TEST

START_TEST(test_sched__configure_errors)
{
	struct fixture fx;
	struct pv_sched_job jobs[2];
	struct pv_error err;

	fx_init(&fx, 1, "2026-05-04T01:59:00Z");
	jobs[0] = calendar_job(&fx, "a", "0 2 * * *", true);
	jobs[1] = calendar_job(&fx, "a", "0 3 * * *", true);
	ck_assert(!pv_sched_configure(fx.s, jobs, 2, fx.clk.wall, fx.clk.mono, &err));
	ck_assert_int_eq(err.code, PV_ERR_SCHEDULE);
	ck_assert_str_eq(err.msg, "job \"a\" is scheduled twice");
	jobs[1] = interval_job("b", 0, false);
	ck_assert(!pv_sched_configure(fx.s, jobs, 2, fx.clk.wall, fx.clk.mono, &err));
	ck_assert_str_eq(err.msg, "job \"b\" has neither a schedule nor an interval");
	jobs[1] = calendar_job(&fx, "b", "0 2 * * *", true);
	jobs[1].tz = NULL;
	ck_assert(!pv_sched_configure(fx.s, jobs, 2, fx.clk.wall, fx.clk.mono, &err));
	ck_assert_str_eq(err.msg, "job \"b\" has a schedule but no time zone");
	/* Nothing changed on error. */
	ck_assert(!pv_sched_next_due(fx.s, "a", &fx.clk.wall));
	pv_sched_free(NULL);
	fx_done(&fx);
}
END_TEST

START_TEST(test_sched__next_wakeup_capped)
{
	struct fixture fx;
	struct pv_sched_job jobs[2];

	fx_init(&fx, 1, "2026-05-04T01:00:00Z");
	ck_assert(pv_sched_next_wakeup(fx.s, fx.clk.wall, fx.clk.mono) == 60.0);
	jobs[0] = calendar_job(&fx, "daily", "0 2 * * *", true);
	jobs[1] = interval_job("storage", 7200, false);
	fx_configure(&fx, jobs, 2);
	ck_assert(pv_sched_next_wakeup(fx.s, fx.clk.wall, fx.clk.mono) == 0.0);
	fx_tick(&fx);
	assert_run(&fx.tick, 0, "storage", PV_SCHED_SCHEDULE, NULL);
	pv_sched_run_finished(fx.s, "storage");
	ck_assert(pv_sched_next_wakeup(fx.s, fx.clk.wall, fx.clk.mono) == 60.0);
	advance(&fx.clk, 3600 - 42);
	ck_assert(pv_sched_next_wakeup(fx.s, fx.clk.wall, fx.clk.mono) == 42.0);
	/* Interval jobs run on the monotonic clock: a wall jump does not move them. */
	fx.clk.mono = 1000.0 + 7200 - 7;
	fx.clk.wall = T("2026-05-04T00:00:00Z");
	ck_assert(pv_sched_next_wakeup(fx.s, fx.clk.wall, fx.clk.mono) == 7.0);
	fx_done(&fx);
}
END_TEST

/* The Paris gap through the planner: 02:00 on 2026-03-29 runs once, at 03:00 CEST. */
START_TEST(test_sched__planner_dst_gap_runs_once)
{
	struct fixture fx;
	struct pv_tz *paris = zone("Europe/Paris");
	struct pv_sched_job job;
	int runs = 0;

	fx_init(&fx, 1, "2026-03-28T23:00:00Z");
	job = calendar_job(&fx, "daily-backup", "*/30 2 * * *", true);
	job.tz = paris;
	fx_configure(&fx, &job, 1);
	for (int i = 0; i < 6 * 60; i++) {
		fx_tick(&fx);
		for (size_t k = 0; k < fx.tick.nruns; k++) {
			runs++;
			ck_assert_int_eq(fx.tick.runs[k].slot, T("2026-03-29T01:00:00Z"));
			ck_assert_int_eq(fx.clk.wall, T("2026-03-29T01:00:00Z"));
			pv_sched_run_finished(fx.s, "daily-backup");
		}
		ck_assert_uint_eq(fx.tick.nmissed, 0);
		advance(&fx.clk, 60);
	}
	ck_assert_int_eq(runs, 1);
	fx_done(&fx);
	pv_tz_free(paris);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("sched");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, test_sched__cron_next_table, 0, sizeof(next_cases) / sizeof(next_cases[0]));
	tcase_add_loop_test(tc, test_sched__cron_prev_in_table, 0,
	                    sizeof(prev_cases) / sizeof(prev_cases[0]));
	tcase_add_loop_test(tc, test_sched__cron_parse_errors, 0,
	                    sizeof(error_cases) / sizeof(error_cases[0]));
	tcase_add_test(tc, test_sched__cron_text_and_whitespace);
	tcase_add_test(tc, test_sched__cron_next_is_fast);
	tcase_add_loop_test(tc, test_sched__tz_offsets, 0, sizeof(offset_cases) / sizeof(offset_cases[0]));
	tcase_add_loop_test(tc, test_sched__tz_errors, 0, sizeof(tz_error_cases) / sizeof(tz_error_cases[0]));
	tcase_add_test(tc, test_sched__tz_tzdir);
	tcase_add_test(tc, test_sched__catch_up_once_after_downtime);
	tcase_add_test(tc, test_sched__no_catch_up_when_disabled);
	tcase_add_test(tc, test_sched__no_catch_up_without_persisted_slot);
	tcase_add_test(tc, test_sched__never_overlaps_itself);
	tcase_add_test(tc, test_sched__max_parallel_queue_then_start);
	tcase_add_test(tc, test_sched__max_parallel_two);
	tcase_add_test(tc, test_sched__light_jobs_not_blocked_by_heavy);
	tcase_add_test(tc, test_sched__jitter_bounds);
	tcase_add_test(tc, test_sched__clock_jump_forward_catches_up_once);
	tcase_add_test(tc, test_sched__clock_jump_backward_no_rerun);
	tcase_add_test(tc, test_sched__reload_keeps_state);
	tcase_add_test(tc, test_sched__reload_removed_running_holds_slot);
	tcase_add_test(tc, test_sched__configure_errors);
	tcase_add_test(tc, test_sched__next_wakeup_capped);
	tcase_add_test(tc, test_sched__due_time_of_runs);
	tcase_add_test(tc, test_sched__planner_dst_gap_runs_once);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
