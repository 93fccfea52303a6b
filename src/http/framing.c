/*
 * framing.c - request head checks (see framing.h). Pure. RFC 9112 section 6 is the
 * reference: a message whose body length a server and a proxy in front of it could read
 * differently is refused, never guessed at, and the connection is closed after the
 * answer so nothing that follows on it is read as a request.
 */
#include "http/framing.h"

#include <string.h>
#include <strings.h>

#include "core/num.h"

/* tchar of RFC 9110 5.6.2. */
static bool is_tchar(unsigned char ch)
{
	if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
		return true;
	return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static bool is_ctl(unsigned char ch)
{
	return ch < 0x20 || ch == 0x7f;
}

static bool name_is(const struct http_field *f, const char *name)
{
	size_t n = strlen(name);
	return f->name_len == n && strncasecmp(f->name, name, n) == 0;
}

static bool is_ows(char ch)
{
	return ch == ' ' || ch == '\t';
}

/* The next element of a comma-separated list in [*p, end): its bounds without OWS.
 * Empty elements (`a,,b`) are skipped, as RFC 9110 5.6.1 asks of a recipient. False
 * when the list is done. */
static bool next_element(const char **p, const char *end, const char **el, size_t *el_len)
{
	const char *s = *p;
	for (;;) {
		while (s < end && (is_ows(*s) || *s == ','))
			s++;
		if (s >= end) {
			*p = s;
			return false;
		}
		const char *start = s;
		while (s < end && *s != ',')
			s++;
		const char *stop = s;
		while (stop > start && is_ows(stop[-1]))
			stop--;
		*p = s;
		*el = start;
		*el_len = (size_t)(stop - start);
		return true;
	}
}

/* A Content-Length element: 1*DIGIT. INT64_MAX stands for "too large for int64". */
static int parse_length(const char *s, size_t n, int64_t *out)
{
	if (n == 0)
		return OTP_ERR_INVALID;
	for (size_t i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return OTP_ERR_INVALID;
	while (n > 1 && s[0] == '0') {
		s++;
		n--;
	}
	char buf[20];
	if (n >= sizeof buf) {
		*out = INT64_MAX;
		return 0;
	}
	memcpy(buf, s, n);
	buf[n] = '\0';
	if (otp_parse_i64(buf, 0, INT64_MAX, out) != 0)
		*out = INT64_MAX;
	return 0;
}

/* A field name made printable for a message: at most 40 bytes, others as '?'. */
static void printable(const char *s, size_t n, char *out, size_t cap)
{
	size_t k = 0;
	for (size_t i = 0; i < n && k + 1 < cap && k < 40; i++)
		out[k++] = (s[i] > 0x20 && s[i] < 0x7f && s[i] != '"' && s[i] != '\\') ? s[i] : '?';
	out[k] = '\0';
}

#define CODINGS_MAX 8

/* Transfer-Encoding over every such field: chunked once and last is the only framing
 * otpd reads. chunked elsewhere, or twice, leaves the length unknown (RFC 9112 6.3: 400);
 * any other coding is one otpd cannot decode (501, named). */
static int check_transfer_coding(const struct http_head *h, struct http_body_framing *out,
                                 struct otp_error *e)
{
	struct { const char *s; size_t n; } codings[CODINGS_MAX];
	size_t n = 0, n_chunked = 0;
	for (size_t i = 0; i < h->n_fields; i++) {
		const struct http_field *f = &h->fields[i];
		if (!name_is(f, "Transfer-Encoding"))
			continue;
		const char *p = f->value, *end = f->value + f->value_len, *el;
		size_t len;
		while (next_element(&p, end, &el, &len)) {
			if (n == CODINGS_MAX)
				return otp_error_set(e, OTP_ERR_INVALID, "bad_request", "",
				                     "more than %d transfer codings", CODINGS_MAX);
			/* a coding's parameters (`;q=...`) do not change its name */
			size_t name_len = 0;
			while (name_len < len && el[name_len] != ';' && !is_ows(el[name_len]))
				name_len++;
			codings[n].s = el;
			codings[n].n = name_len;
			if (name_len == 7 && strncasecmp(el, "chunked", 7) == 0)
				n_chunked++;
			n++;
		}
	}
	if (strcmp(h->version, "HTTP/1.0") == 0)
		return otp_error_set(e, OTP_ERR_INVALID, "bad_request", "",
		                     "Transfer-Encoding is not allowed in an HTTP/1.0 request");
	if (n == 0)
		return otp_error_set(e, OTP_ERR_INVALID, "bad_request", "",
		                     "Transfer-Encoding is empty");
	bool last_chunked = codings[n - 1].n == 7 && strncasecmp(codings[n - 1].s, "chunked", 7) == 0;
	if (n_chunked > 0 && (!last_chunked || n_chunked > 1))
		return otp_error_set(e, OTP_ERR_INVALID, "bad_request", "",
		                     "chunked must be the last transfer coding, and only once");
	for (size_t i = 0; i < n; i++) {
		if (codings[i].n == 7 && strncasecmp(codings[i].s, "chunked", 7) == 0)
			continue;
		char shown[48];
		printable(codings[i].s, codings[i].n, shown, sizeof shown);
		return otp_error_set(e, OTP_ERR_UNSUPPORTED, "not_implemented", "",
		                     "transfer coding \"%s\" is not supported; only chunked is", shown);
	}
	out->chunked = true;
	return 0;
}

int http_framing_check(const struct http_head *h, struct http_body_framing *out,
                       struct otp_error *e)
{
	memset(out, 0, sizeof *out);
	if (h->head_bytes > HTTP_HEAD_MAX)
		return otp_error_set(e, OTP_ERR_HEADERS, "headers_too_large", "",
		                     "the request head is larger than %d bytes", HTTP_HEAD_MAX);
	size_t n_host = 0, n_te = 0, n_cl = 0;
	for (size_t i = 0; i < h->n_fields; i++) {
		const struct http_field *f = &h->fields[i];
		char shown[48];
		bool token = f->name_len > 0;
		for (size_t k = 0; token && k < f->name_len; k++)
			token = is_tchar((unsigned char)f->name[k]);
		if (!token) {
			printable(f->name, f->name_len, shown, sizeof shown);
			return otp_error_set(e, OTP_ERR_INVALID, "bad_request", "",
			                     "header field name \"%s\" is not a token (no whitespace "
			                     "is allowed before the colon)", shown);
		}
		for (size_t k = 0; k < f->value_len; k++) {
			unsigned char ch = (unsigned char)f->value[k];
			if (is_ctl(ch) && ch != '\t') {
				printable(f->name, f->name_len, shown, sizeof shown);
				return otp_error_set(e, OTP_ERR_INVALID, "bad_request", "",
				                     "header field \"%s\" must not contain control "
				                     "characters", shown);
			}
		}
		n_host += name_is(f, "Host");
		n_te += name_is(f, "Transfer-Encoding");
		n_cl += name_is(f, "Content-Length");
	}
	if (strcmp(h->version, "HTTP/1.1") == 0 && n_host != 1)
		return otp_error_set(e, OTP_ERR_INVALID, "bad_request", "",
		                     n_host == 0 ? "an HTTP/1.1 request must have a Host header"
		                                 : "a request must have only one Host header");
	if (n_te > 0 && n_cl > 0)
		return otp_error_set(e, OTP_ERR_INVALID, "bad_request", "",
		                     "a request must not have both Content-Length and "
		                     "Transfer-Encoding");
	if (n_te > 0)
		return check_transfer_coding(h, out, e);
	for (size_t i = 0; i < h->n_fields; i++) {
		const struct http_field *f = &h->fields[i];
		if (!name_is(f, "Content-Length"))
			continue;
		const char *p = f->value, *end = f->value + f->value_len, *el;
		size_t len;
		bool any = false;
		while (next_element(&p, end, &el, &len)) {
			int64_t v;
			any = true;
			if (parse_length(el, len, &v) != 0)
				return otp_error_set(e, OTP_ERR_INVALID, "bad_request", "",
				                     "Content-Length must be a decimal number");
			if (out->has_length && v != out->length)
				return otp_error_set(e, OTP_ERR_INVALID, "bad_request", "",
				                     "Content-Length values differ");
			out->has_length = true;
			out->length = v;
		}
		if (!any)
			return otp_error_set(e, OTP_ERR_INVALID, "bad_request", "",
			                     "Content-Length must be a decimal number");
	}
	return 0;
}

static int hex_value(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* True when [s, s + n) holds a control byte, raw or as %XX (`+` is a space: fine). */
static bool has_control(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (is_ctl(ch))
			return true;
		if (ch == '%' && i + 2 < n) {
			int hi = hex_value(s[i + 1]), lo = hex_value(s[i + 2]);
			if (hi >= 0 && lo >= 0 && is_ctl((unsigned char)(hi * 16 + lo)))
				return true;
		}
	}
	return false;
}

/* The name of a query parameter, percent-decoded (best effort) for a message. */
static void decoded_name(const char *s, size_t n, char *out, size_t cap)
{
	size_t k = 0;
	for (size_t i = 0; i < n && k + 1 < cap && k < 31; i++) {
		char ch = s[i];
		if (ch == '%' && i + 2 < n && hex_value(s[i + 1]) >= 0 &&
		    hex_value(s[i + 2]) >= 0) {
			ch = (char)(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
			i += 2;
		} else if (ch == '+') {
			ch = ' ';
		}
		unsigned char u = (unsigned char)ch;
		out[k++] = (u >= 0x20 && u != 0x7f && ch != '"' && ch != '\\') ? ch : '?';
	}
	out[k] = '\0';
}

const char *http_target_path(const char *target)
{
	size_t skip = 0;
	if (strncasecmp(target, "http://", 7) == 0)
		skip = 7;
	else if (strncasecmp(target, "https://", 8) == 0)
		skip = 8;
	if (skip == 0)
		return target;
	const char *slash = strchr(target + skip, '/');
	return slash != NULL ? slash : "/";
}

int http_target_check(const char *target, size_t len, struct otp_error *e)
{
	if (len > HTTP_TARGET_MAX)
		return otp_error_set(e, OTP_ERR_URI_TOO_LONG, "uri_too_long", "",
		                     "the request target is longer than %d bytes", HTTP_TARGET_MAX);
	const char *q = memchr(target, '?', len);
	size_t path_len = q != NULL ? (size_t)(q - target) : len;
	if (has_control(target, path_len))
		return otp_error_set(e, OTP_ERR_INVALID, "invalid_parameter", "",
		                     "the path must not contain control characters");
	if (q == NULL)
		return 0;
	const char *p = q + 1, *end = target + len;
	while (p < end) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *stop = amp != NULL ? amp : end;
		const char *eq = memchr(p, '=', (size_t)(stop - p));
		const char *name_end = eq != NULL ? eq : stop;
		if (has_control(p, (size_t)(stop - p))) {
			char name[32];
			decoded_name(p, (size_t)(name_end - p), name, sizeof name);
			return otp_error_set(e, OTP_ERR_INVALID, "invalid_parameter", name,
			                     "\"%s\" must not contain control characters", name);
		}
		p = stop + (amp != NULL);
	}
	return 0;
}
