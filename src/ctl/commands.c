/* The control command table: each command's name, whether it changes the daemon, and its handler. */
#include "ctl/commands.h"

#include "daemon.h"

static bool
cmd_status(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	*data = pv_daemon_status_json(ctx);
	return true;
}

static bool
cmd_jobs(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	*data = json_pack("{s:o}", "jobs", pv_daemon_jobs_json(ctx));
	return true;
}

static bool
cmd_run(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	const char *job = json_string_value(json_object_get(args, "job"));
	int64_t id;

	if (job == NULL)
		return pv_error_set(err, PV_ERR_USAGE, "run: missing \"job\"");
	if (!pv_daemon_run_job(ctx, job, &id, err))
		return false;
	*data = json_pack("{s:s,s:I}", "job", job, "run", (json_int_t)id);
	return true;
}

static bool
cmd_reload(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	if (!pv_daemon_reload(ctx, err))
		return pv_error_prefix(err, "reload failed, previous configuration kept: ");
	*data = json_pack("{s:b}", "reloaded", 1);
	return true;
}

const struct pv_ctl_command pv_ctl_commands[] = {
        {"status", false, cmd_status}, {"jobs", false, cmd_jobs}, {"run", true, cmd_run},
        {"reload", true, cmd_reload},  {NULL, false, NULL},
};
