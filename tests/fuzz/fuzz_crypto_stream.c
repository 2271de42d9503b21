/*
 * Fuzz target: the encrypted stream reader (pv_crypto_decrypt_*), the input being a dump.zst.enc file.
 *
 * The keyring holds two fixed test keys; the seeds are streams the real writer produced with them
 * (tests/fuzz/gen_stream_seeds.c). The input is decrypted twice: in one piece, and cut into small
 * pieces of varying sizes, as a pipe delivers it.
 *
 * Checked beyond memory safety: both ways give the same outcome, fault and plaintext; a stream that
 * decrypts has a valid header naming a key of the ring and exactly the size the format predicts.
 * The input is also used as plaintext: written with a chunk size from its length and read back, it
 * must come back unchanged.
 */
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "fuzz.h"

static struct pv_crypto_keyring *ring;
static struct pv_crypto_key *writer_key;

/* Also in gen_stream_seeds.c. */
static const unsigned char key_current[PV_CRYPTO_KEY_LEN] = {
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
        0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f};
static const unsigned char key_old[PV_CRYPTO_KEY_LEN] = {
        0xf0, 0xe1, 0xd2, 0xc3, 0xb4, 0xa5, 0x96, 0x87, 0x78, 0x69, 0x5a, 0x4b, 0x3c, 0x2d, 0x1e, 0x0f,
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff};

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const char *const env[] = {NULL};

	(void)argc;
	(void)argv;
	pv_fuzz_environment(env);
	(void)pv_fuzz_scratch();
	ring = pv_crypto_keyring_new();
	pv_crypto_keyring_add(ring, pv_crypto_key_from_bytes(key_current, "fuzz current key"), true);
	pv_crypto_keyring_add(ring, pv_crypto_key_from_bytes(key_old, "fuzz old key"), false);
	writer_key = pv_crypto_key_from_bytes(key_current, "fuzz writer key");
	return 0;
}

struct outcome {
	bool ok;
	enum pv_crypto_fault fault;
	struct pv_error err;
	struct pv_crypto_buf plain;
	char fingerprint[PV_CRYPTO_FINGERPRINT_HEX_LEN + 1];
};

/* Decrypt data fed in pieces of the given sizes (cycled; 0 = all at once). */
static void
decrypt(const uint8_t *data, size_t size, const size_t *pieces, size_t n_pieces, struct outcome *o)
{
	struct pv_crypto_decrypt *dec = pv_crypto_decrypt_new(ring);
	size_t off = 0, i = 0;
	bool ok = true;

	memset(o, 0, sizeof(*o));
	while (ok && off < size) {
		size_t n = n_pieces == 0 ? size : pieces[i++ % n_pieces];

		if (n > size - off)
			n = size - off;
		ok = pv_crypto_decrypt_update(dec, data + off, n, &o->plain, &o->err);
		off += n;
	}
	if (ok)
		ok = pv_crypto_decrypt_finish(dec, &o->err);
	o->ok = ok;
	o->fault = pv_crypto_decrypt_fault(dec);
	PV_FUZZ_CHECK(ok == (o->fault == PV_CRYPTO_FAULT_NONE), "outcome %d with fault %s", ok,
	              pv_crypto_fault_name(o->fault));
	PV_FUZZ_CHECK(ok || o->err.msg[0] != '\0', "failure without a message");
	PV_FUZZ_CHECK(pv_crypto_decrypt_bytes_out(dec) == o->plain.len, "bytes_out %llu, plaintext %zu",
	              (unsigned long long)pv_crypto_decrypt_bytes_out(dec), o->plain.len);
	if (pv_crypto_decrypt_fingerprint(dec) != NULL)
		memcpy(o->fingerprint, pv_crypto_decrypt_fingerprint(dec), sizeof(o->fingerprint));
	if (!ok) {
		/* Every later call repeats the error. */
		struct pv_error again;
		PV_FUZZ_CHECK(!pv_crypto_decrypt_update(dec, "x", 1, &o->plain, &again) &&
		                      strcmp(again.msg, o->err.msg) == 0,
		              "a failed reader accepted more input");
	}
	pv_crypto_decrypt_free(dec);
}

static void
read_stream(const uint8_t *data, size_t size)
{
	static const size_t pieces[] = {1, 3, 44, 7, 4, 16, 61, 2, 20, 5};
	struct outcome whole, split;
	struct pv_crypto_header_info info;
	struct pv_error err;
	enum pv_crypto_fault fault;

	decrypt(data, size, NULL, 0, &whole);
	decrypt(data, size, pieces, sizeof(pieces) / sizeof(pieces[0]), &split);
	PV_FUZZ_CHECK(whole.ok == split.ok && whole.fault == split.fault,
	              "in one piece: %s (%s); in pieces: %s (%s)", pv_crypto_fault_name(whole.fault),
	              whole.err.msg, pv_crypto_fault_name(split.fault), split.err.msg);
	PV_FUZZ_CHECK(whole.plain.len == split.plain.len &&
	                      (whole.plain.len == 0 ||
	                       memcmp(whole.plain.data, split.plain.data, whole.plain.len) == 0),
	              "plaintext differs between one piece (%zu bytes) and pieces (%zu bytes)",
	              whole.plain.len, split.plain.len);
	PV_FUZZ_CHECK(strcmp(whole.fingerprint, split.fingerprint) == 0, "fingerprints differ");
	if (whole.ok) {
		PV_FUZZ_CHECK(pv_crypto_header_parse(data, size, &info, &fault, &err),
		              "decrypted, yet the header does not parse: %s", err.msg);
		PV_FUZZ_CHECK(strcmp(info.fingerprint, whole.fingerprint) == 0 &&
		                      pv_crypto_keyring_find(ring, info.fingerprint) != NULL,
		              "header key %s is not the reader's", info.fingerprint);
		PV_FUZZ_CHECK(pv_crypto_encrypted_size(whole.plain.len, info.chunk_size) == size,
		              "%zu plaintext bytes in %zu-byte chunks should take %llu bytes, not %zu",
		              whole.plain.len, (size_t)info.chunk_size,
		              (unsigned long long)pv_crypto_encrypted_size(whole.plain.len, info.chunk_size),
		              size);
	}
	pv_crypto_buf_release(&whole.plain);
	pv_crypto_buf_release(&split.plain);
}

static void
round_trip(const uint8_t *data, size_t size)
{
	static const unsigned char nonce[PV_CRYPTO_NONCE_LEN] = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2};
	uint32_t chunk_size = 1 + (uint32_t)(size % 67);
	struct pv_crypto_buf enc = {0};
	struct pv_error err;
	struct pv_crypto_encrypt *e = pv_crypto_encrypt_new_test(writer_key, nonce, chunk_size, &err);
	struct outcome back;
	size_t half = size / 2;

	PV_FUZZ_CHECK(e != NULL, "encryptor: %s", err.msg);
	PV_FUZZ_CHECK(pv_crypto_encrypt_update(e, data, half, &enc, &err) &&
	                      pv_crypto_encrypt_update(e, data + half, size - half, &enc, &err) &&
	                      pv_crypto_encrypt_finish(e, &enc, &err),
	              "encrypting: %s", err.msg);
	PV_FUZZ_CHECK(enc.len == pv_crypto_encrypted_size(size, chunk_size) &&
	                      enc.len == pv_crypto_encrypt_bytes_out(e) &&
	                      pv_crypto_encrypt_bytes_in(e) == size,
	              "encrypted size %zu, predicted %llu", enc.len,
	              (unsigned long long)pv_crypto_encrypted_size(size, chunk_size));
	pv_crypto_encrypt_free(e);
	decrypt(enc.data, enc.len, NULL, 0, &back);
	PV_FUZZ_CHECK(back.ok, "a fresh stream does not decrypt: %s", back.err.msg);
	PV_FUZZ_CHECK(back.plain.len == size && (size == 0 || memcmp(back.plain.data, data, size) == 0),
	              "round trip changed the plaintext");
	pv_crypto_buf_release(&back.plain);
	pv_crypto_buf_release(&enc);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	read_stream(data, size);
	round_trip(data, size);
	return 0;
}
