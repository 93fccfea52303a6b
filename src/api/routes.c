/*
 * routes.c - the dispatcher over every dialect's route table: match (method, path
 * pattern; {name} segments become path parameters), 404 / 405 with Allow, authenticate
 * as the route says, collect its parameters as its body kind says, call its handler, and
 * turn any error into the route's dialect's answer (the one place an error becomes an
 * answer). Adding a dialect = one table in tables[] below.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "api/params.h"
#include "api/route.h"
#include "api/routes.h"

struct table {
	const struct api_route *rows;
	const size_t *n;
};

static const struct table tables[] = {
	{api_compat_routes, &api_compat_routes_count},
	{api_native_routes, &api_native_routes_count},
	{api_admin_routes, &api_admin_routes_count},
};

#define N_TABLES (sizeof tables / sizeof tables[0])
#define PATH_MAX_BYTES 2048

size_t api_route_count(void)
{
	size_t n = 0;
	for (size_t t = 0; t < N_TABLES; t++)
		n += *tables[t].n;
	return n;
}

/* Route i of the flattened tables, or NULL. */
static const struct api_route *route_at(size_t i)
{
	for (size_t t = 0; t < N_TABLES; t++) {
		if (i < *tables[t].n)
			return &tables[t].rows[i];
		i -= *tables[t].n;
	}
	return NULL;
}

void api_route_at(size_t i, const char **method, const char **path)
{
	const struct api_route *r = route_at(i);
	if (r == NULL)
		return;
	*method = r->method;
	*path = r->pattern;
}

/*
 * Whether path matches pattern. With `call`, the {…} segments are copied into buf (cap
 * bytes) and call->path[] points at them.
 */
static bool match(const char *pattern, const char *path, struct api_call *call, char *buf,
                  size_t cap)
{
	size_t n_path = 0, used = 0;
	const char *p = pattern, *s = path;
	while (*p != '\0' && *s != '\0') {
		if (*p == '{') {
			const char *close = strchr(p, '}');
			const char *end = strchr(s, '/');
			size_t len = end ? (size_t)(end - s) : strlen(s);
			if (close == NULL || len == 0 || n_path >= API_PATH_PARAMS_MAX)
				return false;
			if (call != NULL) {
				if (used + len + 1 > cap)
					return false;
				memcpy(buf + used, s, len);
				buf[used + len] = '\0';
				call->path[n_path] = buf + used;
				used += len + 1;
			}
			n_path++;
			p = close + 1;
			s += len;
			continue;
		}
		if (*p != *s)
			return false;
		p++;
		s++;
	}
	if (*p != '\0' || *s != '\0')
		return false;
	if (call != NULL)
		call->n_path = n_path;
	return true;
}

/* HEAD is answered like GET (libmicrohttpd drops the body). */
static const char *effective_method(const char *method)
{
	return strcmp(method, "HEAD") == 0 ? "GET" : method;
}

int api_route_find(const char *method, const char *path)
{
	if (method == NULL || path == NULL)
		return -1;
	method = effective_method(method);
	size_t n = api_route_count();
	for (size_t i = 0; i < n; i++) {
		const struct api_route *r = route_at(i);
		if (strcmp(r->method, method) == 0 && match(r->pattern, path, NULL, NULL, 0))
			return (int)i;
	}
	return -1;
}

/* The first route whose pattern matches path, whatever its method, or NULL. */
static const struct api_route *route_of_path(const char *path)
{
	size_t n = api_route_count();
	for (size_t i = 0; i < n; i++) {
		const struct api_route *r = route_at(i);
		if (match(r->pattern, path, NULL, NULL, 0))
			return r;
	}
	return NULL;
}

/* The methods a path answers, for 405's Allow header ("" when none). */
static void allowed(const char *path, char *out, size_t cap)
{
	static const char *const order[] = {"GET", "POST", "PUT", "PATCH", "DELETE"};
	size_t n = api_route_count(), len = 0;
	out[0] = '\0';
	for (size_t m = 0; m < sizeof order / sizeof order[0]; m++) {
		for (size_t i = 0; i < n; i++) {
			const struct api_route *r = route_at(i);
			if (strcmp(r->method, order[m]) != 0 || !match(r->pattern, path, NULL, NULL, 0))
				continue;
			int w = snprintf(out + len, cap - len, "%s%s", len ? ", " : "", order[m]);
			if (w > 0 && (size_t)w < cap - len)
				len += (size_t)w;
			break;
		}
	}
}

static void render(const struct api_route *r, const struct otp_error *e,
                   struct api_response *resp)
{
	const struct api_dialect *d = r != NULL ? r->dialect : &api_dialect_compat;
	d->error(r, e, resp);
	snprintf(resp->reason, sizeof resp->reason, "%s", e->reason);
}

static bool basic_configured(const struct api_ctx *ctx)
{
	return ctx->cfg->http_auth_username != NULL && ctx->cfg->http_auth_password != NULL;
}

/* Whether a path is guarded by the compat dialect's Basic auth: its own routes, the
 * webhook without its own secret, and every unknown path. */
static bool basic_guarded(const struct api_ctx *ctx, const struct api_route *r)
{
	return r == NULL || r->auth == API_AUTH_BASIC ||
	       (r->auth == API_AUTH_WEBHOOK && ctx->cfg->telegram_webhook_secret == NULL);
}

void api_refuse(const struct api_ctx *ctx, const char *method, const char *path,
                const struct otp_error *e, struct api_response *resp)
{
	memset(resp, 0, sizeof *resp);
	int i = api_route_find(method, path);
	const struct api_route *r = i >= 0 ? route_at((size_t)i) : route_of_path(path);
	render(r, e, resp);
	resp->route = i;
	resp->basic_challenge = e->code == OTP_ERR_AUTH && basic_guarded(ctx, r);
}

static int collect(const struct api_route *r, const struct api_request *req, json_t **out,
                   struct otp_error *err)
{
	switch (r->body) {
	case API_BODY_COMPAT: return params_collect(req, out, err);
	case API_BODY_JSON: return params_collect_json(req, out, err);
	case API_BODY_FORM: return params_collect_form(req, out, err);
	case API_BODY_NONE: break;
	}
	struct api_request q = *req;
	q.body = NULL;
	q.body_len = 0;
	return params_collect(&q, out, err);
}

const char *api_header(const struct api_request *req, const char *name)
{
	for (size_t i = 0; i < req->n_headers; i++)
		if (strcasecmp(req->headers[i].key, name) == 0)
			return req->headers[i].value;
	return NULL;
}

void api_response_header(struct api_response *r, const char *name, const char *value)
{
	if (r->n_headers >= API_RESP_HEADERS_MAX)
		return;
	r->headers[r->n_headers].name = name;
	snprintf(r->headers[r->n_headers].value, sizeof r->headers[r->n_headers].value, "%s",
	         value);
	r->n_headers++;
}

void api_handle(const struct api_ctx *ctx, const struct api_request *req,
                struct api_response *resp)
{
	struct otp_error err = {0};
	struct api_call call;
	char pathbuf[PATH_MAX_BYTES];
	int rc;

	memset(resp, 0, sizeof *resp);
	memset(&call, 0, sizeof call);
	resp->status = 500;
	resp->route = api_route_find(req->method, req->path);
	call.req = req;
	const struct api_route *r = resp->route >= 0 ? route_at((size_t)resp->route) : NULL;
	const struct api_route *of_path = r != NULL ? r : route_of_path(req->path);

	/* Basic auth (when set) guards the compat paths, and unknown ones, so a scanner
	 * learns nothing without credentials: before 404 / 405. */
	if (basic_configured(ctx) && basic_guarded(ctx, of_path) &&
	    (rc = api_authenticate(ctx, API_AUTH_BASIC, &call, &err)) != 0) {
		render(of_path, &err, resp);
		resp->basic_challenge = true;
		return;
	}
	if (r == NULL) {
		char allow[64];
		allowed(req->path, allow, sizeof allow);
		if (allow[0] != '\0') {
			otp_error_set(&err, OTP_ERR_METHOD, "method_not_allowed", "",
			              "%s is not allowed on %s; use %s", req->method, req->path, allow);
			render(of_path, &err, resp);
			api_response_header(resp, "Allow", allow);
		} else {
			otp_error_set(&err, OTP_ERR_NOT_FOUND, "not_found", "", "Page not found");
			render(NULL, &err, resp);
		}
		return;
	}
	call.route = r;
	match(r->pattern, req->path, &call, pathbuf, sizeof pathbuf);
	if (!basic_guarded(ctx, r) && (rc = api_authenticate(ctx, r->auth, &call, &err)) != 0)
		goto fail;
	if ((rc = collect(r, req, &call.params, &err)) != 0)
		goto fail;
	rc = r->fn(ctx, &call, resp, &err);
	json_decref(call.params);
	if (rc == 0)
		return;
	api_response_fini(resp);
	resp->n_headers = 0;
fail:
	render(r, &err, resp);
}
