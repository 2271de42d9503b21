/* SHA-256, backup keys and the AES-256-GCM chunked stream format of dump.zst.enc (pgvigil-backup(5)). */
#ifndef PV_CRYPTO_CRYPTO_H
#define PV_CRYPTO_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/error.h"

/*
 * Everything here is pure: no event loop and no I/O except reading key files. Hashing and
 * the stream functions take and produce memory; the caller moves bytes to and from disk.
 *
 * Error codes: PV_ERR_CONFIG_SECRET for a refused key file, PV_ERR_IO for an unreadable key
 * file or a damaged, truncated or foreign stream, PV_ERR_NOT_FOUND for a stream whose key is
 * not configured, PV_ERR_INTERNAL for OpenSSL failures and misuse. enum pv_crypto_fault says
 * precisely what was wrong with a stream.
 */

/* ---- hex ---- */

/* Write 2*n lowercase hex digits and a NUL to out (size >= 2*n + 1). */
void pv_crypto_hex(const unsigned char *in, size_t n, char *out);

/* ---- SHA-256 ---- */

#define PV_CRYPTO_SHA256_LEN     32
#define PV_CRYPTO_SHA256_HEX_LEN 64

struct pv_crypto_sha256;

/* Never NULL; aborts only if OpenSSL cannot provide SHA-256 at all (a broken installation). */
struct pv_crypto_sha256 *pv_crypto_sha256_new(void);
void pv_crypto_sha256_update(struct pv_crypto_sha256 *h, const void *data, size_t len);
/* Both finals reset the context, so it can hash the next stream. */
void pv_crypto_sha256_final(struct pv_crypto_sha256 *h, unsigned char out[PV_CRYPTO_SHA256_LEN]);
void pv_crypto_sha256_final_hex(struct pv_crypto_sha256 *h, char out[PV_CRYPTO_SHA256_HEX_LEN + 1]);
/* Bytes hashed since the last final (for progress and manifest sizes). */
uint64_t pv_crypto_sha256_count(const struct pv_crypto_sha256 *h);
void pv_crypto_sha256_free(struct pv_crypto_sha256 *h);

/* One-shot helper. */
void pv_crypto_sha256(const void *data, size_t len, unsigned char out[PV_CRYPTO_SHA256_LEN]);

/* ---- keys ---- */

#define PV_CRYPTO_KEY_LEN             32
#define PV_CRYPTO_FINGERPRINT_LEN     8 /* raw bytes, as stored in the stream header */
#define PV_CRYPTO_FINGERPRINT_HEX_LEN 16

struct pv_crypto_key;

/*
 * Load a key file: exactly 32 raw bytes, or 64 hex digits optionally followed by "\n" or
 * "\r\n". The file must be a regular file not accessible to group or others. Messages name
 * the path, never any key material. Fails with PV_ERR_CONFIG_SECRET (PV_ERR_IO when the file
 * cannot be read).
 */
struct pv_crypto_key *pv_crypto_key_load(const char *path, struct pv_error *err);
/* A key from memory; origin (may be NULL) names it in messages. */
struct pv_crypto_key *pv_crypto_key_from_bytes(const unsigned char raw[PV_CRYPTO_KEY_LEN],
                                               const char *origin);
/* Wipes the key material. */
void pv_crypto_key_free(struct pv_crypto_key *key);

/*
 * 16 lowercase hex digits: the first 8 bytes of SHA-256("pgvigil key fingerprint v1\n" || key).
 * Safe to log and to store in manifests; identifies the key without revealing it.
 */
const char *pv_crypto_key_fingerprint(const struct pv_crypto_key *key);
/* The path or name the key came from. */
const char *pv_crypto_key_origin(const struct pv_crypto_key *key);

/* The current key (used to encrypt new backups) plus old keys (still accepted to decrypt). */
struct pv_crypto_keyring;

struct pv_crypto_keyring *pv_crypto_keyring_new(void);
void pv_crypto_keyring_free(struct pv_crypto_keyring *ring);
/*
 * Take ownership of key. current: make it the key new backups are encrypted with (replaces a
 * previous current key, which stays for decryption). A key whose fingerprint is already in the
 * ring is freed and not added again, so listing the current key among the old ones is harmless.
 */
void pv_crypto_keyring_add(struct pv_crypto_keyring *ring, struct pv_crypto_key *key, bool current);
/* storage.encryption_key_file (may be NULL) and storage.old_key_files in one call. */
struct pv_crypto_keyring *pv_crypto_keyring_load(const char *key_file, char *const *old_key_files,
                                                 size_t n_old, struct pv_error *err);
/* NULL when there is no current key (backups are then not encrypted). */
const struct pv_crypto_key *pv_crypto_keyring_current(const struct pv_crypto_keyring *ring);
/* Look a key up by its 16-hex-digit fingerprint (case-insensitive); NULL when not present. */
const struct pv_crypto_key *pv_crypto_keyring_find(const struct pv_crypto_keyring *ring,
                                                   const char *fingerprint);
size_t pv_crypto_keyring_count(const struct pv_crypto_keyring *ring);

/* ---- the encrypted stream (dump.zst.enc) ---- */

#define PV_CRYPTO_MAGIC            "PGVIGENC"
#define PV_CRYPTO_FORMAT_VERSION   1
#define PV_CRYPTO_ALG_AES_256_GCM  1
#define PV_CRYPTO_ALGORITHM_NAME   "AES-256-GCM" /* as written to manifest.json */
#define PV_CRYPTO_HEADER_LEN       44
#define PV_CRYPTO_NONCE_LEN        12
#define PV_CRYPTO_TAG_LEN          16
#define PV_CRYPTO_CHUNK_PREFIX_LEN 4
#define PV_CRYPTO_CHUNK_SIZE       65536u     /* plaintext bytes per chunk written by pgvigil */
#define PV_CRYPTO_CHUNK_SIZE_MAX   (1u << 24) /* largest chunk size a reader accepts */

/* A caller-owned output buffer (start zeroed). Functions append at len and grow it as needed;
 * the caller consumes data[0..len) and sets len back to 0. */
struct pv_crypto_buf {
	unsigned char *data;
	size_t len;
	size_t cap;
};

/* Free the buffer's memory, wiping it first (it may hold plaintext), and zero the struct. */
void pv_crypto_buf_release(struct pv_crypto_buf *buf);

/* What went wrong with an encrypted stream; messages differ within a kind, too. */
enum pv_crypto_fault {
	PV_CRYPTO_FAULT_NONE = 0,
	PV_CRYPTO_FAULT_NOT_ENCRYPTED, /* no "PGVIGENC" magic: not a pgvigil encrypted file */
	PV_CRYPTO_FAULT_UNSUPPORTED,   /* unknown format version or algorithm */
	PV_CRYPTO_FAULT_HEADER,        /* header checksum or field check failed */
	PV_CRYPTO_FAULT_UNKNOWN_KEY,   /* the header's key fingerprint is not in the keyring */
	PV_CRYPTO_FAULT_CORRUPT,       /* a chunk failed authentication or has a bad length field */
	PV_CRYPTO_FAULT_MISPLACED,     /* an authentic chunk at the wrong position (reordered, duplicated,
	                                  dropped) */
	PV_CRYPTO_FAULT_TRUNCATED,     /* the stream ends before its final chunk */
	PV_CRYPTO_FAULT_TRAILING,      /* bytes after the final chunk */
	PV_CRYPTO_FAULT_USAGE,         /* OpenSSL failed (not the data's fault) */
};

/* Header fields readable without a key (pgvigilctl verify-file, manifest cross-checks). */
struct pv_crypto_header_info {
	unsigned version;
	unsigned algorithm;
	uint32_t chunk_size;
	char fingerprint[PV_CRYPTO_FINGERPRINT_HEX_LEN + 1];
};

/* Parse and check the first PV_CRYPTO_HEADER_LEN bytes of a stream. */
bool pv_crypto_header_parse(const unsigned char *data, size_t len, struct pv_crypto_header_info *info,
                            enum pv_crypto_fault *fault, struct pv_error *err);

struct pv_crypto_encrypt;

/* Start a stream under key (borrowed: it must outlive the encryptor), with a fresh random nonce base. */
struct pv_crypto_encrypt *pv_crypto_encrypt_new(const struct pv_crypto_key *key, struct pv_error *err);
/*
 * FOR TESTS ONLY: a fixed nonce base and a chosen chunk size (1 .. PV_CRYPTO_CHUNK_SIZE_MAX).
 * Reusing a nonce base with the same key destroys confidentiality and integrity.
 */
struct pv_crypto_encrypt *pv_crypto_encrypt_new_test(const struct pv_crypto_key *key,
                                                     const unsigned char nonce_base[PV_CRYPTO_NONCE_LEN],
                                                     uint32_t chunk_size, struct pv_error *err);
/* Encrypt len bytes (any size, may be 0), appending ciphertext to out: the header on the first call,
 * then every chunk completed so far. At most one chunk of plaintext stays buffered. */
bool pv_crypto_encrypt_update(struct pv_crypto_encrypt *enc, const void *data, size_t len,
                              struct pv_crypto_buf *out, struct pv_error *err);
/* Append the final chunk. The stream is complete only after this succeeds. */
bool pv_crypto_encrypt_finish(struct pv_crypto_encrypt *enc, struct pv_crypto_buf *out, struct pv_error *err);
/* Plaintext bytes accepted and ciphertext bytes produced so far. */
uint64_t pv_crypto_encrypt_bytes_in(const struct pv_crypto_encrypt *enc);
uint64_t pv_crypto_encrypt_bytes_out(const struct pv_crypto_encrypt *enc);
void pv_crypto_encrypt_free(struct pv_crypto_encrypt *enc);

/* Exact size of the encrypted form of a plaintext of n bytes with the given chunk size. */
uint64_t pv_crypto_encrypted_size(uint64_t n, uint32_t chunk_size);

struct pv_crypto_decrypt;

/* The key is chosen from ring (borrowed) by the header's fingerprint. */
struct pv_crypto_decrypt *pv_crypto_decrypt_new(const struct pv_crypto_keyring *ring);
/*
 * Feed ciphertext split anywhere. Appends to out only plaintext whose chunk has been
 * authenticated; out grows by at most one chunk beyond len. Until finish() succeeds the
 * plaintext so far may be a truncated prefix of the original: consumers must not treat it as
 * complete. After a failure every later call fails with the same error.
 */
bool pv_crypto_decrypt_update(struct pv_crypto_decrypt *dec, const void *data, size_t len,
                              struct pv_crypto_buf *out, struct pv_error *err);
/* Fails unless the final chunk was seen and authenticated (truncation). */
bool pv_crypto_decrypt_finish(struct pv_crypto_decrypt *dec, struct pv_error *err);
enum pv_crypto_fault pv_crypto_decrypt_fault(const struct pv_crypto_decrypt *dec);
/* The header's key fingerprint once the header has been read, else NULL. */
const char *pv_crypto_decrypt_fingerprint(const struct pv_crypto_decrypt *dec);
uint64_t pv_crypto_decrypt_bytes_in(const struct pv_crypto_decrypt *dec);
uint64_t pv_crypto_decrypt_bytes_out(const struct pv_crypto_decrypt *dec);
void pv_crypto_decrypt_free(struct pv_crypto_decrypt *dec);

const char *pv_crypto_fault_name(enum pv_crypto_fault fault);

#endif
