/*
 * Fuzz target: the configuration loader (pv_config_load), the input being the YAML file.
 *
 * The loader opens secret and key files named by the configuration and reads env: secrets. Here
 * every open(2) it makes outside the scratch directory is redirected (link with -Wl,--wrap=open)
 * to scratch/files/BASENAME, where a few key and secret files with good and bad contents and
 * modes exist, and the environment is a fixed one. The only other files read are time zones, from
 * the system's zoneinfo directory (pv_tz_load refuses names with ".." or a leading '/').
 *
 * Checked beyond memory safety: failure comes with at least one error and success with none; the
 * printed effective configuration loads again without errors and prints the same way; the job
 * planner (src/sched/sched.c) accepts the jobs as the daemon hands them over and plans them for a
 * few ticks, a year apart.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"
#include "daemon.h"
#include "sched/cron.h"
#include "sched/sched.h"
#include "fuzz.h"

static char files_dir[4096 + 16];
static char config_path[4096 + 32];

int __real_open(const char *path, int flags, ...);
int __wrap_open(const char *path, int flags, ...);

static bool
inside_scratch(const char *path)
{
	const char *dir = pv_fuzz_scratch();
	size_t n = strlen(dir);

	return strncmp(path, dir, n) == 0 && path[n] == '/' && strstr(path, "/..") == NULL;
}

int
__wrap_open(const char *path, int flags, ...)
{
	char mapped[sizeof(files_dir) + 256];
	unsigned mode = 0;

	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		mode = va_arg(ap, unsigned);
		va_end(ap);
	}
	if (path != NULL && !inside_scratch(path)) {
		const char *base = strrchr(path, '/') != NULL ? strrchr(path, '/') + 1 : path;

		if (base[0] == '\0' || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
			base = "missing";
		snprintf(mapped, sizeof(mapped), "%s/%.200s", files_dir, base);
		path = mapped;
	}
	return __real_open(path, flags, mode);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const char *const env[] = {
	        "PGVIGIL_PRODUCTION_PASSWORD=fuzz-production",
	        "PGVIGIL_SCRATCH_PASSWORD=fuzz-scratch",
	        "PGVIGIL_SLACK_WEBHOOK_URL=https://hooks.slack.invalid/services/T/B/X",
	        "PGVIGIL_SMTP_PASSWORD=fuzz-smtp",
	        "DEMO_PASS=fuzz-demo",
	        "FUZZ_EMPTY=",
	        NULL};
	static const unsigned char raw_key[32] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
	                                          0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10,
	                                          0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
	                                          0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff};
	static const struct {
		const char *name, *content;
		size_t len;
		unsigned mode;
	} files[] = {
	        {"backup.key", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n", 65,
	         0600},
	        {"backup.key.2025", "f0e1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff\r\n",
	         66, 0400},
	        {"raw.key", (const char *)raw_key, sizeof(raw_key), 0600},
	        {"short.key", "0001020304\n", 11, 0600},
	        {"open.key", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n", 65, 0644},
	        {"production.pass", "fuzz-password\n", 14, 0600},
	        {"scratch.pass", "fuzz-password\r\n", 15, 0600},
	        {"smtp.pass", "fuzz-smtp", 9, 0600},
	        {"hook.secret", "fuzz-hook-secret\n", 17, 0600},
	        {"slack.url", "https://hooks.slack.invalid/services/T/B/X\n", 43, 0600},
	        {"hc.url", "https://hc-ping.invalid/uuid\n", 29, 0600},
	        {"empty.secret", "", 0, 0600},
	        {"nul.secret", "a\0b\n", 4, 0600},
	        {"world.secret", "readable\n", 9, 0644},
	};
	char path[sizeof(files_dir) + 64];

	(void)argc;
	(void)argv;
	pv_fuzz_environment(env);
	snprintf(files_dir, sizeof(files_dir), "%s/files", pv_fuzz_scratch());
	snprintf(config_path, sizeof(config_path), "%s/pgvigil.yaml", pv_fuzz_scratch());
	if (mkdir(files_dir, 0700) != 0)
		abort();
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", files_dir, files[i].name);
		pv_fuzz_write_file(path, files[i].content, files[i].len, files[i].mode);
	}
	snprintf(path, sizeof(path), "%s/dir.key", files_dir);
	if (mkdir(path, 0700) != 0)
		abort();
	return 0;
}

/* A line kv_secret printed: "    KEY: "<redacted: SOURCE>"" for one of the secret keys. */
static bool
secret_line(const char *line, size_t len)
{
	static const char *const keys[] = {"password: ", "webhook_url: ", "url: ", "secret: "};

	while (len > 0 && *line == ' ') {
		line++;
		len--;
	}
	if (len > 0 && line[len - 1] == '\n')
		len--;
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		size_t k = strlen(keys[i]);

		if (len > k + 14 && strncmp(line, keys[i], k) == 0 &&
		    strncmp(line + k, "\"<redacted: ", 12) == 0 && strncmp(line + len - 2, ">\"", 2) == 0)
			return true;
	}
	return false;
}

/* The dump without the header naming the file and the lines of secrets, which are printed redacted. */
static char *
dump_comparable(const struct pv_config *cfg)
{
	char *text = NULL, *out, *o;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	if (f == NULL)
		abort();
	pv_config_dump(cfg, f);
	fclose(f);
	out = o = malloc(len + 1);
	if (out == NULL)
		abort();
	for (char *line = text, *nl; *line != '\0'; line = nl) {
		nl = strchr(line, '\n');
		nl = nl != NULL ? nl + 1 : line + strlen(line);
		if (line[0] == '#' || secret_line(line, (size_t)(nl - line)))
			continue;
		memcpy(o, line, (size_t)(nl - line));
		o += nl - line;
	}
	*o = '\0';
	free(text);
	return out;
}

/* The text with each secret line's value replaced by a URL (a valid value for every secret). */
static char *
unredact(const char *text)
{
	char *out = malloc(strlen(text) * 2 + 64), *o = out;

	if (out == NULL)
		abort();
	for (const char *line = text, *nl; *line != '\0'; line = nl) {
		nl = strchr(line, '\n');
		nl = nl != NULL ? nl + 1 : line + strlen(line);
		if (secret_line(line, (size_t)(nl - line))) {
			const char *colon = strchr(line, ':');

			o += sprintf(o, "%.*s: \"https://redacted.invalid\"\n", (int)(colon - line), line);
		} else {
			memcpy(o, line, (size_t)(nl - line));
			o += nl - line;
		}
	}
	*o = '\0';
	return out;
}

/* The jobs as daemon.c's sched_load gives them to the planner, then a few ticks and questions. */
static void
check_planner(const struct pv_config *cfg)
{
	struct pv_sched_job *jobs = calloc(cfg->n_jobs + 1, sizeof(*jobs));
	struct pv_sched *s = pv_sched_new(cfg->daemon.max_parallel_jobs);
	struct pv_error err;
	time_t wall = 1795485600; /* 2026-11-24T02:00:00Z */
	double mono = 1000.0;

	if (jobs == NULL)
		abort();
	for (size_t i = 0; i < cfg->n_jobs; i++) {
		const struct pv_config_job *job = &cfg->jobs[i];

		jobs[i] = pv_daemon_sched_job(job);
		/* Every other calendar job was last handled three days ago: catch-up. */
		jobs[i].has_last_slot = job->cron != NULL && i % 2 == 0;
		jobs[i].last_slot = wall - 3 * 86400;
	}
	PV_FUZZ_CHECK(pv_sched_configure(s, jobs, cfg->n_jobs, wall, mono, &err),
	              "the planner refuses the jobs of a configuration that loaded: %s", err.msg);
	for (int t = 0; t < 4; t++) {
		struct pv_sched_tick tick = {0};
		double sleep;

		pv_sched_tick(s, wall, mono, &tick);
		for (size_t i = 0; i < tick.nruns; i++)
			pv_sched_run_finished(s, tick.runs[i].job);
		pv_sched_tick_clear(&tick);
		sleep = pv_sched_next_wakeup(s, wall, mono);
		PV_FUZZ_CHECK(sleep >= 0 && sleep <= PV_SCHED_MAX_SLEEP, "wake-up in %g s", sleep);
		for (size_t i = 0; i < cfg->n_jobs; i++) {
			time_t when, slot;

			(void)pv_sched_next_start(s, cfg->jobs[i].name, wall, mono, &when);
			(void)pv_sched_next_due(s, cfg->jobs[i].name, &slot);
		}
		wall += t == 0 ? (time_t)sleep : 366 * 86400;
		mono += t == 0 ? sleep : 366 * 86400.0;
	}
	pv_sched_free(s);
	free(jobs);
}

static void
check_config(struct pv_config *cfg)
{
	struct pv_config_diag diag = {0};
	struct pv_error err;
	struct pv_config *again;
	char *text = NULL, *reload, *first, *second;
	size_t len = 0;
	FILE *f;

	for (size_t i = 0; i < cfg->n_jobs; i++) {
		const struct pv_config_job *job = &cfg->jobs[i];

		PV_FUZZ_CHECK(pv_config_job_find(cfg, job->name) == job, "job %s not found by name",
		              job->name);
		PV_FUZZ_CHECK((job->cron != NULL) != (job->every > 0),
		              "job %s: exactly one of schedule, every", job->name);
		PV_FUZZ_CHECK(pv_config_job_timeout(job) > 0, "job %s: no timeout", job->name);
	}
	for (size_t i = 0; i < cfg->n_databases; i++)
		PV_FUZZ_CHECK(pv_config_database_find(cfg, cfg->databases[i].name) == &cfg->databases[i],
		              "database %s not found by name", cfg->databases[i].name);

	check_planner(cfg);
	/* The printed configuration is YAML this loader reads back to the same configuration, once the
	 * redacted secrets are given values (URLs, as some secrets must be). */
	f = open_memstream(&text, &len);
	if (f == NULL)
		abort();
	pv_config_dump(cfg, f);
	fclose(f);
	reload = unredact(text);
	again = pv_config_load_string(config_path, reload, &diag, &err);
	if (again == NULL)
		pv_fuzz_fail("the printed configuration does not load: %s\n--- printed:\n%s",
		             diag.errors.n > 0 ? diag.errors.v[0] : err.msg, reload);
	first = dump_comparable(cfg);
	second = dump_comparable(again);
	if (strcmp(first, second) != 0)
		pv_fuzz_fail("the printed configuration loads differently\n--- first:\n%s\n--- reloaded:\n%s",
		             first, second);
	free(first);
	free(second);
	free(text);
	free(reload);
	pv_config_diag_free(&diag);
	pv_config_unref(again);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pv_config_diag diag = {0};
	struct pv_error err = {0};
	struct pv_config *cfg;

	/* Odd sizes are world-readable, which with inline secrets adds a warning. */
	pv_fuzz_write_file(config_path, data, size, size % 2 ? 0644 : 0600);
	cfg = pv_config_load(config_path, &diag, &err);
	if (cfg == NULL) {
		PV_FUZZ_CHECK(diag.errors.n > 0 && err.code != PV_OK, "failed without an error");
		PV_FUZZ_CHECK(strncmp(err.msg, diag.errors.v[0], sizeof(err.msg) - 1) == 0,
		              "err is not the first error: %s / %s", err.msg, diag.errors.v[0]);
	} else {
		PV_FUZZ_CHECK(diag.errors.n == 0, "loaded with %zu errors", diag.errors.n);
		check_config(cfg);
		pv_config_unref(cfg);
	}
	pv_config_diag_free(&diag);
	return 0;
}
