/* `pgvigilctl restore`: emergency restore through the daemon, with a progress line. */
#ifndef PV_CLI_RESTORE_H
#define PV_CLI_RESTORE_H

#include <stdbool.h>

/*
 * argv[0] is "restore"; then ID|latest --database DB --to CONNINFO [--force]. Sends `restore` on
 * one connection and, while it waits for the answer, polls `restore-progress` every 0.5 s on a
 * second one: a `\r`-updated line on a terminal (stderr), a plain line per phase change or every
 * 10 s otherwise, nothing with json. Prints the validation report and "restored in N s".
 * Returns the exit status: 0 restored and validated, 1 failed, 2 usage, 3 daemon unreachable.
 */
int pv_cli_restore(const char *socket, bool json, int argc, char **argv);

#endif
