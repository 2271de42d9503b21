/* Finding a pg_dump / pg_restore that can handle the server: SPEC §2's search order, version checked. */
#ifndef PV_JOBS_PGTOOLS_H
#define PV_JOBS_PGTOOLS_H

#include <stdbool.h>

#include "util/error.h"

struct event_base;
struct pv_pgtool_op;

/* path is NULL on error; major is the tool's major version (e.g. 15), version its --version line. */
typedef void (*pv_pgtool_cb)(const char *path, int major, const char *version, const struct pv_error *err,
                             void *arg);

/*
 * Look for `name` (pg_dump, pg_restore) at least as new as the server's major version:
 * in pg_bin_dir when it is set (and nowhere else), else /usr/lib/postgresql/<server major>/bin,
 * else the newest /usr/lib/postgresql/N/bin with N >= the server's major, else PATH. The
 * candidate's `--version` is run (asynchronously) to confirm. The callback runs exactly once,
 * never from inside this call, unless cancelled.
 */
struct pv_pgtool_op *pv_pgtool_find(struct event_base *base, const char *name, const char *pg_bin_dir,
                                    int server_version_num, pv_pgtool_cb cb, void *arg);
void pv_pgtool_cancel(struct pv_pgtool_op *op);

/* "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> 15; 0 when it cannot be parsed. */
int pv_pgtool_parse_major(const char *version_line);

/* The environment for a PostgreSQL client child: PATH, HOME, LANG=C, the daemon's PG* variables
 * (PGSSLROOTCERT, ...), PGAPPNAME and, if given, PGPASSWORD. NULL-terminated; free with
 * pv_pgtool_env_free. Passwords never go on a command line. */
char **pv_pgtool_env(const char *appname, const char *password);
void pv_pgtool_env_free(char **env);

#endif
