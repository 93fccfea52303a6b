/*
 * provider.h - the delivery interface: a const table of operations plus an opaque
 * context, one file per provider, and the registry that knows them all (provider.c,
 * rows in providers/list.h). Each registry row declares the provider's name, the
 * channels it delivers, the variables it reads and its constructor, so a provider that
 * cannot serve the channel it is chosen for is refused at start, not at send time.
 * A provider sends one message and says whether it was delivered, failed for now
 * (retry), or failed for good. Providers never log codes or credentials.
 * Thread-safety: provider_send may be called from several outbox workers at once; a
 * provider keeps no per-call state in its context. What must not be shared (libcurl's
 * easy handle and its connection cache) lives in a `struct provider_session`: one per
 * worker thread, reused across that thread's deliveries.
 */
#ifndef OTPD_PROVIDERS_PROVIDER_H
#define OTPD_PROVIDERS_PROVIDER_H

#include <stdatomic.h>
#include <stdbool.h>
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

/* One worker thread's outbound connections (a libcurl easy handle, whose connection
 * cache keeps connections to providers alive between deliveries). Not thread-safe:
 * one per thread. NULL where a session is taken means "a one-off connection". */
struct provider_session;
struct provider_session *provider_session_new(void);
void provider_session_free(struct provider_session *s);

struct provider_ops {
	const char *name;
	/* Deliver m through session s (may be NULL). `job_id` is a stable idempotency key
	 * across retries. Returns 0 (delivered), OTP_ERR_PROVIDER (retry later) or
	 * OTP_ERR_PERMANENT. */
	int (*send)(struct provider *p, struct provider_session *s, const struct otp_message *m,
	            int64_t job_id, struct provider_result *r);
	void (*free)(struct provider *p);
};

struct provider {
	const struct provider_ops *ops;
	/* Set by provider_cancel() at the shutdown deadline: a send in progress gives up at
	 * once with OTP_ERR_PROVIDER (the job is retried at the next start). Constructors
	 * zero it (calloc). */
	atomic_bool cancelled;
};

static inline int provider_send(struct provider *p, struct provider_session *s,
                                const struct otp_message *m, int64_t job_id,
                                struct provider_result *r)
{ return p->ops->send(p, s, m, job_id, r); }
static inline void provider_free(struct provider *p) { if (p) p->ops->free(p); }
/* Make sends in progress (and later ones) of p give up now; callable from any thread. */
static inline void provider_cancel(struct provider *p) { if (p) atomic_store(&p->cancelled, true); }
static inline const char *provider_name(const struct provider *p) { return p->ops->name; }

/* One row of the registry. */
struct provider_def {
	const char *name;
	unsigned channels;              /* OTP_CH_BIT() of every channel it delivers */
	const char *const *settings;    /* the variables it reads, NULL-terminated */
	struct provider *(*make)(const struct config *cfg, char *err, size_t cap);
};

/* The registry, in its order; NULL past the end / for an unknown name. */
const struct provider_def *provider_def_at(size_t i);
const struct provider_def *provider_find(const char *name);

/* Create the provider called `name` from the configuration. NULL with a reason in err
 * when the name is unknown or its settings are incomplete. */
struct provider *provider_new(const char *name, const struct config *cfg, char *err, size_t cap);
/* 1 when `name` is a known provider, else 0. */
int provider_known(const char *name);
/* true when the provider called `name` delivers `channel` (enum otp_channel). */
bool provider_serves(const char *name, int channel);

/*
 * What every channel's provider would do with this configuration, as start-up checks
 * it: an unknown name, incomplete settings, or a provider chosen for a channel it
 * cannot deliver. Calls report(arg, var, level, text) once per problem (var: the
 * variable to change; level: LOG_ERROR for what stops otpd, LOG_WARN for a channel left
 * to the default provider that cannot serve it) and returns how many were errors.
 * With DUMMY nothing is delivered and nothing is checked.
 */
typedef void (*provider_report_fn)(void *arg, const char *var, int level, const char *text);
int provider_check_config(const struct config *cfg, provider_report_fn report, void *arg);

#endif
