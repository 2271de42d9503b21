/* Error values: formatting and code names. */
#include "util/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

bool
pv_error_set(struct pv_error *err, enum pv_errcode code, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL)
		return false;
	err->code = code;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	return false;
}

bool
pv_error_prefix(struct pv_error *err, const char *fmt, ...)
{
	char prefix[PV_ERROR_MSG_MAX];
	char old[PV_ERROR_MSG_MAX];
	va_list ap;

	if (err == NULL)
		return false;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	memcpy(old, err->msg, sizeof(old));
	snprintf(err->msg, sizeof(err->msg), "%s%s", prefix, old);
	return false;
}

void
pv_error_clear(struct pv_error *err)
{
	if (err == NULL)
		return;
	err->code = PV_OK;
	err->msg[0] = '\0';
}

const char *
pv_error_code_name(enum pv_errcode code)
{
	switch (code) {
	case PV_OK: return "ok";
	case PV_ERR_INTERNAL: return "internal";
	case PV_ERR_IO: return "io";
	case PV_ERR_CONFIG: return "config";
	case PV_ERR_CONFIG_SYNTAX: return "config_syntax";
	case PV_ERR_CONFIG_UNKNOWN_KEY: return "config_unknown_key";
	case PV_ERR_CONFIG_TYPE: return "config_type";
	case PV_ERR_CONFIG_VALUE: return "config_value";
	case PV_ERR_CONFIG_REFERENCE: return "config_reference";
	case PV_ERR_CONFIG_DUPLICATE: return "config_duplicate";
	case PV_ERR_CONFIG_SECRET: return "config_secret";
	case PV_ERR_CONFIG_MISSING: return "config_missing";
	case PV_ERR_SCHEDULE: return "schedule";
	case PV_ERR_TIMEZONE: return "timezone";
	case PV_ERR_STATE: return "state";
	case PV_ERR_PROC: return "proc";
	case PV_ERR_PG_CONNECT: return "pg_connect";
	case PV_ERR_PG_QUERY: return "pg_query";
	case PV_ERR_PG_TIMEOUT: return "pg_timeout";
	case PV_ERR_CTL: return "ctl";
	case PV_ERR_USAGE: return "usage";
	case PV_ERR_DENIED: return "denied";
	case PV_ERR_NOT_FOUND: return "not_found";
	case PV_ERR_BUSY: return "busy";
	}
	return "unknown";
}
