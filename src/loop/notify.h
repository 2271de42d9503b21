/* systemd readiness protocol: READY, RELOADING, STOPPING, STATUS and the watchdog. */
#ifndef PV_LOOP_NOTIFY_H
#define PV_LOOP_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

struct event_base;

/* Start the watchdog keep-alive timer when systemd asked for one (WATCHDOG_USEC). */
void pv_notify_init(struct event_base *base);
void pv_notify_shutdown(void);

void pv_notify_ready(void);
/* RELOADING=1 with MONOTONIC_USEC, as systemd >= 253 expects for Type=notify-reload. */
void pv_notify_reloading(void);
void pv_notify_stopping(void);
void pv_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Watchdog interval in microseconds, 0 when disabled. */
uint64_t pv_notify_watchdog_usec(void);

#endif
