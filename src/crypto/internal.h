/* Definitions shared by the crypto source files; not for use outside src/crypto. */
#ifndef PV_CRYPTO_INTERNAL_H
#define PV_CRYPTO_INTERNAL_H

#include "crypto/crypto.h"

struct pv_crypto_key {
	unsigned char raw[PV_CRYPTO_KEY_LEN];
	unsigned char fp[PV_CRYPTO_FINGERPRINT_LEN];
	char fp_hex[PV_CRYPTO_FINGERPRINT_HEX_LEN + 1];
	char *origin;
};

/* Find a key by raw fingerprint. */
const struct pv_crypto_key *pv_crypto_keyring_find_raw(const struct pv_crypto_keyring *ring,
                                                       const unsigned char fp[PV_CRYPTO_FINGERPRINT_LEN]);
/* "a, b, c" of the configured fingerprints (at most a few), for messages; static storage not used. */
void pv_crypto_keyring_describe(const struct pv_crypto_keyring *ring, char *out, size_t size);

/* Make room for n more bytes after buf->len. */
void pv_crypto_buf_reserve(struct pv_crypto_buf *buf, size_t n);

/* Fill err with OpenSSL's queued error text after "what: ". */
bool pv_crypto_ossl_error(struct pv_error *err, const char *what);

#endif
