/* The dump file pipeline: archive -> zstd -> AES-256-GCM -> SHA-256 -> disk, and back, on worker threads. */
#include "storage/storage.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zstd.h>

#include "loop/work.h"
#include "storage/internal.h"
#include "util/mem.h"

/* Reading in large blocks keeps syscalls and zstd calls per byte low; a pipe is enlarged to match
 * so that pg_dump can run ahead by this much while the writer compresses. */
#define WRITER_IN_SIZE  (1u << 20)
#define WRITER_OUT_SIZE (256u << 10)
#define READER_IN_SIZE  (256u << 10)
#define READER_OUT_SIZE (256u << 10)

static double
now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

bool
pv_store_cancelled(struct pv_error *err)
{
	return pv_error_set(err, PV_ERR_IO, "cancelled");
}

bool
pv_store_write_all(int fd, const void *data, size_t len, const char *what, int cancel_fd, uint64_t *done,
                   struct pv_error *err)
{
	const unsigned char *p = data;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n >= 0) {
			if (done != NULL)
				*done += (uint64_t)n;
			p += n;
			len -= (size_t)n;
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN && cancel_fd >= 0) {
			struct pollfd pfd[2] = {{.fd = fd, .events = POLLOUT},
			                        {.fd = cancel_fd, .events = POLLIN}};

			if (poll(pfd, 2, -1) < 0 && errno != EINTR)
				return pv_error_set(err, PV_ERR_IO, "waiting to write %s: %s", what,
				                    strerror(errno));
			if (pfd[1].revents != 0)
				return pv_store_cancelled(err);
			continue;
		}
		if (errno == EPIPE) {
			pv_error_set(err, PV_ERR_IO, "writing %s: consumer closed the pipe", what);
			errno = EPIPE; /* callers look at it to swallow the SIGPIPE they caused */
			return false;
		}
		return pv_error_set(err, PV_ERR_IO, "writing %s: %s", what, strerror(errno));
	}
	return true;
}

const char *
pv_store_dump_name(enum pv_compression compression, bool encrypted)
{
	if (compression == PV_COMPRESSION_NONE)
		return encrypted ? "dump.enc" : "dump";
	return encrypted ? "dump.zst.enc" : "dump.zst";
}

static bool
has_suffix(const char *s, size_t len, const char *suffix)
{
	size_t n = strlen(suffix);

	return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

/* Wait until fd is readable or the cancel eventfd fires; false (cancelled or error) fills err. */
static bool
wait_readable(int fd, int cancel_fd, int timeout_ms, bool *cancelled, struct pv_error *err)
{
	struct pollfd pfd[2] = {{.fd = fd, .events = POLLIN}, {.fd = cancel_fd, .events = POLLIN}};
	int nfds = fd >= 0 ? 2 : 1;
	struct pollfd *first = fd >= 0 ? pfd : pfd + 1;

	for (;;) {
		int rc = poll(first, (nfds_t)nfds, timeout_ms);

		if (rc < 0 && errno == EINTR)
			continue;
		if (rc < 0)
			return pv_error_set(err, PV_ERR_IO, "poll: %s", strerror(errno));
		if (pfd[1].revents != 0) {
			*cancelled = true;
			return pv_store_cancelled(err);
		}
		return true;
	}
}

/* ======================================================================== writer */

struct pv_store_writer {
	struct event_base *base;
	pv_store_writer_cb cb;
	void *arg;
	char *path;
	int in_fd;
	int fd;
	int cancel_fd;
	enum pv_compression compression;
	unsigned delay_ms;
	ZSTD_CCtx *cctx;
	struct pv_crypto_encrypt *enc;
	struct pv_crypto_sha256 *sha;
	unsigned char *inbuf;
	unsigned char *outbuf;
	struct pv_crypto_buf ebuf;
	double started;
	atomic_uint_fast64_t progress;
	atomic_bool cancel_requested;
	struct pv_store_result res;
};

/* Encrypt (when keyed), hash and write stored bytes. */
static bool
writer_emit(struct pv_store_writer *w, const void *data, size_t len, struct pv_error *err)
{
	if (w->enc != NULL) {
		if (!pv_crypto_encrypt_update(w->enc, data, len, &w->ebuf, err))
			return pv_error_prefix(err, "encrypting %s: ", w->path);
		data = w->ebuf.data;
		len = w->ebuf.len;
		w->ebuf.len = 0;
	}
	if (len == 0)
		return true;
	pv_crypto_sha256_update(w->sha, data, len);
	return pv_store_write_all(w->fd, data, len, w->path, -1, &w->res.bytes_out, err);
}

static bool
writer_compress(struct pv_store_writer *w, const void *data, size_t len, ZSTD_EndDirective mode,
                struct pv_error *err)
{
	ZSTD_inBuffer in = {data, len, 0};

	for (;;) {
		ZSTD_outBuffer out = {w->outbuf, WRITER_OUT_SIZE, 0};
		size_t left = ZSTD_compressStream2(w->cctx, &out, &in, mode);

		if (ZSTD_isError(left))
			return pv_error_set(err, PV_ERR_INTERNAL, "compressing %s: %s", w->path,
			                    ZSTD_getErrorName(left));
		if (out.pos > 0 && !writer_emit(w, w->outbuf, out.pos, err))
			return false;
		if (mode == ZSTD_e_end ? left == 0 : in.pos == in.size)
			return true;
	}
}

static bool
writer_run(struct pv_store_writer *w, struct pv_error *err)
{
	bool cancelled = false;

	for (;;) {
		ssize_t n;

		if (atomic_load(&w->cancel_requested))
			return pv_store_cancelled(err);
		if (w->delay_ms > 0) {
			if (!wait_readable(-1, w->cancel_fd, (int)w->delay_ms, &cancelled, err))
				return false;
		}
		if (!wait_readable(w->in_fd, w->cancel_fd, -1, &cancelled, err))
			return false;
		n = read(w->in_fd, w->inbuf, WRITER_IN_SIZE);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return pv_error_set(err, PV_ERR_IO, "reading the archive for %s: %s", w->path,
			                    strerror(errno));
		}
		if (n == 0)
			break;
		if (w->cctx != NULL) {
			if (!writer_compress(w, w->inbuf, (size_t)n, ZSTD_e_continue, err))
				return false;
		} else if (!writer_emit(w, w->inbuf, (size_t)n, err)) {
			return false;
		}
		w->res.bytes_in += (uint64_t)n;
		atomic_store_explicit(&w->progress, w->res.bytes_in, memory_order_relaxed);
	}
	if (w->cctx != NULL && !writer_compress(w, NULL, 0, ZSTD_e_end, err))
		return false;
	if (w->enc != NULL) {
		if (!pv_crypto_encrypt_finish(w->enc, &w->ebuf, err))
			return pv_error_prefix(err, "encrypting %s: ", w->path);
		pv_crypto_sha256_update(w->sha, w->ebuf.data, w->ebuf.len);
		if (!pv_store_write_all(w->fd, w->ebuf.data, w->ebuf.len, w->path, -1, &w->res.bytes_out,
		                        err))
			return false;
		w->ebuf.len = 0;
	}
	if (fsync(w->fd) != 0)
		return pv_error_set(err, PV_ERR_IO, "fsync %s: %s", w->path, strerror(errno));
	return true;
}

/* Buffers and contexts go as soon as the work ends, not when the loop gets round to the callback. */
static void
writer_release(struct pv_store_writer *w)
{
	ZSTD_freeCCtx(w->cctx);
	w->cctx = NULL;
	pv_crypto_encrypt_free(w->enc);
	w->enc = NULL;
	pv_crypto_sha256_free(w->sha);
	w->sha = NULL;
	free(w->inbuf);
	w->inbuf = NULL;
	free(w->outbuf);
	w->outbuf = NULL;
	pv_crypto_buf_release(&w->ebuf);
}

static void
writer_thread(void *arg)
{
	struct pv_store_writer *w = arg;
	struct pv_error err = {0};
	bool ok = writer_run(w, &err);

	close(w->in_fd);
	w->in_fd = -1;
	if (ok) {
		pv_crypto_sha256_final_hex(w->sha, w->res.sha256);
		if (close(w->fd) != 0) {
			ok = pv_error_set(&err, PV_ERR_IO, "closing %s: %s", w->path, strerror(errno));
			w->res.sha256[0] = '\0';
		}
	} else {
		close(w->fd);
	}
	w->fd = -1;
	if (!ok)
		unlink(w->path);
	w->res.ok = ok;
	w->res.error = ok ? (struct pv_error){0} : err;
	w->res.seconds = now_seconds() - w->started;
	writer_release(w);
}

static void
writer_free(struct pv_store_writer *w)
{
	writer_release(w);
	if (w->in_fd >= 0)
		close(w->in_fd);
	if (w->fd >= 0)
		close(w->fd);
	if (w->cancel_fd >= 0)
		close(w->cancel_fd);
	free(w->path);
	free(w);
}

static void
writer_done(void *arg)
{
	struct pv_store_writer *w = arg;

	/* A cancel that raced with a successful finish still wins: the caller was promised no file. */
	if (atomic_load(&w->cancel_requested) && w->res.ok) {
		unlink(w->path);
		w->res.ok = false;
		w->res.sha256[0] = '\0';
		pv_store_cancelled(&w->res.error);
	}
	w->cb(w, &w->res, w->arg);
	writer_free(w);
}

static bool
zstd_param(ZSTD_CCtx *cctx, ZSTD_cParameter p, int value, const char *name, struct pv_error *err)
{
	size_t rc = ZSTD_CCtx_setParameter(cctx, p, value);

	if (ZSTD_isError(rc))
		return pv_error_set(err, PV_ERR_INTERNAL, "zstd %s=%d: %s", name, value,
		                    ZSTD_getErrorName(rc));
	return true;
}

struct pv_store_writer *
pv_store_writer_start(struct event_base *base, const struct pv_store_writer_opts *opts, pv_store_writer_cb cb,
                      void *arg, struct pv_error *err)
{
	struct pv_store_writer *w = pv_calloc(1, sizeof(*w));
	struct stat st;

	w->base = base;
	w->cb = cb;
	w->arg = arg;
	w->path = pv_strdup(opts->path);
	w->in_fd = opts->in_fd;
	w->fd = -1;
	w->compression = opts->compression;
	w->delay_ms = opts->test_block_delay_ms;
	w->started = now_seconds();
	w->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (w->cancel_fd < 0) {
		pv_error_set(err, PV_ERR_INTERNAL, "eventfd: %s", strerror(errno));
		goto fail;
	}
	if (opts->compression == PV_COMPRESSION_ZSTD) {
		w->cctx = ZSTD_createCCtx();
		if (w->cctx == NULL) {
			pv_error_set(err, PV_ERR_INTERNAL, "cannot create a zstd context");
			goto fail;
		}
		/* The frame checksum lets a reader detect corruption of an unencrypted file. */
		if (!zstd_param(w->cctx, ZSTD_c_compressionLevel, opts->level > 0 ? opts->level : 3, "level",
		                err) ||
		    !zstd_param(w->cctx, ZSTD_c_checksumFlag, 1, "checksum", err) ||
		    (opts->zstd_workers > 0 &&
		     !zstd_param(w->cctx, ZSTD_c_nbWorkers, opts->zstd_workers, "workers", err)))
			goto fail;
	}
	if (opts->key != NULL) {
		w->enc = pv_crypto_encrypt_new(opts->key, err);
		if (w->enc == NULL)
			goto fail;
	}
	w->sha = pv_crypto_sha256_new();
	w->inbuf = pv_malloc(WRITER_IN_SIZE);
	w->outbuf = pv_malloc(WRITER_OUT_SIZE);
	/* Let pg_dump run up to one block ahead; failure (a lower pipe-max-size) only costs speed. */
	if (fstat(w->in_fd, &st) == 0 && S_ISFIFO(st.st_mode))
		(void)fcntl(w->in_fd, F_SETPIPE_SZ, (int)WRITER_IN_SIZE);
	w->fd = open(w->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (w->fd < 0) {
		pv_error_set(err, PV_ERR_IO, "creating %s: %s", w->path, strerror(errno));
		goto fail;
	}
	if (!pv_work_run(base, writer_thread, w, writer_done, err)) {
		unlink(w->path);
		goto fail;
	}
	return w;
fail:
	writer_free(w);
	return NULL;
}

uint64_t
pv_store_writer_progress(const struct pv_store_writer *w)
{
	return atomic_load_explicit(&((struct pv_store_writer *)w)->progress, memory_order_relaxed);
}

void
pv_store_writer_cancel(struct pv_store_writer *w)
{
	uint64_t one = 1;

	atomic_store(&w->cancel_requested, true);
	if (write(w->cancel_fd, &one, sizeof(one)) < 0) {
		/* EAGAIN: the counter is already non-zero, which is all the thread looks at. */
	}
}

/* ======================================================================== reader */

struct reader_core {
	const char *path;
	int fd;        /* the stored file */
	int out_fd;    /* -1 = discard */
	int cancel_fd; /* -1 = not cancellable (synchronous use) */
	const atomic_bool *cancel_requested;
	atomic_uint_fast64_t *progress;
	bool encrypted;
	bool zstd;
	bool frame_done;
	bool epipe;
	struct pv_crypto_decrypt *dec;
	struct pv_crypto_keyring *empty_ring;
	ZSTD_DCtx *dctx;
	struct pv_crypto_sha256 *sha;
	unsigned char *inbuf;
	unsigned char *outbuf;
	struct pv_crypto_buf dbuf;
	char out_name[64];
};

static bool
reader_sink(struct reader_core *c, const void *data, size_t len, struct pv_store_result *res,
            struct pv_error *err)
{
	bool ok = true;

	if (len == 0)
		return true;
	if (c->out_fd < 0) {
		res->bytes_in += len;
	} else if (!pv_store_write_all(c->out_fd, data, len, c->out_name, c->cancel_fd, &res->bytes_in,
	                               err)) {
		c->epipe = errno == EPIPE;
		ok = false;
	}
	if (c->progress != NULL)
		atomic_store_explicit(c->progress, res->bytes_in, memory_order_relaxed);
	return ok;
}

/* Decompress (or pass through) plaintext archive bytes; len 0 at EOF drains zstd's buffers. */
static bool
reader_plain(struct reader_core *c, const void *data, size_t len, struct pv_store_result *res,
             struct pv_error *err)
{
	ZSTD_inBuffer in = {data, len, 0};

	if (!c->zstd)
		return reader_sink(c, data, len, res, err);
	if (c->frame_done) {
		if (len == 0)
			return true;
		return pv_error_set(err, PV_ERR_IO,
		                    "decompressing %s: unexpected data after the end of the zstd frame "
		                    "(trailing garbage)",
		                    c->path);
	}
	for (;;) {
		ZSTD_outBuffer out = {c->outbuf, READER_OUT_SIZE, 0};
		size_t rc = ZSTD_decompressStream(c->dctx, &out, &in);

		if (ZSTD_isError(rc))
			return pv_error_set(err, PV_ERR_IO, "decompressing %s: corrupt data: %s", c->path,
			                    ZSTD_getErrorName(rc));
		if (!reader_sink(c, c->outbuf, out.pos, res, err))
			return false;
		if (rc == 0) {
			c->frame_done = true;
			if (in.pos < in.size)
				return pv_error_set(
				        err, PV_ERR_IO,
				        "decompressing %s: unexpected data after the end of the zstd "
				        "frame (trailing garbage)",
				        c->path);
			return true;
		}
		if (in.pos == in.size && out.pos < out.size)
			return true;
	}
}

static bool
reader_run(struct reader_core *c, struct pv_store_result *res, struct pv_error *err)
{
	for (;;) {
		ssize_t n;

		if (c->cancel_requested != NULL && atomic_load(c->cancel_requested))
			return pv_store_cancelled(err);
		n = read(c->fd, c->inbuf, READER_IN_SIZE);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return pv_error_set(err, PV_ERR_IO, "reading %s: %s", c->path, strerror(errno));
		if (n == 0)
			break;
		res->bytes_out += (uint64_t)n;
		pv_crypto_sha256_update(c->sha, c->inbuf, (size_t)n);
		if (c->encrypted) {
			bool ok = pv_crypto_decrypt_update(c->dec, c->inbuf, (size_t)n, &c->dbuf, err);

			if (!ok)
				return pv_error_prefix(err, "decrypting %s: ", c->path);
			ok = reader_plain(c, c->dbuf.data, c->dbuf.len, res, err);
			c->dbuf.len = 0;
			if (!ok)
				return false;
		} else if (!reader_plain(c, c->inbuf, (size_t)n, res, err)) {
			return false;
		}
	}
	if (c->encrypted && !pv_crypto_decrypt_finish(c->dec, err))
		return pv_error_prefix(err, "decrypting %s: ", c->path);
	if (c->zstd) {
		if (!reader_plain(c, NULL, 0, res, err))
			return false;
		if (!c->frame_done)
			return pv_error_set(
			        err, PV_ERR_IO,
			        "decompressing %s: the zstd frame is incomplete (the file is truncated)",
			        c->path);
	}
	return true;
}

static void
core_release(struct reader_core *c)
{
	pv_crypto_decrypt_free(c->dec);
	c->dec = NULL;
	pv_crypto_keyring_free(c->empty_ring);
	c->empty_ring = NULL;
	ZSTD_freeDCtx(c->dctx);
	c->dctx = NULL;
	pv_crypto_sha256_free(c->sha);
	c->sha = NULL;
	free(c->inbuf);
	c->inbuf = NULL;
	free(c->outbuf);
	c->outbuf = NULL;
	pv_crypto_buf_release(&c->dbuf);
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	if (c->out_fd >= 0)
		close(c->out_fd);
	c->out_fd = -1;
}

/* Open the file and set up the stages its name calls for. Takes ownership of opts->out_fd. */
static bool
core_open(struct reader_core *c, const struct pv_store_reader_opts *opts, struct pv_error *err)
{
	size_t len = strlen(opts->path);

	memset(c, 0, sizeof(*c));
	c->fd = -1;
	c->path = opts->path;
	c->out_fd = opts->out_fd;
	c->cancel_fd = -1;
	snprintf(c->out_name, sizeof(c->out_name), "the restored archive (fd %d)", opts->out_fd);
	c->encrypted = has_suffix(opts->path, len, ".enc");
	if (c->encrypted)
		len -= 4;
	c->zstd = has_suffix(opts->path, len, ".zst");
	if (opts->expect_sha256 != NULL && strlen(opts->expect_sha256) != PV_CRYPTO_SHA256_HEX_LEN)
		return pv_error_set(err, PV_ERR_USAGE, "expected checksum \"%s\" is not a SHA-256 in hex",
		                    opts->expect_sha256);
	c->fd = open(opts->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (c->fd < 0) {
		enum pv_errcode code = errno == ENOENT ? PV_ERR_NOT_FOUND : PV_ERR_IO;
		return pv_error_set(err, code, "opening %s: %s", opts->path, strerror(errno));
	}
	if (c->encrypted) {
		if (opts->ring == NULL)
			c->empty_ring = pv_crypto_keyring_new();
		c->dec = pv_crypto_decrypt_new(opts->ring != NULL ? opts->ring : c->empty_ring);
	}
	if (c->zstd) {
		c->dctx = ZSTD_createDCtx();
		if (c->dctx == NULL)
			return pv_error_set(err, PV_ERR_INTERNAL, "cannot create a zstd context");
	}
	c->sha = pv_crypto_sha256_new();
	c->inbuf = pv_malloc(READER_IN_SIZE);
	c->outbuf = pv_malloc(READER_OUT_SIZE);
	return true;
}

/* Run the pipeline and fill res; closes both descriptors. */
static void
core_finish(struct reader_core *c, const struct pv_store_reader_opts *opts, struct pv_store_result *res,
            double started)
{
	struct pv_error err = {0};
	bool ok = reader_run(c, res, &err);

	if (ok) {
		pv_crypto_sha256_final_hex(c->sha, res->sha256);
		if (opts->expect_sha256 != NULL && strcasecmp(opts->expect_sha256, res->sha256) != 0)
			ok = pv_error_set(&err, PV_ERR_IO,
			                  "%s: checksum mismatch: manifest says %s, file has %s", opts->path,
			                  opts->expect_sha256, res->sha256);
	}
	/* Closing the output first tells a consumer such as pg_restore that the archive has ended. */
	if (c->out_fd >= 0) {
		if (close(c->out_fd) != 0 && ok && errno != EINTR)
			ok = pv_error_set(&err, PV_ERR_IO, "closing %s: %s", c->out_name, strerror(errno));
		c->out_fd = -1;
	}
	core_release(c);
	res->ok = ok;
	res->error = ok ? (struct pv_error){0} : err;
	res->seconds = now_seconds() - started;
}

bool
pv_store_read_file(const struct pv_store_reader_opts *opts, struct pv_store_result *res)
{
	struct reader_core c;
	double started = now_seconds();
	sigset_t pipe_set, old, pending;
	bool was_pending;

	memset(res, 0, sizeof(*res));
	/* Block SIGPIPE so a consumer that goes away gives EPIPE, then swallow the signal we caused. */
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
	sigpending(&pending);
	was_pending = sigismember(&pending, SIGPIPE);
	if (!core_open(&c, opts, &res->error)) {
		core_release(&c);
		res->ok = false;
	} else {
		core_finish(&c, opts, res, started);
	}
	if (c.epipe && !was_pending) {
		struct timespec zero = {0, 0};

		while (sigtimedwait(&pipe_set, NULL, &zero) == SIGPIPE) {
		}
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return res->ok;
}

struct pv_store_reader {
	pv_store_reader_cb cb;
	void *arg;
	struct pv_store_reader_opts opts; /* path and expect_sha256 copied */
	struct reader_core core;
	int cancel_fd;
	double started;
	atomic_uint_fast64_t progress;
	atomic_bool cancel_requested;
	struct pv_store_result res;
};

static void
reader_thread(void *arg)
{
	struct pv_store_reader *r = arg;

	/* SIGPIPE is blocked in worker threads (pv_work_run): EPIPE arrives as an error. */
	core_finish(&r->core, &r->opts, &r->res, r->started);
}

static void
reader_free(struct pv_store_reader *r)
{
	core_release(&r->core);
	if (r->cancel_fd >= 0)
		close(r->cancel_fd);
	free((char *)r->opts.path);
	free((char *)r->opts.expect_sha256);
	free(r);
}

static void
reader_done(void *arg)
{
	struct pv_store_reader *r = arg;

	if (atomic_load(&r->cancel_requested) && r->res.ok) {
		r->res.ok = false;
		pv_store_cancelled(&r->res.error);
	}
	r->cb(r, &r->res, r->arg);
	reader_free(r);
}

struct pv_store_reader *
pv_store_reader_start(struct event_base *base, const struct pv_store_reader_opts *opts, pv_store_reader_cb cb,
                      void *arg, struct pv_error *err)
{
	struct pv_store_reader *r = pv_calloc(1, sizeof(*r));
	struct stat st;

	r->cb = cb;
	r->arg = arg;
	r->opts = *opts;
	r->opts.path = pv_strdup(opts->path);
	r->opts.expect_sha256 = opts->expect_sha256 != NULL ? pv_strdup(opts->expect_sha256) : NULL;
	r->started = now_seconds();
	r->core.fd = r->core.out_fd = -1;
	r->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (r->cancel_fd < 0) {
		pv_error_set(err, PV_ERR_INTERNAL, "eventfd: %s", strerror(errno));
		goto fail;
	}
	if (!core_open(&r->core, &r->opts, err))
		goto fail;
	r->core.cancel_fd = r->cancel_fd;
	r->core.cancel_requested = &r->cancel_requested;
	r->core.progress = &r->progress;
	/* A pipe to a stalled consumer must not keep a cancel waiting: write non-blocking and poll. */
	if (r->core.out_fd >= 0 && fstat(r->core.out_fd, &st) == 0 &&
	    (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
		(void)fcntl(r->core.out_fd, F_SETFL, fcntl(r->core.out_fd, F_GETFL) | O_NONBLOCK);
	if (!pv_work_run(base, reader_thread, r, reader_done, err))
		goto fail;
	return r;
fail:
	r->core.out_fd = -1; /* still the caller's: it closes it when start fails */
	reader_free(r);
	return NULL;
}

uint64_t
pv_store_reader_progress(const struct pv_store_reader *r)
{
	return atomic_load_explicit(&((struct pv_store_reader *)r)->progress, memory_order_relaxed);
}

void
pv_store_reader_cancel(struct pv_store_reader *r)
{
	uint64_t one = 1;

	atomic_store(&r->cancel_requested, true);
	if (write(r->cancel_fd, &one, sizeof(one)) < 0) {
		/* EAGAIN: already signalled. */
	}
}
