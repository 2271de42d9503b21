/* Unit tests for src/ctl: request parsing and encoding, and the control server's framing of requests. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>

#include "ctl/protocol.h"
#include "ctl/server.h"
#include "util/mem.h"

/* Inputs that found bugs in the fuzz target of the same name (tests/fuzz/README.md). */
#define REGRESS_DIR "tests/fuzz/regress/ctl_server"

static char tmpdir[256];

static void
tmp_setup(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/check_ctl.XXXXXX");
	if (mkdtemp(tmpdir) == NULL)
		abort();
	signal(SIGPIPE, SIG_IGN);
}

static void
tmp_teardown(void)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/ctl.sock", tmpdir);
	unlink(path);
	rmdir(tmpdir);
}

/* ---- request parsing ---- */

static const struct {
	const char *line;
	bool ok;
	const char *cmd;  /* when ok */
	bool has_args;    /* when ok */
	const char *frag; /* in the message, when not ok */
} parse_cases[] = {
        {"{\"cmd\": \"status\"}", true, "status", false, NULL},
        {"{\"cmd\":\"run\",\"args\":{\"job\":\"health\"}}", true, "run", true, NULL},
        {"{\"cmd\":\"run\",\"args\":null}", false, NULL, false, "\"args\" must be an object"},
        {"{\"cmd\":\"run\",\"args\":[1]}", false, NULL, false, "\"args\" must be an object"},
        {"{\"cmd\":7}", false, NULL, false, "\"cmd\" must be a string"},
        {"{\"args\":{}}", false, NULL, false, "\"cmd\" must be a string"},
        {"[\"cmd\",\"status\"]", false, NULL, false, "expected a JSON object"},
        {"{\"cmd\":\"a\",\"cmd\":\"b\"}", false, NULL, false, "malformed request: duplicate object key"},
        {"{\"cmd\": \"status\"", false, NULL, false, "malformed request: "},
        {"", false, NULL, false, "malformed request: "},
};

START_TEST(test_ctl__request_parse)
{
	const char *line = parse_cases[_i].line;
	struct pv_error err = {0};
	json_t *req = NULL, *args = NULL;
	const char *cmd = NULL;
	bool ok = pv_ctl_request_parse(line, strlen(line), &req, &cmd, &args, &err);

	ck_assert_msg(ok == parse_cases[_i].ok, "%s: %s", line, err.msg);
	if (ok) {
		ck_assert_str_eq(cmd, parse_cases[_i].cmd);
		ck_assert(parse_cases[_i].has_args == (args != NULL));
		json_decref(req);
	} else {
		ck_assert_ptr_null(req);
		ck_assert_int_eq(err.code, PV_ERR_USAGE);
		ck_assert_msg(strstr(err.msg, parse_cases[_i].frag) != NULL, "%s: %s", line, err.msg);
	}
}
END_TEST

/* Every encoded message is one line, whatever its strings hold. */
START_TEST(test_ctl__encode_one_line)
{
	json_t *req = pv_ctl_request_new("run", json_pack("{s:s}", "job", "a\nb\r\u2028c\"d"));
	char *line = pv_ctl_encode(req);
	json_t *back, *args;
	const char *cmd;
	struct pv_error err;

	ck_assert_ptr_eq(strchr(line, '\n'), line + strlen(line) - 1);
	ck_assert(pv_ctl_request_parse(line, strlen(line) - 1, &back, &cmd, &args, &err));
	ck_assert(json_equal(back, req));
	json_decref(back);
	json_decref(req);
	free(line);
}
END_TEST

/* ---- the server ---- */

struct world {
	struct event_base *base;
	struct pv_ctl_server *srv;
	int fd;
	const char *out;
	size_t n_out;
	char *in;
	size_t n_in, cap_in;
	bool closed, timed_out;
};

static struct world *the_world; /* for the timer that answers "later" */

static bool
echo(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	*data = args != NULL ? json_deep_copy(args) : NULL;
	return true;
}

static void
later_done(evutil_socket_t fd, short what, void *arg)
{
	pv_ctl_call_done(arg, json_pack("{s:b}", "later", 1), NULL);
}

/* An asynchronous command, as verify and restore are: answered from the loop, later. */
static void
later(void *ctx, struct pv_ctl_call *call, json_t *args)
{
	static const struct timeval soon = {0, 1000};

	ck_assert_int_eq(event_base_once(the_world->base, -1, EV_TIMEOUT, later_done, call, &soon), 0);
}

static bool
nobody_is_admin(void *ctx, uid_t uid, gid_t gid)
{
	return false;
}

static const struct pv_ctl_command table[] = {
        {"echo", false, echo, NULL},
        {"later", false, NULL, later},
        {NULL, false, NULL, NULL},
};

static void
client_io(evutil_socket_t fd, short what, void *arg)
{
	struct world *w = arg;

	if ((what & EV_WRITE) && w->n_out > 0) {
		ssize_t n = send(fd, w->out, w->n_out, MSG_NOSIGNAL);
		if (n > 0) {
			w->out += n;
			w->n_out -= (size_t)n;
		}
		if (w->n_out == 0)
			shutdown(fd, SHUT_WR);
	}
	if (what & EV_READ) {
		ssize_t n;
		if (w->cap_in - w->n_in < 4096) {
			w->cap_in = w->cap_in * 2 + 8192;
			w->in = pv_realloc(w->in, w->cap_in);
		}
		n = read(fd, w->in + w->n_in, w->cap_in - w->n_in - 1);
		if (n > 0) {
			w->n_in += (size_t)n;
			w->in[w->n_in] = '\0';
		} else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
			w->closed = true;
			event_base_loopbreak(w->base);
		}
	}
}

static void
too_long(evutil_socket_t fd, short what, void *arg)
{
	struct world *w = arg;

	w->timed_out = true;
	event_base_loopbreak(w->base);
}

/* Send input on a fresh connection, half-close, and return the number of answer lines once the
 * server has closed the connection (or -1 if it has not within 5 s). */
static int
converse(struct world *w, const char *input, size_t len)
{
	struct sockaddr_un sa;
	struct pv_error err;
	struct timeval limit = {5, 0};
	struct event *io, *timer;
	int answers = 0;

	memset(w, 0, sizeof(*w));
	the_world = w;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/ctl.sock", tmpdir);
	w->base = event_base_new();
	w->srv = pv_ctl_server_new(w->base, sa.sun_path, table, nobody_is_admin, NULL, &err);
	ck_assert_msg(w->srv != NULL, "%s", err.msg);
	w->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	ck_assert_int_eq(connect(w->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	w->out = input;
	w->n_out = len;
	if (len == 0)
		shutdown(w->fd, SHUT_WR);
	io = event_new(w->base, w->fd, EV_READ | EV_WRITE | EV_PERSIST, client_io, w);
	timer = evtimer_new(w->base, too_long, w);
	event_add(io, NULL);
	evtimer_add(timer, &limit);
	while (!w->closed && !w->timed_out) {
		if (w->n_out == 0 && (event_get_events(io) & EV_WRITE)) {
			event_del(io);
			event_assign(io, w->base, w->fd, EV_READ | EV_PERSIST, client_io, w);
			event_add(io, NULL);
		}
		event_base_loop(w->base, EVLOOP_ONCE);
	}
	event_free(io);
	event_free(timer);
	close(w->fd);
	pv_ctl_server_free(w->srv);
	event_base_free(w->base);
	for (size_t i = 0; i < w->n_in; i++)
		answers += w->in[i] == '\n';
	return w->timed_out ? -1 : answers;
}

/* Lines as the server frames them: each ends at '\n'; a last one without it counts. */
static int
count_requests(const char *input, size_t len)
{
	int n = 0;

	for (size_t i = 0; i < len; i++)
		n += input[i] == '\n';
	return n + (len > 0 && input[len - 1] != '\n');
}

START_TEST(test_ctl__last_line_without_newline_answered)
{
	static const char sync_last[] = "{\"cmd\":\"later\"}\n{\"cmd\":\"echo\",\"args\":{\"n\":1}}";
	static const char async_last[] = "{\"cmd\":\"echo\",\"args\":{\"n\":1}}\n{\"cmd\":\"later\"}";
	struct world w;

	ck_assert_int_eq(converse(&w, sync_last, strlen(sync_last)), 2);
	ck_assert_str_eq(w.in, "{\"ok\":true,\"data\":{\"later\":true}}\n{\"ok\":true,\"data\":{\"n\":1}}\n");
	free(w.in);
	/* The answer used to be dropped: the connection was closed while the command ran. */
	ck_assert_int_eq(converse(&w, async_last, strlen(async_last)), 2);
	ck_assert_str_eq(w.in, "{\"ok\":true,\"data\":{\"n\":1}}\n{\"ok\":true,\"data\":{\"later\":true}}\n");
	free(w.in);
}
END_TEST

/* Every input that found a bug with the ctl_server fuzz target: one answer per request line. */
START_TEST(test_ctl__fuzz_regressions)
{
	DIR *d = opendir(REGRESS_DIR);
	struct dirent *de;
	int files = 0;

	ck_assert_msg(d != NULL, "%s: %s (run from the source tree)", REGRESS_DIR, strerror(errno));
	while ((de = readdir(d)) != NULL) {
		char path[1024], *buf = pv_malloc(1 << 20);
		size_t len;
		FILE *f;
		struct world w;

		if (de->d_name[0] == '.') {
			free(buf);
			continue;
		}
		snprintf(path, sizeof(path), "%s/%s", REGRESS_DIR, de->d_name);
		f = fopen(path, "rb");
		ck_assert_ptr_nonnull(f);
		len = fread(buf, 1, 1 << 20, f);
		fclose(f);
		ck_assert_msg(converse(&w, buf, len) == count_requests(buf, len), "%s: answers:\n%s", path,
		              w.in != NULL ? w.in : "");
		free(w.in);
		free(buf);
		files++;
	}
	closedir(d);
	ck_assert_int_gt(files, 0);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("ctl");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_unchecked_fixture(tc, tmp_setup, tmp_teardown);
	tcase_add_loop_test(tc, test_ctl__request_parse, 0, sizeof(parse_cases) / sizeof(parse_cases[0]));
	tcase_add_test(tc, test_ctl__encode_one_line);
	tcase_add_test(tc, test_ctl__last_line_without_newline_answered);
	tcase_add_test(tc, test_ctl__fuzz_regressions);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
