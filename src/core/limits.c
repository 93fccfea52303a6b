/*
 * limits.c - sliding-window send limits: the decision from rules and counts. Pure.
 */
#include "core/limits.h"

int64_t otp_limit_window_start(const struct otp_limit_rule *r, int64_t now)
{
	return now - (int64_t)r->minutes * 60;
}

int otp_limits_decide(const struct otp_limit_rule *rules, const int64_t *counts, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (counts[i] >= (int64_t)rules[i].rate)
			return (int)i;
	}
	return -1;
}

const char *otp_limit_status_code(enum otp_channel ch, enum otp_limit_kind kind)
{
	if (kind == OTP_LIMIT_IP)
		return "ip_limit";
	switch (ch) {
	case OTP_CH_EMAIL: return "email_limit";
	case OTP_CH_TELEGRAM: return "chat_id_limit";
	case OTP_CH_SMS:
	case OTP_CH_CALL:
	case OTP_CH_WHATSAPP:
	case OTP_CH_COUNT: break;
	}
	return "phone_limit";
}

const char *otp_limit_message(enum otp_channel ch, enum otp_limit_kind kind)
{
	if (kind == OTP_LIMIT_IP)
		return "IP limit has been reached";
	switch (ch) {
	case OTP_CH_EMAIL: return "Email limit has been reached";
	case OTP_CH_TELEGRAM: return "Chat id limit has been reached";
	case OTP_CH_SMS:
	case OTP_CH_CALL:
	case OTP_CH_WHATSAPP:
	case OTP_CH_COUNT: break;
	}
	return "Phone limit has been reached";
}
