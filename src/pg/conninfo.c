/* Redacting secrets from conninfo strings (key=value and postgresql:// URI forms) for logs. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "pg/pg.h"
#include "util/mem.h"

#define MASK "****"

struct out {
	char *buf;
	size_t len;
	size_t cap;
};

static void
put(struct out *o, const char *s, size_t n)
{
	if (o->len + n + 1 > o->cap) {
		o->cap = (o->len + n + 1) * 2;
		o->buf = pv_realloc(o->buf, o->cap);
	}
	memcpy(o->buf + o->len, s, n);
	o->len += n;
	o->buf[o->len] = '\0';
}

/* Keywords whose values are secrets (libpq's "*" display-character options). */
static bool
is_secret_key(const char *key, size_t n)
{
	return (n == 8 && strncmp(key, "password", 8) == 0) ||
	       (n == 11 && strncmp(key, "sslpassword", 11) == 0);
}

static bool
is_uri(const char *s)
{
	return strncmp(s, "postgresql://", 13) == 0 || strncmp(s, "postgres://", 11) == 0;
}

/* URI form: mask the password in user:password@ and password=/sslpassword= query parameters. */
static char *
redact_uri(const char *s)
{
	struct out o = {0};
	const char *p = strstr(s, "://") + 3;
	const char *at, *q;

	put(&o, s, (size_t)(p - s));
	/* Like libpq, credentials end at the first '@' unless a '/' comes first. */
	at = p + strcspn(p, "@/");
	if (*at == '@') {
		const char *colon = memchr(p, ':', (size_t)(at - p));
		if (colon != NULL) {
			put(&o, p, (size_t)(colon + 1 - p));
			put(&o, MASK, strlen(MASK));
			put(&o, at, 1);
		} else {
			put(&o, p, (size_t)(at + 1 - p));
		}
		p = at + 1;
	}
	q = strchr(p, '?');
	if (q == NULL) {
		put(&o, p, strlen(p));
		return o.buf;
	}
	put(&o, p, (size_t)(q + 1 - p));
	p = q + 1;
	while (*p != '\0') {
		size_t plen = strcspn(p, "&");
		const char *eq = memchr(p, '=', plen);
		if (eq != NULL && is_secret_key(p, (size_t)(eq - p))) {
			put(&o, p, (size_t)(eq + 1 - p));
			put(&o, MASK, strlen(MASK));
		} else {
			put(&o, p, plen);
		}
		p += plen;
		if (*p == '&') {
			put(&o, "&", 1);
			p++;
		}
	}
	return o.buf;
}

/* key = value form, tokenised like libpq's conninfo_parse (quotes and backslash escapes). */
static char *
redact_kv(const char *s)
{
	struct out o = {0};
	const char *p = s;

	put(&o, "", 0);
	while (*p != '\0') {
		const char *key, *val;
		size_t keylen;

		if (isspace((unsigned char)*p)) {
			put(&o, p, 1);
			p++;
			continue;
		}
		key = p;
		while (*p != '\0' && *p != '=' && !isspace((unsigned char)*p))
			p++;
		keylen = (size_t)(p - key);
		while (isspace((unsigned char)*p))
			p++;
		if (*p != '=') {
			/* Not valid conninfo; libpq rejects it. Keep the rest but never a possible secret. */
			put(&o, key, (size_t)(p - key));
			continue;
		}
		p++;
		while (isspace((unsigned char)*p))
			p++;
		put(&o, key, keylen);
		put(&o, "=", 1);
		val = p;
		if (*p == '\'') {
			p++;
			while (*p != '\0' && *p != '\'') {
				if (*p == '\\' && p[1] != '\0')
					p++;
				p++;
			}
			if (*p == '\'')
				p++;
		} else {
			while (*p != '\0' && !isspace((unsigned char)*p)) {
				if (*p == '\\' && p[1] != '\0')
					p++;
				p++;
			}
		}
		if (is_secret_key(key, keylen))
			put(&o, MASK, strlen(MASK));
		else
			put(&o, val, (size_t)(p - val));
	}
	return o.buf;
}

char *
pv_pg_conninfo_redact(const char *conninfo)
{
	if (conninfo == NULL)
		return pv_strdup("");
	if (is_uri(conninfo))
		return redact_uri(conninfo);
	return redact_kv(conninfo);
}
