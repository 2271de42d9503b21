/* Alert rules (pure): which of SPEC §3's conditions hold for a snapshot of recorded state at "now". */
#include "alert/rules.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/mem.h"

static const char *const rule_names[PV_RULE_COUNT] = {
        [PV_RULE_BACKUP_STALE] = "backup_stale",
        [PV_RULE_CONNECTIVITY_LOST] = "connectivity_lost",
        [PV_RULE_RESTORE_FAILURES] = "restore_failures",
        [PV_RULE_RPO_BREACH] = "rpo_breach",
        [PV_RULE_BACKUP_SIZE_ANOMALY] = "backup_size_anomaly",
        [PV_RULE_BACKUP_SLOW] = "backup_slow",
        [PV_RULE_STORAGE_USAGE] = "storage_usage",
        [PV_RULE_RTO_BREACH] = "rto_breach",
        [PV_RULE_BACKUP_SUCCEEDED] = "backup_succeeded",
        [PV_RULE_RESTORE_PROBE_RESULT] = "restore_probe_result",
        [PV_RULE_DRILL_SUMMARY] = "drill_summary",
        [PV_RULE_JOB_MISSED] = "job_missed",
        [PV_RULE_NOTIFIER_BROKEN] = "notifier_broken",
};

const char *
pv_alert_rule_name(enum pv_rule rule)
{
	return (int)rule >= 0 && rule < PV_RULE_COUNT ? rule_names[rule] : NULL;
}

bool
pv_alert_rule_from_name(const char *name, enum pv_rule *out)
{
	for (int i = 0; name != NULL && i < PV_RULE_COUNT; i++)
		if (strcmp(rule_names[i], name) == 0) {
			*out = (enum pv_rule)i;
			return true;
		}
	return false;
}

bool
pv_alert_rule_is_event(enum pv_rule rule)
{
	return rule == PV_RULE_BACKUP_SUCCEEDED || rule == PV_RULE_RESTORE_PROBE_RESULT ||
	       rule == PV_RULE_DRILL_SUMMARY;
}

const char *
pv_alert_duration(double secs, char *buf, size_t size)
{
	long long s = secs > 0 ? (long long)floor(secs + 0.5) : 0;

	/* Hours up to two days, so a day-old backup reads "26h ago" against a "24h" threshold. */
	if (s < 60)
		snprintf(buf, size, "%llds", s);
	else if (s < 3600)
		snprintf(buf, size, s % 60 ? "%lldm%llds" : "%lldm", s / 60, s % 60);
	else if (s < 48 * 3600)
		snprintf(buf, size, s % 3600 / 60 ? "%lldh%lldm" : "%lldh", s / 3600, s % 3600 / 60);
	else
		snprintf(buf, size, s % 86400 / 3600 ? "%lldd%lldh" : "%lldd", s / 86400, s % 86400 / 3600);
	return buf;
}

static const char *
bytes_text(int64_t n, char *buf, size_t size)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
	double v = (double)n;
	size_t u = 0;

	while (fabs(v) >= 1024.0 && u + 1 < sizeof(units) / sizeof(units[0])) {
		v /= 1024.0;
		u++;
	}
	if (u == 0)
		snprintf(buf, size, "%lld B", (long long)n);
	else
		snprintf(buf, size, "%.1f %s", v, units[u]);
	return buf;
}

static const char *
time_text(time_t t, char *buf, size_t size)
{
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL || strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, size, "%lld", (long long)t);
	return buf;
}

static char *
dup_or_null(const char *s)
{
	return s != NULL ? pv_strdup(s) : NULL;
}

void
pv_alert_conditions_add(struct pv_alert_conditions *c, const struct pv_alert_condition *cond)
{
	struct pv_alert_condition *d;

	if (c->n == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 16;
		c->v = pv_realloc(c->v, c->cap * sizeof(*c->v));
	}
	d = &c->v[c->n++];
	*d = *cond;
	d->fingerprint = pv_strdup(cond->fingerprint != NULL ? cond->fingerprint : "");
	d->value = pv_strdup(cond->value != NULL ? cond->value : "");
	d->threshold = pv_strdup(cond->threshold != NULL ? cond->threshold : "");
	d->database = dup_or_null(cond->database);
	d->job = dup_or_null(cond->job);
	d->notifier = dup_or_null(cond->notifier);
}

void
pv_alert_conditions_clear(struct pv_alert_conditions *c)
{
	for (size_t i = 0; i < c->n; i++) {
		free(c->v[i].fingerprint);
		free(c->v[i].value);
		free(c->v[i].threshold);
		free(c->v[i].database);
		free(c->v[i].job);
		free(c->v[i].notifier);
	}
	free(c->v);
	c->v = NULL;
	c->n = c->cap = 0;
}

const struct pv_alert_condition *
pv_alert_conditions_find(const struct pv_alert_conditions *c, const char *fingerprint)
{
	for (size_t i = 0; i < c->n; i++)
		if (strcmp(c->v[i].fingerprint, fingerprint) == 0)
			return &c->v[i];
	return NULL;
}

/* Evaluation context: the output plus what every condition shares. */
struct eval {
	const struct pv_config *cfg;
	time_t now;
	struct pv_alert_conditions *out;
};

static const struct pv_config_rule *
rule_on(const struct eval *ev, enum pv_rule rule)
{
	const struct pv_config_alerts *a = &ev->cfg->alerts;

	if (a->rules == NULL || (size_t)rule >= a->n_rules || !a->rules[rule].enabled)
		return NULL;
	return &a->rules[rule];
}

/* Add a condition; `key` completes the fingerprint "rule/key". Takes ownership of value and threshold. */
static void
emit(struct eval *ev, const struct pv_config_rule *r, const char *key, enum pv_severity sev, bool oneshot,
     time_t at, const char *database, const char *job, const char *notifier, char *value, char *threshold)
{
	struct pv_alert_condition c = {
	        .rule = r->id,
	        .severity = sev,
	        .oneshot = oneshot,
	        .fingerprint = pv_asprintf("%s/%s", rule_names[r->id], key),
	        .value = value,
	        .threshold = threshold,
	        .database = (char *)database,
	        .job = (char *)job,
	        .notifier = (char *)notifier,
	        .at = at,
	};

	pv_alert_conditions_add(ev->out, &c);
	free(c.fingerprint);
	free(value);
	free(threshold);
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Median of the newest PV_ALERT_RECENT_MAX values; false with fewer than PV_ALERT_MEDIAN_MIN. */
static bool
median(const double *v, size_t n, double *out)
{
	double tmp[PV_ALERT_RECENT_MAX];

	if (n > PV_ALERT_RECENT_MAX)
		n = PV_ALERT_RECENT_MAX;
	if (n < PV_ALERT_MEDIAN_MIN)
		return false;
	memcpy(tmp, v, n * sizeof(*v));
	qsort(tmp, n, sizeof(*tmp), cmp_double);
	*out = n % 2 ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2.0;
	return true;
}

static void
eval_backup_stale(struct eval *ev, const struct pv_alert_snapshot *snap)
{
	const struct pv_config_rule *r = rule_on(ev, PV_RULE_BACKUP_STALE);
	char a[32], b[32];

	if (r == NULL)
		return;
	/*
	 * Per database, not per job: a monthly job's last success is weeks old by design. The origin is the
	 * newest success of any of its backup jobs, else the earliest time one of them was configured, so a
	 * backup that never runs still raises the alert on time.
	 */
	for (size_t i = 0; i < snap->n_databases; i++) {
		const char *db = snap->databases[i].name;
		time_t newest = 0, since = 0;
		bool any = false;
		int64_t age;

		for (size_t j = 0; j < snap->n_backups; j++) {
			const struct pv_alert_snap_backup_job *bj = &snap->backups[j];
			if (bj->database == NULL || strcmp(bj->database, db) != 0)
				continue;
			any = true;
			if (bj->last_success_finished > newest)
				newest = bj->last_success_finished;
			if (bj->since > 0 && (since == 0 || bj->since < since))
				since = bj->since;
		}
		if (!any || (newest == 0 && since == 0))
			continue;
		age = (int64_t)(ev->now - (newest > 0 ? newest : since));
		if (age < r->after)
			continue;
		emit(ev, r, db, r->severity, false, ev->now, db, NULL, NULL,
		     newest > 0 ? pv_asprintf("last successful backup %s ago",
		                              pv_alert_duration((double)age, a, 32))
		                : pv_asprintf("no successful backup in the %s since the first backup job was "
		                              "configured",
		                              pv_alert_duration((double)age, a, 32)),
		     pv_asprintf("%s", pv_alert_duration((double)r->after, b, 32)));
	}
}

static void
eval_databases(struct eval *ev, const struct pv_alert_snapshot *snap)
{
	const struct pv_config_rule *conn = rule_on(ev, PV_RULE_CONNECTIVITY_LOST);
	const struct pv_config_rule *fail = rule_on(ev, PV_RULE_RESTORE_FAILURES);
	const struct pv_config_rule *rpo = rule_on(ev, PV_RULE_RPO_BREACH);
	const struct pv_config_rule *rto = rule_on(ev, PV_RULE_RTO_BREACH);
	char a[32], b[32], t[32];

	for (size_t i = 0; i < snap->n_databases; i++) {
		const struct pv_alert_snap_database *d = &snap->databases[i];

		if (conn != NULL && d->have_health && !d->connected && d->failing_since > 0 &&
		    (int64_t)(ev->now - d->failing_since) >= conn->after)
			emit(ev, conn, d->name, conn->severity, false, ev->now, d->name, NULL, NULL,
			     pv_asprintf("unreachable for %s (since %s)",
			                 pv_alert_duration((double)(ev->now - d->failing_since), a, 32),
			                 time_text(d->failing_since, t, sizeof(t))),
			     pv_asprintf("%s", pv_alert_duration((double)conn->after, b, 32)));

		if (fail != NULL && d->consecutive_probe_failures >= fail->consecutive)
			emit(ev, fail, d->name, fail->severity, false, ev->now, d->name, NULL, NULL,
			     pv_asprintf("%d restore tests failed in a row", d->consecutive_probe_failures),
			     pv_asprintf("%d in a row", fail->consecutive));

		if (rpo != NULL && d->rpo > 0 && (d->newest_verified_finished > 0 || d->since > 0)) {
			time_t origin =
			        d->newest_verified_finished > 0 ? d->newest_verified_finished : d->since;
			int64_t age = (int64_t)(ev->now - origin);
			if (age > d->rpo)
				emit(ev, rpo, d->name, rpo->severity, false, ev->now, d->name, NULL, NULL,
				     d->newest_verified_finished > 0
				             ? pv_asprintf("newest verified backup%s%s is %s old",
				                           d->newest_verified_id ? " " : "",
				                           d->newest_verified_id ? d->newest_verified_id : "",
				                           pv_alert_duration((double)age, a, 32))
				             : pv_asprintf("no verified backup in %s",
				                           pv_alert_duration((double)age, a, 32)),
				     pv_asprintf("rpo %s", pv_alert_duration((double)d->rpo, b, 32)));
		}

		if (rto != NULL && d->rto > 0 && d->have_restore && d->restore_seconds > (double)d->rto)
			emit(ev, rto, d->name, rto->severity, false, ev->now, d->name, NULL, NULL,
			     pv_asprintf("last %s took %s (%s)",
			                 d->restore_kind != NULL && strcmp(d->restore_kind, "drill") == 0
			                         ? "drill"
			                         : "restore probe",
			                 pv_alert_duration(d->restore_seconds, a, 32),
			                 time_text(d->restore_at, t, sizeof(t))),
			     pv_asprintf("rto %s", pv_alert_duration((double)d->rto, b, 32)));
	}
}

static void
eval_backup_jobs(struct eval *ev, const struct pv_alert_snapshot *snap)
{
	const struct pv_config_rule *size = rule_on(ev, PV_RULE_BACKUP_SIZE_ANOMALY);
	const struct pv_config_rule *slow = rule_on(ev, PV_RULE_BACKUP_SLOW);
	char a[32], b[32];

	for (size_t i = 0; i < snap->n_backups; i++) {
		const struct pv_alert_snap_backup_job *bj = &snap->backups[i];
		double med;

		/* A failed run's size and time say nothing about the data; the condition holds until the next
		 * successful run. */
		if (!bj->have_last || !bj->last_ok)
			continue;
		if (size != NULL && bj->n_recent_sizes > 0) {
			double v[PV_ALERT_RECENT_MAX];
			size_t n = bj->n_recent_sizes < PV_ALERT_RECENT_MAX ? bj->n_recent_sizes
			                                                    : PV_ALERT_RECENT_MAX;
			for (size_t k = 0; k < n; k++)
				v[k] = (double)bj->recent_sizes[k];
			if (median(v, n, &med) && med > 0) {
				double change = ((double)bj->last_size - med) / med;
				if (fabs(change) > size->change)
					emit(ev, size, bj->name, size->severity, false, ev->now, bj->database,
					     bj->name, NULL,
					     pv_asprintf(
					             "backup%s%s is %s, %+.0f%% against the median %s of the "
					             "last %zu",
					             bj->last_backup_id ? " " : "",
					             bj->last_backup_id ? bj->last_backup_id : "",
					             bytes_text(bj->last_size, a, 32), change * 100.0,
					             bytes_text((int64_t)med, b, 32), n),
					     pv_asprintf("%g%%", size->change * 100.0));
			}
		}
		if (slow != NULL && median(bj->recent_durations, bj->n_recent_durations, &med) && med > 0 &&
		    bj->last_duration > slow->factor * med) {
			char c[32];
			size_t n = bj->n_recent_durations < PV_ALERT_RECENT_MAX ? bj->n_recent_durations
			                                                        : PV_ALERT_RECENT_MAX;
			emit(ev, slow, bj->name, slow->severity, false, ev->now, bj->database, bj->name, NULL,
			     pv_asprintf("backup took %s, %.1fx the median %s of the last %zu",
			                 pv_alert_duration(bj->last_duration, a, 32), bj->last_duration / med,
			                 pv_alert_duration(med, b, 32), n),
			     pv_asprintf("%gx the median (%s)", slow->factor,
			                 pv_alert_duration(slow->factor * med, c, 32)));
		}
	}
}

static void
eval_storage(struct eval *ev, const struct pv_alert_snapshot *snap)
{
	const struct pv_config_rule *r = rule_on(ev, PV_RULE_STORAGE_USAGE);
	const struct pv_alert_snap_storage *s = &snap->storage;

	if (r == NULL || !s->have)
		return;
	if (s->used_ratio > r->above)
		emit(ev, r, "storage", r->severity, false, ev->now, NULL, NULL, NULL,
		     pv_asprintf("backup storage %.1f%% used", s->used_ratio * 100.0),
		     pv_asprintf("%g%%", r->above * 100.0));
	/* A warning whatever the rule's severity: it is a forecast, not a fact. */
	if (s->have_forecast && s->days_until_full >= 0 && s->days_until_full < PV_ALERT_FULL_SOON_DAYS)
		emit(ev, r, "full_soon", PV_SEV_WARNING, false, ev->now, NULL, NULL, NULL,
		     pv_asprintf("backup storage full in %.1f days at the current growth",
		                 s->days_until_full),
		     pv_asprintf("%g days", PV_ALERT_FULL_SOON_DAYS));
}

static void
eval_missed(struct eval *ev, const struct pv_alert_snapshot *snap)
{
	const struct pv_config_rule *r = rule_on(ev, PV_RULE_JOB_MISSED);
	char a[32], t[32];

	if (r == NULL)
		return;
	for (size_t i = 0; i < snap->n_missed; i++) {
		const struct pv_alert_snap_missed *m = &snap->missed[i];
		int64_t grace = -1;

		if (m->count <= 0)
			continue;
		for (size_t j = 0; j < ev->cfg->n_jobs; j++)
			if (ev->cfg->jobs[j].name != NULL && strcmp(ev->cfg->jobs[j].name, m->job) == 0)
				grace = ev->cfg->jobs[j].grace;
		emit(ev, r, m->job, r->severity, true, m->last_slot > 0 ? m->last_slot : ev->now, m->database,
		     m->job, NULL,
		     m->count == 1
		             ? pv_asprintf("the run due at %s did not start", time_text(m->last_slot, t, 32))
		             : pv_asprintf("%d scheduled runs did not start, the last due at %s", m->count,
		                           time_text(m->last_slot, t, 32)),
		     grace >= 0 ? pv_asprintf("grace %s", pv_alert_duration((double)grace, a, 32))
		                : pv_strdup("grace"));
	}
}

static void
eval_notifiers(struct eval *ev, const struct pv_alert_snapshot *snap)
{
	const struct pv_config_rule *r = rule_on(ev, PV_RULE_NOTIFIER_BROKEN);

	if (r == NULL)
		return;
	for (size_t i = 0; i < snap->n_notifiers; i++) {
		const struct pv_alert_snap_notifier *n = &snap->notifiers[i];
		if (n->broken)
			emit(ev, r, n->name, r->severity, false, ev->now, NULL, NULL, n->name,
			     pv_asprintf("notifier %s answers with a permanent error%s%s", n->name,
			                 n->reason ? ": " : "", n->reason ? n->reason : ""),
			     pv_strdup("no permanent error"));
	}
}

static void
eval_events(struct eval *ev, const struct pv_alert_snapshot *snap)
{
	char a[32], b[32];

	for (size_t i = 0; i < snap->n_events; i++) {
		const struct pv_alert_snap_event *e = &snap->events[i];
		const struct pv_config_rule *r;
		const char *key = e->job != NULL ? e->job : e->database != NULL ? e->database : "-";
		char *value;

		if (!pv_alert_rule_is_event(e->rule) || (r = rule_on(ev, e->rule)) == NULL)
			continue;
		switch (e->rule) {
		case PV_RULE_BACKUP_SUCCEEDED:
			value = pv_asprintf("backup %s: %s in %s", e->backup_id ? e->backup_id : "?",
			                    bytes_text(e->size, a, 32), pv_alert_duration(e->seconds, b, 32));
			break;
		case PV_RULE_RESTORE_PROBE_RESULT:
			value = pv_asprintf("restore probe%s%s %s in %s%s%s", e->backup_id ? " of " : "",
			                    e->backup_id ? e->backup_id : "", e->ok ? "succeeded" : "failed",
			                    pv_alert_duration(e->seconds, a, 32), e->detail ? ": " : "",
			                    e->detail ? e->detail : "");
			break;
		default:
			value = pv_asprintf("drill %s in %s%s%s", e->ok ? "succeeded" : "failed",
			                    pv_alert_duration(e->seconds, a, 32), e->detail ? ": " : "",
			                    e->detail ? e->detail : "");
			break;
		}
		emit(ev, r, key, r->severity, true, e->at > 0 ? e->at : ev->now, e->database, e->job, NULL,
		     value, pv_strdup(""));
	}
}

void
pv_alert_rules_eval(const struct pv_config *cfg, const struct pv_alert_snapshot *snap, time_t now,
                    struct pv_alert_conditions *out)
{
	struct eval ev = {.cfg = cfg, .now = now, .out = out};

	pv_alert_conditions_clear(out);
	eval_backup_stale(&ev, snap);
	eval_databases(&ev, snap);
	eval_backup_jobs(&ev, snap);
	eval_storage(&ev, snap);
	eval_missed(&ev, snap);
	eval_notifiers(&ev, snap);
	eval_events(&ev, snap);
}
