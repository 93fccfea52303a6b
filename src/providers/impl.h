/*
 * impl.h - what the provider implementations share (common.c: errors, buffers, library
 * init; http.c: the outbound HTTP client). Internal to src/providers/ (and its unit
 * test): the rest of otpd goes through provider.h only. Each provider file defines one
 * `const struct provider_def provider_<name>_def` for the registry (list.h).
 * Constructors borrow cfg: it must outlive the provider (the configuration is immutable
 * and lives as long as the process). They check their settings and return NULL with a
 * reason naming the missing or bad variable.
 * Layering inside the folder: common.c <- http.c <- each provider <- provider.c (the
 * registry); nothing calls back up.
 */
#ifndef OTPD_PROVIDERS_IMPL_H
#define OTPD_PROVIDERS_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "providers/http.h"
#include "providers/provider.h"

/* JSON as the old service's PHP json_encode wrote it: no spaces, keys in insertion
 * order. (PHP also wrote "/" as "\/"; jansson does not, and both parse the same.) */
#define PROVIDER_JSON_FLAGS (JSON_COMPACT | JSON_PRESERVE_ORDER)


/* curl_global_init and sodium_init, exactly once per process, from any thread. */
void provider_global_init(void);

/* 1 when s is NULL or empty. */
bool provider_unset(const char *s);

/* A setting a provider cannot work without: its variable's name and its value. */
struct provider_setting {
	const char *var;
	const char *value;
};

/* true when every setting is set; else false with "<provider>: <VAR> is not set" in err
 * for the first one missing. */
bool provider_require(const char *provider, const struct provider_setting *need, size_t n,
                      char *err, size_t cap);

/* Fill r->error from a format and return rc, so a send can `return provider_fail(...)`. */
int provider_fail(struct provider_result *r, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Blank out every occurrence of `code` and `secret` (either may be NULL) in r->error, so a
 * provider's answer that echoes them can never carry them into logs or the database. */
void provider_result_scrub(struct provider_result *r, const char *code, const char *secret);

/* Copy an answer's text (a provider's error description) into out for an error
 * message: control characters become spaces, at most cap-1 bytes, cut on a UTF-8
 * character boundary. */
void provider_copy_detail(char *out, size_t cap, const char *detail);

/*
 * POST req and classify the answer: returns 0 for 2xx, OTP_ERR_PROVIDER or
 * OTP_ERR_PERMANENT otherwise (see provider_http_classify), with r->error set to
 * "HTTP <status>" or the transport failure. resp holds the answer whenever one came
 * (resp->status != 0), so the caller can refine the error from its body.
 */
int provider_http_send(const struct config *cfg, struct provider_session *s,
                       const struct provider_http_req *req, struct provider_http_resp *resp,
                       struct provider_result *r);

/*
 * provider_http_send of a JSON document: `doc` (owned: always released) is encoded with
 * PROVIDER_JSON_FLAGS as the body of req (whose body and content_type are set here), and
 * the encoded bytes, which hold the code, are wiped after the send. A NULL doc (it could
 * not be built) fails as OTP_ERR_PERMANENT, an encoding out of memory as OTP_ERR_NOMEM
 * (both with resp->status 0).
 */
int provider_post_json(const struct config *cfg, struct provider_session *s,
                       struct provider_http_req *req, json_t *doc,
                       struct provider_http_resp *resp, struct provider_result *r);

/* Parse a chat id (decimal, may be negative) as Telegram wants it. 0 or OTP_ERR_INVALID. */
int provider_parse_chat_id(const char *target, int64_t *out);

/* A growable byte buffer with a hard maximum: appends past `max` or failed allocations
 * set `failed` and are dropped, so builders check once at the end. p is NUL-terminated
 * whenever len > 0 and !failed. */
struct provider_buf {
	char *p;
	size_t len, cap, max;
	bool failed;
};

void provider_buf_init(struct provider_buf *b, size_t max);
void provider_buf_add(struct provider_buf *b, const void *s, size_t n);
void provider_buf_adds(struct provider_buf *b, const char *s);
void provider_buf_addf(struct provider_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Wipes the bytes (they may hold a code) and frees them. */
void provider_buf_fini(struct provider_buf *b);

#endif
