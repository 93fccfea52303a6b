/*
 * store.h - the storage interface, dialect-neutral: verifications (start, check, resend,
 * cancel, get, list), their event log, send-limit rules, apps and API keys, the outbox,
 * and housekeeping. Every operation is written once (store.c and ops_*.c); a backend
 * (sqlite.c: embedded default, pg.c: many otpd on one PostgreSQL) supplies only its
 * statements, an executor and its commit strategy (backend.h).
 * Every operation is one transaction: it happens whole or not at all, and is durable
 * when it returns 0.
 * Thread-safety: every operation may be called from any thread at once; the backend
 * keeps one database handle per caller (pool), never shares one between threads.
 * Errors: 0, or a negative enum otp_err; OTP_ERR_STORE means the database failed or is
 * unreachable (the HTTP answer is 503). The store never logs; it returns.
 */
#ifndef OTPD_STORE_STORE_H
#define OTPD_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/limits.h"
#include "core/otp.h"
#include "core/verification.h"

struct store;

#define STORE_ID_MAX 64          /* public ids ("otp_" + hex), app ids, key ids, with NUL */
#define STORE_IP_MAX 64          /* longest ip text (IPv6 with a zone fits) */
#define STORE_PROVIDER_MAX 32
#define STORE_ERROR_MAX 256
#define STORE_MSGID_MAX 128
#define STORE_LANG_MAX 16
#define STORE_SENDER_MAX 32
#define STORE_ROUTE_MAX 1024     /* the opaque fallback text */
#define STORE_TEMPLATE_MAX 4096
#define STORE_NAME_MAX 128
#define STORE_SETTINGS_MAX 65536
#define STORE_CANDIDATES_MAX 32  /* live codes one check compares, newest first */
#define STORE_LIST_MAX 1000

/* ---- verifications ------------------------------------------------------------------ */

/* A verification as stored. `status` is as stored: otp_vstatus_at() gives what a reader
 * should see (a pending one past its expiry is expired). */
struct store_verification {
	int64_t id;                         /* internal; outbox jobs and events refer to it */
	char public_id[STORE_ID_MAX];
	char app_id[STORE_ID_MAX];          /* "" : made by the compat dialect */
	enum otp_channel channel;           /* the channel and target the code was made */
	char target[OTP_TARGET_MAX + 1];    /* for (its hash covers them) */
	enum otp_channel cur_channel;       /* where it was sent last */
	char cur_target[OTP_TARGET_MAX + 1];
	enum otp_vstatus status;
	int attempts, max_attempts;         /* wrong codes so far, allowed (0: unlimited) */
	int sends, max_sends;               /* messages queued so far, allowed */
	int resend_cooldown;                /* seconds */
	bool consume;                       /* approval uses the code up */
	bool has_sealed_code;               /* a sealed copy of the code is kept (resends) */
	int64_t created_at, updated_at, expire_at, last_sent_at;
	char ip[STORE_IP_MAX + 1];          /* the requester's, "" when not given */
	char lang[STORE_LANG_MAX];
	char sender[STORE_SENDER_MAX];
	char fallback[STORE_ROUTE_MAX];     /* the dialect's text of channels left to try */
};

/* A new verification and its first delivery job, written in one transaction with its
 * "created" event, after the send-limit rules of (app_id, channel) allowed it. */
struct store_start {
	const char *app_id;                 /* "" : compat; its rules are the global ones */
	const char *public_id;              /* made by the caller */
	enum otp_channel channel;
	const char *target;                 /* normalised (core/target.h) */
	const char *ip;                     /* may be NULL */
	uint8_t code_hash[OTP_HASH_LEN];    /* otp_code_hash(channel, target, code) */
	uint8_t lookup_hash[OTP_HASH_LEN];  /* otp_lookup_hash(channel, code) */
	const uint8_t *sealed_code;         /* otp_seal(.., "code", ..) or NULL */
	size_t sealed_code_len;
	int max_attempts, max_sends, resend_cooldown;
	bool consume;
	const char *tmpl;                   /* the caller's message template, for resends; */
	const char *lang, *sender;          /* these three may be NULL */
	const char *fallback;               /* may be NULL */
	int64_t now, expire_at;
	/* the delivery job */
	const char *provider;               /* the provider that will deliver it */
	const uint8_t *payload;             /* sealed message; NULL with skip */
	size_t payload_len;
	bool skip;                          /* DUMMY=true: the job is recorded as skipped */
	bool require_ip;                    /* ip NULL while the channel has ip rules: refuse
	                                       (OTP_ERR_INVALID, res->ip_required) */
	const char *request_id;             /* for the job's trail; may be NULL */
	/* Idempotency-Key: a second start with the same (app_id, key) within the window
	 * writes nothing and answers the first verification (res->replayed); with another
	 * fingerprint it is OTP_ERR_CONFLICT. NULL: none. */
	const char *idem_key;
	uint8_t idem_fingerprint[OTP_HASH_LEN];
	int64_t idem_since;                 /* keys older than this are forgotten */
};

struct store_start_result {
	struct store_verification v;        /* as written (or, replayed, as first written) */
	int64_t job_id;
	bool replayed;
	struct otp_limit_rule refused_by;   /* OTP_ERR_LIMIT: the rule that refused */
	bool ip_required;                   /* OTP_ERR_INVALID: see require_ip */
};

/* Returns 0, OTP_ERR_LIMIT (a "refused" event is the only write), OTP_ERR_INVALID
 * (ip_required, or a malformed request: nothing written), OTP_ERR_CONFLICT
 * (idempotency key with another fingerprint), OTP_ERR_STORE. */
int store_vf_start(struct store *s, const struct store_start *req, struct store_start_result *res);

enum store_check_by {
	STORE_CHECK_ID,        /* the verification public_id of app_id */
	STORE_CHECK_TARGET,    /* every live code of (app_id, target, channel_mask) */
	STORE_CHECK_LATEST,    /* the newest live code of (app_id, target, channel_mask) */
	STORE_CHECK_LOOKUP,    /* the newest live code of (app_id, channel) with lookup_hash */
};

struct store_check {
	enum store_check_by by;
	const char *app_id;                 /* "" compat; NULL (by ID only): any app */
	const char *public_id;              /* ID */
	const char *target;                 /* TARGET, LATEST */
	unsigned channel_mask;              /* TARGET, LATEST */
	enum otp_channel channel;           /* LOOKUP */
	uint8_t lookup_hash[OTP_HASH_LEN];  /* LOOKUP */
	/* The presented code, hashed inside the transaction the way each candidate's code
	 * was (its channel and target). Wiped by the caller. */
	const struct otp_key *key;
	const char *code;
	const char *ip;                     /* recorded with the check's event; may be NULL */
	int64_t now;
};

struct store_check_result {
	bool ok;                            /* the code matched a live verification */
	bool found;                         /* ID: it exists; others: some live candidate */
	/* ID: the verification after the check. Others: the one that matched, else the
	 * newest candidate (its attempts after the check). */
	struct store_verification v;
};

/* Compare, decide (otp_check_decide) and record the outcome (attempts, approval, the
 * check's events) in one transaction. A check that changes nothing (a reusable code
 * checked again) is answered from a read snapshot. By ID, a verification that is not
 * live is found (res->found, its status in res->v) and nothing is counted. */
int store_vf_check(struct store *s, const struct store_check *req, struct store_check_result *res);

/* Another message for a pending verification, with a new delivery job and a "resent"
 * event, after its cooldown, its max_sends and the send-limit rules of (app_id, channel)
 * allowed it. */
struct store_resend {
	const char *app_id;                 /* NULL: any app */
	const char *public_id;
	int expect_sends;                   /* sends as the caller read them: another resend
	                                       in between makes this one OTP_ERR_CONFLICT */
	enum otp_channel channel;           /* where this message goes */
	const char *target;
	const char *fallback;               /* the channels left after this one (may be NULL) */
	const char *ip;
	int64_t now;
	const char *provider;
	const uint8_t *payload;
	size_t payload_len;
	bool skip;
	const char *request_id;
};

enum store_resend_refusal {
	STORE_RESEND_OK,
	STORE_RESEND_NOT_PENDING,           /* approved, canceled, expired, failed, max attempts */
	STORE_RESEND_COOLDOWN,              /* res->retry_at says when */
	STORE_RESEND_MAX_SENDS,
	STORE_RESEND_LIMIT,                 /* a send-limit rule: res->refused_by */
};

struct store_resend_result {
	struct store_verification v;        /* after the resend (or as it stands) */
	int64_t job_id;
	enum store_resend_refusal refusal;
	int64_t retry_at;
	struct otp_limit_rule refused_by;
};

/* 0, OTP_ERR_NOT_FOUND, OTP_ERR_CONFLICT (expect_sends, or refused: res->refusal; a
 * refusal by a limit, cooldown or max sends writes a "refused" event), OTP_ERR_STORE. */
int store_vf_resend(struct store *s, const struct store_resend *req, struct store_resend_result *res);

/* Cancel a pending verification (its sealed code is erased; a "canceled" event).
 * 0, OTP_ERR_NOT_FOUND, OTP_ERR_CONFLICT (not pending: *v says how it stands). */
int store_vf_cancel(struct store *s, const char *app_id, const char *public_id, int64_t now,
                    struct store_verification *v);

/* Read one; app_id NULL: any app. 0 or OTP_ERR_NOT_FOUND. */
int store_vf_get(struct store *s, const char *app_id, const char *public_id,
                 struct store_verification *v);

/* What a resend needs to render its message again: the sealed code (*sealed malloc'd,
 * NULL when none is kept; the caller wipes and frees) and the caller's template (into
 * tmpl, "" when none). OTP_ERR_NOT_FOUND when there is no such verification. */
int store_vf_material(struct store *s, const char *app_id, const char *public_id,
                      uint8_t **sealed, size_t *len, char *tmpl, size_t tmpl_cap);
/* Compat GET /password: the sealed code of the newest live verification of (app_id,
 * target) on any channel. OTP_ERR_NOT_FOUND when none, or none kept. */
int store_vf_sealed_latest(struct store *s, const char *app_id, const char *target,
                           int64_t now, uint8_t **sealed, size_t *len);

/* Newest first, by internal id; a cursor (before_id) never loses nor repeats a row while
 * rows are inserted. */
struct store_vf_filter {
	const char *app_id;                 /* NULL: any */
	const char *target;                 /* NULL: any */
	int channel;                        /* -1: any */
	int status;                         /* -1: any (as stored) */
	int64_t since, until;               /* created_at in [since, until); 0: open */
	int64_t before_id;                  /* 0: from the newest */
	size_t limit;                       /* 1..STORE_LIST_MAX */
};
int store_vf_list(struct store *s, const struct store_vf_filter *f,
                  struct store_verification *rows, size_t *n);

/* ---- events -------------------------------------------------------------------------- */

struct store_event {
	int64_t id;
	int type;                           /* enum otp_event */
	char public_id[STORE_ID_MAX];       /* "" when the event has no verification */
	char app_id[STORE_ID_MAX];
	enum otp_channel channel;
	char target[OTP_TARGET_MAX + 1];
	char ip[STORE_IP_MAX + 1];
	char detail[STORE_ERROR_MAX];       /* provider, error or reason */
	int64_t created_at;
};

struct store_event_filter {
	const char *app_id;                 /* NULL: any */
	const char *public_id;              /* NULL: any */
	const char *target;                 /* NULL: any */
	int channel;                        /* -1: any */
	int type;                           /* 0: any */
	int64_t since, until;
	int64_t before_id;
	size_t limit;                       /* 1..STORE_LIST_MAX */
};
int store_events_list(struct store *s, const struct store_event_filter *f,
                      struct store_event *rows, size_t *n);

/* ---- send-limit rules ----------------------------------------------------------------- */

struct store_limits {
	size_t n;
	struct otp_limit_rule rules[2 * OTP_LIMIT_RULES_MAX]; /* in the order they were set */
};

/* Replace the rules of (app_id, channel) of each kind whose kinds[kind] is set, in one
 * transaction; rules[] holds the new rules of every replaced kind, in order. */
int store_rules_replace(struct store *s, const char *app_id, enum otp_channel ch,
                        const bool kinds[2], const struct otp_limit_rule *rules, size_t n);
int store_rules_get(struct store *s, const char *app_id, enum otp_channel ch,
                    struct store_limits *out);

/* ---- apps and keys --------------------------------------------------------------------- */

struct store_app {
	char id[STORE_ID_MAX];
	char name[STORE_NAME_MAX];
	char *settings;                     /* JSON text (core/app.h), malloc'd */
	int64_t created_at, updated_at;
};
void store_app_fini(struct store_app *a);

/* Insert (create true: OTP_ERR_CONFLICT when the id exists) or update name and settings
 * (create false: OTP_ERR_NOT_FOUND when absent; created_at is kept). */
int store_app_put(struct store *s, const struct store_app *a, bool create);
int store_app_get(struct store *s, const char *id, struct store_app *out);
/* Up to max apps ordered by id after `after` ("" from the first); *n written. */
int store_app_list(struct store *s, const char *after, struct store_app *rows, size_t max,
                   size_t *n);
/* Delete an app and its keys. OTP_ERR_NOT_FOUND when absent. */
int store_app_delete(struct store *s, const char *id);

struct store_key {
	char id[STORE_ID_MAX];              /* the public half of the credential */
	char app_id[STORE_ID_MAX];          /* "" : an admin key (every app) */
	uint8_t secret_hash[OTP_HASH_LEN];  /* otp_secret_hash() of the secret */
	char format[16];                    /* "plain", "twilio", ... */
	char name[STORE_NAME_MAX];
	int64_t created_at, revoked_at;     /* revoked_at 0: in force */
};
int store_key_create(struct store *s, const struct store_key *k);
int store_key_get(struct store *s, const char *id, struct store_key *out);
int store_key_list(struct store *s, const char *app_id, struct store_key *rows, size_t max,
                   size_t *n);
int store_key_revoke(struct store *s, const char *id, int64_t now);

/* ---- small settings of the installation ------------------------------------------------ */

/* A value under a name (e.g. the service key's fingerprint). OTP_ERR_NOT_FOUND. */
int store_meta_get(struct store *s, const char *name, char *value, size_t cap);
/* Set it only when absent: 0, or OTP_ERR_CONFLICT when it holds another value. */
int store_meta_put_once(struct store *s, const char *name, const char *value);

/* ---- housekeeping ---------------------------------------------------------------------- */

struct store_purge {
	int64_t now;
	int64_t ended_before;               /* ended verifications updated before: deleted */
	int64_t events_before;              /* older events: deleted (but sends still inside
	                                       the longest limit window of their channel) */
	int64_t jobs_before;                /* sent / dead / skipped jobs updated before */
	int64_t idem_before;                /* idempotency keys made before */
	int batch;                          /* at most this many expiries per call */
};
struct store_purge_counts {
	int64_t expired, deleted;           /* verifications marked expired, rows deleted */
};
/* Expire pending verifications past their expiry (erasing sealed codes, writing the
 * "expired" events), then delete what is past retention. */
int store_purge(struct store *s, const struct store_purge *p, struct store_purge_counts *out);

/* ---- the outbox ------------------------------------------------------------------------ */

/* States of an outbox job. Stored as these strings. */
#define STORE_JOB_PENDING "pending"   /* waiting for (next) delivery attempt */
#define STORE_JOB_SENDING "sending"   /* claimed by a worker until lease_until */
#define STORE_JOB_SENT "sent"         /* delivered; payload erased */
#define STORE_JOB_DEAD "dead"         /* gave up; payload erased */
#define STORE_JOB_SKIPPED "skipped"   /* DUMMY=true: never delivered, no payload */

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
	int64_t code_id;                    /* the verification's internal id */
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

/* Claim up to `max` jobs that are pending with next_at <= now, or sending with
 * lease_until < now (their worker died): set state sending, lease_until = lease_until,
 * attempts unchanged. Concurrency-safe across processes. *n_out = jobs written. */
int store_outbox_claim(struct store *s, int64_t now, int64_t lease_until,
                       struct store_job *jobs, size_t max, size_t *n_out);
/* Delivered: state sent, attempts+1, provider_msg_id, payload erased; a "sent"
 * event for its verification. */
int store_outbox_sent(struct store *s, int64_t id, int64_t now, const char *provider_msg_id);
/* Failed attempt to retry later: state pending, attempts+1, next_at, last_error. */
int store_outbox_retry(struct store *s, int64_t id, int64_t now, int64_t next_at,
                       const char *error);
/* Give up: state dead, attempts+1, last_error, payload erased; a "delivery_failed" event,
 * and a pending verification with no other job that may still deliver becomes failed
 * (not a compat one: the old service never knew, and its codes stay checkable). */
int store_outbox_dead(struct store *s, int64_t id, int64_t now, const char *error);
/* Put a claimed job back untouched (shutdown before it was tried).
 * sent, retry, dead and release act on a claimed (sending) job only: any other id
 * answers OTP_ERR_NOT_FOUND and changes nothing. */
int store_outbox_release(struct store *s, int64_t id);
/* The operators' listing, newest first. With `counts` (may be NULL) also the jobs per
 * state, read in the same snapshot as the rows, so the two agree. */
int store_outbox_list(struct store *s, const struct store_job_filter *f,
                      struct store_job_info *rows, size_t *n_out,
                      struct store_outbox_counts *counts);
int store_outbox_counts(struct store *s, struct store_outbox_counts *out);
/* Earliest next_at of a pending job (for the worker's sleep), or 0 when none. */
int store_outbox_next_due(struct store *s, int64_t *next_at);
/* Pending and sending jobs of every process, and the oldest due time (/metrics). */
int store_outbox_backlog(struct store *s, struct store_outbox_backlog *out);

/* ---- lifecycle ------------------------------------------------------------------------- */

/* "sqlite" or "postgresql". */
const char *store_name(const struct store *s);
/* A cheap round trip to the database: GET /ready. */
int store_ping(struct store *s);
void store_close(struct store *s);

/* Open (creating if needed) the SQLite database at `path`, WAL mode, synchronous FULL,
 * and apply pending migrations. `pool` = number of reader connections (>= 1). On failure
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
