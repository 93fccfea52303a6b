/*
 * verification.c - states, events, code generation and the check decision of a
 * verification (verification.h). Pure.
 */
#include "core/verification.h"

#include <string.h>

static const char *const status_names[OTP_VS_COUNT] = {
	[OTP_VS_PENDING] = "pending",
	[OTP_VS_APPROVED] = "approved",
	[OTP_VS_EXPIRED] = "expired",
	[OTP_VS_CANCELED] = "canceled",
	[OTP_VS_MAX_ATTEMPTS] = "max_attempts_reached",
	[OTP_VS_FAILED] = "failed",
};

const char *otp_vstatus_name(enum otp_vstatus s)
{
	if ((unsigned)s >= OTP_VS_COUNT)
		return "unknown";
	return status_names[s];
}

int otp_vstatus_parse(const char *name, enum otp_vstatus *out)
{
	for (unsigned i = 0; name != NULL && i < OTP_VS_COUNT; i++) {
		if (strcmp(name, status_names[i]) == 0) {
			*out = (enum otp_vstatus)i;
			return 0;
		}
	}
	return OTP_ERR_INVALID;
}

enum otp_vstatus otp_vstatus_at(enum otp_vstatus stored, int64_t expire_at, int64_t now)
{
	if (stored == OTP_VS_PENDING && expire_at <= now)
		return OTP_VS_EXPIRED;
	return stored;
}

bool otp_verification_live(enum otp_vstatus stored, bool consume, int64_t expire_at,
                           int64_t now)
{
	if (expire_at <= now)
		return false;
	return stored == OTP_VS_PENDING || (stored == OTP_VS_APPROVED && !consume);
}

static const char *const event_names[OTP_EV_MAX + 1] = {
	[OTP_EV_CREATED] = "created",
	[OTP_EV_RESENT] = "resent",
	[OTP_EV_SENT] = "sent",
	[OTP_EV_DELIVERY_FAILED] = "delivery_failed",
	[OTP_EV_CHECK_FAILED] = "check_failed",
	[OTP_EV_APPROVED] = "approved",
	[OTP_EV_EXPIRED] = "expired",
	[OTP_EV_CANCELED] = "canceled",
	[OTP_EV_MAX_ATTEMPTS] = "max_attempts_reached",
	[OTP_EV_REFUSED] = "refused",
	[OTP_EV_DELIVERED] = "delivered",
	[OTP_EV_UNDELIVERED] = "undelivered",
};

const char *otp_event_name(int ev)
{
	if (ev < 1 || ev > OTP_EV_MAX)
		return "unknown";
	return event_names[ev];
}

int otp_event_parse(const char *name, int *out)
{
	for (int i = 1; name != NULL && i <= OTP_EV_MAX; i++) {
		if (strcmp(name, event_names[i]) == 0) {
			*out = i;
			return 0;
		}
	}
	return OTP_ERR_INVALID;
}

/* Special characters that survive SMS encodings (GSM 03.38) and are easy to type. */
static const char special_chars[] = "!#$%&*+-=?@_";
/* Read aloud or in some fonts these pass for one another. */
static const char lookalikes[] = "0Oo1lIi";

size_t otp_code_charset(const struct otp_code_spec *spec, char *set)
{
	char all[128];
	size_t n = 0, m = 0;
	if (spec->alphabets & OTP_ALPHA_DIGITS)
		for (char c = '0'; c <= '9'; c++)
			all[n++] = c;
	if (spec->alphabets & OTP_ALPHA_UPPER)
		for (char c = 'A'; c <= 'Z'; c++)
			all[n++] = c;
	if (spec->alphabets & OTP_ALPHA_LOWER)
		for (char c = 'a'; c <= 'z'; c++)
			all[n++] = c;
	if (spec->alphabets & OTP_ALPHA_SPECIAL)
		for (size_t i = 0; special_chars[i] != '\0'; i++)
			all[n++] = special_chars[i];
	for (size_t i = 0; i < n; i++) {
		if (spec->no_lookalikes && strchr(lookalikes, all[i]) != NULL)
			continue;
		set[m++] = all[i];
	}
	return m;
}

int otp_code_spec_check(const struct otp_code_spec *spec, const char **why)
{
	static const unsigned known = OTP_ALPHA_DIGITS | OTP_ALPHA_UPPER | OTP_ALPHA_LOWER |
	                              OTP_ALPHA_SPECIAL;
	char set[128];
	*why = NULL;
	if (spec->length < OTP_GEN_LENGTH_MIN || spec->length > OTP_GEN_LENGTH_MAX)
		*why = "the code length must be from 4 to 32";
	else if (spec->alphabets == 0 || (spec->alphabets & ~known) != 0)
		*why = "at least one of digits, upper case, lower case or special characters "
		       "must be allowed";
	else if (otp_code_charset(spec, set) < 2)
		*why = "the allowed characters leave fewer than two to draw from";
	return *why == NULL ? 0 : OTP_ERR_INVALID;
}

int otp_code_make(const struct otp_rng *rng, const struct otp_code_spec *spec, char *out)
{
	const char *why;
	char set[128];
	if (otp_code_spec_check(spec, &why) != 0)
		return OTP_ERR_INVALID;
	size_t n = otp_code_charset(spec, set);
	for (int i = 0; i < spec->length; i++)
		out[i] = set[otp_rng_uniform(rng, (uint32_t)n)];
	out[spec->length] = '\0';
	return 0;
}

int otp_policy_check(const struct otp_policy *p, const char **field, const char **why)
{
	*field = NULL;
	*why = NULL;
	if (p->lifetime < 1 || p->lifetime > OTP_LIFETIME_MAX) {
		*field = "lifetime";
		*why = "must be from 1 to 604800 seconds";
	} else if (p->max_attempts < 0 || p->max_attempts > OTP_ATTEMPTS_MAX) {
		*field = "max_attempts";
		*why = "must be from 0 (unlimited) to 1000";
	} else if (p->resend_cooldown < 0 || p->resend_cooldown > OTP_COOLDOWN_MAX) {
		*field = "resend_cooldown";
		*why = "must be from 0 to 86400 seconds";
	} else if (p->max_sends < 1 || p->max_sends > OTP_SENDS_MAX) {
		*field = "max_sends";
		*why = "must be from 1 to 100";
	} else if (otp_code_spec_check(&p->code, why) != 0) {
		*field = "code";
	}
	return *why == NULL ? 0 : OTP_ERR_INVALID;
}

void otp_check_decide(struct otp_candidate *cands, size_t n, struct otp_check_outcome *out)
{
	out->ok = false;
	out->matched = 0;
	out->any_write = false;
	/* Compare against every candidate, never stopping early. */
	for (size_t i = 0; i < n; i++) {
		struct otp_candidate *c = &cands[i];
		bool eq = otp_hash_equal(c->hash, c->presented);
		c->write = false;
		c->new_attempts = c->attempts;
		c->new_status = c->status;
		c->event = 0;
		if (eq && !out->ok) {
			out->ok = true;
			out->matched = i;
		}
	}
	if (out->ok) {
		struct otp_candidate *m = &cands[out->matched];
		if (m->status == OTP_VS_PENDING) {
			m->new_status = OTP_VS_APPROVED;
			m->write = true;
			m->event = OTP_EV_APPROVED;
		}
	} else {
		for (size_t i = 0; i < n; i++) {
			struct otp_candidate *c = &cands[i];
			c->new_attempts = c->attempts + 1;
			c->write = true;
			c->event = OTP_EV_CHECK_FAILED;
			if (c->max_attempts > 0 && c->new_attempts >= c->max_attempts) {
				c->new_status = OTP_VS_MAX_ATTEMPTS;
				c->event = OTP_EV_MAX_ATTEMPTS;
			}
		}
	}
	for (size_t i = 0; i < n; i++)
		out->any_write = out->any_write || cands[i].write;
}

int otp_attempts_left(int attempts, int max_attempts)
{
	if (max_attempts <= 0)
		return -1;
	return attempts >= max_attempts ? 0 : max_attempts - attempts;
}
