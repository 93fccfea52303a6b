/*
 * num.c - strict decimal integer parsing with bounds. Pure.
 */
#include "core/num.h"

#include <errno.h>
#include <stdlib.h>

#include "core/errors.h"

int otp_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out)
{
	if (s == NULL)
		return OTP_ERR_INVALID;
	const char *p = s;
	if (*p == '+' || *p == '-')
		p++;
	if (*p < '0' || *p > '9')
		return OTP_ERR_INVALID; /* strtoll would skip spaces and accept "" */
	errno = 0;
	char *end = NULL;
	long long v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0')
		return OTP_ERR_INVALID;
	if (v < min || v > max)
		return OTP_ERR_INVALID;
	*out = (int64_t)v;
	return 0;
}
