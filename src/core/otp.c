/*
 * otp.c - channels, keyed hashes, sealing and code generation.
 * Pure: the only state is what callers pass in (key, rng, clock as numbers).
 */
#include "core/otp.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

static const char *const channel_names[OTP_CH_COUNT] = {
	[OTP_CH_SMS] = "sms",
	[OTP_CH_EMAIL] = "email",
	[OTP_CH_CALL] = "call",
	[OTP_CH_TELEGRAM] = "telegram",
	[OTP_CH_WHATSAPP] = "whatsapp",
};

const char *otp_channel_name(enum otp_channel ch)
{
	if ((unsigned)ch >= OTP_CH_COUNT)
		return "unknown";
	return channel_names[ch];
}

int otp_channel_parse(const char *name, enum otp_channel *out)
{
	if (name == NULL)
		return OTP_ERR_INVALID;
	for (unsigned i = 0; i < OTP_CH_COUNT; i++) {
		if (strcmp(name, channel_names[i]) == 0) {
			*out = (enum otp_channel)i;
			return 0;
		}
	}
	return OTP_ERR_INVALID;
}

/* Sub-keys: HMAC(master, label). One master secret, three independent purposes. */
static void derive(const uint8_t master[OTP_KEY_LEN], const char *label, uint8_t out[OTP_KEY_LEN])
{
	crypto_auth_hmacsha256(out, (const unsigned char *)label, strlen(label), master);
}

int otp_key_init(struct otp_key *k, const uint8_t master[OTP_KEY_LEN])
{
	if (sodium_init() < 0)
		return OTP_ERR_INTERNAL;
	derive(master, "otpd code hash v1", k->hash_key);
	derive(master, "otpd lookup hash v1", k->lookup_key);
	derive(master, "otpd seal v1", k->seal_key);
	derive(master, "otpd api key secret v1", k->secret_key);
	return 0;
}

void otp_key_wipe(struct otp_key *k)
{
	sodium_memzero(k, sizeof *k);
}

void otp_secret_free(char *s)
{
	if (s == NULL)
		return;
	sodium_memzero(s, strlen(s));
	free(s);
}

static void hmac_parts(const uint8_t key[OTP_KEY_LEN], const char *const *parts, size_t n,
                       uint8_t out[OTP_HASH_LEN])
{
	crypto_auth_hmacsha256_state st;
	crypto_auth_hmacsha256_init(&st, key, OTP_KEY_LEN);
	for (size_t i = 0; i < n; i++) {
		/* length-prefix every part so "a|b" + "c" can never equal "a" + "b|c" */
		uint32_t len = (uint32_t)strlen(parts[i]);
		uint8_t be[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len};
		crypto_auth_hmacsha256_update(&st, be, sizeof be);
		crypto_auth_hmacsha256_update(&st, (const unsigned char *)parts[i], len);
	}
	crypto_auth_hmacsha256_final(&st, out);
	sodium_memzero(&st, sizeof st);
}

void otp_code_hash(const struct otp_key *k, enum otp_channel ch, const char *target,
                   const char *code, uint8_t out[OTP_HASH_LEN])
{
	const char *parts[] = {otp_channel_name(ch), target, code};
	hmac_parts(k->hash_key, parts, 3, out);
}

void otp_lookup_hash(const struct otp_key *k, enum otp_channel ch, const char *code,
                     uint8_t out[OTP_HASH_LEN])
{
	const char *parts[] = {otp_channel_name(ch), code};
	hmac_parts(k->lookup_key, parts, 2, out);
}

void otp_secret_hash(const struct otp_key *k, const char *secret, uint8_t out[OTP_HASH_LEN])
{
	const char *parts[] = {"api-key", secret};
	hmac_parts(k->secret_key, parts, 2, out);
}

bool otp_hash_equal(const uint8_t a[OTP_HASH_LEN], const uint8_t b[OTP_HASH_LEN])
{
	return sodium_memcmp(a, b, OTP_HASH_LEN) == 0;
}

static void system_fill(void *ctx, void *buf, size_t n)
{
	(void)ctx;
	randombytes_buf(buf, n);
}

const struct otp_rng otp_rng_system = {system_fill, NULL};

uint32_t otp_rng_uniform(const struct otp_rng *rng, uint32_t upper)
{
	if (upper < 2)
		return 0;
	/* Reject the values below 2^32 mod upper so every residue is equally likely. */
	uint32_t min = (uint32_t)(-upper) % upper;
	for (;;) {
		uint32_t r;
		rng->fill(rng->ctx, &r, sizeof r);
		if (r >= min)
			return r % upper;
	}
}

void otp_seal(const struct otp_key *k, const struct otp_rng *rng, const char *ad,
              const uint8_t *in, size_t len, uint8_t *out)
{
	uint8_t *nonce = out;
	rng->fill(rng->ctx, nonce, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
	unsigned long long clen = 0;
	crypto_aead_xchacha20poly1305_ietf_encrypt(
		out + crypto_aead_xchacha20poly1305_ietf_NPUBBYTES, &clen, in, len,
		(const unsigned char *)ad, strlen(ad), NULL, nonce, k->seal_key);
}

int otp_open(const struct otp_key *k, const char *ad, const uint8_t *in, size_t len,
             uint8_t *out, size_t *out_len)
{
	if (len < OTP_SEAL_OVERHEAD)
		return OTP_ERR_INVALID;
	unsigned long long mlen = 0;
	const size_t np = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES;
	if (crypto_aead_xchacha20poly1305_ietf_decrypt(out, &mlen, NULL, in + np, len - np,
	                                               (const unsigned char *)ad, strlen(ad),
	                                               in, k->seal_key) != 0)
		return OTP_ERR_INVALID;
	*out_len = (size_t)mlen;
	return 0;
}

/* Special characters that survive SMS encodings (GSM 03.38) and are easy to type. */
static const char special_chars[] = "!#$%&*+-=?@_";

int otp_generate_code(const struct otp_rng *rng, unsigned alphabets, size_t len, char *out)
{
	if (len == 0 || len > OTP_CODE_MAX)
		return OTP_ERR_INVALID;
	char set[128];
	size_t n = 0;
	if (alphabets & OTP_ALPHA_DIGITS)
		for (char c = '0'; c <= '9'; c++)
			set[n++] = c;
	if (alphabets & OTP_ALPHA_UPPER)
		for (char c = 'A'; c <= 'Z'; c++)
			set[n++] = c;
	if (alphabets & OTP_ALPHA_LOWER)
		for (char c = 'a'; c <= 'z'; c++)
			set[n++] = c;
	if (alphabets & OTP_ALPHA_SPECIAL)
		for (size_t i = 0; special_chars[i] != '\0'; i++)
			set[n++] = special_chars[i];
	if (n == 0)
		return OTP_ERR_INVALID;
	for (size_t i = 0; i < len; i++)
		out[i] = set[otp_rng_uniform(rng, (uint32_t)n)];
	out[len] = '\0';
	return 0;
}

