/* Private to src/config: the loader context and typed, position-aware YAML node accessors. */
#ifndef PV_CONFIG_INTERNAL_H
#define PV_CONFIG_INTERNAL_H

#include <stdarg.h>
#include <yaml.h>

#include "config/config.h"

/* Key paths are short ("jobs.daily-backup.keep"); user-supplied names are truncated to fit. */
#define PATH_MAX_LEN 512

/* A diagnostic waiting to be sorted into file order (sections are checked in dependency order). */
struct ld_msg {
	size_t line, col, seq;
	enum pv_errcode code;
	char *text;
};

struct ld_msgs {
	struct ld_msg *v;
	size_t n;
};

struct loader {
	const char *file; /* FILE in messages */
	yaml_document_t *doc;
	struct pv_config *cfg;
	struct ld_msgs errors;
	struct ld_msgs warnings;
	int inline_secrets; /* secrets given inline, for the file-permission warning */
};

/* One key of a mapping as the schema sees it. */
struct keydef {
	const char *name;
	unsigned types; /* job types (bit per enum pv_job_type) or notifier types it is valid for; 0 = all */
};

void ld_error(struct loader *ld, enum pv_errcode code, const yaml_node_t *at, const char *path,
              const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void ld_warning(struct loader *ld, const yaml_node_t *at, const char *path, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
/* Sort the collected messages into file order and move them to diag; returns the first error's code. */
enum pv_errcode ld_finish(struct loader *ld, struct pv_config_diag *diag, struct pv_error *err);
void ld_path(char *buf, const char *base, const char *key);
const char *ld_quote(const char *s, char *buf, size_t size);

yaml_node_t *ld_node(struct loader *ld, int id);
bool ld_is_null(const yaml_node_t *node);
const char *ld_scalar(const yaml_node_t *node);

/*
 * Check that `node` is a mapping (null counts as an empty one) whose keys are unique scalars
 * drawn from `keys` (valid for `kind_bit`, when nonzero; `kind_name` names it in messages).
 * Reports every offending key; returns false only when node is not a mapping at all.
 */
bool ld_check_map(struct loader *ld, const yaml_node_t *node, const yaml_node_t *owner, const char *path,
                  const struct keydef *keys, size_t n_keys, unsigned kind_bit, const char *kind_name,
                  const char *const *kind_names);
/* The value of the first occurrence of `key`, or NULL; *key_node gets the key (may be NULL). */
yaml_node_t *ld_get(struct loader *ld, const yaml_node_t *map, const char *key, yaml_node_t **key_node);
/* Iterate a mapping's entries, skipping duplicates and non-scalar keys (already reported). */
size_t ld_map_len(const yaml_node_t *map);
bool ld_map_entry(struct loader *ld, const yaml_node_t *map, size_t i, yaml_node_t **key,
                  yaml_node_t **value);

/* Typed getters: true when the key is present and valid (errors reported otherwise). */
bool ld_str(struct loader *ld, const yaml_node_t *map, const char *path, const char *key, char **out);
bool ld_int(struct loader *ld, const yaml_node_t *map, const char *path, const char *key, long long min,
            long long max, int *out);
bool ld_bool(struct loader *ld, const yaml_node_t *map, const char *path, const char *key, bool *out);
bool ld_duration(struct loader *ld, const yaml_node_t *map, const char *path, const char *key, int64_t min,
                 int64_t *out);
bool ld_percent(struct loader *ld, const yaml_node_t *map, const char *path, const char *key, double min,
                double max, double *out);
bool ld_double(struct loader *ld, const yaml_node_t *map, const char *path, const char *key, double min_excl,
               double max, double *out);
bool ld_enum(struct loader *ld, const yaml_node_t *map, const char *path, const char *key,
             const char *const *names, size_t n, int *out);
bool ld_strv(struct loader *ld, const yaml_node_t *map, const char *path, const char *key,
             struct pv_strv *out);
/* A secret KEY given as `KEY: value`, `KEY: env:NAME` or `KEY_file: /path`. */
bool ld_secret(struct loader *ld, const yaml_node_t *map, const char *path, const char *key,
               struct pv_secret *out);
/* A file holding key material: must exist, be a regular readable file, not group/world-accessible. */
bool ld_private_file(struct loader *ld, const yaml_node_t *at, const char *path, const char *file,
                     size_t *size);

void ld_strv_free(struct pv_strv *sv);
void ld_strv_push(struct pv_strv *sv, const char *s);
void ld_secret_free(struct pv_secret *s);

#endif
