/*
 * fuzz_params.c - libFuzzer target for src/api/params.c: params_collect() over a request
 * built from the input (query lines, empty line, body; see fuzz_request.h), then every
 * params_* getter on the merged object, for fixed field names and for every key present.
 * Besides memory errors and leaks, it aborts when a getter breaks its documented
 * contract (params.h): a returned value outside its validated shape, or an error return
 * without a filled struct otp_error.
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>

#include "api/params.h"
#include "core/num.h"
#include "fuzz_request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) { \
	fprintf(stderr, "%s:%d: contract broken: %s\n", __FILE__, __LINE__, #cond); \
	abort(); } } while (0)

static bool is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

static void check_err(int rc, const struct otp_error *err)
{
	if (rc == 0)
		return;
	CHECK(rc == OTP_ERR_INVALID || rc == OTP_ERR_NOMEM);
	CHECK(err->code == rc);
	CHECK(err->message[0] != '\0');
}

/* Every value handed on must be valid UTF-8: jansson refuses to re-encode anything else
 * (otp_message_encode relies on it). */
static void check_utf8(const char *s)
{
	json_t *j = json_string(s);
	CHECK(j != NULL);
	json_decref(j);
}

static void try_string(json_t *p, const char *name, bool required, bool cast, size_t max,
                       bool allow_nl)
{
	struct otp_error err = {0};
	char *s = NULL;
	int rc = params_string(p, name, required, cast, max, allow_nl, &s, &err);
	check_err(rc, &err);
	if (rc != 0) {
		CHECK(s == NULL);
		return;
	}
	if (s == NULL) {
		CHECK(!required);
		return;
	}
	size_t n = strlen(s);
	CHECK(n > 0 && n <= max);
	CHECK(!is_space((unsigned char)s[0]) && !is_space((unsigned char)s[n - 1]));
	for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
		bool ctl = *c < 0x20 || *c == 0x7f;
		CHECK(!ctl || (allow_nl && (*c == '\n' || *c == '\r' || *c == '\t')));
	}
	check_utf8(s);
	free(s);
}

static void try_phone(json_t *p, const char *name, bool required)
{
	struct otp_error err = {0};
	char *s = NULL;
	int rc = params_phone(p, name, required, &s, &err);
	check_err(rc, &err);
	if (rc != 0 || s == NULL) {
		CHECK(rc != 0 || !required);
		CHECK(s == NULL);
		return;
	}
	size_t n = strlen(s);
	CHECK(n >= 5 && n <= 20);
	for (size_t i = 0; i < n; i++)
		CHECK(s[i] >= '0' && s[i] <= '9');
	free(s);
}

static void try_email(json_t *p, const char *name, bool required)
{
	struct otp_error err = {0};
	char *s = NULL;
	int rc = params_email(p, name, required, &s, &err);
	check_err(rc, &err);
	if (rc != 0 || s == NULL) {
		CHECK(rc != 0 || !required);
		CHECK(s == NULL);
		return;
	}
	CHECK(strlen(s) <= 254);
	const char *at = strchr(s, '@');
	CHECK(at != NULL && at != s && strchr(at + 1, '@') == NULL);
	for (const unsigned char *c = (const unsigned char *)s; *c; c++)
		CHECK(*c > ' ' && *c != 0x7f);
	check_utf8(s);
	free(s);
}

static void try_chat_id(json_t *p, const char *name, bool required)
{
	struct otp_error err = {0};
	char *s = NULL;
	int rc = params_chat_id(p, name, required, &s, &err);
	check_err(rc, &err);
	if (rc != 0 || s == NULL) {
		CHECK(rc != 0 || !required);
		CHECK(s == NULL);
		return;
	}
	/* canonical decimal text of a non-zero int64 */
	int64_t id = 0;
	char again[32];
	CHECK(otp_parse_i64(s, INT64_MIN, INT64_MAX, &id) == 0);
	CHECK(id != 0);
	snprintf(again, sizeof again, "%" PRId64, id);
	CHECK(strcmp(again, s) == 0);
	free(s);
}

static void try_ip(json_t *p, const char *name)
{
	struct otp_error err = {0};
	char *s = NULL;
	int rc = params_ip(p, name, &s, &err);
	check_err(rc, &err);
	if (rc != 0 || s == NULL) {
		CHECK(s == NULL);
		return;
	}
	/* any text, bounded, without control characters; an IPv6 address canonical */
	size_t n = strlen(s);
	CHECK(n > 0 && n <= PARAMS_IP_MAX);
	for (const unsigned char *c = (const unsigned char *)s; *c; c++)
		CHECK(*c >= 0x20 && *c != 0x7f);
	check_utf8(s);
	unsigned char bin[16];
	char canon[INET6_ADDRSTRLEN];
	if (inet_pton(AF_INET6, s, bin) == 1) {
		CHECK(inet_ntop(AF_INET6, bin, canon, sizeof canon) != NULL);
		CHECK(strcmp(canon, s) == 0);
	}
	free(s);
}

static void try_ints(json_t *p, const char *name)
{
	static const int64_t ranges[][2] = {
		{1, 86400}, {0, 1000000}, {1, 525600}, {INT64_MIN, INT64_MAX}, {-5, -1},
	};
	for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
		struct otp_error err = {0};
		bool present = true;
		int64_t v = 0;
		int rc = params_int(p, name, ranges[i][0], ranges[i][1], &present, &v, &err);
		check_err(rc, &err);
		if (rc == 0 && present)
			CHECK(v >= ranges[i][0] && v <= ranges[i][1]);
		if (rc != 0)
			CHECK(!present);
	}
	struct otp_error err = {0};
	int lifetime = 0;
	int rc = params_lifetime(p, name, 86400, &lifetime, &err);
	check_err(rc, &err);
	if (rc == 0)
		CHECK(lifetime >= 1 && lifetime <= 86400);
}

static void try_all(json_t *p, const char *name)
{
	for (unsigned flags = 0; flags < 8; flags++)
		try_string(p, name, flags & 1, flags & 2, (flags & 4) ? 4096 : 64, flags & 4);
	try_string(p, name, false, true, 1, false);
	try_phone(p, name, true);
	try_phone(p, name, false);
	try_email(p, name, true);
	try_email(p, name, false);
	try_chat_id(p, name, true);
	try_chat_id(p, name, false);
	try_ip(p, name);
	try_ints(p, name);
}

/* Body fields override query fields; nothing else appears in the merged object. */
static void check_merge(const struct api_request *req, json_t *p)
{
	json_t *body = NULL;
	if (req->body != NULL) {
		json_error_t jerr;
		body = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
		if (body != NULL && !json_is_object(body)) {
			json_decref(body);
			body = NULL;
		}
	}
	const char *key;
	json_t *v;
	json_object_foreach(p, key, v) {
		json_t *b = body ? json_object_get(body, key) : NULL;
		if (b != NULL) {
			CHECK(json_equal(b, v));
			continue;
		}
		/* from the query: the last argument with that key wins */
		const char *last = NULL;
		for (size_t i = 0; i < req->n_query; i++)
			if (strcmp(req->query[i].key, key) == 0)
				last = req->query[i].value;
		CHECK(last != NULL);
		CHECK(json_is_string(v) && strcmp(json_string_value(v), last) == 0);
	}
	json_decref(body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const fixed[] = {
		"phone", "email", "chat_id", "password", "message", "subject", "lifetime",
		"text", "html", "ip", "target", "channel", "minutes", "rate",
	};
	struct fuzz_request fr;
	fuzz_request_build(&fr, data, size, "POST", "/sms");

	json_t *p = NULL;
	struct otp_error err = {0};
	int rc = params_collect(&fr.req, &p, &err);
	check_err(rc, &err);
	if (rc != 0) {
		CHECK(p == NULL);
		goto out;
	}
	CHECK(json_is_object(p));
	check_merge(&fr.req, p);

	for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
		try_all(p, fixed[i]);
	const char *key;
	json_t *v;
	size_t n = 0;
	json_object_foreach(p, key, v) {
		if (n++ >= 16)
			break; /* bound the work per input */
		try_all(p, key);
		if (json_is_object(v))
			try_all(v, "minutes"); /* how the rule items of POST /limit/<channel> are read */
	}
	/* the missing-field sentence is part of the compat API */
	if (json_object_get(p, "phone") == NULL) {
		struct otp_error e = {0};
		char *s = NULL;
		CHECK(params_phone(p, "phone", true, &s, &e) == OTP_ERR_INVALID);
		CHECK(strcmp(e.message, "\"phone\" parameter must be set") == 0);
	}
	json_decref(p);
out:
	fuzz_request_free(&fr);
	return 0;
}
