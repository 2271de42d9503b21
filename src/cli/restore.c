/* `pgvigilctl restore`: one connection waits for the restore, a second polls its progress. */
#include "cli/restore.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "ctl/protocol.h"
#include "util/mem.h"

enum { EXIT_OK = 0, EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3 };

#define POLL_MS 500
/* Without a terminal, a progress line at most this often (and at every phase change). */
#define PLAIN_EVERY 10.0

struct line_conn {
	int fd;
	char *buf;
	size_t len, cap;
};

static const char *
str(json_t *o, const char *key, const char *dflt)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s != NULL ? s : dflt;
}

static double
now_mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
fmt_bytes(double b, char *out, size_t size)
{
	const char *units[] = {"B", "kB", "MB", "GB", "TB"};
	int u = 0;

	while (b >= 1000 && u < 4) {
		b /= 1000;
		u++;
	}
	snprintf(out, size, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
}

static int
open_socket(const char *path)
{
	struct sockaddr_un sa;
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	pv_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static bool
send_request(int fd, json_t *req)
{
	char *line = pv_ctl_encode(req);
	size_t n = strlen(line);

	json_decref(req);
	for (size_t off = 0; off < n;) {
		ssize_t w = send(fd, line + off, n - off, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			free(line);
			return false;
		}
		off += (size_t)w;
	}
	free(line);
	return true;
}

/* Read what is there; a complete line is returned parsed (NULL otherwise). *eof on close or error. */
static json_t *
read_answer(struct line_conn *c, bool *eof)
{
	char *nl;
	json_t *msg;
	ssize_t r;

	if (c->len + 4096 > c->cap) {
		c->cap = c->cap ? c->cap * 2 : 65536;
		if (c->cap > PV_CTL_MAX_LINE * 16) {
			*eof = true;
			return NULL;
		}
		c->buf = pv_realloc(c->buf, c->cap);
	}
	r = recv(c->fd, c->buf + c->len, c->cap - c->len - 1, 0);
	if (r < 0 && errno == EINTR)
		return NULL;
	if (r <= 0) {
		*eof = true;
		return NULL;
	}
	c->len += (size_t)r;
	c->buf[c->len] = '\0';
	nl = memchr(c->buf, '\n', c->len);
	if (nl == NULL)
		return NULL;
	msg = json_loadb(c->buf, (size_t)(nl - c->buf), 0, NULL);
	c->len -= (size_t)(nl + 1 - c->buf);
	memmove(c->buf, nl + 1, c->len);
	if (msg == NULL)
		*eof = true;
	return msg;
}

/* One restore-progress round trip on the second connection, bounded by a short timeout. */
static json_t *
poll_progress(int fd)
{
	struct line_conn c = {.fd = fd};
	json_t *resp = NULL, *data;
	bool eof = false;
	double until = now_mono() + 2.0;

	if (!send_request(fd, pv_ctl_request_new("restore-progress", NULL)))
		return NULL;
	while (resp == NULL && !eof && now_mono() < until) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 200) > 0)
			resp = read_answer(&c, &eof);
	}
	free(c.buf);
	if (resp == NULL || !json_is_true(json_object_get(resp, "ok"))) {
		json_decref(resp);
		return NULL;
	}
	data = json_incref(json_object_get(resp, "data"));
	json_decref(resp);
	return data;
}

struct progress {
	bool tty;
	bool drawn; /* a \r line is on the terminal */
	char last_phase[128];
	double last_plain;
};

static void
draw(struct progress *pg, json_t *d)
{
	double bytes = (double)json_integer_value(json_object_get(d, "bytes"));
	double total = (double)json_integer_value(json_object_get(d, "total"));
	double elapsed = json_number_value(json_object_get(d, "elapsed"));
	const char *phase = str(d, "phase", "?");
	char b1[32], b2[32], line[256];

	if (!json_is_true(json_object_get(d, "running")))
		return;
	fmt_bytes(bytes, b1, sizeof(b1));
	fmt_bytes(total, b2, sizeof(b2));
	if (total > 0 && bytes > 0)
		snprintf(line, sizeof(line), "%s: %s of %s (%.0f%%), %.1fs", phase, b1, b2,
		         bytes >= total ? 100.0 : 100.0 * bytes / total, elapsed);
	else
		snprintf(line, sizeof(line), "%s, %.1fs", phase, elapsed);
	if (pg->tty) {
		fprintf(stderr, "\r%s\033[K", line);
		pg->drawn = true;
	} else if (strcmp(phase, pg->last_phase) != 0 || elapsed - pg->last_plain >= PLAIN_EVERY) {
		fprintf(stderr, "%s\n", line);
		pg->last_plain = elapsed;
	}
	pv_strlcpy(pg->last_phase, phase, sizeof(pg->last_phase));
	fflush(stderr);
}

static void
print_report(json_t *d)
{
	json_t *b = json_object_get(d, "backup"), *mis = json_object_get(d, "mismatches"), *v;
	bool ok = json_is_true(json_object_get(d, "ok"));
	char size[32];
	size_t i;

	fmt_bytes((double)json_integer_value(json_object_get(b, "archive_size")), size, sizeof(size));
	printf("backup      %s/%s/%s (%s, %s archive)\n", str(b, "database", "?"), str(b, "job", "?"),
	       str(b, "id", "?"), str(b, "tier", "?"), size);
	printf("target      database %s%s%s\n", str(d, "target", "?"),
	       json_is_true(json_object_get(d, "created")) ? " (created)" : "",
	       json_is_true(json_object_get(d, "forced")) ? " (restored over existing tables: --force)" : "");
	if (json_object_get(d, "validation_seconds") != NULL) {
		printf("tables      %lld, %lld rows\n",
		       (long long)json_integer_value(json_object_get(d, "tables")),
		       (long long)json_integer_value(json_object_get(d, "rows")));
		if (json_object_get(d, "fk_constraints") != NULL)
			printf("foreign keys %lld checked, %lld orphaned rows\n",
			       (long long)json_integer_value(json_object_get(d, "fk_constraints")),
			       (long long)json_integer_value(json_object_get(d, "fk_orphans")));
		printf("assertions  %lld of %lld passed\n",
		       (long long)json_integer_value(json_object_get(d, "assertions_passed")),
		       (long long)json_integer_value(json_object_get(d, "assertions")));
	}
	if (json_array_size(mis) > 0) {
		printf("mismatches  %zu\n", json_array_size(mis));
		json_array_foreach(mis, i, v) printf("  - %s\n", json_string_value(v));
	}
	printf("validation  %s\n", ok ? "PASSED" : "FAILED");
	if (!ok)
		printf("cause       %s\n", str(d, "cause", "?"));
	if (json_object_get(d, "restore_seconds") != NULL)
		printf("restored in %.1fs (restore %.1fs, validation %.1fs)\n",
		       json_number_value(json_object_get(d, "total_seconds")),
		       json_number_value(json_object_get(d, "restore_seconds")),
		       json_number_value(json_object_get(d, "validation_seconds")));
}

static int
usage(void)
{
	fprintf(stderr, "usage: pgvigilctl restore BACKUP_ID|latest --database DB --to CONNINFO [--force]\n");
	return EXIT_USAGE;
}

int
pv_cli_restore(const char *socket, bool json, int argc, char **argv)
{
	const char *backup = NULL, *database = NULL, *to = NULL;
	bool force = false;
	struct line_conn a = {.fd = -1};
	struct progress pg = {.tty = isatty(STDERR_FILENO) == 1};
	json_t *resp = NULL, *data, *err;
	int pfd = -1, rc;
	bool eof = false, progress_ok = !json;
	double next_poll = now_mono() + POLL_MS / 1000.0;

	for (int i = 1; i < argc; i++) {
		const char *s = argv[i];
		if (strcmp(s, "--force") == 0) {
			force = true;
		} else if (strcmp(s, "--database") == 0 || strcmp(s, "-d") == 0 || strcmp(s, "--to") == 0) {
			if (i + 1 >= argc)
				return usage();
			*(strcmp(s, "--to") == 0 ? &to : &database) = argv[++i];
		} else if (strncmp(s, "--database=", 11) == 0) {
			database = s + 11;
		} else if (strncmp(s, "--to=", 5) == 0) {
			to = s + 5;
		} else if (s[0] == '-' && s[1] != '\0') {
			fprintf(stderr, "pgvigilctl: restore: unknown option %s\n", s);
			return usage();
		} else if (backup == NULL) {
			backup = s;
		} else {
			return usage();
		}
	}
	if (backup == NULL || database == NULL || to == NULL)
		return usage();

	a.fd = open_socket(socket);
	if (a.fd < 0) {
		fprintf(stderr, "pgvigilctl: cannot connect to pgvigild at %s: %s\n", socket,
		        strerror(errno));
		fprintf(stderr, "HINT: is pgvigild running? Use -s to name another socket.\n");
		return EXIT_UNREACHABLE;
	}
	if (!send_request(a.fd, pv_ctl_request_new("restore", json_pack("{s:s,s:s,s:s,s:b}", "backup", backup,
	                                                                "database", database, "to", to,
	                                                                "force", force)))) {
		fprintf(stderr, "pgvigilctl: sending to pgvigild: %s\n", strerror(errno));
		close(a.fd);
		return EXIT_UNREACHABLE;
	}
	/* Waits as long as the restore takes; the daemon answers once. */
	while (resp == NULL && !eof) {
		struct pollfd p = {.fd = a.fd, .events = POLLIN};
		double left = next_poll - now_mono();
		int n = poll(&p, 1, left > 0 ? (int)(left * 1000) + 1 : 0);

		if (n < 0 && errno != EINTR)
			break;
		if (n > 0) {
			resp = read_answer(&a, &eof);
			continue;
		}
		if (now_mono() < next_poll)
			continue;
		next_poll = now_mono() + POLL_MS / 1000.0;
		if (!progress_ok)
			continue;
		if (pfd < 0 && (pfd = open_socket(socket)) < 0) {
			progress_ok = false;
			continue;
		}
		data = poll_progress(pfd);
		if (data == NULL) {
			/* No progress (an older daemon, or it closed): the restore still answers. */
			close(pfd);
			pfd = -1;
			progress_ok = false;
			continue;
		}
		draw(&pg, data);
		json_decref(data);
	}
	if (pfd >= 0)
		close(pfd);
	close(a.fd);
	free(a.buf);
	if (pg.drawn) {
		fprintf(stderr, "\r\033[K");
		fflush(stderr);
	}
	if (resp == NULL) {
		fprintf(stderr, "pgvigilctl: restore: no answer from pgvigild at %s (it stopped?)\n", socket);
		return EXIT_UNREACHABLE;
	}
	if (!json_is_true(json_object_get(resp, "ok"))) {
		err = json_object_get(resp, "error");
		if (json) {
			json_dumpf(resp, stdout, JSON_INDENT(2));
			fputc('\n', stdout);
		} else {
			fprintf(stderr, "pgvigilctl: restore: %s\n",
			        str(err, "message", "the daemon reported an error"));
		}
		rc = strcmp(str(err, "code", ""), "usage") == 0 ? EXIT_USAGE : EXIT_FAILED;
		json_decref(resp);
		return rc;
	}
	data = json_object_get(resp, "data");
	rc = json_is_true(json_object_get(data, "ok")) ? EXIT_OK : EXIT_FAILED;
	if (json) {
		json_dumpf(data, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
		fputc('\n', stdout);
	} else {
		if (rc != EXIT_OK && json_object_get(data, "restore_seconds") == NULL)
			fprintf(stderr, "pgvigilctl: restore: %s\n", str(data, "cause", "failed"));
		else
			print_report(data);
	}
	json_decref(resp);
	return rc;
}
