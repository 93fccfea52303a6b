/*
 * test_core.c - the pure core: channels, keyed hashes, sealing, unbiased code generation
 * (and its uniformity), a verification's states and the check decision, policies, app
 * settings, limits, message encoding and templates, UTF-8, integer parsing. Fixed
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

#include "core/app.h"
#include "core/limits.h"
#include "core/message.h"
#include "core/num.h"
#include "core/otp.h"
#include "core/text.h"
#include "core/verification.h"

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

/* Candidates of the codes "11111", "22222", "33333" (ids 1..3), each with `attempts`
 * wrong checks counted and max_attempts `max`, the presented code hashed like theirs. */
static void candidates(const struct otp_key *k, struct otp_candidate *c, const char *presented,
                       const int attempts[3], int max, bool consume, enum otp_vstatus status)
{
	static const char *const codes[3] = {"11111", "22222", "33333"};
	for (int i = 0; i < 3; i++) {
		memset(&c[i], 0, sizeof c[i]);
		c[i].id = i + 1;
		otp_code_hash(k, OTP_CH_SMS, "77011234567", codes[i], c[i].hash);
		otp_code_hash(k, OTP_CH_SMS, "77011234567", presented, c[i].presented);
		c[i].attempts = attempts[i];
		c[i].max_attempts = max;
		c[i].consume = consume;
		c[i].status = status;
	}
}

static void test_check_decide(void **state)
{
	(void)state;
	struct otp_key k = test_key(5);
	struct otp_candidate c[3];
	struct otp_check_outcome out;
	const int none[3] = {0, 0, 0};

	/* any live code matches, not only the newest; a first approval is a change */
	candidates(&k, c, "33333", none, 5, true, OTP_VS_PENDING);
	otp_check_decide(c, 3, &out);
	assert_true(out.ok);
	assert_int_equal(out.matched, 2);
	assert_true(out.any_write);
	assert_true(c[2].write);
	assert_int_equal(c[2].new_status, OTP_VS_APPROVED);
	assert_int_equal(c[2].event, OTP_EV_APPROVED);
	assert_false(c[0].write || c[1].write);
	/* a right code counts nothing against the others */
	assert_int_equal(c[0].new_attempts, 0);

	/* a reusable code approved before: true again, nothing changes */
	candidates(&k, c, "11111", none, 5, false, OTP_VS_APPROVED);
	otp_check_decide(c, 3, &out);
	assert_true(out.ok);
	assert_int_equal(out.matched, 0);
	assert_false(out.any_write);

	/* a wrong code counts against every candidate it was compared with; the one that
	 * reaches its max dies, the others keep their own count (a newer code does not
	 * refresh an older one's guesses, nor does an older one use up a newer one's) */
	const int some[3] = {4, 1, 0};
	candidates(&k, c, "99999", some, 5, true, OTP_VS_PENDING);
	otp_check_decide(c, 3, &out);
	assert_false(out.ok);
	assert_true(out.any_write);
	assert_int_equal(c[0].new_attempts, 5);
	assert_int_equal(c[0].new_status, OTP_VS_MAX_ATTEMPTS);
	assert_int_equal(c[0].event, OTP_EV_MAX_ATTEMPTS);
	assert_int_equal(c[1].new_attempts, 2);
	assert_int_equal(c[1].new_status, OTP_VS_PENDING);
	assert_int_equal(c[1].event, OTP_EV_CHECK_FAILED);
	assert_int_equal(c[2].new_attempts, 1);

	/* unlimited attempts never kill */
	const int many[3] = {1000, 1000, 1000};
	candidates(&k, c, "99999", many, 0, true, OTP_VS_PENDING);
	otp_check_decide(c, 3, &out);
	assert_int_equal(c[0].new_status, OTP_VS_PENDING);
	assert_int_equal(c[0].new_attempts, 1001);

	/* no candidate at all: nothing to count against */
	otp_check_decide(c, 0, &out);
	assert_false(out.ok);
	assert_false(out.any_write);

	assert_int_equal(otp_attempts_left(2, 5), 3);
	assert_int_equal(otp_attempts_left(7, 5), 0);
	assert_int_equal(otp_attempts_left(7, 0), -1);
}

static void test_vstatus(void **state)
{
	(void)state;
	enum otp_vstatus st;
	for (int i = 0; i < OTP_VS_COUNT; i++) {
		assert_int_equal(otp_vstatus_parse(otp_vstatus_name((enum otp_vstatus)i), &st), 0);
		assert_int_equal(st, i);
	}
	assert_string_equal(otp_vstatus_name(OTP_VS_MAX_ATTEMPTS), "max_attempts_reached");
	assert_int_equal(otp_vstatus_parse("nope", &st), OTP_ERR_INVALID);
	/* a pending one past its expiry reads as expired; other states stay */
	assert_int_equal(otp_vstatus_at(OTP_VS_PENDING, 100, 100), OTP_VS_EXPIRED);
	assert_int_equal(otp_vstatus_at(OTP_VS_PENDING, 101, 100), OTP_VS_PENDING);
	assert_int_equal(otp_vstatus_at(OTP_VS_APPROVED, 100, 200), OTP_VS_APPROVED);
	assert_true(otp_verification_live(OTP_VS_PENDING, true, 101, 100));
	assert_false(otp_verification_live(OTP_VS_PENDING, true, 100, 100));
	assert_true(otp_verification_live(OTP_VS_APPROVED, false, 101, 100));
	assert_false(otp_verification_live(OTP_VS_APPROVED, true, 101, 100));
	assert_false(otp_verification_live(OTP_VS_CANCELED, false, 101, 100));
	int ev;
	for (int i = 1; i <= OTP_EV_MAX; i++) {
		assert_int_equal(otp_event_parse(otp_event_name(i), &ev), 0);
		assert_int_equal(ev, i);
	}
	assert_string_equal(otp_event_name(99), "unknown");
}

static void test_code_spec(void **state)
{
	(void)state;
	struct counter_rng cr = {0};
	struct otp_rng rng = {counter_fill, &cr};
	char code[OTP_GEN_LENGTH_MAX + 1], set[128];
	const char *why;
	static const struct {
		int length;
		unsigned alpha;
		bool no_lookalikes;
		int ok;
		size_t charset;
	} rows[] = {
		{6, OTP_ALPHA_DIGITS, false, 0, 10},
		{4, OTP_ALPHA_DIGITS, true, 0, 8},                       /* without 0 and 1 */
		{32, OTP_ALPHA_UPPER | OTP_ALPHA_LOWER, false, 0, 52},
		{8, OTP_ALPHA_UPPER | OTP_ALPHA_LOWER | OTP_ALPHA_DIGITS, true, 0, 55},
		{10, OTP_ALPHA_SPECIAL, false, 0, 12},
		{3, OTP_ALPHA_DIGITS, false, OTP_ERR_INVALID, 10},        /* too short */
		{33, OTP_ALPHA_DIGITS, false, OTP_ERR_INVALID, 10},       /* too long */
		{6, 0, false, OTP_ERR_INVALID, 0},                        /* nothing allowed */
		{6, 64, false, OTP_ERR_INVALID, 0},                       /* unknown alphabet */
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		struct otp_code_spec spec = {rows[i].length, rows[i].alpha, rows[i].no_lookalikes};
		assert_int_equal(otp_code_spec_check(&spec, &why), rows[i].ok);
		if (rows[i].ok != 0) {
			assert_non_null(why);
			assert_int_equal(otp_code_make(&rng, &spec, code), OTP_ERR_INVALID);
			continue;
		}
		size_t n = otp_code_charset(&spec, set);
		assert_int_equal(n, rows[i].charset);
		assert_int_equal(otp_code_make(&rng, &spec, code), 0);
		assert_int_equal(strlen(code), (size_t)rows[i].length);
		for (int j = 0; j < rows[i].length; j++) {
			assert_non_null(memchr(set, code[j], n));
			if (rows[i].no_lookalikes)
				assert_null(strchr("0Oo1lIi", code[j]));
		}
	}
}

/* xorshift64*: a fixed-seed generator for the statistics below (not for production). */
struct xorshift_rng { uint64_t s; };
static void xorshift_fill(void *ctx, void *buf, size_t n)
{
	struct xorshift_rng *r = ctx;
	for (size_t i = 0; i < n; i++) {
		r->s ^= r->s >> 12;
		r->s ^= r->s << 25;
		r->s ^= r->s >> 27;
		((uint8_t *)buf)[i] = (uint8_t)((r->s * UINT64_C(2685821657736338717)) >> 56);
	}
}

/*
 * The generator is uniform: over 60 000 codes of 6 characters from an alphabet of 55
 * (digits and letters without look-alikes: 55 does not divide 2^32, so a modulo would
 * be biased), the chi-square statistic of the character counts against equal
 * expectation stays below the 0.999 quantile of chi-square with 54 degrees of freedom
 * (94.46). A generator with modulo bias of that size would exceed it. Fixed seed.
 */
static void test_code_uniform(void **state)
{
	(void)state;
	struct xorshift_rng xr = {UINT64_C(0x9E3779B97F4A7C15)};
	struct otp_rng rng = {xorshift_fill, &xr};
	struct otp_code_spec spec = {6, OTP_ALPHA_DIGITS | OTP_ALPHA_UPPER | OTP_ALPHA_LOWER, true};
	char set[128], code[8];
	size_t n = otp_code_charset(&spec, set);
	assert_int_equal(n, 55);
	long counts[128] = {0};
	const long codes = 60000;
	for (long i = 0; i < codes; i++) {
		assert_int_equal(otp_code_make(&rng, &spec, code), 0);
		for (int j = 0; j < 6; j++)
			counts[(unsigned char)code[j]]++;
	}
	double expected = (double)codes * 6 / (double)n, chi2 = 0;
	for (size_t i = 0; i < n; i++) {
		double d = (double)counts[(unsigned char)set[i]] - expected;
		chi2 += d * d / expected;
	}
	assert_true(chi2 < 94.46);
	/* and the statistic is sensitive: a biased draw (modulo of one byte) exceeds it */
	struct xorshift_rng xb = {UINT64_C(0x9E3779B97F4A7C15)};
	long biased[128] = {0};
	for (long i = 0; i < codes * 6; i++) {
		uint8_t byte;
		xorshift_fill(&xb, &byte, 1);
		biased[(unsigned char)set[byte % n]]++;
	}
	double chi2b = 0;
	for (size_t i = 0; i < n; i++) {
		double d = (double)biased[(unsigned char)set[i]] - expected;
		chi2b += d * d / expected;
	}
	assert_true(chi2b > 94.46);
}

static void test_policy(void **state)
{
	(void)state;
	const char *field, *why;
	struct otp_policy ok = {300, 5, true, 30, 5, {6, OTP_ALPHA_DIGITS, false}};
	assert_int_equal(otp_policy_check(&ok, &field, &why), 0);
	struct otp_policy p = ok;
	p.lifetime = 0;
	assert_int_equal(otp_policy_check(&p, &field, &why), OTP_ERR_INVALID);
	assert_string_equal(field, "lifetime");
	p = ok;
	p.max_sends = 0;
	assert_int_equal(otp_policy_check(&p, &field, &why), OTP_ERR_INVALID);
	assert_string_equal(field, "max_sends");
	p = ok;
	p.max_attempts = -1;
	assert_int_equal(otp_policy_check(&p, &field, &why), OTP_ERR_INVALID);
	assert_string_equal(field, "max_attempts");
	p = ok;
	p.code.length = 2;
	assert_int_equal(otp_policy_check(&p, &field, &why), OTP_ERR_INVALID);
	assert_string_equal(field, "code");
}

static void test_app_settings(void **state)
{
	(void)state;
	struct otp_app_settings s;
	struct otp_error err = {0};
	assert_int_equal(otp_app_settings_default(&s), 0);
	assert_int_equal(s.policy.code.length, 6);
	assert_int_equal(s.channels, OTP_CH_BIT(OTP_CH_COUNT) - 1u);
	json_t *patch = json_loads("{\"code_length\": 8, \"allow_upper_case\": true, "
	                           "\"allow_digits\": false, \"channels\": [\"sms\", \"email\"], "
	                           "\"sender\": \"Acme\", \"templates\": {\"login\": "
	                           "{\"en\": \"Code {code}\", \"pt\": \"Codigo {code}\"}}}", 0, NULL);
	assert_non_null(patch);
	assert_int_equal(otp_app_settings_patch(&s, patch, &err), 0);
	json_decref(patch);
	assert_int_equal(s.policy.code.length, 8);
	assert_int_equal(s.policy.code.alphabets, OTP_ALPHA_UPPER);
	assert_int_equal(s.channels, OTP_CH_BIT(OTP_CH_SMS) | OTP_CH_BIT(OTP_CH_EMAIL));
	assert_string_equal(s.sender, "Acme");
	assert_string_equal(otp_app_template(&s, "login", "pt-BR"), "Codigo {code}");
	assert_string_equal(otp_app_template(&s, "login", "en"), "Code {code}");
	assert_non_null(otp_app_template(&s, "login", "de")); /* some language of it */
	assert_null(otp_app_template(&s, "other", "en"));
	assert_null(otp_app_template(&s, NULL, "en")); /* no "default" template */

	/* the JSON form parses back to the same settings */
	json_t *j = otp_app_settings_json(&s);
	char *text = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	struct otp_app_settings back;
	assert_int_equal(otp_app_settings_parse(text, &back, &err), 0);
	free(text);
	assert_int_equal(back.policy.code.length, 8);
	assert_int_equal(back.channels, s.channels);
	assert_string_equal(otp_app_template(&back, "login", "en"), "Code {code}");
	otp_app_settings_fini(&back);

	/* bad patches name the setting and change nothing */
	static const char *const bad[] = {
		"{\"code_length\": 3}", "{\"code_length\": \"6\"}", "{\"nope\": 1}",
		"{\"channels\": [\"fax\"]}", "{\"channels\": []}",
		"{\"templates\": {\"t\": {\"en\": \"no placeholder\"}}}",
		"{\"allow_upper_case\": false}", /* nothing left to draw from */
		"{\"sender\": \"\"}", "{\"max_sends\": 0}", "[1]",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		json_t *b = json_loads(bad[i], 0, NULL);
		assert_non_null(b);
		memset(&err, 0, sizeof err);
		assert_int_equal(otp_app_settings_patch(&s, b, &err), OTP_ERR_INVALID);
		assert_true(err.field[0] != '\0');
		json_decref(b);
		assert_int_equal(s.policy.code.length, 8);
	}
	assert_int_equal(otp_app_settings_parse("not json", &back, &err), OTP_ERR_INVALID);
	otp_app_settings_fini(&s);
}

static void test_text(void **state)
{
	(void)state;
	assert_true(otp_utf8_valid("caf\xc3\xa9", 5));
	assert_false(otp_utf8_valid("\xc3", 1));            /* cut */
	assert_false(otp_utf8_valid("\xed\xa0\x80", 3));    /* a surrogate */
	assert_false(otp_utf8_valid("\xc0\xaf", 2));        /* overlong */
	char out[8];
	otp_text_clean(out, sizeof out, "a\xff" "b\xc3\xa9" "cdefgh");
	assert_string_equal(out, "a?b\xc3\xa9" "cd");
	assert_true(otp_has_control("a\tb", false));
	assert_false(otp_has_control("a\tb", true));
	assert_true(otp_has_control("a\x7f" "b", true));
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
		cmocka_unit_test(test_vstatus),
		cmocka_unit_test(test_code_spec),
		cmocka_unit_test(test_code_uniform),
		cmocka_unit_test(test_policy),
		cmocka_unit_test(test_app_settings),
		cmocka_unit_test(test_text),
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_message_roundtrip),
		cmocka_unit_test(test_template),
		cmocka_unit_test(test_parse_i64),
		cmocka_unit_test(test_error_set),
	};
	return cmocka_run_group_tests_name("core", tests, NULL, NULL);
}
