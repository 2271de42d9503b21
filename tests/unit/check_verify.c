/* Unit tests for src/jobs/verify.c: the verify job against the catalog as retention changes it. */
#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <jansson.h>

#include "config/config.h"
#include "jobs/job.h"
#include "state/state.h"
#include "util/error.h"

#include "testlib.h"

/* The directory for this binary's state databases, removed even when a forked test fails (testlib.h). */
static void
base_setup(void)
{
	pv_test_tmpdir_setup("check_verify");
}

static void
add_backup(struct pv_state *st, const char *id, time_t finished)
{
	struct pv_state_backup b = {0};
	struct pv_error err = {0};

	b.database = "prod";
	b.job = "daily";
	b.id = (char *)id;
	b.tier = "daily";
	b.dir = "/nonexistent/backups/prod/daily/x"; /* its verification fails: no manifest */
	b.sha256 = "00";
	b.format = "zst";
	b.started = finished - 60;
	b.finished = finished;
	b.duration = 60;
	b.size = 1000;
	b.archive_size = 2000;
	if (!pv_state_backup_add(st, &b, &err))
		ck_abort_msg("backup %s: %s", id, err.msg);
}

static void
job_done(struct pv_job_run *run)
{
	event_base_loopbreak(run->base);
}

/* The job lists the backups to verify when it starts; one that retention prunes before the job reaches
 * it is skipped, not reported as a failed verification (nor released more often than used). */
START_TEST(test_verify__backup_pruned_meanwhile_is_skipped)
{
	static const char yaml[] =
	        "storage:\n"
	        "  path: /nonexistent/backups\n"
	        "databases:\n"
	        "  prod: { conninfo: \"host=localhost dbname=prod\" }\n"
	        "jobs:\n"
	        "  daily: { type: backup, database: prod, schedule: \"0 2 * * *\", keep: 1 }\n"
	        "  verify: { type: verify, every: 1h }\n";
	struct pv_error err = {0};
	struct pv_config *cfg = pv_config_load_string("t.yaml", yaml, NULL, &err);
	struct event_base *base = event_base_new();
	struct pv_state_backup *list = NULL;
	struct pv_job_run run = {0};
	struct pv_state *st;
	char path[PATH_MAX + 16], expect[256];
	const char *first = NULL, *second = NULL;
	size_t n = 0;

	ck_assert_msg(cfg != NULL, "config: %s", err.msg);
	snprintf(path, sizeof(path), "%s/state.db", pv_test_tmpdir());
	ck_assert_msg(pv_state_open(path, &st, &err), "%s", err.msg);
	add_backup(st, "20270101T020000Z-daily", 1798768800);
	add_backup(st, "20270102T020000Z-daily", 1798855200);

	run.cfg = cfg;
	run.job = pv_config_job_find(cfg, "verify");
	run.base = base;
	run.state = st;
	run.started = time(NULL);
	run.started_mono = pv_now_mono();
	run.deadline_mono = run.started_mono + 60;
	run.trigger = "manual";
	run.figures = json_object();
	run.on_done = job_done;
	ck_assert_ptr_nonnull(run.job);
	ck_assert_msg(pv_jobs_ops(PV_JOB_VERIFY)->start(&run), "start: %s", run.cause);

	/* The first is being verified (in use); retention prunes the other before the job gets to it. */
	ck_assert(pv_state_backups_list(st, "prod", "daily", &list, &n, &err));
	ck_assert_uint_eq(n, 2);
	for (size_t i = 0; i < n; i++)
		if (list[i].in_use > 0)
			first = list[i].id;
		else
			second = list[i].id;
	ck_assert_ptr_nonnull(first);
	ck_assert_ptr_nonnull(second);
	ck_assert_msg(pv_state_backup_delete(st, "prod", "daily", second, &err), "%s", err.msg);

	event_base_dispatch(base);
	ck_assert_int_eq(run.result, PV_RUN_FAILED); /* the first has no manifest */
	snprintf(expect, sizeof(expect), "1 of 1 backups failed verification; first: prod/daily/%s:", first);
	ck_assert_msg(strncmp(run.cause, expect, strlen(expect)) == 0, "cause: %s", run.cause);
	ck_assert_int_eq(json_integer_value(json_object_get(run.figures, "failed")), 1);
	ck_assert_int_eq(json_integer_value(json_object_get(run.figures, "pruned")), 1);
	ck_assert_int_eq(json_integer_value(json_object_get(run.figures, "not_reached")), 0);

	pv_state_backups_free(list, n);
	json_decref(run.figures);
	pv_state_close(st);
	pv_config_unref(cfg);
	event_base_free(base);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("verify");
	TCase *tc = tcase_create("job");
	SRunner *sr;
	int failed;

	tcase_add_unchecked_fixture(tc, base_setup, pv_test_tmpdir_teardown);
	tcase_add_test(tc, test_verify__backup_pruned_meanwhile_is_skipped);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
