/*
 * telegram.c - the `telegram` provider: talks to http-telegram-notify (the old stack's
 * Telegram sender) directly, `POST {OTP_TELEGRAM_URL}/msg` with X-Auth-Token and
 * {"to":<chat id>,"message":"..."}. That service answers HTTP 500 with a body starting
 * "Sent message" even when it did send: such an answer counts as delivered, any other
 * 5xx is retried.
 */
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "providers/impl.h"

#define TELEGRAM_SENT_QUIRK "Sent message"

struct telegram_provider {
	struct provider base;
	const struct config *cfg;
	char *msg_url;
	char *auth_header;
};

static int telegram_send(struct provider *p, struct provider_session *sess,
                         const struct otp_message *m, int64_t job_id, struct provider_result *r)
{
	const struct telegram_provider *tp = (const struct telegram_provider *)p;
	struct provider_http_resp resp;
	int64_t chat = 0;
	(void)job_id; /* http-telegram-notify takes no idempotency key */

	r->msg_id[0] = '\0';
	r->error[0] = '\0';
	if (m->channel != OTP_CH_TELEGRAM)
		return provider_fail(r, OTP_ERR_PERMANENT, "telegram provider does not deliver channel %s",
		                     otp_channel_name(m->channel));
	if (provider_parse_chat_id(m->target, &chat) != 0)
		return provider_fail(r, OTP_ERR_PERMANENT, "telegram target is not a chat id");
	const char *text = m->text ? m->text : m->code;
	if (text == NULL)
		return provider_fail(r, OTP_ERR_PERMANENT, "message without text");

	json_t *o = json_pack("{s:I, s:s}", "to", (json_int_t)chat, "message", text);
	const char *headers[] = {tp->auth_header, NULL};
	struct provider_http_req req = {
		.cancel = &p->cancelled,
		.url = tp->msg_url,
		.headers = headers,
		.redact = tp->cfg->telegram_app_token,
	};
	int rc = provider_post_json(tp->cfg, sess, &req, o, &resp, r);
	if (rc != 0 && resp.status == 500 &&
	    strncmp(resp.body, TELEGRAM_SENT_QUIRK, strlen(TELEGRAM_SENT_QUIRK)) == 0) {
		r->error[0] = '\0';
		return 0;
	}
	if (rc != 0 && resp.status != 0 && resp.len > 0) {
		char detail[160];
		provider_copy_detail(detail, sizeof detail, resp.body);
		provider_fail(r, rc, "HTTP %ld: %s", resp.status, detail);
	}
	provider_result_scrub(r, m->code, tp->cfg->telegram_app_token);
	return rc;
}

static void telegram_free(struct provider *p)
{
	struct telegram_provider *tp = (struct telegram_provider *)p;
	if (tp == NULL)
		return;
	free(tp->msg_url);
	otp_secret_free(tp->auth_header);
	free(tp);
}

static const struct provider_ops telegram_ops = {
	.name = "telegram",
	.send = telegram_send,
	.free = telegram_free,
};

static struct provider *provider_telegram_new(const struct config *cfg, char *err, size_t cap)
{
	const struct provider_setting need[] = {
		{"OTP_TELEGRAM_URL", cfg->telegram_url},
		{"OTP_TELEGRAM_APP_TOKEN", cfg->telegram_app_token},
	};
	if (!provider_require("telegram", need, sizeof need / sizeof need[0], err, cap))
		return NULL;
	if (strpbrk(cfg->telegram_app_token, "\r\n") != NULL) {
		snprintf(err, cap, "telegram: OTP_TELEGRAM_APP_TOKEN contains a line break");
		return NULL;
	}
	struct telegram_provider *tp = calloc(1, sizeof *tp);
	size_t ul = strlen(cfg->telegram_url) + sizeof "/msg";
	size_t hl = strlen(cfg->telegram_app_token) + sizeof "X-Auth-Token: ";
	if (tp == NULL || (tp->msg_url = malloc(ul)) == NULL ||
	    (tp->auth_header = malloc(hl)) == NULL) {
		telegram_free(tp ? &tp->base : NULL);
		snprintf(err, cap, "telegram: out of memory");
		return NULL;
	}
	snprintf(tp->msg_url, ul, "%s/msg", cfg->telegram_url);
	snprintf(tp->auth_header, hl, "X-Auth-Token: %s", cfg->telegram_app_token);
	tp->base.ops = &telegram_ops;
	tp->cfg = cfg;
	return &tp->base;
}

static const char *const telegram_settings[] = {"OTP_TELEGRAM_URL", "OTP_TELEGRAM_APP_TOKEN", NULL};

const struct provider_def provider_telegram_def = {
	.name = "telegram",
	.channels = OTP_CH_BIT(OTP_CH_TELEGRAM),
	.settings = telegram_settings,
	.make = provider_telegram_new,
};
