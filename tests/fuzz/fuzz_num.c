/*
 * fuzz_num.c - libFuzzer target for otp_parse_i64() (src/core/num.h), the one parser of
 * every number that comes from outside. Differential: the result must match a plain
 * reference parser of the documented grammar (optional sign, decimal digits, nothing
 * else; value within [min, max]).
 * Input: 8 bytes min, 8 bytes max (little-endian; swapped when min > max), the rest is
 * the text (cut at the first NUL, as a C string would be).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "core/num.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) { \
	fprintf(stderr, "%s:%d: contract broken: %s\n", __FILE__, __LINE__, #cond); \
	abort(); } } while (0)

static int64_t le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return (int64_t)v;
}

/* The grammar of num.h, written out independently of strtoll. */
static bool reference(const char *s, int64_t min, int64_t max, int64_t *out)
{
	bool neg = false;
	if (*s == '+' || *s == '-')
		neg = *s++ == '-';
	if (*s == '\0')
		return false;
	/* accumulate the magnitude as uint64; INT64_MIN's magnitude is 2^63 */
	uint64_t mag = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		unsigned d = (unsigned)(*s - '0');
		if (mag > (limit - d) / 10)
			return false;
		mag = mag * 10 + d;
	}
	int64_t v = neg ? (mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag)
	                : (int64_t)mag;
	if (v < min || v > max)
		return false;
	*out = v;
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 16)
		return 0;
	int64_t min = le64(data), max = le64(data + 8);
	if (min > max) {
		int64_t t = min;
		min = max;
		max = t;
	}
	char *s = strndup((const char *)data + 16, size - 16);
	if (s == NULL)
		abort();
	int64_t got = 0, want = 0;
	int rc = otp_parse_i64(s, min, max, &got);
	bool ok = reference(s, min, max, &want);
	if (ok) {
		CHECK(rc == 0);
		CHECK(got == want);
	} else {
		CHECK(rc == OTP_ERR_INVALID);
	}
	free(s);
	return 0;
}
