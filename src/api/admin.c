/*
 * admin.c - operators' endpoints: liveness (/health), readiness (/ready: the database
 * answers), the delivery jobs of the outbox (/admin/outbox), never with payloads, and
 * the counters in Prometheus' text format (/metrics).
 */
#include <stdlib.h>
#include <string.h>

#include "api/handlers.h"
#include "api/params.h"
#include "api/reply.h"

int admin_health(const struct api_ctx *ctx, const struct api_request *req, json_t *p, int arg,
                 struct api_response *resp, struct otp_error *err)
{
	(void)ctx; (void)req; (void)p; (void)arg; (void)err;
	reply_status(resp, true);
	return 0;
}

int admin_ready(const struct api_ctx *ctx, const struct api_request *req, json_t *p, int arg,
                struct api_response *resp, struct otp_error *err)
{
	(void)req; (void)p; (void)arg;
	if (store_ping(ctx->store) != 0)
		return otp_error_set(err, OTP_ERR_STORE, "unavailable", "",
		                     "the database is unavailable");
	reply_status(resp, true);
	return 0;
}

static const char *const job_states[] = {STORE_JOB_PENDING, STORE_JOB_SENDING, STORE_JOB_SENT,
                                          STORE_JOB_DEAD, STORE_JOB_SKIPPED};

int admin_outbox(const struct api_ctx *ctx, const struct api_request *req, json_t *p, int arg,
                 struct api_response *resp, struct otp_error *err)
{
	(void)req; (void)arg;
	struct store_job_filter f = {.channel = -1, .limit = 100};
	char *state = NULL, *chname = NULL, *provider = NULL;
	int64_t v = 0;
	bool present = false;
	int rc;
	if ((rc = params_string(p, "state", false, false, 16, false, &state, err)) != 0 ||
	    (rc = params_string(p, "channel", false, false, 16, false, &chname, err)) != 0 ||
	    (rc = params_string(p, "provider", false, false, STORE_PROVIDER_MAX - 1, false, &provider,
	                        err)) != 0)
		goto out;
	if (state != NULL) {
		bool known = false;
		for (size_t i = 0; i < sizeof job_states / sizeof job_states[0]; i++)
			known = known || strcmp(state, job_states[i]) == 0;
		if (!known) {
			rc = otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "state",
			                   "\"state\" must be pending, sending, sent, dead or skipped");
			goto out;
		}
		f.state = state;
	}
	if (chname != NULL) {
		enum otp_channel ch;
		if (otp_channel_parse(chname, &ch) != 0) {
			rc = otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "channel",
			                   "\"channel\" must be sms, email, call, telegram or whatsapp");
			goto out;
		}
		f.channel = (int)ch;
	}
	f.provider = provider;
	if ((rc = params_int(p, "limit", 1, 1000, &present, &v, err)) != 0)
		goto out;
	if (present)
		f.limit = (size_t)v;
	if ((rc = params_int(p, "before", 1, INT64_MAX, &present, &v, err)) != 0)
		goto out;
	if (present)
		f.before_id = v;

	struct store_job_info *rows = calloc(f.limit, sizeof *rows);
	struct store_outbox_counts counts;
	size_t n = 0;
	if (rows == NULL) {
		rc = otp_error_set(err, OTP_ERR_NOMEM, "", "", "out of memory");
		goto out;
	}
	if (store_outbox_list(ctx->store, &f, rows, &n, &counts) != 0) {
		free(rows);
		rc = otp_error_set(err, OTP_ERR_STORE, "unavailable", "", "the database is unavailable");
		goto out;
	}
	json_t *jobs = json_array();
	for (size_t i = 0; i < n; i++) {
		const struct store_job_info *r = &rows[i];
		json_t *j = json_object();
		json_object_set_new(j, "id", json_integer(r->id));
		json_object_set_new(j, "code_id", json_integer(r->code_id));
		json_object_set_new(j, "channel", json_string(otp_channel_name(r->channel)));
		json_object_set_new(j, "provider", json_string(r->provider));
		json_object_set_new(j, "state", json_string(r->state));
		json_object_set_new(j, "attempts", json_integer(r->attempts));
		json_object_set_new(j, "created_at", json_integer(r->created_at));
		json_object_set_new(j, "updated_at", json_integer(r->updated_at));
		json_object_set_new(j, "next_at", json_integer(r->next_at));
		json_object_set_new(j, "last_error", r->last_error[0] ? json_string(r->last_error) : json_null());
		json_object_set_new(j, "provider_msg_id",
		                    r->provider_msg_id[0] ? json_string(r->provider_msg_id) : json_null());
		json_array_append_new(jobs, j);
	}
	free(rows);
	json_t *content = json_pack("{s:o, s:{s:I, s:I, s:I, s:I, s:I}}", "jobs", jobs, "counts",
	                            "pending", (json_int_t)counts.pending, "sending",
	                            (json_int_t)counts.sending, "sent", (json_int_t)counts.sent,
	                            "dead", (json_int_t)counts.dead, "skipped",
	                            (json_int_t)counts.skipped);
	reply_content(resp, content);
out:
	free(state);
	free(chname);
	free(provider);
	return rc;
}

int admin_metrics(const struct api_ctx *ctx, const struct api_request *req, json_t *p, int arg,
                  struct api_response *resp, struct otp_error *err)
{
	(void)req; (void)p; (void)arg;
	struct api_delivery_stats d = {0};
	if (ctx->delivery_stats != NULL)
		ctx->delivery_stats(ctx->delivery_stats_arg, &d);
	struct store_outbox_backlog backlog;
	bool store_up = store_outbox_backlog(ctx->store, &backlog) == 0;
	char *text = api_metrics_render(ctx->metrics, ctx->delivery_stats ? &d : NULL,
	                                store_up ? &backlog : NULL, ctx->now());
	if (text == NULL) /* out of memory (main always keeps metrics) */
		return otp_error_set(err, OTP_ERR_NOMEM, "", "", "out of memory");
	resp->status = 200;
	resp->text = text;
	resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
	return 0;
}
