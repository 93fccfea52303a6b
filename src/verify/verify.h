/*
 * verify.h - the verification service every dialect calls: start, check, resend, cancel,
 * get and list a verification, with typed results and dialect-neutral errors (struct
 * otp_error: a class, a stable reason such as "target_limit", the field at fault, a
 * sentence). It makes and hashes codes, renders and seals the messages, and runs each
 * operation as one store transaction; the rules it applies are core/'s. It does no HTTP
 * and renders no dialect's shapes, and it never logs (api/ logs once per request).
 * Thread-safety: struct verify_env is immutable and shared; every function is reentrant.
 */
#ifndef OTPD_VERIFY_VERIFY_H
#define OTPD_VERIFY_VERIFY_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "core/errors.h"
#include "core/otp.h"
#include "core/verification.h"
#include "store/store.h"

/* What the service runs on, wired by main. */
struct verify_env {
	const struct config *cfg;      /* templates, providers per channel, DUMMY */
	struct store *store;
	const struct otp_key *key;
	const struct otp_rng *rng;
	int64_t (*now)(void);          /* unix seconds */
	void (*notify)(void *arg);     /* a delivery job was committed: wake the outbox */
	void *notify_arg;
};

/* The message of a send. Either ready texts that already hold the code (the compat
 * dialect's clients write their own message), or a template with {code} and {minutes}
 * rendered here and kept for resends. NULL parts fall back to the OTPD_TEMPLATE_* of
 * the channel. */
struct verify_message {
	const char *text;      /* sms, call, telegram, whatsapp text; email text part */
	const char *subject;   /* email */
	const char *html;      /* email */
	const char *tmpl;      /* a template instead of text (kept with the verification) */
	const char *lang;      /* the language asked for (a voice call says it in it) */
	const char *sender;    /* the sender the app wants shown (a provider may ignore it) */
};

struct verify_start {
	const char *app_id;            /* "" : the compat dialect */
	enum otp_channel channel;
	const char *target;            /* normalised (core/target.h) */
	const char *ip;                /* the requester's, may be NULL */
	struct otp_policy policy;      /* checked here (otp_policy_check) */
	const char *code;              /* the caller's own code, or NULL: made from policy.code */
	struct verify_message msg;
	const char *fallback;          /* the dialect's text of channels to try next; may be NULL */
	bool keep_code;                /* keep a sealed copy (resends, compat GET /password) */
	bool require_ip;               /* compat: `ip` is required while the channel has ip rules */
	const char *idem_key;          /* Idempotency-Key, or NULL */
	const char *idem_body;         /* what the key is bound to (a fingerprint is stored) */
	size_t idem_body_len;
	const char *request_id;
};

struct verify_started {
	struct store_verification v;
	bool replayed;                 /* an Idempotency-Key seen before: the first answer */
	int64_t job_id;
};

/* Returns 0, or a negative enum otp_err with err filled: OTP_ERR_INVALID (a policy
 * member, a missing ip: "missing_parameter"), OTP_ERR_LIMIT ("ip_limit",
 * "target_limit"), OTP_ERR_CONFLICT ("idempotency_mismatch"), OTP_ERR_STORE
 * ("unavailable"). */
int verify_start(const struct verify_env *env, const struct verify_start *in,
                 struct verify_started *out, struct otp_error *err);

struct verify_check {
	enum store_check_by by;
	const char *app_id;            /* "" compat; NULL with by ID: any app (admin) */
	const char *public_id;         /* ID */
	const char *target;            /* TARGET, LATEST (normalised) */
	unsigned channel_mask;         /* TARGET, LATEST */
	enum otp_channel channel;      /* LOOKUP */
	const char *code;              /* the presented code */
	const char *ip;
};

/* Fills out (ok, found, the verification). A wrong code is not an error. Errors:
 * OTP_ERR_INVALID, OTP_ERR_STORE ("unavailable": nothing was recorded, and the answer
 * must not be taken as a match or a miss). */
int verify_check(const struct verify_env *env, const struct verify_check *in,
                 struct store_check_result *out, struct otp_error *err);

/* Another message for a pending verification: to `channel` (and `target`) when given,
 * else where it was sent last. The message is rendered again from the kept code and
 * template. Errors: OTP_ERR_NOT_FOUND, OTP_ERR_CONFLICT ("not_pending", "conflict"),
 * OTP_ERR_LIMIT ("resend_cooldown" with err->retry_after, "max_sends_reached",
 * "ip_limit", "target_limit"), OTP_ERR_INVALID ("code_not_kept"), OTP_ERR_STORE. */
struct verify_resend {
	const char *app_id;            /* NULL: any app (admin) */
	const char *public_id;
	bool to_channel;               /* send to channel/target below */
	enum otp_channel channel;
	const char *target;
	const char *fallback;          /* what is left to try after it (may be NULL) */
	const char *ip;
	const char *request_id;
};
int verify_resend(const struct verify_env *env, const struct verify_resend *in,
                  struct store_verification *out, struct otp_error *err);

/* Errors: OTP_ERR_NOT_FOUND, OTP_ERR_CONFLICT ("not_pending": *out says how it stands),
 * OTP_ERR_STORE. */
int verify_cancel(const struct verify_env *env, const char *app_id, const char *public_id,
                  struct store_verification *out, struct otp_error *err);

int verify_get(const struct verify_env *env, const char *app_id, const char *public_id,
               struct store_verification *out, struct otp_error *err);

/* prefix, then the time `now` (8 hex digits), a counter of this process (6) and 72
 * random bits from rng (18), into out (room for strlen(prefix) + 33). */
void verify_new_id(const struct otp_rng *rng, int64_t now, const char *prefix, char *out,
                   size_t cap);

/* The provider that delivers `channel` now ("dummy" under DUMMY=true). */
const char *verify_provider(const struct config *cfg, enum otp_channel channel);

#endif
