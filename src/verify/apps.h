/*
 * apps.h - apps and their API keys, for the CLI (otpd app|key ...) and /admin/apps,
 * /admin/keys alike: ids and secrets made here (a secret is returned once and only its
 * keyed hash is stored), settings validated by core/app.h, and one JSON shape of each
 * for both. Never logs.
 */
#ifndef OTPD_VERIFY_APPS_H
#define OTPD_VERIFY_APPS_H

#include <jansson.h>
#include <stdbool.h>

#include "core/errors.h"
#include "store/store.h"
#include "verify/verify.h"

#define APPS_SECRET_MAX 96

/* Make an app named `name` with the defaults patched by `settings` (a JSON object of
 * core/app.h's keys, or NULL). OTP_ERR_INVALID (err names the field), OTP_ERR_STORE. */
int apps_create(const struct verify_env *env, const char *name, json_t *settings,
                struct store_app *out, struct otp_error *err);
/* Rename (name may be NULL) and patch the settings (NULL: keep; replace: start from the
 * defaults instead of the current settings). OTP_ERR_NOT_FOUND, OTP_ERR_INVALID, ... */
int apps_update(const struct verify_env *env, const char *id, const char *name,
                json_t *settings, bool replace, struct store_app *out, struct otp_error *err);
int apps_delete(const struct verify_env *env, const char *id, struct otp_error *err);
int apps_get(const struct verify_env *env, const char *id, struct store_app *out,
             struct otp_error *err);

/* A new key for `app_id` ("" with admin: a key for every app). `format` is "plain".
 * *secret (APPS_SECRET_MAX) gets the secret, shown once. */
int keys_create(const struct verify_env *env, const char *app_id, bool admin,
                const char *name, const char *format, struct store_key *out, char *secret,
                struct otp_error *err);
int keys_revoke(const struct verify_env *env, const char *id, struct store_key *out,
                struct otp_error *err);

/* The JSON shapes: {id, name, settings, created_at, updated_at} and {id, app_id, admin,
 * name, format, created_at, revoked_at}; times as RFC 3339 UTC. */
json_t *apps_json(const struct store_app *a);
json_t *keys_json(const struct store_key *k);
/* "2026-12-01T21:30:00Z" into out (21 bytes at least). */
void apps_time(int64_t t, char *out, size_t cap);

#endif
