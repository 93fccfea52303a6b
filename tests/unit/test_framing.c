/*
 * test_framing.c - http/framing.c: the request head checks of the edge (RFC 9112
 * framing, Host, sizes) and of the raw target (length, control characters), table-driven.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "http/framing.h"

#define F(n, v) {n, sizeof n - 1, v, sizeof v - 1}

struct head_case {
	const char *name;
	const char *version;
	struct http_field fields[4];
	size_t n;
	int rc;
	const char *word;        /* in the message when rc != 0 */
	bool chunked;
	int64_t length;          /* -1: none */
};

static const struct head_case head_cases[] = {
	{"plain get", "HTTP/1.1", {F("Host", "x")}, 1, 0, NULL, false, -1},
	{"length", "HTTP/1.1", {F("Host", "x"), F("Content-Length", "42")}, 2, 0, NULL, false, 42},
	{"equal list", "HTTP/1.1", {F("Host", "x"), F("content-length", "7, 7")}, 2, 0, NULL, false, 7},
	{"equal twice", "HTTP/1.1", {F("Host", "x"), F("Content-Length", "07"), F("Content-Length", "7")},
	 3, 0, NULL, false, 7},
	{"huge length", "HTTP/1.1", {F("Host", "x"), F("Content-Length", "99999999999999999999999")}, 2,
	 0, NULL, false, INT64_MAX},
	{"chunked", "HTTP/1.1", {F("Host", "x"), F("Transfer-Encoding", "Chunked")}, 2, 0, NULL, true, -1},
	{"http/1.0 no host", "HTTP/1.0", {F("X", "y")}, 1, 0, NULL, false, -1},
	{"no host", "HTTP/1.1", {F("X", "y")}, 1, OTP_ERR_INVALID, "Host", false, -1},
	{"two hosts", "HTTP/1.1", {F("Host", "a"), F("host", "b")}, 2, OTP_ERR_INVALID, "Host", false, -1},
	{"cl and te", "HTTP/1.1", {F("Host", "x"), F("Content-Length", "2"), F("Transfer-Encoding", "chunked")},
	 3, OTP_ERR_INVALID, "both", false, -1},
	{"differing", "HTTP/1.1", {F("Host", "x"), F("Content-Length", "2"), F("Content-Length", "3")}, 3,
	 OTP_ERR_INVALID, "differ", false, -1},
	{"differing list", "HTTP/1.1", {F("Host", "x"), F("Content-Length", "2, 3")}, 2, OTP_ERR_INVALID,
	 "differ", false, -1},
	{"negative", "HTTP/1.1", {F("Host", "x"), F("Content-Length", "-1")}, 2, OTP_ERR_INVALID,
	 "decimal", false, -1},
	{"plus", "HTTP/1.1", {F("Host", "x"), F("Content-Length", "+1")}, 2, OTP_ERR_INVALID, "decimal",
	 false, -1},
	{"empty length", "HTTP/1.1", {F("Host", "x"), F("Content-Length", "")}, 2, OTP_ERR_INVALID,
	 "decimal", false, -1},
	{"space in name", "HTTP/1.1", {F("Host", "x"), F("Content-Length ", "2")}, 2, OTP_ERR_INVALID,
	 "colon", false, -1},
	{"empty name", "HTTP/1.1", {F("Host", "x"), F("", "2")}, 2, OTP_ERR_INVALID, "token", false, -1},
	{"control in value", "HTTP/1.1", {F("Host", "x"), F("X-A", "a\x01")}, 2, OTP_ERR_INVALID,
	 "control", false, -1},
	{"tab in value", "HTTP/1.1", {F("Host", "x"), F("X-A", "a\tb")}, 2, 0, NULL, false, -1},
	{"gzip", "HTTP/1.1", {F("Host", "x"), F("Transfer-Encoding", "gzip")}, 2, OTP_ERR_UNSUPPORTED,
	 "gzip", false, -1},
	{"gzip chunked", "HTTP/1.1", {F("Host", "x"), F("Transfer-Encoding", "gzip, chunked")}, 2,
	 OTP_ERR_UNSUPPORTED, "gzip", false, -1},
	{"gzip then chunked fields", "HTTP/1.1",
	 {F("Host", "x"), F("Transfer-Encoding", "gzip"), F("Transfer-Encoding", "chunked")}, 3,
	 OTP_ERR_UNSUPPORTED, "gzip", false, -1},
	{"chunked not last", "HTTP/1.1", {F("Host", "x"), F("Transfer-Encoding", "chunked, gzip")}, 2,
	 OTP_ERR_INVALID, "last", false, -1},
	{"chunked twice", "HTTP/1.1", {F("Host", "x"), F("Transfer-Encoding", "chunked, chunked")}, 2,
	 OTP_ERR_INVALID, "once", false, -1},
	{"te empty", "HTTP/1.1", {F("Host", "x"), F("Transfer-Encoding", " , ")}, 2, OTP_ERR_INVALID,
	 "empty", false, -1},
	{"te on 1.0", "HTTP/1.0", {F("Transfer-Encoding", "chunked")}, 1, OTP_ERR_INVALID, "HTTP/1.0",
	 false, -1},
};

static void test_head_cases(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof head_cases / sizeof head_cases[0]; i++) {
		const struct head_case *c = &head_cases[i];
		struct http_head h = {c->version, c->fields, c->n, 100};
		struct http_body_framing fr;
		struct otp_error e = {0};
		int rc = http_framing_check(&h, &fr, &e);
		if (rc != c->rc)
			fail_msg("%s: rc %d, want %d (%s)", c->name, rc, c->rc, e.message);
		if (rc != 0) {
			if (strstr(e.message, c->word) == NULL)
				fail_msg("%s: message \"%s\" lacks \"%s\"", c->name, e.message, c->word);
			continue;
		}
		assert_int_equal(fr.chunked, c->chunked);
		assert_int_equal(fr.has_length, c->length >= 0);
		if (c->length >= 0)
			assert_true(fr.length == c->length);
	}
}

static void test_head_size(void **state)
{
	(void)state;
	struct http_field f[] = {F("Host", "x")};
	struct http_head h = {"HTTP/1.1", f, 1, HTTP_HEAD_MAX};
	struct http_body_framing fr;
	struct otp_error e = {0};
	assert_int_equal(http_framing_check(&h, &fr, &e), 0);
	h.head_bytes = HTTP_HEAD_MAX + 1;
	assert_int_equal(http_framing_check(&h, &fr, &e), OTP_ERR_HEADERS);
	assert_string_equal(e.reason, "headers_too_large");
}

struct target_case {
	const char *target;
	int rc;
	const char *field;       /* e.field when rc != 0 */
};

static const struct target_case target_cases[] = {
	{"/sms/check?phone=77011234567&password=12345", 0, NULL},
	{"/sms?message=a+b%20c%e2%82%ac", 0, NULL},
	{"/x?a=%zz&b=%", 0, NULL},
	{"/sms/check?phone=77011234567&password=12345%00zz", OTP_ERR_INVALID, "password"},
	{"/sms/check?phone=1%0a", OTP_ERR_INVALID, "phone"},
	{"/sms/check?pass%00word=1", OTP_ERR_INVALID, "pass?word"},
	{"/sms/check?p=%7F", OTP_ERR_INVALID, "p"},
	{"/sms/check?p=%1f", OTP_ERR_INVALID, "p"},
	{"/sms/check?p=\x01", OTP_ERR_INVALID, "p"},
	{"/heal%00th", OTP_ERR_INVALID, ""},
	{"/heal%0Dth?a=1", OTP_ERR_INVALID, ""},
	{"/heal\x7fth", OTP_ERR_INVALID, ""},
};

static void test_target_cases(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof target_cases / sizeof target_cases[0]; i++) {
		const struct target_case *c = &target_cases[i];
		struct otp_error e = {0};
		int rc = http_target_check(c->target, strlen(c->target), &e);
		if (rc != c->rc)
			fail_msg("%s: rc %d, want %d", c->target, rc, c->rc);
		if (rc != 0) {
			assert_string_equal(e.field, c->field);
			assert_non_null(strstr(e.message, "control characters"));
		}
	}
}

static void test_target_length_and_path(void **state)
{
	(void)state;
	static char long_target[HTTP_TARGET_MAX + 2];
	memset(long_target, 'a', sizeof long_target - 1);
	long_target[0] = '/';
	struct otp_error e = {0};
	assert_int_equal(http_target_check(long_target, HTTP_TARGET_MAX, &e), 0);
	assert_int_equal(http_target_check(long_target, HTTP_TARGET_MAX + 1, &e), OTP_ERR_URI_TOO_LONG);
	assert_string_equal(http_target_path("/sms"), "/sms");
	assert_string_equal(http_target_path("http://h/sms/check"), "/sms/check");
	assert_string_equal(http_target_path("HTTPS://h:8443/x"), "/x");
	assert_string_equal(http_target_path("http://h"), "/");
	assert_string_equal(http_target_path("*"), "*");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_head_cases),
		cmocka_unit_test(test_head_size),
		cmocka_unit_test(test_target_cases),
		cmocka_unit_test(test_target_length_and_path),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
