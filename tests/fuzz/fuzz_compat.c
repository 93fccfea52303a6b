/*
 * fuzz_compat.c - libFuzzer target for the compat dialect's request reading, up to but
 * excluding the store: params_collect() over the request (fuzz_request.h), then
 * compat_read_send() for every channel and compat_read_check() for every check
 * (src/api/compat.h): the code the handlers run before their first store call.
 * api_handle() itself is too stateful to fuzz (store, clock, outbox).
 *
 * Besides memory errors and leaks it aborts on broken contracts: a "must be set" error
 * for a field while an earlier field of COMPAT.md's order is missing, a successful read
 * whose fields are unset or out of range, or whose delivery payload cannot be encoded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/compat.h"
#include "api/params.h"
#include "core/message.h"
#include "fuzz_request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) { \
	fprintf(stderr, "%s:%d: contract broken: %s\n", __FILE__, __LINE__, #cond); \
	abort(); } } while (0)

#define FUZZ_MAX_LIFETIME 86400

static bool blank(json_t *p, const char *name)
{
	json_t *v = json_object_get(p, name);
	if (v == NULL || json_is_null(v))
		return true;
	if (!json_is_string(v))
		return false;
	for (const char *s = json_string_value(v); *s; s++)
		if (!(*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n' || *s == '\v' || *s == '\f'))
			return false;
	return true;
}

/* After a failure: a well-formed error; a "missing" error names a field after which
 * nothing earlier in `order` is missing. */
static void check_failure(int rc, const struct otp_error *err, json_t *p,
                          const char *const *order, size_t n_order)
{
	CHECK(rc == OTP_ERR_INVALID || rc == OTP_ERR_NOMEM);
	CHECK(err->code == rc && err->message[0] != '\0');
	if (rc != OTP_ERR_INVALID || strcmp(err->reason, "missing_parameter") != 0)
		return;
	char want[64];
	snprintf(want, sizeof want, "\"%s\" parameter must be set", err->field);
	CHECK(strcmp(err->message, want) == 0);
	for (size_t i = 0; i < n_order; i++) {
		if (strcmp(order[i], err->field) == 0)
			return;
		CHECK(!blank(p, order[i]));
	}
	CHECK(!"a missing field that is not in the documented order");
}

/* compat_send up to flow_ip_required(), its first store call. */
static void send_fields(json_t *p, enum otp_channel ch)
{
	static const char *const phone[] = {"phone", "password", "message", "lifetime", "ip"};
	static const char *const call[] = {"phone", "password", "lifetime", "ip"};
	static const char *const email[] = {"email", "password", "subject", "lifetime", "ip"};
	static const char *const tg[] = {"chat_id", "password", "message", "lifetime", "ip"};
	const char *const *order = ch == OTP_CH_CALL ? call : ch == OTP_CH_EMAIL ? email
	                         : ch == OTP_CH_TELEGRAM ? tg : phone;
	size_t n_order = ch == OTP_CH_CALL ? 4 : 5;
	bool has_message = ch == OTP_CH_SMS || ch == OTP_CH_TELEGRAM;

	struct otp_error err = {0};
	struct compat_send_fields f;
	int rc = compat_read_send(p, ch, FUZZ_MAX_LIFETIME, &f, &err);
	if (rc != 0) {
		check_failure(rc, &err, p, order, n_order);
		compat_send_fields_fini(&f);
		return;
	}
	/* everything flow_send() is handed is set and in range */
	CHECK(f.target != NULL && f.password != NULL);
	CHECK(strlen(f.password) <= OTP_CODE_MAX && strlen(f.target) <= OTP_TARGET_MAX);
	CHECK(f.lifetime >= 1 && f.lifetime <= FUZZ_MAX_LIFETIME);
	CHECK(!has_message || f.message != NULL);
	CHECK(ch != OTP_CH_EMAIL || f.subject != NULL);
	if (f.message != NULL)
		CHECK(strlen(f.message) <= COMPAT_MESSAGE_MAX);
	if (f.subject != NULL)
		CHECK(strlen(f.subject) <= COMPAT_SUBJECT_MAX);
	/* the delivery payload must encode (valid UTF-8 everywhere) */
	struct otp_message m = {
		.channel = ch, .target = f.target, .code = f.password,
		.text = ch == OTP_CH_EMAIL ? f.text : f.message, .subject = f.subject, .html = f.html,
		.lifetime = f.lifetime,
	};
	uint8_t *enc = NULL;
	size_t enc_len = 0;
	CHECK(otp_message_encode(&m, &enc, &enc_len) == 0);
	free(enc);
	compat_send_fields_fini(&f);
}

/* compat_check up to flow_check(). */
static void check_fields(json_t *p, enum otp_channel ch)
{
	static const char *const phone[] = {"phone", "password"};
	static const char *const email[] = {"email", "password"};
	static const char *const tg[] = {"chat_id", "password"};
	const char *const *order = ch == OTP_CH_EMAIL ? email : ch == OTP_CH_TELEGRAM ? tg : phone;
	struct otp_error err = {0};
	char *target = NULL, *password = NULL;
	int rc = compat_read_check(p, ch, &target, &password, &err);
	if (rc != 0)
		check_failure(rc, &err, p, order, 2);
	else
		CHECK(target != NULL && password != NULL && strlen(password) <= OTP_CODE_MAX);
	free(target);
	otp_secret_free(password);
}

/* compat_limit_set up to store_set_limits(): every rule read is within otpd's bounds,
 * and a failure names the list or item it refused. */
static void limit_fields(json_t *p, enum otp_channel ch)
{
	struct otp_limit_rule rules[2 * OTP_LIMIT_RULES_MAX];
	size_t n = 0;
	bool replace[2];
	struct otp_error err = {0};
	int rc = compat_read_limits(p, ch, rules, &n, replace, &err);
	if (rc != 0) {
		CHECK(rc == OTP_ERR_INVALID && err.field[0] != '\0' && err.message[0] != '\0');
		return;
	}
	CHECK(n <= 2 * OTP_LIMIT_RULES_MAX);
	for (size_t i = 0; i < n; i++) {
		CHECK(rules[i].minutes >= 1 && rules[i].minutes <= OTP_LIMIT_MINUTES_MAX);
		CHECK(rules[i].rate >= 0 && rules[i].rate <= OTP_LIMIT_RATE_MAX);
		CHECK(replace[rules[i].kind]);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* the channels of the compat routes (/sms, /call, /email, /telegram and checks) */
	static const enum otp_channel chans[] = {OTP_CH_SMS, OTP_CH_CALL, OTP_CH_EMAIL,
	                                         OTP_CH_TELEGRAM};
	struct fuzz_request fr;
	fuzz_request_build(&fr, data, size, "POST", "/sms");
	json_t *p = NULL;
	struct otp_error err = {0};
	if (params_collect(&fr.req, &p, &err) == 0) {
		for (size_t i = 0; i < sizeof chans / sizeof chans[0]; i++) {
			send_fields(p, chans[i]);
			check_fields(p, chans[i]);
			limit_fields(p, chans[i]);
		}
		json_decref(p);
	} else {
		CHECK(p == NULL && err.message[0] != '\0');
	}
	fuzz_request_free(&fr);
	return 0;
}
