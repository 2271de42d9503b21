/* pgvigilctl: the control CLI. Talks JSON lines to pgvigild's socket; `schedule` works offline. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cli/report.h"
#include "cli/restore.h"
#include "config/config.h"
#include "crypto/crypto.h"
#include "ctl/protocol.h"
#include "sched/cron.h"
#include "storage/storage.h"
#include "util/mem.h"

#define DEFAULT_SOCKET "/run/pgvigil/pgvigil.sock"

enum { EXIT_OK = 0, EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3 };

struct cli {
	const char *socket;
	bool json;
	bool no_timeout; /* verify: as long as it takes */
};

static void
usage(FILE *out)
{
	fprintf(out,
	        "usage: pgvigilctl [-s SOCKET] [--json] COMMAND [ARGS]\n"
	        "\n"
	        "commands (daemon):\n"
	        "  status                 daemon, reload result, per-database health\n"
	        "  jobs                   jobs with schedule, next run, last run, running now\n"
	        "  run JOB                start a job now (admins)\n"
	        "  reload                 re-read the configuration, like SIGHUP (admins)\n"
	        "  backups [DATABASE]     stored backups with size, tier, verified state\n"
	        "  verify BACKUP_ID       verify one backup now (ID, or DATABASE/JOB/ID)\n"
	        "  prune [--dry-run]      apply retention now, or show what it would delete (admins)\n"
	        "  report [--json]        disaster-recovery readiness report per database (Markdown)\n"
	        "  alerts [history]       firing and pending alerts, or every notification produced\n"
	        "  silence add RULE [DATABASE] --for D --comment T   silence a rule (admins)\n"
	        "  silence list [--all]   active silences (--all: also expired and removed)\n"
	        "  silence remove ID      end a silence early (admins)\n"
	        "  maintenance on --for D [--comment T] | off   hold back notifications (admins)\n"
	        "  restore ID|latest --database DB --to CONNINFO [--force]\n"
	        "                         restore a backup into a database and validate it (admins)\n"
	        "commands (offline):\n"
	        "  schedule \"CRON\" [--tz ZONE] [--from TIME] [--count N]\n"
	        "                         print the next run times, one RFC 3339 UTC time per line\n"
	        "  decrypt FILE [--key-file KEY]...\n"
	        "                         write the custom-format archive of a stored dump to stdout\n"
	        "  verify-file DIR [--key-file KEY]...\n"
	        "                         check a backup directory: manifest, hashes, decryption, archive\n"
	        "\n"
	        "options:\n"
	        "  -s, --socket PATH      control socket (default $PGVIGIL_SOCKET or " DEFAULT_SOCKET ")\n"
	        "  -j, --json             print the daemon's JSON answer instead of a table\n"
	        "  -h, --help             this help\n"
	        "  -V, --version          print the version\n"
	        "\n"
	        "exit status: 0 success, 1 the command failed, 2 usage error, 3 daemon unreachable\n");
}

static const char *
str(json_t *o, const char *key, const char *dflt)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s != NULL ? s : dflt;
}

/* ---- transport ---- */

static int
call(const struct cli *cli, json_t *req, json_t **resp)
{
	struct sockaddr_un sa;
	struct timeval tv = {60, 0};
	char *line = pv_ctl_encode(req);
	size_t cap = 65536, len = 0;
	char *buf;
	int fd, send_errno = 0;

	json_decref(req);
	if (strlen(cli->socket) >= sizeof(sa.sun_path)) {
		fprintf(stderr, "pgvigilctl: socket path too long: %s\n", cli->socket);
		free(line);
		return EXIT_USAGE;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	pv_strlcpy(sa.sun_path, cli->socket, sizeof(sa.sun_path));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		fprintf(stderr, "pgvigilctl: cannot connect to pgvigild at %s: %s\n", cli->socket,
		        strerror(errno));
		fprintf(stderr, "HINT: is pgvigild running? Use -s to name another socket.\n");
		if (fd >= 0)
			close(fd);
		free(line);
		return EXIT_UNREACHABLE;
	}
	if (cli->no_timeout)
		tv.tv_sec = 0;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	for (size_t off = 0, n = strlen(line); off < n;) {
		ssize_t w = send(fd, line + off, n - off, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			/* A daemon that refuses the connection (too many) says why, then closes: read it. */
			send_errno = errno;
			break;
		}
		off += (size_t)w;
	}
	free(line);
	buf = pv_malloc(cap);
	for (;;) {
		ssize_t r;
		if (len + 1 >= cap) {
			if (cap >= PV_CTL_MAX_LINE * 16) {
				fprintf(stderr, "pgvigilctl: answer from pgvigild too long\n");
				close(fd);
				free(buf);
				return EXIT_FAILED;
			}
			cap *= 2;
			buf = pv_realloc(buf, cap);
		}
		r = recv(fd, buf + len, cap - len - 1, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
		if (memchr(buf + len - (size_t)r, '\n', (size_t)r) != NULL)
			break;
	}
	close(fd);
	if (send_errno != 0 && len == 0) {
		fprintf(stderr, "pgvigilctl: sending to pgvigild: %s\n", strerror(send_errno));
		free(buf);
		return EXIT_UNREACHABLE;
	}
	buf[len] = '\0';
	*resp = json_loadb(buf, len, 0, NULL);
	free(buf);
	if (*resp == NULL) {
		fprintf(stderr, "pgvigilctl: no valid answer from pgvigild at %s\n", cli->socket);
		return EXIT_UNREACHABLE;
	}
	return EXIT_OK;
}

/* Send a request; print errors; on success return the data object through *data. */
static int
request(const struct cli *cli, json_t *req, json_t **resp, json_t **data)
{
	int rc = call(cli, req, resp);
	json_t *err;

	if (rc != EXIT_OK)
		return rc;
	if (json_is_true(json_object_get(*resp, "ok"))) {
		*data = json_object_get(*resp, "data");
		return EXIT_OK;
	}
	err = json_object_get(*resp, "error");
	if (cli->json) {
		json_dumpf(*resp, stdout, JSON_INDENT(2));
		fputc('\n', stdout);
	} else {
		fprintf(stderr, "pgvigilctl: %s\n",
		        str(err, "message", "the daemon reported an error without a message"));
	}
	return strcmp(json_string_value(json_object_get(err, "code")) ?: "", "usage") == 0 ? EXIT_USAGE
	                                                                                   : EXIT_FAILED;
}

/* ---- formatting ---- */

static void
fmt_duration(double secs, char *buf, size_t size)
{
	long s = (long)secs;
	if (secs < 1)
		snprintf(buf, size, "%.0fms", secs * 1000);
	else if (s < 60)
		snprintf(buf, size, "%.1fs", secs);
	else if (s < 3600)
		snprintf(buf, size, "%ldm%02lds", s / 60, s % 60);
	else if (s < 86400)
		snprintf(buf, size, "%ldh%02ldm", s / 3600, s % 3600 / 60);
	else
		snprintf(buf, size, "%ldd%02ldh", s / 86400, s % 86400 / 3600);
}

/* Two lines: the firing alerts, and the notifications waiting or failed per notifier. */
static void
print_status_alerts(json_t *d)
{
	json_t *alerts = json_object_get(d, "alerts"), *notes = json_object_get(d, "notifications"), *a;
	const char *name;
	size_t i;

	printf("\nfiring alerts: %zu", json_array_size(alerts));
	json_array_foreach(alerts, i, a)
	{
		const char *about = str(a, "database", NULL);
		if (about == NULL)
			about = str(a, "job", NULL);
		if (about == NULL)
			about = str(a, "notifier", "-");
		printf("%s %s/%s (%s)", i == 0 ? ":" : ",", str(a, "rule", "?"), about,
		       str(a, "severity", "?"));
	}
	if (json_is_object(json_object_get(d, "maintenance")))
		printf("\nmaintenance: on until %s (%s), notifications held back",
		       str(json_object_get(d, "maintenance"), "until", "?"),
		       str(json_object_get(d, "maintenance"), "author", "?"));
	if (json_array_size(json_object_get(d, "silences")) > 0)
		printf("\nsilences: %zu active (pgvigilctl silence list)",
		       json_array_size(json_object_get(d, "silences")));
	printf("\nnotifications:");
	if (json_object_size(notes) == 0)
		printf(" no notifiers");
	i = 0;
	json_object_foreach(notes, name, a)
	{
		printf("%s %s %lld pending, %lld failed", i++ == 0 ? "" : ";", name,
		       (long long)json_integer_value(json_object_get(a, "pending")),
		       (long long)json_integer_value(json_object_get(a, "failed")));
	}
	printf("\n");
}

static void
print_alerts(json_t *d)
{
	json_t *alerts = json_object_get(d, "alerts"), *a;
	bool history = json_is_true(json_object_get(d, "history"));
	size_t i;

	if (json_array_size(alerts) == 0) {
		printf(history ? "no alert notifications recorded\n" : "no alerts\n");
		return;
	}
	if (history) {
		printf("%-21s %-9s %-20s %-9s %-16s %-16s %-14s %s\n", "TIME", "KIND", "RULE", "SEVERITY",
		       "DATABASE", "JOB", "SUPPRESSED", "VALUE");
		json_array_foreach(alerts, i, a)
		{
			printf("%-21s %-9s %-20s %-9s %-16s %-16s %-14s %s\n", str(a, "at", "-"),
			       str(a, "kind", "?"), str(a, "rule", "?"), str(a, "severity", "?"),
			       str(a, "database", "-"), str(a, "job", "-"), str(a, "suppressed", "-"),
			       str(a, "value", ""));
		}
		return;
	}
	printf("%-20s %-9s %-9s %-16s %-16s %-21s %s\n", "RULE", "SEVERITY", "STATUS", "DATABASE", "JOB",
	       "SINCE", "VALUE");
	json_array_foreach(alerts, i, a)
	{
		printf("%-20s %-9s %-9s %-16s %-16s %-21s %s\n", str(a, "rule", "?"), str(a, "severity", "?"),
		       str(a, "status", "?"), str(a, "database", "-"), str(a, "job", "-"),
		       str(a, "first_seen", "-"), str(a, "value", ""));
	}
}

static void
print_silences(json_t *d)
{
	json_t *v = json_object_get(d, "silences"), *a;
	size_t i;

	if (json_array_size(v) == 0) {
		printf("no silences\n");
		return;
	}
	printf("%-5s %-20s %-16s %-21s %-8s %-12s %s\n", "ID", "RULE", "DATABASE", "UNTIL", "STATE", "AUTHOR",
	       "COMMENT");
	json_array_foreach(v, i, a)
	{
		printf("%-5lld %-20s %-16s %-21s %-8s %-12s %s\n",
		       (long long)json_integer_value(json_object_get(a, "id")), str(a, "rule", "?"),
		       str(a, "database", "*"), str(a, "until", "-"), str(a, "state", "?"),
		       str(a, "author", "?"), str(a, "comment", ""));
	}
}

/* "--for D" and "--comment T" after the positional arguments of silence add / maintenance on. */
static bool
parse_for_comment(int argc, char **argv, int from, int64_t *secs, const char **comment)
{
	for (int i = from; i < argc; i++) {
		if (strcmp(argv[i], "--for") == 0 && i + 1 < argc) {
			if (!pv_duration_parse(argv[++i], secs) || *secs <= 0) {
				fprintf(stderr,
				        "pgvigilctl: --for: expected a duration like 30m, 2h or 1d, got "
				        "\"%s\"\n",
				        argv[i]);
				return false;
			}
		} else if (strcmp(argv[i], "--comment") == 0 && i + 1 < argc) {
			*comment = argv[++i];
		} else {
			fprintf(stderr, "pgvigilctl: unexpected argument \"%s\"\n", argv[i]);
			return false;
		}
	}
	return true;
}

static void
print_status(json_t *d)
{
	json_t *reload = json_object_get(d, "reload");
	json_t *dbs = json_object_get(d, "databases");
	char up[32];
	size_t i;
	json_t *db;

	fmt_duration(json_number_value(json_object_get(d, "uptime")), up, sizeof(up));
	printf("pgvigild %s  pid %lld  up %s  jobs %lld  running %lld\n", str(d, "version", "?"),
	       (long long)json_integer_value(json_object_get(d, "pid")), up,
	       (long long)json_integer_value(json_object_get(d, "jobs")),
	       (long long)json_integer_value(json_object_get(d, "running")));
	printf("config %s\n", str(d, "config", "?"));
	if (json_integer_value(json_object_get(reload, "count")) == 0)
		printf("last reload: none since start\n");
	else if (json_is_true(json_object_get(reload, "ok")))
		printf("last reload: ok at %s\n", str(reload, "at", "?"));
	else
		printf("last reload: FAILED at %s, previous configuration kept: %s\n", str(reload, "at", "?"),
		       str(reload, "error", "?"));
	printf("\n%-20s %-10s %-10s %-10s %-22s %-28s %s\n", "DATABASE", "HEALTH", "CONNECT", "SERVER",
	       "CHECKED", "NEWEST VERIFIED BACKUP", "CAUSE");
	json_array_foreach(dbs, i, db)
	{
		json_t *h = json_object_get(db, "health");
		json_t *fig = json_object_get(h, "figures");
		char lat[32] = "-";
		if (json_is_number(json_object_get(fig, "connect_seconds")))
			fmt_duration(json_number_value(json_object_get(fig, "connect_seconds")), lat,
			             sizeof(lat));
		else if (json_is_true(json_object_get(fig, "reused_connection")))
			snprintf(lat, sizeof(lat), "kept");
		json_t *nb = json_object_get(db, "newest_verified_backup");
		char newest[64] = "none";
		char ver[16];
		if (json_is_object(nb)) {
			char age[32];
			fmt_duration((double)json_integer_value(json_object_get(nb, "age")), age,
			             sizeof(age));
			snprintf(newest, sizeof(newest), "%s (%s ago)", str(nb, "tier", "?"), age);
		}
		/* "15.18 (Debian ...)" -> "15.18": the table has no room for the build string. */
		snprintf(ver, sizeof(ver), "%s", str(fig, "server_version", "-"));
		ver[strcspn(ver, " ")] = '\0';
		printf("%-20s %-10s %-10s %-10s %-22s %-28s %s\n", str(db, "name", "?"),
		       json_is_object(h) ? str(h, "result", "?") : "unknown", lat, ver,
		       json_is_object(h) ? str(h, "finished", "-") : "-", newest,
		       json_is_object(h) ? str(h, "cause", "") : "");
		pv_cli_print_rpo_rto(db);
	}
	print_status_alerts(d);
}

static void
print_jobs(json_t *d)
{
	json_t *jobs = json_object_get(d, "jobs");
	size_t i;
	json_t *j;

	printf("%-18s %-13s %-16s %-21s %-21s %-10s %s\n", "JOB", "TYPE", "SCHEDULE", "NEXT RUN", "LAST RUN",
	       "RESULT", "RUNNING");
	json_array_foreach(jobs, i, j)
	{
		json_t *last = json_object_get(j, "last_run");
		json_t *run = json_object_get(j, "running");
		char sched[64], running[64] = "-";

		if (json_object_get(j, "schedule") != NULL)
			snprintf(sched, sizeof(sched), "%s", str(j, "schedule", "?"));
		else
			snprintf(sched, sizeof(sched), "every %s", str(j, "every", "?"));
		if (json_is_object(run)) {
			char el[32];
			fmt_duration(json_number_value(json_object_get(run, "elapsed")), el, sizeof(el));
			json_int_t bytes = json_integer_value(json_object_get(run, "progress_bytes"));
			if (bytes > 0)
				snprintf(running, sizeof(running), "%s, %lld bytes", el, (long long)bytes);
			else
				snprintf(running, sizeof(running), "%s", el);
		}
		printf("%-18s %-13s %-16s %-21s %-21s %-10s %s\n", str(j, "name", "?"), str(j, "type", "?"),
		       sched, str(j, "next_run", "-"), json_is_object(last) ? str(last, "started", "-") : "-",
		       json_is_object(last) ? str(last, "result", "-") : "-", running);
	}
}

static void
fmt_size(json_int_t n, char *buf, size_t size)
{
	const char *units[] = {"B", "kB", "MB", "GB", "TB"};
	double v = (double)n;
	int u = 0;

	while (v >= 1000 && u < 4) {
		v /= 1000;
		u++;
	}
	snprintf(buf, size, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
}

static void
fmt_epoch(json_t *v, char *buf, size_t size)
{
	time_t t = (time_t)json_integer_value(v);
	struct tm tm;

	if (!json_is_integer(v) || t <= 0) {
		snprintf(buf, size, "-");
		return;
	}
	gmtime_r(&t, &tm);
	strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void
print_backups(json_t *d)
{
	json_t *list = json_object_get(d, "backups");
	size_t i;
	json_t *b;

	printf("%-14s %-16s %-26s %-8s %-10s %-21s %-9s %s\n", "DATABASE", "JOB", "ID", "TIER", "SIZE",
	       "FINISHED", "VERIFIED", "STATUS");
	json_array_foreach(list, i, b)
	{
		char size[32], fin[32];
		const char *vr = str(b, "verify_result", NULL);

		fmt_size(json_integer_value(json_object_get(b, "size")), size, sizeof(size));
		fmt_epoch(json_object_get(b, "finished"), fin, sizeof(fin));
		printf("%-14s %-16s %-26s %-8s %-10s %-21s %-9s %s%s%s\n", str(b, "database", "?"),
		       str(b, "job", "?"), str(b, "id", "?"), str(b, "tier", "?"), size, fin,
		       vr == NULL ? "never" : vr, str(b, "status", "?"),
		       json_is_true(json_object_get(b, "encrypted")) ? ", encrypted" : "",
		       vr != NULL && strcmp(vr, "ok") != 0 && str(b, "verify_cause", NULL) ? "" : "");
		if (vr != NULL && strcmp(vr, "ok") != 0 && str(b, "verify_cause", NULL) != NULL)
			printf("    verification failed: %s\n", str(b, "verify_cause", ""));
	}
}

static void
print_prune(json_t *d)
{
	json_t *list = json_object_get(d, "backups");
	bool dry = json_is_true(json_object_get(d, "dry_run"));
	size_t i, n = 0;
	json_t *b;

	printf("%-14s %-16s %-26s %s\n", "DATABASE", "JOB", "ID", dry ? "WOULD" : "DONE");
	json_array_foreach(list, i, b)
	{
		const char *v = str(b, "verdict", "?");
		bool del = strcmp(v, "delete") == 0;
		n += del;
		printf("%-14s %-16s %-26s %s\n", str(b, "database", "?"), str(b, "job", "?"),
		       str(b, "id", "?"),
		       del ? (dry                                           ? "delete"
		              : json_is_true(json_object_get(b, "deleted")) ? "deleted"
		                                                            : "NOT deleted")
		           : v);
	}
	printf("%zu backup(s) %s\n", n, dry ? "would be deleted" : "deleted");
}

/* ---- offline: decrypt, verify-file ---- */

/* --key-file options, any number: the first is tried like any other (fingerprints decide). */
static struct pv_crypto_keyring *
keyring_from_args(int argc, char **argv, int *first_arg, struct pv_error *err)
{
	static const struct option opts[] = {{"key-file", required_argument, NULL, 'k'}, {NULL, 0, NULL, 0}};
	struct pv_crypto_keyring *ring = pv_crypto_keyring_new();
	int opt;

	optind = 0;
	while ((opt = getopt_long(argc, argv, "k:", opts, NULL)) != -1) {
		struct pv_crypto_key *key;
		if (opt != 'k') {
			pv_crypto_keyring_free(ring);
			pv_error_set(err, PV_ERR_USAGE, "unknown option");
			return NULL;
		}
		key = pv_crypto_key_load(optarg, err);
		if (key == NULL) {
			pv_crypto_keyring_free(ring);
			return NULL;
		}
		pv_crypto_keyring_add(ring, key, false);
	}
	*first_arg = optind;
	return ring;
}

static int
cmd_decrypt(int argc, char **argv)
{
	struct pv_store_reader_opts ro = {0};
	struct pv_store_result res;
	struct pv_crypto_keyring *ring;
	struct pv_error err;
	int first;

	ring = keyring_from_args(argc, argv, &first, &err);
	if (ring == NULL || first != argc - 1) {
		fprintf(stderr, "%s%s%susage: pgvigilctl decrypt FILE [--key-file KEY]... > archive\n",
		        ring == NULL ? "pgvigilctl: decrypt: " : "", ring == NULL ? err.msg : "",
		        ring == NULL ? "\n" : "");
		pv_crypto_keyring_free(ring);
		return ring == NULL && err.code != PV_ERR_USAGE ? EXIT_FAILED : EXIT_USAGE;
	}
	if (isatty(STDOUT_FILENO)) {
		fprintf(stderr, "pgvigilctl: decrypt: refusing to write an archive to a terminal: redirect "
		                "stdout, e.g. "
		                "| pg_restore -d DB\n");
		pv_crypto_keyring_free(ring);
		return EXIT_USAGE;
	}
	ro.path = argv[first];
	ro.ring = ring;
	ro.out_fd = dup(STDOUT_FILENO);
	if (!pv_store_read_file(&ro, &res)) {
		fprintf(stderr, "pgvigilctl: decrypt: %s: %s\n", argv[first], res.error.msg);
		pv_crypto_keyring_free(ring);
		return EXIT_FAILED;
	}
	fprintf(stderr, "pgvigilctl: decrypt: %s: %llu archive bytes written, sha256 of the stored file %s\n",
	        argv[first], (unsigned long long)res.bytes_in, res.sha256);
	pv_crypto_keyring_free(ring);
	return EXIT_OK;
}

static int
cmd_verify_file(int argc, char **argv)
{
	struct pv_crypto_keyring *ring;
	struct pv_error err;
	json_t *m, *files, *f;
	const char *key;
	int first, rc = EXIT_OK;

	ring = keyring_from_args(argc, argv, &first, &err);
	if (ring == NULL || first != argc - 1) {
		fprintf(stderr, "%s%s%susage: pgvigilctl verify-file DIR [--key-file KEY]...\n",
		        ring == NULL ? "pgvigilctl: verify-file: " : "", ring == NULL ? err.msg : "",
		        ring == NULL ? "\n" : "");
		pv_crypto_keyring_free(ring);
		return ring == NULL && err.code != PV_ERR_USAGE ? EXIT_FAILED : EXIT_USAGE;
	}
	m = pv_store_manifest_read(argv[first], &err);
	if (m == NULL) {
		fprintf(stderr, "pgvigilctl: verify-file: %s\n", err.msg);
		pv_crypto_keyring_free(ring);
		return EXIT_FAILED;
	}
	printf("backup %s/%s/%s (tier %s, finished %s)\n", str(m, "database", "?"), str(m, "job", "?"),
	       str(m, "id", "?"), str(m, "tier", "?"), str(m, "finished", "?"));
	/* The dump, then the schema-only copy if there is one: the same fields in both. */
	files = json_pack("{s:O}", "dump", m);
	if (json_is_object(json_object_get(m, "schema_copy")))
		json_object_set(files, "schema", json_object_get(m, "schema_copy"));
	json_object_foreach(files, key, f)
	{
		struct pv_store_reader_opts ro = {0};
		struct pv_store_result res;
		char *path = pv_asprintf("%s/%s", argv[first], str(f, "file", "?"));

		ro.path = path;
		ro.ring = ring;
		ro.out_fd = -1;
		ro.expect_sha256 = str(f, "sha256", NULL);
		if (pv_store_read_file(&ro, &res) &&
		    (json_integer_value(json_object_get(f, "size")) == (json_int_t)res.bytes_out)) {
			printf("  %-8s %-18s ok: %llu bytes, sha256 %s, archive %llu bytes\n", key,
			       str(f, "file", "?"), (unsigned long long)res.bytes_out, res.sha256,
			       (unsigned long long)res.bytes_in);
		} else {
			printf("  %-8s %-18s FAILED: %s\n", key, str(f, "file", "?"),
			       res.ok ? "size differs from the manifest" : res.error.msg);
			rc = EXIT_FAILED;
		}
		free(path);
	}
	json_decref(files);
	json_decref(m);
	pv_crypto_keyring_free(ring);
	printf("%s\n", rc == EXIT_OK ? "verified: the files match the manifest and read completely"
	                             : "verification FAILED");
	return rc;
}

/* ---- offline: schedule ---- */

static bool
parse_time(const char *s, time_t *out)
{
	struct tm tm;
	const char *rest;
	long off = 0;

	memset(&tm, 0, sizeof(tm));
	rest = strptime(s, "%Y-%m-%dT%H:%M", &tm);
	if (rest == NULL)
		rest = strptime(s, "%Y-%m-%d %H:%M", &tm);
	if (rest == NULL) {
		rest = strptime(s, "%Y-%m-%d", &tm);
		if (rest == NULL)
			return false;
	} else if (*rest == ':') {
		rest = strptime(rest, ":%S", &tm);
		if (rest == NULL)
			return false;
	}
	if (*rest == 'Z' || *rest == 'z') {
		rest++;
	} else if (*rest == '+' || *rest == '-') {
		/* Exactly [+-]HH:MM. */
		if (strlen(rest) != 6 || rest[3] != ':' || !isdigit((unsigned char)rest[1]) ||
		    !isdigit((unsigned char)rest[2]) || !isdigit((unsigned char)rest[4]) ||
		    !isdigit((unsigned char)rest[5]))
			return false;
		off = ((rest[1] - '0') * 10 + (rest[2] - '0')) * 3600 +
		      ((rest[4] - '0') * 10 + (rest[5] - '0')) * 60;
		if (*rest == '-')
			off = -off;
		rest += 6;
	}
	if (*rest != '\0')
		return false;
	*out = timegm(&tm) - off;
	return true;
}

static int
cmd_schedule(int argc, char **argv)
{
	static const struct option opts[] = {
	        {"tz", required_argument, NULL, 'z'},
	        {"from", required_argument, NULL, 'f'},
	        {"count", required_argument, NULL, 'n'},
	        {NULL, 0, NULL, 0},
	};
	const char *zone = "UTC";
	time_t from = time(NULL);
	long count = 10;
	struct pv_cron *cron;
	struct pv_tz *tz;
	struct pv_error err;
	char *end;
	int opt;

	optind = 0; /* 0: GNU getopt re-initialises (the first pass used "+") */
	while ((opt = getopt_long(argc, argv, "z:f:n:", opts, NULL)) != -1) {
		switch (opt) {
		case 'z': zone = optarg; break;
		case 'f':
			if (!parse_time(optarg, &from)) {
				fprintf(stderr,
				        "pgvigilctl: schedule: bad --from \"%s\" (want RFC 3339, e.g. "
				        "2026-03-29T00:00:00Z)\n",
				        optarg);
				return EXIT_USAGE;
			}
			break;
		case 'n':
			count = strtol(optarg, &end, 10);
			if (*end != '\0' || count < 1 || count > 100000) {
				fprintf(stderr, "pgvigilctl: schedule: --count wants 1..100000\n");
				return EXIT_USAGE;
			}
			break;
		default: return EXIT_USAGE;
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr,
		        "usage: pgvigilctl schedule \"CRON\" [--tz ZONE] [--from TIME] [--count N]\n");
		return EXIT_USAGE;
	}
	if (!pv_cron_parse(argv[optind], &cron, &err)) {
		fprintf(stderr, "pgvigilctl: schedule: %s\n", err.msg);
		return EXIT_USAGE;
	}
	if (!pv_tz_load(zone, &tz, &err)) {
		fprintf(stderr, "pgvigilctl: schedule: %s\n", err.msg);
		pv_cron_free(cron);
		return EXIT_USAGE;
	}
	for (long i = 0; i < count; i++) {
		char buf[32];
		struct tm tm;
		time_t next;
		if (!pv_cron_next(cron, tz, from, &next)) {
			if (i == 0) {
				fprintf(stderr, "pgvigilctl: schedule: \"%s\" never runs\n", argv[optind]);
				pv_cron_free(cron);
				pv_tz_free(tz);
				return EXIT_FAILED;
			}
			break;
		}
		gmtime_r(&next, &tm);
		strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
		puts(buf);
		from = next;
	}
	pv_cron_free(cron);
	pv_tz_free(tz);
	return EXIT_OK;
}

/* ---- main ---- */

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
	        {"socket", required_argument, NULL, 's'},
	        {"json", no_argument, NULL, 'j'},
	        {"help", no_argument, NULL, 'h'},
	        {"version", no_argument, NULL, 'V'},
	        {NULL, 0, NULL, 0},
	};
	struct cli cli = {0};
	json_t *resp = NULL, *data = NULL, *req;
	const char *cmd;
	int opt, rc;

	cli.socket = getenv("PGVIGIL_SOCKET");
	if (cli.socket == NULL || cli.socket[0] == '\0')
		cli.socket = DEFAULT_SOCKET;
	/* '+': stop at the command, so its own options are left for it. */
	while ((opt = getopt_long(argc, argv, "+s:jhV", opts, NULL)) != -1) {
		switch (opt) {
		case 's': cli.socket = optarg; break;
		case 'j': cli.json = true; break;
		case 'h': usage(stdout); return EXIT_OK;
		case 'V': printf("pgvigilctl %s\n", PV_VERSION); return EXIT_OK;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	cmd = argv[optind];
	argc -= optind;
	argv += optind;

	if (strcmp(cmd, "schedule") == 0)
		return cmd_schedule(argc, argv);
	if (strcmp(cmd, "decrypt") == 0)
		return cmd_decrypt(argc, argv);
	if (strcmp(cmd, "verify-file") == 0)
		return cmd_verify_file(argc, argv);
	if (strcmp(cmd, "restore") == 0)
		return pv_cli_restore(cli.socket, cli.json, argc, argv);

	if (strcmp(cmd, "status") == 0 || strcmp(cmd, "jobs") == 0 || strcmp(cmd, "reload") == 0) {
		if (argc != 1) {
			fprintf(stderr, "pgvigilctl: %s takes no arguments\n", cmd);
			return EXIT_USAGE;
		}
		req = pv_ctl_request_new(cmd, NULL);
	} else if (strcmp(cmd, "run") == 0) {
		if (argc != 2) {
			fprintf(stderr, "usage: pgvigilctl run JOB\n");
			return EXIT_USAGE;
		}
		req = pv_ctl_request_new("run", json_pack("{s:s}", "job", argv[1]));
	} else if (strcmp(cmd, "backups") == 0) {
		if (argc > 2) {
			fprintf(stderr, "usage: pgvigilctl backups [DATABASE]\n");
			return EXIT_USAGE;
		}
		req = pv_ctl_request_new("backups",
		                         argc == 2 ? json_pack("{s:s}", "database", argv[1]) : NULL);
	} else if (strcmp(cmd, "verify") == 0) {
		if (argc != 2) {
			fprintf(stderr, "usage: pgvigilctl verify BACKUP_ID\n");
			return EXIT_USAGE;
		}
		cli.no_timeout = true;
		req = pv_ctl_request_new("verify", json_pack("{s:s}", "backup", argv[1]));
	} else if (strcmp(cmd, "report") == 0) {
		if (argc > 2 || (argc == 2 && strcmp(argv[1], "--json") != 0)) {
			fprintf(stderr, "usage: pgvigilctl report [--json]\n");
			return EXIT_USAGE;
		}
		cli.json = cli.json || argc == 2;
		req = pv_ctl_request_new("report", NULL);
	} else if (strcmp(cmd, "alerts") == 0) {
		if (argc > 2 || (argc == 2 && strcmp(argv[1], "history") != 0)) {
			fprintf(stderr, "usage: pgvigilctl alerts [history]\n");
			return EXIT_USAGE;
		}
		req = pv_ctl_request_new("alerts", json_pack("{s:b}", "history", argc == 2));
	} else if (strcmp(cmd, "silence") == 0) {
		const char *sub = argc >= 2 ? argv[1] : "";
		if (strcmp(sub, "add") == 0 && argc >= 3) {
			int64_t secs = 0;
			const char *comment = NULL, *db = NULL;
			int from = 3;
			if (argc >= 4 && strncmp(argv[3], "--", 2) != 0) {
				db = argv[3];
				from = 4;
			}
			if (!parse_for_comment(argc, argv, from, &secs, &comment))
				return EXIT_USAGE;
			if (secs <= 0 || comment == NULL) {
				fprintf(stderr,
				        "usage: pgvigilctl silence add RULE [DATABASE] --for DURATION "
				        "--comment TEXT\n");
				return EXIT_USAGE;
			}
			req = pv_ctl_request_new("silence-add",
			                         json_pack("{s:s,s:o,s:I,s:s}", "rule", argv[2], "database",
			                                   db ? json_string(db) : json_null(), "for",
			                                   (json_int_t)secs, "comment", comment));
			cmd = "silence-add";
		} else if (strcmp(sub, "list") == 0 &&
		           (argc == 2 || (argc == 3 && strcmp(argv[2], "--all") == 0))) {
			req = pv_ctl_request_new("silences", json_pack("{s:b}", "all", argc == 3));
			cmd = "silences";
		} else if (strcmp(sub, "remove") == 0 && argc == 3) {
			char *end;
			long long id = strtoll(argv[2], &end, 10);
			if (*end != '\0' || id <= 0) {
				fprintf(stderr,
				        "pgvigilctl: silence remove: expected a silence id, got \"%s\"\n",
				        argv[2]);
				return EXIT_USAGE;
			}
			req = pv_ctl_request_new("silence-remove", json_pack("{s:I}", "id", (json_int_t)id));
			cmd = "silence-remove";
		} else {
			fprintf(stderr, "usage: pgvigilctl silence add RULE [DATABASE] --for DURATION "
			                "--comment TEXT\n"
			                "       pgvigilctl silence list [--all]\n"
			                "       pgvigilctl silence remove ID\n");
			return EXIT_USAGE;
		}
	} else if (strcmp(cmd, "maintenance") == 0) {
		int64_t secs = 0;
		const char *comment = NULL;
		bool on = argc >= 2 && strcmp(argv[1], "on") == 0;
		if (on && parse_for_comment(argc, argv, 2, &secs, &comment) && secs > 0) {
			req = pv_ctl_request_new("maintenance",
			                         json_pack("{s:b,s:I,s:o}", "on", 1, "for", (json_int_t)secs,
			                                   "comment",
			                                   comment ? json_string(comment) : json_null()));
		} else if (argc == 2 && strcmp(argv[1], "off") == 0) {
			req = pv_ctl_request_new("maintenance", json_pack("{s:b}", "on", 0));
		} else {
			fprintf(stderr, "usage: pgvigilctl maintenance on --for DURATION [--comment TEXT]\n"
			                "       pgvigilctl maintenance off\n");
			return EXIT_USAGE;
		}
	} else if (strcmp(cmd, "prune") == 0) {
		bool dry = argc == 2 && strcmp(argv[1], "--dry-run") == 0;
		if (argc > 2 || (argc == 2 && !dry)) {
			fprintf(stderr, "usage: pgvigilctl prune [--dry-run]\n");
			return EXIT_USAGE;
		}
		req = pv_ctl_request_new("prune", json_pack("{s:b}", "dry_run", dry));
	} else {
		fprintf(stderr, "pgvigilctl: unknown command \"%s\"\n", cmd);
		usage(stderr);
		return EXIT_USAGE;
	}

	rc = request(&cli, req, &resp, &data);
	if (rc == EXIT_OK && strcmp(cmd, "verify") == 0 && !json_is_true(json_object_get(data, "ok")))
		rc = EXIT_FAILED; /* the command worked, the backup did not */
	if (rc == EXIT_OK || (rc == EXIT_FAILED && data != NULL)) {
		if (cli.json) {
			json_dumpf(data, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
			fputc('\n', stdout);
		} else if (strcmp(cmd, "status") == 0) {
			print_status(data);
		} else if (strcmp(cmd, "jobs") == 0) {
			print_jobs(data);
		} else if (strcmp(cmd, "run") == 0) {
			printf("started %s: run %lld\n", str(data, "job", "?"),
			       (long long)json_integer_value(json_object_get(data, "run")));
		} else if (strcmp(cmd, "reload") == 0) {
			printf("configuration reloaded\n");
		} else if (strcmp(cmd, "backups") == 0) {
			print_backups(data);
		} else if (strcmp(cmd, "prune") == 0) {
			print_prune(data);
		} else if (strcmp(cmd, "alerts") == 0) {
			print_alerts(data);
		} else if (strcmp(cmd, "silences") == 0) {
			print_silences(data);
		} else if (strcmp(cmd, "silence-add") == 0) {
			printf("silence %lld added: %s on %s until %s\n",
			       (long long)json_integer_value(json_object_get(data, "id")),
			       str(data, "rule", "?"), str(data, "database", "every database"),
			       str(data, "until", "?"));
		} else if (strcmp(cmd, "silence-remove") == 0) {
			printf("silence %lld removed\n",
			       (long long)json_integer_value(json_object_get(data, "removed")));
		} else if (strcmp(cmd, "maintenance") == 0) {
			json_t *m = json_object_get(data, "maintenance");
			if (json_is_object(m))
				printf("maintenance on until %s: notifications are held back\n",
				       str(m, "until", "?"));
			else
				printf("maintenance off\n");
		} else if (strcmp(cmd, "report") == 0) {
			pv_cli_report(data, false);
		} else if (strcmp(cmd, "verify") == 0) {
			if (json_is_true(json_object_get(data, "ok"))) {
				printf("verified %s/%s/%s in %.1fs\n", str(data, "database", "?"),
				       str(data, "job", "?"), str(data, "id", "?"),
				       json_number_value(json_object_get(data, "seconds")));
			} else {
				printf("verification FAILED for %s/%s/%s: %s\n", str(data, "database", "?"),
				       str(data, "job", "?"), str(data, "id", "?"), str(data, "cause", "?"));
			}
		}
	}
	json_decref(resp);
	return rc;
}
