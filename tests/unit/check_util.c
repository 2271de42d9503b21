/* Unit tests for src/util: errors, allocation helpers, log quoting. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"
#include "util/log.h"
#include "util/mem.h"

START_TEST(test_util__error_set_returns_false)
{
	struct pv_error err;
	ck_assert(!pv_error_set(&err, PV_ERR_IO, "reading %s: %s", "x", "gone"));
	ck_assert_int_eq(err.code, PV_ERR_IO);
	ck_assert_str_eq(err.msg, "reading x: gone");
	pv_error_prefix(&err, "loading %d: ", 3);
	ck_assert_str_eq(err.msg, "loading 3: reading x: gone");
	ck_assert_str_eq(pv_error_code_name(PV_ERR_CONFIG_UNKNOWN_KEY), "config_unknown_key");
	ck_assert(!pv_error_set(NULL, PV_ERR_IO, "ignored"));
}
END_TEST

START_TEST(test_util__strlcpy_truncates)
{
	char buf[4];
	ck_assert(pv_strlcpy(buf, "abc", sizeof(buf)));
	ck_assert(!pv_strlcpy(buf, "abcdef", sizeof(buf)));
	ck_assert_str_eq(buf, "abc");
}
END_TEST

START_TEST(test_util__asprintf)
{
	char *s = pv_asprintf("%s-%d", "a", 7);
	ck_assert_str_eq(s, "a-7");
	free(s);
}
END_TEST

START_TEST(test_util__log_quote)
{
	ck_assert_str_eq(pv_log_quote("plain"), "plain");
	ck_assert_str_eq(pv_log_quote("two words"), "\"two words\"");
	ck_assert_str_eq(pv_log_quote("a\"b"), "\"a\\\"b\"");
	ck_assert_str_eq(pv_log_quote(""), "\"\"");
}
END_TEST

START_TEST(test_util__log_level_parse)
{
	enum pv_log_level l;
	ck_assert(pv_log_level_parse("debug", &l));
	ck_assert_int_eq(l, PV_LOG_DEBUG);
	ck_assert(pv_log_level_parse("WARNING", &l));
	ck_assert_int_eq(l, PV_LOG_WARNING);
	ck_assert(!pv_log_level_parse("loud", &l));
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("util");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, test_util__error_set_returns_false);
	tcase_add_test(tc, test_util__strlcpy_truncates);
	tcase_add_test(tc, test_util__asprintf);
	tcase_add_test(tc, test_util__log_quote);
	tcase_add_test(tc, test_util__log_level_parse);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
