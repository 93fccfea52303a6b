/*
 * flow.c - send and check, shared by every dialect. The code is hashed here and never
 * leaves this function in clear except inside the sealed delivery payload (and the
 * sealed read-back copy when GET /password is enabled).
 */
#include "api/flow.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/params.h"
#include "core/message.h"
#include "log.h"

static int store_failed(struct otp_error *err)
{
	return otp_error_set(err, OTP_ERR_STORE, "unavailable", "",
	                     "the database is unavailable, try again");
}

/* Seal `len` bytes for `ad` into a malloc'd blob. */
static uint8_t *seal_new(const struct api_ctx *ctx, const char *ad, const uint8_t *in,
                         size_t len, size_t *out_len)
{
	uint8_t *out = malloc(len + OTP_SEAL_OVERHEAD);
	if (out == NULL)
		return NULL;
	otp_seal(ctx->key, ctx->rng, ad, in, len, out);
	*out_len = len + OTP_SEAL_OVERHEAD;
	return out;
}

/* Texts otpd writes itself from the OTPD_TEMPLATE_* settings, when the request did not
 * bring its own: the call's spoken text (the compat /call has no message), and the whole
 * email when no subject was given (the Telegram webhook's message is rendered by its
 * caller). Owned here, wiped when the send is done. */
struct rendered {
	char *text, *subject, *html;
};

static void rendered_fini(struct rendered *r)
{
	otp_secret_free(r->text);
	otp_secret_free(r->subject);
	otp_secret_free(r->html);
}

static int render_missing(const struct config *cfg, const struct flow_send *in,
                          struct otp_message *m, struct rendered *r)
{
	if (in->channel == OTP_CH_EMAIL) {
		if (in->subject != NULL)
			return 0;
		r->subject = otp_template_render(cfg->template_email_subject, in->code, in->lifetime);
		r->text = otp_template_render(cfg->template_email_text, in->code, in->lifetime);
		if (cfg->template_email_html != NULL)
			r->html = otp_template_render(cfg->template_email_html, in->code, in->lifetime);
		if (r->subject == NULL || r->text == NULL ||
		    (cfg->template_email_html != NULL && r->html == NULL))
			return OTP_ERR_NOMEM;
		m->subject = r->subject;
		m->text = r->text;
		m->html = r->html;
		return 0;
	}
	if (in->text != NULL)
		return 0;
	const char *tmpl = cfg->template_sms;
	if (in->channel == OTP_CH_CALL)
		tmpl = cfg->template_call;
	else if (in->channel == OTP_CH_TELEGRAM)
		tmpl = cfg->template_telegram;
	r->text = otp_template_render(tmpl, in->code, in->lifetime);
	if (r->text == NULL)
		return OTP_ERR_NOMEM;
	m->text = r->text;
	return 0;
}

int flow_send(const struct api_ctx *ctx, const struct flow_send *in, int64_t *job_id,
              struct otp_error *err)
{
	const struct config *cfg = ctx->cfg;
	struct store_send req = {0};
	struct store_send_result res = {0};
	uint8_t *payload = NULL, *plain = NULL, *sealed_code = NULL;
	size_t plain_len = 0;
	struct rendered rendered = {0};
	int rc;

	req.channel = in->channel;
	req.target = in->target;
	req.ip = in->ip;
	req.now = ctx->now();
	req.expire_at = req.now + in->lifetime;
	req.request_id = in->request_id;
	req.require_ip = in->require_ip;
	otp_code_hash(ctx->key, in->channel, in->target, in->code, req.code_hash);
	otp_lookup_hash(ctx->key, in->channel, in->code, req.lookup_hash);
	if (cfg->password_readback) {
		sealed_code = seal_new(ctx, "password", (const uint8_t *)in->code, strlen(in->code),
		                       &req.sealed_code_len);
		if (sealed_code == NULL) {
			rc = otp_error_set(err, OTP_ERR_NOMEM, "", "", "out of memory");
			goto out;
		}
		req.sealed_code = sealed_code;
	}
	if (cfg->dummy) {
		req.skip = true;
		req.provider = "dummy";
	} else {
		struct otp_message m = {
			.channel = in->channel,
			.target = (char *)in->target,
			.code = (char *)in->code,
			.text = (char *)in->text,
			.subject = (char *)in->subject,
			.html = (char *)in->html,
			.lifetime = in->lifetime,
		};
		rc = render_missing(cfg, in, &m, &rendered);
		if (rc == 0)
			rc = otp_message_encode(&m, &plain, &plain_len);
		if (rc != 0) {
			rc = otp_error_set(err, rc, "", "", "could not encode the message");
			goto out;
		}
		payload = seal_new(ctx, "outbox", plain, plain_len, &req.payload_len);
		if (payload == NULL) {
			rc = otp_error_set(err, OTP_ERR_NOMEM, "", "", "out of memory");
			goto out;
		}
		req.payload = payload;
		req.provider = config_channel_provider(cfg, in->channel);
	}

	rc = store_send(ctx->store, &req, &res);
	api_metrics_send(ctx->metrics, in->channel,
	                 rc == 0 ? API_SEND_ACCEPTED
	                 : rc == OTP_ERR_LIMIT ? API_SEND_LIMITED
	                 : rc == OTP_ERR_INVALID ? API_SEND_INVALID : API_SEND_FAILED);
	if (rc == OTP_ERR_LIMIT) {
		otp_error_set(err, OTP_ERR_LIMIT,
		              otp_limit_status_code(in->channel, res.refused_by.kind), "",
		              "%s", otp_limit_message(in->channel, res.refused_by.kind));
		goto out;
	}
	if (rc == OTP_ERR_INVALID && res.ip_required) {
		params_missing("ip", err);
		goto out;
	}
	if (rc != 0) {
		store_failed(err);
		rc = OTP_ERR_STORE;
		goto out;
	}
	if (job_id != NULL)
		*job_id = res.job_id;
	if (!cfg->dummy && ctx->notify != NULL)
		ctx->notify(ctx->notify_arg);
	if (log_enabled(LOG_INFO)) {
		char masked[64], job[24], life[16];
		log_mask_target(in->target, masked, sizeof masked);
		snprintf(job, sizeof job, "%lld", (long long)res.job_id);
		snprintf(life, sizeof life, "%d", in->lifetime);
		log_write(LOG_INFO, "code stored", "req", in->request_id, "channel",
		          otp_channel_name(in->channel), "target", masked, "lifetime", life, "job", job,
		          "delivery", cfg->dummy ? "skipped (DUMMY=true)" : req.provider, LOG_END);
	}
out:
	if (plain != NULL) {
		sodium_memzero(plain, plain_len);
		free(plain);
	}
	free(payload);
	free(sealed_code);
	rendered_fini(&rendered);
	sodium_memzero(&req, sizeof req);
	return rc;
}

int flow_check(const struct api_ctx *ctx, enum otp_channel channel, unsigned mask,
               const char *target, const char *code, bool *ok, struct otp_error *err)
{
	struct store_check req = {0};
	req.channel = channel;
	req.channel_mask = mask;
	req.target = target;
	req.now = ctx->now();
	req.max_failures = ctx->cfg->max_check_attempts;
	req.consume = ctx->cfg->check_consumes;
	/* Hash for every accepted channel, always, so the work done does not depend on
	 * which codes exist. */
	for (unsigned ch = 0; ch < OTP_CH_COUNT; ch++)
		if (mask & OTP_CH_BIT(ch))
			otp_code_hash(ctx->key, (enum otp_channel)ch, target, code, req.presented[ch]);
	*ok = false;
	int rc = store_check(ctx->store, &req, ok);
	sodium_memzero(&req.presented, sizeof req.presented);
	api_metrics_check(ctx->metrics, channel,
	                  rc != 0 ? API_CHECK_FAILED : *ok ? API_CHECK_TRUE : API_CHECK_FALSE);
	if (rc != 0)
		return store_failed(err);
	return 0;
}
