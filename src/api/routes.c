/*
 * routes.c - the route table (method, path, handler, argument) and the dispatcher:
 * unknown path 404, known path with another method 405, parameters collected once, and
 * every handler error turned into its JSON answer here. Adding an endpoint = one row.
 */
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "api/handlers.h"
#include "api/params.h"
#include "api/routes.h"

enum api_auth { API_AUTH_NONE, API_AUTH_BASIC, API_AUTH_WEBHOOK };

struct route {
	const char *method;
	const char *path;
	api_handler_fn fn;
	int arg;
	enum api_auth auth;
};

#define SMS OTP_CH_SMS
#define CALL OTP_CH_CALL
#define EMAIL OTP_CH_EMAIL
#define TG OTP_CH_TELEGRAM

static const struct route routes[] = {
	{"GET", "/health", admin_health, 0, API_AUTH_NONE},
	{"GET", "/ready", admin_ready, 0, API_AUTH_NONE},
	{"POST", "/sms", compat_send, SMS, API_AUTH_BASIC},
	{"POST", "/call", compat_send, CALL, API_AUTH_BASIC},
	{"POST", "/email", compat_send, EMAIL, API_AUTH_BASIC},
	{"POST", "/telegram", compat_send, TG, API_AUTH_BASIC},
	{"GET", "/sms/check", compat_check, SMS, API_AUTH_BASIC},
	{"GET", "/call/check", compat_check, CALL, API_AUTH_BASIC},
	{"GET", "/email/check", compat_check, EMAIL, API_AUTH_BASIC},
	{"GET", "/telegram/check", compat_check, TG, API_AUTH_BASIC},
	{"POST", "/limit/sms", compat_limit_set, SMS, API_AUTH_BASIC},
	{"POST", "/limit/call", compat_limit_set, CALL, API_AUTH_BASIC},
	{"POST", "/limit/email", compat_limit_set, EMAIL, API_AUTH_BASIC},
	{"POST", "/limit/telegram", compat_limit_set, TG, API_AUTH_BASIC},
	{"GET", "/limit/sms", compat_limit_get, SMS, API_AUTH_BASIC},
	{"GET", "/limit/call", compat_limit_get, CALL, API_AUTH_BASIC},
	{"GET", "/limit/email", compat_limit_get, EMAIL, API_AUTH_BASIC},
	{"GET", "/limit/telegram", compat_limit_get, TG, API_AUTH_BASIC},
	{"GET", "/target", compat_target, 0, API_AUTH_BASIC},
	{"GET", "/password", compat_password, 0, API_AUTH_BASIC},
	{"POST", "/telegram/webhook", compat_telegram_webhook, 0, API_AUTH_WEBHOOK},
	{"GET", "/admin/outbox", admin_outbox, 0, API_AUTH_BASIC},
	{"GET", "/metrics", admin_metrics, 0, API_AUTH_BASIC},
};

#define N_ROUTES (sizeof routes / sizeof routes[0])

size_t api_route_count(void)
{
	return N_ROUTES;
}

int api_route_find(const char *method, const char *path)
{
	if (method == NULL || path == NULL)
		return -1;
	/* HEAD is answered like GET (libmicrohttpd drops the body). */
	if (strcmp(method, "HEAD") == 0)
		method = "GET";
	for (size_t i = 0; i < N_ROUTES; i++) {
		if (strcmp(routes[i].path, path) == 0 && strcmp(routes[i].method, method) == 0)
			return (int)i;
	}
	return -1;
}

void api_route_at(size_t i, const char **method, const char **path)
{
	if (i >= N_ROUTES)
		return;
	*method = routes[i].method;
	*path = routes[i].path;
}

const char *api_header(const struct api_request *req, const char *name)
{
	for (size_t i = 0; i < req->n_headers; i++)
		if (strcasecmp(req->headers[i].key, name) == 0)
			return req->headers[i].value;
	return NULL;
}

/* Which authentication a path needs: none for /health and /ready, the webhook's own
 * secret for /telegram/webhook when it is configured, else Basic (when configured). An
 * unknown path needs Basic too, so a scanner learns nothing without credentials. */
static enum api_auth auth_for(const struct api_ctx *ctx, const char *path)
{
	for (size_t i = 0; i < N_ROUTES; i++) {
		if (strcmp(routes[i].path, path) != 0)
			continue;
		if (routes[i].auth == API_AUTH_WEBHOOK && ctx->cfg->telegram_webhook_secret == NULL)
			return API_AUTH_BASIC;
		return routes[i].auth;
	}
	return API_AUTH_BASIC;
}

/* Equal secrets, compared as BLAKE2b digests so neither their contents nor their
 * lengths leak through timing. */
static bool secret_equal(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len)
{
	uint8_t da[32], db[32];
	crypto_generichash(da, sizeof da, a, a_len, NULL, 0);
	crypto_generichash(db, sizeof db, b, b_len, NULL, 0);
	bool eq = sodium_memcmp(da, db, sizeof da) == 0;
	sodium_memzero(da, sizeof da);
	sodium_memzero(db, sizeof db);
	return eq;
}

/* HTTP Basic credentials equal to HTTP_AUTH_USERNAME:HTTP_AUTH_PASSWORD. */
static bool basic_auth_ok(const struct api_ctx *ctx, const struct api_request *req)
{
	const char *h = api_header(req, "Authorization");
	if (h == NULL || strncasecmp(h, "Basic ", 6) != 0)
		return false;
	const char *b64 = h + 6;
	while (*b64 == ' ')
		b64++;
	uint8_t plain[1024], want[600];
	size_t plain_len = 0;
	if (sodium_base642bin(plain, sizeof plain, b64, strlen(b64), NULL, &plain_len, NULL,
	                      sodium_base64_VARIANT_ORIGINAL) != 0)
		return false;
	int n = snprintf((char *)want, sizeof want, "%s:%s", ctx->cfg->http_auth_username,
	                 ctx->cfg->http_auth_password);
	bool ok = n > 0 && (size_t)n < sizeof want &&
	          secret_equal(plain, plain_len, want, (size_t)n);
	sodium_memzero(plain, sizeof plain);
	sodium_memzero(want, sizeof want);
	return ok;
}

/* The methods a path answers, for 405's Allow header. */
static const char *allowed(const char *path)
{
	bool get = false, post = false;
	for (size_t i = 0; i < N_ROUTES; i++) {
		if (strcmp(routes[i].path, path) != 0)
			continue;
		get = get || strcmp(routes[i].method, "GET") == 0;
		post = post || strcmp(routes[i].method, "POST") == 0;
	}
	if (get && post)
		return "GET, POST";
	if (get)
		return "GET";
	if (post)
		return "POST";
	return NULL;
}

static bool webhook_secret_ok(const struct api_ctx *ctx, const struct api_request *req)
{
	const char *want = ctx->cfg->telegram_webhook_secret;
	const char *got = api_header(req, "X-Telegram-Bot-Api-Secret-Token");
	return got != NULL && secret_equal((const uint8_t *)want, strlen(want),
	                                   (const uint8_t *)got, strlen(got));
}

void api_refuse(const struct api_ctx *ctx, const char *method, const char *path,
                const struct otp_error *e, struct api_response *resp)
{
	(void)ctx;
	memset(resp, 0, sizeof *resp);
	api_error_response(e, resp);
	resp->route = api_route_find(method, path);
}

static bool basic_configured(const struct api_ctx *ctx)
{
	return ctx->cfg->http_auth_username != NULL && ctx->cfg->http_auth_password != NULL;
}

void api_handle(const struct api_ctx *ctx, const struct api_request *req,
                struct api_response *resp)
{
	struct otp_error err = {0};
	const struct route *r = NULL;
	json_t *params = NULL;
	int rc;

	resp->status = 500;
	resp->body = NULL;
	resp->text = NULL;
	resp->content_type = NULL;
	resp->allow = NULL;
	resp->route = api_route_find(req->method, req->path);
	if (resp->route >= 0)
		r = &routes[resp->route];
	if (basic_configured(ctx) && auth_for(ctx, req->path) == API_AUTH_BASIC &&
	    !basic_auth_ok(ctx, req)) {
		rc = otp_error_set(&err, OTP_ERR_AUTH, "unauthorized", "", "authentication required");
		api_error_response(&err, resp);
		resp->basic_challenge = true;
		return;
	}
	if (r == NULL) {
		const char *allow = allowed(req->path);
		if (allow != NULL) {
			resp->allow = allow;
			rc = otp_error_set(&err, OTP_ERR_METHOD, "method_not_allowed", "",
			                   "%s is not allowed on %s; use %s", req->method, req->path, allow);
		} else {
			rc = otp_error_set(&err, OTP_ERR_NOT_FOUND, "not_found", "", "Page not found");
		}
		goto fail;
	}
	enum api_auth auth = auth_for(ctx, req->path);
	if (auth == API_AUTH_WEBHOOK && !webhook_secret_ok(ctx, req)) {
		rc = otp_error_set(&err, OTP_ERR_AUTH, "unauthorized", "",
		                   "missing or wrong X-Telegram-Bot-Api-Secret-Token");
		goto fail;
	}
	if ((rc = params_collect(req, &params, &err)) != 0)
		goto fail;
	rc = r->fn(ctx, req, params, r->arg, resp, &err);
	json_decref(params);
	if (rc == 0)
		return;
	api_response_fini(resp);
fail:
	api_error_response(&err, resp);
	if (resp->status == 405)
		resp->allow = allowed(req->path);
}
