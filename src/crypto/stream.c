/* The AES-256-GCM chunked stream format of dump.zst.enc: encryptor and decryptor (see pgvigil-backup(5)). */
#include "crypto/internal.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/mem.h"

/*
 * Header, 44 bytes:        Chunk k = 0, 1, ...:
 *   0  8 magic "PGVIGENC"     0  4 big-endian: bit 31 final flag, bits 0-30 plaintext length L
 *   8  1 version 1            4  L ciphertext
 *   9  1 algorithm 1          4+L 16 GCM tag
 *  10  2 reserved, zero     nonce_k = nonce base XOR (4 zero bytes || big-endian 64-bit k)
 *  12  4 chunk size (BE)    AAD_k   = header (44 bytes) || chunk prefix (4 bytes)
 *  16  8 key fingerprint    Non-final chunks have L == chunk size; the final one L < chunk size.
 *  24 12 nonce base
 *  36  8 SHA-256(bytes 0-35), first 8 bytes
 */
#define OFF_VERSION     8
#define OFF_ALGORITHM   9
#define OFF_RESERVED    10
#define OFF_CHUNK_SIZE  12
#define OFF_FINGERPRINT 16
#define OFF_NONCE       24
#define OFF_CHECKSUM    36
#define CHECKSUM_LEN    8
#define AAD_LEN         (PV_CRYPTO_HEADER_LEN + PV_CRYPTO_CHUNK_PREFIX_LEN)
#define FINAL_FLAG      0x80000000u
#define CHUNK_OVERHEAD  (PV_CRYPTO_CHUNK_PREFIX_LEN + PV_CRYPTO_TAG_LEN)

/* How far a failed chunk is looked for (positions 0 .. k + this), to tell reordering from damage;
 * 2^18 positions cost about 4 MiB of AES-ECB, once, on the failure path. The fuzz build, whose
 * streams have a few chunks and fail on nearly every input, makes it smaller (tests/fuzz). */
#ifndef PV_CRYPTO_MISPLACED_WINDOW
#define PV_CRYPTO_MISPLACED_WINDOW (1u << 18)
#endif
#define MISPLACED_WINDOW PV_CRYPTO_MISPLACED_WINDOW

static void
put_be32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static uint32_t
get_be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void
make_nonce(unsigned char nonce[PV_CRYPTO_NONCE_LEN], const unsigned char base[PV_CRYPTO_NONCE_LEN],
           uint64_t k)
{
	memcpy(nonce, base, PV_CRYPTO_NONCE_LEN);
	for (int i = 0; i < 8; i++)
		nonce[PV_CRYPTO_NONCE_LEN - 1 - i] ^= (unsigned char)(k >> (8 * i));
}

static bool set_fault(enum pv_crypto_fault *slot, enum pv_crypto_fault fault, struct pv_error *err,
                      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static bool
set_fault(enum pv_crypto_fault *slot, enum pv_crypto_fault fault, struct pv_error *err, const char *fmt, ...)
{
	va_list ap;

	if (slot != NULL)
		*slot = fault;
	if (err == NULL)
		return false;
	err->code = PV_ERR_IO;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	return false;
}

uint64_t
pv_crypto_encrypted_size(uint64_t n, uint32_t chunk_size)
{
	/* Every full chunk, then a final chunk holding the rest (possibly nothing). */
	return PV_CRYPTO_HEADER_LEN + (n / chunk_size + 1) * CHUNK_OVERHEAD + n;
}

const char *
pv_crypto_fault_name(enum pv_crypto_fault fault)
{
	switch (fault) {
	case PV_CRYPTO_FAULT_NONE: return "none";
	case PV_CRYPTO_FAULT_NOT_ENCRYPTED: return "not_encrypted";
	case PV_CRYPTO_FAULT_UNSUPPORTED: return "unsupported";
	case PV_CRYPTO_FAULT_HEADER: return "header";
	case PV_CRYPTO_FAULT_UNKNOWN_KEY: return "unknown_key";
	case PV_CRYPTO_FAULT_CORRUPT: return "corrupt";
	case PV_CRYPTO_FAULT_MISPLACED: return "misplaced";
	case PV_CRYPTO_FAULT_TRUNCATED: return "truncated";
	case PV_CRYPTO_FAULT_TRAILING: return "trailing";
	case PV_CRYPTO_FAULT_USAGE: return "usage";
	}
	return "unknown";
}

bool
pv_crypto_header_parse(const unsigned char *h, size_t len, struct pv_crypto_header_info *info,
                       enum pv_crypto_fault *fault, struct pv_error *err)
{
	unsigned char md[PV_CRYPTO_SHA256_LEN];
	uint32_t chunk_size;

	if (len < PV_CRYPTO_HEADER_LEN)
		return set_fault(fault, PV_CRYPTO_FAULT_TRUNCATED, err,
		                 "truncated: %zu bytes, shorter than the %d-byte header", len,
		                 PV_CRYPTO_HEADER_LEN);
	if (memcmp(h, PV_CRYPTO_MAGIC, 8) != 0)
		return set_fault(fault, PV_CRYPTO_FAULT_NOT_ENCRYPTED, err,
		                 "not a pgvigil encrypted file: it does not start with \"%s\"",
		                 PV_CRYPTO_MAGIC);
	if (h[OFF_VERSION] != PV_CRYPTO_FORMAT_VERSION)
		return set_fault(
		        fault, PV_CRYPTO_FAULT_UNSUPPORTED, err,
		        "unsupported format version %u (this pgvigil reads version %d): the file was written "
		        "by a newer pgvigil, or its header is damaged",
		        h[OFF_VERSION], PV_CRYPTO_FORMAT_VERSION);
	pv_crypto_sha256(h, OFF_CHECKSUM, md);
	if (memcmp(md, h + OFF_CHECKSUM, CHECKSUM_LEN) != 0)
		return set_fault(fault, PV_CRYPTO_FAULT_HEADER, err,
		                 "the header is damaged: its checksum does not match its contents");
	if (h[OFF_ALGORITHM] != PV_CRYPTO_ALG_AES_256_GCM)
		return set_fault(fault, PV_CRYPTO_FAULT_UNSUPPORTED, err,
		                 "unsupported algorithm %u (this pgvigil knows %d, AES-256-GCM)",
		                 h[OFF_ALGORITHM], PV_CRYPTO_ALG_AES_256_GCM);
	if (h[OFF_RESERVED] != 0 || h[OFF_RESERVED + 1] != 0)
		return set_fault(
		        fault, PV_CRYPTO_FAULT_UNSUPPORTED, err,
		        "unsupported header: its reserved bytes are set (written by a newer pgvigil?)");
	chunk_size = get_be32(h + OFF_CHUNK_SIZE);
	if (chunk_size == 0 || chunk_size > PV_CRYPTO_CHUNK_SIZE_MAX)
		return set_fault(fault, PV_CRYPTO_FAULT_UNSUPPORTED, err,
		                 "unsupported chunk size %lu (at most %u)", (unsigned long)chunk_size,
		                 PV_CRYPTO_CHUNK_SIZE_MAX);
	if (info != NULL) {
		info->version = h[OFF_VERSION];
		info->algorithm = h[OFF_ALGORITHM];
		info->chunk_size = chunk_size;
		pv_crypto_hex(h + OFF_FINGERPRINT, PV_CRYPTO_FINGERPRINT_LEN, info->fingerprint);
	}
	return true;
}

/* ---- encryptor ---- */

struct pv_crypto_encrypt {
	EVP_CIPHER_CTX *ctx;
	unsigned char aad[AAD_LEN]; /* header, then the current chunk's prefix */
	unsigned char *pending;     /* < chunk_size plaintext bytes not yet in a chunk */
	size_t npending;
	uint32_t chunk_size;
	uint64_t counter;
	uint64_t bytes_in, bytes_out;
	bool header_written, finished, failed;
};

static struct pv_crypto_encrypt *
encrypt_new(const struct pv_crypto_key *key, const unsigned char *nonce_base, uint32_t chunk_size,
            struct pv_error *err)
{
	struct pv_crypto_encrypt *enc;
	unsigned char *h;

	if (chunk_size == 0 || chunk_size > PV_CRYPTO_CHUNK_SIZE_MAX) {
		pv_error_set(err, PV_ERR_INTERNAL, "chunk size %u out of range", (unsigned)chunk_size);
		return NULL;
	}
	enc = pv_calloc(1, sizeof(*enc));
	enc->chunk_size = chunk_size;
	h = enc->aad;
	memcpy(h, PV_CRYPTO_MAGIC, 8);
	h[OFF_VERSION] = PV_CRYPTO_FORMAT_VERSION;
	h[OFF_ALGORITHM] = PV_CRYPTO_ALG_AES_256_GCM;
	put_be32(h + OFF_CHUNK_SIZE, chunk_size);
	memcpy(h + OFF_FINGERPRINT, key->fp, PV_CRYPTO_FINGERPRINT_LEN);
	if (nonce_base != NULL) {
		memcpy(h + OFF_NONCE, nonce_base, PV_CRYPTO_NONCE_LEN);
	} else if (RAND_bytes(h + OFF_NONCE, PV_CRYPTO_NONCE_LEN) != 1) {
		pv_crypto_ossl_error(err, "cannot draw a random nonce base");
		free(enc);
		return NULL;
	}
	{
		unsigned char md[PV_CRYPTO_SHA256_LEN];

		pv_crypto_sha256(h, OFF_CHECKSUM, md);
		memcpy(h + OFF_CHECKSUM, md, CHECKSUM_LEN);
	}
	enc->ctx = EVP_CIPHER_CTX_new();
	if (enc->ctx == NULL || EVP_EncryptInit_ex(enc->ctx, EVP_aes_256_gcm(), NULL, key->raw, NULL) != 1) {
		pv_crypto_ossl_error(err, "cannot set up AES-256-GCM");
		pv_crypto_encrypt_free(enc);
		return NULL;
	}
	enc->pending = pv_malloc(chunk_size);
	return enc;
}

struct pv_crypto_encrypt *
pv_crypto_encrypt_new(const struct pv_crypto_key *key, struct pv_error *err)
{
	return encrypt_new(key, NULL, PV_CRYPTO_CHUNK_SIZE, err);
}

struct pv_crypto_encrypt *
pv_crypto_encrypt_new_test(const struct pv_crypto_key *key,
                           const unsigned char nonce_base[PV_CRYPTO_NONCE_LEN], uint32_t chunk_size,
                           struct pv_error *err)
{
	return encrypt_new(key, nonce_base, chunk_size, err);
}

/* Append one chunk of len (<= chunk_size) bytes to out, encrypting straight into it. */
static bool
emit_chunk(struct pv_crypto_encrypt *enc, const unsigned char *data, size_t len, bool final,
           struct pv_crypto_buf *out, struct pv_error *err)
{
	unsigned char nonce[PV_CRYPTO_NONCE_LEN];
	unsigned char *p;
	int n;

	pv_crypto_buf_reserve(out, CHUNK_OVERHEAD + len);
	p = out->data + out->len;
	put_be32(p, (uint32_t)len | (final ? FINAL_FLAG : 0));
	memcpy(enc->aad + PV_CRYPTO_HEADER_LEN, p, PV_CRYPTO_CHUNK_PREFIX_LEN);
	make_nonce(nonce, enc->aad + OFF_NONCE, enc->counter);
	if (EVP_EncryptInit_ex(enc->ctx, NULL, NULL, NULL, nonce) != 1 ||
	    EVP_EncryptUpdate(enc->ctx, NULL, &n, enc->aad, AAD_LEN) != 1 ||
	    (len > 0 &&
	     EVP_EncryptUpdate(enc->ctx, p + PV_CRYPTO_CHUNK_PREFIX_LEN, &n, data, (int)len) != 1) ||
	    EVP_EncryptFinal_ex(enc->ctx, p + PV_CRYPTO_CHUNK_PREFIX_LEN + len, &n) != 1 ||
	    EVP_CIPHER_CTX_ctrl(enc->ctx, EVP_CTRL_GCM_GET_TAG, PV_CRYPTO_TAG_LEN,
	                        p + PV_CRYPTO_CHUNK_PREFIX_LEN + len) != 1) {
		enc->failed = true;
		return pv_crypto_ossl_error(err, "AES-256-GCM encryption failed");
	}
	enc->counter++;
	out->len += CHUNK_OVERHEAD + len;
	enc->bytes_out += CHUNK_OVERHEAD + len;
	return true;
}

static bool
encrypt_start(struct pv_crypto_encrypt *enc, struct pv_crypto_buf *out, struct pv_error *err)
{
	if (enc->finished || enc->failed)
		return pv_error_set(err, PV_ERR_INTERNAL, "encryptor used after %s",
		                    enc->finished ? "finish" : "a failure");
	if (!enc->header_written) {
		pv_crypto_buf_reserve(out, PV_CRYPTO_HEADER_LEN);
		memcpy(out->data + out->len, enc->aad, PV_CRYPTO_HEADER_LEN);
		out->len += PV_CRYPTO_HEADER_LEN;
		enc->bytes_out += PV_CRYPTO_HEADER_LEN;
		enc->header_written = true;
	}
	return true;
}

bool
pv_crypto_encrypt_update(struct pv_crypto_encrypt *enc, const void *data, size_t len,
                         struct pv_crypto_buf *out, struct pv_error *err)
{
	const unsigned char *p = data;
	size_t cs = enc->chunk_size;

	if (!encrypt_start(enc, out, err))
		return false;
	if (len == 0)
		return true;
	enc->bytes_in += len;
	if (enc->npending > 0) {
		size_t take = cs - enc->npending < len ? cs - enc->npending : len;

		memcpy(enc->pending + enc->npending, p, take);
		enc->npending += take;
		p += take;
		len -= take;
		if (enc->npending < cs)
			return true;
		if (!emit_chunk(enc, enc->pending, cs, false, out, err))
			return false;
		enc->npending = 0;
	}
	if (len >= cs)
		pv_crypto_buf_reserve(out, (len / cs) * (cs + CHUNK_OVERHEAD));
	/* A full chunk is never final (the final chunk is shorter), so it can go out at once, uncopied. */
	while (len >= cs) {
		if (!emit_chunk(enc, p, cs, false, out, err))
			return false;
		p += cs;
		len -= cs;
	}
	memcpy(enc->pending, p, len);
	enc->npending = len;
	return true;
}

bool
pv_crypto_encrypt_finish(struct pv_crypto_encrypt *enc, struct pv_crypto_buf *out, struct pv_error *err)
{
	if (!encrypt_start(enc, out, err))
		return false;
	if (!emit_chunk(enc, enc->pending, enc->npending, true, out, err))
		return false;
	OPENSSL_cleanse(enc->pending, enc->npending);
	enc->npending = 0;
	enc->finished = true;
	return true;
}

uint64_t
pv_crypto_encrypt_bytes_in(const struct pv_crypto_encrypt *enc)
{
	return enc->bytes_in;
}

uint64_t
pv_crypto_encrypt_bytes_out(const struct pv_crypto_encrypt *enc)
{
	return enc->bytes_out;
}

void
pv_crypto_encrypt_free(struct pv_crypto_encrypt *enc)
{
	if (enc == NULL)
		return;
	EVP_CIPHER_CTX_free(enc->ctx);
	if (enc->pending != NULL) {
		OPENSSL_cleanse(enc->pending, enc->chunk_size);
		free(enc->pending);
	}
	free(enc);
}

/* ---- decryptor ---- */

enum dec_state { DEC_HEADER, DEC_PREFIX, DEC_BODY, DEC_DONE, DEC_FAILED };

struct pv_crypto_decrypt {
	const struct pv_crypto_keyring *ring;
	const struct pv_crypto_key *key;
	EVP_CIPHER_CTX *ctx;
	enum dec_state state;
	enum pv_crypto_fault fault;
	struct pv_error error; /* repeated by every call after a failure */
	unsigned char aad[AAD_LEN];
	size_t nheader, nprefix;
	uint32_t chunk_size;
	uint32_t body_len;   /* plaintext length of the current chunk */
	bool body_final;     /* the current chunk's final flag */
	unsigned char *body; /* ciphertext and tag of a chunk split across updates */
	size_t nbody;
	uint64_t counter;
	uint64_t chunk_offset; /* file offset of the current chunk */
	uint64_t bytes_in, bytes_out;
	char fingerprint[PV_CRYPTO_FINGERPRINT_HEX_LEN + 1];
};

struct pv_crypto_decrypt *
pv_crypto_decrypt_new(const struct pv_crypto_keyring *ring)
{
	struct pv_crypto_decrypt *dec = pv_calloc(1, sizeof(*dec));

	dec->ring = ring;
	return dec;
}

void
pv_crypto_decrypt_free(struct pv_crypto_decrypt *dec)
{
	if (dec == NULL)
		return;
	EVP_CIPHER_CTX_free(dec->ctx);
	if (dec->body != NULL) {
		OPENSSL_cleanse(dec->body, (size_t)dec->chunk_size + PV_CRYPTO_TAG_LEN);
		free(dec->body);
	}
	free(dec);
}

static bool dec_fail(struct pv_crypto_decrypt *dec, enum pv_crypto_fault fault, enum pv_errcode code,
                     struct pv_error *err, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static bool
dec_fail(struct pv_crypto_decrypt *dec, enum pv_crypto_fault fault, enum pv_errcode code,
         struct pv_error *err, const char *fmt, ...)
{
	va_list ap;

	dec->state = DEC_FAILED;
	dec->fault = fault;
	dec->error.code = code;
	va_start(ap, fmt);
	vsnprintf(dec->error.msg, sizeof(dec->error.msg), fmt, ap);
	va_end(ap);
	if (err != NULL)
		*err = dec->error;
	return false;
}

static bool
dec_header(struct pv_crypto_decrypt *dec, struct pv_error *err)
{
	struct pv_crypto_header_info info;
	struct pv_error e;
	enum pv_crypto_fault fault;
	char have[256];

	if (!pv_crypto_header_parse(dec->aad, PV_CRYPTO_HEADER_LEN, &info, &fault, &e))
		return dec_fail(dec, fault, e.code, err, "%s", e.msg);
	memcpy(dec->fingerprint, info.fingerprint, sizeof(dec->fingerprint));
	dec->key = pv_crypto_keyring_find_raw(dec->ring, dec->aad + OFF_FINGERPRINT);
	if (dec->key == NULL) {
		pv_crypto_keyring_describe(dec->ring, have, sizeof(have));
		return dec_fail(
		        dec, PV_CRYPTO_FAULT_UNKNOWN_KEY, PV_ERR_NOT_FOUND, err,
		        "encrypted with key %s, which is not configured (%s); HINT: add that key's file to "
		        "storage.old_key_files",
		        info.fingerprint, have);
	}
	dec->chunk_size = info.chunk_size;
	dec->body = pv_malloc((size_t)dec->chunk_size + PV_CRYPTO_TAG_LEN);
	dec->ctx = EVP_CIPHER_CTX_new();
	if (dec->ctx == NULL ||
	    EVP_DecryptInit_ex(dec->ctx, EVP_aes_256_gcm(), NULL, dec->key->raw, NULL) != 1) {
		pv_crypto_ossl_error(&e, "cannot set up AES-256-GCM");
		return dec_fail(dec, PV_CRYPTO_FAULT_USAGE, PV_ERR_INTERNAL, err, "%s", e.msg);
	}
	dec->chunk_offset = PV_CRYPTO_HEADER_LEN;
	dec->state = DEC_PREFIX;
	return true;
}

static bool
dec_prefix(struct pv_crypto_decrypt *dec, struct pv_error *err)
{
	uint32_t v = get_be32(dec->aad + PV_CRYPTO_HEADER_LEN);

	dec->body_final = (v & FINAL_FLAG) != 0;
	dec->body_len = v & ~FINAL_FLAG;
	if (dec->body_final ? dec->body_len >= dec->chunk_size : dec->body_len != dec->chunk_size)
		return dec_fail(
		        dec, PV_CRYPTO_FAULT_CORRUPT, PV_ERR_IO, err,
		        "chunk %llu at byte offset %llu is damaged: its length field (%s, %u bytes) is "
		        "impossible with %u-byte chunks",
		        (unsigned long long)dec->counter, (unsigned long long)dec->chunk_offset,
		        dec->body_final ? "final" : "not final", (unsigned)dec->body_len,
		        (unsigned)dec->chunk_size);
	dec->nbody = 0;
	dec->state = DEC_BODY;
	return true;
}

/*
 * A chunk failed authentication. GHASH does not depend on the nonce, so with T the tag the
 * data would have under nonce k, the data is authentic under nonce m exactly when
 * stored tag == T ^ E(J0_k) ^ E(J0_m). Trying many m costs one AES block each: that tells a
 * chunk moved from position m (reordered, duplicated, dropped neighbours) from a damaged one.
 * Returns the position, or UINT64_MAX.
 */
static uint64_t
find_position(struct pv_crypto_decrypt *dec, const unsigned char *body, const unsigned char *garbage)
{
	enum { BATCH = 1024 };
	const size_t blen = dec->body_len;
	unsigned char nonce[PV_CRYPTO_NONCE_LEN], tag[PV_CRYPTO_TAG_LEN], target[PV_CRYPTO_TAG_LEN];
	unsigned char *scratch = pv_malloc(blen + 1);
	unsigned char *blocks = pv_malloc(BATCH * 16), *enc_blocks = pv_malloc(BATCH * 16 + 16);
	EVP_CIPHER_CTX *gcm = EVP_CIPHER_CTX_new(), *ecb = EVP_CIPHER_CTX_new();
	uint64_t found = UINT64_MAX, limit = dec->counter + MISPLACED_WINDOW;
	int n;

	if (gcm == NULL || ecb == NULL)
		goto out;
	/* Re-encrypting the CTR output under nonce k reproduces the ciphertext and yields tag T_k. */
	make_nonce(nonce, dec->aad + OFF_NONCE, dec->counter);
	if (EVP_EncryptInit_ex(gcm, EVP_aes_256_gcm(), NULL, dec->key->raw, nonce) != 1 ||
	    EVP_EncryptUpdate(gcm, NULL, &n, dec->aad, AAD_LEN) != 1 ||
	    (blen > 0 && EVP_EncryptUpdate(gcm, scratch, &n, garbage, (int)blen) != 1) ||
	    EVP_EncryptFinal_ex(gcm, scratch, &n) != 1 ||
	    EVP_CIPHER_CTX_ctrl(gcm, EVP_CTRL_GCM_GET_TAG, PV_CRYPTO_TAG_LEN, tag) != 1)
		goto out;
	if (EVP_EncryptInit_ex(ecb, EVP_aes_256_ecb(), NULL, dec->key->raw, NULL) != 1)
		goto out;
	EVP_CIPHER_CTX_set_padding(ecb, 0);
	/* target = stored ^ T_k ^ E(J0_k); then look for E(J0_m) == target. */
	memcpy(blocks, nonce, PV_CRYPTO_NONCE_LEN);
	put_be32(blocks + PV_CRYPTO_NONCE_LEN, 1);
	if (EVP_EncryptUpdate(ecb, enc_blocks, &n, blocks, 16) != 1)
		goto out;
	for (int i = 0; i < PV_CRYPTO_TAG_LEN; i++)
		target[i] = body[blen + i] ^ tag[i] ^ enc_blocks[i];
	for (uint64_t m = 0; m < limit && found == UINT64_MAX; m += BATCH) {
		uint64_t cnt = limit - m < BATCH ? limit - m : BATCH;

		for (uint64_t j = 0; j < cnt; j++) {
			make_nonce(blocks + 16 * j, dec->aad + OFF_NONCE, m + j);
			put_be32(blocks + 16 * j + PV_CRYPTO_NONCE_LEN, 1);
		}
		if (EVP_EncryptUpdate(ecb, enc_blocks, &n, blocks, (int)(16 * cnt)) != 1)
			break;
		for (uint64_t j = 0; j < cnt; j++) {
			if (m + j != dec->counter && memcmp(enc_blocks + 16 * j, target, 16) == 0) {
				found = m + j;
				break;
			}
		}
	}
out:
	EVP_CIPHER_CTX_free(gcm);
	EVP_CIPHER_CTX_free(ecb);
	free(scratch);
	free(blocks);
	free(enc_blocks);
	return found;
}

/* Authenticate and decrypt the current chunk (ciphertext then tag in body) into out. */
static bool
dec_chunk(struct pv_crypto_decrypt *dec, const unsigned char *body, struct pv_crypto_buf *out,
          struct pv_error *err)
{
	unsigned char nonce[PV_CRYPTO_NONCE_LEN];
	const size_t blen = dec->body_len;
	unsigned char *p;
	uint64_t pos;
	int n;

	/* Plaintext goes to out's spare room and becomes visible (len) only once the tag verifies. */
	pv_crypto_buf_reserve(out, blen + 1);
	p = out->data + out->len;
	make_nonce(nonce, dec->aad + OFF_NONCE, dec->counter);
	if (EVP_DecryptInit_ex(dec->ctx, NULL, NULL, NULL, nonce) != 1 ||
	    EVP_DecryptUpdate(dec->ctx, NULL, &n, dec->aad, AAD_LEN) != 1 ||
	    (blen > 0 && EVP_DecryptUpdate(dec->ctx, p, &n, body, (int)blen) != 1) ||
	    EVP_CIPHER_CTX_ctrl(dec->ctx, EVP_CTRL_GCM_SET_TAG, PV_CRYPTO_TAG_LEN, (void *)(body + blen)) !=
	            1) {
		struct pv_error e;

		pv_crypto_ossl_error(&e, "AES-256-GCM decryption failed");
		return dec_fail(dec, PV_CRYPTO_FAULT_USAGE, PV_ERR_INTERNAL, err, "%s", e.msg);
	}
	if (EVP_DecryptFinal_ex(dec->ctx, p + blen, &n) != 1) {
		pos = find_position(dec, body, p);
		OPENSSL_cleanse(p, blen);
		if (pos != UINT64_MAX)
			return dec_fail(
			        dec, PV_CRYPTO_FAULT_MISPLACED, PV_ERR_IO, err,
			        "chunk %llu at byte offset %llu is out of place: it was written as chunk "
			        "%llu; chunks were reordered, duplicated or removed",
			        (unsigned long long)dec->counter, (unsigned long long)dec->chunk_offset,
			        (unsigned long long)pos);
		return dec_fail(
		        dec, PV_CRYPTO_FAULT_CORRUPT, PV_ERR_IO, err,
		        "chunk %llu at byte offset %llu failed authentication: the file is damaged or was "
		        "tampered with",
		        (unsigned long long)dec->counter, (unsigned long long)dec->chunk_offset);
	}
	out->len += blen;
	dec->bytes_out += blen;
	dec->counter++;
	dec->chunk_offset += CHUNK_OVERHEAD + blen;
	dec->nprefix = 0;
	dec->state = dec->body_final ? DEC_DONE : DEC_PREFIX;
	return true;
}

bool
pv_crypto_decrypt_update(struct pv_crypto_decrypt *dec, const void *data, size_t len,
                         struct pv_crypto_buf *out, struct pv_error *err)
{
	const unsigned char *p = data;

	if (dec->state == DEC_FAILED) {
		if (err != NULL)
			*err = dec->error;
		return false;
	}
	dec->bytes_in += len;
	while (len > 0) {
		size_t need, take;

		switch (dec->state) {
		case DEC_HEADER:
			take = PV_CRYPTO_HEADER_LEN - dec->nheader < len ? PV_CRYPTO_HEADER_LEN - dec->nheader
			                                                 : len;
			memcpy(dec->aad + dec->nheader, p, take);
			dec->nheader += take;
			p += take;
			len -= take;
			if (dec->nheader == PV_CRYPTO_HEADER_LEN && !dec_header(dec, err))
				return false;
			break;
		case DEC_PREFIX:
			take = PV_CRYPTO_CHUNK_PREFIX_LEN - dec->nprefix < len
			               ? PV_CRYPTO_CHUNK_PREFIX_LEN - dec->nprefix
			               : len;
			memcpy(dec->aad + PV_CRYPTO_HEADER_LEN + dec->nprefix, p, take);
			dec->nprefix += take;
			p += take;
			len -= take;
			if (dec->nprefix == PV_CRYPTO_CHUNK_PREFIX_LEN && !dec_prefix(dec, err))
				return false;
			break;
		case DEC_BODY:
			need = (size_t)dec->body_len + PV_CRYPTO_TAG_LEN;
			if (dec->nbody == 0 && len >= need) {
				/* The whole chunk is in this input: decrypt it in place, without a copy. */
				if (!dec_chunk(dec, p, out, err))
					return false;
				p += need;
				len -= need;
				break;
			}
			take = need - dec->nbody < len ? need - dec->nbody : len;
			memcpy(dec->body + dec->nbody, p, take);
			dec->nbody += take;
			p += take;
			len -= take;
			if (dec->nbody == need && !dec_chunk(dec, dec->body, out, err))
				return false;
			break;
		case DEC_DONE:
			return dec_fail(
			        dec, PV_CRYPTO_FAULT_TRAILING, PV_ERR_IO, err,
			        "unexpected data after the final chunk at byte offset %llu (at least %zu "
			        "bytes): something was appended to the file",
			        (unsigned long long)dec->chunk_offset, len);
		case DEC_FAILED: return false;
		}
	}
	return true;
}

bool
pv_crypto_decrypt_finish(struct pv_crypto_decrypt *dec, struct pv_error *err)
{
	switch (dec->state) {
	case DEC_DONE: return true;
	case DEC_FAILED:
		if (err != NULL)
			*err = dec->error;
		return false;
	case DEC_HEADER:
		if (dec->nheader == 0)
			return dec_fail(
			        dec, PV_CRYPTO_FAULT_TRUNCATED, PV_ERR_IO, err,
			        "truncated: the file is empty (an encrypted stream has at least %d bytes)",
			        PV_CRYPTO_HEADER_LEN + CHUNK_OVERHEAD);
		return dec_fail(dec, PV_CRYPTO_FAULT_TRUNCATED, PV_ERR_IO, err,
		                "truncated: the file ends after %zu bytes, inside the %d-byte header",
		                dec->nheader, PV_CRYPTO_HEADER_LEN);
	case DEC_PREFIX:
		if (dec->nprefix == 0 && dec->counter == 0)
			return dec_fail(dec, PV_CRYPTO_FAULT_TRUNCATED, PV_ERR_IO, err,
			                "truncated: the file ends right after the header, with no chunks");
		if (dec->nprefix == 0)
			return dec_fail(dec, PV_CRYPTO_FAULT_TRUNCATED, PV_ERR_IO, err,
			                "truncated: the file ends at byte offset %llu after chunk %llu, with "
			                "no final "
			                "chunk",
			                (unsigned long long)dec->chunk_offset,
			                (unsigned long long)dec->counter - 1);
		/* fallthrough */
	case DEC_BODY:
		return dec_fail(dec, PV_CRYPTO_FAULT_TRUNCATED, PV_ERR_IO, err,
		                "truncated: the file ends at byte offset %llu, inside chunk %llu",
		                (unsigned long long)dec->bytes_in, (unsigned long long)dec->counter);
	}
	return false;
}

enum pv_crypto_fault
pv_crypto_decrypt_fault(const struct pv_crypto_decrypt *dec)
{
	return dec->fault;
}

const char *
pv_crypto_decrypt_fingerprint(const struct pv_crypto_decrypt *dec)
{
	return dec->fingerprint[0] != '\0' ? dec->fingerprint : NULL;
}

uint64_t
pv_crypto_decrypt_bytes_in(const struct pv_crypto_decrypt *dec)
{
	return dec->bytes_in;
}

uint64_t
pv_crypto_decrypt_bytes_out(const struct pv_crypto_decrypt *dec)
{
	return dec->bytes_out;
}
