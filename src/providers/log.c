/*
 * log.c - the `log` provider: "delivers" by writing one logfmt line per message on
 * stderr through the service logger (src/log.c), for local development and DUMMY-like
 * setups. The target is masked and the code replaced by asterisks of its length unless
 * OTPD_LOG_CODES=true, which shows the code and the message texts.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "log.h"
#include "providers/impl.h"

struct log_provider {
	struct provider base;
	bool show_codes;
};

static int log_send(struct provider *p, struct provider_session *sess,
                    const struct otp_message *m, int64_t job_id, struct provider_result *r)
{
	const struct log_provider *lp = (const struct log_provider *)p;
	(void)sess; /* nothing leaves the process */
	char target[OTP_TARGET_MAX + 8];
	char job[24];
	char stars[OTP_CODE_MAX + 1];
	const char *code = m->code ? m->code : "";

	log_mask_target(m->target ? m->target : "", target, sizeof target);
	snprintf(job, sizeof job, "%" PRId64, job_id);
	const char *ch = otp_channel_name(m->channel);

	if (lp->show_codes) {
		/* only the parts the message has: the first unused (NULL) key ends the list */
		const char *opt[6] = {NULL};
		size_t k = 0;
		if (m->subject != NULL) {
			opt[k++] = "subject";
			opt[k++] = m->subject;
		}
		if (m->text != NULL) {
			opt[k++] = "text";
			opt[k++] = m->text;
		}
		if (m->html != NULL) {
			opt[k++] = "html";
			opt[k++] = m->html;
		}
		log_write(LOG_INFO, "deliver", "provider", "log", "channel", ch, "target", target,
		          "code", code, "job", job, opt[0], opt[1], opt[2], opt[3], opt[4], opt[5],
		          LOG_END);
	} else {
		size_t n = strlen(code);
		if (n > OTP_CODE_MAX)
			n = OTP_CODE_MAX;
		memset(stars, '*', n);
		stars[n] = '\0';
		log_write(LOG_INFO, "deliver", "provider", "log", "channel", ch, "target", target,
		          "code", stars, "job", job, LOG_END);
	}
	r->msg_id[0] = '\0';
	r->error[0] = '\0';
	return 0;
}

static void log_free(struct provider *p)
{
	free(p);
}

static const struct provider_ops log_ops = {
	.name = "log",
	.send = log_send,
	.free = log_free,
};

static struct provider *provider_log_new(const struct config *cfg, char *err, size_t cap)
{
	struct log_provider *lp = calloc(1, sizeof *lp);
	if (lp == NULL) {
		snprintf(err, cap, "log: out of memory");
		return NULL;
	}
	lp->base.ops = &log_ops;
	lp->show_codes = cfg->log_codes;
	return &lp->base;
}

static const char *const log_settings[] = {"OTPD_LOG_CODES", NULL};

const struct provider_def provider_log_def = {
	.name = "log",
	.channels = OTP_CH_BIT(OTP_CH_SMS) | OTP_CH_BIT(OTP_CH_EMAIL) | OTP_CH_BIT(OTP_CH_CALL) | OTP_CH_BIT(OTP_CH_TELEGRAM) | OTP_CH_BIT(OTP_CH_WHATSAPP),
	.settings = log_settings,
	.make = provider_log_new,
};
