/*
 * errors.h - the one error enum of otpd, and the small struct that carries a failure a
 * user should see (which field, what is wrong) up to the single place (http/) that turns
 * it into an HTTP answer. Pure: no I/O.
 */
#ifndef OTPD_CORE_ERRORS_H
#define OTPD_CORE_ERRORS_H

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
 * A failure a user should see. `status_code` is the compat dialect's machine-readable
 * code ("ip_limit", "invalid_parameter", ...), `field` the offending parameter (may be
 * empty), `message` the human sentence. Fixed-size so it never allocates.
 */
struct otp_error {
	int code;              /* enum otp_err */
	char field[32];
	char status_code[32];
	char message[256];
};

/* Fill `e` (may be NULL) and return `code`, so callers can `return otp_error_set(...)`. */
int otp_error_set(struct otp_error *e, int code, const char *status_code,
                  const char *field, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

const char *otp_err_name(int code);

#endif
