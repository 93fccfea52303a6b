/*
 * common.c - what every provider shares and that needs nothing else of the folder:
 * process-wide library init, error text that never carries a code or a secret,
 * required settings, chat ids and bounded buffers. It must not know any provider or
 * how one talks to its service.
 */
#include <curl/curl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "core/num.h"
#include "providers/impl.h"

static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static void global_init_once(void)
{
	/* Failures surface later, at the first curl_easy_init; sodium_init fails only
	 * without a random source, which main() has already checked. */
	CURLcode cc = curl_global_init(CURL_GLOBAL_DEFAULT);
	int sr = sodium_init();
	(void)cc;
	(void)sr;
}

void provider_global_init(void)
{
	pthread_once(&global_once, global_init_once);
}

bool provider_unset(const char *s)
{
	return s == NULL || s[0] == '\0';
}

bool provider_require(const char *provider, const struct provider_setting *need, size_t n,
                      char *err, size_t cap)
{
	for (size_t i = 0; i < n; i++) {
		if (provider_unset(need[i].value)) {
			snprintf(err, cap, "%s: %s is not set", provider, need[i].var);
			return false;
		}
	}
	return true;
}

int provider_fail(struct provider_result *r, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->error, sizeof r->error, fmt, ap);
	va_end(ap);
	return rc;
}

static void blank_all(char *s, const char *needle)
{
	size_t n = needle ? strlen(needle) : 0;
	if (n == 0)
		return;
	for (char *p = strstr(s, needle); p != NULL; p = strstr(p + n, needle))
		memset(p, '*', n);
}

void provider_result_scrub(struct provider_result *r, const char *code, const char *secret)
{
	r->error[sizeof r->error - 1] = '\0';
	blank_all(r->error, secret);
	blank_all(r->error, code);
}

void provider_copy_detail(char *out, size_t cap, const char *detail)
{
	if (cap == 0)
		return;
	size_t n = 0;
	for (const unsigned char *p = (const unsigned char *)(detail ? detail : ""); *p; p++) {
		if (n + 1 >= cap)
			break;
		out[n++] = (*p < 0x20 || *p == 0x7f) ? ' ' : (char)*p;
	}
	/* do not leave half a UTF-8 character at the cut */
	size_t keep = n;
	while (keep > 0 && ((unsigned char)out[keep - 1] & 0xC0) == 0x80)
		keep--;
	if (keep > 0 && (unsigned char)out[keep - 1] >= 0xC0) {
		unsigned char lead = (unsigned char)out[keep - 1];
		size_t want = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
		if (n - (keep - 1) == want)
			keep = n;
		else
			keep--;
	} else {
		keep = n;
	}
	out[keep] = '\0';
}

int provider_parse_chat_id(const char *target, int64_t *out)
{
	if (target == NULL)
		return OTP_ERR_INVALID;
	return otp_parse_i64(target, INT64_MIN, INT64_MAX, out);
}

void provider_buf_init(struct provider_buf *b, size_t max)
{
	b->p = NULL;
	b->len = 0;
	b->cap = 0;
	b->max = max;
	b->failed = false;
}

void provider_buf_add(struct provider_buf *b, const void *s, size_t n)
{
	if (b->failed)
		return;
	if (n > b->max || b->len > b->max - n) {
		b->failed = true;
		return;
	}
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		if (cap > b->max + 1)
			cap = b->max + 1;
		char *p = malloc(cap);
		if (p == NULL) {
			b->failed = true;
			return;
		}
		if (b->len > 0)
			memcpy(p, b->p, b->len);
		if (b->p != NULL) {
			sodium_memzero(b->p, b->cap);
			free(b->p);
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

void provider_buf_adds(struct provider_buf *b, const char *s)
{
	provider_buf_add(b, s, strlen(s));
}

void provider_buf_addf(struct provider_buf *b, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof tmp) {
		b->failed = true;
		return;
	}
	provider_buf_add(b, tmp, (size_t)n);
	sodium_memzero(tmp, sizeof tmp);
}

void provider_buf_fini(struct provider_buf *b)
{
	if (b->p != NULL) {
		sodium_memzero(b->p, b->cap);
		free(b->p);
	}
	provider_buf_init(b, b->max);
}
