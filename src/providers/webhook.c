/*
 * webhook.c - the `webhook` provider: a generic HTTP hand-off. `POST OTPD_WEBHOOK_URL`
 * with the whole message as JSON, signed with `X-Otpd-Signature: sha256=<hex
 * HMAC-SHA256(OTPD_WEBHOOK_SECRET, body)>` so the receiver can tell it came from otpd,
 * and `X-Otpd-Job: <job id>`, the same on every retry, so it can drop duplicates.
 * Any 2xx is delivered; an answer {"id":"..."} becomes msg_id.
 */
#include <inttypes.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "providers/impl.h"

struct webhook_provider {
	struct provider base;
	const struct config *cfg;
};

static json_t *str_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

static int webhook_send(struct provider *p, struct provider_session *sess,
                        const struct otp_message *m, int64_t job_id, struct provider_result *r)
{
	const struct webhook_provider *wp = (const struct webhook_provider *)p;
	const struct config *cfg = wp->cfg;
	struct provider_http_resp resp;
	unsigned char mac[crypto_auth_hmacsha256_BYTES];
	char hex[2 * crypto_auth_hmacsha256_BYTES + 1];
	char sig[sizeof hex + 32];
	char job[48];
	crypto_auth_hmacsha256_state st;

	r->msg_id[0] = '\0';
	r->error[0] = '\0';
	if (m->target == NULL || m->code == NULL)
		return provider_fail(r, OTP_ERR_PERMANENT, "message without target or code");
	json_t *o = json_object();
	if (o == NULL)
		return provider_fail(r, OTP_ERR_NOMEM, "out of memory");
	int bad = 0;
	bad |= json_object_set_new(o, "id", json_integer((json_int_t)job_id));
	bad |= json_object_set_new(o, "channel", json_string(otp_channel_name(m->channel)));
	bad |= json_object_set_new(o, "target", json_string(m->target));
	bad |= json_object_set_new(o, "code", json_string(m->code));
	bad |= json_object_set_new(o, "message", str_or_null(m->text));
	bad |= json_object_set_new(o, "subject", str_or_null(m->subject));
	bad |= json_object_set_new(o, "html", str_or_null(m->html));
	char *body = bad ? NULL : json_dumps(o, PROVIDER_JSON_FLAGS);
	json_decref(o);
	if (body == NULL)
		return provider_fail(r, OTP_ERR_PERMANENT, "message cannot be encoded as JSON");
	size_t len = strlen(body);

	crypto_auth_hmacsha256_init(&st, (const unsigned char *)cfg->webhook_secret,
	                            strlen(cfg->webhook_secret));
	crypto_auth_hmacsha256_update(&st, (const unsigned char *)body, len);
	crypto_auth_hmacsha256_final(&st, mac);
	sodium_bin2hex(hex, sizeof hex, mac, sizeof mac);
	snprintf(sig, sizeof sig, "X-Otpd-Signature: sha256=%s", hex);
	snprintf(job, sizeof job, "X-Otpd-Job: %" PRId64, job_id);
	sodium_memzero(&st, sizeof st);

	const char *headers[] = {sig, job, NULL};
	struct provider_http_req req = {
		.cancel = &p->cancelled,
		.url = cfg->webhook_url,
		.content_type = "application/json",
		.body = body,
		.body_len = len,
		.headers = headers,
	};
	int rc = provider_http_send(cfg, sess, &req, &resp, r);
	sodium_memzero(body, len);
	free(body);
	if (rc == 0 && resp.len > 0) {
		json_t *ans = json_loadb(resp.body, resp.len, 0, NULL);
		const char *id = json_string_value(json_object_get(ans, "id"));
		if (id != NULL)
			provider_copy_detail(r->msg_id, sizeof r->msg_id, id);
		json_decref(ans);
	}
	provider_result_scrub(r, m->code, cfg->webhook_secret);
	return rc;
}

static void webhook_free(struct provider *p)
{
	free(p);
}

static const struct provider_ops webhook_ops = {
	.name = "webhook",
	.send = webhook_send,
	.free = webhook_free,
};

static struct provider *provider_webhook_new(const struct config *cfg, char *err, size_t cap)
{
	/* the secret too: unsigned hand-offs of codes are refused, the receiver must be able
	 * to check */
	const struct provider_setting need[] = {
		{"OTPD_WEBHOOK_URL", cfg->webhook_url},
		{"OTPD_WEBHOOK_SECRET", cfg->webhook_secret},
	};
	if (!provider_require("webhook", need, sizeof need / sizeof need[0], err, cap))
		return NULL;
	struct webhook_provider *wp = calloc(1, sizeof *wp);
	if (wp == NULL) {
		snprintf(err, cap, "webhook: out of memory");
		return NULL;
	}
	wp->base.ops = &webhook_ops;
	wp->cfg = cfg;
	return &wp->base;
}

static const char *const webhook_settings[] = {"OTPD_WEBHOOK_URL", "OTPD_WEBHOOK_SECRET", NULL};

const struct provider_def provider_webhook_def = {
	.name = "webhook",
	.channels = OTP_CH_BIT(OTP_CH_SMS) | OTP_CH_BIT(OTP_CH_EMAIL) | OTP_CH_BIT(OTP_CH_CALL) | OTP_CH_BIT(OTP_CH_TELEGRAM) | OTP_CH_BIT(OTP_CH_WHATSAPP),
	.settings = webhook_settings,
	.make = provider_webhook_new,
};
