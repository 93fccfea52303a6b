/*
 * request.c - building answers: the success and error JSON shapes of the compat dialect
 * (keys in the order status, status_code, message, content) and the one mapping from an
 * error code to an HTTP status.
 */
#include <stdlib.h>

#include "api/api.h"
#include "api/reply.h"

void api_response_fini(struct api_response *r)
{
	if (r == NULL)
		return;
	json_decref(r->body);
	r->body = NULL;
	free(r->text);
	r->text = NULL;
}

static int http_status_for(int code)
{
	switch (code) {
	case OTP_OK: return 200;
	case OTP_ERR_INVALID: return 400;
	case OTP_ERR_LIMIT: return 400; /* the old service answered 400 for limits */
	case OTP_ERR_NOT_FOUND: return 404;
	case OTP_ERR_DISABLED: return 403;
	case OTP_ERR_AUTH: return 401;
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

void api_error_response(const struct otp_error *e, struct api_response *resp)
{
	json_t *o = json_object();
	json_object_set_new(o, "status", json_false());
	if (e->status_code[0] != '\0')
		json_object_set_new(o, "status_code", json_string(e->status_code));
	json_object_set_new(o, "message", json_string(e->message[0] ? e->message : otp_err_name(e->code)));
	resp->status = http_status_for(e->code);
	resp->body = o;
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
