/*
 * apps.c - apps and API keys (apps.h).
 */
#include "verify/apps.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/app.h"
#include "core/text.h"

static int store_failed(struct otp_error *err)
{
	return otp_error_set(err, OTP_ERR_STORE, "unavailable", "",
	                     "the database is unavailable, try again");
}

static int name_ok(const char *name, struct otp_error *err)
{
	if (name == NULL || name[0] == '\0')
		return otp_error_set(err, OTP_ERR_INVALID, "missing_parameter", "name",
		                     "\"name\" parameter must be set");
	if (strlen(name) >= STORE_NAME_MAX || !otp_utf8_valid(name, strlen(name)) ||
	    otp_has_control(name, false))
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "name",
		                     "\"name\" must be 1 to %d bytes of text", STORE_NAME_MAX - 1);
	return 0;
}

/* The settings as stored text (malloc'd) */
static char *settings_text(const struct otp_app_settings *s)
{
	json_t *j = otp_app_settings_json(s);
	char *text = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
	json_decref(j);
	return text;
}

int apps_create(const struct verify_env *env, const char *name, json_t *settings,
                struct store_app *out, struct otp_error *err)
{
	struct otp_app_settings s;
	memset(out, 0, sizeof *out);
	int rc = name_ok(name, err);
	if (rc != 0)
		return rc;
	if (otp_app_settings_default(&s) != 0)
		return otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
	if (settings != NULL && (rc = otp_app_settings_patch(&s, settings, err)) != 0) {
		otp_app_settings_fini(&s);
		return rc;
	}
	verify_new_id(env->rng, env->now(), "app_", out->id, sizeof out->id);
	snprintf(out->name, sizeof out->name, "%s", name);
	out->settings = settings_text(&s);
	otp_app_settings_fini(&s);
	if (out->settings == NULL)
		return otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
	out->created_at = out->updated_at = env->now();
	rc = store_app_put(env->store, out, true);
	if (rc != 0) {
		store_app_fini(out);
		return rc == OTP_ERR_CONFLICT
		       ? otp_error_set(err, OTP_ERR_CONFLICT, "conflict", "", "that app id exists")
		       : store_failed(err);
	}
	return 0;
}

int apps_get(const struct verify_env *env, const char *id, struct store_app *out,
             struct otp_error *err)
{
	int rc = store_app_get(env->store, id, out);
	if (rc == OTP_ERR_NOT_FOUND || rc == OTP_ERR_INVALID)
		return otp_error_set(err, OTP_ERR_NOT_FOUND, "not_found", "id", "no such app");
	return rc != 0 ? store_failed(err) : 0;
}

int apps_update(const struct verify_env *env, const char *id, const char *name,
                json_t *settings, bool replace, struct store_app *out, struct otp_error *err)
{
	struct otp_app_settings s;
	int rc = apps_get(env, id, out, err);
	if (rc != 0)
		return rc;
	if (name != NULL && (rc = name_ok(name, err)) != 0)
		goto fail;
	rc = replace ? otp_app_settings_default(&s) : otp_app_settings_parse(out->settings, &s, err);
	if (rc != 0) {
		rc = otp_error_set(err, rc, "internal", "", "the stored settings do not parse");
		goto fail;
	}
	if (settings != NULL && (rc = otp_app_settings_patch(&s, settings, err)) != 0) {
		otp_app_settings_fini(&s);
		goto fail;
	}
	char *text = settings_text(&s);
	otp_app_settings_fini(&s);
	if (text == NULL) {
		rc = otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
		goto fail;
	}
	free(out->settings);
	out->settings = text;
	if (name != NULL)
		snprintf(out->name, sizeof out->name, "%s", name);
	out->updated_at = env->now();
	rc = store_app_put(env->store, out, false);
	if (rc == OTP_ERR_NOT_FOUND) {
		rc = otp_error_set(err, OTP_ERR_NOT_FOUND, "not_found", "id", "no such app");
		goto fail;
	}
	if (rc != 0) {
		rc = store_failed(err);
		goto fail;
	}
	return 0;
fail:
	store_app_fini(out);
	return rc;
}

int apps_delete(const struct verify_env *env, const char *id, struct otp_error *err)
{
	int rc = store_app_delete(env->store, id);
	if (rc == OTP_ERR_NOT_FOUND || rc == OTP_ERR_INVALID)
		return otp_error_set(err, OTP_ERR_NOT_FOUND, "not_found", "id", "no such app");
	return rc != 0 ? store_failed(err) : 0;
}

int keys_create(const struct verify_env *env, const char *app_id, bool admin,
                const char *name, const char *format, struct store_key *out, char *secret,
                struct otp_error *err)
{
	uint8_t raw[32];
	memset(out, 0, sizeof *out);
	secret[0] = '\0';
	if (admin == (app_id != NULL && app_id[0] != '\0'))
		return otp_error_set(err, OTP_ERR_INVALID,
		                     admin ? "invalid_parameter" : "missing_parameter", "app_id",
		                     admin ? "an admin key belongs to no app: leave out \"app_id\""
		                           : "\"app_id\" parameter must be set (or ask for an admin key)");
	if (format == NULL)
		format = "plain";
	if (strcmp(format, "plain") != 0)
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "format",
		                     "\"format\" must be plain");
	if (name != NULL && (strlen(name) >= STORE_NAME_MAX || otp_has_control(name, false) ||
	                     !otp_utf8_valid(name, strlen(name))))
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "name",
		                     "\"name\" must be at most %d bytes of text", STORE_NAME_MAX - 1);
	verify_new_id(env->rng, env->now(), "key_", out->id, sizeof out->id);
	snprintf(out->app_id, sizeof out->app_id, "%s", admin ? "" : app_id);
	snprintf(out->format, sizeof out->format, "%s", format);
	snprintf(out->name, sizeof out->name, "%s", name ? name : "");
	env->rng->fill(env->rng->ctx, raw, sizeof raw);
	sodium_bin2base64(secret, APPS_SECRET_MAX, raw, sizeof raw,
	                  sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	sodium_memzero(raw, sizeof raw);
	otp_secret_hash(env->key, secret, out->secret_hash);
	out->created_at = env->now();
	int rc = store_key_create(env->store, out);
	if (rc == 0)
		return 0;
	sodium_memzero(secret, APPS_SECRET_MAX);
	if (rc == OTP_ERR_NOT_FOUND)
		return otp_error_set(err, OTP_ERR_NOT_FOUND, "not_found", "app_id", "no such app");
	if (rc == OTP_ERR_INVALID)
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "app_id",
		                     "\"app_id\" is not an app id");
	return store_failed(err);
}

int keys_revoke(const struct verify_env *env, const char *id, struct store_key *out,
                struct otp_error *err)
{
	int rc = store_key_revoke(env->store, id, env->now());
	if (rc == 0)
		rc = store_key_get(env->store, id, out);
	if (rc == OTP_ERR_NOT_FOUND || rc == OTP_ERR_INVALID)
		return otp_error_set(err, OTP_ERR_NOT_FOUND, "not_found", "id", "no such key");
	return rc != 0 ? store_failed(err) : 0;
}

void apps_time(int64_t t, char *out, size_t cap)
{
	struct tm tm;
	time_t tt = (time_t)t;
	if (gmtime_r(&tt, &tm) == NULL || strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(out, cap, "%lld", (long long)t);
}

static json_t *time_json(int64_t t)
{
	char buf[32];
	if (t == 0)
		return json_null();
	apps_time(t, buf, sizeof buf);
	return json_string(buf);
}

json_t *apps_json(const struct store_app *a)
{
	json_t *settings = json_loads(a->settings ? a->settings : "{}", 0, NULL);
	return json_pack("{s:s, s:s, s:o, s:o, s:o}", "id", a->id, "name", a->name, "settings",
	                 settings ? settings : json_object(), "created_at", time_json(a->created_at),
	                 "updated_at", time_json(a->updated_at));
}

json_t *keys_json(const struct store_key *k)
{
	return json_pack("{s:s, s:o, s:b, s:s, s:s, s:o, s:o}", "id", k->id, "app_id",
	                 k->app_id[0] ? json_string(k->app_id) : json_null(), "admin",
	                 k->app_id[0] == '\0', "name", k->name, "format", k->format, "created_at",
	                 time_json(k->created_at), "revoked_at", time_json(k->revoked_at));
}
