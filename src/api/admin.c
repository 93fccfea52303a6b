/*
 * admin.c - operators' endpoints: liveness (/health), readiness (/ready: the database
 * answers), the delivery jobs of the outbox (/admin/outbox), never with payloads, the
 * counters in Prometheus' text format (/metrics) - these four answer in the compat
 * shape, in its table - and apps and API keys over HTTP (/admin/apps, /admin/keys: the
 * admin table, in the native shape, behind an admin credential).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/handlers.h"
#include "api/params.h"
#include "api/reply.h"
#include "verify/apps.h"

#include <sodium.h>

API_HANDLER(admin_health)
{
	(void)ctx; (void)call; (void)err;
	reply_status(resp, true);
	return 0;
}

API_HANDLER(admin_ready)
{
	(void)call;
	if (store_ping(ctx->store) != 0)
		return otp_error_set(err, OTP_ERR_STORE, "unavailable", "",
		                     "the database is unavailable");
	reply_status(resp, true);
	return 0;
}

static const char *const job_states[] = {STORE_JOB_PENDING, STORE_JOB_SENDING, STORE_JOB_SENT,
                                          STORE_JOB_DEAD, STORE_JOB_SKIPPED};

API_HANDLER(admin_outbox)
{
	json_t *p = call->params;
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
		rc = otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
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

API_HANDLER(admin_metrics)
{
	(void)call;
	struct api_delivery_stats d = {0};
	if (ctx->delivery_stats != NULL)
		ctx->delivery_stats(ctx->delivery_stats_arg, &d);
	struct store_outbox_backlog backlog;
	bool store_up = store_outbox_backlog(ctx->store, &backlog) == 0;
	char *text = api_metrics_render(ctx->metrics, ctx->delivery_stats ? &d : NULL,
	                                store_up ? &backlog : NULL, ctx->now());
	if (text == NULL) /* out of memory (main always keeps metrics) */
		return otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
	resp->status = 200;
	resp->text = text;
	resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
	return 0;
}

/* ---- apps and keys -------------------------------------------------------------------- */

static int reply_json(struct api_response *resp, int status, json_t *body, struct otp_error *err)
{
	if (body == NULL)
		return otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
	resp->status = status;
	resp->body = body;
	return 0;
}

/* An optional JSON object member (settings). */
static int object_param(json_t *p, const char *name, json_t **out, struct otp_error *err)
{
	json_t *v = json_object_get(p, name);
	*out = NULL;
	if (v == NULL || json_is_null(v))
		return 0;
	if (!json_is_object(v))
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", name,
		                     "\"%s\" must be an object", name);
	*out = v;
	return 0;
}

static API_HANDLER(apps_list)
{
	char *cursor = NULL;
	int64_t limit = 100;
	bool present = false;
	int rc = params_string(call->params, "cursor", false, false, STORE_ID_MAX - 1, false,
	                       &cursor, err);
	if (rc == 0)
		rc = params_int(call->params, "limit", 1, STORE_LIST_MAX, &present, &limit, err);
	if (rc != 0) {
		free(cursor);
		return rc;
	}
	struct store_app *rows = calloc((size_t)limit, sizeof *rows);
	size_t n = 0;
	if (rows == NULL) {
		free(cursor);
		return otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
	}
	rc = store_app_list(ctx->store, cursor ? cursor : "", rows, (size_t)limit, &n);
	free(cursor);
	if (rc != 0) {
		free(rows);
		return otp_error_set(err, OTP_ERR_STORE, "unavailable", "",
		                     "the database is unavailable, try again");
	}
	json_t *data = json_array();
	for (size_t i = 0; i < n; i++) {
		json_array_append_new(data, apps_json(&rows[i]));
	}
	json_t *next = n == (size_t)limit ? json_string(rows[n - 1].id) : json_null();
	for (size_t i = 0; i < n; i++)
		store_app_fini(&rows[i]);
	free(rows);
	return reply_json(resp, 200, json_pack("{s:o, s:o}", "data", data, "next_cursor", next), err);
}

static API_HANDLER(apps_create_h)
{
	char *name = NULL;
	json_t *settings = NULL;
	struct store_app app;
	int rc = params_string(call->params, "name", true, false, STORE_NAME_MAX - 1, false, &name,
	                       err);
	if (rc == 0)
		rc = object_param(call->params, "settings", &settings, err);
	if (rc == 0)
		rc = apps_create(&ctx->verify, name, settings, &app, err);
	free(name);
	if (rc != 0)
		return rc;
	rc = reply_json(resp, 201, apps_json(&app), err);
	store_app_fini(&app);
	return rc;
}

static API_HANDLER(apps_get_h)
{
	struct store_app app;
	int rc = apps_get(&ctx->verify, call->path[0], &app, err);
	if (rc != 0)
		return rc;
	rc = reply_json(resp, 200, apps_json(&app), err);
	store_app_fini(&app);
	return rc;
}

/* PATCH merges the settings given into the app's; PUT starts from the defaults. */
static API_HANDLER(apps_update_h)
{
	char *name = NULL;
	json_t *settings = NULL;
	struct store_app app;
	bool replace = call->route->arg == 1;
	int rc = params_string(call->params, "name", replace, false, STORE_NAME_MAX - 1, false,
	                       &name, err);
	if (rc == 0)
		rc = object_param(call->params, "settings", &settings, err);
	if (rc == 0)
		rc = apps_update(&ctx->verify, call->path[0], name, settings, replace, &app, err);
	free(name);
	if (rc != 0)
		return rc;
	api_app_forget(app.id);
	rc = reply_json(resp, 200, apps_json(&app), err);
	store_app_fini(&app);
	return rc;
}

static API_HANDLER(apps_delete_h)
{
	int rc = apps_delete(&ctx->verify, call->path[0], err);
	if (rc != 0)
		return rc;
	api_app_forget(call->path[0]);
	api_auth_forget_app(call->path[0]); /* its keys went with it */
	resp->status = 204;
	return 0;
}

static API_HANDLER(keys_list)
{
	char *app = NULL;
	int rc = params_string(call->params, "app_id", false, false, STORE_ID_MAX - 1, false, &app,
	                       err);
	if (rc != 0)
		return rc;
	struct store_key *rows = calloc(STORE_LIST_MAX, sizeof *rows);
	size_t n = 0;
	if (rows == NULL) {
		free(app);
		return otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
	}
	rc = store_key_list(ctx->store, app, rows, STORE_LIST_MAX, &n);
	free(app);
	if (rc != 0) {
		free(rows);
		return otp_error_set(err, OTP_ERR_STORE, "unavailable", "",
		                     "the database is unavailable, try again");
	}
	json_t *data = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(data, keys_json(&rows[i]));
	free(rows);
	return reply_json(resp, 200, json_pack("{s:o}", "data", data), err);
}

static API_HANDLER(keys_create_h)
{
	char *app = NULL, *name = NULL, *format = NULL;
	char secret[APPS_SECRET_MAX];
	bool admin = false;
	struct store_key key;
	json_t *a = json_object_get(call->params, "admin");
	int rc = 0;
	if (a != NULL && !json_is_boolean(a))
		rc = otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "admin",
		                   "\"admin\" must be true or false");
	admin = json_is_true(a);
	if (rc == 0)
		rc = params_string(call->params, "app_id", false, false, STORE_ID_MAX - 1, false, &app,
		                   err);
	if (rc == 0)
		rc = params_string(call->params, "name", false, false, STORE_NAME_MAX - 1, false, &name,
		                   err);
	if (rc == 0)
		rc = params_string(call->params, "format", false, false, 15, false, &format, err);
	if (rc == 0)
		rc = keys_create(&ctx->verify, app, admin, name, format, &key, secret, err);
	free(app);
	free(name);
	free(format);
	if (rc != 0)
		return rc;
	json_t *body = keys_json(&key);
	char token[STORE_ID_MAX + APPS_SECRET_MAX + 2];
	snprintf(token, sizeof token, "%s.%s", key.id, secret);
	json_object_set_new(body, "secret", json_string(secret));
	json_object_set_new(body, "token", json_string(token));
	sodium_memzero(secret, sizeof secret);
	sodium_memzero(token, sizeof token);
	return reply_json(resp, 201, body, err);
}

static API_HANDLER(keys_revoke_h)
{
	struct store_key key;
	int rc = keys_revoke(&ctx->verify, call->path[0], &key, err);
	if (rc != 0)
		return rc;
	api_auth_forget(key.id);
	return reply_json(resp, 200, keys_json(&key), err);
}

#define N &api_dialect_native
#define J API_BODY_JSON
#define A API_AUTH_ADMIN

const struct api_route api_admin_routes[] = {
	{"GET", "/admin/apps", N, J, A, apps_list, 0},
	{"POST", "/admin/apps", N, J, A, apps_create_h, 0},
	{"GET", "/admin/apps/{id}", N, J, A, apps_get_h, 0},
	{"PATCH", "/admin/apps/{id}", N, J, A, apps_update_h, 0},
	{"PUT", "/admin/apps/{id}", N, J, A, apps_update_h, 1},
	{"DELETE", "/admin/apps/{id}", N, J, A, apps_delete_h, 0},
	{"GET", "/admin/keys", N, J, A, keys_list, 0},
	{"POST", "/admin/keys", N, J, A, keys_create_h, 0},
	{"DELETE", "/admin/keys/{id}", N, J, A, keys_revoke_h, 0},
};

const size_t api_admin_routes_count = sizeof api_admin_routes / sizeof api_admin_routes[0];
