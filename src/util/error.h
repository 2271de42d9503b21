/* Error values: a stable code plus a human message, filled by fallible functions. */
#ifndef PV_UTIL_ERROR_H
#define PV_UTIL_ERROR_H

#include <stdbool.h>

/* Stable numbers: they appear in logs and in the control protocol. Append only. */
enum pv_errcode {
	PV_OK = 0,
	PV_ERR_INTERNAL = 1,
	PV_ERR_IO = 2,
	PV_ERR_CONFIG = 10,
	PV_ERR_CONFIG_SYNTAX = 11,
	PV_ERR_CONFIG_UNKNOWN_KEY = 12,
	PV_ERR_CONFIG_TYPE = 13,
	PV_ERR_CONFIG_VALUE = 14,
	PV_ERR_CONFIG_REFERENCE = 15,
	PV_ERR_CONFIG_DUPLICATE = 16,
	PV_ERR_CONFIG_SECRET = 17,
	PV_ERR_CONFIG_MISSING = 18,
	PV_ERR_SCHEDULE = 20,
	PV_ERR_TIMEZONE = 21,
	PV_ERR_STATE = 30,
	PV_ERR_PROC = 40,
	PV_ERR_PG_CONNECT = 50,
	PV_ERR_PG_QUERY = 51,
	PV_ERR_PG_TIMEOUT = 52,
	PV_ERR_CTL = 60,
	PV_ERR_USAGE = 61,
	PV_ERR_DENIED = 62,
	PV_ERR_NOT_FOUND = 63,
	PV_ERR_BUSY = 64,
};

#define PV_ERROR_MSG_MAX 1024

struct pv_error {
	enum pv_errcode code;
	char msg[PV_ERROR_MSG_MAX];
};

/* Fill err (may be NULL) and return false, so callers can `return pv_error_set(...)`. */
bool pv_error_set(struct pv_error *err, enum pv_errcode code, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* Prepend context ("loading x: ") to an existing message. */
bool pv_error_prefix(struct pv_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void pv_error_clear(struct pv_error *err);

/* Stable lowercase name of a code, e.g. "config_unknown_key". */
const char *pv_error_code_name(enum pv_errcode code);

#endif
