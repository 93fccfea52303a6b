/*
 * fuzz_compat.c - libFuzzer target for the compat dialect's request parsing, up to but
 * excluding the store: params_collect() over the request (fuzz_request.h), then the
 * field readers of every compat endpoint in the order compat.c runs them (send and check
 * of each channel, /limit/<channel>, /target, /password, the Telegram webhook).
 *
 * api_handle() itself is too stateful to fuzz (store, clock, outbox), so this file
 * includes compat.c to reach its static readers (read_target, read_password,
 * read_rules, target_rules_key) and replays the handlers' parsing prefix. Keep the
 * sequences below in step with compat.c when a handler changes its field order.
 *
 * Besides memory errors and leaks it aborts on broken contracts: a "must be set" error
 * for a field while an earlier field of COMPAT.md's order is missing, rules outside
 * their ranges, a 400 without a message.
 */
#include "../../src/api/compat.c"

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
	if (rc != OTP_ERR_INVALID || err->status_code[0] != '\0')
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

/* compat_send up to flow_ip_required(), which is the first store call. */
static void send_fields(json_t *p, enum otp_channel ch)
{
	static const char *const sms[] = {"phone", "password", "message", "lifetime", "ip"};
	static const char *const call[] = {"phone", "password", "lifetime", "ip"};
	static const char *const email[] = {"email", "password", "subject", "lifetime", "ip"};
	static const char *const tg[] = {"chat_id", "password", "message", "lifetime", "ip"};
	const char *const *order = ch == OTP_CH_SMS ? sms : ch == OTP_CH_CALL ? call
	                         : ch == OTP_CH_EMAIL ? email : tg;
	size_t n_order = ch == OTP_CH_CALL ? 4 : 5;

	struct otp_error err = {0};
	char *target = NULL, *password = NULL, *message = NULL, *subject = NULL, *text = NULL,
	     *html = NULL, *ip = NULL;
	int lifetime = 0, rc;
	if ((rc = read_target(p, ch, &target, &err)) != 0 ||
	    (rc = read_password(p, &password, &err)) != 0)
		goto out;
	if (ch == OTP_CH_SMS || ch == OTP_CH_TELEGRAM) {
		if ((rc = params_string(p, "message", true, true, MESSAGE_MAX, true, &message, &err)) != 0)
			goto out;
	} else if (ch == OTP_CH_EMAIL) {
		if ((rc = params_string(p, "subject", true, true, SUBJECT_MAX, false, &subject, &err)) != 0)
			goto out;
	}
	if ((rc = params_lifetime(p, "lifetime", FUZZ_MAX_LIFETIME, &lifetime, &err)) != 0)
		goto out;
	if (ch == OTP_CH_EMAIL &&
	    ((rc = params_string(p, "text", false, true, BODY_PART_MAX, true, &text, &err)) != 0 ||
	     (rc = params_string(p, "html", false, true, BODY_PART_MAX, true, &html, &err)) != 0))
		goto out;
	if ((rc = params_ip(p, "ip", &ip, &err)) != 0)
		goto out;
	/* everything flow_send() is handed is set and in range */
	CHECK(target != NULL && password != NULL);
	CHECK(strlen(password) <= OTP_CODE_MAX && strlen(target) <= OTP_TARGET_MAX);
	CHECK(lifetime >= 1 && lifetime <= FUZZ_MAX_LIFETIME);
	CHECK((ch != OTP_CH_SMS && ch != OTP_CH_TELEGRAM) || message != NULL);
	CHECK(ch != OTP_CH_EMAIL || subject != NULL);
	/* the delivery payload must encode (valid UTF-8 everywhere) */
	struct otp_message m = {
		.channel = ch, .target = target, .code = password,
		.text = ch == OTP_CH_EMAIL ? text : message, .subject = subject, .html = html,
		.lifetime = lifetime,
	};
	uint8_t *enc = NULL;
	size_t enc_len = 0;
	CHECK(otp_message_encode(&m, &enc, &enc_len) == 0);
	free(enc);
out:
	if (rc != 0)
		check_failure(rc, &err, p, order, n_order);
	free(target);
	free_wiped(password);
	free_wiped(message);
	free_wiped(subject);
	free_wiped(text);
	free_wiped(html);
	free(ip);
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
	int rc;
	if ((rc = read_target(p, ch, &target, &err)) != 0 ||
	    (rc = read_password(p, &password, &err)) != 0)
		check_failure(rc, &err, p, order, 2);
	else
		CHECK(target != NULL && password != NULL && strlen(password) <= OTP_CODE_MAX);
	free(target);
	free_wiped(password);
}

/* compat_limit_set up to store_set_limits(). */
static void limit_fields(json_t *p, enum otp_channel ch)
{
	struct otp_limit_rule rules[2 * OTP_LIMIT_RULES_MAX];
	size_t n = 0;
	bool replace[2] = {false, false};
	struct otp_error err = {0};
	const char *key;
	json_t *val;
	json_object_foreach(p, key, val) {
		if (strcmp(key, "ips") != 0 && strcmp(key, target_rules_key(ch)) != 0)
			return; /* refused before any rule is read */
	}
	int rc;
	if ((rc = read_rules(p, "ips", OTP_LIMIT_IP, &replace[OTP_LIMIT_IP], rules, &n, &err)) != 0 ||
	    (rc = read_rules(p, target_rules_key(ch), OTP_LIMIT_TARGET, &replace[OTP_LIMIT_TARGET],
	                     rules, &n, &err)) != 0) {
		CHECK(rc == OTP_ERR_INVALID && err.code == rc && err.message[0] != '\0');
		return;
	}
	CHECK(n <= 2 * OTP_LIMIT_RULES_MAX);
	size_t n_ip = 0;
	for (size_t i = 0; i < n; i++) {
		CHECK(rules[i].minutes >= 1 && rules[i].minutes <= OTP_LIMIT_MINUTES_MAX);
		CHECK(rules[i].rate >= 0 && rules[i].rate <= OTP_LIMIT_RATE_MAX);
		CHECK(rules[i].kind == OTP_LIMIT_IP || rules[i].kind == OTP_LIMIT_TARGET);
		/* ip rules come first, then target rules */
		if (rules[i].kind == OTP_LIMIT_IP)
			CHECK(n_ip++ == i);
	}
	CHECK(replace[OTP_LIMIT_IP] == (json_object_get(p, "ips") != NULL));
}

/* compat_target up to store_find_target(), compat_password up to
 * store_find_sealed_code(). */
static void target_password_fields(json_t *p)
{
	static const char *const order[] = {"password", "channel"};
	struct otp_error err = {0};
	char *password = NULL, *chname = NULL;
	int rc;
	if ((rc = read_password(p, &password, &err)) != 0 ||
	    (rc = params_string(p, "channel", true, false, 16, false, &chname, &err)) != 0) {
		check_failure(rc, &err, p, order, 2);
	} else {
		enum otp_channel ch;
		if (otp_channel_parse(chname, &ch) == 0)
			CHECK((int)ch >= 0 && ch < OTP_CH_COUNT);
	}
	free_wiped(password);
	free(chname);

	static const char *const order_pw[] = {"target"};
	char *target = NULL;
	struct otp_error err2 = {0};
	rc = params_string(p, "target", true, true, OTP_TARGET_MAX, false, &target, &err2);
	if (rc != 0) {
		check_failure(rc, &err2, p, order_pw, 1);
		return;
	}
	const char *t = target;
	if (t[0] == '+' && t[1] >= '0' && t[1] <= '9')
		t++;
	CHECK(strlen(t) <= OTP_TARGET_MAX);
	free(target);
}

/* compat_telegram_webhook up to code generation. */
static void webhook_fields(json_t *p)
{
	json_t *msg = json_object_get(p, "message");
	if (msg == NULL)
		msg = json_object_get(p, "edited_message");
	json_t *chat = json_is_object(msg) ? json_object_get(msg, "chat") : NULL;
	json_t *id = json_is_object(chat) ? json_object_get(chat, "id") : NULL;
	if (msg == NULL || !json_is_integer(id) || json_integer_value(id) == 0)
		return;
	char target[32];
	int w = snprintf(target, sizeof target, "%" JSON_INTEGER_FORMAT, json_integer_value(id));
	CHECK(w > 0 && (size_t)w < sizeof target);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
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
		target_password_fields(p);
		webhook_fields(p);
		json_decref(p);
	} else {
		CHECK(p == NULL && err.message[0] != '\0');
	}
	fuzz_request_free(&fr);
	return 0;
}
