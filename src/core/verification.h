/*
 * verification.h - the pure rules of a verification: its states, the events that record
 * every change, the policy that travels with it, how its code is made, and the check
 * decision. Dialects, the service (verify/) and both store backends share these; nothing
 * here does I/O (randomness comes through struct otp_rng, time is a number).
 * Thread-safety: every function is reentrant.
 */
#ifndef OTPD_CORE_VERIFICATION_H
#define OTPD_CORE_VERIFICATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/otp.h"

/* Stored as these numbers: never renumber. */
enum otp_vstatus {
	OTP_VS_PENDING = 0,       /* sent (or being sent), waiting for the right code */
	OTP_VS_APPROVED = 1,      /* the right code was presented */
	OTP_VS_EXPIRED = 2,       /* its lifetime ran out unapproved */
	OTP_VS_CANCELED = 3,      /* canceled by the application */
	OTP_VS_MAX_ATTEMPTS = 4,  /* too many wrong codes: the code is void */
	OTP_VS_FAILED = 5,        /* no delivery could be made */
	OTP_VS_COUNT
};

/* "pending", "approved", "expired", "canceled", "max_attempts_reached", "failed". */
const char *otp_vstatus_name(enum otp_vstatus s);
int otp_vstatus_parse(const char *name, enum otp_vstatus *out);

/* The status a reader should see at `now`: a pending verification past its expiry is
 * expired even before the janitor records it. */
enum otp_vstatus otp_vstatus_at(enum otp_vstatus stored, int64_t expire_at, int64_t now);

/* Whether a stored verification still accepts its code at `now`: pending, or approved
 * without consumption (the compat dialect's "check twice answers true"), and unexpired. */
bool otp_verification_live(enum otp_vstatus stored, bool consume, int64_t expire_at,
                           int64_t now);

/* One row in the event log per change of a verification. Stored as these numbers: never
 * renumber. CREATED and RESENT are the sends that limit windows count. */
enum otp_event {
	OTP_EV_CREATED = 1,         /* a verification was made and its first message queued */
	OTP_EV_RESENT = 2,          /* another message was queued */
	OTP_EV_SENT = 3,            /* the provider accepted the message */
	OTP_EV_DELIVERY_FAILED = 4, /* the provider refused it for good, or retries ran out */
	OTP_EV_CHECK_FAILED = 5,    /* a wrong code was presented */
	OTP_EV_APPROVED = 6,
	OTP_EV_EXPIRED = 7,
	OTP_EV_CANCELED = 8,
	OTP_EV_MAX_ATTEMPTS = 9,    /* the wrong code that used the last attempt */
	OTP_EV_REFUSED = 10,        /* a send refused by a limit, a cooldown or max sends */
	OTP_EV_DELIVERED = 11,      /* the provider's receipt: it reached the person */
	OTP_EV_UNDELIVERED = 12,    /* the provider's receipt: it did not */
	OTP_EV_MAX = 12
};
/* "created", "resent", "sent", "delivery_failed", "check_failed", "approved",
 * "expired", "canceled", "max_attempts_reached", "refused", "delivered", "undelivered";
 * "unknown" otherwise. */
const char *otp_event_name(int ev);
int otp_event_parse(const char *name, int *out);

/* ---- codes -------------------------------------------------------------------------- */

#define OTP_GEN_LENGTH_MIN 4
#define OTP_GEN_LENGTH_MAX 32

/* How a server-made code looks: seed 003's options. */
struct otp_code_spec {
	int length;             /* OTP_GEN_LENGTH_MIN..OTP_GEN_LENGTH_MAX */
	unsigned alphabets;     /* enum otp_alphabet bits, at least one */
	bool no_lookalikes;     /* leave out 0 O o 1 l I i (hard to tell apart when read) */
};

/* Validate a spec: 0, or OTP_ERR_INVALID with `why` pointing at a static sentence. */
int otp_code_spec_check(const struct otp_code_spec *spec, const char **why);
/* Draw a code uniformly (rejection sampling from rng) into out (length + 1 bytes). */
int otp_code_make(const struct otp_rng *rng, const struct otp_code_spec *spec, char *out);
/* The characters a spec draws from, into set (room for 128); returns how many. */
size_t otp_code_charset(const struct otp_code_spec *spec, char *set);

/* ---- policy ------------------------------------------------------------------------- */

#define OTP_LIFETIME_MAX (86400 * 7)
#define OTP_ATTEMPTS_MAX 1000
#define OTP_SENDS_MAX 100
#define OTP_COOLDOWN_MAX 86400

/* What a verification obeys, fixed when it is made (from its app or its dialect). */
struct otp_policy {
	int lifetime;           /* seconds, 1..OTP_LIFETIME_MAX */
	int max_attempts;       /* wrong codes before it dies; 0: unlimited */
	bool consume;           /* approval uses the code up */
	int resend_cooldown;    /* seconds between two sends, 0..OTP_COOLDOWN_MAX */
	int max_sends;          /* sends including the first, 1..OTP_SENDS_MAX */
	struct otp_code_spec code;
};

/* 0, or OTP_ERR_INVALID with *field naming the member at fault and *why a sentence. */
int otp_policy_check(const struct otp_policy *p, const char **field, const char **why);

/* ---- the check decision ------------------------------------------------------------- */

/*
 * One live code a check compares against, as read inside the check's transaction.
 * `presented` is the presented code hashed the way this candidate's code was (its
 * channel and target), so one comparison per candidate decides.
 */
struct otp_candidate {
	int64_t id;
	uint8_t hash[OTP_HASH_LEN];
	uint8_t presented[OTP_HASH_LEN];
	enum otp_vstatus status;        /* pending, or approved and reusable */
	int attempts;                   /* wrong codes counted against it so far */
	int max_attempts;               /* 0: unlimited */
	bool consume;
	/* the decision, filled by otp_check_decide: */
	bool write;                     /* its row changes */
	int new_attempts;
	enum otp_vstatus new_status;
	int event;                      /* OTP_EV_* to record for it, 0: none */
};

struct otp_check_outcome {
	bool ok;                /* the answer: some candidate holds the presented code */
	size_t matched;         /* its index when ok */
	bool any_write;         /* some candidate's row changes: the check must be recorded */
};

/*
 * Compare the presented code with every candidate (no early exit, so timing does not
 * tell which matched). On a match the matching verification is approved (a first
 * approval is a change; a reusable one approved before is not). Otherwise the wrong code
 * counts against every candidate it was compared with, whichever endpoint asked, and a
 * candidate that reaches its max_attempts dies. So one budget guards each code, and a
 * new code does not refresh the guesses left for older ones.
 */
void otp_check_decide(struct otp_candidate *cands, size_t n, struct otp_check_outcome *out);

/* Attempts left of a verification (max_attempts 0: -1, unlimited). */
int otp_attempts_left(int attempts, int max_attempts);

#endif
