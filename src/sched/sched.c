/* The job planner: due times, catch-up, self-overlap, heavy-job parallelism, jitter and clock jumps. */
#include "sched/sched.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/mem.h"

struct entry {
	char *name;
	struct pv_sched_job job; /* job.name points to name */
	bool removed;            /* gone from the configuration; kept only until its run finishes */

	/* Calendar jobs: the next slot in UTC (start = slot + jitter), and the last handled one. */
	bool has_next;
	time_t next_due;
	bool has_last_slot;
	time_t last_slot;

	/* Interval jobs: monotonic due time. */
	double due_mono;

	bool running;
	bool run_heavy; /* heaviness when the run started: a reload may change the flag mid-run */

	/* A due run waiting for a heavy slot (or for the next dispatch). */
	bool waiting;
	uint64_t wait_seq;
	time_t wait_slot;
	double wait_due; /* monotonic */
	enum pv_sched_trigger wait_trigger;
	bool has_deadline;
	double wait_deadline; /* monotonic */

	/* A slot found skipped at configure time, reported by the next tick. */
	bool pending_skip;
	time_t skip_slot;
};

struct pv_sched {
	struct entry *e;
	size_t n;
	int max_parallel;
	size_t running_heavy;
	uint64_t seq;
	bool ticked;
	time_t last_wall;
	double last_mono;
};

static bool
is_calendar(const struct entry *e)
{
	return e->job.cron != NULL;
}

static struct entry *
find(const struct pv_sched *s, const char *name, bool include_removed)
{
	for (size_t i = 0; i < s->n; i++)
		/* name is NULL only while pv_sched_configure() moves entries. */
		if ((include_removed || !s->e[i].removed) && s->e[i].name != NULL &&
		    strcmp(s->e[i].name, name) == 0)
			return &s->e[i];
	return NULL;
}

int
pv_sched_jitter(const char *job, time_t slot, int jitter)
{
	uint64_t h = 14695981039346656037ULL;
	uint64_t v = (uint64_t)(int64_t)slot;

	if (jitter <= 0)
		return 0;
	for (const unsigned char *p = (const unsigned char *)job; *p != '\0'; p++) {
		h ^= *p;
		h *= 1099511628211ULL;
	}
	for (int i = 0; i < 8; i++) {
		h ^= (v >> (8 * i)) & 0xff;
		h *= 1099511628211ULL;
	}
	return (int)(h % ((uint64_t)jitter + 1));
}

static time_t
start_of(const struct entry *e, time_t slot)
{
	return slot + pv_sched_jitter(e->name, slot, e->job.jitter);
}

struct pv_sched *
pv_sched_new(int max_parallel)
{
	struct pv_sched *s = pv_calloc(1, sizeof(*s));

	pv_sched_set_max_parallel(s, max_parallel);
	return s;
}

void
pv_sched_free(struct pv_sched *s)
{
	if (s == NULL)
		return;
	for (size_t i = 0; i < s->n; i++)
		free(s->e[i].name);
	free(s->e);
	free(s);
}

void
pv_sched_set_max_parallel(struct pv_sched *s, int max_parallel)
{
	/* Zero would stall every heavy job forever; configuration validation should refuse it anyway. */
	s->max_parallel = max_parallel < 1 ? 1 : max_parallel;
}

static void
push_run(struct pv_sched_tick *out, const struct entry *e, enum pv_sched_trigger trigger, time_t slot)
{
	out->runs = pv_realloc(out->runs, (out->nruns + 1) * sizeof(*out->runs));
	out->runs[out->nruns++] = (struct pv_sched_run){e->name, trigger, slot, is_calendar(e), e->wait_due};
}

static void
mark_handled(struct entry *e, time_t slot)
{
	if (!is_calendar(e))
		return;
	if (!e->has_last_slot || slot > e->last_slot)
		e->last_slot = slot;
	e->has_last_slot = true;
}

static void
miss(struct pv_sched_tick *out, struct entry *e, enum pv_sched_miss_reason reason, time_t slot)
{
	mark_handled(e, slot);
	out->missed = pv_realloc(out->missed, (out->nmissed + 1) * sizeof(*out->missed));
	out->missed[out->nmissed++] = (struct pv_sched_miss){e->name, reason, slot, is_calendar(e)};
}

/* A slot is due: queue it, or report it missed when the job is busy (never overlap, never pile up). */
static void
offer(struct pv_sched *s, struct pv_sched_tick *out, struct entry *e, time_t slot,
      enum pv_sched_trigger trigger, double lateness, double now_mono)
{
	if (e->running || e->waiting) {
		miss(out, e, PV_SCHED_MISS_OVERLAP, slot);
		return;
	}
	e->waiting = true;
	e->wait_seq = s->seq++;
	e->wait_slot = slot;
	e->wait_due = now_mono - lateness;
	e->wait_trigger = trigger;
	e->has_deadline = e->job.grace > 0;
	e->wait_deadline = e->wait_due + e->job.grace;
}

static void
plan_calendar(struct entry *e, time_t now_wall)
{
	/* Never plan at or before a slot already handled: a backward clock jump must not rerun it. */
	time_t base = now_wall;

	if (e->has_last_slot && e->last_slot > base)
		base = e->last_slot;
	e->has_next = pv_cron_next(e->job.cron, e->job.tz, base, &e->next_due);
}

/* A job the planner has not seen before: plan it, and look for a slot missed while down. */
static void
init_entry(struct pv_sched *s, struct entry *e, time_t now_wall, double now_mono)
{
	time_t missed;

	if (!is_calendar(e)) {
		e->due_mono = now_mono + pv_sched_jitter(e->name, 0, e->job.jitter);
		return;
	}
	e->has_last_slot = e->job.has_last_slot;
	e->last_slot = e->job.last_slot;
	plan_calendar(e, now_wall);
	if (!e->has_last_slot || !pv_cron_prev_in(e->job.cron, e->job.tz, e->last_slot, now_wall, &missed))
		return;
	if (e->job.catch_up) {
		/* Several missed slots still make one run: the latest. */
		e->waiting = true;
		e->wait_seq = s->seq++;
		e->wait_slot = missed;
		e->wait_due = now_mono;
		e->wait_trigger = PV_SCHED_CATCH_UP;
		e->has_deadline = e->job.grace > 0;
		e->wait_deadline = now_mono + e->job.grace;
	} else {
		e->pending_skip = true;
		e->skip_slot = missed;
	}
}

static bool
same_schedule(const struct pv_sched_job *a, const struct pv_sched_job *b)
{
	if ((a->cron == NULL) != (b->cron == NULL))
		return false;
	if (a->cron == NULL)
		return a->every == b->every;
	return strcmp(pv_cron_text(a->cron), pv_cron_text(b->cron)) == 0 &&
	       strcmp(pv_tz_name(a->tz), pv_tz_name(b->tz)) == 0;
}

static bool
validate(const struct pv_sched_job *jobs, size_t njobs, struct pv_error *err)
{
	for (size_t i = 0; i < njobs; i++) {
		const struct pv_sched_job *j = &jobs[i];

		if (j->name == NULL || j->name[0] == '\0')
			return pv_error_set(err, PV_ERR_SCHEDULE, "job %zu has no name", i + 1);
		for (size_t k = 0; k < i; k++)
			if (strcmp(jobs[k].name, j->name) == 0)
				return pv_error_set(err, PV_ERR_SCHEDULE, "job \"%s\" is scheduled twice",
				                    j->name);
		if (j->cron != NULL && j->every > 0)
			return pv_error_set(err, PV_ERR_SCHEDULE,
			                    "job \"%s\" has both a schedule and an interval", j->name);
		if (j->cron == NULL && !(j->every > 0))
			return pv_error_set(err, PV_ERR_SCHEDULE,
			                    "job \"%s\" has neither a schedule nor an interval", j->name);
		if (j->cron != NULL && j->tz == NULL)
			return pv_error_set(err, PV_ERR_SCHEDULE,
			                    "job \"%s\" has a schedule but no time zone", j->name);
		if (j->jitter < 0 || j->grace < 0)
			return pv_error_set(err, PV_ERR_SCHEDULE,
			                    "job \"%s\": jitter and grace must not be negative", j->name);
	}
	return true;
}

bool
pv_sched_configure(struct pv_sched *s, const struct pv_sched_job *jobs, size_t njobs, time_t now_wall,
                   double now_mono, struct pv_error *err)
{
	struct entry *ne;
	size_t n = 0;

	if (!validate(jobs, njobs, err))
		return false;
	ne = pv_calloc(njobs + s->n + 1, sizeof(*ne));
	for (size_t i = 0; i < njobs; i++) {
		struct entry *e = &ne[n++];
		struct entry *old = find(s, jobs[i].name, false);

		if (old != NULL) {
			bool changed = !same_schedule(&old->job, &jobs[i]);

			*e = *old;
			old->name = NULL; /* moved: run and miss pointers handed out stay valid */
			e->job = jobs[i];
			e->job.name = e->name;
			if (changed && is_calendar(e)) {
				plan_calendar(e, now_wall);
			} else if (changed) {
				e->has_next = false;
				e->due_mono = now_mono + pv_sched_jitter(e->name, 0, e->job.jitter);
			}
		} else {
			e->name = pv_strdup(jobs[i].name);
			e->job = jobs[i];
			e->job.name = e->name;
			init_entry(s, e, now_wall, now_mono);
		}
	}
	for (size_t i = 0; i < s->n; i++) {
		struct entry *old = &s->e[i];

		if (old->name == NULL)
			continue;
		if (old->running) {
			/* Still holds its heavy slot until it finishes; never scheduled again. */
			ne[n] = *old;
			ne[n].removed = true;
			ne[n].waiting = false;
			ne[n].pending_skip = false;
			ne[n].job.cron = NULL;
			ne[n].job.tz = NULL;
			n++;
		} else {
			free(old->name);
		}
	}
	free(s->e);
	s->e = ne;
	s->n = n;
	return true;
}

/* The wall clock moved differently from the monotonic one: recompute every calendar plan from now. */
static void
replan_after_jump(struct pv_sched *s, struct pv_sched_tick *out, bool forward, time_t now_wall,
                  double now_mono)
{
	for (size_t i = 0; i < s->n; i++) {
		struct entry *e = &s->e[i];
		time_t latest;

		if (e->removed || !is_calendar(e))
			continue;
		if (forward && e->has_next && start_of(e, e->next_due) <= now_wall) {
			/* Jumped over one or more slots: at most one catch-up run, for the latest. */
			latest = e->next_due;
			pv_cron_prev_in(e->job.cron, e->job.tz, e->next_due, now_wall, &latest);
			if (e->job.catch_up)
				offer(s, out, e, latest, PV_SCHED_CATCH_UP, 0, now_mono);
			else
				miss(out, e, PV_SCHED_MISS_SKIPPED, latest);
		}
		plan_calendar(e, now_wall);
	}
}

static void
start(struct pv_sched *s, struct pv_sched_tick *out, struct entry *e)
{
	e->waiting = false;
	e->running = true;
	e->run_heavy = e->job.heavy;
	if (e->run_heavy)
		s->running_heavy++;
	mark_handled(e, e->wait_slot);
	push_run(out, e, e->wait_trigger, e->wait_slot);
}

static int
cmp_seq(const void *a, const void *b)
{
	const struct entry *x = *(struct entry *const *)a, *y = *(struct entry *const *)b;

	return (x->wait_seq > y->wait_seq) - (x->wait_seq < y->wait_seq);
}

/* Start waiting runs in the order they came due; light jobs never wait behind heavy ones. */
static void
dispatch(struct pv_sched *s, struct pv_sched_tick *out, double now_mono)
{
	struct entry **q = pv_calloc(s->n + 1, sizeof(*q));
	size_t nq = 0;

	for (size_t i = 0; i < s->n; i++)
		if (s->e[i].waiting && !s->e[i].removed)
			q[nq++] = &s->e[i];
	qsort(q, nq, sizeof(*q), cmp_seq);
	for (size_t i = 0; i < nq; i++) {
		struct entry *e = q[i];

		if (e->running) {
			/* Started by hand while it waited. */
			e->waiting = false;
			miss(out, e, PV_SCHED_MISS_OVERLAP, e->wait_slot);
		} else if (!e->job.heavy) {
			start(s, out, e);
		} else if (e->has_deadline && now_mono >= e->wait_deadline) {
			e->waiting = false;
			miss(out, e, PV_SCHED_MISS_GRACE, e->wait_slot);
		} else if (s->running_heavy < (size_t)s->max_parallel) {
			start(s, out, e);
		}
	}
	free(q);
}

static void
due_calendar(struct pv_sched *s, struct pv_sched_tick *out, struct entry *e, time_t now_wall, double now_mono)
{
	time_t slot, later;

	if (!e->has_next || start_of(e, e->next_due) > now_wall)
		return;
	slot = e->next_due;
	/* A late tick that passed several slots starts only the latest whose start has come. */
	if (pv_cron_prev_in(e->job.cron, e->job.tz, slot, now_wall, &later) && start_of(e, later) <= now_wall)
		slot = later;
	e->has_next = pv_cron_next(e->job.cron, e->job.tz, slot, &e->next_due);
	offer(s, out, e, slot, PV_SCHED_SCHEDULE, difftime(now_wall, start_of(e, slot)), now_mono);
}

static void
due_interval(struct pv_sched *s, struct pv_sched_tick *out, struct entry *e, time_t now_wall, double now_mono)
{
	double lateness;

	if (e->due_mono > now_mono)
		return;
	lateness = now_mono - e->due_mono;
	/* Keep the phase (no drift), but never owe a backlog of runs. */
	e->due_mono += e->job.every;
	if (e->due_mono <= now_mono)
		e->due_mono = now_mono + e->job.every;
	offer(s, out, e, now_wall, PV_SCHED_SCHEDULE, lateness, now_mono);
}

void
pv_sched_tick(struct pv_sched *s, time_t now_wall, double now_mono, struct pv_sched_tick *out)
{
	memset(out, 0, sizeof(*out));
	if (s->ticked) {
		double drift = difftime(now_wall, s->last_wall) - (now_mono - s->last_mono);

		if (fabs(drift) > PV_SCHED_JUMP_SECONDS) {
			out->clock_jumped = true;
			replan_after_jump(s, out, drift > 0, now_wall, now_mono);
		}
	}
	s->ticked = true;
	s->last_wall = now_wall;
	s->last_mono = now_mono;
	for (size_t i = 0; i < s->n; i++) {
		struct entry *e = &s->e[i];

		if (e->removed)
			continue;
		if (e->pending_skip) {
			e->pending_skip = false;
			miss(out, e, PV_SCHED_MISS_SKIPPED, e->skip_slot);
		}
		if (is_calendar(e))
			due_calendar(s, out, e, now_wall, now_mono);
		else
			due_interval(s, out, e, now_wall, now_mono);
	}
	dispatch(s, out, now_mono);
}

void
pv_sched_tick_clear(struct pv_sched_tick *out)
{
	free(out->runs);
	free(out->missed);
	memset(out, 0, sizeof(*out));
}

double
pv_sched_next_wakeup(const struct pv_sched *s, time_t now_wall, double now_mono)
{
	double best = PV_SCHED_MAX_SLEEP;

	for (size_t i = 0; i < s->n; i++) {
		const struct entry *e = &s->e[i];
		double d = PV_SCHED_MAX_SLEEP;

		if (e->removed)
			continue;
		if (e->pending_skip)
			d = 0;
		if (e->waiting) {
			if (!e->job.heavy || s->running_heavy < (size_t)s->max_parallel)
				d = 0;
			else if (e->has_deadline && e->wait_deadline - now_mono < d)
				d = e->wait_deadline - now_mono;
		}
		if (is_calendar(e) && e->has_next && difftime(start_of(e, e->next_due), now_wall) < d)
			d = difftime(start_of(e, e->next_due), now_wall);
		if (!is_calendar(e) && e->due_mono - now_mono < d)
			d = e->due_mono - now_mono;
		if (d < best)
			best = d;
	}
	return best < 0 ? 0 : best;
}

bool
pv_sched_run_started(struct pv_sched *s, const char *job, struct pv_error *err)
{
	struct entry *e = find(s, job, false);

	if (e == NULL)
		return pv_error_set(err, PV_ERR_NOT_FOUND, "no job named \"%s\"", job);
	if (e->running)
		return pv_error_set(err, PV_ERR_BUSY, "job \"%s\" is already running", job);
	e->running = true;
	e->run_heavy = e->job.heavy;
	if (e->run_heavy)
		s->running_heavy++;
	return true;
}

void
pv_sched_run_finished(struct pv_sched *s, const char *job)
{
	struct entry *e = find(s, job, true);

	/* A removed job and a re-added one of the same name: the running one is the one to finish. */
	for (size_t i = 0; i < s->n; i++)
		if (s->e[i].running && strcmp(s->e[i].name, job) == 0)
			e = &s->e[i];
	if (e == NULL || !e->running)
		return;
	e->running = false;
	if (e->run_heavy)
		s->running_heavy--;
	if (e->removed) {
		size_t i = (size_t)(e - s->e);

		free(e->name);
		memmove(&s->e[i], &s->e[i + 1], (s->n - i - 1) * sizeof(*s->e));
		s->n--;
	}
}

bool
pv_sched_is_running(const struct pv_sched *s, const char *job)
{
	const struct entry *e = find(s, job, false);

	return e != NULL && e->running;
}

bool
pv_sched_last_slot(const struct pv_sched *s, const char *job, time_t *slot)
{
	const struct entry *e = find(s, job, false);

	if (e == NULL || !e->has_last_slot)
		return false;
	*slot = e->last_slot;
	return true;
}

bool
pv_sched_next_due(const struct pv_sched *s, const char *job, time_t *slot)
{
	const struct entry *e = find(s, job, false);

	if (e == NULL || !is_calendar(e) || !e->has_next)
		return false;
	*slot = e->next_due;
	return true;
}

bool
pv_sched_next_start(const struct pv_sched *s, const char *job, time_t now_wall, double now_mono, time_t *when)
{
	const struct entry *e = find(s, job, false);

	if (e == NULL)
		return false;
	if (is_calendar(e)) {
		if (!e->has_next)
			return false;
		*when = e->next_due + pv_sched_jitter(e->name, e->next_due, e->job.jitter);
		return true;
	}
	/* Interval jobs live on the monotonic clock: translate through "now". */
	*when = now_wall + (time_t)(e->due_mono - now_mono + 0.5);
	if (*when < now_wall)
		*when = now_wall;
	return true;
}

size_t
pv_sched_running_heavy(const struct pv_sched *s)
{
	return s->running_heavy;
}

const char *
pv_sched_trigger_name(enum pv_sched_trigger trigger)
{
	return trigger == PV_SCHED_CATCH_UP ? "catch_up" : "schedule";
}

const char *
pv_sched_miss_reason_name(enum pv_sched_miss_reason r)
{
	switch (r) {
	case PV_SCHED_MISS_OVERLAP: return "overlap";
	case PV_SCHED_MISS_GRACE: return "grace";
	case PV_SCHED_MISS_SKIPPED: return "skipped";
	}
	return "unknown";
}
