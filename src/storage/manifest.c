/* manifest.json: durable writing, strict validation, and the storage scan that rebuilds the catalog. */
#include "storage/storage.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storage/internal.h"
#include "util/log.h"
#include "util/mem.h"

/* Far above any real manifest (a few hundred bytes per table), low enough to refuse junk. */
#define MANIFEST_MAX_SIZE (64u << 20)

bool
pv_store_manifest_write(const char *dir, const json_t *manifest, struct pv_error *err)
{
	char *tmp = pv_asprintf("%s/.%s.tmp", dir, PV_STORE_MANIFEST);
	char *final = pv_asprintf("%s/%s", dir, PV_STORE_MANIFEST);
	char *text = NULL;
	int fd = -1;
	bool ok = false;
	size_t len;

	if (!pv_store_manifest_validate(manifest, pv_store_basename(dir), err)) {
		pv_error_prefix(err, "not writing an invalid manifest to %s: ", dir);
		goto out;
	}
	text = json_dumps(manifest, JSON_INDENT(2) | JSON_SORT_KEYS);
	if (text == NULL) {
		pv_error_set(err, PV_ERR_INTERNAL, "cannot serialize the manifest for %s", dir);
		goto out;
	}
	len = strlen(text);
	text[len++] = '\n'; /* replaces the NUL: written by length */
	/* O_TRUNC, not O_EXCL: a leftover from a crash in the same directory is just overwritten. */
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		pv_error_set(err, PV_ERR_IO, "creating %s: %s", tmp, strerror(errno));
		goto out;
	}
	if (!pv_store_write_all(fd, text, len, tmp, -1, NULL, err))
		goto out;
	if (fsync(fd) != 0) {
		pv_error_set(err, PV_ERR_IO, "fsync %s: %s", tmp, strerror(errno));
		goto out;
	}
	if (close(fd) != 0) {
		fd = -1;
		pv_error_set(err, PV_ERR_IO, "closing %s: %s", tmp, strerror(errno));
		goto out;
	}
	fd = -1;
	if (rename(tmp, final) != 0) {
		pv_error_set(err, PV_ERR_IO, "renaming %s to %s: %s", tmp, final, strerror(errno));
		goto out;
	}
	ok = pv_store_fsync_dir(dir, err);
out:
	if (fd >= 0)
		close(fd);
	if (!ok)
		unlink(tmp);
	free(text);
	free(tmp);
	free(final);
	return ok;
}

/* ---- validation ---- */

static const char *
type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER: return "an integer";
	case JSON_REAL: return "a number";
	case JSON_TRUE:
	case JSON_FALSE: return "a boolean";
	case JSON_NULL: return "null";
	}
	return "?";
}

static bool
bad(struct pv_error *err, const char *field, const char *want, const json_t *v)
{
	if (v == NULL)
		return pv_error_set(err, PV_ERR_STATE, "field \"%s\" is missing", field);
	return pv_error_set(err, PV_ERR_STATE, "field \"%s\" must be %s, not %s", field, want, type_name(v));
}

static const char *
need_string(const json_t *obj, const char *field, struct pv_error *err)
{
	const json_t *v = json_object_get(obj, field);

	if (!json_is_string(v) || json_string_length(v) == 0) {
		bad(err, field, "a non-empty string", v);
		return NULL;
	}
	return json_string_value(v);
}

static bool
digits(const char *s, int n)
{
	for (int i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return true;
}

/* RFC 3339 in UTC as pgvigil writes it: YYYY-MM-DDTHH:MM:SS[.fraction]Z. */
static bool
is_rfc3339_utc(const char *s)
{
	size_t i = 19;
	int mon, day, h, m, sec;

	if (strlen(s) < 20 || !digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' ||
	    !digits(s + 8, 2) || s[10] != 'T' || !digits(s + 11, 2) || s[13] != ':' || !digits(s + 14, 2) ||
	    s[16] != ':' || !digits(s + 17, 2))
		return false;
	mon = atoi(s + 5);
	day = atoi(s + 8);
	h = atoi(s + 11);
	m = atoi(s + 14);
	sec = atoi(s + 17);
	if (mon < 1 || mon > 12 || day < 1 || day > 31 || h > 23 || m > 59 || sec > 60)
		return false;
	if (s[i] == '.') {
		i++;
		if (!digits(s + i, 1))
			return false;
		while (s[i] >= '0' && s[i] <= '9')
			i++;
	}
	return s[i] == 'Z' && s[i + 1] == '\0';
}

static bool
is_hex(const char *s, size_t n)
{
	if (strlen(s) != n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

/* Optional members: checked only when present, so a manifest is never half-trusted. */
static bool
optional(const json_t *obj, const char *field, const char *path, json_type type, const char *want,
         struct pv_error *err)
{
	const json_t *v = json_object_get(obj, field);

	if (v == NULL || json_typeof(v) == type)
		return true;
	return bad(err, path, want, v);
}

static bool
validate_expected(const json_t *exp, struct pv_error *err)
{
	const json_t *v, *rows, *hashes;
	const char *key;

	if (!json_is_object(exp))
		return bad(err, "expected", "an object", exp);
	v = json_object_get(exp, "tables");
	if (!json_is_array(v))
		return bad(err, "expected.tables", "an array of table names", v);
	for (size_t i = 0; i < json_array_size(v); i++) {
		if (!json_is_string(json_array_get(v, i)))
			return bad(err, "expected.tables", "an array of table names", v);
	}
	rows = json_object_get(exp, "row_counts");
	if (!json_is_object(rows))
		return bad(err, "expected.row_counts", "an object", rows);
	json_object_foreach((json_t *)rows, key, v)
	{
		if (!json_is_integer(v) || json_integer_value(v) < 0)
			return pv_error_set(err, PV_ERR_STATE,
			                    "field \"expected.row_counts\": the count of \"%s\" must be a "
			                    "non-negative integer, not %s",
			                    key, type_name(v));
	}
	hashes = json_object_get(exp, "critical_table_hashes");
	if (!json_is_object(hashes))
		return bad(err, "expected.critical_table_hashes", "an object", hashes);
	json_object_foreach((json_t *)hashes, key, v)
	{
		/* null: the table was absent where it was measured (a restored copy). */
		if (!json_is_string(v) && !json_is_null(v))
			return pv_error_set(
			        err, PV_ERR_STATE,
			        "field \"expected.critical_table_hashes\": the hash of \"%s\" must be a "
			        "string, not %s",
			        key, type_name(v));
	}
	/* Hashes are comparable only with the method named beside them. */
	if (json_object_size(hashes) > 0 && (!json_is_string(json_object_get(exp, "method")) ||
	                                     json_string_length(json_object_get(exp, "method")) == 0))
		return bad(err, "expected.method", "a non-empty string", json_object_get(exp, "method"));
	return true;
}

static bool
validate_compression(const json_t *m, const char **algorithm, struct pv_error *err)
{
	const json_t *c = json_object_get(m, "compression"), *alg;

	if (!json_is_object(c))
		return bad(err, "compression", "an object", c);
	alg = json_object_get(c, "algorithm");
	if (!json_is_string(alg) ||
	    (strcmp(json_string_value(alg), "zstd") != 0 && strcmp(json_string_value(alg), "none") != 0))
		return pv_error_set(err, PV_ERR_STATE,
		                    "field \"compression.algorithm\" must be \"zstd\" or \"none\"");
	*algorithm = json_string_value(alg);
	if (strcmp(*algorithm, "zstd") == 0 && !json_is_integer(json_object_get(c, "level")))
		return bad(err, "compression.level", "an integer", json_object_get(c, "level"));
	return true;
}

static bool
validate_encryption(const json_t *m, bool encrypted, const char *file, struct pv_error *err)
{
	const json_t *enc = json_object_get(m, "encryption"), *alg, *fp;

	if (enc == NULL)
		return bad(err, "encryption", "null or an object", enc);
	if (encrypted != !json_is_null(enc))
		return pv_error_set(err, PV_ERR_STATE, "field \"encryption\" must be %s for file \"%s\"",
		                    encrypted ? "an object" : "null", file);
	if (!encrypted)
		return true;
	if (!json_is_object(enc))
		return bad(err, "encryption", "an object", enc);
	alg = json_object_get(enc, "algorithm");
	if (!json_is_string(alg) || strcmp(json_string_value(alg), PV_CRYPTO_ALGORITHM_NAME) != 0)
		return pv_error_set(err, PV_ERR_STATE, "field \"encryption.algorithm\" must be \"%s\"",
		                    PV_CRYPTO_ALGORITHM_NAME);
	fp = json_object_get(enc, "key_fingerprint");
	if (!json_is_string(fp) || !is_hex(json_string_value(fp), PV_CRYPTO_FINGERPRINT_HEX_LEN))
		return pv_error_set(err, PV_ERR_STATE,
		                    "field \"encryption.key_fingerprint\" must be 16 lowercase hex digits");
	return optional(enc, "format_version", "encryption.format_version", JSON_INTEGER, "an integer",
	                err) &&
	       optional(enc, "chunk_size", "encryption.chunk_size", JSON_INTEGER, "an integer", err);
}

static bool
validate_schema_copy(const json_t *m, struct pv_error *err)
{
	const json_t *sc = json_object_get(m, "schema_copy"), *v;

	if (sc == NULL)
		return true;
	if (!json_is_object(sc))
		return bad(err, "schema_copy", "an object", sc);
	if (!json_is_string(json_object_get(sc, "file")) ||
	    strchr(json_string_value(json_object_get(sc, "file")), '/'))
		return bad(err, "schema_copy.file", "a file name", json_object_get(sc, "file"));
	v = json_object_get(sc, "size");
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return bad(err, "schema_copy.size", "a non-negative integer", v);
	v = json_object_get(sc, "sha256");
	if (!json_is_string(v) || !is_hex(json_string_value(v), PV_CRYPTO_SHA256_HEX_LEN))
		return pv_error_set(err, PV_ERR_STATE,
		                    "field \"schema_copy.sha256\" must be 64 lowercase hex digits");
	return true;
}

bool
pv_store_manifest_validate(const json_t *m, const char *dir_name, struct pv_error *err)
{
	static const char *const strings[] = {
	        "database", "job", "tier", "file", "sha256", "format", "pg_dump_version", "server_version"};
	static const char *const times[] = {"started", "finished"};
	const json_t *v;
	const char *id, *file, *comp = NULL;
	bool encrypted;

	if (!json_is_object(m))
		return pv_error_set(err, PV_ERR_STATE, "the manifest must be a JSON object, not %s",
		                    type_name(m));
	v = json_object_get(m, "manifest_version");
	if (!json_is_integer(v))
		return bad(err, "manifest_version", "an integer", v);
	if (json_integer_value(v) != PV_STORE_MANIFEST_VERSION)
		return pv_error_set(
		        err, PV_ERR_STATE,
		        "field \"manifest_version\" is %lld; this pgvigil reads version %d only; HINT: "
		        "use the pgvigil release that wrote it",
		        (long long)json_integer_value(v), PV_STORE_MANIFEST_VERSION);
	if ((id = need_string(m, "id", err)) == NULL)
		return false;
	if (!pv_store_backup_id_parse(id, NULL, NULL))
		return pv_error_set(err, PV_ERR_STATE,
		                    "field \"id\" (\"%s\") is not a backup id like 20261124T020000Z-daily",
		                    id);
	if (dir_name != NULL && strcmp(dir_name, id) != 0 &&
	    !(strncmp(dir_name, PV_STORE_TEMP_PREFIX, strlen(PV_STORE_TEMP_PREFIX)) == 0 &&
	      strcmp(dir_name + strlen(PV_STORE_TEMP_PREFIX), id) == 0))
		return pv_error_set(err, PV_ERR_STATE,
		                    "field \"id\" (\"%s\") does not match the directory name \"%s\"", id,
		                    dir_name);
	for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++)
		if (need_string(m, strings[i], err) == NULL)
			return false;
	for (size_t i = 0; i < sizeof(times) / sizeof(times[0]); i++) {
		const char *t = need_string(m, times[i], err);

		if (t == NULL)
			return false;
		if (!is_rfc3339_utc(t))
			return pv_error_set(err, PV_ERR_STATE,
			                    "field \"%s\" (\"%s\") is not an RFC 3339 UTC time like "
			                    "2026-11-24T02:00:00Z",
			                    times[i], t);
	}
	v = json_object_get(m, "duration");
	if (!json_is_number(v) || json_number_value(v) < 0)
		return bad(err, "duration", "a non-negative number", v);
	v = json_object_get(m, "size");
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return bad(err, "size", "a non-negative integer", v);
	if (!is_hex(json_string_value(json_object_get(m, "sha256")), PV_CRYPTO_SHA256_HEX_LEN))
		return pv_error_set(err, PV_ERR_STATE, "field \"sha256\" must be 64 lowercase hex digits");
	if (!validate_compression(m, &comp, err))
		return false;
	file = json_string_value(json_object_get(m, "file"));
	encrypted = strlen(file) > 4 && strcmp(file + strlen(file) - 4, ".enc") == 0;
	if (strcmp(file,
	           pv_store_dump_name(strcmp(comp, "zstd") == 0 ? PV_COMPRESSION_ZSTD : PV_COMPRESSION_NONE,
	                              encrypted)) != 0)
		return pv_error_set(
		        err, PV_ERR_STATE,
		        "field \"file\" (\"%s\") does not match compression \"%s\" (expected dump.zst, "
		        "dump.zst.enc, dump or dump.enc)",
		        file, comp);
	if (!validate_encryption(m, encrypted, file, err) || !validate_schema_copy(m, err))
		return false;
	if (!optional(m, "server_version_num", "server_version_num", JSON_INTEGER, "an integer", err) ||
	    !optional(m, "snapshot", "snapshot", JSON_STRING, "a string", err) ||
	    !optional(m, "scope", "scope", JSON_OBJECT, "an object", err) ||
	    !optional(m, "pgvigil_version", "pgvigil_version", JSON_STRING, "a string", err))
		return false;
	return validate_expected(json_object_get(m, "expected"), err);
}

json_t *
pv_store_manifest_read(const char *dir, struct pv_error *err)
{
	char *path = pv_asprintf("%s/%s", dir, PV_STORE_MANIFEST);
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;
	json_error_t jerr;
	json_t *m = NULL;
	char *buf = NULL;
	size_t len = 0;

	if (fd < 0) {
		pv_error_set(err, errno == ENOENT ? PV_ERR_NOT_FOUND : PV_ERR_IO, "reading %s: %s", path,
		             strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (off_t)MANIFEST_MAX_SIZE) {
		pv_error_set(err, PV_ERR_STATE, "reading %s: not a regular file of at most %u bytes", path,
		             MANIFEST_MAX_SIZE);
		goto out;
	}
	buf = pv_malloc((size_t)st.st_size + 1);
	while (len < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			pv_error_set(err, PV_ERR_IO, "reading %s: %s", path, strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	m = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (m == NULL) {
		pv_error_set(err, PV_ERR_STATE, "%s:%d:%d: invalid JSON: %s", path, jerr.line, jerr.column,
		             jerr.text);
		goto out;
	}
	if (!pv_store_manifest_validate(m, pv_store_basename(dir), err)) {
		pv_error_prefix(err, "%s: ", path);
		json_decref(m);
		m = NULL;
	}
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	free(path);
	return m;
}

/* ---- scan ---- */

static int
skip_dots(const struct dirent *de)
{
	return de->d_name[0] != '.';
}

/* Sorted names of the real subdirectories (not symlinks) of parent_fd/name not starting with '.'. */
static int
list_subdirs(int dfd, const char *path, struct dirent ***names)
{
	int n = scandirat(dfd, ".", names, skip_dots, alphasort);

	if (n < 0) {
		pv_log_warn("cannot read storage directory path=%s error=%s", pv_log_quote(path),
		            pv_log_quote(strerror(errno)));
		return 0;
	}
	return n;
}

static int
open_dir_at(int parent_fd, const char *name)
{
	return openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

static void
free_names(struct dirent **names, int n)
{
	for (int i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

typedef void (*scan_cb)(const char *dir, json_t *manifest, void *arg);

static void
scan_job(int job_fd, const char *job_path, scan_cb cb, void *arg)
{
	struct dirent **names;
	int n = list_subdirs(job_fd, job_path, &names);

	for (int i = 0; i < n; i++) {
		struct stat st;
		struct pv_error why = {0};
		char *dir;
		json_t *m;

		if (fstatat(job_fd, names[i]->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode))
			continue;
		dir = pv_asprintf("%s/%s", job_path, names[i]->d_name);
		m = pv_store_manifest_read(dir, &why);
		if (m == NULL)
			pv_log_debug("backup directory without a valid manifest path=%s error=%s",
			             pv_log_quote(dir), pv_log_quote(why.msg));
		cb(dir, m, arg);
		json_decref(m);
		free(dir);
	}
	if (n > 0)
		free_names(names, n);
}

bool
pv_store_scan(const char *storage_path, scan_cb cb, void *arg, struct pv_error *err)
{
	int top = open(storage_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct dirent **dbs;
	int ndb;

	if (top < 0)
		return pv_error_set(err, errno == ENOENT ? PV_ERR_NOT_FOUND : PV_ERR_IO,
		                    "opening storage %s: %s", storage_path, strerror(errno));
	ndb = scandirat(top, ".", &dbs, skip_dots, alphasort);
	if (ndb < 0) {
		pv_error_set(err, PV_ERR_IO, "reading storage %s: %s", storage_path, strerror(errno));
		close(top);
		return false;
	}
	for (int i = 0; i < ndb; i++) {
		int db_fd = open_dir_at(top, dbs[i]->d_name);
		char *db_path;
		struct dirent **jobs;
		int njob;

		if (db_fd < 0)
			continue; /* a file or a symlink: not ours */
		db_path = pv_asprintf("%s/%s", storage_path, dbs[i]->d_name);
		njob = list_subdirs(db_fd, db_path, &jobs);
		for (int j = 0; j < njob; j++) {
			int job_fd = open_dir_at(db_fd, jobs[j]->d_name);
			char *job_path;

			if (job_fd < 0)
				continue;
			job_path = pv_asprintf("%s/%s", db_path, jobs[j]->d_name);
			scan_job(job_fd, job_path, cb, arg);
			free(job_path);
			close(job_fd);
		}
		if (njob > 0)
			free_names(jobs, njob);
		free(db_path);
		close(db_fd);
	}
	free_names(dbs, ndb);
	close(top);
	return true;
}
