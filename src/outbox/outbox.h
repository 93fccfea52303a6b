/*
 * outbox.h - delivery workers. A pool of threads claims due jobs from the store with a
 * lease, opens (AEAD) and decodes each payload, hands it to the job's provider, and marks
 * it sent, retries it with exponential backoff and jitter, or declares it dead after
 * OTPD_OUTBOX_MAX_TRIES tries or OTPD_OUTBOX_MAX_AGE seconds.
 * Thread-safety: outbox_notify may be called from any thread; start/stop from main only.
 */
#ifndef OTPD_OUTBOX_OUTBOX_H
#define OTPD_OUTBOX_OUTBOX_H

#include "config.h"
#include "core/otp.h"
#include "store/store.h"

struct outbox;

/* Providers are created here from cfg for every channel in use. NULL with a reason in err
 * (unknown provider, incomplete settings). The store and key must outlive the outbox. */
struct outbox *outbox_new(const struct config *cfg, struct store *store,
                          const struct otp_key *key, char *err, size_t cap);
/* Start cfg->outbox_workers threads. Returns 0 or OTP_ERR_INTERNAL. */
int outbox_start(struct outbox *o);
/* A job was committed: wake a sleeping worker now instead of at its next poll. */
void outbox_notify(struct outbox *o);
/* Stop claiming; let in-flight sends finish until `deadline_s` seconds have passed, then
 * cancel the sends still in flight (they end as retries), release what is claimed but not
 * started (it is re-claimed at the next start), and join the workers that exited.
 * outbox_free() joins the rest; the store, key and config must outlive it. */
void outbox_stop(struct outbox *o, int deadline_s);
void outbox_free(struct outbox *o);

/* Delivery outcomes of this process since start (the counters the log reports), in all
 * and by provider (every provider of the registry, then "other"). */
#define OUTBOX_PROVIDERS_MAX 16
struct outbox_provider_stats {
	const char *name;             /* static: the registry's name, or "other" */
	long long sent, retried, dead;
};
struct outbox_stats {
	long long sent, retried, dead, released, store_errors;
	struct outbox_provider_stats providers[OUTBOX_PROVIDERS_MAX + 1];
	size_t n_providers;
};
void outbox_stats(struct outbox *o, struct outbox_stats *out);

/* The provider name that will deliver `channel` (cfg + DUMMY), for the send path. */
const char *outbox_provider_for(const struct outbox *o, int channel);

#endif
