/*
 * queue.c - the `queue` provider: delivery exactly as the old service did it, a
 * `POST {OTP_QUEUE_URL}/task` whose JSON body names the URL the Queue must call (SMS,
 * Email or Telegram sender) and what to send there. Bodies, key order included, are
 * those of COMPAT.md; only the Queue's acceptance (HTTP 2xx) is known here.
 */
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "providers/impl.h"

struct queue_provider {
	struct provider base;
	const struct config *cfg;
	char *task_url;
};

/* The old service built these URLs by plain concatenation ("{url}/sms"): no trimming. */
static char *join(const char *base, const char *suffix)
{
	size_t n = strlen(base) + strlen(suffix) + 1;
	char *s = malloc(n);
	if (s != NULL)
		snprintf(s, n, "%s%s", base, suffix);
	return s;
}

/* "12345" -> "1 2 3 4 5", what the SMS service reads out for a call. */
static char *spaced(const char *code)
{
	size_t n = strlen(code);
	char *s = malloc(n ? 2 * n : 1);
	if (s == NULL)
		return NULL;
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			s[k++] = ' ';
		s[k++] = code[i];
	}
	s[k] = '\0';
	return s;
}

static json_t *str_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

/* Builds the Queue task for m; NULL with r->error set when m cannot be expressed. */
static json_t *queue_task(const struct config *cfg, const struct otp_message *m,
                          struct provider_result *r)
{
	json_t *task = json_object(), *inner = json_object(), *headers = NULL;
	char *url = NULL, *msg = NULL;
	const char *worker = NULL;
	int64_t chat = 0;
	int bad = 0;

	if (task == NULL || inner == NULL)
		goto nomem;
	switch (m->channel) {
	case OTP_CH_SMS:
	case OTP_CH_CALL:
		if (m->channel == OTP_CH_SMS) {
			url = join(cfg->sms_url, "/sms");
			worker = cfg->sms_worker;
			msg = strdup(m->text ? m->text : m->code);
		} else {
			url = join(cfg->call_url, "/sms");
			worker = cfg->call_worker;
			msg = spaced(m->code);
		}
		if (url == NULL || msg == NULL)
			goto nomem;
		bad |= json_object_set_new(inner, "phones", json_string(m->target));
		bad |= json_object_set_new(inner, "message", json_string(msg));
		bad |= json_object_set_new(inner, "type",
		                           json_string(m->channel == OTP_CH_SMS ? "sms" : "call"));
		bad |= json_object_set_new(inner, "force", json_true());
		break;
	case OTP_CH_EMAIL:
		if ((url = join(cfg->email_url, "/smtp")) == NULL)
			goto nomem;
		worker = cfg->email_worker;
		bad |= json_object_set_new(inner, "to", json_string(m->target));
		bad |= json_object_set_new(inner, "subject", json_string(m->subject ? m->subject : ""));
		bad |= json_object_set_new(inner, "text", str_or_null(m->text));
		bad |= json_object_set_new(inner, "html", str_or_null(m->html));
		bad |= json_object_set_new(inner, "force", json_true());
		break;
	case OTP_CH_TELEGRAM:
		if (provider_unset(cfg->telegram_app_token)) {
			provider_fail(r, OTP_ERR_PERMANENT, "OTP_TELEGRAM_APP_TOKEN is not set");
			goto fail;
		}
		if (provider_parse_chat_id(m->target, &chat) != 0) {
			provider_fail(r, OTP_ERR_PERMANENT, "telegram target is not a chat id");
			goto fail;
		}
		if ((url = join(cfg->telegram_url, "/msg")) == NULL)
			goto nomem;
		worker = cfg->telegram_worker;
		if ((headers = json_object()) == NULL)
			goto nomem;
		bad |= json_object_set_new(headers, "X-Auth-Token", json_string(cfg->telegram_app_token));
		bad |= json_object_set_new(inner, "to", json_integer((json_int_t)chat));
		bad |= json_object_set_new(inner, "message", json_string(m->text ? m->text : m->code));
		break;
	default:
		provider_fail(r, OTP_ERR_PERMANENT, "queue provider does not deliver channel %s",
		              otp_channel_name(m->channel));
		goto fail;
	}
	bad |= json_object_set_new(task, "url", json_string(url));
	bad |= json_object_set_new(task, "method", json_string("post"));
	bad |= json_object_set_new(task, "worker", json_string(worker));
	if (headers != NULL) {
		bad |= json_object_set_new(task, "headers", headers);
		headers = NULL;
	}
	bad |= json_object_set(task, "json", inner);
	if (bad) {
		/* json_string refuses invalid UTF-8; memory failures land here too */
		provider_fail(r, OTP_ERR_PERMANENT, "message cannot be encoded as JSON");
		goto fail;
	}
	free(url);
	free(msg);
	json_decref(inner);
	return task;
nomem:
	provider_fail(r, OTP_ERR_NOMEM, "out of memory");
fail:
	free(url);
	free(msg);
	json_decref(headers);
	json_decref(inner);
	json_decref(task);
	return NULL;
}

static int queue_send(struct provider *p, struct provider_session *sess,
                      const struct otp_message *m, int64_t job_id, struct provider_result *r)
{
	const struct queue_provider *qp = (const struct queue_provider *)p;
	struct provider_http_resp resp;
	int rc;
	(void)job_id; /* the Queue takes no idempotency key */

	r->msg_id[0] = '\0';
	r->error[0] = '\0';
	if (m->target == NULL || m->code == NULL)
		return provider_fail(r, OTP_ERR_PERMANENT, "message without target or code");
	json_t *task = queue_task(qp->cfg, m, r);
	if (task == NULL)
		return OTP_ERR_PERMANENT;
	struct provider_http_req req = {
		.cancel = &p->cancelled,
		.url = qp->task_url,
	};
	rc = provider_post_json(qp->cfg, sess, &req, task, &resp, r);
	provider_result_scrub(r, m->code, qp->cfg->telegram_app_token);
	return rc;
}

static void queue_free(struct provider *p)
{
	struct queue_provider *qp = (struct queue_provider *)p;
	if (qp == NULL)
		return;
	free(qp->task_url);
	free(qp);
}

static const struct provider_ops queue_ops = {
	.name = "queue",
	.send = queue_send,
	.free = queue_free,
};

static struct provider *provider_queue_new(const struct config *cfg, char *err, size_t cap)
{
	const struct provider_setting need[] = {
		{"OTP_QUEUE_URL", cfg->queue_url},
		{"OTP_SMS_URL", cfg->sms_url},
		{"OTP_SMS_WORKER", cfg->sms_worker},
		{"OTP_CALL_URL", cfg->call_url},
		{"OTP_CALL_WORKER", cfg->call_worker},
		{"OTP_EMAIL_URL", cfg->email_url},
		{"OTP_EMAIL_WORKER", cfg->email_worker},
		{"OTP_TELEGRAM_URL", cfg->telegram_url},
		{"OTP_TELEGRAM_WORKER", cfg->telegram_worker},
	};
	if (!provider_require("queue", need, sizeof need / sizeof need[0], err, cap))
		return NULL;
	struct queue_provider *qp = calloc(1, sizeof *qp);
	if (qp == NULL || (qp->task_url = join(cfg->queue_url, "/task")) == NULL) {
		free(qp);
		snprintf(err, cap, "queue: out of memory");
		return NULL;
	}
	qp->base.ops = &queue_ops;
	qp->cfg = cfg;
	return &qp->base;
}

static const char *const queue_settings[] = {"OTP_QUEUE_URL", "OTP_SMS_URL", "OTP_SMS_WORKER", "OTP_CALL_URL", "OTP_CALL_WORKER", "OTP_EMAIL_URL", "OTP_EMAIL_WORKER", "OTP_TELEGRAM_URL", "OTP_TELEGRAM_WORKER", "OTP_TELEGRAM_APP_TOKEN", NULL};

const struct provider_def provider_queue_def = {
	.name = "queue",
	.channels = OTP_CH_BIT(OTP_CH_SMS) | OTP_CH_BIT(OTP_CH_EMAIL) | OTP_CH_BIT(OTP_CH_CALL) | OTP_CH_BIT(OTP_CH_TELEGRAM),
	.settings = queue_settings,
	.make = provider_queue_new,
};
