/* Short-lived worker threads whose completion is delivered to the event loop through an eventfd. */
#include "loop/work.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "util/mem.h"

struct pv_work {
	pthread_t thread;
	int efd;
	struct event *ev;
	pv_work_fn fn;
	pv_work_done_cb done;
	void *arg;
};

static void *
work_main(void *p)
{
	struct pv_work *w = p;
	uint64_t one = 1;
	ssize_t n;

	w->fn(w->arg);
	/* An eventfd write of 1 cannot block or fail short of a programming error; retry EINTR only. */
	do
		n = write(w->efd, &one, sizeof(one));
	while (n < 0 && errno == EINTR);
	return NULL;
}

static void
work_finished(evutil_socket_t fd, short what, void *p)
{
	struct pv_work *w = p;
	uint64_t v;
	ssize_t n;

	n = read(fd, &v, sizeof(v));
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return; /* spurious wake-up: the event is persistent, wait for the real one */
	pthread_join(w->thread, NULL);
	event_free(w->ev);
	close(w->efd);
	w->done(w->arg);
	free(w);
}

bool
pv_work_run(struct event_base *base, pv_work_fn fn, void *arg, pv_work_done_cb done, struct pv_error *err)
{
	struct pv_work *w = pv_calloc(1, sizeof(*w));
	sigset_t all, old;
	int rc;

	w->fn = fn;
	w->done = done;
	w->arg = arg;
	w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (w->efd < 0) {
		pv_error_set(err, PV_ERR_INTERNAL, "cannot create an eventfd for a worker thread: %s",
		             strerror(errno));
		free(w);
		return false;
	}
	w->ev = event_new(base, w->efd, EV_READ | EV_PERSIST, work_finished, w);
	if (w->ev == NULL || event_add(w->ev, NULL) != 0) {
		pv_error_set(err, PV_ERR_INTERNAL, "cannot watch a worker thread's eventfd");
		goto fail;
	}
	/* The thread inherits the mask: block everything so signals go to the loop thread. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&w->thread, NULL, work_main, w);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		pv_error_set(err, PV_ERR_INTERNAL, "cannot start a worker thread: %s", strerror(rc));
		goto fail;
	}
	return true;
fail:
	if (w->ev != NULL)
		event_free(w->ev);
	close(w->efd);
	free(w);
	return false;
}
