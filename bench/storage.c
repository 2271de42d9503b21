/* Throughput of the backup writer (zstd, SHA-256, AES-256-GCM, fsync) against `zstd -3 -c`; not built by
 * make. */
// gcc -std=c11 -D_GNU_SOURCE -O2 -Isrc src/util/*.c src/crypto/*.c src/storage/*.c src/loop/work.c
//     bench/storage.c $(pkg-config --cflags --libs libcrypto libzstd jansson libevent_core) -lpthread -lm
//     -o /tmp/bench_storage && /tmp/bench_storage [MiB] [DIR]
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <zstd.h>

#include "crypto/crypto.h"
#include "storage/storage.h"
#include "util/mem.h"

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* pg_dump -Fc -Z0 of realistic tables is mostly row text: ids, emails, JSON, timestamps, some noise. */
static void
make_data(const char *path, uint64_t size)
{
	FILE *f = fopen(path, "w");
	uint64_t x = 88172645463325252ull, written = 0;
	static const char *const words[] = {"alpha", "bravo",   "charlie", "delta",
	                                    "echo",  "foxtrot", "golf",    "hotel"};

	for (uint64_t row = 0; written < size; row++) {
		char line[400];
		int n;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		n = snprintf(line, sizeof(line),
		             "%llu\tuser%llu@example.com\t{\"plan\": \"%s\", \"score\": %llu, \"note\": \"%s "
		             "%s %llx\"}\t"
		             "%.2f\t2026-%02llu-%02llu %02llu:%02llu:%02llu.%06llu+00\n",
		             (unsigned long long)row, (unsigned long long)(x % 1000000), words[x % 8],
		             (unsigned long long)(x >> 40) % 1000, words[(x >> 3) % 8], words[(x >> 6) % 8],
		             (unsigned long long)(x >> 20), (double)(x % 100000) / 100.0,
		             (unsigned long long)(x % 12 + 1), (unsigned long long)(x % 28 + 1),
		             (unsigned long long)(x % 24), (unsigned long long)(x >> 8) % 60,
		             (unsigned long long)(x >> 16) % 60, (unsigned long long)(x >> 24) % 1000000);
		fwrite(line, 1, (size_t)n, f);
		written += (uint64_t)n;
	}
	fclose(f);
}

struct feeder {
	const char *path;
	int fd;
};

/* Stand-in for pg_dump: copy the (page-cached) data file into the pipe in 64 KiB writes. */
static void *
feed(void *arg)
{
	struct feeder *fd = arg;
	char *buf = pv_malloc(65536);
	int in = open(fd->path, O_RDONLY);
	ssize_t n;

	while ((n = read(in, buf, 65536)) > 0) {
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(fd->fd, buf + off, (size_t)(n - off));
			if (w < 0)
				goto out;
			off += w;
		}
	}
out:
	close(in);
	close(fd->fd);
	free(buf);
	return NULL;
}

struct outcome {
	struct pv_store_result r;
};

static void
done(struct pv_store_writer *w, const struct pv_store_result *r, void *arg)
{
	((struct outcome *)arg)->r = *r;
}

static void
run_writer(const char *data, const char *dir, const char *label, enum pv_compression comp, int workers,
           const struct pv_crypto_key *key, uint64_t size)
{
	struct event_base *base = event_base_new();
	char *out = pv_asprintf("%s/bench.out", dir);
	struct outcome o = {0};
	struct feeder f = {.path = data};
	struct pv_error err;
	pthread_t t;
	int fds[2];
	double t0;

	unlink(out);
	if (pipe2(fds, O_CLOEXEC) != 0)
		abort();
	f.fd = fds[1];
	struct pv_store_writer_opts opts = {.in_fd = fds[0],
	                                    .path = out,
	                                    .compression = comp,
	                                    .level = 3,
	                                    .key = key,
	                                    .zstd_workers = workers};
	t0 = now();
	pthread_create(&t, NULL, feed, &f);
	if (pv_store_writer_start(base, &opts, done, &o, &err) == NULL) {
		fprintf(stderr, "%s\n", err.msg);
		exit(1);
	}
	event_base_dispatch(base);
	pthread_join(t, NULL);
	if (!o.r.ok) {
		fprintf(stderr, "%s: %s\n", label, o.r.error.msg);
		exit(1);
	}
	printf("%-34s %7.3f s %8.1f MB/s  out %6.1f MB (%.1f%%)\n", label, now() - t0,
	       (double)size / 1e6 / (now() - t0), (double)o.r.bytes_out / 1e6,
	       100.0 * (double)o.r.bytes_out / (double)size);
	unlink(out);
	free(out);
	event_base_free(base);
}

static void
run_zstd_cli(const char *data, const char *dir, uint64_t size, const char *threads)
{
	char *out = pv_asprintf("%s/bench.cli.zst", dir);
	double t0 = now();
	pid_t pid = fork();
	struct stat st;
	int status;

	if (pid == 0) {
		int in = open(data, O_RDONLY), o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		dup2(in, 0);
		dup2(o, 1);
		execlp("zstd", "zstd", "-q", "-3", threads, "-c", (char *)NULL);
		_exit(127);
	}
	waitpid(pid, &status, 0);
	/* the writer fsyncs; make the comparison fair */
	{
		int fd = open(out, O_RDONLY);
		fsync(fd);
		close(fd);
	}
	stat(out, &st);
	printf("%-34s %7.3f s %8.1f MB/s  out %6.1f MB (%.1f%%)\n",
	       strcmp(threads, "-T1") == 0 ? "zstd -3 -T1 -c (CLI) + fsync" : "zstd -3 -T2 -c (CLI) + fsync",
	       now() - t0, (double)size / 1e6 / (now() - t0), (double)st.st_size / 1e6,
	       100.0 * (double)st.st_size / (double)size);
	unlink(out);
	free(out);
}

/* What libzstd holds for one writer after a long stream: the bounded part of the writer's memory. */
static void
zstd_memory(const char *data, int workers)
{
	ZSTD_CCtx *c = ZSTD_createCCtx();
	char *in = pv_malloc(1 << 20), *out = pv_malloc(256 << 10);
	int fd = open(data, O_RDONLY);
	size_t peak = 0;
	ssize_t n;

	ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, 3);
	ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
	ZSTD_CCtx_setParameter(c, ZSTD_c_nbWorkers, workers);
	while ((n = read(fd, in, 1 << 20)) > 0) {
		ZSTD_inBuffer ib = {in, (size_t)n, 0};
		while (ib.pos < ib.size) {
			ZSTD_outBuffer ob = {out, 256 << 10, 0};
			ZSTD_compressStream2(c, &ob, &ib, ZSTD_e_continue);
		}
		if (ZSTD_sizeof_CCtx(c) > peak)
			peak = ZSTD_sizeof_CCtx(c);
	}
	printf("libzstd context, level 3, workers=%d: %.2f MiB (+ 1.25 MiB writer buffers, + ~0.3 MiB with "
	       "AES)\n",
	       workers, (double)peak / (1 << 20));
	close(fd);
	ZSTD_freeCCtx(c);
	free(in);
	free(out);
}

int
main(int argc, char **argv)
{
	uint64_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 256;
	const char *dir = argc > 2 ? argv[2] : "/var/tmp";
	uint64_t size = mib << 20;
	char *data = pv_asprintf("%s/bench.data", dir);
	unsigned char raw[PV_CRYPTO_KEY_LEN] = {1, 2, 3};
	struct pv_crypto_key *key = pv_crypto_key_from_bytes(raw, "bench");
	struct rusage ru;

	signal(SIGPIPE, SIG_IGN);
	make_data(data, size);
	{
		/* warm the page cache so every run reads the input from memory */
		char *cat[] = {"cat", data, NULL};
		pid_t pid = fork();
		if (pid == 0) {
			int null = open("/dev/null", O_WRONLY);
			dup2(null, 1);
			execvp("cat", cat);
			_exit(127);
		}
		waitpid(pid, NULL, 0);
	}
	printf("input: %llu MiB of semi-compressible text rows, output to %s, 2 rounds\n",
	       (unsigned long long)mib, dir);
	for (int round = 0; round < 2; round++) {
		run_zstd_cli(data, dir, size, "-T1");
		run_zstd_cli(data, dir, size, "-T2");
		run_writer(data, dir, "writer none (hash + fsync)", PV_COMPRESSION_NONE, 0, NULL, size);
		run_writer(data, dir, "writer zstd-3", PV_COMPRESSION_ZSTD, 0, NULL, size);
		run_writer(data, dir, "writer zstd-3 + AES-256-GCM", PV_COMPRESSION_ZSTD, 0, key, size);
		run_writer(data, dir, "writer zstd-3 workers=1", PV_COMPRESSION_ZSTD, 1, NULL, size);
		run_writer(data, dir, "writer zstd-3 workers=1 + AES", PV_COMPRESSION_ZSTD, 1, key, size);
	}
	zstd_memory(data, 0);
	zstd_memory(data, 1);
	getrusage(RUSAGE_SELF, &ru);
	printf("peak RSS of this process: %.1f MiB (includes the data generator's stdio)\n",
	       ru.ru_maxrss / 1024.0);
	unlink(data);
	pv_crypto_key_free(key);
	free(data);
	return 0;
}
