/*
 * framing.h - the checks otpd makes on a request head before it acts on it: message
 * framing as RFC 9112 requires it (one unambiguous body length, known transfer codings,
 * field names that are tokens, Host on HTTP/1.1), the size of the head and of the
 * request target, and control characters in the path and the query. Pure: no I/O, no
 * libmicrohttpd; http/server.c feeds it what libmicrohttpd parsed, the unit tests and
 * the fuzz target feed it bytes.
 */
#ifndef OTPD_HTTP_FRAMING_H
#define OTPD_HTTP_FRAMING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/errors.h"

/* A request head larger than this (request line and header fields) gets 431. */
#define HTTP_HEAD_MAX 16384
/* A request target (path and query) longer than this gets 414. */
#define HTTP_TARGET_MAX 8192

/* One header field as received; neither string needs a NUL at its end. */
struct http_field {
	const char *name;
	size_t name_len;
	const char *value;
	size_t value_len;
};

struct http_head {
	const char *version;              /* "HTTP/1.1", "HTTP/1.0" (NUL-terminated) */
	const struct http_field *fields;
	size_t n_fields;
	size_t head_bytes;                /* bytes of the request line and the fields */
};

/* How the body is delimited, when the head is acceptable. */
struct http_body_framing {
	bool chunked;                     /* Transfer-Encoding: chunked */
	bool has_length;                  /* Content-Length given */
	int64_t length;                   /* its value; INT64_MAX when beyond int64 */
};

/*
 * 0 with *out filled, or a negative code with e set: OTP_ERR_HEADERS (431: head over
 * HTTP_HEAD_MAX), OTP_ERR_INVALID (400: a field name that is not a token — whitespace
 * before the colon —, a control character in a field value, HTTP/1.1 without exactly
 * one Host, Content-Length and Transfer-Encoding together, a Content-Length that is not
 * digits or that differs from another, Transfer-Encoding on HTTP/1.0, chunked not
 * last or repeated), OTP_ERR_UNSUPPORTED (501: a transfer coding other than chunked).
 * Every such answer must close the connection: the body length is not known.
 */
int http_framing_check(const struct http_head *h, struct http_body_framing *out,
                       struct otp_error *e);

/*
 * The raw request target as the client sent it (origin-form `/p?q` or absolute-form
 * `http://host/p?q`): OTP_ERR_URI_TOO_LONG (414) over HTTP_TARGET_MAX, OTP_ERR_INVALID
 * (400) when the path or a query parameter's name or value holds a control character
 * (raw or percent-encoded: %00-%1F, %7F), naming the parameter. 0 otherwise.
 */
int http_target_check(const char *target, size_t len, struct otp_error *e);

/* The path of a request target: `target` itself for origin-form, the part after the
 * authority for absolute-form (`http://host/sms` -> `/sms`, `http://host` -> `/`). */
const char *http_target_path(const char *target);

#endif
