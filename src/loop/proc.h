/* Child processes on the event loop: spawn without a shell, stream output, timeouts, one completion. */
#ifndef PV_LOOP_PROC_H
#define PV_LOOP_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "util/error.h"

struct event_base;
struct evbuffer;
struct pv_proc;

enum pv_proc_cause {
	PV_PROC_EXITED,    /* exited on its own; see exit_code */
	PV_PROC_SIGNALED,  /* killed by a signal nobody here sent; see signo */
	PV_PROC_TIMEOUT,   /* passed its deadline; group was terminated */
	PV_PROC_INACTIVE,  /* produced no output for `inactivity` seconds; group was terminated */
	PV_PROC_CANCELLED, /* pv_proc_cancel() */
};

struct pv_proc_result {
	enum pv_proc_cause cause;
	int exit_code;  /* valid for PV_PROC_EXITED */
	int signo;      /* signal that ended it, 0 if it exited */
	double elapsed; /* seconds, monotonic */
	char text[160]; /* "exited with status 1", "killed by signal 9 (Killed)", "timeout after 30s", ... */
};

/* Called with newly read stdout bytes. The callee removes what it consumed from `data`;
 * bytes it leaves stay buffered and, past `stdout_high_water`, reading pauses (backpressure)
 * until pv_proc_stdout_resume(). */
typedef void (*pv_proc_data_cb)(struct pv_proc *proc, struct evbuffer *data, void *arg);
/* One complete line of stderr (or stdout in line mode), without its newline. Long lines are split. */
typedef void (*pv_proc_line_cb)(struct pv_proc *proc, const char *line, void *arg);
/* Exactly once, after the child has exited AND every pipe reached EOF (or was closed by a kill).
 * The pv_proc is freed when this returns. */
typedef void (*pv_proc_done_cb)(struct pv_proc *proc, const struct pv_proc_result *result, void *arg);

struct pv_proc_opts {
	const char *const *argv;   /* argv[0] is the program path or a name looked up in PATH of envp */
	const char *const *envp;   /* explicit environment (NULL = empty) */
	const char *cwd;           /* or NULL */
	int stdin_fd;              /* dup'ed into the child; -1 = /dev/null */
	int stdout_fd;             /* dup'ed into the child; -1 = a pipe read by on_stdout / on_stdout_line */
	pv_proc_data_cb on_stdout; /* raw stdout (wins over on_stdout_line) */
	pv_proc_line_cb on_stdout_line; /* stdout by lines */
	pv_proc_line_cb on_stderr;      /* stderr by lines; NULL = discard */
	pv_proc_done_cb on_done;
	void *arg;
	double timeout;           /* seconds from spawn; 0 = none */
	double inactivity;        /* seconds without output on any pipe; 0 = none */
	double kill_grace;        /* seconds between SIGTERM and SIGKILL; 0 = 5s */
	size_t stdout_high_water; /* 0 = 1 MiB */
};

/* Install the SIGCHLD event on `base`. Call once before spawning. */
bool pv_proc_init(struct event_base *base, struct pv_error *err);
/* Remove the SIGCHLD event. Running children are not touched: cancel them first. */
void pv_proc_shutdown(void);

/* Fork/exec in a new process group, other descriptors closed, signal mask and dispositions reset.
 * Returns NULL and fills err if the program could not be started (exec failure is reported
 * synchronously through a CLOEXEC status pipe). */
struct pv_proc *pv_proc_spawn(struct event_base *base, const struct pv_proc_opts *opts, struct pv_error *err);

/* SIGTERM the group now, SIGKILL after kill_grace; on_done later reports PV_PROC_CANCELLED. */
void pv_proc_cancel(struct pv_proc *proc);
/* Cancel every running child (shutdown). */
void pv_proc_cancel_all(void);
/* SIGKILL every child's process group now (last resort when stopping past the bound). */
void pv_proc_kill_all(void);
/* Number of children not yet completed. */
size_t pv_proc_running(void);

void pv_proc_stdout_resume(struct pv_proc *proc);
pid_t pv_proc_pid(const struct pv_proc *proc);
/* Bytes read from stdout so far. */
unsigned long long pv_proc_stdout_bytes(const struct pv_proc *proc);

#endif
