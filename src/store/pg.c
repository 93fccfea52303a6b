/*
 * pg.c - the PostgreSQL store backend (backend.h): its SQL for each statement of store.c,
 * an executor that sends each step as one pipelined round trip, and a small pool of libpq
 * connections, for any number of otpd processes sharing one database.
 * It must not log, read the environment (libpq itself reads PGSSLMODE and friends from
 * it: we pass only host, port, dbname, user and password), or hold a code in clear.
 *
 * DESIGN
 * Pool: `n` connections guarded by `mu`. A caller takes a free one (waiting on `cv` when
 * all are busy), uses it alone for one transaction, and gives it back. A connection is
 * opened on first use and prepares each statement the first time it runs it. A
 * connection the server dropped (restart, pg_terminate_backend) shows CONNECTION_BAD
 * after the failed call: it is closed, and opened again on next use. When it broke
 * before COMMIT was sent the server rolled the transaction back, so the transaction
 * function runs once more on a fresh connection; once COMMIT was sent the outcome is
 * unknown and the caller gets OTP_ERR_STORE.
 *
 * Steps: a write transaction's first step is sent behind BEGIN, its last (SB_LAST) before
 * COMMIT, all in one pipeline, so a send or a check costs two round trips. A read of one
 * statement runs alone (its own snapshot); a read of several runs in one REPEATABLE READ
 * transaction, so they share a snapshot.
 *
 * Concurrency across processes: transactions run at READ COMMITTED, where every
 * statement sees what was committed before it started. store.c takes transaction-scoped
 * advisory locks (SQ_LOCK, SQ_LOCK2) before it counts the sends of limit windows, and
 * row locks (SQ_VF_LOCKED_*: FOR UPDATE) on the verifications a check, a resend or a
 * cancel will change, so racing requests are serialised exactly where they conflict and
 * each reads the previous one's commit. Outbox jobs are claimed with FOR UPDATE SKIP
 * LOCKED and a lease. A job's outcome and its event are one statement here (a CTE), so
 * SQ_EV_INSERT_FOR_JOB and SQ_VF_FAIL_IF_UNDELIVERABLE are empty. Migrations run at open
 * under an advisory lock, one transaction per file (store.c's runner).
 *
 * Durability: what a client was answered about commits with the server's
 * synchronous_commit. The outbox's own bookkeeping (SB_WRITE_RELAXED: claim, sent,
 * retry, dead, release) and the janitor's purge commit with synchronous_commit off, on
 * connections kept in that mode (pg_acquire prefers a connection already in the mode it
 * needs, so the SET is rare). Such a commit that a PostgreSQL crash loses (the last few
 * hundred milliseconds of them) only puts a job back to where a lease expiry would: it
 * is delivered again, at least once as always. It never loses an accepted code or its
 * job, which were committed durably by the send.
 */
#include "store/backend.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>
#include <sodium.h>

#include "core/num.h"
#include "store/migrations.h"

#define PG_POOL_MAX 256
#define PG_RECONNECT_MS 5000       /* one connection attempt, at least */
#define PG_RETRY_PAUSE_MS 250      /* between attempts while waiting for the server */
#define PG_STEP_MAX 80             /* statements of one step, with BEGIN and COMMIT */

/* ---- statements --------------------------------------------------------------------------- */

#define LIVE(now) "expire_at > " now " AND (status = 0 OR (status = 1 AND NOT consume))"
#define VF_SELECT "SELECT " SB_VF_COLS " FROM otpd_verification "
#define VF_CANDIDATES_ID \
	VF_SELECT "WHERE public_id = $2::text AND ($1::text IS NULL OR app_id = $1::text)"
#define VF_CANDIDATES_TARGET                                                              \
	VF_SELECT "WHERE app_id = $1::text AND target = $2::text AND channel IN ($3::smallint, " \
	"$4::smallint, $5::smallint, $6::smallint, $7::smallint) AND " LIVE("$8::bigint")     \
	" ORDER BY id DESC LIMIT $9::bigint"
/* compat's GET /target only (app_id '' spelt out, so its partial index serves a generic
 * plan; $1 is bound and checked) */
#define VF_CANDIDATES_LOOKUP                                                                \
	VF_SELECT "WHERE lookup_hash = $3::bytea AND app_id = '' AND $1::text = '' AND channel = " \
	"$2::smallint AND " LIVE("$4::bigint") " ORDER BY id DESC LIMIT 1"
/* A send's rule with the sends in its window - the verifications made in it and the
 * resends in it - each counted only up to rate + 1 (all otp_limits_decide needs). The
 * window starts at now - minutes * 60, as otp_limit_window_start(). */
#define SENT_COUNT(col, param)                                                                \
	"((SELECT count(*) FROM (SELECT 1 FROM otpd_verification v WHERE v." col " = " param       \
	" AND v.channel = $2::smallint AND v.app_id = $1::text AND v.created_at >= $5::bigint - "    \
	"r.minutes::bigint * 60 LIMIT r.rate::bigint + 1) t) + (SELECT count(*) FROM (SELECT 1 "   \
	"FROM otpd_event e WHERE e.type = 2 AND e." col " = " param " AND e.channel = $2::smallint " \
	"AND e.app_id = $1::text AND e.created_at >= $5::bigint - r.minutes::bigint * 60 LIMIT "    \
	"r.rate::bigint + 1) u))"
#define JOB_DONE(set, type, detail)                                                          \
	"WITH j AS (UPDATE otpd_outbox SET " set " WHERE id = $1::bigint AND state = 'sending' " \
	"RETURNING id, code_id, channel), e AS (INSERT INTO otpd_event (verification_id, "        \
	"public_id, app_id, type, channel, target, detail, created_at) SELECT v.id, v.public_id, " \
	"v.app_id, " type ", j.channel, v.cur_target, " detail ", $2::bigint FROM j JOIN "        \
	"otpd_verification v ON v.id = j.code_id)"
#define KEY_COLS \
	"id, coalesce(app_id, ''), secret_hash, format, name, created_at, coalesce(revoked_at, 0)"
#define APP_COLS "id, name, settings, created_at, updated_at"

static const char *const sql[SQ_COUNT] = {
	[SQ_PING] = "SELECT 1",
	[SQ_LOCK] = "SELECT pg_advisory_xact_lock($1::bigint)",
	/* (channel, target) always, then (channel, ip) when the send has an ip and the
	 * channel has ip rules: target list entries are evaluated left to right, and the
	 * scalar subquery takes the ip lock only when its WHERE holds */
	[SQ_LOCK2] =
		"SELECT pg_advisory_xact_lock($1::bigint), (SELECT pg_advisory_xact_lock($2::bigint) "
		"WHERE $2::bigint IS NOT NULL AND EXISTS (SELECT 1 FROM otpd_limit WHERE app_id = "
		"$3::text AND channel = $4::smallint AND kind = 1))",
	[SQ_RULES] = "SELECT kind, minutes, rate FROM otpd_limit WHERE app_id = $1::text AND "
	             "channel = $2::smallint ORDER BY position LIMIT 64",
	/* a statement of its own, run after the locks: at READ COMMITTED its snapshot then
	 * includes the previous lock holder's commit */
	[SQ_RULES_COUNTED] =
		"SELECT r.kind, r.minutes, r.rate, CASE WHEN r.kind = 0 THEN " SENT_COUNT("target", "$3::text")
		" WHEN $4::text IS NULL THEN 0 ELSE " SENT_COUNT("ip", "$4::text") " END FROM "
		"(SELECT kind, minutes, rate, position FROM otpd_limit WHERE app_id = $1::text AND "
		"channel = $2::smallint ORDER BY position LIMIT 64) r ORDER BY r.position",
	[SQ_RULES_DELETE] = "DELETE FROM otpd_limit WHERE app_id = $1::text AND channel = "
	                    "$2::smallint AND kind = $3::smallint",
	[SQ_RULES_INSERT] =
		"INSERT INTO otpd_limit (app_id, channel, position, kind, minutes, rate) SELECT "
		"$1::text, $2::smallint, coalesce(max(position), 0) + 1, $3::smallint, $4::integer, "
		"$5::integer FROM otpd_limit WHERE app_id = $1::text AND channel = $2::smallint",
	[SQ_VF_INSERT] =
		"INSERT INTO otpd_verification (public_id, app_id, channel, target, cur_channel, "
		"cur_target, status, code_hash, lookup_hash, sealed_code, ip, attempts, max_attempts, "
		"sends, max_sends, resend_cooldown, consume, tmpl, lang, sender, fallback, created_at, "
		"updated_at, expire_at, last_sent_at) VALUES ($1::text, $2::text, $3::smallint, "
		"$4::text, $3::smallint, $4::text, 0, $5::bytea, $6::bytea, $7::bytea, $8::text, 0, "
		"$9::integer, 1, $10::integer, $11::integer, $12::integer <> 0, $13::text, $14::text, "
		"$15::text, $16::text, $17::bigint, $17::bigint, $18::bigint, $17::bigint) "
		"RETURNING id",
	[SQ_VF_GET] = VF_SELECT "WHERE public_id = $2::text AND app_id = $1::text",
	[SQ_VF_GET_ANY] = VF_SELECT "WHERE public_id = $1::text",
	[SQ_VF_CANDIDATES_ID] = VF_CANDIDATES_ID,
	[SQ_VF_CANDIDATES_TARGET] = VF_CANDIDATES_TARGET,
	[SQ_VF_CANDIDATES_LOOKUP] = VF_CANDIDATES_LOOKUP,
	[SQ_VF_LOCKED_ID] = VF_CANDIDATES_ID " FOR UPDATE",
	[SQ_VF_LOCKED_TARGET] = VF_CANDIDATES_TARGET " FOR UPDATE",
	[SQ_VF_LOCKED_LOOKUP] = VF_CANDIDATES_LOOKUP " FOR UPDATE",
	[SQ_VF_SET_CHECKED] =
		"UPDATE otpd_verification SET attempts = $2::integer, status = $3::smallint, "
		"updated_at = $4::bigint, sealed_code = CASE WHEN $5::integer <> 0 THEN NULL ELSE "
		"sealed_code END WHERE id = $1::bigint",
	[SQ_VF_RESENT] =
		"UPDATE otpd_verification SET sends = sends + 1, cur_channel = $2::smallint, "
		"cur_target = $3::text, fallback = $4::text, last_sent_at = $5::bigint, updated_at = "
		"$5::bigint WHERE id = $1::bigint RETURNING " SB_VF_COLS,
	[SQ_VF_CANCEL] =
		"UPDATE otpd_verification SET status = 3, sealed_code = NULL, updated_at = $2::bigint "
		"WHERE id = $1::bigint RETURNING " SB_VF_COLS,
	[SQ_VF_MATERIAL] = "SELECT sealed_code, tmpl FROM otpd_verification WHERE public_id = "
	                   "$2::text AND app_id = $1::text",
	[SQ_VF_MATERIAL_ANY] = "SELECT sealed_code, tmpl FROM otpd_verification WHERE public_id = "
	                       "$1::text",
	[SQ_VF_SEALED_LATEST] =
		"SELECT sealed_code FROM otpd_verification WHERE app_id = $1::text AND target = "
		"$2::text AND " LIVE("$3::bigint") " ORDER BY id DESC LIMIT 1",
	[SQ_VF_LIST] =
		VF_SELECT "WHERE ($1::text IS NULL OR app_id = $1::text) AND ($2::text IS NULL OR "
		"target = $2::text) AND ($3::integer < 0 OR channel = $3::integer) AND ($4::integer < 0 "
		"OR status = $4::integer) AND ($5::bigint = 0 OR created_at >= $5::bigint) AND "
		"($6::bigint = 0 OR created_at < $6::bigint) AND ($7::bigint = 0 OR id < $7::bigint) "
		"ORDER BY id DESC LIMIT $8::bigint",
	[SQ_VF_FAIL_IF_UNDELIVERABLE] = NULL, /* in SQ_JOB_DEAD */
	[SQ_EV_INSERT] =
		"INSERT INTO otpd_event (verification_id, public_id, app_id, type, channel, target, "
		"ip, detail, created_at) VALUES ((SELECT id FROM otpd_verification WHERE public_id = "
		"$1::text), $1::text, $2::text, $3::smallint, $4::smallint, $5::text, $6::text, "
		"$7::text, $8::bigint)",
	[SQ_EV_INSERT_FOR_JOB] = NULL, /* in SQ_JOB_SENT and SQ_JOB_DEAD */
	[SQ_EV_LIST] =
		"SELECT id, type, public_id, app_id, channel, target, ip, detail, created_at FROM "
		"otpd_event WHERE ($1::text IS NULL OR app_id = $1::text) AND ($2::text IS NULL OR "
		"public_id = $2::text) AND ($3::text IS NULL OR target = $3::text) AND ($4::integer < 0 "
		"OR channel = $4::integer) AND ($5::integer = 0 OR type = $5::integer) AND "
		"($6::bigint = 0 OR created_at >= $6::bigint) AND ($7::bigint = 0 OR created_at < "
		"$7::bigint) AND ($8::bigint = 0 OR id < $8::bigint) ORDER BY id DESC LIMIT $9::bigint",
	[SQ_IDEM_GET] = "SELECT fingerprint, public_id FROM otpd_idem WHERE app_id = $1::text AND "
	                "key = $2::text AND created_at >= $3::bigint",
	[SQ_IDEM_INSERT] =
		"INSERT INTO otpd_idem (app_id, key, fingerprint, public_id, created_at) VALUES "
		"($1::text, $2::text, $3::bytea, $4::text, $5::bigint) ON CONFLICT (app_id, key) DO "
		"UPDATE SET fingerprint = EXCLUDED.fingerprint, public_id = EXCLUDED.public_id, "
		"created_at = EXCLUDED.created_at",
	[SQ_APP_INSERT] = "INSERT INTO otpd_app (id, name, settings, created_at, updated_at) "
	                  "VALUES ($1::text, $2::text, $3::text, $4::bigint, $4::bigint)",
	[SQ_APP_UPDATE] = "UPDATE otpd_app SET name = $2::text, settings = $3::text, updated_at = "
	                  "$4::bigint WHERE id = $1::text",
	[SQ_APP_GET] = "SELECT " APP_COLS " FROM otpd_app WHERE id = $1::text",
	[SQ_APP_LIST] = "SELECT " APP_COLS " FROM otpd_app WHERE id > $1::text ORDER BY id "
	                "LIMIT $2::bigint",
	[SQ_APP_DELETE] = "DELETE FROM otpd_app WHERE id = $1::text RETURNING id",
	[SQ_KEY_DELETE_APP] = "DELETE FROM otpd_api_key WHERE app_id = $1::text",
	[SQ_KEY_INSERT] = "INSERT INTO otpd_api_key (id, app_id, secret_hash, format, name, "
	                  "created_at) VALUES ($1::text, $2::text, $3::bytea, $4::text, $5::text, "
	                  "$6::bigint)",
	[SQ_KEY_GET] = "SELECT " KEY_COLS " FROM otpd_api_key WHERE id = $1::text",
	[SQ_KEY_LIST] = "SELECT " KEY_COLS " FROM otpd_api_key WHERE app_id IS NOT DISTINCT FROM "
	                "$1::text ORDER BY id LIMIT $2::bigint",
	[SQ_KEY_LIST_ALL] = "SELECT " KEY_COLS " FROM otpd_api_key ORDER BY id LIMIT $1::bigint",
	[SQ_KEY_REVOKE] = "UPDATE otpd_api_key SET revoked_at = coalesce(revoked_at, $2::bigint) "
	                  "WHERE id = $1::text RETURNING id",
	[SQ_META_GET] = "SELECT value FROM otpd_meta WHERE name = $1::text",
	[SQ_META_INSERT] = "INSERT INTO otpd_meta (name, value) VALUES ($1::text, $2::text)",
	/* SKIP LOCKED: a verification a check holds is not worth waiting for */
	[SQ_PURGE_EXPIRE] =
		"UPDATE otpd_verification v SET status = 2, sealed_code = NULL, updated_at = $1::bigint "
		"FROM (SELECT id FROM otpd_verification WHERE status = 0 AND expire_at <= $1::bigint "
		"LIMIT $2::bigint FOR UPDATE SKIP LOCKED) d WHERE v.id = d.id RETURNING v.public_id, "
		"v.app_id, v.cur_channel, v.cur_target",
	[SQ_PURGE_SEALED] = "UPDATE otpd_verification SET sealed_code = NULL WHERE sealed_code IS "
	                    "NOT NULL AND expire_at <= $1::bigint",
	/* a verification is also a send that limits count: keep it while it may be inside
	 * the longest window of its channel */
	[SQ_PURGE_VERIFICATIONS] =
		"WITH w AS (SELECT app_id, channel, max(minutes)::bigint * 60 AS span FROM otpd_limit "
		"GROUP BY app_id, channel) DELETE FROM otpd_verification WHERE id IN (SELECT v.id FROM "
		"otpd_verification v LEFT JOIN w ON w.app_id = v.app_id AND w.channel = v.channel "
		"WHERE v.status IN (1, 2, 3, 4, 5) AND v.expire_at < $1::bigint AND v.updated_at < "
		"$1::bigint AND v.created_at < $2::bigint - coalesce(w.span, 0) LIMIT $3::bigint)",
	/* so is a resend */
	[SQ_PURGE_EVENTS] =
		"WITH w AS (SELECT app_id, channel, max(minutes)::bigint * 60 AS span FROM otpd_limit "
		"GROUP BY app_id, channel), b AS (SELECT coalesce((SELECT id FROM otpd_event WHERE "
		"created_at >= $1::bigint ORDER BY id LIMIT 1), (SELECT max(id) + 1 FROM otpd_event)) "
		"AS id) DELETE FROM otpd_event WHERE id IN (SELECT e.id FROM otpd_event e LEFT JOIN w "
		"ON w.app_id = e.app_id AND w.channel = e.channel WHERE e.id < (SELECT id FROM b) AND "
		"e.created_at < $1::bigint AND NOT (e.type = 2 AND e.created_at >= $2::bigint - "
		"coalesce(w.span, 0)) ORDER BY e.id LIMIT $3::bigint)",
	[SQ_PURGE_JOBS] =
		"DELETE FROM otpd_outbox WHERE id IN (SELECT id FROM otpd_outbox WHERE state IN "
		"('sent', 'dead', 'skipped') AND updated_at < $1::bigint LIMIT $2::bigint)",
	[SQ_PURGE_IDEM] =
		"DELETE FROM otpd_idem WHERE (app_id, key) IN (SELECT app_id, key FROM otpd_idem WHERE "
		"created_at < $1::bigint LIMIT $2::bigint)",
	[SQ_JOB_INSERT] =
		"INSERT INTO otpd_outbox (code_id, channel, provider, state, payload, attempts, "
		"next_at, request_id, created_at, updated_at) VALUES ((SELECT id FROM "
		"otpd_verification WHERE public_id = $1::text), $2::smallint, $3::text, $4::text, "
		"$5::bytea, 0, $6::bigint, $7::text, $6::bigint, $6::bigint) RETURNING id",
	/* Jobs whose lease ran out (their worker died) first, then due ones, each read in
	 * index order with a LIMIT: see sql/pg/0002. Rows locked by the CTEs but past the
	 * final LIMIT are unlocked at commit, untouched. */
	[SQ_JOB_CLAIM] =
		"WITH lapsed AS (SELECT id, 0 AS pri, lease_until AS at FROM otpd_outbox "
		"WHERE state = 'sending' AND lease_until < $1::bigint "
		"ORDER BY lease_until, id LIMIT $3::bigint FOR UPDATE SKIP LOCKED), "
		"due AS (SELECT id, 1 AS pri, next_at AS at FROM otpd_outbox "
		"WHERE state = 'pending' AND next_at <= $1::bigint "
		"ORDER BY next_at, id LIMIT $3::bigint FOR UPDATE SKIP LOCKED), "
		"pick AS (SELECT id FROM (SELECT * FROM lapsed UNION ALL SELECT * FROM due) u "
		"ORDER BY pri, at, id LIMIT $3::bigint) "
		"UPDATE otpd_outbox o SET state = 'sending', lease_until = $2::bigint, "
		"updated_at = $1::bigint FROM pick WHERE o.id = pick.id "
		"RETURNING o.id, o.channel, o.provider, o.payload, o.attempts, o.created_at, "
		"o.lease_until",
	[SQ_JOB_SENT] =
		JOB_DONE("state = 'sent', attempts = attempts + 1, provider_msg_id = $3::text, "
		         "payload = NULL, lease_until = NULL, updated_at = $2::bigint", "3", "$3::text")
		" SELECT id FROM j",
	[SQ_JOB_RETRY] =
		"UPDATE otpd_outbox SET state = 'pending', attempts = attempts + 1, next_at = "
		"$3::bigint, last_error = $4::text, lease_until = NULL, updated_at = $2::bigint "
		"WHERE id = $1::bigint AND state = 'sending' RETURNING id",
	/* a pending verification with no other job that may still deliver becomes failed */
	[SQ_JOB_DEAD] =
		JOB_DONE("state = 'dead', attempts = attempts + 1, last_error = $3::text, payload = "
		         "NULL, lease_until = NULL, updated_at = $2::bigint", "4", "$3::text")
		", f AS (UPDATE otpd_verification v SET status = 5, sealed_code = NULL, updated_at = "
		"$2::bigint FROM j WHERE v.id = j.code_id AND v.status = 0 AND v.app_id <> '' AND NOT "
		"EXISTS (SELECT 1 "
		"FROM otpd_outbox o WHERE o.code_id = v.id AND o.id <> j.id AND o.state IN "
		"('pending', 'sending', 'sent', 'skipped'))) SELECT id FROM j",
	[SQ_JOB_RELEASE] =
		"UPDATE otpd_outbox SET state = 'pending', lease_until = NULL WHERE id = $1::bigint "
		"AND state = 'sending' RETURNING id",
	[SQ_JOB_LIST] =
		"SELECT id, code_id, channel, provider, state, attempts, created_at, updated_at, "
		"next_at, last_error, provider_msg_id FROM otpd_outbox "
		"WHERE ($1::text IS NULL OR state = $1::text) "
		"AND ($2::integer < 0 OR channel = $2::integer) "
		"AND ($3::text IS NULL OR provider = $3::text) "
		"AND ($4::bigint = 0 OR id < $4::bigint) "
		"ORDER BY id DESC LIMIT $5::bigint",
	[SQ_JOB_COUNTS] = "SELECT state, count(*) FROM otpd_outbox GROUP BY state",
	[SQ_JOB_NEXT_DUE] = "SELECT min(next_at) FROM otpd_outbox WHERE state = 'pending'",
	/* every process's jobs: through the pending and sending partial indexes only */
	[SQ_JOB_BACKLOG] =
		"SELECT (SELECT count(*) FROM otpd_outbox WHERE state = 'pending'), "
		"(SELECT count(*) FROM otpd_outbox WHERE state = 'sending'), "
		"(SELECT min(next_at) FROM otpd_outbox WHERE state = 'pending')",
	/* pg_advisory_xact_lock(int4, int4) key of the migration runner: "otpd", 1. The
	 * one-argument bigint locks of the operations live in a separate key space. */
	[SQ_MIGRATE_LOCK] = "SELECT pg_advisory_xact_lock(1869901924, 1)",
	[SQ_MIGRATE_VERSION] = "SELECT coalesce(max(version), 0) FROM otpd_schema_migrations",
	[SQ_MIGRATE_NAME] = "SELECT name FROM otpd_schema_migrations WHERE version = $1::integer",
	[SQ_MIGRATE_RECORD] = "INSERT INTO otpd_schema_migrations (version, name, applied_at) "
	                      "VALUES ($1::integer, $2::text, to_timestamp($3::bigint))",
};

/* ---- the pool ----------------------------------------------------------------------------- */

struct pg_conn {
	PGconn *conn;          /* NULL until first use or after a failure */
	bool prepared[SQ_COUNT];
	bool busy;             /* taken by a caller (guarded by pg_store.mu) */
	bool committing;       /* COMMIT was sent: no retry */
	bool relaxed;          /* session runs with synchronous_commit off */
};

struct pg_store {
	struct store base;     /* first: the handle callers hold */
	pthread_mutex_t mu;    /* guards conns[].busy */
	pthread_cond_t cv;     /* signalled when a connection is given back */
	int n;
	struct pg_conn *conns;
	/* connection parameters, owned */
	char *host, *real_host, *port, *database, *user, *password, *schema;
};

struct pg_tx {
	struct sb_tx base;
	struct pg_conn *c;
	bool began;            /* BEGIN was sent */
	bool ended;            /* COMMIT was sent with a step */
};

static int64_t pg_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void pg_pause_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

/* Write "<what>: <libpq's message without its trailing newline>" into err. */
static void pg_errf(char *err, size_t cap, const char *what, const char *msg)
{
	char clean[512];
	if (err == NULL || cap == 0)
		return;
	sb_text_clean(clean, sizeof clean, msg ? msg : "");
	size_t len = strlen(clean);
	while (len > 0 && (clean[len - 1] == '\n' || clean[len - 1] == ' '))
		clean[--len] = '\0';
	for (size_t i = 0; i < len; i++) {
		if (clean[i] == '\n' || clean[i] == '\t')
			clean[i] = ' ';
	}
	snprintf(err, cap, "postgresql: %s%s%s", what, len ? ": " : "", clean);
}

/* A failed query's reason (the server's message, or the connection's). */
static const char *pg_result_error(PGconn *c, const PGresult *r)
{
	const char *m = r ? PQresultErrorMessage(r) : NULL;
	return m && *m ? m : PQerrorMessage(c);
}

/* Notices ("relation ... already exists, skipping") are not ours to print. */
static void pg_notice_ignore(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

/*
 * Open one connection to `host`/`dbname` with the stored port, user and password, giving
 * up at `deadline` (monotonic ms). libpq adds what the environment says (PGSSLMODE,
 * PGSSLROOTCERT, PGAPPNAME, ...). NULL on failure with the reason in err.
 */
static PGconn *pg_connect(const struct pg_store *s, const char *host, const char *dbname,
                          int64_t deadline, char *err, size_t cap)
{
	const char *keys[] = {"host", "port", "dbname", "user", "password",
	                      "fallback_application_name", "client_encoding", NULL};
	const char *vals[] = {host, s->port, dbname, s->user, s->password, "otpd", "UTF8",
	                      NULL};
	PGconn *c = PQconnectStartParams(keys, vals, 0);
	if (c == NULL) {
		pg_errf(err, cap, "connect", "out of memory");
		return NULL;
	}
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	if (PQstatus(c) == CONNECTION_BAD)
		st = PGRES_POLLING_FAILED;
	while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
		int64_t left = deadline - pg_mono_ms();
		if (left <= 0) {
			pg_errf(err, cap, "connect", "timed out");
			PQfinish(c);
			return NULL;
		}
		struct pollfd pfd = {.fd = PQsocket(c),
		                     .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT};
		int rc = poll(&pfd, 1, left > 1000 ? 1000 : (int)left);
		if (rc < 0 && errno != EINTR) {
			pg_errf(err, cap, "connect", strerror(errno));
			PQfinish(c);
			return NULL;
		}
		if (rc > 0)
			st = PQconnectPoll(c);
	}
	if (st == PGRES_POLLING_FAILED || PQstatus(c) != CONNECTION_OK) {
		pg_errf(err, cap, "connect", PQerrorMessage(c));
		PQfinish(c);
		return NULL;
	}
	PQsetNoticeProcessor(c, pg_notice_ignore, NULL);
	return c;
}

/* Run a statement without parameters outside the prepared set (session setup, schema
 * creation). 0 or OTP_ERR_STORE with the reason in err. */
static int pg_simple(PGconn *c, const char *text, char *err, size_t cap)
{
	PGresult *r = PQexec(c, text);
	ExecStatusType st = PQresultStatus(r);
	int rc = 0;
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		pg_errf(err, cap, "query", pg_result_error(c, r));
		rc = OTP_ERR_STORE;
	}
	PQclear(r);
	return rc;
}

/*
 * Set a new session up, in one round trip: the quoted search_path when a schema is
 * configured, and generic plans for our prepared statements. With the default plan
 * cache mode PostgreSQL may plan a statement afresh on every execution when it guesses
 * a custom plan is cheaper; for the send's rules-and-counts statement that planning
 * cost more than the statement (a third of the sends per second). Every statement here
 * looks rows up by equality on indexed columns, where a generic plan is as good.
 * plan_cache_mode exists from PostgreSQL 12 on; older servers keep their default.
 */
static int pg_session_setup(const struct pg_store *s, PGconn *c, char *err, size_t cap)
{
	char path[320] = "";
	if (s->schema != NULL) {
		char *ident = PQescapeIdentifier(c, s->schema, strlen(s->schema));
		if (ident == NULL) {
			pg_errf(err, cap, "schema name", PQerrorMessage(c));
			return OTP_ERR_STORE;
		}
		int len = snprintf(path, sizeof path, "SET search_path TO %s; ", ident);
		PQfreemem(ident);
		if (len < 0 || (size_t)len >= sizeof path) {
			pg_errf(err, cap, "schema name", "too long");
			return OTP_ERR_INVALID;
		}
	}
	char text[512];
	snprintf(text, sizeof text, "%sSELECT set_config('plan_cache_mode', 'force_generic_plan', "
	         "false) WHERE current_setting('server_version_num')::integer >= 120000", path);
	return pg_simple(c, text, err, cap);
}

static void pg_disconnect(struct pg_conn *c)
{
	PQfinish(c->conn);
	c->conn = NULL;
	memset(c->prepared, 0, sizeof c->prepared);
	c->relaxed = false;
}

/* Make c usable: (re)connect to `host` and set the session up when needed. */
static int pg_conn_ready(const struct pg_store *s, struct pg_conn *c, const char *host,
                         int64_t deadline, char *err, size_t cap)
{
	if (c->conn != NULL && PQstatus(c->conn) == CONNECTION_OK &&
	    PQtransactionStatus(c->conn) == PQTRANS_IDLE)
		return 0;
	pg_disconnect(c);
	PGconn *conn = pg_connect(s, host, s->database, deadline, err, cap);
	if (conn == NULL)
		return OTP_ERR_STORE;
	int rc = pg_session_setup(s, conn, err, cap);
	if (rc != 0) {
		PQfinish(conn);
		return rc;
	}
	c->conn = conn;
	return 0;
}

/* How well a free connection suits `mode`: open and in the mode already, open, closed. */
static int pg_fit(const struct pg_conn *c, enum sb_mode mode)
{
	if (c->conn == NULL)
		return 0;
	if (mode == SB_READ || c->relaxed == (mode == SB_WRITE_RELAXED))
		return 2;
	return 1;
}

static struct pg_conn *pg_acquire(struct pg_store *s, enum sb_mode mode)
{
	struct pg_conn *got = NULL;
	pthread_mutex_lock(&s->mu);
	for (;;) {
		int best = -1;
		for (int i = 0; i < s->n && best < 2; i++) {
			struct pg_conn *c = &s->conns[i];
			int fit = c->busy ? -1 : pg_fit(c, mode);
			if (fit > best) {
				best = fit;
				got = c;
			}
		}
		if (got != NULL)
			break;
		pthread_cond_wait(&s->cv, &s->mu);
	}
	got->busy = true;
	pthread_mutex_unlock(&s->mu);
	return got;
}

/* Put the session in the commit mode `mode` needs. RESET, not "on": a durable commit
 * keeps whatever the server, database or role sets (remote_apply with replicas, ...). */
static int pg_set_mode(struct pg_conn *c, enum sb_mode mode)
{
	if (mode == SB_READ || c->relaxed == (mode == SB_WRITE_RELAXED))
		return 0;
	int rc = pg_simple(c->conn, mode == SB_WRITE_RELAXED ? "SET synchronous_commit TO off"
	                                                     : "RESET synchronous_commit", NULL, 0);
	if (rc == 0)
		c->relaxed = mode == SB_WRITE_RELAXED;
	return rc;
}

static void pg_release(struct pg_store *s, struct pg_conn *c)
{
	pthread_mutex_lock(&s->mu);
	c->busy = false;
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

static bool pg_broken(const struct pg_conn *c)
{
	return c->conn == NULL || PQstatus(c->conn) != CONNECTION_OK;
}

/* ---- the executor ------------------------------------------------------------------------- */

static int pg_prepare(struct pg_conn *c, enum sb_sql id)
{
	if (c->prepared[id])
		return 0;
	char name[32];
	snprintf(name, sizeof name, "otpd_%d", (int)id);
	PGresult *r = PQprepare(c->conn, name, sql[id], 0, NULL);
	bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
	PQclear(r);
	if (!ok)
		return OTP_ERR_STORE;
	c->prepared[id] = true;
	return 0;
}

/* Parameters as libpq takes them: integers as text, blobs binary. */
struct pg_params {
	const char *v[SB_ARGS_MAX];
	int len[SB_ARGS_MAX];
	int fmt[SB_ARGS_MAX];
	char num[SB_ARGS_MAX][24];
};

static void pg_params_of(const struct sb_stmt *st, struct pg_params *p)
{
	for (int i = 0; i < st->n && i < SB_ARGS_MAX; i++) {
		const struct sb_val *a = &st->a[i];
		p->len[i] = 0;
		p->fmt[i] = 0;
		switch (a->t) {
		case SB_NULL:
			p->v[i] = NULL;
			break;
		case SB_INT:
			snprintf(p->num[i], sizeof p->num[i], "%" PRId64, a->i);
			p->v[i] = p->num[i];
			break;
		case SB_TEXT:
			p->v[i] = a->p;
			break;
		case SB_BLOB:
			p->v[i] = a->p;
			p->len[i] = (int)a->len;
			p->fmt[i] = 1;
			break;
		}
	}
}

/* Type OIDs of PostgreSQL's catalog (pg_type.dat): they never change. */
#define OID_BOOL 16
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_OID 26

/* Copy a text-format result into st's cells, in the transaction's arena. */
static int pg_collect(struct pg_tx *tx, const PGresult *r, struct sb_stmt *st)
{
	const char *tuples = PQcmdTuples((PGresult *)r);
	int64_t changed = 0;
	if (tuples != NULL && *tuples != '\0')
		otp_parse_i64(tuples, 0, INT64_MAX, &changed);
	st->changes = changed;
	int rows = PQntuples(r), cols = PQnfields(r);
	st->rows = (size_t)rows;
	st->cols = (size_t)cols;
	st->cell = NULL;
	if (rows == 0 || cols == 0)
		return 0;
	st->cell = sb_alloc(&tx->base.arena, (size_t)rows * (size_t)cols * sizeof *st->cell);
	if (st->cell == NULL)
		return OTP_ERR_NOMEM;
	for (int c = 0; c < cols; c++) {
		Oid type = PQftype(r, c);
		for (int i = 0; i < rows; i++) {
			struct sb_val *v = &st->cell[(size_t)i * (size_t)cols + (size_t)c];
			if (PQgetisnull(r, i, c)) {
				*v = (struct sb_val){.t = SB_NULL};
				continue;
			}
			const char *text = PQgetvalue(r, i, c);
			if (type == OID_BOOL) {
				*v = (struct sb_val){.t = SB_INT, .i = text[0] == 't'};
			} else if (type == OID_INT8 || type == OID_INT2 || type == OID_INT4 ||
			           type == OID_OID) {
				int64_t n = 0;
				if (otp_parse_i64(text, INT64_MIN, INT64_MAX, &n) != 0)
					return OTP_ERR_STORE;
				*v = (struct sb_val){.t = SB_INT, .i = n};
			} else if (type == OID_BYTEA) {
				size_t n = 0;
				unsigned char *raw = PQunescapeBytea((const unsigned char *)text, &n);
				if (raw == NULL)
					return OTP_ERR_NOMEM;
				uint8_t *copy = sb_alloc(&tx->base.arena, n + 1);
				if (copy != NULL) {
					memcpy(copy, raw, n);
					copy[n] = 0;
				}
				sodium_memzero(raw, n);
				PQfreemem(raw);
				if (copy == NULL)
					return OTP_ERR_NOMEM;
				*v = (struct sb_val){.t = SB_BLOB, .p = copy, .len = n};
			} else {
				size_t n = (size_t)PQgetlength(r, i, c);
				char *copy = sb_alloc(&tx->base.arena, n + 1);
				if (copy == NULL)
					return OTP_ERR_NOMEM;
				memcpy(copy, text, n);
				copy[n] = '\0';
				*v = (struct sb_val){.t = SB_TEXT, .p = copy, .len = n};
			}
		}
	}
	return 0;
}

/*
 * Send the statements of a step (with BEGIN before the first step of a transaction and
 * COMMIT after its last, when they apply) as one pipeline, and collect each result.
 * A connection left in an unknown state is closed, for pg_run to see.
 */
static int pg_exec(struct sb_tx *base, struct sb_stmt *st, size_t n, unsigned flags)
{
	struct pg_tx *tx = (struct pg_tx *)base;
	struct pg_conn *c = tx->c;
	const char *begin = NULL;
	bool commit = false;
	if (n + 2 > PG_STEP_MAX)
		return OTP_ERR_INTERNAL;
	if (tx->ended)
		return OTP_ERR_INTERNAL; /* a step after the last one is a bug */
	if (!tx->began) {
		if (base->mode != SB_READ)
			begin = "BEGIN";
		else if (!((flags & SB_LAST) && n == 1))
			begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
	}
	if ((flags & SB_LAST) && (tx->began || begin != NULL))
		commit = true;
	for (size_t i = 0; i < n; i++) {
		st[i].rows = st[i].cols = 0;
		st[i].cell = NULL;
		st[i].changes = 0;
		if ((unsigned)st[i].sql >= SQ_COUNT)
			return OTP_ERR_INTERNAL;
		if (sql[st[i].sql] != NULL && pg_prepare(c, st[i].sql) != 0)
			return OTP_ERR_STORE;
	}
	bool any = begin != NULL || commit;
	for (size_t i = 0; i < n && !any; i++)
		any = sql[st[i].sql] != NULL;
	if (!any)
		return 0;
	if (PQenterPipelineMode(c->conn) != 1)
		return OTP_ERR_STORE;
	int rc = 0;
	/* what each result in the pipeline belongs to: -1 BEGIN, -2 COMMIT, else st[i] */
	int owner[PG_STEP_MAX];
	size_t sent = 0;
	if (begin != NULL) {
		if (PQsendQueryParams(c->conn, begin, 0, NULL, NULL, NULL, NULL, 0) != 1)
			rc = OTP_ERR_STORE;
		owner[sent++] = -1;
		tx->began = true;
	}
	for (size_t i = 0; i < n && rc == 0; i++) {
		if (sql[st[i].sql] == NULL)
			continue;
		struct pg_params p;
		char name[32];
		pg_params_of(&st[i], &p);
		snprintf(name, sizeof name, "otpd_%d", (int)st[i].sql);
		if (PQsendQueryPrepared(c->conn, name, st[i].n, p.v, p.len, p.fmt, 0) != 1)
			rc = OTP_ERR_STORE;
		owner[sent++] = (int)i;
	}
	if (rc == 0 && commit) {
		c->committing = true;
		tx->ended = true;
		if (PQsendQueryParams(c->conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) != 1)
			rc = OTP_ERR_STORE;
		owner[sent++] = -2;
	}
	if (PQpipelineSync(c->conn) != 1) {
		pg_disconnect(c);
		return OTP_ERR_STORE;
	}
	/* Each statement's result is followed by a NULL, then comes the sync. Two NULLs in a
	 * row mean the connection failed. */
	size_t got = 0;
	bool synced = false;
	int nulls = 0;
	while (!synced && nulls < 2) {
		PGresult *r = PQgetResult(c->conn);
		if (r == NULL) {
			nulls++;
			continue;
		}
		nulls = 0;
		ExecStatusType status = PQresultStatus(r);
		if (status == PGRES_PIPELINE_SYNC) {
			synced = true;
		} else if (got < sent) {
			int who = owner[got++];
			if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK)
				rc = OTP_ERR_STORE;
			else if (who == -2 && strcmp(PQcmdStatus(r), "COMMIT") != 0)
				rc = OTP_ERR_STORE; /* COMMIT of a failed transaction "succeeds" as ROLLBACK */
			else if (who >= 0 && rc == 0)
				rc = pg_collect(tx, r, &st[who]);
		} else {
			rc = OTP_ERR_STORE;
		}
		PQclear(r);
	}
	if (!synced || got != sent)
		rc = OTP_ERR_STORE;
	if (!synced || PQexitPipelineMode(c->conn) != 1)
		pg_disconnect(c);
	return rc;
}

static int pg_script(struct sb_tx *base, const char *text, char *err, size_t cap)
{
	struct pg_tx *tx = (struct pg_tx *)base;
	if (!tx->began) {
		if (pg_simple(tx->c->conn, "BEGIN", err, cap) != 0)
			return OTP_ERR_STORE;
		tx->began = true;
	}
	PGresult *r = PQexec(tx->c->conn, text);
	ExecStatusType st = PQresultStatus(r);
	int rc = 0;
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		pg_errf(err, cap, "migration", pg_result_error(tx->c->conn, r));
		rc = OTP_ERR_STORE;
	}
	PQclear(r);
	return rc;
}

/*
 * Run fn (one transaction) on a pooled connection. See DESIGN for the retry: the
 * function runs again on a fresh connection when the old one broke before COMMIT was
 * sent. A transaction the function left open (it returned before a last step) is
 * committed when it returned 0, rolled back otherwise.
 */
static int pg_run(struct store *base, enum sb_mode mode, sb_txn_fn fn, void *arg)
{
	struct pg_store *s = (struct pg_store *)base;
	struct pg_conn *c = pg_acquire(s, mode);
	const char *host = s->host;
	struct pg_tx tx;
	int rc = 0;
	for (int attempt = 0; attempt < 2; attempt++) {
		memset(&tx, 0, sizeof tx);
		tx.base.s = base;
		tx.base.mode = mode;
		tx.c = c;
		rc = pg_conn_ready(s, c, host, pg_mono_ms() + PG_RECONNECT_MS, NULL, 0);
		if (rc != 0)
			break;
		rc = pg_set_mode(c, mode);
		if (rc != 0 && pg_broken(c)) {
			/* the first call after a server restart finds the old socket dead */
			pg_disconnect(c);
			continue;
		}
		if (rc != 0)
			break;
		c->committing = false;
		rc = fn(&tx.base, arg);
		if (rc == 0 && tx.began && !tx.ended && !pg_broken(c)) {
			c->committing = true;
			PGresult *r = PQexec(c->conn, "COMMIT");
			if (PQresultStatus(r) != PGRES_COMMAND_OK || strcmp(PQcmdStatus(r), "COMMIT") != 0)
				rc = OTP_ERR_STORE;
			PQclear(r);
		}
		if (rc == 0 || !pg_broken(c) || c->committing)
			break;
		/* the connection died before anything could commit: try again afresh */
		pg_disconnect(c);
		sb_arena_reset(&tx.base.arena);
	}
	if (c->conn != NULL && !pg_broken(c) && PQtransactionStatus(c->conn) != PQTRANS_IDLE) {
		PGresult *r = PQexec(c->conn, "ROLLBACK");
		PQclear(r);
	}
	if (c->conn != NULL && (pg_broken(c) || PQtransactionStatus(c->conn) != PQTRANS_IDLE))
		pg_disconnect(c);
	sb_arena_reset(&tx.base.arena);
	if (rc != 0 && rc != OTP_ERR_LIMIT && rc != OTP_ERR_NOT_FOUND && rc != OTP_ERR_CONFLICT &&
	    rc != OTP_ERR_INVALID && rc != OTP_ERR_NOMEM && rc != OTP_ERR_INTERNAL)
		rc = OTP_ERR_STORE;
	pg_release(s, c);
	return rc;
}

static int pg_ping_txn(struct sb_tx *tx, void *arg)
{
	(void)arg;
	struct sb_stmt st;
	sb_stmt_init(&st, SQ_PING);
	return sb_exec(tx, &st, 1, SB_LAST);
}

static int pg_ping(struct store *base)
{
	return pg_run(base, SB_READ, pg_ping_txn, NULL);
}

static void pg_free(struct pg_store *s)
{
	if (s == NULL)
		return;
	for (int i = 0; s->conns && i < s->n; i++)
		pg_disconnect(&s->conns[i]);
	free(s->conns);
	otp_secret_free(s->password);
	free(s->host);
	free(s->real_host);
	free(s->port);
	free(s->database);
	free(s->user);
	free(s->schema);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

static void pg_close(struct store *base)
{
	pg_free((struct pg_store *)base);
}

static const struct sb_ops pg_ops = {
	.name = "postgresql",
	.run = pg_run,
	.exec = pg_exec,
	.script = pg_script,
	.ping = pg_ping,
	.close = pg_close,
};

/* ---- open: wait, create, migrate ------------------------------------------------------------ */

/* Connect to `host`, retrying until the server answers or `deadline` passes. */
static PGconn *pg_connect_wait(const struct pg_store *s, const char *host, const char *dbname,
                               int64_t deadline, char *err, size_t cap)
{
	for (;;) {
		int64_t now = pg_mono_ms();
		int64_t until = deadline > now + PG_RECONNECT_MS ? deadline : now + PG_RECONNECT_MS;
		PGconn *c = pg_connect(s, host, dbname, until, err, cap);
		if (c != NULL || pg_mono_ms() + PG_RETRY_PAUSE_MS > deadline)
			return c;
		pg_pause_ms(PG_RETRY_PAUSE_MS);
	}
}

/*
 * With PG_REAL_HOST: create the database when it is missing, connecting to a maintenance
 * database of the server (postgres, else template1) to do so.
 */
static int pg_ensure_database(const struct pg_store *s, int64_t deadline, char *err, size_t cap)
{
	char first[512] = "";
	for (;;) {
		PGconn *c = pg_connect(s, s->real_host, s->database, pg_mono_ms() + PG_RECONNECT_MS,
		                       first, sizeof first);
		if (c != NULL) {
			PQfinish(c);
			return 0;
		}
		PGconn *m = pg_connect(s, s->real_host, "postgres", pg_mono_ms() + PG_RECONNECT_MS,
		                       NULL, 0);
		if (m == NULL)
			m = pg_connect(s, s->real_host, "template1", pg_mono_ms() + PG_RECONNECT_MS,
			               NULL, 0);
		if (m == NULL) {
			/* the server is not up yet (or refuses us): wait for it */
			if (pg_mono_ms() + PG_RETRY_PAUSE_MS > deadline) {
				snprintf(err, cap, "%s", first);
				return OTP_ERR_STORE;
			}
			pg_pause_ms(PG_RETRY_PAUSE_MS);
			continue;
		}
		const char *vals[1] = {s->database};
		PGresult *r = PQexecParams(m, "SELECT 1 FROM pg_database WHERE datname = $1", 1, NULL,
		                           vals, NULL, NULL, 0);
		int rc = 0;
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			pg_errf(err, cap, "looking for the database", pg_result_error(m, r));
			rc = OTP_ERR_STORE;
		} else if (PQntuples(r) == 0) {
			char *ident = PQescapeIdentifier(m, s->database, strlen(s->database));
			char text[512];
			int len = ident ? snprintf(text, sizeof text, "CREATE DATABASE %s", ident) : -1;
			PQfreemem(ident);
			if (len < 0 || (size_t)len >= sizeof text) {
				pg_errf(err, cap, "database name", "too long");
				rc = OTP_ERR_INVALID;
			} else {
				PGresult *cr = PQexec(m, text);
				const char *state = PQresultErrorField(cr, PG_DIAG_SQLSTATE);
				/* another otpd created it meanwhile: fine */
				if (PQresultStatus(cr) != PGRES_COMMAND_OK &&
				    !(state && (strcmp(state, "42P04") == 0 || strcmp(state, "23505") == 0))) {
					pg_errf(err, cap, "creating the database", pg_result_error(m, cr));
					rc = OTP_ERR_STORE;
				}
				PQclear(cr);
			}
		} else {
			/* it exists but we could not connect to it: report why */
			snprintf(err, cap, "%s", first);
			rc = OTP_ERR_STORE;
		}
		PQclear(r);
		PQfinish(m);
		return rc;
	}
}

/*
 * On a setup connection: create the schema when missing (checked first: CREATE SCHEMA IF
 * NOT EXISTS wants the CREATE privilege even when the schema exists) and the migrations
 * table, under the migration lock so several otpd starting at once agree.
 */
static int pg_prepare_schema(const struct pg_store *s, PGconn *c, char *err, size_t cap)
{
	int rc = pg_simple(c, "BEGIN", err, cap);
	if (rc == 0)
		rc = pg_simple(c, sql[SQ_MIGRATE_LOCK], err, cap);
	if (rc == 0 && s->schema != NULL) {
		const char *vals[1] = {s->schema};
		PGresult *r = PQexecParams(c, "SELECT 1 FROM pg_namespace WHERE nspname = $1", 1, NULL,
		                           vals, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			pg_errf(err, cap, "looking for the schema", pg_result_error(c, r));
			rc = OTP_ERR_STORE;
		} else if (PQntuples(r) == 0) {
			char *ident = PQescapeIdentifier(c, s->schema, strlen(s->schema));
			char text[512];
			int len = ident ? snprintf(text, sizeof text, "CREATE SCHEMA %s", ident) : -1;
			PQfreemem(ident);
			if (len < 0 || (size_t)len >= sizeof text) {
				pg_errf(err, cap, "schema name", "too long");
				rc = OTP_ERR_INVALID;
			} else {
				rc = pg_simple(c, text, err, cap);
			}
		}
		PQclear(r);
	}
	if (rc == 0)
		rc = pg_session_setup(s, c, err, cap);
	if (rc == 0)
		rc = pg_simple(c, "CREATE TABLE IF NOT EXISTS otpd_schema_migrations ("
		                  "version integer PRIMARY KEY, name text NOT NULL, "
		                  "applied_at timestamptz NOT NULL DEFAULT now())", err, cap);
	if (rc == 0)
		rc = pg_simple(c, "COMMIT", err, cap);
	if (PQtransactionStatus(c) != PQTRANS_IDLE) {
		PGresult *r = PQexec(c, "ROLLBACK");
		PQclear(r);
	}
	return rc;
}

static char *pg_strdup_opt(const char *s, bool *nomem)
{
	if (s == NULL || s[0] == '\0')
		return NULL;
	char *d = strdup(s);
	if (d == NULL)
		*nomem = true;
	return d;
}

static struct pg_store *pg_new(const struct store_pg_config *cfg, const char *host, int pool)
{
	struct pg_store *s = calloc(1, sizeof *s);
	if (s == NULL)
		return NULL;
	s->base.ops = &pg_ops;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	bool nomem = false;
	char port[16];
	snprintf(port, sizeof port, "%d", cfg->port);
	s->host = pg_strdup_opt(host, &nomem);
	s->real_host = pg_strdup_opt(cfg->real_host, &nomem);
	s->port = pg_strdup_opt(cfg->port > 0 ? port : NULL, &nomem);
	s->database = pg_strdup_opt(cfg->database, &nomem);
	s->user = pg_strdup_opt(cfg->user, &nomem);
	s->password = pg_strdup_opt(cfg->password, &nomem);
	s->schema = pg_strdup_opt(cfg->schema, &nomem);
	s->n = pool;
	s->conns = calloc((size_t)pool, sizeof *s->conns);
	if (nomem || s->conns == NULL) {
		pg_free(s);
		return NULL;
	}
	return s;
}

/* Apply the migrations through a store of one connection to `host` (PG_REAL_HOST when
 * set: the server itself, not a pooler). */
static int pg_migrate(const struct store_pg_config *cfg, const char *host, int64_t deadline,
                      char *err, size_t cap)
{
	struct pg_store *m = pg_new(cfg, host, 1);
	if (m == NULL) {
		snprintf(err, cap, "postgresql: out of memory");
		return OTP_ERR_NOMEM;
	}
	int rc = 0;
	PGconn *c = pg_connect_wait(m, host, m->database, deadline, err, cap);
	if (c == NULL)
		rc = OTP_ERR_STORE;
	if (rc == 0)
		rc = pg_prepare_schema(m, c, err, cap);
	PQfinish(c);
	char why[512] = "";
	if (rc == 0 && sb_migrate(&m->base, store_pg_migrations, store_pg_migrations_count, why,
	                          sizeof why) != 0) {
		snprintf(err, cap, "postgresql: %s", why);
		rc = OTP_ERR_STORE;
	}
	pg_free(m);
	return rc;
}

struct store *store_pg_open(const struct store_pg_config *cfg, char *err, size_t cap)
{
	char dummy[1];
	if (err == NULL || cap == 0) {
		err = dummy;
		cap = sizeof dummy;
	}
	err[0] = '\0';
	if (cfg == NULL || cfg->host == NULL || cfg->host[0] == '\0' || cfg->database == NULL ||
	    cfg->database[0] == '\0') {
		snprintf(err, cap, "postgresql: PG_HOST and PG_DATABASE are required");
		return NULL;
	}
	if (cfg->port < 0 || cfg->port > 65535 || cfg->pool < 1 || cfg->pool > PG_POOL_MAX ||
	    cfg->connect_timeout < 0) {
		snprintf(err, cap, "postgresql: port 0..65535, pool 1..%d, connect timeout >= 0",
		         PG_POOL_MAX);
		return NULL;
	}
	struct pg_store *s = pg_new(cfg, cfg->host, cfg->pool);
	if (s == NULL) {
		snprintf(err, cap, "postgresql: out of memory");
		return NULL;
	}
	int64_t deadline = pg_mono_ms() + (int64_t)cfg->connect_timeout * 1000;
	int rc = 0;
	if (s->real_host != NULL)
		rc = pg_ensure_database(s, deadline, err, cap);
	if (rc == 0)
		rc = pg_migrate(cfg, s->real_host ? s->real_host : s->host, deadline, err, cap);

	/* the first connection of the pool, through PG_HOST, proves it works */
	if (rc == 0) {
		for (;;) {
			int64_t now = pg_mono_ms();
			int64_t until = deadline > now + PG_RECONNECT_MS ? deadline : now + PG_RECONNECT_MS;
			rc = pg_conn_ready(s, &s->conns[0], s->host, until, err, cap);
			if (rc == 0 || pg_mono_ms() + PG_RETRY_PAUSE_MS > deadline)
				break;
			pg_pause_ms(PG_RETRY_PAUSE_MS);
		}
	}
	if (rc != 0) {
		if (err[0] == '\0')
			snprintf(err, cap, "postgresql: cannot open the store");
		pg_free(s);
		return NULL;
	}
	return &s->base;
}
