/* The running daemon: configuration in force, state, scheduler, job runs, reload and shutdown. */
#ifndef PV_DAEMON_H
#define PV_DAEMON_H

#include <stdbool.h>
#include <sys/types.h>
#include <time.h>

#include <jansson.h>

#include "util/error.h"

struct pv_daemon;
struct pv_config;
struct pv_strv;

struct pv_daemon_opts {
	const char *config_path;
	int ready_fd; /* written to and closed once ready (background start), or -1 */
};

/* The daemon's event loop: events at PV_DAEMON_PRIO_TIMER (the scheduler's timer) are dispatched before
 * the others, which have the default priority and yield to them every few milliseconds. */
#define PV_DAEMON_PRIO_TIMER 0
struct event_base *pv_daemon_loop_new(void);

/* Load the configuration, open state, bind the control socket, plan the schedule. */
struct pv_daemon *pv_daemon_new(const struct pv_daemon_opts *opts, struct pv_error *err);
/* Run until SIGTERM/SIGINT; returns the process exit status. */
int pv_daemon_run(struct pv_daemon *d);
void pv_daemon_free(struct pv_daemon *d);

/* Control-command entry points (src/ctl/commands.c). Each returns a new JSON reference. */
json_t *pv_daemon_status_json(struct pv_daemon *d);
json_t *pv_daemon_jobs_json(struct pv_daemon *d);
/* Alerts of the persisted set: resolved ones (history), else pending and firing (or firing only). */
json_t *pv_daemon_alerts_json(struct pv_daemon *d, bool history, bool firing_only);
/* Silences and maintenance mode (admins; author is the peer's user name). Each takes effect at once. */
bool pv_daemon_silence_add(struct pv_daemon *d, const char *rule, const char *database, int64_t secs,
                           const char *comment, const char *author, json_t **out, struct pv_error *err);
bool pv_daemon_silence_remove(struct pv_daemon *d, int64_t id, const char *author, struct pv_error *err);
json_t *pv_daemon_silences_json(struct pv_daemon *d, bool all); /* active ones, or every one ever */
bool pv_daemon_maintenance(struct pv_daemon *d, bool on, int64_t secs, const char *comment,
                           const char *author, json_t **out, struct pv_error *err);
json_t *pv_daemon_maintenance_json(struct pv_daemon *d); /* null when off */
/* The alert log, newest first: every notification produced, delivered or suppressed. */
json_t *pv_daemon_alert_log_json(struct pv_daemon *d, int limit);
/* Silences, maintenance or notifiers changed: evaluate alerts now. */
void pv_daemon_alerts_changed(struct pv_daemon *d);
bool pv_daemon_run_job(struct pv_daemon *d, const char *job, int64_t *run_id, struct pv_error *err);
bool pv_daemon_reload(struct pv_daemon *d, struct pv_error *err);
bool pv_daemon_is_admin(struct pv_daemon *d, uid_t uid, gid_t gid);

/* For commands that work on the catalog and storage directly. */
struct pv_state *pv_daemon_state(struct pv_daemon *d);
struct pv_config *pv_daemon_config(struct pv_daemon *d);
struct event_base *pv_daemon_base(struct pv_daemon *d);

/* Job types configured but not available in this build: a message per job, or none. */
/* A configured job as the planner takes it (no last slot: sched_load reads that from the state). */
struct pv_config_job;
struct pv_sched_job;
struct pv_sched_job pv_daemon_sched_job(const struct pv_config_job *job);
bool pv_daemon_check_job_types(const struct pv_config *cfg, struct pv_strv *problems);

#endif
