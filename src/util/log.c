/* Logging: one line per event on stderr, syslog priority prefixes under systemd. */
#include "util/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static struct log_local {
	const char *ident;
	enum pv_log_target target;
	enum pv_log_level level;
} log_local = {"pgvigil", PV_LOG_TO_STDERR, PV_LOG_INFO};

static const char *const level_names[] = {
        [PV_LOG_CRIT] = "crit",     [PV_LOG_ERROR] = "error", [PV_LOG_WARNING] = "warning",
        [PV_LOG_NOTICE] = "notice", [PV_LOG_INFO] = "info",   [PV_LOG_DEBUG] = "debug",
};

void
pv_log_init(const char *ident, enum pv_log_target target)
{
	log_local.ident = ident;
	log_local.target = target;
	if (target == PV_LOG_TO_SYSLOG)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

bool
pv_log_stderr_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;

	if (js == NULL || sscanf(js, "%llu:%llu", &dev, &ino) != 2)
		return false;
	if (fstat(STDERR_FILENO, &st) != 0)
		return false;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void
pv_log_set_level(enum pv_log_level level)
{
	log_local.level = level;
}

enum pv_log_level
pv_log_get_level(void)
{
	return log_local.level;
}

bool
pv_log_level_parse(const char *s, enum pv_log_level *out)
{
	for (int i = PV_LOG_CRIT; i <= PV_LOG_DEBUG; i++) {
		if (strcasecmp(s, level_names[i]) == 0) {
			*out = (enum pv_log_level)i;
			return true;
		}
	}
	if (strcasecmp(s, "warn") == 0) {
		*out = PV_LOG_WARNING;
		return true;
	}
	return false;
}

const char *
pv_log_level_name(enum pv_log_level level)
{
	if (level < PV_LOG_CRIT || level > PV_LOG_DEBUG)
		return "unknown";
	return level_names[level];
}

void
pv_log(enum pv_log_level level, const char *fmt, ...)
{
	char line[4096];
	size_t n = 0;
	va_list ap;

	if (level > log_local.level)
		return;
	if (log_local.target == PV_LOG_TO_SYSLOG) {
		n = 0;
		line[0] = '\0';
	} else if (log_local.target == PV_LOG_TO_JOURNAL) {
		n = (size_t)snprintf(line, sizeof(line), "<%d>", (int)level);
	} else {
		struct timeval tv;
		struct tm tm;
		gettimeofday(&tv, NULL);
		gmtime_r(&tv.tv_sec, &tm);
		n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
		n += (size_t)snprintf(line + n, sizeof(line) - n,
		                      ".%03dZ %s[%d] %s: ", (int)(tv.tv_usec / 1000), log_local.ident,
		                      (int)getpid(), pv_log_level_name(level));
	}
	va_start(ap, fmt);
	if (n < sizeof(line))
		vsnprintf(line + n, sizeof(line) - n, fmt, ap);
	va_end(ap);
	/* One event, one line: a message must never forge a second log line. */
	for (char *p = line; *p; p++) {
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	}
	if (log_local.target == PV_LOG_TO_SYSLOG)
		syslog((int)level, "%s", line);
	else
		fprintf(stderr, "%s\n", line);
}

const char *
pv_log_quote(const char *value)
{
	static char bufs[4][512];
	static int next;
	char *buf;
	size_t o = 0;
	bool need = value[0] == '\0';

	for (const char *p = value; *p && !need; p++) {
		if (*p == ' ' || *p == '"' || *p == '=' || (unsigned char)*p < 0x20)
			need = true;
	}
	if (!need)
		return value;
	buf = bufs[next];
	next = (next + 1) % 4;
	buf[o++] = '"';
	for (const char *p = value; *p && o + 4 < sizeof(bufs[0]); p++) {
		if (*p == '"' || *p == '\\') {
			buf[o++] = '\\';
			buf[o++] = *p;
		} else if ((unsigned char)*p < 0x20) {
			buf[o++] = ' ';
		} else {
			buf[o++] = *p;
		}
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}
