/*
 * Fuzz target: cron expressions (pv_cron_parse) and next/previous run computation in a time zone.
 *
 * Input: the expression, then optionally "\nZONE" and "\nSECONDS" (the instant to start from, clamped to
 * 1900-2200). Without them the zone and the start come from a fixed list chosen by the input's size,
 * so plain expressions as seeds still visit DST transitions in several zones.
 *
 * Checked beyond memory safety: the text is kept; each next run is later than the one before; the
 * previous run found in (after, next] is next itself; and the next run after (prev - 1) is prev.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sched/cron.h"
#include "fuzz.h"

#define T_MIN (-2208988800LL) /* 1900-01-01 */
#define T_MAX 7258118400LL    /* 2200-01-01 */

static const char *const zones[] = {"UTC",
                                    "Europe/Paris",
                                    "America/New_York",
                                    "Australia/Lord_Howe",
                                    "Asia/Kathmandu",
                                    "America/Sao_Paulo",
                                    "Pacific/Chatham",
                                    "Europe/Dublin",
                                    "Africa/Casablanca"};
#define N_ZONES (sizeof(zones) / sizeof(zones[0]))

/* Around DST changes and month and year ends. */
static const long long starts[] = {
        1711846799LL,                     /* 2024-03-31 00:59:59Z, the hour before Europe's spring change */
        1730595600LL,                     /* 2024-11-03 01:00:00Z, New York autumn change on its way */
        1709251199LL,                     /* 2024-02-29 23:59:59Z */
        1735689599LL,                     /* 2024-12-31 23:59:59Z */
        0LL,          -1LL, 4102444799LL, /* 2099-12-31 23:59:59Z */
        1680357600LL,                     /* 2023-04-01 14:00:00Z: Lord Howe's half-hour change at hand */
};
#define N_STARTS (sizeof(starts) / sizeof(starts[0]))

/* Loaded zones are kept: reading the TZif file for each input would dominate the run. */
static struct {
	char *name;
	struct pv_tz *tz;
} cache[64];

static struct pv_tz *
zone(const char *name, bool *owned)
{
	struct pv_error err;
	struct pv_tz *tz;
	size_t i;

	*owned = false;
	for (i = 0; i < sizeof(cache) / sizeof(cache[0]) && cache[i].name != NULL; i++)
		if (strcmp(cache[i].name, name) == 0)
			return cache[i].tz;
	if (!pv_tz_load(name, &tz, &err))
		return NULL;
	if (i == sizeof(cache) / sizeof(cache[0])) {
		*owned = true;
		return tz;
	}
	cache[i].name = strdup(name);
	cache[i].tz = tz;
	return tz;
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const char *const env[] = {NULL};

	(void)argc;
	(void)argv;
	pv_fuzz_environment(env);
	(void)pv_fuzz_scratch();
	return 0;
}

static void
check_runs(const struct pv_cron *cron, const struct pv_tz *tz, time_t start)
{
	time_t t = start, next, prev;

	for (int i = 0; i < 4; i++) {
		if (!pv_cron_next(cron, tz, t, &next))
			break;
		PV_FUZZ_CHECK(next > t, "next run %lld not after %lld", (long long)next, (long long)t);
		PV_FUZZ_CHECK(pv_cron_prev_in(cron, tz, t, next, &prev),
		              "no previous run in (%lld, %lld] though %lld is a run", (long long)t,
		              (long long)next, (long long)next);
		PV_FUZZ_CHECK(prev == next, "previous run in (%lld, %lld] is %lld, not %lld", (long long)t,
		              (long long)next, (long long)prev, (long long)next);
		t = next;
	}
	/* From the other side: a week back from the start. */
	if (pv_cron_prev_in(cron, tz, start - 7 * 86400, start, &prev)) {
		PV_FUZZ_CHECK(prev > start - 7 * 86400 && prev <= start,
		              "previous run %lld outside its window", (long long)prev);
		PV_FUZZ_CHECK(pv_cron_next(cron, tz, prev - 1, &next) && next == prev,
		              "next run after %lld is not the previous run %lld", (long long)prev - 1,
		              (long long)prev);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1), *zone_line, *time_line;
	const char *zone_name = zones[size % N_ZONES];
	long long start = starts[(size / N_ZONES) % N_STARTS];
	struct pv_cron *cron = NULL;
	struct pv_error err;
	struct pv_tz *tz;
	bool owned;

	if (text == NULL)
		abort();
	memcpy(text, data, size);
	text[size] = '\0';
	if ((zone_line = strchr(text, '\n')) != NULL) {
		*zone_line++ = '\0';
		if ((time_line = strchr(zone_line, '\n')) != NULL) {
			*time_line++ = '\0';
			start = strtoll(time_line, NULL, 10);
			start = start < T_MIN ? T_MIN : start > T_MAX ? T_MAX : start;
		}
		zone_name = zone_line;
	}
	if (pv_cron_parse(text, &cron, &err)) {
		PV_FUZZ_CHECK(strcmp(pv_cron_text(cron), text) == 0, "text \"%s\" kept as \"%s\"", text,
		              pv_cron_text(cron));
		if ((tz = zone(zone_name, &owned)) == NULL)
			tz = zone("UTC", &owned);
		if (tz != NULL) {
			check_runs(cron, tz, (time_t)start);
			if (owned)
				pv_tz_free(tz);
		}
		pv_cron_free(cron);
	} else {
		PV_FUZZ_CHECK(cron == NULL && err.code == PV_ERR_SCHEDULE,
		              "failure without a schedule error");
	}
	free(text);
	return 0;
}
