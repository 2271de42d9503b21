/* The running daemon: configuration in force, state, scheduler, job runs, reload and shutdown. */
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>

#include "alert/engine.h"
#include "alert/rules.h"
#include "alert/snapshot.h"
#include "config/config.h"
#include "crypto/crypto.h"
#include "ctl/commands.h"
#include "ctl/report.h"
#include "ctl/server.h"
#include "jobs/catalog.h"
#include "jobs/health.h"
#include "jobs/job.h"
#include "jobs/probe.h"
#include "loop/notify.h"
#include "loop/proc.h"
#include "metrics/metrics.h"
#include "notify/digest.h"
#include "notify/heartbeat.h"
#include "notify/http.h"
#include "notify/notify.h"
#include "notify/outbox.h"
#include "sched/cron.h"
#include "sched/sched.h"
#include "state/state.h"
#include "util/log.h"
#include "util/mem.h"

/* How long SIGTERM waits for running jobs to stop before exiting anyway. */
#define STOP_BOUND_SEC 20
/* Jobs enforce their own timeout; the runner cancels one that is still running this much later. */
#define DEADLINE_SLACK_SEC 10
/* Alert rules are evaluated after every run and at least this often, so time-based rules fire on time. */
#define ALERT_EVAL_SEC 30
/* Evaluations after runs are at most this often: with many health jobs, runs end many times a second. */
#define ALERT_COALESCE_SEC 1.0
/*
 * The scheduler's timer is dispatched before other ready callbacks, and those yield to it every few ms:
 * with hundreds of connections ready at once (each SCRAM exchange costs milliseconds of CPU in libpq),
 * due runs still start on time. Every other event has the default, lower priority.
 */
#define LOOP_PRIORITIES 2
#define LOOP_SLICE_USEC 5000
/* The persisted alert set in the state database's key/value store. */
#define ALERT_KV_KEY "alerts"
/* Maintenance mode: {"since", "until", "author", "comment"} in the key/value store; "null" when off. */
#define MAINTENANCE_KV_KEY "maintenance"
/* daemon.keep_history: the first pass soon after start, then hourly, in batches between other events. */
#define HISTORY_FIRST_DELAY 5.0
#define HISTORY_EVERY       3600.0
#define HISTORY_BATCH       1000 /* about 20 ms of the loop per statement at 1.5 M runs */
/* Longest silence or maintenance window: an expiry is required, and a forgotten one must end. */
#define SUPPRESS_MAX (30 * 86400)

struct active_run {
	struct pv_job_run run;
	const struct pv_job_ops *ops;
	struct pv_daemon *d;
	struct event *finish_ev;   /* completion is handled outside the job's own callbacks */
	struct event *deadline_ev; /* safety net when a job does not honour its own deadline */
	bool timed_out;
	double late; /* seconds from due to start of a scheduled run; < 0 for manual runs */
	struct active_run *next;
};

struct pv_daemon {
	int lock_fd; /* flock on STATE_DIR/pgvigild.lock: one daemon per state directory */
	struct event_base *base;
	struct evdns_base *dns;
	char *config_path;
	struct pv_config *cfg;
	struct pv_state *state;
	struct pv_sched *sched;
	struct pv_ctl_server *ctl;
	struct pv_metrics *metrics; /* the /metrics endpoint, idle without daemon.metrics_listen */
	struct event *ev_hup, *ev_term, *ev_int, *ev_tick, *ev_stop;
	struct event *ev_history;            /* forgets what daemon.keep_history no longer keeps */
	struct pv_state_pruned history_pass; /* deleted so far in the pass under way */
	time_t started;
	double started_mono;
	struct {
		time_t at;
		bool ok;
		int count;
		char error[PV_ERROR_MSG_MAX];
	} reload;
	struct active_run *runs;
	bool stopping;
	int ready_fd;
	/* Alerts: the engine's state, and what the next evaluation is told besides the state database. */
	struct pv_http *http;
	struct pv_outbox *outbox;
	struct pv_alert_set alerts;
	struct event *ev_alert;
	struct pv_alert_snap_notifier *broken; /* notifiers that answered with a permanent error */
	size_t n_broken;
	struct pv_alert_snap_event *events; /* info events since the last evaluation */
	size_t n_events;
	struct pv_alert_snap_missed *missed; /* missed runs since the last evaluation */
	size_t n_missed;
	char *alerts_saved; /* the set as last written: an unchanged set is not written again */
	struct pv_heartbeat *heartbeat;
	struct pv_digest *digest;
	double alert_ok_mono;               /* when an evaluation last completed (monotonic) */
	char alert_error[PV_ERROR_MSG_MAX]; /* why the last evaluation failed, "" when it did not */
	double alert_last_mono;             /* when the rules were last evaluated */
	bool alert_soon;                    /* an evaluation after a run is already scheduled */
};

static void schedule_tick(struct pv_daemon *d, double delay);
static void alert_schedule(struct pv_daemon *d, double delay);
static void alert_evaluate(struct pv_daemon *d);
static void alert_after_run(struct pv_daemon *d);
static void alert_note_run(struct pv_daemon *d, const struct pv_job_run *run);
static void fd_limit_check(const struct pv_config *cfg);
static void history_cb(evutil_socket_t fd, short what, void *arg);
static void alert_note_missed(struct pv_daemon *d, const struct pv_sched_miss *m);
static json_t *time_json(time_t t);

static void
strv_push(struct pv_strv *sv, char *s)
{
	sv->v = pv_realloc(sv->v, (sv->n + 1) * sizeof(*sv->v));
	sv->v[sv->n++] = s;
}

bool
pv_daemon_check_job_types(const struct pv_config *cfg, struct pv_strv *problems)
{
	bool ok = true;

	for (size_t i = 0; i < cfg->n_jobs; i++) {
		const struct pv_config_job *job = &cfg->jobs[i];
		if (pv_jobs_ops(job->type) != NULL)
			continue;
		ok = false;
		if (problems != NULL)
			strv_push(problems,
			          pv_asprintf("jobs.%s: job type \"%s\" is not yet available in pgvigil %s",
			                      job->name, pv_job_type_name(job->type), PV_VERSION));
	}
	return ok;
}

/* ---- loading ---- */

static struct pv_config *
load_config(const char *path, struct pv_error *err)
{
	struct pv_config_diag diag = {0};
	struct pv_config *cfg = pv_config_load(path, &diag, err);
	struct pv_strv problems = {0};

	for (size_t i = 0; i < diag.errors.n; i++)
		pv_log_error("configuration error: %s", diag.errors.v[i]);
	for (size_t i = 0; i < diag.warnings.n; i++)
		pv_log_warn("configuration warning: %s", diag.warnings.v[i]);
	if (cfg == NULL && diag.errors.n > 1)
		pv_error_prefix(err, "(%zu errors, first) ", diag.errors.n);
	pv_config_diag_free(&diag);
	if (cfg == NULL)
		return NULL;
	if (!pv_daemon_check_job_types(cfg, &problems)) {
		for (size_t i = 0; i < problems.n; i++)
			pv_log_error("%s", problems.v[i]);
		pv_error_set(err, PV_ERR_CONFIG, "%s; remove the job or upgrade pgvigil", problems.v[0]);
		for (size_t i = 0; i < problems.n; i++)
			free(problems.v[i]);
		free(problems.v);
		pv_config_unref(cfg);
		return NULL;
	}
	return cfg;
}

/* ---- job runs ---- */

static struct active_run *
find_running(struct pv_daemon *d, const char *job)
{
	for (struct active_run *ar = d->runs; ar != NULL; ar = ar->next) {
		if (strcmp(ar->run.job->name, job) == 0)
			return ar;
	}
	return NULL;
}

/* A run end that could not be written (database busy, disk full) is retried, so its outcome is
 * not lost to a transient error. */
struct pending_end {
	struct pv_daemon *d;
	struct event *ev;
	int64_t id;
	time_t finished;
	double duration;
	char *result, *cause, *figures;
	int attempts;
};

static void
pending_end_free(struct pending_end *pe)
{
	event_free(pe->ev);
	free(pe->result);
	free(pe->cause);
	free(pe->figures);
	free(pe);
}

static void
pending_end_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pending_end *pe = arg;
	struct pv_error err;
	struct timeval tv;

	if (pv_state_run_end(pe->d->state, pe->id, pe->finished, pe->duration, pe->result, pe->cause,
	                     pe->figures, &err)) {
		pv_log_notice("run end recorded after %d retries run=%lld", pe->attempts + 1,
		              (long long)pe->id);
		pending_end_free(pe);
		return;
	}
	if (++pe->attempts >= 8) {
		pv_log_error("giving up recording run end run=%lld result=%s error=%s", (long long)pe->id,
		             pe->result, pv_log_quote(err.msg));
		pending_end_free(pe);
		return;
	}
	tv.tv_sec = 1 << pe->attempts;
	tv.tv_usec = 0;
	event_add(pe->ev, &tv);
}

static bool
record_end(struct pv_daemon *d, int64_t id, double duration, const char *result, const char *cause,
           const char *figures, struct pv_error *err)
{
	struct pending_end *pe;
	struct timeval tv = {1, 0};
	time_t now = time(NULL);

	if (pv_state_run_end(d->state, id, now, duration, result, cause, figures, err))
		return true;
	pe = pv_calloc(1, sizeof(*pe));
	pe->d = d;
	pe->id = id;
	pe->finished = now;
	pe->duration = duration;
	pe->result = pv_strdup(result);
	pe->cause = pv_strdup(cause);
	pe->figures = pv_strdup(figures);
	pe->ev = evtimer_new(d->base, pending_end_cb, pe);
	event_add(pe->ev, &tv);
	return false;
}

static void
finish_cb(evutil_socket_t fd, short what, void *arg)
{
	struct active_run *ar = arg;
	struct pv_daemon *d = ar->d;
	struct pv_job_run *run = &ar->run;
	struct pv_error err;
	double duration = pv_now_mono() - run->started_mono;
	char *figures;

	if (ar->timed_out && run->result == PV_RUN_CANCELLED) {
		run->result = PV_RUN_TIMEOUT;
		snprintf(run->cause, sizeof(run->cause), "timeout after %llds: the run was cancelled",
		         (long long)pv_config_job_timeout(run->job));
	}
	if (ar->late >= 0) {
		if (run->figures == NULL)
			run->figures = json_object();
		json_object_set_new(run->figures, "late_seconds", json_real(ar->late));
	}
	figures = run->figures != NULL ? json_dumps(run->figures, JSON_COMPACT | JSON_SORT_KEYS) : NULL;

	if (!record_end(d, run->id, duration, pv_run_result_name(run->result),
	                run->cause[0] ? run->cause : NULL, figures, &err))
		pv_log_error("cannot record run end job=%s run=%lld error=%s (retrying)", run->job->name,
		             (long long)run->id, pv_log_quote(err.msg));
	if (run->result == PV_RUN_OK)
		pv_log_info("job finished job=%s run=%lld database=%s result=ok duration=%.3fs",
		            run->job->name, (long long)run->id,
		            run->job->database ? run->job->database->name : "-", duration);
	else
		pv_log_warn("job finished job=%s run=%lld database=%s result=%s duration=%.3fs cause=%s",
		            run->job->name, (long long)run->id,
		            run->job->database ? run->job->database->name : "-",
		            pv_run_result_name(run->result), duration, pv_log_quote(run->cause));
	pv_sched_run_finished(d->sched, run->job->name);
	alert_note_run(d, run);

	for (struct active_run **pp = &d->runs; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == ar) {
			*pp = ar->next;
			break;
		}
	}
	free(figures);
	json_decref(run->figures);
	event_free(ar->finish_ev);
	event_free(ar->deadline_ev);
	pv_config_unref(run->cfg);
	free(ar);

	if (d->stopping) {
		if (d->runs == NULL)
			event_base_loopexit(d->base, NULL);
		return;
	}
	/* A heavy job may be waiting for this slot. */
	schedule_tick(d, 0);
	alert_after_run(d);
}

static void
deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct active_run *ar = arg;

	pv_log_error("job outlived its timeout, cancelling job=%s run=%lld timeout=%llds", ar->run.job->name,
	             (long long)ar->run.id, (long long)pv_config_job_timeout(ar->run.job));
	ar->timed_out = true;
	ar->run.cancel_requested = true;
	if (ar->ops->cancel != NULL)
		ar->ops->cancel(&ar->run);
}

static void
run_done(struct pv_job_run *run)
{
	struct active_run *ar = (struct active_run *)run;
	event_active(ar->finish_ev, EV_TIMEOUT, 0);
}

/* Undo record_run() for a run whose start could not be recorded. */
static void
discard_run(struct pv_daemon *d, struct active_run *ar, bool from_sched)
{
	for (struct active_run **pp = &d->runs; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == ar) {
			*pp = ar->next;
			break;
		}
	}
	if (!from_sched)
		pv_sched_run_finished(d->sched, ar->run.job->name);
	pv_config_unref(ar->run.cfg);
	json_decref(ar->run.figures);
	event_free(ar->finish_ev);
	event_free(ar->deadline_ev);
	free(ar);
}

/*
 * The first half of starting a run: its row in the state database and its place among the running.
 * from_sched: the planner already counts the run as started; due_mono is when it came due.
 */
static struct active_run *
record_run(struct pv_daemon *d, const struct pv_config_job *job, const char *trigger, time_t slot,
           bool from_sched, double due_mono, struct pv_error *err)
{
	const struct pv_job_ops *ops = pv_jobs_ops(job->type);
	struct active_run *ar;
	struct pv_job_run *run;

	if (ops == NULL) {
		pv_error_set(err, PV_ERR_INTERNAL, "job type %s is not available",
		             pv_job_type_name(job->type));
		return NULL;
	}
	if (find_running(d, job->name) != NULL) {
		pv_error_set(err, PV_ERR_BUSY, "job %s is already running", job->name);
		return NULL;
	}
	if (!from_sched && !pv_sched_run_started(d->sched, job->name, err))
		return NULL;

	ar = pv_calloc(1, sizeof(*ar));
	ar->d = d;
	ar->ops = ops;
	ar->finish_ev = event_new(d->base, -1, 0, finish_cb, ar);
	ar->deadline_ev = evtimer_new(d->base, deadline_cb, ar);
	ar->late = from_sched ? due_mono : -1; /* made a lateness by launch_run() */
	run = &ar->run;
	run->cfg = pv_config_ref(d->cfg);
	run->job = job;
	run->base = d->base;
	run->dns = d->dns;
	run->state = d->state;
	run->scheduled_for = slot;
	run->started = time(NULL);
	run->started_mono = pv_now_mono();
	run->deadline_mono = run->started_mono + (double)pv_config_job_timeout(job);
	run->trigger = trigger;
	run->figures = json_object();
	run->on_done = run_done;
	run->runner_arg = d;
	ar->next = d->runs;
	d->runs = ar;

	if (!pv_state_run_begin(d->state, job->name, pv_job_type_name(job->type),
	                        job->database != NULL ? job->database->name : NULL, trigger, slot,
	                        run->started, &run->id, err)) {
		pv_error_prefix(err, "cannot record run start: ");
		discard_run(d, ar, from_sched);
		return NULL;
	}
	return ar;
}

/* The second half: the job itself starts. */
static void
launch_run(struct pv_daemon *d, struct active_run *ar)
{
	struct pv_job_run *run = &ar->run;
	const struct pv_config_job *job = run->job;
	struct timeval tv = {(time_t)pv_config_job_timeout(job) + DEADLINE_SLACK_SEC, 0};

	if (ar->late >= 0) {
		ar->late = pv_now_mono() - ar->late;
		if (ar->late < 0)
			ar->late = 0; /* the timer may fire a few ms early; the planner still saw it due */
	}
	pv_log_info("job started job=%s run=%lld database=%s type=%s trigger=%s", job->name,
	            (long long)run->id, job->database ? job->database->name : "-",
	            pv_job_type_name(job->type), run->trigger);
	event_add(ar->deadline_ev, &tv);
	if (!ar->ops->start(run)) {
		/* The run is recorded as failed through the normal completion path. */
		if (run->cause[0] == '\0')
			snprintf(run->cause, sizeof(run->cause), "could not start");
		run->result = PV_RUN_FAILED;
		event_active(ar->finish_ev, EV_TIMEOUT, 0);
	}
}

static bool
start_run(struct pv_daemon *d, const struct pv_config_job *job, const char *trigger, time_t slot,
          bool from_sched, double due_mono, int64_t *id_out, struct pv_error *err)
{
	struct active_run *ar = record_run(d, job, trigger, slot, from_sched, due_mono, err);

	if (ar == NULL)
		return false;
	if (id_out != NULL)
		*id_out = ar->run.id;
	launch_run(d, ar);
	return true;
}

/* ---- scheduling ---- */

static void
persist_slot(struct pv_daemon *d, const char *job)
{
	struct pv_error err;
	time_t slot;

	if (!pv_sched_last_slot(d->sched, job, &slot))
		return;
	if (!pv_state_sched_set(d->state, job, slot, &err))
		pv_log_error("cannot record schedule job=%s error=%s", job, pv_log_quote(err.msg));
}

struct pv_sched_job
pv_daemon_sched_job(const struct pv_config_job *job)
{
	return (struct pv_sched_job){
	        .name = job->name,
	        .cron = job->cron,
	        .tz = job->tz,
	        .every = (double)job->every,
	        .jitter = (int)job->jitter,
	        .grace = (int)job->grace,
	        .catch_up = job->catch_up,
	        .heavy = job->heavy,
	};
}

static bool
sched_load(struct pv_daemon *d, struct pv_config *cfg, struct pv_error *err)
{
	time_t now = time(NULL);
	struct pv_sched_job *jobs = pv_calloc(cfg->n_jobs, sizeof(*jobs));
	bool *first_sight = pv_calloc(cfg->n_jobs, sizeof(*first_sight));
	bool ok;

	for (size_t i = 0; i < cfg->n_jobs; i++) {
		const struct pv_config_job *job = &cfg->jobs[i];
		struct pv_error serr;

		jobs[i] = pv_daemon_sched_job(job);
		if (job->cron == NULL)
			continue;
		jobs[i].has_last_slot = pv_state_sched_get(d->state, job->name, &jobs[i].last_slot, &serr);
		if (!jobs[i].has_last_slot && serr.code == PV_ERR_NOT_FOUND)
			first_sight[i] = true;
		else if (!jobs[i].has_last_slot)
			pv_log_error("cannot read schedule job=%s error=%s: no catch-up this time", job->name,
			             pv_log_quote(serr.msg));
	}
	ok = pv_sched_configure(d->sched, jobs, cfg->n_jobs, now, pv_now_mono(), err);
	if (ok) {
		pv_sched_set_max_parallel(d->sched, cfg->daemon.max_parallel_jobs);
		for (size_t i = 0; i < cfg->n_jobs; i++) {
			struct pv_error serr;
			/* First sight of a calendar job: nothing can have been missed before now. */
			if (first_sight[i] && !pv_state_sched_set(d->state, cfg->jobs[i].name, now, &serr))
				pv_log_error("cannot record schedule job=%s error=%s", cfg->jobs[i].name,
				             pv_log_quote(serr.msg));
		}
	}
	free(first_sight);
	free(jobs);
	return ok;
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_daemon *d = arg;
	struct pv_sched_tick tick;
	time_t now = time(NULL);
	double mono = pv_now_mono();
	struct active_run **ars;
	struct pv_error berr;
	bool batch;

	if (d->stopping)
		return;
	pv_sched_tick(d->sched, now, mono, &tick);
	if (tick.clock_jumped)
		pv_log_warn("wall clock jumped: schedule recomputed");
	for (size_t i = 0; i < tick.nmissed; i++) {
		const struct pv_sched_miss *m = &tick.missed[i];
		pv_log_warn("scheduled run missed job=%s slot=%lld reason=%s", m->job, (long long)m->slot,
		            pv_sched_miss_reason_name(m->reason));
		if (m->calendar)
			persist_slot(d, m->job);
		alert_note_missed(d, m);
	}
	/* The runs due together are recorded in one transaction (one sync, not one per run), then launched.
	 */
	ars = pv_calloc(tick.nruns + 1, sizeof(*ars));
	batch = tick.nruns > 1 && pv_state_batch_begin(d->state, &berr);
	if (tick.nruns > 1 && !batch)
		pv_log_warn("cannot batch run starts, recording them one by one error=%s",
		            pv_log_quote(berr.msg));
	for (size_t i = 0; i < tick.nruns; i++) {
		const struct pv_sched_run *r = &tick.runs[i];
		const struct pv_config_job *job = pv_config_job_find(d->cfg, r->job);
		struct pv_error err;

		if (r->calendar)
			persist_slot(d, r->job);
		if (job == NULL ||
		    (ars[i] = record_run(d, job, pv_sched_trigger_name(r->trigger), r->calendar ? r->slot : 0,
		                         true, r->due_mono, &err)) == NULL) {
			pv_log_error("cannot start job=%s error=%s", r->job,
			             job == NULL ? "not configured" : pv_log_quote(err.msg));
			pv_sched_run_finished(d->sched, r->job);
		}
	}
	if (batch && !pv_state_batch_commit(d->state, &berr)) {
		for (size_t i = 0; i < tick.nruns; i++) {
			if (ars[i] == NULL)
				continue;
			pv_log_error("cannot start job=%s error=%s", tick.runs[i].job,
			             pv_log_quote(berr.msg));
			discard_run(d, ars[i], true);
			ars[i] = NULL;
			pv_sched_run_finished(d->sched, tick.runs[i].job);
		}
	}
	for (size_t i = 0; i < tick.nruns; i++)
		if (ars[i] != NULL)
			launch_run(d, ars[i]);
	free(ars);
	pv_sched_tick_clear(&tick);
	schedule_tick(d, pv_sched_next_wakeup(d->sched, time(NULL), pv_now_mono()));
}

static void
schedule_tick(struct pv_daemon *d, double delay)
{
	struct timeval tv;

	if (delay < 0)
		delay = 0;
	/* Wake within a minute whatever the plan, so wall-clock jumps are noticed. */
	if (delay > 60)
		delay = 60;
	tv.tv_sec = (time_t)delay;
	tv.tv_usec = (suseconds_t)((delay - (double)tv.tv_sec) * 1e6);
	event_add(d->ev_tick, &tv);
}

/* ---- metrics ---- */

static void
metrics_view(void *arg, struct pv_metrics_view *out)
{
	struct pv_daemon *d = arg;

	out->state = d->state;
	out->cfg = d->cfg;
	out->alerts = &d->alerts;
	out->now = time(NULL);
	out->started = d->started;
	out->reload_ok = d->reload.ok;
	out->running = 0;
	for (struct active_run *ar = d->runs; ar != NULL; ar = ar->next)
		out->running++;
}

/* A new address that cannot be bound leaves the endpoint where it was: the reload itself stands. */
static void
metrics_reload(struct pv_daemon *d)
{
	struct pv_error err;

	if (!pv_metrics_listen(d->metrics, d->cfg->daemon.metrics_listen, &err))
		pv_log_error("metrics endpoint not moved, still serving address=%s error=%s",
		             pv_metrics_address(d->metrics) ? pv_metrics_address(d->metrics) : "-",
		             pv_log_quote(err.msg));
}

/* ---- history ---- */

static void
history_schedule(struct pv_daemon *d, double delay)
{
	struct timeval tv;

	if (d->ev_history == NULL)
		d->ev_history = evtimer_new(d->base, history_cb, d);
	if (d->ev_history == NULL || d->stopping)
		return;
	tv.tv_sec = (time_t)delay;
	tv.tv_usec = (suseconds_t)((delay - (double)tv.tv_sec) * 1e6);
	event_add(d->ev_history, &tv);
}

/*
 * One batch of forgetting per call: while a batch comes back full, the next runs at the next loop turn,
 * so jobs, control clients and scrapes are served in between; then again in an hour.
 */
static void
history_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_daemon *d = arg;
	struct pv_state_pruned p;
	struct pv_error err;
	time_t before = time(NULL) - (time_t)d->cfg->daemon.keep_history;

	if (!pv_state_prune_history(d->state, before, HISTORY_BATCH, &p, &err)) {
		pv_log_error("cannot forget old history error=%s", pv_log_quote(err.msg));
		memset(&d->history_pass, 0, sizeof(d->history_pass));
		history_schedule(d, HISTORY_EVERY);
		return;
	}
	d->history_pass.runs += p.runs;
	d->history_pass.notifications += p.notifications;
	d->history_pass.alert_log += p.alert_log;
	if (p.runs == HISTORY_BATCH || p.notifications == HISTORY_BATCH || p.alert_log == HISTORY_BATCH) {
		history_schedule(d, 0);
		return;
	}
	if (d->history_pass.runs + d->history_pass.notifications + d->history_pass.alert_log > 0) {
		char kept[32];
		pv_log_info("old history forgotten runs=%zu notifications=%zu alert_log=%zu keep_history=%s",
		            d->history_pass.runs, d->history_pass.notifications, d->history_pass.alert_log,
		            pv_duration_format(d->cfg->daemon.keep_history, kept, sizeof(kept)));
	}
	memset(&d->history_pass, 0, sizeof(d->history_pass));
	history_schedule(d, HISTORY_EVERY);
}

/* ---- alerts ---- */

static void
alert_schedule(struct pv_daemon *d, double delay)
{
	struct timeval tv;

	if (d->ev_alert == NULL || d->stopping)
		return;
	if (delay < 0)
		delay = 0;
	tv.tv_sec = (time_t)delay;
	tv.tv_usec = (suseconds_t)((delay - (double)tv.tv_sec) * 1e6);
	event_del(d->ev_alert);
	event_add(d->ev_alert, &tv);
}

static void
alert_cb(evutil_socket_t fd, short what, void *arg)
{
	alert_evaluate(arg);
}

static void
events_clear(struct pv_daemon *d)
{
	for (size_t i = 0; i < d->n_events; i++) {
		free((char *)d->events[i].job);
		free((char *)d->events[i].database);
		free((char *)d->events[i].backup_id);
		free((char *)d->events[i].detail);
	}
	free(d->events);
	d->events = NULL;
	d->n_events = 0;
	for (size_t i = 0; i < d->n_missed; i++) {
		free((char *)d->missed[i].job);
		free((char *)d->missed[i].database);
	}
	free(d->missed);
	d->missed = NULL;
	d->n_missed = 0;
}

static void
broken_clear(struct pv_daemon *d)
{
	for (size_t i = 0; i < d->n_broken; i++) {
		free((char *)d->broken[i].name);
		free((char *)d->broken[i].reason);
	}
	free(d->broken);
	d->broken = NULL;
	d->n_broken = 0;
}

/* The info events of a finished run, for the next evaluation. */
static void
alert_note_run(struct pv_daemon *d, const struct pv_job_run *run)
{
	struct pv_alert_snap_event *e;
	enum pv_rule rule;
	json_t *f = run->figures, *v;

	if (run->result == PV_RUN_CANCELLED)
		return;
	if (run->job->type == PV_JOB_BACKUP && run->result == PV_RUN_OK)
		rule = PV_RULE_BACKUP_SUCCEEDED;
	else if (run->job->type == PV_JOB_RESTORE_PROBE)
		rule = PV_RULE_RESTORE_PROBE_RESULT;
	else if (run->job->type == PV_JOB_DRILL)
		rule = PV_RULE_DRILL_SUMMARY;
	else
		return;
	d->events = pv_realloc(d->events, (d->n_events + 1) * sizeof(*d->events));
	e = &d->events[d->n_events++];
	memset(e, 0, sizeof(*e));
	e->rule = rule;
	e->job = pv_strdup(run->job->name);
	e->database = run->job->database != NULL ? pv_strdup(run->job->database->name) : NULL;
	v = json_object_get(f, "backup_id");
	e->backup_id = json_is_string(v) ? pv_strdup(json_string_value(v)) : NULL;
	e->ok = run->result == PV_RUN_OK;
	e->size = json_integer_value(json_object_get(f, "size"));
	v = json_object_get(f, rule == PV_RULE_BACKUP_SUCCEEDED ? "dump_seconds" : "total_seconds");
	e->seconds = json_is_number(v) ? json_number_value(v) : pv_now_mono() - run->started_mono;
	e->at = time(NULL);
	e->detail = run->cause[0] != '\0' ? pv_strdup(run->cause) : NULL;
}

static void
alert_note_missed(struct pv_daemon *d, const struct pv_sched_miss *m)
{
	const struct pv_config_job *job = pv_config_job_find(d->cfg, m->job);

	for (size_t i = 0; i < d->n_missed; i++)
		if (strcmp(d->missed[i].job, m->job) == 0) {
			d->missed[i].count++;
			if (m->slot > d->missed[i].last_slot)
				d->missed[i].last_slot = m->slot;
			return;
		}
	d->missed = pv_realloc(d->missed, (d->n_missed + 1) * sizeof(*d->missed));
	d->missed[d->n_missed++] = (struct pv_alert_snap_missed){
	        .job = pv_strdup(m->job),
	        .database = job != NULL && job->database != NULL ? pv_strdup(job->database->name) : NULL,
	        .count = 1,
	        .last_slot = m->slot,
	};
}

static void
outbox_broken_cb(const char *notifier, const char *reason, void *arg)
{
	struct pv_daemon *d = arg;
	struct pv_alert_snap_notifier *b = NULL;

	for (size_t i = 0; i < d->n_broken; i++)
		if (strcmp(d->broken[i].name, notifier) == 0)
			b = &d->broken[i];
	if (b == NULL) {
		d->broken = pv_realloc(d->broken, (d->n_broken + 1) * sizeof(*d->broken));
		b = &d->broken[d->n_broken++];
		b->name = pv_strdup(notifier);
		b->broken = true;
		b->reason = NULL;
	}
	free((char *)b->reason);
	b->reason = reason != NULL ? pv_strdup(reason) : NULL;
	/* Not from inside the outbox's callback: the evaluation queues into the outbox. */
	alert_schedule(d, 0);
}

static void
outbox_event_cb(const struct pv_outbox_event *ev, void *arg)
{
	struct pv_daemon *d = arg;

	if (ev->kind != PV_OUTBOX_SENT)
		return;
	/* A delivery proves the notifier works again: notifier_broken resolves at the next evaluation. */
	for (size_t i = 0; i < d->n_broken; i++)
		if (strcmp(d->broken[i].name, ev->notifier) == 0) {
			free((char *)d->broken[i].name);
			free((char *)d->broken[i].reason);
			d->broken[i] = d->broken[--d->n_broken];
			alert_schedule(d, 0);
			break;
		}
}

static void
alert_set_notifiers(struct pv_daemon *d, const struct pv_config *cfg)
{
	pv_outbox_set_notifiers(d->outbox, cfg->notifiers, cfg->n_notifiers);
	pv_heartbeat_set_notifiers(d->heartbeat, cfg->notifiers, cfg->n_notifiers);
	pv_digest_set_notifiers(d->digest, cfg->notifiers, cfg->n_notifiers, cfg->daemon.timezone);
}

static void
alert_load(struct pv_daemon *d)
{
	struct pv_error err;
	char *text = NULL;
	json_t *j;

	if (!pv_state_kv_get(d->state, ALERT_KV_KEY, &text, &err)) {
		if (err.code != PV_ERR_NOT_FOUND)
			pv_log_error("cannot read the alert set, starting with none error=%s",
			             pv_log_quote(err.msg));
		return;
	}
	j = json_loads(text, 0, NULL);
	if (j == NULL || !pv_alert_set_from_json(j, &d->alerts, &err))
		pv_log_error("cannot read the alert set, starting with none error=%s",
		             j == NULL ? "\"not JSON\"" : pv_log_quote(err.msg));
	else if (d->alerts.n > 0)
		pv_log_notice("alert set loaded alerts=%zu", d->alerts.n);
	json_decref(j);
	free(d->alerts_saved);
	d->alerts_saved = text;
}

static void
alert_persist(struct pv_daemon *d)
{
	json_t *j = pv_alert_set_to_json(&d->alerts);
	char *text = json_dumps(j, JSON_COMPACT);
	struct pv_error err;

	json_decref(j);
	if (text == NULL) {
		pv_log_error("cannot record the alert set error=\"out of memory\"");
		return;
	}
	if (d->alerts_saved != NULL && strcmp(d->alerts_saved, text) == 0) {
		free(text);
		return;
	}
	if (!pv_state_kv_set(d->state, ALERT_KV_KEY, text, &err)) {
		pv_log_error("cannot record the alert set error=%s", pv_log_quote(err.msg));
		free(text);
		return;
	}
	free(d->alerts_saved);
	d->alerts_saved = text;
}

/* What an alert is about, for titles. */
static const char *
subject_of(const struct pv_alert_notification *a)
{
	return a->database ? a->database : a->job ? a->job : a->notifier ? a->notifier : "storage";
}

static char *
title_of(const struct pv_alert_notification *a)
{
	const char *rule = pv_alert_rule_name(a->rule), *value = a->value ? a->value : "";

	switch (a->kind) {
	case PV_ALERT_NOTIFY_FIRING: return pv_asprintf("%s on %s: %s", rule, subject_of(a), value);
	case PV_ALERT_NOTIFY_REPEAT:
		return pv_asprintf("still firing: %s on %s: %s", rule, subject_of(a), value);
	case PV_ALERT_NOTIFY_SEVERITY:
		return pv_asprintf("now %s: %s on %s: %s", pv_severity_name(a->severity), rule, subject_of(a),
		                   value);
	case PV_ALERT_NOTIFY_RESOLVED: return pv_asprintf("resolved: %s on %s", rule, subject_of(a));
	case PV_ALERT_NOTIFY_EVENT: break;
	}
	return pv_asprintf("%s %s: %s", rule, subject_of(a), value);
}

/* Stable across attempts and re-queues of the same notification to the same notifier. An event's
 * value is part of it: two backups of one job that finish within the same second are two events. */
static char *
message_key(const char *notifier, const char *fingerprint, enum pv_alert_kind kind, time_t fired_at,
            time_t at, const char *event_value)
{
	struct pv_crypto_sha256 *h = pv_crypto_sha256_new();
	char hex[PV_CRYPTO_SHA256_HEX_LEN + 1];
	char *text = pv_asprintf("%s\n%s\n%s\n%lld\n%lld%s%s", notifier, fingerprint,
	                         pv_alert_kind_name(kind), (long long)fired_at, (long long)at,
	                         event_value != NULL ? "\n" : "", event_value != NULL ? event_value : "");

	pv_crypto_sha256_update(h, text, strlen(text));
	pv_crypto_sha256_final_hex(h, hex);
	pv_crypto_sha256_free(h);
	free(text);
	return pv_asprintf("pgvigil-%.32s", hex);
}

static char *
idempotency_key(const struct pv_alert_notification *a, const char *notifier)
{
	return message_key(notifier, a->fingerprint, a->kind, a->fired_at, a->at,
	                   a->kind == PV_ALERT_NOTIFY_EVENT && a->value != NULL ? a->value : NULL);
}

/* Every message about one episode of an alert refers to its first one (the FIRING message, sent at
 * fired_at), so mail clients thread them. Events stand alone. */
static char *
thread_key(const struct pv_alert_notification *a, const char *notifier)
{
	if (a->kind == PV_ALERT_NOTIFY_EVENT || a->fired_at == 0)
		return NULL;
	return message_key(notifier, a->fingerprint, PV_ALERT_NOTIFY_FIRING, a->fired_at, a->fired_at, NULL);
}

static void
alert_log(const struct pv_alert_notification *a)
{
	const char *kind = pv_alert_kind_name(a->kind);
	const char *rule = pv_alert_rule_name(a->rule);
	const char *db = a->database ? a->database : "-", *job = a->job ? a->job : "-";
	const char *value = pv_log_quote(a->value ? a->value : "");

	if (a->kind == PV_ALERT_NOTIFY_RESOLVED || a->kind == PV_ALERT_NOTIFY_EVENT)
		pv_log_notice("alert %s rule=%s severity=%s database=%s job=%s value=%s%s", kind, rule,
		              pv_severity_name(a->severity), db, job, value,
		              a->suppressed ? " suppressed=yes" : "");
	else
		pv_log_warn("alert %s rule=%s severity=%s database=%s job=%s value=%s%s", kind, rule,
		            pv_severity_name(a->severity), db, job, value,
		            a->suppressed ? " suppressed=yes" : "");
}

/* One message per notifier that takes this severity. */
static void
alert_deliver(struct pv_daemon *d, const struct pv_alert_notification *a)
{
	for (size_t i = 0; i < d->cfg->n_notifiers; i++) {
		const struct pv_config_notifier *nf = &d->cfg->notifiers[i];
		struct pv_notification n = {0};
		struct pv_error err;

		if (!(nf->severities & PV_SEV_MASK(a->severity)) || nf->type == PV_NOTIFIER_HEARTBEAT)
			continue;
		/* A broken notifier is announced through the others. */
		if (a->rule == PV_RULE_NOTIFIER_BROKEN && a->notifier != NULL &&
		    strcmp(a->notifier, nf->name) == 0)
			continue;
		n.notifier = pv_strdup(nf->name);
		n.rule = pv_strdup(pv_alert_rule_name(a->rule));
		n.severity = a->severity;
		n.status = a->kind == PV_ALERT_NOTIFY_RESOLVED ? PV_NOTIFY_RESOLVED
		           : a->kind == PV_ALERT_NOTIFY_EVENT  ? PV_NOTIFY_INFO
		                                               : PV_NOTIFY_FIRING;
		n.database = a->database ? pv_strdup(a->database) : NULL;
		n.job = a->job ? pv_strdup(a->job) : NULL;
		n.title = title_of(a);
		n.value = a->value ? pv_strdup(a->value) : NULL;
		n.threshold = a->threshold && a->threshold[0] ? pv_strdup(a->threshold) : NULL;
		n.at = a->at;
		n.idempotency_key = idempotency_key(a, nf->name);
		n.thread_key = thread_key(a, nf->name);
		if (pv_digest_takes(nf, &n)) {
			if (!pv_digest_add(d->digest, &n, &err))
				pv_log_error("cannot keep an event for a digest notifier=%s rule=%s error=%s",
				             nf->name, n.rule, pv_log_quote(err.msg));
		} else if (!pv_outbox_enqueue(d->outbox, &n, &err))
			pv_log_error("cannot queue notification notifier=%s rule=%s error=%s", nf->name,
			             n.rule, pv_log_quote(err.msg));
		pv_notification_clear(&n);
	}
}

/* Maintenance mode's end, 0 when off; *info (may be NULL) gets the whole record. */
static time_t
maintenance_until(struct pv_daemon *d, json_t **info)
{
	char *text = NULL;
	json_t *j = NULL;
	time_t until = 0;

	if (info != NULL)
		*info = NULL;
	if (pv_state_kv_get(d->state, MAINTENANCE_KV_KEY, &text, NULL))
		j = json_loads(text, 0, NULL);
	free(text);
	if (json_is_object(j))
		until = (time_t)json_integer_value(json_object_get(j, "until"));
	if (until > 0 && info != NULL)
		*info = json_incref(j);
	json_decref(j);
	return until;
}

/* Active silences and maintenance from the state database, for one step of the engine. Silences naming
 * a rule this version does not know are ignored. */
static void
suppress_load(struct pv_daemon *d, time_t now, struct pv_alert_suppress *sup, struct pv_state_silence **sils,
              size_t *n_sils)
{
	struct pv_alert_silence *v;
	struct pv_error err;
	size_t n = 0;

	memset(sup, 0, sizeof(*sup));
	if (!pv_state_silences_list(d->state, now, sils, n_sils, &err)) {
		pv_log_error("cannot read silences, evaluating without them error=%s", pv_log_quote(err.msg));
		*sils = NULL;
		*n_sils = 0;
	}
	v = pv_calloc(*n_sils + 1, sizeof(*v));
	for (size_t i = 0; i < *n_sils; i++) {
		const struct pv_state_silence *x = &(*sils)[i];
		if (!pv_alert_rule_from_name(x->rule, &v[n].rule))
			continue;
		v[n].id = x->id;
		v[n].database = x->database;
		v[n].until = x->until;
		n++;
	}
	sup->silences = v;
	sup->n_silences = n;
	sup->maintenance_until = maintenance_until(d, NULL);
	if (sup->maintenance_until <= now)
		sup->maintenance_until = 0;
}

/* Every notification the engine produces goes to the alert log, delivered or not. */
static void
alert_record(struct pv_daemon *d, const struct pv_alert_notification *a)
{
	char why[64];
	struct pv_state_alert_event e = {
	        .at = a->at,
	        .kind = (char *)pv_alert_kind_name(a->kind),
	        .rule = (char *)pv_alert_rule_name(a->rule),
	        .severity = (char *)pv_severity_name(a->severity),
	        .fingerprint = a->fingerprint,
	        .database = a->database,
	        .job = a->job,
	        .value = a->value,
	        .threshold = a->threshold,
	};
	struct pv_error err;

	if (a->suppressed) {
		if (a->silence_id > 0)
			snprintf(why, sizeof(why), "silence %lld", (long long)a->silence_id);
		else
			snprintf(why, sizeof(why), "maintenance");
		e.suppressed = why;
	}
	if (!pv_state_alert_log_add(d->state, &e, &err))
		pv_log_error("cannot record an alert notification rule=%s error=%s", e.rule,
		             pv_log_quote(err.msg));
}

/* Rules, then the state machine, then the outbox; the set is persisted after every step. */
static void
alert_evaluate(struct pv_daemon *d)
{
	struct pv_alert_snapshot snap;
	struct pv_alert_conditions conds = {0};
	struct pv_alert_notifications notes = {0};
	struct pv_alert_suppress sup = {0};
	struct pv_state_silence *sils = NULL;
	size_t n_sils = 0;
	struct pv_error err;
	time_t now = time(NULL), due;
	double delay = ALERT_EVAL_SEC;

	if (d->stopping || d->outbox == NULL)
		return;
	d->alert_last_mono = pv_now_mono();
	d->alert_soon = false;
	if (!pv_alert_snapshot_build(d->state, d->cfg, now, d->started, &snap, &err)) {
		pv_log_error("cannot evaluate alerts error=%s", pv_log_quote(err.msg));
		snprintf(d->alert_error, sizeof(d->alert_error), "%s", err.msg);
		alert_schedule(d, ALERT_EVAL_SEC);
		return;
	}
	snap.notifiers = d->broken;
	snap.n_notifiers = d->n_broken;
	snap.events = d->events;
	snap.n_events = d->n_events;
	snap.missed = d->missed;
	snap.n_missed = d->n_missed;
	pv_alert_rules_eval(d->cfg, &snap, now, &conds);
	suppress_load(d, now, &sup, &sils, &n_sils);
	pv_alert_engine_step(&d->cfg->alerts, &d->alerts, &conds, &sup, now, &notes);
	for (size_t i = 0; i < notes.n; i++) {
		alert_log(&notes.v[i]);
		alert_record(d, &notes.v[i]);
		if (!notes.v[i].suppressed)
			alert_deliver(d, &notes.v[i]);
	}
	/* Wake when a silence or maintenance ends: what it held back goes out then. */
	for (size_t i = 0; i < sup.n_silences; i++)
		if (sup.silences[i].until > now && (double)(sup.silences[i].until - now) < delay)
			delay = (double)(sup.silences[i].until - now);
	if (sup.maintenance_until > now && (double)(sup.maintenance_until - now) < delay)
		delay = (double)(sup.maintenance_until - now);
	free((void *)sup.silences);
	pv_state_silences_free(sils, n_sils);
	alert_persist(d);
	pv_alert_notifications_clear(&notes);
	pv_alert_conditions_clear(&conds);
	pv_alert_snapshot_free(&snap);
	events_clear(d);
	d->alert_ok_mono = pv_now_mono();
	d->alert_error[0] = '\0';

	due = pv_alert_engine_next_due(&d->cfg->alerts, &d->alerts);
	if (due > 0 && (double)(due - now) < delay)
		delay = due > now ? (double)(due - now) : 1;
	alert_schedule(d, delay);
}

/* The heartbeat vouches for the daemon only while alerts are being evaluated: a daemon whose evaluation
 * loop stalls or whose state database fails cannot tell anyone that something is wrong. */
static bool
heartbeat_healthy(void *arg, char *why, size_t size)
{
	struct pv_daemon *d = arg;
	double since = pv_now_mono() - d->alert_ok_mono;

	if (d->stopping) {
		snprintf(why, size, "stopping");
		return false;
	}
	if (since > 2 * ALERT_EVAL_SEC + 5) {
		snprintf(why, size, "no alert evaluation for %.0fs%s%s", since, d->alert_error[0] ? ": " : "",
		         d->alert_error);
		return false;
	}
	return true;
}

/* Evaluate now, or once ALERT_COALESCE_SEC after the previous evaluation: every run's outcome is seen,
 * at most that much later, without rebuilding the snapshot for each of many runs ending together. */
static void
alert_after_run(struct pv_daemon *d)
{
	double since = pv_now_mono() - d->alert_last_mono;

	if (d->alert_soon)
		return;
	if (since >= ALERT_COALESCE_SEC) {
		alert_evaluate(d);
		return;
	}
	d->alert_soon = true;
	alert_schedule(d, ALERT_COALESCE_SEC - since);
}

static bool
alert_start(struct pv_daemon *d, struct pv_error *err)
{
	struct pv_outbox_options opts = {
	        .on_broken = outbox_broken_cb,
	        .on_event = outbox_event_cb,
	        .arg = d,
	};

	d->http = pv_http_new(d->base, err);
	if (d->http == NULL)
		return false;
	d->outbox = pv_outbox_new(d->base, d->state, d->http, &opts, err);
	if (d->outbox == NULL)
		return false;
	d->heartbeat = pv_heartbeat_new(d->base, d->http, heartbeat_healthy, d);
	d->digest = pv_digest_new(d->base, d->state, d->outbox);
	d->alert_ok_mono = pv_now_mono();
	alert_set_notifiers(d, d->cfg);
	alert_load(d);
	d->ev_alert = evtimer_new(d->base, alert_cb, d);
	return true;
}

/* ---- silences and maintenance ---- */

void
pv_daemon_alerts_changed(struct pv_daemon *d)
{
	alert_schedule(d, 0);
}

static bool
suppress_duration_ok(int64_t secs, const char *what, struct pv_error *err)
{
	char max[32];

	if (secs <= 0)
		return pv_error_set(err, PV_ERR_USAGE, "%s: --for is required and must be positive", what);
	if (secs > SUPPRESS_MAX)
		return pv_error_set(err, PV_ERR_USAGE, "%s: --for is at most %s", what,
		                    pv_duration_format(SUPPRESS_MAX, max, sizeof(max)));
	return true;
}

bool
pv_daemon_silence_add(struct pv_daemon *d, const char *rule, const char *database, int64_t secs,
                      const char *comment, const char *author, json_t **out, struct pv_error *err)
{
	struct pv_state_silence sil = {0};
	enum pv_rule id;
	int64_t row;

	if (rule == NULL || !pv_alert_rule_from_name(rule, &id))
		return pv_error_set(err, PV_ERR_USAGE, "silence: unknown rule \"%s\"", rule ? rule : "");
	if (database != NULL && pv_config_database_find(d->cfg, database) == NULL)
		return pv_error_set(err, PV_ERR_USAGE, "silence: no database \"%s\" in the configuration",
		                    database);
	if (!suppress_duration_ok(secs, "silence", err))
		return false;
	if (comment == NULL || comment[0] == '\0')
		return pv_error_set(err, PV_ERR_USAGE, "silence: --comment is required (say why)");
	sil.rule = (char *)rule;
	sil.database = (char *)database;
	sil.created = time(NULL);
	sil.until = sil.created + secs;
	sil.comment = (char *)comment;
	sil.author = (char *)author;
	if (!pv_state_silence_add(d->state, &sil, &row, err))
		return false;
	pv_log_notice("silence added id=%lld rule=%s database=%s until=%lld author=%s comment=%s",
	              (long long)row, rule, database ? database : "*", (long long)sil.until, author,
	              pv_log_quote(comment));
	*out = json_pack("{s:I,s:s,s:o,s:o,s:s,s:s}", "id", (json_int_t)row, "rule", rule, "database",
	                 database ? json_string(database) : json_null(), "until", time_json(sil.until),
	                 "author", author, "comment", comment);
	pv_daemon_alerts_changed(d);
	return true;
}

bool
pv_daemon_silence_remove(struct pv_daemon *d, int64_t id, const char *author, struct pv_error *err)
{
	if (!pv_state_silence_remove(d->state, id, time(NULL), author, err))
		return false;
	pv_log_notice("silence removed id=%lld author=%s", (long long)id, author);
	pv_daemon_alerts_changed(d);
	return true;
}

json_t *
pv_daemon_silences_json(struct pv_daemon *d, bool all)
{
	struct pv_state_silence *v;
	struct pv_error err;
	time_t now = time(NULL);
	json_t *arr = json_array();
	size_t n;

	if (!pv_state_silences_list(d->state, all ? 0 : now, &v, &n, &err)) {
		pv_log_error("cannot list silences error=%s", pv_log_quote(err.msg));
		return arr;
	}
	for (size_t i = 0; i < n; i++) {
		const char *state = v[i].removed > 0 ? "removed" : v[i].until <= now ? "expired" : "active";
		json_array_append_new(
		        arr, json_pack("{s:I,s:s,s:o,s:o,s:o,s:s,s:s,s:s,s:o,s:o}", "id", (json_int_t)v[i].id,
		                       "rule", v[i].rule, "database",
		                       v[i].database ? json_string(v[i].database) : json_null(), "created",
		                       time_json(v[i].created), "until", time_json(v[i].until), "comment",
		                       v[i].comment, "author", v[i].author, "state", state, "removed",
		                       time_json(v[i].removed), "removed_by",
		                       v[i].removed_by ? json_string(v[i].removed_by) : json_null()));
	}
	pv_state_silences_free(v, n);
	return arr;
}

json_t *
pv_daemon_maintenance_json(struct pv_daemon *d)
{
	json_t *info;
	time_t until = maintenance_until(d, &info), now = time(NULL);
	json_t *o;

	if (until <= now) {
		json_decref(info);
		return json_null();
	}
	o = json_pack("{s:o,s:o,s:O,s:O}", "since",
	              time_json((time_t)json_integer_value(json_object_get(info, "since"))), "until",
	              time_json(until), "author", json_object_get(info, "author"), "comment",
	              json_object_get(info, "comment"));
	json_decref(info);
	return o;
}

bool
pv_daemon_maintenance(struct pv_daemon *d, bool on, int64_t secs, const char *comment, const char *author,
                      json_t **out, struct pv_error *err)
{
	time_t now = time(NULL);
	json_t *rec;
	char *text;
	bool ok;

	if (on && !suppress_duration_ok(secs, "maintenance on", err))
		return false;
	rec = on ? json_pack("{s:I,s:I,s:s,s:s}", "since", (json_int_t)now, "until", (json_int_t)(now + secs),
	                     "author", author, "comment", comment ? comment : "")
	         : json_null();
	text = json_dumps(rec, JSON_COMPACT | JSON_ENCODE_ANY);
	json_decref(rec);
	ok = pv_state_kv_set(d->state, MAINTENANCE_KV_KEY, text, err);
	free(text);
	if (!ok)
		return false;
	if (on)
		pv_log_notice("maintenance on until=%lld author=%s comment=%s", (long long)(now + secs),
		              author, pv_log_quote(comment ? comment : ""));
	else
		pv_log_notice("maintenance off author=%s", author);
	*out = json_pack("{s:o}", "maintenance", pv_daemon_maintenance_json(d));
	pv_daemon_alerts_changed(d);
	return true;
}

json_t *
pv_daemon_alert_log_json(struct pv_daemon *d, int limit)
{
	struct pv_state_alert_event *v;
	struct pv_error err;
	json_t *arr = json_array();
	size_t n;

	if (!pv_state_alert_log_list(d->state, limit, &v, &n, &err)) {
		pv_log_error("cannot read the alert log error=%s", pv_log_quote(err.msg));
		return arr;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *o = json_object();
		json_object_set_new(o, "at", time_json(v[i].at));
		json_object_set_new(o, "kind", json_string(v[i].kind));
		json_object_set_new(o, "rule", json_string(v[i].rule));
		json_object_set_new(o, "severity", json_string(v[i].severity));
		json_object_set_new(o, "fingerprint", json_string(v[i].fingerprint));
		json_object_set_new(o, "database", v[i].database ? json_string(v[i].database) : json_null());
		json_object_set_new(o, "job", v[i].job ? json_string(v[i].job) : json_null());
		json_object_set_new(o, "value", v[i].value ? json_string(v[i].value) : json_null());
		json_object_set_new(o, "threshold",
		                    v[i].threshold ? json_string(v[i].threshold) : json_null());
		json_object_set_new(o, "suppressed",
		                    v[i].suppressed ? json_string(v[i].suppressed) : json_null());
		json_array_append_new(arr, o);
	}
	pv_state_alert_events_free(v, n);
	return arr;
}

/* ---- reload and stop ---- */

bool
pv_daemon_reload(struct pv_daemon *d, struct pv_error *err)
{
	struct pv_config *cfg;
	struct pv_error lerr;
	enum pv_log_level level;

	pv_notify_reloading();
	pv_log_notice("reloading configuration file=%s", d->config_path);
	d->reload.at = time(NULL);
	d->reload.count++;
	cfg = load_config(d->config_path, &lerr);
	if (cfg == NULL) {
		d->reload.ok = false;
		snprintf(d->reload.error, sizeof(d->reload.error), "%s", lerr.msg);
		pv_log_error("reload failed, keeping the previous configuration error=%s",
		             pv_log_quote(lerr.msg));
		pv_notify_status("reload failed: %s", lerr.msg);
		pv_notify_ready();
		if (err != NULL)
			*err = lerr;
		return false;
	}
	if (strcmp(cfg->daemon.socket, d->cfg->daemon.socket) != 0 ||
	    strcmp(cfg->daemon.state_dir, d->cfg->daemon.state_dir) != 0)
		pv_log_warn(
		        "daemon.socket and daemon.state_dir take effect at restart; still using socket=%s "
		        "state_dir=%s",
		        d->cfg->daemon.socket, d->cfg->daemon.state_dir);
	if (!sched_load(d, cfg, &lerr)) {
		d->reload.ok = false;
		snprintf(d->reload.error, sizeof(d->reload.error), "%s", lerr.msg);
		pv_log_error("reload failed, keeping the previous configuration error=%s",
		             pv_log_quote(lerr.msg));
		pv_config_unref(cfg);
		pv_notify_ready();
		if (err != NULL)
			*err = lerr;
		return false;
	}
	/* Running jobs keep the configuration they started with (they hold a reference). */
	pv_config_unref(d->cfg);
	d->cfg = cfg;
	/* A notifier the new configuration fixed must not stay broken; one still broken is found again. */
	broken_clear(d);
	alert_set_notifiers(d, cfg);
	level = cfg->daemon.log_level;
	pv_log_set_level(level);
	metrics_reload(d);
	fd_limit_check(cfg);
	pv_job_health_configure(cfg);
	d->reload.ok = true;
	d->reload.error[0] = '\0';
	pv_log_notice("configuration reloaded jobs=%zu databases=%zu", cfg->n_jobs, cfg->n_databases);
	pv_notify_status("running: %zu jobs", cfg->n_jobs);
	pv_notify_ready();
	schedule_tick(d, 0);
	alert_schedule(d, 0);
	return true;
}

static void
hup_cb(evutil_socket_t fd, short what, void *arg)
{
	pv_daemon_reload(arg, NULL);
}

static void
stop_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_daemon *d = arg;
	int n = 0;
	for (struct active_run *ar = d->runs; ar != NULL; ar = ar->next)
		n++;
	pv_log_error("stop: %d job(s) did not finish within %ds; killing their processes and exiting", n,
	             STOP_BOUND_SEC);
	pv_proc_kill_all();
	event_base_loopbreak(d->base);
}

static void
term_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_daemon *d = arg;
	struct timeval bound = {STOP_BOUND_SEC, 0};

	if (d->stopping) {
		pv_log_notice("second stop signal: exiting now");
		event_base_loopbreak(d->base);
		return;
	}
	d->stopping = true;
	pv_notify_stopping();
	pv_log_notice("stopping signal=%s running=%s", fd == SIGINT ? "INT" : "TERM", d->runs ? "yes" : "no");
	event_del(d->ev_tick);
	if (d->ev_alert != NULL)
		event_del(d->ev_alert);
	for (struct active_run *ar = d->runs; ar != NULL; ar = ar->next) {
		ar->run.cancel_requested = true;
		if (ar->ops->cancel != NULL)
			ar->ops->cancel(&ar->run);
	}
	pv_proc_cancel_all();
	if (d->runs == NULL) {
		event_base_loopexit(d->base, NULL);
		return;
	}
	d->ev_stop = evtimer_new(d->base, stop_timeout_cb, d);
	event_add(d->ev_stop, &bound);
}

/* ---- lifecycle ---- */

static bool
ensure_dir(const char *path, mode_t mode, struct pv_error *err)
{
	struct stat st;

	if (stat(path, &st) == 0) {
		if (!S_ISDIR(st.st_mode))
			return pv_error_set(err, PV_ERR_IO, "%s exists and is not a directory", path);
		return true;
	}
	if (mkdir(path, mode) != 0)
		return pv_error_set(err, PV_ERR_IO, "cannot create directory %s: %s", path, strerror(errno));
	return true;
}

/* Before the state database is touched: a second daemon must not mark the first one's runs
 * as interrupted, nor schedule the same jobs. */
static bool
lock_state_dir(struct pv_daemon *d, struct pv_error *err)
{
	char *path = pv_asprintf("%s/pgvigild.lock", d->cfg->daemon.state_dir);
	char pid[32];
	int n;

	d->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (d->lock_fd < 0) {
		pv_error_set(err, PV_ERR_IO, "cannot open lock file %s: %s", path, strerror(errno));
		free(path);
		return false;
	}
	if (flock(d->lock_fd, LOCK_EX | LOCK_NB) != 0) {
		char other[32] = "";
		ssize_t r = pread(d->lock_fd, other, sizeof(other) - 1, 0);
		other[r > 0 ? r : 0] = '\0';
		other[strcspn(other, "\n")] = '\0';
		pv_error_set(err, PV_ERR_BUSY,
		             "state directory %s is in use by another pgvigild (pid %s): HINT: stop it, or "
		             "give this "
		             "one its own daemon.state_dir",
		             d->cfg->daemon.state_dir, other[0] ? other : "unknown");
		free(path);
		return false;
	}
	n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
	if (ftruncate(d->lock_fd, 0) != 0 || pwrite(d->lock_fd, pid, (size_t)n, 0) != n)
		pv_log_warn("cannot write pid to lock file path=%s error=%s", path, strerror(errno));
	free(path);
	return true;
}

static bool
ctl_is_admin(void *ctx, uid_t uid, gid_t gid)
{
	return pv_daemon_is_admin(ctx, uid, gid);
}

bool
pv_daemon_is_admin(struct pv_daemon *d, uid_t uid, gid_t gid)
{
	/* The daemon's own user can always manage it. */
	if (uid == geteuid())
		return true;
	return pv_ctl_peer_in_list(uid, gid, &d->cfg->daemon.admins);
}

struct event_base *
pv_daemon_loop_new(void)
{
	struct event_config *ec = event_config_new();
	struct timeval slice = {0, LOOP_SLICE_USEC};
	struct event_base *base;

	if (ec == NULL)
		return NULL;
	event_config_set_max_dispatch_interval(ec, &slice, -1, PV_DAEMON_PRIO_TIMER + 1);
	base = event_base_new_with_config(ec);
	event_config_free(ec);
	if (base != NULL && event_base_priority_init(base, LOOP_PRIORITIES) != 0) {
		event_base_free(base);
		return NULL;
	}
	return base;
}

/* Descriptors the daemon needs besides kept sessions: state, socket, clients, runs, notifiers. */
#define FD_RESERVE 256

/*
 * Health jobs with keep_connection hold a session each: take the hard limit on open files as the
 * soft one (as systemd's LimitNOFILE would) and say so when even that is too low.
 */
static void
fd_limit_check(const struct pv_config *cfg)
{
	struct rlimit rl;
	size_t kept = 0;

	for (size_t i = 0; i < cfg->n_jobs; i++)
		kept += cfg->jobs[i].type == PV_JOB_HEALTH && cfg->jobs[i].keep_connection;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0 && getrlimit(RLIMIT_NOFILE, &rl) != 0)
			return;
	}
	if (rl.rlim_cur != RLIM_INFINITY && kept + FD_RESERVE > rl.rlim_cur)
		pv_log_warn("open file limit too low for the kept health sessions limit=%llu "
		            "keep_connection_jobs=%zu needed=%zu; HINT: raise LimitNOFILE",
		            (unsigned long long)rl.rlim_cur, kept, kept + FD_RESERVE);
}

struct pv_daemon *
pv_daemon_new(const struct pv_daemon_opts *opts, struct pv_error *err)
{
	struct pv_daemon *d = pv_calloc(1, sizeof(*d));
	char *state_path;

	d->lock_fd = -1;

	d->config_path = pv_strdup(opts->config_path);
	d->ready_fd = opts->ready_fd;
	d->started = time(NULL);
	d->started_mono = pv_now_mono();
	d->reload.ok = true;

	d->cfg = load_config(d->config_path, err);
	if (d->cfg == NULL)
		goto fail;
	pv_log_set_level(d->cfg->daemon.log_level);

	d->base = pv_daemon_loop_new();
	if (d->base == NULL) {
		pv_error_set(err, PV_ERR_INTERNAL, "cannot create the event loop");
		goto fail;
	}
	d->dns =
	        evdns_base_new(d->base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
	if (d->dns == NULL) {
		/* No resolv.conf: names cannot be resolved, addresses and sockets still work. */
		d->dns = evdns_base_new(d->base, 0);
	}
	if (!pv_proc_init(d->base, err))
		goto fail;

	if (!ensure_dir(d->cfg->daemon.state_dir, 0700, err) || !lock_state_dir(d, err))
		goto fail;
	state_path = pv_asprintf("%s/state.db", d->cfg->daemon.state_dir);
	if (!pv_state_open(state_path, &d->state, err)) {
		free(state_path);
		goto fail;
	}
	free(state_path);

	{
		struct pv_catalog_report rep;
		struct pv_error cerr;
		if (!pv_catalog_sync(d->state, d->cfg->storage.path, true, &rep, &cerr))
			pv_log_error("cannot check the backup catalog against storage error=%s",
			             pv_log_quote(cerr.msg));
		else if (rep.temporaries_removed + rep.rebuilt + rep.missing + rep.changed + rep.unreadable >
		         0)
			pv_log_notice("backup catalog checked temporaries_removed=%zu rebuilt=%zu "
			              "missing=%zu changed=%zu "
			              "unreadable=%zu",
			              rep.temporaries_removed, rep.rebuilt, rep.missing, rep.changed,
			              rep.unreadable);
	}
	d->sched = pv_sched_new(d->cfg->daemon.max_parallel_jobs);
	if (!sched_load(d, d->cfg, err))
		goto fail;
	fd_limit_check(d->cfg);
	pv_job_health_configure(d->cfg);
	if (!alert_start(d, err))
		goto fail;

	d->ctl = pv_ctl_server_new(d->base, d->cfg->daemon.socket, pv_ctl_commands, ctl_is_admin, d, err);
	if (d->ctl == NULL)
		goto fail;
	d->metrics = pv_metrics_new(d->base, d->cfg->daemon.metrics_listen, metrics_view, d, err);
	if (d->metrics == NULL)
		goto fail;
	pv_metrics_set_dns(d->metrics, d->dns); /* a reload never waits for a resolver on the loop */

	d->ev_hup = evsignal_new(d->base, SIGHUP, hup_cb, d);
	d->ev_term = evsignal_new(d->base, SIGTERM, term_cb, d);
	d->ev_int = evsignal_new(d->base, SIGINT, term_cb, d);
	d->ev_tick = evtimer_new(d->base, tick_cb, d);
	if (d->ev_tick != NULL)
		event_priority_set(d->ev_tick, PV_DAEMON_PRIO_TIMER);
	event_add(d->ev_hup, NULL);
	event_add(d->ev_term, NULL);
	event_add(d->ev_int, NULL);
	pv_notify_init(d->base);
	return d;
fail:
	pv_daemon_free(d);
	return NULL;
}

int
pv_daemon_run(struct pv_daemon *d)
{
	pv_log_notice("pgvigild %s started pid=%d config=%s jobs=%zu socket=%s", PV_VERSION, (int)getpid(),
	              d->config_path, d->cfg->n_jobs, d->cfg->daemon.socket);
	pv_notify_status("running: %zu jobs", d->cfg->n_jobs);
	pv_notify_ready();
	if (d->ready_fd >= 0) {
		ssize_t r = write(d->ready_fd, "R", 1);
		(void)r;
		close(d->ready_fd);
		d->ready_fd = -1;
	}
	/* Scratch databases a crashed probe left behind go first, asynchronously. */
	pv_probe_cleanup_start(d->base, d->dns, d->cfg);
	schedule_tick(d, 0);
	alert_schedule(d, 0);
	history_schedule(d, HISTORY_FIRST_DELAY);
	event_base_dispatch(d->base);
	pv_log_notice("stopped");
	return EXIT_SUCCESS;
}

void
pv_daemon_free(struct pv_daemon *d)
{
	if (d == NULL)
		return;
	/* Runs still present here outlived the stop bound: record them as cancelled. Their memory is
	 * deliberately not freed: the job's own callbacks may still point at it, and we are exiting. */
	for (struct active_run *ar = d->runs; ar != NULL; ar = ar->next) {
		if (d->state != NULL)
			pv_state_run_end(d->state, ar->run.id, time(NULL),
			                 pv_now_mono() - ar->run.started_mono, "cancelled",
			                 "daemon stopped before the run could finish", NULL, NULL);
	}
	if (d->runs != NULL) {
		pv_state_close(d->state);
		free(d->config_path);
		return;
	}
	pv_ctl_server_free(d->ctl);
	pv_metrics_free(d->metrics);
	if (d->ev_hup)
		event_free(d->ev_hup);
	if (d->ev_term)
		event_free(d->ev_term);
	if (d->ev_int)
		event_free(d->ev_int);
	if (d->ev_tick)
		event_free(d->ev_tick);
	if (d->ev_stop)
		event_free(d->ev_stop);
	if (d->ev_alert)
		event_free(d->ev_alert);
	if (d->ev_history)
		event_free(d->ev_history);
	/* Messages not yet delivered stay pending in the state database for the next start. */
	pv_digest_free(d->digest);
	pv_heartbeat_free(d->heartbeat);
	pv_outbox_free(d->outbox);
	pv_http_free(d->http);
	pv_alert_set_clear(&d->alerts);
	free(d->alerts_saved);
	events_clear(d);
	broken_clear(d);
	pv_notify_shutdown();
	pv_job_health_configure(NULL);
	pv_proc_shutdown();
	pv_sched_free(d->sched);
	pv_state_close(d->state);
	if (d->dns) {
		/* evdns reports cancelled lookups through deferred callbacks: let them run first. */
		event_base_loop(d->base, EVLOOP_NONBLOCK);
		evdns_base_free(d->dns, 1);
		event_base_loop(d->base, EVLOOP_NONBLOCK);
	}
	if (d->base)
		event_base_free(d->base);
	pv_config_unref(d->cfg);
	if (d->ready_fd >= 0)
		close(d->ready_fd);
	if (d->lock_fd >= 0)
		close(d->lock_fd); /* releases the flock; the file stays, harmlessly */
	free(d->config_path);
	free(d);
}

/* ---- control views ---- */

static json_t *
time_json(time_t t)
{
	char buf[32];
	struct tm tm;
	if (t <= 0)
		return json_null();
	gmtime_r(&t, &tm);
	strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
	return json_string(buf);
}

static json_t *
run_json(const struct pv_state_run *r)
{
	json_t *o = json_object();
	json_object_set_new(o, "id", json_integer(r->id));
	json_object_set_new(o, "trigger", r->trigger ? json_string(r->trigger) : json_null());
	json_object_set_new(o, "started", time_json(r->started));
	json_object_set_new(o, "finished", time_json(r->finished));
	json_object_set_new(o, "duration", json_real(r->duration));
	json_object_set_new(o, "result", r->result ? json_string(r->result) : json_null());
	json_object_set_new(o, "cause", r->cause ? json_string(r->cause) : json_null());
	if (r->figures != NULL) {
		json_t *f = json_loads(r->figures, 0, NULL);
		json_object_set_new(o, "figures", f != NULL ? f : json_null());
	}
	return o;
}

static json_t *
alert_json(const struct pv_alert_state *a)
{
	json_t *o = json_object();

	json_object_set_new(o, "fingerprint", json_string(a->fingerprint));
	json_object_set_new(o, "rule", json_string(pv_alert_rule_name(a->rule)));
	json_object_set_new(o, "severity", json_string(pv_severity_name(a->severity)));
	json_object_set_new(o, "status", json_string(pv_alert_status_name(a->status)));
	json_object_set_new(o, "database", a->database ? json_string(a->database) : json_null());
	json_object_set_new(o, "job", a->job ? json_string(a->job) : json_null());
	json_object_set_new(o, "notifier", a->notifier ? json_string(a->notifier) : json_null());
	json_object_set_new(o, "value", a->value ? json_string(a->value) : json_null());
	json_object_set_new(o, "threshold", a->threshold ? json_string(a->threshold) : json_null());
	json_object_set_new(o, "first_seen", time_json(a->first_seen));
	json_object_set_new(o, "fired_at", time_json(a->fired_at));
	json_object_set_new(o, "last_sent", time_json(a->last_sent));
	json_object_set_new(o, "resolved_at", time_json(a->resolved_at));
	return o;
}

json_t *
pv_daemon_alerts_json(struct pv_daemon *d, bool history, bool firing_only)
{
	json_t *arr = json_array();

	for (size_t i = 0; i < d->alerts.n; i++) {
		const struct pv_alert_state *a = &d->alerts.v[i];
		bool resolved = a->status == PV_ALERT_RESOLVED;
		if (history != resolved || (firing_only && a->status != PV_ALERT_FIRING))
			continue;
		json_array_append_new(arr, alert_json(a));
	}
	return arr;
}

static json_t *
notifications_json(struct pv_daemon *d)
{
	json_t *o = json_object();

	for (size_t i = 0; i < d->cfg->n_notifiers; i++) {
		struct pv_state_outbox_counts c = {0};
		struct pv_error err;
		if (!pv_state_outbox_counts(d->state, d->cfg->notifiers[i].name, &c, &err)) {
			pv_log_error("cannot count notifications notifier=%s error=%s",
			             d->cfg->notifiers[i].name, pv_log_quote(err.msg));
			continue;
		}
		json_object_set_new(o, d->cfg->notifiers[i].name,
		                    json_pack("{s:I,s:I,s:I,s:I}", "pending", (json_int_t)c.pending, "failed",
		                              (json_int_t)c.failed, "sent", (json_int_t)c.sent, "dropped",
		                              (json_int_t)c.dropped));
	}
	return o;
}

json_t *
pv_daemon_status_json(struct pv_daemon *d)
{
	json_t *o = json_object();
	json_t *reload = json_object();
	json_t *dbs = json_array();
	int running = 0;

	for (struct active_run *ar = d->runs; ar != NULL; ar = ar->next)
		running++;
	json_object_set_new(o, "version", json_string(PV_VERSION));
	json_object_set_new(o, "pid", json_integer(getpid()));
	json_object_set_new(o, "started", time_json(d->started));
	json_object_set_new(o, "uptime", json_real(pv_now_mono() - d->started_mono));
	json_object_set_new(o, "config", json_string(d->config_path));
	json_object_set_new(o, "jobs", json_integer((json_int_t)d->cfg->n_jobs));
	json_object_set_new(o, "running", json_integer(running));
	json_object_set_new(reload, "count", json_integer(d->reload.count));
	json_object_set_new(reload, "at", time_json(d->reload.at));
	json_object_set_new(reload, "ok", json_boolean(d->reload.ok));
	json_object_set_new(reload, "error", d->reload.ok ? json_null() : json_string(d->reload.error));
	json_object_set_new(o, "reload", reload);

	for (size_t i = 0; i < d->cfg->n_databases; i++) {
		const struct pv_config_database *db = &d->cfg->databases[i];
		json_t *dj = json_object();
		struct pv_state_run best = {0};
		bool have = false;

		json_object_set_new(dj, "name", json_string(db->name));
		for (size_t j = 0; j < d->cfg->n_jobs; j++) {
			const struct pv_config_job *job = &d->cfg->jobs[j];
			struct pv_state_run r = {0};
			if (job->type != PV_JOB_HEALTH || job->database != db)
				continue;
			/* While a check runs, the previous finished one is what we know. */
			if (!pv_state_run_last_finished(d->state, job->name, &r, NULL))
				continue;
			if (!have || r.started > best.started) {
				pv_state_run_clear(&best);
				best = r;
				have = true;
			} else {
				pv_state_run_clear(&r);
			}
		}
		json_object_set_new(dj, "health", have ? run_json(&best) : json_null());
		pv_state_run_clear(&best);
		{
			struct pv_state_backup nb = {0};
			if (pv_state_backup_newest_verified(d->state, db->name, NULL, &nb, NULL)) {
				json_object_set_new(dj, "newest_verified_backup",
				                    json_pack("{s:s,s:s,s:s,s:I,s:I,s:I}", "id", nb.id, "job",
				                              nb.job, "tier", nb.tier, "finished",
				                              (json_int_t)nb.finished, "age",
				                              (json_int_t)(time(NULL) - nb.finished), "size",
				                              (json_int_t)nb.size));
				pv_state_backup_clear(&nb);
			} else {
				json_object_set_new(dj, "newest_verified_backup", json_null());
			}
		}
		if (db->rpo || db->rto) {
			json_t *obj = json_object();
			json_object_set_new(obj, "rpo", db->rpo ? json_integer(db->rpo) : json_null());
			json_object_set_new(obj, "rto", db->rto ? json_integer(db->rto) : json_null());
			json_object_set_new(dj, "objectives", obj);
		}
		{
			json_t *rr = pv_report_rpo_rto(d->state, d->cfg, db, time(NULL));
			json_object_set(dj, "rpo", json_object_get(rr, "rpo"));
			json_object_set(dj, "rto", json_object_get(rr, "rto"));
			json_decref(rr);
		}
		json_array_append_new(dbs, dj);
	}
	json_object_set_new(o, "databases", dbs);
	json_object_set_new(o, "alerts", pv_daemon_alerts_json(d, false, true));
	json_object_set_new(o, "notifications", notifications_json(d));
	json_object_set_new(o, "maintenance", pv_daemon_maintenance_json(d));
	json_object_set_new(o, "heartbeats", pv_heartbeat_status_json(d->heartbeat));
	json_object_set_new(o, "silences", pv_daemon_silences_json(d, false));
	return o;
}

json_t *
pv_daemon_jobs_json(struct pv_daemon *d)
{
	json_t *arr = json_array();
	double mono = pv_now_mono();

	for (size_t i = 0; i < d->cfg->n_jobs; i++) {
		const struct pv_config_job *job = &d->cfg->jobs[i];
		json_t *o = json_object();
		struct pv_state_run last = {0};
		struct active_run *ar = find_running(d, job->name);
		char dur[32];
		time_t next;

		json_object_set_new(o, "name", json_string(job->name));
		json_object_set_new(o, "type", json_string(pv_job_type_name(job->type)));
		json_object_set_new(o, "database",
		                    job->database ? json_string(job->database->name) : json_null());
		if (job->cron != NULL) {
			json_object_set_new(o, "schedule", json_string(pv_cron_text(job->cron)));
			json_object_set_new(o, "timezone", json_string(pv_tz_name(job->tz)));
		} else {
			json_object_set_new(o, "every",
			                    json_string(pv_duration_format(job->every, dur, sizeof(dur))));
		}
		if (!pv_sched_next_start(d->sched, job->name, time(NULL), mono, &next))
			next = 0;
		json_object_set_new(o, "next_run", time_json(next));
		if (pv_state_run_last_finished(d->state, job->name, &last, NULL)) {
			json_object_set_new(o, "last_run", run_json(&last));
			pv_state_run_clear(&last);
		} else {
			json_object_set_new(o, "last_run", json_null());
		}
		if (ar != NULL) {
			json_t *r = json_object();
			json_object_set_new(r, "id", json_integer(ar->run.id));
			json_object_set_new(r, "trigger", json_string(ar->run.trigger));
			json_object_set_new(r, "started", time_json(ar->run.started));
			json_object_set_new(r, "elapsed", json_real(mono - ar->run.started_mono));
			if (ar->ops->progress != NULL)
				ar->run.progress_bytes = ar->ops->progress(&ar->run);
			json_object_set_new(r, "progress_bytes",
			                    json_integer((json_int_t)ar->run.progress_bytes));
			json_object_set_new(o, "running", r);
		} else {
			json_object_set_new(o, "running", json_null());
		}
		json_array_append_new(arr, o);
	}
	return arr;
}

struct pv_state *
pv_daemon_state(struct pv_daemon *d)
{
	return d->state;
}

struct pv_config *
pv_daemon_config(struct pv_daemon *d)
{
	return d->cfg;
}

struct event_base *
pv_daemon_base(struct pv_daemon *d)
{
	return d->base;
}

bool
pv_daemon_run_job(struct pv_daemon *d, const char *name, int64_t *run_id, struct pv_error *err)
{
	const struct pv_config_job *job = pv_config_job_find(d->cfg, name);

	if (d->stopping)
		return pv_error_set(err, PV_ERR_BUSY, "the daemon is stopping");
	if (job == NULL)
		return pv_error_set(err, PV_ERR_NOT_FOUND, "no job named \"%s\"", name);
	return start_run(d, job, "manual", 0, false, 0, run_id, err);
}
