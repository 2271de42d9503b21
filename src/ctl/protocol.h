/* Control protocol: one JSON object per line each way, shared by the daemon and pgvigilctl. */
#ifndef PV_CTL_PROTOCOL_H
#define PV_CTL_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "util/error.h"

/* Longest request or response line accepted. */
#define PV_CTL_MAX_LINE (1024 * 1024)

/*
 * Request:  {"cmd": "run", "args": {"job": "health"}}
 * Response: {"ok": true, "data": {...}}
 *           {"ok": false, "error": {"code": "denied", "message": "..."}}
 */

/* Serialize to one line including the trailing newline; caller frees. */
char *pv_ctl_encode(const json_t *msg);
json_t *pv_ctl_request_new(const char *cmd, json_t *args /* stolen, may be NULL */);
/* Parse a request line; fills *cmd (borrowed from *out) and *args (borrowed, may be NULL). */
bool pv_ctl_request_parse(const char *line, size_t len, json_t **out, const char **cmd, json_t **args,
                          struct pv_error *err);
json_t *pv_ctl_response_ok(json_t *data /* stolen, may be NULL */);
json_t *pv_ctl_response_error(const struct pv_error *err);

#endif
