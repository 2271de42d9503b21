/* Shared by the libFuzzer targets: a private scratch directory, a fixed environment, file helpers. */
#ifndef PV_FUZZ_H
#define PV_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A fresh directory under $TMPDIR (or /tmp), created once and removed at exit. */
const char *pv_fuzz_scratch(void);
/* Replace the environment with PATH, TMPDIR and the given NAME=VALUE strings (NULL-terminated), so
 * lookups the code under test makes see the same fixed values on every machine. */
void pv_fuzz_environment(const char *const *vars);
/* Write exactly len bytes to path (created or truncated) with the given mode; aborts on failure. */
void pv_fuzz_write_file(const char *path, const void *data, size_t len, unsigned mode);
/* Abort with a message: the fuzzer reports it as a crash with this input. */
void pv_fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#define PV_FUZZ_CHECK(cond, ...)                                                                             \
	do {                                                                                                 \
		if (!(cond))                                                                                 \
			pv_fuzz_fail(__VA_ARGS__);                                                           \
	} while (0)

#endif
