/* Unit tests for retention planning (src/jobs/retention.c): which backups of a job may go. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/retention.h"

/* One letter per backup, newest first: 'v' verified ok, 'f' failed verification, 'n' never
 * verified, 'u' verified and in use, 'm' verified but status missing. */
static void
plan(const char *spec, int keep, char *out)
{
	size_t n = strlen(spec);
	struct pv_state_backup *list = calloc(n, sizeof(*list));
	enum pv_retention_verdict *v = calloc(n, sizeof(*v));

	for (size_t i = 0; i < n; i++) {
		list[i].status = spec[i] == 'm' ? "missing" : "ok";
		list[i].verify_result = spec[i] == 'f' ? "failed" : spec[i] == 'n' ? NULL : "ok";
		list[i].in_use = spec[i] == 'u';
		list[i].finished = (time_t)(1000 - i);
	}
	pv_retention_plan(list, n, keep, v);
	for (size_t i = 0; i < n; i++) {
		switch (v[i]) {
		case PV_RETAIN_KEEP: out[i] = 'K'; break;
		case PV_RETAIN_NEWER: out[i] = 'N'; break;
		case PV_RETAIN_NEWEST_VERIFIED: out[i] = 'V'; break;
		case PV_RETAIN_IN_USE: out[i] = 'U'; break;
		case PV_RETAIN_KEY_MISSING: out[i] = 'M'; break;
		case PV_RETAIN_DELETE: out[i] = 'D'; break;
		}
	}
	out[n] = '\0';
	free(list);
	free(v);
}

static const struct {
	const char *spec;
	int keep;
	const char *want;
} cases[] = {
        {"", 2, ""},
        {"v", 1, "K"},
        {"vv", 1, "KD"},
        {"vvvvv", 2, "KKDDD"},
        /* the newest failed verification: it is not counted, the two newest verified stay */
        {"fvvvv", 2, "NKKDD"},
        /* nothing verified yet: nothing may go */
        {"nnnn", 1, "NNNN"},
        {"ffff", 2, "NNNN"},
        /* a fresh, not yet verified backup rides along */
        {"nvvv", 2, "NKKD"},
        /* failed ones older than the window go */
        {"vvfvf", 2, "KKDDD"},
        /* in use is never deleted */
        {"vvuv", 2, "KKUD"},
        {"vvvu", 1, "KDDU"},
        /* a missing backup does not count as verified */
        {"mvv", 1, "NKD"},
        {"vmvm", 2, "KNKD"},
        {"vvvvvvvvvv", 7, "KKKKKKKDDD"},
};

START_TEST(test_retention__plan_table)
{
	char got[64];

	plan(cases[_i].spec, cases[_i].keep, got);
	ck_assert_msg(strcmp(got, cases[_i].want) == 0, "spec %s keep %d: got %s, want %s", cases[_i].spec,
	              cases[_i].keep, got, cases[_i].want);
}
END_TEST

START_TEST(test_retention__verdict_names)
{
	ck_assert_str_eq(pv_retention_verdict_name(PV_RETAIN_DELETE), "delete");
	ck_assert_str_eq(pv_retention_verdict_name(PV_RETAIN_KEY_MISSING), "keep-key-missing");
	ck_assert_str_eq(pv_retention_verdict_name(PV_RETAIN_NEWEST_VERIFIED), "keep-newest-verified");
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("retention");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_loop_test(tc, test_retention__plan_table, 0, (int)(sizeof(cases) / sizeof(cases[0])));
	tcase_add_test(tc, test_retention__verdict_names);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
