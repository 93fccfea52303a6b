/*
 * flow.h - the operations every dialect shares: send a code (hash it, seal the delivery
 * payload, commit code + job in one store transaction, wake the outbox) and check a
 * code. Dialects parse and render; the rules run here and in core/.
 */
#ifndef OTPD_API_FLOW_H
#define OTPD_API_FLOW_H

#include <stdbool.h>

#include "api/api.h"
#include "core/errors.h"

struct flow_send {
	enum otp_channel channel;
	const char *target;
	const char *code;
	int lifetime;
	const char *ip;        /* may be NULL */
	const char *text;      /* message / email text; may be NULL */
	const char *subject;   /* email */
	const char *html;      /* email; may be NULL */
	bool require_ip;       /* `ip` is required while the channel has IP rules (compat) */
	const char *request_id;
};

/* Returns 0, or a negative enum otp_err with err filled (OTP_ERR_LIMIT with the compat
 * status_code, OTP_ERR_INVALID for a missing required ip, OTP_ERR_STORE, ...). *job_id
 * (may be NULL) gets the delivery job's id. */
int flow_send(const struct api_ctx *ctx, const struct flow_send *in, int64_t *job_id,
              struct otp_error *err);

/* Does any live code of a channel in `mask` sent to `target` equal `code`? The check
 * counts against the attempt limit of (channel, target). */
int flow_check(const struct api_ctx *ctx, enum otp_channel channel, unsigned mask,
               const char *target, const char *code, bool *ok, struct otp_error *err);

#endif
