/* Cron expressions: parsing, and next/previous run computation in a zone's local wall time. */
#include "sched/cron.h"
#include "sched/tzint.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/mem.h"

/* How far pv_cron_next and pv_cron_prev_in look before giving up ("0 0 30 2 *" never matches). */
#define SEARCH_DAYS (8 * 366 + 2)

struct pv_cron {
	char *text;
	uint64_t minutes; /* bit n: minute n */
	uint32_t hours;
	uint32_t doms;   /* bit n: day n of the month (1-31) */
	bool dom_last;   /* `L`: the month's last day */
	uint16_t months; /* bit n: month n (1-12) */
	uint8_t dows;    /* bit n: weekday n, 0 = Sunday */
	/* Vixie cron: a field starting with `*` leaves the day unrestricted by it (AND), else OR. */
	bool dom_star, dow_star;
};

enum field { F_MINUTE, F_HOUR, F_DOM, F_MONTH, F_DOW };

static const struct field_def {
	const char *name;
	int min, max;
	const char *const *names; /* 3-letter names for min..., or NULL */
} fields[] = {
        [F_MINUTE] = {"minute", 0, 59, NULL},
        [F_HOUR] = {"hour", 0, 23, NULL},
        [F_DOM] = {"day-of-month", 1, 31, NULL},
        [F_MONTH] = {"month", 1, 12,
                     (const char *const[]){"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep",
                                           "oct", "nov", "dec"}},
        /* 7 is Sunday too, as in every cron since Vixie. */
        [F_DOW] = {"day-of-week", 0, 7,
                   (const char *const[]){"sun", "mon", "tue", "wed", "thu", "fri", "sat"}},
};

static const struct {
	const char *name, *expansion;
} macros[] = {
        {"@hourly", "0 * * * *"},   {"@daily", "0 0 * * *"},   {"@midnight", "0 0 * * *"},
        {"@weekly", "0 0 * * 0"},   {"@monthly", "0 0 1 * *"}, {"@yearly", "0 0 1 1 *"},
        {"@annually", "0 0 1 1 *"},
};

/* Parse one value (number or name) of [s, e); returns a reason on failure. */
static const char *
parse_value(const struct field_def *f, const char *s, const char *e, int *out)
{
	long v = 0;

	if (s == e)
		return "missing value";
	if (isdigit((unsigned char)*s)) {
		for (const char *p = s; p < e; p++) {
			if (!isdigit((unsigned char)*p))
				return f->names != NULL ? "expected a number or name" : "expected a number";
			if (v < 100000)
				v = v * 10 + (*p - '0');
		}
		if (v < f->min || v > f->max)
			return "value out of range";
		*out = (int)v;
		return NULL;
	}
	if (f->names != NULL && e - s == 3) {
		int count = f == &fields[F_DOW] ? 7 : 12;

		for (int i = 0; i < count; i++) {
			if (strncasecmp(s, f->names[i], 3) == 0) {
				*out = f->min + i;
				return NULL;
			}
		}
		return "unknown name";
	}
	return f->names != NULL ? "expected a number or name" : "expected a number";
}

/* Parse one comma-separated field into a bit set; on error fill err naming the field. */
static bool
parse_field(enum field which, const char *text, uint64_t *bits, bool *star, bool *last, struct pv_error *err)
{
	const struct field_def *f = &fields[which];
	const char *p = text;
	char reason[96];
	const char *why = NULL;

	*bits = 0;
	*star = text[0] == '*';
	if (last != NULL)
		*last = false;
	for (;;) {
		const char *end = strchr(p, ',');
		const char *slash, *dash;
		int lo, hi, step = 1;

		if (end == NULL)
			end = p + strlen(p);
		if (p == end) {
			why = "empty list element";
			goto fail;
		}
		slash = memchr(p, '/', (size_t)(end - p));
		if (last != NULL && end - p == 1 && (*p == 'L' || *p == 'l')) {
			*last = true;
			goto next;
		}
		if (slash != NULL) {
			long s = 0;

			if (slash + 1 == end) {
				why = "missing step";
				goto fail;
			}
			for (const char *q = slash + 1; q < end; q++) {
				if (!isdigit((unsigned char)*q)) {
					why = "step is not a number";
					goto fail;
				}
				if (s < 100000)
					s = s * 10 + (*q - '0');
			}
			if (s < 1 || s > f->max) {
				snprintf(reason, sizeof(reason), "step out of range 1-%d", f->max);
				why = reason;
				goto fail;
			}
			step = (int)s;
		} else {
			slash = end;
		}
		dash = memchr(p, '-', (size_t)(slash - p));
		if (slash - p == 1 && *p == '*') {
			lo = f->min;
			/* `*` means every weekday once: 0-6, not 0-7. */
			hi = which == F_DOW ? 6 : f->max;
		} else if (dash != NULL) {
			if ((why = parse_value(f, p, dash, &lo)) != NULL ||
			    (why = parse_value(f, dash + 1, slash, &hi)) != NULL)
				goto fail;
			if (lo > hi) {
				why = "range start is greater than its end";
				goto fail;
			}
		} else {
			if ((why = parse_value(f, p, slash, &lo)) != NULL)
				goto fail;
			/* "5/15" means 5-max/15, as in cronie. */
			hi = slash != end ? (which == F_DOW ? 6 : f->max) : lo;
			if (hi < lo)
				hi = lo;
		}
		for (int v = lo; v <= hi; v += step)
			*bits |= (uint64_t)1 << (which == F_DOW ? v % 7 : v);
	next:
		if (*end == '\0')
			break;
		p = end + 1;
	}
	return true;
fail:
	if (strcmp(why, "value out of range") == 0) {
		snprintf(reason, sizeof(reason), "value out of range %d-%d", f->min, f->max);
		why = reason;
	}
	return pv_error_set(err, PV_ERR_SCHEDULE, "invalid %s field \"%s\": %s", f->name, text, why);
}

bool
pv_cron_parse(const char *expr, struct pv_cron **out, struct pv_error *err)
{
	const char *src = expr;
	char *copy, *field[6], *save = NULL;
	int n = 0;
	struct pv_cron c = {0};
	uint64_t bits;
	bool star;

	*out = NULL;
	if (expr == NULL)
		return pv_error_set(err, PV_ERR_SCHEDULE, "empty schedule");
	while (isspace((unsigned char)*src))
		src++;
	if (*src == '@') {
		size_t len = strcspn(src, " \t\r\n");
		const char *rest = src + len;

		while (isspace((unsigned char)*rest))
			rest++;
		for (size_t i = 0; i < sizeof(macros) / sizeof(macros[0]); i++) {
			if (*rest == '\0' && strlen(macros[i].name) == len &&
			    strncasecmp(src, macros[i].name, len) == 0) {
				if (!pv_cron_parse(macros[i].expansion, out, err))
					return false;
				free((*out)->text);
				(*out)->text = pv_strdup(expr);
				return true;
			}
		}
		return pv_error_set(
		        err, PV_ERR_SCHEDULE,
		        "invalid schedule \"%s\": unknown macro (expected @hourly, @daily, @midnight, "
		        "@weekly, @monthly, @yearly or @annually)",
		        expr);
	}
	copy = pv_strdup(expr);
	for (char *tok = strtok_r(copy, " \t\r\n", &save); tok != NULL;
	     tok = strtok_r(NULL, " \t\r\n", &save)) {
		if (n < 6)
			field[n] = tok;
		n++;
	}
	if (n != 5) {
		free(copy);
		return pv_error_set(
		        err, PV_ERR_SCHEDULE,
		        "invalid schedule \"%s\": expected 5 fields (minute hour day-of-month month "
		        "day-of-week), got %d",
		        expr, n);
	}
	if (!parse_field(F_MINUTE, field[0], &c.minutes, &star, NULL, err))
		goto fail;
	if (!parse_field(F_HOUR, field[1], &bits, &star, NULL, err))
		goto fail;
	c.hours = (uint32_t)bits;
	if (!parse_field(F_DOM, field[2], &bits, &c.dom_star, &c.dom_last, err))
		goto fail;
	c.doms = (uint32_t)bits;
	if (!parse_field(F_MONTH, field[3], &bits, &star, NULL, err))
		goto fail;
	c.months = (uint16_t)bits;
	if (!parse_field(F_DOW, field[4], &bits, &c.dow_star, NULL, err))
		goto fail;
	c.dows = (uint8_t)bits;
	free(copy);
	c.text = pv_strdup(expr);
	*out = pv_malloc(sizeof(**out));
	**out = c;
	return true;
fail:
	free(copy);
	return false;
}

void
pv_cron_free(struct pv_cron *cron)
{
	if (cron == NULL)
		return;
	free(cron->text);
	free(cron);
}

const char *
pv_cron_text(const struct pv_cron *cron)
{
	return cron->text;
}

/* Does the local calendar day `days` (days since 1970-01-01) match the day and month fields? */
static bool
day_matches(const struct pv_cron *c, int64_t days)
{
	int64_t y;
	int m, d;
	bool dom, dow;

	pv_civil_from_days(days, &y, &m, &d);
	if (!(c->months & (1u << m)))
		return false;
	dom = (c->doms & (1u << d)) || (c->dom_last && d == pv_days_in_month(y, m));
	dow = c->dows & (1u << pv_weekday_from_days(days));
	if (c->dom_star || c->dow_star)
		return dom && dow;
	return dom || dow;
}

/*
 * Walking wall times in order and resolving each gives instants in non-decreasing order (gap times
 * collapse onto the transition, overlap times take their first occurrence), so the first resolved
 * instant past `after` is the answer. lmin bounds which wall times can possibly resolve past it.
 */
bool
pv_cron_next(const struct pv_cron *cron, const struct pv_tz *tz, time_t after, time_t *next)
{
	int omin, omax;
	int64_t lmin, day0;

	pv_tz_offset_range(tz, after, after + 2 * 86400, &omin, &omax);
	lmin = (int64_t)after + omin - 60;
	day0 = pv_floordiv(lmin, 86400);
	for (int64_t day = day0; day < day0 + SEARCH_DAYS; day++) {
		if (!day_matches(cron, day))
			continue;
		for (int h = 0; h < 24; h++) {
			int64_t lh = day * 86400 + h * 3600;

			if (!(cron->hours & (1u << h)) || lh + 3599 < lmin)
				continue;
			for (int m = 0; m < 60; m++) {
				int64_t l = lh + m * 60;
				time_t t;

				if (!(cron->minutes & ((uint64_t)1 << m)) || l < lmin)
					continue;
				t = pv_tz_resolve(tz, l);
				if (t > after) {
					*next = t;
					return true;
				}
			}
		}
	}
	return false;
}

/* The mirror image of pv_cron_next: walk wall times backwards from the latest that could be <= now. */
bool
pv_cron_prev_in(const struct pv_cron *cron, const struct pv_tz *tz, time_t since, time_t now, time_t *missed)
{
	int omin, omax;
	int64_t lmax, day0, stop;

	if (now <= since)
		return false;
	pv_tz_offset_range(tz, now - 2 * 86400, now, &omin, &omax);
	lmax = (int64_t)now + omax + 60;
	day0 = pv_floordiv(lmax, 86400);
	/* Nothing before since's local day (less a day for offsets) can resolve after since. */
	stop = pv_floordiv((int64_t)since - 26 * 3600, 86400);
	if (stop < day0 - SEARCH_DAYS)
		stop = day0 - SEARCH_DAYS;
	for (int64_t day = day0; day >= stop; day--) {
		if (!day_matches(cron, day))
			continue;
		for (int h = 23; h >= 0; h--) {
			int64_t lh = day * 86400 + h * 3600;

			if (!(cron->hours & (1u << h)) || lh > lmax)
				continue;
			for (int m = 59; m >= 0; m--) {
				int64_t l = lh + m * 60;
				time_t t;

				if (!(cron->minutes & ((uint64_t)1 << m)) || l > lmax)
					continue;
				t = pv_tz_resolve(tz, l);
				if (t <= now) {
					if (t <= since)
						return false;
					*missed = t;
					return true;
				}
			}
		}
	}
	return false;
}
