/*
 * compat.h - reading the old service's requests (COMPAT.md), apart from acting on them,
 * so the parsing of untrusted input can be fuzzed without a store. The handlers
 * themselves are in handlers.h.
 */
#ifndef OTPD_API_COMPAT_H
#define OTPD_API_COMPAT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/errors.h"
#include "core/limits.h"
#include "core/otp.h"

#define COMPAT_MESSAGE_MAX 4096   /* sms / telegram message, bytes */
#define COMPAT_SUBJECT_MAX 998    /* email subject (RFC 5322 line) */
#define COMPAT_BODY_PART_MAX 65536 /* email text and html parts */

/* The fields of a send, all malloc'd (NULL when absent); free with
 * compat_send_fields_fini(). */
struct compat_send_fields {
	char *target, *password, *message, *subject, *text, *html, *ip;
	int lifetime;
};

/* Read and validate a send of channel `ch` in the documented field order (the first
 * missing or bad field is the answer). Whether `ip` is required depends on the store's
 * rules and is decided by the caller. On failure f still needs fini. */
int compat_read_send(json_t *p, enum otp_channel ch, int max_lifetime,
                     struct compat_send_fields *f, struct otp_error *err);
void compat_send_fields_fini(struct compat_send_fields *f);

/* Read the target and password of a check (malloc'd; the caller frees both, wiping the
 * password with otp_secret_free). */
int compat_read_check(json_t *p, enum otp_channel ch, char **target, char **password,
                      struct otp_error *err);

/* Read the rule lists of POST /limit/<ch> ("ips" and "phones" / "emails" / "chat_ids")
 * into rules (room for 2 * OTP_LIMIT_RULES_MAX), in order; replace[kind] says which lists
 * were present. A bad item fails the whole request, naming it. */
int compat_read_limits(json_t *p, enum otp_channel ch, struct otp_limit_rule *rules,
                       size_t *n, bool replace[2], struct otp_error *err);

#endif
