/*
 * params.c - merging query and body into one parameter object, and the strict readers of
 * each field kind. Pure apart from allocation.
 */
#include "api/params.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/num.h"
#include "core/text.h"

static bool utf8_valid(const unsigned char *s, size_t n)
{
	return otp_utf8_valid((const char *)s, n);
}

/* "\"field\" <what>" as a 400 naming the field. */
static int invalid(struct otp_error *err, const char *field, const char *what)
{
	return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", field, "\"%s\" %s",
	                     field, what);
}

int params_missing(const char *name, struct otp_error *err)
{
	return otp_error_set(err, OTP_ERR_INVALID, "missing_parameter", name,
	                     "\"%s\" parameter must be set", name);
}

/* The query arguments as a JSON object of strings (a later duplicate wins, as in PHP). */
static int query_object(const struct api_request *req, json_t **out, struct otp_error *err)
{
	*out = NULL;
	json_t *p = json_object();
	if (p == NULL)
		return otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
	for (size_t i = 0; i < req->n_query; i++) {
		const struct api_kv *kv = &req->query[i];
		if (!utf8_valid((const unsigned char *)kv->key, strlen(kv->key)) ||
		    !utf8_valid((const unsigned char *)kv->value, strlen(kv->value))) {
			json_decref(p);
			return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "",
			                     "the query string is not valid UTF-8");
		}
		if (json_object_set_new(p, kv->key, json_string(kv->value)) != 0) {
			json_decref(p);
			return otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
		}
	}
	*out = p;
	return 0;
}

static bool body_empty(const struct api_request *req)
{
	size_t b = 0;
	while (req->body != NULL && b < req->body_len &&
	       (req->body[b] == ' ' || req->body[b] == '\t' || req->body[b] == '\r' ||
	        req->body[b] == '\n'))
		b++;
	return req->body == NULL || b == req->body_len;
}

/* Merge the JSON object body into p (body fields win). */
static int merge_json_body(const struct api_request *req, json_t *p, struct otp_error *err)
{
	json_error_t jerr;
	json_t *body = json_loadb(req->body, req->body_len,
	                          JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
	if (body == NULL) {
		if (json_error_code(&jerr) == json_error_invalid_utf8)
			return otp_error_set(err, OTP_ERR_INVALID, "invalid_json", "",
			                     "the body is not valid UTF-8");
		if (json_error_code(&jerr) == json_error_duplicate_key)
			return otp_error_set(err, OTP_ERR_INVALID, "invalid_json", "",
			                     "the body has a duplicate key: %s", jerr.text);
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_json", "",
		                     "the body is not valid JSON: %s at line %d column %d",
		                     jerr.text, jerr.line, jerr.column);
	}
	int rc = 0;
	if (json_is_null(body)) {
		rc = 0;
	} else if (!json_is_object(body)) {
		rc = otp_error_set(err, OTP_ERR_INVALID, "invalid_json", "",
		                   "the body must be a JSON object");
	} else if (json_object_update(p, body) != 0) {
		rc = otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
	}
	json_decref(body);
	return rc;
}

int params_collect(const struct api_request *req, json_t **out, struct otp_error *err)
{
	json_t *p = NULL;
	int rc = query_object(req, &p, err);
	/* An empty or all-white-space body means "no body" (GET requests usually). */
	if (rc == 0 && !body_empty(req))
		rc = merge_json_body(req, p, err);
	if (rc != 0) {
		json_decref(p);
		return rc;
	}
	*out = p;
	return 0;
}

/* The media type of a Content-Type value, without parameters, compared to `want`. */
static bool media_type_is(const char *ct, const char *want)
{
	if (ct == NULL)
		return false;
	while (*ct == ' ' || *ct == '\t')
		ct++;
	size_t n = strlen(want);
	if (strncasecmp(ct, want, n) != 0)
		return false;
	const char *rest = ct + n;
	while (*rest == ' ' || *rest == '\t')
		rest++;
	return *rest == '\0' || *rest == ';';
}

int params_collect_json(const struct api_request *req, json_t **out, struct otp_error *err)
{
	json_t *p = NULL;
	int rc = query_object(req, &p, err);
	if (rc == 0 && !body_empty(req)) {
		if (!media_type_is(req->content_type, "application/json"))
			rc = otp_error_set(err, OTP_ERR_INVALID, "invalid_json", "Content-Type",
			                   "the body must be JSON, sent with Content-Type: "
			                   "application/json");
		else
			rc = merge_json_body(req, p, err);
	}
	if (rc != 0) {
		json_decref(p);
		return rc;
	}
	*out = p;
	return 0;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Percent-decode s[0..n) ('+' is a space) into a malloc'd string; NULL for a bad escape,
 * a NUL byte, invalid UTF-8, or no memory (*nomem). */
static char *form_decode(const char *s, size_t n, bool *nomem)
{
	char *out = malloc(n + 1);
	size_t o = 0;
	if (out == NULL) {
		*nomem = true;
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == '+') {
			c = ' ';
		} else if (c == '%') {
			if (i + 2 >= n) {
				free(out);
				return NULL;
			}
			int a = hex_digit(s[i + 1]), b = hex_digit(s[i + 2]);
			if (a < 0 || b < 0) {
				free(out);
				return NULL;
			}
			c = (char)(a * 16 + b);
			i += 2;
		}
		if (c == '\0') {
			free(out);
			return NULL;
		}
		out[o++] = c;
	}
	out[o] = '\0';
	if (!otp_utf8_valid(out, o)) {
		free(out);
		return NULL;
	}
	return out;
}

int params_collect_form(const struct api_request *req, json_t **out, struct otp_error *err)
{
	json_t *p = NULL;
	int rc = query_object(req, &p, err);
	if (rc != 0)
		return rc;
	if (!body_empty(req)) {
		if (!media_type_is(req->content_type, "application/x-www-form-urlencoded")) {
			json_decref(p);
			return otp_error_set(err, OTP_ERR_INVALID, "invalid_form", "Content-Type",
			                     "the body must be sent with Content-Type: "
			                     "application/x-www-form-urlencoded");
		}
		const char *b = req->body, *end = req->body + req->body_len;
		size_t fields = 0;
		while (b < end) {
			const char *amp = memchr(b, '&', (size_t)(end - b));
			const char *stop = amp ? amp : end;
			const char *eq = memchr(b, '=', (size_t)(stop - b));
			if (stop > b) {
				bool nomem = false;
				const char *vstart = eq ? eq + 1 : stop;
				char *k = form_decode(b, (size_t)((eq ? eq : stop) - b), &nomem);
				char *v = k ? form_decode(vstart, (size_t)(stop - vstart), &nomem) : NULL;
				if (k == NULL || v == NULL || ++fields > PARAMS_FORM_FIELDS_MAX ||
				    k[0] == '\0') {
					free(k);
					free(v);
					json_decref(p);
					if (nomem)
						return otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
					return otp_error_set(err, OTP_ERR_INVALID, "invalid_form", "",
					                     fields > PARAMS_FORM_FIELDS_MAX
					                     ? "the body has too many fields"
					                     : "the body is not valid form data: a bad %%-escape, "
					                       "a NUL byte, an empty name or invalid UTF-8");
				}
				rc = json_object_set_new(p, k, json_string(v));
				free(k);
				otp_secret_free(v); /* a value may be a code */
				if (rc != 0) {
					json_decref(p);
					return otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
				}
			}
			b = amp ? amp + 1 : end;
		}
	}
	*out = p;
	return 0;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; }

/* Trimmed copy of s (malloc'd), or NULL on allocation failure. */
static char *trimmed(const char *s)
{
	while (is_space(*s))
		s++;
	size_t n = strlen(s);
	while (n > 0 && is_space(s[n - 1]))
		n--;
	return strndup(s, n);
}

static const char *type_name(json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_TRUE:
	case JSON_FALSE: return "a boolean";
	case JSON_INTEGER: return "a number";
	case JSON_REAL: return "a number";
	case JSON_NULL: return "null";
	case JSON_STRING: return "a string";
	}
	return "of an unknown type";
}

int params_string(json_t *p, const char *name, bool required, bool cast_numbers,
                  size_t max_bytes, bool allow_newlines, char **out, struct otp_error *err)
{
	*out = NULL;
	json_t *v = json_object_get(p, name);
	char *s = NULL;
	char num[64];
	if (v == NULL || json_is_null(v))
		goto missing;
	if (json_is_string(v)) {
		s = trimmed(json_string_value(v));
	} else if (cast_numbers && json_is_integer(v)) {
		snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		s = strdup(num);
	} else if (cast_numbers && json_is_real(v)) {
		/* PHP's (string) of a float: shortest form that round-trips */
		snprintf(num, sizeof num, "%.17g", json_real_value(v));
		double back = strtod(num, NULL);
		for (int prec = 1; prec <= 17; prec++) {
			snprintf(num, sizeof num, "%.*g", prec, json_real_value(v));
			if (strtod(num, NULL) == back)
				break;
		}
		s = strdup(num);
	} else {
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", name,
		                     "\"%s\" must be a string, not %s", name, type_name(v));
	}
	if (s == NULL)
		return otp_error_set(err, OTP_ERR_NOMEM, "", name, "out of memory");
	if (s[0] == '\0') {
		free(s);
		goto missing;
	}
	if (strlen(s) > max_bytes) {
		free(s);
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", name,
		                     "\"%s\" must be at most %zu bytes", name, max_bytes);
	}
	for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
		bool ctl = *c < 0x20 || *c == 0x7f;
		if (ctl && !(allow_newlines && (*c == '\n' || *c == '\r' || *c == '\t'))) {
			free(s);
			return invalid(err, name, "must not contain control characters");
		}
	}
	*out = s;
	return 0;
missing:
	return required ? params_missing(name, err) : 0;
}

int params_phone(json_t *p, const char *name, bool required, char **out, struct otp_error *err)
{
	char *s = NULL;
	*out = NULL;
	json_t *v = json_object_get(p, name);
	if (v != NULL && !json_is_null(v) && !json_is_string(v))
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", name,
		                     "\"%s\" must be a string of digits, not %s", name, type_name(v));
	int rc = params_string(p, name, required, false, OTP_TARGET_MAX, false, &s, err);
	if (rc != 0 || s == NULL)
		return rc;
	const char *d = s[0] == '+' ? s + 1 : s;
	size_t n = strlen(d);
	bool ok = n >= 5 && n <= 20;
	for (size_t i = 0; ok && i < n; i++)
		ok = d[i] >= '0' && d[i] <= '9';
	if (!ok) {
		free(s);
		return invalid(err, name, "must be a phone number: 5 to 20 digits, "
		                          "optionally after a leading +");
	}
	*out = strdup(d);
	free(s);
	return *out ? 0 : otp_error_set(err, OTP_ERR_NOMEM, "", name, "out of memory");
}

static bool email_plausible(const char *s)
{
	size_t n = strlen(s);
	if (n > 254)
		return false;
	const char *at = strrchr(s, '@');
	if (at == NULL || at == s || at - s > 64 || strchr(s, '@') != at)
		return false;
	const char *dom = at + 1;
	size_t dl = strlen(dom);
	if (dl < 3 || strchr(dom, '.') == NULL || dom[0] == '.' || dom[dl - 1] == '.' ||
	    dom[0] == '-' || strstr(dom, "..") != NULL)
		return false;
	if (s[0] == '.' || at[-1] == '.' || strstr(s, "..") != NULL)
		return false;
	for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
		if (*c <= ' ' || *c == 0x7f || *c == '<' || *c == '>' || *c == '(' || *c == ')' ||
		    *c == ',' || *c == ';' || *c == ':' || *c == '\\' || *c == '"' || *c == '[' ||
		    *c == ']')
			return false;
	}
	return true;
}

int params_email(json_t *p, const char *name, bool required, char **out, struct otp_error *err)
{
	*out = NULL;
	json_t *v = json_object_get(p, name);
	if (v != NULL && !json_is_null(v) && !json_is_string(v))
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", name,
		                     "\"%s\" must be a string, not %s", name, type_name(v));
	char *s = NULL;
	int rc = params_string(p, name, required, false, 254, false, &s, err);
	if (rc != 0 || s == NULL)
		return rc;
	if (!email_plausible(s)) {
		free(s);
		return invalid(err, name, "must be an email address");
	}
	*out = s;
	return 0;
}

int params_chat_id(json_t *p, const char *name, bool required, char **out, struct otp_error *err)
{
	*out = NULL;
	json_t *v = json_object_get(p, name);
	int64_t id;
	char num[32];
	if (v != NULL && json_is_integer(v)) {
		id = json_integer_value(v);
	} else if (v != NULL && !json_is_null(v) && !json_is_string(v)) {
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", name,
		                     "\"%s\" must be an integer chat id, not %s", name, type_name(v));
	} else {
		char *s = NULL;
		int rc = params_string(p, name, required, false, 32, false, &s, err);
		if (rc != 0 || s == NULL)
			return rc;
		rc = otp_parse_i64(s, INT64_MIN + 1, INT64_MAX, &id);
		free(s);
		if (rc != 0)
			return invalid(err, name, "must be an integer chat id");
	}
	if (id == 0)
		return invalid(err, name, "must be a non-zero chat id");
	snprintf(num, sizeof num, "%" PRId64, id);
	*out = strdup(num);
	return *out ? 0 : otp_error_set(err, OTP_ERR_NOMEM, "", name, "out of memory");
}

int params_ip(json_t *p, const char *name, char **out, struct otp_error *err)
{
	*out = NULL;
	char *s = NULL;
	int rc = params_string(p, name, false, false, PARAMS_IP_MAX, false, &s, err);
	if (rc != 0 || s == NULL)
		return rc;
	/* The old service took any text here ("unknown", a proxy's "a, b" list); so does
	 * otpd. An address is written in its canonical form so "::FFFF:1.2.3.4" and
	 * "::ffff:1.2.3.4" count as one IP in the limits. */
	unsigned char bin[16];
	char canon[INET6_ADDRSTRLEN];
	if (inet_pton(AF_INET6, s, bin) == 1 && inet_ntop(AF_INET6, bin, canon, sizeof canon)) {
		free(s);
		s = strdup(canon);
	}
	*out = s;
	return *out ? 0 : otp_error_set(err, OTP_ERR_NOMEM, "", name, "out of memory");
}

/* "300", "300.9", "-5", " 42 " (already trimmed by the caller) -> truncated integer. */
static int parse_decimal_trunc(const char *s, int64_t *out)
{
	char ip[32];
	const char *dot = strchr(s, '.');
	size_t n = dot ? (size_t)(dot - s) : strlen(s);
	if (n == 0 || n >= sizeof ip)
		return OTP_ERR_INVALID;
	memcpy(ip, s, n);
	ip[n] = '\0';
	if (dot != NULL) {
		if (dot[1] == '\0')
			return OTP_ERR_INVALID;
		for (const char *c = dot + 1; *c; c++)
			if (*c < '0' || *c > '9')
				return OTP_ERR_INVALID;
	}
	return otp_parse_i64(ip, -1000000000000LL, 1000000000000LL, out);
}

int params_int(json_t *p, const char *name, int64_t min, int64_t max, bool *present,
               int64_t *out, struct otp_error *err)
{
	*present = false;
	json_t *v = json_object_get(p, name);
	int64_t n;
	if (v == NULL || json_is_null(v))
		return 0;
	if (json_is_integer(v)) {
		n = json_integer_value(v);
	} else if (json_is_real(v)) {
		double d = json_real_value(v);
		if (!isfinite(d) || d > 1e15 || d < -1e15)
			return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", name,
			                     "\"%s\" must be from %" PRId64 " to %" PRId64, name, min, max);
		n = (int64_t)d; /* truncates, as PHP's (int) */
	} else if (json_is_string(v)) {
		char *s = trimmed(json_string_value(v));
		if (s == NULL)
			return otp_error_set(err, OTP_ERR_NOMEM, "", name, "out of memory");
		if (s[0] == '\0') {
			free(s);
			return 0;
		}
		int rc = parse_decimal_trunc(s, &n);
		free(s);
		if (rc != 0)
			return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", name,
			                     "\"%s\" must be an integer", name);
	} else {
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", name,
		                     "\"%s\" must be an integer, not %s", name, type_name(v));
	}
	if (n < min || n > max)
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", name,
		                     "\"%s\" must be from %" PRId64 " to %" PRId64, name, min, max);
	*present = true;
	*out = n;
	return 0;
}

int params_lifetime(json_t *p, const char *name, int max, int *out, struct otp_error *err)
{
	bool present = false;
	int64_t n = 0;
	int rc = params_int(p, name, 1, max, &present, &n, err);
	if (rc != 0)
		return rc;
	if (!present)
		return params_missing(name, err);
	*out = (int)n;
	return 0;
}
