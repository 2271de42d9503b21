/* Run blocking work on a short-lived thread and hear about its end on the event loop. */
#ifndef PV_LOOP_WORK_H
#define PV_LOOP_WORK_H

#include <stdbool.h>

#include "util/error.h"

struct event_base;

/* Runs on the worker thread. It must not touch libevent or anything owned by the loop thread. */
typedef void (*pv_work_fn)(void *arg);
/* Runs on the loop thread once fn has returned and the thread has been joined. */
typedef void (*pv_work_done_cb)(void *arg);

/*
 * Start fn(arg) on a new thread with every signal blocked (so process signals keep reaching the
 * loop thread, and a write to a closed pipe fails with EPIPE instead of killing the daemon);
 * when it returns, done(arg) runs on base's loop exactly once. The thread signals its end
 * through an eventfd watched by a libevent event, which is the only way it talks to the loop.
 * Fails (done never runs) only when the eventfd or the thread cannot be created.
 */
bool pv_work_run(struct event_base *base, pv_work_fn fn, void *arg, pv_work_done_cb done,
                 struct pv_error *err);

#endif
