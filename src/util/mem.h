/* Allocation that aborts on out-of-memory, and small string helpers. */
#ifndef PV_UTIL_MEM_H
#define PV_UTIL_MEM_H

#include <stddef.h>

void *pv_malloc(size_t n);
void *pv_calloc(size_t count, size_t n);
void *pv_realloc(void *p, size_t n);
char *pv_strdup(const char *s);
char *pv_strndup(const char *s, size_t n);
/* malloc'ed printf; never returns NULL. */
char *pv_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Bounded copy that always terminates; returns false when truncated. */
#include <stdbool.h>
bool pv_strlcpy(char *dst, const char *src, size_t size);

#endif
