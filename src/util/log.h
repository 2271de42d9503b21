/* Logging: one line per event on stderr, syslog priority prefixes under systemd. */
#ifndef PV_UTIL_LOG_H
#define PV_UTIL_LOG_H

#include <stdbool.h>

/* Values are syslog priorities, so they can be printed as "<N>" for journald. */
enum pv_log_level {
	PV_LOG_CRIT = 2,
	PV_LOG_ERROR = 3,
	PV_LOG_WARNING = 4,
	PV_LOG_NOTICE = 5,
	PV_LOG_INFO = 6,
	PV_LOG_DEBUG = 7,
};

enum pv_log_target {
	PV_LOG_TO_STDERR,  /* UTC timestamp, ident[pid], level word */
	PV_LOG_TO_JOURNAL, /* "<N>" prefixes on stderr; journald adds time and pid */
	PV_LOG_TO_SYSLOG,  /* syslog(3), when detached from a terminal without systemd */
};

void pv_log_init(const char *ident, enum pv_log_target target);
/* True when stderr is connected to the journal (JOURNAL_STREAM names our stderr). */
bool pv_log_stderr_is_journal(void);
void pv_log_set_level(enum pv_log_level level);
enum pv_log_level pv_log_get_level(void);
bool pv_log_level_parse(const char *s, enum pv_log_level *out);
const char *pv_log_level_name(enum pv_log_level level);

void pv_log(enum pv_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define pv_log_crit(...)   pv_log(PV_LOG_CRIT, __VA_ARGS__)
#define pv_log_error(...)  pv_log(PV_LOG_ERROR, __VA_ARGS__)
#define pv_log_warn(...)   pv_log(PV_LOG_WARNING, __VA_ARGS__)
#define pv_log_notice(...) pv_log(PV_LOG_NOTICE, __VA_ARGS__)
#define pv_log_info(...)   pv_log(PV_LOG_INFO, __VA_ARGS__)
#define pv_log_debug(...)  pv_log(PV_LOG_DEBUG, __VA_ARGS__)

/*
 * Messages are lowercase "what happened" followed by key=value context, e.g.
 *   pv_log_info("job finished job=%s run=%lld result=ok duration=%.3f", ...)
 * Values that may contain spaces are quoted with pv_log_quote().
 */

/* Quote a value for key=value context if it contains spaces, quotes or control characters.
 * Returns a pointer to one of a few rotating static buffers (for use within a single pv_log call). */
const char *pv_log_quote(const char *value);

#endif
