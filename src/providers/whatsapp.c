/*
 * whatsapp.c - the `whatsapp` provider: the WhatsApp Cloud API, `POST
 * {OTPD_WHATSAPP_BASE_URL}/{phone_number_id}/messages` with a Bearer token and an
 * authentication template (the code as the body parameter and as the copy-code button's
 * parameter). msg_id is messages[0].id. Meta answers rate limits with HTTP 400 and an
 * error code, so those codes are retried although the status says "bad request".
 */
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "providers/impl.h"

struct whatsapp_provider {
	struct provider base;
	const struct config *cfg;
	char *url;
	char *auth_header; /* holds the token: wiped on free */
};

/* Graph API error codes that mean "later" (throttling), whatever the HTTP status:
 * 4 app rate limit, 80007 WABA rate limit, 130429 throughput, 131048 spam rate limit,
 * 131056 pair rate limit, 133016 registration rate limit. */
static bool retryable_error_code(json_int_t code)
{
	static const json_int_t later[] = {4, 80007, 130429, 131048, 131056, 133016};
	for (size_t i = 0; i < sizeof later / sizeof later[0]; i++)
		if (code == later[i])
			return true;
	return false;
}

static json_t *template_body(const struct config *cfg, const struct otp_message *m)
{
	return json_pack(
		"{s:s, s:s, s:s, s:{s:s, s:{s:s}, s:["
		"{s:s, s:[{s:s, s:s}]},"
		"{s:s, s:s, s:s, s:[{s:s, s:s}]}"
		"]}}",
		"messaging_product", "whatsapp",
		"to", m->target,
		"type", "template",
		"template",
		  "name", cfg->whatsapp_template,
		  "language", "code", cfg->whatsapp_language,
		  "components",
		    "type", "body", "parameters", "type", "text", "text", m->code,
		    "type", "button", "sub_type", "url", "index", "0",
		      "parameters", "type", "text", "text", m->code);
}

static int whatsapp_send(struct provider *p, struct provider_session *sess,
                         const struct otp_message *m, int64_t job_id, struct provider_result *r)
{
	const struct whatsapp_provider *wp = (const struct whatsapp_provider *)p;
	struct provider_http_resp resp;
	(void)job_id; /* the Cloud API takes no idempotency key */

	r->msg_id[0] = '\0';
	r->error[0] = '\0';
	if (m->channel != OTP_CH_WHATSAPP)
		return provider_fail(r, OTP_ERR_PERMANENT,
		                     "whatsapp provider does not deliver channel %s",
		                     otp_channel_name(m->channel));
	if (m->target == NULL || m->code == NULL)
		return provider_fail(r, OTP_ERR_PERMANENT, "message without target or code");
	const char *headers[] = {wp->auth_header, NULL};
	struct provider_http_req req = {
		.cancel = &p->cancelled,
		.url = wp->url,
		.headers = headers,
		.redact = wp->cfg->whatsapp_token,
	};
	int rc = provider_post_json(wp->cfg, sess, &req, template_body(wp->cfg, m), &resp, r);
	if (resp.status == 0)
		goto out;
	json_t *ans = json_loadb(resp.body, resp.len, 0, NULL);
	if (rc == 0) {
		const char *id = json_string_value(
			json_object_get(json_array_get(json_object_get(ans, "messages"), 0), "id"));
		if (id != NULL)
			snprintf(r->msg_id, sizeof r->msg_id, "%s", id);
	} else {
		/* {"error":{"message":"...","type":"OAuthException","code":190,...}} */
		json_t *e = json_object_get(ans, "error");
		json_int_t code = json_integer_value(json_object_get(e, "code"));
		const char *msg = json_string_value(json_object_get(e, "message"));
		if (retryable_error_code(code))
			rc = OTP_ERR_PROVIDER;
		if (msg != NULL) {
			char detail[200];
			provider_copy_detail(detail, sizeof detail, msg);
			provider_fail(r, rc, "HTTP %ld: error %lld: %s", resp.status, (long long)code,
			              detail);
		}
	}
	json_decref(ans);
out:
	provider_result_scrub(r, m->code, wp->cfg->whatsapp_token);
	return rc;
}

static void whatsapp_free(struct provider *p)
{
	struct whatsapp_provider *wp = (struct whatsapp_provider *)p;
	if (wp == NULL)
		return;
	free(wp->url);
	otp_secret_free(wp->auth_header);
	free(wp);
}

static const struct provider_ops whatsapp_ops = {
	.name = "whatsapp",
	.send = whatsapp_send,
	.free = whatsapp_free,
};

static struct provider *provider_whatsapp_new(const struct config *cfg, char *err, size_t cap)
{
	const struct provider_setting need[] = {
		{"OTPD_WHATSAPP_BASE_URL", cfg->whatsapp_base_url},
		{"OTPD_WHATSAPP_TOKEN", cfg->whatsapp_token},
		{"OTPD_WHATSAPP_PHONE_NUMBER_ID", cfg->whatsapp_phone_number_id},
		{"OTPD_WHATSAPP_TEMPLATE", cfg->whatsapp_template},
		{"OTPD_WHATSAPP_LANGUAGE", cfg->whatsapp_language},
	};
	if (!provider_require("whatsapp", need, sizeof need / sizeof need[0], err, cap))
		return NULL;
	if (strspn(cfg->whatsapp_phone_number_id, "0123456789") !=
	    strlen(cfg->whatsapp_phone_number_id)) {
		snprintf(err, cap, "whatsapp: OTPD_WHATSAPP_PHONE_NUMBER_ID must be digits");
		return NULL;
	}
	if (strpbrk(cfg->whatsapp_token, "\r\n") != NULL) {
		snprintf(err, cap, "whatsapp: OTPD_WHATSAPP_TOKEN contains a line break");
		return NULL;
	}
	json_t *probe = json_pack("[s,s]", cfg->whatsapp_template, cfg->whatsapp_language);
	if (probe == NULL) {
		snprintf(err, cap, "whatsapp: OTPD_WHATSAPP_TEMPLATE or OTPD_WHATSAPP_LANGUAGE is "
		         "not valid UTF-8");
		return NULL;
	}
	json_decref(probe);
	struct whatsapp_provider *wp = calloc(1, sizeof *wp);
	size_t ul = strlen(cfg->whatsapp_base_url) + strlen(cfg->whatsapp_phone_number_id) +
	            sizeof "//messages";
	size_t hl = strlen(cfg->whatsapp_token) + sizeof "Authorization: Bearer ";
	if (wp == NULL || (wp->url = malloc(ul)) == NULL || (wp->auth_header = malloc(hl)) == NULL) {
		whatsapp_free(wp ? &wp->base : NULL);
		snprintf(err, cap, "whatsapp: out of memory");
		return NULL;
	}
	snprintf(wp->url, ul, "%s/%s/messages", cfg->whatsapp_base_url, cfg->whatsapp_phone_number_id);
	snprintf(wp->auth_header, hl, "Authorization: Bearer %s", cfg->whatsapp_token);
	wp->base.ops = &whatsapp_ops;
	wp->cfg = cfg;
	return &wp->base;
}

static const char *const whatsapp_settings[] = {"OTPD_WHATSAPP_BASE_URL", "OTPD_WHATSAPP_TOKEN", "OTPD_WHATSAPP_PHONE_NUMBER_ID", "OTPD_WHATSAPP_TEMPLATE", "OTPD_WHATSAPP_LANGUAGE", NULL};

const struct provider_def provider_whatsapp_def = {
	.name = "whatsapp",
	.channels = OTP_CH_BIT(OTP_CH_WHATSAPP),
	.settings = whatsapp_settings,
	.make = provider_whatsapp_new,
};
