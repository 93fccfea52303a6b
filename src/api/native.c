/*
 * native.c - otpd's own API, with the names of seed 004 (POST /otp/send, /otp/verify,
 * /otp/resend, /otp/cancel, GET /otp/status) and the code options of seed 003: one
 * dialect over the verification service. An app's API key authenticates each request
 * (route.h) and scopes it: a key sees its own app's verifications only, an admin key
 * every app's. The app's settings (core/app.h) are the defaults a request may narrow.
 * Errors are {"error": reason, "message": ..., "field": ...} with the status of their
 * class (api_status_for), and Retry-After when a refusal ends.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/params.h"
#include "api/route.h"
#include "core/app.h"
#include "core/text.h"
#include "verify/apps.h"

#define NATIVE_MESSAGE_MAX 1224   /* seed 003's longest text */
#define NATIVE_LANG_MAX 15
#define FALLBACK_MAX (OTP_CH_COUNT - 1)

static int invalid(struct otp_error *err, const char *field, const char *what)
{
	return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", field, "\"%s\" %s", field,
	                     what);
}

/* A JSON boolean (or, from a query string, "true"/"false"). */
static int read_bool(json_t *p, const char *name, bool *present, bool *out,
                     struct otp_error *err)
{
	json_t *v = json_object_get(p, name);
	*present = false;
	if (v == NULL || json_is_null(v))
		return 0;
	if (json_is_boolean(v)) {
		*out = json_is_true(v);
	} else if (json_is_string(v) && (strcmp(json_string_value(v), "true") == 0 ||
	                                 strcmp(json_string_value(v), "false") == 0)) {
		*out = strcmp(json_string_value(v), "true") == 0;
	} else {
		return invalid(err, name, "must be true or false");
	}
	*present = true;
	return 0;
}

/* The app a request acts for: the key's, or (an admin) the `appid` it names. A key's
 * request may name its own app only. *app_id is "" for an admin that named none. */
static int request_app(const struct api_call *call, bool required, char *app_id, size_t cap,
                       struct otp_error *err)
{
	char *given = NULL;
	int rc = params_string(call->params, "appid", false, false, STORE_ID_MAX - 1, false,
	                       &given, err);
	if (rc != 0)
		return rc;
	app_id[0] = '\0';
	if (!call->who.admin) {
		bool other = given != NULL && strcmp(given, call->who.app_id) != 0;
		free(given);
		if (other)
			return otp_error_set(err, OTP_ERR_AUTH, "forbidden", "appid",
			                     "this key belongs to another app");
		snprintf(app_id, cap, "%s", call->who.app_id);
		return 0;
	}
	if (given == NULL)
		return required ? otp_error_set(err, OTP_ERR_INVALID, "missing_parameter", "appid",
		                                "\"appid\" parameter must be set (an admin key acts "
		                                "for every app)")
		                : 0;
	snprintf(app_id, cap, "%s", given);
	free(given);
	return 0;
}

/* The recipient of a channel, read and normalised as the compat dialect does. */
static int read_recipient(json_t *p, const char *name, enum otp_channel ch, bool required,
                          char **out, struct otp_error *err)
{
	switch (ch) {
	case OTP_CH_EMAIL: return params_email(p, name, required, out, err);
	case OTP_CH_TELEGRAM: return params_chat_id(p, name, required, out, err);
	case OTP_CH_SMS:
	case OTP_CH_CALL:
	case OTP_CH_WHATSAPP:
	case OTP_CH_COUNT: break;
	}
	return params_phone(p, name, required, out, err);
}

static bool phone_channel(enum otp_channel ch)
{
	return ch == OTP_CH_SMS || ch == OTP_CH_CALL || ch == OTP_CH_WHATSAPP;
}

static int read_channel(json_t *p, const char *name, bool required, enum otp_channel dflt,
                        enum otp_channel *out, struct otp_error *err)
{
	char *s = NULL;
	int rc = params_string(p, name, required, false, 16, false, &s, err);
	if (rc != 0)
		return rc;
	*out = dflt;
	if (s != NULL && otp_channel_parse(s, out) != 0)
		rc = invalid(err, name, "must be sms, call, email, telegram or whatsapp");
	free(s);
	return rc;
}

/* The recipient as shown: a phone with its '+'. */
static json_t *recipient_json(enum otp_channel ch, const char *target)
{
	if (!phone_channel(ch))
		return json_string(target);
	char buf[OTP_TARGET_MAX + 2];
	snprintf(buf, sizeof buf, "+%s", target);
	return json_string(buf);
}

static json_t *time_json(int64_t t)
{
	char buf[32];
	apps_time(t, buf, sizeof buf);
	return json_string(buf);
}

/* The fallback text kept with a verification: "channel:target" lines, in order. */
static json_t *fallback_json(const char *text)
{
	json_t *a = json_array();
	for (const char *line = text; line != NULL && *line != '\0';) {
		const char *nl = strchr(line, '\n');
		size_t n = nl ? (size_t)(nl - line) : strlen(line);
		const char *colon = memchr(line, ':', n);
		char name[16];
		if (colon != NULL && (size_t)(colon - line) < sizeof name) {
			memcpy(name, line, (size_t)(colon - line));
			name[colon - line] = '\0';
			json_array_append_new(a, json_string(name));
		}
		line = nl ? nl + 1 : NULL;
	}
	return a;
}

/* The view of a verification every answer shares. */
static json_t *view(const struct store_verification *v, int64_t now)
{
	enum otp_vstatus st = otp_vstatus_at(v->status, v->expire_at, now);
	int left = otp_attempts_left(v->attempts, v->max_attempts);
	int64_t next = v->last_sent_at + v->resend_cooldown;
	json_t *o = json_object();
	json_object_set_new(o, "verification_id", json_string(v->public_id));
	json_object_set_new(o, "appid", json_string(v->app_id));
	json_object_set_new(o, "status", json_string(otp_vstatus_name(st)));
	json_object_set_new(o, "channel", json_string(otp_channel_name(v->cur_channel)));
	json_object_set_new(o, "recipient", recipient_json(v->cur_channel, v->cur_target));
	json_object_set_new(o, "created_at", time_json(v->created_at));
	json_object_set_new(o, "expires_at", time_json(v->expire_at));
	json_object_set_new(o, "expires_in",
	                    json_integer(st == OTP_VS_PENDING ? v->expire_at - now : 0));
	json_object_set_new(o, "attempts", json_integer(v->attempts));
	json_object_set_new(o, "remaining_attempts",
	                    st != OTP_VS_PENDING ? json_integer(0)
	                    : left < 0 ? json_null() : json_integer(left));
	json_object_set_new(o, "sends", json_integer(v->sends));
	json_object_set_new(o, "sends_left", json_integer(st != OTP_VS_PENDING ? 0
	                                                  : v->max_sends - v->sends));
	json_object_set_new(o, "next_resend_at",
	                    st == OTP_VS_PENDING && v->sends < v->max_sends ? time_json(next)
	                                                                   : json_null());
	json_object_set_new(o, "fallback", fallback_json(v->fallback));
	return o;
}

/* The answer of a send, the first one and its replays alike: the verification as it was
 * made (pending on its first channel, no attempts, one send), whatever happened since. */
static json_t *made_view(const struct store_verification *v)
{
	struct store_verification *first = malloc(sizeof *first);
	if (first == NULL)
		return NULL;
	*first = *v;
	first->status = OTP_VS_PENDING;
	first->cur_channel = v->channel;
	memcpy(first->cur_target, v->target, sizeof first->cur_target);
	first->attempts = 0;
	first->sends = 1;
	first->last_sent_at = v->created_at;
	json_t *o = view(first, v->created_at);
	free(first);
	return o;
}

static int reply(struct api_response *resp, int status, json_t *body, struct otp_error *err)
{
	if (body == NULL)
		return otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
	resp->status = status;
	resp->body = body;
	return 0;
}

/* Seed 003's code options, over the app's defaults. */
static int read_code_spec(json_t *p, struct otp_code_spec *spec, struct otp_error *err)
{
	static const struct {
		const char *name;
		unsigned bit;
	} alpha[] = {
		{"allow_digits", OTP_ALPHA_DIGITS},
		{"allow_upper_case", OTP_ALPHA_UPPER},
		{"allow_lower_case", OTP_ALPHA_LOWER},
		{"allow_special_chars", OTP_ALPHA_SPECIAL},
	};
	int64_t n = 0;
	bool present = false, on = false;
	int rc = params_int(p, "code_length", OTP_GEN_LENGTH_MIN, OTP_GEN_LENGTH_MAX, &present, &n,
	                    err);
	if (rc != 0)
		return rc;
	if (present)
		spec->length = (int)n;
	for (size_t i = 0; i < sizeof alpha / sizeof alpha[0]; i++) {
		if ((rc = read_bool(p, alpha[i].name, &present, &on, err)) != 0)
			return rc;
		if (present)
			spec->alphabets = on ? (spec->alphabets | alpha[i].bit) : (spec->alphabets & ~alpha[i].bit);
	}
	if ((rc = read_bool(p, "exclude_lookalikes", &present, &on, err)) != 0)
		return rc;
	if (present)
		spec->no_lookalikes = on;
	const char *why;
	if (otp_code_spec_check(spec, &why) != 0)
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "allow_digits",
		                     "the code options do not fit: %s", why);
	return 0;
}

/* `fallback`: an ordered list of channel names (the same recipient) or of
 * {"channel": ..., "recipient": ...}, into "channel:target" lines. */
static int read_fallback(json_t *p, const struct otp_app_settings *app,
                         enum otp_channel first, const char *recipient, char *out, size_t cap,
                         struct otp_error *err)
{
	json_t *list = json_object_get(p, "fallback");
	size_t i, used = 0;
	json_t *item;
	out[0] = '\0';
	if (list == NULL || json_is_null(list))
		return 0;
	if (!json_is_array(list) || json_array_size(list) > FALLBACK_MAX)
		return invalid(err, "fallback", "must be a list of at most 4 channels");
	json_array_foreach(list, i, item) {
		char field[32];
		enum otp_channel ch;
		char *target = NULL;
		int rc;
		snprintf(field, sizeof field, "fallback[%zu]", i);
		json_t *wrap = json_object();
		if (json_is_string(item)) {
			json_object_set(wrap, "channel", item);
		} else if (json_is_object(item)) {
			json_object_update(wrap, item);
		} else {
			json_decref(wrap);
			return invalid(err, field, "must be a channel name or {\"channel\", \"recipient\"}");
		}
		rc = read_channel(wrap, "channel", true, OTP_CH_SMS, &ch, err);
		if (rc == 0 && !(app->channels & OTP_CH_BIT(ch)))
			rc = otp_error_set(err, OTP_ERR_INVALID, "channel_not_allowed", field,
			                   "the app may not send on %s", otp_channel_name(ch));
		if (rc == 0 && json_object_get(wrap, "recipient") != NULL)
			rc = read_recipient(wrap, "recipient", ch, true, &target, err);
		else if (rc == 0 && phone_channel(ch) && phone_channel(first))
			target = strdup(recipient);
		else if (rc == 0)
			rc = invalid(err, field, "needs its own \"recipient\" for that channel");
		json_decref(wrap);
		if (rc == 0 && target == NULL)
			rc = otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
		if (rc != 0) {
			free(target);
			if (strcmp(err->field, "channel") == 0 || strcmp(err->field, "recipient") == 0) {
				char sub[sizeof err->field];
				int w = snprintf(sub, sizeof sub, "%s.%s", field, err->field);
				if (w > 0 && (size_t)w < sizeof sub)
					memcpy(err->field, sub, (size_t)w + 1);
			}
			return rc;
		}
		int w = snprintf(out + used, cap - used, "%s%s:%s", used ? "\n" : "",
		                 otp_channel_name(ch), target);
		free(target);
		if (w < 0 || (size_t)w >= cap - used)
			return invalid(err, "fallback", "is too long");
		used += (size_t)w;
	}
	return 0;
}

/* The first line of a fallback text as (channel, target), and the rest after it. */
static bool fallback_next(const char *text, enum otp_channel *ch, char *target, size_t cap,
                          const char **rest)
{
	if (text == NULL || text[0] == '\0')
		return false;
	const char *nl = strchr(text, '\n');
	size_t n = nl ? (size_t)(nl - text) : strlen(text);
	const char *colon = memchr(text, ':', n);
	char name[16];
	if (colon == NULL || (size_t)(colon - text) >= sizeof name ||
	    (size_t)(n - (size_t)(colon - text) - 1) >= cap)
		return false;
	memcpy(name, text, (size_t)(colon - text));
	name[colon - text] = '\0';
	if (otp_channel_parse(name, ch) != 0)
		return false;
	size_t tl = n - (size_t)(colon - text) - 1;
	memcpy(target, colon + 1, tl);
	target[tl] = '\0';
	*rest = nl ? nl + 1 : "";
	return true;
}

static int read_text(json_t *p, const char *name, size_t max, bool newlines, char **out,
                     struct otp_error *err)
{
	return params_string(p, name, false, true, max, newlines, out, err);
}

static bool lang_ok(const char *s)
{
	for (const char *c = s; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
		      (*c >= '0' && *c <= '9') || *c == '-' || *c == '_'))
			return false;
	return true;
}

static API_HANDLER(native_send)
{
	json_t *p = call->params;
	char app_id[STORE_ID_MAX], fallback[STORE_ROUTE_MAX];
	char *recipient = NULL, *sender = NULL, *message = NULL, *tmpl_id = NULL, *lang = NULL;
	char *ip = NULL, *code = NULL;
	struct otp_app_settings app;
	bool have_app = false;
	enum otp_channel ch = OTP_CH_SMS;
	int64_t n = 0;
	bool present = false;
	int rc;

	if ((rc = request_app(call, true, app_id, sizeof app_id, err)) != 0)
		return rc;
	if ((rc = api_app_settings(ctx, app_id, &app, err)) != 0)
		return rc;
	have_app = true;
	struct otp_policy policy = app.policy;
	if ((rc = read_channel(p, "channel", false, OTP_CH_SMS, &ch, err)) != 0)
		goto out;
	if (!(app.channels & OTP_CH_BIT(ch))) {
		rc = otp_error_set(err, OTP_ERR_INVALID, "channel_not_allowed", "channel",
		                   "the app may not send on %s", otp_channel_name(ch));
		goto out;
	}
	if ((rc = read_recipient(p, "recipient", ch, true, &recipient, err)) != 0 ||
	    (rc = read_text(p, "from", OTP_APP_SENDER_MAX, false, &sender, err)) != 0 ||
	    (rc = read_text(p, "message", NATIVE_MESSAGE_MAX, true, &message, err)) != 0 ||
	    (rc = params_string(p, "template_id", false, false, 64, false, &tmpl_id, err)) != 0 ||
	    (rc = params_string(p, "lang", false, false, NATIVE_LANG_MAX, false, &lang, err)) != 0 ||
	    (rc = params_ip(p, "recipient_ip", &ip, err)) != 0 ||
	    (rc = params_string(p, "otp_code", false, true, OTP_CODE_MAX, false, &code, err)) != 0)
		goto out;
	if (lang != NULL && !lang_ok(lang)) {
		rc = invalid(err, "lang", "must be a language tag such as en or pt-BR");
		goto out;
	}
	if (message != NULL && strstr(message, "{code}") == NULL) {
		rc = invalid(err, "message", "must hold the code's place, {code}");
		goto out;
	}
	if (message != NULL && tmpl_id != NULL) {
		rc = invalid(err, "template_id", "and \"message\" exclude each other");
		goto out;
	}
	if (code != NULL && !app.allow_custom_code) {
		rc = otp_error_set(err, OTP_ERR_AUTH, "forbidden", "otp_code",
		                   "the app does not allow callers to bring their own code");
		goto out;
	}
	if ((rc = read_code_spec(p, &policy.code, err)) != 0)
		goto out;
	if ((rc = params_int(p, "validity_period", 1, OTP_LIFETIME_MAX, &present, &n, err)) != 0)
		goto out;
	if (present)
		policy.lifetime = (int)n;
	if ((rc = params_int(p, "max_wrong_attempts", 0, OTP_ATTEMPTS_MAX, &present, &n, err)) != 0)
		goto out;
	if (present)
		policy.max_attempts = (int)n;
	if ((rc = read_fallback(p, &app, ch, recipient, fallback, sizeof fallback, err)) != 0)
		goto out;

	const char *tmpl = message;
	if (tmpl == NULL) {
		tmpl = otp_app_template(&app, tmpl_id, lang);
		if (tmpl == NULL && tmpl_id != NULL) {
			rc = otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "template_id",
			                   "the app has no template \"%s\"", tmpl_id);
			goto out;
		}
	}
	const char *idem = api_header(call->req, "Idempotency-Key");
	if (idem != NULL && (idem[0] == '\0' || strlen(idem) > 255 || otp_has_control(idem, false))) {
		rc = invalid(err, "Idempotency-Key", "must be 1 to 255 bytes of text");
		goto out;
	}
	/* the key is bound to what was asked, not to its spelling: the parameters (query and
	 * body) in one canonical form, so reordered or reformatted JSON still replays */
	char *asked = idem != NULL ? json_dumps(p, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
	if (idem != NULL && asked == NULL) {
		rc = otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
		goto out;
	}
	struct verify_start in = {
		.app_id = app_id,
		.channel = ch,
		.target = recipient,
		.ip = ip,
		.policy = policy,
		.code = code,
		.msg = {
			.tmpl = tmpl,
			.lang = lang,
			.sender = sender ? sender : (app.sender[0] ? app.sender : NULL),
		},
		.fallback = fallback[0] ? fallback : NULL,
		.keep_code = true, /* for resends */
		.idem_key = idem,
		.idem_body = asked,
		.idem_body_len = asked ? strlen(asked) : 0,
		.request_id = call->req->request_id,
	};
	struct verify_started started;
	rc = verify_start(&ctx->verify, &in, &started, err);
	otp_secret_free(asked); /* it may hold a caller's code */
	api_count_send(ctx, ch, rc);
	if (rc != 0)
		goto out;
	api_log_started(ctx, call, &started);
	if (started.replayed)
		api_response_header(resp, "Idempotent-Replayed", "true");
	rc = reply(resp, 200, made_view(&started.v), err);
out:
	if (have_app)
		otp_app_settings_fini(&app);
	free(recipient);
	free(sender);
	otp_secret_free(message);
	free(tmpl_id);
	free(lang);
	free(ip);
	otp_secret_free(code);
	return rc;
}

/* verification_id, read as the one that names the verification an action is about. */
static int read_id(json_t *p, bool required, char **out, struct otp_error *err)
{
	return params_string(p, "verification_id", required, false, STORE_ID_MAX - 1, false, out,
	                     err);
}

static API_HANDLER(native_verify)
{
	json_t *p = call->params;
	char app_id[STORE_ID_MAX];
	char *id = NULL, *recipient = NULL, *code = NULL;
	enum otp_channel ch = OTP_CH_SMS;
	bool by_channel = json_object_get(p, "channel") != NULL;
	int rc;

	if ((rc = request_app(call, false, app_id, sizeof app_id, err)) != 0 ||
	    (rc = read_id(p, false, &id, err)) != 0 ||
	    (rc = read_channel(p, "channel", false, OTP_CH_SMS, &ch, err)) != 0)
		goto out;
	if (id == NULL) {
		if (call->who.admin && app_id[0] == '\0') {
			rc = otp_error_set(err, OTP_ERR_INVALID, "missing_parameter", "appid",
			                   "\"appid\" parameter must be set to verify by recipient");
			goto out;
		}
		/* by recipient: its newest live verification, on the channel given or any */
		json_t *r = json_object_get(p, "recipient");
		if (r == NULL || json_is_null(r)) {
			rc = otp_error_set(err, OTP_ERR_INVALID, "missing_parameter", "verification_id",
			                   "\"verification_id\" (or \"recipient\") parameter must be set");
			goto out;
		}
		if (!by_channel && json_is_string(r) && strchr(json_string_value(r), '@') != NULL)
			ch = OTP_CH_EMAIL;
		if ((rc = read_recipient(p, "recipient", ch, true, &recipient, err)) != 0)
			goto out;
	}
	if ((rc = params_string(p, "otp_code", true, true, OTP_CODE_MAX, false, &code, err)) != 0)
		goto out;
	unsigned mask = by_channel ? OTP_CH_BIT(ch)
	                : ch == OTP_CH_EMAIL ? OTP_CH_BIT(OTP_CH_EMAIL)
	                : OTP_CH_BIT(OTP_CH_SMS) | OTP_CH_BIT(OTP_CH_CALL) | OTP_CH_BIT(OTP_CH_WHATSAPP) |
	                  OTP_CH_BIT(OTP_CH_TELEGRAM);
	struct verify_check in = {
		.by = id != NULL ? STORE_CHECK_ID : STORE_CHECK_LATEST,
		.app_id = id != NULL && call->who.admin && app_id[0] == '\0' ? NULL : app_id,
		.public_id = id,
		.target = recipient,
		.channel_mask = mask,
		.code = code,
	};
	struct store_check_result res;
	rc = verify_check(&ctx->verify, &in, &res, err);
	api_count_check(ctx, res.found ? res.v.channel : ch, rc, res.ok);
	if (rc != 0)
		goto out;
	if (!res.found) {
		rc = otp_error_set(err, OTP_ERR_NOT_FOUND, "not_found",
		                   id ? "verification_id" : "recipient",
		                   id ? "no such verification"
		                      : "no pending verification for that recipient");
		goto out;
	}
	json_t *body = view(&res.v, ctx->verify.now());
	if (body != NULL)
		json_object_set_new(body, "verified", json_boolean(res.ok));
	rc = reply(resp, 200, body, err);
out:
	free(id);
	free(recipient);
	otp_secret_free(code);
	return rc;
}

/* The app scope of an action on one verification: the key's app, or any (an admin that
 * named none). */
static const char *scope(const struct api_call *call, const char *app_id)
{
	return call->who.admin && app_id[0] == '\0' ? NULL : app_id;
}

static API_HANDLER(native_resend)
{
	json_t *p = call->params;
	char app_id[STORE_ID_MAX], target[OTP_TARGET_MAX + 1];
	char *id = NULL, *ip = NULL, *to = NULL;
	bool next = false, present = false;
	enum otp_channel ch = OTP_CH_SMS;
	struct store_verification v;
	int rc;

	if ((rc = request_app(call, false, app_id, sizeof app_id, err)) != 0 ||
	    (rc = read_id(p, true, &id, err)) != 0 ||
	    (rc = read_bool(p, "next_channel", &present, &next, err)) != 0 ||
	    (rc = params_ip(p, "recipient_ip", &ip, err)) != 0)
		goto out;
	struct verify_resend in = {
		.app_id = scope(call, app_id),
		.public_id = id,
		.ip = ip,
		.request_id = call->req->request_id,
	};
	if (next || json_object_get(p, "channel") != NULL) {
		/* to another channel: the next of its fallback list, or the one named there */
		if ((rc = verify_get(&ctx->verify, in.app_id, id, &v, err)) != 0)
			goto out;
		bool named = json_object_get(p, "channel") != NULL;
		if (named && (rc = read_channel(p, "channel", true, OTP_CH_SMS, &ch, err)) != 0)
			goto out;
		const char *line = v.fallback, *rest = "";
		enum otp_channel fch;
		bool found = false;
		while (fallback_next(line, &fch, target, sizeof target, &rest)) {
			if (!named || fch == ch) {
				found = true;
				break;
			}
			line = rest;
		}
		if (!found && named && ch == v.cur_channel) {
			found = true; /* again where it went last */
			snprintf(target, sizeof target, "%s", v.cur_target);
			fch = ch;
			rest = v.fallback;
		}
		if (!found) {
			rc = otp_error_set(err, OTP_ERR_CONFLICT, "no_fallback", named ? "channel"
			                                                                 : "next_channel",
			                   named ? "that channel is not in the verification's fallback list"
			                         : "the verification has no channel left to try");
			goto out;
		}
		/* what is left: the lines after the one taken (when it came from the list) */
		to = strdup(rest);
		if (to == NULL) {
			rc = otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
			goto out;
		}
		in.to_channel = true;
		in.channel = fch;
		in.target = target;
		in.fallback = to[0] ? to : NULL;
	}
	rc = verify_resend(&ctx->verify, &in, &v, err);
	api_count_send(ctx, in.to_channel ? in.channel : v.cur_channel, rc);
	if (rc != 0)
		goto out;
	rc = reply(resp, 200, view(&v, ctx->verify.now()), err);
out:
	free(id);
	free(ip);
	free(to);
	return rc;
}

static API_HANDLER(native_cancel)
{
	char app_id[STORE_ID_MAX];
	char *id = NULL;
	struct store_verification v;
	int rc;
	if ((rc = request_app(call, false, app_id, sizeof app_id, err)) != 0 ||
	    (rc = read_id(call->params, true, &id, err)) != 0)
		goto out;
	rc = verify_cancel(&ctx->verify, scope(call, app_id), id, &v, err);
	if (rc == 0)
		rc = reply(resp, 200, view(&v, ctx->verify.now()), err);
out:
	free(id);
	return rc;
}

static API_HANDLER(native_status)
{
	char app_id[STORE_ID_MAX];
	char *id = NULL;
	struct store_verification v;
	int rc;
	if ((rc = request_app(call, false, app_id, sizeof app_id, err)) != 0 ||
	    (rc = read_id(call->params, true, &id, err)) != 0)
		goto out;
	rc = verify_get(&ctx->verify, scope(call, app_id), id, &v, err);
	if (rc == 0)
		rc = reply(resp, 200, view(&v, ctx->verify.now()), err);
out:
	free(id);
	return rc;
}

/* ---- the dialect ------------------------------------------------------------------------ */

static void native_error(const struct api_route *r, const struct otp_error *e,
                         struct api_response *resp)
{
	(void)r;
	json_t *o = json_object();
	json_object_set_new(o, "error", json_string(e->reason[0] ? e->reason : "internal"));
	json_object_set_new(o, "message",
	                    json_string(e->message[0] ? e->message : otp_err_name(e->code)));
	json_object_set_new(o, "field", e->field[0] ? json_string(e->field) : json_null());
	if (e->retry_after > 0)
		json_object_set_new(o, "retry_after", json_integer(e->retry_after));
	resp->status = api_status_for(e);
	resp->body = o;
	if (resp->status == 401) /* a 401 must say how to authenticate (RFC 9110 15.5.2) */
		api_response_header(resp, "WWW-Authenticate", "Bearer realm=\"otpd\"");
	if (e->retry_after > 0) {
		char secs[24];
		snprintf(secs, sizeof secs, "%" PRId64, e->retry_after);
		api_response_header(resp, "Retry-After", secs);
	}
}

const struct api_dialect api_dialect_native = {.name = "native", .error = native_error};

#define N &api_dialect_native
#define J API_BODY_JSON
#define K API_AUTH_KEY

const struct api_route api_native_routes[] = {
	{"POST", "/otp/send", N, J, K, native_send, 0},
	{"POST", "/otp/verify", N, J, K, native_verify, 0},
	{"POST", "/otp/resend", N, J, K, native_resend, 0},
	{"POST", "/otp/cancel", N, J, K, native_cancel, 0},
	{"GET", "/otp/status", N, J, K, native_status, 0},
};

const size_t api_native_routes_count = sizeof api_native_routes / sizeof api_native_routes[0];
