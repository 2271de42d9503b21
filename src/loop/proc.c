/* Child processes on the event loop: spawn without a shell, stream output, timeouts, one completion. */
#include "loop/proc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "util/log.h"
#include "util/mem.h"

/*
 * Raw stdout contract (beyond proc.h): a consumer may keep the evbuffer it was handed and drain it
 * later (it stays valid until on_done), but must then call pv_proc_stdout_resume(), which also
 * redelivers what is left. Bytes left at EOF hold completion back until they are taken, because a
 * silently truncated dump is worse than a late one; after a kill or cancel they are dropped.
 */

/* Bytes taken from a pipe per read event: bounds how far past stdout_high_water a buffer can grow. */
#define READ_CHUNK (64 * 1024)
/* Longer lines are delivered in pieces so one runaway line cannot grow memory without bound. */
#define LINE_MAX_BYTES     4096
#define DEFAULT_HIGH_WATER (1024 * 1024)
#define DEFAULT_KILL_GRACE 5.0
/* execvp's traditional fallback when the child's environment has no PATH. */
#define DEFAULT_SEARCH_PATH "/bin:/usr/bin"

/* Which step failed in the child, reported with errno through the status pipe. */
enum child_stage {
	STAGE_SETPGID = 1,
	STAGE_DUP,
	STAGE_CHDIR,
	STAGE_EXEC,
};

struct child_status {
	int stage;
	int err;
};

struct stream {
	struct pv_proc *proc;
	int fd;           /* read end, -1 once at EOF (or never opened) */
	struct event *ev; /* EV_READ|EV_PERSIST on fd */
	struct evbuffer *buf;
	bool raw;    /* stdout with on_stdout: the consumer drains buf itself */
	bool paused; /* raw only: consumer left more than high water buffered */
	pv_proc_line_cb on_line;
};

struct pv_proc {
	struct pv_proc *prev, *next;
	struct event_base *base;
	pid_t pid;
	char *name; /* argv[0], for messages */

	pv_proc_data_cb on_stdout;
	pv_proc_done_cb on_done;
	void *arg;
	double timeout, inactivity, kill_grace;
	size_t high_water;

	struct stream out, err;
	struct event *timeout_ev, *inactive_ev, *kill_ev, *linger_ev, *deliver_ev, *finish_ev;

	struct timespec started;
	unsigned long long stdout_bytes;

	bool reaped;
	int status;                    /* from waitpid, valid when reaped */
	enum pv_proc_cause kill_cause; /* why we signalled the group; PV_PROC_EXITED = we did not */
	bool discard;                  /* we killed it: nobody wants output still buffered or in flight */
	int busy;                      /* > 0 while a user callback of this proc runs */
	bool done;                     /* on_done has been called or is running */
};

static struct proc_local {
	struct event_base *base;
	struct event *sigchld;
	struct pv_proc *head;
} proc_local;

static void maybe_finish(struct pv_proc *p);

static double
elapsed_since(const struct timespec *start)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

static struct timeval
to_timeval(double seconds)
{
	struct timeval tv;

	if (seconds < 0)
		seconds = 0;
	tv.tv_sec = (time_t)seconds;
	tv.tv_usec = (suseconds_t)((seconds - (double)tv.tv_sec) * 1e6);
	return tv;
}

static void
arm(struct event *ev, double seconds)
{
	struct timeval tv = to_timeval(seconds);

	event_add(ev, &tv);
}

/* Still running on its own: timeouts and inactivity apply. */
static bool
watching(const struct pv_proc *p)
{
	return !p->reaped && p->kill_cause == PV_PROC_EXITED;
}

static void
signal_group(struct pv_proc *p, int signo)
{
	/* The leader may be gone while descendants hold the group; ESRCH means nobody is left. */
	if (kill(-p->pid, signo) != 0 && errno != ESRCH)
		pv_log_warn("cannot signal process group pid=%d signal=%d error=%s", (int)p->pid, signo,
		            strerror(errno));
}

/* ---- output ---- */

static void
deliver_lines(struct stream *s, bool eof)
{
	struct pv_proc *p = s->proc;
	char line[LINE_MAX_BYTES + 1];

	for (;;) {
		size_t len = evbuffer_get_length(s->buf);
		struct evbuffer_ptr nl;
		size_t take, drop = 0;

		if (len == 0)
			break;
		nl = evbuffer_search(s->buf, "\n", 1, NULL);
		if (nl.pos >= 0 && (size_t)nl.pos <= LINE_MAX_BYTES) {
			take = (size_t)nl.pos;
			drop = 1;
		} else if (len >= LINE_MAX_BYTES) {
			take = LINE_MAX_BYTES;
		} else if (eof) {
			take = len;
		} else {
			break;
		}
		evbuffer_remove(s->buf, line, take);
		line[take] = '\0';
		if (drop)
			evbuffer_drain(s->buf, drop);
		if (s->on_line != NULL) {
			p->busy++;
			s->on_line(p, line, p->arg);
			p->busy--;
		}
	}
}

static void
deliver(struct stream *s, bool eof)
{
	struct pv_proc *p = s->proc;

	if (!s->raw) {
		deliver_lines(s, eof);
		return;
	}
	/* Once we killed the child its stdout is incomplete and useless; stderr lines are still worth
	 * logging. Dropping instead of pausing lets the pipes reach EOF promptly. */
	if (p->discard) {
		evbuffer_drain(s->buf, evbuffer_get_length(s->buf));
		return;
	}
	if (evbuffer_get_length(s->buf) > 0) {
		p->busy++;
		p->on_stdout(p, s->buf, p->arg);
		p->busy--;
	}
	if (!eof && s->fd >= 0 && !s->paused && evbuffer_get_length(s->buf) > p->high_water) {
		s->paused = true;
		event_del(s->ev);
	}
}

static void
close_stream(struct stream *s)
{
	if (s->fd < 0)
		return;
	if (s->ev != NULL)
		event_del(s->ev);
	close(s->fd);
	s->fd = -1;
	s->paused = false;
}

/* Read one chunk; returns false at EOF or on a read error (both end the stream). */
static bool
read_chunk(struct stream *s)
{
	struct pv_proc *p = s->proc;
	int n = evbuffer_read(s->buf, s->fd, READ_CHUNK);

	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return true;
		pv_log_warn("cannot read child output pid=%d program=%s error=%s", (int)p->pid,
		            pv_log_quote(p->name), strerror(errno));
		return false;
	}
	if (n == 0)
		return false;
	if (s == &p->out)
		p->stdout_bytes += (unsigned long long)n;
	if (p->inactive_ev != NULL && watching(p))
		arm(p->inactive_ev, p->inactivity);
	return true;
}

static void
read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct stream *s = arg;
	bool open = true;

	/* Never read past high water: the buffer is bounded by high water plus one chunk. */
	if (!s->raw || s->proc->discard || evbuffer_get_length(s->buf) <= s->proc->high_water)
		open = read_chunk(s);
	deliver(s, !open);
	if (!open)
		close_stream(s);
	maybe_finish(s->proc);
}

/* Deferred redelivery after pv_proc_stdout_resume(), so the consumer is never re-entered. */
static void
deliver_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_proc *p = arg;

	deliver(&p->out, p->out.fd < 0);
	maybe_finish(p);
}

/* After a SIGKILL of the group: take what is already in the pipe, then stop waiting for EOF. */
static void
drain_and_close(struct stream *s)
{
	if (s->fd < 0)
		return;
	for (;;) {
		int n = evbuffer_read(s->buf, s->fd, READ_CHUNK);

		if (n > 0) {
			if (s == &s->proc->out)
				s->proc->stdout_bytes += (unsigned long long)n;
			if (!s->raw)
				deliver(s, false);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		break;
	}
	deliver(s, true);
	close_stream(s);
}

/* ---- termination ---- */

static void
force_close(struct pv_proc *p)
{
	if (p->out.fd >= 0 || p->err.fd >= 0) {
		pv_log_warn("child exited but its output pipes are still open, killing its process group "
		            "pid=%d program=%s",
		            (int)p->pid, pv_log_quote(p->name));
		signal_group(p, SIGKILL);
	}
	drain_and_close(&p->out);
	drain_and_close(&p->err);
	maybe_finish(p);
}

static void
kill_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_proc *p = arg;

	pv_log_info("child did not stop after SIGTERM, sending SIGKILL pid=%d program=%s", (int)p->pid,
	            pv_log_quote(p->name));
	signal_group(p, SIGKILL);
}

static void
linger_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_proc *p = arg;

	/* A paused stdout is our consumer being slow, not a stray descendant: keep waiting. */
	if (p->out.paused && !p->discard) {
		arm(p->linger_ev, p->kill_grace);
		return;
	}
	force_close(p);
}

static void
terminate(struct pv_proc *p, enum pv_proc_cause cause)
{
	if (p->done)
		return;
	p->discard = true;
	if (p->out.paused) {
		p->out.paused = false;
		event_add(p->out.ev, NULL);
	}
	if (p->reaped) {
		/* The exit status is final; only descendants may be left. Not synchronously: we may be
		 * inside one of this proc's callbacks, and force_close delivers output. */
		event_active(p->linger_ev, EV_TIMEOUT, 0);
		return;
	}
	if (p->kill_cause != PV_PROC_EXITED)
		return;
	p->kill_cause = cause;
	event_del(p->timeout_ev);
	if (p->inactive_ev != NULL)
		event_del(p->inactive_ev);
	signal_group(p, SIGTERM);
	arm(p->kill_ev, p->kill_grace);
}

static void
timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_proc *p = arg;

	pv_log_warn("child timed out, terminating pid=%d program=%s timeout=%g", (int)p->pid,
	            pv_log_quote(p->name), p->timeout);
	terminate(p, PV_PROC_TIMEOUT);
}

static void
inactive_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_proc *p = arg;

	/* Silence while we are not reading is not the child's fault. */
	if (p->out.paused) {
		arm(p->inactive_ev, p->inactivity);
		return;
	}
	pv_log_warn("child produced no output, terminating pid=%d program=%s inactivity=%g", (int)p->pid,
	            pv_log_quote(p->name), p->inactivity);
	terminate(p, PV_PROC_INACTIVE);
}

/* ---- completion ---- */

static void
describe(const struct pv_proc *p, struct pv_proc_result *r)
{
	int st = p->status;

	r->exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	r->signo = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
	r->elapsed = elapsed_since(&p->started);
	r->cause = p->kill_cause;
	switch (p->kill_cause) {
	case PV_PROC_TIMEOUT: snprintf(r->text, sizeof(r->text), "timeout after %gs", p->timeout); return;
	case PV_PROC_INACTIVE: snprintf(r->text, sizeof(r->text), "no output for %gs", p->inactivity); return;
	case PV_PROC_CANCELLED: snprintf(r->text, sizeof(r->text), "cancelled"); return;
	default: break;
	}
	if (WIFSIGNALED(st)) {
		r->cause = PV_PROC_SIGNALED;
		snprintf(r->text, sizeof(r->text), "killed by signal %d (%s)%s", r->signo,
		         strsignal(r->signo), WCOREDUMP(st) ? ", core dumped" : "");
	} else {
		r->cause = PV_PROC_EXITED;
		snprintf(r->text, sizeof(r->text), "exited with status %d", r->exit_code);
	}
}

static void
unlink_proc(struct pv_proc *p)
{
	if (p->prev != NULL)
		p->prev->next = p->next;
	else if (proc_local.head == p)
		proc_local.head = p->next;
	if (p->next != NULL)
		p->next->prev = p->prev;
	p->prev = p->next = NULL;
}

static void
free_proc(struct pv_proc *p)
{
	struct event *evs[] = {p->out.ev,  p->err.ev,    p->timeout_ev, p->inactive_ev,
	                       p->kill_ev, p->linger_ev, p->deliver_ev, p->finish_ev};

	close_stream(&p->out);
	close_stream(&p->err);
	for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
		if (evs[i] != NULL)
			event_free(evs[i]);
	if (p->out.buf != NULL)
		evbuffer_free(p->out.buf);
	if (p->err.buf != NULL)
		evbuffer_free(p->err.buf);
	free(p->name);
	free(p);
}

static bool
finished(const struct pv_proc *p)
{
	if (p->done || !p->reaped || p->out.fd >= 0 || p->err.fd >= 0)
		return false;
	/* Raw stdout the consumer has not taken yet is part of the output: wait for it, unless we
	 * killed the child, in which case nobody wants the rest. */
	if (p->out.raw && evbuffer_get_length(p->out.buf) > 0 && !p->discard)
		return false;
	return true;
}

/* Completion always runs from its own event, never inside another callback of the same proc. */
static void
maybe_finish(struct pv_proc *p)
{
	if (finished(p))
		event_active(p->finish_ev, EV_TIMEOUT, 0);
}

static void
finish_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_proc *p = arg;
	struct pv_proc_result r;

	if (p->busy > 0 || !finished(p))
		return;
	memset(&r, 0, sizeof(r));
	describe(p, &r);
	p->done = true;
	unlink_proc(p);
	pv_log_debug("child finished pid=%d program=%s result=%s elapsed=%.3f", (int)p->pid,
	             pv_log_quote(p->name), pv_log_quote(r.text), r.elapsed);
	p->busy++;
	if (p->on_done != NULL)
		p->on_done(p, &r, p->arg);
	free_proc(p);
}

static struct pv_proc *
find_proc(pid_t pid)
{
	for (struct pv_proc *p = proc_local.head; p != NULL; p = p->next)
		if (p->pid == pid && !p->reaped)
			return p;
	return NULL;
}

static void
sigchld_cb(evutil_socket_t fd, short what, void *arg)
{
	int st;
	pid_t pid;

	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		struct pv_proc *p = find_proc(pid);

		if (p == NULL) {
			pv_log_debug("reaped unknown child pid=%d", (int)pid);
			continue;
		}
		p->reaped = true;
		p->status = st;
		event_del(p->timeout_ev);
		event_del(p->kill_ev);
		if (p->inactive_ev != NULL)
			event_del(p->inactive_ev);
		/* Descendants may keep the pipes open; do not wait on them forever. */
		if (p->out.fd >= 0 || p->err.fd >= 0)
			arm(p->linger_ev, p->kill_grace);
		maybe_finish(p);
	}
}

/* ---- spawn ---- */

/* Candidate paths for argv[0], like execvpe but with PATH taken from the child's environment. */
static char **
search_paths(const char *prog, const char *const *envp)
{
	const char *path = NULL;
	size_t n = 1, i = 0;
	char **out;

	if (strchr(prog, '/') != NULL) {
		out = pv_calloc(2, sizeof(*out));
		out[0] = pv_strdup(prog);
		return out;
	}
	for (const char *const *e = envp; e != NULL && *e != NULL; e++)
		if (strncmp(*e, "PATH=", 5) == 0)
			path = *e + 5;
	if (path == NULL)
		path = DEFAULT_SEARCH_PATH;
	for (const char *c = path; *c != '\0'; c++)
		n += *c == ':';
	out = pv_calloc(n + 1, sizeof(*out));
	for (const char *c = path;; c++) {
		const char *end = strchrnul(c, ':');
		int dirlen = (int)(end - c);

		/* An empty entry means the current directory, as in execvp. */
		out[i++] = dirlen == 0 ? pv_asprintf("./%s", prog) : pv_asprintf("%.*s/%s", dirlen, c, prog);
		if (*end == '\0')
			break;
		c = end;
	}
	return out;
}

static void
free_strv(char **v)
{
	if (v == NULL)
		return;
	for (char **s = v; *s != NULL; s++)
		free(*s);
	free(v);
}

static void __attribute__((noreturn)) child_fail(int status_fd, int stage, int err)
{
	struct child_status cs = {stage, err};
	ssize_t r;

	do
		r = write(status_fd, &cs, sizeof(cs));
	while (r < 0 && errno == EINTR);
	_exit(127);
}

static int
move_above_stdio(int fd)
{
	return fd > 2 ? fd : fcntl(fd, F_DUPFD_CLOEXEC, 3);
}

/* Close every descriptor >= 3 except `keep` (the CLOEXEC status pipe). Async-signal-safe. */
static void
close_other_fds(int keep, int max_fd)
{
#ifdef SYS_close_range
	/* keep >= 3. ENOSYS on kernels before 5.9: fall through. */
	if ((keep == 3 || syscall(SYS_close_range, 3U, (unsigned)keep - 1, 0U) == 0) &&
	    syscall(SYS_close_range, (unsigned)keep + 1, ~0U, 0U) == 0)
		return;
#endif
#ifdef SYS_getdents64
	/* No opendir(): it allocates. Rescan after each pass because closing shifts directory offsets. */
	int dfd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (dfd >= 0) {
		char buf[4096];
		bool closed_any = true;

		while (closed_any) {
			long n;

			closed_any = false;
			lseek(dfd, 0, SEEK_SET);
			while ((n = syscall(SYS_getdents64, dfd, buf, sizeof(buf))) > 0) {
				for (long off = 0; off < n;) {
					struct dirent64 *d = (struct dirent64 *)(buf + off);
					int fd = 0;
					const char *c = d->d_name;

					off += d->d_reclen;
					if (*c < '0' || *c > '9')
						continue;
					for (; *c >= '0' && *c <= '9'; c++)
						fd = fd * 10 + (*c - '0');
					if (fd > 2 && fd != keep && fd != dfd) {
						close(fd);
						closed_any = true;
					}
				}
			}
		}
		close(dfd);
		return;
	}
#endif
	for (int fd = 3; fd < max_fd; fd++)
		if (fd != keep)
			close(fd);
}

/* Between fork and exec: only async-signal-safe calls, everything else was prepared by the parent. */
static void __attribute__((noreturn))
child_exec(int status_fd, int in_fd, int out_fd, int err_fd, const char *cwd, char *const *paths,
           char *const *argv, char *const *envp, int max_fd)
{
	struct sigaction dfl;
	sigset_t none;
	int exec_err = ENOENT;

	/* Handlers set by libevent would write into the parent's signal socket: reset before unblocking. */
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	for (int sig = 1; sig < NSIG; sig++) {
		/* Fails harmlessly for SIGKILL and SIGSTOP. libc refuses its internal real-time signals
		 * (32, 33), which a sanitizer runtime may have left ignored: reset those with the raw
		 * system call, since an ignored disposition survives exec. */
		if (sigaction(sig, &dfl, NULL) != 0 && sig != SIGKILL && sig != SIGSTOP) {
			struct {
				void (*handler)(int);
				unsigned long flags;
				void (*restorer)(void);
				unsigned long mask;
			} ksa = {SIG_DFL, 0, NULL, 0};
			syscall(SYS_rt_sigaction, sig, &ksa, NULL, sizeof(ksa.mask));
		}
	}
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);

	/* With stdio closed (a daemon), our pipes may sit on 0..2: lift everything out of the way first. */
	status_fd = move_above_stdio(status_fd);
	if (status_fd < 0)
		_exit(127);
	if (setpgid(0, 0) != 0)
		child_fail(status_fd, STAGE_SETPGID, errno);

	in_fd = move_above_stdio(in_fd);
	out_fd = move_above_stdio(out_fd);
	err_fd = move_above_stdio(err_fd);
	if (in_fd < 0 || out_fd < 0 || err_fd < 0)
		child_fail(status_fd, STAGE_DUP, errno);
	if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0)
		child_fail(status_fd, STAGE_DUP, errno);
	close_other_fds(status_fd, max_fd);

	if (cwd != NULL && chdir(cwd) != 0)
		child_fail(status_fd, STAGE_CHDIR, errno);

	for (char *const *p = paths; *p != NULL; p++) {
		execve(*p, argv, envp);
		/* Same rules as execvp: keep looking past missing entries, remember a permission problem. */
		if (errno == EACCES)
			exec_err = EACCES;
		else if (errno != ENOENT && errno != ENOTDIR && errno != ESTALE && errno != ENODEV &&
		         errno != ETIMEDOUT) {
			exec_err = errno;
			break;
		}
	}
	child_fail(status_fd, STAGE_EXEC, exec_err);
}

static bool
make_pipe(int fds[2], struct pv_error *err)
{
	if (pipe2(fds, O_CLOEXEC) != 0)
		return pv_error_set(err, PV_ERR_PROC, "cannot create pipe: %s", strerror(errno));
	return true;
}

static void
close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static bool
init_stream(struct pv_proc *p, struct stream *s, struct pv_error *err)
{
	int fd = s->fd;

	if (fd < 0)
		return true;
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0)
		return pv_error_set(err, PV_ERR_PROC, "cannot make pipe non-blocking: %s", strerror(errno));
	s->ev = event_new(p->base, fd, EV_READ | EV_PERSIST, read_cb, s);
	if (s->ev == NULL || event_add(s->ev, NULL) != 0)
		return pv_error_set(err, PV_ERR_PROC, "cannot watch child pipe");
	return true;
}

static struct event *
new_timer(struct pv_proc *p, event_callback_fn cb)
{
	struct event *ev = evtimer_new(p->base, cb, p);

	if (ev == NULL)
		abort();
	return ev;
}

static const char *
stage_text(int stage)
{
	switch (stage) {
	case STAGE_SETPGID: return "cannot create process group for";
	case STAGE_DUP: return "cannot set up standard descriptors for";
	case STAGE_CHDIR: return "cannot change directory for";
	default: return "cannot execute";
	}
}

bool
pv_proc_init(struct event_base *base, struct pv_error *err)
{
	if (proc_local.sigchld != NULL) {
		if (proc_local.base == base)
			return true;
		return pv_error_set(err, PV_ERR_INTERNAL,
		                    "child processes already managed by another event loop");
	}
	proc_local.sigchld = evsignal_new(base, SIGCHLD, sigchld_cb, NULL);
	if (proc_local.sigchld == NULL || event_add(proc_local.sigchld, NULL) != 0) {
		if (proc_local.sigchld != NULL)
			event_free(proc_local.sigchld);
		proc_local.sigchld = NULL;
		return pv_error_set(err, PV_ERR_INTERNAL, "cannot install SIGCHLD handler");
	}
	proc_local.base = base;
	return true;
}

void
pv_proc_shutdown(void)
{
	if (proc_local.sigchld != NULL)
		event_free(proc_local.sigchld);
	proc_local.sigchld = NULL;
	proc_local.base = NULL;
}

struct pv_proc *
pv_proc_spawn(struct event_base *base, const struct pv_proc_opts *opts, struct pv_error *err)
{
	static const char *const empty_env[] = {NULL};
	const char *const *envp = opts->envp != NULL ? opts->envp : empty_env;
	int out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1}, st_pipe[2] = {-1, -1};
	int null_fd = -1, in_fd, out_fd, max_fd;
	struct child_status cs;
	struct pv_proc *p;
	sigset_t all, old;
	char **paths;
	ssize_t r;
	pid_t pid;

	if (proc_local.sigchld == NULL) {
		pv_error_set(err, PV_ERR_INTERNAL, "cannot start child: pv_proc_init was not called");
		return NULL;
	}
	if (opts->argv == NULL || opts->argv[0] == NULL || opts->argv[0][0] == '\0') {
		pv_error_set(err, PV_ERR_PROC, "cannot start child: empty command");
		return NULL;
	}

	in_fd = opts->stdin_fd;
	if (in_fd < 0) {
		null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (null_fd < 0) {
			pv_error_set(err, PV_ERR_PROC, "cannot open /dev/null: %s", strerror(errno));
			return NULL;
		}
		in_fd = null_fd;
	}
	if ((opts->stdout_fd < 0 && !make_pipe(out_pipe, err)) || !make_pipe(err_pipe, err) ||
	    !make_pipe(st_pipe, err)) {
		pv_error_prefix(err, "cannot start %s: ", opts->argv[0]);
		goto fail_fds;
	}
	out_fd = opts->stdout_fd >= 0 ? opts->stdout_fd : out_pipe[1];

	paths = search_paths(opts->argv[0], envp);
	max_fd = (int)sysconf(_SC_OPEN_MAX);
	if (max_fd <= 0 || max_fd > 65536)
		max_fd = 65536;

	p = pv_calloc(1, sizeof(*p));
	p->base = base;
	p->name = pv_strdup(opts->argv[0]);
	p->on_stdout = opts->on_stdout;
	p->on_done = opts->on_done;
	p->arg = opts->arg;
	p->timeout = opts->timeout;
	p->inactivity = opts->inactivity;
	p->kill_grace = opts->kill_grace > 0 ? opts->kill_grace : DEFAULT_KILL_GRACE;
	p->high_water = opts->stdout_high_water > 0 ? opts->stdout_high_water : DEFAULT_HIGH_WATER;
	p->out.fd = p->err.fd = -1;
	p->out.proc = p->err.proc = p;
	p->out.buf = evbuffer_new();
	p->err.buf = evbuffer_new();
	if (p->out.buf == NULL || p->err.buf == NULL)
		abort();
	p->out.raw = opts->on_stdout != NULL;
	p->out.on_line = opts->on_stdout_line;
	p->err.on_line = opts->on_stderr;
	clock_gettime(CLOCK_MONOTONIC, &p->started);

	/* Block everything across fork so no inherited handler runs in the child before it is reset. */
	sigfillset(&all);
	sigprocmask(SIG_SETMASK, &all, &old);
	pid = fork();
	if (pid == 0)
		child_exec(st_pipe[1], in_fd, out_fd, err_pipe[1], opts->cwd, paths,
		           (char *const *)opts->argv, (char *const *)envp, max_fd);
	sigprocmask(SIG_SETMASK, &old, NULL);
	free_strv(paths);
	if (pid < 0) {
		pv_error_set(err, PV_ERR_PROC, "cannot start %s: fork failed: %s", opts->argv[0],
		             strerror(errno));
		free_proc(p);
		goto fail_fds;
	}
	/* Both sides set the group so a kill right after spawn cannot miss it. EACCES = already exec'd. */
	setpgid(pid, pid);
	p->pid = pid;

	close_fd(&st_pipe[1]);
	close_fd(&out_pipe[1]);
	close_fd(&err_pipe[1]);
	close_fd(&null_fd);
	do
		r = read(st_pipe[0], &cs, sizeof(cs));
	while (r < 0 && errno == EINTR);
	close_fd(&st_pipe[0]);
	if (r == (ssize_t)sizeof(cs)) {
		int st;

		while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
			;
		if (cs.stage == STAGE_CHDIR)
			pv_error_set(err, PV_ERR_PROC, "cannot change directory to %s for %s: %s", opts->cwd,
			             opts->argv[0], strerror(cs.err));
		else
			pv_error_set(err, PV_ERR_PROC, "%s %s: %s", stage_text(cs.stage), opts->argv[0],
			             strerror(cs.err));
		free_proc(p);
		goto fail_fds;
	}

	/* The streams own the read ends from here on. */
	p->out.fd = out_pipe[0];
	p->err.fd = err_pipe[0];
	out_pipe[0] = err_pipe[0] = -1;
	if (!init_stream(p, &p->out, err) || !init_stream(p, &p->err, err)) {
		/* The child runs already: kill it and let the SIGCHLD handler reap it as unknown. */
		kill(-pid, SIGKILL);
		pv_error_prefix(err, "cannot start %s: ", p->name);
		free_proc(p);
		goto fail_fds;
	}
	p->timeout_ev = new_timer(p, timeout_cb);
	p->kill_ev = new_timer(p, kill_cb);
	p->linger_ev = new_timer(p, linger_cb);
	p->finish_ev = new_timer(p, finish_cb);
	p->deliver_ev = new_timer(p, deliver_cb);
	if (p->timeout > 0)
		arm(p->timeout_ev, p->timeout);
	if (p->inactivity > 0) {
		p->inactive_ev = new_timer(p, inactive_cb);
		arm(p->inactive_ev, p->inactivity);
	}

	p->next = proc_local.head;
	if (proc_local.head != NULL)
		proc_local.head->prev = p;
	proc_local.head = p;
	pv_log_debug("child started pid=%d program=%s", (int)pid, pv_log_quote(p->name));
	return p;

fail_fds:
	close_fd(&null_fd);
	close_fd(&out_pipe[0]);
	close_fd(&out_pipe[1]);
	close_fd(&err_pipe[0]);
	close_fd(&err_pipe[1]);
	close_fd(&st_pipe[0]);
	close_fd(&st_pipe[1]);
	return NULL;
}

void
pv_proc_cancel(struct pv_proc *proc)
{
	if (proc == NULL || proc->done)
		return;
	if (watching(proc))
		pv_log_info("cancelling child pid=%d program=%s", (int)proc->pid, pv_log_quote(proc->name));
	terminate(proc, PV_PROC_CANCELLED);
}

void
pv_proc_cancel_all(void)
{
	for (struct pv_proc *p = proc_local.head; p != NULL; p = p->next)
		pv_proc_cancel(p);
}

void
pv_proc_kill_all(void)
{
	for (struct pv_proc *p = proc_local.head; p != NULL; p = p->next) {
		if (p->pid > 0)
			kill(-p->pid, SIGKILL);
	}
}

size_t
pv_proc_running(void)
{
	size_t n = 0;

	for (struct pv_proc *p = proc_local.head; p != NULL; p = p->next)
		n++;
	return n;
}

void
pv_proc_stdout_resume(struct pv_proc *proc)
{
	struct stream *s = &proc->out;

	if (proc->done || !s->raw)
		return;
	if (s->paused && s->fd >= 0) {
		s->paused = false;
		event_add(s->ev, NULL);
		/* The pause was ours; give the child a full inactivity period again. */
		if (proc->inactive_ev != NULL && watching(proc))
			arm(proc->inactive_ev, proc->inactivity);
	}
	/* Redeliver what is left, and let a consumer that drained after EOF complete the proc. */
	event_active(proc->deliver_ev, EV_TIMEOUT, 0);
}

pid_t
pv_proc_pid(const struct pv_proc *proc)
{
	return proc->pid;
}

unsigned long long
pv_proc_stdout_bytes(const struct pv_proc *proc)
{
	return proc->stdout_bytes;
}
