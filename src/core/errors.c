/*
 * errors.c - filling struct otp_error. Pure.
 */
#include "core/errors.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void copy_bounded(char *dst, size_t cap, const char *src)
{
	if (src == NULL)
		src = "";
	size_t n = strlen(src);
	if (n >= cap)
		n = cap - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

int otp_error_set(struct otp_error *e, int code, const char *reason,
                  const char *field, const char *fmt, ...)
{
	if (e == NULL)
		return code;
	e->code = code;
	e->retry_after = 0;
	copy_bounded(e->reason, sizeof e->reason, reason);
	copy_bounded(e->field, sizeof e->field, field);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->message, sizeof e->message, fmt, ap);
	va_end(ap);
	return code;
}

const char *otp_err_name(int code)
{
	switch (code) {
	case OTP_OK: return "ok";
	case OTP_ERR_INVALID: return "invalid";
	case OTP_ERR_NOMEM: return "nomem";
	case OTP_ERR_STORE: return "store";
	case OTP_ERR_NOT_FOUND: return "not_found";
	case OTP_ERR_LIMIT: return "limit";
	case OTP_ERR_DISABLED: return "disabled";
	case OTP_ERR_AUTH: return "auth";
	case OTP_ERR_TOO_LARGE: return "too_large";
	case OTP_ERR_METHOD: return "method";
	case OTP_ERR_INTERNAL: return "internal";
	case OTP_ERR_PROVIDER: return "provider";
	case OTP_ERR_PERMANENT: return "permanent";
	case OTP_ERR_CONFLICT: return "conflict";
	case OTP_ERR_HEADERS: return "headers";
	case OTP_ERR_URI_TOO_LONG: return "uri_too_long";
	case OTP_ERR_UNSUPPORTED: return "unsupported";
	}
	return "unknown";
}
