/* Backup keys: loading key files, fingerprints, and the keyring of current and old keys. */
#include "crypto/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/mem.h"

/* Domain separation: the fingerprint is never a hash an attacker could find elsewhere. */
static const char fingerprint_label[] = "pgvigil key fingerprint v1\n";

/* Read at most this much: 64 hex digits and "\r\n" is the largest valid file. */
#define KEY_FILE_READ_MAX 128

struct pv_crypto_keyring {
	struct pv_crypto_key **keys;
	size_t n;
	const struct pv_crypto_key *current;
};

static int
hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

struct pv_crypto_key *
pv_crypto_key_from_bytes(const unsigned char raw[PV_CRYPTO_KEY_LEN], const char *origin)
{
	struct pv_crypto_key *key = pv_calloc(1, sizeof(*key));
	unsigned char buf[sizeof(fingerprint_label) - 1 + PV_CRYPTO_KEY_LEN];
	unsigned char md[PV_CRYPTO_SHA256_LEN];

	memcpy(key->raw, raw, PV_CRYPTO_KEY_LEN);
	memcpy(buf, fingerprint_label, sizeof(fingerprint_label) - 1);
	memcpy(buf + sizeof(fingerprint_label) - 1, raw, PV_CRYPTO_KEY_LEN);
	pv_crypto_sha256(buf, sizeof(buf), md);
	OPENSSL_cleanse(buf, sizeof(buf));
	memcpy(key->fp, md, PV_CRYPTO_FINGERPRINT_LEN);
	pv_crypto_hex(key->fp, PV_CRYPTO_FINGERPRINT_LEN, key->fp_hex);
	key->origin = pv_strdup(origin != NULL ? origin : "(memory)");
	return key;
}

/* Decode content into raw, or explain without quoting any of it. */
static bool
decode_key(const char *path, const unsigned char *c, size_t len, unsigned char raw[PV_CRYPTO_KEY_LEN],
           struct pv_error *err)
{
	size_t n = len;
	bool all_hex = len > 0;

	for (size_t i = 0; i < len; i++)
		all_hex = all_hex && hexval(c[i]) >= 0;
	if (len == PV_CRYPTO_KEY_LEN) {
		/* 32 random bytes are all hex digits with probability (22/256)^32: this is a 128-bit hex key.
		 */
		if (all_hex)
			return pv_error_set(
			        err, PV_ERR_CONFIG_SECRET,
			        "key file %s holds 32 hex digits, a 128-bit key; an AES-256 key needs "
			        "64 hex digits or 32 raw bytes; HINT: (umask 077; openssl rand -hex 32 > %s)",
			        path, path);
		memcpy(raw, c, PV_CRYPTO_KEY_LEN);
		return true;
	}
	if (n > 0 && c[n - 1] == '\n')
		n--;
	if (n > 0 && c[n - 1] == '\r' && n != len)
		n--;
	if (n != 2 * PV_CRYPTO_KEY_LEN)
		return pv_error_set(
		        err, PV_ERR_CONFIG_SECRET,
		        "key file %s must hold 32 raw bytes or 64 hex digits (it has %zu bytes); HINT: "
		        "(umask 077; openssl rand -hex 32 > %s)",
		        path, len, path);
	for (size_t i = 0; i < n; i++) {
		if (hexval(c[i]) < 0)
			return pv_error_set(
			        err, PV_ERR_CONFIG_SECRET,
			        "key file %s has %zu characters, like a hex key, but character %zu is not a "
			        "hex digit",
			        path, n, i + 1);
	}
	for (size_t i = 0; i < PV_CRYPTO_KEY_LEN; i++)
		raw[i] = (unsigned char)(hexval(c[2 * i]) << 4 | hexval(c[2 * i + 1]));
	return true;
}

struct pv_crypto_key *
pv_crypto_key_load(const char *path, struct pv_error *err)
{
	unsigned char content[KEY_FILE_READ_MAX + 1];
	unsigned char raw[PV_CRYPTO_KEY_LEN];
	struct pv_crypto_key *key = NULL;
	struct stat st;
	size_t got = 0;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		pv_error_set(err, errno == ENOENT || errno == EACCES ? PV_ERR_CONFIG_SECRET : PV_ERR_IO,
		             "cannot open key file %s: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		pv_error_set(err, PV_ERR_CONFIG_SECRET, "key file %s is not a regular file", path);
		goto out;
	}
	if ((st.st_mode & 077) != 0) {
		pv_error_set(err, PV_ERR_CONFIG_SECRET,
		             "key file %s is accessible by group or others (mode %04o); HINT: chmod 600 %s",
		             path, (unsigned)(st.st_mode & 07777), path);
		goto out;
	}
	for (;;) {
		ssize_t r = read(fd, content + got, sizeof(content) - got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			pv_error_set(err, PV_ERR_IO, "cannot read key file %s: %s", path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		got += (size_t)r;
		if (got == sizeof(content))
			break;
	}
	if (got > KEY_FILE_READ_MAX) {
		pv_error_set(err, PV_ERR_CONFIG_SECRET,
		             "key file %s must hold 32 raw bytes or 64 hex digits (it has %lld bytes)", path,
		             (long long)st.st_size);
		goto out;
	}
	if (decode_key(path, content, got, raw, err))
		key = pv_crypto_key_from_bytes(raw, path);
out:
	OPENSSL_cleanse(content, sizeof(content));
	OPENSSL_cleanse(raw, sizeof(raw));
	close(fd);
	return key;
}

void
pv_crypto_key_free(struct pv_crypto_key *key)
{
	if (key == NULL)
		return;
	free(key->origin);
	OPENSSL_cleanse(key, sizeof(*key));
	free(key);
}

const char *
pv_crypto_key_fingerprint(const struct pv_crypto_key *key)
{
	return key->fp_hex;
}

const char *
pv_crypto_key_origin(const struct pv_crypto_key *key)
{
	return key->origin;
}

struct pv_crypto_keyring *
pv_crypto_keyring_new(void)
{
	return pv_calloc(1, sizeof(struct pv_crypto_keyring));
}

void
pv_crypto_keyring_free(struct pv_crypto_keyring *ring)
{
	if (ring == NULL)
		return;
	for (size_t i = 0; i < ring->n; i++)
		pv_crypto_key_free(ring->keys[i]);
	free(ring->keys);
	free(ring);
}

void
pv_crypto_keyring_add(struct pv_crypto_keyring *ring, struct pv_crypto_key *key, bool current)
{
	const struct pv_crypto_key *have = pv_crypto_keyring_find_raw(ring, key->fp);

	if (have != NULL) {
		pv_crypto_key_free(key);
	} else {
		ring->keys = pv_realloc(ring->keys, (ring->n + 1) * sizeof(*ring->keys));
		ring->keys[ring->n++] = key;
		have = key;
	}
	if (current)
		ring->current = have;
}

struct pv_crypto_keyring *
pv_crypto_keyring_load(const char *key_file, char *const *old_key_files, size_t n_old, struct pv_error *err)
{
	struct pv_crypto_keyring *ring = pv_crypto_keyring_new();
	struct pv_crypto_key *key;

	if (key_file != NULL) {
		if ((key = pv_crypto_key_load(key_file, err)) == NULL)
			goto fail;
		pv_crypto_keyring_add(ring, key, true);
	}
	for (size_t i = 0; i < n_old; i++) {
		if ((key = pv_crypto_key_load(old_key_files[i], err)) == NULL)
			goto fail;
		pv_crypto_keyring_add(ring, key, false);
	}
	return ring;
fail:
	pv_crypto_keyring_free(ring);
	return NULL;
}

const struct pv_crypto_key *
pv_crypto_keyring_current(const struct pv_crypto_keyring *ring)
{
	return ring->current;
}

const struct pv_crypto_key *
pv_crypto_keyring_find(const struct pv_crypto_keyring *ring, const char *fingerprint)
{
	for (size_t i = 0; i < ring->n; i++)
		if (strcasecmp(ring->keys[i]->fp_hex, fingerprint) == 0)
			return ring->keys[i];
	return NULL;
}

const struct pv_crypto_key *
pv_crypto_keyring_find_raw(const struct pv_crypto_keyring *ring,
                           const unsigned char fp[PV_CRYPTO_FINGERPRINT_LEN])
{
	for (size_t i = 0; i < ring->n; i++)
		if (memcmp(ring->keys[i]->fp, fp, PV_CRYPTO_FINGERPRINT_LEN) == 0)
			return ring->keys[i];
	return NULL;
}

size_t
pv_crypto_keyring_count(const struct pv_crypto_keyring *ring)
{
	return ring->n;
}

void
pv_crypto_keyring_describe(const struct pv_crypto_keyring *ring, char *out, size_t size)
{
	size_t used = 0;

	out[0] = '\0';
	if (ring->n == 0) {
		snprintf(out, size, "no keys are configured");
		return;
	}
	used = (size_t)snprintf(out, size, "configured: ");
	for (size_t i = 0; i < ring->n && used < size; i++) {
		if (i == 4) {
			snprintf(out + used, size - used, ", and %zu more", ring->n - i);
			return;
		}
		used += (size_t)snprintf(out + used, size - used, "%s%s", i > 0 ? ", " : "",
		                         ring->keys[i]->fp_hex);
	}
}
