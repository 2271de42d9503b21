/* Unit tests for src/daemon.c: the event loop keeps the scheduler's timer on time under load. */
#include <check.h>
#include <stdlib.h>
#include <time.h>

#include <event2/event.h>

#include "daemon.h"

#define HOGS    300 /* ready callbacks of the default priority, as many connections ready at once */
#define HOG_SEC 0.002
#define DUE_SEC 0.010

static double
now_mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct hogs {
	int ran;
	int ran_before_timer;
	double fired;
};

static void
hog_cb(evutil_socket_t fd, short what, void *arg)
{
	struct hogs *h = arg;
	double until = now_mono() + HOG_SEC;

	while (now_mono() < until)
		; /* a SCRAM exchange's worth of CPU */
	h->ran++;
}

static void
timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct hogs *h = arg;

	h->fired = now_mono();
	h->ran_before_timer = h->ran;
}

/* 300 callbacks of 2 ms each are ready when a 10 ms timer is added: it fires after a few of them, not
 * after all 600 ms, because they yield to it every few ms. */
START_TEST(test_daemon__timer_preempts_ready_callbacks)
{
	struct event_base *base = pv_daemon_loop_new();
	struct event *hog[HOGS], *timer;
	struct timeval due = {0, (suseconds_t)(DUE_SEC * 1e6)};
	struct hogs h = {0};
	double t0;

	ck_assert_ptr_nonnull(base);
	timer = evtimer_new(base, timer_cb, &h);
	ck_assert_int_eq(event_priority_set(timer, PV_DAEMON_PRIO_TIMER), 0);
	for (int i = 0; i < HOGS; i++) {
		hog[i] = event_new(base, -1, 0, hog_cb, &h);
		event_active(hog[i], EV_TIMEOUT, 0);
	}
	t0 = now_mono();
	event_add(timer, &due);
	event_base_dispatch(base);
	ck_assert_int_eq(h.ran, HOGS);
	ck_assert_msg(h.fired - t0 < 0.150, "the timer fired %.0f ms after it was added",
	              (h.fired - t0) * 1000);
	ck_assert_int_lt(h.ran_before_timer, HOGS / 2);
	for (int i = 0; i < HOGS; i++)
		event_free(hog[i]);
	event_free(timer);
	event_base_free(base);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("daemon");
	TCase *tc = tcase_create("loop");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, test_daemon__timer_preempts_ready_callbacks);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
