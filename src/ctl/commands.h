/* The control command table: each command's name, whether it changes the daemon, and its handler. */
#ifndef PV_CTL_COMMANDS_H
#define PV_CTL_COMMANDS_H

#include "ctl/server.h"

/* Ends with a {NULL} row; ctx is the struct pv_daemon. */
extern const struct pv_ctl_command pv_ctl_commands[];

#endif
