/*
 * app.h - an application's settings: the defaults its verifications start from (code
 * length and alphabet, validity, wrong attempts, sends, resend cooldown, consumption),
 * the channels it may use, its sender, whether callers may bring their own code, and its
 * message templates per template id and language. Stored as JSON text (one format for
 * the store, `otpd app show --json` and /admin/apps); parsed and validated here. Pure.
 * Ownership: struct otp_app_settings owns `templates`; free with otp_app_settings_fini().
 */
#ifndef OTPD_CORE_APP_H
#define OTPD_CORE_APP_H

#include <jansson.h>
#include <stdbool.h>

#include "core/errors.h"
#include "core/verification.h"

#define OTP_APP_SENDER_MAX 31      /* bytes */
#define OTP_APP_TEMPLATE_MAX 1224  /* bytes of one template (seed 003's longest text) */
#define OTP_APP_TEMPLATES_MAX 64   /* template ids x languages */

struct otp_app_settings {
	struct otp_policy policy;
	unsigned channels;                     /* OTP_CH_BIT()s the app may send on */
	char sender[OTP_APP_SENDER_MAX + 1];   /* "" : none */
	bool allow_custom_code;
	json_t *templates;                     /* {template_id: {lang: text}}; never NULL */
};

/* The defaults of a new app: 6 digits, 300 s, 5 wrong attempts, 5 sends 30 s apart,
 * consumed on approval, every channel, no sender, no custom codes, no templates. */
int otp_app_settings_default(struct otp_app_settings *s);
void otp_app_settings_fini(struct otp_app_settings *s);

/*
 * Apply `patch` (a JSON object with any of the keys of the JSON form, see
 * otp_app_settings_json) onto s. Unknown keys and bad values are refused with err naming
 * the key ("settings.code_length"); s is unchanged then.
 */
int otp_app_settings_patch(struct otp_app_settings *s, json_t *patch, struct otp_error *err);

/* Parse stored JSON text (defaults, then the stored keys). */
int otp_app_settings_parse(const char *text, struct otp_app_settings *s, struct otp_error *err);

/* The JSON form (new reference): code_length, allow_digits, allow_upper_case,
 * allow_lower_case, allow_special_chars, exclude_lookalikes, validity_period,
 * max_wrong_attempts, max_sends, resend_cooldown, consume_on_approval, channels (names),
 * sender (null when none), allow_custom_code, templates. */
json_t *otp_app_settings_json(const struct otp_app_settings *s);

/* The template `id` ("default" when NULL) in `lang`: the exact language, else its first
 * part ("pt" of "pt-BR"), else "default" language entry, else NULL. */
const char *otp_app_template(const struct otp_app_settings *s, const char *id, const char *lang);

#endif
