/*
 * provider.h - the delivery interface: a const table of operations plus an opaque
 * context, one file per provider (log, queue, telegram, telegram_bot, smtp, twilio,
 * whatsapp, webhook). A provider sends one message and says whether it was delivered,
 * failed for now (retry), or failed for good. Providers never log codes or credentials.
 * Thread-safety: provider_send may be called from several outbox workers at once; a
 * provider keeps no per-call state in its context (libcurl easy handles are per call).
 */
#ifndef OTPD_PROVIDERS_PROVIDER_H
#define OTPD_PROVIDERS_PROVIDER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "core/message.h"

#define PROVIDER_MSGID_MAX 128
#define PROVIDER_ERROR_MAX 256

struct provider_result {
	char msg_id[PROVIDER_MSGID_MAX];  /* provider's id of the message, if it gave one */
	char error[PROVIDER_ERROR_MAX];   /* why it failed: no code, no credentials in it */
};

struct provider;

struct provider_ops {
	const char *name;
	/* Deliver m. `job_id` is a stable idempotency key across retries.
	 * Returns 0 (delivered), OTP_ERR_PROVIDER (retry later) or OTP_ERR_PERMANENT. */
	int (*send)(struct provider *p, const struct otp_message *m, int64_t job_id,
	            struct provider_result *r);
	void (*free)(struct provider *p);
};

struct provider {
	const struct provider_ops *ops;
	/* Set by provider_cancel() at the shutdown deadline: a send in progress gives up at
	 * once with OTP_ERR_PROVIDER (the job is retried at the next start). Constructors
	 * zero it (calloc). */
	atomic_bool cancelled;
};

static inline int provider_send(struct provider *p, const struct otp_message *m,
                                int64_t job_id, struct provider_result *r)
{ return p->ops->send(p, m, job_id, r); }
static inline void provider_free(struct provider *p) { if (p) p->ops->free(p); }
/* Make sends in progress (and later ones) of p give up now; callable from any thread. */
static inline void provider_cancel(struct provider *p) { if (p) atomic_store(&p->cancelled, true); }
static inline const char *provider_name(const struct provider *p) { return p->ops->name; }

/* Create the provider called `name` from the configuration. NULL with a reason in err
 * when the name is unknown or its settings are incomplete. */
struct provider *provider_new(const char *name, const struct config *cfg, char *err, size_t cap);
/* 1 when `name` is a known provider, else 0. */
int provider_known(const char *name);

#endif
