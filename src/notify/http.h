/* Asynchronous HTTP requests and SMTP submissions on the event loop: libcurl's multi_socket interface driven
 * by libevent. */
#ifndef PV_NOTIFY_HTTP_H
#define PV_NOTIFY_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/error.h"

struct event_base;
struct pv_http;
struct pv_http_req;

/* What to send. Everything is copied by pv_http_start, so it may be freed as soon as that returns. */
struct pv_http_request {
	const char *method; /* "POST", "GET", ...; NULL = POST when there is a body, else GET */
	const char
	        *url; /* http://, https://, smtp:// or smtps:// only; never logged (it may hold a secret) */
	const char *const *headers; /* "Name: value" lines */
	size_t n_headers;
	const void *body; /* may be NULL */
	size_t body_len;
	int64_t timeout_ms;         /* the whole exchange; 0 = 30 s */
	int64_t connect_timeout_ms; /* 0 = the smaller of timeout_ms and 10 s */
	size_t max_response; /* bytes of response body kept; 0 = 64 KiB; the rest is read and dropped */
	const char *ca_file; /* trust these CA certificates instead of the system's; NULL = the system's */

	/* smtp:// and smtps:// only: body is the whole RFC 5322 message (CRLF line ends), sent as is. */
	const char *mail_from;        /* envelope sender, "<a@example.com>" */
	const char *const *mail_rcpt; /* envelope recipients */
	size_t n_rcpt;
	const char *username; /* may be NULL */
	const char *password; /* may be NULL; never logged */
	bool require_tls;     /* smtp://: STARTTLS or fail (smtps:// is always TLS) */
};

/* How it went. Pointers are valid only during the callback. */
struct pv_http_result {
	long status;    /* HTTP: the status, 0 when no complete answer arrived. SMTP: the server's last reply
	                 * code    (also when the submission failed), 0 when it never answered */
	int curl_code;  /* libcurl's CURLcode: 0 when the transfer completed */
	bool timed_out; /* the request passed timeout_ms (status is then 0) */
	const char *error; /* NULL when status != 0; else what failed, e.g. "connection refused" */
	const char *body;  /* NUL-terminated (may hold other NULs); "" when none */
	size_t body_len;
	bool body_truncated; /* more than max_response bytes came */
	int64_t retry_after; /* seconds from a Retry-After header (delta or HTTP date, >= 0); -1 when none */
	double seconds;      /* time taken */
};

/* Runs on the loop, never from inside libcurl. The request is freed when it returns. */
typedef void (*pv_http_done_cb)(const struct pv_http_result *res, void *arg);

struct pv_http *pv_http_new(struct event_base *base, struct pv_error *err);
/* Requests still in flight are abandoned: their callbacks never run. NULL is a no-op. Not from a callback. */
void pv_http_free(struct pv_http *http);

/* Start a request; done runs exactly once, later, on the loop (never from inside this call). Fails with
 * PV_ERR_USAGE for a missing URL and PV_ERR_INTERNAL when libcurl refuses the request. */
struct pv_http_req *pv_http_start(struct pv_http *http, const struct pv_http_request *req,
                                  pv_http_done_cb done, void *arg, struct pv_error *err);
/* Abandon a request whose callback has not run yet; the callback never runs. */
void pv_http_cancel(struct pv_http_req *r);
size_t pv_http_in_flight(const struct pv_http *http);

#endif
