/* Storage layout: backup ids, directories, atomic commit, removal of backups and crash leftovers. */
#include "storage/storage.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "loop/work.h"
#include "storage/internal.h"
#include "util/log.h"
#include "util/mem.h"

char *
pv_store_parent(const char *path)
{
	const char *slash = strrchr(path, '/');

	while (slash != NULL && slash > path && slash[1] == '\0') {
		/* "a/b/" : look past trailing slashes */
		const char *p = slash - 1;
		while (p > path && *p != '/')
			p--;
		slash = *p == '/' ? p : NULL;
	}
	if (slash == NULL)
		return pv_strdup(".");
	if (slash == path)
		return pv_strdup("/");
	return pv_strndup(path, (size_t)(slash - path));
}

const char *
pv_store_basename(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash != NULL ? slash + 1 : path;
}

bool
pv_store_fsync_dir(const char *path, struct pv_error *err)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	bool ok = true;

	if (fd < 0)
		return pv_error_set(err, PV_ERR_IO, "opening directory %s: %s", path, strerror(errno));
	if (fsync(fd) != 0)
		ok = pv_error_set(err, PV_ERR_IO, "fsync directory %s: %s", path, strerror(errno));
	close(fd);
	return ok;
}

/* ---- ids and names ---- */

char *
pv_store_backup_id(time_t started, const char *tier)
{
	struct tm tm;
	char stamp[32];

	gmtime_r(&started, &tm);
	strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
	return pv_asprintf("%s-%s", stamp, tier);
}

bool
pv_store_backup_id_parse(const char *id, time_t *started, char **tier)
{
	struct tm tm = {0}, back;
	const char *rest;
	time_t t;

	/* Exactly 8 digits, T, 6 digits, Z, '-', a tier: strptime alone would accept fewer digits. */
	for (int i = 0; i < 16; i++) {
		char c = id[i];
		bool digit = c >= '0' && c <= '9';

		if (c == '\0' || (i == 8 ? c != 'T' : i == 15 ? c != 'Z' : !digit))
			return false;
	}
	if (id[16] != '-' || id[17] == '\0' || strchr(id + 17, '/') != NULL)
		return false;
	rest = strptime(id, "%Y%m%dT%H%M%SZ", &tm);
	if (rest != id + 16)
		return false;
	/* pv_store_backup_id writes times after 1970 (earlier years would not have 4 digits). */
	if (tm.tm_year < 70)
		return false;
	/* strptime takes February 31 and second 60; timegm would move them to another instant. */
	back = tm;
	t = timegm(&back);
	if (back.tm_year != tm.tm_year || back.tm_mon != tm.tm_mon || back.tm_mday != tm.tm_mday ||
	    back.tm_hour != tm.tm_hour || back.tm_min != tm.tm_min || back.tm_sec != tm.tm_sec)
		return false;
	if (started != NULL)
		*started = t;
	if (tier != NULL)
		*tier = pv_strdup(id + 17);
	return true;
}

char *
pv_store_job_dir(const char *storage, const char *database, const char *job)
{
	return pv_asprintf("%s/%s/%s", storage, database, job);
}

char *
pv_store_backup_dir(const char *storage, const char *database, const char *job, const char *id)
{
	return pv_asprintf("%s/%s/%s/%s", storage, database, job, id);
}

char *
pv_store_temp_dir(const char *storage, const char *database, const char *job, const char *id)
{
	return pv_asprintf("%s/%s/%s/" PV_STORE_TEMP_PREFIX "%s", storage, database, job, id);
}

/* A name that is safe as one path component and cannot collide with temporaries or "..". */
static bool
check_component(const char *what, const char *name, struct pv_error *err)
{
	if (name == NULL || name[0] == '\0' || name[0] == '.' || strchr(name, '/') != NULL)
		return pv_error_set(
		        err, PV_ERR_USAGE,
		        "%s name \"%s\" cannot be used in a storage path (empty, starts with '.', or "
		        "contains '/')",
		        what, name != NULL ? name : "");
	return true;
}

bool
pv_store_mkdirs(const char *path, struct pv_error *err)
{
	char *p = pv_strdup(path);
	bool ok = true;

	for (char *s = p + 1;; s++) {
		bool end = *s == '\0';
		struct stat st;

		if (*s != '/' && !end)
			continue;
		*s = '\0';
		if (mkdir(p, 0700) == 0) {
			/* The new entry is durable only once its parent directory is synced. */
			char *parent = pv_store_parent(p);
			ok = pv_store_fsync_dir(parent, err);
			free(parent);
		} else if (errno != EEXIST) {
			ok = pv_error_set(err, PV_ERR_IO, "creating directory %s: %s", p, strerror(errno));
		} else if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) {
			ok = pv_error_set(err, PV_ERR_IO, "%s exists and is not a directory", p);
		}
		if (!ok || end)
			break;
		*s = '/';
	}
	free(p);
	return ok;
}

bool
pv_store_prepare_temp(const char *storage, const char *database, const char *job, const char *id,
                      char **tmp_dir, struct pv_error *err)
{
	char *job_dir, *tmp;

	*tmp_dir = NULL;
	if (!check_component("database", database, err) || !check_component("job", job, err) ||
	    !check_component("backup", id, err))
		return false;
	job_dir = pv_store_job_dir(storage, database, job);
	if (!pv_store_mkdirs(job_dir, err)) {
		free(job_dir);
		return false;
	}
	free(job_dir);
	tmp = pv_store_temp_dir(storage, database, job, id);
	if (mkdir(tmp, 0700) != 0) {
		pv_error_set(err, PV_ERR_IO, "creating directory %s: %s", tmp, strerror(errno));
		free(tmp);
		return false;
	}
	*tmp_dir = tmp;
	return true;
}

/* ---- commit ---- */

static bool
fsync_files_in(int dfd, const char *dir, struct pv_error *err)
{
	int fd2 = dup(dfd);
	DIR *d = fd2 >= 0 ? fdopendir(fd2) : NULL;
	struct dirent *de;
	bool ok = true;

	if (d == NULL) {
		if (fd2 >= 0)
			close(fd2);
		return pv_error_set(err, PV_ERR_IO, "reading directory %s: %s", dir, strerror(errno));
	}
	rewinddir(d);
	while (ok && (de = readdir(d)) != NULL) {
		struct stat st;
		int fd;

		if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
			continue;
		fd = openat(dfd, de->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0 || fsync(fd) != 0)
			ok = pv_error_set(err, PV_ERR_IO, "fsync %s/%s: %s", dir, de->d_name,
			                  strerror(errno));
		if (fd >= 0)
			close(fd);
	}
	closedir(d);
	return ok;
}

bool
pv_store_commit(const char *tmp_dir, const char *final_dir, struct pv_error *err)
{
	int dfd = open(tmp_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	char *parent, *tmp_parent;
	bool ok;

	if (dfd < 0)
		return pv_error_set(err, PV_ERR_IO, "opening directory %s: %s", tmp_dir, strerror(errno));
	ok = fsync_files_in(dfd, tmp_dir, err);
	if (ok && fsync(dfd) != 0)
		ok = pv_error_set(err, PV_ERR_IO, "fsync directory %s: %s", tmp_dir, strerror(errno));
	close(dfd);
	if (!ok)
		return false;
	/* rename(2) would silently replace an empty directory: RENAME_NOREPLACE refuses any target. */
	if (renameat2(AT_FDCWD, tmp_dir, AT_FDCWD, final_dir, RENAME_NOREPLACE) != 0) {
		struct stat st;

		if (errno == EEXIST)
			return pv_error_set(err, PV_ERR_IO, "refusing to commit %s: %s already exists",
			                    tmp_dir, final_dir);
		if (errno != EINVAL && errno != ENOSYS)
			return pv_error_set(err, PV_ERR_IO, "renaming %s to %s: %s", tmp_dir, final_dir,
			                    strerror(errno));
		/* A filesystem without RENAME_NOREPLACE: check, then rename (the daemon is the only writer).
		 */
		if (lstat(final_dir, &st) == 0)
			return pv_error_set(err, PV_ERR_IO, "refusing to commit %s: %s already exists",
			                    tmp_dir, final_dir);
		if (rename(tmp_dir, final_dir) != 0)
			return pv_error_set(err, PV_ERR_IO, "renaming %s to %s: %s", tmp_dir, final_dir,
			                    strerror(errno));
	}
	parent = pv_store_parent(final_dir);
	tmp_parent = pv_store_parent(tmp_dir);
	ok = pv_store_fsync_dir(parent, err);
	if (ok && strcmp(parent, tmp_parent) != 0)
		ok = pv_store_fsync_dir(tmp_parent, err);
	free(parent);
	free(tmp_parent);
	return ok;
}

struct commit_job {
	char *tmp_dir;
	char *final_dir;
	pv_store_commit_cb cb;
	void *arg;
	bool ok;
	struct pv_error err;
};

static void
commit_thread(void *arg)
{
	struct commit_job *j = arg;

	j->ok = pv_store_commit(j->tmp_dir, j->final_dir, &j->err);
}

static void
commit_done(void *arg)
{
	struct commit_job *j = arg;

	j->cb(j->ok, j->ok ? NULL : &j->err, j->arg);
	free(j->tmp_dir);
	free(j->final_dir);
	free(j);
}

bool
pv_store_commit_start(struct event_base *base, const char *tmp_dir, const char *final_dir,
                      pv_store_commit_cb cb, void *arg, struct pv_error *err)
{
	struct commit_job *j = pv_calloc(1, sizeof(*j));

	j->tmp_dir = pv_strdup(tmp_dir);
	j->final_dir = pv_strdup(final_dir);
	j->cb = cb;
	j->arg = arg;
	if (!pv_work_run(base, commit_thread, j, commit_done, err)) {
		free(j->tmp_dir);
		free(j->final_dir);
		free(j);
		return false;
	}
	return true;
}

/* ---- removal ---- */

/* Remove parent_fd/name and everything below it without following symlinks. */
static bool
remove_tree_at(int parent_fd, const char *name, const char *path, struct pv_error *err)
{
	int dfd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	DIR *d;
	struct dirent *de;
	bool ok = true;

	if (dfd < 0)
		return pv_error_set(err, PV_ERR_IO, "opening directory %s: %s", path, strerror(errno));
	d = fdopendir(dfd);
	if (d == NULL) {
		close(dfd);
		return pv_error_set(err, PV_ERR_IO, "reading directory %s: %s", path, strerror(errno));
	}
	while ((de = readdir(d)) != NULL) {
		struct stat st;
		char *sub;

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
			continue; /* gone meanwhile */
		sub = pv_asprintf("%s/%s", path, de->d_name);
		if (S_ISDIR(st.st_mode)) {
			if (!remove_tree_at(dfd, de->d_name, sub, err))
				ok = false;
		} else if (S_ISREG(st.st_mode) || S_ISLNK(st.st_mode)) {
			/* unlink removes a symlink itself, never its target */
			if (unlinkat(dfd, de->d_name, 0) != 0 && errno != ENOENT)
				ok = pv_error_set(err, PV_ERR_IO, "removing %s: %s", sub, strerror(errno));
		} else {
			ok = pv_error_set(err, PV_ERR_IO, "not removing %s: not a regular file", sub);
		}
		free(sub);
	}
	closedir(d);
	if (ok && unlinkat(parent_fd, name, AT_REMOVEDIR) != 0)
		ok = pv_error_set(err, PV_ERR_IO, "removing directory %s: %s", path, strerror(errno));
	return ok;
}

/* Open a subdirectory without following a symlink; -1 when it is not a real directory. */
static int
open_subdir(int parent_fd, const char *name)
{
	return openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

static DIR *
open_subdir_stream(int parent_fd, const char *name)
{
	int fd = open_subdir(parent_fd, name);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;

	if (d == NULL && fd >= 0)
		close(fd);
	return d;
}

static bool
is_dot(const char *name)
{
	return strcmp(name, ".") == 0 || strcmp(name, "..") == 0;
}

size_t
pv_store_cleanup_temp(const char *storage_path)
{
	DIR *top = opendir(storage_path);
	struct dirent *db_de;
	size_t removed = 0;

	if (top == NULL) {
		if (errno != ENOENT)
			pv_log_warn("cannot look for temporary backups path=%s error=%s",
			            pv_log_quote(storage_path), pv_log_quote(strerror(errno)));
		return 0;
	}
	while ((db_de = readdir(top)) != NULL) {
		DIR *db;
		struct dirent *job_de;

		if (is_dot(db_de->d_name) || (db = open_subdir_stream(dirfd(top), db_de->d_name)) == NULL)
			continue;
		while ((job_de = readdir(db)) != NULL) {
			DIR *job;
			struct dirent *de;
			bool any = false;

			if (is_dot(job_de->d_name) ||
			    (job = open_subdir_stream(dirfd(db), job_de->d_name)) == NULL)
				continue;
			while ((de = readdir(job)) != NULL) {
				struct pv_error err;
				char *path;

				if (strncmp(de->d_name, PV_STORE_TEMP_PREFIX, strlen(PV_STORE_TEMP_PREFIX)) !=
				    0)
					continue;
				path = pv_asprintf("%s/%s/%s/%s", storage_path, db_de->d_name, job_de->d_name,
				                   de->d_name);
				if (remove_tree_at(dirfd(job), de->d_name, path, &err)) {
					pv_log_notice(
					        "removed temporary backup directory left by an interrupted "
					        "backup path=%s",
					        pv_log_quote(path));
					removed++;
					any = true;
				} else {
					pv_log_warn(
					        "cannot remove temporary backup directory path=%s error=%s",
					        pv_log_quote(path), pv_log_quote(err.msg));
				}
				free(path);
			}
			if (any)
				(void)fsync(dirfd(job));
			closedir(job);
		}
		closedir(db);
	}
	closedir(top);
	return removed;
}

bool
pv_store_remove_backup(const char *dir, struct pv_error *err)
{
	char *parent = pv_store_parent(dir);
	const char *name = pv_store_basename(dir);
	int pfd;
	struct stat st;
	bool ok;

	if (lstat(dir, &st) != 0) {
		enum pv_errcode code = errno == ENOENT ? PV_ERR_NOT_FOUND : PV_ERR_IO;
		pv_error_set(err, code, "removing backup %s: %s", dir, strerror(errno));
		free(parent);
		return false;
	}
	if (!S_ISDIR(st.st_mode)) {
		pv_error_set(err, PV_ERR_IO, "refusing to remove backup %s: not a directory (or a symlink)",
		             dir);
		free(parent);
		return false;
	}
	pfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (pfd < 0) {
		pv_error_set(err, PV_ERR_IO, "opening directory %s: %s", parent, strerror(errno));
		free(parent);
		return false;
	}
	ok = remove_tree_at(pfd, name, dir, err);
	if (ok && fsync(pfd) != 0)
		ok = pv_error_set(err, PV_ERR_IO, "fsync directory %s: %s", parent, strerror(errno));
	close(pfd);
	free(parent);
	return ok;
}

bool
pv_store_fs_usage(const char *path, uint64_t *total, uint64_t *avail, struct pv_error *err)
{
	struct statvfs sv;

	if (statvfs(path, &sv) != 0)
		return pv_error_set(err, PV_ERR_IO, "statvfs %s: %s", path, strerror(errno));
	*total = (uint64_t)sv.f_blocks * sv.f_frsize;
	*avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	return true;
}
