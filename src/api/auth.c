/*
 * auth.c - who is calling: the compat dialect's HTTP Basic credentials, the Telegram
 * webhook's secret, an app's API key (X-API-Key + X-API-Secret, Basic key:secret, or
 * Bearer key.secret), an admin key or OTPD_ADMIN_TOKEN. Secrets are compared in constant
 * time (digests with sodium_memcmp); a key's secret is stored only as a keyed hash.
 *
 * DESIGN
 * Keys and app settings are read through two small caches (CACHE_TTL_MS), so a request
 * costs no database round trip for them: a key revoked or an app changed through another
 * otpd process takes effect within that time; in this process at once (api_auth_forget,
 * api_app_forget). Each cache is a fixed table guarded by its own mutex, held only to
 * copy an entry in or out, never across a store call.
 */
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "api/route.h"
#include "core/app.h"

#define CACHE_TTL_MS 5000
#define CACHE_SLOTS 128
#define CRED_MAX 512

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Equal secrets, compared as BLAKE2b digests so neither their contents nor their
 * lengths leak through timing. */
static bool secret_equal(const void *a, size_t a_len, const void *b, size_t b_len)
{
	uint8_t da[32], db[32];
	crypto_generichash(da, sizeof da, a, a_len, NULL, 0);
	crypto_generichash(db, sizeof db, b, b_len, NULL, 0);
	bool eq = sodium_memcmp(da, db, sizeof da) == 0;
	sodium_memzero(da, sizeof da);
	sodium_memzero(db, sizeof db);
	return eq;
}

static int unauthorized(struct otp_error *err, const char *why)
{
	return otp_error_set(err, OTP_ERR_AUTH, "unauthorized", "", "%s", why);
}

/* The credentials of "Authorization: Basic ...", decoded into plain (cap bytes,
 * NUL-terminated); false when absent or malformed. */
static bool basic_credentials(const struct api_request *req, char *plain, size_t cap)
{
	const char *h = api_header(req, "Authorization");
	size_t len = 0;
	if (h == NULL || strncasecmp(h, "Basic ", 6) != 0)
		return false;
	const char *b64 = h + 6;
	while (*b64 == ' ')
		b64++;
	if (sodium_base642bin((unsigned char *)plain, cap - 1, b64, strlen(b64), NULL, &len, NULL,
	                      sodium_base64_VARIANT_ORIGINAL) != 0)
		return false;
	plain[len] = '\0';
	return strlen(plain) == len; /* no NUL inside */
}

static bool basic_ok(const struct api_ctx *ctx, const struct api_request *req)
{
	char plain[CRED_MAX], want[CRED_MAX];
	bool ok = false;
	if (basic_credentials(req, plain, sizeof plain)) {
		int n = snprintf(want, sizeof want, "%s:%s", ctx->cfg->http_auth_username,
		                 ctx->cfg->http_auth_password);
		ok = n > 0 && (size_t)n < sizeof want && secret_equal(plain, strlen(plain), want, (size_t)n);
		sodium_memzero(want, sizeof want);
	}
	sodium_memzero(plain, sizeof plain);
	return ok;
}

/* ---- the key cache ------------------------------------------------------------------ */

struct key_slot {
	bool used;
	int64_t at;
	struct store_key key;
};

static pthread_mutex_t key_mu = PTHREAD_MUTEX_INITIALIZER;
static struct key_slot key_slots[CACHE_SLOTS];

static size_t slot_of(const char *id)
{
	uint32_t h = 2166136261u;
	for (const unsigned char *p = (const unsigned char *)id; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h % CACHE_SLOTS;
}

void api_auth_forget(const char *key_id)
{
	struct key_slot *k = &key_slots[slot_of(key_id)];
	pthread_mutex_lock(&key_mu);
	if (k->used && strcmp(k->key.id, key_id) == 0)
		k->used = false;
	pthread_mutex_unlock(&key_mu);
}

void api_auth_forget_app(const char *app_id)
{
	pthread_mutex_lock(&key_mu);
	for (size_t i = 0; i < CACHE_SLOTS; i++)
		if (key_slots[i].used && strcmp(key_slots[i].key.app_id, app_id) == 0)
			key_slots[i].used = false;
	pthread_mutex_unlock(&key_mu);
}

/* The key `id`: 0, OTP_ERR_NOT_FOUND or OTP_ERR_STORE. */
static int key_lookup(const struct api_ctx *ctx, const char *id, struct store_key *out)
{
	struct key_slot *k = &key_slots[slot_of(id)];
	int64_t now = mono_ms();
	pthread_mutex_lock(&key_mu);
	bool hit = k->used && now - k->at < CACHE_TTL_MS && strcmp(k->key.id, id) == 0;
	if (hit)
		*out = k->key;
	pthread_mutex_unlock(&key_mu);
	if (hit)
		return 0;
	int rc = store_key_get(ctx->store, id, out);
	if (rc != 0)
		return rc == OTP_ERR_NOT_FOUND || rc == OTP_ERR_INVALID ? OTP_ERR_NOT_FOUND : OTP_ERR_STORE;
	pthread_mutex_lock(&key_mu);
	k->used = true;
	k->at = now;
	k->key = *out;
	pthread_mutex_unlock(&key_mu);
	return 0;
}

/* Split "id<sep>secret" at the first sep into id (cap) and *secret; false when it does
 * not split into two non-empty parts. */
static bool split(char *s, char sep, const char **id, const char **secret)
{
	char *at = strchr(s, sep);
	if (at == NULL || at == s || at[1] == '\0')
		return false;
	*at = '\0';
	*id = s;
	*secret = at + 1;
	return true;
}

/*
 * The key id and secret a request carries, into buf: X-API-Key + X-API-Secret, or
 * Authorization Basic base64(id:secret), or Bearer id.secret (or Bearer base64(id:secret)
 * as seed 004 allows). Returns false when it carries none.
 */
static bool key_credentials(const struct api_request *req, char *buf, size_t cap,
                            const char **id, const char **secret)
{
	const char *x_id = api_header(req, "X-API-Key"), *x_secret = api_header(req, "X-API-Secret");
	if (x_id != NULL && x_secret != NULL) {
		int n = snprintf(buf, cap, "%s%c%s", x_id, '\n', x_secret);
		return n > 0 && (size_t)n < cap && split(buf, '\n', id, secret);
	}
	if (basic_credentials(req, buf, cap))
		return split(buf, ':', id, secret);
	const char *h = api_header(req, "Authorization");
	if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
		return false;
	const char *tok = h + 7;
	while (*tok == ' ')
		tok++;
	if (strchr(tok, '.') != NULL) {
		int n = snprintf(buf, cap, "%s", tok);
		return n > 0 && (size_t)n < cap && split(buf, '.', id, secret);
	}
	size_t len = 0;
	if (sodium_base642bin((unsigned char *)buf, cap - 1, tok, strlen(tok), NULL, &len, NULL,
	                      sodium_base64_VARIANT_ORIGINAL) != 0)
		return false;
	buf[len] = '\0';
	return strlen(buf) == len && split(buf, ':', id, secret);
}

static bool admin_token_ok(const struct api_ctx *ctx, const struct api_request *req)
{
	const char *want = ctx->cfg->admin_token;
	const char *h = api_header(req, "Authorization");
	if (want == NULL || h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
		return false;
	const char *tok = h + 7;
	while (*tok == ' ')
		tok++;
	return secret_equal(tok, strlen(tok), want, strlen(want));
}

static int key_auth(const struct api_ctx *ctx, struct api_call *call, bool admin_only,
                    struct otp_error *err)
{
	char buf[CRED_MAX];
	const char *id = NULL, *secret = NULL;
	struct store_key key;
	int rc;

	if (admin_token_ok(ctx, call->req)) {
		call->who.authenticated = true;
		call->who.admin = true;
		snprintf(call->who.key_id, sizeof call->who.key_id, "admin-token");
		return 0;
	}
	if (!key_credentials(call->req, buf, sizeof buf, &id, &secret)) {
		sodium_memzero(buf, sizeof buf);
		return unauthorized(err, "an API key is required: X-API-Key and X-API-Secret, "
		                         "Basic key:secret, or Bearer key.secret");
	}
	rc = key_lookup(ctx, id, &key);
	uint8_t presented[OTP_HASH_LEN];
	/* hash the secret whether or not the key exists: the same work either way */
	otp_secret_hash(ctx->key, secret, presented);
	sodium_memzero(buf, sizeof buf);
	if (rc == OTP_ERR_STORE)
		return otp_error_set(err, OTP_ERR_STORE, "unavailable", "",
		                     "the database is unavailable, try again");
	bool ok = rc == 0 && otp_hash_equal(presented, key.secret_hash) && key.revoked_at == 0;
	sodium_memzero(presented, sizeof presented);
	if (!ok)
		return unauthorized(err, "the API key or its secret is wrong, or the key was revoked");
	if (admin_only && key.app_id[0] != '\0')
		return otp_error_set(err, OTP_ERR_AUTH, "forbidden", "",
		                     "this key belongs to an app: an admin key is needed here");
	call->who.authenticated = true;
	call->who.admin = key.app_id[0] == '\0';
	snprintf(call->who.key_id, sizeof call->who.key_id, "%s", key.id);
	snprintf(call->who.app_id, sizeof call->who.app_id, "%s", key.app_id);
	return 0;
}

int api_authenticate(const struct api_ctx *ctx, enum api_auth auth, struct api_call *call,
                     struct otp_error *err)
{
	const struct config *cfg = ctx->cfg;
	memset(&call->who, 0, sizeof call->who);
	switch (auth) {
	case API_AUTH_NONE:
		return 0;
	case API_AUTH_WEBHOOK: {
		/* without its own secret the webhook is guarded like the rest */
		if (cfg->telegram_webhook_secret == NULL)
			return api_authenticate(ctx, API_AUTH_BASIC, call, err);
		const char *got = api_header(call->req, "X-Telegram-Bot-Api-Secret-Token");
		const char *want = cfg->telegram_webhook_secret;
		if (got == NULL || !secret_equal(got, strlen(got), want, strlen(want)))
			return unauthorized(err, "missing or wrong X-Telegram-Bot-Api-Secret-Token");
		return 0;
	}
	case API_AUTH_BASIC:
		if (cfg->http_auth_username != NULL && cfg->http_auth_password != NULL &&
		    !basic_ok(ctx, call->req))
			return unauthorized(err, "authentication required");
		return 0;
	case API_AUTH_KEY:
		return key_auth(ctx, call, false, err);
	case API_AUTH_ADMIN:
		return key_auth(ctx, call, true, err);
	}
	return unauthorized(err, "authentication required");
}

/* ---- the app cache --------------------------------------------------------------------- */

struct app_slot {
	bool used;
	int64_t at;
	char id[STORE_ID_MAX];
	char *settings;        /* the stored JSON text, owned */
};

static pthread_mutex_t app_mu = PTHREAD_MUTEX_INITIALIZER;
static struct app_slot app_slots[CACHE_SLOTS];

void api_app_forget(const char *app_id)
{
	struct app_slot *a = &app_slots[slot_of(app_id)];
	pthread_mutex_lock(&app_mu);
	if (a->used && strcmp(a->id, app_id) == 0) {
		a->used = false;
		free(a->settings);
		a->settings = NULL;
	}
	pthread_mutex_unlock(&app_mu);
}

int api_app_settings(const struct api_ctx *ctx, const char *app_id,
                     struct otp_app_settings *out, struct otp_error *err)
{
	struct app_slot *a = &app_slots[slot_of(app_id)];
	int64_t now = mono_ms();
	char *text = NULL;
	pthread_mutex_lock(&app_mu);
	if (a->used && now - a->at < CACHE_TTL_MS && strcmp(a->id, app_id) == 0)
		text = strdup(a->settings);
	pthread_mutex_unlock(&app_mu);
	if (text == NULL) {
		struct store_app app;
		int rc = store_app_get(ctx->store, app_id, &app);
		if (rc == OTP_ERR_NOT_FOUND || rc == OTP_ERR_INVALID)
			return otp_error_set(err, OTP_ERR_NOT_FOUND, "not_found", "appid",
			                     "no such app");
		if (rc != 0)
			return otp_error_set(err, OTP_ERR_STORE, "unavailable", "",
			                     "the database is unavailable, try again");
		text = app.settings;
		app.settings = NULL;
		store_app_fini(&app);
		char *copy = strdup(text);
		if (copy != NULL) {
			pthread_mutex_lock(&app_mu);
			free(a->settings);
			a->used = true;
			a->at = now;
			snprintf(a->id, sizeof a->id, "%s", app_id);
			a->settings = copy;
			pthread_mutex_unlock(&app_mu);
		}
	}
	int rc = otp_app_settings_parse(text, out, err);
	free(text);
	return rc;
}
