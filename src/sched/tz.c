/* Time zones: a small TZif (RFC 8536) reader with POSIX TZ footer rules; no global state, no tzset(). */
#include "sched/cron.h"
#include "sched/tzint.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/mem.h"

#define ZONEINFO_DIR   "/usr/share/zoneinfo"
#define TZIF_MAX_BYTES (1024 * 1024)
#define ABBR_MAX       16
/* UTC offsets never exceed 26 h (RFC 8536 allows footer hours up to 24 plus minutes). */
#define OFFSET_SPAN (26 * 3600)

struct ttinfo {
	int32_t utoff;
	bool isdst;
	char abbr[ABBR_MAX];
};

/* One POSIX rule date: Jn (1-365, no Feb 29), n (0-365), or Mm.w.d. */
struct rule_date {
	char kind; /* 'J', 'N' or 'M' */
	int n, m, w, d;
	int32_t secs; /* local time of the transition, may be negative or > 24 h */
};

struct rule {
	struct ttinfo std, dst;
	bool has_dst;
	struct rule_date start, end;
};

struct pv_tz {
	char *name;
	size_t ntrans;
	int64_t *trans;
	uint8_t *tidx;
	size_t ntypes;
	struct ttinfo *types;
	bool has_rule;
	struct rule rule;
};

/* --- POSIX TZ footer ------------------------------------------------------------------------------- */

static bool
parse_abbr(const char **pp, char *out)
{
	const char *p = *pp;
	size_t n = 0;

	if (*p == '<') {
		p++;
		while (*p != '\0' && *p != '>') {
			if (n + 1 < ABBR_MAX)
				out[n++] = *p;
			p++;
		}
		if (*p != '>')
			return false;
		p++;
	} else {
		while ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z')) {
			if (n + 1 < ABBR_MAX)
				out[n++] = *p;
			p++;
		}
	}
	out[n] = '\0';
	if (n < 1)
		return false;
	*pp = p;
	return true;
}

static bool
parse_num(const char **pp, int max, int *out)
{
	const char *p = *pp;
	int v = 0;

	if (*p < '0' || *p > '9')
		return false;
	while (*p >= '0' && *p <= '9') {
		v = v * 10 + (*p - '0');
		if (v > max)
			return false;
		p++;
	}
	*out = v;
	*pp = p;
	return true;
}

/* [+-]hh[:mm[:ss]] as seconds. */
static bool
parse_hms(const char **pp, int maxh, int32_t *out)
{
	const char *p = *pp;
	int sign = 1, h, m = 0, s = 0;

	if (*p == '+' || *p == '-') {
		sign = *p == '-' ? -1 : 1;
		p++;
	}
	if (!parse_num(&p, maxh, &h))
		return false;
	if (*p == ':') {
		p++;
		if (!parse_num(&p, 59, &m))
			return false;
		if (*p == ':') {
			p++;
			if (!parse_num(&p, 59, &s))
				return false;
		}
	}
	*out = sign * (h * 3600 + m * 60 + s);
	*pp = p;
	return true;
}

static bool
parse_rule_date(const char **pp, struct rule_date *rd)
{
	const char *p = *pp;

	if (*p == 'J') {
		p++;
		rd->kind = 'J';
		if (!parse_num(&p, 365, &rd->n) || rd->n < 1)
			return false;
	} else if (*p == 'M') {
		p++;
		rd->kind = 'M';
		if (!parse_num(&p, 12, &rd->m) || rd->m < 1 || *p++ != '.')
			return false;
		if (!parse_num(&p, 5, &rd->w) || rd->w < 1 || *p++ != '.')
			return false;
		if (!parse_num(&p, 6, &rd->d))
			return false;
	} else {
		rd->kind = 'N';
		if (!parse_num(&p, 365, &rd->n))
			return false;
	}
	rd->secs = 2 * 3600;
	if (*p == '/') {
		p++;
		/* RFC 8536 extends POSIX: hours -167..167. */
		if (!parse_hms(&p, 167, &rd->secs))
			return false;
	}
	*pp = p;
	return true;
}

static bool
parse_posix_tz(const char *s, struct rule *r)
{
	const char *p = s;
	int32_t off;

	memset(r, 0, sizeof(*r));
	if (!parse_abbr(&p, r->std.abbr) || !parse_hms(&p, 24, &off))
		return false;
	/* POSIX offsets are positive west of Greenwich. */
	r->std.utoff = -off;
	if (*p == '\0')
		return true;
	if (!parse_abbr(&p, r->dst.abbr))
		return false;
	r->has_dst = true;
	r->dst.isdst = true;
	r->dst.utoff = r->std.utoff + 3600;
	if (*p != ',' && *p != '\0') {
		if (!parse_hms(&p, 24, &off))
			return false;
		r->dst.utoff = -off;
	}
	if (*p == '\0') {
		/* POSIX leaves the default rule to the implementation; this is the common US one. */
		r->start = (struct rule_date){.kind = 'M', .m = 3, .w = 2, .d = 0, .secs = 7200};
		r->end = (struct rule_date){.kind = 'M', .m = 11, .w = 1, .d = 0, .secs = 7200};
		return true;
	}
	if (*p++ != ',' || !parse_rule_date(&p, &r->start) || *p++ != ',' || !parse_rule_date(&p, &r->end))
		return false;
	return *p == '\0';
}

/* Day number (days since the epoch) on which a rule date falls in year y. */
static int64_t
rule_day(const struct rule_date *rd, int64_t y)
{
	int64_t first, day;
	int wd, lastd;

	switch (rd->kind) {
	case 'J':
		/* Feb 29 is never counted, so day 60 is always March 1. */
		day = pv_days_from_civil(y, 1, 1) + rd->n - 1;
		if (pv_is_leap(y) && rd->n >= 60)
			day++;
		return day;
	case 'N': return pv_days_from_civil(y, 1, 1) + rd->n;
	default:
		first = pv_days_from_civil(y, rd->m, 1);
		wd = pv_weekday_from_days(first);
		day = first + (rd->d - wd + 7) % 7 + (int64_t)(rd->w - 1) * 7;
		lastd = pv_days_in_month(y, rd->m);
		while (day >= first + lastd)
			day -= 7;
		return day;
	}
}

/* UTC instants at which DST starts and ends in year y. */
static void
rule_transitions(const struct rule *r, int64_t y, int64_t *start, int64_t *end)
{
	*start = rule_day(&r->start, y) * 86400 + r->start.secs - r->std.utoff;
	*end = rule_day(&r->end, y) * 86400 + r->end.secs - r->dst.utoff;
}

static int64_t
year_of(int64_t t)
{
	int64_t y;
	int m, d;

	pv_civil_from_days(pv_floordiv(t, 86400), &y, &m, &d);
	return y;
}

static const struct ttinfo *
rule_type_at(const struct rule *r, int64_t t)
{
	int64_t s, e;

	if (!r->has_dst)
		return &r->std;
	rule_transitions(r, year_of(t + r->std.utoff), &s, &e);
	if (s < e)
		return (t >= s && t < e) ? &r->dst : &r->std;
	/* Southern hemisphere: DST spans the new year. */
	return (t >= e && t < s) ? &r->std : &r->dst;
}

static const struct ttinfo *
type_at(const struct pv_tz *tz, int64_t t)
{
	size_t lo = 0, hi = tz->ntrans;

	if (tz->ntrans == 0 || t < tz->trans[0]) {
		if (tz->ntrans == 0 && tz->has_rule)
			return rule_type_at(&tz->rule, t);
		return &tz->types[0];
	}
	if (t >= tz->trans[tz->ntrans - 1] && tz->has_rule)
		return rule_type_at(&tz->rule, t);
	/* Last transition <= t. */
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;

		if (tz->trans[mid] <= t)
			lo = mid;
		else
			hi = mid;
	}
	return &tz->types[tz->tidx[lo]];
}

int
pv_tz_offset(const struct pv_tz *tz, time_t t, const char **abbrev)
{
	const struct ttinfo *ti = type_at(tz, (int64_t)t);

	if (abbrev != NULL)
		*abbrev = ti->abbr[0] != '\0' ? ti->abbr : NULL;
	return ti->utoff;
}

/* --- transitions within a window ------------------------------------------------------------------- */

#define SEG_MAX 64

struct segment {
	int64_t start; /* first instant with this offset (the window's lo for the first segment) */
	int32_t utoff;
};

static int
cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

/* Offset segments covering [lo, hi]; only changes of UTC offset count, not of abbreviation. */
static size_t
segments(const struct pv_tz *tz, int64_t lo, int64_t hi, struct segment *seg)
{
	size_t n = 0;
	int64_t from = lo;

	seg[n++] = (struct segment){lo, type_at(tz, lo)->utoff};
	if (tz->ntrans > 0 && lo < tz->trans[tz->ntrans - 1]) {
		size_t a = 0, b = tz->ntrans;

		/* First transition > lo. */
		while (a < b) {
			size_t mid = a + (b - a) / 2;

			if (tz->trans[mid] <= lo)
				a = mid + 1;
			else
				b = mid;
		}
		for (; a < tz->ntrans && tz->trans[a] <= hi && n < SEG_MAX; a++) {
			int32_t off = tz->types[tz->tidx[a]].utoff;

			if (off != seg[n - 1].utoff)
				seg[n++] = (struct segment){tz->trans[a], off};
		}
		from = tz->trans[tz->ntrans - 1];
	}
	if (tz->has_rule && tz->rule.has_dst && hi > from) {
		int64_t cand[8];
		size_t nc = 0;

		for (int64_t y = year_of(from > lo ? from : lo) - 1; y <= year_of(hi) + 1 && nc + 2 <= 8;
		     y++) {
			rule_transitions(&tz->rule, y, &cand[nc], &cand[nc + 1]);
			nc += 2;
		}
		qsort(cand, nc, sizeof(cand[0]), cmp_i64);
		for (size_t i = 0; i < nc && n < SEG_MAX; i++) {
			int32_t off;

			if (cand[i] <= from || cand[i] <= lo || cand[i] > hi)
				continue;
			off = type_at(tz, cand[i])->utoff;
			if (off != seg[n - 1].utoff)
				seg[n++] = (struct segment){cand[i], off};
		}
	}
	return n;
}

time_t
pv_tz_resolve(const struct pv_tz *tz, int64_t local)
{
	struct segment seg[SEG_MAX];
	size_t n = segments(tz, local - OFFSET_SPAN, local + OFFSET_SPAN, seg);
	bool found = false;
	int64_t best = 0;

	for (size_t i = 0; i < n; i++) {
		int64_t t = local - seg[i].utoff;
		bool after_start = i == 0 || t >= seg[i].start;
		bool before_end = i + 1 == n || t < seg[i + 1].start;

		if (after_start && before_end && (!found || t < best)) {
			best = t;
			found = true;
		}
	}
	if (found)
		return (time_t)best;
	/* A gap: the wall time is skipped by a transition that moves clocks forward over it. */
	for (size_t i = 1; i < n; i++)
		if (local >= seg[i].start + seg[i - 1].utoff && local < seg[i].start + seg[i].utoff)
			return (time_t)seg[i].start;
	return (time_t)(local - seg[0].utoff);
}

void
pv_tz_offset_range(const struct pv_tz *tz, time_t lo, time_t hi, int *min, int *max)
{
	struct segment seg[SEG_MAX];
	size_t n = segments(tz, lo, hi, seg);

	*min = *max = seg[0].utoff;
	for (size_t i = 1; i < n; i++) {
		if (seg[i].utoff < *min)
			*min = seg[i].utoff;
		if (seg[i].utoff > *max)
			*max = seg[i].utoff;
	}
}

/* --- TZif ------------------------------------------------------------------------------------------ */

static uint32_t
be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t
be64(const unsigned char *p)
{
	return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

struct tzif_counts {
	uint32_t isut, isstd, leap, time, type, chr;
};

static bool
read_header(const unsigned char *p, size_t len, struct tzif_counts *c, int *version)
{
	if (len < 44 || memcmp(p, "TZif", 4) != 0)
		return false;
	*version = p[4] == 0 ? 1 : p[4] - '0';
	c->isut = be32(p + 20);
	c->isstd = be32(p + 24);
	c->leap = be32(p + 28);
	c->time = be32(p + 32);
	c->type = be32(p + 36);
	c->chr = be32(p + 40);
	/* Bounds that keep the size arithmetic below from overflowing. */
	return c->time <= 1000000 && c->type >= 1 && c->type <= 256 && c->chr >= 1 && c->chr <= 65536 &&
	       c->leap <= 100000 && c->isut <= 256 && c->isstd <= 256;
}

static size_t
block_size(const struct tzif_counts *c, size_t tsize)
{
	return c->time * tsize + c->time + c->type * 6 + c->chr + c->leap * (tsize + 4) + c->isstd + c->isut;
}

/* Parse the data block that starts at p (after its header); tsize is 4 (v1) or 8 (v2+). */
static bool
read_block(struct pv_tz *tz, const unsigned char *p, const struct tzif_counts *c, size_t tsize)
{
	const unsigned char *idx = p + c->time * tsize;
	const unsigned char *types = idx + c->time;
	const char *chars = (const char *)(types + c->type * 6);

	tz->ntrans = c->time;
	tz->trans = pv_calloc(c->time + 1, sizeof(int64_t));
	tz->tidx = pv_calloc(c->time + 1, 1);
	tz->ntypes = c->type;
	tz->types = pv_calloc(c->type, sizeof(struct ttinfo));
	for (size_t i = 0; i < c->time; i++) {
		tz->trans[i] = tsize == 8 ? be64(p + i * 8) : (int64_t)(int32_t)be32(p + i * 4);
		tz->tidx[i] = idx[i];
		if (idx[i] >= c->type || (i > 0 && tz->trans[i] <= tz->trans[i - 1]))
			return false;
	}
	for (size_t i = 0; i < c->type; i++) {
		const unsigned char *t = types + i * 6;
		int32_t off = (int32_t)be32(t);

		if (off < -OFFSET_SPAN || off > OFFSET_SPAN || t[5] >= c->chr)
			return false;
		tz->types[i].utoff = off;
		tz->types[i].isdst = t[4] != 0;
		/* The abbreviation table is NUL-terminated; strnlen keeps a corrupt one in bounds. */
		size_t len = strnlen(chars + t[5], c->chr - t[5]);
		if (len >= ABBR_MAX)
			len = ABBR_MAX - 1;
		memcpy(tz->types[i].abbr, chars + t[5], len);
		tz->types[i].abbr[len] = '\0';
	}
	return true;
}

static bool
parse_tzif(struct pv_tz *tz, const unsigned char *buf, size_t len)
{
	struct tzif_counts c;
	int version;
	size_t v1;
	const unsigned char *p;

	if (!read_header(buf, len, &c, &version))
		return false;
	v1 = block_size(&c, 4);
	if (44 + v1 > len)
		return false;
	if (version < 2)
		return read_block(tz, buf + 44, &c, 4);
	p = buf + 44 + v1;
	len -= 44 + v1;
	if (!read_header(p, len, &c, &version) || 44 + block_size(&c, 8) > len)
		return false;
	if (!read_block(tz, p + 44, &c, 8))
		return false;
	/* Footer: "\n<POSIX TZ>\n"; empty means no rule beyond the last transition. */
	len -= 44 + block_size(&c, 8);
	p += 44 + block_size(&c, 8);
	if (len >= 2 && p[0] == '\n') {
		const unsigned char *nl = memchr(p + 1, '\n', len - 1);
		char footer[128];
		size_t flen;

		if (nl == NULL)
			return false;
		flen = (size_t)(nl - p - 1);
		if (flen == 0)
			return true;
		if (flen >= sizeof(footer))
			return false;
		memcpy(footer, p + 1, flen);
		footer[flen] = '\0';
		if (!parse_posix_tz(footer, &tz->rule))
			return false;
		tz->has_rule = true;
	}
	return true;
}

static bool
valid_name(const char *name)
{
	if (name[0] == '\0' || name[0] == '/' || strstr(name, "..") != NULL)
		return false;
	for (const char *p = name; *p != '\0'; p++)
		if (*p < 0x21 || *p > 0x7e || *p == '\\')
			return false;
	return true;
}

static struct pv_tz *
builtin_utc(const char *name)
{
	struct pv_tz *tz = pv_calloc(1, sizeof(*tz));

	tz->name = pv_strdup(name);
	tz->ntypes = 1;
	tz->types = pv_calloc(1, sizeof(struct ttinfo));
	memcpy(tz->types[0].abbr, "UTC", 4);
	return tz;
}

bool
pv_tz_load(const char *name, struct pv_tz **out, struct pv_error *err)
{
	const char *dir = getenv("TZDIR");
	unsigned char *buf;
	char *path;
	size_t len = 0;
	FILE *f;
	struct pv_tz *tz;
	bool ok;

	*out = NULL;
	if (name == NULL || !valid_name(name))
		return pv_error_set(
		        err, PV_ERR_TIMEZONE,
		        "invalid time zone name \"%s\": expected an IANA name such as Europe/Paris",
		        name != NULL ? name : "");
	if (dir == NULL || dir[0] == '\0')
		dir = ZONEINFO_DIR;
	path = pv_asprintf("%s/%s", dir, name);
	f = fopen(path, "rb");
	if (f == NULL) {
		int e = errno;

		free(path);
		/* Minimal containers often ship without tzdata; UTC needs no file. */
		if (e == ENOENT && (strcmp(name, "UTC") == 0 || strcmp(name, "Etc/UTC") == 0)) {
			*out = builtin_utc(name);
			return true;
		}
		return pv_error_set(err, PV_ERR_TIMEZONE, "unknown time zone \"%s\": %s/%s: %s", name, dir,
		                    name, strerror(e));
	}
	buf = pv_malloc(TZIF_MAX_BYTES);
	len = fread(buf, 1, TZIF_MAX_BYTES, f);
	fclose(f);
	tz = pv_calloc(1, sizeof(*tz));
	tz->name = pv_strdup(name);
	ok = parse_tzif(tz, buf, len);
	free(buf);
	if (!ok) {
		pv_tz_free(tz);
		pv_error_set(err, PV_ERR_TIMEZONE, "unknown time zone \"%s\": %s is not a valid TZif file",
		             name, path);
		free(path);
		return false;
	}
	free(path);
	*out = tz;
	return true;
}

void
pv_tz_free(struct pv_tz *tz)
{
	if (tz == NULL)
		return;
	free(tz->name);
	free(tz->trans);
	free(tz->tidx);
	free(tz->types);
	free(tz);
}

const char *
pv_tz_name(const struct pv_tz *tz)
{
	return tz->name;
}
