/* pgvigilctl's rendering of readiness: the `report` command and the RPO/RTO line of `status`. */
#ifndef PV_CLI_REPORT_H
#define PV_CLI_REPORT_H

#include <stdbool.h>

#include <jansson.h>

/* Print the daemon's report answer as Markdown, or as JSON with `json`; returns the exit status. */
int pv_cli_report(json_t *data, bool json);

/* One line for a database of `status`: "  rpo 3h12m (objective 4h, met)  rto 41s (objective 1h, met)". */
void pv_cli_print_rpo_rto(const json_t *db);

#endif
