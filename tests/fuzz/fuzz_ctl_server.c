/*
 * Fuzz target: the control socket server (src/ctl/server.c) reading requests from a client.
 *
 * A real server listens on a socket in the scratch directory with a small command table: "echo"
 * answers with its arguments, "fail" with an error, "admin" changes the daemon (admins only),
 * "later" answers with its arguments from a timer (an asynchronous command), "later-fail" with an
 * error from a timer. For each input a client connects, writes the input, half-closes, and reads
 * until the server closes.
 *
 * Checked beyond memory safety: the server answers every request line (the server's framing: lines
 * end at '\n', a last line without one counts) exactly once, in order, each answer one JSON line
 * whose "ok", error code and data are those the request calls for; and it closes the connection.
 */
#include <errno.h>
#include <fcntl.h>
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
#include "fuzz.h"

static struct event_base *base;
static struct pv_ctl_server *server;
static struct sockaddr_un addr;
static bool admin_mode;

static bool
echo(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	*data = args != NULL ? json_deep_copy(args) : NULL;
	return true;
}

static bool
fail(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	return pv_error_set(err, PV_ERR_NOT_FOUND, "nothing here");
}

static bool
admin(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data, struct pv_error *err)
{
	*data = json_pack("{s:b}", "admin", peer->admin);
	return true;
}

struct later {
	struct pv_ctl_call *call;
	json_t *data;
	bool fail;
};

static void
later_done(evutil_socket_t fd, short what, void *arg)
{
	struct later *l = arg;
	struct pv_error err;

	if (l->fail) {
		pv_error_set(&err, PV_ERR_BUSY, "later, then no");
		pv_ctl_call_done(l->call, l->data, &err);
	} else {
		pv_ctl_call_done(l->call, l->data, NULL);
	}
	free(l);
}

static void
later_start(struct pv_ctl_call *call, json_t *args, bool failing)
{
	static const struct timeval soon = {0, 0};
	struct later *l = calloc(1, sizeof(*l));

	if (l == NULL)
		abort();
	l->call = call;
	l->data = args != NULL ? json_deep_copy(args) : NULL;
	l->fail = failing;
	if (event_base_once(base, -1, EV_TIMEOUT, later_done, l, &soon) != 0)
		abort();
}

static void
later(void *ctx, struct pv_ctl_call *call, json_t *args)
{
	later_start(call, args, false);
}

static void
later_fail(void *ctx, struct pv_ctl_call *call, json_t *args)
{
	later_start(call, args, true);
}

static const struct pv_ctl_command table[] = {
        {"echo", false, echo, NULL},
        {"fail", false, fail, NULL},
        {"admin", true, admin, NULL},
        {"later", false, NULL, later},
        {"later-fail", false, NULL, later_fail},
        {NULL, false, NULL, NULL},
};

static bool
is_admin(void *ctx, uid_t uid, gid_t gid)
{
	return admin_mode;
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const char *const env[] = {NULL};
	struct pv_error err;

	(void)argc;
	(void)argv;
	pv_fuzz_environment(env);
	signal(SIGPIPE, SIG_IGN); /* as the daemon does */
	base = event_base_new();
	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/ctl.sock", pv_fuzz_scratch());
	server = pv_ctl_server_new(base, addr.sun_path, table, is_admin, NULL, &err);
	if (base == NULL || server == NULL) {
		fprintf(stderr, "cannot start the control server: %s\n", err.msg);
		abort();
	}
	return 0;
}

/* What the server must answer to one line: the "ok" member, the error code or the data. */
static json_t *
expected(const char *line, size_t len)
{
	char *copy = malloc(len + 1);
	json_t *req, *args, *want;
	const char *cmd;
	struct pv_error err;

	if (copy == NULL)
		abort();
	memcpy(copy, line, len);
	copy[len] = '\0';
	if (!pv_ctl_request_parse(copy, len, &req, &cmd, &args, &err)) {
		free(copy);
		return json_pack("{s:b, s:s}", "ok", 0, "code", "usage");
	}
	if (strcmp(cmd, "echo") == 0 || strcmp(cmd, "later") == 0)
		want = json_pack("{s:b, s:o}", "ok", 1, "data",
		                 args != NULL ? json_incref(args) : json_object());
	else if (strcmp(cmd, "fail") == 0)
		want = json_pack("{s:b, s:s}", "ok", 0, "code", "not_found");
	else if (strcmp(cmd, "later-fail") == 0)
		want = json_pack("{s:b, s:s}", "ok", 0, "code", "busy");
	else if (strcmp(cmd, "admin") == 0)
		want = admin_mode ? json_pack("{s:b, s:{s:b}}", "ok", 1, "data", "admin", 1)
		                  : json_pack("{s:b, s:s}", "ok", 0, "code", "denied");
	else
		want = json_pack("{s:b, s:s}", "ok", 0, "code", "usage");
	json_decref(req);
	free(copy);
	if (want == NULL)
		abort();
	return want;
}

/* The client: write what is left of the input, half-close, collect answers until the server closes. */
struct client {
	int fd;
	const uint8_t *out;
	size_t n_out;
	char *in;
	size_t n_in, cap_in;
	bool closed;
};

static void
client_io(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;

	if (what & EV_WRITE) {
		ssize_t n = c->n_out > 0 ? send(fd, c->out, c->n_out, MSG_NOSIGNAL) : 0;

		if (n > 0) {
			c->out += n;
			c->n_out -= (size_t)n;
		} else if (n < 0 && errno != EAGAIN && errno != EPIPE && errno != ECONNRESET) {
			pv_fuzz_fail("client write: %s", strerror(errno));
		}
		if (c->n_out == 0 || (n < 0 && (errno == EPIPE || errno == ECONNRESET)))
			shutdown(fd, SHUT_WR);
	}
	if (what & EV_READ) {
		ssize_t n;

		if (c->cap_in - c->n_in < 4096) {
			c->cap_in = c->cap_in * 2 + 8192;
			c->in = realloc(c->in, c->cap_in);
			if (c->in == NULL)
				abort();
		}
		n = read(fd, c->in + c->n_in, c->cap_in - c->n_in - 1);
		if (n > 0)
			c->n_in += (size_t)n;
		else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
			c->closed = true;
			event_base_loopbreak(base);
		}
	}
}

static void
stuck(evutil_socket_t fd, short what, void *arg)
{
	pv_fuzz_fail("the server did not close the connection within 10 s");
}

static void
check_answers(const uint8_t *data, size_t size, const char *in, size_t n_in)
{
	const char *p = (const char *)data, *end = p + size, *a = in, *a_end = in + n_in;
	size_t k = 0;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t len = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
		const char *anl = memchr(a, '\n', (size_t)(a_end - a));
		json_t *want = expected(p, len), *got;
		json_error_t jerr;
		bool ok;

		PV_FUZZ_CHECK(anl != NULL, "request %zu has no answer", k);
		got = json_loadb(a, (size_t)(anl - a), JSON_REJECT_DUPLICATES, &jerr);
		PV_FUZZ_CHECK(got != NULL, "answer %zu is not JSON: %s", k, jerr.text);
		ok = json_is_true(json_object_get(want, "ok"));
		PV_FUZZ_CHECK(json_equal(json_object_get(got, "ok"), json_object_get(want, "ok")),
		              "answer %zu: ok is not %s", k, ok ? "true" : "false");
		if (ok)
			PV_FUZZ_CHECK(json_equal(json_object_get(got, "data"), json_object_get(want, "data")),
			              "answer %zu: other data", k);
		else
			PV_FUZZ_CHECK(json_equal(json_object_get(json_object_get(got, "error"), "code"),
			                         json_object_get(want, "code")),
			              "answer %zu: error code is not %s", k,
			              json_string_value(json_object_get(want, "code")));
		json_decref(got);
		json_decref(want);
		a = anl + 1;
		p += len + (nl != NULL);
		k++;
	}
	PV_FUZZ_CHECK(a == a_end, "%zu more bytes after the %zu answers", (size_t)(a_end - a), k);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct timeval limit = {10, 0};
	struct client c = {0};
	struct event *io, *timer;

	admin_mode = size % 3 == 0;
	c.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (c.fd < 0 || connect(c.fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
		perror("client connect");
		abort();
	}
	c.out = data;
	c.n_out = size;
	if (size == 0)
		shutdown(c.fd, SHUT_WR);
	io = event_new(base, c.fd, EV_READ | EV_WRITE | EV_PERSIST, client_io, &c);
	timer = evtimer_new(base, stuck, NULL);
	event_add(io, NULL);
	evtimer_add(timer, &limit);
	while (!c.closed) {
		if (c.n_out == 0 && (event_get_events(io) & EV_WRITE)) {
			/* Everything written: wait for answers only. */
			event_del(io);
			event_assign(io, base, c.fd, EV_READ | EV_PERSIST, client_io, &c);
			event_add(io, NULL);
		}
		event_base_loop(base, EVLOOP_ONCE);
	}
	event_free(io);
	event_free(timer);
	close(c.fd);
	check_answers(data, size, c.in != NULL ? c.in : "", c.n_in);
	free(c.in);
	return 0;
}
