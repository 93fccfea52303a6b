/*
 * route.h - what a dialect file declares and what its handlers receive. A dialect is one
 * file with its route rows (method, path pattern, body kind, authentication, handler)
 * and its error renderer; routes.c matches the request, authenticates it, parses its
 * body as the route declares, calls the handler, and turns a handler's error into an
 * answer through the route's dialect. Handlers read parameters and the principal from
 * struct api_call and never write an error answer themselves.
 */
#ifndef OTPD_API_ROUTE_H
#define OTPD_API_ROUTE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "api/api.h"
#include "core/errors.h"
#include "verify/verify.h"

/* How a route's parameters come. */
enum api_body {
	API_BODY_COMPAT,    /* query, then a JSON body whatever its Content-Type (COMPAT.md) */
	API_BODY_JSON,      /* query, then a JSON object body (Content-Type application/json) */
	API_BODY_FORM,      /* query, then an application/x-www-form-urlencoded body */
	API_BODY_NONE,      /* query only; a body is ignored */
};

/* Who may call a route. */
enum api_auth {
	API_AUTH_NONE,
	API_AUTH_BASIC,     /* HTTP_AUTH_USERNAME/PASSWORD when set (the compat dialect's) */
	API_AUTH_WEBHOOK,   /* the Telegram webhook secret when set, else as BASIC */
	API_AUTH_KEY,       /* an API key of an app, or an admin key */
	API_AUTH_ADMIN,     /* an admin key, or OTPD_ADMIN_TOKEN */
};

/* Who called, after authentication. */
struct api_principal {
	bool authenticated;
	bool admin;                     /* an admin key or the admin token: every app */
	char key_id[STORE_ID_MAX];
	char app_id[STORE_ID_MAX];      /* the key's app; "" for an admin */
};

struct api_route;

/* Renders an error in a dialect's shape and status map. `route` may be NULL (no route
 * matched: the compat dialect answers). */
struct api_dialect {
	const char *name;
	void (*error)(const struct api_route *route, const struct otp_error *e,
	              struct api_response *resp);
};

#define API_PATH_PARAMS_MAX 4

struct api_call {
	const struct api_request *req;
	const struct api_route *route;
	json_t *params;                             /* an object; owned by routes.c */
	const char *path[API_PATH_PARAMS_MAX];      /* the {…} segments, in order */
	size_t n_path;
	struct api_principal who;
};

typedef int (*api_handler_fn)(const struct api_ctx *ctx, const struct api_call *call,
                              struct api_response *resp, struct otp_error *err);
/* Declares or defines a handler of that type. */
#define API_HANDLER(name)                                                                   \
	int name(const struct api_ctx *ctx, const struct api_call *call, struct api_response *resp, \
	         struct otp_error *err)

struct api_route {
	const char *method;
	const char *pattern;                        /* "/otp/send", "/admin/apps/{id}" */
	const struct api_dialect *dialect;
	enum api_body body;
	enum api_auth auth;
	api_handler_fn fn;
	int arg;
};

/* The dialects' tables (one file each). */
extern const struct api_dialect api_dialect_compat;
extern const struct api_dialect api_dialect_native;
extern const struct api_route api_compat_routes[];
extern const size_t api_compat_routes_count;
extern const struct api_route api_native_routes[];
extern const size_t api_native_routes_count;
extern const struct api_route api_admin_routes[];
extern const size_t api_admin_routes_count;

/* ---- authentication (auth.c) ------------------------------------------------------ */

/* Authenticate call->req for `auth`, filling call->who. 0, or OTP_ERR_AUTH (err filled
 * with "unauthorized"), OTP_ERR_STORE. */
int api_authenticate(const struct api_ctx *ctx, enum api_auth auth, struct api_call *call,
                     struct otp_error *err);
/* Forget a cached key (after a revocation in this process). */
void api_auth_forget(const char *key_id);
/* Forget every cached key of an app (after its deletion in this process). */
void api_auth_forget_app(const char *app_id);

/* The settings of an app, through a short cache (parsed; the caller finishes them with
 * otp_app_settings_fini). 0, OTP_ERR_NOT_FOUND, OTP_ERR_STORE. */
struct otp_app_settings;
int api_app_settings(const struct api_ctx *ctx, const char *app_id,
                     struct otp_app_settings *out, struct otp_error *err);
void api_app_forget(const char *app_id);

/* ---- shared by the dialects --------------------------------------------------------- */

/* Count a send / a check of `ch` by its outcome in /metrics. */
void api_count_send(const struct api_ctx *ctx, enum otp_channel ch, int rc);
void api_count_check(const struct api_ctx *ctx, enum otp_channel ch, int rc, bool ok);
/* One log line for an accepted verification (masked target, never the code). */
void api_log_started(const struct api_ctx *ctx, const struct api_call *call,
                     const struct verify_started *s);

/* The error shapes' common statuses: what HTTP status an error class gets in a dialect
 * without its own map (native, admin). */
int api_status_for(const struct otp_error *e);

#endif
