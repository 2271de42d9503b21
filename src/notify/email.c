/* Email: the RFC 5322 message for a notification, its SMTP envelope, and what SMTP answers mean. */
#include <curl/curl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "notify/notify.h"
#include "util/mem.h"

/* Values are cut here so every line stays far below SMTP's 998-byte limit. */
#define VALUE_MAX 400
#define TEXT_MAX  (64 * 1024)

struct buf {
	char *p;
	size_t len, cap;
};

static void
put(struct buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		b->cap = (b->len + n + 1) * 2;
		b->p = pv_realloc(b->p, b->cap);
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void
puts_(struct buf *b, const char *s)
{
	put(b, s, strlen(s));
}

/* One header or body value: no CR, LF or other control characters (no header injection), at most max
 * bytes, cut on a UTF-8 boundary. */
static void
put_clean(struct buf *b, const char *s, size_t max)
{
	size_t n = 0;

	for (; *s != '\0' && n < max; s++, n++) {
		unsigned char c = (unsigned char)*s;
		char ch = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
		put(b, &ch, 1);
	}
	if (*s != '\0') {
		while (b->len > 0 && ((unsigned char)b->p[b->len - 1] & 0xc0) == 0x80)
			b->len--;
		if (b->len > 0 && (unsigned char)b->p[b->len - 1] >= 0xc0)
			b->len--;
		b->p[b->len] = '\0';
		puts_(b, "...");
	}
}

static bool
is_ascii(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s >= 0x80)
			return false;
	return true;
}

/* RFC 2047 "B" encoded words of at most 45 input bytes each (75-character words), never splitting a
 * UTF-8 character, folded onto continuation lines. */
static void
put_encoded(struct buf *b, const char *s)
{
	size_t len = strlen(s), i = 0;

	while (i < len) {
		size_t n = len - i < 45 ? len - i : 45;
		unsigned char out[64];
		int olen;

		while (i + n < len && n > 1 && ((unsigned char)s[i + n] & 0xc0) == 0x80)
			n--;
		olen = EVP_EncodeBlock(out, (const unsigned char *)s + i, (int)n);
		if (i > 0)
			puts_(b, "\r\n ");
		puts_(b, "=?UTF-8?B?");
		put(b, (const char *)out, (size_t)olen);
		puts_(b, "?=");
		i += n;
	}
}

/* An ASCII header value folded at spaces (RFC 5322 2.2.3) so lines stay within 78 characters where words
 * allow; col is where the value starts on the first line. */
static void
put_folded(struct buf *b, const char *s, size_t col)
{
	while (*s != '\0') {
		size_t len = strlen(s), cut = len;

		if (col + len > 78) {
			/* the last space that keeps this line within 78, else the first space at all */
			cut = 0;
			for (size_t i = 1; i < len && col + i <= 78; i++)
				if (s[i] == ' ')
					cut = i;
			if (cut == 0) {
				const char *sp = strchr(s + 1, ' ');
				cut = sp != NULL ? (size_t)(sp - s) : len;
			}
		}
		put(b, s, cut);
		s += cut;
		if (*s != '\0') {
			puts_(b, "\r\n");
			col = 0; /* the continuation starts with the space we cut at */
		}
	}
}

static void
header(struct buf *b, const char *name, const char *value)
{
	puts_(b, name);
	puts_(b, ": ");
	put_clean(b, value, VALUE_MAX);
	puts_(b, "\r\n");
}

/* The domain of the sender's address, for Message-IDs; "pgvigil.invalid" when there is none. */
static char *
domain_of(const char *from)
{
	const char *at = from != NULL ? strrchr(from, '@') : NULL;
	size_t n = 0;

	if (at == NULL)
		return pv_strdup("pgvigil.invalid");
	at++;
	while (at[n] != '\0' && at[n] != '>' && at[n] != ' ' && at[n] != '\t')
		n++;
	return n > 0 ? pv_strndup(at, n) : pv_strdup("pgvigil.invalid");
}

char *
pv_email_envelope(const char *address)
{
	const char *lt = strrchr(address, '<'), *gt;

	if (lt != NULL && (gt = strchr(lt, '>')) != NULL)
		return pv_strndup(lt, (size_t)(gt - lt + 1));
	while (*address == ' ' || *address == '\t')
		address++;
	return pv_asprintf("<%s>", address);
}

static const char *
status_label(const struct pv_notification *n)
{
	if (n->status == PV_NOTIFY_RESOLVED)
		return "RESOLVED";
	if (n->status == PV_NOTIFY_INFO)
		return "INFO";
	switch (n->severity) {
	case PV_SEV_CRITICAL: return "CRITICAL";
	case PV_SEV_WARNING: return "WARNING";
	case PV_SEV_INFO: break;
	}
	return "INFO";
}

static void
field(struct buf *b, const char *name, const char *value)
{
	if (value == NULL || *value == '\0')
		return;
	puts_(b, name);
	put_clean(b, value, VALUE_MAX);
	puts_(b, "\r\n");
}

/* Free text: lines kept (CRLF), other control characters blanked, lines starting with "." left to
 * libcurl's dot-stuffing. */
static void
put_text(struct buf *b, const char *s)
{
	size_t n = 0;

	for (; *s != '\0' && n < TEXT_MAX; s++, n++) {
		unsigned char c = (unsigned char)*s;
		if (c == '\n')
			puts_(b, "\r\n");
		else if (c == '\r')
			continue;
		else
			put(b, (c < 0x20 || c == 0x7f) ? " " : s, 1);
	}
	puts_(b, "\r\n");
}

char *
pv_email_format(const struct pv_notification *n, const char *from, const char *const *to, size_t n_to,
                time_t now)
{
	static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	struct buf b = {0};
	char date[64], when[32], *domain = domain_of(from), *subject;
	struct tm tm;
	time_t at = n->at;

	gmtime_r(&now, &tm);
	snprintf(date, sizeof(date), "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday], tm.tm_mday,
	         months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
	gmtime_r(&at, &tm);
	strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);

	header(&b, "Date", date);
	header(&b, "From", from);
	puts_(&b, "To: ");
	for (size_t i = 0; i < n_to; i++) {
		if (i > 0)
			puts_(&b, ",\r\n ");
		put_clean(&b, to[i], VALUE_MAX);
	}
	puts_(&b, "\r\n");

	subject = pv_asprintf("[pgvigil %s] %s", status_label(n), n->title != NULL ? n->title : n->rule);
	if (strlen(subject) > VALUE_MAX)
		subject[VALUE_MAX] = '\0';
	for (char *p = subject; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = ' ';
	puts_(&b, "Subject: ");
	if (is_ascii(subject))
		put_folded(&b, subject, strlen("Subject: "));
	else
		put_encoded(&b, subject);
	puts_(&b, "\r\n");
	free(subject);

	puts_(&b, "Message-ID: <");
	put_clean(&b, n->idempotency_key != NULL ? n->idempotency_key : "pgvigil", VALUE_MAX);
	puts_(&b, "@");
	puts_(&b, domain);
	puts_(&b, ">\r\n");
	if (n->thread_key != NULL &&
	    (n->idempotency_key == NULL || strcmp(n->thread_key, n->idempotency_key) != 0)) {
		for (int i = 0; i < 2; i++) {
			puts_(&b, i == 0 ? "In-Reply-To: <" : "References: <");
			put_clean(&b, n->thread_key, VALUE_MAX);
			puts_(&b, "@");
			puts_(&b, domain);
			puts_(&b, ">\r\n");
		}
	}
	header(&b, "Auto-Submitted", "auto-generated");
	header(&b, "X-Auto-Response-Suppress", "All");
	header(&b, "MIME-Version", "1.0");
	header(&b, "Content-Type", "text/plain; charset=utf-8");
	header(&b, "Content-Transfer-Encoding", "8bit");
	if (n->idempotency_key != NULL)
		header(&b, PV_WEBHOOK_IDEMPOTENCY_HEADER, n->idempotency_key);
	puts_(&b, "\r\n");

	put_clean(&b, n->title != NULL ? n->title : n->rule, VALUE_MAX);
	puts_(&b, "\r\n\r\n");
	field(&b, "Status:    ", status_label(n));
	field(&b, "Severity:  ", pv_notify_severity_name(n->severity));
	field(&b, "Database:  ", n->database);
	field(&b, "Job:       ", n->job);
	field(&b, "Rule:      ", n->rule);
	field(&b, "Value:     ", n->value);
	field(&b, "Threshold: ", n->threshold);
	field(&b, "Time:      ", when);
	if (n->text != NULL) {
		puts_(&b, "\r\n");
		put_text(&b, n->text);
	}
	puts_(&b, "\r\n-- \r\npgvigil. See `pgvigilctl status` and `pgvigilctl alerts` on the host.\r\n");
	free(domain);
	return b.p;
}

enum pv_notify_verdict
pv_email_classify(int curl_code, long smtp_code)
{
	if (curl_code == CURLE_OK)
		return PV_NOTIFY_DELIVERED;
	if (smtp_code >= 500 && smtp_code < 600)
		return PV_NOTIFY_PERMANENT;
	switch (curl_code) {
	case CURLE_LOGIN_DENIED:
	case CURLE_USE_SSL_FAILED:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_URL_MALFORMAT:
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_AUTH_ERROR: return PV_NOTIFY_PERMANENT;
	default: return PV_NOTIFY_RETRY;
	}
}
