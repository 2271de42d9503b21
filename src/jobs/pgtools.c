/* Finding a pg_dump / pg_restore that can handle the server: SPEC §2's search order, version checked. */
#include "jobs/pgtools.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "loop/proc.h"
#include "util/log.h"
#include "util/mem.h"

extern char **environ;

struct pv_pgtool_op {
	struct event_base *base;
	char *name;
	char *path;
	int server_major;
	bool explicit_dir; /* pg_bin_dir given: no fallback */
	char version[256];
	struct pv_proc *proc;
	struct event *defer; /* reports a failure found before any child ran, outside the caller's frame */
	struct pv_error err;
	pv_pgtool_cb cb;
	void *arg;
};

static bool
is_executable(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

/* The newest /usr/lib/postgresql/N/bin/name with N >= min. */
static char *
newest_debian(const char *name, int min)
{
	DIR *dir = opendir("/usr/lib/postgresql");
	struct dirent *de;
	int best = -1;

	if (dir == NULL)
		return NULL;
	while ((de = readdir(dir)) != NULL) {
		char *end;
		long n = strtol(de->d_name, &end, 10);
		char *p;
		if (*end != '\0' || n < min || n <= best)
			continue;
		p = pv_asprintf("/usr/lib/postgresql/%ld/bin/%s", n, name);
		if (is_executable(p))
			best = (int)n;
		free(p);
	}
	closedir(dir);
	return best < 0 ? NULL : pv_asprintf("/usr/lib/postgresql/%d/bin/%s", best, name);
}

static char *
in_path(const char *name)
{
	const char *path = getenv("PATH");
	char *copy, *save = NULL, *found = NULL;

	if (path == NULL)
		path = "/usr/local/bin:/usr/bin:/bin";
	copy = pv_strdup(path);
	for (char *d = strtok_r(copy, ":", &save); d != NULL && found == NULL;
	     d = strtok_r(NULL, ":", &save)) {
		char *p = pv_asprintf("%s/%s", d, name);
		if (is_executable(p))
			found = p;
		else
			free(p);
	}
	free(copy);
	return found;
}

int
pv_pgtool_parse_major(const char *line)
{
	const char *p = strstr(line, "(PostgreSQL) ");
	int major = 0;

	if (p == NULL)
		return 0;
	p += strlen("(PostgreSQL) ");
	if (sscanf(p, "%d", &major) != 1)
		return 0;
	return major;
}

static void
op_free(struct pv_pgtool_op *op)
{
	if (op->defer != NULL)
		event_free(op->defer);
	free(op->name);
	free(op->path);
	free(op);
}

static void
fail_later_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_pgtool_op *op = arg;
	op->cb(NULL, 0, NULL, &op->err, op->arg);
	op_free(op);
}

static void
on_version_line(struct pv_proc *proc, const char *line, void *arg)
{
	struct pv_pgtool_op *op = arg;
	if (op->version[0] == '\0')
		pv_strlcpy(op->version, line, sizeof(op->version));
}

static void
on_version_done(struct pv_proc *proc, const struct pv_proc_result *res, void *arg)
{
	struct pv_pgtool_op *op = arg;
	struct pv_error err;
	int major;

	op->proc = NULL;
	if (op->cb == NULL) { /* cancelled */
		op_free(op);
		return;
	}
	if (res->cause != PV_PROC_EXITED || res->exit_code != 0) {
		pv_error_set(&err, PV_ERR_PROC, "%s --version failed: %s", op->path, res->text);
		op->cb(NULL, 0, NULL, &err, op->arg);
		op_free(op);
		return;
	}
	major = pv_pgtool_parse_major(op->version);
	if (major == 0) {
		pv_error_set(&err, PV_ERR_PROC, "%s --version printed \"%s\", not a PostgreSQL version",
		             op->path, op->version);
	} else if (major < op->server_major) {
		pv_error_set(
		        &err, PV_ERR_PROC,
		        "%s is version %d, older than the server (%d): it cannot dump or restore it safely: "
		        "HINT: install the Debian package postgresql-client-%d%s",
		        op->path, major, op->server_major, op->server_major,
		        op->explicit_dir ? " and point daemon.pg_bin_dir at it" : "");
	} else {
		op->cb(op->path, major, op->version, NULL, op->arg);
		op_free(op);
		return;
	}
	op->cb(NULL, 0, NULL, &err, op->arg);
	op_free(op);
}

struct pv_pgtool_op *
pv_pgtool_find(struct event_base *base, const char *name, const char *pg_bin_dir, int server_version_num,
               pv_pgtool_cb cb, void *arg)
{
	struct pv_pgtool_op *op = pv_calloc(1, sizeof(*op));
	char **env = pv_pgtool_env(NULL, NULL);
	const char *argv[3];
	struct pv_proc_opts po = {0};

	op->base = base;
	op->name = pv_strdup(name);
	op->server_major = server_version_num / 10000;
	op->cb = cb;
	op->arg = arg;
	if (pg_bin_dir != NULL) {
		op->explicit_dir = true;
		op->path = pv_asprintf("%s/%s", pg_bin_dir, name);
		if (!is_executable(op->path))
			pv_error_set(&op->err, PV_ERR_PROC,
			             "%s not found or not executable (daemon.pg_bin_dir)", op->path);
	} else {
		char *p = pv_asprintf("/usr/lib/postgresql/%d/bin/%s", op->server_major, name);
		if (is_executable(p))
			op->path = p;
		else {
			free(p);
			op->path = newest_debian(name, op->server_major);
		}
		if (op->path == NULL)
			op->path = in_path(name);
		if (op->path == NULL)
			pv_error_set(
			        &op->err, PV_ERR_PROC,
			        "no %s found for a PostgreSQL %d server: HINT: install the Debian package "
			        "postgresql-client-%d, or set daemon.pg_bin_dir",
			        name, op->server_major, op->server_major);
	}
	if (op->err.msg[0] == '\0') {
		argv[0] = op->path;
		argv[1] = "--version";
		argv[2] = NULL;
		po.argv = argv;
		po.envp = (const char *const *)env;
		po.stdin_fd = -1;
		po.stdout_fd = -1;
		po.on_stdout_line = on_version_line;
		po.on_done = on_version_done;
		po.arg = op;
		po.timeout = 30;
		op->proc = pv_proc_spawn(base, &po, &op->err);
	}
	pv_pgtool_env_free(env);
	if (op->proc == NULL) {
		op->defer = event_new(base, -1, 0, fail_later_cb, op);
		event_active(op->defer, EV_TIMEOUT, 0);
	}
	return op;
}

void
pv_pgtool_cancel(struct pv_pgtool_op *op)
{
	if (op == NULL)
		return;
	if (op->proc != NULL) {
		/* The proc completes later; detach it from us by making its callback a no-op owner. */
		pv_proc_cancel(op->proc);
		op->cb = NULL;
		return;
	}
	op_free(op);
}

char **
pv_pgtool_env(const char *appname, const char *password)
{
	size_t n = 0, cap = 16;
	char **env = pv_malloc(cap * sizeof(*env));
	const char *path = getenv("PATH"), *home = getenv("HOME"), *tz = getenv("TZ");

#define PUSH(s)                                                                                              \
	do {                                                                                                 \
		if (n + 2 > cap) {                                                                           \
			cap *= 2;                                                                            \
			env = pv_realloc(env, cap * sizeof(*env));                                           \
		}                                                                                            \
		env[n++] = (s);                                                                              \
	} while (0)

	PUSH(pv_asprintf("PATH=%s", path != NULL ? path : "/usr/local/bin:/usr/bin:/bin"));
	if (home != NULL)
		PUSH(pv_asprintf("HOME=%s", home));
	if (tz != NULL)
		PUSH(pv_asprintf("TZ=%s", tz));
	/* Stable, parseable messages. */
	PUSH(pv_strdup("LC_ALL=C"));
	for (char **e = environ; *e != NULL; e++) {
		/* Connection settings the operator gave the daemon (PGSSLROOTCERT, PGPASSFILE, ...),
		 * but never a password from our own environment: passwords come from the config. */
		if (strncmp(*e, "PG", 2) == 0 && strncmp(*e, "PGPASSWORD=", 11) != 0 &&
		    strncmp(*e, "PGAPPNAME=", 10) != 0)
			PUSH(pv_strdup(*e));
	}
	if (appname != NULL)
		PUSH(pv_asprintf("PGAPPNAME=%s", appname));
	if (password != NULL)
		PUSH(pv_asprintf("PGPASSWORD=%s", password));
#undef PUSH
	env[n] = NULL;
	return env;
}

void
pv_pgtool_env_free(char **env)
{
	if (env == NULL)
		return;
	for (char **e = env; *e != NULL; e++) {
		/* It may hold a password. */
		explicit_bzero(*e, strlen(*e));
		free(*e);
	}
	free(env);
}
