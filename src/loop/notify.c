/* systemd readiness protocol: READY, RELOADING, STOPPING, STATUS and the watchdog. */
#include "loop/notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#ifdef PV_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "util/log.h"

static struct notify_local {
	struct event *watchdog;
	uint64_t watchdog_usec;
} notify_local;

static void
send_state(const char *state)
{
#ifdef PV_HAVE_SYSTEMD
	int r = sd_notify(0, state);
	if (r < 0)
		pv_log_debug("sd_notify failed error=%s", strerror(-r));
#else
	/* The protocol is one datagram on $NOTIFY_SOCKET ('@' = abstract namespace). */
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa;
	size_t len;
	int fd;

	if (path == NULL || path[0] == '\0')
		return;
	len = strlen(path);
	if (len >= sizeof(sa.sun_path))
		return;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, path, len);
	if (sa.sun_path[0] == '@')
		sa.sun_path[0] = '\0';
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa,
	           (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0)
		pv_log_debug("notify socket send failed error=%s", strerror(errno));
	close(fd);
#endif
}

static void
watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
	send_state("WATCHDOG=1");
}

void
pv_notify_init(struct event_base *base)
{
	const char *usec = getenv("WATCHDOG_USEC");
	const char *pid = getenv("WATCHDOG_PID");
	struct timeval tv;

	notify_local.watchdog_usec = 0;
	if (usec == NULL)
		return;
	if (pid != NULL && (pid_t)strtol(pid, NULL, 10) != getpid())
		return;
	notify_local.watchdog_usec = strtoull(usec, NULL, 10);
	if (notify_local.watchdog_usec == 0)
		return;
	/* Ping at half the interval: a stalled loop then misses the deadline, which is the point. */
	tv.tv_sec = (time_t)(notify_local.watchdog_usec / 2 / 1000000);
	tv.tv_usec = (suseconds_t)(notify_local.watchdog_usec / 2 % 1000000);
	notify_local.watchdog = event_new(base, -1, EV_PERSIST, watchdog_cb, NULL);
	event_add(notify_local.watchdog, &tv);
	send_state("WATCHDOG=1");
}

void
pv_notify_shutdown(void)
{
	if (notify_local.watchdog != NULL) {
		event_free(notify_local.watchdog);
		notify_local.watchdog = NULL;
	}
}

uint64_t
pv_notify_watchdog_usec(void)
{
	return notify_local.watchdog_usec;
}

void
pv_notify_ready(void)
{
	send_state("READY=1");
}

void
pv_notify_reloading(void)
{
	struct timespec ts;
	char buf[96];

	clock_gettime(CLOCK_MONOTONIC, &ts);
	snprintf(buf, sizeof(buf), "RELOADING=1\nMONOTONIC_USEC=%llu",
	         (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000ULL);
	send_state(buf);
}

void
pv_notify_stopping(void)
{
	send_state("STOPPING=1");
}

void
pv_notify_status(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n = snprintf(buf, sizeof(buf), "STATUS=");

	va_start(ap, fmt);
	vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
	va_end(ap);
	/* One assignment per line in the protocol: a newline in a message must not add another. */
	for (char *p = buf; *p; p++) {
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	}
	send_state(buf);
}
