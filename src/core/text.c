/*
 * text.c - UTF-8 validation and cleaning (text.h). Pure.
 */
#include "core/text.h"

#include <stdint.h>
#include <string.h>

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when it does not start one. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	if (c < 0x80)
		return 1;
	size_t len;
	uint32_t cp;
	if (c >= 0xC2 && c <= 0xDF) {
		len = 2;
		cp = c & 0x1F;
	} else if (c >= 0xE0 && c <= 0xEF) {
		len = 3;
		cp = c & 0x0F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		len = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (len > n)
		return 0;
	for (size_t k = 1; k < len; k++) {
		if ((s[k] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[k] & 0x3F);
	}
	if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
	    (cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return len;
}

bool otp_utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;
	while (i < n) {
		size_t len = utf8_seq(p + i, n - i);
		if (len == 0)
			return false;
		i += len;
	}
	return true;
}

void otp_text_clean(char *out, size_t cap, const char *in)
{
	if (cap == 0)
		return;
	const unsigned char *p = (const unsigned char *)(in ? in : "");
	size_t n = strlen((const char *)p), i = 0, o = 0;
	while (i < n) {
		size_t len = utf8_seq(p + i, n - i);
		if (len == 0) {
			if (o + 1 >= cap)
				break;
			out[o++] = '?';
			i++;
			continue;
		}
		if (o + len >= cap)
			break;
		memcpy(out + o, p + i, len);
		o += len;
		i += len;
	}
	out[o] = '\0';
}

bool otp_has_control(const char *s, bool allow_newlines)
{
	for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
		bool ctl = *c < 0x20 || *c == 0x7f;
		if (ctl && !(allow_newlines && (*c == '\n' || *c == '\r' || *c == '\t')))
			return true;
	}
	return false;
}
