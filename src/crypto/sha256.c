/* SHA-256 over OpenSSL EVP, hex encoding, and the output buffer helpers. */
#include "crypto/internal.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/mem.h"

struct pv_crypto_sha256 {
	EVP_MD_CTX *ctx;
	uint64_t count;
};

static void
ossl_fatal(const char *what)
{
	/* SHA-256 is in every OpenSSL build: failing here means the library is unusable. */
	fprintf(stderr, "pgvigil: OpenSSL %s failed: %s\n", what, ERR_error_string(ERR_get_error(), NULL));
	abort();
}

bool
pv_crypto_ossl_error(struct pv_error *err, const char *what)
{
	unsigned long e = ERR_get_error();
	char buf[256];

	if (e == 0)
		pv_strlcpy(buf, "no detail from OpenSSL", sizeof(buf));
	else
		ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	return pv_error_set(err, PV_ERR_INTERNAL, "%s: %s", what, buf);
}

void
pv_crypto_hex(const unsigned char *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = '\0';
}

struct pv_crypto_sha256 *
pv_crypto_sha256_new(void)
{
	struct pv_crypto_sha256 *h = pv_calloc(1, sizeof(*h));

	h->ctx = EVP_MD_CTX_new();
	if (h->ctx == NULL)
		ossl_fatal("EVP_MD_CTX_new");
	if (EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1)
		ossl_fatal("SHA-256 init");
	return h;
}

void
pv_crypto_sha256_update(struct pv_crypto_sha256 *h, const void *data, size_t len)
{
	if (len == 0)
		return;
	if (EVP_DigestUpdate(h->ctx, data, len) != 1)
		ossl_fatal("SHA-256 update");
	h->count += len;
}

void
pv_crypto_sha256_final(struct pv_crypto_sha256 *h, unsigned char out[PV_CRYPTO_SHA256_LEN])
{
	unsigned int n = 0;

	if (EVP_DigestFinal_ex(h->ctx, out, &n) != 1 || n != PV_CRYPTO_SHA256_LEN)
		ossl_fatal("SHA-256 final");
	if (EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1)
		ossl_fatal("SHA-256 init");
	h->count = 0;
}

void
pv_crypto_sha256_final_hex(struct pv_crypto_sha256 *h, char out[PV_CRYPTO_SHA256_HEX_LEN + 1])
{
	unsigned char md[PV_CRYPTO_SHA256_LEN];

	pv_crypto_sha256_final(h, md);
	pv_crypto_hex(md, sizeof(md), out);
}

uint64_t
pv_crypto_sha256_count(const struct pv_crypto_sha256 *h)
{
	return h->count;
}

void
pv_crypto_sha256_free(struct pv_crypto_sha256 *h)
{
	if (h == NULL)
		return;
	EVP_MD_CTX_free(h->ctx);
	free(h);
}

void
pv_crypto_sha256(const void *data, size_t len, unsigned char out[PV_CRYPTO_SHA256_LEN])
{
	unsigned int n = 0;

	if (EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) != 1 || n != PV_CRYPTO_SHA256_LEN)
		ossl_fatal("SHA-256");
}

void
pv_crypto_buf_reserve(struct pv_crypto_buf *buf, size_t n)
{
	size_t cap;

	if (buf->cap - buf->len >= n)
		return;
	cap = buf->cap < 4096 ? 4096 : buf->cap;
	while (cap - buf->len < n)
		cap *= 2;
	buf->data = pv_realloc(buf->data, cap);
	buf->cap = cap;
}

void
pv_crypto_buf_release(struct pv_crypto_buf *buf)
{
	if (buf->data != NULL) {
		OPENSSL_cleanse(buf->data, buf->cap);
		free(buf->data);
	}
	buf->data = NULL;
	buf->len = 0;
	buf->cap = 0;
}
