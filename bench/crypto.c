/* Throughput of src/crypto against raw OpenSSL EVP calls on the same data, in one run.
 *
 * Built by hand, not by make:
 *   gcc -std=c11 -D_GNU_SOURCE -O2 -Isrc bench/crypto.c src/crypto/{sha256,key,stream}.c \
 *       src/util/{error,mem}.c -lcrypto -o /tmp/bench-crypto
 *   /tmp/bench-crypto [MiB, default 256]
 */
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto/crypto.h"
#include "util/mem.h"

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
report(const char *what, size_t bytes, double secs, double ref)
{
	double mbs = (double)bytes / secs / 1e6;

	if (ref > 0)
		printf("%-46s %8.0f MB/s  (%5.1f%% of raw)\n", what, mbs, 100.0 * mbs / ref);
	else
		printf("%-46s %8.0f MB/s\n", what, mbs);
}

static double
raw_sha(const unsigned char *data, size_t n, size_t piece)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned char md[32];
	unsigned int len;
	double t = now();

	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	for (size_t i = 0; i < n; i += piece)
		EVP_DigestUpdate(ctx, data + i, n - i < piece ? n - i : piece);
	EVP_DigestFinal_ex(ctx, md, &len);
	t = now() - t;
	EVP_MD_CTX_free(ctx);
	return (double)n / t / 1e6;
}

static double
our_sha(const unsigned char *data, size_t n, size_t piece)
{
	struct pv_crypto_sha256 *h = pv_crypto_sha256_new();
	char hex[65];
	double t = now();

	for (size_t i = 0; i < n; i += piece)
		pv_crypto_sha256_update(h, data + i, n - i < piece ? n - i : piece);
	pv_crypto_sha256_final_hex(h, hex);
	t = now() - t;
	pv_crypto_sha256_free(h);
	return (double)n / t / 1e6;
}

/* One GCM message over everything: the ceiling for any chunked format. */
static double
raw_gcm(const unsigned char *key, const unsigned char *data, unsigned char *out, size_t n, size_t piece, int enc)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	unsigned char iv[12] = {0}, tag[16] = {0};
	int len;
	double t = now();

	EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, iv, enc);
	for (size_t i = 0; i < n; i += piece)
		EVP_CipherUpdate(ctx, out + i, &len, data + i, (int)(n - i < piece ? n - i : piece));
	if (!enc)
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, tag);
	EVP_CipherFinal_ex(ctx, tag, &len); /* decrypt: fails on the dummy tag, which is fine here */
	t = now() - t;
	EVP_CIPHER_CTX_free(ctx);
	return (double)n / t / 1e6;
}

static double
our_encrypt(const struct pv_crypto_key *key, const unsigned char *data, size_t n, size_t piece,
            struct pv_crypto_buf *all)
{
	struct pv_error err;
	struct pv_crypto_encrypt *enc = pv_crypto_encrypt_new(key, &err);
	struct pv_crypto_buf out = {0};
	double t = now();

	for (size_t i = 0; i < n; i += piece) {
		if (!pv_crypto_encrypt_update(enc, data + i, n - i < piece ? n - i : piece, all != NULL ? all : &out,
		                              &err))
			abort();
		out.len = 0; /* as a pipeline would after writing it out */
	}
	if (!pv_crypto_encrypt_finish(enc, all != NULL ? all : &out, &err))
		abort();
	t = now() - t;
	pv_crypto_encrypt_free(enc);
	pv_crypto_buf_release(&out);
	return (double)n / t / 1e6;
}

static double
our_decrypt(const struct pv_crypto_keyring *ring, const struct pv_crypto_buf *ct, size_t n, size_t piece)
{
	struct pv_error err;
	struct pv_crypto_decrypt *dec = pv_crypto_decrypt_new(ring);
	struct pv_crypto_buf out = {0};
	double t = now();

	for (size_t i = 0; i < ct->len; i += piece) {
		if (!pv_crypto_decrypt_update(dec, ct->data + i, ct->len - i < piece ? ct->len - i : piece, &out, &err)) {
			fprintf(stderr, "%s\n", err.msg);
			abort();
		}
		out.len = 0;
	}
	if (!pv_crypto_decrypt_finish(dec, &err))
		abort();
	t = now() - t;
	pv_crypto_decrypt_free(dec);
	pv_crypto_buf_release(&out);
	return (double)n / t / 1e6;
}

int
main(int argc, char **argv)
{
	size_t n = (size_t)(argc > 1 ? atoi(argv[1]) : 256) << 20;
	unsigned char *data = pv_malloc(n), *out = pv_malloc(n);
	unsigned char raw[32];
	struct pv_crypto_key *key;
	struct pv_crypto_keyring *ring = pv_crypto_keyring_new();
	struct pv_crypto_buf ct = {0};
	const size_t pieces[] = {65536, 1 << 20};
	double ref;

	RAND_bytes(raw, sizeof(raw));
	key = pv_crypto_key_from_bytes(raw, "bench");
	pv_crypto_keyring_add(ring, key, true);
	for (size_t i = 0; i < n; i += 1 << 20)
		RAND_bytes(data + i, 1 << 20);
	memset(out, 0, n);
	printf("%zu MiB, %s, chunk size %u\n", n >> 20, OpenSSL_version(OPENSSL_VERSION), PV_CRYPTO_CHUNK_SIZE);
	/* Alternate raw and ours, twice, so frequency drift hits both. */
	for (int round = 0; round < 2; round++) {
		printf("-- round %d\n", round + 1);
		for (size_t p = 0; p < 2; p++) {
			char what[80];

			ref = raw_sha(data, n, pieces[p]);
			snprintf(what, sizeof(what), "raw EVP SHA-256, %zu KiB updates", pieces[p] >> 10);
			report(what, n, n / (ref * 1e6), 0);
			snprintf(what, sizeof(what), "pv_crypto_sha256, %zu KiB updates", pieces[p] >> 10);
			report(what, n, n / (our_sha(data, n, pieces[p]) * 1e6), ref);
		}
		for (size_t p = 0; p < 2; p++) {
			char what[80];

			ref = raw_gcm(raw, data, out, n, pieces[p], 1);
			snprintf(what, sizeof(what), "raw EVP AES-256-GCM encrypt, %zu KiB updates", pieces[p] >> 10);
			report(what, n, n / (ref * 1e6), 0);
			snprintf(what, sizeof(what), "pv_crypto_encrypt, %zu KiB pushes", pieces[p] >> 10);
			report(what, n, n / (our_encrypt(key, data, n, pieces[p], NULL) * 1e6), ref);
		}
		ct.len = 0;
		our_encrypt(key, data, n, 1 << 20, &ct);
		for (size_t p = 0; p < 2; p++) {
			char what[80];

			ref = raw_gcm(raw, ct.data, out, n, pieces[p], 0);
			snprintf(what, sizeof(what), "raw EVP AES-256-GCM decrypt, %zu KiB updates", pieces[p] >> 10);
			report(what, n, n / (ref * 1e6), 0);
			snprintf(what, sizeof(what), "pv_crypto_decrypt, %zu KiB pushes", pieces[p] >> 10);
			report(what, n, n / (our_decrypt(ring, &ct, n, pieces[p]) * 1e6), ref);
		}
	}
	pv_crypto_buf_release(&ct);
	pv_crypto_keyring_free(ring);
	free(data);
	free(out);
	return 0;
}
