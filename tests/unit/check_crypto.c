/* Unit tests for src/crypto: SHA-256 vectors, key files, keyrings, the encrypted stream and its tampering
 * cases. */
#define _XOPEN_SOURCE 700
#include <check.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto/crypto.h"
#include "util/error.h"
#include "util/mem.h"

#define CS PV_CRYPTO_CHUNK_SIZE

static char tmpdir[] = "/tmp/check_crypto.XXXXXX";

static void
setup_tmpdir(void)
{
	if (mkdtemp(tmpdir) == NULL)
		abort();
}

static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void
teardown_tmpdir(void)
{
	nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Deterministic pseudo-random bytes (xorshift64*), so failures reproduce. */
static uint64_t
rnd(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545F4914F6CDD1DULL;
}

static unsigned char *
random_bytes(size_t n, uint64_t seed)
{
	unsigned char *p = pv_malloc(n + 1);

	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)(rnd(&seed) >> 56);
	return p;
}

static const unsigned char key1_raw[32] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,
                                           16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
static const unsigned char nonce_fixed[12] = {0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5,
                                              0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab};

static struct pv_crypto_key *
key_n(int n)
{
	unsigned char raw[32];

	for (int i = 0; i < 32; i++)
		raw[i] = (unsigned char)(n * 37 + i);
	return pv_crypto_key_from_bytes(raw, "test");
}

static char *
write_file(const char *name, const void *data, size_t len, mode_t mode)
{
	char *path = pv_asprintf("%s/%s", tmpdir, name);
	int fd;

	unlink(path);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
	ck_assert_int_eq(fchmod(fd, mode), 0);
	close(fd);
	return path;
}

/* Encrypt data, cut into pieces at random points when seed != 0. */
static struct pv_crypto_buf
encrypt_all(const struct pv_crypto_key *key, const unsigned char *nonce, uint32_t cs,
            const unsigned char *data, size_t n, uint64_t seed)
{
	struct pv_crypto_buf out = {0};
	struct pv_error err;
	static uint64_t streams = 1;
	unsigned char fresh[12] = {0};
	struct pv_crypto_encrypt *enc;
	size_t i = 0;

	/* The production constructor for the production chunk size; otherwise a distinct nonce base per
	 * stream. */
	if (nonce == NULL && cs != CS) {
		memcpy(fresh, &streams, sizeof(streams));
		streams++;
		nonce = fresh;
	}
	enc = nonce != NULL ? pv_crypto_encrypt_new_test(key, nonce, cs, &err)
	                    : pv_crypto_encrypt_new(key, &err);

	ck_assert_msg(enc != NULL, "%s", err.msg);
	while (i < n) {
		size_t step = seed == 0 ? n - i : (size_t)(rnd(&seed) % (3 * (uint64_t)cs + 2));

		if (step > n - i)
			step = n - i;
		ck_assert_msg(pv_crypto_encrypt_update(enc, data + i, step, &out, &err), "%s", err.msg);
		i += step;
	}
	ck_assert_msg(pv_crypto_encrypt_finish(enc, &out, &err), "%s", err.msg);
	ck_assert_uint_eq(pv_crypto_encrypt_bytes_in(enc), n);
	ck_assert_uint_eq(pv_crypto_encrypt_bytes_out(enc), out.len);
	ck_assert_uint_eq(out.len, pv_crypto_encrypted_size(n, cs));
	pv_crypto_encrypt_free(enc);
	return out;
}

struct result {
	bool ok;
	enum pv_crypto_fault fault;
	struct pv_error err;
	struct pv_crypto_buf plain;
};

/* Decrypt with pieces of random size (max_step 0: all at once; 1: byte by byte). */
static struct result
decrypt_all(const struct pv_crypto_keyring *ring, const unsigned char *data, size_t n, uint64_t seed,
            size_t max_step)
{
	struct result r = {0};
	struct pv_crypto_decrypt *dec = pv_crypto_decrypt_new(ring);
	size_t i = 0;

	r.ok = true;
	while (i < n && r.ok) {
		size_t step = max_step == 0 ? n - i : 1 + (size_t)(rnd(&seed) % max_step);

		if (step > n - i)
			step = n - i;
		r.ok = pv_crypto_decrypt_update(dec, data + i, step, &r.plain, &r.err);
		i += step;
	}
	if (r.ok)
		r.ok = pv_crypto_decrypt_finish(dec, &r.err);
	r.fault = pv_crypto_decrypt_fault(dec);
	if (r.ok)
		ck_assert_uint_eq(pv_crypto_decrypt_bytes_out(dec), r.plain.len);
	pv_crypto_decrypt_free(dec);
	return r;
}

static struct pv_crypto_keyring *
ring_of(struct pv_crypto_key *key)
{
	struct pv_crypto_keyring *ring = pv_crypto_keyring_new();

	pv_crypto_keyring_add(ring, key, true);
	return ring;
}

/* Decrypt a tampered stream; it must fail with fault, the message must contain needle, and the
 * plaintext released before the failure must be a prefix of the original. */
static void
expect_fault(const struct pv_crypto_keyring *ring, const unsigned char *data, size_t n,
             const unsigned char *plain, enum pv_crypto_fault fault, const char *needle)
{
	const size_t steps[] = {0, 1, 7, 70000};

	for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
		struct result r;

		if (steps[s] == 1 && n > 300000)
			continue;
		r = decrypt_all(ring, data, n, 42 + s, steps[s]);
		ck_assert_msg(!r.ok, "tampered stream accepted (step %zu)", steps[s]);
		ck_assert_msg(r.fault == fault, "fault %s, want %s: %s", pv_crypto_fault_name(r.fault),
		              pv_crypto_fault_name(fault), r.err.msg);
		ck_assert_msg(strstr(r.err.msg, needle) != NULL, "message \"%s\" lacks \"%s\"", r.err.msg,
		              needle);
		ck_assert(r.plain.len == 0 || memcmp(r.plain.data, plain, r.plain.len) == 0);
		pv_crypto_buf_release(&r.plain);
	}
}

/* ---- SHA-256 ---- */

static void
check_sha(const void *data, size_t len, const char *want)
{
	struct pv_crypto_sha256 *h = pv_crypto_sha256_new();
	char hex[65];
	unsigned char md[32];
	size_t i = 0, step = 1;

	/* Streaming in growing pieces, then one shot: both must agree with the vector. */
	while (i < len) {
		size_t n = step < len - i ? step : len - i;

		pv_crypto_sha256_update(h, (const unsigned char *)data + i, n);
		i += n;
		step = step * 3 + 1;
	}
	ck_assert_uint_eq(pv_crypto_sha256_count(h), len);
	pv_crypto_sha256_final_hex(h, hex);
	ck_assert_str_eq(hex, want);
	/* final resets: the same context hashes the next stream */
	ck_assert_uint_eq(pv_crypto_sha256_count(h), 0);
	pv_crypto_sha256_update(h, data, len);
	pv_crypto_sha256_final_hex(h, hex);
	ck_assert_str_eq(hex, want);
	pv_crypto_sha256(data, len, md);
	pv_crypto_hex(md, 32, hex);
	ck_assert_str_eq(hex, want);
	pv_crypto_sha256_free(h);
}

START_TEST(test_crypto__sha256_vectors)
{
	char *million = pv_malloc(1000000);

	check_sha("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	check_sha("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	check_sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56,
	          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
	memset(million, 'a', 1000000);
	check_sha(million, 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
	free(million);
	pv_crypto_sha256_free(NULL);
}
END_TEST

START_TEST(test_crypto__hex)
{
	const unsigned char b[] = {0x00, 0x0f, 0xa5, 0xff};
	char out[9];

	pv_crypto_hex(b, 4, out);
	ck_assert_str_eq(out, "000fa5ff");
	pv_crypto_hex(b, 0, out);
	ck_assert_str_eq(out, "");
}
END_TEST

/* ---- keys ---- */

static const char key1_hex[] = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

static void
assert_loads_key1(const char *name, const void *content, size_t len)
{
	struct pv_error err;
	char *path = write_file(name, content, len, 0600);
	struct pv_crypto_key *k = pv_crypto_key_load(path, &err);
	struct pv_crypto_key *ref = pv_crypto_key_from_bytes(key1_raw, NULL);

	ck_assert_msg(k != NULL, "%s: %s", name, err.msg);
	ck_assert_str_eq(pv_crypto_key_fingerprint(k), pv_crypto_key_fingerprint(ref));
	ck_assert_str_eq(pv_crypto_key_origin(k), path);
	pv_crypto_key_free(k);
	pv_crypto_key_free(ref);
	free(path);
}

START_TEST(test_crypto__key_load_ok)
{
	char buf[80];
	char upper[65];

	assert_loads_key1("raw", key1_raw, 32);
	assert_loads_key1("hex", key1_hex, 64);
	snprintf(buf, sizeof(buf), "%s\n", key1_hex);
	assert_loads_key1("hexnl", buf, 65);
	snprintf(buf, sizeof(buf), "%s\r\n", key1_hex);
	assert_loads_key1("hexcrlf", buf, 66);
	for (int i = 0; i < 65; i++)
		upper[i] = (char)(key1_hex[i] >= 'a' && key1_hex[i] <= 'f' ? key1_hex[i] - 32 : key1_hex[i]);
	assert_loads_key1("upper", upper, 64);
}
END_TEST

/* Loading must fail with a message that names the path, contains want, and never the key. */
static void
assert_key_refused(const char *name, const void *content, size_t len, mode_t mode, const char *want)
{
	struct pv_error err;
	char *path = write_file(name, content, len, mode);

	ck_assert_ptr_null(pv_crypto_key_load(path, &err));
	ck_assert_int_eq(err.code, PV_ERR_CONFIG_SECRET);
	ck_assert_msg(strstr(err.msg, path) != NULL, "%s", err.msg);
	ck_assert_msg(strstr(err.msg, want) != NULL, "\"%s\" lacks \"%s\"", err.msg, want);
	ck_assert_msg(strstr(err.msg, "0001020304") == NULL, "key material in \"%s\"", err.msg);
	free(path);
}

START_TEST(test_crypto__key_load_refused)
{
	char buf[200];
	struct pv_error err;
	char *path;

	assert_key_refused("short", key1_raw, 31, 0600, "(it has 31 bytes)");
	memset(buf, 0xee, sizeof(buf));
	assert_key_refused("long", buf, 33, 0600, "(it has 33 bytes)");
	assert_key_refused("empty", "", 0, 0600, "(it has 0 bytes)");
	memset(buf, 'a', sizeof(buf));
	assert_key_refused("huge", buf, sizeof(buf), 0600, "(it has 200 bytes)");
	snprintf(buf, sizeof(buf), "%s\n\n", key1_hex);
	assert_key_refused("twonl", buf, 66, 0600, "(it has 66 bytes)");
	memcpy(buf, key1_hex, 64);
	buf[17] = 'g';
	assert_key_refused("badhex", buf, 64, 0600, "character 18 is not a hex digit");
	assert_key_refused("hex128", key1_hex, 32, 0600, "128-bit key");
	assert_key_refused("mode644", key1_raw, 32, 0644, "accessible by group or others (mode 0644)");
	assert_key_refused("mode640", key1_hex, 64, 0640, "HINT: chmod 600");
	assert_key_refused("mode604", key1_hex, 64, 0604, "(mode 0604)");

	path = pv_asprintf("%s/missing", tmpdir);
	ck_assert_ptr_null(pv_crypto_key_load(path, &err));
	ck_assert_msg(strstr(err.msg, "cannot open key file") != NULL && strstr(err.msg, path) != NULL, "%s",
	              err.msg);
	free(path);
	ck_assert_ptr_null(pv_crypto_key_load(tmpdir, &err));
	ck_assert_msg(strstr(err.msg, "is not a regular file") != NULL, "%s", err.msg);
}
END_TEST

START_TEST(test_crypto__fingerprint)
{
	struct pv_crypto_key *a = pv_crypto_key_from_bytes(key1_raw, NULL);
	struct pv_crypto_key *b = pv_crypto_key_from_bytes(key1_raw, "again");
	struct pv_crypto_key *c = key_n(1), *d = key_n(2);

	/* Pinned: SHA-256("pgvigil key fingerprint v1\n" || 00 01 .. 1f), first 8 bytes. */
	ck_assert_str_eq(pv_crypto_key_fingerprint(a), "970c20e75453d277");
	ck_assert_str_eq(pv_crypto_key_fingerprint(a), pv_crypto_key_fingerprint(b));
	ck_assert_str_ne(pv_crypto_key_fingerprint(a), pv_crypto_key_fingerprint(c));
	ck_assert_str_ne(pv_crypto_key_fingerprint(c), pv_crypto_key_fingerprint(d));
	ck_assert_uint_eq(strlen(pv_crypto_key_fingerprint(c)), 16);
	ck_assert_str_eq(pv_crypto_key_origin(a), "(memory)");
	pv_crypto_key_free(a);
	pv_crypto_key_free(b);
	pv_crypto_key_free(c);
	pv_crypto_key_free(d);
	pv_crypto_key_free(NULL);
}
END_TEST

START_TEST(test_crypto__keyring)
{
	struct pv_crypto_keyring *ring = pv_crypto_keyring_new();
	struct pv_crypto_key *k1 = key_n(1), *k2 = key_n(2);
	char fp1[17], fp2[17], upper[17];
	struct pv_error err;
	char *cur, *old, *bad;
	char *olds[2];

	pv_strlcpy(fp1, pv_crypto_key_fingerprint(k1), sizeof(fp1));
	pv_strlcpy(fp2, pv_crypto_key_fingerprint(k2), sizeof(fp2));
	ck_assert_ptr_null(pv_crypto_keyring_current(ring));
	pv_crypto_keyring_add(ring, k1, false);
	pv_crypto_keyring_add(ring, k2, true);
	pv_crypto_keyring_add(ring, key_n(1), false); /* duplicate: dropped */
	ck_assert_uint_eq(pv_crypto_keyring_count(ring), 2);
	ck_assert_str_eq(pv_crypto_key_fingerprint(pv_crypto_keyring_current(ring)), fp2);
	ck_assert_ptr_eq(pv_crypto_keyring_find(ring, fp1), k1);
	for (int i = 0; i < 17; i++)
		upper[i] = (char)(fp1[i] >= 'a' && fp1[i] <= 'f' ? fp1[i] - 32 : fp1[i]);
	ck_assert_ptr_eq(pv_crypto_keyring_find(ring, upper), k1);
	ck_assert_ptr_null(pv_crypto_keyring_find(ring, "0000000000000000"));
	pv_crypto_keyring_free(ring);
	pv_crypto_keyring_free(NULL);

	/* From files, as storage.encryption_key_file and storage.old_key_files give them. */
	cur = write_file("ring-cur", key1_hex, 64, 0600);
	old = write_file("ring-old", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n", 65,
	                 0600);
	bad = write_file("ring-bad", key1_hex, 64, 0644);
	olds[0] = old;
	olds[1] = cur; /* the current key listed again is harmless */
	ring = pv_crypto_keyring_load(cur, olds, 2, &err);
	ck_assert_msg(ring != NULL, "%s", err.msg);
	ck_assert_uint_eq(pv_crypto_keyring_count(ring), 2);
	ck_assert_str_eq(pv_crypto_key_fingerprint(pv_crypto_keyring_current(ring)), "970c20e75453d277");
	pv_crypto_keyring_free(ring);
	ring = pv_crypto_keyring_load(NULL, olds, 1, &err);
	ck_assert_ptr_nonnull(ring);
	ck_assert_ptr_null(pv_crypto_keyring_current(ring));
	pv_crypto_keyring_free(ring);
	olds[1] = bad;
	ck_assert_ptr_null(pv_crypto_keyring_load(cur, olds, 2, &err));
	ck_assert_msg(strstr(err.msg, bad) != NULL, "%s", err.msg);
	free(cur);
	free(old);
	free(bad);
}
END_TEST

/* ---- the stream ---- */

START_TEST(test_crypto__roundtrip_sizes)
{
	const size_t sizes[] = {
	        0, 1, 2, 15, 16, 17, CS - 1, CS, CS + 1, 2 * CS - 1, 2 * CS, 2 * CS + 1, 3 * CS + 12345};
	struct pv_crypto_key *key = key_n(7);
	struct pv_crypto_keyring *ring = ring_of(key);

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		unsigned char *plain = random_bytes(sizes[i], 100 + i);

		for (uint64_t seed = 0; seed < 4; seed++) {
			struct pv_crypto_buf ct = encrypt_all(key, NULL, CS, plain, sizes[i], seed);
			const size_t steps[] = {0, 1, 13, 100000};

			for (size_t s = 0; s < 4; s++) {
				struct result r;

				if (steps[s] == 1 && sizes[i] > CS + 1)
					continue;
				r = decrypt_all(ring, ct.data, ct.len, seed * 10 + s, steps[s]);
				ck_assert_msg(r.ok, "size %zu: %s", sizes[i], r.err.msg);
				ck_assert_uint_eq(r.plain.len, sizes[i]);
				ck_assert(sizes[i] == 0 || memcmp(r.plain.data, plain, sizes[i]) == 0);
				pv_crypto_buf_release(&r.plain);
			}
			pv_crypto_buf_release(&ct);
		}
		free(plain);
	}
	pv_crypto_keyring_free(ring);
}
END_TEST

START_TEST(test_crypto__roundtrip_large_random_splits)
{
	const size_t n = 5 * 1024 * 1024 + 4321;
	unsigned char *plain = random_bytes(n, 9);
	struct pv_crypto_key *key = key_n(8);
	struct pv_crypto_keyring *ring = ring_of(key);
	struct pv_crypto_buf ct = encrypt_all(key, NULL, CS, plain, n, 77);
	struct pv_crypto_buf ct2 = encrypt_all(key, NULL, CS, plain, n, 0);
	struct result r = decrypt_all(ring, ct.data, ct.len, 5, 3 * CS);

	ck_assert_msg(r.ok, "%s", r.err.msg);
	ck_assert_uint_eq(r.plain.len, n);
	ck_assert(memcmp(r.plain.data, plain, n) == 0);
	pv_crypto_buf_release(&r.plain);
	/* Random nonce bases: the same plaintext never encrypts the same way twice. */
	ck_assert(memcmp(ct.data, ct2.data, 64) != 0);
	r = decrypt_all(ring, ct2.data, ct2.len, 6, 100);
	ck_assert_msg(r.ok, "%s", r.err.msg);
	ck_assert(memcmp(r.plain.data, plain, n) == 0);
	pv_crypto_buf_release(&r.plain);
	pv_crypto_buf_release(&ct);
	pv_crypto_buf_release(&ct2);
	pv_crypto_keyring_free(ring);
	free(plain);
}
END_TEST

START_TEST(test_crypto__small_chunks_byte_by_byte)
{
	/* A tiny chunk size makes many chunks cheaply; the format allows any size up to 16 MiB. */
	struct pv_crypto_key *key = key_n(3);
	struct pv_crypto_keyring *ring = ring_of(key);

	for (uint32_t cs = 1; cs <= 40; cs += 13) {
		for (size_t n = 0; n <= 130; n += 43) {
			unsigned char *plain = random_bytes(n, n + cs);
			struct pv_crypto_buf ct = encrypt_all(key, nonce_fixed, cs, plain, n, n);
			struct result r = decrypt_all(ring, ct.data, ct.len, 1, 1);

			ck_assert_msg(r.ok, "cs %u n %zu: %s", cs, n, r.err.msg);
			ck_assert_uint_eq(r.plain.len, n);
			ck_assert(n == 0 || memcmp(r.plain.data, plain, n) == 0);
			pv_crypto_buf_release(&r.plain);
			pv_crypto_buf_release(&ct);
			free(plain);
		}
	}
	pv_crypto_keyring_free(ring);
}
END_TEST

/* The on-disk format, pinned: fixed key, nonce base and plaintext give exactly these bytes. */
START_TEST(test_crypto__format_known_answer)
{
	const size_t n = 2 * CS + 1000;
	unsigned char *plain = pv_malloc(n);
	struct pv_crypto_key *key = pv_crypto_key_from_bytes(key1_raw, NULL);
	struct pv_crypto_keyring *ring;
	struct pv_crypto_buf ct;
	struct pv_crypto_header_info info;
	enum pv_crypto_fault fault;
	struct pv_error err;
	unsigned char md[32];
	char hex[2 * 64 + 1];
	struct result r;

	for (size_t i = 0; i < n; i++)
		plain[i] = (unsigned char)(i * 7 + (i >> 8));
	ct = encrypt_all(key, nonce_fixed, CS, plain, n, 3);
	ck_assert_uint_eq(ct.len, 44 + 3 * 20 + n);
	pv_crypto_hex(ct.data, 44, hex);
	ck_assert_str_eq(hex, "5047564947454e43" /* PGVIGENC */
	                      "01"
	                      "01"
	                      "0000"
	                      "00010000"                 /* version, algorithm, reserved, chunk size */
	                      "970c20e75453d277"         /* key fingerprint */
	                      "a0a1a2a3a4a5a6a7a8a9aaab" /* nonce base */
	                      "30d981f7e40dad7e");       /* SHA-256 of the above, first 8 bytes */
	/* chunk prefixes: 65536 not final, 65536 not final, 1000 final */
	pv_crypto_hex(ct.data + 44, 4, hex);
	ck_assert_str_eq(hex, "00010000");
	pv_crypto_hex(ct.data + 44 + 2 * (CS + 20), 4, hex);
	ck_assert_str_eq(hex, "800003e8");
	pv_crypto_sha256(ct.data, ct.len, md);
	pv_crypto_hex(md, 32, hex);
	ck_assert_str_eq(hex, "6c128941f0825bc5f6bee42d7a03553ee5e115e041e14b50ae07af2aa66b4347");

	ck_assert(pv_crypto_header_parse(ct.data, ct.len, &info, &fault, &err));
	ck_assert_uint_eq(info.version, 1);
	ck_assert_uint_eq(info.algorithm, 1);
	ck_assert_uint_eq(info.chunk_size, CS);
	ck_assert_str_eq(info.fingerprint, "970c20e75453d277");

	ring = ring_of(key);
	r = decrypt_all(ring, ct.data, ct.len, 0, 0);
	ck_assert_msg(r.ok, "%s", r.err.msg);
	ck_assert(memcmp(r.plain.data, plain, n) == 0);
	pv_crypto_buf_release(&r.plain);
	pv_crypto_buf_release(&ct);
	pv_crypto_keyring_free(ring);
	free(plain);
}
END_TEST

/* A stream of chunk size 1000 with 5 chunks (4 full, final of 500 bytes) under key_n(1). */
struct fixture {
	struct pv_crypto_key *key;
	struct pv_crypto_keyring *ring;
	unsigned char *plain;
	size_t n;
	struct pv_crypto_buf ct;
	uint32_t cs;
};

static size_t
chunk_off(const struct fixture *f, size_t k)
{
	return 44 + k * (f->cs + 20);
}

static struct fixture
fixture_new(uint32_t cs, size_t n)
{
	struct fixture f = {0};

	f.key = key_n(1);
	f.ring = ring_of(f.key);
	f.cs = cs;
	f.n = n;
	f.plain = random_bytes(n, 1234);
	f.ct = encrypt_all(f.key, NULL, cs, f.plain, n, 0);
	return f;
}

static void
fixture_free(struct fixture *f)
{
	pv_crypto_buf_release(&f->ct);
	pv_crypto_keyring_free(f->ring);
	free(f->plain);
}

static unsigned char *
copy_ct(const struct fixture *f)
{
	unsigned char *c = pv_malloc(f->ct.len + 1);

	memcpy(c, f->ct.data, f->ct.len);
	return c;
}

START_TEST(test_crypto__tamper_header)
{
	struct fixture f = fixture_new(1000, 4500);

	for (size_t off = 0; off < 44; off++) {
		unsigned char *c = copy_ct(&f);

		c[off] ^= 0x01;
		if (off < 8)
			expect_fault(f.ring, c, f.ct.len, f.plain, PV_CRYPTO_FAULT_NOT_ENCRYPTED,
			             "not a pgvigil encrypted file");
		else if (off == 8)
			expect_fault(f.ring, c, f.ct.len, f.plain, PV_CRYPTO_FAULT_UNSUPPORTED,
			             "unsupported format version 0");
		else
			expect_fault(f.ring, c, f.ct.len, f.plain, PV_CRYPTO_FAULT_HEADER,
			             "header is damaged");
		free(c);
	}
	fixture_free(&f);
}
END_TEST

/* A header changed on purpose, with its checksum recomputed, still fails: it is in every chunk's AAD. */
START_TEST(test_crypto__tamper_header_with_checksum)
{
	struct fixture f = fixture_new(1000, 4500);
	const size_t offs[] = {12 /* chunk size */, 24, 35 /* nonce base */};

	for (size_t i = 0; i < 3; i++) {
		unsigned char *c = copy_ct(&f);
		unsigned char md[32];

		c[offs[i]] ^= i == 0 ? 0 : 0x40;
		if (i == 0)
			c[14] ^= 0x01; /* chunk size 1000 -> 1256: the first chunk's length is impossible */
		pv_crypto_sha256(c, 36, md);
		memcpy(c + 36, md, 8);
		if (i == 0)
			expect_fault(f.ring, c, f.ct.len, f.plain, PV_CRYPTO_FAULT_CORRUPT, "length field");
		else
			expect_fault(f.ring, c, f.ct.len, f.plain, PV_CRYPTO_FAULT_CORRUPT,
			             "chunk 0 at byte offset 44 failed authentication");
		free(c);
	}
	fixture_free(&f);
}
END_TEST

START_TEST(test_crypto__tamper_body_and_tag)
{
	struct fixture f = fixture_new(1000, 4500);

	for (size_t k = 0; k < 5; k++) {
		size_t base = chunk_off(&f, k), len = k == 4 ? 500 : 1000;
		const size_t rel[] = {4, 5, 4 + len / 2, 4 + len - 1, 4 + len, 4 + len + 7, 4 + len + 15};
		char want[64];

		snprintf(want, sizeof(want), "chunk %zu at byte offset %zu failed authentication", k, base);
		for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
			for (int bit = 0; bit < 8; bit += 7) {
				unsigned char *c = copy_ct(&f);

				c[base + rel[i]] ^= (unsigned char)(1u << bit);
				expect_fault(f.ring, c, f.ct.len, f.plain, PV_CRYPTO_FAULT_CORRUPT, want);
				free(c);
			}
		}
		/* the final flag and length field: impossible lengths are reported as such */
		for (size_t i = 0; i < 4; i++) {
			const unsigned char flip[] = {0x80, 0x40, 0x02, 0x02};
			unsigned char *c = copy_ct(&f);

			c[base + i] ^= flip[i];
			if (i == 3 && k == 4) {
				/* final chunk 500 -> 502 bytes: the file now ends inside it */
				expect_fault(f.ring, c, f.ct.len, f.plain, PV_CRYPTO_FAULT_TRUNCATED,
				             "inside chunk 4");
				c[base + i] ^=
				        flip[i] ^ 0x04; /* 500 -> 496: the tag is read from the wrong place */
				expect_fault(f.ring, c, f.ct.len, f.plain, PV_CRYPTO_FAULT_CORRUPT, want);
			} else {
				expect_fault(f.ring, c, f.ct.len, f.plain, PV_CRYPTO_FAULT_CORRUPT,
				             "length field");
			}
			free(c);
		}
	}
	fixture_free(&f);
}
END_TEST

/* Plaintext of a chunk that fails is never released, even split byte by byte. */
START_TEST(test_crypto__no_unauthenticated_release)
{
	struct fixture f = fixture_new(1000, 4500);
	unsigned char *c = copy_ct(&f);
	struct result r;

	c[chunk_off(&f, 2) + 500] ^= 0x10;
	for (size_t step = 0; step < 3; step++) {
		r = decrypt_all(f.ring, c, f.ct.len, 3, step);
		ck_assert(!r.ok);
		ck_assert_uint_eq(r.plain.len, 2000);
		ck_assert(memcmp(r.plain.data, f.plain, 2000) == 0);
		pv_crypto_buf_release(&r.plain);
	}
	free(c);
	fixture_free(&f);
}
END_TEST

START_TEST(test_crypto__truncation)
{
	struct fixture f = fixture_new(100, 450);
	struct pv_crypto_key *big = key_n(1);
	struct pv_crypto_keyring *ring = ring_of(big);
	unsigned char *plain;
	struct pv_crypto_buf ct;

	for (size_t len = 0; len < f.ct.len; len++) {
		const char *want = "inside chunk";

		if (len == 0)
			want = "the file is empty";
		else if (len < 44)
			want = "inside the 44-byte header";
		else if (len == 44)
			want = "right after the header";
		else if ((len - 44) % 120 == 0)
			want = "with no final chunk";
		expect_fault(f.ring, f.ct.data, len, f.plain, PV_CRYPTO_FAULT_TRUNCATED, want);
	}
	/* exactly at a boundary, with real-size chunks: the last full chunk is authentic but not final */
	plain = random_bytes(3 * CS + 10, 5);
	ct = encrypt_all(big, NULL, CS, plain, 3 * CS + 10, 0);
	expect_fault(ring, ct.data, 44 + 3 * (CS + 20), plain, PV_CRYPTO_FAULT_TRUNCATED,
	             "ends at byte offset 196712 after chunk 2, with no final chunk");
	expect_fault(ring, ct.data, 44 + 2 * (CS + 20) + 5, plain, PV_CRYPTO_FAULT_TRUNCATED,
	             "inside chunk 2");
	pv_crypto_buf_release(&ct);
	pv_crypto_keyring_free(ring);
	free(plain);
	fixture_free(&f);
}
END_TEST

START_TEST(test_crypto__reorder_duplicate_remove)
{
	struct fixture f = fixture_new(1000, 4500);
	const size_t cl = 1020;
	unsigned char *c = copy_ct(&f);
	unsigned char *d = pv_malloc(f.ct.len + cl);

	/* swap chunks 1 and 3 */
	memcpy(c + chunk_off(&f, 1), f.ct.data + chunk_off(&f, 3), cl);
	memcpy(c + chunk_off(&f, 3), f.ct.data + chunk_off(&f, 1), cl);
	expect_fault(f.ring, c, f.ct.len, f.plain, PV_CRYPTO_FAULT_MISPLACED,
	             "chunk 1 at byte offset 1064 is out of place: it was written as chunk 3");
	/* duplicate chunk 2 */
	memcpy(d, f.ct.data, chunk_off(&f, 3));
	memcpy(d + chunk_off(&f, 3), f.ct.data + chunk_off(&f, 2), f.ct.len - chunk_off(&f, 2));
	expect_fault(f.ring, d, f.ct.len + cl, f.plain, PV_CRYPTO_FAULT_MISPLACED,
	             "chunk 3 at byte offset 3104 is out of place: it was written as chunk 2");
	/* remove chunk 1 */
	memcpy(d, f.ct.data, chunk_off(&f, 1));
	memcpy(d + chunk_off(&f, 1), f.ct.data + chunk_off(&f, 2), f.ct.len - chunk_off(&f, 2));
	expect_fault(f.ring, d, f.ct.len - cl, f.plain, PV_CRYPTO_FAULT_MISPLACED, "written as chunk 2");
	/* the short final chunk moved forward: now the stream "ends" early at chunk 1 */
	memcpy(d, f.ct.data, chunk_off(&f, 1));
	memcpy(d + chunk_off(&f, 1), f.ct.data + chunk_off(&f, 4), 520);
	expect_fault(f.ring, d, chunk_off(&f, 1) + 520, f.plain, PV_CRYPTO_FAULT_MISPLACED,
	             "written as chunk 4");
	free(c);
	free(d);
	fixture_free(&f);
}
END_TEST

/* A chunk from another backup under the same key is damage, not reordering: the nonce bases differ. */
START_TEST(test_crypto__splice_other_stream)
{
	struct fixture f = fixture_new(1000, 4500);
	struct pv_crypto_buf other = encrypt_all(f.key, NULL, 1000, f.plain, f.n, 0);
	unsigned char *c = copy_ct(&f);

	memcpy(c + chunk_off(&f, 2), other.data + chunk_off(&f, 2), 1020);
	expect_fault(f.ring, c, f.ct.len, f.plain, PV_CRYPTO_FAULT_CORRUPT,
	             "chunk 2 at byte offset 2084 failed");
	pv_crypto_buf_release(&other);
	free(c);
	fixture_free(&f);
}
END_TEST

START_TEST(test_crypto__trailing_data)
{
	struct fixture f = fixture_new(1000, 4500);
	unsigned char *c = pv_malloc(f.ct.len + 600);
	const size_t extra[] = {1, 16, 520, 600};

	memcpy(c, f.ct.data, f.ct.len);
	for (size_t i = 0; i < 4; i++) {
		if (i < 2)
			memset(c + f.ct.len, 0, extra[i]);
		else
			memcpy(c + f.ct.len, f.ct.data + chunk_off(&f, 4), 520); /* the final chunk again */
		expect_fault(f.ring, c, f.ct.len + extra[i], f.plain, PV_CRYPTO_FAULT_TRAILING,
		             "unexpected data after the final chunk at byte offset 4644");
	}
	free(c);
	fixture_free(&f);
}
END_TEST

START_TEST(test_crypto__wrong_key_and_rotation)
{
	struct fixture f = fixture_new(1000, 4500);
	struct pv_crypto_keyring *other = ring_of(key_n(2));
	struct pv_crypto_keyring *empty = pv_crypto_keyring_new();
	struct pv_crypto_keyring *rotated = pv_crypto_keyring_new();
	char want[128];
	struct result r;

	snprintf(want, sizeof(want), "encrypted with key %s, which is not configured (configured: %s)",
	         pv_crypto_key_fingerprint(f.key),
	         pv_crypto_key_fingerprint(pv_crypto_keyring_current(other)));
	expect_fault(other, f.ct.data, f.ct.len, f.plain, PV_CRYPTO_FAULT_UNKNOWN_KEY, want);
	expect_fault(other, f.ct.data, f.ct.len, f.plain, PV_CRYPTO_FAULT_UNKNOWN_KEY,
	             "HINT: add that key's file to storage.old_key_files");
	expect_fault(empty, f.ct.data, f.ct.len, f.plain, PV_CRYPTO_FAULT_UNKNOWN_KEY,
	             "no keys are configured");
	r = decrypt_all(other, f.ct.data, f.ct.len, 0, 0);
	ck_assert_int_eq(r.err.code, PV_ERR_NOT_FOUND);

	/* After rotation the old key, now in old_key_files, still decrypts. */
	pv_crypto_keyring_add(rotated, key_n(2), true);
	pv_crypto_keyring_add(rotated, key_n(1), false);
	r = decrypt_all(rotated, f.ct.data, f.ct.len, 4, 33);
	ck_assert_msg(r.ok, "%s", r.err.msg);
	ck_assert_uint_eq(r.plain.len, f.n);
	ck_assert(memcmp(r.plain.data, f.plain, f.n) == 0);
	pv_crypto_buf_release(&r.plain);
	pv_crypto_keyring_free(other);
	pv_crypto_keyring_free(empty);
	pv_crypto_keyring_free(rotated);
	fixture_free(&f);
}
END_TEST

START_TEST(test_crypto__not_encrypted_and_usage)
{
	struct pv_crypto_key *key = key_n(1);
	struct pv_crypto_keyring *ring = ring_of(key);
	struct pv_crypto_buf out = {0};
	struct pv_crypto_decrypt *dec;
	struct pv_crypto_encrypt *enc;
	struct pv_error err, err2;
	/* a zstd frame, as a dump.zst mistaken for dump.zst.enc would start */
	const unsigned char zstd[64] = {0x28, 0xb5, 0x2f, 0xfd};

	expect_fault(ring, zstd, sizeof(zstd), zstd, PV_CRYPTO_FAULT_NOT_ENCRYPTED,
	             "does not start with \"PGVIGENC\"");

	/* every call after a failure repeats it */
	dec = pv_crypto_decrypt_new(ring);
	ck_assert_ptr_null(pv_crypto_decrypt_fingerprint(dec));
	ck_assert(!pv_crypto_decrypt_update(dec, zstd, sizeof(zstd), &out, &err));
	ck_assert(!pv_crypto_decrypt_update(dec, zstd, 1, &out, &err2));
	ck_assert_str_eq(err.msg, err2.msg);
	ck_assert(!pv_crypto_decrypt_finish(dec, &err2));
	ck_assert_str_eq(err.msg, err2.msg);
	ck_assert_int_eq(err.code, PV_ERR_IO);
	pv_crypto_decrypt_free(dec);
	pv_crypto_decrypt_free(NULL);

	enc = pv_crypto_encrypt_new(key, &err);
	ck_assert(pv_crypto_encrypt_finish(enc, &out, &err));
	ck_assert_uint_eq(out.len, 44 + 20);
	ck_assert(!pv_crypto_encrypt_update(enc, "x", 1, &out, &err));
	ck_assert_msg(strstr(err.msg, "after finish") != NULL, "%s", err.msg);
	ck_assert(!pv_crypto_encrypt_finish(enc, &out, &err));
	pv_crypto_encrypt_free(enc);
	pv_crypto_encrypt_free(NULL);

	dec = pv_crypto_decrypt_new(ring);
	ck_assert(pv_crypto_decrypt_update(dec, out.data, out.len, &out, &err));
	ck_assert_str_eq(pv_crypto_decrypt_fingerprint(dec), pv_crypto_key_fingerprint(key));
	ck_assert(pv_crypto_decrypt_finish(dec, &err));
	ck_assert_uint_eq(pv_crypto_decrypt_bytes_in(dec), 64);
	pv_crypto_decrypt_free(dec);

	ck_assert_ptr_null(pv_crypto_encrypt_new_test(key, nonce_fixed, 0, &err));
	ck_assert_ptr_null(pv_crypto_encrypt_new_test(key, nonce_fixed, PV_CRYPTO_CHUNK_SIZE_MAX + 1, &err));
	ck_assert_uint_eq(pv_crypto_encrypted_size(0, CS), 64);
	ck_assert_uint_eq(pv_crypto_encrypted_size(CS, CS), 44 + 40 + CS);
	pv_crypto_buf_release(&out);
	pv_crypto_buf_release(&out);
	pv_crypto_keyring_free(ring);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("crypto");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 120);
	tcase_add_unchecked_fixture(tc, setup_tmpdir, teardown_tmpdir);
	tcase_add_test(tc, test_crypto__sha256_vectors);
	tcase_add_test(tc, test_crypto__hex);
	tcase_add_test(tc, test_crypto__key_load_ok);
	tcase_add_test(tc, test_crypto__key_load_refused);
	tcase_add_test(tc, test_crypto__fingerprint);
	tcase_add_test(tc, test_crypto__keyring);
	tcase_add_test(tc, test_crypto__roundtrip_sizes);
	tcase_add_test(tc, test_crypto__roundtrip_large_random_splits);
	tcase_add_test(tc, test_crypto__small_chunks_byte_by_byte);
	tcase_add_test(tc, test_crypto__format_known_answer);
	tcase_add_test(tc, test_crypto__tamper_header);
	tcase_add_test(tc, test_crypto__tamper_header_with_checksum);
	tcase_add_test(tc, test_crypto__tamper_body_and_tag);
	tcase_add_test(tc, test_crypto__no_unauthenticated_release);
	tcase_add_test(tc, test_crypto__truncation);
	tcase_add_test(tc, test_crypto__reorder_duplicate_remove);
	tcase_add_test(tc, test_crypto__splice_other_stream);
	tcase_add_test(tc, test_crypto__trailing_data);
	tcase_add_test(tc, test_crypto__wrong_key_and_rotation);
	tcase_add_test(tc, test_crypto__not_encrypted_and_usage);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
