/*
 * Fuzz target: manifest.json validation (pv_store_manifest_validate), the input being the file.
 *
 * The input is decoded as pv_store_manifest_read does, then validated against no directory name,
 * the directory its id names, and that directory's temporary name.
 *
 * Checked beyond memory safety: a valid manifest's id parses as a backup id whose time
 * pv_store_backup_id writes the same way, it stays valid in its own directory and written out as
 * pv_store_manifest_write writes it and read back; an invalid one gets a state error with a message.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/storage.h"
#include "fuzz.h"

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const char *const env[] = {NULL};

	(void)argc;
	(void)argv;
	pv_fuzz_environment(env);
	(void)pv_fuzz_scratch();
	return 0;
}

static void
check_valid(const json_t *m)
{
	const char *id = json_string_value(json_object_get(m, "id"));
	char temp[512];
	struct pv_error err;
	time_t started;
	char *tier = NULL, *text;
	json_t *back;
	json_error_t jerr;

	PV_FUZZ_CHECK(id != NULL && pv_store_backup_id_parse(id, &started, &tier) && tier != NULL &&
	                      tier[0] != '\0',
	              "valid manifest with an unparsable id");
	free(tier);
	/* The id's time is the one pv_store_backup_id writes for the instant it stands for. */
	text = pv_store_backup_id(started, "x");
	PV_FUZZ_CHECK(strncmp(text, id, 16) == 0, "id %s stands for %s", id, text);
	free(text);
	PV_FUZZ_CHECK(pv_store_manifest_validate(m, id, &err), "invalid in its own directory: %s", err.msg);
	snprintf(temp, sizeof(temp), "%s%s", PV_STORE_TEMP_PREFIX, id);
	if (strlen(id) < sizeof(temp) - strlen(PV_STORE_TEMP_PREFIX))
		PV_FUZZ_CHECK(pv_store_manifest_validate(m, temp, &err),
		              "invalid in its temporary directory: %s", err.msg);
	text = json_dumps(m, JSON_INDENT(2) | JSON_SORT_KEYS);
	PV_FUZZ_CHECK(text != NULL, "a valid manifest cannot be written");
	back = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
	PV_FUZZ_CHECK(back != NULL, "a written manifest does not parse: %s", jerr.text);
	PV_FUZZ_CHECK(json_equal(back, m) && pv_store_manifest_validate(back, id, &err),
	              "a written manifest reads back differently");
	json_decref(back);
	free(text);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_error_t jerr;
	json_t *m = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
	struct pv_error err = {0};
	const char *id;

	if (m == NULL)
		return 0;
	if (pv_store_manifest_validate(m, NULL, &err)) {
		check_valid(m);
	} else {
		PV_FUZZ_CHECK(err.code == PV_ERR_STATE && err.msg[0] != '\0',
		              "invalid without a state error");
		/* Whatever the rest, a directory name that is not the id is refused or ignored, never
		 * crashes. */
		id = json_string_value(json_object_get(m, "id"));
		if (id != NULL)
			(void)pv_store_manifest_validate(m, id, &err);
	}
	PV_FUZZ_CHECK(!pv_store_manifest_validate(m, "20000101T000000Z-other-directory", &err) ||
	                      strcmp(json_string_value(json_object_get(m, "id")),
	                             "20000101T000000Z-other-directory") == 0,
	              "valid in a directory its id does not name");
	json_decref(m);
	return 0;
}
