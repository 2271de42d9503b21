/* The alert state machine (pure): true conditions plus "now" in, state updated and notifications out. */
#ifndef PV_ALERT_ENGINE_H
#define PV_ALERT_ENGINE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "alert/rules.h"
#include "config/config.h"
#include "util/error.h"

/* A resolved alert is kept this long (for `alerts` and for the persisted set), then forgotten. */
#define PV_ALERT_RESOLVED_KEEP (24 * 3600)

enum pv_alert_status { PV_ALERT_PENDING = 0, PV_ALERT_FIRING = 1, PV_ALERT_RESOLVED = 2 };

/* One stateful alert, identified by its fingerprint. Strings are owned. */
struct pv_alert_state {
	char *fingerprint;
	enum pv_rule rule;
	enum pv_severity severity; /* the current one; a change while firing is notified */
	enum pv_alert_status status;
	time_t first_seen;    /* the condition became true (this episode) */
	time_t fired_at;      /* 0 until it fires */
	time_t last_sent;     /* last firing / repeat / severity notification */
	time_t resolved_at;   /* 0 unless resolved */
	bool last_suppressed; /* the last notification was suppressed: resend when the silence ends */
	char *value;
	char *threshold;
	char *database; /* or NULL */
	char *job;      /* or NULL */
	char *notifier; /* or NULL */
};

struct pv_alert_set {
	struct pv_alert_state *v;
	size_t n;
	size_t cap;
};

/* A silence: suppresses the notifications of `rule` (for `database` only when not NULL) until `until`. */
struct pv_alert_silence {
	int64_t id;
	enum pv_rule rule;
	const char *database; /* or NULL: every database */
	time_t until;         /* active while now < until */
};

struct pv_alert_suppress {
	const struct pv_alert_silence *silences;
	size_t n_silences;
	time_t maintenance_until; /* maintenance mode while now < maintenance_until; 0 = off */
};

enum pv_alert_kind {
	PV_ALERT_NOTIFY_FIRING = 0, /* fired (after group_wait), or first unsuppressed send after a silence */
	PV_ALERT_NOTIFY_REPEAT = 1, /* still firing, repeat_every after the last send */
	PV_ALERT_NOTIFY_SEVERITY = 2, /* the severity changed while firing */
	PV_ALERT_NOTIFY_RESOLVED = 3, /* no longer true (send_resolved, and only when it had fired) */
	PV_ALERT_NOTIFY_EVENT = 4,    /* a one-shot condition (info events, job_missed) */
};

/* One notification to hand to the outbox. Strings are owned. */
struct pv_alert_notification {
	enum pv_alert_kind kind;
	enum pv_rule rule;
	enum pv_severity severity;
	char *fingerprint;
	char *value;
	char *threshold;
	char *database;  /* or NULL */
	char *job;       /* or NULL */
	char *notifier;  /* or NULL */
	time_t at;       /* the step's now; for events the event's time */
	time_t fired_at; /* the episode (fingerprint + fired_at identify an alert for threading); 0 for events
	                  */
	bool suppressed; /* by a silence or maintenance: record it, do not deliver it */
	int64_t silence_id; /* the silence that suppressed it; 0 for maintenance or when not suppressed */
};

/* The notifications of one step: they are one batch. */
struct pv_alert_notifications {
	struct pv_alert_notification *v;
	size_t n;
	size_t cap;
};

/*
 * Advance the state machine to `now` given the conditions true now (from pv_alert_rules_eval). `out` is
 * cleared first. `sup` may be NULL. Transitions, with acfg's group_wait, repeat_every and send_resolved:
 *   - newly true: pending (first_seen = now);
 *   - pending for >= group_wait: firing, one FIRING notification (so group_wait 0 fires at once);
 *   - pending and no longer true: forgotten, nothing is ever sent (a flap within group_wait);
 *   - firing, >= repeat_every since the last send: REPEAT;
 *   - firing with another severity: SEVERITY (and the repeat clock restarts);
 *   - firing, the last send suppressed, and no longer suppressed: FIRING again (silence expired);
 *   - firing and no longer true: resolved, one RESOLVED notification when send_resolved;
 *   - resolved and true again: a new episode (pending);
 *   - a rule disabled in acfg: its alerts are forgotten without a notice;
 *   - resolved for PV_ALERT_RESOLVED_KEEP: forgotten.
 * One-shot conditions become EVENT notifications in this step and leave no state. Suppressed
 * notifications are produced with suppressed = true; evaluation and state are not affected.
 */
void pv_alert_engine_step(const struct pv_config_alerts *acfg, struct pv_alert_set *states,
                          const struct pv_alert_conditions *now_true, const struct pv_alert_suppress *sup,
                          time_t now, struct pv_alert_notifications *out);

/* When the next step could send something without a new condition (pending fires, repeats); 0: never. */
time_t pv_alert_engine_next_due(const struct pv_config_alerts *acfg, const struct pv_alert_set *states);

/* Whether a notification of `rule` about `database` (may be NULL) is suppressed at `now`. */
bool pv_alert_suppressed(const struct pv_alert_suppress *sup, enum pv_rule rule, const char *database,
                         time_t now, int64_t *silence_id);

const struct pv_alert_state *pv_alert_set_find(const struct pv_alert_set *set, const char *fingerprint);
void pv_alert_set_clear(struct pv_alert_set *set);
void pv_alert_notifications_clear(struct pv_alert_notifications *n);

const char *pv_alert_status_name(enum pv_alert_status status); /* "pending", "firing", "resolved" */
const char *
pv_alert_kind_name(enum pv_alert_kind kind); /* "firing", "repeat", "severity", "resolved", "event" */

/*
 * Persistence format: {"version": 1, "alerts": [{"fingerprint", "rule", "severity", "status", "first_seen",
 * "fired_at", "last_sent", "resolved_at", "last_suppressed", "value", "threshold", "database", "job",
 * "notifier"}, ...]}, times as integers (0 = none), absent strings as null.
 */
json_t *pv_alert_set_to_json(const struct pv_alert_set *set);
/* Replace *set (cleared first) with the set in `j`; false and err on a malformed document. */
bool pv_alert_set_from_json(const json_t *j, struct pv_alert_set *set, struct pv_error *err);

#endif
