/*
 * worker.c - the outbox delivery workers (outbox.h). Claims due jobs from the store with a
 * lease, opens and decodes each sealed payload, hands it to its provider, and records
 * the outcome: sent, retry with backoff, or dead. Must not hold a code longer than one
 * send, and never logs a code or a target in clear.
 *
 * DESIGN
 * ------
 * cfg->outbox_workers threads share one struct outbox. Each loops: claim up to `batch`
 * due jobs (store_outbox_claim, lease_until = now + OTPD_OUTBOX_LEASE), deliver them one
 * after the other, claim again. The batch is small (lease / (provider timeout + 1),
 * 1..OUTBOX_BATCH_MAX) so a batch can be finished before its lease runs out; a later job
 * of the batch whose lease would expire during a send is released rather than sent, so
 * another worker never re-claims a job that is still being delivered.
 *
 * When nothing is due a worker sleeps on `idle_cv` until outbox_notify() (a job was just
 * committed), the earliest pending next_at, or at most one second: the poll also picks
 * up jobs whose lease expired (their worker or process died) and jobs written by other
 * otpd processes on a shared PostgreSQL. `gen` counts notifications; `seen` is the
 * latest gen whose jobs are all known to be claimed: a claim that comes back short of a
 * full batch saw every job committed before it started, and took all it could, so it
 * moves `seen` up to the gen read before it. A worker sleeps only while gen == seen, so
 * a notification that arrives between a claim and the wait is not lost, and a worker
 * goes back to the store only when a job was committed since the last short claim. A
 * claim that comes back full wakes one more idle worker to help, and its worker claims
 * again at once. The earliest pending next_at is kept in `due_s` (0: none known): read
 * from the store only by a worker whose sleep ran out (a poll), and lowered by every
 * retry this process schedules. Under load a job thus costs about one claim and one
 * outcome write, not extra empty claims and next_at queries. A store error during a
 * claim is logged and retried after 200 ms, doubling to 2 s: never a crash, never a
 * spin.
 *
 * Outcomes: delivered -> store_outbox_sent; OTP_ERR_PERMANENT, a payload that does not
 * open or decode, a provider that cannot be built -> dead at once; any other failure ->
 * retry at now + outbox_backoff_ms(), or dead when that was attempt OTPD_OUTBOX_MAX_TRIES
 * or the retry would fall after created_at + OTPD_OUTBOX_MAX_AGE. A job found already
 * over either limit when claimed (it was claimed by a worker that died, or the limits
 * were lowered) is declared dead without a new attempt. Writing the outcome is retried
 * briefly; if the store stays down the job keeps its lease and is delivered again after
 * it expires (delivery is at-least-once; job.id is the provider's idempotency key).
 * The provider's error text is kept as last_error and logged, with the target masked
 * wherever the provider echoed it; the decrypted message is wiped after the send.
 *
 * Providers: one per distinct provider name in use by the five channels is built by
 * outbox_new(), which fails when one cannot be built (unknown name, missing settings)
 * or is chosen for a channel it does not deliver (provider_check_config). Each worker
 * owns one provider_session (a libcurl handle whose connections stay open between its
 * deliveries), so a busy worker reuses its connection to a provider instead of opening
 * one per message; it is made when the thread starts and freed when it exits.
 * A job names the provider chosen when it was sent; if that name is no longer configured
 * the provider is built lazily from the current configuration and kept, and if it cannot
 * be built the job is declared dead with the reason (the configuration is immutable, so
 * waiting would not help). With DUMMY the send path stores jobs as skipped, no provider is
 * built and no worker is started: jobs left pending from before stay pending and are
 * delivered by a later run without DUMMY (or by another process on a shared database).
 *
 * Shutdown: outbox_stop() sets `stopping` and wakes everyone. A worker finishes the send
 * in progress, releases (store_outbox_release) what it claimed but did not start, and
 * exits. When the deadline passes first, outbox_stop() itself takes and releases the
 * not-started jobs of the workers still sending, joins the workers that exited, and
 * returns. A worker still inside a provider call (bounded by OTPD_PROVIDER_TIMEOUT) is
 * joined by outbox_free(), so it can still record its outcome: the store, key and
 * configuration must outlive outbox_free(). If the process exits before that, the job
 * keeps its lease and is re-claimed after it expires.
 *
 * Locking: `mu` guards gen, seen, due_s, stopping, running and each worker's batch
 * indexes; `pmu` guards the provider slots. Neither is held across a store or provider
 * call, except `pmu` while a provider is built (rare). Counters are atomics.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "config.h"
#include "core/errors.h"
#include "core/message.h"
#include "core/otp.h"
#include "log.h"
#include "outbox/backoff.h"
#include "outbox/outbox.h"
#include "providers/provider.h"
#include "store/store.h"

#define OUTBOX_BATCH_MAX 8
#define OUTBOX_SLOTS_MAX 16          /* 5 configured + names met in old jobs */
#define OUTBOX_POLL_MS 1000          /* longest idle sleep */
#define OUTBOX_MIN_WAIT_MS 20        /* shortest idle sleep: no spin on races */
#define OUTBOX_STORE_WAIT_MIN_MS 200 /* after a failed claim, doubling ... */
#define OUTBOX_STORE_WAIT_MAX_MS 2000 /* ... up to this */
#define OUTBOX_MARK_TRIES 3          /* writes of an outcome before giving up */
#define OUTBOX_STATS_EVERY_MS 60000  /* periodic counters line, when they changed */

struct outbox_slot {
	char name[STORE_PROVIDER_MAX];
	struct provider *p;              /* NULL: could not be built, see err */
	char err[PROVIDER_ERROR_MAX];
};

struct outbox_worker {
	struct outbox *o;
	int index;
	struct provider_session *session; /* this thread's connections; NULL: one-off */
	pthread_t thread;
	bool created, joined;
	bool exited;                     /* guarded by o->mu */
	/* The current batch. jobs[next..n) are claimed and not started; whoever advances
	 * `next` past a job (the worker, or outbox_stop after the deadline) owns it. */
	struct store_job jobs[OUTBOX_BATCH_MAX];
	size_t n, next;                  /* guarded by o->mu */
};

struct outbox {
	const struct config *cfg;
	struct store *store;
	const struct otp_key *key;
	const char *channel_provider[OTP_CH_COUNT]; /* names, for outbox_provider_for */
	size_t batch;

	pthread_mutex_t pmu;
	struct outbox_slot slots[OUTBOX_SLOTS_MAX];
	size_t n_slots;

	pthread_mutex_t mu;
	pthread_cond_t idle_cv;          /* idle workers: notify (signal), stop (broadcast) */
	pthread_cond_t stop_cv;          /* workers waiting out a store error: stop */
	pthread_cond_t done_cv;          /* a worker exited: outbox_stop waits on it */
	uint64_t gen;                    /* outbox_notify() calls */
	uint64_t seen;                   /* jobs notified up to this gen are claimed */
	int64_t due_s;                   /* earliest pending next_at known (unix s), 0: none */
	bool started, stopping;
	int running;
	struct outbox_worker *workers;
	int n_workers;

	atomic_llong n_sent, n_retry, n_dead, n_released, n_store_errors;
	/* outcomes by provider: index in the registry, the last row for any other name */
	atomic_llong by_provider[OUTBOX_PROVIDERS_MAX + 1][3];
};

/* ---- logging ------------------------------------------------------------------------ */

/* A decimal for log_write's string values. */
#define NUM_MAX 24
static const char *num(char buf[NUM_MAX], long long v)
{
	snprintf(buf, NUM_MAX, "%lld", v);
	return buf;
}

/* ---- clocks and waiting ------------------------------------------------------------- */

static int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec;
}

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The absolute CLOCK_MONOTONIC time `at_ms`, for pthread_cond_timedwait. */
static struct timespec mono_abs(int64_t at_ms)
{
	struct timespec ts;

	ts.tv_sec = (time_t)(at_ms / 1000);
	ts.tv_nsec = (long)(at_ms % 1000) * 1000000L;
	return ts;
}

/* Sleep `ms` unless the outbox stops. Notifications do not end it: used after store
 * errors, where waking early would only hammer a failing database. */
static void wait_unless_stopping(struct outbox *o, int64_t ms)
{
	int64_t until = mono_ms() + ms;
	struct timespec ts = mono_abs(until);

	pthread_mutex_lock(&o->mu);
	while (!o->stopping && mono_ms() < until)
		if (pthread_cond_timedwait(&o->stop_cv, &o->mu, &ts) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&o->mu);
}

/* Lower the known earliest next_at to `at` (unix s). */
static void due_lower(struct outbox *o, int64_t at)
{
	pthread_mutex_lock(&o->mu);
	if (o->due_s == 0 || at < o->due_s)
		o->due_s = at;
	pthread_mutex_unlock(&o->mu);
}

/* Nothing was due: sleep until notified (a gen past seen), until the earliest pending
 * job is due, or OUTBOX_POLL_MS. `refresh`: ask the store for the earliest next_at
 * first (the last sleep ran out: a poll), instead of trusting due_s. Returns true when
 * the sleep ran out rather than being ended by a notification or a stop. */
static bool wait_idle(struct outbox *o, bool refresh)
{
	int64_t ms = OUTBOX_POLL_MS, due = 0;
	struct timespec ts;
	bool ran_out = false;

	if (refresh && store_outbox_next_due(o->store, &due) == 0) {
		pthread_mutex_lock(&o->mu);
		o->due_s = due;
		pthread_mutex_unlock(&o->mu);
	}
	pthread_mutex_lock(&o->mu);
	due = o->due_s;
	pthread_mutex_unlock(&o->mu);
	if (due > 0) {
		int64_t d = due * 1000 - wall_ms();
		if (d < ms)
			ms = d;
	}
	if (ms < OUTBOX_MIN_WAIT_MS)
		ms = OUTBOX_MIN_WAIT_MS;
	ts = mono_abs(mono_ms() + ms);

	pthread_mutex_lock(&o->mu);
	while (!o->stopping && o->gen == o->seen) {
		if (pthread_cond_timedwait(&o->idle_cv, &o->mu, &ts) == ETIMEDOUT) {
			ran_out = o->gen == o->seen;
			break;
		}
	}
	/* what was due is being claimed now; the next poll re-reads the store */
	if (ran_out && o->due_s != 0 && o->due_s * 1000 <= wall_ms())
		o->due_s = 0;
	pthread_mutex_unlock(&o->mu);
	return ran_out;
}

/* ---- providers ---------------------------------------------------------------------- */

/* The provider called `name`, built on first use. NULL with the reason in err when it
 * cannot be built; the failure is remembered (the configuration does not change). */
static struct provider *provider_get(struct outbox *o, const char *name, char *err, size_t cap)
{
	struct provider *p = NULL;
	struct outbox_slot *slot = NULL;

	pthread_mutex_lock(&o->pmu);
	for (size_t i = 0; i < o->n_slots; i++) {
		if (strcmp(o->slots[i].name, name) == 0) {
			slot = &o->slots[i];
			break;
		}
	}
	if (!slot) {
		if (o->n_slots == OUTBOX_SLOTS_MAX || strlen(name) >= STORE_PROVIDER_MAX) {
			snprintf(err, cap, "too many distinct providers, or name too long");
			goto out;
		}
		slot = &o->slots[o->n_slots++];
		snprintf(slot->name, sizeof slot->name, "%s", name);
		slot->err[0] = '\0';
		slot->p = provider_new(name, o->cfg, slot->err, sizeof slot->err);
		if (!slot->p && slot->err[0] == '\0')
			snprintf(slot->err, sizeof slot->err, "cannot be built");
	}
	p = slot->p;
	if (!p)
		snprintf(err, cap, "%s", slot->err);
out:
	pthread_mutex_unlock(&o->pmu);
	return p;
}

/* ---- one delivery ------------------------------------------------------------------- */

static void wipe_str(char *s)
{
	if (s)
		sodium_memzero(s, strlen(s));
}

/* Wipe every string of a decoded message (the code, and texts that contain it), then
 * free them. */
static void message_wipe(struct otp_message *m)
{
	wipe_str(m->target);
	wipe_str(m->code);
	wipe_str(m->text);
	wipe_str(m->subject);
	wipe_str(m->html);
	otp_message_fini(m);
	memset(m, 0, sizeof *m);
}

/* Format a job's error (it may quote itself: formatted aside, then copied). Long
 * provider texts are cut at STORE_ERROR_MAX, which is what the store keeps anyway. */
static void set_error(char dst[STORE_ERROR_MAX], const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_error(char dst[STORE_ERROR_MAX], const char *fmt, ...)
{
	char tmp[STORE_ERROR_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	memcpy(dst, tmp, sizeof tmp);
}

/* Replace every occurrence of `target` in err (STORE_ERROR_MAX) by `masked`. */
static void scrub_target(char err[STORE_ERROR_MAX], const char *target, const char *masked)
{
	char out[STORE_ERROR_MAX];
	size_t tlen = target ? strlen(target) : 0, mlen = strlen(masked), j = 0;
	const char *p = err, *hit;

	if (tlen < 3 || !strstr(err, target))
		return;
	while ((hit = strstr(p, target)) != NULL) {
		size_t pre = (size_t)(hit - p);
		if (j + pre + mlen >= sizeof out)
			break;
		memcpy(out + j, p, pre);
		memcpy(out + j + pre, masked, mlen);
		j += pre + mlen;
		p = hit + tlen;
	}
	/* the rest (also when out is full: cut, never a partial target) */
	if (!hit) {
		size_t rest = strlen(p);
		if (j + rest >= sizeof out)
			rest = sizeof out - 1 - j;
		memcpy(out + j, p, rest);
		j += rest;
	}
	out[j] = '\0';
	memcpy(err, out, sizeof out);
}

enum outcome { OUT_SENT, OUT_RETRY, OUT_DEAD };

static const char *outcome_state(enum outcome oc)
{
	switch (oc) {
	case OUT_SENT: return STORE_JOB_SENT;
	case OUT_RETRY: return STORE_JOB_PENDING;
	case OUT_DEAD: return STORE_JOB_DEAD;
	}
	return "?";
}

/* Write the outcome, retrying briefly. Returns 0 or the last store error. */
static int mark(struct outbox *o, const struct store_job *job, enum outcome oc,
                int64_t next_at, const char *msg_id, const char *error)
{
	int rc = OTP_ERR_STORE;

	for (int i = 0; i < OUTBOX_MARK_TRIES; i++) {
		int64_t now = wall_s();
		if (i > 0)
			wait_unless_stopping(o, 100LL << i);
		switch (oc) {
		case OUT_SENT: rc = store_outbox_sent(o->store, job->id, now, msg_id); break;
		case OUT_RETRY: rc = store_outbox_retry(o->store, job->id, now, next_at, error); break;
		case OUT_DEAD: rc = store_outbox_dead(o->store, job->id, now, error); break;
		}
		if (rc != OTP_ERR_STORE)
			break;
	}
	return rc;
}

/* The registry index of a provider name, OUTBOX_PROVIDERS_MAX for any other name. */
static size_t provider_row(const char *name)
{
	for (size_t i = 0; i < OUTBOX_PROVIDERS_MAX; i++) {
		const struct provider_def *d = provider_def_at(i);
		if (d == NULL)
			break;
		if (strcmp(d->name, name) == 0)
			return i;
	}
	return OUTBOX_PROVIDERS_MAX;
}

/* Try one claimed job and record the outcome. The job stays owned by the caller. */
static void deliver(struct outbox *o, struct outbox_worker *w, const struct store_job *job)
{
	const struct config *cfg = o->cfg;
	struct otp_message msg;
	struct provider_result res;
	struct provider *p = NULL;
	uint8_t *plain = NULL;
	size_t plain_len = 0;
	char error[STORE_ERROR_MAX] = "";
	char why[PROVIDER_ERROR_MAX] = "";
	char masked[OTP_TARGET_MAX] = "-";
	char b_id[NUM_MAX], b_att[NUM_MAX], b_took[NUM_MAX], b_retry[NUM_MAX];
	enum outcome oc = OUT_DEAD;
	int64_t now = wall_s(), next_at = 0, delay_ms = 0, t0 = 0, took_ms = 0;
	int attempts = job->attempts + 1;   /* counting this one, as the store will */
	int rc;

	memset(&msg, 0, sizeof msg);
	memset(&res, 0, sizeof res);

	if (job->attempts >= cfg->outbox_max_tries) {
		attempts = job->attempts;
		set_error(error, "gave up: %d attempts made (max %d)", job->attempts,
		          cfg->outbox_max_tries);
		goto record;
	}
	if (cfg->outbox_max_age > 0 && now - job->created_at > cfg->outbox_max_age) {
		attempts = job->attempts;
		set_error(error, "gave up: older than %d s before it could be tried",
		          cfg->outbox_max_age);
		goto record;
	}
	if (job->payload_len < OTP_SEAL_OVERHEAD || !job->payload) {
		set_error(error, "payload missing or truncated");
		goto record;
	}
	plain = malloc(job->payload_len - OTP_SEAL_OVERHEAD + 1);
	if (!plain) {
		/* not the job's fault: try again later */
		oc = OUT_RETRY;
		set_error(error, "out of memory");
		goto backoff;
	}
	if (otp_open(o->key, "outbox", job->payload, job->payload_len, plain, &plain_len) != 0) {
		set_error(error, "payload cannot be opened (secret key changed?)");
		goto record;
	}
	if (otp_message_decode(plain, plain_len, &msg) != 0) {
		set_error(error, "payload cannot be decoded");
		goto record;
	}
	log_mask_target(msg.target, masked, sizeof masked);
	if (msg.channel != job->channel) {
		set_error(error, "payload is for channel %s, job for %s",
		          otp_channel_name(msg.channel), otp_channel_name(job->channel));
		goto record;
	}
	p = provider_get(o, job->provider, why, sizeof why);
	if (!p) {
		set_error(error, "provider %s unavailable: %s", job->provider, why);
		goto record;
	}

	t0 = mono_ms();
	rc = provider_send(p, w->session, &msg, job->id, &res);
	took_ms = mono_ms() - t0;
	now = wall_s();
	if (rc == 0) {
		oc = OUT_SENT;
		goto record;
	}
	if (res.error[0])
		set_error(error, "%s", res.error);
	else
		set_error(error, "%s", otp_err_name(rc));
	/* a provider may echo the number back in its error: it goes to the log and the
	 * store, so only masked */
	scrub_target(error, msg.target, masked);
	if (rc == OTP_ERR_PERMANENT)
		goto record;                       /* dead */
	oc = OUT_RETRY;

backoff:
	delay_ms = outbox_backoff_ms(cfg->outbox_backoff_base_ms, cfg->outbox_backoff_max,
	                             attempts, &otp_rng_system);
	/* the store counts whole seconds: round up so a retry never comes early */
	next_at = now + (delay_ms + 999) / 1000;
	if (attempts >= cfg->outbox_max_tries) {
		oc = OUT_DEAD;
		set_error(error, "gave up after %d attempts: %s", attempts, error);
	} else if (cfg->outbox_max_age > 0 && next_at > job->created_at + cfg->outbox_max_age) {
		oc = OUT_DEAD;
		set_error(error, "gave up: next try would pass max age %d s: %s",
		          cfg->outbox_max_age, error);
	}

record:
	if (plain) {
		sodium_memzero(plain, job->payload_len - OTP_SEAL_OVERHEAD + 1);
		free(plain);
	}
	message_wipe(&msg);

	rc = mark(o, job, oc, next_at, res.msg_id, error);
	if (rc != 0) {
		atomic_fetch_add(&o->n_store_errors, 1);
		log_write(LOG_ERROR, "outbox outcome not recorded, job keeps its lease",
		          "job", num(b_id, job->id), "channel", otp_channel_name(job->channel),
		          "provider", job->provider, "state", outcome_state(oc),
		          "err", otp_err_name(rc), LOG_END);
		return;
	}
	atomic_fetch_add(&o->by_provider[provider_row(job->provider)][oc], 1);
	switch (oc) {
	case OUT_SENT: atomic_fetch_add(&o->n_sent, 1); break;
	case OUT_RETRY:
		atomic_fetch_add(&o->n_retry, 1);
		due_lower(o, next_at);
		break;
	case OUT_DEAD: atomic_fetch_add(&o->n_dead, 1); break;
	}
	log_write(oc == OUT_SENT ? LOG_INFO : LOG_WARN, "outbox delivery",
	          "job", num(b_id, job->id), "channel", otp_channel_name(job->channel),
	          "provider", job->provider, "target", masked,
	          "attempts", num(b_att, attempts), "state", outcome_state(oc),
	          "took_ms", num(b_took, took_ms),
	          "retry_in_s", num(b_retry, oc == OUT_RETRY ? next_at - now : 0),
	          "provider_msg_id", res.msg_id, "error", error, LOG_END);
}

/* ---- the batch and the loop --------------------------------------------------------- */

/* Take the worker's not-started jobs (mu held): copy them to out and mark them owned by
 * the caller. Returns how many. */
static size_t take_rest(struct outbox_worker *w, struct store_job *out)
{
	size_t k = 0;

	while (w->next < w->n)
		out[k++] = w->jobs[w->next++];
	return k;
}

/* Put jobs back untouched and free them. */
static void release_jobs(struct outbox *o, struct store_job *jobs, size_t n, const char *why)
{
	for (size_t i = 0; i < n; i++) {
		char b_id[NUM_MAX];
		int rc = store_outbox_release(o->store, jobs[i].id);
		if (rc == 0)
			atomic_fetch_add(&o->n_released, 1);
		log_write(rc == 0 ? LOG_INFO : LOG_WARN, "outbox job released",
		          "job", num(b_id, jobs[i].id), "channel", otp_channel_name(jobs[i].channel),
		          "provider", jobs[i].provider, "reason", why,
		          "err", rc == 0 ? "" : otp_err_name(rc), LOG_END);
		store_job_fini(&jobs[i]);
	}
}

static void run_batch(struct outbox *o, struct outbox_worker *w)
{
	struct store_job job, rest[OUTBOX_BATCH_MAX];
	size_t k;
	const char *why;

	for (;;) {
		pthread_mutex_lock(&o->mu);
		if (w->next >= w->n) {
			pthread_mutex_unlock(&o->mu);
			return;
		}
		why = NULL;
		if (o->stopping)
			why = "shutdown";
		else if (w->next > 0 && wall_s() + o->cfg->provider_timeout >= w->jobs[w->next].lease_until)
			why = "lease_too_short";
		if (why) {
			k = take_rest(w, rest);
			pthread_mutex_unlock(&o->mu);
			release_jobs(o, rest, k, why);
			return;
		}
		job = w->jobs[w->next++];
		pthread_mutex_unlock(&o->mu);

		deliver(o, w, &job);
		store_job_fini(&job);
	}
}

void outbox_stats(struct outbox *o, struct outbox_stats *out)
{
	memset(out, 0, sizeof *out);
	if (o == NULL)
		return;
	out->sent = atomic_load(&o->n_sent);
	out->retried = atomic_load(&o->n_retry);
	out->dead = atomic_load(&o->n_dead);
	out->released = atomic_load(&o->n_released);
	out->store_errors = atomic_load(&o->n_store_errors);
	for (size_t i = 0; i <= OUTBOX_PROVIDERS_MAX; i++) {
		const struct provider_def *d = i < OUTBOX_PROVIDERS_MAX ? provider_def_at(i) : NULL;
		if (d == NULL && i < OUTBOX_PROVIDERS_MAX)
			continue;
		struct outbox_provider_stats *ps = &out->providers[out->n_providers++];
		ps->name = d != NULL ? d->name : "other";
		ps->sent = atomic_load(&o->by_provider[i][OUT_SENT]);
		ps->retried = atomic_load(&o->by_provider[i][OUT_RETRY]);
		ps->dead = atomic_load(&o->by_provider[i][OUT_DEAD]);
	}
}

static void log_counters(struct outbox *o, const char *msg)
{
	char a[NUM_MAX], b[NUM_MAX], c[NUM_MAX], d[NUM_MAX], e[NUM_MAX];

	log_write(LOG_INFO, msg, "sent", num(a, atomic_load(&o->n_sent)),
	          "retried", num(b, atomic_load(&o->n_retry)),
	          "dead", num(c, atomic_load(&o->n_dead)),
	          "released", num(d, atomic_load(&o->n_released)),
	          "store_errors", num(e, atomic_load(&o->n_store_errors)), LOG_END);
}

static void *worker_main(void *arg)
{
	struct outbox_worker *w = arg;
	struct outbox *o = w->o;
	int64_t store_wait = 0, stats_at = mono_ms() + OUTBOX_STATS_EVERY_MS;
	long long stats_seen = -1;
	bool polled = true;                 /* the last sleep ran out (or none yet) */

	/* without a session every delivery opens its own connection: slower, still right */
	w->session = provider_session_new();

	for (;;) {
		uint64_t gen;
		size_t n = 0;
		int64_t now;
		int rc;

		pthread_mutex_lock(&o->mu);
		gen = o->gen;
		if (o->stopping) {
			pthread_mutex_unlock(&o->mu);
			break;
		}
		pthread_mutex_unlock(&o->mu);

		now = wall_s();
		rc = store_outbox_claim(o->store, now, now + o->cfg->outbox_lease, w->jobs,
		                        o->batch, &n);
		if (rc != 0) {
			atomic_fetch_add(&o->n_store_errors, 1);
			store_wait = store_wait ? store_wait * 2 : OUTBOX_STORE_WAIT_MIN_MS;
			if (store_wait > OUTBOX_STORE_WAIT_MAX_MS)
				store_wait = OUTBOX_STORE_WAIT_MAX_MS;
			char b_w[NUM_MAX], b_ms[NUM_MAX];
			log_write(LOG_WARN, "outbox claim failed", "worker", num(b_w, w->index),
			          "err", otp_err_name(rc), "retry_in_ms", num(b_ms, store_wait),
			          LOG_END);
			wait_unless_stopping(o, store_wait);
			continue;
		}
		store_wait = 0;

		if (n > o->batch)
			n = o->batch;                   /* never trust a count past our array */
		pthread_mutex_lock(&o->mu);
		if (n < o->batch && o->seen < gen)
			o->seen = gen;                  /* see DESIGN: a short claim took all */
		pthread_mutex_unlock(&o->mu);
		if (n > 0) {
			pthread_mutex_lock(&o->mu);
			w->n = n;
			w->next = 0;
			if (n == o->batch)
				pthread_cond_signal(&o->idle_cv); /* more may be due: get help */
			pthread_mutex_unlock(&o->mu);
			run_batch(o, w);
			if (n == o->batch)
				continue;
			/* claim again at once only when a job was committed since */
			polled = wait_idle(o, false);
			continue;
		}

		if (w->index == 0 && mono_ms() >= stats_at) {
			long long total = atomic_load(&o->n_sent) + atomic_load(&o->n_retry) +
			                  atomic_load(&o->n_dead) + atomic_load(&o->n_store_errors);
			if (total != stats_seen)
				log_counters(o, "outbox counters");
			stats_seen = total;
			stats_at = mono_ms() + OUTBOX_STATS_EVERY_MS;
		}
		polled = wait_idle(o, polled);
	}

	provider_session_free(w->session);
	w->session = NULL;
	pthread_mutex_lock(&o->mu);
	w->exited = true;
	o->running--;
	pthread_cond_broadcast(&o->done_cv);
	pthread_mutex_unlock(&o->mu);
	return NULL;
}

/* ---- the interface ------------------------------------------------------------------ */

/* provider_check_config's reporter for outbox_new: warnings are logged, the first error
 * becomes the reason outbox_new gives. */
struct channel_check {
	char *err;
	size_t cap;
	bool have;
};

static void channel_report(void *arg, const char *var, int level, const char *text)
{
	struct channel_check *cc = arg;
	if (level != LOG_ERROR) {
		log_write(LOG_WARN, text, "var", var, LOG_END);
		return;
	}
	if (!cc->have)
		snprintf(cc->err, cc->cap, "%s: %s", var, text);
	cc->have = true;
}

struct outbox *outbox_new(const struct config *cfg, struct store *store,
                          const struct otp_key *key, char *err, size_t cap)
{
	struct outbox *o = NULL;
	pthread_condattr_t ca;
	bool ca_ok = false;
	int lease, timeout;

	if (!cfg || !store || !key) {
		snprintf(err, cap, "outbox: missing configuration, store or key");
		return NULL;
	}
	o = calloc(1, sizeof *o);
	if (!o) {
		snprintf(err, cap, "outbox: out of memory");
		return NULL;
	}
	o->cfg = cfg;
	o->store = store;
	o->key = key;

	/* a batch must fit in its lease with a send of provider_timeout per job */
	lease = cfg->outbox_lease > 0 ? cfg->outbox_lease : 1;
	timeout = cfg->provider_timeout > 0 ? cfg->provider_timeout : 1;
	o->batch = (size_t)(lease / (timeout + 1));
	if (o->batch < 1)
		o->batch = 1;
	if (o->batch > OUTBOX_BATCH_MAX)
		o->batch = OUTBOX_BATCH_MAX;

	if (pthread_mutex_init(&o->mu, NULL) != 0) {
		free(o);
		snprintf(err, cap, "outbox: cannot create mutex");
		return NULL;
	}
	pthread_mutex_init(&o->pmu, NULL);
	/* timed waits run on CLOCK_MONOTONIC: a wall-clock step must not stall a worker */
	if (pthread_condattr_init(&ca) == 0) {
		ca_ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0;
		pthread_cond_init(&o->idle_cv, &ca);
		pthread_cond_init(&o->stop_cv, &ca);
		pthread_cond_init(&o->done_cv, &ca);
		pthread_condattr_destroy(&ca);
	} else {
		pthread_cond_init(&o->idle_cv, NULL);
		pthread_cond_init(&o->stop_cv, NULL);
		pthread_cond_init(&o->done_cv, NULL);
	}
	if (!ca_ok) {
		outbox_free(o);
		snprintf(err, cap, "outbox: cannot set up monotonic condition variables");
		return NULL;
	}

	struct channel_check cc = {.err = err, .cap = cap};
	if (provider_check_config(cfg, channel_report, &cc) > 0) {
		outbox_free(o);
		return NULL;
	}
	for (int ch = 0; ch < OTP_CH_COUNT; ch++) {
		const char *name;
		char why[PROVIDER_ERROR_MAX] = "";

		if (cfg->dummy) {
			o->channel_provider[ch] = "dummy";
			continue;
		}
		name = config_channel_provider(cfg, ch);
		if (!name || !name[0]) {
			snprintf(err, cap, "no provider configured for channel %s",
			         otp_channel_name((enum otp_channel)ch));
			outbox_free(o);
			return NULL;
		}
		if (!provider_get(o, name, why, sizeof why)) {
			snprintf(err, cap, "provider %s for channel %s: %s", name,
			         otp_channel_name((enum otp_channel)ch), why);
			outbox_free(o);
			return NULL;
		}
		/* point at the slot's copy: stable for the outbox's life */
		for (size_t i = 0; i < o->n_slots; i++)
			if (strcmp(o->slots[i].name, name) == 0)
				o->channel_provider[ch] = o->slots[i].name;
	}
	return o;
}

int outbox_start(struct outbox *o)
{
	int n = o->cfg->outbox_workers > 0 ? o->cfg->outbox_workers : 1;

	if (o->started)
		return OTP_ERR_INTERNAL;
	o->started = true;
	if (o->cfg->dummy) {
		log_write(LOG_INFO, "outbox idle: DUMMY, nothing is delivered", LOG_END);
		return 0;
	}
	o->workers = calloc((size_t)n, sizeof *o->workers);
	if (!o->workers)
		return OTP_ERR_INTERNAL;
	o->n_workers = n;
	for (int i = 0; i < n; i++) {
		struct outbox_worker *w = &o->workers[i];
		w->o = o;
		w->index = i;
		pthread_mutex_lock(&o->mu);
		o->running++;
		pthread_mutex_unlock(&o->mu);
		if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
			pthread_mutex_lock(&o->mu);
			o->running--;
			w->exited = true;
			pthread_mutex_unlock(&o->mu);
			outbox_stop(o, 0);
			return OTP_ERR_INTERNAL;
		}
		w->created = true;
	}
	char b_n[NUM_MAX], b_b[NUM_MAX], b_l[NUM_MAX];
	log_write(LOG_INFO, "outbox started", "workers", num(b_n, n),
	          "batch", num(b_b, (long long)o->batch), "lease_s", num(b_l, o->cfg->outbox_lease),
	          LOG_END);
	return 0;
}

void outbox_notify(struct outbox *o)
{
	if (!o)
		return;
	pthread_mutex_lock(&o->mu);
	o->gen++;
	pthread_cond_signal(&o->idle_cv);
	pthread_mutex_unlock(&o->mu);
}

void outbox_stop(struct outbox *o, int deadline_s)
{
	struct store_job rest[OUTBOX_BATCH_MAX];
	struct timespec ts;
	int64_t until;
	int left;

	if (!o || !o->started)
		return;
	until = mono_ms() + (deadline_s > 0 ? (int64_t)deadline_s * 1000 : 0);
	ts = mono_abs(until);

	pthread_mutex_lock(&o->mu);
	o->stopping = true;
	pthread_cond_broadcast(&o->idle_cv);
	pthread_cond_broadcast(&o->stop_cv);
	while (o->running > 0 && mono_ms() < until)
		if (pthread_cond_timedwait(&o->done_cv, &o->mu, &ts) == ETIMEDOUT)
			break;
	/* past the deadline: sends in flight are cancelled (they end as retries, so the job
	 * is delivered after the next start); a worker still sending keeps its job; the rest
	 * go back */
	if (o->running > 0) {
		pthread_mutex_unlock(&o->mu);
		pthread_mutex_lock(&o->pmu);
		for (size_t i = 0; i < o->n_slots; i++)
			provider_cancel(o->slots[i].p);
		pthread_mutex_unlock(&o->pmu);
		pthread_mutex_lock(&o->mu);
	}
	for (int i = 0; i < o->n_workers; i++) {
		struct outbox_worker *w = &o->workers[i];
		size_t k;
		if (w->exited)
			continue;
		k = take_rest(w, rest);
		if (k) {
			pthread_mutex_unlock(&o->mu);
			release_jobs(o, rest, k, "shutdown_deadline");
			pthread_mutex_lock(&o->mu);
		}
	}
	left = o->running;
	pthread_mutex_unlock(&o->mu);

	for (int i = 0; i < o->n_workers; i++) {
		struct outbox_worker *w = &o->workers[i];
		bool done;
		pthread_mutex_lock(&o->mu);
		done = w->exited;
		pthread_mutex_unlock(&o->mu);
		if (w->created && !w->joined && done) {
			pthread_join(w->thread, NULL);
			w->joined = true;
		}
	}
	if (left > 0) {
		char b_left[NUM_MAX];
		log_write(LOG_WARN, "outbox stop deadline passed, sends in flight keep their lease",
		          "still_sending", num(b_left, left), LOG_END);
	}
	log_counters(o, "outbox stopped");
}

void outbox_free(struct outbox *o)
{
	if (!o)
		return;
	if (o->started) {
		pthread_mutex_lock(&o->mu);
		bool stopping = o->stopping;
		pthread_mutex_unlock(&o->mu);
		if (!stopping)
			outbox_stop(o, 0);
		/* a worker still inside a provider call returns within its timeout */
		for (int i = 0; i < o->n_workers; i++) {
			struct outbox_worker *w = &o->workers[i];
			if (w->created && !w->joined) {
				pthread_join(w->thread, NULL);
				w->joined = true;
			}
		}
	}
	free(o->workers);
	for (size_t i = 0; i < o->n_slots; i++)
		provider_free(o->slots[i].p);
	pthread_cond_destroy(&o->idle_cv);
	pthread_cond_destroy(&o->stop_cv);
	pthread_cond_destroy(&o->done_cv);
	pthread_mutex_destroy(&o->pmu);
	pthread_mutex_destroy(&o->mu);
	free(o);
}

const char *outbox_provider_for(const struct outbox *o, int channel)
{
	if (!o || channel < 0 || channel >= OTP_CH_COUNT)
		return NULL;
	return o->channel_provider[channel];
}
