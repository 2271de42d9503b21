/* Helpers shared by the storage source files; not for use outside src/storage. */
#ifndef PV_STORAGE_INTERNAL_H
#define PV_STORAGE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/error.h"

/* Write all of data, retrying short writes and EINTR; *done (may be NULL) grows with every byte
 * written, so a failure still accounts for what got out. EPIPE gives "consumer closed the pipe".
 * With cancel_fd >= 0, EAGAIN waits for fd or cancel_fd (which counts as cancellation). */
bool pv_store_write_all(int fd, const void *data, size_t len, const char *what, int cancel_fd, uint64_t *done,
                        struct pv_error *err);
/* fsync a directory by path. */
bool pv_store_fsync_dir(const char *path, struct pv_error *err);
/* Malloc'ed parent directory of path ("." when it has none). */
char *pv_store_parent(const char *path);
/* The part after the last '/'. */
const char *pv_store_basename(const char *path);
/* Set err to "cancelled". */
bool pv_store_cancelled(struct pv_error *err);

#endif
