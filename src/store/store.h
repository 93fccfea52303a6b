/*
 * store.h - the storage interface: a const table of operations plus an opaque backend
 * context, called through the inline wrappers below. Backends: sqlite.c (embedded
 * default) and pg.c (many otpd on one PostgreSQL). Every operation is one transaction:
 * it either happens whole or not at all, and is durable when it returns 0.
 * Thread-safety: every operation may be called from any thread at once; the backend
 * keeps one database handle per caller (pool), never shares one between threads.
 * Errors: 0, or a negative enum otp_err; OTP_ERR_STORE means the database failed or is
 * unreachable (the HTTP answer is 503). Backends never log; they return.
 */
#ifndef OTPD_STORE_STORE_H
#define OTPD_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/limits.h"
#include "core/otp.h"

/* ---- sending ---------------------------------------------------------------------- */

/* States of an outbox job. Stored as these strings. */
#define STORE_JOB_PENDING "pending"   /* waiting for (next) delivery attempt */
#define STORE_JOB_SENDING "sending"   /* claimed by a worker until lease_until */
#define STORE_JOB_SENT "sent"         /* delivered; payload erased */
#define STORE_JOB_DEAD "dead"         /* gave up; payload erased */
#define STORE_JOB_SKIPPED "skipped"   /* DUMMY=true: never delivered, no payload */

struct store_send {
	enum otp_channel channel;
	const char *target;                 /* normalised: phone digits, email, chat id */
	const char *ip;                     /* may be NULL */
	uint8_t code_hash[OTP_HASH_LEN];    /* otp_code_hash() */
	uint8_t lookup_hash[OTP_HASH_LEN];  /* otp_lookup_hash() */
	const uint8_t *sealed_code;         /* otp_seal(..,"password",..) or NULL when
	                                       GET /password is disabled */
	size_t sealed_code_len;
	int64_t now;                        /* unix seconds */
	int64_t expire_at;                  /* unix seconds */
	/* the delivery job, written in the same transaction */
	const char *provider;               /* provider name that will deliver it */
	const uint8_t *payload;             /* sealed message (otp_seal(..,"outbox",..));
	                                       NULL with skip */
	size_t payload_len;
	bool skip;                          /* DUMMY=true: job recorded as skipped */
	bool require_ip;                    /* with ip NULL and IP rules on the channel:
	                                       refuse (OTP_ERR_INVALID, res->ip_required),
	                                       decided on the rules the send itself reads */
	const char *request_id;             /* for the job's log trail; may be NULL */
};

struct store_send_result {
	int64_t code_id;                    /* the new code's id */
	int64_t job_id;                     /* the new outbox job's id */
	/* when the send was refused by a limit (return OTP_ERR_LIMIT): */
	struct otp_limit_rule refused_by;
	/* when it was refused for want of an ip (require_ip; return OTP_ERR_INVALID) */
	bool ip_required;
};

/* ---- checking --------------------------------------------------------------------- */

struct store_check {
	enum otp_channel channel;           /* the check's channel: keys the attempt counter */
	unsigned channel_mask;              /* channels whose codes are accepted */
	const char *target;
	/* the presented code hashed for each channel in the mask */
	uint8_t presented[OTP_CH_COUNT][OTP_HASH_LEN];
	int64_t now;
	int max_failures;                   /* OTPD_MAX_CHECK_ATTEMPTS; <= 0: unlimited */
	bool consume;                       /* OTPD_CHECK_CONSUMES: a match uses the code up */
};

/* ---- limits ----------------------------------------------------------------------- */

struct store_limits {
	size_t n;
	struct otp_limit_rule rules[2 * OTP_LIMIT_RULES_MAX]; /* in the order they were set */
};

/* ---- outbox ----------------------------------------------------------------------- */

#define STORE_PROVIDER_MAX 32
#define STORE_ERROR_MAX 256
#define STORE_MSGID_MAX 128

/* One claimed job, owned by the caller. `payload` is malloc'd: free with
 * store_job_fini(). */
struct store_job {
	int64_t id;
	enum otp_channel channel;
	char provider[STORE_PROVIDER_MAX];
	uint8_t *payload;
	size_t payload_len;
	int attempts;                       /* attempts made before this one */
	int64_t created_at;
	int64_t lease_until;
};
void store_job_fini(struct store_job *job);

/* A row of the operators' listing (no payload). */
struct store_job_info {
	int64_t id;
	int64_t code_id;
	enum otp_channel channel;
	char provider[STORE_PROVIDER_MAX];
	char state[16];
	int attempts;
	int64_t created_at;
	int64_t updated_at;
	int64_t next_at;
	char last_error[STORE_ERROR_MAX];
	char provider_msg_id[STORE_MSGID_MAX];
};

struct store_job_filter {
	const char *state;                  /* NULL: any */
	int channel;                        /* -1: any */
	const char *provider;               /* NULL: any */
	int64_t before_id;                  /* 0: newest first from the top; else id < this */
	size_t limit;                       /* 1..1000 */
};

struct store_outbox_counts {
	int64_t pending, sending, sent, dead, skipped;
};

/* What waits for delivery, read through the pending/sending indexes only (cheap). */
struct store_outbox_backlog {
	int64_t pending, sending;
	int64_t oldest_due;                 /* smallest next_at of a pending job, 0: none */
};
/* Set the count of `state` (one of STORE_JOB_*; any other is ignored) to n. */
void store_outbox_counts_set(struct store_outbox_counts *c, const char *state, int64_t n);

/* ---- the interface ---------------------------------------------------------------- */

struct store;

struct store_ops {
	const char *name;
	void (*close)(struct store *s);
	/* cheap round trip to the database: GET /ready */
	int (*ping)(struct store *s);

	/* Evaluate the channel's limit rules against successful sends in their windows
	 * (otp_limits_decide), and when allowed insert the code, reset the attempt counter of
	 * (channel, target) and insert the outbox job, all in one transaction. Returns 0,
	 * OTP_ERR_LIMIT (res->refused_by filled; nothing written), OTP_ERR_INVALID with
	 * res->ip_required (see require_ip; nothing written) or OTP_ERR_STORE. A send without
	 * an ip is otherwise never refused by IP rules. */
	int (*send)(struct store *s, const struct store_send *req, struct store_send_result *res);

	/* Load the live codes of (mask, target), decide with otp_check_decide, and store the
	 * outcome (failure count, voiding, consumption) in one transaction. */
	int (*check)(struct store *s, const struct store_check *req, bool *ok);

	/* Replace the rules of (channel, kind) for each kind whose `replace` flag is set, in
	 * one transaction. rules[] holds the new rules of every replaced kind, in order. */
	int (*set_limits)(struct store *s, enum otp_channel ch, const bool replace[2],
	                  const struct otp_limit_rule *rules, size_t n);
	int (*get_limits)(struct store *s, enum otp_channel ch, struct store_limits *out);

	/* Target of the latest live code of `ch` whose lookup hash is `lookup`. Returns 0 or
	 * OTP_ERR_NOT_FOUND. */
	int (*find_target)(struct store *s, enum otp_channel ch,
	                   const uint8_t lookup[OTP_HASH_LEN], int64_t now,
	                   char *target, size_t target_cap);
	/* Sealed copy of the latest live code sent to `target` on any channel. *sealed is
	 * malloc'd (caller frees). OTP_ERR_NOT_FOUND when none (or none sealed). */
	int (*find_sealed_code)(struct store *s, const char *target, int64_t now,
	                        uint8_t **sealed, size_t *len);

	/* Delete codes expired before `before`, attempt counters with no live code, and sent /
	 * dead / skipped jobs older than `jobs_before`. *deleted counts rows removed.
	 * A code is also a send that limits count: one still inside the longest limit window
	 * of its channel (created_at >= before - 60 * max minutes) is kept. */
	int (*purge)(struct store *s, int64_t before, int64_t jobs_before, int64_t *deleted);

	/* Claim up to `max` jobs that are pending with next_at <= now, or sending with
	 * lease_until < now (their worker died): set state sending, lease_until = lease_until,
	 * attempts unchanged. Concurrency-safe across processes. *n_out = jobs written. */
	int (*outbox_claim)(struct store *s, int64_t now, int64_t lease_until,
	                    struct store_job *jobs, size_t max, size_t *n_out);
	/* Mark delivered: state sent, attempts+1, provider_msg_id, payload erased. */
	int (*outbox_sent)(struct store *s, int64_t id, int64_t now, const char *provider_msg_id);
	/* Failed attempt to retry later: state pending, attempts+1, next_at, last_error. */
	int (*outbox_retry)(struct store *s, int64_t id, int64_t now, int64_t next_at,
	                    const char *error);
	/* Give up: state dead, attempts+1, last_error, payload erased. */
	int (*outbox_dead)(struct store *s, int64_t id, int64_t now, const char *error);
	/* Put a claimed job back untouched (shutdown before it was tried).
	 * sent, retry, dead and release act on a claimed (sending) job only: any other id
	 * answers OTP_ERR_NOT_FOUND and changes nothing. */
	int (*outbox_release)(struct store *s, int64_t id);
	/* The operators' listing, newest first. With `counts` (may be NULL) also the jobs
	 * per state, read in the same snapshot as the rows, so the two agree. */
	int (*outbox_list)(struct store *s, const struct store_job_filter *f,
	                   struct store_job_info *rows, size_t *n_out,
	                   struct store_outbox_counts *counts);
	int (*outbox_counts)(struct store *s, struct store_outbox_counts *out);
	/* Earliest next_at of a pending job (for the worker's sleep), or 0 when none. */
	int (*outbox_next_due)(struct store *s, int64_t *next_at);
	/* Pending and sending jobs of every process, and the oldest due time (/metrics). */
	int (*outbox_backlog)(struct store *s, struct store_outbox_backlog *out);
};

/* The opaque handle: each backend embeds this first in its own struct. */
struct store {
	const struct store_ops *ops;
};

static inline void store_close(struct store *s) { if (s) s->ops->close(s); }
static inline int store_ping(struct store *s) { return s->ops->ping(s); }
static inline int store_send(struct store *s, const struct store_send *r,
                             struct store_send_result *res) { return s->ops->send(s, r, res); }
static inline int store_check(struct store *s, const struct store_check *r, bool *ok)
{ return s->ops->check(s, r, ok); }
static inline int store_set_limits(struct store *s, enum otp_channel ch, const bool replace[2],
                                   const struct otp_limit_rule *rules, size_t n)
{ return s->ops->set_limits(s, ch, replace, rules, n); }
static inline int store_get_limits(struct store *s, enum otp_channel ch, struct store_limits *out)
{ return s->ops->get_limits(s, ch, out); }
static inline int store_find_target(struct store *s, enum otp_channel ch,
                                    const uint8_t lookup[OTP_HASH_LEN], int64_t now,
                                    char *target, size_t cap)
{ return s->ops->find_target(s, ch, lookup, now, target, cap); }
static inline int store_find_sealed_code(struct store *s, const char *target, int64_t now,
                                         uint8_t **sealed, size_t *len)
{ return s->ops->find_sealed_code(s, target, now, sealed, len); }
static inline int store_purge(struct store *s, int64_t before, int64_t jobs_before, int64_t *deleted)
{ return s->ops->purge(s, before, jobs_before, deleted); }
static inline int store_outbox_claim(struct store *s, int64_t now, int64_t lease_until,
                                     struct store_job *jobs, size_t max, size_t *n)
{ return s->ops->outbox_claim(s, now, lease_until, jobs, max, n); }
static inline int store_outbox_sent(struct store *s, int64_t id, int64_t now, const char *msgid)
{ return s->ops->outbox_sent(s, id, now, msgid); }
static inline int store_outbox_retry(struct store *s, int64_t id, int64_t now, int64_t next_at,
                                     const char *err)
{ return s->ops->outbox_retry(s, id, now, next_at, err); }
static inline int store_outbox_dead(struct store *s, int64_t id, int64_t now, const char *err)
{ return s->ops->outbox_dead(s, id, now, err); }
static inline int store_outbox_release(struct store *s, int64_t id)
{ return s->ops->outbox_release(s, id); }
static inline int store_outbox_list(struct store *s, const struct store_job_filter *f,
                                    struct store_job_info *rows, size_t *n,
                                    struct store_outbox_counts *counts)
{ return s->ops->outbox_list(s, f, rows, n, counts); }
static inline int store_outbox_counts(struct store *s, struct store_outbox_counts *out)
{ return s->ops->outbox_counts(s, out); }
static inline int store_outbox_next_due(struct store *s, int64_t *next_at)
{ return s->ops->outbox_next_due(s, next_at); }
static inline int store_outbox_backlog(struct store *s, struct store_outbox_backlog *out)
{ return s->ops->outbox_backlog(s, out); }

/* ---- backends ----------------------------------------------------------------------- */

/* Open (creating if needed) the SQLite database at `path`, WAL mode, synchronous FULL,
 * and apply pending migrations. `pool` = number of connections (>= 1). On failure
 * returns NULL and writes a reason into err (cap bytes). */
struct store *store_sqlite_open(const char *path, int pool, char *err, size_t cap);

struct store_pg_config {
	const char *host, *real_host;       /* real_host may be NULL */
	int port;
	const char *database, *user, *password, *schema;
	int pool;                           /* connections */
	int connect_timeout;                /* seconds to wait for the server at start */
};
/* Connect, (with real_host) create the database and schema when missing, apply
 * migrations. NULL on failure with a reason in err. */
struct store *store_pg_open(const struct store_pg_config *cfg, char *err, size_t cap);

#endif
