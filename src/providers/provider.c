/*
 * provider.c - the registry of delivery providers (name -> constructor, one table row per
 * provider) and the small helpers every provider shares: process-wide library init,
 * error text that never carries a code or a secret, bounded buffers.
 * It must not know how any provider talks to its service.
 */
#include "providers/impl.h"

#include <curl/curl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "core/num.h"

typedef struct provider *(*provider_ctor)(const struct config *cfg, char *err, size_t cap);

static const struct {
	const char *name;
	provider_ctor make;
} provider_table[] = {
	{"log", provider_log_new},
	{"queue", provider_queue_new},
	{"telegram", provider_telegram_new},
	{"telegram_bot", provider_telegram_bot_new},
	{"smtp", provider_smtp_new},
	{"twilio", provider_twilio_new},
	{"whatsapp", provider_whatsapp_new},
	{"webhook", provider_webhook_new},
};

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

int provider_known(const char *name)
{
	if (name == NULL)
		return 0;
	for (size_t i = 0; i < sizeof provider_table / sizeof provider_table[0]; i++)
		if (strcmp(provider_table[i].name, name) == 0)
			return 1;
	return 0;
}

struct provider *provider_new(const char *name, const struct config *cfg, char *err, size_t cap)
{
	if (cap > 0)
		err[0] = '\0';
	provider_global_init();
	for (size_t i = 0; name != NULL && i < sizeof provider_table / sizeof provider_table[0]; i++)
		if (strcmp(provider_table[i].name, name) == 0)
			return provider_table[i].make(cfg, err, cap);
	snprintf(err, cap, "unknown provider \"%s\" (known: log queue telegram telegram_bot smtp "
	         "twilio whatsapp webhook)", name ? name : "");
	return NULL;
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

int provider_http_send(const struct config *cfg, const struct provider_http_req *req,
                       struct provider_http_resp *resp, struct provider_result *r)
{
	resp->status = 0;
	resp->len = 0;
	resp->body[0] = '\0';
	int rc = provider_http_post(cfg, req, resp, r->error, sizeof r->error);
	if (rc != 0)
		return rc;
	rc = provider_http_classify(resp->status);
	if (rc != 0)
		snprintf(r->error, sizeof r->error, "HTTP %ld", resp->status);
	return rc;
}

int provider_post_json(const struct config *cfg, struct provider_http_req *req, json_t *doc,
                       struct provider_http_resp *resp, struct provider_result *r)
{
	resp->status = 0;
	if (doc == NULL)
		return provider_fail(r, OTP_ERR_PERMANENT, "message cannot be encoded as JSON");
	/* jansson checked every string when it was made: dumping fails only for memory */
	char *body = json_dumps(doc, PROVIDER_JSON_FLAGS);
	json_decref(doc);
	if (body == NULL)
		return provider_fail(r, OTP_ERR_NOMEM, "out of memory");
	req->content_type = "application/json";
	req->body = body;
	req->body_len = strlen(body);
	int rc = provider_http_send(cfg, req, resp, r);
	sodium_memzero(body, req->body_len);
	free(body);
	req->body = NULL;
	req->body_len = 0;
	return rc;
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
