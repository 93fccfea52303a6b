/*
 * telegram_bot.c - the `telegram_bot` provider: the Telegram Bot API's sendMessage,
 * `POST {OTPD_TELEGRAM_API_URL}/bot{token}/sendMessage` with {"chat_id":<id>,"text":"..."}.
 * {"ok":true} is delivered (msg_id = result.message_id); 429 and 5xx are retried; 400
 * (chat not found, ...) and 403 (bot blocked) are final. The URL holds the token, so it
 * never appears in an error.
 */
#include <inttypes.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "providers/impl.h"

struct bot_provider {
	struct provider base;
	const struct config *cfg;
	char *send_url; /* holds the token: wiped on free */
};

static int bot_send(struct provider *p, struct provider_session *sess,
                    const struct otp_message *m, int64_t job_id, struct provider_result *r)
{
	const struct bot_provider *bp = (const struct bot_provider *)p;
	const char *token = bp->cfg->telegram_bot_token;
	struct provider_http_resp resp;
	int64_t chat = 0;
	(void)job_id; /* sendMessage takes no idempotency key */

	r->msg_id[0] = '\0';
	r->error[0] = '\0';
	if (m->channel != OTP_CH_TELEGRAM)
		return provider_fail(r, OTP_ERR_PERMANENT,
		                     "telegram_bot provider does not deliver channel %s",
		                     otp_channel_name(m->channel));
	if (provider_parse_chat_id(m->target, &chat) != 0)
		return provider_fail(r, OTP_ERR_PERMANENT, "telegram target is not a chat id");
	const char *text = m->text ? m->text : m->code;
	if (text == NULL)
		return provider_fail(r, OTP_ERR_PERMANENT, "message without text");

	json_t *o = json_pack("{s:I, s:s}", "chat_id", (json_int_t)chat, "text", text);
	struct provider_http_req req = {
		.cancel = &p->cancelled,
		.url = bp->send_url,
		.redact = token,
	};
	int rc = provider_post_json(bp->cfg, sess, &req, o, &resp, r);
	if (resp.status == 0)
		goto out; /* no answer: r->error says why */

	json_t *ans = json_loadb(resp.body, resp.len, 0, NULL);
	json_t *ok = json_object_get(ans, "ok");
	if (rc == 0) {
		json_int_t id = json_integer_value(json_object_get(json_object_get(ans, "result"),
		                                                   "message_id"));
		if (!json_is_true(ok)) {
			rc = provider_fail(r, OTP_ERR_PROVIDER, "HTTP %ld without \"ok\":true",
			                   resp.status);
		} else if (id > 0) {
			snprintf(r->msg_id, sizeof r->msg_id, "%" PRId64, (int64_t)id);
		}
	} else {
		const char *desc = json_string_value(json_object_get(ans, "description"));
		if (desc != NULL) {
			char detail[200];
			provider_copy_detail(detail, sizeof detail, desc);
			provider_fail(r, rc, "HTTP %ld: %s", resp.status, detail);
		}
	}
	json_decref(ans);
out:
	provider_result_scrub(r, m->code, token);
	return rc;
}

static void bot_free(struct provider *p)
{
	struct bot_provider *bp = (struct bot_provider *)p;
	if (bp == NULL)
		return;
	otp_secret_free(bp->send_url);
	free(bp);
}

static const struct provider_ops bot_ops = {
	.name = "telegram_bot",
	.send = bot_send,
	.free = bot_free,
};

static struct provider *provider_telegram_bot_new(const struct config *cfg, char *err, size_t cap)
{
	const struct provider_setting need[] = {
		{"OTPD_TELEGRAM_BOT_TOKEN", cfg->telegram_bot_token},
		{"OTPD_TELEGRAM_API_URL", cfg->telegram_api_url},
	};
	if (!provider_require("telegram_bot", need, sizeof need / sizeof need[0], err, cap))
		return NULL;
	/* a token is "<digits>:<base64url>"; anything else would change the URL's meaning */
	for (const char *c = cfg->telegram_bot_token; *c; c++) {
		if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') ||
		      (*c >= 'A' && *c <= 'Z') || *c == ':' || *c == '_' || *c == '-')) {
			snprintf(err, cap, "telegram_bot: OTPD_TELEGRAM_BOT_TOKEN has a character a "
			         "bot token cannot have");
			return NULL;
		}
	}
	struct bot_provider *bp = calloc(1, sizeof *bp);
	size_t ul = strlen(cfg->telegram_api_url) + strlen(cfg->telegram_bot_token) +
	            sizeof "/bot/sendMessage";
	if (bp == NULL || (bp->send_url = malloc(ul)) == NULL) {
		free(bp);
		snprintf(err, cap, "telegram_bot: out of memory");
		return NULL;
	}
	snprintf(bp->send_url, ul, "%s/bot%s/sendMessage", cfg->telegram_api_url,
	         cfg->telegram_bot_token);
	bp->base.ops = &bot_ops;
	bp->cfg = cfg;
	return &bp->base;
}

static const char *const telegram_bot_settings[] = {"OTPD_TELEGRAM_BOT_TOKEN", "OTPD_TELEGRAM_API_URL", NULL};

const struct provider_def provider_telegram_bot_def = {
	.name = "telegram_bot",
	.channels = OTP_CH_BIT(OTP_CH_TELEGRAM),
	.settings = telegram_bot_settings,
	.make = provider_telegram_bot_new,
};
