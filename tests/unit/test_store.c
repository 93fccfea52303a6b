/*
 * test_store.c - the store CONTRACT suite: every operation of store.h, through the
 * interface only, with a fixed clock (every `now` is passed in), against one backend:
 *
 *   - SQLite (default): each test opens a fresh database file in its own mkdtemp()
 *     directory, removed afterwards.
 *   - PostgreSQL, when OTPD_TEST_PG_HOST is set (with OTPD_TEST_PG_PORT, _DATABASE,
 *     _USER, optional _PASSWORD; scripts/pg-test-server.sh env prints them): each test
 *     gets a fresh empty schema "<prefix>_<pid>_<n>" (prefix: OTPD_TEST_PG_SCHEMA_PREFIX,
 *     default "otpd_test"), created and migrated by store_pg_open() itself (real_host =
 *     host), and dropped (CASCADE) after the test by fx_drop_pg_schema() over libpq.
 *     No reset operation is needed in store.h.
 *
 * Tests named sqlite_* look inside the SQLite file (schema version, file mode, erased
 * bytes on disk); they are skipped under PostgreSQL. Codes are hashed with the real core
 * (fixed key), so hashes look like production ones.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <sqlite3.h>

#include "core/limits.h"
#include "core/otp.h"
#include "store/migrations.h"
#include "store/store.h"

#define T0 ((int64_t)1700000000)
#define LIFETIME 300
#define MAX_FAILURES 3
#define PROVIDER "log"
#define ALL_CHANNELS (OTP_CH_BIT(OTP_CH_COUNT) - 1u)

/* ---- the fixture: one empty database per test --------------------------------------- */

struct fx {
	struct store *s;
	bool pg;
	char dir[64];       /* sqlite: the temp directory */
	char path[128];     /* sqlite: the database file */
	char schema[64];    /* pg: this test's schema */
};

static struct otp_key test_key;

static const char *env_or(const char *name, const char *dflt)
{
	const char *v = getenv(name);
	return v != NULL && v[0] != '\0' ? v : dflt;
}

static int env_port(void)
{
	const char *v = env_or("OTPD_TEST_PG_PORT", "5432");
	char *end = NULL;
	errno = 0;
	long p = strtol(v, &end, 10);
	if (errno != 0 || end == v || *end != '\0' || p < 1 || p > 65535)
		return -1;
	return (int)p;
}

static struct store *fx_open(struct fx *f, int pool)
{
	char err[512] = "";
	struct store *s;
	if (f->pg) {
		const char *host = env_or("OTPD_TEST_PG_HOST", NULL);
		struct store_pg_config cfg = {
			.host = host,
			.real_host = host,
			.port = env_port(),
			.database = env_or("OTPD_TEST_PG_DATABASE", "otpd_test"),
			.user = env_or("OTPD_TEST_PG_USER", "postgres"),
			.password = env_or("OTPD_TEST_PG_PASSWORD", NULL),
			.schema = f->schema,
			.pool = pool,
			.connect_timeout = 10,
		};
		s = store_pg_open(&cfg, err, sizeof err);
	} else {
		s = store_sqlite_open(f->path, pool, err, sizeof err);
	}
	if (s == NULL)
		fail_msg("cannot open the store: %s", err);
	return s;
}

static void quiet_notice(void *arg, const char *msg)
{
	(void)arg;
	(void)msg;
}

static void fx_drop_pg_schema(const struct fx *f)
{
	char port[16];
	snprintf(port, sizeof port, "%d", env_port());
	const char *keys[] = {"host", "port", "dbname", "user", "password", NULL};
	const char *vals[] = {env_or("OTPD_TEST_PG_HOST", NULL), port,
	                      env_or("OTPD_TEST_PG_DATABASE", "otpd_test"),
	                      env_or("OTPD_TEST_PG_USER", "postgres"),
	                      env_or("OTPD_TEST_PG_PASSWORD", NULL), NULL};
	PGconn *c = PQconnectdbParams(keys, vals, 0);
	if (PQstatus(c) == CONNECTION_OK) {
		PQsetNoticeProcessor(c, quiet_notice, NULL);
		char sql[128];
		snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS \"%s\" CASCADE", f->schema);
		PQclear(PQexec(c, sql));
	}
	PQfinish(c);
}

static int fx_setup(void **state)
{
	static unsigned counter;
	struct fx *f = calloc(1, sizeof *f);
	assert_non_null(f);
	f->pg = getenv("OTPD_TEST_PG_HOST") != NULL;
	if (f->pg) {
		const char *prefix = env_or("OTPD_TEST_PG_SCHEMA_PREFIX", "otpd_test");
		for (const char *p = prefix; *p; p++)
			if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
				fail_msg("OTPD_TEST_PG_SCHEMA_PREFIX: only a-z, 0-9 and _");
		int n = snprintf(f->schema, sizeof f->schema, "%s_%ld_%u", prefix,
		                 (long)getpid(), ++counter);
		assert_true(n > 0 && (size_t)n < sizeof f->schema);
	} else {
		const char *tmp = env_or("TMPDIR", "/tmp");
		int n = snprintf(f->dir, sizeof f->dir, "%s/otpd-store-XXXXXX", tmp);
		assert_true(n > 0 && (size_t)n < sizeof f->dir);
		assert_non_null(mkdtemp(f->dir));
		snprintf(f->path, sizeof f->path, "%s/otpd.db", f->dir);
	}
	f->s = fx_open(f, 4);
	*state = f;
	return 0;
}

static void fx_remove_sqlite(const struct fx *f)
{
	static const char *const suffix[] = {"", "-wal", "-shm", "-journal"};
	char p[160];
	for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
		snprintf(p, sizeof p, "%s%s", f->path, suffix[i]);
		unlink(p);
	}
	rmdir(f->dir);
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;
	store_close(f->s);
	if (f->pg)
		fx_drop_pg_schema(f);
	else
		fx_remove_sqlite(f);
	free(f);
	return 0;
}

static void fx_reopen(struct fx *f)
{
	store_close(f->s);
	f->s = fx_open(f, 4);
}

/* ---- sending and checking ----------------------------------------------------------- */

struct send_opts {
	const char *ip;
	bool seal;          /* store a sealed copy ("sealed:<code>") */
	bool skip;          /* DUMMY: job skipped */
	int lifetime;       /* 0: LIFETIME */
	bool require_ip;    /* refuse without ip while the channel has IP rules */
};

static int send_code(struct store *s, enum otp_channel ch, const char *target,
                     const char *code, int64_t now, const struct send_opts *o,
                     struct store_send_result *res)
{
	static const struct send_opts none;
	struct store_send_result local;
	char sealed[96], payload[96];
	if (o == NULL)
		o = &none;
	if (res == NULL)
		res = &local;
	snprintf(sealed, sizeof sealed, "sealed:%s", code);
	snprintf(payload, sizeof payload, "payload:%s:%s", target, code);
	struct store_send req = {
		.channel = ch,
		.target = target,
		.ip = o->ip,
		.sealed_code = o->seal ? (const uint8_t *)sealed : NULL,
		.sealed_code_len = o->seal ? strlen(sealed) : 0,
		.now = now,
		.expire_at = now + (o->lifetime ? o->lifetime : LIFETIME),
		.provider = PROVIDER,
		.payload = o->skip ? NULL : (const uint8_t *)payload,
		.payload_len = o->skip ? 0 : strlen(payload),
		.skip = o->skip,
		.require_ip = o->require_ip,
		.request_id = "req-test",
	};
	otp_code_hash(&test_key, ch, target, code, req.code_hash);
	otp_lookup_hash(&test_key, ch, code, req.lookup_hash);
	return store_send(s, &req, res);
}

/* A send that must be accepted; returns the new code's id. */
static int64_t send_ok(struct store *s, enum otp_channel ch, const char *target,
                       const char *code, int64_t now, const struct send_opts *o)
{
	struct store_send_result res;
	int rc = send_code(s, ch, target, code, now, o, &res);
	if (rc != 0)
		fail_msg("send %s to %s at %lld: %s", code, target, (long long)(now - T0),
		         otp_err_name(rc));
	assert_true(res.code_id > 0);
	assert_true(res.job_id > 0);
	return res.code_id;
}

struct check_opts {
	unsigned mask;      /* 0: only ch */
	int max_failures;   /* 0: MAX_FAILURES; < 0: unlimited */
	bool consume;
};

static int check_code(struct store *s, enum otp_channel ch, const char *target,
                      const char *code, int64_t now, const struct check_opts *o, bool *ok)
{
	static const struct check_opts none;
	if (o == NULL)
		o = &none;
	struct store_check req = {
		.channel = ch,
		.channel_mask = o->mask ? o->mask : OTP_CH_BIT(ch),
		.target = target,
		.now = now,
		.max_failures = o->max_failures == 0 ? MAX_FAILURES : o->max_failures,
		.consume = o->consume,
	};
	for (int c = 0; c < OTP_CH_COUNT; c++)
		if (req.channel_mask & OTP_CH_BIT(c))
			otp_code_hash(&test_key, (enum otp_channel)c, target, code, req.presented[c]);
	return store_check(s, &req, ok);
}

/* The answer of a check that must not fail. */
static bool check(struct store *s, enum otp_channel ch, const char *target, const char *code,
                  int64_t now, const struct check_opts *o)
{
	bool ok = true;
	int rc = check_code(s, ch, target, code, now, o, &ok);
	if (rc != 0)
		fail_msg("check %s for %s: %s", code, target, otp_err_name(rc));
	return ok;
}

static void set_rules(struct store *s, enum otp_channel ch, bool rep_target, bool rep_ip,
                      const struct otp_limit_rule *rules, size_t n)
{
	const bool replace[2] = {[OTP_LIMIT_TARGET] = rep_target, [OTP_LIMIT_IP] = rep_ip};
	assert_int_equal(store_set_limits(s, ch, replace, rules, n), 0);
}

#define RULE(k, m, r) ((struct otp_limit_rule){.kind = (k), .minutes = (m), .rate = (r)})

/* ---- lifecycle ---------------------------------------------------------------------- */

static void test_ping(void **state)
{
	struct fx *f = *state;
	assert_int_equal(store_ping(f->s), 0);
	assert_non_null(f->s->ops->name);
}

static void test_reopen_keeps_data_and_migrations_are_idempotent(void **state)
{
	struct fx *f = *state;
	set_rules(f->s, OTP_CH_SMS, true, false, &RULE(OTP_LIMIT_TARGET, 10, 3), 1);
	send_ok(f->s, OTP_CH_SMS, "79001112233", "12345", T0, NULL);
	fx_reopen(f);
	fx_reopen(f);
	assert_true(check(f->s, OTP_CH_SMS, "79001112233", "12345", T0 + 1, NULL));
	struct store_limits l;
	assert_int_equal(store_get_limits(f->s, OTP_CH_SMS, &l), 0);
	assert_int_equal(l.n, 1);
	assert_int_equal(l.rules[0].rate, 3);
}

/* ---- sending -------------------------------------------------------------------------- */

static void test_send_writes_code_and_pending_job(void **state)
{
	struct fx *f = *state;
	struct store_send_result a, b;
	assert_int_equal(send_code(f->s, OTP_CH_SMS, "79001112233", "11111", T0, NULL, &a), 0);
	assert_int_equal(send_code(f->s, OTP_CH_SMS, "79001112233", "22222", T0, NULL, &b), 0);
	assert_true(a.code_id > 0 && b.code_id > a.code_id);
	assert_true(a.job_id > 0 && b.job_id > a.job_id);

	struct store_outbox_counts n;
	assert_int_equal(store_outbox_counts(f->s, &n), 0);
	assert_int_equal(n.pending, 2);
	assert_int_equal(n.sending + n.sent + n.dead + n.skipped, 0);

	struct store_job_info rows[4];
	size_t got = 0;
	struct store_job_filter flt = {.channel = -1, .limit = 4};
	assert_int_equal(store_outbox_list(f->s, &flt, rows, &got, NULL), 0);
	assert_int_equal(got, 2);
	assert_int_equal(rows[0].id, b.job_id);        /* newest first */
	assert_int_equal(rows[0].code_id, b.code_id);
	assert_int_equal(rows[0].channel, OTP_CH_SMS);
	assert_string_equal(rows[0].provider, PROVIDER);
	assert_string_equal(rows[0].state, STORE_JOB_PENDING);
	assert_int_equal(rows[0].attempts, 0);
	assert_int_equal(rows[0].created_at, T0);
	assert_int_equal(rows[0].next_at, T0);

	int64_t due = -1;
	assert_int_equal(store_outbox_next_due(f->s, &due), 0);
	assert_int_equal(due, T0);
}

static void test_send_skip_records_skipped_job(void **state)
{
	struct fx *f = *state;
	struct send_opts o = {.skip = true};
	send_ok(f->s, OTP_CH_EMAIL, "a@example.com", "31337", T0, &o);
	/* the code is checkable, the job is never delivered */
	assert_true(check(f->s, OTP_CH_EMAIL, "a@example.com", "31337", T0 + 1, NULL));
	struct store_outbox_counts n;
	assert_int_equal(store_outbox_counts(f->s, &n), 0);
	assert_int_equal(n.skipped, 1);
	assert_int_equal(n.pending, 0);
	struct store_job jobs[2];
	size_t got = 9;
	assert_int_equal(store_outbox_claim(f->s, T0 + 100, T0 + 130, jobs, 2, &got), 0);
	assert_int_equal(got, 0);
	int64_t due = -1;
	assert_int_equal(store_outbox_next_due(f->s, &due), 0);
	assert_int_equal(due, 0);
}

/* ---- limits ------------------------------------------------------------------------- */

static void test_limits_set_get_order_and_replace(void **state)
{
	struct fx *f = *state;
	struct store_limits l;
	assert_int_equal(store_get_limits(f->s, OTP_CH_SMS, &l), 0);
	assert_int_equal(l.n, 0);

	/* both kinds in one call, interleaved: kept in the order given */
	const struct otp_limit_rule first[] = {
		RULE(OTP_LIMIT_IP, 1, 10), RULE(OTP_LIMIT_TARGET, 5, 3), RULE(OTP_LIMIT_IP, 60, 50),
	};
	set_rules(f->s, OTP_CH_SMS, true, true, first, 3);
	assert_int_equal(store_get_limits(f->s, OTP_CH_SMS, &l), 0);
	assert_int_equal(l.n, 3);
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(l.rules[i].kind, first[i].kind);
		assert_int_equal(l.rules[i].minutes, first[i].minutes);
		assert_int_equal(l.rules[i].rate, first[i].rate);
	}

	/* replacing one kind leaves the other; the new rules were set last */
	const struct otp_limit_rule targets[] = {
		RULE(OTP_LIMIT_TARGET, 2, 1), RULE(OTP_LIMIT_TARGET, 1440, 20),
	};
	set_rules(f->s, OTP_CH_SMS, true, false, targets, 2);
	assert_int_equal(store_get_limits(f->s, OTP_CH_SMS, &l), 0);
	assert_int_equal(l.n, 4);
	assert_int_equal(l.rules[0].kind, OTP_LIMIT_IP);
	assert_int_equal(l.rules[0].minutes, 1);
	assert_int_equal(l.rules[1].kind, OTP_LIMIT_IP);
	assert_int_equal(l.rules[1].minutes, 60);
	assert_int_equal(l.rules[2].kind, OTP_LIMIT_TARGET);
	assert_int_equal(l.rules[2].minutes, 2);
	assert_int_equal(l.rules[3].minutes, 1440);
	assert_int_equal(l.rules[3].rate, 20);

	/* another channel is untouched */
	assert_int_equal(store_get_limits(f->s, OTP_CH_CALL, &l), 0);
	assert_int_equal(l.n, 0);

	/* [] clears a kind */
	set_rules(f->s, OTP_CH_SMS, false, true, NULL, 0);
	assert_int_equal(store_get_limits(f->s, OTP_CH_SMS, &l), 0);
	assert_int_equal(l.n, 2);
	assert_int_equal(l.rules[0].kind, OTP_LIMIT_TARGET);
	assert_int_equal(l.rules[1].kind, OTP_LIMIT_TARGET);

	/* nothing replaced: nothing changes */
	set_rules(f->s, OTP_CH_SMS, false, false, NULL, 0);
	assert_int_equal(store_get_limits(f->s, OTP_CH_SMS, &l), 0);
	assert_int_equal(l.n, 2);
}

static void test_limits_invalid_rules_change_nothing(void **state)
{
	struct fx *f = *state;
	set_rules(f->s, OTP_CH_EMAIL, true, false, &RULE(OTP_LIMIT_TARGET, 10, 2), 1);
	const bool only_target[2] = {[OTP_LIMIT_TARGET] = true};
	/* an ip rule while only target rules are replaced */
	const struct otp_limit_rule bad_kind[] = {
		RULE(OTP_LIMIT_TARGET, 1, 1), RULE(OTP_LIMIT_IP, 1, 1),
	};
	assert_int_equal(store_set_limits(f->s, OTP_CH_EMAIL, only_target, bad_kind, 2),
	                 OTP_ERR_INVALID);
	const struct otp_limit_rule bad_minutes[] = {RULE(OTP_LIMIT_TARGET, 0, 1)};
	assert_int_equal(store_set_limits(f->s, OTP_CH_EMAIL, only_target, bad_minutes, 1),
	                 OTP_ERR_INVALID);
	const struct otp_limit_rule bad_rate[] = {RULE(OTP_LIMIT_TARGET, 1, -1)};
	assert_int_equal(store_set_limits(f->s, OTP_CH_EMAIL, only_target, bad_rate, 1),
	                 OTP_ERR_INVALID);
	struct otp_limit_rule many[OTP_LIMIT_RULES_MAX + 1];
	for (size_t i = 0; i < OTP_LIMIT_RULES_MAX + 1; i++)
		many[i] = RULE(OTP_LIMIT_TARGET, (int)i + 1, 1);
	assert_int_equal(store_set_limits(f->s, OTP_CH_EMAIL, only_target, many,
	                                  OTP_LIMIT_RULES_MAX + 1), OTP_ERR_INVALID);
	/* the most a kind may hold is fine */
	assert_int_equal(store_set_limits(f->s, OTP_CH_CALL, only_target, many,
	                                  OTP_LIMIT_RULES_MAX), 0);

	struct store_limits l;
	assert_int_equal(store_get_limits(f->s, OTP_CH_EMAIL, &l), 0);
	assert_int_equal(l.n, 1);
	assert_int_equal(l.rules[0].minutes, 10);
	assert_int_equal(l.rules[0].rate, 2);
	assert_int_equal(store_get_limits(f->s, OTP_CH_CALL, &l), 0);
	assert_int_equal(l.n, OTP_LIMIT_RULES_MAX);
	assert_int_equal(l.rules[OTP_LIMIT_RULES_MAX - 1].minutes, OTP_LIMIT_RULES_MAX);
}

static void test_limit_window_edges(void **state)
{
	struct fx *f = *state;
	const char *t = "79001112233";
	set_rules(f->s, OTP_CH_SMS, true, false, &RULE(OTP_LIMIT_TARGET, 5, 2), 1);
	send_ok(f->s, OTP_CH_SMS, t, "10000", T0, NULL);
	send_ok(f->s, OTP_CH_SMS, t, "10001", T0 + 60, NULL);

	struct store_send_result res;
	assert_int_equal(send_code(f->s, OTP_CH_SMS, t, "10002", T0 + 120, NULL, &res),
	                 OTP_ERR_LIMIT);
	assert_int_equal(res.refused_by.kind, OTP_LIMIT_TARGET);
	assert_int_equal(res.refused_by.minutes, 5);
	assert_int_equal(res.refused_by.rate, 2);
	/* the window of T0+300 starts at T0: the send made exactly then still counts */
	assert_int_equal(send_code(f->s, OTP_CH_SMS, t, "10003", T0 + 300, NULL, &res),
	                 OTP_ERR_LIMIT);
	/* one second later it has left the window */
	send_ok(f->s, OTP_CH_SMS, t, "10004", T0 + 301, NULL);
	/* refused sends wrote nothing: not checkable */
	assert_false(check(f->s, OTP_CH_SMS, t, "10002", T0 + 302, &(struct check_opts){
		.max_failures = -1}));
	/* the target limit is per target, and per channel */
	send_ok(f->s, OTP_CH_SMS, "79009998877", "10005", T0 + 302, NULL);
	send_ok(f->s, OTP_CH_CALL, t, "10006", T0 + 302, NULL);
}

static void test_limit_rejected_sends_do_not_count(void **state)
{
	struct fx *f = *state;
	const char *t = "a@example.com";
	set_rules(f->s, OTP_CH_EMAIL, true, false, &RULE(OTP_LIMIT_TARGET, 10, 2), 1);
	send_ok(f->s, OTP_CH_EMAIL, t, "1", T0, NULL);
	send_ok(f->s, OTP_CH_EMAIL, t, "2", T0 + 10, NULL);
	for (int i = 0; i < 5; i++)
		assert_int_equal(send_code(f->s, OTP_CH_EMAIL, t, "x", T0 + 20 + i, NULL, NULL),
		                 OTP_ERR_LIMIT);
	/* T0 has left the window: only T0+10 is in it, the five refusals are not */
	send_ok(f->s, OTP_CH_EMAIL, t, "3", T0 + 601, NULL);
	assert_int_equal(send_code(f->s, OTP_CH_EMAIL, t, "4", T0 + 602, NULL, NULL),
	                 OTP_ERR_LIMIT);
}

static void test_limit_ip_rules_count_per_ip_and_channel(void **state)
{
	struct fx *f = *state;
	const struct otp_limit_rule sms[] = {RULE(OTP_LIMIT_IP, 60, 1), RULE(OTP_LIMIT_TARGET, 60, 5)};
	set_rules(f->s, OTP_CH_SMS, true, true, sms, 2);
	set_rules(f->s, OTP_CH_CALL, false, true, &RULE(OTP_LIMIT_IP, 60, 1), 1);

	struct send_opts x = {.ip = "10.0.0.1"}, y = {.ip = "10.0.0.2"};
	send_ok(f->s, OTP_CH_SMS, "79000000001", "1", T0, &x);
	/* another target from the same ip: the ip rule refuses */
	struct store_send_result res;
	assert_int_equal(send_code(f->s, OTP_CH_SMS, "79000000002", "2", T0 + 1, &x, &res),
	                 OTP_ERR_LIMIT);
	assert_int_equal(res.refused_by.kind, OTP_LIMIT_IP);
	assert_int_equal(res.refused_by.minutes, 60);
	assert_int_equal(res.refused_by.rate, 1);
	/* the same target from another ip: fine (target rule allows 5) */
	send_ok(f->s, OTP_CH_SMS, "79000000001", "3", T0 + 2, &y);
	/* sms and call are counted apart */
	send_ok(f->s, OTP_CH_CALL, "79000000003", "4", T0 + 3, &x);
	assert_int_equal(send_code(f->s, OTP_CH_CALL, "79000000004", "5", T0 + 4, &x, NULL),
	                 OTP_ERR_LIMIT);
	/* a channel without rules has no limit */
	for (int i = 0; i < 10; i++)
		send_ok(f->s, OTP_CH_EMAIL, "a@example.com", "6", T0 + 5 + i, &x);
}

static void test_limit_first_failing_rule_decides(void **state)
{
	struct fx *f = *state;
	struct send_opts o = {.ip = "192.0.2.7"};
	struct store_send_result res;
	const struct otp_limit_rule ip_first[] = {
		RULE(OTP_LIMIT_TARGET, 30, 100), RULE(OTP_LIMIT_IP, 10, 1), RULE(OTP_LIMIT_TARGET, 10, 1),
	};
	set_rules(f->s, OTP_CH_SMS, true, true, ip_first, 3);
	send_ok(f->s, OTP_CH_SMS, "79001112233", "1", T0, &o);
	assert_int_equal(send_code(f->s, OTP_CH_SMS, "79001112233", "2", T0 + 1, &o, &res),
	                 OTP_ERR_LIMIT);
	assert_int_equal(res.refused_by.kind, OTP_LIMIT_IP);
	assert_int_equal(res.refused_by.minutes, 10);

	const struct otp_limit_rule target_first[] = {
		RULE(OTP_LIMIT_TARGET, 11, 1), RULE(OTP_LIMIT_IP, 12, 1),
	};
	set_rules(f->s, OTP_CH_SMS, true, true, target_first, 2);
	assert_int_equal(send_code(f->s, OTP_CH_SMS, "79001112233", "3", T0 + 2, &o, &res),
	                 OTP_ERR_LIMIT);
	assert_int_equal(res.refused_by.kind, OTP_LIMIT_TARGET);
	assert_int_equal(res.refused_by.minutes, 11);
}

static void test_limit_rate_zero_forbids(void **state)
{
	struct fx *f = *state;
	set_rules(f->s, OTP_CH_TELEGRAM, true, false, &RULE(OTP_LIMIT_TARGET, 1, 0), 1);
	struct store_send_result res;
	assert_int_equal(send_code(f->s, OTP_CH_TELEGRAM, "12345678", "1", T0, NULL, &res),
	                 OTP_ERR_LIMIT);
	assert_int_equal(res.refused_by.rate, 0);
	struct store_outbox_counts n;
	assert_int_equal(store_outbox_counts(f->s, &n), 0);
	assert_int_equal(n.pending, 0);
}

static void test_send_require_ip_follows_ip_rules(void **state)
{
	struct fx *f = *state;
	struct send_opts need = {.require_ip = true}, need_given = {.require_ip = true, .ip = "10.1.1.1"};
	struct store_send_result res;
	/* no IP rules: no ip is needed */
	send_ok(f->s, OTP_CH_SMS, "79000000101", "1", T0, &need);
	/* a target rule alone does not make ip required either */
	set_rules(f->s, OTP_CH_SMS, true, false, &RULE(OTP_LIMIT_TARGET, 60, 100), 1);
	send_ok(f->s, OTP_CH_SMS, "79000000101", "2", T0 + 1, &need);
	/* with an IP rule: refused, flagged, nothing written */
	set_rules(f->s, OTP_CH_SMS, false, true, &RULE(OTP_LIMIT_IP, 60, 100), 1);
	struct store_outbox_counts before, after;
	assert_int_equal(store_outbox_counts(f->s, &before), 0);
	assert_int_equal(send_code(f->s, OTP_CH_SMS, "79000000101", "3", T0 + 2, &need, &res),
	                 OTP_ERR_INVALID);
	assert_true(res.ip_required);
	assert_int_equal(store_outbox_counts(f->s, &after), 0);
	assert_int_equal(after.pending, before.pending);
	assert_false(check(f->s, OTP_CH_SMS, "79000000101", "3", T0 + 3, NULL));
	/* given an ip, or not asked to require one (the Telegram webhook): accepted */
	send_ok(f->s, OTP_CH_SMS, "79000000101", "4", T0 + 4, &need_given);
	send_ok(f->s, OTP_CH_SMS, "79000000101", "5", T0 + 5, NULL);
	/* the rule is per channel */
	send_ok(f->s, OTP_CH_CALL, "79000000101", "6", T0 + 6, &need);
}

/* ---- checking ----------------------------------------------------------------------- */

static void test_check_any_live_code_matches(void **state)
{
	struct fx *f = *state;
	const char *t = "79001112233";
	send_ok(f->s, OTP_CH_SMS, t, "11111", T0, NULL);
	send_ok(f->s, OTP_CH_SMS, t, "22222", T0 + 10, NULL);
	send_ok(f->s, OTP_CH_SMS, t, "33333", T0 + 20, NULL);
	/* checking does not use a code up (by default): twice each */
	for (int round = 0; round < 2; round++) {
		assert_true(check(f->s, OTP_CH_SMS, t, "11111", T0 + 30, NULL));
		assert_true(check(f->s, OTP_CH_SMS, t, "22222", T0 + 30, NULL));
		assert_true(check(f->s, OTP_CH_SMS, t, "33333", T0 + 30, NULL));
	}
	/* a code belongs to its target and channel */
	assert_false(check(f->s, OTP_CH_SMS, "79009998877", "11111", T0 + 30, NULL));
	assert_false(check(f->s, OTP_CH_EMAIL, t, "11111", T0 + 30, NULL));
}

static void test_check_expiry(void **state)
{
	struct fx *f = *state;
	const char *t = "79001112233";
	struct check_opts unlimited = {.max_failures = -1};
	send_ok(f->s, OTP_CH_SMS, t, "11111", T0, NULL);
	send_ok(f->s, OTP_CH_SMS, t, "22222", T0 + 100, NULL);
	assert_true(check(f->s, OTP_CH_SMS, t, "11111", T0 + LIFETIME - 1, &unlimited));
	/* expire_at = now + lifetime is the first second it is dead */
	assert_false(check(f->s, OTP_CH_SMS, t, "11111", T0 + LIFETIME, &unlimited));
	assert_true(check(f->s, OTP_CH_SMS, t, "22222", T0 + LIFETIME, &unlimited));
	assert_false(check(f->s, OTP_CH_SMS, t, "22222", T0 + 100 + LIFETIME, &unlimited));
}

static void test_check_failures_void_all_live_codes(void **state)
{
	struct fx *f = *state;
	const char *t = "79001112233";
	send_ok(f->s, OTP_CH_SMS, t, "11111", T0, NULL);
	send_ok(f->s, OTP_CH_SMS, t, "22222", T0 + 1, NULL);
	assert_false(check(f->s, OTP_CH_SMS, t, "00000", T0 + 2, NULL));
	assert_false(check(f->s, OTP_CH_SMS, t, "00001", T0 + 3, NULL));
	/* a right check in between does not forgive the wrong ones */
	assert_true(check(f->s, OTP_CH_SMS, t, "11111", T0 + 4, NULL));
	/* the third wrong check reaches the limit: every live code dies */
	assert_false(check(f->s, OTP_CH_SMS, t, "00002", T0 + 5, NULL));
	assert_false(check(f->s, OTP_CH_SMS, t, "11111", T0 + 6, NULL));
	assert_false(check(f->s, OTP_CH_SMS, t, "22222", T0 + 7, NULL));
	/* a new code starts fresh; the dead ones stay dead */
	send_ok(f->s, OTP_CH_SMS, t, "33333", T0 + 8, NULL);
	assert_false(check(f->s, OTP_CH_SMS, t, "11111", T0 + 9, NULL));
	assert_true(check(f->s, OTP_CH_SMS, t, "33333", T0 + 10, NULL));
	/* and two more wrong checks (fewer than the limit) leave it alive */
	assert_false(check(f->s, OTP_CH_SMS, t, "00003", T0 + 11, NULL));
	assert_true(check(f->s, OTP_CH_SMS, t, "33333", T0 + 12, NULL));
	/* another target is not affected by any of it */
	send_ok(f->s, OTP_CH_SMS, "79009998877", "11111", T0 + 13, NULL);
	assert_true(check(f->s, OTP_CH_SMS, "79009998877", "11111", T0 + 14, NULL));
}

static void test_check_new_send_resets_failures(void **state)
{
	struct fx *f = *state;
	const char *t = "a@example.com";
	send_ok(f->s, OTP_CH_EMAIL, t, "11111", T0, NULL);
	assert_false(check(f->s, OTP_CH_EMAIL, t, "00000", T0 + 1, NULL));
	assert_false(check(f->s, OTP_CH_EMAIL, t, "00001", T0 + 2, NULL));
	send_ok(f->s, OTP_CH_EMAIL, t, "22222", T0 + 3, NULL);
	/* without the reset this would be the third failure and void both codes */
	assert_false(check(f->s, OTP_CH_EMAIL, t, "00002", T0 + 4, NULL));
	assert_false(check(f->s, OTP_CH_EMAIL, t, "00003", T0 + 5, NULL));
	assert_true(check(f->s, OTP_CH_EMAIL, t, "11111", T0 + 6, NULL));
	assert_true(check(f->s, OTP_CH_EMAIL, t, "22222", T0 + 7, NULL));
}

static void test_check_unlimited_failures(void **state)
{
	struct fx *f = *state;
	struct check_opts unlimited = {.max_failures = -1};
	send_ok(f->s, OTP_CH_SMS, "79001112233", "11111", T0, NULL);
	for (int i = 0; i < 20; i++)
		assert_false(check(f->s, OTP_CH_SMS, "79001112233", "00000", T0 + 1, &unlimited));
	assert_true(check(f->s, OTP_CH_SMS, "79001112233", "11111", T0 + 2, &unlimited));
}

static void test_check_consume(void **state)
{
	struct fx *f = *state;
	const char *t = "79001112233";
	struct check_opts consume = {.consume = true};
	send_ok(f->s, OTP_CH_SMS, t, "11111", T0, NULL);
	send_ok(f->s, OTP_CH_SMS, t, "22222", T0 + 1, NULL);
	assert_true(check(f->s, OTP_CH_SMS, t, "11111", T0 + 2, &consume));
	assert_false(check(f->s, OTP_CH_SMS, t, "11111", T0 + 3, &consume));
	/* the other code is still good */
	assert_true(check(f->s, OTP_CH_SMS, t, "22222", T0 + 4, &consume));
	assert_false(check(f->s, OTP_CH_SMS, t, "22222", T0 + 5, NULL));
}

static void test_check_mask_accepts_call_codes_on_sms(void **state)
{
	struct fx *f = *state;
	const char *t = "79001112233";
	struct check_opts sms_call = {.mask = OTP_CH_BIT(OTP_CH_SMS) | OTP_CH_BIT(OTP_CH_CALL)};
	send_ok(f->s, OTP_CH_CALL, t, "12345", T0, NULL);
	send_ok(f->s, OTP_CH_SMS, t, "67890", T0, NULL);
	assert_true(check(f->s, OTP_CH_SMS, t, "12345", T0 + 1, &sms_call));
	assert_true(check(f->s, OTP_CH_SMS, t, "67890", T0 + 1, &sms_call));
	assert_true(check(f->s, OTP_CH_CALL, t, "12345", T0 + 1, NULL));
	/* /call/check accepts call codes only */
	assert_false(check(f->s, OTP_CH_CALL, t, "67890", T0 + 1,
	                   &(struct check_opts){.max_failures = -1}));
	/* a code is hashed with its channel: an sms code is not a call code */
	assert_false(check(f->s, OTP_CH_SMS, t, "12345", T0 + 1,
	                   &(struct check_opts){.max_failures = -1}));
}

static void test_check_failures_per_check_channel_void_mask(void **state)
{
	struct fx *f = *state;
	const char *t = "79001112233";
	struct check_opts sms_call = {.mask = OTP_CH_BIT(OTP_CH_SMS) | OTP_CH_BIT(OTP_CH_CALL),
	                              .max_failures = 2};
	struct check_opts call = {.max_failures = 2};
	send_ok(f->s, OTP_CH_CALL, t, "12345", T0, NULL);
	send_ok(f->s, OTP_CH_EMAIL, t, "12345", T0, NULL);
	/* one wrong check on each channel: two counters at 1, below the limit of 2 */
	assert_false(check(f->s, OTP_CH_CALL, t, "00000", T0 + 1, &call));
	assert_false(check(f->s, OTP_CH_SMS, t, "00000", T0 + 2, &sms_call));
	assert_true(check(f->s, OTP_CH_CALL, t, "12345", T0 + 3, &call));
	/* the second wrong /sms/check voids every live code of its mask: the call code too */
	assert_false(check(f->s, OTP_CH_SMS, t, "00001", T0 + 4, &sms_call));
	assert_false(check(f->s, OTP_CH_CALL, t, "12345", T0 + 5, &call));
	/* but not codes outside the mask */
	assert_true(check(f->s, OTP_CH_EMAIL, t, "12345", T0 + 6, NULL));
}

static void test_check_invalid_requests(void **state)
{
	struct fx *f = *state;
	bool ok = true;
	struct store_check req = {.channel = OTP_CH_SMS, .channel_mask = 0, .target = "1",
	                          .now = T0, .max_failures = 3};
	send_ok(f->s, OTP_CH_SMS, "1", "11111", T0, NULL);
	otp_code_hash(&test_key, OTP_CH_SMS, "1", "11111", req.presented[OTP_CH_SMS]);
	/* no channel accepted: never true (a backend may refuse it as invalid) */
	int rc = store_check(f->s, &req, &ok);
	assert_true(rc == 0 || rc == OTP_ERR_INVALID);
	assert_false(ok);
	req.channel_mask = OTP_CH_BIT(OTP_CH_SMS);
	req.target = NULL;
	ok = true;
	assert_true(store_check(f->s, &req, &ok) < 0);
	assert_false(ok);
	req.target = "1";
	assert_true(check(f->s, OTP_CH_SMS, "1", "11111", T0 + 1, NULL));
}

/* ---- lookups ------------------------------------------------------------------------ */

static void test_find_target_latest_live(void **state)
{
	struct fx *f = *state;
	char target[OTP_TARGET_MAX + 1];
	uint8_t lookup[OTP_HASH_LEN];
	otp_lookup_hash(&test_key, OTP_CH_TELEGRAM, "424242", lookup);
	assert_int_equal(store_find_target(f->s, OTP_CH_TELEGRAM, lookup, T0, target,
	                                   sizeof target), OTP_ERR_NOT_FOUND);

	send_ok(f->s, OTP_CH_TELEGRAM, "1001", "424242", T0, NULL);
	send_ok(f->s, OTP_CH_TELEGRAM, "1002", "424242", T0 + 10, NULL);
	send_ok(f->s, OTP_CH_TELEGRAM, "1003", "999999", T0 + 20, NULL);
	assert_int_equal(store_find_target(f->s, OTP_CH_TELEGRAM, lookup, T0 + 30, target,
	                                   sizeof target), 0);
	assert_string_equal(target, "1002");
	/* another channel's code with the same digits is another lookup hash */
	assert_int_equal(store_find_target(f->s, OTP_CH_SMS, lookup, T0 + 30, target,
	                                   sizeof target), OTP_ERR_NOT_FOUND);
	/* once 1002's code expired, 1001's did too (earlier); nothing is left */
	assert_int_equal(store_find_target(f->s, OTP_CH_TELEGRAM, lookup, T0 + 10 + LIFETIME,
	                                   target, sizeof target), OTP_ERR_NOT_FOUND);
	/* the older one alone is live for a while when the newer was sent with a short life */
	send_ok(f->s, OTP_CH_TELEGRAM, "1004", "424242", T0 + 40, &(struct send_opts){
		.lifetime = 5});
	assert_int_equal(store_find_target(f->s, OTP_CH_TELEGRAM, lookup, T0 + 44, target,
	                                   sizeof target), 0);
	assert_string_equal(target, "1004");
	assert_int_equal(store_find_target(f->s, OTP_CH_TELEGRAM, lookup, T0 + 45, target,
	                                   sizeof target), 0);
	assert_string_equal(target, "1002");
	/* a buffer too small for the target is an error, never a cut target */
	char tiny[3];
	assert_true(store_find_target(f->s, OTP_CH_TELEGRAM, lookup, T0 + 45, tiny,
	                              sizeof tiny) < 0);
}

static void test_find_sealed_code(void **state)
{
	struct fx *f = *state;
	const char *t = "79001112233";
	uint8_t *sealed = NULL;
	size_t len = 0;
	assert_int_equal(store_find_sealed_code(f->s, t, T0, &sealed, &len), OTP_ERR_NOT_FOUND);
	assert_null(sealed);

	/* sent while /password was disabled: no copy */
	send_ok(f->s, OTP_CH_SMS, t, "11111", T0, NULL);
	assert_int_equal(store_find_sealed_code(f->s, t, T0 + 1, &sealed, &len),
	                 OTP_ERR_NOT_FOUND);

	struct send_opts seal = {.seal = true};
	send_ok(f->s, OTP_CH_SMS, t, "22222", T0 + 10, &seal);
	send_ok(f->s, OTP_CH_CALL, t, "33333", T0 + 20, &seal);   /* latest, any channel */
	send_ok(f->s, OTP_CH_SMS, "79009998877", "44444", T0 + 30, &seal);
	assert_int_equal(store_find_sealed_code(f->s, t, T0 + 40, &sealed, &len), 0);
	assert_non_null(sealed);
	assert_int_equal(len, strlen("sealed:33333"));
	assert_memory_equal(sealed, "sealed:33333", len);
	free(sealed);
	sealed = NULL;

	/* after the call code expired, the sms one (sent earlier, expiring earlier) too */
	assert_int_equal(store_find_sealed_code(f->s, t, T0 + 20 + LIFETIME, &sealed, &len),
	                 OTP_ERR_NOT_FOUND);
	assert_null(sealed);
}

/* ---- purge ------------------------------------------------------------------------ */

static void test_purge(void **state)
{
	struct fx *f = *state;
	int64_t deleted = -1;
	assert_int_equal(store_purge(f->s, T0, T0, &deleted), 0);
	assert_int_equal(deleted, 0);

	/* two codes that will have expired, one that stays live, one skipped job */
	send_ok(f->s, OTP_CH_SMS, "79000000001", "1", T0, NULL);
	send_ok(f->s, OTP_CH_SMS, "79000000002", "2", T0, &(struct send_opts){.skip = true});
	send_ok(f->s, OTP_CH_SMS, "79000000003", "3", T0 + 1000, NULL);
	/* a failure counter on a target whose code will have expired */
	assert_false(check(f->s, OTP_CH_SMS, "79000000001", "0", T0 + 1, NULL));
	/* deliver the first job */
	struct store_job jobs[4];
	size_t got = 0;
	assert_int_equal(store_outbox_claim(f->s, T0 + 2, T0 + 32, jobs, 1, &got), 0);
	assert_int_equal(got, 1);
	assert_int_equal(store_outbox_sent(f->s, jobs[0].id, T0 + 3, "m1"), 0);
	store_job_fini(&jobs[0]);

	/* before: T0+1001: codes 1 and 2 expired at T0+300; jobs_before T0: no job */
	assert_int_equal(store_purge(f->s, T0 + 1001, T0, &deleted), 0);
	assert_int_equal(deleted, 3); /* codes 1 and 2, the counter of 1 */
	assert_true(check(f->s, OTP_CH_SMS, "79000000003", "3", T0 + 1002, NULL));

	/* finished jobs (sent, skipped) go once older than jobs_before; pending ones stay */
	assert_int_equal(store_purge(f->s, T0 + 1001, T0 + 1001, &deleted), 0);
	assert_int_equal(deleted, 2);
	struct store_outbox_counts n;
	assert_int_equal(store_outbox_counts(f->s, &n), 0);
	assert_int_equal(n.pending, 1);
	assert_int_equal(n.sent + n.skipped, 0);

	/* nothing left to purge */
	assert_int_equal(store_purge(f->s, T0 + 1001, T0 + 1001, &deleted), 0);
	assert_int_equal(deleted, 0);
}

static void test_purge_keeps_sends_inside_limit_windows(void **state)
{
	struct fx *f = *state;
	const char *t = "79001112233";
	int64_t deleted = -1;
	set_rules(f->s, OTP_CH_SMS, true, false, &RULE(OTP_LIMIT_TARGET, 60, 1), 1);
	send_ok(f->s, OTP_CH_SMS, t, "1", T0, NULL);
	/* the code expired at T0+300 but is still a send of the last hour */
	assert_int_equal(store_purge(f->s, T0 + 400, T0, &deleted), 0);
	assert_int_equal(deleted, 0);
	assert_int_equal(send_code(f->s, OTP_CH_SMS, t, "2", T0 + 500, NULL, NULL),
	                 OTP_ERR_LIMIT);
	/* past the window it goes */
	assert_int_equal(store_purge(f->s, T0 + 3601, T0, &deleted), 0);
	assert_int_equal(deleted, 1);
	send_ok(f->s, OTP_CH_SMS, t, "3", T0 + 3602, NULL);
}

/* ---- outbox ------------------------------------------------------------------------- */

static void test_outbox_claim_in_order_with_payload(void **state)
{
	struct fx *f = *state;
	int64_t c1 = send_ok(f->s, OTP_CH_SMS, "79000000001", "1", T0, NULL);
	send_ok(f->s, OTP_CH_EMAIL, "b@example.com", "2", T0 + 1, NULL);
	send_ok(f->s, OTP_CH_SMS, "79000000003", "3", T0 + 2, NULL);
	(void)c1;

	struct store_job jobs[4];
	size_t got = 0;
	/* not due yet for the later ones */
	assert_int_equal(store_outbox_claim(f->s, T0, T0 + 30, jobs, 4, &got), 0);
	assert_int_equal(got, 1);
	assert_int_equal(jobs[0].channel, OTP_CH_SMS);
	assert_string_equal(jobs[0].provider, PROVIDER);
	assert_int_equal(jobs[0].payload_len, strlen("payload:79000000001:1"));
	assert_memory_equal(jobs[0].payload, "payload:79000000001:1", jobs[0].payload_len);
	assert_int_equal(jobs[0].attempts, 0);
	assert_int_equal(jobs[0].created_at, T0);
	assert_int_equal(jobs[0].lease_until, T0 + 30);
	int64_t first = jobs[0].id;
	store_job_fini(&jobs[0]);
	assert_null(jobs[0].payload);

	/* at most `max`, oldest first */
	assert_int_equal(store_outbox_claim(f->s, T0 + 5, T0 + 35, jobs, 1, &got), 0);
	assert_int_equal(got, 1);
	assert_true(jobs[0].id > first);
	assert_int_equal(jobs[0].channel, OTP_CH_EMAIL);
	assert_memory_equal(jobs[0].payload, "payload:b@example.com:2", jobs[0].payload_len);
	store_job_fini(&jobs[0]);
	assert_int_equal(store_outbox_claim(f->s, T0 + 5, T0 + 35, jobs, 4, &got), 0);
	assert_int_equal(got, 1);
	assert_int_equal(jobs[0].created_at, T0 + 2);
	store_job_fini(&jobs[0]);
	/* everything is leased */
	assert_int_equal(store_outbox_claim(f->s, T0 + 6, T0 + 36, jobs, 4, &got), 0);
	assert_int_equal(got, 0);

	struct store_outbox_counts n;
	assert_int_equal(store_outbox_counts(f->s, &n), 0);
	assert_int_equal(n.sending, 3);
	assert_int_equal(n.pending, 0);
	/* nothing pending: the worker has no due time */
	int64_t due = -1;
	assert_int_equal(store_outbox_next_due(f->s, &due), 0);
	assert_int_equal(due, 0);
}

static void test_outbox_lease_expiry_reclaims(void **state)
{
	struct fx *f = *state;
	send_ok(f->s, OTP_CH_SMS, "79000000001", "1", T0, NULL);
	struct store_job jobs[2];
	size_t got = 0;
	assert_int_equal(store_outbox_claim(f->s, T0, T0 + 30, jobs, 2, &got), 0);
	assert_int_equal(got, 1);
	int64_t id = jobs[0].id;
	store_job_fini(&jobs[0]);
	/* the lease holds through lease_until itself */
	assert_int_equal(store_outbox_claim(f->s, T0 + 30, T0 + 60, jobs, 2, &got), 0);
	assert_int_equal(got, 0);
	/* its worker died: claimed again, attempts unchanged, new lease */
	assert_int_equal(store_outbox_claim(f->s, T0 + 31, T0 + 61, jobs, 2, &got), 0);
	assert_int_equal(got, 1);
	assert_int_equal(jobs[0].id, id);
	assert_int_equal(jobs[0].attempts, 0);
	assert_int_equal(jobs[0].lease_until, T0 + 61);
	assert_non_null(jobs[0].payload);
	store_job_fini(&jobs[0]);
}

static int64_t claim_one(struct store *s, int64_t now)
{
	struct store_job job;
	size_t got = 0;
	assert_int_equal(store_outbox_claim(s, now, now + 30, &job, 1, &got), 0);
	assert_int_equal(got, 1);
	int64_t id = job.id;
	store_job_fini(&job);
	return id;
}

static void job_info(struct store *s, int64_t id, struct store_job_info *out)
{
	struct store_job_info rows[1];
	size_t got = 0;
	struct store_job_filter flt = {.channel = -1, .before_id = id + 1, .limit = 1};
	assert_int_equal(store_outbox_list(s, &flt, rows, &got, NULL), 0);
	assert_int_equal(got, 1);
	assert_int_equal(rows[0].id, id);
	*out = rows[0];
}

static void test_outbox_sent_retry_dead_release(void **state)
{
	struct fx *f = *state;
	struct store_job_info info;
	send_ok(f->s, OTP_CH_SMS, "79000000001", "1", T0, NULL);

	/* retry: back to pending at next_at, one attempt made, the error kept */
	int64_t id = claim_one(f->s, T0);
	assert_int_equal(store_outbox_retry(f->s, id, T0 + 1, T0 + 10, "gateway timeout"), 0);
	job_info(f->s, id, &info);
	assert_string_equal(info.state, STORE_JOB_PENDING);
	assert_int_equal(info.attempts, 1);
	assert_int_equal(info.next_at, T0 + 10);
	assert_int_equal(info.updated_at, T0 + 1);
	assert_string_equal(info.last_error, "gateway timeout");
	int64_t due = 0;
	assert_int_equal(store_outbox_next_due(f->s, &due), 0);
	assert_int_equal(due, T0 + 10);
	struct store_job jobs[2];
	size_t got = 9;
	assert_int_equal(store_outbox_claim(f->s, T0 + 9, T0 + 39, jobs, 2, &got), 0);
	assert_int_equal(got, 0);

	/* release: pending again, untouched, claimable at once */
	assert_int_equal(claim_one(f->s, T0 + 10), id);
	assert_int_equal(store_outbox_release(f->s, id), 0);
	job_info(f->s, id, &info);
	assert_string_equal(info.state, STORE_JOB_PENDING);
	assert_int_equal(info.attempts, 1);
	assert_int_equal(store_outbox_claim(f->s, T0 + 10, T0 + 40, jobs, 2, &got), 0);
	assert_int_equal(got, 1);
	assert_int_equal(jobs[0].attempts, 1);
	store_job_fini(&jobs[0]);

	/* sent */
	assert_int_equal(store_outbox_sent(f->s, id, T0 + 11, "provider-msg-1"), 0);
	job_info(f->s, id, &info);
	assert_string_equal(info.state, STORE_JOB_SENT);
	assert_int_equal(info.attempts, 2);
	assert_string_equal(info.provider_msg_id, "provider-msg-1");
	assert_int_equal(info.updated_at, T0 + 11);
	/* a finished job is not claimed, and can't be finished again */
	assert_int_equal(store_outbox_claim(f->s, T0 + 1000, T0 + 1030, jobs, 2, &got), 0);
	assert_int_equal(got, 0);
	assert_int_equal(store_outbox_sent(f->s, id, T0 + 12, "again"), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_outbox_dead(f->s, id, T0 + 12, "late"), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_outbox_release(f->s, id), OTP_ERR_NOT_FOUND);
	job_info(f->s, id, &info);
	assert_string_equal(info.state, STORE_JOB_SENT);
	assert_int_equal(info.attempts, 2);

	/* dead */
	send_ok(f->s, OTP_CH_SMS, "79000000002", "2", T0 + 20, NULL);
	int64_t id2 = claim_one(f->s, T0 + 20);
	assert_true(id2 > id);
	assert_int_equal(store_outbox_dead(f->s, id2, T0 + 21, "number unreachable"), 0);
	job_info(f->s, id2, &info);
	assert_string_equal(info.state, STORE_JOB_DEAD);
	assert_int_equal(info.attempts, 1);
	assert_string_equal(info.last_error, "number unreachable");
	assert_int_equal(store_outbox_claim(f->s, T0 + 1000, T0 + 1030, jobs, 2, &got), 0);
	assert_int_equal(got, 0);

	/* unknown jobs */
	assert_int_equal(store_outbox_sent(f->s, id2 + 100, T0, NULL), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_outbox_retry(f->s, id2 + 100, T0, T0, "x"), OTP_ERR_NOT_FOUND);

	struct store_outbox_counts n;
	assert_int_equal(store_outbox_counts(f->s, &n), 0);
	assert_int_equal(n.sent, 1);
	assert_int_equal(n.dead, 1);
	assert_int_equal(n.pending + n.sending + n.skipped, 0);
}

static void test_outbox_long_error_is_cut_to_fit(void **state)
{
	struct fx *f = *state;
	char err[2 * STORE_ERROR_MAX];
	memset(err, 'e', sizeof err - 1);
	err[sizeof err - 1] = '\0';
	send_ok(f->s, OTP_CH_SMS, "79000000001", "1", T0, NULL);
	int64_t id = claim_one(f->s, T0);
	assert_int_equal(store_outbox_retry(f->s, id, T0, T0 + 1, err), 0);
	struct store_job_info info;
	job_info(f->s, id, &info);
	assert_true(strlen(info.last_error) > 0);
	assert_true(strlen(info.last_error) < STORE_ERROR_MAX);
	assert_int_equal(info.last_error[0], 'e');
}

static void test_outbox_list_filters_and_pages(void **state)
{
	struct fx *f = *state;
	int64_t ids[6];
	struct store_send_result res;
	for (int i = 0; i < 6; i++) {
		char target[32];
		snprintf(target, sizeof target, "7900000000%d", i);
		assert_int_equal(send_code(f->s, i % 2 ? OTP_CH_CALL : OTP_CH_SMS, target, "1",
		                           T0 + i, &(struct send_opts){.skip = i == 5}, &res), 0);
		ids[i] = res.job_id;
	}
	struct store_job_info rows[8];
	size_t got = 0;

	struct store_job_filter flt = {.channel = -1, .limit = 4};
	assert_int_equal(store_outbox_list(f->s, &flt, rows, &got, NULL), 0);
	assert_int_equal(got, 4);
	for (int i = 0; i < 4; i++)
		assert_int_equal(rows[i].id, ids[5 - i]);
	flt.before_id = rows[3].id;
	assert_int_equal(store_outbox_list(f->s, &flt, rows, &got, NULL), 0);
	assert_int_equal(got, 2);
	assert_int_equal(rows[0].id, ids[1]);
	assert_int_equal(rows[1].id, ids[0]);

	struct store_job_filter by_channel = {.channel = OTP_CH_CALL, .limit = 8};
	assert_int_equal(store_outbox_list(f->s, &by_channel, rows, &got, NULL), 0);
	assert_int_equal(got, 3);
	for (size_t i = 0; i < got; i++)
		assert_int_equal(rows[i].channel, OTP_CH_CALL);

	struct store_job_filter by_state = {.state = STORE_JOB_SKIPPED, .channel = -1, .limit = 8};
	assert_int_equal(store_outbox_list(f->s, &by_state, rows, &got, NULL), 0);
	assert_int_equal(got, 1);
	assert_int_equal(rows[0].id, ids[5]);
	by_state.state = STORE_JOB_PENDING;
	by_state.channel = OTP_CH_SMS;
	assert_int_equal(store_outbox_list(f->s, &by_state, rows, &got, NULL), 0);
	assert_int_equal(got, 3);

	struct store_job_filter by_provider = {.provider = PROVIDER, .channel = -1, .limit = 8};
	assert_int_equal(store_outbox_list(f->s, &by_provider, rows, &got, NULL), 0);
	assert_int_equal(got, 6);
	by_provider.provider = "smtp";
	assert_int_equal(store_outbox_list(f->s, &by_provider, rows, &got, NULL), 0);
	assert_int_equal(got, 0);

	/* the counts asked with a listing agree with it and with outbox_counts */
	struct store_outbox_counts with_list, alone;
	by_state.state = NULL;
	by_state.channel = -1;
	assert_int_equal(store_outbox_list(f->s, &by_state, rows, &got, &with_list), 0);
	assert_int_equal(got, 6);
	assert_int_equal(with_list.pending, 5);
	assert_int_equal(with_list.skipped, 1);
	assert_int_equal(with_list.sending + with_list.sent + with_list.dead, 0);
	assert_int_equal(store_outbox_counts(f->s, &alone), 0);
	assert_memory_equal(&alone, &with_list, sizeof alone);

	struct store_job_filter bad = {.channel = -1, .limit = 0};
	with_list.pending = 99;
	assert_int_equal(store_outbox_list(f->s, &bad, rows, &got, &with_list), OTP_ERR_INVALID);
	assert_int_equal(with_list.pending, 0);
	bad.limit = 1001;
	assert_int_equal(store_outbox_list(f->s, &bad, rows, &got, NULL), OTP_ERR_INVALID);
}

static void test_outbox_next_due_earliest_pending(void **state)
{
	struct fx *f = *state;
	send_ok(f->s, OTP_CH_SMS, "79000000001", "1", T0, NULL);
	send_ok(f->s, OTP_CH_SMS, "79000000002", "2", T0 + 50, NULL);
	int64_t id = claim_one(f->s, T0);
	int64_t due = 0;
	assert_int_equal(store_outbox_next_due(f->s, &due), 0);
	assert_int_equal(due, T0 + 50);
	assert_int_equal(store_outbox_retry(f->s, id, T0 + 1, T0 + 20, "busy"), 0);
	assert_int_equal(store_outbox_next_due(f->s, &due), 0);
	assert_int_equal(due, T0 + 20);
}

static void test_outbox_backlog_counts_waiting_jobs(void **state)
{
	struct fx *f = *state;
	struct store_outbox_backlog b = {.pending = 9, .sending = 9, .oldest_due = 9};
	assert_int_equal(store_outbox_backlog(f->s, &b), 0);
	assert_int_equal(b.pending, 0);
	assert_int_equal(b.sending, 0);
	assert_int_equal(b.oldest_due, 0);

	send_ok(f->s, OTP_CH_SMS, "79000000001", "1", T0, NULL);
	send_ok(f->s, OTP_CH_SMS, "79000000002", "2", T0 + 50, NULL);
	send_ok(f->s, OTP_CH_SMS, "79000000003", "3", T0 + 60, NULL);
	struct store_send_result res;
	assert_int_equal(send_code(f->s, OTP_CH_SMS, "79000000004", "4", T0,
	                           &(struct send_opts){.skip = true}, &res), 0);
	int64_t id = claim_one(f->s, T0);          /* the T0 job: now sending */
	assert_int_equal(store_outbox_backlog(f->s, &b), 0);
	assert_int_equal(b.pending, 2);
	assert_int_equal(b.sending, 1);
	assert_int_equal(b.oldest_due, T0 + 50);   /* skipped jobs never wait */

	assert_int_equal(store_outbox_sent(f->s, id, T0 + 1, "m1"), 0);
	assert_int_equal(store_outbox_backlog(f->s, &b), 0);
	assert_int_equal(b.pending, 2);
	assert_int_equal(b.sending, 0);
	assert_int_equal(store_outbox_backlog(f->s, NULL), OTP_ERR_INVALID);
}

/* ---- concurrency -------------------------------------------------------------------- */

#define RACE_THREADS 8
#define RACE_SENDS 6

struct race {
	struct store *s[2];
	int n_stores;
	int which;
	pthread_barrier_t *start;
	int ok, limited, other;
};

static void *race_sender(void *arg)
{
	struct race *r = arg;
	struct store *s = r->s[r->which % r->n_stores];
	pthread_barrier_wait(r->start);
	for (int i = 0; i < RACE_SENDS; i++) {
		char code[16];
		snprintf(code, sizeof code, "%d%d", r->which, i);
		int rc = send_code(s, OTP_CH_SMS, "79001112233", code, T0 + 1,
		                   &(struct send_opts){.ip = "10.1.1.1"}, NULL);
		if (rc == 0)
			r->ok++;
		else if (rc == OTP_ERR_LIMIT)
			r->limited++;
		else
			r->other++;
	}
	return NULL;
}

static void race_sends(struct store *a, struct store *b)
{
	struct race r[RACE_THREADS];
	pthread_t th[RACE_THREADS];
	pthread_barrier_t start;
	pthread_barrier_init(&start, NULL, RACE_THREADS);
	for (int i = 0; i < RACE_THREADS; i++) {
		r[i] = (struct race){.s = {a, b}, .n_stores = b ? 2 : 1, .which = i,
		                     .start = &start};
		assert_int_equal(pthread_create(&th[i], NULL, race_sender, &r[i]), 0);
	}
	int ok = 0, limited = 0, other = 0;
	for (int i = 0; i < RACE_THREADS; i++) {
		pthread_join(th[i], NULL);
		ok += r[i].ok;
		limited += r[i].limited;
		other += r[i].other;
	}
	pthread_barrier_destroy(&start);
	assert_int_equal(other, 0);
	assert_int_equal(ok, 5);
	assert_int_equal(limited, RACE_THREADS * RACE_SENDS - 5);
	struct store_outbox_counts n;
	assert_int_equal(store_outbox_counts(a, &n), 0);
	assert_int_equal(n.pending, 5);
}

static void test_concurrent_sends_respect_rate(void **state)
{
	struct fx *f = *state;
	set_rules(f->s, OTP_CH_SMS, true, false, &RULE(OTP_LIMIT_TARGET, 10, 5), 1);
	race_sends(f->s, NULL);
}

static void test_concurrent_sends_from_two_handles_respect_rate(void **state)
{
	/* two stores on one database, like two otpd processes */
	struct fx *f = *state;
	set_rules(f->s, OTP_CH_SMS, false, true, &RULE(OTP_LIMIT_IP, 10, 5), 1);
	struct store *other = fx_open(f, 2);
	race_sends(f->s, other);
	store_close(other);
}

struct check_race {
	struct store *s;
	pthread_barrier_t *start;
	int which;
	int rc;
};

static void *race_checker(void *arg)
{
	struct check_race *r = arg;
	char code[16];
	snprintf(code, sizeof code, "9%d", r->which);
	pthread_barrier_wait(r->start);
	bool ok = true;
	r->rc = check_code(r->s, OTP_CH_SMS, "79001112233", code, T0 + 1,
	                   &(struct check_opts){.max_failures = 5}, &ok);
	if (ok)
		r->rc = -100;
	return NULL;
}

static void test_concurrent_wrong_checks_all_count(void **state)
{
	struct fx *f = *state;
	enum { N = 4 };
	send_ok(f->s, OTP_CH_SMS, "79001112233", "11111", T0, NULL);
	struct check_race r[N];
	pthread_t th[N];
	pthread_barrier_t start;
	pthread_barrier_init(&start, NULL, N);
	for (int i = 0; i < N; i++) {
		r[i] = (struct check_race){.s = f->s, .start = &start, .which = i};
		assert_int_equal(pthread_create(&th[i], NULL, race_checker, &r[i]), 0);
	}
	for (int i = 0; i < N; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(r[i].rc, 0);
	}
	pthread_barrier_destroy(&start);
	assert_true(check(f->s, OTP_CH_SMS, "79001112233", "11111", T0 + 2,
	                  &(struct check_opts){.max_failures = 5}));
	/* the fifth wrong check: none of the four was lost, so this one voids the code */
	assert_false(check(f->s, OTP_CH_SMS, "79001112233", "00000", T0 + 3,
	                   &(struct check_opts){.max_failures = 5}));
	assert_false(check(f->s, OTP_CH_SMS, "79001112233", "11111", T0 + 4,
	                   &(struct check_opts){.max_failures = 5}));
}

/* ---- SQLite only ------------------------------------------------------------------ */

static bool skip_unless_sqlite(const struct fx *f)
{
	if (f->pg) {
		skip();
		return true;
	}
	return false;
}

static sqlite3 *raw_open(const struct fx *f)
{
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	sqlite3_busy_timeout(db, 5000);
	return db;
}

static int64_t raw_int(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *st = NULL;
	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	int64_t v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

static void test_sqlite_schema_versions_and_mode(void **state)
{
	struct fx *f = *state;
	if (skip_unless_sqlite(f))
		return;
	fx_reopen(f);
	sqlite3 *db = raw_open(f);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM schema_migrations"),
	                 (int64_t)store_sqlite_migrations_count);
	assert_int_equal(raw_int(db, "SELECT max(version) FROM schema_migrations"),
	                 (int64_t)store_sqlite_migrations_count);
	sqlite3_stmt *q = NULL;
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &q, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(q), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(q, 0), "wal");
	sqlite3_finalize(q);
	sqlite3_close(db);

	struct stat st;
	assert_int_equal(stat(f->path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
}

static void test_sqlite_refuses_newer_schema(void **state)
{
	struct fx *f = *state;
	if (skip_unless_sqlite(f))
		return;
	store_close(f->s);
	f->s = NULL;
	sqlite3 *db = raw_open(f);
	char sql[160];
	snprintf(sql, sizeof sql, "INSERT INTO schema_migrations VALUES (%zu, '9999_future.sql', 0)",
	         store_sqlite_migrations_count + 1);
	assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);

	char err[256] = "";
	struct store *s = store_sqlite_open(f->path, 1, err, sizeof err);
	assert_null(s);
	assert_non_null(strstr(err, "newer"));
	f->s = NULL;
}

static void test_sqlite_open_errors(void **state)
{
	struct fx *f = *state;
	if (skip_unless_sqlite(f))
		return;
	char err[256] = "";
	char path[160];
	snprintf(path, sizeof path, "%s/missing-dir/otpd.db", f->dir);
	assert_null(store_sqlite_open(path, 1, err, sizeof err));
	assert_true(strlen(err) > 0);
	err[0] = '\0';
	assert_null(store_sqlite_open(f->path, 0, err, sizeof err));
	assert_true(strlen(err) > 0);
}

/* Does the file at path contain the bytes of needle? */
static bool file_contains(const char *path, const char *needle)
{
	FILE *fp = fopen(path, "rb");
	if (fp == NULL)
		return false;
	size_t n = strlen(needle), have = 0;
	bool found = false;
	char buf[8192 + 64];
	size_t got;
	while (!found && (got = fread(buf + have, 1, sizeof buf - have, fp)) > 0) {
		have += got;
		for (size_t i = 0; i + n <= have; i++)
			if (memcmp(buf + i, needle, n) == 0) {
				found = true;
				break;
			}
		/* keep the tail: a match may straddle two reads */
		if (have >= n) {
			memmove(buf, buf + have - (n - 1), n - 1);
			have = n - 1;
		}
	}
	fclose(fp);
	return found;
}

static void test_sqlite_erased_payloads_leave_no_bytes(void **state)
{
	struct fx *f = *state;
	if (skip_unless_sqlite(f))
		return;
	send_ok(f->s, OTP_CH_SMS, "79000000001", "MARKERSENT", T0, NULL);
	send_ok(f->s, OTP_CH_SMS, "79000000002", "MARKERDEAD", T0 + 1, NULL);
	send_ok(f->s, OTP_CH_SMS, "79000000003", "MARKERLIVE", T0 + 2, NULL);
	int64_t a = claim_one(f->s, T0 + 1);
	int64_t b = claim_one(f->s, T0 + 1);
	assert_int_equal(store_outbox_sent(f->s, a, T0 + 2, "m"), 0);
	assert_int_equal(store_outbox_dead(f->s, b, T0 + 2, "no"), 0);

	sqlite3 *db = raw_open(f);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM outbox WHERE payload IS NULL"), 2);
	sqlite3_close(db);

	/* closing checkpoints the WAL into the file: the live payload is there, the erased
	 * ones are zeroed, not left in free space */
	store_close(f->s);
	f->s = NULL;
	assert_true(file_contains(f->path, "payload:79000000003:MARKERLIVE"));
	assert_false(file_contains(f->path, "MARKERSENT"));
	assert_false(file_contains(f->path, "MARKERDEAD"));
	f->s = fx_open(f, 1);
}

static void test_sqlite_refuses_oversized_input(void **state)
{
	struct fx *f = *state;
	if (skip_unless_sqlite(f))
		return;
	char long_target[OTP_TARGET_MAX + 2];
	memset(long_target, '7', sizeof long_target - 1);
	long_target[sizeof long_target - 1] = '\0';
	assert_int_equal(send_code(f->s, OTP_CH_SMS, long_target, "1", T0, NULL, NULL),
	                 OTP_ERR_INVALID);
	bool ok = true;
	assert_int_equal(check_code(f->s, OTP_CH_SMS, long_target, "1", T0, NULL, &ok),
	                 OTP_ERR_INVALID);
	assert_false(ok);
	/* the longest allowed target is fine */
	long_target[OTP_TARGET_MAX] = '\0';
	send_ok(f->s, OTP_CH_SMS, long_target, "1", T0, NULL);
	assert_true(check(f->s, OTP_CH_SMS, long_target, "1", T0 + 1, NULL));
}

static void test_sqlite_pool_of_one_under_threads(void **state)
{
	/* more threads than readers: callers wait for a connection, none shares one */
	struct fx *f = *state;
	if (skip_unless_sqlite(f))
		return;
	store_close(f->s);
	f->s = fx_open(f, 1);
	set_rules(f->s, OTP_CH_SMS, true, false, &RULE(OTP_LIMIT_TARGET, 10, 5), 1);
	race_sends(f->s, NULL);
	assert_int_equal(store_ping(f->s), 0);
}

int main(void)
{
	static const uint8_t master[OTP_KEY_LEN] = {1, 2, 3, 4, 5, 6, 7, 8};
	if (otp_key_init(&test_key, master) != 0) {
		fprintf(stderr, "otp_key_init failed\n");
		return 1;
	}
#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
	const struct CMUnitTest tests[] = {
		T(test_ping),
		T(test_reopen_keeps_data_and_migrations_are_idempotent),
		T(test_send_writes_code_and_pending_job),
		T(test_send_skip_records_skipped_job),
		T(test_limits_set_get_order_and_replace),
		T(test_limits_invalid_rules_change_nothing),
		T(test_limit_window_edges),
		T(test_limit_rejected_sends_do_not_count),
		T(test_limit_ip_rules_count_per_ip_and_channel),
		T(test_limit_first_failing_rule_decides),
		T(test_limit_rate_zero_forbids),
		T(test_send_require_ip_follows_ip_rules),
		T(test_check_any_live_code_matches),
		T(test_check_expiry),
		T(test_check_failures_void_all_live_codes),
		T(test_check_new_send_resets_failures),
		T(test_check_unlimited_failures),
		T(test_check_consume),
		T(test_check_mask_accepts_call_codes_on_sms),
		T(test_check_failures_per_check_channel_void_mask),
		T(test_check_invalid_requests),
		T(test_find_target_latest_live),
		T(test_find_sealed_code),
		T(test_purge),
		T(test_purge_keeps_sends_inside_limit_windows),
		T(test_outbox_claim_in_order_with_payload),
		T(test_outbox_lease_expiry_reclaims),
		T(test_outbox_sent_retry_dead_release),
		T(test_outbox_long_error_is_cut_to_fit),
		T(test_outbox_list_filters_and_pages),
		T(test_outbox_next_due_earliest_pending),
		T(test_outbox_backlog_counts_waiting_jobs),
		T(test_concurrent_sends_respect_rate),
		T(test_concurrent_sends_from_two_handles_respect_rate),
		T(test_concurrent_wrong_checks_all_count),
		T(test_sqlite_schema_versions_and_mode),
		T(test_sqlite_refuses_newer_schema),
		T(test_sqlite_open_errors),
		T(test_sqlite_erased_payloads_leave_no_bytes),
		T(test_sqlite_refuses_oversized_input),
		T(test_sqlite_pool_of_one_under_threads),
	};
#undef T
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	otp_key_wipe(&test_key);
	return rc;
}
