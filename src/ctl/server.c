/* Control socket server: Unix stream socket, peer credentials, command dispatch from a table. */
#include "ctl/server.h"

#include <errno.h>
#include <stdint.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "config/config.h"
#include "ctl/protocol.h"
#include "util/log.h"
#include "util/mem.h"

/* Caps so one misbehaving local user cannot exhaust the daemon's descriptors. Admins have a few
 * connections beyond MAX_CONNS, so other users' clients filling it cannot lock them out. */
#define MAX_CONNS         64
#define MAX_CONNS_PER_UID 8
#define ADMIN_RESERVE     8
#define IDLE_TIMEOUT_SEC  300
/* A client that sends requests without reading answers is paused past this much unsent output. */
#define OUTPUT_HIGH_WATER (256 * 1024)
/* Requests answered per read callback, so one client cannot monopolise the loop. */
#define MAX_REQUESTS_PER_READ 16

struct conn {
	struct pv_ctl_server *srv;
	struct bufferevent *bev;
	struct pv_ctl_peer peer;
	struct conn *next;
	bool closing;
	bool close_after_call;       /* the client half-closed while a call was pending */
	struct pv_ctl_call *pending; /* an asynchronous command in progress */
};

struct pv_ctl_call {
	struct conn *conn; /* NULL once the connection is gone */
	struct pv_ctl_peer peer;
};

struct pv_ctl_server {
	struct event_base *base;
	struct evconnlistener *listener;
	char *path;
	const struct pv_ctl_command *table;
	pv_ctl_admin_fn is_admin;
	void *ctx;
	struct conn *conns;
	int nconns;
};

static void read_cb(struct bufferevent *bev, void *arg);
static void close_after_write(struct conn *c);

static void
conn_free(struct conn *c)
{
	struct pv_ctl_server *srv = c->srv;
	struct conn **pp;

	if (c->pending != NULL)
		c->pending->conn = NULL; /* its answer will be dropped */

	for (pp = &srv->conns; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	srv->nconns--;
	bufferevent_free(c->bev);
	free(c);
}

static int
conns_of_uid(struct pv_ctl_server *srv, uid_t uid)
{
	int n = 0;
	for (struct conn *c = srv->conns; c != NULL; c = c->next)
		n += c->peer.uid == uid;
	return n;
}

static void
send_json(struct conn *c, json_t *msg)
{
	char *line = pv_ctl_encode(msg);
	bufferevent_write(c->bev, line, strlen(line));
	free(line);
	json_decref(msg);
}

static void
send_error(struct conn *c, enum pv_errcode code, const char *msg)
{
	struct pv_error err;
	pv_error_set(&err, code, "%s", msg);
	send_json(c, pv_ctl_response_error(&err));
}

static const struct pv_ctl_command *
lookup(const struct pv_ctl_server *srv, const char *name)
{
	for (const struct pv_ctl_command *cmd = srv->table; cmd->name != NULL; cmd++) {
		if (strcmp(cmd->name, name) == 0)
			return cmd;
	}
	return NULL;
}

static void
dispatch(struct conn *c, const char *line, size_t len)
{
	struct pv_error err;
	json_t *req, *args, *data = NULL;
	const char *name;
	const struct pv_ctl_command *cmd;

	pv_error_clear(&err);
	if (!pv_ctl_request_parse(line, len, &req, &name, &args, &err)) {
		send_json(c, pv_ctl_response_error(&err));
		return;
	}
	cmd = lookup(c->srv, name);
	if (cmd == NULL) {
		pv_error_set(&err, PV_ERR_USAGE, "unknown command \"%s\"", name);
		send_json(c, pv_ctl_response_error(&err));
		json_decref(req);
		return;
	}
	if (cmd->mutating) {
		/* Decided per command, so a reload that removes an admin applies to open connections. */
		c->peer.admin = c->srv->is_admin(c->srv->ctx, c->peer.uid, c->peer.gid);
		if (!c->peer.admin) {
			pv_log_warn("control command refused cmd=%s uid=%d pid=%d reason=not-admin",
			            cmd->name, (int)c->peer.uid, (int)c->peer.pid);
			pv_error_set(&err, PV_ERR_DENIED,
			             "permission denied: \"%s\" changes the daemon and uid %d is not in "
			             "daemon.admins",
			             cmd->name, (int)c->peer.uid);
			send_json(c, pv_ctl_response_error(&err));
			json_decref(req);
			return;
		}
		pv_log_notice("control command cmd=%s uid=%d pid=%d", cmd->name, (int)c->peer.uid,
		              (int)c->peer.pid);
	}
	if (cmd->async != NULL) {
		struct pv_ctl_call *call = pv_calloc(1, sizeof(*call));
		call->conn = c;
		call->peer = c->peer;
		c->pending = call;
		/* Answers keep request order: read nothing more until this one is answered. */
		bufferevent_disable(c->bev, EV_READ);
		cmd->async(c->srv->ctx, call, args);
		json_decref(req);
		return;
	}
	if (cmd->handler(c->srv->ctx, &c->peer, args, &data, &err))
		send_json(c, pv_ctl_response_ok(data));
	else
		send_json(c, pv_ctl_response_error(&err));
	json_decref(req);
}

static void
close_after_write(struct conn *c)
{
	c->closing = true;
	bufferevent_disable(c->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		conn_free(c);
}

static void
read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	char *line;
	size_t len;
	int n = 0;

	if (c->closing)
		return;
	while (n < MAX_REQUESTS_PER_READ && c->pending == NULL &&
	       (line = evbuffer_readln(in, &len, EVBUFFER_EOL_LF)) != NULL) {
		dispatch(c, line, len);
		free(line);
		n++;
	}
	if (c->pending != NULL)
		return;
	if (evbuffer_get_length(in) > PV_CTL_MAX_LINE &&
	    evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_LF).pos < 0) {
		send_error(c, PV_ERR_USAGE, "request line too long");
		evbuffer_drain(in, evbuffer_get_length(in));
		close_after_write(c);
		return;
	}
	if (evbuffer_get_length(bufferevent_get_output(bev)) > OUTPUT_HIGH_WATER) {
		/* Backpressure: read more only once the client has taken its answers (write_cb). */
		bufferevent_disable(bev, EV_READ);
		return;
	}
	if (n == MAX_REQUESTS_PER_READ && evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_LF).pos >= 0)
		bufferevent_trigger(bev, EV_READ, BEV_TRIG_DEFER_CALLBACKS);
}

static void
write_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	if (c->closing) {
		conn_free(c);
		return;
	}
	/* Output drained: resume reading, and answer what arrived meanwhile. */
	if (c->pending == NULL && !(bufferevent_get_enabled(bev) & EV_READ)) {
		bufferevent_enable(bev, EV_READ);
		if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
			bufferevent_trigger(bev, EV_READ, BEV_TRIG_DEFER_CALLBACKS);
	}
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	if (what & BEV_EVENT_EOF) {
		/* The client half-closed: answer what it sent, including a last line without a
		 * newline, then close once the answers are written. */
		struct evbuffer *in = bufferevent_get_input(bev);
		char *line;
		size_t len;

		if (c->pending != NULL) {
			/* Answer the call in progress first; pv_ctl_call_done closes afterwards. */
			c->close_after_call = true;
			bufferevent_disable(bev, EV_READ);
			return;
		}
		while (!c->closing && c->pending == NULL &&
		       (line = evbuffer_readln(in, &len, EVBUFFER_EOL_LF)) != NULL) {
			dispatch(c, line, len);
			free(line);
		}
		if (c->pending != NULL) {
			c->close_after_call = true;
			return;
		}
		len = evbuffer_get_length(in);
		if (!c->closing && len > 0 && len <= PV_CTL_MAX_LINE) {
			line = pv_malloc(len + 1);
			evbuffer_remove(in, line, len);
			line[len] = '\0';
			dispatch(c, line, len);
			free(line);
			if (c->pending != NULL) {
				/* An asynchronous command: close once pv_ctl_call_done has answered. */
				c->close_after_call = true;
				return;
			}
		}
		close_after_write(c);
		return;
	}
	if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
		conn_free(c);
}

static void
accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	struct pv_ctl_server *srv = arg;
	struct ucred cred;
	socklen_t len = sizeof(cred);
	struct conn *c;
	struct timeval idle = {IDLE_TIMEOUT_SEC, 0};

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
		pv_log_warn("control connection without peer credentials error=%s", strerror(errno));
		evutil_closesocket(fd);
		return;
	}
	if (conns_of_uid(srv, cred.uid) >= MAX_CONNS_PER_UID ||
	    (srv->nconns >= MAX_CONNS &&
	     (srv->nconns >= MAX_CONNS + ADMIN_RESERVE || !srv->is_admin(srv->ctx, cred.uid, cred.gid)))) {
		static const char busy[] =
		        "{\"ok\":false,\"error\":{\"code\":\"busy\",\"message\":\"too many "
		        "control connections\"}}\n";
		pv_log_warn("control connection refused uid=%d reason=too-many-connections", (int)cred.uid);
		if (write(fd, busy, sizeof(busy) - 1) < 0) {
			/* nothing to do: the peer is going away either way */
		}
		evutil_closesocket(fd);
		return;
	}
	c = pv_calloc(1, sizeof(*c));
	c->srv = srv;
	c->peer.pid = cred.pid;
	c->peer.uid = cred.uid;
	c->peer.gid = cred.gid;
	c->peer.admin = srv->is_admin(srv->ctx, cred.uid, cred.gid);
	c->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	bufferevent_set_timeouts(c->bev, &idle, &idle);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	c->next = srv->conns;
	srv->conns = c;
	srv->nconns++;
	pv_log_debug("control connection uid=%d pid=%d admin=%s", (int)cred.uid, (int)cred.pid,
	             c->peer.admin ? "yes" : "no");
}

/* A socket file nobody answers on is left over from a crash and may be replaced. */
static bool
socket_is_live(const char *path)
{
	struct sockaddr_un sa;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool live;

	if (fd < 0)
		return false;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	pv_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
	live = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return live;
}

struct pv_ctl_server *
pv_ctl_server_new(struct event_base *base, const char *path, const struct pv_ctl_command *table,
                  pv_ctl_admin_fn is_admin, void *ctx, struct pv_error *err)
{
	struct pv_ctl_server *srv;
	struct sockaddr_un sa;
	struct stat st;
	mode_t old;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		pv_error_set(err, PV_ERR_CTL, "control socket path too long: %s", path);
		return NULL;
	}
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			pv_error_set(err, PV_ERR_CTL, "control socket path %s exists and is not a socket",
			             path);
			return NULL;
		}
		if (socket_is_live(path)) {
			pv_error_set(
			        err, PV_ERR_CTL,
			        "control socket %s is in use: another pgvigild is running? HINT: stop it, or "
			        "set daemon.socket",
			        path);
			return NULL;
		}
		unlink(path);
	}
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	pv_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));

	srv = pv_calloc(1, sizeof(*srv));
	srv->base = base;
	srv->table = table;
	srv->is_admin = is_admin;
	srv->ctx = ctx;
	srv->path = pv_strdup(path);
	/* Who may connect is decided by the directory's permissions; the socket itself is open to
	 * them, and mutating commands are checked against daemon.admins per peer. */
	old = umask(0);
	srv->listener =
	        evconnlistener_new_bind(base, accept_cb, srv, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
	                                16, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (srv->listener == NULL) {
		pv_error_set(err, PV_ERR_CTL, "cannot listen on control socket %s: %s", path,
		             strerror(errno));
		free(srv->path);
		free(srv);
		return NULL;
	}
	chmod(path, 0666);
	return srv;
}

const struct pv_ctl_peer *
pv_ctl_call_peer(const struct pv_ctl_call *call)
{
	return &call->peer;
}

bool
pv_ctl_call_connected(const struct pv_ctl_call *call)
{
	return call->conn != NULL;
}

void
pv_ctl_call_done(struct pv_ctl_call *call, json_t *data, const struct pv_error *err)
{
	struct conn *c = call->conn;

	free(call);
	if (c == NULL) {
		json_decref(data);
		return;
	}
	c->pending = NULL;
	send_json(c, err == NULL ? pv_ctl_response_ok(data) : pv_ctl_response_error(err));
	if (err != NULL)
		json_decref(data);
	if (c->close_after_call) {
		close_after_write(c);
		return;
	}
	bufferevent_enable(c->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
		bufferevent_trigger(c->bev, EV_READ, BEV_TRIG_DEFER_CALLBACKS);
}

void
pv_ctl_server_free(struct pv_ctl_server *srv)
{
	if (srv == NULL)
		return;
	while (srv->conns != NULL)
		conn_free(srv->conns);
	evconnlistener_free(srv->listener);
	unlink(srv->path);
	free(srv->path);
	free(srv);
}

bool
pv_ctl_peer_in_list(uid_t uid, gid_t gid, const struct pv_strv *admins)
{
	struct passwd pw, *pwp = NULL;
	char buf[4096];
	char *end;

	getpwuid_r(uid, &pw, buf, sizeof(buf), &pwp);
	for (size_t i = 0; i < admins->n; i++) {
		const char *a = admins->v[i];
		if (a[0] == '@') {
			struct group gr, *grp = NULL;
			char gbuf[8192];
			if (getgrnam_r(a + 1, &gr, gbuf, sizeof(gbuf), &grp) != 0 || grp == NULL)
				continue;
			if (grp->gr_gid == gid)
				return true;
			if (pwp != NULL) {
				for (char **m = grp->gr_mem; *m != NULL; m++) {
					if (strcmp(*m, pwp->pw_name) == 0)
						return true;
				}
			}
			continue;
		}
		if (a[0] >= '0' && a[0] <= '9') {
			unsigned long n;
			errno = 0;
			n = strtoul(a, &end, 10);
			if (errno == 0 && *end == '\0' && n <= (unsigned long)UINT32_MAX - 1 &&
			    (uid_t)n == uid)
				return true;
			continue;
		}
		if (pwp != NULL && strcmp(a, pwp->pw_name) == 0)
			return true;
	}
	return false;
}
