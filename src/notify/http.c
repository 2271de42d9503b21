/* HTTP client (and SMTP submission) on the event loop: libcurl's multi_socket interface with libevent
 * watching its sockets and its timer (the pattern of curl's hiperfifo.c). libcurl is only ever called from
 * our own event callbacks, never from inside the socket, timer, write or header callbacks it calls. */
#include "notify/http.h"

#include <ctype.h>
#include <curl/curl.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util/log.h"
#include "util/mem.h"

#ifndef PV_VERSION
#define PV_VERSION "dev"
#endif

#define DEFAULT_TIMEOUT_MS         30000
#define DEFAULT_CONNECT_TIMEOUT_MS 10000
#define DEFAULT_MAX_RESPONSE       65536
#define MAX_HOST_CONNECTIONS       16

struct pv_http_req {
	struct pv_http *http;
	struct pv_http_req *prev, *next; /* in http->reqs */
	CURL *easy;
	struct curl_slist *headers;
	char *body;
	size_t body_len, body_off; /* SMTP uploads read body from body_off */
	struct curl_slist *rcpt;
	char *url;
	char *response;
	size_t response_len, max_response;
	bool truncated;
	char *retry_after; /* raw header value of the final response */
	char errbuf[CURL_ERROR_SIZE];
	pv_http_done_cb done;
	void *arg;
};

struct pv_http {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	struct event **socks; /* indexed by descriptor: the event watching it for libcurl, or NULL */
	size_t n_socks;
	struct pv_http_req *reqs;
	size_t in_flight;
	bool closing;
};

static void check_done(struct pv_http *http);

static void
sock_event_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_http *http = arg;
	int action = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
	int running;

	curl_multi_socket_action(http->multi, fd, action, &running);
	check_done(http);
}

static void
timer_event_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pv_http *http = arg;
	int running;

	curl_multi_socket_action(http->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	check_done(http);
}

/* libcurl's socket callback: only libevent calls here. */
static int
socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct pv_http *http = userp;
	short kind;

	if (s < 0 || http->closing)
		return 0;
	if ((size_t)s >= http->n_socks) {
		size_t n = (size_t)s + 16;
		http->socks = pv_realloc(http->socks, n * sizeof(*http->socks));
		memset(http->socks + http->n_socks, 0, (n - http->n_socks) * sizeof(*http->socks));
		http->n_socks = n;
	}
	if (http->socks[s] != NULL) {
		event_free(http->socks[s]);
		http->socks[s] = NULL;
	}
	if (what == CURL_POLL_REMOVE)
		return 0;
	kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
	http->socks[s] = event_new(http->base, s, kind, sock_event_cb, http);
	if (http->socks[s] == NULL || event_add(http->socks[s], NULL) != 0) {
		pv_log_error("http: watching a socket failed fd=%d", (int)s);
		return -1;
	}
	return 0;
}

/* libcurl's timer callback: -1 deletes the timer; 0 means "as soon as possible", which must not be acted
 * on here (that would call libcurl from inside its own callback), so it becomes a zero timeout. */
static int
timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct pv_http *http = userp;
	struct timeval tv;

	if (http->closing)
		return 0;
	if (timeout_ms < 0) {
		evtimer_del(http->timer);
		return 0;
	}
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	return evtimer_add(http->timer, &tv) == 0 ? 0 : -1;
}

static size_t
write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	struct pv_http_req *r = userp;
	size_t n = size * nmemb, room = r->max_response - r->response_len;

	if (n > room) {
		r->truncated = true;
	}
	if (room > 0 && n > 0) {
		size_t take = n < room ? n : room;
		r->response = pv_realloc(r->response, r->response_len + take + 1);
		memcpy(r->response + r->response_len, data, take);
		r->response_len += take;
		r->response[r->response_len] = '\0';
	}
	/* Reading and discarding the rest keeps the connection reusable. */
	return n;
}

/* SMTP uploads: the message, then 0 for its end. */
static size_t
read_cb(char *buf, size_t size, size_t nmemb, void *userp)
{
	struct pv_http_req *r = userp;
	size_t room = size * nmemb, left = r->body_len - r->body_off, n = left < room ? left : room;

	memcpy(buf, r->body + r->body_off, n);
	r->body_off += n;
	return n;
}

/* Remembers the Retry-After of the final response only: a status line starts a new response. */
static size_t
header_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	struct pv_http_req *r = userp;
	size_t n = size * nmemb;
	static const char name[] = "retry-after:";

	if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
		free(r->retry_after);
		r->retry_after = NULL;
	} else if (n > sizeof(name) - 1 && strncasecmp(data, name, sizeof(name) - 1) == 0) {
		size_t i = sizeof(name) - 1, end = n;
		while (i < n && (data[i] == ' ' || data[i] == '\t'))
			i++;
		while (end > i && isspace((unsigned char)data[end - 1]))
			end--;
		free(r->retry_after);
		r->retry_after = pv_strndup(data + i, end - i);
	}
	return n;
}

/* "120" or an HTTP date; a date in the past means "now". */
static int64_t
parse_retry_after(const char *v)
{
	char *end;
	long long secs;
	time_t when;

	if (v == NULL || *v == '\0')
		return -1;
	if (isdigit((unsigned char)*v)) {
		secs = strtoll(v, &end, 10);
		if (*end == '\0' && secs >= 0)
			return secs;
		return -1;
	}
	when = curl_getdate(v, NULL);
	if (when == (time_t)-1)
		return -1;
	return when > time(NULL) ? (int64_t)(when - time(NULL)) : 0;
}

static void
req_free(struct pv_http_req *r)
{
	struct pv_http *http = r->http;

	if (r->prev != NULL)
		r->prev->next = r->next;
	else
		http->reqs = r->next;
	if (r->next != NULL)
		r->next->prev = r->prev;
	http->in_flight--;
	if (r->easy != NULL) {
		curl_multi_remove_handle(http->multi, r->easy);
		curl_easy_cleanup(r->easy);
	}
	curl_slist_free_all(r->headers);
	curl_slist_free_all(r->rcpt);
	if (r->body != NULL)
		explicit_bzero(r->body, r->body_len);
	free(r->body);
	free(r->url);
	free(r->response);
	free(r->retry_after);
	free(r);
}

/* Messages are read one at a time: a callback may cancel another request, and removing a handle also
 * removes its queued message. */
static void
check_done(struct pv_http *http)
{
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(http->multi, &left)) != NULL) {
		struct pv_http_result res = {.retry_after = -1, .body = ""};
		struct pv_http_req *r = NULL;
		CURLcode rc = msg->data.result;
		CURL *easy = msg->easy_handle;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&r);
		curl_easy_getinfo(easy, CURLINFO_TOTAL_TIME, &res.seconds);
		res.curl_code = (int)rc;
		if (rc == CURLE_OK) {
			curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &res.status);
			res.retry_after = parse_retry_after(r->retry_after);
		} else {
			if (r->rcpt != NULL)
				curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &res.status);
			res.timed_out = rc == CURLE_OPERATION_TIMEDOUT;
			res.error = r->errbuf[0] != '\0' ? r->errbuf : curl_easy_strerror(rc);
		}
		if (r->response != NULL) {
			res.body = r->response;
			res.body_len = r->response_len;
		}
		res.body_truncated = r->truncated;
		curl_multi_remove_handle(http->multi, easy);
		curl_easy_cleanup(easy);
		r->easy = NULL;
		r->done(&res, r->arg);
		req_free(r);
	}
}

struct pv_http *
pv_http_new(struct event_base *base, struct pv_error *err)
{
	struct pv_http *http;

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		pv_error_set(err, PV_ERR_INTERNAL, "initialising libcurl failed");
		return NULL;
	}
	http = pv_calloc(1, sizeof(*http));
	http->base = base;
	http->multi = curl_multi_init();
	http->timer = evtimer_new(base, timer_event_cb, http);
	if (http->multi == NULL || http->timer == NULL) {
		pv_error_set(err, PV_ERR_INTERNAL, "creating the http client failed");
		pv_http_free(http);
		return NULL;
	}
	curl_multi_setopt(http->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
	curl_multi_setopt(http->multi, CURLMOPT_SOCKETDATA, http);
	curl_multi_setopt(http->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	curl_multi_setopt(http->multi, CURLMOPT_TIMERDATA, http);
	curl_multi_setopt(http->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)MAX_HOST_CONNECTIONS);
	return http;
}

void
pv_http_free(struct pv_http *http)
{
	if (http == NULL)
		return;
	while (http->reqs != NULL)
		req_free(http->reqs);
	/* Our events go while their descriptors are still open; libcurl may report sockets while it closes
	 * its connection cache, which are then ignored. */
	http->closing = true;
	for (size_t i = 0; i < http->n_socks; i++)
		if (http->socks[i] != NULL)
			event_free(http->socks[i]);
	if (http->multi != NULL)
		curl_multi_cleanup(http->multi);
	free(http->socks);
	if (http->timer != NULL)
		event_free(http->timer);
	free(http);
	curl_global_cleanup();
}

struct pv_http_req *
pv_http_start(struct pv_http *http, const struct pv_http_request *req, pv_http_done_cb done, void *arg,
              struct pv_error *err)
{
	struct pv_http_req *r;
	int64_t timeout = req->timeout_ms > 0 ? req->timeout_ms : DEFAULT_TIMEOUT_MS;
	int64_t connect_timeout = req->connect_timeout_ms > 0            ? req->connect_timeout_ms
	                          : timeout < DEFAULT_CONNECT_TIMEOUT_MS ? timeout
	                                                                 : DEFAULT_CONNECT_TIMEOUT_MS;
	const char *method = req->method != NULL ? req->method : req->body != NULL ? "POST" : "GET";
	CURLcode rc = CURLE_OK;
	bool smtp;

	if (req->url == NULL || *req->url == '\0') {
		pv_error_set(err, PV_ERR_USAGE, "http request without a url");
		return NULL;
	}
	smtp = strncasecmp(req->url, "smtp://", 7) == 0 || strncasecmp(req->url, "smtps://", 8) == 0;
	if (smtp && (req->mail_from == NULL || req->n_rcpt == 0)) {
		pv_error_set(err, PV_ERR_USAGE, "smtp submission without a sender or recipients");
		return NULL;
	}
	r = pv_calloc(1, sizeof(*r));
	r->http = http;
	r->done = done;
	r->arg = arg;
	r->max_response = req->max_response > 0 ? req->max_response : DEFAULT_MAX_RESPONSE;
	r->url = pv_strdup(req->url);
	r->easy = curl_easy_init();
	r->next = http->reqs;
	if (http->reqs != NULL)
		http->reqs->prev = r;
	http->reqs = r;
	http->in_flight++;
	if (r->easy == NULL) {
		pv_error_set(err, PV_ERR_INTERNAL, "creating an http request failed");
		req_free(r);
		return NULL;
	}
	for (size_t i = 0; i < req->n_headers; i++)
		r->headers = curl_slist_append(r->headers, req->headers[i]);
	/* No "Expect: 100-continue" round trip for small bodies. */
	r->headers = curl_slist_append(r->headers, "Expect:");
	if (r->headers == NULL)
		abort();

#define SET(opt, val)                                                                                        \
	do {                                                                                                 \
		if (rc == CURLE_OK)                                                                          \
			rc = curl_easy_setopt(r->easy, opt, val);                                            \
	} while (0)
	SET(CURLOPT_NOSIGNAL, 1L);
	SET(CURLOPT_URL, r->url);
	SET(CURLOPT_PROTOCOLS_STR, smtp ? "smtp,smtps" : "http,https");
	SET(CURLOPT_FOLLOWLOCATION, 0L);
	SET(CURLOPT_PRIVATE, (void *)r);
	SET(CURLOPT_ERRORBUFFER, r->errbuf);
	SET(CURLOPT_HTTPHEADER, r->headers);
	SET(CURLOPT_USERAGENT, "pgvigil/" PV_VERSION);
	SET(CURLOPT_TIMEOUT_MS, (long)timeout);
	SET(CURLOPT_CONNECTTIMEOUT_MS, (long)connect_timeout);
	SET(CURLOPT_WRITEFUNCTION, write_cb);
	SET(CURLOPT_WRITEDATA, (void *)r);
	SET(CURLOPT_HEADERFUNCTION, header_cb);
	SET(CURLOPT_HEADERDATA, (void *)r);
	if (req->ca_file != NULL)
		SET(CURLOPT_CAINFO, req->ca_file);
	if (smtp) {
		r->body_len = req->body_len;
		r->body = pv_malloc(req->body_len + 1);
		if (req->body_len > 0)
			memcpy(r->body, req->body, req->body_len);
		r->body[req->body_len] = '\0';
		for (size_t i = 0; i < req->n_rcpt; i++)
			r->rcpt = curl_slist_append(r->rcpt, req->mail_rcpt[i]);
		if (r->rcpt == NULL)
			abort();
		SET(CURLOPT_MAIL_FROM, req->mail_from);
		SET(CURLOPT_MAIL_RCPT, r->rcpt);
		SET(CURLOPT_UPLOAD, 1L);
		SET(CURLOPT_READFUNCTION, read_cb);
		SET(CURLOPT_READDATA, (void *)r);
		SET(CURLOPT_INFILESIZE_LARGE, (curl_off_t)req->body_len);
		if (req->require_tls)
			SET(CURLOPT_USE_SSL, (long)CURLUSESSL_ALL);
		if (req->username != NULL)
			SET(CURLOPT_USERNAME, req->username);
		if (req->password != NULL)
			SET(CURLOPT_PASSWORD, req->password);
	} else if (strcmp(method, "GET") == 0) {
		SET(CURLOPT_HTTPGET, 1L);
	} else {
		r->body_len = req->body_len;
		r->body = pv_malloc(req->body_len + 1);
		if (req->body_len > 0)
			memcpy(r->body, req->body, req->body_len);
		r->body[req->body_len] = '\0';
		SET(CURLOPT_POSTFIELDS, r->body);
		SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
		if (strcmp(method, "POST") != 0)
			SET(CURLOPT_CUSTOMREQUEST, method);
	}
#undef SET
	if (rc != CURLE_OK) {
		pv_error_set(err, PV_ERR_INTERNAL, "setting up an http request failed: %s",
		             curl_easy_strerror(rc));
		req_free(r);
		return NULL;
	}
	if (curl_multi_add_handle(http->multi, r->easy) != CURLM_OK) {
		pv_error_set(err, PV_ERR_INTERNAL, "starting an http request failed");
		curl_easy_cleanup(r->easy);
		r->easy = NULL;
		req_free(r);
		return NULL;
	}
	return r;
}

void
pv_http_cancel(struct pv_http_req *r)
{
	if (r != NULL)
		req_free(r);
}

size_t
pv_http_in_flight(const struct pv_http *http)
{
	return http->in_flight;
}
