/* Control socket server: Unix stream socket, peer credentials, command dispatch from a table. */
#ifndef PV_CTL_SERVER_H
#define PV_CTL_SERVER_H

#include <stdbool.h>
#include <sys/types.h>

#include <jansson.h>

#include "util/error.h"

struct event_base;
struct pv_ctl_server;
struct pv_strv;

/* Who is asking. */
struct pv_ctl_peer {
	pid_t pid;
	uid_t uid;
	gid_t gid;
	bool admin;
};

/* A handler returns the response data (new reference, may be NULL) or false with err filled. */
typedef bool (*pv_ctl_handler)(void *ctx, const struct pv_ctl_peer *peer, json_t *args, json_t **data,
                               struct pv_error *err);

/* A request answered later (verify, restore): the handler keeps `call` and finishes it exactly
 * once with pv_ctl_call_done(). The connection reads no further request meanwhile. */
struct pv_ctl_call;
typedef void (*pv_ctl_async_handler)(void *ctx, struct pv_ctl_call *call, json_t *args);

struct pv_ctl_command {
	const char *name;
	bool mutating; /* admins only; logged with the peer's uid */
	pv_ctl_handler handler;
	pv_ctl_async_handler async; /* instead of handler */
};

const struct pv_ctl_peer *pv_ctl_call_peer(const struct pv_ctl_call *call);
/* False once the client has gone away (the answer would be dropped): work may stop early. */
bool pv_ctl_call_connected(const struct pv_ctl_call *call);
/* Answer: data (stolen, may be NULL) when err is NULL, else the error. Frees the call. */
void pv_ctl_call_done(struct pv_ctl_call *call, json_t *data, const struct pv_error *err);

/* Decides whether a peer is an admin (called per connection). */
typedef bool (*pv_ctl_admin_fn)(void *ctx, uid_t uid, gid_t gid);

/*
 * Listen on `path`. A stale socket file is replaced; a live one (another daemon answering)
 * is an error. The table ends with a {NULL} row.
 */
struct pv_ctl_server *pv_ctl_server_new(struct event_base *base, const char *path,
                                        const struct pv_ctl_command *table, pv_ctl_admin_fn is_admin,
                                        void *ctx, struct pv_error *err);
/* Close the listener and every connection; removes the socket file. NULL is a no-op. */
void pv_ctl_server_free(struct pv_ctl_server *srv);

/* True when uid (with primary gid) is named in `admins`: a user name, "@group" (primary or
 * supplementary membership) or a numeric uid. */
bool pv_ctl_peer_in_list(uid_t uid, gid_t gid, const struct pv_strv *admins);

#endif
