/* The emergency `restore` control command and `restore-progress`: one restore at a time. */
#include "ctl/restore.h"

#include <stdlib.h>
#include <string.h>

#include <event2/dns.h>
#include <event2/event.h>

#include "config/config.h"
#include "daemon.h"
#include "jobs/probe.h"
#include "util/log.h"
#include "util/mem.h"

struct restore {
	struct pv_daemon *d;
	struct pv_ctl_call *call;
	struct pv_probe *probe;
	struct event *watch; /* notices a client that went away */
	uid_t uid;
	bool cancelled;
};

static struct restore_local {
	/* The daemon's resolver is not among its accessors: restores share one of their own. */
	struct evdns_base *dns;
	struct restore *current;
} restore_local;

static void
on_done(json_t *report, const struct pv_error *err, void *arg)
{
	struct restore *r = arg;

	restore_local.current = NULL;
	event_free(r->watch);
	pv_log_notice("restore finished uid=%d result=%s seconds=%.3f", (int)r->uid,
	              json_is_true(json_object_get(report, "ok")) ? "ok" : "failed",
	              json_number_value(json_object_get(report, "total_seconds")));
	pv_ctl_call_done(r->call, report, err);
	free(r);
}

/* Ctrl-C on pgvigilctl closes its connection: stop rather than restore for nobody. */
static void
watch_cb(evutil_socket_t fd, short what, void *arg)
{
	struct restore *r = arg;

	if (r->cancelled || pv_ctl_call_connected(r->call))
		return;
	r->cancelled = true;
	pv_log_warn("restore client went away: cancelling uid=%d", (int)r->uid);
	pv_probe_restore_cancel(r->probe, "cancelled: the client went away");
}

void
pv_ctl_restore(void *ctx, struct pv_ctl_call *call, json_t *args)
{
	struct pv_daemon *d = ctx;
	struct pv_probe_restore_opts o = {0};
	struct timeval tv = {1, 0};
	struct pv_error err;
	json_t *force = json_object_get(args, "force");
	struct restore *r;

	o.backup = json_string_value(json_object_get(args, "backup"));
	o.database = json_string_value(json_object_get(args, "database"));
	o.to = json_string_value(json_object_get(args, "to"));
	o.force = json_is_true(force);
	if (o.backup == NULL || o.database == NULL || o.to == NULL ||
	    (force != NULL && !json_is_boolean(force))) {
		pv_error_set(
		        &err, PV_ERR_USAGE,
		        "restore: \"backup\", \"database\" and \"to\" (strings) are required; \"force\" is a "
		        "boolean");
		pv_ctl_call_done(call, NULL, &err);
		return;
	}
	if (restore_local.current != NULL) {
		struct pv_probe_progress pr;
		pv_probe_restore_progress(restore_local.current->probe, &pr);
		pv_error_set(&err, PV_ERR_BUSY,
		             "a restore is already running (%s into %s, %s); one at a time",
		             pr.backup ? pr.backup : "?", pr.target ? pr.target : "?", pr.phase);
		pv_ctl_call_done(call, NULL, &err);
		return;
	}
	if (restore_local.dns == NULL) {
		restore_local.dns =
		        evdns_base_new(pv_daemon_base(d),
		                       EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
		if (restore_local.dns == NULL)
			restore_local.dns =
			        evdns_base_new(pv_daemon_base(d), EVDNS_BASE_DISABLE_WHEN_INACTIVE);
	}
	r = pv_calloc(1, sizeof(*r));
	r->d = d;
	r->call = call;
	r->uid = pv_ctl_call_peer(call)->uid;
	o.base = pv_daemon_base(d);
	o.dns = restore_local.dns;
	o.state = pv_daemon_state(d);
	o.cfg = pv_daemon_config(d);
	r->probe = pv_probe_restore_start(&o, on_done, r, &err);
	if (r->probe == NULL) {
		pv_log_warn("restore refused uid=%d database=%s backup=%s error=%s", (int)r->uid,
		            pv_log_quote(o.database), pv_log_quote(o.backup), pv_log_quote(err.msg));
		pv_ctl_call_done(call, NULL, &err);
		free(r);
		return;
	}
	restore_local.current = r;
	r->watch = event_new(o.base, -1, EV_PERSIST, watch_cb, r);
	if (r->watch == NULL)
		abort();
	event_add(r->watch, &tv);
}

bool
pv_ctl_restore_progress(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data,
                        struct pv_error *err)
{
	struct pv_probe_progress pr;

	if (restore_local.current == NULL) {
		*data = json_pack("{s:b}", "running", 0);
		return true;
	}
	pv_probe_restore_progress(restore_local.current->probe, &pr);
	*data = json_pack("{s:b,s:I,s:I,s:s,s:f,s:s?,s:s?}", "running", 1, "bytes", (json_int_t)pr.bytes,
	                  "total", (json_int_t)pr.total, "phase", pr.phase, "elapsed", pr.elapsed, "backup",
	                  pr.backup, "target", pr.target);
	return true;
}
