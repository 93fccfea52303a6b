/*
 * cmd_apps.c - `otpd app ...` and `otpd key ...`: the apps of the native API and their
 * API keys, on the store of the configuration (the same one a running otpd uses; it
 * sees a change within its five-second cache). Human lines on stdout, or with --json one
 * JSON document (the shapes of /admin/apps and /admin/keys). A key's secret is printed
 * once, at creation; only its keyed hash is stored.
 */
#include <errno.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "commands.h"
#include "core/app.h"
#include "core/num.h"
#include "log.h"
#include "store/store.h"
#include "verify/apps.h"

static int64_t now_unix(void)
{
	return (int64_t)time(NULL);
}

/* What a command runs on: the store and the key of the configuration. */
struct session {
	struct store *store;
	struct otp_key key;
	struct verify_env env;
};

static int session_open(const struct config *cfg, struct session *s)
{
	char err[8192] = "";
	uint8_t master[OTP_KEY_LEN];
	memset(s, 0, sizeof *s);
	if ((cfg->pg_host == NULL || cfg->secret_key == NULL) && mkdir(cfg->data_dir, 0700) != 0 &&
	    errno != EEXIST) {
		log_write(LOG_FATAL, "invalid configuration", "detail", "OTPD_DATA_DIR cannot be created",
		          "path", cfg->data_dir, LOG_END);
		return 2;
	}
	if (command_load_key(cfg, master, err, sizeof err) != 0) {
		log_write(LOG_FATAL, "invalid configuration", "detail", err, LOG_END);
		return 2;
	}
	int rc = otp_key_init(&s->key, master);
	sodium_memzero(master, sizeof master);
	if (rc != 0)
		return 1;
	s->store = command_open_store(cfg, err, sizeof err);
	if (s->store == NULL) {
		log_write(LOG_FATAL, "store", "detail", err, LOG_END);
		otp_key_wipe(&s->key);
		return 1;
	}
	s->env = (struct verify_env){
		.cfg = cfg,
		.store = s->store,
		.key = &s->key,
		.rng = &otp_rng_system,
		.now = now_unix,
	};
	return 0;
}

static void session_close(struct session *s)
{
	store_close(s->store);
	otp_key_wipe(&s->key);
}

static int failed(const struct otp_error *e)
{
	if (e->field[0])
		fprintf(stderr, "otpd: %s (%s)\n", e->message, e->field);
	else
		fprintf(stderr, "otpd: %s\n", e->message);
	return e->code == OTP_ERR_INVALID || e->code == OTP_ERR_NOT_FOUND ||
	       e->code == OTP_ERR_CONFLICT ? 2 : 1;
}

static int usage_error(const char *what, const char *hint)
{
	fprintf(stderr, "otpd: %s\n%s", what, hint);
	return 2;
}

static void print_json(json_t *j)
{
	char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	if (text != NULL)
		printf("%s\n", text);
	free(text);
}

/* ---- settings from flags ---------------------------------------------------------------- */

static const char app_help[] =
	"usage: otpd app create --name NAME [SETTINGS] [--json]\n"
	"       otpd app list [--json]\n"
	"       otpd app show ID [--json]\n"
	"       otpd app update ID [--name NAME] [SETTINGS] [--json]\n"
	"       otpd app delete ID\n"
	"SETTINGS (the defaults of the app's verifications; see docs/openapi.yaml AppSettings):\n"
	"  --code-length N           4..32 (default 6)\n"
	"  --digits, --no-digits     allow digits (default yes)\n"
	"  --upper, --no-upper       allow upper case letters\n"
	"  --lower, --no-lower       allow lower case letters\n"
	"  --special, --no-special   allow special characters (!#$%&*+-=?@_)\n"
	"  --exclude-lookalikes, --no-exclude-lookalikes   leave out 0 O o 1 l I i\n"
	"  --validity SECONDS        lifetime of a code (default 300)\n"
	"  --max-attempts N          wrong codes before it dies, 0 = unlimited (default 5)\n"
	"  --max-sends N             messages per verification, resends included (default 5)\n"
	"  --resend-cooldown SECONDS between two sends (default 30)\n"
	"  --consume, --no-consume   approval uses the code up (default yes)\n"
	"  --channels LIST           e.g. sms,call,whatsapp (default: all)\n"
	"  --sender NAME, --no-sender   the sender shown where a provider allows it\n"
	"  --custom-code, --no-custom-code   let callers bring their own code (default no)\n"
	"  --template ID[:LANG]=TEXT a message template with {code} (and {minutes}); repeatable\n"
	"  --settings JSON           any settings as a JSON object\n";

/* Parse an integer argument into patch[key]. */
static int put_int(json_t *patch, const char *key, const char *flag, const char *v)
{
	int64_t n;
	if (v == NULL || otp_parse_i64(v, INT32_MIN, INT32_MAX, &n) != 0) {
		fprintf(stderr, "otpd: %s needs an integer\n", flag);
		return 2;
	}
	json_object_set_new(patch, key, json_integer(n));
	return 0;
}

/* "ID[:LANG]=TEXT" into patch.templates (merged into `current` first). */
static int put_template(json_t *patch, json_t *current, const char *v)
{
	const char *eq = v ? strchr(v, '=') : NULL;
	if (eq == NULL || eq == v) {
		fprintf(stderr, "otpd: --template needs ID[:LANG]=TEXT\n");
		return 2;
	}
	char head[96];
	size_t n = (size_t)(eq - v);
	if (n >= sizeof head) {
		fprintf(stderr, "otpd: --template: the template id is too long\n");
		return 2;
	}
	memcpy(head, v, n);
	head[n] = '\0';
	char *colon = strchr(head, ':');
	const char *lang = "default";
	if (colon != NULL) {
		*colon = '\0';
		lang = colon + 1;
	}
	json_t *templates = json_object_get(patch, "templates");
	if (templates == NULL) {
		templates = current ? json_deep_copy(current) : json_object();
		json_object_set_new(patch, "templates", templates);
	}
	json_t *langs = json_object_get(templates, head);
	if (!json_is_object(langs)) {
		langs = json_object();
		json_object_set_new(templates, head, langs);
	}
	json_object_set_new(langs, lang, json_string(eq + 1));
	return 0;
}

/*
 * Read the flags of app create/update from argv[from..]: NAME into *name, the settings
 * into patch, --json into *as_json. `current_templates` (may be NULL) are the app's, so
 * --template adds to them. Returns 0 or 2 (a usage error, said on stderr).
 */
static int read_app_flags(int argc, char **argv, int from, const char **name, json_t *patch,
                          json_t *current_templates, bool *as_json)
{
	static const struct {
		const char *on, *off, *key;
	} flags[] = {
		{"--digits", "--no-digits", "allow_digits"},
		{"--upper", "--no-upper", "allow_upper_case"},
		{"--lower", "--no-lower", "allow_lower_case"},
		{"--special", "--no-special", "allow_special_chars"},
		{"--exclude-lookalikes", "--no-exclude-lookalikes", "exclude_lookalikes"},
		{"--consume", "--no-consume", "consume_on_approval"},
		{"--custom-code", "--no-custom-code", "allow_custom_code"},
	};
	static const struct {
		const char *flag, *key;
	} ints[] = {
		{"--code-length", "code_length"},
		{"--validity", "validity_period"},
		{"--max-attempts", "max_wrong_attempts"},
		{"--max-sends", "max_sends"},
		{"--resend-cooldown", "resend_cooldown"},
	};
	for (int i = from; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		bool done = false;
		for (size_t f = 0; !done && f < sizeof flags / sizeof flags[0]; f++) {
			if (strcmp(a, flags[f].on) == 0 || strcmp(a, flags[f].off) == 0) {
				json_object_set_new(patch, flags[f].key, json_boolean(strcmp(a, flags[f].on) == 0));
				done = true;
			}
		}
		for (size_t f = 0; !done && f < sizeof ints / sizeof ints[0]; f++) {
			if (strcmp(a, ints[f].flag) == 0) {
				if (put_int(patch, ints[f].key, a, v) != 0)
					return 2;
				i++;
				done = true;
			}
		}
		if (done)
			continue;
		if (strcmp(a, "--json") == 0) {
			*as_json = true;
		} else if (strcmp(a, "--name") == 0 && v != NULL) {
			*name = v;
			i++;
		} else if (strcmp(a, "--sender") == 0 && v != NULL) {
			json_object_set_new(patch, "sender", json_string(v));
			i++;
		} else if (strcmp(a, "--no-sender") == 0) {
			json_object_set_new(patch, "sender", json_null());
		} else if (strcmp(a, "--channels") == 0 && v != NULL) {
			json_t *list = json_array();
			char *copy = strdup(v), *save = NULL;
			for (char *t = copy ? strtok_r(copy, ",", &save) : NULL; t != NULL;
			     t = strtok_r(NULL, ",", &save))
				json_array_append_new(list, json_string(t));
			free(copy);
			json_object_set_new(patch, "channels", list);
			i++;
		} else if (strcmp(a, "--template") == 0) {
			if (put_template(patch, current_templates, v) != 0)
				return 2;
			i++;
		} else if (strcmp(a, "--settings") == 0 && v != NULL) {
			json_error_t jerr;
			json_t *more = json_loads(v, JSON_REJECT_DUPLICATES, &jerr);
			if (!json_is_object(more)) {
				json_decref(more);
				fprintf(stderr, "otpd: --settings needs a JSON object\n");
				return 2;
			}
			json_object_update(patch, more);
			json_decref(more);
			i++;
		} else {
			fprintf(stderr, "otpd: app: unexpected argument '%s'\n%s", a, app_help);
			return 2;
		}
	}
	return 0;
}

static void print_app(const struct store_app *a, bool as_json)
{
	json_t *j = apps_json(a);
	if (as_json) {
		print_json(j);
	} else {
		printf("id: %s\nname: %s\n", a->id, a->name);
		json_t *settings = json_object_get(j, "settings");
		const char *k;
		json_t *v;
		json_object_foreach(settings, k, v) {
			char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
			printf("%s: %s\n", k, text ? text : "?");
			free(text);
		}
	}
	json_decref(j);
}

/* ---- otpd app ----------------------------------------------------------------------------- */

static int app_list(struct session *s, bool as_json)
{
	struct store_app rows[100];
	json_t *all = json_array();
	char after[STORE_ID_MAX] = "";
	size_t n;
	do {
		if (store_app_list(s->store, after, rows, 100, &n) != 0) {
			json_decref(all);
			fprintf(stderr, "otpd: the database is unavailable\n");
			return 1;
		}
		for (size_t i = 0; i < n; i++) {
			if (as_json)
				json_array_append_new(all, apps_json(&rows[i]));
			else
				printf("%s\t%s\n", rows[i].id, rows[i].name);
			memcpy(after, rows[i].id, sizeof after);
			store_app_fini(&rows[i]);
		}
	} while (n == 100);
	if (as_json)
		print_json(all);
	json_decref(all);
	return 0;
}

int cmd_app(const struct config *cfg, int argc, char **argv)
{
	const char *verb = argc > 1 ? argv[1] : NULL;
	struct session s;
	struct otp_error err = {0};
	struct store_app app;
	bool as_json = false;
	const char *name = NULL;
	int rc;

	if (verb == NULL || strcmp(verb, "--help") == 0 || strcmp(verb, "-h") == 0) {
		fputs(app_help, verb ? stdout : stderr);
		return verb ? 0 : 2;
	}
	bool takes_id = strcmp(verb, "show") == 0 || strcmp(verb, "update") == 0 ||
	                strcmp(verb, "delete") == 0;
	if (!takes_id && strcmp(verb, "create") != 0 && strcmp(verb, "list") != 0)
		return usage_error("app: unknown verb (create, list, show, update, delete)", app_help);
	if (takes_id && (argc < 3 || argv[2][0] == '-'))
		return usage_error("app: which app? give its id", app_help);
	json_t *patch = json_object();
	int from = takes_id ? 3 : 2;
	if (strcmp(verb, "create") == 0 || strcmp(verb, "update") == 0) {
		if ((rc = session_open(cfg, &s)) != 0) {
			json_decref(patch);
			return rc;
		}
		json_t *templates = NULL;
		struct otp_app_settings current;
		bool have = false;
		if (strcmp(verb, "update") == 0 && apps_get(&s.env, argv[2], &app, &err) == 0) {
			have = otp_app_settings_parse(app.settings, &current, &err) == 0;
			store_app_fini(&app);
			templates = have ? current.templates : NULL;
		}
		rc = read_app_flags(argc, argv, from, &name, patch, templates, &as_json);
		if (have)
			otp_app_settings_fini(&current);
		if (rc == 0 && strcmp(verb, "create") == 0 && name == NULL)
			rc = usage_error("app create: --name is required", app_help);
		if (rc == 0) {
			json_t *settings = json_object_size(patch) > 0 ? patch : NULL;
			rc = strcmp(verb, "create") == 0
			     ? apps_create(&s.env, name, settings, &app, &err)
			     : apps_update(&s.env, argv[2], name, settings, false, &app, &err);
			if (rc != 0) {
				rc = failed(&err);
			} else {
				print_app(&app, as_json);
				store_app_fini(&app);
			}
		}
		session_close(&s);
		json_decref(patch);
		return rc;
	}
	json_decref(patch);
	for (int i = from; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0 && strcmp(verb, "delete") != 0)
			as_json = true;
		else
			return usage_error("app: unexpected argument", app_help);
	}
	if ((rc = session_open(cfg, &s)) != 0)
		return rc;
	if (strcmp(verb, "list") == 0) {
		rc = app_list(&s, as_json);
	} else if (strcmp(verb, "show") == 0) {
		rc = apps_get(&s.env, argv[2], &app, &err);
		if (rc == 0) {
			print_app(&app, as_json);
			store_app_fini(&app);
		} else {
			rc = failed(&err);
		}
	} else {
		rc = apps_delete(&s.env, argv[2], &err);
		if (rc == 0)
			printf("deleted %s (and its keys)\n", argv[2]);
		else
			rc = failed(&err);
	}
	session_close(&s);
	return rc;
}

/* ---- otpd key ---------------------------------------------------------------------------- */

static const char key_help[] =
	"usage: otpd key create --app ID [--name NAME] [--json]\n"
	"       otpd key create --admin [--name NAME] [--json]   (a key for every app)\n"
	"       otpd key list [--app ID | --admin] [--json]\n"
	"       otpd key revoke KEY_ID [--json]\n"
	"A new key's secret is printed once: keep it. Requests authenticate with\n"
	"X-API-Key: KEY_ID and X-API-Secret: SECRET, Basic KEY_ID:SECRET, or Bearer TOKEN.\n";

static void print_key(const struct store_key *k, const char *secret, bool as_json)
{
	json_t *j = keys_json(k);
	char token[STORE_ID_MAX + APPS_SECRET_MAX + 2] = "";
	if (secret != NULL) {
		snprintf(token, sizeof token, "%s.%s", k->id, secret);
		json_object_set_new(j, "secret", json_string(secret));
		json_object_set_new(j, "token", json_string(token));
	}
	if (as_json) {
		print_json(j);
	} else {
		printf("id: %s\napp_id: %s\nname: %s\ncreated_at: %s\nrevoked_at: %s\n", k->id,
		       k->app_id[0] ? k->app_id : "(admin: every app)", k->name,
		       json_string_value(json_object_get(j, "created_at")),
		       k->revoked_at ? json_string_value(json_object_get(j, "revoked_at")) : "-");
		if (secret != NULL)
			printf("secret: %s\ntoken: %s\n(the secret is shown only now: store it)\n", secret,
			       token);
	}
	sodium_memzero(token, sizeof token);
	json_decref(j);
}

int cmd_key(const struct config *cfg, int argc, char **argv)
{
	const char *verb = argc > 1 ? argv[1] : NULL;
	const char *app = NULL, *name = NULL, *id = NULL;
	bool admin = false, as_json = false;
	struct otp_error err = {0};
	struct session s;
	struct store_key key;
	int rc;

	if (verb == NULL || strcmp(verb, "--help") == 0 || strcmp(verb, "-h") == 0) {
		fputs(key_help, verb ? stdout : stderr);
		return verb ? 0 : 2;
	}
	if (strcmp(verb, "create") != 0 && strcmp(verb, "list") != 0 && strcmp(verb, "revoke") != 0)
		return usage_error("key: unknown verb (create, list, revoke)", key_help);
	int i = 2;
	if (strcmp(verb, "revoke") == 0) {
		if (argc < 3 || argv[2][0] == '-')
			return usage_error("key revoke: which key? give its id", key_help);
		id = argv[2];
		i = 3;
	}
	for (; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--json") == 0) {
			as_json = true;
		} else if (strcmp(a, "--admin") == 0 && strcmp(verb, "revoke") != 0) {
			admin = true;
		} else if (strcmp(a, "--app") == 0 && v != NULL && strcmp(verb, "revoke") != 0) {
			app = v;
			i++;
		} else if (strcmp(a, "--name") == 0 && v != NULL && strcmp(verb, "create") == 0) {
			name = v;
			i++;
		} else {
			fprintf(stderr, "otpd: key: unexpected argument '%s'\n%s", a, key_help);
			return 2;
		}
	}
	if (strcmp(verb, "create") == 0 && admin == (app != NULL))
		return usage_error("key create: give --app ID, or --admin", key_help);
	if ((rc = session_open(cfg, &s)) != 0)
		return rc;
	if (strcmp(verb, "create") == 0) {
		char secret[APPS_SECRET_MAX];
		rc = keys_create(&s.env, app, admin, name, "plain", &key, secret, &err);
		if (rc == 0)
			print_key(&key, secret, as_json);
		else
			rc = failed(&err);
		sodium_memzero(secret, sizeof secret);
	} else if (strcmp(verb, "revoke") == 0) {
		rc = keys_revoke(&s.env, id, &key, &err);
		if (rc == 0)
			print_key(&key, NULL, as_json);
		else
			rc = failed(&err);
	} else {
		struct store_key *rows = calloc(STORE_LIST_MAX, sizeof *rows);
		size_t n = 0;
		rc = rows == NULL ? 1
		     : store_key_list(s.store, admin ? "" : app, rows, STORE_LIST_MAX, &n) != 0 ? 1 : 0;
		if (rc != 0) {
			fprintf(stderr, "otpd: the database is unavailable\n");
		} else if (as_json) {
			json_t *all = json_array();
			for (size_t k = 0; k < n; k++)
				json_array_append_new(all, keys_json(&rows[k]));
			print_json(all);
			json_decref(all);
		} else {
			for (size_t k = 0; k < n; k++)
				printf("%s\t%s\t%s%s\n", rows[k].id,
				       rows[k].app_id[0] ? rows[k].app_id : "(admin)", rows[k].name,
				       rows[k].revoked_at ? "\trevoked" : "");
		}
		free(rows);
	}
	session_close(&s);
	return rc;
}
