/*
 * limits.h - sliding-window send limits, decided purely from the rules in force and the
 * counts the store read inside its transaction. "At most `rate` sends within the last
 * `minutes` minutes", per IP and per target; rules are evaluated in the order they were
 * set and the first that fails decides the answer (COMPAT.md, Limits).
 */
#ifndef OTPD_CORE_LIMITS_H
#define OTPD_CORE_LIMITS_H

#include <stddef.h>
#include <stdint.h>

#include "core/otp.h"

enum otp_limit_kind {
	OTP_LIMIT_TARGET = 0, /* matches the old service's otp_limit.measure: target=0 */
	OTP_LIMIT_IP = 1,
};

#define OTP_LIMIT_MINUTES_MAX 525600 /* one year */
#define OTP_LIMIT_RATE_MAX 1000000
#define OTP_LIMIT_RULES_MAX 32       /* per (channel, kind) */

struct otp_limit_rule {
	enum otp_limit_kind kind;
	int minutes; /* 1..OTP_LIMIT_MINUTES_MAX */
	int rate;    /* 0..OTP_LIMIT_RATE_MAX; 0 forbids every send */
};

/* Start of the window of a rule, in unix seconds, for the time `now`. */
int64_t otp_limit_window_start(const struct otp_limit_rule *r, int64_t now);

/*
 * counts[i] is the number of successful sends within rules[i]'s window for the rule's
 * kind (sends from the same ip, or to the same target, on the same channel). Returns the
 * index of the first rule that refuses a new send, or -1 when the send is allowed.
 */
int otp_limits_decide(const struct otp_limit_rule *rules, const int64_t *counts, size_t n);

/* The compat status_code / message for a refusal by a rule of `kind` on `ch`:
 * "ip_limit" / "IP limit has been reached", "phone_limit", "email_limit", "chat_id_limit". */
const char *otp_limit_status_code(enum otp_channel ch, enum otp_limit_kind kind);
const char *otp_limit_message(enum otp_channel ch, enum otp_limit_kind kind);

#endif
