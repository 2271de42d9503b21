/* pgvigilctl's rendering of readiness: the `report` command and the RPO/RTO line of `status`. */
#include "cli/report.h"

#include <stdio.h>
#include <stdlib.h>

#include "ctl/report.h"

int
pv_cli_report(json_t *data, bool json)
{
	char *md;

	if (json) {
		json_dumpf(data, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
		fputc('\n', stdout);
		return 0;
	}
	md = pv_report_markdown(data);
	fputs(md, stdout);
	free(md);
	return 0;
}

/* "(objective 4h, met)", "(objective 4h, BREACHED)", "(no objective)"; `unmeasured` replaces BREACHED when
 * nothing was measured. */
static void
objective(const json_t *o, const char *unmeasured, char *buf, size_t size)
{
	const json_t *obj = json_object_get(o, "objective"), *met = json_object_get(o, "met");
	char d[32];

	if (!json_is_integer(obj)) {
		snprintf(buf, size, "(no objective)");
		return;
	}
	snprintf(buf, size, "(objective %s, %s)",
	         pv_report_duration((double)json_integer_value(obj), d, sizeof(d)),
	         json_is_true(met)                             ? "met"
	         : json_is_null(json_object_get(o, "seconds")) ? unmeasured
	                                                       : "BREACHED");
}

void
pv_cli_print_rpo_rto(const json_t *db)
{
	const json_t *rpo = json_object_get(db, "rpo"), *rto = json_object_get(db, "rto");
	char v1[32] = "none", v2[32] = "never measured", o1[64], o2[64];

	if (!json_is_object(rpo) && !json_is_object(rto))
		return;
	if (json_is_integer(json_object_get(rpo, "seconds")))
		pv_report_duration((double)json_integer_value(json_object_get(rpo, "seconds")), v1,
		                   sizeof(v1));
	if (json_is_number(json_object_get(rto, "seconds")))
		pv_report_duration(json_number_value(json_object_get(rto, "seconds")), v2, sizeof(v2));
	/* No verified backup at all is the worst breach of an RPO; an RTO never measured is unknown. */
	objective(rpo, "BREACHED", o1, sizeof(o1));
	objective(rto, "unknown", o2, sizeof(o2));
	printf("  rpo %s %s  rto %s %s\n", v1, o1, v2, o2);
}
