/*
 * message.h - what a delivery job carries: the rendered message for one target on one
 * channel, and its (de)serialisation to the bytes that are sealed into the outbox. Also
 * template rendering with {code} and {minutes}. Pure.
 * Ownership: a decoded message owns its strings; free with otp_message_fini().
 */
#ifndef OTPD_CORE_MESSAGE_H
#define OTPD_CORE_MESSAGE_H

#include <stddef.h>
#include <stdint.h>

#include "core/otp.h"

struct otp_message {
	enum otp_channel channel;
	char *target;   /* phone digits, email address, or chat id (decimal) */
	char *code;     /* the code itself: a call reads it out, templates insert it */
	char *text;     /* sms / telegram / whatsapp message, email text part (may be NULL) */
	char *subject;  /* email subject (NULL for other channels) */
	char *html;     /* email html part (may be NULL) */
	char *lang;     /* language asked for, e.g. "en-US" (may be NULL): a call says the code
	                   in it where the provider can */
	char *sender;   /* sender the application wants shown (may be NULL) */
	int lifetime;   /* seconds, for {minutes} */
};

/* Serialise to a malloc'd JSON byte string (*out, *len). Returns 0 or OTP_ERR_NOMEM. */
int otp_message_encode(const struct otp_message *m, uint8_t **out, size_t *len);
/* Parse bytes made by otp_message_encode. Returns 0 or OTP_ERR_INVALID. */
int otp_message_decode(const uint8_t *in, size_t len, struct otp_message *m);
void otp_message_fini(struct otp_message *m);

/* Render `tmpl`, replacing {code} and {minutes} (lifetime rounded up to whole minutes).
 * Returns a malloc'd string or NULL (out of memory). */
char *otp_template_render(const char *tmpl, const char *code, int lifetime);

#endif
