/*
 * routes.c - the route table (method, path, handler, argument) and the dispatcher:
 * unknown path 404, known path with another method 405, parameters collected once, and
 * every handler error turned into its JSON answer here. Adding an endpoint = one row.
 */
#include <sodium.h>
#include <string.h>

#include "api/handlers.h"
#include "api/params.h"
#include "api/routes.h"

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

enum api_auth api_auth_for(const struct api_ctx *ctx, const char *path)
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
	const char *got = req->telegram_secret;
	if (got == NULL)
		return false;
	/* Compare digests so neither the contents nor the length leak through timing. */
	uint8_t a[32], b[32];
	crypto_generichash(a, sizeof a, (const uint8_t *)want, strlen(want), NULL, 0);
	crypto_generichash(b, sizeof b, (const uint8_t *)got, strlen(got), NULL, 0);
	return sodium_memcmp(a, b, sizeof a) == 0;
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
	if (api_auth_for(ctx, req->path) == API_AUTH_WEBHOOK && !webhook_secret_ok(ctx, req)) {
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
