/*
 * backend.h - what a store backend supplies to the operations of store.c, and nothing
 * more: its SQL for each statement of the shared list below, an executor that runs a
 * step (one or more statements) inside a transaction, and its commit strategy (SQLite:
 * group commit on one writer; PostgreSQL: a pool, each step one pipelined round trip).
 * The operations themselves - validation, the order of statements, the decisions of the
 * core - are written once, in store.c. Only store/ includes this header.
 *
 * A transaction function (sb_txn_fn) runs steps with sb_exec() and reads their results
 * with sb_int()/sb_str()/sb_blob(). It may be run more than once (PostgreSQL runs it
 * again on a fresh connection when the old one broke before COMMIT was sent), so it
 * resets its outputs first. It returns 0 to commit, or an error to roll back.
 */
#ifndef OTPD_STORE_BACKEND_H
#define OTPD_STORE_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

/* Every statement the operations use. A backend's table may leave one NULL when it
 * needs none (SQLite takes no advisory locks: its writes are serialised already), or
 * when another statement of the same step already does its work (PostgreSQL marks a job
 * sent and records its event in one statement); such a statement yields no rows. The
 * statements that finish an outbox job return one row per job they changed. */
enum sb_sql {
	SQ_PING,
	/* locks (PostgreSQL: transaction-scoped advisory locks) */
	SQ_LOCK,
	SQ_LOCK2,
	/* send-limit rules, each with the sends of its window counted up to rate + 1 */
	SQ_RULES,
	SQ_RULES_COUNTED,
	SQ_RULES_DELETE,
	SQ_RULES_INSERT,
	/* verifications */
	SQ_VF_INSERT,
	SQ_VF_GET,
	SQ_VF_GET_ANY,
	SQ_VF_CANDIDATES_ID,
	SQ_VF_CANDIDATES_TARGET,
	SQ_VF_CANDIDATES_LOOKUP,
	SQ_VF_LOCKED_ID,          /* the same three, locking the rows they return (PostgreSQL */
	SQ_VF_LOCKED_TARGET,      /* FOR UPDATE) for a transaction that will write them */
	SQ_VF_LOCKED_LOOKUP,
	SQ_VF_SET_CHECKED,
	SQ_VF_RESENT,
	SQ_VF_CANCEL,
	SQ_VF_MATERIAL,
	SQ_VF_MATERIAL_ANY,
	SQ_VF_SEALED_LATEST,
	SQ_VF_LIST,
	SQ_VF_FAIL_IF_UNDELIVERABLE,
	/* events */
	SQ_EV_INSERT,
	SQ_EV_INSERT_FOR_JOB,
	SQ_EV_LIST,
	/* idempotency */
	SQ_IDEM_GET,
	SQ_IDEM_INSERT,
	/* apps, keys, meta */
	SQ_APP_INSERT,
	SQ_APP_UPDATE,
	SQ_APP_GET,
	SQ_APP_LIST,
	SQ_APP_DELETE,
	SQ_KEY_DELETE_APP,
	SQ_KEY_INSERT,
	SQ_KEY_GET,
	SQ_KEY_LIST,
	SQ_KEY_LIST_ALL,
	SQ_KEY_REVOKE,
	SQ_META_GET,
	SQ_META_INSERT,
	/* housekeeping */
	SQ_PURGE_EXPIRE,
	SQ_PURGE_SEALED,
	SQ_PURGE_VERIFICATIONS,
	SQ_PURGE_EVENTS,
	SQ_PURGE_JOBS,
	SQ_PURGE_IDEM,
	/* outbox */
	SQ_JOB_INSERT,
	SQ_JOB_CLAIM,
	SQ_JOB_SENT,
	SQ_JOB_RETRY,
	SQ_JOB_DEAD,
	SQ_JOB_RELEASE,
	SQ_JOB_LIST,
	SQ_JOB_COUNTS,
	SQ_JOB_NEXT_DUE,
	SQ_JOB_BACKLOG,
	/* migrations */
	SQ_MIGRATE_LOCK,
	SQ_MIGRATE_VERSION,
	SQ_MIGRATE_NAME,
	SQ_MIGRATE_RECORD,
	SQ_COUNT
};

/*
 * The columns every statement that reads verifications returns, in this order (both
 * schemas name them alike); code_hash last. store.c reads them with vf_read().
 */
#define SB_VF_COLS \
	"id, public_id, app_id, channel, target, cur_channel, cur_target, status, attempts, " \
	"max_attempts, sends, max_sends, resend_cooldown, consume, sealed_code IS NOT NULL, " \
	"created_at, updated_at, expire_at, last_sent_at, ip, lang, sender, fallback, code_hash"
#define SB_VF_NCOLS 24

/* A value: a statement's parameter, or a cell of its result. Text is NUL-terminated. */
enum sb_type { SB_NULL, SB_INT, SB_TEXT, SB_BLOB };
struct sb_val {
	enum sb_type t;
	int64_t i;
	const void *p;
	size_t len;
};

#define SB_ARGS_MAX 28

/* One statement of a step: its parameters in, its result out. Results live in the
 * transaction's arena until the transaction ends. */
struct sb_stmt {
	enum sb_sql sql;
	struct sb_val a[SB_ARGS_MAX];
	int n;
	size_t rows, cols;
	struct sb_val *cell;               /* rows * cols */
	int64_t changes;                   /* rows a write touched */
};

enum sb_mode {
	SB_READ,             /* reads only, one snapshot */
	SB_WRITE,            /* a client is answered about it: durable commit */
	SB_WRITE_RELAXED,    /* the outbox's own bookkeeping: a lost commit only repeats a
	                        delivery (PostgreSQL: synchronous_commit off) */
};

/* exec flags */
#define SB_LAST 1u       /* the last step: a backend that batches may commit with it */

struct sb_tx;
typedef int (*sb_txn_fn)(struct sb_tx *tx, void *arg);

struct sb_ops {
	const char *name;
	/* Run fn inside one transaction of `mode` and commit when it returns 0. */
	int (*run)(struct store *s, enum sb_mode mode, sb_txn_fn fn, void *arg);
	/* Run the n statements of a step in order; fills their results. An error of any
	 * fails the step (and the transaction). */
	int (*exec)(struct sb_tx *tx, struct sb_stmt *st, size_t n, unsigned flags);
	/* Run a migration script (several statements, no parameters). */
	int (*script)(struct sb_tx *tx, const char *sql, char *err, size_t cap);
	int (*ping)(struct store *s);
	void (*close)(struct store *s);
};

/* The opaque handle: each backend embeds this first in its own struct. */
struct store {
	const struct sb_ops *ops;
};

/* ---- the arena: results and copies that live as long as one run of a transaction ---- */

struct sb_chunk;
struct sb_arena {
	struct sb_chunk *head;
};
/* n bytes from the arena, or NULL. Wiped and freed by sb_arena_reset. */
void *sb_alloc(struct sb_arena *a, size_t n);
void sb_arena_reset(struct sb_arena *a);

/* What every backend's transaction carries first; the backend embeds it in its own. */
struct sb_tx {
	struct store *s;
	struct sb_arena arena;
	enum sb_mode mode;
};

static inline int sb_exec(struct sb_tx *tx, struct sb_stmt *st, size_t n, unsigned flags)
{
	return tx->s->ops->exec(tx, st, n, flags);
}

/* ---- building parameters and reading cells ----------------------------------------- */

void sb_stmt_init(struct sb_stmt *st, enum sb_sql sql);
void sb_arg_int(struct sb_stmt *st, int64_t v);
void sb_arg_text(struct sb_stmt *st, const char *s);           /* NULL: SQL NULL */
void sb_arg_blob(struct sb_stmt *st, const void *p, size_t len); /* NULL: SQL NULL */

bool sb_is_null(const struct sb_stmt *st, size_t row, size_t col);
int64_t sb_int(const struct sb_stmt *st, size_t row, size_t col);   /* NULL: 0 */
const char *sb_str(const struct sb_stmt *st, size_t row, size_t col); /* NULL: "" */
const uint8_t *sb_blob(const struct sb_stmt *st, size_t row, size_t col, size_t *len);
/* Copy a text cell into dst (cap bytes), cut at a UTF-8 boundary. */
void sb_copy(const struct sb_stmt *st, size_t row, size_t col, char *dst, size_t cap);

/* ---- helpers the backends share --------------------------------------------------- */

/* Copy at most cap-1 bytes of in, keeping whole UTF-8 sequences and turning bytes that
 * are not valid UTF-8 into '?', so a provider's error text can always be stored. */
void sb_text_clean(char *out, size_t cap, const char *in);

/* Apply the migrations `migrations` (count n) the database lacks, each in its own
 * transaction through s's executor, under SQ_MIGRATE_LOCK. Refuses a schema newer than
 * this binary, or applied migrations that are not ours. 0 or OTP_ERR_STORE with err. */
struct store_migration;
int sb_migrate(struct store *s, const struct store_migration *migrations, size_t n,
               char *err, size_t cap);

#endif
