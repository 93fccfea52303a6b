/*
 * message.c - the delivery job's message as JSON bytes (sealed by the caller before it
 * is stored), and {code}/{minutes} templates. Pure.
 */
#include "core/message.h"

#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int set_opt_string(json_t *o, const char *key, const char *v)
{
	json_t *j = v ? json_string(v) : json_null();
	if (j == NULL)
		return OTP_ERR_INVALID; /* not valid UTF-8: callers validated, so a bug */
	return json_object_set_new(o, key, j) == 0 ? 0 : OTP_ERR_NOMEM;
}

int otp_message_encode(const struct otp_message *m, uint8_t **out, size_t *len)
{
	int rc = OTP_ERR_NOMEM;
	json_t *o = json_object();
	if (o == NULL)
		return OTP_ERR_NOMEM;
	if (json_object_set_new(o, "channel", json_integer(m->channel)) != 0 ||
	    json_object_set_new(o, "lifetime", json_integer(m->lifetime)) != 0)
		goto out;
	if ((rc = set_opt_string(o, "target", m->target)) != 0 ||
	    (rc = set_opt_string(o, "code", m->code)) != 0 ||
	    (rc = set_opt_string(o, "text", m->text)) != 0 ||
	    (rc = set_opt_string(o, "subject", m->subject)) != 0 ||
	    (rc = set_opt_string(o, "html", m->html)) != 0 ||
	    (m->lang != NULL && (rc = set_opt_string(o, "lang", m->lang)) != 0) ||
	    (m->sender != NULL && (rc = set_opt_string(o, "sender", m->sender)) != 0))
		goto out;
	char *s = json_dumps(o, JSON_COMPACT);
	if (s == NULL) {
		rc = OTP_ERR_NOMEM;
		goto out;
	}
	*len = strlen(s);
	*out = (uint8_t *)s;
	rc = 0;
out:
	json_decref(o);
	return rc;
}

static int take_string(json_t *o, const char *key, bool required, char **dst)
{
	json_t *v = json_object_get(o, key);
	if (v == NULL || json_is_null(v)) {
		*dst = NULL;
		return required ? OTP_ERR_INVALID : 0;
	}
	if (!json_is_string(v))
		return OTP_ERR_INVALID;
	*dst = strdup(json_string_value(v));
	return *dst ? 0 : OTP_ERR_NOMEM;
}

int otp_message_decode(const uint8_t *in, size_t len, struct otp_message *m)
{
	memset(m, 0, sizeof *m);
	json_error_t jerr;
	json_t *o = json_loadb((const char *)in, len, JSON_REJECT_DUPLICATES, &jerr);
	if (o == NULL || !json_is_object(o)) {
		json_decref(o);
		return OTP_ERR_INVALID;
	}
	int rc = OTP_ERR_INVALID;
	json_t *ch = json_object_get(o, "channel");
	json_t *lt = json_object_get(o, "lifetime");
	if (!json_is_integer(ch) || json_integer_value(ch) < 0 ||
	    json_integer_value(ch) >= OTP_CH_COUNT || !json_is_integer(lt) ||
	    json_integer_value(lt) < 0 || json_integer_value(lt) > 100000000)
		goto out;
	m->channel = (enum otp_channel)json_integer_value(ch);
	m->lifetime = (int)json_integer_value(lt);
	if ((rc = take_string(o, "target", true, &m->target)) != 0 ||
	    (rc = take_string(o, "code", true, &m->code)) != 0 ||
	    (rc = take_string(o, "text", false, &m->text)) != 0 ||
	    (rc = take_string(o, "subject", false, &m->subject)) != 0 ||
	    (rc = take_string(o, "html", false, &m->html)) != 0 ||
	    (rc = take_string(o, "lang", false, &m->lang)) != 0 ||
	    (rc = take_string(o, "sender", false, &m->sender)) != 0)
		goto out;
	rc = 0;
out:
	json_decref(o);
	if (rc != 0)
		otp_message_fini(m);
	return rc;
}

void otp_message_fini(struct otp_message *m)
{
	if (m == NULL)
		return;
	char **all[] = {&m->target, &m->code, &m->text, &m->subject, &m->html, &m->lang,
	                &m->sender};
	for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
		otp_secret_free(*all[i]);
		*all[i] = NULL;
	}
}

char *otp_template_render(const char *tmpl, const char *code, int lifetime)
{
	char minutes[16];
	snprintf(minutes, sizeof minutes, "%d", lifetime <= 0 ? 0 : (lifetime + 59) / 60);
	size_t clen = strlen(code), mlen = strlen(minutes), cap = 1;
	for (const char *p = tmpl; *p;) {
		if (strncmp(p, "{code}", 6) == 0) { cap += clen; p += 6; }
		else if (strncmp(p, "{minutes}", 9) == 0) { cap += mlen; p += 9; }
		else { cap++; p++; }
	}
	char *out = malloc(cap), *w = out;
	if (out == NULL)
		return NULL;
	for (const char *p = tmpl; *p;) {
		if (strncmp(p, "{code}", 6) == 0) {
			memcpy(w, code, clen); w += clen; p += 6;
		} else if (strncmp(p, "{minutes}", 9) == 0) {
			memcpy(w, minutes, mlen); w += mlen; p += 9;
		} else {
			*w++ = *p++;
		}
	}
	*w = '\0';
	return out;
}
