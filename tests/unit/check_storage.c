/* Unit tests for src/storage: writer/reader round trips and failures, commit, cleanup, manifests, scan. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "crypto/crypto.h"
#include "jobs/catalog.h"
#include "loop/work.h"
#include "storage/storage.h"
#include "util/log.h"
#include "util/mem.h"

#define MiB (1024u * 1024u)

/* One directory for the whole run, created and removed outside the forked tests, so a failed
 * assertion (which exits the test process early) cannot leave files behind. */
static char root[64];
static char tmpfs_dir[128];
static int seq;

static char *
test_dir(void)
{
	char *d = pv_asprintf("%s/t%d-%d", root, (int)getpid(), seq++);

	ck_assert_int_eq(mkdir(d, 0700), 0);
	return d;
}

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (flag == FTW_DP)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

static int
run_cmd(const char *const argv[], const char *in_path, const char *out_path)
{
	pid_t pid = fork();
	int status;

	if (pid == 0) {
		if (in_path != NULL) {
			int fd = open(in_path, O_RDONLY);
			dup2(fd, 0);
		}
		if (out_path != NULL) {
			int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
			dup2(fd, 1);
		}
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void
setup_root(void)
{
	snprintf(root, sizeof(root), "/tmp/pv-check-storage.XXXXXX");
	if (mkdtemp(root) == NULL)
		abort();
	snprintf(tmpfs_dir, sizeof(tmpfs_dir), "%s/tmpfs", root);
	/* Writers and readers must survive a closed pipe; the one test that checks SIGPIPE resets this. */
	signal(SIGPIPE, SIG_IGN);
	pv_log_set_level(PV_LOG_WARNING);
}

static void
teardown_root(void)
{
	const char *um[] = {"umount", tmpfs_dir, NULL};
	struct stat st, rst;

	/* Only when a failed test left it mounted (another device than its parent). */
	if (stat(tmpfs_dir, &st) == 0 && stat(root, &rst) == 0 && st.st_dev != rst.st_dev)
		run_cmd(um, NULL, NULL);
	nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- deterministic archive data ---- */

enum kind { TEXT, RANDOM };

/* Block b of the stream: semi-compressible JSON-ish lines, or xorshift noise. */
static void
fill_block(unsigned char *buf, size_t len, uint64_t b, enum kind kind)
{
	if (kind == RANDOM) {
		uint64_t x = b * 0x9E3779B97F4A7C15ull + 1;

		for (size_t i = 0; i < len; i += 8) {
			uint64_t v;

			x ^= x >> 12;
			x ^= x << 25;
			x ^= x >> 27;
			v = x * 0x2545F4914F6CDD1Dull;
			memcpy(buf + i, &v, len - i < 8 ? len - i : 8);
		}
		return;
	}
	for (size_t pos = 0, row = b * 1000; pos < len; row++) {
		char line[200];
		int n = snprintf(line, sizeof(line),
		                 "%llu\tuser%llu@example.com\t{\"plan\": \"%s\", \"score\": %llu, \"tags\": "
		                 "[\"a\", \"b%llu\"]}\t2026-11-%02llu 02:%02llu:00+00\n",
		                 (unsigned long long)row, (unsigned long long)(row * 7919 % 100000),
		                 row % 3 ? "pro" : "free", (unsigned long long)(row * 31 % 997),
		                 (unsigned long long)(row % 17), (unsigned long long)(row % 28 + 1),
		                 (unsigned long long)(row % 60));
		size_t take = (size_t)n < len - pos ? (size_t)n : len - pos;

		memcpy(buf + pos, line, take);
		pos += take;
	}
}

struct producer {
	int fd;
	uint64_t size;
	enum kind kind;
	unsigned char sha[PV_CRYPTO_SHA256_LEN];
	uint64_t written;
	bool close_fd;
};

static void *
produce(void *arg)
{
	struct producer *p = arg;
	struct pv_crypto_sha256 *h = pv_crypto_sha256_new();
	unsigned char *buf = pv_malloc(65536);
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	for (uint64_t b = 0; p->written < p->size; b++) {
		size_t len = p->size - p->written < 65536 ? (size_t)(p->size - p->written) : 65536;
		size_t off = 0;

		fill_block(buf, len, b, p->kind);
		pv_crypto_sha256_update(h, buf, len);
		while (off < len) {
			ssize_t n = write(p->fd, buf + off, len - off);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0)
				goto out;
			off += (size_t)n;
		}
		p->written += len;
	}
out:
	pv_crypto_sha256_final(h, p->sha);
	pv_crypto_sha256_free(h);
	free(buf);
	if (p->close_fd)
		close(p->fd);
	return NULL;
}

static void
file_sha(const char *path, char hex[65])
{
	struct pv_crypto_sha256 *h = pv_crypto_sha256_new();
	unsigned char *buf = pv_malloc(MiB);
	int fd = open(path, O_RDONLY);
	ssize_t n;

	ck_assert_int_ge(fd, 0);
	while ((n = read(fd, buf, MiB)) > 0)
		pv_crypto_sha256_update(h, buf, (size_t)n);
	close(fd);
	pv_crypto_sha256_final_hex(h, hex);
	pv_crypto_sha256_free(h);
	free(buf);
}

static bool
exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0;
}

static off_t
file_size(const char *path)
{
	struct stat st;

	ck_assert_int_eq(stat(path, &st), 0);
	return st.st_size;
}

/* ---- running a writer or reader to completion ---- */

struct outcome {
	int calls;
	struct pv_store_result r;
};

static void
writer_cb(struct pv_store_writer *w, const struct pv_store_result *r, void *arg)
{
	struct outcome *o = arg;

	o->calls++;
	o->r = *r;
}

static void
reader_cb(struct pv_store_reader *rd, const struct pv_store_result *r, void *arg)
{
	struct outcome *o = arg;

	o->calls++;
	o->r = *r;
}

/* Store `size` bytes of `kind` data at path; in_hex receives the archive's SHA-256. */
static struct pv_store_result
store(const char *path, enum pv_compression comp, const struct pv_crypto_key *key, enum kind kind,
      uint64_t size, char in_hex[65])
{
	struct event_base *base = event_base_new();
	struct outcome o = {0};
	struct producer p = {.size = size, .kind = kind, .close_fd = true};
	struct pv_error err;
	pthread_t t;
	int fds[2];

	ck_assert_int_eq(pipe2(fds, O_CLOEXEC), 0);
	p.fd = fds[1];
	ck_assert_int_eq(pthread_create(&t, NULL, produce, &p), 0);
	struct pv_store_writer_opts opts = {
	        .in_fd = fds[0], .path = path, .compression = comp, .level = 3, .key = key};
	ck_assert_msg(pv_store_writer_start(base, &opts, writer_cb, &o, &err) != NULL, "%s", err.msg);
	event_base_dispatch(base);
	pthread_join(t, NULL);
	ck_assert_int_eq(o.calls, 1);
	if (in_hex != NULL)
		pv_crypto_hex(p.sha, sizeof(p.sha), in_hex);
	event_base_free(base);
	return o.r;
}

/* Read path back into out_path (NULL: discard), on a thread or synchronously. */
static struct pv_store_result
restore(const char *path, const struct pv_crypto_keyring *ring, const char *expect, const char *out_path,
        bool threaded)
{
	struct pv_store_reader_opts opts = {
	        .path = path, .ring = ring, .expect_sha256 = expect, .out_fd = -1};
	struct outcome o = {0};

	if (out_path != NULL) {
		opts.out_fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		ck_assert_int_ge(opts.out_fd, 0);
	}
	if (threaded) {
		struct event_base *base = event_base_new();
		struct pv_error err;

		ck_assert_msg(pv_store_reader_start(base, &opts, reader_cb, &o, &err) != NULL, "%s", err.msg);
		event_base_dispatch(base);
		event_base_free(base);
		ck_assert_int_eq(o.calls, 1);
	} else {
		pv_store_read_file(&opts, &o.r);
	}
	return o.r;
}

static struct pv_crypto_key *
test_key(unsigned char seed)
{
	unsigned char raw[PV_CRYPTO_KEY_LEN];

	memset(raw, seed, sizeof(raw));
	return pv_crypto_key_from_bytes(raw, "test key");
}

/* Write, check the result against the file, read back through both readers, compare. */
static void
round_trip(enum pv_compression comp, bool encrypt, enum kind kind, uint64_t size)
{
	char *dir = test_dir();
	struct pv_crypto_key *key = encrypt ? test_key(7) : NULL;
	struct pv_crypto_keyring *ring = pv_crypto_keyring_new();
	char *path = pv_asprintf("%s/%s", dir, pv_store_dump_name(comp, encrypt));
	char *out = pv_asprintf("%s/out", dir);
	char in_hex[65], hex[65];
	struct pv_store_result w, r;

	if (encrypt)
		pv_crypto_keyring_add(ring, test_key(7), true);
	w = store(path, comp, key, kind, size, in_hex);
	ck_assert_msg(w.ok, "size %llu: %s", (unsigned long long)size, w.error.msg);
	ck_assert_uint_eq(w.bytes_in, size);
	ck_assert_uint_eq(w.bytes_out, (uint64_t)file_size(path));
	file_sha(path, hex);
	ck_assert_str_eq(w.sha256, hex);
	ck_assert_int_eq(file_size(path) > 0, comp == PV_COMPRESSION_ZSTD || encrypt || size > 0);
	if (comp == PV_COMPRESSION_ZSTD && kind == TEXT && size >= MiB)
		ck_assert_msg(w.bytes_out < size / 3, "text should compress: %llu -> %llu",
		              (unsigned long long)size, (unsigned long long)w.bytes_out);
	for (int threaded = 0; threaded < 2; threaded++) {
		r = restore(path, ring, w.sha256, out, threaded);
		ck_assert_msg(r.ok, "size %llu threaded %d: %s", (unsigned long long)size, threaded,
		              r.error.msg);
		ck_assert_uint_eq(r.bytes_in, size);
		ck_assert_uint_eq(r.bytes_out, w.bytes_out);
		ck_assert_str_eq(r.sha256, w.sha256);
		file_sha(out, hex);
		ck_assert_str_eq(hex, in_hex);
	}
	pv_crypto_keyring_free(ring);
	pv_crypto_key_free(key);
	free(path);
	free(out);
	free(dir);
}

static const uint64_t sizes[] = {0, 1, MiB, 64 * MiB};

START_TEST(test_storage__round_trip_zstd)
{
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		round_trip(PV_COMPRESSION_ZSTD, false, TEXT, sizes[i]);
		round_trip(PV_COMPRESSION_ZSTD, false, RANDOM, sizes[i]);
	}
}
END_TEST

START_TEST(test_storage__round_trip_none)
{
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		round_trip(PV_COMPRESSION_NONE, false, i % 2 ? TEXT : RANDOM, sizes[i]);
	round_trip(PV_COMPRESSION_NONE, true, TEXT, MiB + 17);
}
END_TEST

START_TEST(test_storage__round_trip_encrypted)
{
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		round_trip(PV_COMPRESSION_ZSTD, true, TEXT, sizes[i]);
		round_trip(PV_COMPRESSION_ZSTD, true, RANDOM, sizes[i]);
	}
}
END_TEST

/* The stored file is a standard zstd frame and its recorded hash is sha256sum's. */
START_TEST(test_storage__zstd_binary_and_sha256sum_agree)
{
	char *dir = test_dir();
	char *path = pv_asprintf("%s/dump.zst", dir);
	char *out = pv_asprintf("%s/out", dir);
	char *sum = pv_asprintf("%s/sum", dir);
	char in_hex[65], hex[65], line[200] = {0};
	const char *zstd[] = {"zstd", "-q", "-dc", path, NULL};
	const char *sha[] = {"sha256sum", path, NULL};
	struct pv_store_result w = store(path, PV_COMPRESSION_ZSTD, NULL, TEXT, 3 * MiB + 5, in_hex);
	FILE *f;

	ck_assert_msg(w.ok, "%s", w.error.msg);
	ck_assert_int_eq(run_cmd(zstd, NULL, out), 0);
	file_sha(out, hex);
	ck_assert_str_eq(hex, in_hex);
	ck_assert_int_eq(run_cmd(sha, NULL, sum), 0);
	f = fopen(sum, "r");
	ck_assert_ptr_nonnull(fgets(line, sizeof(line), f));
	fclose(f);
	line[64] = '\0';
	ck_assert_str_eq(line, w.sha256);
	/* mode 0600 */
	struct stat st;
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	free(path);
	free(out);
	free(sum);
	free(dir);
}
END_TEST

static void
flip_byte(const char *path, off_t at)
{
	int fd = open(path, O_RDWR);
	unsigned char c;

	ck_assert_int_eq(pread(fd, &c, 1, at), 1);
	c ^= 0x40;
	ck_assert_int_eq(pwrite(fd, &c, 1, at), 1);
	close(fd);
}

static void
append(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_APPEND);

	ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
	close(fd);
}

static void
copy_file(const char *from, const char *to)
{
	const char *cp[] = {"cp", from, to, NULL};

	ck_assert_int_eq(run_cmd(cp, NULL, NULL), 0);
}

/* Expect both readers to fail with a message containing want. */
static void
expect_read_fails(const char *path, const struct pv_crypto_keyring *ring, const char *expect,
                  const char *want)
{
	for (int threaded = 0; threaded < 2; threaded++) {
		struct pv_store_result r = restore(path, ring, expect, NULL, threaded);

		ck_assert_msg(!r.ok, "%s: read should fail (%s)", path, want);
		ck_assert_msg(strstr(r.error.msg, want) != NULL, "%s: got \"%s\", want \"%s\"", path,
		              r.error.msg, want);
	}
}

START_TEST(test_storage__reader_detects_damage)
{
	char *dir = test_dir();
	struct pv_crypto_keyring *ring = pv_crypto_keyring_new();
	struct pv_crypto_key *key = test_key(1);
	char *zst = pv_asprintf("%s/dump.zst", dir);
	char *enc = pv_asprintf("%s/dump.zst.enc", dir);
	char *bad = pv_asprintf("%s/bad/dump.zst", dir);
	char *bad_enc = pv_asprintf("%s/bad/dump.zst.enc", dir);
	char *bad_dir = pv_asprintf("%s/bad", dir);
	struct pv_store_result w, we;
	off_t size;

	ck_assert_int_eq(mkdir(bad_dir, 0700), 0);
	pv_crypto_keyring_add(ring, test_key(1), true);
	w = store(zst, PV_COMPRESSION_ZSTD, NULL, RANDOM, 2 * MiB, NULL);
	ck_assert(w.ok);
	we = store(enc, PV_COMPRESSION_ZSTD, key, TEXT, 2 * MiB, NULL);
	ck_assert(we.ok);
	size = file_size(zst);

	/* One flipped byte in the middle: caught by the zstd content checksum or block checks. */
	copy_file(zst, bad);
	flip_byte(bad, size / 2);
	expect_read_fails(bad, NULL, NULL, "decompressing");
	/* ... and in the very last byte, which is the checksum itself. */
	copy_file(zst, bad);
	flip_byte(bad, size - 1);
	expect_read_fails(bad, NULL, NULL, "checksum");

	/* Truncations: mid-stream and just the last byte. */
	copy_file(zst, bad);
	ck_assert_int_eq(truncate(bad, size / 2), 0);
	expect_read_fails(bad, NULL, NULL, "truncated");
	copy_file(zst, bad);
	ck_assert_int_eq(truncate(bad, size - 1), 0);
	expect_read_fails(bad, NULL, NULL, "truncated");

	/* Trailing garbage, including a whole second valid frame. */
	copy_file(zst, bad);
	append(bad, "x", 1);
	expect_read_fails(bad, NULL, NULL, "trailing garbage");
	{
		char *second = pv_asprintf("%s/second.zst", dir);
		char *data;
		int fd;

		ck_assert(store(second, PV_COMPRESSION_ZSTD, NULL, TEXT, 100, NULL).ok);
		data = pv_malloc((size_t)file_size(second));
		fd = open(second, O_RDONLY);
		ck_assert_int_eq(read(fd, data, (size_t)file_size(second)), file_size(second));
		close(fd);
		copy_file(zst, bad);
		append(bad, data, (size_t)file_size(second));
		expect_read_fails(bad, NULL, NULL, "trailing garbage");
		free(data);
		free(second);
	}

	/* Expected checksum from the manifest. */
	expect_read_fails(zst, NULL, "0000000000000000000000000000000000000000000000000000000000000000",
	                  "checksum mismatch: manifest says 0000");

	/* Encrypted: flipped byte, truncation, trailing bytes, wrong and missing key. */
	size = file_size(enc);
	copy_file(enc, bad_enc);
	flip_byte(bad_enc, size / 2);
	expect_read_fails(bad_enc, ring, NULL, "decrypting");
	copy_file(enc, bad_enc);
	ck_assert_int_eq(truncate(bad_enc, size - 10), 0);
	expect_read_fails(bad_enc, ring, NULL, "decrypting");
	copy_file(enc, bad_enc);
	append(bad_enc, "junk", 4);
	expect_read_fails(bad_enc, ring, NULL, "decrypting");
	{
		struct pv_crypto_keyring *wrong = pv_crypto_keyring_new();

		pv_crypto_keyring_add(wrong, test_key(2), true);
		expect_read_fails(enc, wrong, NULL, "not configured");
		expect_read_fails(enc, NULL, NULL, pv_crypto_key_fingerprint(key));
		pv_crypto_keyring_free(wrong);
	}
	/* A plain zstd file that is named .enc is not mistaken for one. */
	copy_file(zst, bad_enc);
	expect_read_fails(bad_enc, ring, NULL, "decrypting");
	/* Missing file: the synchronous reader says so; the threaded one fails to start and leaves
	 * out_fd to the caller. */
	{
		struct pv_store_result r = restore("/nonexistent/dump.zst", NULL, NULL, NULL, false);
		struct event_base *base = event_base_new();
		struct pv_error err;
		int fds[2];

		ck_assert(!r.ok);
		ck_assert_int_eq(r.error.code, PV_ERR_NOT_FOUND);
		ck_assert_int_eq(pipe2(fds, O_CLOEXEC), 0);
		struct pv_store_reader_opts opts = {.path = "/nonexistent/dump.zst", .out_fd = fds[1]};
		ck_assert_ptr_null(pv_store_reader_start(base, &opts, reader_cb, NULL, &err));
		ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
		ck_assert_int_eq(write(fds[1], "x", 1), 1);
		close(fds[0]);
		close(fds[1]);
		event_base_free(base);
	}
	pv_crypto_key_free(key);
	pv_crypto_keyring_free(ring);
	free(zst);
	free(enc);
	free(bad);
	free(bad_enc);
	free(bad_dir);
	free(dir);
}
END_TEST

START_TEST(test_storage__writer_start_errors)
{
	char *dir = test_dir();
	char *path = pv_asprintf("%s/dump.zst", dir);
	struct event_base *base = event_base_new();
	struct outcome o = {0};
	struct pv_error err;
	int fds[2];
	char c;

	ck_assert(store(path, PV_COMPRESSION_ZSTD, NULL, TEXT, 10, NULL).ok);
	ck_assert_int_eq(pipe2(fds, O_CLOEXEC), 0);
	struct pv_store_writer_opts opts = {.in_fd = fds[0], .path = path};
	ck_assert_ptr_null(pv_store_writer_start(base, &opts, writer_cb, &o, &err));
	ck_assert_msg(strstr(err.msg, path) != NULL && strstr(err.msg, "File exists") != NULL, "%s", err.msg);
	/* in_fd was taken over and closed: the producer sees EPIPE, not a hang. */
	ck_assert_int_eq(write(fds[1], "x", 1), -1);
	ck_assert_int_eq(errno, EPIPE);
	ck_assert_int_eq(event_base_dispatch(base), 1); /* nothing pending */
	ck_assert_int_eq(o.calls, 0);
	close(fds[1]);
	(void)c;
	event_base_free(base);
	free(path);
	free(dir);
}
END_TEST

START_TEST(test_storage__writer_disk_full)
{
	const char *mnt[] = {"mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", tmpfs_dir, NULL};
	const char *um[] = {"umount", tmpfs_dir, NULL};
	char *path = pv_asprintf("%s/dump.zst", tmpfs_dir);
	struct pv_store_result w;

	if (geteuid() != 0) {
		printf("test_storage__writer_disk_full: skipped (not root, cannot mount a tmpfs)\n");
		free(path);
		return;
	}
	mkdir(tmpfs_dir, 0700);
	if (run_cmd(mnt, NULL, "/dev/null") != 0) {
		printf("test_storage__writer_disk_full: skipped (mount -t tmpfs not permitted here)\n");
		free(path);
		return;
	}
	w = store(path, PV_COMPRESSION_ZSTD, NULL, RANDOM, 8 * MiB, NULL);
	printf("test_storage__writer_disk_full: %s\n", w.error.msg);
	ck_assert(!w.ok);
	ck_assert_msg(strstr(w.error.msg, path) != NULL &&
	                      strstr(w.error.msg, "No space left on device") != NULL,
	              "%s", w.error.msg);
	ck_assert(!exists(path));
	/* compression none and encrypted hit the same wall the same way */
	{
		struct pv_crypto_key *key = test_key(3);
		char *p2 = pv_asprintf("%s/dump.enc", tmpfs_dir);

		w = store(p2, PV_COMPRESSION_NONE, key, TEXT, 8 * MiB, NULL);
		ck_assert(!w.ok);
		ck_assert_msg(strstr(w.error.msg, "No space left on device") != NULL, "%s", w.error.msg);
		ck_assert(!exists(p2));
		pv_crypto_key_free(key);
		free(p2);
	}
	ck_assert_int_eq(run_cmd(um, NULL, NULL), 0);
	free(path);
}
END_TEST

static void
cancel_on_timer(evutil_socket_t fd, short what, void *arg)
{
	pv_store_writer_cancel(arg);
}

START_TEST(test_storage__writer_cancel)
{
	char *dir = test_dir();
	char *path = pv_asprintf("%s/dump.zst", dir);
	struct event_base *base = event_base_new();
	struct outcome o = {0};
	struct pv_error err;
	struct pv_store_writer *w;
	struct timeval tv = {0, 100000};
	int fds[2];

	/* A producer that sent some bytes and then stalls with the pipe open: the thread sits in poll. */
	ck_assert_int_eq(pipe2(fds, O_CLOEXEC), 0);
	ck_assert_int_eq(write(fds[1], "hello", 5), 5);
	struct pv_store_writer_opts opts = {
	        .in_fd = fds[0], .path = path, .compression = PV_COMPRESSION_ZSTD};
	w = pv_store_writer_start(base, &opts, writer_cb, &o, &err);
	ck_assert_ptr_nonnull(w);
	event_base_once(base, -1, EV_TIMEOUT, cancel_on_timer, w, &tv);
	event_base_dispatch(base);
	ck_assert_int_eq(o.calls, 1);
	ck_assert(!o.r.ok);
	ck_assert_str_eq(o.r.error.msg, "cancelled");
	ck_assert_uint_eq(o.r.bytes_in, 5);
	ck_assert(!exists(path));
	close(fds[1]);

	/* Cancelled after the thread finished but before the loop delivered the result: still no file. */
	memset(&o, 0, sizeof(o));
	ck_assert_int_eq(pipe2(fds, O_CLOEXEC), 0);
	ck_assert_int_eq(write(fds[1], "hello", 5), 5);
	close(fds[1]);
	opts.in_fd = fds[0];
	w = pv_store_writer_start(base, &opts, writer_cb, &o, &err);
	ck_assert_ptr_nonnull(w);
	for (int i = 0; i < 200 && pv_store_writer_progress(w) < 5; i++)
		usleep(10000);
	usleep(200000); /* the fsync and close of a tiny file */
	ck_assert(exists(path));
	pv_store_writer_cancel(w);
	event_base_dispatch(base);
	ck_assert_int_eq(o.calls, 1);
	ck_assert(!o.r.ok);
	ck_assert_str_eq(o.r.error.msg, "cancelled");
	ck_assert(!exists(path));
	event_base_free(base);
	free(path);
	free(dir);
}
END_TEST

/* With the writer thread held, the producer can get at most a pipe's worth ahead, then blocks. */
START_TEST(test_storage__writer_backpressure)
{
	char *dir = test_dir();
	char *path = pv_asprintf("%s/dump.zst", dir);
	struct event_base *base = event_base_new();
	struct outcome o = {0};
	struct pv_error err;
	struct pv_store_writer *w;
	unsigned char *buf = pv_calloc(1, 65536);
	uint64_t sent = 0;
	int fds[2], cap;

	ck_assert_int_eq(pipe2(fds, O_CLOEXEC), 0);
	struct pv_store_writer_opts opts = {.in_fd = fds[0],
	                                    .path = path,
	                                    .compression = PV_COMPRESSION_ZSTD,
	                                    .test_block_delay_ms = 1500};
	w = pv_store_writer_start(base, &opts, writer_cb, &o, &err);
	ck_assert_ptr_nonnull(w);
	cap = fcntl(fds[1], F_GETPIPE_SZ);
	ck_assert_int_gt(cap, 0);
	ck_assert_int_eq(fcntl(fds[1], F_SETFL, O_NONBLOCK), 0);
	for (;;) {
		ssize_t n = write(fds[1], buf, 65536);

		if (n < 0) {
			ck_assert_int_eq(errno, EAGAIN);
			break;
		}
		sent += (uint64_t)n;
		ck_assert_uint_le(sent, (uint64_t)cap);
	}
	ck_assert_uint_eq(sent, (uint64_t)cap);
	ck_assert_uint_eq(pv_store_writer_progress(w), 0);
	close(fds[1]);
	event_base_dispatch(base);
	ck_assert_int_eq(o.calls, 1);
	ck_assert_msg(o.r.ok, "%s", o.r.error.msg);
	ck_assert_uint_eq(o.r.bytes_in, sent);
	event_base_free(base);
	free(buf);
	free(path);
	free(dir);
}
END_TEST

struct drain {
	int fd;
	size_t stop_after;
	size_t got;
};

static void *
drain_some(void *arg)
{
	struct drain *d = arg;
	char buf[4096];

	while (d->got < d->stop_after) {
		ssize_t n = read(d->fd, buf, sizeof(buf));
		if (n <= 0)
			break;
		d->got += (size_t)n;
	}
	close(d->fd);
	return NULL;
}

/* pg_restore dying mid-restore: a clear error, and no death by SIGPIPE even when it is not ignored. */
START_TEST(test_storage__reader_consumer_closes)
{
	char *dir = test_dir();
	char *path = pv_asprintf("%s/dump.zst", dir);

	ck_assert(store(path, PV_COMPRESSION_ZSTD, NULL, TEXT, 8 * MiB, NULL).ok);
	signal(SIGPIPE, SIG_DFL);
	for (int threaded = 0; threaded < 2; threaded++) {
		struct drain d = {.stop_after = 100000};
		struct outcome o = {0};
		pthread_t t;
		int fds[2];

		ck_assert_int_eq(pipe2(fds, O_CLOEXEC), 0);
		d.fd = fds[0];
		ck_assert_int_eq(pthread_create(&t, NULL, drain_some, &d), 0);
		struct pv_store_reader_opts opts = {.path = path, .out_fd = fds[1]};
		if (threaded) {
			struct event_base *base = event_base_new();
			struct pv_error err;

			ck_assert_ptr_nonnull(pv_store_reader_start(base, &opts, reader_cb, &o, &err));
			event_base_dispatch(base);
			event_base_free(base);
			ck_assert_int_eq(o.calls, 1);
		} else {
			pv_store_read_file(&opts, &o.r);
		}
		pthread_join(t, NULL);
		ck_assert(!o.r.ok);
		ck_assert_msg(strstr(o.r.error.msg, "consumer closed the pipe") != NULL, "%s", o.r.error.msg);
		ck_assert_uint_ge(o.r.bytes_in, d.got);
	}
	/* The synchronous reader swallowed the SIGPIPE it caused: nothing is left pending. */
	sigset_t pending;
	sigpending(&pending);
	ck_assert(!sigismember(&pending, SIGPIPE));
	signal(SIGPIPE, SIG_IGN);
	free(path);
	free(dir);
}
END_TEST

static void
cancel_reader_on_timer(evutil_socket_t fd, short what, void *arg)
{
	pv_store_reader_cancel(arg);
}

START_TEST(test_storage__reader_cancel)
{
	char *dir = test_dir();
	char *path = pv_asprintf("%s/dump.zst", dir);
	struct event_base *base = event_base_new();
	struct outcome o = {0};
	struct pv_error err;
	struct pv_store_reader *r;
	struct timeval tv = {0, 200000};
	int fds[2];
	char c;

	ck_assert(store(path, PV_COMPRESSION_ZSTD, NULL, TEXT, 8 * MiB, NULL).ok);
	/* A consumer that never reads: the reader blocks on a full pipe until cancelled. */
	ck_assert_int_eq(pipe2(fds, O_CLOEXEC), 0);
	struct pv_store_reader_opts opts = {.path = path, .out_fd = fds[1]};
	r = pv_store_reader_start(base, &opts, reader_cb, &o, &err);
	ck_assert_ptr_nonnull(r);
	event_base_once(base, -1, EV_TIMEOUT, cancel_reader_on_timer, r, &tv);
	event_base_dispatch(base);
	ck_assert_int_eq(o.calls, 1);
	ck_assert(!o.r.ok);
	ck_assert_str_eq(o.r.error.msg, "cancelled");
	ck_assert_uint_gt(o.r.bytes_in, 0);
	ck_assert_uint_lt(o.r.bytes_in, 8 * MiB);
	/* out_fd was closed: the consumer sees EOF after the buffered bytes. */
	ck_assert_int_eq(fcntl(fds[0], F_SETFL, O_NONBLOCK), 0);
	while (read(fds[0], &c, 1) == 1) {
	}
	ck_assert_int_eq(read(fds[0], &c, 1), 0);
	close(fds[0]);
	event_base_free(base);
	free(path);
	free(dir);
}
END_TEST

/* ---- layout ---- */

START_TEST(test_storage__backup_id)
{
	char *a = pv_store_backup_id(1795485600, "daily"); /* 2026-11-24 02:00:00 UTC */
	char *b = pv_store_backup_id(1795485600 + 86400 * 40, "daily");
	char *c = pv_store_backup_id(0, "monthly");
	char *tier = NULL;
	time_t t;

	ck_assert_str_eq(a, "20261124T020000Z-daily");
	ck_assert_str_eq(b, "20270103T020000Z-daily");
	ck_assert_str_eq(c, "19700101T000000Z-monthly");
	ck_assert_int_lt(strcmp(a, b), 0);
	ck_assert_int_lt(strcmp(c, a), 0);
	ck_assert(pv_store_backup_id_parse(a, &t, &tier));
	ck_assert_int_eq(t, 1795485600);
	ck_assert_str_eq(tier, "daily");
	free(tier);
	/* pgvigil-backup(5): a taken name gets a suffix "-2", which still parses. */
	ck_assert(pv_store_backup_id_parse("20261124T020000Z-daily-2", NULL, NULL));
	ck_assert(!pv_store_backup_id_parse("2026112T020000Z-daily", NULL, NULL));
	ck_assert(!pv_store_backup_id_parse("20261124T020000Z-", NULL, NULL));
	ck_assert(!pv_store_backup_id_parse("20261124T020000Z", NULL, NULL));
	ck_assert(!pv_store_backup_id_parse("20261124X020000Z-daily", NULL, NULL));
	ck_assert(!pv_store_backup_id_parse("20261124T020000Z-a/b", NULL, NULL));
	ck_assert(!pv_store_backup_id_parse("", NULL, NULL));
	/* Found with the manifest fuzz target: dates and times that do not exist stood for other instants. */
	ck_assert(!pv_store_backup_id_parse("20260231T020000Z-daily", NULL, NULL));
	ck_assert(!pv_store_backup_id_parse("20301231T235960Z-weekly", NULL, NULL));
	ck_assert(!pv_store_backup_id_parse("20260229T000000Z-daily", NULL, NULL));
	ck_assert(
	        !pv_store_backup_id_parse("02261124T020000Z-daily", NULL, NULL)); /* written "2261124T..." */
	ck_assert(!pv_store_backup_id_parse("19691231T235959Z-daily", NULL, NULL));
	ck_assert(pv_store_backup_id_parse("20280229T235959Z-daily", &t, NULL));
	ck_assert_int_eq(t, 1835481599);
	free(a);
	free(b);
	free(c);
	{
		char *d = pv_store_backup_dir("/s", "db", "job", "ID");
		char *tmp = pv_store_temp_dir("/s", "db", "job", "ID");
		char *j = pv_store_job_dir("/s", "db", "job");
		ck_assert_str_eq(d, "/s/db/job/ID");
		ck_assert_str_eq(tmp, "/s/db/job/.tmp-ID");
		ck_assert_str_eq(j, "/s/db/job");
		free(d);
		free(tmp);
		free(j);
	}
}
END_TEST

static void
write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

struct commit_outcome {
	int calls;
	bool ok;
	char msg[PV_ERROR_MSG_MAX];
};

static void
commit_cb(bool ok, const struct pv_error *err, void *arg)
{
	struct commit_outcome *c = arg;

	c->calls++;
	c->ok = ok;
	snprintf(c->msg, sizeof(c->msg), "%s", ok ? "" : err->msg);
}

START_TEST(test_storage__commit)
{
	char *storage = test_dir();
	char *tmp, *tmp2, *tmp3, *final, *f;
	struct pv_error err;
	struct stat st;

	ck_assert(
	        pv_store_prepare_temp(storage, "prod", "daily-backup", "20261124T020000Z-daily", &tmp, &err));
	ck_assert_int_eq(stat(tmp, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0700);
	f = pv_asprintf("%s/dump.zst", tmp);
	write_text(f, "data");
	free(f);
	final = pv_store_backup_dir(storage, "prod", "daily-backup", "20261124T020000Z-daily");
	ck_assert(!exists(final));
	ck_assert_msg(pv_store_commit(tmp, final, &err), "%s", err.msg);
	ck_assert(exists(final));
	ck_assert(!exists(tmp));
	f = pv_asprintf("%s/dump.zst", final);
	ck_assert(exists(f));
	free(f);

	/* The same id again: the temporary can be made, the commit is refused. */
	ck_assert(pv_store_prepare_temp(storage, "prod", "daily-backup", "20261124T020000Z-daily", &tmp2,
	                                &err));
	ck_assert(!pv_store_commit(tmp2, final, &err));
	ck_assert_msg(strstr(err.msg, "already exists") != NULL, "%s", err.msg);
	ck_assert(exists(tmp2));
	/* An existing but empty target would be replaced by rename(2): also refused. */
	{
		char *empty = pv_store_backup_dir(storage, "prod", "daily-backup", "20261125T020000Z-daily");

		ck_assert_int_eq(mkdir(empty, 0700), 0);
		ck_assert(!pv_store_commit(tmp2, empty, &err));
		ck_assert_msg(strstr(err.msg, "already exists") != NULL, "%s", err.msg);
		free(empty);
	}
	/* A second temp for the same id while one exists is refused; bad names too. */
	ck_assert(!pv_store_prepare_temp(storage, "prod", "daily-backup", "20261124T020000Z-daily", &tmp3,
	                                 &err));
	ck_assert(!pv_store_prepare_temp(storage, "..", "daily-backup", "x", &tmp3, &err));
	ck_assert(!pv_store_prepare_temp(storage, "prod", "a/b", "x", &tmp3, &err));
	ck_assert(!pv_store_prepare_temp(storage, "prod", "job", ".tmp-x", &tmp3, &err));

	/* The asynchronous variant reports on the loop. */
	{
		struct event_base *base = event_base_new();
		struct commit_outcome c = {0};
		char *final2 = pv_store_backup_dir(storage, "prod", "daily-backup", "20261126T020000Z-daily");

		ck_assert(pv_store_commit_start(base, tmp2, final2, commit_cb, &c, &err));
		ck_assert(!exists(final2) || c.calls == 0);
		event_base_dispatch(base);
		ck_assert_int_eq(c.calls, 1);
		ck_assert_msg(c.ok, "%s", c.msg);
		ck_assert(exists(final2));
		memset(&c, 0, sizeof(c));
		ck_assert(pv_store_commit_start(base, "/nonexistent/.tmp-x", final2, commit_cb, &c, &err));
		event_base_dispatch(base);
		ck_assert_int_eq(c.calls, 1);
		ck_assert(!c.ok);
		ck_assert_msg(strstr(c.msg, "/nonexistent/.tmp-x") != NULL, "%s", c.msg);
		event_base_free(base);
		free(final2);
	}

	/* Removal. */
	ck_assert_msg(pv_store_remove_backup(final, &err), "%s", err.msg);
	ck_assert(!exists(final));
	ck_assert(!pv_store_remove_backup(final, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	free(tmp);
	free(tmp2);
	free(final);
	free(storage);
}
END_TEST

START_TEST(test_storage__cleanup_temp)
{
	char *storage = test_dir();
	char *outside = test_dir();
	char *p;
	struct pv_error err;
	char *tmp;

	/* A crash leftover with files, a nested directory and a symlink to a file outside. */
	ck_assert(pv_store_prepare_temp(storage, "prod", "daily", "20261124T020000Z-daily", &tmp, &err));
	p = pv_asprintf("%s/dump.zst", tmp);
	write_text(p, "partial");
	free(p);
	p = pv_asprintf("%s/nested", tmp);
	ck_assert_int_eq(mkdir(p, 0700), 0);
	free(p);
	p = pv_asprintf("%s/nested/x", tmp);
	write_text(p, "x");
	free(p);
	char *precious = pv_asprintf("%s/precious", outside);
	write_text(precious, "keep me");
	p = pv_asprintf("%s/link", tmp);
	ck_assert_int_eq(symlink(precious, p), 0);
	free(p);
	/* A committed backup stays. */
	p = pv_asprintf("%s/prod/daily/20261123T020000Z-daily", storage);
	ck_assert_int_eq(mkdir(p, 0700), 0);
	free(p);
	/* A job directory that is a symlink to elsewhere is not followed. */
	char *elsewhere_tmp = pv_asprintf("%s/.tmp-20261124T020000Z-daily", outside);
	ck_assert_int_eq(mkdir(elsewhere_tmp, 0700), 0);
	p = pv_asprintf("%s/prod/linked-job", storage);
	ck_assert_int_eq(symlink(outside, p), 0);
	free(p);

	ck_assert_uint_eq(pv_store_cleanup_temp(storage), 1);
	ck_assert(!exists(tmp));
	ck_assert(exists(precious));
	ck_assert(exists(elsewhere_tmp));
	p = pv_asprintf("%s/prod/daily/20261123T020000Z-daily", storage);
	ck_assert(exists(p));
	free(p);
	ck_assert_uint_eq(pv_store_cleanup_temp(storage), 0);
	ck_assert_uint_eq(pv_store_cleanup_temp("/nonexistent/storage"), 0);
	free(elsewhere_tmp);
	free(precious);
	free(tmp);
	free(outside);
	free(storage);
}
END_TEST

/* ---- manifest ---- */

static json_t *
good_manifest(const char *id, bool encrypted)
{
	json_t *m = json_pack(
	        "{s:i, s:s, s:s, s:s, s:s, s:s, s:s, s:f, s:s, s:i, s:s, s:{s:s, s:i}, s:s, s:s, s:s, s:i, "
	        "s:s, "
	        "s:{s:[], s:[s], s:[]}, s:{s:[s, s], s:{s:i, s:i}, s:{s:s}, s:s}, s:s}",
	        "manifest_version", 1, "id", id, "database", "prod", "job", "daily-backup", "tier", "daily",
	        "started", "2026-11-24T02:00:00Z", "finished", "2026-11-24T02:01:30.250Z", "duration", 90.25,
	        "file", encrypted ? "dump.zst.enc" : "dump.zst", "size", 12345, "sha256",
	        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "compression",
	        "algorithm", "zstd", "level", 3, "format", "custom", "pg_dump_version", "16.4",
	        "server_version", "16.3", "server_version_num", 160003, "snapshot", "00000003-0000001B-1",
	        "scope", "schemas", "exclude_schemas", "auth", "exclude_table_data", "expected", "tables",
	        "public.trips", "public.users", "row_counts", "public.users", 10, "public.trips", 0,
	        "critical_table_hashes", "public.users", "abc", "method", "pgvigil-rowhash-v1",
	        "pgvigil_version", "0.1.0");

	ck_assert_ptr_nonnull(m);
	if (encrypted)
		json_object_set_new(m, "encryption",
		                    json_pack("{s:s, s:s, s:i, s:i}", "algorithm", "AES-256-GCM",
		                              "key_fingerprint", "0123456789abcdef", "format_version", 1,
		                              "chunk_size", 65536));
	else
		json_object_set_new(m, "encryption", json_null());
	return m;
}

START_TEST(test_storage__manifest_round_trip)
{
	char *storage = test_dir();
	const char *id = "20261124T020000Z-daily";
	char *dir = pv_asprintf("%s/%s", storage, id);
	char *path = pv_asprintf("%s/manifest.json", dir);
	json_t *m = good_manifest(id, true), *back;
	struct pv_error err;
	struct stat st;
	char *text;
	FILE *f;
	char first[8] = {0};

	ck_assert_int_eq(mkdir(dir, 0700), 0);
	json_object_set_new(m, "extra", json_string("kept"));
	ck_assert_msg(pv_store_manifest_write(dir, m, &err), "%s", err.msg);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	back = pv_store_manifest_read(dir, &err);
	ck_assert_msg(back != NULL, "%s", err.msg);
	ck_assert(json_equal(m, back));
	/* Pretty-printed with sorted keys, so diffs between manifests read well. */
	f = fopen(path, "r");
	ck_assert_int_eq(fread(first, 1, 7, f), 7);
	fclose(f);
	ck_assert_str_eq(first, "{\n  \"co"); /* "compression" sorts first */
	text = pv_asprintf("%s/.manifest.json.tmp", dir);
	ck_assert(!exists(text));
	free(text);
	/* Overwriting works (retention rewrites nothing, but verify-file tooling might). */
	ck_assert(pv_store_manifest_write(dir, m, &err));
	json_decref(back);
	/* An invalid manifest is not written at all. */
	json_object_del(m, "sha256");
	ck_assert(!pv_store_manifest_write(dir, m, &err));
	ck_assert_msg(strstr(err.msg, "\"sha256\" is missing") != NULL, "%s", err.msg);
	json_decref(m);
	/* In the temporary directory the id matches with the prefix. */
	{
		char *tmp = pv_asprintf("%s/.tmp-%s", storage, id);
		json_t *m2 = good_manifest(id, false);

		ck_assert_int_eq(mkdir(tmp, 0700), 0);
		ck_assert_msg(pv_store_manifest_write(tmp, m2, &err), "%s", err.msg);
		json_decref(m2);
		free(tmp);
	}
	free(path);
	free(dir);
	free(storage);
}
END_TEST

/* A catalog rebuilt from storage reads the times of a manifest as validation accepts them, fractions of a
 * second included (they used to be read as 1970-01-01). */
START_TEST(test_storage__catalog_rebuild_reads_manifest_times)
{
	char *storage = test_dir();
	const char *id = "20261124T020000Z-daily";
	char *job = pv_asprintf("%s/prod/daily-backup", storage);
	char *dir = pv_asprintf("%s/%s", job, id);
	char *db = pv_asprintf("%s/state.db", storage);
	json_t *m = good_manifest(id, false);
	struct pv_state *st;
	struct pv_state_backup b = {0};
	struct pv_catalog_report rep;
	struct pv_error err;

	ck_assert_str_eq(json_string_value(json_object_get(m, "finished")), "2026-11-24T02:01:30.250Z");
	ck_assert(pv_store_mkdirs(dir, &err));
	ck_assert_msg(pv_store_manifest_write(dir, m, &err), "%s", err.msg);
	ck_assert_msg(pv_state_open(db, &st, &err), "%s", err.msg);
	ck_assert_msg(pv_catalog_sync(st, storage, false, &rep, &err), "%s", err.msg);
	ck_assert_uint_eq(rep.rebuilt, 1);
	ck_assert_msg(pv_state_backup_find(st, "prod/daily-backup/20261124T020000Z-daily", &b, &err), "%s",
	              err.msg);
	ck_assert_int_eq(b.started, 1795485600);  /* 2026-11-24T02:00:00Z */
	ck_assert_int_eq(b.finished, 1795485690); /* 2026-11-24T02:01:30Z */
	pv_state_backup_clear(&b);
	pv_state_close(st);
	json_decref(m);
	free(db);
	free(dir);
	free(job);
	free(storage);
}
END_TEST

/* Inputs that found bugs with the manifest fuzz target (tests/fuzz/README.md): invalid, or valid with an
 * id whose time pv_store_backup_id writes the same way. */
START_TEST(test_storage__manifest_fuzz_regressions)
{
	const char *dir_name = "tests/fuzz/regress/manifest";
	DIR *dir = opendir(dir_name);
	struct dirent *de;
	int files = 0;

	ck_assert_msg(dir != NULL, "%s: %s (run from the source tree)", dir_name, strerror(errno));
	while ((de = readdir(dir)) != NULL) {
		char *path, *again;
		json_t *m;
		json_error_t jerr;
		struct pv_error err;
		const char *id;
		time_t started;

		if (de->d_name[0] == '.')
			continue;
		files++;
		path = pv_asprintf("%s/%s", dir_name, de->d_name);
		m = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
		if (m != NULL && pv_store_manifest_validate(m, NULL, &err)) {
			id = json_string_value(json_object_get(m, "id"));
			ck_assert(pv_store_backup_id_parse(id, &started, NULL));
			again = pv_store_backup_id(started, "x");
			ck_assert_msg(strncmp(again, id, 16) == 0, "%s: id %s stands for %s", path, id,
			              again);
			free(again);
		}
		json_decref(m);
		free(path);
	}
	closedir(dir);
	ck_assert_int_gt(files, 0);
}
END_TEST

struct bad_case {
	const char *field; /* dotted path to change */
	const char *json;  /* new value as JSON, NULL = delete */
	const char *want;  /* substring of the error */
};

static const struct bad_case bad_cases[] = {
        {"id", NULL, "field \"id\" is missing"},
        {"id", "\"20261125T020000Z-daily\"", "does not match the directory name"},
        {"id", "\"nightly\"", "is not a backup id"},
        {"manifest_version", "2", "reads version 1 only"},
        {"manifest_version", "\"1\"", "\"manifest_version\" must be an integer, not a string"},
        {"database", "\"\"", "\"database\" must be a non-empty string"},
        {"job", "7", "\"job\" must be a non-empty string, not an integer"},
        {"tier", NULL, "\"tier\" is missing"},
        {"started", "\"2026-11-24 02:00:00\"", "\"started\" (\"2026-11-24 02:00:00\") is not an RFC 3339"},
        {"finished", "\"2026-11-24T02:00:00+01:00\"", "\"finished\""},
        {"duration", "-1", "\"duration\" must be a non-negative number"},
        {"size", "1.5", "\"size\" must be a non-negative integer, not a number"},
        {"size", "-3", "\"size\" must be a non-negative integer"},
        {"sha256", "\"ABC\"", "\"sha256\" must be 64 lowercase hex digits"},
        {"compression", "\"zstd\"", "\"compression\" must be an object, not a string"},
        {"compression.algorithm", "\"gzip\"", "\"compression.algorithm\" must be \"zstd\" or \"none\""},
        {"compression.level", NULL, "\"compression.level\" is missing"},
        {"file", "\"dump\"", "does not match compression"},
        {"file", "\"dump.zst.enc\"", "\"encryption\" must be an object"},
        {"encryption", NULL, "\"encryption\" is missing"},
        {"format", NULL, "\"format\" is missing"},
        {"pg_dump_version", NULL, "\"pg_dump_version\" is missing"},
        {"server_version", "null", "\"server_version\" must be a non-empty string, not null"},
        {"server_version_num", "\"160003\"", "\"server_version_num\" must be an integer"},
        {"scope", "[]", "\"scope\" must be an object, not an array"},
        {"schema_copy", "{\"file\": \"schema.zst\", \"size\": 1}", "\"schema_copy.sha256\""},
        {"expected", NULL, "\"expected\" is missing"},
        {"expected.tables", "67", "\"expected.tables\" must be an array of table names"},
        {"expected.row_counts", "[]", "\"expected.row_counts\" must be an object, not an array"},
        {"expected.row_counts.public.users", "\"10\"", "the count of \"public.users\""},
        {"expected.critical_table_hashes", NULL, "\"expected.critical_table_hashes\" is missing"},
        {"expected.method", NULL, "\"expected.method\" is missing"},
};

START_TEST(test_storage__manifest_validation)
{
	char *storage = test_dir();
	const char *id = "20261124T020000Z-daily";
	char *dir = pv_asprintf("%s/%s", storage, id);
	char *path = pv_asprintf("%s/manifest.json", dir);
	struct pv_error err;

	ck_assert_int_eq(mkdir(dir, 0700), 0);
	for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
		const struct bad_case *c = &bad_cases[i];
		json_t *m = good_manifest(id, false), *obj = m;
		char *field = pv_strdup(c->field), *dot, *text;

		/* Walk "expected.row_counts.public.users": only the first two dots are structure. */
		for (int depth = 0; depth < 2 && (dot = strchr(field, '.')) != NULL; depth++) {
			*dot = '\0';
			obj = json_object_get(obj, field);
			memmove(field, dot + 1, strlen(dot + 1) + 1);
		}
		if (c->json == NULL)
			json_object_del(obj, field);
		else
			json_object_set_new(obj, field, json_loads(c->json, JSON_DECODE_ANY, NULL));
		text = json_dumps(m, 0);
		write_text(path, text);
		free(text);
		json_t *back = pv_store_manifest_read(dir, &err);
		ck_assert_msg(back == NULL, "case %zu (%s) should fail", i, c->field);
		ck_assert_msg(strstr(err.msg, c->want) != NULL && strstr(err.msg, path) != NULL,
		              "case %zu: got \"%s\", want \"%s\"", i, err.msg, c->want);
		json_decref(m);
		free(field);
	}
	write_text(path, "{\"id\": 1,\n \"id\": 2}");
	ck_assert_ptr_null(pv_store_manifest_read(dir, &err));
	ck_assert_msg(strstr(err.msg, "manifest.json:2:") != NULL, "%s", err.msg);
	write_text(path, "[1, 2");
	ck_assert_ptr_null(pv_store_manifest_read(dir, &err));
	ck_assert_msg(strstr(err.msg, "invalid JSON") != NULL, "%s", err.msg);
	unlink(path);
	ck_assert_ptr_null(pv_store_manifest_read(dir, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	free(path);
	free(dir);
	free(storage);
}
END_TEST

struct scan_seen {
	int n;
	char dirs[8][512];
	bool valid[8];
	char why[8][PV_ERROR_MSG_MAX];
};

static void
scan_cb(const char *dir, json_t *manifest, void *arg)
{
	struct scan_seen *s = arg;

	ck_assert_int_lt(s->n, 8);
	snprintf(s->dirs[s->n], sizeof(s->dirs[0]), "%s", dir);
	s->valid[s->n] = manifest != NULL;
	if (manifest == NULL) {
		struct pv_error why;

		ck_assert_ptr_null(pv_store_manifest_read(dir, &why));
		snprintf(s->why[s->n], sizeof(s->why[0]), "%s", why.msg);
	} else {
		ck_assert_str_eq(json_string_value(json_object_get(manifest, "id")), strrchr(dir, '/') + 1);
	}
	s->n++;
}

START_TEST(test_storage__scan)
{
	char *storage = test_dir();
	const char *ids[] = {"20261124T020000Z-daily", "20261125T020000Z-daily", "20261201T030000Z-monthly"};
	const char *jobs[] = {"daily", "daily", "monthly"};
	struct scan_seen seen = {0};
	struct pv_error err;
	char *p;

	for (int i = 0; i < 3; i++) {
		char *dir = pv_store_backup_dir(storage, "prod", jobs[i], ids[i]);
		json_t *m = good_manifest(ids[i], false);

		ck_assert(pv_store_mkdirs(dir, &err));
		if (i == 1) {
			p = pv_asprintf("%s/manifest.json", dir);
			write_text(p, "{ broken");
			free(p);
		} else {
			ck_assert_msg(pv_store_manifest_write(dir, m, &err), "%s", err.msg);
		}
		json_decref(m);
		free(dir);
	}
	/* Not reported: a temporary, a stray file, a symlinked backup. */
	p = pv_asprintf("%s/prod/daily/.tmp-20261126T020000Z-daily", storage);
	ck_assert_int_eq(mkdir(p, 0700), 0);
	free(p);
	p = pv_asprintf("%s/prod/daily/notes.txt", storage);
	write_text(p, "hi");
	free(p);
	p = pv_asprintf("%s/prod/daily/20261127T020000Z-daily", storage);
	ck_assert_int_eq(symlink("/tmp", p), 0);
	free(p);
	/* Reported without a manifest: an empty backup directory of another database. */
	p = pv_asprintf("%s/stage/daily/20261128T020000Z-daily", storage);
	ck_assert(pv_store_mkdirs(p, &err));
	free(p);

	ck_assert_msg(pv_store_scan(storage, scan_cb, &seen, &err), "%s", err.msg);
	ck_assert_int_eq(seen.n, 4);
	ck_assert(seen.valid[0]);
	ck_assert(strstr(seen.dirs[0], "/prod/daily/20261124T020000Z-daily") != NULL);
	ck_assert(!seen.valid[1]);
	ck_assert(strstr(seen.dirs[1], "/prod/daily/20261125T020000Z-daily") != NULL);
	ck_assert_msg(strstr(seen.why[1], "invalid JSON") != NULL, "%s", seen.why[1]);
	ck_assert(seen.valid[2]);
	ck_assert(strstr(seen.dirs[2], "/prod/monthly/") != NULL);
	ck_assert(!seen.valid[3]);
	ck_assert_msg(strstr(seen.why[3], "No such file") != NULL, "%s", seen.why[3]);
	ck_assert(!pv_store_scan("/nonexistent/storage", scan_cb, &seen, &err));
	ck_assert_int_eq(err.code, PV_ERR_NOT_FOUND);
	free(storage);
}
END_TEST

START_TEST(test_storage__fs_usage)
{
	uint64_t total = 0, avail = 0;
	struct pv_error err;

	ck_assert_msg(pv_store_fs_usage(root, &total, &avail, &err), "%s", err.msg);
	ck_assert_uint_gt(total, 0);
	ck_assert_uint_le(avail, total);
	ck_assert(!pv_store_fs_usage("/nonexistent/storage", &total, &avail, &err));
	ck_assert(strstr(err.msg, "/nonexistent/storage") != NULL);
}
END_TEST

struct work_probe {
	pthread_t loop_thread;
	pthread_t ran_on;
	int done;
	bool sigpipe_blocked;
};

static void
probe_fn(void *arg)
{
	struct work_probe *p = arg;
	sigset_t cur;

	p->ran_on = pthread_self();
	pthread_sigmask(SIG_SETMASK, NULL, &cur);
	p->sigpipe_blocked = sigismember(&cur, SIGPIPE) && sigismember(&cur, SIGTERM);
}

static void
probe_done(void *arg)
{
	struct work_probe *p = arg;

	ck_assert(pthread_equal(pthread_self(), p->loop_thread));
	p->done++;
}

START_TEST(test_storage__work_runs_off_loop)
{
	struct event_base *base = event_base_new();
	struct work_probe p = {.loop_thread = pthread_self()};
	struct pv_error err;

	ck_assert(pv_work_run(base, probe_fn, &p, probe_done, &err));
	event_base_dispatch(base);
	ck_assert_int_eq(p.done, 1);
	ck_assert(!pthread_equal(p.ran_on, p.loop_thread));
	ck_assert(p.sigpipe_blocked);
	event_base_free(base);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("storage");
	TCase *stream = tcase_create("stream");
	TCase *layout = tcase_create("layout");
	SRunner *sr;
	int failed;

	tcase_add_unchecked_fixture(stream, setup_root, teardown_root);
	tcase_add_unchecked_fixture(layout, setup_root, teardown_root);
	tcase_set_timeout(stream, 300);
	tcase_add_test(stream, test_storage__round_trip_zstd);
	tcase_add_test(stream, test_storage__round_trip_none);
	tcase_add_test(stream, test_storage__round_trip_encrypted);
	tcase_add_test(stream, test_storage__zstd_binary_and_sha256sum_agree);
	tcase_add_test(stream, test_storage__reader_detects_damage);
	tcase_add_test(stream, test_storage__writer_start_errors);
	tcase_add_test(stream, test_storage__writer_disk_full);
	tcase_add_test(stream, test_storage__writer_cancel);
	tcase_add_test(stream, test_storage__writer_backpressure);
	tcase_add_test(stream, test_storage__reader_consumer_closes);
	tcase_add_test(stream, test_storage__reader_cancel);
	tcase_add_test(stream, test_storage__work_runs_off_loop);
	tcase_add_test(layout, test_storage__backup_id);
	tcase_add_test(layout, test_storage__commit);
	tcase_add_test(layout, test_storage__cleanup_temp);
	tcase_add_test(layout, test_storage__manifest_round_trip);
	tcase_add_test(layout, test_storage__manifest_validation);
	tcase_add_test(layout, test_storage__catalog_rebuild_reads_manifest_times);
	tcase_add_test(layout, test_storage__manifest_fuzz_regressions);
	tcase_add_test(layout, test_storage__scan);
	tcase_add_test(layout, test_storage__fs_usage);
	suite_add_tcase(s, stream);
	suite_add_tcase(s, layout);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
