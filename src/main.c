/* pgvigild: command line, bootstrap order and the run loop. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config/config.h"
#include "daemon.h"
#include "util/log.h"
#include "util/mem.h"

#define DEFAULT_CONFIG PV_SYSCONFDIR "/pgvigil/pgvigil.yaml"

static void
usage(FILE *out)
{
	fprintf(out,
	        "usage: pgvigild [-c FILE] [--foreground] [--check-config] [--version] [--help]\n"
	        "\n"
	        "  -c, --config FILE   configuration file (default " DEFAULT_CONFIG ")\n"
	        "  -f, --foreground    stay in the foreground, log to stderr (as under systemd)\n"
	        "  -t, --check-config  validate the configuration, print it with secrets redacted, exit 0/1\n"
	        "  -V, --version       print the version and exit\n"
	        "  -h, --help          print this help and exit\n");
}

static void
strv_free(struct pv_strv *sv)
{
	for (size_t i = 0; i < sv->n; i++)
		free(sv->v[i]);
	free(sv->v);
	sv->v = NULL;
	sv->n = 0;
}

static int
check_config(const char *path)
{
	struct pv_config_diag diag = {0};
	struct pv_error err;
	struct pv_config *cfg = pv_config_load(path, &diag, &err);
	struct pv_strv unavailable = {0};

	for (size_t i = 0; i < diag.errors.n; i++)
		fprintf(stderr, "error: %s\n", diag.errors.v[i]);
	if (cfg == NULL && diag.errors.n == 0)
		fprintf(stderr, "error: %s\n", err.msg);
	for (size_t i = 0; i < diag.warnings.n; i++)
		fprintf(stderr, "warning: %s\n", diag.warnings.v[i]);
	pv_config_diag_free(&diag);
	if (cfg == NULL) {
		fprintf(stderr, "%s: configuration is invalid\n", path);
		return EXIT_FAILURE;
	}
	if (!pv_daemon_check_job_types(cfg, &unavailable)) {
		for (size_t i = 0; i < unavailable.n; i++)
			fprintf(stderr, "warning: %s\n", unavailable.v[i]);
		fprintf(stderr, "warning: pgvigild will refuse to start until these jobs are removed\n");
	}
	strv_free(&unavailable);
	pv_config_dump(cfg, stdout);
	fprintf(stderr, "%s: configuration is valid\n", path);
	pv_config_unref(cfg);
	return EXIT_SUCCESS;
}

/* Detach: the parent exits only once the child reports readiness (or failure) through a pipe,
 * so `pgvigild` without --foreground still returns a meaningful exit status. */
static int
detach(int *ready_fd)
{
	int fds[2];
	pid_t pid;
	char c;
	ssize_t n;

	if (pipe2(fds, O_CLOEXEC) != 0) {
		fprintf(stderr, "pgvigild: pipe: %s\n", strerror(errno));
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "pgvigild: fork: %s\n", strerror(errno));
		return -1;
	}
	if (pid > 0) {
		close(fds[1]);
		do
			n = read(fds[0], &c, 1);
		while (n < 0 && errno == EINTR);
		if (n == 1 && c == 'R')
			_exit(EXIT_SUCCESS);
		fprintf(stderr, "pgvigild: failed to start; see the system log\n");
		_exit(EXIT_FAILURE);
	}
	close(fds[0]);
	setsid();
	/* Do not pin the directory we were started from; relative paths were resolved already. */
	if (chdir("/") != 0) {
		/* / always exists */
	}
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null >= 0) {
		dup2(null, STDIN_FILENO);
		dup2(null, STDOUT_FILENO);
		dup2(null, STDERR_FILENO);
		if (null > STDERR_FILENO)
			close(null);
	}
	*ready_fd = fds[1];
	return 0;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
	        {"config", required_argument, NULL, 'c'}, {"foreground", no_argument, NULL, 'f'},
	        {"check-config", no_argument, NULL, 't'}, {"version", no_argument, NULL, 'V'},
	        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
	};
	const char *config_path = DEFAULT_CONFIG;
	bool foreground = false, checkonly = false;
	struct pv_daemon_opts opts = {0};
	struct pv_daemon *d;
	struct pv_error err;
	int opt, status;

	while ((opt = getopt_long(argc, argv, "c:ftVh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c': config_path = optarg; break;
		case 'f': foreground = true; break;
		case 't': checkonly = true; break;
		case 'V': printf("pgvigild %s\n", PV_VERSION); return EXIT_SUCCESS;
		case 'h': usage(stdout); return EXIT_SUCCESS;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "pgvigild: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (checkonly)
		return check_config(config_path);

	/* Bootstrap order: logging, detach, then the daemon (config, state, socket, schedule). */
	opts.config_path = config_path;
	opts.ready_fd = -1;
	if (foreground) {
		pv_log_init("pgvigild", pv_log_stderr_is_journal() ? PV_LOG_TO_JOURNAL : PV_LOG_TO_STDERR);
	} else {
		if (detach(&opts.ready_fd) != 0)
			return EXIT_FAILURE;
		pv_log_init("pgvigild", PV_LOG_TO_SYSLOG);
	}
	/* A dead control client or webhook must not kill the daemon. */
	signal(SIGPIPE, SIG_IGN);

	d = pv_daemon_new(&opts, &err);
	if (d == NULL) {
		pv_log_error("cannot start: %s", err.msg);
		return EXIT_FAILURE;
	}
	status = pv_daemon_run(d);
	pv_daemon_free(d);
	return status;
}
