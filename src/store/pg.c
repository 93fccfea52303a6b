/*
 * pg.c - the PostgreSQL store backend: the operations of store.h over a small pool of
 * libpq connections, for any number of otpd processes sharing one database.
 * It must not log, read the environment (libpq itself reads PGSSLMODE and friends from
 * it: we pass only host, port, dbname, user and password), or hold a code in clear.
 *
 * DESIGN
 * Pool: `n` connections guarded by `mu`. A caller takes a free one (waiting on `cv` when
 * all are busy), uses it alone for one transaction, and gives it back. A connection is
 * opened on first use and prepares each statement the first time it runs it (a bit per
 * statement). A connection the server dropped (restart, pg_terminate_backend) shows
 * CONNECTION_BAD after the failed call: it is closed, and opened again on next use.
 * When it broke before COMMIT was sent the server rolled the transaction back, so the
 * operation runs once more on a fresh connection; once COMMIT (or a single writing
 * statement) was sent the outcome is unknown and the caller gets OTP_ERR_STORE.
 *
 * Concurrency across processes: transactions run at READ COMMITTED, where every
 * statement sees what was committed before it started. A send takes transaction-scoped
 * advisory locks on hash(channel, target) and, when the channel has ip rules,
 * hash(channel, ip), in key order so two sends never deadlock, before it counts the
 * sends in its limit windows; a check takes the same (channel, target) lock before it
 * reads the attempt counter. Racing requests are thus serialised exactly where they
 * conflict, and the counts they read include the previous lock holder's commit. Outbox
 * jobs are claimed with FOR UPDATE SKIP LOCKED and a lease. Migrations run at open
 * under an advisory lock, one transaction per file.
 *
 * Durability: what a client was answered about (a send, a check, limits) commits with
 * the server's synchronous_commit. The outbox's own bookkeeping (claim, sent, retry,
 * dead, release) and the janitor's purge commit with synchronous_commit off, on
 * connections kept in that mode (pg_acquire prefers a connection already in the mode it
 * needs, so the SET is rare). Such a commit that a PostgreSQL crash loses (the last
 * few hundred milliseconds of them) only puts a job back to where a lease expiry would:
 * it is delivered again, at least once as always. It never loses an accepted code or its
 * job, which were committed durably by the send. Not waiting for a WAL flush per
 * delivered message raised the sends per second with delivery by about a third in
 * bench/ (docs/bench.md).
 */
#include "store/store.h"

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

#include "core/errors.h"
#include "core/limits.h"
#include "core/num.h"
#include "store/migrations.h"

#define PG_POOL_MAX 256
#define PG_RULES_MAX (2 * OTP_LIMIT_RULES_MAX)
#define PG_CANDIDATES_MAX 64       /* newest live codes a check compares against */
#define PG_RECONNECT_MS 5000       /* one connection attempt, at least */
#define PG_RETRY_PAUSE_MS 250      /* between attempts while waiting for the server */
#define PG_PARAMS_MAX 12
#define PG_ARRAY_MAX 1536          /* "{...}" of PG_RULES_MAX 64-bit integers */
#define PG_LIST_MAX 1000
#define PG_IP_MAX 64               /* longest ip text, as sqlite.c */
/* pg_advisory_xact_lock(int4, int4) key of the migration runner: "otpd", 1. The
 * one-argument bigint locks of sends and checks live in a separate key space. */
#define PG_MIGRATE_LOCK "SELECT pg_advisory_xact_lock(1869901924, 1)"

/* ---- statements ------------------------------------------------------------------- */

enum pg_stmt {
	PS_PING,
	PS_LOCK1,
	PS_RULES,
	PS_SEND_LOCK,
	PS_SEND_RULES,
	PS_SEND,
	PS_FAILURES,
	PS_CANDIDATES,
	PS_SET_FAILURES,
	PS_VOID,
	PS_CONSUME,
	PS_LIMITS_DELETE,
	PS_LIMITS_INSERT,
	PS_FIND_TARGET,
	PS_FIND_SEALED,
	PS_PURGE_CODES,
	PS_PURGE_SEALED,
	PS_PURGE_ATTEMPTS,
	PS_PURGE_JOBS,
	PS_CLAIM,
	PS_SENT,
	PS_RETRY,
	PS_DEAD,
	PS_RELEASE,
	PS_LIST,
	PS_STATE_COUNTS,
	PS_NEXT_DUE,
	PS_BACKLOG,
	PS_COUNT_
};

struct pg_stmt_def {
	const char *name;
	const char *sql;
};

/* Every parameter carries a cast, so PQprepare needs no type array. */
static const struct pg_stmt_def pg_stmts[PS_COUNT_] = {
	[PS_PING] = {"otpd_ping", "SELECT 1"},
	[PS_LOCK1] = {"otpd_lock1", "SELECT pg_advisory_xact_lock($1::bigint)"},
	[PS_RULES] = {"otpd_rules",
		"SELECT kind, minutes, rate FROM otpd_limit WHERE channel = $1::smallint "
		"ORDER BY id LIMIT 64"},
	/* A send's locks: (channel, target) always, then (channel, ip) when the send has an
	 * ip ($3 not NULL) and the channel has ip rules. Target list entries are evaluated
	 * left to right, and the scalar subquery takes the ip lock only when its WHERE
	 * holds. Every send takes its target lock before any ip lock, and a check takes a
	 * target lock alone, so no two of them wait for each other in a cycle. */
	[PS_SEND_LOCK] = {"otpd_send_lock",
		"SELECT pg_advisory_xact_lock($1::bigint), "
		"(SELECT pg_advisory_xact_lock($3::bigint) WHERE $3::bigint IS NOT NULL "
		"AND EXISTS (SELECT 1 FROM otpd_limit WHERE channel = $2::smallint AND kind = 1))"},
	/* The channel's rules in order, each with the sends in its window, counted only up
	 * to rate + 1 (all otp_limits_decide needs). A separate statement from the locks,
	 * run after them: at READ COMMITTED its snapshot then includes the previous lock
	 * holder's commit. The window starts at now - minutes * 60, as
	 * otp_limit_window_start(); a send without an ip counts 0 for ip rules. */
	[PS_SEND_RULES] = {"otpd_send_rules",
		"SELECT r.kind, r.minutes, r.rate, CASE WHEN r.kind = 0 THEN "
		"(SELECT count(*) FROM (SELECT 1 FROM otpd_code c WHERE c.target = $2::text "
		"AND c.channel = $1::smallint AND c.created_at >= $4::bigint - r.minutes::bigint * 60 "
		"LIMIT r.rate::bigint + 1) t) "
		"WHEN $3::text IS NULL THEN 0 ELSE "
		"(SELECT count(*) FROM (SELECT 1 FROM otpd_code c WHERE c.ip = $3::text "
		"AND c.channel = $1::smallint AND c.created_at >= $4::bigint - r.minutes::bigint * 60 "
		"LIMIT r.rate::bigint + 1) i) END "
		"FROM (SELECT id, kind, minutes, rate FROM otpd_limit WHERE channel = $1::smallint "
		"ORDER BY id LIMIT 64) r ORDER BY r.id"},
	/* the code, the reset of the attempt counter and the job: one statement */
	[PS_SEND] = {"otpd_send",
		"WITH c AS (INSERT INTO otpd_code (channel, target, ip, code_hash, lookup_hash, "
		"sealed_code, created_at, expire_at) VALUES ($1::smallint, $2::text, $3::text, "
		"$4::bytea, $5::bytea, $6::bytea, $7::bigint, $8::bigint) RETURNING id), "
		"a AS (DELETE FROM otpd_attempt WHERE channel = $1::smallint AND target = $2::text), "
		"j AS (INSERT INTO otpd_outbox (code_id, channel, provider, state, payload, "
		"attempts, next_at, request_id, created_at, updated_at) SELECT c.id, $1::smallint, "
		"$9::text, $10::text, $11::bytea, 0, $7::bigint, $12::text, $7::bigint, $7::bigint "
		"FROM c RETURNING code_id, id) "
		"SELECT code_id, id FROM j"},
	[PS_FAILURES] = {"otpd_failures",
		"SELECT failures FROM otpd_attempt WHERE channel = $1::smallint AND target = $2::text"},
	[PS_CANDIDATES] = {"otpd_candidates",
		"SELECT id, channel, code_hash FROM otpd_code WHERE target = $1::text "
		"AND channel = ANY ($2::smallint[]) AND expire_at > $3::bigint "
		"AND NOT void AND NOT consumed ORDER BY id DESC LIMIT 64"},
	[PS_SET_FAILURES] = {"otpd_set_failures",
		"INSERT INTO otpd_attempt (channel, target, failures, updated_at) "
		"VALUES ($1::smallint, $2::text, $3::integer, $4::bigint) "
		"ON CONFLICT (channel, target) DO UPDATE SET failures = EXCLUDED.failures, "
		"updated_at = EXCLUDED.updated_at"},
	[PS_VOID] = {"otpd_void",
		"UPDATE otpd_code SET void = true WHERE target = $1::text "
		"AND channel = ANY ($2::smallint[]) AND expire_at > $3::bigint "
		"AND NOT void AND NOT consumed"},
	[PS_CONSUME] = {"otpd_consume",
		"UPDATE otpd_code SET consumed = true WHERE id = $1::bigint"},
	[PS_LIMITS_DELETE] = {"otpd_limits_delete",
		"DELETE FROM otpd_limit WHERE channel = $1::smallint AND kind = $2::smallint"},
	/* ids are drawn in the order the rows are inserted: the order of the arrays */
	[PS_LIMITS_INSERT] = {"otpd_limits_insert",
		"INSERT INTO otpd_limit (channel, kind, minutes, rate) "
		"SELECT $1::smallint, u.kind, u.minutes, u.rate "
		"FROM unnest($2::smallint[], $3::integer[], $4::integer[]) WITH ORDINALITY "
		"AS u(kind, minutes, rate, ord) ORDER BY u.ord"},
	[PS_FIND_TARGET] = {"otpd_find_target",
		"SELECT target FROM otpd_code WHERE lookup_hash = $2::bytea "
		"AND channel = $1::smallint AND expire_at > $3::bigint AND NOT void "
		"AND NOT consumed ORDER BY id DESC LIMIT 1"},
	[PS_FIND_SEALED] = {"otpd_find_sealed",
		"SELECT sealed_code FROM otpd_code WHERE target = $1::text "
		"AND expire_at > $2::bigint AND NOT void AND NOT consumed "
		"AND sealed_code IS NOT NULL ORDER BY id DESC LIMIT 1"},
	/* Expired codes go once no limit window of their channel can count them. */
	[PS_PURGE_CODES] = {"otpd_purge_codes",
		"WITH w AS (SELECT channel, max(minutes)::bigint * 60 AS span FROM otpd_limit "
		"GROUP BY channel), "
		"d AS (DELETE FROM otpd_code c WHERE c.expire_at < $1::bigint "
		"AND c.created_at < $1::bigint - coalesce((SELECT w.span FROM w "
		"WHERE w.channel = c.channel), 0) RETURNING 1) "
		"SELECT count(*) FROM d"},
	/* An expired code kept for the limit windows needs no readable copy. */
	[PS_PURGE_SEALED] = {"otpd_purge_sealed",
		"UPDATE otpd_code SET sealed_code = NULL WHERE expire_at < $1::bigint "
		"AND sealed_code IS NOT NULL"},
	/* A counter stays while its target has a live code on any channel (/sms/check
	 * counts against call codes too). */
	[PS_PURGE_ATTEMPTS] = {"otpd_purge_attempts",
		"WITH d AS (DELETE FROM otpd_attempt a WHERE NOT EXISTS (SELECT 1 FROM otpd_code c "
		"WHERE c.target = a.target AND c.expire_at >= $1::bigint AND NOT c.void "
		"AND NOT c.consumed) RETURNING 1) SELECT count(*) FROM d"},
	[PS_PURGE_JOBS] = {"otpd_purge_jobs",
		"WITH d AS (DELETE FROM otpd_outbox WHERE state IN ('sent', 'dead', 'skipped') "
		"AND updated_at < $1::bigint RETURNING 1) SELECT count(*) FROM d"},
	/* Jobs whose lease ran out (their worker died) first, then due ones, each read in
	 * index order with a LIMIT: see sql/pg/0002. Rows locked by the CTEs but past the
	 * final LIMIT are unlocked at commit, untouched. */
	[PS_CLAIM] = {"otpd_claim",
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
		"o.lease_until"},
	[PS_SENT] = {"otpd_sent",
		"UPDATE otpd_outbox SET state = 'sent', attempts = attempts + 1, "
		"provider_msg_id = $3::text, payload = NULL, lease_until = NULL, "
		"updated_at = $2::bigint WHERE id = $1::bigint AND state = 'sending'"},
	[PS_RETRY] = {"otpd_retry",
		"UPDATE otpd_outbox SET state = 'pending', attempts = attempts + 1, "
		"next_at = $3::bigint, last_error = $4::text, lease_until = NULL, "
		"updated_at = $2::bigint WHERE id = $1::bigint AND state = 'sending'"},
	[PS_DEAD] = {"otpd_dead",
		"UPDATE otpd_outbox SET state = 'dead', attempts = attempts + 1, "
		"last_error = $3::text, payload = NULL, lease_until = NULL, "
		"updated_at = $2::bigint WHERE id = $1::bigint AND state = 'sending'"},
	[PS_RELEASE] = {"otpd_release",
		"UPDATE otpd_outbox SET state = 'pending', lease_until = NULL "
		"WHERE id = $1::bigint AND state = 'sending'"},
	[PS_LIST] = {"otpd_list",
		"SELECT id, code_id, channel, provider, state, attempts, created_at, updated_at, "
		"next_at, last_error, provider_msg_id FROM otpd_outbox "
		"WHERE ($1::text IS NULL OR state = $1::text) "
		"AND ($2::integer < 0 OR channel = $2::integer) "
		"AND ($3::text IS NULL OR provider = $3::text) "
		"AND ($4::bigint = 0 OR id < $4::bigint) "
		"ORDER BY id DESC LIMIT $5::bigint"},
	[PS_STATE_COUNTS] = {"otpd_state_counts",
		"SELECT state, count(*) FROM otpd_outbox GROUP BY state"},
	[PS_NEXT_DUE] = {"otpd_next_due",
		"SELECT min(next_at) FROM otpd_outbox WHERE state = 'pending'"},
	/* every process's jobs: through the pending and sending partial indexes only */
	[PS_BACKLOG] = {"otpd_backlog",
		"SELECT (SELECT count(*) FROM otpd_outbox WHERE state = 'pending'), "
		"(SELECT count(*) FROM otpd_outbox WHERE state = 'sending'), "
		"(SELECT min(next_at) FROM otpd_outbox WHERE state = 'pending')"},
};

/* ---- the pool --------------------------------------------------------------------- */

struct pg_conn {
	PGconn *conn;          /* NULL until first use or after a failure */
	uint64_t prepared;     /* bit (1 << enum pg_stmt) once prepared on this conn */
	bool busy;             /* taken by a caller (guarded by pg_store.mu) */
	bool committing;       /* a statement that may commit was sent: no retry */
	bool relaxed;          /* session runs with synchronous_commit off */
};

/* What a pg_run's commit needs (see Durability in DESIGN). */
enum pg_mode {
	PG_READ,               /* reads only: any connection */
	PG_DURABLE,            /* a client is answered about it: the server's setting */
	PG_RELAXED,            /* outbox bookkeeping: synchronous_commit off */
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

typedef int (*pg_txn_fn)(struct pg_conn *c, void *arg);

_Static_assert(PS_COUNT_ <= 64, "one bit per statement in pg_conn.prepared");

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

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when p does not start one.
 * Never reads past a NUL (it is not a continuation byte). */
static size_t pg_utf8_seq(const unsigned char *p)
{
	unsigned char c = p[0];
	if (c < 0x80)
		return 1;
	unsigned char lo = 0x80, hi = 0xbf;
	size_t len;
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		if (c == 0xe0)
			lo = 0xa0;
		if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		if (c == 0xf0)
			lo = 0x90;
		if (c == 0xf4)
			hi = 0x8f;
	} else {
		return 0;
	}
	if (p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++) {
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
	}
	return len;
}

/* Copy at most cap-1 bytes of `in`, keeping whole UTF-8 sequences and turning bytes that
 * are not valid UTF-8 into '?', so a provider's error text can always be stored. */
static void pg_text_clean(char *out, size_t cap, const char *in)
{
	size_t o = 0;
	const unsigned char *p = (const unsigned char *)(in ? in : "");
	if (cap == 0)
		return;
	while (*p != '\0') {
		size_t len = pg_utf8_seq(p);
		if (len == 0) {
			if (o + 1 >= cap)
				break;
			out[o++] = '?';
			p++;
			continue;
		}
		if (o + len >= cap)
			break;
		memcpy(out + o, p, len);
		o += len;
		p += len;
	}
	out[o] = '\0';
}

static bool pg_utf8_valid(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	while (*p != '\0') {
		size_t len = pg_utf8_seq(p);
		if (len == 0)
			return false;
		p += len;
	}
	return true;
}

/* Write "<what>: <libpq's message without its trailing newline>" into err. */
static void pg_errf(char *err, size_t cap, const char *what, const char *msg)
{
	char clean[512];
	if (err == NULL || cap == 0)
		return;
	pg_text_clean(clean, sizeof clean, msg ? msg : "");
	size_t len = strlen(clean);
	while (len > 0 && (clean[len - 1] == '\n' || clean[len - 1] == ' '))
		clean[--len] = '\0';
	for (size_t i = 0; i < len; i++) {
		if (clean[i] == '\n' || clean[i] == '\t')
			clean[i] = ' ';
	}
	snprintf(err, cap, "postgresql: %s%s%s", what, len ? ": " : "", clean);
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

/* Run a statement without parameters outside the prepared set (session setup,
 * migrations). 0 or OTP_ERR_STORE with the reason in err. */
static int pg_simple(PGconn *c, const char *sql, char *err, size_t cap)
{
	PGresult *r = PQexec(c, sql);
	ExecStatusType st = PQresultStatus(r);
	int rc = 0;
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		pg_errf(err, cap, "query", PQresultErrorMessage(r) && *PQresultErrorMessage(r)
		                               ? PQresultErrorMessage(r) : PQerrorMessage(c));
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
	char sql[512];
	snprintf(sql, sizeof sql, "%sSELECT set_config('plan_cache_mode', 'force_generic_plan', "
	         "false) WHERE current_setting('server_version_num')::integer >= 120000", path);
	return pg_simple(c, sql, err, cap);
}

static void pg_disconnect(struct pg_conn *c)
{
	PQfinish(c->conn);
	c->conn = NULL;
	c->prepared = 0;
	c->relaxed = false;
}

/* Make c usable: (re)connect to PG_HOST and set the session up when needed. */
static int pg_conn_ready(const struct pg_store *s, struct pg_conn *c, int64_t deadline,
                         char *err, size_t cap)
{
	if (c->conn != NULL && PQstatus(c->conn) == CONNECTION_OK &&
	    PQtransactionStatus(c->conn) == PQTRANS_IDLE)
		return 0;
	pg_disconnect(c);
	PGconn *conn = pg_connect(s, s->host, s->database, deadline, err, cap);
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
static int pg_fit(const struct pg_conn *c, enum pg_mode mode)
{
	if (c->conn == NULL)
		return 0;
	if (mode == PG_READ || c->relaxed == (mode == PG_RELAXED))
		return 2;
	return 1;
}

static struct pg_conn *pg_acquire(struct pg_store *s, enum pg_mode mode)
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
static int pg_set_mode(struct pg_conn *c, enum pg_mode mode)
{
	if (mode == PG_READ || c->relaxed == (mode == PG_RELAXED))
		return 0;
	int rc = pg_simple(c->conn, mode == PG_RELAXED ? "SET synchronous_commit TO off"
	                                                : "RESET synchronous_commit", NULL, 0);
	if (rc == 0)
		c->relaxed = mode == PG_RELAXED;
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

/*
 * Run fn (one transaction, or one statement) on a pooled connection. fn leaves any
 * transaction it opened for us to roll back when it fails, and sets c->committing before
 * it sends anything whose effect may be committed. See DESIGN for the retry.
 */
static int pg_run(struct pg_store *s, enum pg_mode mode, pg_txn_fn fn, void *arg)
{
	struct pg_conn *c = pg_acquire(s, mode);
	int rc = 0;
	for (int attempt = 0; attempt < 2; attempt++) {
		rc = pg_conn_ready(s, c, pg_mono_ms() + PG_RECONNECT_MS, NULL, 0);
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
		rc = fn(c, arg);
		if (rc == 0 || !pg_broken(c) || c->committing)
			break;
		/* the connection died before anything could commit: try again afresh */
		pg_disconnect(c);
	}
	if (c->conn != NULL && !pg_broken(c) && PQtransactionStatus(c->conn) != PQTRANS_IDLE) {
		PGresult *r = PQexec(c->conn, "ROLLBACK");
		PQclear(r);
	}
	if (c->conn != NULL && (pg_broken(c) || PQtransactionStatus(c->conn) != PQTRANS_IDLE))
		pg_disconnect(c);
	if (rc != 0 && rc != OTP_ERR_LIMIT && rc != OTP_ERR_NOT_FOUND &&
	    rc != OTP_ERR_INVALID && rc != OTP_ERR_NOMEM && rc != OTP_ERR_INTERNAL)
		rc = OTP_ERR_STORE;
	pg_release(s, c);
	return rc;
}

/* ---- statement helpers ------------------------------------------------------------ */

struct pg_params {
	int n;
	const char *v[PG_PARAMS_MAX];
	int len[PG_PARAMS_MAX];
	int fmt[PG_PARAMS_MAX];
	char num[PG_PARAMS_MAX][24];
};

static void pp_i64(struct pg_params *p, int64_t x)
{
	if (p->n >= PG_PARAMS_MAX)
		return;
	snprintf(p->num[p->n], sizeof p->num[p->n], "%" PRId64, x);
	p->v[p->n] = p->num[p->n];
	p->len[p->n] = 0;
	p->fmt[p->n] = 0;
	p->n++;
}

/* NULL becomes SQL NULL. The string must outlive the call. */
static void pp_text(struct pg_params *p, const char *s)
{
	if (p->n >= PG_PARAMS_MAX)
		return;
	p->v[p->n] = s;
	p->len[p->n] = 0;
	p->fmt[p->n] = 0;
	p->n++;
}

/* Binary bytea; NULL becomes SQL NULL. */
static void pp_bytes(struct pg_params *p, const uint8_t *b, size_t len)
{
	if (p->n >= PG_PARAMS_MAX)
		return;
	p->v[p->n] = (const char *)b;
	p->len[p->n] = b ? (int)len : 0;
	p->fmt[p->n] = 1;
	p->n++;
}

/* "{1,2,3}" into buf. 0 or OTP_ERR_INTERNAL when it does not fit. */
static int pg_array(char *buf, size_t cap, const int64_t *v, size_t n)
{
	size_t o = 0;
	int len = snprintf(buf, cap, "{");
	if (len < 0 || (size_t)len >= cap)
		return OTP_ERR_INTERNAL;
	o = (size_t)len;
	for (size_t i = 0; i < n; i++) {
		len = snprintf(buf + o, cap - o, "%s%" PRId64, i ? "," : "", v[i]);
		if (len < 0 || (size_t)len >= cap - o)
			return OTP_ERR_INTERNAL;
		o += (size_t)len;
	}
	len = snprintf(buf + o, cap - o, "}");
	if (len < 0 || (size_t)len >= cap - o)
		return OTP_ERR_INTERNAL;
	return 0;
}

/* The channels of a mask as a smallint[] literal. */
static int pg_mask_array(char *buf, size_t cap, unsigned mask)
{
	int64_t v[OTP_CH_COUNT];
	size_t n = 0;
	for (int ch = 0; ch < OTP_CH_COUNT; ch++) {
		if (mask & OTP_CH_BIT(ch))
			v[n++] = ch;
	}
	return pg_array(buf, cap, v, n);
}

/* Prepare statement st on this connection unless it already is. */
static int pg_prepare(struct pg_conn *c, enum pg_stmt st)
{
	uint64_t bit = UINT64_C(1) << st;
	if (c->prepared & bit)
		return 0;
	PGresult *r = PQprepare(c->conn, pg_stmts[st].name, pg_stmts[st].sql, 0, NULL);
	bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
	PQclear(r);
	if (!ok)
		return OTP_ERR_STORE;
	c->prepared |= bit;
	return 0;
}

/* Execute a prepared statement, preparing it first on this connection if needed. The
 * result (NULL when preparing failed) must be checked and cleared by the caller. */
static PGresult *pg_exec(struct pg_conn *c, enum pg_stmt st, const struct pg_params *p)
{
	if (pg_prepare(c, st) != 0)
		return NULL;
	return PQexecPrepared(c->conn, pg_stmts[st].name, p ? p->n : 0, p ? p->v : NULL,
	                      p ? p->len : NULL, p ? p->fmt : NULL, 0);
}

/* One statement of a pipeline: a prepared statement, or (st == PS_COUNT_) `sql`
 * without parameters, such as BEGIN or COMMIT. */
struct pg_step {
	enum pg_stmt st;
	const char *sql;
	const struct pg_params *p;
	PGresult *res;         /* out: its result, or NULL; the caller clears it */
};

/*
 * Send steps as one pipeline, one round trip however many there are, and collect each
 * step's result. 0 when every step succeeded; OTP_ERR_STORE otherwise (a step that
 * failed, or the later ones the server then skipped, have an error result or NULL).
 * Statements not yet prepared on this connection are prepared first (once each). A
 * connection left in an unknown state is closed, for pg_run to see.
 */
static int pg_pipeline(struct pg_conn *c, struct pg_step *steps, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		steps[i].res = NULL;
		if (steps[i].st != PS_COUNT_ && pg_prepare(c, steps[i].st) != 0)
			return OTP_ERR_STORE;
	}
	if (PQenterPipelineMode(c->conn) != 1)
		return OTP_ERR_STORE;
	int rc = 0;
	for (size_t i = 0; i < n && rc == 0; i++) {
		const struct pg_step *x = &steps[i];
		const struct pg_params *p = x->p;
		int sent = x->st == PS_COUNT_
		           ? PQsendQueryParams(c->conn, x->sql, 0, NULL, NULL, NULL, NULL, 0)
		           : PQsendQueryPrepared(c->conn, pg_stmts[x->st].name, p ? p->n : 0,
		                                 p ? p->v : NULL, p ? p->len : NULL,
		                                 p ? p->fmt : NULL, 0);
		if (sent != 1)
			rc = OTP_ERR_STORE;
	}
	if (PQpipelineSync(c->conn) != 1) {
		pg_disconnect(c);
		return OTP_ERR_STORE;
	}
	/* Each step's result is followed by a NULL, then comes the sync. Two NULLs in a
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
		ExecStatusType st = PQresultStatus(r);
		if (st == PGRES_PIPELINE_SYNC) {
			synced = true;
			PQclear(r);
		} else if (got < n) {
			if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
				rc = OTP_ERR_STORE;
			steps[got++].res = r;
		} else {
			rc = OTP_ERR_STORE;
			PQclear(r);
		}
	}
	if (!synced || got != n)
		rc = OTP_ERR_STORE;
	if (!synced || PQexitPipelineMode(c->conn) != 1)
		pg_disconnect(c);
	return rc;
}

static void pg_steps_clear(struct pg_step *steps, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		PQclear(steps[i].res);
		steps[i].res = NULL;
	}
}

/* A statement that returns rows: the result, or NULL on failure. */
static PGresult *pg_query(struct pg_conn *c, enum pg_stmt st, const struct pg_params *p)
{
	PGresult *r = pg_exec(c, st, p);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		PQclear(r);
		return NULL;
	}
	return r;
}

/* A statement that returns no rows; *changed (may be NULL) = rows it touched. */
static int pg_command(struct pg_conn *c, enum pg_stmt st, const struct pg_params *p,
                      int64_t *changed)
{
	PGresult *r = pg_exec(c, st, p);
	int rc = 0;
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		rc = OTP_ERR_STORE;
	} else if (changed != NULL) {
		const char *t = PQcmdTuples(r);
		if (otp_parse_i64(*t ? t : "0", 0, INT64_MAX, changed) != 0)
			rc = OTP_ERR_STORE;
	}
	PQclear(r);
	return rc;
}

static int pg_begin(struct pg_conn *c)
{
	return pg_simple(c->conn, "BEGIN", NULL, 0);
}

static int pg_commit(struct pg_conn *c)
{
	c->committing = true;
	PGresult *r = PQexec(c->conn, "COMMIT");
	/* COMMIT of a failed transaction "succeeds" as ROLLBACK: check the tag */
	int rc = PQresultStatus(r) == PGRES_COMMAND_OK && strcmp(PQcmdStatus(r), "COMMIT") == 0
	         ? 0 : OTP_ERR_STORE;
	PQclear(r);
	return rc;
}

static int pg_get_i64(const PGresult *r, int row, int col, int64_t *out)
{
	if (PQgetisnull(r, row, col)) {
		*out = 0;
		return 0;
	}
	return otp_parse_i64(PQgetvalue(r, row, col), INT64_MIN, INT64_MAX, out) == 0
	       ? 0 : OTP_ERR_STORE;
}

static int pg_get_int(const PGresult *r, int row, int col, int lo, int hi, int *out)
{
	int64_t v;
	if (pg_get_i64(r, row, col, &v) != 0 || v < lo || v > hi)
		return OTP_ERR_STORE;
	*out = (int)v;
	return 0;
}

/* A bytea column (text result) into a malloc'd buffer; NULL column: *out NULL, 0. */
static int pg_get_bytes(const PGresult *r, int row, int col, uint8_t **out, size_t *len)
{
	*out = NULL;
	*len = 0;
	if (PQgetisnull(r, row, col))
		return 0;
	size_t n = 0;
	unsigned char *raw = PQunescapeBytea((const unsigned char *)PQgetvalue(r, row, col), &n);
	if (raw == NULL)
		return OTP_ERR_NOMEM;
	uint8_t *copy = malloc(n ? n : 1);
	if (copy == NULL) {
		PQfreemem(raw);
		return OTP_ERR_NOMEM;
	}
	memcpy(copy, raw, n);
	sodium_memzero(raw, n);
	PQfreemem(raw);
	*out = copy;
	*len = n;
	return 0;
}

static int pg_get_hash(const PGresult *r, int row, int col, uint8_t out[OTP_HASH_LEN])
{
	uint8_t *b = NULL;
	size_t n = 0;
	int rc = pg_get_bytes(r, row, col, &b, &n);
	if (rc == 0 && n != OTP_HASH_LEN)
		rc = OTP_ERR_STORE;
	if (rc == 0)
		memcpy(out, b, OTP_HASH_LEN);
	free(b);
	return rc;
}

/* FNV-1a of (tag, channel, s): the key of a transaction-scoped advisory lock. Equal
 * inputs give equal keys in every process; a collision only serialises two unrelated
 * requests. */
static int64_t pg_lock_key(char tag, enum otp_channel ch, const char *s)
{
	uint64_t h = UINT64_C(14695981039346656037);
	const unsigned char head[4] = {'o', (unsigned char)tag, (unsigned char)ch, '|'};
	for (size_t i = 0; i < sizeof head; i++) {
		h ^= head[i];
		h *= UINT64_C(1099511628211);
	}
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		h ^= *p;
		h *= UINT64_C(1099511628211);
	}
	int64_t k;
	memcpy(&k, &h, sizeof k);
	return k;
}

/* Take a transaction-scoped advisory lock. */
static int pg_lock(struct pg_conn *c, int64_t key)
{
	struct pg_params p = {0};
	pp_i64(&p, key);
	PGresult *r = pg_query(c, PS_LOCK1, &p);
	int rc = r ? 0 : OTP_ERR_STORE;
	PQclear(r);
	return rc;
}

static bool pg_channel_ok(int ch)
{
	return ch >= 0 && ch < OTP_CH_COUNT;
}

static bool pg_target_ok(const char *t)
{
	return t != NULL && t[0] != '\0' && strnlen(t, OTP_TARGET_MAX + 1) <= OTP_TARGET_MAX &&
	       pg_utf8_valid(t);
}

/* ---- limits ----------------------------------------------------------------------- */

/* A limit rule from columns 0..2 (kind, minutes, rate) of row i. */
static int pg_get_rule(const PGresult *r, int i, struct otp_limit_rule *rule)
{
	int kind = 0;
	int rc = pg_get_int(r, i, 0, 0, 1, &kind);
	if (rc == 0)
		rc = pg_get_int(r, i, 1, 1, OTP_LIMIT_MINUTES_MAX, &rule->minutes);
	if (rc == 0)
		rc = pg_get_int(r, i, 2, 0, OTP_LIMIT_RATE_MAX, &rule->rate);
	rule->kind = kind == 1 ? OTP_LIMIT_IP : OTP_LIMIT_TARGET;
	return rc;
}

static int pg_load_rules(struct pg_conn *c, enum otp_channel ch, struct otp_limit_rule *rules,
                         size_t *n)
{
	struct pg_params p = {0};
	pp_i64(&p, ch);
	*n = 0;
	PGresult *r = pg_query(c, PS_RULES, &p);
	if (r == NULL)
		return OTP_ERR_STORE;
	int rc = 0;
	int rows = PQntuples(r);
	for (int i = 0; i < rows && i < PG_RULES_MAX && rc == 0; i++) {
		rc = pg_get_rule(r, i, &rules[i]);
		if (rc == 0)
			*n = (size_t)i + 1;
	}
	PQclear(r);
	return rc;
}

struct pg_limits_ctx {
	enum otp_channel ch;
	const bool *replace;
	const struct otp_limit_rule *rules;
	size_t n;
	struct store_limits *out;
};

static int pg_set_limits_txn(struct pg_conn *c, void *arg)
{
	struct pg_limits_ctx *x = arg;
	int64_t kinds[PG_RULES_MAX], minutes[PG_RULES_MAX], rates[PG_RULES_MAX];
	char ak[PG_ARRAY_MAX], am[PG_ARRAY_MAX], ar[PG_ARRAY_MAX];
	for (size_t i = 0; i < x->n; i++) {
		kinds[i] = x->rules[i].kind;
		minutes[i] = x->rules[i].minutes;
		rates[i] = x->rules[i].rate;
	}
	int rc = pg_array(ak, sizeof ak, kinds, x->n);
	if (rc == 0)
		rc = pg_array(am, sizeof am, minutes, x->n);
	if (rc == 0)
		rc = pg_array(ar, sizeof ar, rates, x->n);
	if (rc == 0)
		rc = pg_begin(c);
	/* two replacements of one channel's rules must not interleave their delete and
	 * insert (both sets would survive) */
	if (rc == 0)
		rc = pg_lock(c, pg_lock_key('l', x->ch, ""));
	for (int kind = 0; kind < 2 && rc == 0; kind++) {
		if (!x->replace[kind])
			continue;
		struct pg_params p = {0};
		pp_i64(&p, x->ch);
		pp_i64(&p, kind);
		rc = pg_command(c, PS_LIMITS_DELETE, &p, NULL);
	}
	if (rc == 0 && x->n > 0) {
		struct pg_params p = {0};
		pp_i64(&p, x->ch);
		pp_text(&p, ak);
		pp_text(&p, am);
		pp_text(&p, ar);
		rc = pg_command(c, PS_LIMITS_INSERT, &p, NULL);
	}
	if (rc == 0)
		rc = pg_commit(c);
	return rc;
}

static int pg_set_limits(struct store *st, enum otp_channel ch, const bool replace[2],
                         const struct otp_limit_rule *rules, size_t n)
{
	if (!pg_channel_ok(ch) || replace == NULL || n > PG_RULES_MAX || (n > 0 && rules == NULL))
		return OTP_ERR_INVALID;
	size_t per_kind[2] = {0, 0};
	for (size_t i = 0; i < n; i++) {
		const struct otp_limit_rule *r = &rules[i];
		if ((r->kind != OTP_LIMIT_TARGET && r->kind != OTP_LIMIT_IP) || !replace[r->kind] ||
		    r->minutes < 1 || r->minutes > OTP_LIMIT_MINUTES_MAX || r->rate < 0 ||
		    r->rate > OTP_LIMIT_RATE_MAX || ++per_kind[r->kind] > OTP_LIMIT_RULES_MAX)
			return OTP_ERR_INVALID;
	}
	if (!replace[0] && !replace[1])
		return 0;
	struct pg_limits_ctx x = {.ch = ch, .replace = replace, .rules = rules, .n = n};
	return pg_run((struct pg_store *)st, PG_DURABLE, pg_set_limits_txn, &x);
}

static int pg_get_limits_txn(struct pg_conn *c, void *arg)
{
	struct pg_limits_ctx *x = arg;
	x->out->n = 0;
	return pg_load_rules(c, x->ch, x->out->rules, &x->out->n);
}

static int pg_get_limits(struct store *st, enum otp_channel ch, struct store_limits *out)
{
	if (!pg_channel_ok(ch) || out == NULL)
		return OTP_ERR_INVALID;
	struct pg_limits_ctx x = {.ch = ch, .out = out};
	int rc = pg_run((struct pg_store *)st, PG_READ, pg_get_limits_txn, &x);
	if (rc != 0)
		out->n = 0;
	return rc;
}

/* ---- send ------------------------------------------------------------------------- */

struct pg_send_ctx {
	const struct store_send *req;
	struct store_send_result *res;
};

/*
 * Two round trips: [BEGIN, the locks, the rules with their counts], the decision in C
 * (otp_limits_decide), then [the insert statement, COMMIT]. A refusal rolls back
 * (pg_run) and writes nothing.
 */
static int pg_send_txn(struct pg_conn *c, void *arg)
{
	struct pg_send_ctx *x = arg;
	const struct store_send *q = x->req;
	struct otp_limit_rule rules[PG_RULES_MAX];
	int64_t counts[PG_RULES_MAX];
	size_t n = 0;
	bool ip_rules = false;

	memset(x->res, 0, sizeof *x->res);
	struct pg_params lock = {0}, count = {0};
	pp_i64(&lock, pg_lock_key('t', q->channel, q->target));
	pp_i64(&lock, q->channel);
	if (q->ip != NULL)
		pp_i64(&lock, pg_lock_key('i', q->channel, q->ip));
	else
		pp_text(&lock, NULL);
	pp_i64(&count, q->channel);
	pp_text(&count, q->target);
	pp_text(&count, q->ip);
	pp_i64(&count, q->now);
	struct pg_step first[] = {
		{.st = PS_COUNT_, .sql = "BEGIN"},
		{.st = PS_SEND_LOCK, .p = &lock},
		{.st = PS_SEND_RULES, .p = &count},
	};
	int rc = pg_pipeline(c, first, 3);
	const PGresult *r = first[2].res;
	int rows = rc == 0 ? PQntuples(r) : 0;
	for (int i = 0; i < rows && i < PG_RULES_MAX && rc == 0; i++) {
		rc = pg_get_rule(r, i, &rules[i]);
		if (rc == 0)
			rc = pg_get_i64(r, i, 3, &counts[i]);
		ip_rules = ip_rules || rules[i].kind == OTP_LIMIT_IP;
		if (rc == 0)
			n = (size_t)i + 1;
	}
	pg_steps_clear(first, 3);
	if (rc != 0)
		return rc;
	if (ip_rules && q->require_ip && q->ip == NULL) {
		x->res->ip_required = true;
		return OTP_ERR_INVALID; /* pg_run rolls back: nothing written */
	}
	int refused = otp_limits_decide(rules, counts, n);
	if (refused >= 0) {
		x->res->refused_by = rules[refused];
		return OTP_ERR_LIMIT; /* pg_run rolls back: nothing written */
	}

	struct pg_params p = {0};
	pp_i64(&p, q->channel);
	pp_text(&p, q->target);
	pp_text(&p, q->ip);
	pp_bytes(&p, q->code_hash, OTP_HASH_LEN);
	pp_bytes(&p, q->lookup_hash, OTP_HASH_LEN);
	pp_bytes(&p, q->sealed_code, q->sealed_code_len);
	pp_i64(&p, q->now);
	pp_i64(&p, q->expire_at);
	pp_text(&p, q->provider);
	pp_text(&p, q->skip ? STORE_JOB_SKIPPED : STORE_JOB_PENDING);
	pp_bytes(&p, q->skip ? NULL : q->payload, q->skip ? 0 : q->payload_len);
	char rid[128];
	pg_text_clean(rid, sizeof rid, q->request_id);
	pp_text(&p, q->request_id ? rid : NULL);
	struct pg_step second[] = {
		{.st = PS_SEND, .p = &p},
		{.st = PS_COUNT_, .sql = "COMMIT"},
	};
	c->committing = true;
	rc = pg_pipeline(c, second, 2);
	int64_t code_id = 0, job_id = 0;
	if (rc == 0 && PQntuples(second[0].res) != 1)
		rc = OTP_ERR_STORE;
	if (rc == 0)
		rc = pg_get_i64(second[0].res, 0, 0, &code_id);
	if (rc == 0)
		rc = pg_get_i64(second[0].res, 0, 1, &job_id);
	/* COMMIT of a failed transaction "succeeds" as ROLLBACK: check the tag */
	if (rc == 0 && strcmp(PQcmdStatus(second[1].res), "COMMIT") != 0)
		rc = OTP_ERR_STORE;
	pg_steps_clear(second, 2);
	if (rc == 0) {
		x->res->code_id = code_id;
		x->res->job_id = job_id;
	}
	return rc;
}

static int pg_send(struct store *st, const struct store_send *req, struct store_send_result *res)
{
	if (req == NULL || res == NULL)
		return OTP_ERR_INVALID;
	memset(res, 0, sizeof *res);
	if (!pg_channel_ok(req->channel) || !pg_target_ok(req->target) ||
	    (req->ip != NULL && (strnlen(req->ip, PG_IP_MAX + 1) > PG_IP_MAX ||
	                        !pg_utf8_valid(req->ip))) ||
	    req->provider == NULL || req->provider[0] == '\0' ||
	    strlen(req->provider) >= STORE_PROVIDER_MAX || !pg_utf8_valid(req->provider) ||
	    (!req->skip && req->payload == NULL) ||
	    (req->sealed_code == NULL && req->sealed_code_len != 0) ||
	    req->sealed_code_len > INT32_MAX || req->payload_len > INT32_MAX)
		return OTP_ERR_INVALID;
	struct pg_send_ctx x = {.req = req, .res = res};
	return pg_run((struct pg_store *)st, PG_DURABLE, pg_send_txn, &x);
}

/* ---- check ------------------------------------------------------------------------ */

struct pg_check_ctx {
	const struct store_check *req;
	bool ok;
};

/*
 * Two round trips: [BEGIN, the (channel, target) lock, the failure count, the live
 * candidates], the decision in C (otp_check_decide), then [the writes it asks for,
 * COMMIT].
 */
static int pg_check_txn(struct pg_conn *c, void *arg)
{
	struct pg_check_ctx *x = arg;
	const struct store_check *q = x->req;
	struct otp_candidate cands[PG_CANDIDATES_MAX];
	struct otp_check_input in;
	struct otp_check_outcome out;
	char mask[64];
	int64_t failures = 0;

	x->ok = false;
	memset(&in, 0, sizeof in);
	int rc = pg_mask_array(mask, sizeof mask, q->channel_mask);
	if (rc != 0)
		return rc;
	struct pg_params lock = {0}, fail = {0}, cand = {0};
	pp_i64(&lock, pg_lock_key('t', q->channel, q->target));
	pp_i64(&fail, q->channel);
	pp_text(&fail, q->target);
	pp_text(&cand, q->target);
	pp_text(&cand, mask);
	pp_i64(&cand, q->now);
	struct pg_step first[] = {
		{.st = PS_COUNT_, .sql = "BEGIN"},
		{.st = PS_LOCK1, .p = &lock},
		{.st = PS_FAILURES, .p = &fail},
		{.st = PS_CANDIDATES, .p = &cand},
	};
	rc = pg_pipeline(c, first, 4);
	if (rc == 0 && PQntuples(first[2].res) > 0)
		rc = pg_get_i64(first[2].res, 0, 0, &failures);
	const PGresult *r = first[3].res;
	int rows = rc == 0 ? PQntuples(r) : 0;
	for (int i = 0; i < rows && i < PG_CANDIDATES_MAX && rc == 0; i++) {
		int ch = 0;
		rc = pg_get_i64(r, i, 0, &cands[i].id);
		if (rc == 0)
			rc = pg_get_int(r, i, 1, 0, OTP_CH_COUNT - 1, &ch);
		if (rc == 0)
			rc = pg_get_hash(r, i, 2, cands[i].hash);
		cands[i].channel = (enum otp_channel)ch;
		in.n_cands = (size_t)i + 1;
	}
	pg_steps_clear(first, 4);
	if (rc != 0)
		return rc;

	in.cands = cands;
	memcpy(in.presented, q->presented, sizeof in.presented);
	in.channel_mask = q->channel_mask;
	in.failures = failures > INT32_MAX ? INT32_MAX : (int)failures;
	in.max_failures = q->max_failures;
	otp_check_decide(&in, &out);

	struct pg_params setf = {0}, voidp = {0}, cons = {0};
	struct pg_step second[4];
	size_t n = 0;
	if ((int64_t)out.failures != failures) {
		pp_i64(&setf, q->channel);
		pp_text(&setf, q->target);
		pp_i64(&setf, out.failures);
		pp_i64(&setf, q->now);
		second[n++] = (struct pg_step){.st = PS_SET_FAILURES, .p = &setf};
	}
	if (out.void_all) {
		pp_text(&voidp, q->target);
		pp_text(&voidp, mask);
		pp_i64(&voidp, q->now);
		second[n++] = (struct pg_step){.st = PS_VOID, .p = &voidp};
	}
	if (out.ok && q->consume) {
		pp_i64(&cons, out.matched_id);
		second[n++] = (struct pg_step){.st = PS_CONSUME, .p = &cons};
	}
	second[n++] = (struct pg_step){.st = PS_COUNT_, .sql = "COMMIT"};
	c->committing = true;
	rc = pg_pipeline(c, second, n);
	/* COMMIT of a failed transaction "succeeds" as ROLLBACK: check the tag */
	if (rc == 0 && strcmp(PQcmdStatus(second[n - 1].res), "COMMIT") != 0)
		rc = OTP_ERR_STORE;
	pg_steps_clear(second, n);
	if (rc == 0)
		x->ok = out.ok;
	return rc;
}

static int pg_check(struct store *st, const struct store_check *req, bool *ok)
{
	if (ok != NULL)
		*ok = false;
	if (req == NULL || ok == NULL || !pg_channel_ok(req->channel))
		return OTP_ERR_INVALID;
	if (!pg_target_ok(req->target))
		return OTP_ERR_INVALID;
	struct pg_check_ctx x = {.req = req};
	int rc = pg_run((struct pg_store *)st, PG_DURABLE, pg_check_txn, &x);
	*ok = rc == 0 && x.ok;
	return rc;
}

/* ---- lookups ---------------------------------------------------------------------- */

struct pg_find_ctx {
	enum otp_channel ch;
	const uint8_t *lookup;
	const char *target;
	int64_t now;
	char *out;
	size_t cap;
	uint8_t *sealed;
	size_t sealed_len;
};

static int pg_find_target_txn(struct pg_conn *c, void *arg)
{
	struct pg_find_ctx *x = arg;
	struct pg_params p = {0};
	pp_i64(&p, x->ch);
	pp_bytes(&p, x->lookup, OTP_HASH_LEN);
	pp_i64(&p, x->now);
	PGresult *r = pg_query(c, PS_FIND_TARGET, &p);
	if (r == NULL)
		return OTP_ERR_STORE;
	int rc = OTP_ERR_NOT_FOUND;
	if (PQntuples(r) == 1) {
		const char *t = PQgetvalue(r, 0, 0);
		size_t len = strlen(t);
		if (len < x->cap) {
			memcpy(x->out, t, len + 1);
			rc = 0;
		} else {
			rc = OTP_ERR_INTERNAL;
		}
	}
	PQclear(r);
	return rc;
}

static int pg_find_target(struct store *st, enum otp_channel ch,
                          const uint8_t lookup[OTP_HASH_LEN], int64_t now, char *target,
                          size_t cap)
{
	if (!pg_channel_ok(ch) || lookup == NULL || target == NULL || cap == 0)
		return OTP_ERR_INVALID;
	target[0] = '\0';
	struct pg_find_ctx x = {.ch = ch, .lookup = lookup, .now = now, .out = target, .cap = cap};
	int rc = pg_run((struct pg_store *)st, PG_READ, pg_find_target_txn, &x);
	if (rc != 0)
		target[0] = '\0';
	return rc;
}

static int pg_find_sealed_txn(struct pg_conn *c, void *arg)
{
	struct pg_find_ctx *x = arg;
	struct pg_params p = {0};
	pp_text(&p, x->target);
	pp_i64(&p, x->now);
	PGresult *r = pg_query(c, PS_FIND_SEALED, &p);
	if (r == NULL)
		return OTP_ERR_STORE;
	int rc = OTP_ERR_NOT_FOUND;
	if (PQntuples(r) == 1)
		rc = pg_get_bytes(r, 0, 0, &x->sealed, &x->sealed_len);
	if (rc == 0 && x->sealed == NULL)
		rc = OTP_ERR_NOT_FOUND;
	PQclear(r);
	return rc;
}

static int pg_find_sealed_code(struct store *st, const char *target, int64_t now,
                               uint8_t **sealed, size_t *len)
{
	if (sealed == NULL || len == NULL)
		return OTP_ERR_INVALID;
	*sealed = NULL;
	*len = 0;
	if (!pg_target_ok(target))
		return OTP_ERR_INVALID;
	struct pg_find_ctx x = {.target = target, .now = now};
	int rc = pg_run((struct pg_store *)st, PG_READ, pg_find_sealed_txn, &x);
	if (rc == 0) {
		*sealed = x.sealed;
		*len = x.sealed_len;
	} else {
		free(x.sealed);
	}
	return rc;
}

/* ---- purge ------------------------------------------------------------------------ */

struct pg_purge_ctx {
	int64_t before, jobs_before, deleted;
};

static int pg_count_deleted(struct pg_conn *c, enum pg_stmt st, int64_t at, int64_t *sum)
{
	struct pg_params p = {0};
	pp_i64(&p, at);
	PGresult *r = pg_query(c, st, &p);
	if (r == NULL)
		return OTP_ERR_STORE;
	int64_t n = 0;
	int rc = PQntuples(r) == 1 ? pg_get_i64(r, 0, 0, &n) : OTP_ERR_STORE;
	PQclear(r);
	*sum += n;
	return rc;
}

static int pg_purge_txn(struct pg_conn *c, void *arg)
{
	struct pg_purge_ctx *x = arg;
	int64_t deleted = 0;
	x->deleted = 0;
	int rc = pg_begin(c);
	if (rc == 0)
		rc = pg_count_deleted(c, PS_PURGE_CODES, x->before, &deleted);
	if (rc == 0) {
		struct pg_params p = {0};
		pp_i64(&p, x->before);
		rc = pg_command(c, PS_PURGE_SEALED, &p, NULL);
	}
	if (rc == 0)
		rc = pg_count_deleted(c, PS_PURGE_ATTEMPTS, x->before, &deleted);
	if (rc == 0)
		rc = pg_count_deleted(c, PS_PURGE_JOBS, x->jobs_before, &deleted);
	if (rc == 0)
		rc = pg_commit(c);
	if (rc == 0)
		x->deleted = deleted;
	return rc;
}

static int pg_purge(struct store *st, int64_t before, int64_t jobs_before, int64_t *deleted)
{
	struct pg_purge_ctx x = {.before = before, .jobs_before = jobs_before};
	int rc = pg_run((struct pg_store *)st, PG_RELAXED, pg_purge_txn, &x);
	if (deleted != NULL)
		*deleted = rc == 0 ? x.deleted : 0;
	return rc;
}

/* ---- outbox ----------------------------------------------------------------------- */

struct pg_claim_ctx {
	int64_t now, lease_until;
	struct store_job *jobs;
	size_t max, n;
};

static void pg_copy_text(char *out, size_t cap, const PGresult *r, int row, int col)
{
	pg_text_clean(out, cap, PQgetisnull(r, row, col) ? "" : PQgetvalue(r, row, col));
}

static int pg_claim_txn(struct pg_conn *c, void *arg)
{
	struct pg_claim_ctx *x = arg;
	struct pg_params p = {0};
	pp_i64(&p, x->now);
	pp_i64(&p, x->lease_until);
	pp_i64(&p, (int64_t)x->max);
	x->n = 0;
	c->committing = true;
	PGresult *r = pg_query(c, PS_CLAIM, &p);
	if (r == NULL)
		return OTP_ERR_STORE;
	int rc = 0;
	int rows = PQntuples(r);
	for (int i = 0; i < rows && (size_t)i < x->max && rc == 0; i++) {
		struct store_job *j = &x->jobs[i];
		int ch = 0;
		memset(j, 0, sizeof *j);
		rc = pg_get_i64(r, i, 0, &j->id);
		if (rc == 0)
			rc = pg_get_int(r, i, 1, 0, OTP_CH_COUNT - 1, &ch);
		j->channel = (enum otp_channel)ch;
		pg_copy_text(j->provider, sizeof j->provider, r, i, 2);
		if (rc == 0)
			rc = pg_get_bytes(r, i, 3, &j->payload, &j->payload_len);
		if (rc == 0)
			rc = pg_get_int(r, i, 4, 0, INT32_MAX, &j->attempts);
		if (rc == 0)
			rc = pg_get_i64(r, i, 5, &j->created_at);
		if (rc == 0)
			rc = pg_get_i64(r, i, 6, &j->lease_until);
		x->n = (size_t)i + 1;
	}
	PQclear(r);
	if (rc != 0) {
		for (size_t i = 0; i < x->n; i++)
			store_job_fini(&x->jobs[i]);
		x->n = 0;
	}
	return rc;
}

static int pg_outbox_claim(struct store *st, int64_t now, int64_t lease_until,
                           struct store_job *jobs, size_t max, size_t *n_out)
{
	if (n_out == NULL || (max > 0 && jobs == NULL))
		return OTP_ERR_INVALID;
	*n_out = 0;
	if (max == 0)
		return 0;
	struct pg_claim_ctx x = {.now = now, .lease_until = lease_until, .jobs = jobs, .max = max};
	int rc = pg_run((struct pg_store *)st, PG_RELAXED, pg_claim_txn, &x);
	*n_out = rc == 0 ? x.n : 0;
	return rc;
}

struct pg_mark_ctx {
	enum pg_stmt st;
	struct pg_params p;
};

static int pg_mark_txn(struct pg_conn *c, void *arg)
{
	struct pg_mark_ctx *x = arg;
	int64_t changed = 0;
	c->committing = true;
	int rc = pg_command(c, x->st, &x->p, &changed);
	if (rc == 0 && changed == 0)
		rc = OTP_ERR_NOT_FOUND;
	return rc;
}

static int pg_outbox_sent(struct store *st, int64_t id, int64_t now, const char *msgid)
{
	char m[STORE_MSGID_MAX];
	struct pg_mark_ctx x = {.st = PS_SENT};
	pg_text_clean(m, sizeof m, msgid);
	pp_i64(&x.p, id);
	pp_i64(&x.p, now);
	pp_text(&x.p, msgid ? m : NULL);
	return pg_run((struct pg_store *)st, PG_RELAXED, pg_mark_txn, &x);
}

static int pg_outbox_retry(struct store *st, int64_t id, int64_t now, int64_t next_at,
                           const char *error)
{
	char e[STORE_ERROR_MAX];
	struct pg_mark_ctx x = {.st = PS_RETRY};
	pg_text_clean(e, sizeof e, error);
	pp_i64(&x.p, id);
	pp_i64(&x.p, now);
	pp_i64(&x.p, next_at);
	pp_text(&x.p, error ? e : NULL);
	return pg_run((struct pg_store *)st, PG_RELAXED, pg_mark_txn, &x);
}

static int pg_outbox_dead(struct store *st, int64_t id, int64_t now, const char *error)
{
	char e[STORE_ERROR_MAX];
	struct pg_mark_ctx x = {.st = PS_DEAD};
	pg_text_clean(e, sizeof e, error);
	pp_i64(&x.p, id);
	pp_i64(&x.p, now);
	pp_text(&x.p, error ? e : NULL);
	return pg_run((struct pg_store *)st, PG_RELAXED, pg_mark_txn, &x);
}

static int pg_outbox_release(struct store *st, int64_t id)
{
	struct pg_mark_ctx x = {.st = PS_RELEASE};
	pp_i64(&x.p, id);
	return pg_run((struct pg_store *)st, PG_RELAXED, pg_mark_txn, &x);
}

struct pg_list_ctx {
	const struct store_job_filter *f;
	struct store_job_info *rows;
	struct store_outbox_counts *counts;  /* NULL: not asked */
	size_t n;
};

/* PS_STATE_COUNTS' rows into out. */
static int pg_read_counts(const PGresult *r, struct store_outbox_counts *out)
{
	int rc = 0;
	memset(out, 0, sizeof *out);
	for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
		int64_t n = 0;
		rc = pg_get_i64(r, i, 1, &n);
		store_outbox_counts_set(out, PQgetvalue(r, i, 0), n);
	}
	return rc;
}

/* The listing and, when asked, the counts: one round trip, and with the counts one
 * REPEATABLE READ transaction so both are read from one snapshot. */
static int pg_list_txn(struct pg_conn *c, void *arg)
{
	struct pg_list_ctx *x = arg;
	const struct store_job_filter *f = x->f;
	struct pg_params p = {0};
	pp_text(&p, f->state);
	pp_i64(&p, f->channel < 0 ? -1 : f->channel);
	pp_text(&p, f->provider);
	pp_i64(&p, f->before_id);
	pp_i64(&p, (int64_t)f->limit);
	x->n = 0;
	struct pg_step steps[] = {
		{.st = PS_COUNT_, .sql = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"},
		{.st = PS_LIST, .p = &p},
		{.st = PS_STATE_COUNTS},
		{.st = PS_COUNT_, .sql = "COMMIT"},
	};
	struct pg_step *run = x->counts ? steps : steps + 1;
	size_t n_run = x->counts ? 4 : 1;
	int rc = pg_pipeline(c, run, n_run);
	const PGresult *r = steps[1].res;
	int rows = rc == 0 ? PQntuples(r) : 0;
	for (int i = 0; i < rows && (size_t)i < f->limit && rc == 0; i++) {
		struct store_job_info *j = &x->rows[i];
		int ch = 0;
		memset(j, 0, sizeof *j);
		rc = pg_get_i64(r, i, 0, &j->id);
		if (rc == 0)
			rc = pg_get_i64(r, i, 1, &j->code_id);
		if (rc == 0)
			rc = pg_get_int(r, i, 2, 0, OTP_CH_COUNT - 1, &ch);
		j->channel = (enum otp_channel)ch;
		pg_copy_text(j->provider, sizeof j->provider, r, i, 3);
		pg_copy_text(j->state, sizeof j->state, r, i, 4);
		if (rc == 0)
			rc = pg_get_int(r, i, 5, 0, INT32_MAX, &j->attempts);
		if (rc == 0)
			rc = pg_get_i64(r, i, 6, &j->created_at);
		if (rc == 0)
			rc = pg_get_i64(r, i, 7, &j->updated_at);
		if (rc == 0)
			rc = pg_get_i64(r, i, 8, &j->next_at);
		pg_copy_text(j->last_error, sizeof j->last_error, r, i, 9);
		pg_copy_text(j->provider_msg_id, sizeof j->provider_msg_id, r, i, 10);
		x->n = (size_t)i + 1;
	}
	if (rc == 0 && x->counts != NULL)
		rc = pg_read_counts(steps[2].res, x->counts);
	pg_steps_clear(run, n_run);
	return rc;
}

static int pg_outbox_list(struct store *st, const struct store_job_filter *f,
                          struct store_job_info *rows, size_t *n_out,
                          struct store_outbox_counts *counts)
{
	if (n_out != NULL)
		*n_out = 0;
	if (counts != NULL)
		memset(counts, 0, sizeof *counts);
	if (f == NULL || rows == NULL || n_out == NULL || f->limit < 1 || f->limit > PG_LIST_MAX ||
	    f->before_id < 0 || f->channel >= OTP_CH_COUNT ||
	    (f->state != NULL && !pg_utf8_valid(f->state)) ||
	    (f->provider != NULL && !pg_utf8_valid(f->provider)))
		return OTP_ERR_INVALID;
	struct pg_list_ctx x = {.f = f, .rows = rows, .counts = counts};
	int rc = pg_run((struct pg_store *)st, PG_READ, pg_list_txn, &x);
	*n_out = rc == 0 ? x.n : 0;
	if (rc != 0 && counts != NULL)
		memset(counts, 0, sizeof *counts);
	return rc;
}

static int pg_counts_txn(struct pg_conn *c, void *arg)
{
	struct store_outbox_counts *out = arg;
	memset(out, 0, sizeof *out);
	PGresult *r = pg_query(c, PS_STATE_COUNTS, NULL);
	if (r == NULL)
		return OTP_ERR_STORE;
	int rc = pg_read_counts(r, out);
	PQclear(r);
	return rc;
}

static int pg_outbox_counts(struct store *st, struct store_outbox_counts *out)
{
	if (out == NULL)
		return OTP_ERR_INVALID;
	int rc = pg_run((struct pg_store *)st, PG_READ, pg_counts_txn, out);
	if (rc != 0)
		memset(out, 0, sizeof *out);
	return rc;
}

struct pg_row_i64 {
	enum pg_stmt st;
	int64_t *v;
	int n;
};

static int pg_row_i64_txn(struct pg_conn *c, void *arg)
{
	struct pg_row_i64 *x = arg;
	PGresult *r = pg_query(c, x->st, NULL);
	if (r == NULL)
		return OTP_ERR_STORE;
	int rc = PQntuples(r) == 1 && PQnfields(r) == x->n ? 0 : OTP_ERR_STORE;
	for (int i = 0; i < x->n && rc == 0; i++)
		rc = pg_get_i64(r, 0, i, &x->v[i]); /* SQL NULL reads as 0 */
	PQclear(r);
	return rc;
}

/* The n bigint columns of the one row statement st answers; all 0 on failure. */
static int pg_read_row_i64(struct store *st, enum pg_stmt stmt, int64_t *v, int n)
{
	struct pg_row_i64 x = {.st = stmt, .v = v, .n = n};
	int rc = pg_run((struct pg_store *)st, PG_READ, pg_row_i64_txn, &x);
	if (rc != 0)
		memset(v, 0, sizeof *v * (size_t)n);
	return rc;
}

static int pg_outbox_next_due(struct store *st, int64_t *next_at)
{
	if (next_at == NULL)
		return OTP_ERR_INVALID;
	return pg_read_row_i64(st, PS_NEXT_DUE, next_at, 1);
}

static int pg_outbox_backlog(struct store *st, struct store_outbox_backlog *out)
{
	if (out == NULL)
		return OTP_ERR_INVALID;
	int64_t v[3];
	int rc = pg_read_row_i64(st, PS_BACKLOG, v, 3);
	*out = (struct store_outbox_backlog){.pending = v[0], .sending = v[1], .oldest_due = v[2]};
	return rc;
}

/* ---- ping, close ------------------------------------------------------------------ */

static int pg_ping_txn(struct pg_conn *c, void *arg)
{
	PGresult *r = pg_query(c, PS_PING, NULL);
	int rc = r != NULL ? 0 : OTP_ERR_STORE;
	PQclear(r);
	return rc;
}

static int pg_ping(struct store *st)
{
	return pg_run((struct pg_store *)st, PG_READ, pg_ping_txn, NULL);
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

static void pg_close(struct store *st)
{
	pg_free((struct pg_store *)st);
}

static const struct store_ops pg_ops = {
	.name = "postgresql",
	.close = pg_close,
	.ping = pg_ping,
	.send = pg_send,
	.check = pg_check,
	.set_limits = pg_set_limits,
	.get_limits = pg_get_limits,
	.find_target = pg_find_target,
	.find_sealed_code = pg_find_sealed_code,
	.purge = pg_purge,
	.outbox_claim = pg_outbox_claim,
	.outbox_sent = pg_outbox_sent,
	.outbox_retry = pg_outbox_retry,
	.outbox_dead = pg_outbox_dead,
	.outbox_release = pg_outbox_release,
	.outbox_list = pg_outbox_list,
	.outbox_counts = pg_outbox_counts,
	.outbox_next_due = pg_outbox_next_due,
	.outbox_backlog = pg_outbox_backlog,
};

/* ---- open: wait, create, migrate -------------------------------------------------- */

/* A failed query's reason (the server's message, or the connection's). */
static const char *pg_result_error(PGconn *c, const PGresult *r)
{
	const char *m = r ? PQresultErrorMessage(r) : NULL;
	return m && *m ? m : PQerrorMessage(c);
}

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
			char sql[512];
			int len = ident ? snprintf(sql, sizeof sql, "CREATE DATABASE %s", ident) : -1;
			PQfreemem(ident);
			if (len < 0 || (size_t)len >= sizeof sql) {
				pg_errf(err, cap, "database name", "too long");
				rc = OTP_ERR_INVALID;
			} else {
				PGresult *cr = PQexec(m, sql);
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

/* BEGIN and take the migration lock. */
static int pg_migrate_begin(PGconn *c, char *err, size_t cap)
{
	int rc = pg_simple(c, "BEGIN", err, cap);
	if (rc == 0)
		rc = pg_simple(c, PG_MIGRATE_LOCK, err, cap);
	return rc;
}

static void pg_rollback(PGconn *c)
{
	if (PQtransactionStatus(c) != PQTRANS_IDLE) {
		PGresult *r = PQexec(c, "ROLLBACK");
		PQclear(r);
	}
}

/*
 * Create the schema when missing (checked first: CREATE SCHEMA IF NOT EXISTS wants the
 * CREATE privilege even when the schema exists), point the session at it, and apply every
 * migration not yet recorded, each in its own transaction under the migration lock so
 * several otpd starting at once apply each file exactly once.
 */
static int pg_migrate(const struct pg_store *s, PGconn *c, char *err, size_t cap)
{
	PGresult *r = NULL;
	int rc = pg_migrate_begin(c, err, cap);
	if (rc == 0 && s->schema != NULL) {
		const char *vals[1] = {s->schema};
		r = PQexecParams(c, "SELECT 1 FROM pg_namespace WHERE nspname = $1", 1, NULL, vals,
		                 NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			pg_errf(err, cap, "looking for the schema", pg_result_error(c, r));
			rc = OTP_ERR_STORE;
		} else if (PQntuples(r) == 0) {
			char *ident = PQescapeIdentifier(c, s->schema, strlen(s->schema));
			char sql[512];
			int len = ident ? snprintf(sql, sizeof sql, "CREATE SCHEMA %s", ident) : -1;
			PQfreemem(ident);
			if (len < 0 || (size_t)len >= sizeof sql) {
				pg_errf(err, cap, "schema name", "too long");
				rc = OTP_ERR_INVALID;
			} else {
				rc = pg_simple(c, sql, err, cap);
			}
		}
		PQclear(r);
		r = NULL;
	}
	if (rc == 0)
		rc = pg_session_setup(s, c, err, cap);
	if (rc == 0)
		rc = pg_simple(c, "CREATE TABLE IF NOT EXISTS otpd_schema_migrations ("
		                  "version integer PRIMARY KEY, name text NOT NULL, "
		                  "applied_at timestamptz NOT NULL DEFAULT now())", err, cap);
	if (rc == 0) {
		r = PQexec(c, "SELECT coalesce(max(version), 0) FROM otpd_schema_migrations");
		int64_t top = 0;
		if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 ||
		    otp_parse_i64(PQgetvalue(r, 0, 0), 0, INT32_MAX, &top) != 0) {
			pg_errf(err, cap, "reading the schema version", pg_result_error(c, r));
			rc = OTP_ERR_STORE;
		} else if (top > (int64_t)store_pg_migrations_count) {
			snprintf(err, cap, "postgresql: the database schema is at version %" PRId64
			         ", newer than this otpd knows (%zu): upgrade otpd", top,
			         store_pg_migrations_count);
			rc = OTP_ERR_STORE;
		}
		PQclear(r);
		r = NULL;
	}
	if (rc == 0)
		rc = pg_simple(c, "COMMIT", err, cap);
	pg_rollback(c);

	for (size_t i = 0; i < store_pg_migrations_count && rc == 0; i++) {
		const struct store_migration *m = &store_pg_migrations[i];
		char version[16];
		snprintf(version, sizeof version, "%d", m->version);
		const char *vals[2] = {version, m->name};
		rc = pg_migrate_begin(c, err, cap);
		if (rc != 0)
			break;
		r = PQexecParams(c, "SELECT 1 FROM otpd_schema_migrations WHERE version = $1::integer",
		                 1, NULL, vals, NULL, NULL, 0);
		bool applied = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0;
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			pg_errf(err, cap, "reading the migrations", pg_result_error(c, r));
			rc = OTP_ERR_STORE;
		}
		PQclear(r);
		r = NULL;
		if (rc == 0 && !applied) {
			r = PQexec(c, m->sql);
			ExecStatusType st = PQresultStatus(r);
			if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
				char what[160];
				snprintf(what, sizeof what, "migration %s", m->name);
				pg_errf(err, cap, what, pg_result_error(c, r));
				rc = OTP_ERR_STORE;
			}
			PQclear(r);
			r = NULL;
		}
		if (rc == 0 && !applied) {
			r = PQexecParams(c, "INSERT INTO otpd_schema_migrations (version, name) "
			                    "VALUES ($1::integer, $2::text)", 2, NULL, vals, NULL, NULL, 0);
			if (PQresultStatus(r) != PGRES_COMMAND_OK) {
				pg_errf(err, cap, "recording a migration", pg_result_error(c, r));
				rc = OTP_ERR_STORE;
			}
			PQclear(r);
			r = NULL;
		}
		if (rc == 0)
			rc = pg_simple(c, "COMMIT", err, cap);
		pg_rollback(c);
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
	struct pg_store *s = calloc(1, sizeof *s);
	if (s == NULL) {
		snprintf(err, cap, "postgresql: out of memory");
		return NULL;
	}
	s->base.ops = &pg_ops;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	bool nomem = false;
	char port[16];
	snprintf(port, sizeof port, "%d", cfg->port);
	s->host = pg_strdup_opt(cfg->host, &nomem);
	s->real_host = pg_strdup_opt(cfg->real_host, &nomem);
	s->port = pg_strdup_opt(cfg->port > 0 ? port : NULL, &nomem);
	s->database = pg_strdup_opt(cfg->database, &nomem);
	s->user = pg_strdup_opt(cfg->user, &nomem);
	s->password = pg_strdup_opt(cfg->password, &nomem);
	s->schema = pg_strdup_opt(cfg->schema, &nomem);
	s->n = cfg->pool;
	s->conns = calloc((size_t)cfg->pool, sizeof *s->conns);
	if (nomem || s->conns == NULL) {
		snprintf(err, cap, "postgresql: out of memory");
		pg_free(s);
		return NULL;
	}

	int64_t deadline = pg_mono_ms() + (int64_t)cfg->connect_timeout * 1000;
	int rc = 0;
	if (s->real_host != NULL)
		rc = pg_ensure_database(s, deadline, err, cap);
	PGconn *setup = NULL;
	if (rc == 0) {
		setup = pg_connect_wait(s, s->real_host ? s->real_host : s->host, s->database,
		                        deadline, err, cap);
		if (setup == NULL)
			rc = OTP_ERR_STORE;
	}
	if (rc == 0)
		rc = pg_migrate(s, setup, err, cap);
	PQfinish(setup);

	/* the first connection of the pool, through PG_HOST, proves it works */
	if (rc == 0) {
		for (;;) {
			int64_t now = pg_mono_ms();
			int64_t until = deadline > now + PG_RECONNECT_MS ? deadline : now + PG_RECONNECT_MS;
			rc = pg_conn_ready(s, &s->conns[0], until, err, cap);
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
