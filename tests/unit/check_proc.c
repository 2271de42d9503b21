/* Unit tests for src/loop/proc: real children on a real event loop. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "loop/proc.h"
#include "util/error.h"

/* Must match READ_CHUNK in proc.c: how far one read may overshoot the high-water mark. */
#define READ_CHUNK (64 * 1024)
#define MAX_LINES  64

static const char *const test_env[] = {"PATH=/usr/bin:/bin", NULL};

struct ctx {
	struct event_base *base;
	struct pv_proc *proc;
	int done_count;
	int expect_done;
	struct pv_proc_result res;
	unsigned long long stdout_bytes;
	size_t running_in_done;
	struct evbuffer *out;
	char *lines[MAX_LINES]; /* stdout lines */
	int nlines;
	char *errs[MAX_LINES]; /* stderr lines */
	int nerrs;
	/* backpressure */
	struct evbuffer *held;
	struct event *drain_ev;
	size_t high_water;
	size_t max_buffered;
	bool saw_above_high_water;
	unsigned long long drained;
	/* cancel */
	bool cancel_on_line;
	int cancel_calls;
	pid_t pgid_seen;
};

static void
ctx_init(struct ctx *c)
{
	struct pv_error err;

	memset(c, 0, sizeof(*c));
	c->base = event_base_new();
	ck_assert_ptr_nonnull(c->base);
	ck_assert_msg(pv_proc_init(c->base, &err), "%s", err.msg);
	c->out = evbuffer_new();
	c->expect_done = 1;
}

static void
ctx_free(struct ctx *c)
{
	for (int i = 0; i < c->nlines; i++)
		free(c->lines[i]);
	for (int i = 0; i < c->nerrs; i++)
		free(c->errs[i]);
	if (c->drain_ev != NULL)
		event_free(c->drain_ev);
	evbuffer_free(c->out);
	pv_proc_shutdown();
	event_base_free(c->base);
}

static void
on_stdout(struct pv_proc *proc, struct evbuffer *data, void *arg)
{
	struct ctx *c = arg;

	evbuffer_remove_buffer(data, c->out, evbuffer_get_length(data));
}

static void
on_stdout_line(struct pv_proc *proc, const char *line, void *arg)
{
	struct ctx *c = arg;

	if (c->nlines < MAX_LINES)
		c->lines[c->nlines++] = strdup(line);
	if (c->cancel_on_line) {
		/* Twice: the second call must be a harmless no-op. */
		pv_proc_cancel(proc);
		pv_proc_cancel(proc);
		c->cancel_calls += 2;
	}
}

static void
on_stderr(struct pv_proc *proc, const char *line, void *arg)
{
	struct ctx *c = arg;

	if (c->nerrs < MAX_LINES)
		c->errs[c->nerrs++] = strdup(line);
}

static void
on_done(struct pv_proc *proc, const struct pv_proc_result *res, void *arg)
{
	struct ctx *c = arg;

	c->done_count++;
	c->res = *res;
	c->stdout_bytes = pv_proc_stdout_bytes(proc);
	c->running_in_done = pv_proc_running();
	/* Cancelling a proc that is completing must be a no-op. */
	pv_proc_cancel(proc);
	if (c->drain_ev != NULL)
		event_del(c->drain_ev);
	if (c->done_count >= c->expect_done)
		event_base_loopbreak(c->base);
}

static void
safety_cb(evutil_socket_t fd, short what, void *arg)
{
	ck_abort_msg("child did not complete in time");
}

static struct pv_proc_opts
opts_for(struct ctx *c, const char *const *argv)
{
	struct pv_proc_opts o;

	memset(&o, 0, sizeof(o));
	o.argv = argv;
	o.envp = test_env;
	o.stdin_fd = -1;
	o.stdout_fd = -1;
	o.on_stdout_line = on_stdout_line;
	o.on_stderr = on_stderr;
	o.on_done = on_done;
	o.arg = c;
	return o;
}

/* Run the loop until on_done, then a little longer to catch a second on_done. */
static void
run_loop(struct ctx *c)
{
	struct event *safety = evtimer_new(c->base, safety_cb, c);
	struct timeval limit = {20, 0}, linger = {0, 100 * 1000};

	evtimer_add(safety, &limit);
	event_base_dispatch(c->base);
	event_free(safety);
	event_base_loopexit(c->base, &linger);
	event_base_dispatch(c->base);
	ck_assert_int_eq(c->done_count, c->expect_done);
	ck_assert_uint_eq(pv_proc_running(), 0);
}

static void
spawn_and_run(struct ctx *c, const struct pv_proc_opts *o)
{
	struct pv_error err;

	c->proc = pv_proc_spawn(c->base, o, &err);
	ck_assert_msg(c->proc != NULL, "%s", err.msg);
	ck_assert_uint_eq(pv_proc_running(), 1);
	run_loop(c);
	ck_assert_uint_eq(c->running_in_done, 0);
}

static char *
out_str(struct ctx *c)
{
	size_t n = evbuffer_get_length(c->out);
	char *s = malloc(n + 1);

	evbuffer_copyout(c->out, s, n);
	s[n] = '\0';
	return s;
}

static int
count_fds(void)
{
	char path[64];
	int n = 0;

	for (int fd = 0; fd < 1024; fd++) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		if (access(path, F_OK) == 0)
			n++;
	}
	return n;
}

/* Dead means gone or a zombie: an orphan may wait for a non-reaping pid 1. Polls up to 2s. */
static bool
process_gone(pid_t pid)
{
	for (int i = 0; i < 200; i++) {
		char path[64], buf[256], *rp;
		FILE *f;

		if (kill(pid, 0) != 0 && errno == ESRCH)
			return true;
		snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
		f = fopen(path, "r");
		if (f == NULL)
			return true;
		rp = fgets(buf, sizeof(buf), f) != NULL ? strrchr(buf, ')') : NULL;
		fclose(f);
		if (rp != NULL && rp[1] == ' ' && rp[2] == 'Z')
			return true;
		usleep(10 * 1000);
	}
	return false;
}

START_TEST(test_proc__exit_zero_stdout_captured)
{
	const char *argv[] = {"echo", "hello", "world", NULL};
	struct ctx c;
	struct pv_proc_opts o;
	char *s;

	ctx_init(&c);
	o = opts_for(&c, argv);
	o.on_stdout = on_stdout;
	spawn_and_run(&c, &o);
	ck_assert_int_eq(c.res.cause, PV_PROC_EXITED);
	ck_assert_int_eq(c.res.exit_code, 0);
	ck_assert_int_eq(c.res.signo, 0);
	ck_assert_str_eq(c.res.text, "exited with status 0");
	ck_assert(c.res.elapsed >= 0 && c.res.elapsed < 5);
	s = out_str(&c);
	ck_assert_str_eq(s, "hello world\n");
	ck_assert_uint_eq(c.stdout_bytes, 12);
	free(s);
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__stdout_to_given_fd)
{
	const char *argv[] = {"echo", "to a file", NULL};
	char path[] = "/tmp/check_proc_XXXXXX", buf[64];
	struct ctx c;
	struct pv_proc_opts o;
	int fd = mkstemp(path);
	ssize_t n;

	ck_assert_int_ge(fd, 0);
	unlink(path);
	ctx_init(&c);
	o = opts_for(&c, argv);
	o.stdout_fd = fd;
	spawn_and_run(&c, &o);
	ck_assert_str_eq(c.res.text, "exited with status 0");
	ck_assert_int_eq(c.nlines, 0);
	n = pread(fd, buf, sizeof(buf) - 1, 0);
	ck_assert_int_eq(n, 10);
	buf[n] = '\0';
	ck_assert_str_eq(buf, "to a file\n");
	close(fd);
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__nonzero_exit_code)
{
	const char *argv[] = {"sh", "-c", "echo failing >&2; exit 3", NULL};
	struct ctx c;
	struct pv_proc_opts o;

	ctx_init(&c);
	o = opts_for(&c, argv);
	spawn_and_run(&c, &o);
	ck_assert_int_eq(c.res.cause, PV_PROC_EXITED);
	ck_assert_int_eq(c.res.exit_code, 3);
	ck_assert_str_eq(c.res.text, "exited with status 3");
	ck_assert_int_eq(c.nerrs, 1);
	ck_assert_str_eq(c.errs[0], "failing");
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__killed_by_signal)
{
	const char *argv[] = {"sh", "-c", "kill -KILL $$", NULL};
	struct ctx c;
	struct pv_proc_opts o;

	ctx_init(&c);
	o = opts_for(&c, argv);
	spawn_and_run(&c, &o);
	ck_assert_int_eq(c.res.cause, PV_PROC_SIGNALED);
	ck_assert_int_eq(c.res.signo, SIGKILL);
	ck_assert_str_eq(c.res.text, "killed by signal 9 (Killed)");
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__missing_program_fails_synchronously)
{
	const char *by_name[] = {"pg_dump_pgvigil_missing", NULL};
	const char *by_path[] = {"/nonexistent/pg_dump", NULL};
	const char *not_exec[] = {"/etc/passwd", NULL};
	struct ctx c;
	struct pv_proc_opts o;
	struct pv_error err;
	int fds_before = count_fds();

	ctx_init(&c);
	fds_before = count_fds();
	o = opts_for(&c, by_name);
	ck_assert_ptr_null(pv_proc_spawn(c.base, &o, &err));
	ck_assert_int_eq(err.code, PV_ERR_PROC);
	ck_assert_str_eq(err.msg, "cannot execute pg_dump_pgvigil_missing: No such file or directory");
	o = opts_for(&c, by_path);
	ck_assert_ptr_null(pv_proc_spawn(c.base, &o, &err));
	ck_assert_str_eq(err.msg, "cannot execute /nonexistent/pg_dump: No such file or directory");
	o = opts_for(&c, not_exec);
	ck_assert_ptr_null(pv_proc_spawn(c.base, &o, &err));
	ck_assert_str_eq(err.msg, "cannot execute /etc/passwd: Permission denied");
	ck_assert_uint_eq(pv_proc_running(), 0);
	ck_assert_int_eq(count_fds(), fds_before);
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__bad_cwd_fails_synchronously)
{
	const char *argv[] = {"true", NULL};
	struct ctx c;
	struct pv_proc_opts o;
	struct pv_error err;

	ctx_init(&c);
	o = opts_for(&c, argv);
	o.cwd = "/nonexistent-pgvigil-dir";
	ck_assert_ptr_null(pv_proc_spawn(c.base, &o, &err));
	ck_assert_str_eq(
	        err.msg,
	        "cannot change directory to /nonexistent-pgvigil-dir for true: No such file or directory");
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__cwd_is_applied)
{
	const char *argv[] = {"pwd", NULL};
	struct ctx c;
	struct pv_proc_opts o;

	ctx_init(&c);
	o = opts_for(&c, argv);
	o.cwd = "/tmp";
	spawn_and_run(&c, &o);
	ck_assert_int_eq(c.nlines, 1);
	ck_assert_str_eq(c.lines[0], "/tmp");
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__stderr_lines_with_unterminated_last)
{
	const char *argv[] = {"sh", "-c", "printf 'one\\ntwo\\n\\nthree' >&2; printf 'out-partial'", NULL};
	struct ctx c;
	struct pv_proc_opts o;

	ctx_init(&c);
	o = opts_for(&c, argv);
	spawn_and_run(&c, &o);
	ck_assert_int_eq(c.nerrs, 4);
	ck_assert_str_eq(c.errs[0], "one");
	ck_assert_str_eq(c.errs[1], "two");
	ck_assert_str_eq(c.errs[2], "");
	ck_assert_str_eq(c.errs[3], "three");
	ck_assert_int_eq(c.nlines, 1);
	ck_assert_str_eq(c.lines[0], "out-partial");
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__long_lines_split_at_4k)
{
	const char *argv[] = {"sh", "-c", "head -c 10000 /dev/zero | tr '\\0' a; echo; echo end", NULL};
	struct ctx c;
	struct pv_proc_opts o;

	ctx_init(&c);
	o = opts_for(&c, argv);
	spawn_and_run(&c, &o);
	ck_assert_int_eq(c.nlines, 4);
	ck_assert_uint_eq(strlen(c.lines[0]), 4096);
	ck_assert_uint_eq(strlen(c.lines[1]), 4096);
	ck_assert_uint_eq(strlen(c.lines[2]), 10000 - 2 * 4096);
	ck_assert_str_eq(c.lines[3], "end");
	ctx_free(&c);
}
END_TEST

static void
slow_stdout(struct pv_proc *proc, struct evbuffer *data, void *arg)
{
	struct ctx *c = arg;
	size_t len = evbuffer_get_length(data);

	/* Consume nothing here: the timer drains later, like a slow upload. */
	c->held = data;
	c->proc = proc;
	if (len > c->max_buffered)
		c->max_buffered = len;
	if (len > c->high_water)
		c->saw_above_high_water = true;
}

static void
drain_cb(evutil_socket_t fd, short what, void *arg)
{
	struct ctx *c = arg;
	size_t len, take;

	if (c->held == NULL)
		return;
	len = evbuffer_get_length(c->held);
	if (len > c->max_buffered)
		c->max_buffered = len;
	take = len < 128 * 1024 ? len : 128 * 1024;
	evbuffer_drain(c->held, take);
	c->drained += take;
	pv_proc_stdout_resume(c->proc);
}

START_TEST(test_proc__large_output_with_backpressure)
{
	const char *argv[] = {"head", "-c", "50000000", "/dev/zero", NULL};
	struct timeval tick = {0, 1000};
	struct ctx c;
	struct pv_proc_opts o;

	ctx_init(&c);
	c.high_water = 256 * 1024;
	c.drain_ev = event_new(c.base, -1, EV_PERSIST, drain_cb, &c);
	event_add(c.drain_ev, &tick);
	o = opts_for(&c, argv);
	o.on_stdout = slow_stdout;
	o.stdout_high_water = c.high_water;
	spawn_and_run(&c, &o);
	ck_assert_str_eq(c.res.text, "exited with status 0");
	ck_assert_uint_eq(c.stdout_bytes, 50000000ULL);
	ck_assert_uint_eq(c.drained, 50000000ULL);
	ck_assert(c.saw_above_high_water);
	ck_assert_uint_le(c.max_buffered, c.high_water + READ_CHUNK);
	ctx_free(&c);
}
END_TEST

static void
cancel_cb(evutil_socket_t fd, short what, void *arg)
{
	struct ctx *c = arg;

	c->pgid_seen = getpgid(pv_proc_pid(c->proc));
	pv_proc_cancel(c->proc);
}

static void
hoarding_stdout(struct pv_proc *proc, struct evbuffer *data, void *arg)
{
	struct ctx *c = arg;

	c->proc = proc;
	if (evbuffer_get_length(data) > c->high_water)
		c->saw_above_high_water = true;
}

/* A consumer that stopped draining must not delay a cancel by the kill grace period. */
START_TEST(test_proc__cancel_while_paused)
{
	const char *argv[] = {"head", "-c", "50000000", "/dev/zero", NULL};
	struct timeval after = {0, 200 * 1000};
	struct ctx c;
	struct pv_proc_opts o;
	struct event *ev;

	ctx_init(&c);
	c.high_water = 64 * 1024;
	ev = evtimer_new(c.base, cancel_cb, &c);
	evtimer_add(ev, &after);
	o = opts_for(&c, argv);
	o.on_stdout = hoarding_stdout;
	o.stdout_high_water = c.high_water;
	o.kill_grace = 10;
	spawn_and_run(&c, &o);
	event_free(ev);
	ck_assert(c.saw_above_high_water);
	ck_assert_int_eq(c.res.cause, PV_PROC_CANCELLED);
	ck_assert_msg(c.res.elapsed < 2.0, "elapsed %f", c.res.elapsed);
	ck_assert_uint_lt(c.stdout_bytes, 50000000ULL);
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__timeout_kills_group_with_grandchild)
{
	const char *argv[] = {"sh", "-c", "sleep 30 & echo $!; sleep 30", NULL};
	struct ctx c;
	struct pv_proc_opts o;
	pid_t grandchild;

	ctx_init(&c);
	o = opts_for(&c, argv);
	o.timeout = 0.5;
	o.kill_grace = 2;
	spawn_and_run(&c, &o);
	ck_assert_int_eq(c.res.cause, PV_PROC_TIMEOUT);
	ck_assert_str_eq(c.res.text, "timeout after 0.5s");
	ck_assert_int_eq(c.res.signo, SIGTERM);
	/* libevent measures from its cached loop time: allow a few ms early. */
	ck_assert_msg(c.res.elapsed >= 0.45 && c.res.elapsed < 1.5, "elapsed %f", c.res.elapsed);
	ck_assert_int_eq(c.nlines, 1);
	grandchild = (pid_t)atoi(c.lines[0]);
	ck_assert_int_gt(grandchild, 1);
	ck_assert_msg(process_gone(grandchild), "grandchild %d survived", (int)grandchild);
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__sigterm_ignored_escalates_to_sigkill)
{
	const char *argv[] = {"sh", "-c", "trap '' TERM; sleep 30", NULL};
	struct ctx c;
	struct pv_proc_opts o;

	ctx_init(&c);
	o = opts_for(&c, argv);
	o.timeout = 0.2;
	o.kill_grace = 0.3;
	spawn_and_run(&c, &o);
	ck_assert_int_eq(c.res.cause, PV_PROC_TIMEOUT);
	ck_assert_int_eq(c.res.signo, SIGKILL);
	/* libevent measures from its cached loop time: allow a few ms early. */
	ck_assert_msg(c.res.elapsed >= 0.45 && c.res.elapsed < 1.5, "elapsed %f", c.res.elapsed);
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__inactivity_timeout)
{
	const char *argv[] = {"sh", "-c", "echo start; sleep 30", NULL};
	struct ctx c;
	struct pv_proc_opts o;

	ctx_init(&c);
	o = opts_for(&c, argv);
	o.inactivity = 0.3;
	spawn_and_run(&c, &o);
	ck_assert_int_eq(c.res.cause, PV_PROC_INACTIVE);
	ck_assert_str_eq(c.res.text, "no output for 0.3s");
	ck_assert_msg(c.res.elapsed >= 0.25 && c.res.elapsed < 1.5, "elapsed %f", c.res.elapsed);
	ck_assert_int_eq(c.nlines, 1);
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__output_resets_inactivity)
{
	const char *argv[] = {"sh", "-c", "for i in 1 2 3 4 5 6 7 8; do echo $i >&2; sleep 0.1; done", NULL};
	struct ctx c;
	struct pv_proc_opts o;

	ctx_init(&c);
	o = opts_for(&c, argv);
	o.inactivity = 0.5;
	spawn_and_run(&c, &o);
	ck_assert_str_eq(c.res.text, "exited with status 0");
	ck_assert_int_eq(c.nerrs, 8);
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__grandchild_holding_pipe_does_not_hang)
{
	const char *argv[] = {"sh", "-c", "sleep 30 & echo $!; exit 4", NULL};
	struct ctx c;
	struct pv_proc_opts o;
	pid_t grandchild;

	ctx_init(&c);
	o = opts_for(&c, argv);
	o.kill_grace = 0.3;
	spawn_and_run(&c, &o);
	/* The exit status is the main child's; killing the straggler does not change the cause. */
	ck_assert_int_eq(c.res.cause, PV_PROC_EXITED);
	ck_assert_int_eq(c.res.exit_code, 4);
	ck_assert_msg(c.res.elapsed >= 0.25 && c.res.elapsed < 1.5, "elapsed %f", c.res.elapsed);
	ck_assert_int_eq(c.nlines, 1);
	grandchild = (pid_t)atoi(c.lines[0]);
	ck_assert_msg(process_gone(grandchild), "grandchild %d survived", (int)grandchild);
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__cancel)
{
	const char *argv[] = {"sleep", "30", NULL};
	struct timeval after = {0, 100 * 1000};
	struct ctx c;
	struct pv_proc_opts o;
	struct event *ev;
	pid_t pid;

	ctx_init(&c);
	ev = evtimer_new(c.base, cancel_cb, &c);
	evtimer_add(ev, &after);
	o = opts_for(&c, argv);
	spawn_and_run(&c, &o);
	event_free(ev);
	ck_assert_int_eq(c.res.cause, PV_PROC_CANCELLED);
	ck_assert_str_eq(c.res.text, "cancelled");
	ck_assert_int_eq(c.res.signo, SIGTERM);
	ck_assert_msg(c.res.elapsed < 1.0, "elapsed %f", c.res.elapsed);
	/* It ran in its own process group. */
	pid = c.pgid_seen;
	ck_assert_int_gt(pid, 1);
	ck_assert_int_ne(pid, getpgrp());
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__cancel_from_inside_callback)
{
	const char *argv[] = {"sh", "-c", "echo first; echo second; sleep 30", NULL};
	struct ctx c;
	struct pv_proc_opts o;

	ctx_init(&c);
	c.cancel_on_line = true;
	o = opts_for(&c, argv);
	spawn_and_run(&c, &o);
	ck_assert_int_eq(c.res.cause, PV_PROC_CANCELLED);
	ck_assert_int_ge(c.cancel_calls, 2);
	ck_assert_msg(c.res.elapsed < 1.0, "elapsed %f", c.res.elapsed);
	ctx_free(&c);
}
END_TEST

static void
cancel_all_cb(evutil_socket_t fd, short what, void *arg)
{
	struct ctx *c = arg;

	ck_assert_uint_eq(pv_proc_running(), 2);
	pv_proc_cancel_all();
	c->cancel_calls++;
}

START_TEST(test_proc__cancel_all)
{
	const char *argv[] = {"sleep", "30", NULL};
	struct timeval after = {0, 100 * 1000};
	struct ctx c;
	struct pv_proc_opts o;
	struct pv_error err;
	struct event *ev;

	ctx_init(&c);
	c.expect_done = 2;
	ev = evtimer_new(c.base, cancel_all_cb, &c);
	evtimer_add(ev, &after);
	o = opts_for(&c, argv);
	ck_assert_ptr_nonnull(pv_proc_spawn(c.base, &o, &err));
	ck_assert_ptr_nonnull(pv_proc_spawn(c.base, &o, &err));
	ck_assert_uint_eq(pv_proc_running(), 2);
	run_loop(&c);
	event_free(ev);
	ck_assert_int_eq(c.cancel_calls, 1);
	ck_assert_int_eq(c.res.cause, PV_PROC_CANCELLED);
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__child_sees_only_stdio_fds)
{
	const char *argv[] = {"ls", "-l", "/proc/self/fd/", NULL};
	int leaked = open("/dev/null", O_RDONLY); /* deliberately without O_CLOEXEC */
	bool seen[3] = {false, false, false};
	struct ctx c;
	struct pv_proc_opts o;

	ck_assert_int_ge(leaked, 3);
	ctx_init(&c);
	o = opts_for(&c, argv);
	spawn_and_run(&c, &o);
	ck_assert_str_eq(c.res.text, "exited with status 0");
	for (int i = 0; i < c.nlines; i++) {
		char *arrow = strstr(c.lines[i], " -> "), *num;
		int fd;

		if (arrow == NULL)
			continue; /* "total 0" */
		/* ls's own directory handle on /proc/<pid>/fd is the one descriptor that is not ours. */
		if (strncmp(arrow + 4, "/proc/", 6) == 0 && strstr(arrow + 4, "/fd") != NULL)
			continue;
		*arrow = '\0';
		num = strrchr(c.lines[i], ' ');
		ck_assert_ptr_nonnull(num);
		fd = atoi(num + 1);
		ck_assert_msg(fd >= 0 && fd <= 2, "child inherited fd %d", fd);
		seen[fd] = true;
	}
	ck_assert(seen[0] && seen[1] && seen[2]);
	close(leaked);
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__explicit_environment_only)
{
	const char *const env[] = {"PATH=/usr/bin:/bin", "PGVIGIL_TEST=1", NULL};
	const char *argv[] = {"env", NULL};
	const char *abs_argv[] = {"/usr/bin/env", NULL};
	struct ctx c;
	struct pv_proc_opts o;

	setenv("PGVIGIL_LEAK", "parent", 1);
	ctx_init(&c);
	o = opts_for(&c, argv);
	o.envp = env;
	spawn_and_run(&c, &o);
	ck_assert_int_eq(c.nlines, 2);
	ck_assert_str_eq(c.lines[0], "PATH=/usr/bin:/bin");
	ck_assert_str_eq(c.lines[1], "PGVIGIL_TEST=1");
	ctx_free(&c);

	ctx_init(&c);
	o = opts_for(&c, abs_argv);
	o.envp = NULL;
	spawn_and_run(&c, &o);
	ck_assert_str_eq(c.res.text, "exited with status 0");
	ck_assert_int_eq(c.nlines, 0);
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__signal_mask_and_dispositions_reset)
{
	const char *argv[] = {"grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status", NULL};
	struct ctx c;
	struct pv_proc_opts o;
	sigset_t block;

	/* Ignored dispositions and the mask survive exec unless the child resets them. */
	signal(SIGINT, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigprocmask(SIG_BLOCK, &block, NULL);
	ctx_init(&c);
	o = opts_for(&c, argv);
	spawn_and_run(&c, &o);
	ck_assert_int_eq(c.nlines, 2);
	ck_assert_str_eq(c.lines[0], "SigBlk:\t0000000000000000");
	ck_assert_str_eq(c.lines[1], "SigIgn:\t0000000000000000");
	ctx_free(&c);
	sigprocmask(SIG_UNBLOCK, &block, NULL);
	signal(SIGINT, SIG_DFL);
}
END_TEST

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
	int *ticks = arg;

	(*ticks)++;
}

START_TEST(test_proc__loop_keeps_running_while_children_run)
{
	const char *sleeper[] = {"sleep", "0.5", NULL};
	const char *writer[] = {"head", "-c", "5000000", "/dev/zero", NULL};
	struct timeval every = {0, 10 * 1000};
	struct ctx c;
	struct pv_proc_opts o;
	struct pv_error err;
	struct event *ev;
	int ticks = 0;

	ctx_init(&c);
	c.expect_done = 2;
	ev = event_new(c.base, -1, EV_PERSIST, tick_cb, &ticks);
	event_add(ev, &every);
	o = opts_for(&c, sleeper);
	ck_assert_ptr_nonnull(pv_proc_spawn(c.base, &o, &err));
	o = opts_for(&c, writer);
	o.on_stdout = on_stdout;
	ck_assert_ptr_nonnull(pv_proc_spawn(c.base, &o, &err));
	run_loop(&c);
	event_free(ev);
	ck_assert_msg(ticks >= 20, "timer fired only %d times", ticks);
	ck_assert_uint_eq(evbuffer_get_length(c.out), 5000000);
	ctx_free(&c);
}
END_TEST

START_TEST(test_proc__spawn_requires_init)
{
	const char *argv[] = {"true", NULL};
	struct event_base *base = event_base_new();
	struct pv_proc_opts o;
	struct pv_error err;

	memset(&o, 0, sizeof(o));
	o.argv = argv;
	o.stdin_fd = o.stdout_fd = -1;
	ck_assert_ptr_null(pv_proc_spawn(base, &o, &err));
	ck_assert_int_eq(err.code, PV_ERR_INTERNAL);
	event_base_free(base);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("proc");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_proc__exit_zero_stdout_captured);
	tcase_add_test(tc, test_proc__stdout_to_given_fd);
	tcase_add_test(tc, test_proc__nonzero_exit_code);
	tcase_add_test(tc, test_proc__killed_by_signal);
	tcase_add_test(tc, test_proc__missing_program_fails_synchronously);
	tcase_add_test(tc, test_proc__bad_cwd_fails_synchronously);
	tcase_add_test(tc, test_proc__cwd_is_applied);
	tcase_add_test(tc, test_proc__stderr_lines_with_unterminated_last);
	tcase_add_test(tc, test_proc__long_lines_split_at_4k);
	tcase_add_test(tc, test_proc__large_output_with_backpressure);
	tcase_add_test(tc, test_proc__cancel_while_paused);
	tcase_add_test(tc, test_proc__timeout_kills_group_with_grandchild);
	tcase_add_test(tc, test_proc__sigterm_ignored_escalates_to_sigkill);
	tcase_add_test(tc, test_proc__inactivity_timeout);
	tcase_add_test(tc, test_proc__output_resets_inactivity);
	tcase_add_test(tc, test_proc__grandchild_holding_pipe_does_not_hang);
	tcase_add_test(tc, test_proc__cancel);
	tcase_add_test(tc, test_proc__cancel_from_inside_callback);
	tcase_add_test(tc, test_proc__cancel_all);
	tcase_add_test(tc, test_proc__child_sees_only_stdio_fds);
	tcase_add_test(tc, test_proc__explicit_environment_only);
	tcase_add_test(tc, test_proc__signal_mask_and_dispositions_reset);
	tcase_add_test(tc, test_proc__loop_keeps_running_while_children_run);
	tcase_add_test(tc, test_proc__spawn_requires_init);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
