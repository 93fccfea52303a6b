/*
 * test_core.c - the pure core: channels, keyed hashes, sealing, unbiased code generation,
 * the check decision, limits, message encoding and templates, integer parsing. Fixed
 * randomness throughout (a counter-based rng), no clock.
 */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/limits.h"
#include "core/message.h"
#include "core/num.h"
#include "core/otp.h"

/* Deterministic "randomness": bytes of a counter. */
struct counter_rng { uint8_t next; };
static void counter_fill(void *ctx, void *buf, size_t n)
{
	struct counter_rng *r = ctx;
	for (size_t i = 0; i < n; i++)
		((uint8_t *)buf)[i] = r->next++;
}

/* A scripted rng returning given 32-bit words in order. */
struct script_rng { const uint32_t *words; size_t n, i; };
static void script_fill(void *ctx, void *buf, size_t n)
{
	struct script_rng *r = ctx;
	assert_int_equal(n, sizeof(uint32_t));
	assert_true(r->i < r->n);
	memcpy(buf, &r->words[r->i++], sizeof(uint32_t));
}

static bool contains(const uint8_t *hay, size_t n, const char *needle)
{
	size_t m = strlen(needle);
	for (size_t i = 0; i + m <= n; i++)
		if (memcmp(hay + i, needle, m) == 0)
			return true;
	return false;
}

static struct otp_key test_key(uint8_t seed)
{
	uint8_t master[OTP_KEY_LEN];
	memset(master, seed, sizeof master);
	struct otp_key k;
	assert_int_equal(otp_key_init(&k, master), 0);
	return k;
}

static void test_channels(void **state)
{
	(void)state;
	static const struct { const char *name; enum otp_channel ch; } rows[] = {
		{"sms", OTP_CH_SMS}, {"email", OTP_CH_EMAIL}, {"call", OTP_CH_CALL},
		{"telegram", OTP_CH_TELEGRAM}, {"whatsapp", OTP_CH_WHATSAPP},
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		enum otp_channel ch;
		assert_int_equal(otp_channel_parse(rows[i].name, &ch), 0);
		assert_int_equal(ch, rows[i].ch);
		assert_string_equal(otp_channel_name(ch), rows[i].name);
	}
	enum otp_channel ch;
	assert_int_equal(otp_channel_parse("SMS", &ch), OTP_ERR_INVALID);
	assert_int_equal(otp_channel_parse("", &ch), OTP_ERR_INVALID);
	assert_int_equal(otp_channel_parse(NULL, &ch), OTP_ERR_INVALID);
	/* stored numbers match the old service's otp_password.channel */
	assert_int_equal(OTP_CH_SMS, 0);
	assert_int_equal(OTP_CH_EMAIL, 1);
	assert_int_equal(OTP_CH_CALL, 2);
}

static void test_hashes(void **state)
{
	(void)state;
	struct otp_key k1 = test_key(1), k2 = test_key(2);
	uint8_t a[OTP_HASH_LEN], b[OTP_HASH_LEN];
	otp_code_hash(&k1, OTP_CH_SMS, "77011234567", "12345", a);
	otp_code_hash(&k1, OTP_CH_SMS, "77011234567", "12345", b);
	assert_true(otp_hash_equal(a, b));
	/* every input matters */
	otp_code_hash(&k2, OTP_CH_SMS, "77011234567", "12345", b);
	assert_false(otp_hash_equal(a, b));
	otp_code_hash(&k1, OTP_CH_CALL, "77011234567", "12345", b);
	assert_false(otp_hash_equal(a, b));
	otp_code_hash(&k1, OTP_CH_SMS, "77011234568", "12345", b);
	assert_false(otp_hash_equal(a, b));
	otp_code_hash(&k1, OTP_CH_SMS, "77011234567", "12346", b);
	assert_false(otp_hash_equal(a, b));
	/* parts are length-prefixed: moving a byte between target and code changes it */
	otp_code_hash(&k1, OTP_CH_SMS, "7701123456", "712345", b);
	assert_false(otp_hash_equal(a, b));
	/* the lookup hash uses another sub-key: never equal to the code hash */
	otp_lookup_hash(&k1, OTP_CH_SMS, "12345", b);
	assert_false(otp_hash_equal(a, b));
	uint8_t c[OTP_HASH_LEN];
	otp_lookup_hash(&k1, OTP_CH_SMS, "12345", c);
	assert_true(otp_hash_equal(b, c));
	/* sub-keys differ from each other */
	assert_memory_not_equal(k1.hash_key, k1.lookup_key, OTP_KEY_LEN);
	assert_memory_not_equal(k1.hash_key, k1.seal_key, OTP_KEY_LEN);
	otp_key_wipe(&k1);
	uint8_t zero[sizeof k1];
	memset(zero, 0, sizeof zero);
	assert_memory_equal(&k1, zero, sizeof k1);
}

static void test_seal_open(void **state)
{
	(void)state;
	struct otp_key k = test_key(3), other = test_key(4);
	struct counter_rng cr = {0};
	struct otp_rng rng = {counter_fill, &cr};
	const char *msg = "{\"code\":\"12345\"}";
	size_t len = strlen(msg);
	uint8_t sealed[128], opened[128];
	size_t out_len = 0;
	otp_seal(&k, &rng, "outbox", (const uint8_t *)msg, len, sealed);
	/* the plaintext does not appear in the sealed bytes */
	assert_false(contains(sealed, len + OTP_SEAL_OVERHEAD, "12345"));
	assert_int_equal(otp_open(&k, "outbox", sealed, len + OTP_SEAL_OVERHEAD, opened, &out_len), 0);
	assert_int_equal(out_len, len);
	assert_memory_equal(opened, msg, len);
	/* wrong purpose, wrong key, tampering, truncation: all refused */
	assert_int_equal(otp_open(&k, "password", sealed, len + OTP_SEAL_OVERHEAD, opened, &out_len),
	                 OTP_ERR_INVALID);
	assert_int_equal(otp_open(&other, "outbox", sealed, len + OTP_SEAL_OVERHEAD, opened, &out_len),
	                 OTP_ERR_INVALID);
	sealed[30] ^= 1;
	assert_int_equal(otp_open(&k, "outbox", sealed, len + OTP_SEAL_OVERHEAD, opened, &out_len),
	                 OTP_ERR_INVALID);
	sealed[30] ^= 1;
	assert_int_equal(otp_open(&k, "outbox", sealed, OTP_SEAL_OVERHEAD - 1, opened, &out_len),
	                 OTP_ERR_INVALID);
	/* two seals of the same text differ (fresh nonce) */
	uint8_t again[128];
	otp_seal(&k, &rng, "outbox", (const uint8_t *)msg, len, again);
	assert_memory_not_equal(sealed, again, len + OTP_SEAL_OVERHEAD);
}

static void test_uniform_rejects_biased_values(void **state)
{
	(void)state;
	/* upper = 10: 2^32 mod 10 = 6, so raw values 0..5 must be rejected */
	const uint32_t words[] = {0, 5, 6, 17};
	struct script_rng sr = {words, 4, 0};
	struct otp_rng rng = {script_fill, &sr};
	assert_int_equal(otp_rng_uniform(&rng, 10), 6);  /* 0 and 5 skipped, 6 % 10 */
	assert_int_equal(sr.i, 3);
	assert_int_equal(otp_rng_uniform(&rng, 10), 7);  /* 17 % 10 */
	assert_int_equal(otp_rng_uniform(&rng, 1), 0);   /* no randomness needed */
}

static void test_generate_code(void **state)
{
	(void)state;
	struct counter_rng cr = {0};
	struct otp_rng rng = {counter_fill, &cr};
	char code[OTP_CODE_MAX + 1];
	assert_int_equal(otp_generate_code(&rng, OTP_ALPHA_DIGITS, 6, code), 0);
	assert_int_equal(strlen(code), 6);
	for (size_t i = 0; i < 6; i++)
		assert_true(code[i] >= '0' && code[i] <= '9');
	assert_int_equal(otp_generate_code(&rng, OTP_ALPHA_UPPER | OTP_ALPHA_LOWER, 32, code), 0);
	for (size_t i = 0; i < 32; i++)
		assert_true((code[i] >= 'A' && code[i] <= 'Z') || (code[i] >= 'a' && code[i] <= 'z'));
	assert_int_equal(otp_generate_code(&rng, OTP_ALPHA_DIGITS, 0, code), OTP_ERR_INVALID);
	assert_int_equal(otp_generate_code(&rng, OTP_ALPHA_DIGITS, OTP_CODE_MAX + 1, code),
	                 OTP_ERR_INVALID);
	assert_int_equal(otp_generate_code(&rng, 0, 6, code), OTP_ERR_INVALID);

	/* with the system rng every digit shows up over many draws (sanity, not statistics) */
	int seen[10] = {0};
	for (int i = 0; i < 200; i++) {
		assert_int_equal(otp_generate_code(&otp_rng_system, OTP_ALPHA_DIGITS, 6, code), 0);
		for (int j = 0; j < 6; j++)
			seen[code[j] - '0']++;
	}
	for (int d = 0; d < 10; d++)
		assert_true(seen[d] > 0);
}

static void fill_candidates(const struct otp_key *k, struct otp_candidate *c, const char *target)
{
	c[0].id = 1; c[0].channel = OTP_CH_SMS;
	otp_code_hash(k, OTP_CH_SMS, target, "11111", c[0].hash);
	c[1].id = 2; c[1].channel = OTP_CH_CALL;
	otp_code_hash(k, OTP_CH_CALL, target, "22222", c[1].hash);
	c[2].id = 3; c[2].channel = OTP_CH_SMS;
	otp_code_hash(k, OTP_CH_SMS, target, "33333", c[2].hash);
}

static void present(const struct otp_key *k, struct otp_check_input *in, const char *target,
                    const char *code)
{
	for (unsigned ch = 0; ch < OTP_CH_COUNT; ch++)
		if (in->channel_mask & OTP_CH_BIT(ch))
			otp_code_hash(k, (enum otp_channel)ch, target, code, in->presented[ch]);
}

static void test_check_decide(void **state)
{
	(void)state;
	struct otp_key k = test_key(5);
	struct otp_candidate cands[3];
	fill_candidates(&k, cands, "77011234567");
	static const struct {
		const char *code;
		unsigned mask;
		int failures, max;
		bool ok;
		int64_t id;
		int new_failures;
		bool void_all;
	} rows[] = {
		/* any live code matches, not only the latest */
		{"11111", OTP_CH_BIT(OTP_CH_SMS), 0, 5, true, 1, 0, false},
		{"33333", OTP_CH_BIT(OTP_CH_SMS), 0, 5, true, 3, 0, false},
		/* a call code answers an sms check only when the mask says so */
		{"22222", OTP_CH_BIT(OTP_CH_SMS), 0, 5, false, 0, 1, false},
		{"22222", OTP_CH_BIT(OTP_CH_SMS) | OTP_CH_BIT(OTP_CH_CALL), 0, 5, true, 2, 0, false},
		/* a right code keeps the failure count as it is */
		{"11111", OTP_CH_BIT(OTP_CH_SMS), 3, 5, true, 1, 3, false},
		/* wrong: counted; the last allowed failure voids everything and restarts count */
		{"99999", OTP_CH_BIT(OTP_CH_SMS), 3, 5, false, 0, 4, false},
		{"99999", OTP_CH_BIT(OTP_CH_SMS), 4, 5, false, 0, 0, true},
		/* already over the limit: even the right code is refused */
		{"11111", OTP_CH_BIT(OTP_CH_SMS), 5, 5, false, 0, 5, true},
		/* unlimited */
		{"99999", OTP_CH_BIT(OTP_CH_SMS), 100, 0, false, 0, 101, false},
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		struct otp_check_input in = {0};
		struct otp_check_outcome out;
		in.cands = cands;
		in.n_cands = 3;
		in.channel_mask = rows[i].mask;
		in.failures = rows[i].failures;
		in.max_failures = rows[i].max;
		present(&k, &in, "77011234567", rows[i].code);
		otp_check_decide(&in, &out);
		assert_int_equal(out.ok, rows[i].ok);
		assert_int_equal(out.matched_id, rows[i].id);
		assert_int_equal(out.failures, rows[i].new_failures);
		assert_int_equal(out.void_all, rows[i].void_all);
	}
	/* no candidates at all: a wrong check */
	struct otp_check_input in = {0};
	struct otp_check_outcome out;
	in.channel_mask = OTP_CH_BIT(OTP_CH_SMS);
	in.max_failures = 5;
	present(&k, &in, "77011234567", "11111");
	otp_check_decide(&in, &out);
	assert_false(out.ok);
	assert_int_equal(out.failures, 1);
}

static void test_limits(void **state)
{
	(void)state;
	struct otp_limit_rule rules[] = {
		{OTP_LIMIT_IP, 10, 3},
		{OTP_LIMIT_TARGET, 60, 5},
		{OTP_LIMIT_IP, 1, 0},
	};
	int64_t counts_ok[] = {2, 4, -1};
	assert_int_equal(otp_limits_decide(rules, counts_ok, 2), -1);
	int64_t counts_ip[] = {3, 9, 0};
	assert_int_equal(otp_limits_decide(rules, counts_ip, 2), 0); /* first failing rule decides */
	int64_t counts_target[] = {0, 5, 0};
	assert_int_equal(otp_limits_decide(rules, counts_target, 2), 1);
	int64_t counts_zero_rate[] = {0, 0, 0};
	assert_int_equal(otp_limits_decide(rules, counts_zero_rate, 3), 2); /* rate 0 forbids */
	assert_int_equal(otp_limit_window_start(&rules[0], 10000), 10000 - 600);

	assert_string_equal(otp_limit_status_code(OTP_CH_SMS, OTP_LIMIT_IP), "ip_limit");
	assert_string_equal(otp_limit_status_code(OTP_CH_SMS, OTP_LIMIT_TARGET), "phone_limit");
	assert_string_equal(otp_limit_status_code(OTP_CH_CALL, OTP_LIMIT_TARGET), "phone_limit");
	assert_string_equal(otp_limit_status_code(OTP_CH_EMAIL, OTP_LIMIT_TARGET), "email_limit");
	assert_string_equal(otp_limit_status_code(OTP_CH_TELEGRAM, OTP_LIMIT_TARGET), "chat_id_limit");
	assert_string_equal(otp_limit_message(OTP_CH_SMS, OTP_LIMIT_IP), "IP limit has been reached");
	assert_string_equal(otp_limit_message(OTP_CH_SMS, OTP_LIMIT_TARGET),
	                    "Phone limit has been reached");
	assert_string_equal(otp_limit_message(OTP_CH_EMAIL, OTP_LIMIT_TARGET),
	                    "Email limit has been reached");
}

static void test_message_roundtrip(void **state)
{
	(void)state;
	struct otp_message m = {
		.channel = OTP_CH_EMAIL,
		.target = "foo@example.com",
		.code = "12345",
		.text = "Your OTP is 12345\n\u00e9",
		.subject = "Hello \"there\"",
		.html = NULL,
		.lifetime = 300,
	};
	uint8_t *bytes = NULL;
	size_t len = 0;
	assert_int_equal(otp_message_encode(&m, &bytes, &len), 0);
	struct otp_message d;
	assert_int_equal(otp_message_decode(bytes, len, &d), 0);
	assert_int_equal(d.channel, OTP_CH_EMAIL);
	assert_string_equal(d.target, m.target);
	assert_string_equal(d.code, m.code);
	assert_string_equal(d.text, m.text);
	assert_string_equal(d.subject, m.subject);
	assert_null(d.html);
	assert_int_equal(d.lifetime, 300);
	otp_message_fini(&d);
	free(bytes);

	static const char *const bad[] = {
		"", "[]", "{}", "{\"channel\":9,\"lifetime\":1,\"target\":\"a\",\"code\":\"1\"}",
		"{\"channel\":0,\"lifetime\":1,\"target\":\"a\"}",
		"{\"channel\":0,\"lifetime\":1,\"target\":5,\"code\":\"1\"}",
		"{\"channel\":0,\"lifetime\":-1,\"target\":\"a\",\"code\":\"1\"}",
		"{\"channel\":0,\"lifetime\":1,\"target\":\"a\",\"code\":\"1\",\"code\":\"2\"}",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		assert_int_equal(otp_message_decode((const uint8_t *)bad[i], strlen(bad[i]), &d),
		                 OTP_ERR_INVALID);
	}
}

static void test_template(void **state)
{
	(void)state;
	static const struct { const char *tmpl, *code; int lifetime; const char *want; } rows[] = {
		{"Your code is {code}", "123456", 300, "Your code is 123456"},
		{"{code} valid {minutes} min", "42", 61, "42 valid 2 min"},
		{"{code}{code}", "1", 0, "11"},
		{"no placeholders", "1", 60, "no placeholders"},
		{"{cod} {minutes", "1", 60, "{cod} {minutes"},
		{"", "1", 60, ""},
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		char *s = otp_template_render(rows[i].tmpl, rows[i].code, rows[i].lifetime);
		assert_non_null(s);
		assert_string_equal(s, rows[i].want);
		free(s);
	}
}

static void test_parse_i64(void **state)
{
	(void)state;
	static const struct { const char *s; int64_t min, max; int rc; int64_t v; } rows[] = {
		{"0", 0, 10, 0, 0},
		{"10", 0, 10, 0, 10},
		{"11", 0, 10, OTP_ERR_INVALID, 0},
		{"-1", 0, 10, OTP_ERR_INVALID, 0},
		{"-1", -5, 10, 0, -1},
		{"+7", 0, 10, 0, 7},
		{"", 0, 10, OTP_ERR_INVALID, 0},
		{" 1", 0, 10, OTP_ERR_INVALID, 0},
		{"1 ", 0, 10, OTP_ERR_INVALID, 0},
		{"1x", 0, 10, OTP_ERR_INVALID, 0},
		{"0x10", 0, 100, OTP_ERR_INVALID, 0},
		{"99999999999999999999", INT64_MIN, INT64_MAX, OTP_ERR_INVALID, 0},
		{"9223372036854775807", INT64_MIN, INT64_MAX, 0, INT64_MAX},
		{"-", 0, 10, OTP_ERR_INVALID, 0},
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		int64_t v = 0;
		assert_int_equal(otp_parse_i64(rows[i].s, rows[i].min, rows[i].max, &v), rows[i].rc);
		if (rows[i].rc == 0)
			assert_int_equal(v, rows[i].v);
	}
	int64_t v;
	assert_int_equal(otp_parse_i64(NULL, 0, 1, &v), OTP_ERR_INVALID);
}

static void test_error_set(void **state)
{
	(void)state;
	struct otp_error e;
	char longfield[100];
	memset(longfield, 'f', sizeof longfield - 1);
	longfield[sizeof longfield - 1] = '\0';
	assert_int_equal(otp_error_set(&e, OTP_ERR_INVALID, "x", longfield, "%s %d", "n", 5),
	                 OTP_ERR_INVALID);
	assert_int_equal(strlen(e.field), sizeof e.field - 1); /* cut, not overflowed */
	assert_string_equal(e.message, "n 5");
	assert_int_equal(otp_error_set(NULL, OTP_ERR_STORE, "", "", "x"), OTP_ERR_STORE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_channels),
		cmocka_unit_test(test_hashes),
		cmocka_unit_test(test_seal_open),
		cmocka_unit_test(test_uniform_rejects_biased_values),
		cmocka_unit_test(test_generate_code),
		cmocka_unit_test(test_check_decide),
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_message_roundtrip),
		cmocka_unit_test(test_template),
		cmocka_unit_test(test_parse_i64),
		cmocka_unit_test(test_error_set),
	};
	return cmocka_run_group_tests_name("core", tests, NULL, NULL);
}
