/* Config loader internals: diagnostics with positions, strict mapping checks, typed values, secrets. */
#include "config/internal.h"
#include "crypto/crypto.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/mem.h"

/* Secrets and key files are small; a larger file is almost certainly the wrong file. */
#define SECRET_FILE_MAX (64 * 1024)
/* Far beyond any schedule or timeout, and small enough for the int seconds the planner takes (jitter,
 * grace) and for time arithmetic: 520w, about ten years. */
#define DURATION_MAX (520LL * 7 * 86400)

static char *
vformat(const struct loader *ld, const yaml_node_t *at, const char *path, const char *fmt, va_list ap)
{
	char msg[PV_ERROR_MSG_MAX];
	char *line;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (at != NULL && path != NULL && path[0] != '\0')
		line = pv_asprintf("%s:%zu:%zu: %s: %s", ld->file, at->start_mark.line + 1,
		                   at->start_mark.column + 1, path, msg);
	else if (at != NULL)
		line = pv_asprintf("%s:%zu:%zu: %s", ld->file, at->start_mark.line + 1,
		                   at->start_mark.column + 1, msg);
	else if (path != NULL && path[0] != '\0')
		line = pv_asprintf("%s: %s: %s", ld->file, path, msg);
	else
		line = pv_asprintf("%s: %s", ld->file, msg);
	return line;
}

static void
add_msg(struct ld_msgs *m, enum pv_errcode code, const yaml_node_t *at, char *text)
{
	struct ld_msg *msg;

	m->v = pv_realloc(m->v, (m->n + 1) * sizeof(*m->v));
	msg = &m->v[m->n];
	msg->line = at != NULL ? at->start_mark.line + 1 : 0;
	msg->col = at != NULL ? at->start_mark.column + 1 : 0;
	msg->seq = m->n++;
	msg->code = code;
	msg->text = text;
}

void
ld_error(struct loader *ld, enum pv_errcode code, const yaml_node_t *at, const char *path, const char *fmt,
         ...)
{
	va_list ap;

	va_start(ap, fmt);
	add_msg(&ld->errors, code, at, vformat(ld, at, path, fmt, ap));
	va_end(ap);
}

void
ld_warning(struct loader *ld, const yaml_node_t *at, const char *path, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	add_msg(&ld->warnings, PV_OK, at, vformat(ld, at, path, fmt, ap));
	va_end(ap);
}

static int
msg_cmp(const void *a, const void *b)
{
	const struct ld_msg *x = a, *y = b;

	if (x->line != y->line)
		return x->line < y->line ? -1 : 1;
	if (x->col != y->col)
		return x->col < y->col ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void
move_sorted(struct ld_msgs *m, struct pv_strv *out)
{
	if (m->n > 1)
		qsort(m->v, m->n, sizeof(*m->v), msg_cmp);
	for (size_t i = 0; i < m->n; i++) {
		if (out != NULL)
			ld_strv_push(out, m->v[i].text);
		free(m->v[i].text);
	}
	free(m->v);
	m->v = NULL;
	m->n = 0;
}

enum pv_errcode
ld_finish(struct loader *ld, struct pv_config_diag *diag, struct pv_error *err)
{
	enum pv_errcode code = PV_OK;

	if (ld->errors.n > 1)
		qsort(ld->errors.v, ld->errors.n, sizeof(*ld->errors.v), msg_cmp);
	if (ld->errors.n > 0) {
		code = ld->errors.v[0].code;
		if (err != NULL) {
			err->code = code;
			pv_strlcpy(err->msg, ld->errors.v[0].text, sizeof(err->msg));
		}
	} else {
		pv_error_clear(err);
	}
	move_sorted(&ld->errors, diag != NULL ? &diag->errors : NULL);
	move_sorted(&ld->warnings, diag != NULL ? &diag->warnings : NULL);
	return code;
}

void
ld_path(char *buf, const char *base, const char *key)
{
	if (base == NULL || base[0] == '\0')
		snprintf(buf, PATH_MAX_LEN, "%s", key);
	else if (key[0] == '[')
		snprintf(buf, PATH_MAX_LEN, "%s%s", base, key);
	else
		snprintf(buf, PATH_MAX_LEN, "%s.%s", base, key);
}

/* Quote a user-supplied value for a message; long values are cut so one bad line stays readable. */
const char *
ld_quote(const char *s, char *buf, size_t size)
{
	size_t o = 0;
	const size_t limit = 60;
	size_t i;

	buf[o++] = '"';
	for (i = 0; s[i] != '\0' && o + 8 < size; i++) {
		unsigned char c = (unsigned char)s[i];
		if (i == limit) {
			o += (size_t)snprintf(buf + o, size - o, "...");
			break;
		}
		if (c == '"' || c == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			o += (size_t)snprintf(buf + o, size - o, "\\x%02x", c);
		} else {
			buf[o++] = (char)c;
		}
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

yaml_node_t *
ld_node(struct loader *ld, int id)
{
	return yaml_document_get_node(ld->doc, id);
}

bool
ld_is_null(const yaml_node_t *node)
{
	const char *s;

	if (node == NULL || node->type != YAML_SCALAR_NODE ||
	    node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return false;
	s = (const char *)node->data.scalar.value;
	return s[0] == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
	       strcmp(s, "NULL") == 0;
}

const char *
ld_scalar(const yaml_node_t *node)
{
	if (node == NULL || node->type != YAML_SCALAR_NODE)
		return NULL;
	return (const char *)node->data.scalar.value;
}

static const char *
describe(const yaml_node_t *node)
{
	if (node->type == YAML_MAPPING_NODE)
		return "a mapping";
	if (node->type == YAML_SEQUENCE_NODE)
		return "a list";
	if (ld_is_null(node))
		return "nothing (null)";
	return "a scalar";
}

static size_t
edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	size_t row[64];

	if (la >= 63 || lb >= 63)
		return 99;
	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t diag = row[0];
		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t up = row[j];
			size_t best = diag + (a[i - 1] == b[j - 1] ? 0 : 1);
			if (row[j] + 1 < best)
				best = row[j] + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			row[j] = best;
			diag = up;
		}
	}
	return row[lb];
}

static bool
key_valid_for(const struct keydef *k, unsigned kind_bit)
{
	return kind_bit == 0 || k->types == 0 || (k->types & kind_bit) != 0;
}

static void
unknown_key(struct loader *ld, const yaml_node_t *key, const char *path, const struct keydef *keys,
            size_t n_keys, unsigned kind_bit, const char *kind_name, const char *const *kind_names)
{
	const char *name = ld_scalar(key);
	char q[256];
	char allowed[PV_ERROR_MSG_MAX / 2];
	size_t o = 0;
	const char *best = NULL;
	size_t best_d = 3;
	char sub[PATH_MAX_LEN];

	ld_path(sub, path, name);
	path = sub;
	for (size_t i = 0; i < n_keys; i++) {
		if (strcmp(keys[i].name, name) == 0) {
			/* Known, but not for this kind: say which kinds it belongs to. */
			char kinds[256];
			size_t ko = 0;
			kinds[0] = '\0';
			for (unsigned b = 0; b < 32 && kind_names != NULL && kind_names[b] != NULL; b++) {
				if (keys[i].types & (1u << b))
					ko += (size_t)snprintf(kinds + ko, sizeof(kinds) - ko, "%s%s",
					                       ko ? ", " : "", kind_names[b]);
				if (ko >= sizeof(kinds))
					break;
			}
			ld_error(ld, PV_ERR_CONFIG_UNKNOWN_KEY, key, path,
			         "key %s is not valid for %s (only for: %s)", ld_quote(name, q, sizeof(q)),
			         kind_name, kinds);
			return;
		}
	}
	allowed[0] = '\0';
	for (size_t i = 0; i < n_keys; i++) {
		size_t d;
		if (!key_valid_for(&keys[i], kind_bit))
			continue;
		d = edit_distance(name, keys[i].name);
		if (d < best_d && d < strlen(keys[i].name)) {
			best_d = d;
			best = keys[i].name;
		}
		if (o < sizeof(allowed))
			o += (size_t)snprintf(allowed + o, sizeof(allowed) - o, "%s%s", o ? ", " : "",
			                      keys[i].name);
	}
	if (best != NULL)
		ld_error(ld, PV_ERR_CONFIG_UNKNOWN_KEY, key, path, "unknown key %s; did you mean \"%s\"?",
		         ld_quote(name, q, sizeof(q)), best);
	else
		ld_error(ld, PV_ERR_CONFIG_UNKNOWN_KEY, key, path, "unknown key %s; allowed keys: %s",
		         ld_quote(name, q, sizeof(q)), allowed);
}

/* True when pair i repeats the key of an earlier pair; *first gets that earlier key. */
static bool
is_duplicate(struct loader *ld, const yaml_node_t *map, size_t i, yaml_node_t **first)
{
	yaml_node_pair_t *pairs = map->data.mapping.pairs.start;
	const char *name = ld_scalar(ld_node(ld, pairs[i].key));

	if (name == NULL)
		return false;
	for (size_t j = 0; j < i; j++) {
		yaml_node_t *k = ld_node(ld, pairs[j].key);
		const char *other = ld_scalar(k);
		if (other != NULL && strcmp(other, name) == 0) {
			*first = k;
			return true;
		}
	}
	return false;
}

bool
ld_check_map(struct loader *ld, const yaml_node_t *node, const yaml_node_t *owner, const char *path,
             const struct keydef *keys, size_t n_keys, unsigned kind_bit, const char *kind_name,
             const char *const *kind_names)
{
	char sub[PATH_MAX_LEN];

	if (node == NULL || ld_is_null(node))
		return true;
	if (node->type != YAML_MAPPING_NODE) {
		ld_error(ld, PV_ERR_CONFIG_TYPE, owner != NULL ? owner : node, path,
		         "expected a mapping, got %s", describe(node));
		return false;
	}
	for (size_t i = 0; i < ld_map_len(node); i++) {
		yaml_node_t *key = ld_node(ld, node->data.mapping.pairs.start[i].key);
		yaml_node_t *first;
		const char *name = ld_scalar(key);

		if (name == NULL) {
			ld_error(ld, PV_ERR_CONFIG_TYPE, key, path, "expected a key name, got %s",
			         describe(key));
			continue;
		}
		ld_path(sub, path, name);
		if (is_duplicate(ld, node, i, &first)) {
			ld_error(ld, PV_ERR_CONFIG_DUPLICATE, key, sub,
			         "duplicate key (first defined at line %zu, column %zu)",
			         first->start_mark.line + 1, first->start_mark.column + 1);
			continue;
		}
		if (keys == NULL)
			continue;
		{
			bool ok = false;
			for (size_t k = 0; k < n_keys && !ok; k++)
				ok = strcmp(keys[k].name, name) == 0 && key_valid_for(&keys[k], kind_bit);
			if (!ok)
				unknown_key(ld, key, path, keys, n_keys, kind_bit, kind_name, kind_names);
		}
	}
	return true;
}

size_t
ld_map_len(const yaml_node_t *map)
{
	if (map == NULL || map->type != YAML_MAPPING_NODE)
		return 0;
	return (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
}

bool
ld_map_entry(struct loader *ld, const yaml_node_t *map, size_t i, yaml_node_t **key, yaml_node_t **value)
{
	yaml_node_pair_t *pair = &map->data.mapping.pairs.start[i];
	yaml_node_t *first;

	*key = ld_node(ld, pair->key);
	*value = ld_node(ld, pair->value);
	if (ld_scalar(*key) == NULL || is_duplicate(ld, map, i, &first))
		return false;
	return true;
}

yaml_node_t *
ld_get(struct loader *ld, const yaml_node_t *map, const char *key, yaml_node_t **key_node)
{
	if (key_node != NULL)
		*key_node = NULL;
	if (map == NULL || map->type != YAML_MAPPING_NODE)
		return NULL;
	for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		yaml_node_t *k = ld_node(ld, p->key);
		const char *name = ld_scalar(k);
		if (name != NULL && strcmp(name, key) == 0) {
			if (key_node != NULL)
				*key_node = k;
			return ld_node(ld, p->value);
		}
	}
	return NULL;
}

/* The scalar text of map[key], or NULL (absent, or a type error already reported). */
static const char *
scalar_of(struct loader *ld, const yaml_node_t *map, const char *path, const char *key, const char *what,
          yaml_node_t **key_node, char *sub)
{
	yaml_node_t *v = ld_get(ld, map, key, key_node);

	ld_path(sub, path, key);
	if (v == NULL)
		return NULL;
	if (v->type != YAML_SCALAR_NODE || ld_is_null(v)) {
		ld_error(ld, PV_ERR_CONFIG_TYPE, *key_node, sub, "expected %s, got %s", what, describe(v));
		return NULL;
	}
	return (const char *)v->data.scalar.value;
}

bool
ld_str(struct loader *ld, const yaml_node_t *map, const char *path, const char *key, char **out)
{
	char sub[PATH_MAX_LEN];
	yaml_node_t *k;
	const char *s = scalar_of(ld, map, path, key, "a string", &k, sub);

	if (s == NULL)
		return false;
	free(*out);
	*out = pv_strdup(s);
	return true;
}

static bool
parse_ll(const char *s, long long *out)
{
	char *end;

	errno = 0;
	if (!isdigit((unsigned char)s[0]) && !(s[0] == '-' && isdigit((unsigned char)s[1])))
		return false;
	*out = strtoll(s, &end, 10);
	return errno == 0 && *end == '\0';
}

bool
ld_int(struct loader *ld, const yaml_node_t *map, const char *path, const char *key, long long min,
       long long max, int *out)
{
	char sub[PATH_MAX_LEN], q[256];
	yaml_node_t *k;
	const char *s = scalar_of(ld, map, path, key, "an integer", &k, sub);
	long long v;

	if (s == NULL)
		return false;
	if (!parse_ll(s, &v) || v < min || v > max) {
		if (max >= 1000000000LL)
			ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub, "expected an integer >= %lld, got %s", min,
			         ld_quote(s, q, sizeof(q)));
		else
			ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub,
			         "expected an integer between %lld and %lld, got %s", min, max,
			         ld_quote(s, q, sizeof(q)));
		return false;
	}
	*out = (int)v;
	return true;
}

bool
ld_bool(struct loader *ld, const yaml_node_t *map, const char *path, const char *key, bool *out)
{
	char sub[PATH_MAX_LEN], q[256];
	yaml_node_t *k;
	const char *s = scalar_of(ld, map, path, key, "true or false", &k, sub);

	if (s == NULL)
		return false;
	if (strcasecmp(s, "true") == 0)
		*out = true;
	else if (strcasecmp(s, "false") == 0)
		*out = false;
	else {
		ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub, "expected true or false, got %s",
		         ld_quote(s, q, sizeof(q)));
		return false;
	}
	return true;
}

bool
ld_duration(struct loader *ld, const yaml_node_t *map, const char *path, const char *key, int64_t min,
            int64_t *out)
{
	char sub[PATH_MAX_LEN], q[256], d[32];
	yaml_node_t *k;
	const char *s = scalar_of(ld, map, path, key, "a duration", &k, sub);
	int64_t v;

	if (s == NULL)
		return false;
	if (!pv_duration_parse(s, &v)) {
		ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub,
		         "expected a duration such as 30s, 5m, 4h, 7d, 2w or 1h30m, got %s",
		         ld_quote(s, q, sizeof(q)));
		return false;
	}
	if (v < min) {
		ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub, "expected a duration of at least %s, got %s",
		         pv_duration_format(min, d, sizeof(d)), ld_quote(s, q, sizeof(q)));
		return false;
	}
	if (v > DURATION_MAX) {
		ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub, "expected a duration of at most %s, got %s",
		         pv_duration_format(DURATION_MAX, d, sizeof(d)), ld_quote(s, q, sizeof(q)));
		return false;
	}
	*out = v;
	return true;
}

bool
ld_percent(struct loader *ld, const yaml_node_t *map, const char *path, const char *key, double min,
           double max, double *out)
{
	char sub[PATH_MAX_LEN], q[256];
	yaml_node_t *k;
	const char *s = scalar_of(ld, map, path, key, "a percentage", &k, sub);
	char *end;
	double v;

	if (s == NULL)
		return false;
	errno = 0;
	v = isdigit((unsigned char)s[0]) ? strtod(s, &end) : NAN;
	if (isnan(v) || errno != 0 || end[0] != '%' || end[1] != '\0') {
		ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub, "expected a percentage such as \"80%%\", got %s",
		         ld_quote(s, q, sizeof(q)));
		return false;
	}
	if (v < min || v > max) {
		ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub,
		         "expected a percentage between %g%% and %g%%, got %s", min, max,
		         ld_quote(s, q, sizeof(q)));
		return false;
	}
	*out = v / 100.0;
	return true;
}

bool
ld_double(struct loader *ld, const yaml_node_t *map, const char *path, const char *key, double min_excl,
          double max, double *out)
{
	char sub[PATH_MAX_LEN], q[256];
	yaml_node_t *k;
	const char *s = scalar_of(ld, map, path, key, "a number", &k, sub);
	char *end;
	double v;

	if (s == NULL)
		return false;
	errno = 0;
	v = isdigit((unsigned char)s[0]) ? strtod(s, &end) : NAN;
	if (isnan(v) || errno != 0 || *end != '\0' || v <= min_excl || v > max) {
		ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub,
		         "expected a number greater than %g and at most %g, got %s", min_excl, max,
		         ld_quote(s, q, sizeof(q)));
		return false;
	}
	*out = v;
	return true;
}

bool
ld_enum(struct loader *ld, const yaml_node_t *map, const char *path, const char *key,
        const char *const *names, size_t n, int *out)
{
	char sub[PATH_MAX_LEN], q[256], list[512];
	yaml_node_t *k;
	const char *s = scalar_of(ld, map, path, key, "a string", &k, sub);
	size_t o = 0;

	if (s == NULL)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(s, names[i]) == 0) {
			*out = (int)i;
			return true;
		}
	}
	list[0] = '\0';
	for (size_t i = 0; i < n && o < sizeof(list); i++)
		o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s",
		                      i == 0       ? ""
		                      : i + 1 == n ? " or "
		                                   : ", ",
		                      names[i]);
	ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub, "expected %s, got %s", list, ld_quote(s, q, sizeof(q)));
	return false;
}

bool
ld_strv(struct loader *ld, const yaml_node_t *map, const char *path, const char *key, struct pv_strv *out)
{
	char sub[PATH_MAX_LEN], item[PATH_MAX_LEN];
	yaml_node_t *k;
	yaml_node_t *v = ld_get(ld, map, key, &k);
	bool ok = true;
	size_t i = 0;

	ld_path(sub, path, key);
	if (v == NULL)
		return false;
	ld_strv_free(out);
	if (ld_is_null(v))
		return true;
	if (v->type != YAML_SEQUENCE_NODE) {
		ld_error(ld, PV_ERR_CONFIG_TYPE, k, sub, "expected a list, got %s", describe(v));
		return false;
	}
	for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
	     it++, i++) {
		yaml_node_t *n = ld_node(ld, *it);
		char idx[32];
		snprintf(idx, sizeof(idx), "[%zu]", i);
		ld_path(item, sub, idx);
		if (n->type != YAML_SCALAR_NODE || ld_is_null(n)) {
			ld_error(ld, PV_ERR_CONFIG_TYPE, n, item, "expected a string, got %s", describe(n));
			ok = false;
			continue;
		}
		if (n->data.scalar.length == 0) {
			ld_error(ld, PV_ERR_CONFIG_VALUE, n, item, "expected a non-empty string");
			ok = false;
			continue;
		}
		ld_strv_push(out, (const char *)n->data.scalar.value);
	}
	return ok;
}

/* Read a private file whole: regular, not accessible to group or others, at most SECRET_FILE_MAX. */
static bool
read_private(struct loader *ld, const yaml_node_t *at, const char *path, const char *file, const char *what,
             char **content, size_t *len)
{
	struct stat st;
	char *buf;
	size_t got = 0;
	int fd = open(file, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);

	if (fd < 0) {
		ld_error(ld, PV_ERR_CONFIG_SECRET, at, path, "cannot open %s %s: %s", what, file,
		         strerror(errno));
		return false;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		ld_error(ld, PV_ERR_CONFIG_SECRET, at, path, "%s %s is not a regular file", what, file);
		close(fd);
		return false;
	}
	if ((st.st_mode & 077) != 0) {
		ld_error(ld, PV_ERR_CONFIG_SECRET, at, path,
		         "%s %s is accessible by group or others (mode %04o); HINT: chmod 600 %s", what, file,
		         (unsigned)(st.st_mode & 07777), file);
		close(fd);
		return false;
	}
	if (st.st_size > SECRET_FILE_MAX) {
		ld_error(ld, PV_ERR_CONFIG_SECRET, at, path, "%s %s is too large (%lld bytes)", what, file,
		         (long long)st.st_size);
		close(fd);
		return false;
	}
	buf = pv_malloc((size_t)st.st_size + 1);
	for (;;) {
		ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			ld_error(ld, PV_ERR_CONFIG_SECRET, at, path, "cannot read %s %s: %s", what, file,
			         strerror(errno));
			close(fd);
			free(buf);
			return false;
		}
		if (r == 0 || (got += (size_t)r) == (size_t)st.st_size)
			break;
	}
	close(fd);
	buf[got] = '\0';
	*content = buf;
	*len = got;
	return true;
}

/* Key files are checked by the code that will read them, so --check-config and the daemon agree. */
bool
ld_private_file(struct loader *ld, const yaml_node_t *at, const char *path, const char *file, size_t *size)
{
	struct pv_error e;
	struct pv_crypto_key *key = pv_crypto_key_load(file, &e);

	if (key == NULL) {
		ld_error(ld, e.code == PV_ERR_IO ? PV_ERR_CONFIG_SECRET : e.code, at, path, "%s", e.msg);
		return false;
	}
	pv_crypto_key_free(key);
	*size = PV_CRYPTO_KEY_LEN;
	return true;
}

static bool
valid_env_name(const char *s)
{
	if (!(isalpha((unsigned char)s[0]) || s[0] == '_'))
		return false;
	for (; *s != '\0'; s++)
		if (!(isalnum((unsigned char)*s) || *s == '_'))
			return false;
	return true;
}

bool
ld_secret(struct loader *ld, const yaml_node_t *map, const char *path, const char *key, struct pv_secret *out)
{
	char sub[PATH_MAX_LEN], fsub[PATH_MAX_LEN], fkey[128], q[256];
	yaml_node_t *k, *fk;
	yaml_node_t *v, *f;

	snprintf(fkey, sizeof(fkey), "%s_file", key);
	ld_path(sub, path, key);
	ld_path(fsub, path, fkey);
	v = ld_get(ld, map, key, &k);
	f = ld_get(ld, map, fkey, &fk);
	if (v != NULL && f != NULL) {
		ld_error(ld, PV_ERR_CONFIG_SECRET, fk, fsub, "give either %s or %s, not both", key, fkey);
		return false;
	}
	if (v != NULL) {
		/* Never echo the value: it is a secret even when it is malformed. */
		const char *s;
		if (v->type != YAML_SCALAR_NODE || ld_is_null(v)) {
			ld_error(ld, PV_ERR_CONFIG_TYPE, k, sub, "expected a string, got %s", describe(v));
			return false;
		}
		s = (const char *)v->data.scalar.value;
		if (strncmp(s, "env:", 4) == 0) {
			const char *name = s + 4;
			const char *val;
			if (!valid_env_name(name)) {
				ld_error(ld, PV_ERR_CONFIG_VALUE, k, sub,
				         "invalid environment variable name %s",
				         ld_quote(name, q, sizeof(q)));
				return false;
			}
			val = getenv(name);
			if (val == NULL || val[0] == '\0') {
				ld_error(ld, PV_ERR_CONFIG_SECRET, k, sub, "environment variable %s is %s",
				         name, val == NULL ? "not set" : "empty");
				return false;
			}
			out->value = pv_strdup(val);
			out->source = pv_asprintf("env:%s", name);
			return true;
		}
		if (s[0] == '\0') {
			ld_error(ld, PV_ERR_CONFIG_SECRET, k, sub, "empty secret");
			return false;
		}
		out->value = pv_strdup(s);
		out->source = pv_strdup("inline");
		ld->inline_secrets++;
		return true;
	}
	if (f != NULL) {
		char *content;
		size_t len;
		const char *file;
		if (f->type != YAML_SCALAR_NODE || ld_is_null(f) || f->data.scalar.length == 0) {
			ld_error(ld, PV_ERR_CONFIG_TYPE, fk, fsub, "expected a file name, got %s",
			         describe(f));
			return false;
		}
		file = (const char *)f->data.scalar.value;
		if (!read_private(ld, fk, fsub, file, "secret file", &content, &len))
			return false;
		if (len > 0 && content[len - 1] == '\n')
			content[--len] = '\0';
		if (len > 0 && content[len - 1] == '\r')
			content[--len] = '\0';
		if (len == 0 || strlen(content) != len) {
			ld_error(ld, PV_ERR_CONFIG_SECRET, fk, fsub, "secret file %s is %s", file,
			         len == 0 ? "empty" : "binary (contains a NUL byte)");
			explicit_bzero(content, len);
			free(content);
			return false;
		}
		out->value = content;
		out->source = pv_asprintf("file:%s", file);
		return true;
	}
	return false;
}

void
ld_strv_free(struct pv_strv *sv)
{
	for (size_t i = 0; i < sv->n; i++)
		free(sv->v[i]);
	free(sv->v);
	sv->v = NULL;
	sv->n = 0;
}

void
ld_strv_push(struct pv_strv *sv, const char *s)
{
	sv->v = pv_realloc(sv->v, (sv->n + 2) * sizeof(*sv->v));
	sv->v[sv->n++] = pv_strdup(s);
	sv->v[sv->n] = NULL;
}

void
ld_secret_free(struct pv_secret *s)
{
	if (s->value != NULL) {
		explicit_bzero(s->value, strlen(s->value));
		free(s->value);
	}
	free(s->source);
	s->value = NULL;
	s->source = NULL;
}
