/* Backup storage: the streaming writer and reader of dump files, directory layout, atomic commit, manifests.
 */
#ifndef PV_STORAGE_STORAGE_H
#define PV_STORAGE_STORAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <jansson.h>

#include "config/config.h"
#include "crypto/crypto.h"
#include "util/error.h"

struct event_base;

/* ---- results shared by the writer and the reader ---- */

struct pv_store_result {
	bool ok;
	struct pv_error error; /* when !ok; a cancelled run has code PV_ERR_IO and message "cancelled" */
	uint64_t bytes_in;     /* archive (plaintext) bytes: read from in_fd (writer) / produced (reader) */
	uint64_t bytes_out;    /* stored-file bytes: written (writer) / read (reader) */
	char sha256[65];       /* lowercase hex SHA-256 of the stored file bytes ("" when not known) */
	double seconds;        /* monotonic wall time of the run */
};

/* File names inside a backup directory. */
#define PV_STORE_MANIFEST "manifest.json"
/* "dump.zst", "dump.zst.enc", "dump" or "dump.enc" (compression none, encrypted: a pgvigil extension). */
const char *pv_store_dump_name(enum pv_compression compression, bool encrypted);

/* ---- writer: in_fd -> zstd -> AES-256-GCM -> SHA-256 -> file, on its own thread ---- */

struct pv_store_writer;
typedef void (*pv_store_writer_cb)(struct pv_store_writer *w, const struct pv_store_result *r, void *arg);

struct pv_store_writer_opts {
	int in_fd;                       /* read until EOF; owned by the writer from the call on (closed even
	                                    when start fails) */
	const char *path;                /* created O_CREAT|O_EXCL|O_CLOEXEC, mode 0600 */
	enum pv_compression compression; /* PV_COMPRESSION_ZSTD or PV_COMPRESSION_NONE */
	int level;                       /* zstd level; 0 = 3 */
	const struct pv_crypto_key *key; /* NULL = not encrypted; borrowed until the callback */
	int zstd_workers;                /* ZSTD_c_nbWorkers; 0 = compress on the writer thread (see below) */
	unsigned test_block_delay_ms;    /* FOR TESTS: sleep this long before each read (backpressure test) */
};

/*
 * Open the file and start the thread. The thread reads in_fd in blocks of up to 1 MiB (a pipe
 * given as in_fd is enlarged to 1 MiB when the system allows), compresses, encrypts, hashes the
 * stored bytes and writes them, then at EOF ends the zstd frame (with its content checksum) and
 * the encrypted stream, fsyncs and closes the file. cb runs exactly once, on base's loop thread,
 * after the thread has ended; the writer is freed when cb returns. On failure or cancellation
 * the partial file is unlinked before cb runs. Memory is bounded by the buffers: 1 MiB of input,
 * 256 KiB of output, about 0.3 MiB for encryption, plus libzstd's context: 3.5 MiB at level 3
 * (about 5 MiB per writer in all), or 33-41 MiB with zstd_workers = 1, which bench/storage.c
 * measured about 20% faster on 2 cores. When the disk is slow the thread reads more slowly,
 * the pipe fills and the producer blocks.
 * Returns NULL (cb never runs) when the file cannot be created or the thread cannot start.
 */
struct pv_store_writer *pv_store_writer_start(struct event_base *base,
                                              const struct pv_store_writer_opts *opts, pv_store_writer_cb cb,
                                              void *arg, struct pv_error *err);
/* Archive bytes consumed so far; safe to call from the loop thread while the thread runs. */
uint64_t pv_store_writer_progress(const struct pv_store_writer *w);
/* Stop as soon as possible (also while blocked reading in_fd). cb still runs exactly once, with
 * !ok and "cancelled", and the file is removed, even if the thread had already finished. */
void pv_store_writer_cancel(struct pv_store_writer *w);

/* ---- reader: file -> SHA-256 -> authenticated decryption -> zstd -> out_fd ---- */

struct pv_store_reader;

struct pv_store_reader_opts {
	const char *path; /* the format comes from the name: *.enc is encrypted, then *.zst
	                     is zstd, anything else (dump) is stored as-is */
	const struct pv_crypto_keyring
	        *ring; /* keys for *.enc; NULL = none (the error names the file's key) */
	int out_fd;    /* the plaintext archive; -1 = discard. Owned by the reader: closed as soon as the
	                  work ends (also on failure, and when start fails) so a consumer sees EOF */
	const char *expect_sha256; /* optional: compared with the stored file's hash at the end */
};

/*
 * Plaintext reaches out_fd only after its encrypted chunk has been authenticated, but a zstd
 * frame's checksum is checked only at its end: after a failure, what was already written must
 * be treated as garbage (the verify job kills pg_restore; the CLI exits non-zero). A trailing
 * byte after the single zstd frame, a frame that does not end, and an encrypted stream without
 * its final chunk are all errors. A consumer that closes its end of the pipe gives the error
 * "consumer closed the pipe" (EPIPE; the reader never dies of SIGPIPE).
 */
typedef void (*pv_store_reader_cb)(struct pv_store_reader *r, const struct pv_store_result *res, void *arg);
struct pv_store_reader *pv_store_reader_start(struct event_base *base,
                                              const struct pv_store_reader_opts *opts, pv_store_reader_cb cb,
                                              void *arg, struct pv_error *err);
uint64_t pv_store_reader_progress(const struct pv_store_reader *r); /* plaintext bytes produced so far */
/* cb still runs exactly once, with !ok and "cancelled". */
void pv_store_reader_cancel(struct pv_store_reader *r);
/* The same work on the calling thread (the offline CLI). SIGPIPE is blocked around it. */
bool pv_store_read_file(const struct pv_store_reader_opts *opts, struct pv_store_result *res);

/* ---- layout ---- */

/* "20261124T020000Z-daily" (UTC); ids of one tier sort by start time. */
char *pv_store_backup_id(time_t started, const char *tier);
/* Parse an id made by pv_store_backup_id; tier (may be NULL) receives a malloc'ed copy. */
bool pv_store_backup_id_parse(const char *id, time_t *started, char **tier);

/* STORAGE/DATABASE/JOB, STORAGE/DATABASE/JOB/BACKUP_ID and STORAGE/DATABASE/JOB/.tmp-BACKUP_ID (malloc'ed).
 */
char *pv_store_job_dir(const char *storage, const char *database, const char *job);
char *pv_store_backup_dir(const char *storage, const char *database, const char *job, const char *id);
char *pv_store_temp_dir(const char *storage, const char *database, const char *job, const char *id);
#define PV_STORE_TEMP_PREFIX ".tmp-"

/* mkdir -p with mode 0700; new directories are made durable (their parent is fsynced). */
bool pv_store_mkdirs(const char *path, struct pv_error *err);
/*
 * Create the job directory (and parents) and a fresh, empty temporary directory for a backup;
 * *tmp_dir receives its malloc'ed path. Fails if a name is empty, ".", "..", contains '/' or
 * starts with '.', or if the temporary directory already exists.
 */
bool pv_store_prepare_temp(const char *storage, const char *database, const char *job, const char *id,
                           char **tmp_dir, struct pv_error *err);

/*
 * Make a finished backup visible: fsync every file in tmp_dir and tmp_dir itself, rename it to
 * final_dir (refused when final_dir exists, even as an empty directory), fsync the parent.
 * Blocks on fsync: use pv_store_commit_start() from the loop thread.
 */
bool pv_store_commit(const char *tmp_dir, const char *final_dir, struct pv_error *err);
typedef void (*pv_store_commit_cb)(bool ok, const struct pv_error *err, void *arg);
/* pv_store_commit on a worker thread; cb runs on the loop thread exactly once unless this returns false. */
bool pv_store_commit_start(struct event_base *base, const char *tmp_dir, const char *final_dir,
                           pv_store_commit_cb cb, void *arg, struct pv_error *err);

/* Remove every STORAGE/DATABASE/JOB/.tmp-* directory left by a crash, logging each; returns how many.
 * Symbolic links are never followed (a link is removed as a name); special files stay, and keep
 * their directory, with a warning. */
size_t pv_store_cleanup_temp(const char *storage_path);
/* Delete a backup directory (its files, then itself) and fsync its parent. Refuses a symlink. */
bool pv_store_remove_backup(const char *dir, struct pv_error *err);

/* ---- manifest.json ---- */

/*
 * The fields of pgvigil-backup(5). pv_store_manifest_validate requires (others are allowed and kept):
 *   manifest_version  integer, 1
 *   id, database, job, tier   non-empty strings; id is a backup id and matches the directory name
 *   started, finished         RFC 3339 UTC strings "YYYY-MM-DDTHH:MM:SS[.fff]Z"
 *   duration                  number >= 0 (seconds)
 *   file                      "dump.zst", "dump.zst.enc", "dump" (or "dump.enc", see pv_store_dump_name)
 *   size                      integer >= 0; sha256: 64 lowercase hex digits (of the stored file)
 *   compression               {"algorithm": "zstd" | "none", "level": integer (zstd only)}; agrees with file
 *   encryption                null, or {"algorithm": "AES-256-GCM", "key_fingerprint": 16 hex digits}
 *                             exactly when file ends in ".enc"
 *   format, pg_dump_version, server_version   non-empty strings
 *   expected                  {"tables": [table names], "row_counts": {table: integer >= 0},
 *                              "critical_table_hashes": {table: string or null},
 *                              "method": string (when there are hashes)}
 * and type-checks when present: server_version_num (integer), snapshot (string), scope (object),
 * schema_copy ({file, size, sha256}), pgvigil_version (string), encryption.format_version and
 * encryption.chunk_size (integers).
 */
#define PV_STORE_MANIFEST_VERSION 1

/* Write DIR/manifest.json (0600, 2-space indent, sorted keys) through a temporary name, fsync, rename. */
bool pv_store_manifest_write(const char *dir, const json_t *manifest, struct pv_error *err);
/* Read and validate DIR/manifest.json; a new reference, or NULL with an error naming the field. */
json_t *pv_store_manifest_read(const char *dir, struct pv_error *err);
/* Validate a manifest object; dir_name (may be NULL) is the directory's base name to match "id". */
bool pv_store_manifest_validate(const json_t *manifest, const char *dir_name, struct pv_error *err);

/*
 * Walk STORAGE/DATABASE/JOB/BACKUP_ID directories (names starting with '.' skipped, symlinks not
 * followed), in name order, calling cb for each with its validated manifest (borrowed: json_incref
 * to keep it), or with manifest NULL when it has none or an invalid one, so the caller can alert
 * instead of losing the backup silently (pv_store_manifest_read(dir) says why). Fails only when
 * storage_path itself cannot be read; unreadable deeper directories are logged and skipped.
 */
bool pv_store_scan(const char *storage_path, void (*cb)(const char *dir, json_t *manifest, void *arg),
                   void *arg, struct pv_error *err);

/* Size and space available to unprivileged users of the filesystem holding path (statvfs). */
bool pv_store_fs_usage(const char *path, uint64_t *total, uint64_t *avail, struct pv_error *err);

#endif
