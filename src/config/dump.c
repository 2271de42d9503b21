/* The effective configuration printed back as YAML with secrets redacted; durations; conninfo redaction. */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "pg/pg.h"
#include "sched/cron.h"
#include "util/mem.h"

static const struct {
	char unit;
	int64_t secs;
} units[] = {{'w', 7 * 86400}, {'d', 86400}, {'h', 3600}, {'m', 60}, {'s', 1}};

bool
pv_duration_parse(const char *s, int64_t *out)
{
	int64_t total = 0;
	size_t next_unit = 0; /* units must appear largest first, each at most once */
	bool bare = true;

	if (s == NULL || !isdigit((unsigned char)s[0]))
		return false;
	for (const char *p = s; *p != '\0'; p++)
		bare = bare && isdigit((unsigned char)*p);
	while (*s != '\0') {
		int64_t n = 0;
		size_t u;
		if (!isdigit((unsigned char)*s))
			return false;
		for (; isdigit((unsigned char)*s); s++) {
			if (n > (INT64_MAX - 9) / 10)
				return false;
			n = n * 10 + (*s - '0');
		}
		if (bare) {
			*out = n;
			return true;
		}
		for (u = next_unit; u < sizeof(units) / sizeof(units[0]); u++)
			if (units[u].unit == *s)
				break;
		if (u == sizeof(units) / sizeof(units[0]))
			return false;
		if (n > (INT64_MAX - total) / units[u].secs)
			return false;
		total += n * units[u].secs;
		next_unit = u + 1;
		s++;
	}
	*out = total;
	return true;
}

const char *
pv_duration_format(int64_t secs, char *buf, size_t size)
{
	size_t o = 0;

	if (size == 0)
		return buf;
	buf[0] = '\0';
	if (secs <= 0) {
		snprintf(buf, size, "%s", secs == 0 ? "0s" : "-");
		if (secs == 0)
			return buf;
		o = 1;
		secs = secs == INT64_MIN ? INT64_MAX : -secs;
	}
	for (size_t u = 0; u < sizeof(units) / sizeof(units[0]) && o < size; u++) {
		if (secs >= units[u].secs) {
			o += (size_t)snprintf(buf + o, size - o, "%" PRId64 "%c", secs / units[u].secs,
			                      units[u].unit);
			secs %= units[u].secs;
		}
	}
	return buf;
}

/* Characters YAML refuses raw (the C1 controls U+0080-U+009F, U+FFFE, U+FFFF) or reads as line
 * breaks even inside quotes (NEL U+0085, LS U+2028, PS U+2029): their length in bytes at p (UTF-8), or 0. */
static size_t
special_unicode(const unsigned char *p)
{
	if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
		return 2;
	if (p[0] == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9))
		return 3;
	if (p[0] == 0xef && p[1] == 0xbf && (p[2] == 0xbe || p[2] == 0xbf))
		return 3;
	return 0;
}

/* Redact the value of query parameter or key "password"; `v` points at the value. */
/* Scalars the loader would read differently (null-like, flow/indicator characters) get quoted. */
static bool
needs_quotes(const char *s)
{
	static const char *const nulls[] = {"~", "null", "Null", "NULL", "true", "false"};

	if (s[0] == '\0' || isspace((unsigned char)s[0]) || isspace((unsigned char)s[strlen(s) - 1]))
		return true;
	if (strchr("-?:,[]{}#&*!|>'\"%@`", s[0]) != NULL)
		return true;
	for (size_t i = 0; i < sizeof(nulls) / sizeof(nulls[0]); i++)
		if (strcmp(s, nulls[i]) == 0)
			return true;
	for (const char *p = s; *p != '\0'; p++) {
		if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == '"' || *p == '\\')
			return true;
		if ((*p == ':' && (p[1] == ' ' || p[1] == '\0')) || (*p == '#' && p > s && p[-1] == ' '))
			return true;
		if (strchr(",[]{}", *p) != NULL || special_unicode((const unsigned char *)p) > 0)
			return true;
	}
	return false;
}

static void
put_str(FILE *out, const char *s)
{
	size_t n;

	if (!needs_quotes(s)) {
		fputs(s, out);
		return;
	}
	fputc('"', out);
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(out, "\\%c", *p);
		else if (*p == '\n')
			fputs("\\n", out);
		else if (*p == '\t')
			fputs("\\t", out);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(out, "\\x%02x", *p);
		else if ((n = special_unicode(p)) > 0) {
			/* YAML escapes: \x80-\x9f, \L, \P, \uFFFE, \uFFFF. */
			if (n == 2)
				fprintf(out, "\\x%02x", p[1]);
			else if (p[0] == 0xe2)
				fputs(p[2] == 0xa8 ? "\\L" : "\\P", out);
			else
				fputs(p[2] == 0xbe ? "\\uFFFE" : "\\uFFFF", out);
			p += n - 1;
		} else
			fputc(*p, out);
	}
	fputc('"', out);
}

static void
kv_str(FILE *out, int indent, const char *key, const char *value)
{
	if (value == NULL)
		return;
	fprintf(out, "%*s%s: ", indent, "", key);
	put_str(out, value);
	fputc('\n', out);
}

/* Cron text reads better quoted, and "* * * * *" would otherwise start with an alias indicator. */
static void
kv_cron(FILE *out, int indent, const char *key, const struct pv_cron *cron)
{
	fprintf(out, "%*s%s: \"%s\"\n", indent, "", key, pv_cron_text(cron));
}

static void
kv_strv(FILE *out, int indent, const char *key, const struct pv_strv *sv)
{
	fprintf(out, "%*s%s: [", indent, "", key);
	for (size_t i = 0; i < sv->n; i++) {
		if (i > 0)
			fputs(", ", out);
		put_str(out, sv->v[i]);
	}
	fputs("]\n", out);
}

static void
kv_dur(FILE *out, int indent, const char *key, int64_t secs)
{
	char buf[32];
	fprintf(out, "%*s%s: %s\n", indent, "", key, pv_duration_format(secs, buf, sizeof(buf)));
}

static void
kv_bool(FILE *out, int indent, const char *key, bool v)
{
	fprintf(out, "%*s%s: %s\n", indent, "", key, v ? "true" : "false");
}

static void
kv_secret(FILE *out, int indent, const char *key, const struct pv_secret *s)
{
	char *red;

	if (s->value == NULL)
		return;
	red = pv_asprintf("<redacted: %s>", s->source);
	kv_str(out, indent, key, red);
	free(red);
}

static void
kv_conninfo(FILE *out, int indent, const char *conninfo)
{
	char *red;

	if (conninfo == NULL)
		return;
	red = pv_pg_conninfo_redact(conninfo);
	kv_str(out, indent, "conninfo", red);
	free(red);
}

/* The shortest %g form of v * scale that the loader reads back (then divides by scale) as v itself:
 * "%g" alone can turn factor 1.0000001 into "1", which the loader refuses. */
static const char *
number(double v, double scale, char *buf, size_t size)
{
	for (int precision = 6; precision <= 17; precision++) {
		snprintf(buf, size, "%.*g", precision, v * scale);
		if (strtod(buf, NULL) / scale == v)
			break;
	}
	return buf;
}

static void
dump_rule(FILE *out, const struct pv_config_rule *r)
{
	char buf[32], num[40];

	fprintf(out, "    %s: { severity: %s, enabled: %s", r->name, pv_severity_name(r->severity),
	        r->enabled ? "true" : "false");
	switch (r->id) {
	case PV_RULE_BACKUP_STALE:
	case PV_RULE_CONNECTIVITY_LOST:
		fprintf(out, ", after: %s", pv_duration_format(r->after, buf, sizeof(buf)));
		break;
	case PV_RULE_RESTORE_FAILURES: fprintf(out, ", consecutive: %d", r->consecutive); break;
	case PV_RULE_BACKUP_SIZE_ANOMALY:
		fprintf(out, ", change: \"%s%%\"", number(r->change, 100.0, num, sizeof(num)));
		break;
	case PV_RULE_BACKUP_SLOW:
		fprintf(out, ", factor: %s", number(r->factor, 1.0, num, sizeof(num)));
		break;
	case PV_RULE_STORAGE_USAGE:
		fprintf(out, ", above: \"%s%%\"", number(r->above, 100.0, num, sizeof(num)));
		break;
	default: break;
	}
	fputs(" }\n", out);
}

static void
dump_job(FILE *out, const struct pv_config_job *j)
{
	fprintf(out, "  ");
	put_str(out, j->name);
	fputs(":\n", out);
	kv_str(out, 4, "type", pv_job_type_name(j->type));
	kv_str(out, 4, "database", j->database_name);
	if (j->cron != NULL)
		kv_cron(out, 4, "schedule", j->cron);
	else
		kv_dur(out, 4, "every", j->every);
	if (j->tz != NULL)
		kv_str(out, 4, "timezone", pv_tz_name(j->tz));
	kv_dur(out, 4, "timeout", pv_config_job_timeout(j));
	kv_dur(out, 4, "jitter", j->jitter);
	if (j->cron != NULL)
		kv_bool(out, 4, "catch_up", j->catch_up);
	kv_dur(out, 4, "grace", j->grace);
	if (j->type == PV_JOB_HEALTH)
		kv_bool(out, 4, "keep_connection", j->keep_connection);
	if (j->type != PV_JOB_BACKUP)
		return;
	fprintf(out, "    keep: %d\n", j->keep);
	kv_str(out, 4, "tier", j->tier);
	kv_strv(out, 4, "schemas", &j->schemas);
	kv_strv(out, 4, "exclude_schemas", &j->exclude_schemas);
	kv_strv(out, 4, "exclude_table_data", &j->exclude_table_data);
	kv_bool(out, 4, "schema_copy", j->schema_copy);
}

static void
dump_notifier(FILE *out, const struct pv_config_notifier *n)
{
	static const char *const types[] = {"slack", "webhook", "email", "heartbeat"};
	static const char *const tls[] = {"required", "implicit", "none"};

	fprintf(out, "  ");
	put_str(out, n->name);
	fprintf(out, ":\n    type: %s\n", types[n->type]);
	if (n->type != PV_NOTIFIER_HEARTBEAT) {
		const char *sep = "";
		fputs("    severities: [", out);
		for (int s = PV_SEV_CRITICAL; s >= PV_SEV_INFO; s--) {
			if (n->severities & PV_SEV_MASK(s)) {
				fprintf(out, "%s%s", sep, pv_severity_name((enum pv_severity)s));
				sep = ", ";
			}
		}
		fputs("]\n", out);
		if (n->digest != NULL)
			kv_cron(out, 4, "digest", n->digest);
	}
	kv_dur(out, 4, "max_age", n->max_age);
	kv_str(out, 4, "ca_file", n->ca_file);
	switch (n->type) {
	case PV_NOTIFIER_SLACK: kv_secret(out, 4, "webhook_url", &n->webhook_url); break;
	case PV_NOTIFIER_WEBHOOK:
		kv_secret(out, 4, "url", &n->url);
		kv_secret(out, 4, "secret", &n->secret);
		break;
	case PV_NOTIFIER_HEARTBEAT:
		kv_secret(out, 4, "url", &n->url);
		kv_dur(out, 4, "every", n->every);
		kv_str(out, 4, "method", n->post ? "POST" : "GET");
		break;
	case PV_NOTIFIER_EMAIL:
		kv_str(out, 4, "smtp_url", n->smtp_url);
		kv_str(out, 4, "starttls", tls[n->starttls]);
		kv_str(out, 4, "username", n->username);
		kv_secret(out, 4, "password", &n->password);
		kv_str(out, 4, "from", n->from);
		kv_strv(out, 4, "to", &n->to);
		break;
	}
}

void
pv_config_dump(const struct pv_config *cfg, FILE *out)
{
	const struct pv_config_daemon *d = &cfg->daemon;
	const struct pv_config_storage *s = &cfg->storage;

	fputs("# effective configuration of ", out);
	fputs(cfg->path, out);
	fputs(" (defaults filled in, secrets redacted)\n", out);
	fputs("daemon:\n", out);
	kv_str(out, 2, "state_dir", d->state_dir);
	kv_str(out, 2, "socket", d->socket);
	kv_strv(out, 2, "admins", &d->admins);
	kv_str(out, 2, "timezone", d->timezone);
	fprintf(out, "  max_parallel_jobs: %d\n", d->max_parallel_jobs);
	kv_str(out, 2, "log_level", pv_log_level_name(d->log_level));
	kv_str(out, 2, "metrics_listen", d->metrics_listen);
	kv_str(out, 2, "pg_bin_dir", d->pg_bin_dir);
	kv_dur(out, 2, "keep_history", d->keep_history);

	fputs("storage:\n", out);
	kv_str(out, 2, "path", s->path);
	kv_str(out, 2, "compression", s->compression == PV_COMPRESSION_ZSTD ? "zstd" : "none");
	fprintf(out, "  compression_level: %d\n", s->compression_level);
	kv_str(out, 2, "encryption_key_file", s->encryption_key_file);
	kv_strv(out, 2, "old_key_files", &s->old_key_files);

	fputs(cfg->n_databases ? "databases:\n" : "databases: {}\n", out);
	for (size_t i = 0; i < cfg->n_databases; i++) {
		const struct pv_config_database *db = &cfg->databases[i];
		fputs("  ", out);
		put_str(out, db->name);
		fputs(":\n", out);
		kv_conninfo(out, 4, db->conninfo);
		kv_secret(out, 4, "password", &db->password);
		kv_strv(out, 4, "critical_tables", &db->critical_tables);
		if (db->expected_tables >= 0)
			fprintf(out, "    expected_tables: %d\n", db->expected_tables);
		if (db->rpo > 0 || db->rto > 0) {
			fputs("    objectives:\n", out);
			if (db->rpo > 0)
				kv_dur(out, 6, "rpo", db->rpo);
			if (db->rto > 0)
				kv_dur(out, 6, "rto", db->rto);
		}
		kv_str(out, 4, "restore_target", db->restore_target_name);
		kv_strv(out, 4, "assertions", &db->assertions);
	}

	fputs(cfg->n_restore_targets ? "restore_targets:\n" : "restore_targets: {}\n", out);
	for (size_t i = 0; i < cfg->n_restore_targets; i++) {
		const struct pv_config_restore_target *t = &cfg->restore_targets[i];
		fputs("  ", out);
		put_str(out, t->name);
		fputs(":\n", out);
		kv_conninfo(out, 4, t->conninfo);
		kv_secret(out, 4, "password", &t->password);
	}

	fputs(cfg->n_jobs ? "jobs:\n" : "jobs: {}\n", out);
	for (size_t i = 0; i < cfg->n_jobs; i++)
		dump_job(out, &cfg->jobs[i]);

	fputs("alerts:\n", out);
	kv_dur(out, 2, "group_wait", cfg->alerts.group_wait);
	kv_dur(out, 2, "repeat_every", cfg->alerts.repeat_every);
	kv_bool(out, 2, "send_resolved", cfg->alerts.send_resolved);
	fputs("  rules:\n", out);
	for (size_t i = 0; i < cfg->alerts.n_rules; i++)
		dump_rule(out, &cfg->alerts.rules[i]);

	fputs(cfg->n_notifiers ? "notifiers:\n" : "notifiers: {}\n", out);
	for (size_t i = 0; i < cfg->n_notifiers; i++)
		dump_notifier(out, &cfg->notifiers[i]);
}
