/* Shared by the libFuzzer targets: a private scratch directory, a fixed environment, file helpers. */
#include "fuzz.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/log.h"

static char scratch[4096];

static int
remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void
remove_scratch(void)
{
	if (scratch[0] != '\0')
		nftw(scratch, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

const char *
pv_fuzz_scratch(void)
{
	const char *tmp;

	if (scratch[0] != '\0')
		return scratch;
	tmp = getenv("TMPDIR");
	snprintf(scratch, sizeof(scratch), "%s/pgvigil-fuzz.XXXXXX",
	         tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
	if (mkdtemp(scratch) == NULL) {
		perror("pgvigil fuzz: mkdtemp");
		abort();
	}
	atexit(remove_scratch);
	/* The code under test logs some failures; the fuzzer's output should show only findings. */
	pv_log_set_level(PV_LOG_CRIT);
	return scratch;
}

void
pv_fuzz_environment(const char *const *vars)
{
	char *keep[2] = {NULL, NULL};
	const char *names[2] = {"PATH", "TMPDIR"};

	for (int i = 0; i < 2; i++) {
		const char *v = getenv(names[i]);
		keep[i] = v != NULL ? strdup(v) : NULL;
	}
	clearenv();
	for (int i = 0; i < 2; i++) {
		if (keep[i] != NULL)
			setenv(names[i], keep[i], 1);
		free(keep[i]);
	}
	for (; vars != NULL && *vars != NULL; vars++)
		putenv((char *)*vars);
}

void
pv_fuzz_write_file(const char *path, const void *data, size_t len, unsigned mode)
{
	FILE *f = fopen(path, "wb");

	if (f == NULL || (len > 0 && fwrite(data, 1, len, f) != len) || fclose(f) != 0 ||
	    chmod(path, (mode_t)mode) != 0) {
		perror(path);
		abort();
	}
}

void
pv_fuzz_fail(const char *fmt, ...)
{
	va_list ap;

	fputs("pgvigil fuzz: invariant violated: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	abort();
}
