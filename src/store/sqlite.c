/*
 * sqlite.c - the embedded store backend (backend.h): one SQLite file in WAL mode with full
 * synchronous commits and secure_delete, its SQL for each statement of store.c, an
 * executor, and group commit. It must not log or print: every failure is returned
 * (OTP_ERR_STORE for the database).
 *
 * DESIGN
 * Reads (SB_READ) take a connection from a pool guarded by `pool_mu`/`pool_cv` and run
 * on it alone, inside one read transaction when they have more than one statement (so
 * they share one snapshot of the WAL), and give it back.
 *
 * Writes are group-committed on one writer connection. A caller queues its transaction
 * function and waits. The first caller that finds no batch running becomes the leader:
 * it takes every queued function (up to WRITE_BATCH_MAX), runs them in one BEGIN
 * IMMEDIATE transaction, each inside its own SAVEPOINT so a refused or failed one is
 * undone alone, commits once (one fsync for the whole batch), publishes every result and
 * wakes the waiters; one of them leads the next batch. The functions of a batch run one
 * after another on one connection, so each sees the writes of those before it (a limit
 * count never misses a send of its own batch). BEGIN IMMEDIATE takes SQLite's write lock
 * up front, so a read-then-write (limit counts then insert, a check's candidates then
 * their attempts) is atomic against other processes too; SQLite needs no advisory locks
 * and its table leaves SQ_LOCK and SQ_LOCK2 empty.
 *
 * Every connection caches its prepared statements; a statement is reset as soon as its
 * rows have been copied into the transaction's arena, so no connection keeps a read
 * transaction open.
 *
 * Erasure: secure_delete zeroes erased payloads and deleted rows in the database file.
 * Until a checkpoint, older page images also sit in the -wal file, which SQLite reuses
 * from its start and removes on the last close; everything secret in either file is a
 * keyed hash or an AEAD blob anyway.
 */
#include "store/backend.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "store/migrations.h"

#define POOL_MAX 256
#define BUSY_TIMEOUT_MS 10000
#define WRITE_BATCH_MAX 128

/* The SQL below lists the channels 0..4 where it must cover them all. */

/* A live code. The unary + keeps the planner from answering the OR through the status
 * index (verifications_expire), which it prefers without ANALYZE statistics: that scans
 * every live verification instead of the few of one target (measured: 12x slower). */
_Static_assert(OTP_CH_COUNT == 5, "update the channel lists in sql[]");

#define LIVE8 "expire_at > ?8 AND (+status = 0 OR (+status = 1 AND consume = 0))"
#define LIVE4 "expire_at > ?4 AND (+status = 0 OR (+status = 1 AND consume = 0))"
#define LIVE3 "expire_at > ?3 AND (+status = 0 OR (+status = 1 AND consume = 0))"
#define VF_SELECT "SELECT " SB_VF_COLS " FROM verifications "
#define VF_CANDIDATES_TARGET                                                           \
	VF_SELECT "WHERE app_id = ?1 AND target = ?2 AND channel IN (?3, ?4, ?5, ?6, ?7) " \
	"AND " LIVE8 " ORDER BY id DESC LIMIT ?9"
#define VF_CANDIDATES_ID VF_SELECT "WHERE public_id = ?2 AND (?1 IS NULL OR app_id = ?1)"
#define VF_CANDIDATES_LOOKUP                                                       \
	VF_SELECT "WHERE app_id = ?1 AND channel = ?2 AND lookup_hash = ?3 AND " LIVE4 \
	" ORDER BY id DESC LIMIT 1"
/* The sends of a window: the verifications made in it, and the resends in it. */
#define SENT_COUNT(col, param)                                                           \
	"((SELECT count(*) FROM verifications v WHERE v.app_id = ?1 AND v.channel = ?2 AND v." col \
	" = " param " AND v.created_at >= ?5 - r.minutes * 60) + (SELECT count(*) FROM events e "  \
	"WHERE e.type = 2 AND e.app_id = ?1 AND e.channel = ?2 AND e." col " = " param            \
	" AND e.created_at >= ?5 - r.minutes * 60))"
/* The longest limit window of a row's (app, channel), in seconds. */
#define LONGEST_WINDOW(t)                                                              \
	"60 * (SELECT coalesce(max(minutes), 0) FROM limit_rules r WHERE r.app_id = " t       \
	".app_id AND r.channel = " t ".channel)"
#define JOB_COLS                                                                         \
	"id, code_id, channel, provider, state, attempts, created_at, updated_at, next_at, " \
	"last_error, provider_msg_id"

static const char *const sql[SQ_COUNT] = {
	[SQ_PING] = "SELECT 1",
	[SQ_LOCK] = NULL,
	[SQ_LOCK2] = NULL,
	[SQ_RULES] = "SELECT kind, minutes, rate FROM limit_rules WHERE app_id = ?1 AND "
	             "channel = ?2 ORDER BY position",
	/* a send only ever counts up to a rule's rate (a refused send is not a send), so the
	 * counts need no cap */
	[SQ_RULES_COUNTED] =
		"SELECT kind, minutes, rate, CASE WHEN kind = 0 THEN " SENT_COUNT("target", "?3")
		" WHEN ?4 IS NULL THEN 0 ELSE " SENT_COUNT("ip", "?4") " END "
		"FROM limit_rules r WHERE r.app_id = ?1 AND r.channel = ?2 ORDER BY r.position",
	[SQ_RULES_DELETE] = "DELETE FROM limit_rules WHERE app_id = ?1 AND channel = ?2 AND kind = ?3",
	[SQ_RULES_INSERT] =
		"INSERT INTO limit_rules (app_id, channel, position, kind, minutes, rate) "
		"SELECT ?1, ?2, coalesce(max(position), 0) + 1, ?3, ?4, ?5 FROM limit_rules "
		"WHERE app_id = ?1 AND channel = ?2",
	[SQ_VF_INSERT] =
		"INSERT INTO verifications (public_id, app_id, channel, target, cur_channel, "
		"cur_target, status, code_hash, lookup_hash, sealed_code, ip, attempts, max_attempts, "
		"sends, max_sends, resend_cooldown, consume, tmpl, lang, sender, fallback, created_at, "
		"updated_at, expire_at, last_sent_at) VALUES (?1, ?2, ?3, ?4, ?3, ?4, 0, ?5, ?6, ?7, "
		"?8, 0, ?9, 1, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?17, ?18, ?17) RETURNING id",
	[SQ_VF_GET] = VF_SELECT "WHERE public_id = ?2 AND app_id = ?1",
	[SQ_VF_GET_ANY] = VF_SELECT "WHERE public_id = ?1",
	[SQ_VF_CANDIDATES_ID] = VF_CANDIDATES_ID,
	[SQ_VF_CANDIDATES_TARGET] = VF_CANDIDATES_TARGET,
	[SQ_VF_CANDIDATES_LOOKUP] = VF_CANDIDATES_LOOKUP,
	/* the writer runs alone: its reads need no lock */
	[SQ_VF_LOCKED_ID] = VF_CANDIDATES_ID,
	[SQ_VF_LOCKED_TARGET] = VF_CANDIDATES_TARGET,
	[SQ_VF_LOCKED_LOOKUP] = VF_CANDIDATES_LOOKUP,
	[SQ_VF_SET_CHECKED] =
		"UPDATE verifications SET attempts = ?2, status = ?3, updated_at = ?4, "
		"sealed_code = CASE WHEN ?5 THEN NULL ELSE sealed_code END WHERE id = ?1",
	[SQ_VF_RESENT] =
		"UPDATE verifications SET sends = sends + 1, cur_channel = ?2, cur_target = ?3, "
		"fallback = ?4, last_sent_at = ?5, updated_at = ?5 WHERE id = ?1 RETURNING " SB_VF_COLS,
	[SQ_VF_CANCEL] =
		"UPDATE verifications SET status = 3, sealed_code = NULL, updated_at = ?2 "
		"WHERE id = ?1 RETURNING " SB_VF_COLS,
	[SQ_VF_MATERIAL] = "SELECT sealed_code, tmpl FROM verifications WHERE public_id = ?2 "
	                   "AND app_id = ?1",
	[SQ_VF_MATERIAL_ANY] = "SELECT sealed_code, tmpl FROM verifications WHERE public_id = ?1",
	[SQ_VF_SEALED_LATEST] =
		"SELECT sealed_code FROM verifications WHERE app_id = ?1 AND target = ?2 "
		"AND channel IN (0, 1, 2, 3, 4) AND " LIVE3 " ORDER BY id DESC LIMIT 1",
	[SQ_VF_LIST] =
		VF_SELECT "WHERE (?1 IS NULL OR app_id = ?1) AND (?2 IS NULL OR target = ?2) "
		"AND (?3 < 0 OR channel = ?3) AND (?4 < 0 OR status = ?4) AND (?5 = 0 OR "
		"created_at >= ?5) AND (?6 = 0 OR created_at < ?6) AND (?7 = 0 OR id < ?7) "
		"ORDER BY id DESC LIMIT ?8",
	[SQ_VF_FAIL_IF_UNDELIVERABLE] =
		"UPDATE verifications SET status = 5, sealed_code = NULL, updated_at = ?2 "
		"WHERE id = (SELECT code_id FROM outbox WHERE id = ?1) AND status = 0 AND app_id <> '' "
		"AND NOT EXISTS "
		"(SELECT 1 FROM outbox o WHERE o.code_id = verifications.id AND o.id <> ?1 "
		"AND o.state IN ('pending', 'sending', 'sent', 'skipped'))",
	[SQ_EV_INSERT] =
		"INSERT INTO events (verification_id, public_id, app_id, type, channel, target, ip, "
		"detail, created_at) VALUES ((SELECT id FROM verifications WHERE public_id = ?1), "
		"?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
	[SQ_EV_INSERT_FOR_JOB] =
		"INSERT INTO events (verification_id, public_id, app_id, type, channel, target, "
		"detail, created_at) SELECT v.id, v.public_id, v.app_id, ?2, o.channel, v.cur_target, "
		"?3, ?4 FROM outbox o JOIN verifications v ON v.id = o.code_id WHERE o.id = ?1",
	[SQ_EV_LIST] =
		"SELECT id, type, public_id, app_id, channel, target, ip, detail, created_at "
		"FROM events WHERE (?1 IS NULL OR app_id = ?1) AND (?2 IS NULL OR public_id = ?2) "
		"AND (?3 IS NULL OR target = ?3) AND (?4 < 0 OR channel = ?4) AND (?5 = 0 OR "
		"type = ?5) AND (?6 = 0 OR created_at >= ?6) AND (?7 = 0 OR created_at < ?7) "
		"AND (?8 = 0 OR id < ?8) ORDER BY id DESC LIMIT ?9",
	[SQ_IDEM_GET] = "SELECT fingerprint, public_id FROM idempotency WHERE app_id = ?1 "
	                "AND key = ?2 AND created_at >= ?3",
	[SQ_IDEM_INSERT] =
		"INSERT INTO idempotency (app_id, key, fingerprint, public_id, created_at) "
		"VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (app_id, key) DO UPDATE SET "
		"fingerprint = excluded.fingerprint, public_id = excluded.public_id, "
		"created_at = excluded.created_at",
	[SQ_APP_INSERT] = "INSERT INTO apps (id, name, settings, created_at, updated_at) "
	                  "VALUES (?1, ?2, ?3, ?4, ?4)",
	[SQ_APP_UPDATE] = "UPDATE apps SET name = ?2, settings = ?3, updated_at = ?4 WHERE id = ?1",
	[SQ_APP_GET] = "SELECT id, name, settings, created_at, updated_at FROM apps WHERE id = ?1",
	[SQ_APP_LIST] = "SELECT id, name, settings, created_at, updated_at FROM apps "
	                "WHERE id > ?1 ORDER BY id LIMIT ?2",
	[SQ_APP_DELETE] = "DELETE FROM apps WHERE id = ?1 RETURNING id",
	[SQ_KEY_DELETE_APP] = "DELETE FROM api_keys WHERE app_id = ?1",
	[SQ_KEY_INSERT] = "INSERT INTO api_keys (id, app_id, secret_hash, format, name, "
	                  "created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
	[SQ_KEY_GET] = "SELECT id, coalesce(app_id, ''), secret_hash, format, name, created_at, "
	               "coalesce(revoked_at, 0) FROM api_keys WHERE id = ?1",
	[SQ_KEY_LIST] = "SELECT id, coalesce(app_id, ''), secret_hash, format, name, created_at, "
	                "coalesce(revoked_at, 0) FROM api_keys WHERE app_id IS ?1 ORDER BY id "
	                "LIMIT ?2",
	[SQ_KEY_LIST_ALL] = "SELECT id, coalesce(app_id, ''), secret_hash, format, name, "
	                    "created_at, coalesce(revoked_at, 0) FROM api_keys ORDER BY id LIMIT ?1",
	[SQ_KEY_REVOKE] = "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1 "
	                  "RETURNING id",
	[SQ_META_GET] = "SELECT value FROM meta WHERE name = ?1",
	[SQ_META_INSERT] = "INSERT INTO meta (name, value) VALUES (?1, ?2)",
	[SQ_PURGE_EXPIRE] =
		"UPDATE verifications SET status = 2, sealed_code = NULL, updated_at = ?1 "
		"WHERE id IN (SELECT id FROM verifications WHERE status = 0 AND expire_at <= ?1 "
		"LIMIT ?2) RETURNING public_id, app_id, cur_channel, cur_target",
	[SQ_PURGE_SEALED] = "UPDATE verifications SET sealed_code = NULL "
	                    "WHERE sealed_code IS NOT NULL AND expire_at <= ?1",
	/* a verification is also a send that limits count: keep it while it may be inside
	 * the longest window of its channel */
	[SQ_PURGE_VERIFICATIONS] =
		"DELETE FROM verifications WHERE id IN (SELECT id FROM verifications "
		"WHERE status IN (1, 2, 3, 4, 5) AND expire_at < ?1 AND updated_at < ?1 AND "
		"created_at < ?2 - " LONGEST_WINDOW("verifications") " LIMIT ?3)",
	/* so is a resend */
	/* ids grow with time: the old events are those before the first new one, read in
	 * id order from the oldest (no index on created_at to keep up at every insert) */
	[SQ_PURGE_EVENTS] =
		"DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id < coalesce((SELECT id "
		"FROM events WHERE created_at >= ?1 ORDER BY id LIMIT 1), (SELECT max(id) + 1 FROM "
		"events)) AND created_at < ?1 AND NOT (type = 2 AND created_at >= ?2 - "
		LONGEST_WINDOW("events") ") ORDER BY id LIMIT ?3)",
	[SQ_PURGE_JOBS] =
		"DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state IN ('sent', "
		"'dead', 'skipped') AND updated_at < ?1 LIMIT ?2)",
	[SQ_PURGE_IDEM] =
		"DELETE FROM idempotency WHERE (app_id, key) IN (SELECT app_id, key FROM idempotency "
		"WHERE created_at < ?1 LIMIT ?2)",
	[SQ_JOB_INSERT] =
		"INSERT INTO outbox (code_id, channel, provider, state, payload, next_at, request_id, "
		"created_at, updated_at) VALUES ((SELECT id FROM verifications WHERE public_id = ?1), "
		"?2, ?3, ?4, ?5, ?6, ?7, ?6, ?6) RETURNING id",
	[SQ_JOB_CLAIM] =
		"UPDATE outbox SET state = 'sending', lease_until = ?2, updated_at = ?1 WHERE id IN "
		"(SELECT id FROM outbox WHERE (state = 'pending' AND next_at <= ?1) OR "
		"(state = 'sending' AND lease_until < ?1) ORDER BY next_at, id LIMIT ?3) "
		"RETURNING id, channel, provider, payload, attempts, created_at, lease_until",
	[SQ_JOB_SENT] =
		"UPDATE outbox SET state = 'sent', attempts = attempts + 1, provider_msg_id = ?3, "
		"payload = NULL, lease_until = NULL, updated_at = ?2 WHERE id = ?1 AND state = "
		"'sending' RETURNING id",
	[SQ_JOB_RETRY] =
		"UPDATE outbox SET state = 'pending', attempts = attempts + 1, next_at = ?3, "
		"last_error = ?4, lease_until = NULL, updated_at = ?2 WHERE id = ?1 AND state = "
		"'sending' RETURNING id",
	[SQ_JOB_DEAD] =
		"UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = ?3, "
		"payload = NULL, lease_until = NULL, updated_at = ?2 WHERE id = ?1 AND state = "
		"'sending' RETURNING id",
	[SQ_JOB_RELEASE] =
		"UPDATE outbox SET state = 'pending', lease_until = NULL WHERE id = ?1 AND state = "
		"'sending' RETURNING id",
	[SQ_JOB_LIST] =
		"SELECT " JOB_COLS " FROM outbox WHERE (?1 IS NULL OR state = ?1) AND (?2 < 0 OR "
		"channel = ?2) AND (?3 IS NULL OR provider = ?3) AND (?4 = 0 OR id < ?4) "
		"ORDER BY id DESC LIMIT ?5",
	[SQ_JOB_COUNTS] = "SELECT state, count(*) FROM outbox GROUP BY state",
	[SQ_JOB_NEXT_DUE] = "SELECT min(next_at) FROM outbox WHERE state = 'pending'",
	[SQ_JOB_BACKLOG] = "SELECT (SELECT count(*) FROM outbox WHERE state = 'pending'), "
	                   "(SELECT count(*) FROM outbox WHERE state = 'sending'), "
	                   "(SELECT min(next_at) FROM outbox WHERE state = 'pending')",
	[SQ_MIGRATE_LOCK] = NULL, /* the write transaction is BEGIN IMMEDIATE */
	[SQ_MIGRATE_VERSION] = "SELECT coalesce(max(version), 0) FROM schema_migrations",
	[SQ_MIGRATE_NAME] = "SELECT name FROM schema_migrations WHERE version = ?1",
	[SQ_MIGRATE_RECORD] = "INSERT INTO schema_migrations (version, name, applied_at) "
	                      "VALUES (?1, ?2, ?3)",
};

enum ctl_stmt { CT_BEGIN_WRITE, CT_BEGIN_READ, CT_COMMIT, CT_ROLLBACK, CT_SAVEPOINT, CT_RELEASE,
	CT_ROLLBACK_TO, CT_COUNT };
static const char *const ctl_sql[CT_COUNT] = {
	[CT_BEGIN_WRITE] = "BEGIN IMMEDIATE",
	[CT_BEGIN_READ] = "BEGIN",
	[CT_COMMIT] = "COMMIT",
	[CT_ROLLBACK] = "ROLLBACK",
	[CT_SAVEPOINT] = "SAVEPOINT op",
	[CT_RELEASE] = "RELEASE op",
	[CT_ROLLBACK_TO] = "ROLLBACK TO op",
};

/* One database connection and its statement cache. Used by one thread at a time. */
struct conn {
	sqlite3 *db;
	sqlite3_stmt *st[SQ_COUNT];
	sqlite3_stmt *ctl[CT_COUNT];
};

/* A transaction of this backend: the shared part, and the connection it runs on. */
struct sq_tx {
	struct sb_tx base;
	struct conn *c;
	bool began;          /* a read transaction was opened (SB_READ) */
};

/* A write transaction waiting for (or inside) a group commit. Lives on its caller's
 * stack until `done`. */
struct wop {
	sb_txn_fn fn;
	void *arg;
	struct sq_tx *tx;
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

static sqlite3_stmt *prepared(sqlite3 *db, sqlite3_stmt **slot, const char *text)
{
	if (*slot == NULL &&
	    sqlite3_prepare_v3(db, text, -1, SQLITE_PREPARE_PERSISTENT, slot, NULL) != SQLITE_OK)
		return NULL;
	return *slot;
}

/* Reset after use: drops the statement's read lock and blob references. */
static void stmt_done(sqlite3_stmt *st)
{
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
}

static int ctl(struct conn *c, enum ctl_stmt id)
{
	sqlite3_stmt *st = prepared(c->db, &c->ctl[id], ctl_sql[id]);
	if (st == NULL)
		return OTP_ERR_STORE;
	int rc = sqlite3_step(st);
	stmt_done(st);
	return rc == SQLITE_DONE ? 0 : db_err(rc);
}

static void rollback(struct conn *c)
{
	if (!sqlite3_get_autocommit(c->db))
		ctl(c, CT_ROLLBACK);
}

/* ---- the executor ---------------------------------------------------------------------- */

static int bind(sqlite3_stmt *st, const struct sb_stmt *s)
{
	if (s->n > sqlite3_bind_parameter_count(st))
		return SQLITE_RANGE;
	int rc = SQLITE_OK;
	for (int i = 0; i < s->n && rc == SQLITE_OK; i++) {
		const struct sb_val *v = &s->a[i];
		switch (v->t) {
		case SB_NULL: rc = sqlite3_bind_null(st, i + 1); break;
		case SB_INT: rc = sqlite3_bind_int64(st, i + 1, v->i); break;
		case SB_TEXT: rc = sqlite3_bind_text(st, i + 1, v->p, (int)v->len, SQLITE_STATIC); break;
		case SB_BLOB: rc = sqlite3_bind_blob64(st, i + 1, v->p, v->len, SQLITE_STATIC); break;
		}
	}
	return rc;
}

/* Copy column i of the current row into v, its bytes into the arena. */
static int cell_copy(struct sb_arena *a, sqlite3_stmt *st, int i, struct sb_val *v)
{
	switch (sqlite3_column_type(st, i)) {
	case SQLITE_NULL:
		*v = (struct sb_val){.t = SB_NULL};
		return 0;
	case SQLITE_INTEGER:
	case SQLITE_FLOAT:
		*v = (struct sb_val){.t = SB_INT, .i = sqlite3_column_int64(st, i)};
		return 0;
	case SQLITE_BLOB: {
		const void *p = sqlite3_column_blob(st, i);
		size_t n = (size_t)sqlite3_column_bytes(st, i);
		uint8_t *copy = sb_alloc(a, n + 1);
		if (copy == NULL)
			return OTP_ERR_NOMEM;
		if (n > 0)
			memcpy(copy, p, n);
		copy[n] = 0;
		*v = (struct sb_val){.t = SB_BLOB, .p = copy, .len = n};
		return 0;
	}
	default: {
		const unsigned char *p = sqlite3_column_text(st, i);
		size_t n = (size_t)sqlite3_column_bytes(st, i);
		char *copy = sb_alloc(a, n + 1);
		if (copy == NULL)
			return OTP_ERR_NOMEM;
		if (n > 0)
			memcpy(copy, p, n);
		copy[n] = '\0';
		*v = (struct sb_val){.t = SB_TEXT, .p = copy, .len = n};
		return 0;
	}
	}
}

static int exec_one(struct sq_tx *tx, struct sb_stmt *s)
{
	struct conn *c = tx->c;
	s->rows = s->cols = 0;
	s->cell = NULL;
	s->changes = 0;
	if ((unsigned)s->sql >= SQ_COUNT)
		return OTP_ERR_INTERNAL;
	if (sql[s->sql] == NULL)
		return 0; /* this backend needs no such statement */
	sqlite3_stmt *st = prepared(c->db, &c->st[s->sql], sql[s->sql]);
	if (st == NULL)
		return OTP_ERR_STORE;
	int rc = bind(st, s);
	if (rc != SQLITE_OK) {
		stmt_done(st);
		return db_err(rc);
	}
	size_t cols = (size_t)sqlite3_column_count(st), cap = 0;
	int err = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (s->rows == cap) {
			size_t ncap = cap ? cap * 2 : 4;
			struct sb_val *grown = sb_alloc(&tx->base.arena, ncap * cols * sizeof *grown);
			if (grown == NULL) {
				err = OTP_ERR_NOMEM;
				break;
			}
			if (s->rows > 0)
				memcpy(grown, s->cell, s->rows * cols * sizeof *grown);
			s->cell = grown;
			cap = ncap;
		}
		for (size_t i = 0; i < cols && err == 0; i++)
			err = cell_copy(&tx->base.arena, st, (int)i, &s->cell[s->rows * cols + i]);
		if (err != 0)
			break;
		s->rows++;
	}
	s->cols = cols;
	if (err == 0 && rc != SQLITE_DONE)
		err = db_err(rc);
	if (err == 0)
		s->changes = sqlite3_changes64(c->db);
	stmt_done(st);
	return err;
}

static int sq_exec(struct sb_tx *base, struct sb_stmt *st, size_t n, unsigned flags)
{
	struct sq_tx *tx = (struct sq_tx *)base;
	/* a lone statement is its own snapshot; more need one read transaction */
	if (base->mode == SB_READ && !tx->began && !((flags & SB_LAST) && n == 1)) {
		int rc = ctl(tx->c, CT_BEGIN_READ);
		if (rc != 0)
			return rc;
		tx->began = true;
	}
	for (size_t i = 0; i < n; i++) {
		int rc = exec_one(tx, &st[i]);
		if (rc != 0)
			return rc;
	}
	return 0;
}

static int sq_script(struct sb_tx *base, const char *text, char *err, size_t cap)
{
	struct sq_tx *tx = (struct sq_tx *)base;
	char *msg = NULL;
	if (sqlite3_exec(tx->c->db, text, NULL, NULL, &msg) == SQLITE_OK)
		return 0;
	snprintf(err, cap, "sqlite: %s", msg ? msg : sqlite3_errmsg(tx->c->db));
	sqlite3_free(msg);
	return OTP_ERR_STORE;
}

/* ---- connections ------------------------------------------------------------------------ */

static void conn_close(struct conn *c)
{
	for (size_t i = 0; i < SQ_COUNT; i++) {
		sqlite3_finalize(c->st[i]);
		c->st[i] = NULL;
	}
	for (size_t i = 0; i < CT_COUNT; i++) {
		sqlite3_finalize(c->ctl[i]);
		c->ctl[i] = NULL;
	}
	if (c->db != NULL)
		sqlite3_close_v2(c->db);
	c->db = NULL;
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
	 * deleted rows are overwritten with zeros, not left in free pages */
	rc = sqlite3_exec(c->db,
	                  "PRAGMA synchronous = FULL;"
	                  "PRAGMA foreign_keys = ON;"
	                  "PRAGMA secure_delete = ON;"
	                  "PRAGMA temp_store = MEMORY;", NULL, NULL, NULL);
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

/* ---- the reader pool ------------------------------------------------------------------------ */

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

/* ---- group commit --------------------------------------------------------------------------- */

static void batch_fail(struct wop *batch, int rc)
{
	for (struct wop *w = batch; w != NULL; w = w->next)
		w->rc = rc;
}

static int wop_call(struct conn *c, struct wop *w)
{
	w->tx->c = c;
	return w->fn(&w->tx->base, w->arg);
}

/* Run a batch in one transaction on the writer: see DESIGN. Sets every wop's rc. */
static void batch_run(struct conn *c, struct wop *batch)
{
	bool single = batch->next == NULL;
	int rc = ctl(c, CT_BEGIN_WRITE);
	if (rc) {
		rollback(c);
		batch_fail(batch, rc);
		return;
	}
	for (struct wop *w = batch; w != NULL; w = w->next) {
		if (!single && (rc = ctl(c, CT_SAVEPOINT)) != 0)
			goto fail;
		w->rc = wop_call(c, w);
		/* some errors (disk full, I/O) make SQLite roll back the whole transaction */
		if (sqlite3_get_autocommit(c->db)) {
			rc = OTP_ERR_STORE;
			goto fail;
		}
		if (single)
			break;
		if (w->rc != 0 && (rc = ctl(c, CT_ROLLBACK_TO)) != 0)
			goto fail;
		if ((rc = ctl(c, CT_RELEASE)) != 0)
			goto fail;
	}
	if (single && batch->rc != 0) {
		rollback(c);
		return;
	}
	rc = ctl(c, CT_COMMIT);
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

/* Run w inside a group commit; returns its result once durable (or the error that kept
 * it from committing). */
static int write_run(struct sqlite_store *s, struct wop *op)
{
	pthread_mutex_lock(&s->w_mu);
	queue_push(s, op);
	while (!op->done) {
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
	return op->rc;
}

static int sq_run(struct store *base, enum sb_mode mode, sb_txn_fn fn, void *arg)
{
	struct sqlite_store *s = (struct sqlite_store *)base;
	struct sq_tx tx = {.base = {.s = base, .mode = mode}};
	int rc;
	if (mode == SB_READ) {
		tx.c = reader_take(s);
		rc = fn(&tx.base, arg);
		if (tx.began) {
			if (rc == 0)
				rc = ctl(tx.c, CT_COMMIT);
			if (rc != 0)
				rollback(tx.c);
		}
		reader_give(s, tx.c);
	} else {
		struct wop op = {.fn = fn, .arg = arg, .tx = &tx};
		rc = write_run(s, &op);
	}
	sb_arena_reset(&tx.base.arena);
	return rc;
}

static int sq_ping(struct store *base)
{
	struct sqlite_store *s = (struct sqlite_store *)base;
	struct conn *c = reader_take(s);
	sqlite3_stmt *st = prepared(c->db, &c->st[SQ_PING], sql[SQ_PING]);
	int rc = OTP_ERR_STORE;
	if (st != NULL) {
		int b = sqlite3_step(st);
		rc = b == SQLITE_ROW ? 0 : db_err(b);
		stmt_done(st);
	}
	reader_give(s, c);
	return rc;
}

static void sq_close(struct store *base)
{
	struct sqlite_store *s = (struct sqlite_store *)base;
	if (s == NULL)
		return;
	if (s->writer.db != NULL)
		sqlite3_exec(s->writer.db, "PRAGMA optimize", NULL, NULL, NULL);
	conn_close(&s->writer);
	for (size_t i = 0; i < s->n_readers; i++)
		conn_close(&s->readers[i]);
	free(s->readers);
	free(s->free_conns);
	pthread_mutex_destroy(&s->pool_mu);
	pthread_cond_destroy(&s->pool_cv);
	pthread_mutex_destroy(&s->w_mu);
	pthread_cond_destroy(&s->w_cv);
	free(s);
}

static const struct sb_ops sqlite_ops = {
	.name = "sqlite",
	.run = sq_run,
	.exec = sq_exec,
	.script = sq_script,
	.ping = sq_ping,
	.close = sq_close,
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
	char *msg = NULL;
	if (sqlite3_exec(s->writer.db, "CREATE TABLE IF NOT EXISTS schema_migrations ("
	                 " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
	                 " applied_at INTEGER NOT NULL)", NULL, NULL, &msg) != SQLITE_OK) {
		snprintf(err, cap, "sqlite: schema_migrations: %s",
		         msg ? msg : sqlite3_errmsg(s->writer.db));
		sqlite3_free(msg);
		goto fail;
	}
	char why[512] = "";
	if (sb_migrate(&s->base, store_sqlite_migrations, store_sqlite_migrations_count, why,
	               sizeof why) != 0) {
		snprintf(err, cap, "sqlite: %s", why);
		goto fail;
	}
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
