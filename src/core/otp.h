/*
 * otp.h - the pure core of otpd: channels, keyed hashing of codes, sealing (AEAD) of
 * secrets that must be read back, unbiased code generation, and the verification
 * decision (which live code matches, attempt counting). No I/O: the clock is a number
 * passed in, randomness comes through `struct otp_rng`, so tests can fix both.
 * Thread-safety: every function is reentrant; a `struct otp_key` is immutable after init.
 */
#ifndef OTPD_CORE_OTP_H
#define OTPD_CORE_OTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/errors.h"

/* Numeric values are stored in databases: never renumber. sms/email/call match the
 * old service's otp_password.channel (sms=0, email=1, call=2). */
enum otp_channel {
	OTP_CH_SMS = 0,
	OTP_CH_EMAIL = 1,
	OTP_CH_CALL = 2,
	OTP_CH_TELEGRAM = 3,
	OTP_CH_WHATSAPP = 4,
	OTP_CH_COUNT
};

/* Bit mask of channels, e.g. /sms/check accepts sms and call codes. */
#define OTP_CH_BIT(ch) (1u << (unsigned)(ch))

const char *otp_channel_name(enum otp_channel ch);
/* Returns 0 and sets *out, or OTP_ERR_INVALID for an unknown name. */
int otp_channel_parse(const char *name, enum otp_channel *out);

#define OTP_HASH_LEN 32u
#define OTP_KEY_LEN 32u
#define OTP_CODE_MAX 64u      /* longest code we accept (bytes) */
#define OTP_TARGET_MAX 256u   /* longest target (email is at most 254) */

/*
 * The service key. Sub-keys for the different uses are derived once at init so one
 * secret never serves two purposes (code hash, lookup hash, sealing).
 */
struct otp_key {
	uint8_t hash_key[OTP_KEY_LEN];
	uint8_t lookup_key[OTP_KEY_LEN];
	uint8_t seal_key[OTP_KEY_LEN];
	uint8_t secret_key[OTP_KEY_LEN];  /* API key secrets */
};

/* Derive the sub-keys from the master key. Returns 0 or OTP_ERR_INTERNAL. */
int otp_key_init(struct otp_key *k, const uint8_t master[OTP_KEY_LEN]);
void otp_key_wipe(struct otp_key *k);

/* Wipe a NUL-terminated secret (a code, a message holding one, a token) and free it.
 * Accepts NULL. */
void otp_secret_free(char *s);

/* HMAC-SHA256(hash_key, channel "|" target "|" code): what is stored for a code. */
void otp_code_hash(const struct otp_key *k, enum otp_channel ch, const char *target,
                   const char *code, uint8_t out[OTP_HASH_LEN]);
/* HMAC-SHA256(lookup_key, channel "|" code): lets GET /target find a code's target
 * without storing the code. */
void otp_lookup_hash(const struct otp_key *k, enum otp_channel ch, const char *code,
                     uint8_t out[OTP_HASH_LEN]);
/* HMAC-SHA256(secret_key, secret): what is stored for an API key's secret. */
void otp_secret_hash(const struct otp_key *k, const char *secret, uint8_t out[OTP_HASH_LEN]);
/* Constant-time equality of two hashes. */
bool otp_hash_equal(const uint8_t a[OTP_HASH_LEN], const uint8_t b[OTP_HASH_LEN]);

/* Randomness, passed in so tests can fix it. `fill` writes n random bytes. */
struct otp_rng {
	void (*fill)(void *ctx, void *buf, size_t n);
	void *ctx;
};
/* The system CSPRNG (libsodium's randombytes). */
extern const struct otp_rng otp_rng_system;
/* A uniform integer in [0, upper) without modulo bias. upper > 0. */
uint32_t otp_rng_uniform(const struct otp_rng *rng, uint32_t upper);

/*
 * Sealing: XChaCha20-Poly1305 with seal_key. The sealed form is nonce || ciphertext ||
 * tag, OTP_SEAL_OVERHEAD bytes longer than the plaintext. `ad` binds the blob to its use
 * (e.g. "outbox" or "password") so one can't be swapped for the other.
 */
#define OTP_SEAL_OVERHEAD 40u
/* out must hold len + OTP_SEAL_OVERHEAD bytes. */
void otp_seal(const struct otp_key *k, const struct otp_rng *rng, const char *ad,
              const uint8_t *in, size_t len, uint8_t *out);
/* out must hold len - OTP_SEAL_OVERHEAD bytes. Returns 0, or OTP_ERR_INVALID when the
 * blob is short, forged, or sealed for another `ad`. */
int otp_open(const struct otp_key *k, const char *ad, const uint8_t *in, size_t len,
             uint8_t *out, size_t *out_len);

/* Character sets a generated code may draw from (seed 003's allow_* options). */
enum otp_alphabet {
	OTP_ALPHA_DIGITS = 1,
	OTP_ALPHA_UPPER = 2,
	OTP_ALPHA_LOWER = 4,
	OTP_ALPHA_SPECIAL = 8,
};
/* Write a NUL-terminated code of `len` (1..OTP_CODE_MAX) characters drawn uniformly
 * from the union of `alphabets` into out (len + 1 bytes). Returns 0 or OTP_ERR_INVALID. */
int otp_generate_code(const struct otp_rng *rng, unsigned alphabets, size_t len, char *out);

#endif
