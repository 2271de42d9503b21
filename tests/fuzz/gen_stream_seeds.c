/*
 * Writes the crypto_stream fuzz target's seed corpus: small dump.zst.enc streams made by the real
 * encryptor with the target's fixed test keys. Run by `make fuzz-seeds`; the output is committed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"

/* Also in fuzz_crypto_stream.c. */
static const unsigned char key_current[PV_CRYPTO_KEY_LEN] = {
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
        0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f};
static const unsigned char key_old[PV_CRYPTO_KEY_LEN] = {
        0xf0, 0xe1, 0xd2, 0xc3, 0xb4, 0xa5, 0x96, 0x87, 0x78, 0x69, 0x5a, 0x4b, 0x3c, 0x2d, 0x1e, 0x0f,
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff};
/* Not in the target's keyring: its streams fail with "unknown key". */
static const unsigned char key_foreign[PV_CRYPTO_KEY_LEN] = {
        0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa,
        0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa};

static int
write_stream(const char *dir, const char *name, const unsigned char *raw, uint32_t chunk_size,
             const char *text, size_t drop)
{
	static const unsigned char nonce[PV_CRYPTO_NONCE_LEN] = {'p', 'g', 'v', 'i', 'g', 'i',
	                                                         'l', '-', 's', 'e', 'e', 'd'};
	struct pv_crypto_key *key = pv_crypto_key_from_bytes(raw, name);
	struct pv_crypto_buf out = {0};
	struct pv_error err;
	struct pv_crypto_encrypt *enc = pv_crypto_encrypt_new_test(key, nonce, chunk_size, &err);
	char path[4096];
	FILE *f;

	if (enc == NULL || !pv_crypto_encrypt_update(enc, text, strlen(text), &out, &err) ||
	    !pv_crypto_encrypt_finish(enc, &out, &err)) {
		fprintf(stderr, "%s: %s\n", name, err.msg);
		return 1;
	}
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (f == NULL || fwrite(out.data, 1, out.len - drop, f) != out.len - drop || fclose(f) != 0) {
		perror(path);
		return 1;
	}
	printf("%s: %zu bytes\n", path, out.len - drop);
	pv_crypto_encrypt_free(enc);
	pv_crypto_buf_release(&out);
	pv_crypto_key_free(key);
	return 0;
}

int
main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : ".";
	int bad = 0;

	bad |= write_stream(dir, "three-chunks.enc", key_current, 16,
	                    "pgvigil seed: 16-byte chunks, four of them\n", 0);
	bad |= write_stream(dir, "empty.enc", key_current, PV_CRYPTO_CHUNK_SIZE, "", 0);
	bad |= write_stream(dir, "exact-multiple.enc", key_current, 8, "0123456789abcdef", 0);
	bad |= write_stream(dir, "old-key.enc", key_old, 5, "rotated key\n", 0);
	bad |= write_stream(dir, "one-byte-chunks.enc", key_current, 1, "PGDMP", 0);
	bad |= write_stream(dir, "foreign-key.enc", key_foreign, 16, "nobody has this key\n", 0);
	bad |= write_stream(dir, "truncated.enc", key_current, 16, "the final chunk is cut short\n", 7);
	return bad;
}
