/*
 * compat.c - the old service's API (COMPAT.md): send, check, limits, /target,
 * /password and the Telegram webhook, as one dialect over the verification service.
 * Parses and validates each request in the documented field order, calls verify.h with
 * the compat policy (OTPD_MAX_CHECK_ATTEMPTS, OTPD_CHECK_CONSUMES, the caller's own code
 * and lifetime, app ""), and renders the old JSON shapes, errors included.
 */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/compat.h"
#include "api/handlers.h"
#include "api/params.h"
#include "api/reply.h"
#include "api/route.h"
#include "core/num.h"


static int read_target(json_t *p, enum otp_channel ch, char **out, struct otp_error *err)
{
	switch (ch) {
	case OTP_CH_EMAIL: return params_email(p, "email", true, out, err);
	case OTP_CH_TELEGRAM: return params_chat_id(p, "chat_id", true, out, err);
	case OTP_CH_SMS:
	case OTP_CH_CALL:
	case OTP_CH_WHATSAPP:
	case OTP_CH_COUNT: break;
	}
	return params_phone(p, "phone", true, out, err);
}

static int read_password(json_t *p, char **out, struct otp_error *err)
{
	return params_string(p, "password", true, true, OTP_CODE_MAX, false, out, err);
}

int compat_read_send(json_t *p, enum otp_channel ch, int max_lifetime,
                     struct compat_send_fields *f, struct otp_error *err)
{
	int rc;
	memset(f, 0, sizeof *f);
	/* Field order of COMPAT.md: the first missing or bad field is the one reported. */
	if ((rc = read_target(p, ch, &f->target, err)) != 0 ||
	    (rc = read_password(p, &f->password, err)) != 0)
		return rc;
	if (ch == OTP_CH_SMS || ch == OTP_CH_TELEGRAM) {
		if ((rc = params_string(p, "message", true, true, COMPAT_MESSAGE_MAX, true, &f->message,
		                        err)) != 0)
			return rc;
	} else if (ch == OTP_CH_EMAIL) {
		if ((rc = params_string(p, "subject", true, true, COMPAT_SUBJECT_MAX, false, &f->subject,
		                        err)) != 0)
			return rc;
	}
	if ((rc = params_lifetime(p, "lifetime", max_lifetime, &f->lifetime, err)) != 0)
		return rc;
	if (ch == OTP_CH_EMAIL &&
	    ((rc = params_string(p, "text", false, true, COMPAT_BODY_PART_MAX, true, &f->text, err)) != 0 ||
	     (rc = params_string(p, "html", false, true, COMPAT_BODY_PART_MAX, true, &f->html, err)) != 0))
		return rc;
	return params_ip(p, "ip", &f->ip, err);
}

void compat_send_fields_fini(struct compat_send_fields *f)
{
	free(f->target);
	otp_secret_free(f->password);
	otp_secret_free(f->message);
	otp_secret_free(f->subject);
	otp_secret_free(f->text);
	otp_secret_free(f->html);
	free(f->ip);
	memset(f, 0, sizeof *f);
}

/* The compat dialect's policy: the caller's lifetime, the global attempt limit and
 * consumption, one send per verification (the old service had no resend). */
static struct otp_policy compat_policy(const struct config *cfg, int lifetime, int code_length)
{
	return (struct otp_policy){
		.lifetime = lifetime,
		.max_attempts = cfg->max_check_attempts,
		.consume = cfg->check_consumes,
		.resend_cooldown = 0,
		.max_sends = 1,
		.code = {.length = code_length, .alphabets = OTP_ALPHA_DIGITS},
	};
}

int compat_send(const struct api_ctx *ctx, const struct api_call *call,
                struct api_response *resp, struct otp_error *err)
{
	enum otp_channel ch = (enum otp_channel)call->route->arg;
	struct compat_send_fields f;
	struct verify_started out;
	int rc = compat_read_send(call->params, ch, ctx->cfg->max_lifetime, &f, err);
	if (rc != 0)
		goto out;
	/* `ip` is required while the channel has IP rules: the store decides that on the
	 * rules its send transaction reads, so it costs no query of its own */
	struct verify_start in = {
		.app_id = "",
		.channel = ch,
		.target = f.target,
		.ip = f.ip,
		.policy = compat_policy(ctx->cfg, f.lifetime, 6),
		.code = f.password,
		.msg = {
			.text = ch == OTP_CH_EMAIL ? f.text : f.message,
			.subject = f.subject,
			.html = f.html,
		},
		.keep_code = ctx->cfg->password_readback,
		.require_ip = true,
		.request_id = call->req->request_id,
	};
	rc = verify_start(&ctx->verify, &in, &out, err);
	api_count_send(ctx, ch, rc);
	if (rc == 0) {
		api_log_started(ctx, call, &out);
		reply_status(resp, true);
	}
out:
	compat_send_fields_fini(&f);
	return rc;
}

int compat_read_check(json_t *p, enum otp_channel ch, char **target, char **password,
                      struct otp_error *err)
{
	*target = NULL;
	*password = NULL;
	int rc = read_target(p, ch, target, err);
	if (rc == 0)
		rc = read_password(p, password, err);
	return rc;
}

int compat_check(const struct api_ctx *ctx, const struct api_call *call,
                 struct api_response *resp, struct otp_error *err)
{
	enum otp_channel ch = (enum otp_channel)call->route->arg;
	char *target = NULL, *password = NULL;
	int rc = compat_read_check(call->params, ch, &target, &password, err);
	if (rc != 0)
		goto out;
	/* /sms/check also accepts codes sent by /call, as the old service did; a wrong code
	 * counts against every code it was compared with, whichever endpoint asked */
	unsigned mask = OTP_CH_BIT(ch);
	if (ch == OTP_CH_SMS)
		mask |= OTP_CH_BIT(OTP_CH_CALL);
	struct verify_check in = {
		.by = STORE_CHECK_TARGET,
		.app_id = "",
		.target = target,
		.channel_mask = mask,
		.code = password,
	};
	struct store_check_result res;
	rc = verify_check(&ctx->verify, &in, &res, err);
	api_count_check(ctx, ch, rc, res.ok);
	if (rc == 0)
		reply_status(resp, res.ok);
out:
	free(target);
	otp_secret_free(password);
	return rc;
}

/* The compat body key of the per-target rules of a channel. */
static const char *target_rules_key(enum otp_channel ch)
{
	switch (ch) {
	case OTP_CH_EMAIL: return "emails";
	case OTP_CH_TELEGRAM: return "chat_ids";
	case OTP_CH_SMS:
	case OTP_CH_CALL:
	case OTP_CH_WHATSAPP:
	case OTP_CH_COUNT: break;
	}
	return "phones";
}

/* Read one rule list; appends to rules[*n]. */
static int read_rules(json_t *p, const char *key, enum otp_limit_kind kind, bool *present,
                      struct otp_limit_rule *rules, size_t *n, struct otp_error *err)
{
	json_t *list = json_object_get(p, key);
	*present = false;
	if (list == NULL)
		return 0;
	if (!json_is_array(list))
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", key,
		                     "\"%s\" must be an array of {\"minutes\": M, \"rate\": R}", key);
	if (json_array_size(list) > OTP_LIMIT_RULES_MAX)
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", key,
		                     "\"%s\" may hold at most %d rules", key, OTP_LIMIT_RULES_MAX);
	size_t i;
	json_t *item;
	json_array_foreach(list, i, item) {
		char field[48];
		snprintf(field, sizeof field, "%s[%zu]", key, i);
		if (!json_is_object(item))
			return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", field,
			                     "\"%s\" must be an object {\"minutes\": M, \"rate\": R}", field);
		int64_t minutes = 0, rate = 0;
		bool has_m = false, has_r = false;
		struct otp_error sub = {0};
		if (params_int(item, "minutes", 1, OTP_LIMIT_MINUTES_MAX, &has_m, &minutes, &sub) != 0 ||
		    params_int(item, "rate", 0, OTP_LIMIT_RATE_MAX, &has_r, &rate, &sub) != 0)
			return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", field,
			                     "\"%s\": %s", field, sub.message);
		if (!has_m || !has_r)
			return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", field,
			                     "\"%s\" must have both \"minutes\" and \"rate\"", field);
		rules[*n].kind = kind;
		rules[*n].minutes = (int)minutes;
		rules[*n].rate = (int)rate;
		(*n)++;
	}
	*present = true;
	return 0;
}

int compat_read_limits(json_t *p, enum otp_channel ch, struct otp_limit_rule *rules,
                       size_t *n, bool replace[2], struct otp_error *err)
{
	*n = 0;
	replace[0] = replace[1] = false;
	/* Other parameters are ignored, as the old service did (a cache-busting query
	 * argument must not break a client). */
	int rc = read_rules(p, "ips", OTP_LIMIT_IP, &replace[OTP_LIMIT_IP], rules, n, err);
	if (rc == 0)
		rc = read_rules(p, target_rules_key(ch), OTP_LIMIT_TARGET, &replace[OTP_LIMIT_TARGET],
		                rules, n, err);
	return rc;
}

int compat_limit_set(const struct api_ctx *ctx, const struct api_call *call,
                     struct api_response *resp, struct otp_error *err)
{
	json_t *p = call->params;
	enum otp_channel ch = (enum otp_channel)call->route->arg;
	struct otp_limit_rule rules[2 * OTP_LIMIT_RULES_MAX];
	size_t n = 0;
	bool replace[2];
	int rc = compat_read_limits(p, ch, rules, &n, replace, err);
	if (rc != 0)
		return rc;
	if (store_rules_replace(ctx->store, "", ch, replace, rules, n) != 0)
		return otp_error_set(err, OTP_ERR_STORE, "unavailable", "",
		                     "the database is unavailable, try again");
	reply_status(resp, true);
	return 0;
}

int compat_limit_get(const struct api_ctx *ctx, const struct api_call *call,
                     struct api_response *resp, struct otp_error *err)
{
	enum otp_channel ch = (enum otp_channel)call->route->arg;
	struct store_limits lim;
	if (store_rules_get(ctx->store, "", ch, &lim) != 0)
		return otp_error_set(err, OTP_ERR_STORE, "unavailable", "",
		                     "the database is unavailable, try again");
	json_t *ips = json_array(), *targets = json_array();
	for (size_t i = 0; i < lim.n; i++) {
		json_t *r = json_pack("{s:i, s:i}", "minutes", lim.rules[i].minutes, "rate",
		                      lim.rules[i].rate);
		json_array_append_new(lim.rules[i].kind == OTP_LIMIT_IP ? ips : targets, r);
	}
	json_t *content = json_object();
	json_object_set_new(content, "ips", ips);
	json_object_set_new(content, target_rules_key(ch), targets);
	reply_content(resp, content);
	return 0;
}

int compat_target(const struct api_ctx *ctx, const struct api_call *call,
                  struct api_response *resp, struct otp_error *err)
{
	json_t *p = call->params;
	char *password = NULL, *chname = NULL;
	int rc;
	enum otp_channel ch;
	if ((rc = read_password(p, &password, err)) != 0 ||
	    (rc = params_string(p, "channel", true, false, 16, false, &chname, err)) != 0)
		goto out;
	if (otp_channel_parse(chname, &ch) != 0) {
		rc = otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "channel",
		                   "\"channel\" must be sms, email, call, telegram or whatsapp");
		goto out;
	}
	/* finding a code is using it, as a check does: it approves (and, with
	 * OTPD_CHECK_CONSUMES, uses up) the verification it found */
	struct verify_check in = {
		.by = STORE_CHECK_LOOKUP,
		.app_id = "",
		.channel = ch,
		.code = password,
	};
	struct store_check_result res;
	rc = verify_check(&ctx->verify, &in, &res, err);
	api_count_check(ctx, ch, rc, res.ok);
	if (rc != 0)
		goto out;
	if (!res.ok) {
		rc = otp_error_set(err, OTP_ERR_NOT_FOUND, "not_found", "",
		                   "no live code of that channel has that password");
		goto out;
	}
	reply_content(resp, json_pack("{s:s}", "target", res.v.target));
out:
	otp_secret_free(password);
	free(chname);
	return rc;
}

int compat_password(const struct api_ctx *ctx, const struct api_call *call,
                    struct api_response *resp, struct otp_error *err)
{
	json_t *p = call->params;
	if (!ctx->cfg->password_readback)
		return otp_error_set(err, OTP_ERR_DISABLED, "disabled", "",
		                     "GET /password reads a secret back and is disabled; set "
		                     "OTPD_PASSWORD_READBACK=true to enable it");
	char *target = NULL;
	uint8_t *sealed = NULL;
	size_t sealed_len = 0;
	int rc = params_string(p, "target", true, true, OTP_TARGET_MAX, false, &target, err);
	if (rc != 0)
		return rc;
	/* Targets are stored normalised: phones without their '+'. */
	const char *t = target;
	if (t[0] == '+' && t[1] >= '0' && t[1] <= '9')
		t++;
	rc = store_vf_sealed_latest(ctx->store, "", t, ctx->now(), &sealed, &sealed_len);
	free(target);
	if (rc == OTP_ERR_NOT_FOUND)
		return otp_error_set(err, OTP_ERR_NOT_FOUND, "not_found", "",
		                     "no live code was sent to that target");
	if (rc != 0)
		return otp_error_set(err, OTP_ERR_STORE, "unavailable", "",
		                     "the database is unavailable, try again");
	char code[OTP_CODE_MAX + OTP_SEAL_OVERHEAD + 1];
	size_t code_len = 0;
	if (sealed_len > OTP_CODE_MAX + OTP_SEAL_OVERHEAD ||
	    otp_open(ctx->key, "password", sealed, sealed_len, (uint8_t *)code, &code_len) != 0) {
		free(sealed);
		return otp_error_set(err, OTP_ERR_INTERNAL, "internal", "",
		                     "the stored copy could not be opened (was the key changed?)");
	}
	free(sealed);
	code[code_len] = '\0';
	reply_content(resp, json_pack("{s:s}", "password", code));
	sodium_memzero(code, sizeof code);
	return 0;
}

int compat_telegram_webhook(const struct api_ctx *ctx, const struct api_call *call,
                            struct api_response *resp, struct otp_error *err)
{
	const struct config *cfg = ctx->cfg;
	json_t *p = call->params;
	json_t *msg = json_object_get(p, "message");
	if (msg == NULL)
		msg = json_object_get(p, "edited_message");
	json_t *chat = json_is_object(msg) ? json_object_get(msg, "chat") : NULL;
	json_t *id = json_is_object(chat) ? json_object_get(chat, "id") : NULL;
	if (msg == NULL) {
		/* Another kind of update (callback, member change...): nothing to do; 200 so
		 * Telegram does not retry it. */
		reply_status(resp, true);
		return 0;
	}
	if (!json_is_integer(id) || json_integer_value(id) == 0)
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "message.chat.id",
		                     "\"message.chat.id\" must be an integer chat id");
	char target[32];
	snprintf(target, sizeof target, "%" JSON_INTEGER_FORMAT, json_integer_value(id));
	/* otpd makes the code here, and renders OTPD_TEMPLATE_TELEGRAM with it */
	struct verify_start in = {
		.app_id = "",
		.channel = OTP_CH_TELEGRAM,
		.target = target,
		.policy = compat_policy(cfg, cfg->webhook_lifetime, cfg->webhook_code_length),
		.msg = {.tmpl = cfg->template_telegram},
		.keep_code = cfg->password_readback,
		.request_id = call->req->request_id,
	};
	struct verify_started out;
	int rc = verify_start(&ctx->verify, &in, &out, err);
	api_count_send(ctx, OTP_CH_TELEGRAM, rc);
	if (rc == OTP_ERR_LIMIT) {
		/* Answer 200 so Telegram does not retry a refused update; say why. */
		json_t *o = json_object();
		json_object_set_new(o, "status", json_false());
		json_object_set_new(o, "status_code",
		                    json_string(strcmp(err->reason, "ip_limit") == 0
		                                ? "ip_limit"
		                                : otp_limit_status_code(OTP_CH_TELEGRAM, OTP_LIMIT_TARGET)));
		json_object_set_new(o, "message",
		                    json_string(otp_limit_message(OTP_CH_TELEGRAM,
		                                                  strcmp(err->reason, "ip_limit") == 0
		                                                  ? OTP_LIMIT_IP : OTP_LIMIT_TARGET)));
		resp->status = 200;
		resp->body = o;
		return 0;
	}
	if (rc == 0) {
		api_log_started(ctx, call, &out);
		reply_status(resp, true);
	}
	return rc;
}

/* ---- the dialect: its error shape and its routes ------------------------------------ */

/* The old service's statuses: a limit is a 400 too. */
static int compat_status(const struct otp_error *e)
{
	return e->code == OTP_ERR_LIMIT ? 400 : api_status_for(e);
}

/* {"status":false,"status_code":...,"message":...} (keys in that order; no status_code
 * for a missing field, as the old service answered). */
static void compat_error(const struct api_route *r, const struct otp_error *e,
                         struct api_response *resp)
{
	const char *code = e->reason;
	enum otp_channel ch = r != NULL ? (enum otp_channel)r->arg : OTP_CH_SMS;
	const char *message = e->message[0] ? e->message : otp_err_name(e->code);
	if (strcmp(code, "target_limit") == 0 || strcmp(code, "ip_limit") == 0) {
		enum otp_limit_kind kind = code[0] == 'i' ? OTP_LIMIT_IP : OTP_LIMIT_TARGET;
		code = otp_limit_status_code(ch, kind);
		message = otp_limit_message(ch, kind);
	} else if (strcmp(code, "missing_parameter") == 0 || strcmp(code, "internal") == 0) {
		code = "";
	}
	json_t *o = json_object();
	json_object_set_new(o, "status", json_false());
	if (code[0] != '\0')
		json_object_set_new(o, "status_code", json_string(code));
	json_object_set_new(o, "message", json_string(message));
	resp->status = compat_status(e);
	resp->body = o;
}

const struct api_dialect api_dialect_compat = {.name = "compat", .error = compat_error};

#define SMS OTP_CH_SMS
#define CALL OTP_CH_CALL
#define EMAIL OTP_CH_EMAIL
#define TG OTP_CH_TELEGRAM
#define D &api_dialect_compat
#define B API_BODY_COMPAT

const struct api_route api_compat_routes[] = {
	{"GET", "/health", D, B, API_AUTH_NONE, admin_health, 0},
	{"GET", "/ready", D, B, API_AUTH_NONE, admin_ready, 0},
	{"POST", "/sms", D, B, API_AUTH_BASIC, compat_send, SMS},
	{"POST", "/call", D, B, API_AUTH_BASIC, compat_send, CALL},
	{"POST", "/email", D, B, API_AUTH_BASIC, compat_send, EMAIL},
	{"POST", "/telegram", D, B, API_AUTH_BASIC, compat_send, TG},
	{"GET", "/sms/check", D, B, API_AUTH_BASIC, compat_check, SMS},
	{"GET", "/call/check", D, B, API_AUTH_BASIC, compat_check, CALL},
	{"GET", "/email/check", D, B, API_AUTH_BASIC, compat_check, EMAIL},
	{"GET", "/telegram/check", D, B, API_AUTH_BASIC, compat_check, TG},
	{"POST", "/limit/sms", D, B, API_AUTH_BASIC, compat_limit_set, SMS},
	{"POST", "/limit/call", D, B, API_AUTH_BASIC, compat_limit_set, CALL},
	{"POST", "/limit/email", D, B, API_AUTH_BASIC, compat_limit_set, EMAIL},
	{"POST", "/limit/telegram", D, B, API_AUTH_BASIC, compat_limit_set, TG},
	{"GET", "/limit/sms", D, B, API_AUTH_BASIC, compat_limit_get, SMS},
	{"GET", "/limit/call", D, B, API_AUTH_BASIC, compat_limit_get, CALL},
	{"GET", "/limit/email", D, B, API_AUTH_BASIC, compat_limit_get, EMAIL},
	{"GET", "/limit/telegram", D, B, API_AUTH_BASIC, compat_limit_get, TG},
	{"GET", "/target", D, B, API_AUTH_BASIC, compat_target, 0},
	{"GET", "/password", D, B, API_AUTH_BASIC, compat_password, 0},
	{"POST", "/telegram/webhook", D, B, API_AUTH_WEBHOOK, compat_telegram_webhook, 0},
	{"GET", "/admin/outbox", D, B, API_AUTH_BASIC, admin_outbox, 0},
	{"GET", "/metrics", D, B, API_AUTH_BASIC, admin_metrics, 0},
};

const size_t api_compat_routes_count = sizeof api_compat_routes / sizeof api_compat_routes[0];
