/*
 * errors.h - the one error enum of otpd, and the small struct that carries a failure a
 * user should see (which field, what is wrong) up to the single place (http/) that turns
 * it into an HTTP answer. Pure: no I/O.
 */
#ifndef OTPD_CORE_ERRORS_H
#define OTPD_CORE_ERRORS_H

#include <stdint.h>

/* Functions return 0 or one of these (negative). */
enum otp_err {
	OTP_OK = 0,
	OTP_ERR_INVALID = -1,     /* bad input: 400 */
	OTP_ERR_NOMEM = -2,       /* allocation failed: 500 */
	OTP_ERR_STORE = -3,       /* database failed or unreachable: 503 */
	OTP_ERR_NOT_FOUND = -4,   /* 404 */
	OTP_ERR_LIMIT = -5,       /* a rate limit refused the send: 400 (compat) / 429 */
	OTP_ERR_DISABLED = -6,    /* feature off by configuration: 403 */
	OTP_ERR_AUTH = -7,        /* 401 */
	OTP_ERR_TOO_LARGE = -8,   /* body over the limit: 413 */
	OTP_ERR_METHOD = -9,      /* known path, wrong method: 405 */
	OTP_ERR_INTERNAL = -10,   /* a bug or an impossible state: 500 */
	OTP_ERR_PROVIDER = -11,   /* a delivery provider failed (retryable) */
	OTP_ERR_PERMANENT = -12,  /* a delivery provider refused for good (not retryable) */
	OTP_ERR_CONFLICT = -13,   /* 409 */
	OTP_ERR_HEADERS = -14,    /* too many or too large request headers: 431 */
	OTP_ERR_URI_TOO_LONG = -15, /* request target over the limit: 414 */
	OTP_ERR_UNSUPPORTED = -16, /* a transfer coding otpd does not implement: 501 */
};

/*
 * A failure a user should see, dialect-neutral. `reason` is a stable machine code that
 * every dialect maps to its own shape and status (see below), `field` the offending
 * parameter (may be empty), `message` the human sentence. Fixed-size so it never
 * allocates.
 *
 * Reasons: missing_parameter, invalid_parameter, invalid_json, invalid_form,
 * unauthorized, forbidden, not_found, method_not_allowed, too_large, too_many_headers,
 * ip_limit, target_limit, resend_cooldown, max_sends_reached, max_attempts_reached,
 * not_pending, conflict, idempotency_mismatch, code_not_kept, channel_not_allowed,
 * disabled, unavailable, internal.
 */
struct otp_error {
	int code;              /* enum otp_err: the class */
	char field[48];
	char reason[32];
	char message[256];
	int64_t retry_after;   /* seconds until a refusal ends (resend_cooldown); 0: none */
};

/* Fill `e` (may be NULL) and return `code`, so callers can `return otp_error_set(...)`. */
int otp_error_set(struct otp_error *e, int code, const char *reason,
                  const char *field, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

const char *otp_err_name(int code);

#endif
