/*
 * app.c - an application's settings as JSON (app.h). Pure.
 */
#include "core/app.h"

#include <stdio.h>
#include <string.h>

#include "core/text.h"

int otp_app_settings_default(struct otp_app_settings *s)
{
	memset(s, 0, sizeof *s);
	s->policy = (struct otp_policy){
		.lifetime = 300,
		.max_attempts = 5,
		.consume = true,
		.resend_cooldown = 30,
		.max_sends = 5,
		.code = {.length = 6, .alphabets = OTP_ALPHA_DIGITS, .no_lookalikes = false},
	};
	s->channels = OTP_CH_BIT(OTP_CH_COUNT) - 1u;
	s->templates = json_object();
	return s->templates != NULL ? 0 : OTP_ERR_NOMEM;
}

void otp_app_settings_fini(struct otp_app_settings *s)
{
	if (s == NULL)
		return;
	json_decref(s->templates);
	memset(s, 0, sizeof *s);
}

static int bad(struct otp_error *err, const char *key, const char *what)
{
	char field[48];
	snprintf(field, sizeof field, "settings.%s", key);
	return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", field, "\"%s\" %s", field,
	                     what);
}

static int get_int(json_t *v, const char *key, int min, int max, int *out, struct otp_error *err)
{
	if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
		char what[96];
		snprintf(what, sizeof what, "must be an integer from %d to %d", min, max);
		return bad(err, key, what);
	}
	*out = (int)json_integer_value(v);
	return 0;
}

static int get_bool(json_t *v, const char *key, bool *out, struct otp_error *err)
{
	if (!json_is_boolean(v))
		return bad(err, key, "must be true or false");
	*out = json_is_true(v);
	return 0;
}

static int get_bit(json_t *v, const char *key, unsigned bit, unsigned *set, struct otp_error *err)
{
	bool on = false;
	int rc = get_bool(v, key, &on, err);
	if (rc == 0)
		*set = on ? (*set | bit) : (*set & ~bit);
	return rc;
}

static int get_channels(json_t *v, unsigned *out, struct otp_error *err)
{
	size_t i;
	json_t *item;
	unsigned mask = 0;
	if (!json_is_array(v) || json_array_size(v) == 0)
		return bad(err, "channels", "must be a list of channel names");
	json_array_foreach(v, i, item) {
		enum otp_channel ch;
		if (!json_is_string(item) || otp_channel_parse(json_string_value(item), &ch) != 0)
			return bad(err, "channels", "may hold sms, call, email, telegram and whatsapp");
		mask |= OTP_CH_BIT(ch);
	}
	*out = mask;
	return 0;
}

/* {id: {lang: text}}, each text valid UTF-8 with {code} in it. */
static int check_templates(json_t *v, struct otp_error *err)
{
	const char *id, *lang;
	json_t *langs, *text;
	size_t n = 0;
	if (!json_is_object(v))
		return bad(err, "templates", "must be an object {template_id: {language: text}}");
	json_object_foreach(v, id, langs) {
		if (id[0] == '\0' || strlen(id) > 64 || otp_has_control(id, false))
			return bad(err, "templates", "has a template id that is empty, over 64 bytes or "
			                             "holds control characters");
		if (!json_is_object(langs) || json_object_size(langs) == 0)
			return bad(err, "templates", "must map each template id to {language: text}");
		json_object_foreach(langs, lang, text) {
			if (++n > OTP_APP_TEMPLATES_MAX)
				return bad(err, "templates", "may hold at most 64 texts");
			if (lang[0] == '\0' || strlen(lang) > 15 || otp_has_control(lang, false))
				return bad(err, "templates", "has a language that is empty or over 15 bytes");
			if (!json_is_string(text) || json_string_length(text) == 0 ||
			    json_string_length(text) > OTP_APP_TEMPLATE_MAX)
				return bad(err, "templates", "texts must be 1 to 1224 bytes");
			if (strstr(json_string_value(text), "{code}") == NULL)
				return bad(err, "templates", "texts must hold the code's place, {code}");
			if (otp_has_control(json_string_value(text), true))
				return bad(err, "templates", "texts must not hold control characters");
		}
	}
	return 0;
}

int otp_app_settings_patch(struct otp_app_settings *s, json_t *patch, struct otp_error *err)
{
	if (!json_is_object(patch))
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "settings",
		                     "\"settings\" must be an object");
	struct otp_app_settings t = *s;
	json_t *templates = NULL;
	const char *key;
	json_t *v;
	int rc = 0;
	json_object_foreach(patch, key, v) {
		struct otp_policy *p = &t.policy;
		if (strcmp(key, "code_length") == 0)
			rc = get_int(v, key, OTP_GEN_LENGTH_MIN, OTP_GEN_LENGTH_MAX, &p->code.length, err);
		else if (strcmp(key, "allow_digits") == 0)
			rc = get_bit(v, key, OTP_ALPHA_DIGITS, &p->code.alphabets, err);
		else if (strcmp(key, "allow_upper_case") == 0)
			rc = get_bit(v, key, OTP_ALPHA_UPPER, &p->code.alphabets, err);
		else if (strcmp(key, "allow_lower_case") == 0)
			rc = get_bit(v, key, OTP_ALPHA_LOWER, &p->code.alphabets, err);
		else if (strcmp(key, "allow_special_chars") == 0)
			rc = get_bit(v, key, OTP_ALPHA_SPECIAL, &p->code.alphabets, err);
		else if (strcmp(key, "exclude_lookalikes") == 0)
			rc = get_bool(v, key, &p->code.no_lookalikes, err);
		else if (strcmp(key, "validity_period") == 0)
			rc = get_int(v, key, 1, OTP_LIFETIME_MAX, &p->lifetime, err);
		else if (strcmp(key, "max_wrong_attempts") == 0)
			rc = get_int(v, key, 0, OTP_ATTEMPTS_MAX, &p->max_attempts, err);
		else if (strcmp(key, "max_sends") == 0)
			rc = get_int(v, key, 1, OTP_SENDS_MAX, &p->max_sends, err);
		else if (strcmp(key, "resend_cooldown") == 0)
			rc = get_int(v, key, 0, OTP_COOLDOWN_MAX, &p->resend_cooldown, err);
		else if (strcmp(key, "consume_on_approval") == 0)
			rc = get_bool(v, key, &p->consume, err);
		else if (strcmp(key, "channels") == 0)
			rc = get_channels(v, &t.channels, err);
		else if (strcmp(key, "allow_custom_code") == 0)
			rc = get_bool(v, key, &t.allow_custom_code, err);
		else if (strcmp(key, "sender") == 0) {
			if (json_is_null(v)) {
				t.sender[0] = '\0';
			} else if (!json_is_string(v) || json_string_length(v) == 0 ||
			           json_string_length(v) > OTP_APP_SENDER_MAX ||
			           otp_has_control(json_string_value(v), false)) {
				rc = bad(err, key, "must be null or a text of 1 to 31 bytes");
			} else {
				memcpy(t.sender, json_string_value(v), json_string_length(v) + 1);
			}
		} else if (strcmp(key, "templates") == 0) {
			rc = check_templates(v, err);
			if (rc == 0)
				templates = v;
		} else {
			rc = bad(err, key, "is not a setting of an app");
		}
		if (rc != 0)
			return rc;
	}
	const char *field, *why;
	if (otp_policy_check(&t.policy, &field, &why) != 0)
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "settings",
		                     "the settings do not fit together: %s", why);
	if (templates != NULL) {
		json_t *copy = json_deep_copy(templates);
		if (copy == NULL)
			return otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
		json_decref(t.templates);
		t.templates = copy;
	}
	*s = t;
	return 0;
}

int otp_app_settings_parse(const char *text, struct otp_app_settings *s, struct otp_error *err)
{
	json_error_t jerr;
	int rc = otp_app_settings_default(s);
	if (rc != 0)
		return otp_error_set(err, rc, "internal", "", "out of memory");
	json_t *o = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
	if (o == NULL) {
		otp_app_settings_fini(s);
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_json", "settings",
		                     "the settings are not JSON: %s", jerr.text);
	}
	rc = otp_app_settings_patch(s, o, err);
	json_decref(o);
	if (rc != 0)
		otp_app_settings_fini(s);
	return rc;
}

json_t *otp_app_settings_json(const struct otp_app_settings *s)
{
	const struct otp_policy *p = &s->policy;
	json_t *channels = json_array();
	for (int ch = 0; channels != NULL && ch < OTP_CH_COUNT; ch++)
		if (s->channels & OTP_CH_BIT(ch))
			json_array_append_new(channels, json_string(otp_channel_name((enum otp_channel)ch)));
	return json_pack("{s:i, s:b, s:b, s:b, s:b, s:b, s:i, s:i, s:i, s:i, s:b, s:o, s:o, s:b, s:O}",
	                 "code_length", p->code.length,
	                 "allow_digits", (p->code.alphabets & OTP_ALPHA_DIGITS) != 0,
	                 "allow_upper_case", (p->code.alphabets & OTP_ALPHA_UPPER) != 0,
	                 "allow_lower_case", (p->code.alphabets & OTP_ALPHA_LOWER) != 0,
	                 "allow_special_chars", (p->code.alphabets & OTP_ALPHA_SPECIAL) != 0,
	                 "exclude_lookalikes", p->code.no_lookalikes,
	                 "validity_period", p->lifetime,
	                 "max_wrong_attempts", p->max_attempts,
	                 "max_sends", p->max_sends,
	                 "resend_cooldown", p->resend_cooldown,
	                 "consume_on_approval", p->consume,
	                 "channels", channels,
	                 "sender", s->sender[0] ? json_string(s->sender) : json_null(),
	                 "allow_custom_code", s->allow_custom_code,
	                 "templates", s->templates);
}

const char *otp_app_template(const struct otp_app_settings *s, const char *id, const char *lang)
{
	json_t *langs = json_object_get(s->templates, id ? id : "default");
	if (!json_is_object(langs))
		return NULL;
	json_t *t = lang ? json_object_get(langs, lang) : NULL;
	if (t == NULL && lang != NULL) {
		char base[16];
		size_t n = strcspn(lang, "-_");
		if (n > 0 && n < sizeof base) {
			memcpy(base, lang, n);
			base[n] = '\0';
			t = json_object_get(langs, base);
		}
	}
	if (t == NULL)
		t = json_object_get(langs, "default");
	if (t == NULL) {
		/* the first text of the template, whatever its language */
		const char *k;
		json_t *v;
		json_object_foreach(langs, k, v) {
			t = v;
			break;
		}
	}
	return json_is_string(t) ? json_string_value(t) : NULL;
}
