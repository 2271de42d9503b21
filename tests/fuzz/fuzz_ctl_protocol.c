/*
 * Fuzz target: the control protocol's request parsing (pv_ctl_request_parse) and encoding.
 *
 * The input is what a client writes to the control socket. It is cut into lines as the server
 * does (at '\n', a last line without one included), and each line, in its own exactly-sized
 * NUL-terminated buffer as evbuffer_readln returns it, is parsed.
 *
 * Checked beyond memory safety: a parsed request has a string "cmd" and an object or no "args";
 * encoding a request or any response gives exactly one line, which parses back to an equal value.
 */
#include <stdlib.h>
#include <string.h>

#include "ctl/protocol.h"
#include "fuzz.h"

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const char *const env[] = {NULL};

	(void)argc;
	(void)argv;
	pv_fuzz_environment(env);
	(void)pv_fuzz_scratch();
	return 0;
}

/* Encode msg and check that it is one line that decodes to msg again. */
static void
check_encoding(const json_t *msg, bool as_request)
{
	char *line = pv_ctl_encode(msg);
	size_t len = strlen(line);
	json_t *back, *args;
	const char *cmd;
	struct pv_error err;

	PV_FUZZ_CHECK(len > 0 && line[len - 1] == '\n' && memchr(line, '\n', len - 1) == NULL,
	              "encoding is not one line: %s", line);
	if (as_request) {
		PV_FUZZ_CHECK(pv_ctl_request_parse(line, len - 1, &back, &cmd, &args, &err),
		              "an encoded request does not parse: %s: %s", err.msg, line);
	} else {
		json_error_t jerr;
		back = json_loadb(line, len - 1, JSON_REJECT_DUPLICATES, &jerr);
		PV_FUZZ_CHECK(back != NULL, "an encoded response does not parse: %s: %s", jerr.text, line);
	}
	PV_FUZZ_CHECK(json_equal(back, msg), "encoding changed the message: %s", line);
	json_decref(back);
	free(line);
}

static void
one_line(const char *data, size_t len)
{
	char *line = malloc(len + 1);
	json_t *req, *args = NULL, *resp;
	const char *cmd = NULL;
	struct pv_error err = {0};

	if (line == NULL)
		abort();
	memcpy(line, data, len);
	line[len] = '\0';
	if (pv_ctl_request_parse(line, len, &req, &cmd, &args, &err)) {
		PV_FUZZ_CHECK(req != NULL && json_is_object(req), "parsed request is not an object");
		PV_FUZZ_CHECK(cmd != NULL && json_string_value(json_object_get(req, "cmd")) == cmd,
		              "cmd is not the request's \"cmd\" string");
		PV_FUZZ_CHECK(args == json_object_get(req, "args") && (args == NULL || json_is_object(args)),
		              "args is not the request's \"args\" object");
		check_encoding(req, true);
		/* A handler may answer with what it was given. */
		resp = pv_ctl_response_ok(args != NULL ? json_incref(args) : NULL);
		check_encoding(resp, false);
		json_decref(resp);
		/* pv_ctl_request_new rebuilds the same request. */
		resp = pv_ctl_request_new(cmd, args != NULL ? json_deep_copy(args) : NULL);
		check_encoding(resp, true);
		json_decref(resp);
		json_decref(req);
	} else {
		PV_FUZZ_CHECK(req == NULL && err.code == PV_ERR_USAGE && err.msg[0] != '\0',
		              "failure without a usage error");
		resp = pv_ctl_response_error(&err);
		check_encoding(resp, false);
		json_decref(resp);
	}
	free(line);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data, *end = p + size;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t len = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);

		one_line(p, len);
		p += len + (nl != NULL);
	}
	return 0;
}
