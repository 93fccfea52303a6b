/*
 * num.h - the one range-checked integer parser for every number that comes from outside
 * (environment, query strings, JSON strings). Pure.
 */
#ifndef OTPD_CORE_NUM_H
#define OTPD_CORE_NUM_H

#include <stdint.h>

/* Parse all of `s` (optional sign, decimal digits; no spaces, no trailing bytes) into
 * *out within [min, max]. Returns 0 or OTP_ERR_INVALID. */
int otp_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out);

#endif
