/*
 * text.h - the one UTF-8 validator of otpd, and the one way text from outside (a
 * provider's error, a request id) is made safe to store. Pure.
 */
#ifndef OTPD_CORE_TEXT_H
#define OTPD_CORE_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF) of the n bytes at s, as
 * jansson checks it. A NUL byte is valid UTF-8: callers that take C strings pass strlen. */
bool otp_utf8_valid(const char *s, size_t n);

/* Copy at most cap-1 bytes of `in` (NULL: ""), keeping whole UTF-8 sequences and turning
 * bytes that are not valid UTF-8 into '?'. */
void otp_text_clean(char *out, size_t cap, const char *in);

/* Whether s holds a byte below 0x20 or 0x7f (tab, CR and LF too unless allow_newlines). */
bool otp_has_control(const char *s, bool allow_newlines);

#endif
