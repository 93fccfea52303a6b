/*
 * twilio.c - the `twilio` provider: SMS through Messages.json and voice calls through
 * Calls.json (TwiML that reads the code digit by digit, twice), form-encoded, HTTP Basic
 * auth with the account SID and auth token, and the job id as Twilio's idempotency
 * token. msg_id is the "sid" of the answer.
 */
#include <curl/curl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "providers/impl.h"

#define TWILIO_BODY_MAX (64u * 1024u)

struct twilio_provider {
	struct provider base;
	const struct config *cfg;
	char *messages_url;
	char *calls_url;
};

/* Append name=value, form-encoded (curl_easy_escape: everything but unreserved). */
static void form_add(struct provider_buf *b, const char *name, const char *value)
{
	if (b->len > 0)
		provider_buf_adds(b, "&");
	provider_buf_adds(b, name);
	provider_buf_adds(b, "=");
	char *e = curl_easy_escape(NULL, value, 0);
	if (e == NULL) {
		b->failed = true;
		return;
	}
	provider_buf_adds(b, e);
	curl_free(e);
}

static void xml_add(struct provider_buf *b, const char *s)
{
	for (; *s; s++) {
		switch (*s) {
		case '&': provider_buf_adds(b, "&amp;"); break;
		case '<': provider_buf_adds(b, "&lt;"); break;
		case '>': provider_buf_adds(b, "&gt;"); break;
		case '"': provider_buf_adds(b, "&quot;"); break;
		case '\'': provider_buf_adds(b, "&apos;"); break;
		default:
			/* XML 1.0 allows no control characters but tab and line breaks */
			if ((unsigned char)*s < 0x20 && *s != '\t' && *s != '\n' && *s != '\r')
				provider_buf_adds(b, " ");
			else
				provider_buf_add(b, s, 1);
		}
	}
}

/* "12345" -> "1, 2, 3, 4, 5": the voice reads digits one by one, with a pause. */
static void spoken_code(struct provider_buf *b, const char *code)
{
	for (size_t i = 0; code[i]; i++) {
		if (i > 0)
			provider_buf_adds(b, ", ");
		provider_buf_add(b, code + i, 1);
	}
}

/*
 * What the call says: the rendered call template (m->text, e.g. "Your code is 12345")
 * with the code spelled out, or "Your code is 1, 2, 3, 4, 5." when the text does not
 * contain the code.
 */
static void spoken_text(struct provider_buf *b, const struct otp_message *m)
{
	const char *at = (m->text && m->code[0]) ? strstr(m->text, m->code) : NULL;
	if (at == NULL) {
		provider_buf_adds(b, "Your code is ");
		spoken_code(b, m->code);
		provider_buf_adds(b, ".");
		return;
	}
	const char *s = m->text;
	size_t n = strlen(m->code);
	while (at != NULL) {
		provider_buf_add(b, s, (size_t)(at - s));
		spoken_code(b, m->code);
		s = at + n;
		at = strstr(s, m->code);
	}
	provider_buf_adds(b, s);
}

/* <Response><Say language="L">T</Say><Pause length="1"/><Say language="L">T</Say></Response> */
static int twiml(struct provider_buf *out, const struct config *cfg, const struct otp_message *m)
{
	struct provider_buf text, say;
	provider_buf_init(&text, TWILIO_BODY_MAX);
	provider_buf_init(&say, TWILIO_BODY_MAX);
	spoken_text(&text, m);
	provider_buf_adds(&say, "<Say");
	if (!provider_unset(cfg->twilio_voice_language)) {
		provider_buf_adds(&say, " language=\"");
		xml_add(&say, cfg->twilio_voice_language);
		provider_buf_adds(&say, "\"");
	}
	provider_buf_adds(&say, ">");
	if (!text.failed && text.len > 0)
		xml_add(&say, text.p);
	provider_buf_adds(&say, "</Say>");
	provider_buf_adds(out, "<Response>");
	if (!say.failed && say.len > 0) {
		provider_buf_add(out, say.p, say.len);
		provider_buf_adds(out, "<Pause length=\"1\"/>");
		provider_buf_add(out, say.p, say.len);
	}
	provider_buf_adds(out, "</Response>");
	int rc = (text.failed || say.failed || out->failed) ? OTP_ERR_PERMANENT : 0;
	provider_buf_fini(&text);
	provider_buf_fini(&say);
	return rc;
}

static int twilio_send(struct provider *p, struct provider_session *sess,
                       const struct otp_message *m, int64_t job_id, struct provider_result *r)
{
	const struct twilio_provider *tp = (const struct twilio_provider *)p;
	const struct config *cfg = tp->cfg;
	struct provider_buf form, doc;
	struct provider_http_resp resp;
	char to[OTP_TARGET_MAX + 2];
	char idem[64];
	const char *url;
	int rc;

	r->msg_id[0] = '\0';
	r->error[0] = '\0';
	if (m->channel != OTP_CH_SMS && m->channel != OTP_CH_CALL)
		return provider_fail(r, OTP_ERR_PERMANENT, "twilio provider does not deliver channel %s",
		                     otp_channel_name(m->channel));
	if (m->target == NULL || m->code == NULL)
		return provider_fail(r, OTP_ERR_PERMANENT, "message without target or code");
	/* targets are digits (the compat API strips "+"); Twilio wants E.164 */
	const char *digits = m->target[0] == '+' ? m->target + 1 : m->target;
	if (digits[0] == '\0' || strspn(digits, "0123456789") != strlen(digits) ||
	    strlen(digits) > 20)
		return provider_fail(r, OTP_ERR_PERMANENT, "phone number is not digits");
	snprintf(to, sizeof to, "+%s", digits);

	/* OTPD_TWILIO_FROM is a number, or a Messaging Service (MG + 32 hex) which Twilio
	 * takes as MessagingServiceSid and which cannot place calls */
	bool service = strncmp(cfg->twilio_from, "MG", 2) == 0;
	if (service && m->channel == OTP_CH_CALL)
		return provider_fail(r, OTP_ERR_PERMANENT, "OTPD_TWILIO_FROM is a messaging service: "
		                     "calls need a phone number");
	provider_buf_init(&form, TWILIO_BODY_MAX);
	provider_buf_init(&doc, TWILIO_BODY_MAX);
	form_add(&form, "To", to);
	form_add(&form, service ? "MessagingServiceSid" : "From", cfg->twilio_from);
	if (m->channel == OTP_CH_SMS) {
		url = tp->messages_url;
		form_add(&form, "Body", m->text ? m->text : m->code);
	} else {
		url = tp->calls_url;
		if (twiml(&doc, cfg, m) != 0) {
			rc = provider_fail(r, OTP_ERR_PERMANENT, "call text too long");
			goto out;
		}
		form_add(&form, "Twiml", doc.p);
	}
	if (form.failed) {
		rc = provider_fail(r, OTP_ERR_PERMANENT, "message too long");
		goto out;
	}

	snprintf(idem, sizeof idem, "I-Twilio-Idempotency-Token: otpd-%" PRId64, job_id);
	const char *headers[] = {idem, NULL};
	struct provider_http_req req = {
		.cancel = &p->cancelled,
		.url = url,
		.content_type = "application/x-www-form-urlencoded",
		.body = form.p,
		.body_len = form.len,
		.headers = headers,
		.basic_user = cfg->twilio_account_sid,
		.basic_password = cfg->twilio_auth_token,
		.redact = cfg->twilio_auth_token,
	};
	rc = provider_http_send(cfg, sess, &req, &resp, r);
	if (resp.status == 0)
		goto out;
	json_t *ans = json_loadb(resp.body, resp.len, 0, NULL);
	if (rc == 0) {
		const char *sid = json_string_value(json_object_get(ans, "sid"));
		if (sid != NULL)
			snprintf(r->msg_id, sizeof r->msg_id, "%s", sid);
	} else {
		/* {"code": 21211, "message": "The 'To' number ... is not valid", "status": 400} */
		const char *msg = json_string_value(json_object_get(ans, "message"));
		json_int_t code = json_integer_value(json_object_get(ans, "code"));
		if (msg != NULL) {
			char detail[200];
			provider_copy_detail(detail, sizeof detail, msg);
			provider_fail(r, rc, "HTTP %ld: Twilio %" PRId64 ": %s", resp.status,
			              (int64_t)code, detail);
		}
	}
	json_decref(ans);
out:
	provider_buf_fini(&form);
	provider_buf_fini(&doc);
	provider_result_scrub(r, m->code, cfg->twilio_auth_token);
	return rc;
}

static void twilio_free(struct provider *p)
{
	struct twilio_provider *tp = (struct twilio_provider *)p;
	if (tp == NULL)
		return;
	free(tp->messages_url);
	free(tp->calls_url);
	free(tp);
}

static const struct provider_ops twilio_ops = {
	.name = "twilio",
	.send = twilio_send,
	.free = twilio_free,
};

static char *account_url(const struct config *cfg, const char *what)
{
	size_t n = strlen(cfg->twilio_base_url) + strlen(cfg->twilio_account_sid) +
	           strlen(what) + sizeof "/2010-04-01/Accounts//";
	char *s = malloc(n);
	if (s != NULL)
		snprintf(s, n, "%s/2010-04-01/Accounts/%s/%s", cfg->twilio_base_url,
		         cfg->twilio_account_sid, what);
	return s;
}

static struct provider *provider_twilio_new(const struct config *cfg, char *err, size_t cap)
{
	const struct provider_setting need[] = {
		{"OTPD_TWILIO_BASE_URL", cfg->twilio_base_url},
		{"OTPD_TWILIO_ACCOUNT_SID", cfg->twilio_account_sid},
		{"OTPD_TWILIO_AUTH_TOKEN", cfg->twilio_auth_token},
		{"OTPD_TWILIO_FROM", cfg->twilio_from},
	};
	if (!provider_require("twilio", need, sizeof need / sizeof need[0], err, cap))
		return NULL;
	/* the SID goes into the URL path: letters and digits only (AC + 32 hex) */
	for (const char *c = cfg->twilio_account_sid; *c; c++) {
		if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z'))) {
			snprintf(err, cap, "twilio: OTPD_TWILIO_ACCOUNT_SID must be letters and digits");
			return NULL;
		}
	}
	struct twilio_provider *tp = calloc(1, sizeof *tp);
	if (tp == NULL || (tp->messages_url = account_url(cfg, "Messages.json")) == NULL ||
	    (tp->calls_url = account_url(cfg, "Calls.json")) == NULL) {
		twilio_free(tp ? &tp->base : NULL);
		snprintf(err, cap, "twilio: out of memory");
		return NULL;
	}
	tp->base.ops = &twilio_ops;
	tp->cfg = cfg;
	return &tp->base;
}

static const char *const twilio_settings[] = {"OTPD_TWILIO_BASE_URL", "OTPD_TWILIO_ACCOUNT_SID", "OTPD_TWILIO_AUTH_TOKEN", "OTPD_TWILIO_FROM", "OTPD_TWILIO_VOICE_LANGUAGE", NULL};

const struct provider_def provider_twilio_def = {
	.name = "twilio",
	.channels = OTP_CH_BIT(OTP_CH_SMS) | OTP_CH_BIT(OTP_CH_CALL),
	.settings = twilio_settings,
	.make = provider_twilio_new,
};
