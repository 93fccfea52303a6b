/*
 * sqlite.c - the embedded store backend: one SQLite file in WAL mode with full
 * synchronous commits, secure_delete on, migrations from src/store/sql/sqlite/.
 * It must not log or print: every failure is returned (OTP_ERR_STORE for the database).
 *
 * DESIGN
 * Reads (ping, get_limits, find_target, outbox listing, ...) take a connection from a
 * pool guarded by `pool_mu`/`pool_cv`, run one statement (or one read transaction) on it
 * alone, and give it back.
 *
 * Writes are group-committed on one writer connection. A caller queues its operation (a
 * function run against a connection, with its argument) and waits. The first caller
 * that finds no batch running becomes the leader: it takes every queued operation (up to
 * WRITE_BATCH_MAX), runs them in one BEGIN IMMEDIATE transaction, each inside its own
 * SAVEPOINT so a refused or failed one is undone alone, commits once (one fsync for the
 * whole batch), publishes every result and wakes the waiters; one of them leads the
 * next batch. The operations of a batch run one after another on one connection, so
 * each sees the writes of those before it (a limit count never misses a send of its own
 * batch). BEGIN IMMEDIATE takes SQLite's write lock up front, so a read-then-write (limit
 * counts then insert, failures then update) is atomic against other processes too.
 * A check that changes nothing (a right code, no consumption) is answered from a read
 * snapshot on a pool connection and never queues for the writer.
 *
 * Every connection caches its prepared statements (stmt_sql[] below); a statement is
 * reset as soon as it has been read so no connection keeps a read transaction open.
 *
 * Erasure: secure_delete zeroes erased payloads and deleted rows in the database file.
 * Until a checkpoint, older page images also sit in the -wal file, which SQLite reuses
 * from its start and removes on the last close; everything secret in either file is a
 * keyed hash or an AEAD blob anyway.
 */
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>
#include <sqlite3.h>

#include "store/migrations.h"

#define POOL_MAX 256
#define BUSY_TIMEOUT_MS 10000
#define WRITE_BATCH_MAX 128
#define CHECK_CANDIDATES_MAX 1024  /* live codes of one target compared by a check */
#define LIST_LIMIT_MAX 1000
#define IP_MAX 64                  /* longest ip text (IPv6 with zone fits) */

/* The SQL below lists the channels 0..4 where it must cover them all. */
_Static_assert(OTP_CH_COUNT == 5, "update the channel lists in stmt_sql[]");

#define LIVE "expire_at > ?7 AND void = 0 AND consumed = 0"
#define CHANNELS_IN "channel IN (?1, ?2, ?3, ?4, ?5)"

enum stmt_id {
	ST_BEGIN_WRITE,
	ST_BEGIN_READ,
	ST_COMMIT,
	ST_ROLLBACK,
	ST_SAVEPOINT,
	ST_RELEASE,
	ST_ROLLBACK_TO,
	ST_PING,
	ST_RULES,
	ST_COUNT_TARGET,
	ST_COUNT_IP,
	ST_INSERT_CODE,
	ST_RESET_ATTEMPTS,
	ST_INSERT_JOB,
	ST_CANDIDATES,
	ST_FAILURES,
	ST_SET_FAILURES,
	ST_VOID_ALL,
	ST_CONSUME,
	ST_DELETE_RULES,
	ST_MAX_POSITION,
	ST_INSERT_RULE,
	ST_FIND_TARGET,
	ST_FIND_SEALED,
	ST_PURGE_JOBS,
	ST_PURGE_CODES,
	ST_PURGE_ATTEMPTS,
	ST_CLAIM_SELECT,
	ST_CLAIM_UPDATE,
	ST_JOB_SENT,
	ST_JOB_RETRY,
	ST_JOB_DEAD,
	ST_JOB_RELEASE,
	ST_LIST,
	ST_COUNTS,
	ST_NEXT_DUE,
	ST_BACKLOG,
	ST_COUNT
};

static const char *const stmt_sql[ST_COUNT] = {
	[ST_BEGIN_WRITE] = "BEGIN IMMEDIATE",
	[ST_BEGIN_READ] = "BEGIN",
	[ST_COMMIT] = "COMMIT",
	[ST_ROLLBACK] = "ROLLBACK",
	[ST_SAVEPOINT] = "SAVEPOINT op",
	[ST_RELEASE] = "RELEASE op",
	[ST_ROLLBACK_TO] = "ROLLBACK TO op",
	[ST_PING] = "SELECT 1",
	[ST_RULES] =
		"SELECT kind, minutes, rate FROM limit_rules WHERE channel = ?1 ORDER BY position",
	/* only whether the count reaches the rate matters: stop counting past it */
	[ST_COUNT_TARGET] =
		"SELECT count(*) FROM (SELECT 1 FROM codes"
		" WHERE channel = ?1 AND target = ?2 AND created_at >= ?3 LIMIT ?4)",
	[ST_COUNT_IP] =
		"SELECT count(*) FROM (SELECT 1 FROM codes"
		" WHERE channel = ?1 AND ip = ?2 AND created_at >= ?3 LIMIT ?4)",
	[ST_INSERT_CODE] =
		"INSERT INTO codes (channel, target, code_hash, lookup_hash, sealed_code, ip,"
		" created_at, expire_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
	[ST_RESET_ATTEMPTS] = "DELETE FROM attempts WHERE channel = ?1 AND target = ?2",
	[ST_INSERT_JOB] =
		"INSERT INTO outbox (code_id, channel, provider, state, payload, next_at,"
		" request_id, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6, ?6)",
	[ST_CANDIDATES] =
		"SELECT id, channel, code_hash FROM codes WHERE " CHANNELS_IN " AND target = ?6"
		" AND " LIVE " ORDER BY id DESC LIMIT ?8",
	[ST_FAILURES] = "SELECT failures FROM attempts WHERE channel = ?1 AND target = ?2",
	[ST_SET_FAILURES] =
		"INSERT INTO attempts (channel, target, failures) VALUES (?1, ?2, ?3)"
		" ON CONFLICT (channel, target) DO UPDATE SET failures = excluded.failures",
	[ST_VOID_ALL] =
		"UPDATE codes SET void = 1 WHERE " CHANNELS_IN " AND target = ?6 AND " LIVE,
	[ST_CONSUME] = "UPDATE codes SET consumed = 1 WHERE id = ?1",
	[ST_DELETE_RULES] = "DELETE FROM limit_rules WHERE channel = ?1 AND kind = ?2",
	[ST_MAX_POSITION] =
		"SELECT coalesce(max(position), 0) FROM limit_rules WHERE channel = ?1",
	[ST_INSERT_RULE] =
		"INSERT INTO limit_rules (channel, position, kind, minutes, rate)"
		" VALUES (?1, ?2, ?3, ?4, ?5)",
	[ST_FIND_TARGET] =
		"SELECT target FROM codes WHERE channel = ?1 AND lookup_hash = ?2"
		" AND expire_at > ?3 AND void = 0 AND consumed = 0 ORDER BY id DESC LIMIT 1",
	[ST_FIND_SEALED] =
		"SELECT sealed_code FROM codes WHERE channel IN (0, 1, 2, 3, 4) AND target = ?1"
		" AND expire_at > ?2 AND void = 0 AND consumed = 0 ORDER BY id DESC LIMIT 1",
	[ST_PURGE_JOBS] =
		"DELETE FROM outbox WHERE state IN ('sent', 'dead', 'skipped') AND updated_at < ?1",
	/* a code is also a send that limits count: keep it while it may be inside the
	 * longest window of its channel */
	[ST_PURGE_CODES] =
		"DELETE FROM codes WHERE expire_at < ?1 AND created_at < ?1 - 60 *"
		" (SELECT coalesce(max(minutes), 0) FROM limit_rules r"
		"  WHERE r.channel = codes.channel)",
	[ST_PURGE_ATTEMPTS] =
		"DELETE FROM attempts WHERE NOT EXISTS (SELECT 1 FROM codes c"
		" WHERE c.channel IN (0, 1, 2, 3, 4) AND c.target = attempts.target"
		" AND c.expire_at >= ?1 AND c.void = 0 AND c.consumed = 0)",
	[ST_CLAIM_SELECT] =
		"SELECT id FROM outbox WHERE (state = 'pending' AND next_at <= ?1)"
		" OR (state = 'sending' AND lease_until < ?1) ORDER BY next_at, id LIMIT ?2",
	[ST_CLAIM_UPDATE] =
		"UPDATE outbox SET state = 'sending', lease_until = ?2, updated_at = ?3"
		" WHERE id = ?1 RETURNING channel, provider, payload, attempts, created_at",
	[ST_JOB_SENT] =
		"UPDATE outbox SET state = 'sent', attempts = attempts + 1, provider_msg_id = ?3,"
		" payload = NULL, lease_until = NULL, updated_at = ?2"
		" WHERE id = ?1 AND state = 'sending'",
	[ST_JOB_RETRY] =
		"UPDATE outbox SET state = 'pending', attempts = attempts + 1, next_at = ?3,"
		" last_error = ?4, lease_until = NULL, updated_at = ?2"
		" WHERE id = ?1 AND state = 'sending'",
	[ST_JOB_DEAD] =
		"UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = ?3,"
		" payload = NULL, lease_until = NULL, updated_at = ?2"
		" WHERE id = ?1 AND state = 'sending'",
	[ST_JOB_RELEASE] =
		"UPDATE outbox SET state = 'pending', lease_until = NULL"
		" WHERE id = ?1 AND state = 'sending'",
	[ST_LIST] =
		"SELECT id, code_id, channel, provider, state, attempts, created_at, updated_at,"
		" next_at, last_error, provider_msg_id FROM outbox"
		" WHERE (?1 IS NULL OR state = ?1) AND (?2 < 0 OR channel = ?2)"
		" AND (?3 IS NULL OR provider = ?3) AND (?4 = 0 OR id < ?4)"
		" ORDER BY id DESC LIMIT ?5",
	[ST_COUNTS] = "SELECT state, count(*) FROM outbox GROUP BY state",
	[ST_NEXT_DUE] = "SELECT min(next_at) FROM outbox WHERE state = 'pending'",
	[ST_BACKLOG] = "SELECT (SELECT count(*) FROM outbox WHERE state = 'pending'), "
	               "(SELECT count(*) FROM outbox WHERE state = 'sending'), "
	               "(SELECT min(next_at) FROM outbox WHERE state = 'pending')",
};

/* One database connection and its statement cache. Used by one thread at a time. */
struct conn {
	sqlite3 *db;
	sqlite3_stmt *st[ST_COUNT];
	struct otp_candidate *cands; /* check's scratch buffer, grown up to the maximum */
	size_t cands_cap;
};

/* A write operation waiting for (or inside) a group commit. Lives on its caller's stack
 * until `done`. */
struct wop {
	int (*fn)(struct conn *c, void *arg);
	void *arg;
	int rc;
	bool done;
	struct wop *next;
};

struct sqlite_store {
	struct store base;

	pthread_mutex_t pool_mu;       /* guards free_conns, n_free */
	pthread_cond_t pool_cv;        /* a reader was given back */
	struct conn *readers;          /* pool connections */
	struct conn **free_conns;
	size_t n_readers, n_free;

	pthread_mutex_t w_mu;          /* guards w_head, w_tail, w_busy, every wop.done */
	pthread_cond_t w_cv;           /* a batch finished */
	struct wop *w_head, *w_tail;   /* queued operations, oldest first */
	bool w_busy;                   /* a leader is running a batch */
	struct conn writer;            /* used only by the current leader */
};

static int db_err(int rc)
{
	return (rc & 0xff) == SQLITE_NOMEM ? OTP_ERR_NOMEM : OTP_ERR_STORE;
}

/* The cached statement `id` of c, prepared on first use; NULL when it can't be. */
static sqlite3_stmt *stmt(struct conn *c, enum stmt_id id)
{
	if (c->st[id] == NULL &&
	    sqlite3_prepare_v3(c->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT, &c->st[id],
	                       NULL) != SQLITE_OK)
		return NULL;
	return c->st[id];
}

/* Reset after use: drops the statement's read lock and blob references. */
static void stmt_done(sqlite3_stmt *st)
{
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
}

/* Run a statement that returns no rows (its parameters already bound). */
static int stmt_exec(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);
	stmt_done(st);
	return rc == SQLITE_DONE ? 0 : db_err(rc);
}

static int exec_simple(struct conn *c, enum stmt_id id)
{
	sqlite3_stmt *st = stmt(c, id);
	if (st == NULL)
		return OTP_ERR_STORE;
	return stmt_exec(st);
}

static int bind_text(sqlite3_stmt *st, int i, const char *s)
{
	if (s == NULL)
		return sqlite3_bind_null(st, i);
	return sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

/* Bind at most max - 1 bytes of s, cut at a UTF-8 character boundary. */
static int bind_text_bounded(sqlite3_stmt *st, int i, const char *s, size_t max)
{
	if (s == NULL)
		return sqlite3_bind_null(st, i);
	size_t n = strnlen(s, max);
	if (n >= max) {
		n = max - 1;
		while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
			n--;
	}
	return sqlite3_bind_text(st, i, s, (int)n, SQLITE_STATIC);
}

static int bind_blob(sqlite3_stmt *st, int i, const void *p, size_t len)
{
	if (p == NULL)
		return sqlite3_bind_null(st, i);
	return sqlite3_bind_blob64(st, i, p, len, SQLITE_STATIC);
}

/* Bind ?1..?5 to the channels of mask (-1 for the ones not in it). */
static int bind_channels(sqlite3_stmt *st, unsigned mask)
{
	int rc = SQLITE_OK;
	for (int ch = 0; ch < OTP_CH_COUNT; ch++)
		rc |= sqlite3_bind_int(st, ch + 1, (mask & OTP_CH_BIT(ch)) ? ch : -1);
	return rc;
}

/* Copy column i (text) into dst of cap bytes; "" for NULL. */
static void column_copy(sqlite3_stmt *st, int i, char *dst, size_t cap)
{
	const unsigned char *s = sqlite3_column_text(st, i);
	size_t n = s ? (size_t)sqlite3_column_bytes(st, i) : 0;
	if (n >= cap)
		n = cap - 1;
	if (n)
		memcpy(dst, s, n);
	dst[n] = '\0';
}

static bool channel_valid(int ch)
{
	return ch >= 0 && ch < OTP_CH_COUNT;
}

static bool target_valid(const char *t)
{
	return t != NULL && strnlen(t, OTP_TARGET_MAX + 1) <= OTP_TARGET_MAX;
}

/* ---- connections ------------------------------------------------------------------ */

static void conn_close(struct conn *c)
{
	for (size_t i = 0; i < ST_COUNT; i++) {
		sqlite3_finalize(c->st[i]);
		c->st[i] = NULL;
	}
	if (c->db != NULL)
		sqlite3_close_v2(c->db);
	c->db = NULL;
	free(c->cands);
	c->cands = NULL;
	c->cands_cap = 0;
}

static int conn_open(struct conn *c, const char *path, char *err, size_t cap)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_open_v2(path, &c->db,
	                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
	                         SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		snprintf(err, cap, "sqlite: cannot open %s: %s", path,
		         c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
		goto fail;
	}
	sqlite3_extended_result_codes(c->db, 1);
	sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
	sqlite3_db_config(c->db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);

	/* WAL lets readers run beside the writer; check it took (it can't on some file
	 * systems, and then every reader would block the writer) */
	rc = sqlite3_prepare_v2(c->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		snprintf(err, cap, "sqlite: %s: cannot set WAL mode: %s", path,
		         sqlite3_errmsg(c->db));
		goto fail;
	}
	const char *mode = (const char *)sqlite3_column_text(st, 0);
	if (mode == NULL || strcmp(mode, "wal") != 0) {
		snprintf(err, cap, "sqlite: %s: journal mode is %s, not wal", path,
		         mode ? mode : "unknown");
		goto fail;
	}
	sqlite3_finalize(st);
	st = NULL;

	/* FULL: a commit is on disk when it returns; secure_delete: erased payloads and
	 * deleted codes are overwritten with zeros, not left in free pages */
	rc = sqlite3_exec(c->db,
	                  "PRAGMA synchronous = FULL;"
	                  "PRAGMA foreign_keys = ON;"
	                  "PRAGMA secure_delete = ON;", NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		snprintf(err, cap, "sqlite: %s: %s", path, sqlite3_errmsg(c->db));
		goto fail;
	}
	return 0;

fail:
	sqlite3_finalize(st);
	conn_close(c);
	return OTP_ERR_STORE;
}

/* Exec a script on the migration path, with the reason in err on failure. */
static int exec_script(sqlite3 *db, const char *sql, const char *what, char *err, size_t cap)
{
	char *msg = NULL;
	if (sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK)
		return 0;
	snprintf(err, cap, "sqlite: %s: %s", what, msg ? msg : sqlite3_errmsg(db));
	sqlite3_free(msg);
	return OTP_ERR_STORE;
}

/* Name of applied migration `version`, copied to name; "" when not recorded. */
static int migration_name(sqlite3 *db, int version, char *name, size_t cap)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(db, "SELECT name FROM schema_migrations WHERE version = ?1",
	                            -1, &st, NULL);
	if (rc != SQLITE_OK)
		return OTP_ERR_STORE;
	sqlite3_bind_int(st, 1, version);
	name[0] = '\0';
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		column_copy(st, 0, name, cap);
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : OTP_ERR_STORE;
}

/*
 * Apply the migrations the database lacks, each in its own transaction. The version is
 * read inside BEGIN IMMEDIATE so two processes opening the same file at once apply each
 * migration once. Refuses a schema newer than this binary, or one whose applied
 * migrations are not ours.
 */
static int migrate(sqlite3 *db, char *err, size_t cap)
{
	sqlite3_stmt *st = NULL;
	int rc = exec_script(db,
	                     "CREATE TABLE IF NOT EXISTS schema_migrations ("
	                     " version INTEGER PRIMARY KEY,"
	                     " name TEXT NOT NULL,"
	                     " applied_at INTEGER NOT NULL)", "schema_migrations", err, cap);
	if (rc)
		return rc;
	for (;;) {
		rc = exec_script(db, "BEGIN IMMEDIATE", "migrations", err, cap);
		if (rc)
			return rc;
		if (sqlite3_prepare_v2(db, "SELECT coalesce(max(version), 0) FROM schema_migrations",
		                       -1, &st, NULL) != SQLITE_OK ||
		    sqlite3_step(st) != SQLITE_ROW) {
			snprintf(err, cap, "sqlite: reading schema version: %s", sqlite3_errmsg(db));
			goto fail;
		}
		int64_t have = sqlite3_column_int64(st, 0);
		sqlite3_finalize(st);
		st = NULL;
		if (have < 0 || (uint64_t)have > store_sqlite_migrations_count) {
			snprintf(err, cap, "sqlite: database schema version %lld is newer than this"
			         " otpd knows (%zu): upgrade otpd", (long long)have,
			         store_sqlite_migrations_count);
			goto fail;
		}
		if (have > 0) {
			char name[128];
			const struct store_migration *last = &store_sqlite_migrations[have - 1];
			if (migration_name(db, (int)have, name, sizeof name) != 0 ||
			    strcmp(name, last->name) != 0) {
				snprintf(err, cap, "sqlite: migration %lld is recorded as \"%s\", this"
				         " otpd has \"%s\"", (long long)have, name, last->name);
				goto fail;
			}
		}
		if ((uint64_t)have == store_sqlite_migrations_count)
			return exec_script(db, "COMMIT", "migrations", err, cap);

		const struct store_migration *m = &store_sqlite_migrations[have];
		if (m->version != have + 1) {
			snprintf(err, cap, "sqlite: migration %s out of order", m->name);
			goto fail;
		}
		if (exec_script(db, m->sql, m->name, err, cap) != 0)
			goto fail;
		if (sqlite3_prepare_v2(db, "INSERT INTO schema_migrations (version, name,"
		                       " applied_at) VALUES (?1, ?2, ?3)", -1, &st, NULL)
		    != SQLITE_OK) {
			snprintf(err, cap, "sqlite: %s: %s", m->name, sqlite3_errmsg(db));
			goto fail;
		}
		sqlite3_bind_int(st, 1, m->version);
		sqlite3_bind_text(st, 2, m->name, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, (sqlite3_int64)time(NULL));
		if (sqlite3_step(st) != SQLITE_DONE) {
			snprintf(err, cap, "sqlite: %s: %s", m->name, sqlite3_errmsg(db));
			goto fail;
		}
		sqlite3_finalize(st);
		st = NULL;
		rc = exec_script(db, "COMMIT", m->name, err, cap);
		if (rc)
			goto fail;
	}

fail:
	sqlite3_finalize(st);
	if (!sqlite3_get_autocommit(db))
		sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	return OTP_ERR_STORE;
}

/* ---- the reader pool ---------------------------------------------------------------- */

static struct conn *reader_take(struct sqlite_store *s)
{
	pthread_mutex_lock(&s->pool_mu);
	while (s->n_free == 0)
		pthread_cond_wait(&s->pool_cv, &s->pool_mu);
	struct conn *c = s->free_conns[--s->n_free];
	pthread_mutex_unlock(&s->pool_mu);
	return c;
}

static void reader_give(struct sqlite_store *s, struct conn *c)
{
	pthread_mutex_lock(&s->pool_mu);
	s->free_conns[s->n_free++] = c;
	pthread_cond_signal(&s->pool_cv);
	pthread_mutex_unlock(&s->pool_mu);
}

/* ---- group commit ------------------------------------------------------------------- */

static void batch_fail(struct wop *batch, int rc)
{
	for (struct wop *w = batch; w != NULL; w = w->next)
		w->rc = rc;
}

static void rollback(struct conn *c)
{
	if (!sqlite3_get_autocommit(c->db))
		exec_simple(c, ST_ROLLBACK);
}

/* Run a batch in one transaction on the writer: see DESIGN. Sets every wop's rc. */
static void batch_run(struct conn *c, struct wop *batch)
{
	bool single = batch->next == NULL;
	int rc = exec_simple(c, ST_BEGIN_WRITE);
	if (rc) {
		rollback(c);
		batch_fail(batch, rc);
		return;
	}
	for (struct wop *w = batch; w != NULL; w = w->next) {
		if (!single && (rc = exec_simple(c, ST_SAVEPOINT)) != 0)
			goto fail;
		w->rc = w->fn(c, w->arg);
		/* some errors (disk full, I/O) make SQLite roll back the whole transaction */
		if (sqlite3_get_autocommit(c->db)) {
			rc = OTP_ERR_STORE;
			goto fail;
		}
		if (single)
			break;
		if (w->rc != 0 && (rc = exec_simple(c, ST_ROLLBACK_TO)) != 0)
			goto fail;
		if ((rc = exec_simple(c, ST_RELEASE)) != 0)
			goto fail;
	}
	if (single && batch->rc != 0) {
		rollback(c);
		return;
	}
	rc = exec_simple(c, ST_COMMIT);
	if (rc == 0)
		return;
fail:
	rollback(c);
	batch_fail(batch, rc ? rc : OTP_ERR_STORE);
}

/* Append w to the write queue; w_mu held. w stays queued until a leader takes it. */
static void queue_push(struct sqlite_store *s, struct wop *w)
{
	if (s->w_tail != NULL)
		s->w_tail->next = w;
	else
		s->w_head = w;
	s->w_tail = w;
}

/* Run fn(writer, arg) inside a group commit; returns its result once durable (or the
 * error that kept it from committing). */
static int write_run(struct sqlite_store *s, int (*fn)(struct conn *, void *), void *arg)
{
	struct wop op = {.fn = fn, .arg = arg};

	pthread_mutex_lock(&s->w_mu);
	queue_push(s, &op);
	while (!op.done) {
		if (s->w_busy) {
			pthread_cond_wait(&s->w_cv, &s->w_mu);
			continue;
		}
		/* lead: take the queue (or its first WRITE_BATCH_MAX) */
		s->w_busy = true;
		struct wop *batch = s->w_head, *last = batch;
		for (size_t n = 1; last->next != NULL && n < WRITE_BATCH_MAX; n++)
			last = last->next;
		s->w_head = last->next;
		if (s->w_head == NULL)
			s->w_tail = NULL;
		last->next = NULL;
		pthread_mutex_unlock(&s->w_mu);

		batch_run(&s->writer, batch);

		pthread_mutex_lock(&s->w_mu);
		for (struct wop *w = batch, *next; w != NULL; w = next) {
			next = w->next;
			w->done = true; /* w may be gone once w_mu is released */
		}
		s->w_busy = false;
		pthread_cond_broadcast(&s->w_cv);
	}
	pthread_mutex_unlock(&s->w_mu);
	return op.rc;
}

/* ---- send ------------------------------------------------------------------------- */

static int load_rules(struct conn *c, enum otp_channel ch, struct otp_limit_rule *rules,
                      size_t cap, size_t *n)
{
	sqlite3_stmt *st = stmt(c, ST_RULES);
	if (st == NULL)
		return OTP_ERR_STORE;
	*n = 0;
	int rc = sqlite3_bind_int(st, 1, (int)ch);
	while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (*n == cap) {
			rc = SQLITE_CORRUPT; /* set_limits never stores more */
			break;
		}
		struct otp_limit_rule *r = &rules[(*n)++];
		r->kind = sqlite3_column_int(st, 0) == OTP_LIMIT_IP ? OTP_LIMIT_IP : OTP_LIMIT_TARGET;
		r->minutes = sqlite3_column_int(st, 1);
		r->rate = sqlite3_column_int(st, 2);
		rc = SQLITE_OK;
	}
	stmt_done(st);
	return rc == SQLITE_DONE ? 0 : db_err(rc);
}

/* Successful sends within the rule's window, counted up to rate + 1. */
static int count_window(struct conn *c, const struct store_send *req,
                        const struct otp_limit_rule *r, int64_t *count)
{
	*count = 0;
	if (r->kind == OTP_LIMIT_IP && req->ip == NULL)
		return 0; /* a send without an ip matches no ip's window */
	sqlite3_stmt *st = stmt(c, r->kind == OTP_LIMIT_IP ? ST_COUNT_IP : ST_COUNT_TARGET);
	if (st == NULL)
		return OTP_ERR_STORE;
	int rc = sqlite3_bind_int(st, 1, (int)req->channel);
	rc |= bind_text(st, 2, r->kind == OTP_LIMIT_IP ? req->ip : req->target);
	rc |= sqlite3_bind_int64(st, 3, otp_limit_window_start(r, req->now));
	rc |= sqlite3_bind_int64(st, 4, (sqlite3_int64)r->rate + 1);
	if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW)
		*count = sqlite3_column_int64(st, 0);
	stmt_done(st);
	return rc == SQLITE_ROW ? 0 : db_err(rc);
}

struct send_op {
	const struct store_send *req;
	struct store_send_result *res;
};

static int send_fn(struct conn *c, void *arg)
{
	const struct send_op *op = arg;
	const struct store_send *req = op->req;
	struct otp_limit_rule rules[2 * OTP_LIMIT_RULES_MAX];
	int64_t counts[2 * OTP_LIMIT_RULES_MAX];
	size_t n = 0;
	sqlite3_stmt *st;

	int rc = load_rules(c, req->channel, rules, 2 * OTP_LIMIT_RULES_MAX, &n);
	for (size_t i = 0; rc == 0 && req->require_ip && req->ip == NULL && i < n; i++) {
		if (rules[i].kind == OTP_LIMIT_IP) {
			op->res->ip_required = true;
			return OTP_ERR_INVALID;
		}
	}
	for (size_t i = 0; rc == 0 && i < n; i++)
		rc = count_window(c, req, &rules[i], &counts[i]);
	if (rc)
		return rc;
	int refused = otp_limits_decide(rules, counts, n);
	if (refused >= 0) {
		op->res->refused_by = rules[refused];
		return OTP_ERR_LIMIT;
	}

	if ((st = stmt(c, ST_INSERT_CODE)) == NULL)
		return OTP_ERR_STORE;
	rc = sqlite3_bind_int(st, 1, (int)req->channel);
	rc |= bind_text(st, 2, req->target);
	rc |= bind_blob(st, 3, req->code_hash, OTP_HASH_LEN);
	rc |= bind_blob(st, 4, req->lookup_hash, OTP_HASH_LEN);
	rc |= bind_blob(st, 5, req->sealed_code, req->sealed_code_len);
	rc |= bind_text(st, 6, req->ip);
	rc |= sqlite3_bind_int64(st, 7, req->now);
	rc |= sqlite3_bind_int64(st, 8, req->expire_at);
	if (rc != SQLITE_OK) {
		stmt_done(st);
		return db_err(rc);
	}
	if ((rc = stmt_exec(st)) != 0)
		return rc;
	op->res->code_id = sqlite3_last_insert_rowid(c->db);

	/* a new code starts with a clean attempt counter */
	if ((st = stmt(c, ST_RESET_ATTEMPTS)) == NULL)
		return OTP_ERR_STORE;
	rc = sqlite3_bind_int(st, 1, (int)req->channel);
	rc |= bind_text(st, 2, req->target);
	if (rc != SQLITE_OK) {
		stmt_done(st);
		return db_err(rc);
	}
	if ((rc = stmt_exec(st)) != 0)
		return rc;

	if ((st = stmt(c, ST_INSERT_JOB)) == NULL)
		return OTP_ERR_STORE;
	rc = sqlite3_bind_int64(st, 1, op->res->code_id);
	rc |= sqlite3_bind_int(st, 2, (int)req->channel);
	rc |= bind_text(st, 3, req->provider);
	rc |= bind_text(st, 4, req->skip ? STORE_JOB_SKIPPED : STORE_JOB_PENDING);
	rc |= bind_blob(st, 5, req->skip ? NULL : req->payload, req->payload_len);
	rc |= sqlite3_bind_int64(st, 6, req->now);
	rc |= bind_text_bounded(st, 7, req->request_id, 128);
	if (rc != SQLITE_OK) {
		stmt_done(st);
		return db_err(rc);
	}
	if ((rc = stmt_exec(st)) != 0)
		return rc;
	op->res->job_id = sqlite3_last_insert_rowid(c->db);
	return 0;
}

static int sq_send(struct store *s, const struct store_send *req, struct store_send_result *res)
{
	if (req == NULL || res == NULL || !channel_valid((int)req->channel) ||
	    !target_valid(req->target) ||
	    (req->ip != NULL && strnlen(req->ip, IP_MAX + 1) > IP_MAX) ||
	    req->provider == NULL ||
	    strnlen(req->provider, STORE_PROVIDER_MAX) >= STORE_PROVIDER_MAX ||
	    (!req->skip && (req->payload == NULL || req->payload_len == 0)) ||
	    (req->sealed_code != NULL && req->sealed_code_len == 0))
		return OTP_ERR_INVALID;
	memset(res, 0, sizeof *res);
	struct send_op op = {.req = req, .res = res};
	int rc = write_run((struct sqlite_store *)s, send_fn, &op);
	if (rc != 0 && rc != OTP_ERR_LIMIT) {
		res->code_id = 0;
		res->job_id = 0;
	}
	return rc;
}

/* ---- check -------------------------------------------------------------------------- */

struct check_state {
	size_t n_cands;
	int failures;
	struct otp_check_outcome out;
};

/* Read the live candidates and the failure count, and decide. */
static int check_load(struct conn *c, const struct store_check *req, struct check_state *cs)
{
	sqlite3_stmt *st = stmt(c, ST_CANDIDATES);
	if (st == NULL)
		return OTP_ERR_STORE;
	cs->n_cands = 0;
	cs->failures = 0;
	int rc = bind_channels(st, req->channel_mask);
	rc |= bind_text(st, 6, req->target);
	rc |= sqlite3_bind_int64(st, 7, req->now);
	rc |= sqlite3_bind_int(st, 8, CHECK_CANDIDATES_MAX);
	while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (cs->n_cands == c->cands_cap) {
			size_t cap = c->cands_cap ? c->cands_cap * 2 : 16;
			if (cap > CHECK_CANDIDATES_MAX)
				cap = CHECK_CANDIDATES_MAX;
			struct otp_candidate *p = realloc(c->cands, cap * sizeof *p);
			if (p == NULL) {
				rc = SQLITE_NOMEM;
				break;
			}
			c->cands = p;
			c->cands_cap = cap;
		}
		struct otp_candidate *cand = &c->cands[cs->n_cands++];
		cand->id = sqlite3_column_int64(st, 0);
		int ch = sqlite3_column_int(st, 1);
		const void *h = sqlite3_column_blob(st, 2);
		if (!channel_valid(ch) || h == NULL ||
		    sqlite3_column_bytes(st, 2) != (int)OTP_HASH_LEN) {
			rc = SQLITE_CORRUPT;
			break;
		}
		cand->channel = (enum otp_channel)ch;
		memcpy(cand->hash, h, OTP_HASH_LEN);
		rc = SQLITE_OK;
	}
	stmt_done(st);
	if (rc != SQLITE_DONE)
		return db_err(rc);

	if ((st = stmt(c, ST_FAILURES)) == NULL)
		return OTP_ERR_STORE;
	rc = sqlite3_bind_int(st, 1, (int)req->channel);
	rc |= bind_text(st, 2, req->target);
	if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		cs->failures = sqlite3_column_int(st, 0);
		rc = SQLITE_DONE;
	}
	stmt_done(st);
	if (rc != SQLITE_DONE)
		return db_err(rc);

	struct otp_check_input in = {
		.cands = c->cands,
		.n_cands = cs->n_cands,
		.channel_mask = req->channel_mask,
		.failures = cs->failures,
		.max_failures = req->max_failures,
	};
	memcpy(in.presented, req->presented, sizeof in.presented);
	otp_check_decide(&in, &cs->out);
	sodium_memzero(in.presented, sizeof in.presented);
	return 0;
}

static bool check_must_write(const struct store_check *req, const struct check_state *cs)
{
	return cs->out.failures != cs->failures || cs->out.void_all ||
	       (req->consume && cs->out.ok && cs->out.matched_id != 0);
}

struct check_op {
	const struct store_check *req;
	bool *ok;
};

static int check_fn(struct conn *c, void *arg)
{
	const struct check_op *op = arg;
	const struct store_check *req = op->req;
	struct check_state cs;
	sqlite3_stmt *st;

	int rc = check_load(c, req, &cs);
	if (rc)
		return rc;
	if (cs.out.void_all) {
		if ((st = stmt(c, ST_VOID_ALL)) == NULL)
			return OTP_ERR_STORE;
		rc = bind_channels(st, req->channel_mask);
		rc |= bind_text(st, 6, req->target);
		rc |= sqlite3_bind_int64(st, 7, req->now);
		if (rc != SQLITE_OK) {
			stmt_done(st);
			return db_err(rc);
		}
		if ((rc = stmt_exec(st)) != 0)
			return rc;
	}
	if (cs.out.failures != cs.failures) {
		/* no row means 0 failures: delete rather than store a zero */
		st = stmt(c, cs.out.failures == 0 ? ST_RESET_ATTEMPTS : ST_SET_FAILURES);
		if (st == NULL)
			return OTP_ERR_STORE;
		rc = sqlite3_bind_int(st, 1, (int)req->channel);
		rc |= bind_text(st, 2, req->target);
		if (cs.out.failures != 0)
			rc |= sqlite3_bind_int(st, 3, cs.out.failures);
		if (rc != SQLITE_OK) {
			stmt_done(st);
			return db_err(rc);
		}
		if ((rc = stmt_exec(st)) != 0)
			return rc;
	}
	if (req->consume && cs.out.ok && cs.out.matched_id != 0) {
		if ((st = stmt(c, ST_CONSUME)) == NULL)
			return OTP_ERR_STORE;
		if ((rc = sqlite3_bind_int64(st, 1, cs.out.matched_id)) != SQLITE_OK) {
			stmt_done(st);
			return db_err(rc);
		}
		if ((rc = stmt_exec(st)) != 0)
			return rc;
	}
	*op->ok = cs.out.ok;
	return 0;
}

static int sq_check(struct store *s, const struct store_check *req, bool *ok)
{
	struct sqlite_store *ss = (struct sqlite_store *)s;
	const unsigned all = OTP_CH_BIT(OTP_CH_COUNT) - 1u;
	if (ok == NULL)
		return OTP_ERR_INVALID;
	*ok = false;
	if (req == NULL || !channel_valid((int)req->channel) || !target_valid(req->target) ||
	    req->channel_mask == 0 || (req->channel_mask & ~all) != 0)
		return OTP_ERR_INVALID;

	/* Fast path: decide on a read snapshot; when the outcome changes nothing in the
	 * store, that snapshot's answer stands (it is the answer at that instant). */
	struct conn *c = reader_take(ss);
	struct check_state cs;
	int rc = exec_simple(c, ST_BEGIN_READ);
	if (rc == 0)
		rc = check_load(c, req, &cs);
	if (rc == 0)
		rc = exec_simple(c, ST_COMMIT);
	if (rc != 0)
		rollback(c);
	reader_give(ss, c);
	if (rc)
		return rc;
	if (!check_must_write(req, &cs)) {
		*ok = cs.out.ok;
		return 0;
	}

	/* the outcome changes the store: decide again under the write lock */
	bool result = false;
	struct check_op op = {.req = req, .ok = &result};
	rc = write_run(ss, check_fn, &op);
	if (rc == 0)
		*ok = result;
	return rc;
}

/* ---- limits ------------------------------------------------------------------------- */

struct limits_op {
	enum otp_channel ch;
	bool replace[2];
	const struct otp_limit_rule *rules;
	size_t n;
};

static int set_limits_fn(struct conn *c, void *arg)
{
	const struct limits_op *op = arg;
	sqlite3_stmt *st;
	int rc;

	for (int kind = 0; kind < 2; kind++) {
		if (!op->replace[kind])
			continue;
		if ((st = stmt(c, ST_DELETE_RULES)) == NULL)
			return OTP_ERR_STORE;
		rc = sqlite3_bind_int(st, 1, (int)op->ch);
		rc |= sqlite3_bind_int(st, 2, kind);
		if (rc != SQLITE_OK) {
			stmt_done(st);
			return db_err(rc);
		}
		if ((rc = stmt_exec(st)) != 0)
			return rc;
	}
	/* new rules go after the ones kept: rules apply in the order they were set */
	if ((st = stmt(c, ST_MAX_POSITION)) == NULL)
		return OTP_ERR_STORE;
	int64_t pos = 0;
	rc = sqlite3_bind_int(st, 1, (int)op->ch);
	if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW)
		pos = sqlite3_column_int64(st, 0);
	stmt_done(st);
	if (rc != SQLITE_ROW)
		return db_err(rc);

	for (size_t i = 0; i < op->n; i++) {
		const struct otp_limit_rule *r = &op->rules[i];
		if ((st = stmt(c, ST_INSERT_RULE)) == NULL)
			return OTP_ERR_STORE;
		rc = sqlite3_bind_int(st, 1, (int)op->ch);
		rc |= sqlite3_bind_int64(st, 2, pos + 1 + (int64_t)i);
		rc |= sqlite3_bind_int(st, 3, (int)r->kind);
		rc |= sqlite3_bind_int(st, 4, r->minutes);
		rc |= sqlite3_bind_int(st, 5, r->rate);
		if (rc != SQLITE_OK) {
			stmt_done(st);
			return db_err(rc);
		}
		if ((rc = stmt_exec(st)) != 0)
			return rc;
	}
	return 0;
}

static int sq_set_limits(struct store *s, enum otp_channel ch, const bool replace[2],
                         const struct otp_limit_rule *rules, size_t n)
{
	size_t per_kind[2] = {0, 0};
	if (!channel_valid((int)ch) || replace == NULL || (n > 0 && rules == NULL) ||
	    n > 2 * OTP_LIMIT_RULES_MAX)
		return OTP_ERR_INVALID;
	for (size_t i = 0; i < n; i++) {
		const struct otp_limit_rule *r = &rules[i];
		if ((r->kind != OTP_LIMIT_TARGET && r->kind != OTP_LIMIT_IP) || !replace[r->kind] ||
		    r->minutes < 1 || r->minutes > OTP_LIMIT_MINUTES_MAX ||
		    r->rate < 0 || r->rate > OTP_LIMIT_RATE_MAX ||
		    ++per_kind[r->kind] > OTP_LIMIT_RULES_MAX)
			return OTP_ERR_INVALID;
	}
	if (!replace[0] && !replace[1])
		return 0;
	struct limits_op op = {.ch = ch, .replace = {replace[0], replace[1]}, .rules = rules,
	                       .n = n};
	return write_run((struct sqlite_store *)s, set_limits_fn, &op);
}

static int sq_get_limits(struct store *s, enum otp_channel ch, struct store_limits *out)
{
	struct sqlite_store *ss = (struct sqlite_store *)s;
	if (out == NULL || !channel_valid((int)ch))
		return OTP_ERR_INVALID;
	out->n = 0;
	struct conn *c = reader_take(ss);
	size_t cap = sizeof out->rules / sizeof out->rules[0];
	int rc = load_rules(c, ch, out->rules, cap, &out->n);
	reader_give(ss, c);
	if (rc)
		out->n = 0;
	return rc;
}

/* ---- lookups ------------------------------------------------------------------------ */

static int sq_find_target(struct store *s, enum otp_channel ch,
                          const uint8_t lookup[OTP_HASH_LEN], int64_t now,
                          char *target, size_t target_cap)
{
	struct sqlite_store *ss = (struct sqlite_store *)s;
	if (!channel_valid((int)ch) || lookup == NULL || target == NULL || target_cap == 0)
		return OTP_ERR_INVALID;
	target[0] = '\0';
	struct conn *c = reader_take(ss);
	sqlite3_stmt *st = stmt(c, ST_FIND_TARGET);
	int rc = OTP_ERR_STORE;
	if (st == NULL)
		goto out;
	int b = sqlite3_bind_int(st, 1, (int)ch);
	b |= bind_blob(st, 2, lookup, OTP_HASH_LEN);
	b |= sqlite3_bind_int64(st, 3, now);
	if (b != SQLITE_OK) {
		rc = db_err(b);
	} else if ((b = sqlite3_step(st)) == SQLITE_ROW) {
		if ((size_t)sqlite3_column_bytes(st, 0) >= target_cap) {
			rc = OTP_ERR_INVALID;
		} else {
			column_copy(st, 0, target, target_cap);
			rc = 0;
		}
	} else {
		rc = b == SQLITE_DONE ? OTP_ERR_NOT_FOUND : db_err(b);
	}
	stmt_done(st);
out:
	reader_give(ss, c);
	return rc;
}

static int sq_find_sealed_code(struct store *s, const char *target, int64_t now,
                               uint8_t **sealed, size_t *len)
{
	struct sqlite_store *ss = (struct sqlite_store *)s;
	if (target == NULL || sealed == NULL || len == NULL)
		return OTP_ERR_INVALID;
	*sealed = NULL;
	*len = 0;
	struct conn *c = reader_take(ss);
	sqlite3_stmt *st = stmt(c, ST_FIND_SEALED);
	int rc = OTP_ERR_STORE;
	if (st == NULL)
		goto out;
	int b = bind_text(st, 1, target);
	b |= sqlite3_bind_int64(st, 2, now);
	if (b != SQLITE_OK) {
		rc = db_err(b);
	} else if ((b = sqlite3_step(st)) == SQLITE_ROW) {
		const void *p = sqlite3_column_blob(st, 0);
		int n = sqlite3_column_bytes(st, 0);
		if (p == NULL || n <= 0) {
			rc = OTP_ERR_NOT_FOUND; /* sent while /password was disabled */
		} else if ((*sealed = malloc((size_t)n)) == NULL) {
			rc = OTP_ERR_NOMEM;
		} else {
			memcpy(*sealed, p, (size_t)n);
			*len = (size_t)n;
			rc = 0;
		}
	} else {
		rc = b == SQLITE_DONE ? OTP_ERR_NOT_FOUND : db_err(b);
	}
	stmt_done(st);
out:
	reader_give(ss, c);
	return rc;
}

/* ---- purge -------------------------------------------------------------------------- */

struct purge_op {
	int64_t before, jobs_before, deleted;
};

static int purge_fn(struct conn *c, void *arg)
{
	struct purge_op *op = arg;
	static const enum stmt_id steps[] = {ST_PURGE_JOBS, ST_PURGE_CODES, ST_PURGE_ATTEMPTS};
	op->deleted = 0;
	for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
		sqlite3_stmt *st = stmt(c, steps[i]);
		if (st == NULL)
			return OTP_ERR_STORE;
		int rc = sqlite3_bind_int64(st, 1, steps[i] == ST_PURGE_JOBS ? op->jobs_before
		                                                               : op->before);
		if (rc != SQLITE_OK) {
			stmt_done(st);
			return db_err(rc);
		}
		if ((rc = stmt_exec(st)) != 0)
			return rc;
		op->deleted += sqlite3_changes64(c->db);
	}
	return 0;
}

static int sq_purge(struct store *s, int64_t before, int64_t jobs_before, int64_t *deleted)
{
	struct purge_op op = {.before = before, .jobs_before = jobs_before};
	int rc = write_run((struct sqlite_store *)s, purge_fn, &op);
	if (deleted != NULL)
		*deleted = rc == 0 ? op.deleted : 0;
	return rc;
}

/* ---- outbox ------------------------------------------------------------------------- */

struct claim_op {
	int64_t now, lease_until;
	struct store_job *jobs;
	size_t max, n;
};

static int claim_fn(struct conn *c, void *arg)
{
	struct claim_op *op = arg;
	sqlite3_stmt *st = stmt(c, ST_CLAIM_SELECT);
	size_t n = 0;
	int rc;

	op->n = 0;
	if (st == NULL)
		return OTP_ERR_STORE;
	/* collect the ids first: no updates while the select is stepping */
	rc = sqlite3_bind_int64(st, 1, op->now);
	rc |= sqlite3_bind_int64(st, 2, (sqlite3_int64)op->max);
	while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (n < op->max)
			op->jobs[n++].id = sqlite3_column_int64(st, 0);
		rc = SQLITE_OK;
	}
	stmt_done(st);
	if (rc != SQLITE_DONE)
		return db_err(rc);

	for (size_t i = 0; i < n; i++) {
		struct store_job *j = &op->jobs[i];
		if ((st = stmt(c, ST_CLAIM_UPDATE)) == NULL) {
			rc = OTP_ERR_STORE;
			goto fail;
		}
		int b = sqlite3_bind_int64(st, 1, j->id);
		b |= sqlite3_bind_int64(st, 2, op->lease_until);
		b |= sqlite3_bind_int64(st, 3, op->now);
		if (b != SQLITE_OK || (b = sqlite3_step(st)) != SQLITE_ROW) {
			stmt_done(st);
			rc = db_err(b);
			goto fail;
		}
		int ch = sqlite3_column_int(st, 0);
		j->channel = channel_valid(ch) ? (enum otp_channel)ch : OTP_CH_SMS;
		column_copy(st, 1, j->provider, sizeof j->provider);
		const void *p = sqlite3_column_blob(st, 2);
		int len = sqlite3_column_bytes(st, 2);
		if (p != NULL && len > 0) {
			if ((j->payload = malloc((size_t)len)) == NULL) {
				stmt_done(st);
				rc = OTP_ERR_NOMEM;
				goto fail;
			}
			memcpy(j->payload, p, (size_t)len);
			j->payload_len = (size_t)len;
		}
		j->attempts = sqlite3_column_int(st, 3);
		j->created_at = sqlite3_column_int64(st, 4);
		j->lease_until = op->lease_until;
		/* a RETURNING statement finishes its update on the last step */
		b = sqlite3_step(st);
		stmt_done(st);
		if (b != SQLITE_DONE) {
			rc = db_err(b);
			goto fail;
		}
	}
	op->n = n;
	return 0;

fail:
	/* jobs[] was zeroed by the caller; the transaction rolls back so none is claimed */
	for (size_t i = 0; i < n; i++)
		store_job_fini(&op->jobs[i]);
	return rc;
}

static int sq_outbox_claim(struct store *s, int64_t now, int64_t lease_until,
                           struct store_job *jobs, size_t max, size_t *n_out)
{
	if (n_out == NULL || (max > 0 && jobs == NULL))
		return OTP_ERR_INVALID;
	*n_out = 0;
	if (max == 0)
		return 0;
	memset(jobs, 0, max * sizeof *jobs);
	struct claim_op op = {.now = now, .lease_until = lease_until, .jobs = jobs, .max = max};
	int rc = write_run((struct sqlite_store *)s, claim_fn, &op);
	if (rc != 0) {
		/* a failed commit after a successful claim_fn: nothing was claimed */
		for (size_t i = 0; i < op.n; i++)
			store_job_fini(&jobs[i]);
		return rc;
	}
	*n_out = op.n;
	return 0;
}

/* One UPDATE of a claimed job by id: sent, retry, dead, release. */
struct job_op {
	enum stmt_id st;
	int64_t id, now, next_at;
	const char *text;   /* provider_msg_id or error */
	size_t text_max;
};

static int job_fn(struct conn *c, void *arg)
{
	const struct job_op *op = arg;
	sqlite3_stmt *st = stmt(c, op->st);
	if (st == NULL)
		return OTP_ERR_STORE;
	int rc = sqlite3_bind_int64(st, 1, op->id);
	if (op->st != ST_JOB_RELEASE)
		rc |= sqlite3_bind_int64(st, 2, op->now);
	if (op->st == ST_JOB_RETRY) {
		rc |= sqlite3_bind_int64(st, 3, op->next_at);
		rc |= bind_text_bounded(st, 4, op->text, op->text_max);
	} else if (op->st != ST_JOB_RELEASE) {
		rc |= bind_text_bounded(st, 3, op->text, op->text_max);
	}
	if (rc != SQLITE_OK) {
		stmt_done(st);
		return db_err(rc);
	}
	if ((rc = stmt_exec(st)) != 0)
		return rc;
	/* only a claimed (sending) job can be finished or released */
	return sqlite3_changes(c->db) == 1 ? 0 : OTP_ERR_NOT_FOUND;
}

static int sq_outbox_sent(struct store *s, int64_t id, int64_t now, const char *msgid)
{
	struct job_op op = {.st = ST_JOB_SENT, .id = id, .now = now, .text = msgid,
	                    .text_max = STORE_MSGID_MAX};
	return write_run((struct sqlite_store *)s, job_fn, &op);
}

static int sq_outbox_retry(struct store *s, int64_t id, int64_t now, int64_t next_at,
                           const char *error)
{
	struct job_op op = {.st = ST_JOB_RETRY, .id = id, .now = now, .next_at = next_at,
	                    .text = error, .text_max = STORE_ERROR_MAX};
	return write_run((struct sqlite_store *)s, job_fn, &op);
}

static int sq_outbox_dead(struct store *s, int64_t id, int64_t now, const char *error)
{
	struct job_op op = {.st = ST_JOB_DEAD, .id = id, .now = now, .text = error,
	                    .text_max = STORE_ERROR_MAX};
	return write_run((struct sqlite_store *)s, job_fn, &op);
}

static int sq_outbox_release(struct store *s, int64_t id)
{
	struct job_op op = {.st = ST_JOB_RELEASE, .id = id};
	return write_run((struct sqlite_store *)s, job_fn, &op);
}

/* The rows of the operators' listing, on c. */
static int list_rows(struct conn *c, const struct store_job_filter *f,
                     struct store_job_info *rows, size_t *n_out)
{
	sqlite3_stmt *st = stmt(c, ST_LIST);
	if (st == NULL)
		return OTP_ERR_STORE;
	int b = bind_text(st, 1, f->state);
	b |= sqlite3_bind_int(st, 2, f->channel);
	b |= bind_text(st, 3, f->provider);
	b |= sqlite3_bind_int64(st, 4, f->before_id);
	b |= sqlite3_bind_int64(st, 5, (sqlite3_int64)f->limit);
	size_t n = 0;
	while (b == SQLITE_OK && (b = sqlite3_step(st)) == SQLITE_ROW) {
		if (n == f->limit)
			continue;
		struct store_job_info *r = &rows[n++];
		memset(r, 0, sizeof *r);
		r->id = sqlite3_column_int64(st, 0);
		r->code_id = sqlite3_column_int64(st, 1);
		int ch = sqlite3_column_int(st, 2);
		r->channel = channel_valid(ch) ? (enum otp_channel)ch : OTP_CH_SMS;
		column_copy(st, 3, r->provider, sizeof r->provider);
		column_copy(st, 4, r->state, sizeof r->state);
		r->attempts = sqlite3_column_int(st, 5);
		r->created_at = sqlite3_column_int64(st, 6);
		r->updated_at = sqlite3_column_int64(st, 7);
		r->next_at = sqlite3_column_int64(st, 8);
		column_copy(st, 9, r->last_error, sizeof r->last_error);
		column_copy(st, 10, r->provider_msg_id, sizeof r->provider_msg_id);
		b = SQLITE_OK;
	}
	stmt_done(st);
	int rc = b == SQLITE_DONE ? 0 : db_err(b);
	*n_out = rc == 0 ? n : 0;
	return rc;
}

/* Jobs per state, on c. */
static int count_states(struct conn *c, struct store_outbox_counts *out)
{
	memset(out, 0, sizeof *out);
	sqlite3_stmt *st = stmt(c, ST_COUNTS);
	if (st == NULL)
		return OTP_ERR_STORE;
	int b;
	while ((b = sqlite3_step(st)) == SQLITE_ROW) {
		store_outbox_counts_set(out, (const char *)sqlite3_column_text(st, 0),
		                        sqlite3_column_int64(st, 1));
	}
	stmt_done(st);
	int rc = b == SQLITE_DONE ? 0 : db_err(b);
	if (rc)
		memset(out, 0, sizeof *out);
	return rc;
}

static int sq_outbox_list(struct store *s, const struct store_job_filter *f,
                          struct store_job_info *rows, size_t *n_out,
                          struct store_outbox_counts *counts)
{
	struct sqlite_store *ss = (struct sqlite_store *)s;
	if (n_out == NULL)
		return OTP_ERR_INVALID;
	*n_out = 0;
	if (counts != NULL)
		memset(counts, 0, sizeof *counts);
	if (f == NULL || rows == NULL || f->limit < 1 || f->limit > LIST_LIMIT_MAX ||
	    f->channel < -1 || f->channel >= OTP_CH_COUNT || f->before_id < 0)
		return OTP_ERR_INVALID;

	struct conn *c = reader_take(ss);
	/* with counts: one read transaction, so both come from one snapshot of the WAL */
	int rc = counts != NULL ? exec_simple(c, ST_BEGIN_READ) : 0;
	bool open = counts != NULL && rc == 0;
	if (rc == 0)
		rc = list_rows(c, f, rows, n_out);
	if (rc == 0 && counts != NULL)
		rc = count_states(c, counts);
	if (open && exec_simple(c, rc == 0 ? ST_COMMIT : ST_ROLLBACK) != 0 && rc == 0)
		rc = OTP_ERR_STORE;
	if (rc != 0) {
		*n_out = 0;
		if (counts != NULL)
			memset(counts, 0, sizeof *counts);
	}
	reader_give(ss, c);
	return rc;
}

static int sq_outbox_counts(struct store *s, struct store_outbox_counts *out)
{
	struct sqlite_store *ss = (struct sqlite_store *)s;
	if (out == NULL)
		return OTP_ERR_INVALID;
	struct conn *c = reader_take(ss);
	int rc = count_states(c, out);
	reader_give(ss, c);
	return rc;
}

/* The n integer columns of the one row statement id answers, on a reader (SQL NULL
 * reads as 0); all 0 on failure. */
static int read_row_i64(struct sqlite_store *ss, enum stmt_id id, int64_t *v, int n)
{
	memset(v, 0, sizeof *v * (size_t)n);
	struct conn *c = reader_take(ss);
	sqlite3_stmt *st = stmt(c, id);
	int rc = OTP_ERR_STORE;
	if (st != NULL) {
		int b = sqlite3_step(st);
		if (b == SQLITE_ROW) {
			for (int i = 0; i < n; i++)
				v[i] = sqlite3_column_int64(st, i);
			rc = 0;
		} else {
			rc = db_err(b);
		}
		stmt_done(st);
	}
	reader_give(ss, c);
	return rc;
}

static int sq_outbox_backlog(struct store *s, struct store_outbox_backlog *out)
{
	if (out == NULL)
		return OTP_ERR_INVALID;
	int64_t v[3];
	int rc = read_row_i64((struct sqlite_store *)s, ST_BACKLOG, v, 3);
	*out = (struct store_outbox_backlog){.pending = v[0], .sending = v[1], .oldest_due = v[2]};
	return rc;
}

static int sq_outbox_next_due(struct store *s, int64_t *next_at)
{
	if (next_at == NULL)
		return OTP_ERR_INVALID;
	return read_row_i64((struct sqlite_store *)s, ST_NEXT_DUE, next_at, 1);
}

/* ---- lifecycle ---------------------------------------------------------------------- */

static int sq_ping(struct store *s)
{
	struct sqlite_store *ss = (struct sqlite_store *)s;
	struct conn *c = reader_take(ss);
	sqlite3_stmt *st = stmt(c, ST_PING);
	int rc = OTP_ERR_STORE;
	if (st != NULL) {
		int b = sqlite3_step(st);
		rc = b == SQLITE_ROW ? 0 : db_err(b);
		stmt_done(st);
	}
	reader_give(ss, c);
	return rc;
}

static void sq_close(struct store *s)
{
	struct sqlite_store *ss = (struct sqlite_store *)s;
	if (ss == NULL)
		return;
	if (ss->writer.db != NULL)
		sqlite3_exec(ss->writer.db, "PRAGMA optimize", NULL, NULL, NULL);
	conn_close(&ss->writer);
	for (size_t i = 0; i < ss->n_readers; i++)
		conn_close(&ss->readers[i]);
	free(ss->readers);
	free(ss->free_conns);
	pthread_mutex_destroy(&ss->pool_mu);
	pthread_cond_destroy(&ss->pool_cv);
	pthread_mutex_destroy(&ss->w_mu);
	pthread_cond_destroy(&ss->w_cv);
	free(ss);
}

static const struct store_ops sqlite_ops = {
	.name = "sqlite",
	.close = sq_close,
	.ping = sq_ping,
	.send = sq_send,
	.check = sq_check,
	.set_limits = sq_set_limits,
	.get_limits = sq_get_limits,
	.find_target = sq_find_target,
	.find_sealed_code = sq_find_sealed_code,
	.purge = sq_purge,
	.outbox_claim = sq_outbox_claim,
	.outbox_sent = sq_outbox_sent,
	.outbox_retry = sq_outbox_retry,
	.outbox_dead = sq_outbox_dead,
	.outbox_release = sq_outbox_release,
	.outbox_list = sq_outbox_list,
	.outbox_counts = sq_outbox_counts,
	.outbox_next_due = sq_outbox_next_due,
	.outbox_backlog = sq_outbox_backlog,
};

struct store *store_sqlite_open(const char *path, int pool, char *err, size_t cap)
{
	char dummy[1];
	if (err == NULL || cap == 0) {
		err = dummy;
		cap = sizeof dummy;
	}
	err[0] = '\0';
	if (path == NULL || path[0] == '\0') {
		snprintf(err, cap, "sqlite: no database path");
		return NULL;
	}
	if (pool < 1 || pool > POOL_MAX) {
		snprintf(err, cap, "sqlite: pool must be 1..%d, not %d", POOL_MAX, pool);
		return NULL;
	}
	if (!sqlite3_threadsafe()) {
		snprintf(err, cap, "sqlite: the library was built without thread support");
		return NULL;
	}

	/* codes' hashes and sealed copies live here: create it private (SQLite gives the
	 * -wal and -shm files the same mode) */
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(err, cap, "sqlite: cannot open %s: %s", path, strerror(errno));
		return NULL;
	}
	close(fd);

	struct sqlite_store *s = calloc(1, sizeof *s);
	if (s == NULL) {
		snprintf(err, cap, "sqlite: out of memory");
		return NULL;
	}
	s->base.ops = &sqlite_ops;
	pthread_mutex_init(&s->pool_mu, NULL);
	pthread_cond_init(&s->pool_cv, NULL);
	pthread_mutex_init(&s->w_mu, NULL);
	pthread_cond_init(&s->w_cv, NULL);
	s->readers = calloc((size_t)pool, sizeof *s->readers);
	s->free_conns = calloc((size_t)pool, sizeof *s->free_conns);
	if (s->readers == NULL || s->free_conns == NULL) {
		snprintf(err, cap, "sqlite: out of memory");
		goto fail;
	}

	if (conn_open(&s->writer, path, err, cap) != 0)
		goto fail;
	if (migrate(s->writer.db, err, cap) != 0)
		goto fail;
	for (int i = 0; i < pool; i++) {
		if (conn_open(&s->readers[i], path, err, cap) != 0)
			goto fail;
		s->n_readers++;
		s->free_conns[s->n_free++] = &s->readers[i];
	}
	return &s->base;

fail:
	sq_close(&s->base);
	return NULL;
}
