/*
 * request.c - what every dialect shares about an answer: freeing it, the compat-shaped
 * success replies, the status of an error class in the dialects that have no map of
 * their own, and the per-request bookkeeping of sends and checks (metrics, one log line).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/reply.h"
#include "api/route.h"
#include "log.h"

void api_response_fini(struct api_response *r)
{
	if (r == NULL)
		return;
	json_decref(r->body);
	r->body = NULL;
	free(r->text);
	r->text = NULL;
}

int api_status_for(const struct otp_error *e)
{
	switch (e->code) {
	case OTP_OK: return 200;
	case OTP_ERR_INVALID: return 400;
	case OTP_ERR_LIMIT: return 429;
	case OTP_ERR_NOT_FOUND: return 404;
	case OTP_ERR_DISABLED: return 403;
	case OTP_ERR_AUTH: return strcmp(e->reason, "forbidden") == 0 ? 403 : 401;
	case OTP_ERR_TOO_LARGE: return 413;
	case OTP_ERR_METHOD: return 405;
	case OTP_ERR_CONFLICT: return 409;
	case OTP_ERR_HEADERS: return 431;
	case OTP_ERR_URI_TOO_LONG: return 414;
	case OTP_ERR_UNSUPPORTED: return 501;
	case OTP_ERR_STORE: return 503;
	case OTP_ERR_PROVIDER: return 502;
	}
	return 500;
}

void reply_status(struct api_response *resp, bool status)
{
	json_t *o = json_object();
	json_object_set_new(o, "status", json_boolean(status));
	resp->status = 200;
	resp->body = o;
}

void reply_content(struct api_response *resp, json_t *content)
{
	json_t *o = json_object();
	json_object_set_new(o, "status", json_true());
	json_object_set_new(o, "content", content);
	resp->status = 200;
	resp->body = o;
}

void api_count_send(const struct api_ctx *ctx, enum otp_channel ch, int rc)
{
	api_metrics_send(ctx->metrics, ch,
	                 rc == 0 ? API_SEND_ACCEPTED
	                 : rc == OTP_ERR_LIMIT ? API_SEND_LIMITED
	                 : rc == OTP_ERR_INVALID ? API_SEND_INVALID : API_SEND_FAILED);
}

void api_count_check(const struct api_ctx *ctx, enum otp_channel ch, int rc, bool ok)
{
	api_metrics_check(ctx->metrics, ch,
	                  rc != 0 ? API_CHECK_FAILED : ok ? API_CHECK_TRUE : API_CHECK_FALSE);
}

void api_log_started(const struct api_ctx *ctx, const struct api_call *call,
                     const struct verify_started *s)
{
	if (!log_enabled(LOG_INFO))
		return;
	char masked[64], job[24], life[24];
	const struct store_verification *v = &s->v;
	log_mask_target(v->target, masked, sizeof masked);
	snprintf(job, sizeof job, "%lld", (long long)s->job_id);
	snprintf(life, sizeof life, "%lld", (long long)(v->expire_at - v->created_at));
	log_write(LOG_INFO, s->replayed ? "verification replayed" : "code stored",
	          "req", call->req->request_id, "app", v->app_id[0] ? v->app_id : "compat",
	          "verification", v->public_id, "channel", otp_channel_name(v->channel),
	          "target", masked, "lifetime", life, "job", job,
	          "delivery", ctx->cfg->dummy ? "skipped (DUMMY=true)"
	                                      : verify_provider(ctx->cfg, v->channel), LOG_END);
}
