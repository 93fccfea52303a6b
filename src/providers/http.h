/*
 * http.h - the one outbound HTTP client of the providers: a POST with headers and a body
 * through libcurl, bounded in time (cfg->provider_timeout) and in the bytes of the answer
 * it keeps. It reports transport failures as text without the URL or credentials, and
 * maps HTTP statuses to "delivered / retry / permanent". Internal to src/providers/.
 * Thread-safety: a call with a session uses that session's easy handle (one session per
 * thread, so its connections are reused across that thread's deliveries: keep-alive);
 * a call without one uses a handle of its own. Callable from any thread.
 */
#ifndef OTPD_PROVIDERS_HTTP_H
#define OTPD_PROVIDERS_HTTP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include <curl/curl.h>

#include "config.h"
#include "providers/provider.h"

#define PROVIDER_HTTP_BODY_MAX 16384u /* bytes of an answer kept; the rest is dropped */

struct provider_http_req {
	const char *url;
	const char *content_type;    /* "application/json", ... */
	const char *body;
	size_t body_len;
	const char *const *headers;  /* extra "Name: value" lines, NULL-terminated; may be NULL */
	const char *basic_user;      /* HTTP Basic auth when both are set */
	const char *basic_password;
	const char *redact;          /* a secret that must never appear in an error (a token
	                                that is part of the URL); may be NULL */
	const atomic_bool *cancel;   /* the provider's cancel flag: abort when set; may be NULL */
};

/* libcurl progress callback that aborts the transfer once *(atomic_bool *)data is set;
 * also used by the smtp provider for its own handle. */
int provider_curl_cancel_cb(void *data, curl_off_t dltotal, curl_off_t dlnow,
                            curl_off_t ultotal, curl_off_t ulnow);

struct provider_http_resp {
	long status;                 /* HTTP status of the answer */
	size_t len;                  /* bytes kept in body */
	bool truncated;              /* the answer was longer than PROVIDER_HTTP_BODY_MAX */
	char body[PROVIDER_HTTP_BODY_MAX + 1]; /* NUL-terminated */
};

/*
 * POST req and read the answer into *resp. Returns 0 when an HTTP answer arrived,
 * whatever its status; OTP_ERR_PROVIDER when none did (connection refused, DNS, TLS,
 * timeout: worth retrying); OTP_ERR_PERMANENT when the URL itself is unusable;
 * OTP_ERR_NOMEM. On failure err holds a short reason: no URL, no credentials.
 */
int provider_http_post(const struct config *cfg, struct provider_session *s,
                       const struct provider_http_req *req, struct provider_http_resp *resp,
                       char *err, size_t cap);

/* The easy handle to use for one transfer: the session's, reset to libcurl's defaults
 * but keeping its live connections (curl_easy_reset), or a new one when s is NULL.
 * Give it back with provider_session_put. NULL when out of memory. */
CURL *provider_session_get(struct provider_session *s);
void provider_session_put(struct provider_session *s, CURL *h);

/* 0 for 2xx; OTP_ERR_PROVIDER for 408, 429 and 5xx (try again later); OTP_ERR_PERMANENT
 * for everything else (4xx, redirects we do not follow, nonsense). */
int provider_http_classify(long status);

#endif
