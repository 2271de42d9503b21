/* Control protocol: one JSON object per line each way, shared by the daemon and pgvigilctl. */
#include "ctl/protocol.h"

#include <string.h>

#include "util/mem.h"

char *
pv_ctl_encode(const json_t *msg)
{
	char *body = json_dumps(msg, JSON_COMPACT | JSON_ENSURE_ASCII);
	char *line;

	if (body == NULL)
		return pv_strdup(
		        "{\"ok\":false,\"error\":{\"code\":\"internal\",\"message\":\"cannot encode\"}}\n");
	line = pv_asprintf("%s\n", body);
	free(body);
	return line;
}

json_t *
pv_ctl_request_new(const char *cmd, json_t *args)
{
	json_t *req = json_object();
	json_object_set_new(req, "cmd", json_string(cmd));
	if (args != NULL)
		json_object_set_new(req, "args", args);
	return req;
}

bool
pv_ctl_request_parse(const char *line, size_t len, json_t **out, const char **cmd, json_t **args,
                     struct pv_error *err)
{
	json_error_t jerr;
	json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	json_t *c;

	*out = NULL;
	if (req == NULL)
		return pv_error_set(err, PV_ERR_USAGE, "malformed request: %s at column %d", jerr.text,
		                    jerr.column);
	if (!json_is_object(req)) {
		json_decref(req);
		return pv_error_set(err, PV_ERR_USAGE, "malformed request: expected a JSON object");
	}
	c = json_object_get(req, "cmd");
	if (!json_is_string(c)) {
		json_decref(req);
		return pv_error_set(err, PV_ERR_USAGE, "malformed request: \"cmd\" must be a string");
	}
	*args = json_object_get(req, "args");
	if (*args != NULL && !json_is_object(*args)) {
		json_decref(req);
		return pv_error_set(err, PV_ERR_USAGE, "malformed request: \"args\" must be an object");
	}
	*cmd = json_string_value(c);
	*out = req;
	return true;
}

json_t *
pv_ctl_response_ok(json_t *data)
{
	json_t *resp = json_object();
	json_object_set_new(resp, "ok", json_true());
	json_object_set_new(resp, "data", data != NULL ? data : json_object());
	return resp;
}

json_t *
pv_ctl_response_error(const struct pv_error *err)
{
	json_t *resp = json_object();
	json_t *e = json_object();
	json_object_set_new(e, "code", json_string(pv_error_code_name(err->code)));
	json_object_set_new(e, "message", json_string(err->msg));
	json_object_set_new(resp, "ok", json_false());
	json_object_set_new(resp, "error", e);
	return resp;
}
