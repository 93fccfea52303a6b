/*
 * api.h - the dialects' entry point. http/ turns a libmicrohttpd request into a plain
 * `struct api_request`, calls api_handle(), and writes the `struct api_response` back.
 * Nothing here knows about libmicrohttpd; everything here knows the dialects' shapes.
 * Thread-safety: `struct api_ctx` is immutable after init and shared by every HTTP
 * thread; api_handle() is reentrant.
 */
#ifndef OTPD_API_API_H
#define OTPD_API_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/metrics.h"
#include "config.h"
#include "core/otp.h"
#include "store/store.h"
#include "verify/verify.h"

struct api_kv {
	const char *key;
	const char *value; /* never NULL ("" for `?flag`) */
};

#define API_QUERY_MAX 64
#define API_HEADERS_MAX 64    /* more header lines than this: 431 */

/* One request as http/ hands it over. Every pointer is owned by http/ and valid for the
 * duration of api_handle(). */
struct api_request {
	const char *method;           /* any token the client sent: GET, HEAD, PUT, PATCH... */
	const char *path;             /* percent-decoded path, without the query */
	const char *request_id;
	const struct api_kv *query;   /* URL-decoded query arguments, in order */
	size_t n_query;
	const struct api_kv *headers; /* request headers, names as sent, in order */
	size_t n_headers;
	const char *content_type;     /* Content-Type header, or NULL */
	const char *client_ip;        /* the peer's address as text ("" when unknown) */
	const char *body;             /* may be NULL; not NUL-terminated */
	size_t body_len;
};

/* The value of the first header called `name` (compared case-insensitively), or NULL. */
const char *api_header(const struct api_request *req, const char *name);

#define API_RESP_HEADERS_MAX 4

struct api_response {
	int status;                   /* HTTP status */
	json_t *body;                 /* owned: freed by api_response_fini */
	char *text;                   /* owned: a body that is not JSON (then body is NULL) */
	const char *content_type;     /* of text: static string */
	int route;                    /* the route that answered (routes.h), -1: none */
	bool basic_challenge;         /* 401 of Basic auth: add WWW-Authenticate */
	char reason[32];              /* an error answer's otp_error reason, else "" */
	/* more headers (Retry-After, Location...): name static, value owned here */
	struct {
		const char *name;
		char value[192];
	} headers[API_RESP_HEADERS_MAX];
	int n_headers;
};

/* Add a header to an answer (ignored past API_RESP_HEADERS_MAX). */
void api_response_header(struct api_response *r, const char *name, const char *value);

void api_response_fini(struct api_response *r);

/* Everything a handler needs, wired by main. */
struct api_ctx {
	const struct config *cfg;
	struct verify_env verify;              /* the verification service */
	struct store *store;
	const struct otp_key *key;
	const struct otp_rng *rng;
	int64_t (*now)(void);                  /* unix seconds */
	void (*notify)(void *arg);             /* a delivery job was committed */
	void *notify_arg;
	struct api_metrics *metrics;           /* counters of GET /metrics; may be NULL */
	/* the outbox's outcomes so far, for GET /metrics; NULL when there is no outbox */
	void (*delivery_stats)(void *arg, struct api_delivery_stats *out);
	void *delivery_stats_arg;
};

/* Route and answer one request. Always fills resp (never fails). */
void api_handle(const struct api_ctx *ctx, const struct api_request *req,
                struct api_response *resp);

/* Answer a request that http/ refuses itself (413 before the body is read, a bad query
 * string...) in the shape of the dialect whose route (method, path) names, or the
 * generic JSON shape when none does. Fills resp (never fails). */
void api_refuse(const struct api_ctx *ctx, const char *method, const char *path,
                const struct otp_error *e, struct api_response *resp);

#endif
