/*
 * test_pg.c - what only the PostgreSQL backend must do, against a real server (skipped
 * unless OTPD_TEST_PG_HOST is set; scripts/pg-test-server.sh starts one): migrations
 * into a quoted non-public schema, several otpd opening at once, creating the database
 * with PG_REAL_HOST, refusing a schema it does not know, exact limits and attempt counts
 * when two store handles (as two processes would) race, outbox claims never handed out
 * twice, reconnecting after the server dropped the connections or went away without
 * losing a request it answered, the 0002 -> 0003 migration of the previous schema's rows,
 * and the legacy import (into PostgreSQL and into SQLite).
 * The backend-independent contract is tests/unit/test_store.c. Every test works in
 * schemas of its own, named with the pid, and drops them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "core/num.h"
#include "core/otp.h"
#include "core/verification.h"
#include "store/legacy.h"
#include "store/migrations.h"
#include "store/store.h"

#define NOW INT64_C(1700000000)
#define SMS OTP_CH_SMS
#define EMAIL OTP_CH_EMAIL
#define CALL OTP_CH_CALL
#define BIT(ch) OTP_CH_BIT(ch)

struct pg_env {
	const char *host, *user, *database, *password;
	int port;
};

static struct pg_env env;
static bool have_pg;
static int name_seq;
static atomic_uint id_seq; /* racing threads send too */
static struct otp_key key;

static int group_setup(void **state)
{
	(void)state;
	env.host = getenv("OTPD_TEST_PG_HOST");
	env.user = getenv("OTPD_TEST_PG_USER");
	env.database = getenv("OTPD_TEST_PG_DATABASE");
	env.password = getenv("OTPD_TEST_PG_PASSWORD");
	const char *port = getenv("OTPD_TEST_PG_PORT");
	env.port = 5432;
	if (port != NULL && port[0] != '\0') {
		int64_t v = 0;
		if (otp_parse_i64(port, 1, 65535, &v) != 0)
			return -1;
		env.port = (int)v;
	}
	if (env.database == NULL || env.database[0] == '\0')
		env.database = "otpd_test";
	have_pg = env.host != NULL && env.host[0] != '\0';
	uint8_t master[OTP_KEY_LEN];
	for (size_t i = 0; i < sizeof master; i++)
		master[i] = (uint8_t)(i * 7 + 1);
	return otp_key_init(&key, master) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	otp_key_wipe(&key);
	return 0;
}

#define NEED_PG()                                                                  \
	do {                                                                       \
		if (!have_pg)                                                      \
			skip();                                                    \
	} while (0)

/* ---- helpers ---------------------------------------------------------------------- */

static void admin_exec(PGconn *c, const char *sql);

static PGconn *admin_connect(const char *dbname)
{
	char port[16];
	snprintf(port, sizeof port, "%d", env.port);
	const char *keys[] = {"host", "port", "dbname", "user", "password", "application_name",
	                      NULL};
	const char *vals[] = {env.host, port, dbname ? dbname : env.database, env.user,
	                      env.password, "otpd-test-admin", NULL};
	PGconn *c = PQconnectdbParams(keys, vals, 0);
	if (PQstatus(c) != CONNECTION_OK)
		fail_msg("admin connection: %s", PQerrorMessage(c));
	admin_exec(c, "SET client_min_messages = warning");
	return c;
}

static void admin_exec(PGconn *c, const char *sql)
{
	PGresult *r = PQexec(c, sql);
	ExecStatusType st = PQresultStatus(r);
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
		fail_msg("%s: %s", sql, PQresultErrorMessage(r));
	PQclear(r);
}

/* The single integer a query returns. */
static int64_t admin_int(PGconn *c, const char *sql)
{
	PGresult *r = PQexec(c, sql);
	if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
		fail_msg("%s: %s", sql, PQresultErrorMessage(r));
	int64_t v = -1;
	if (!PQgetisnull(r, 0, 0) && otp_parse_i64(PQgetvalue(r, 0, 0), INT64_MIN, INT64_MAX, &v))
		fail_msg("%s: not an integer", sql);
	PQclear(r);
	return v;
}

static void quote_ident(PGconn *c, const char *name, char *out, size_t cap)
{
	char *q = PQescapeIdentifier(c, name, strlen(name));
	assert_non_null(q);
	assert_true(strlen(q) < cap);
	snprintf(out, cap, "%s", q);
	PQfreemem(q);
}

static void unique_name(char *out, size_t cap, const char *prefix)
{
	snprintf(out, cap, "%s %d-%d", prefix, (int)getpid(), ++name_seq);
}

static void drop_schema(const char *schema)
{
	PGconn *c = admin_connect(NULL);
	char q[256], sql[512];
	quote_ident(c, schema, q, sizeof q);
	snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS %s CASCADE", q);
	admin_exec(c, sql);
	PQfinish(c);
}

static struct store_pg_config config(const char *schema, int pool)
{
	struct store_pg_config cfg = {
		.host = env.host,
		.port = env.port,
		.database = env.database,
		.user = env.user,
		.password = env.password,
		.schema = schema,
		.pool = pool,
		.connect_timeout = 10,
	};
	return cfg;
}

static struct store *open_cfg(const struct store_pg_config *cfg)
{
	char err[512] = "";
	struct store *s = store_pg_open(cfg, err, sizeof err);
	if (s == NULL)
		fail_msg("store_pg_open: %s", err);
	assert_string_equal(store_name(s), "postgresql");
	return s;
}

static struct store *open_store(const char *schema, int pool)
{
	struct store_pg_config cfg = config(schema, pool);
	return open_cfg(&cfg);
}

static const uint8_t payload[] = "sealed";

/* Start a compat verification of `code` (5 attempts); its public id into id (may be
 * NULL). */
static int send_code(struct store *s, enum otp_channel ch, const char *target, const char *ip,
                     const char *code, int64_t now, char *id)
{
	struct store_start q;
	struct store_start_result res;
	char public_id[STORE_ID_MAX];
	memset(&q, 0, sizeof q);
	snprintf(public_id, sizeof public_id, "otp_pg%d_%u", (int)getpid(),
	         atomic_fetch_add(&id_seq, 1) + 1);
	q.app_id = "";
	q.public_id = public_id;
	q.channel = ch;
	q.target = target;
	q.ip = ip;
	otp_code_hash(&key, ch, target, code, q.code_hash);
	otp_lookup_hash(&key, ch, code, q.lookup_hash);
	q.max_attempts = 5;
	q.max_sends = 1;
	q.now = now;
	q.expire_at = now + 300;
	q.provider = "log";
	q.payload = payload;
	q.payload_len = sizeof payload;
	q.request_id = "test";
	int rc = store_vf_start(s, &q, &res);
	if (id != NULL)
		snprintf(id, STORE_ID_MAX, "%s", public_id);
	return rc;
}

/* A compat check by target over `mask`; *v (may be NULL) gets the result's verification. */
static int check_code(struct store *s, unsigned mask, const char *target, const char *code,
                      int64_t now, bool *ok, struct store_verification *v)
{
	struct store_check q = {.by = STORE_CHECK_TARGET, .app_id = "", .target = target,
	                        .channel_mask = mask, .key = &key, .code = code, .now = now};
	struct store_check_result res;
	int rc = store_vf_check(s, &q, &res);
	*ok = res.ok;
	if (v != NULL)
		*v = res.v;
	return rc;
}

static bool checks(struct store *s, unsigned mask, const char *target, const char *code,
                   int64_t now)
{
	bool ok = false;
	int rc = check_code(s, mask, target, code, now, &ok, NULL);
	if (rc != 0)
		fail_msg("check %s: %s", target, otp_err_name(rc));
	return ok;
}

static void set_rule(struct store *s, enum otp_channel ch, enum otp_limit_kind kind, int rate,
                     int minutes)
{
	static const bool both[2] = {true, true};
	struct otp_limit_rule r = {.kind = kind, .rate = rate, .minutes = minutes};
	assert_int_equal(store_rules_replace(s, "", ch, both, &r, 1), 0);
}

/* The one verification of (app "", channel, target). */
static struct store_verification find_one(struct store *s, int ch, const char *target)
{
	struct store_vf_filter f = {.app_id = "", .target = target, .channel = ch, .status = -1,
	                            .limit = 4};
	struct store_verification rows[4];
	size_t n = 0;
	assert_int_equal(store_vf_list(s, &f, rows, &n), 0);
	if (n != 1)
		fail_msg("%zu verifications of %d/%s", n, ch, target);
	return rows[0];
}

static size_t event_count(struct store *s, const char *public_id, int type)
{
	struct store_event_filter f = {.public_id = public_id, .channel = -1, .type = type,
	                               .limit = STORE_LIST_MAX};
	struct store_event *rows = calloc(STORE_LIST_MAX, sizeof *rows);
	assert_non_null(rows);
	size_t n = 0;
	assert_int_equal(store_events_list(s, &f, rows, &n), 0);
	free(rows);
	return n;
}

/* ---- schema and start-up ---------------------------------------------------------- */

static void test_quoted_schema(void **state)
{
	(void)state;
	NEED_PG();
	char schema[64], q[160], sql[512];
	unique_name(schema, sizeof schema, "Otp Test");
	struct store *s = open_store(schema, 2);

	PGconn *c = admin_connect(NULL);
	quote_ident(c, schema, q, sizeof q);
	snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.otpd_schema_migrations", q);
	assert_int_equal(admin_int(c, sql), (int64_t)store_pg_migrations_count);

	/* the operations land in that schema, and nowhere else */
	assert_int_equal(send_code(s, SMS, "77010000001", "10.0.0.1", "1111", NOW, NULL), 0);
	assert_true(checks(s, BIT(SMS), "77010000001", "1111", NOW + 1));
	snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.otpd_verification", q);
	assert_int_equal(admin_int(c, sql), 1);
	snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.otpd_outbox WHERE state = 'pending'", q);
	assert_int_equal(admin_int(c, sql), 1);
	snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.otpd_event", q);
	assert_int_equal(admin_int(c, sql), 2);
	assert_int_equal(admin_int(c, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
	                              "AND tablename LIKE 'otpd%'"), 0);

	/* opening again applies nothing twice and finds the data */
	struct store *s2 = open_store(schema, 1);
	snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.otpd_schema_migrations", q);
	assert_int_equal(admin_int(c, sql), (int64_t)store_pg_migrations_count);
	assert_int_equal(send_code(s2, SMS, "77010000002", NULL, "2222", NOW, NULL), 0);
	assert_true(checks(s, BIT(SMS), "77010000002", "2222", NOW + 1));

	store_close(s2);
	store_close(s);
	PQfinish(c);
	drop_schema(schema);
}

struct open_arg {
	const char *schema;
	pthread_barrier_t *go;
	struct store *s;
	char err[512];
};

static void *open_thread(void *p)
{
	struct open_arg *a = p;
	struct store_pg_config cfg = config(a->schema, 1);
	pthread_barrier_wait(a->go);
	a->s = store_pg_open(&cfg, a->err, sizeof a->err);
	return NULL;
}

/* Several otpd starting at once on an empty schema: each migration applies once. */
static void test_concurrent_open(void **state)
{
	(void)state;
	NEED_PG();
	enum { N = 6 };
	char schema[64], q[160], sql[512];
	unique_name(schema, sizeof schema, "otpd concurrent");
	pthread_barrier_t go;
	pthread_barrier_init(&go, NULL, N);
	struct open_arg args[N];
	pthread_t th[N];
	for (int i = 0; i < N; i++) {
		memset(&args[i], 0, sizeof args[i]);
		args[i].schema = schema;
		args[i].go = &go;
		assert_int_equal(pthread_create(&th[i], NULL, open_thread, &args[i]), 0);
	}
	for (int i = 0; i < N; i++)
		pthread_join(th[i], NULL);
	pthread_barrier_destroy(&go);
	for (int i = 0; i < N; i++) {
		if (args[i].s == NULL)
			fail_msg("open %d: %s", i, args[i].err);
		assert_int_equal(store_ping(args[i].s), 0);
		assert_int_equal(send_code(args[i].s, SMS, "77010000001", NULL, "1234", NOW, NULL), 0);
		store_close(args[i].s);
	}
	PGconn *c = admin_connect(NULL);
	quote_ident(c, schema, q, sizeof q);
	snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.otpd_schema_migrations", q);
	assert_int_equal(admin_int(c, sql), (int64_t)store_pg_migrations_count);
	snprintf(sql, sizeof sql, "SELECT count(DISTINCT version) FROM %s.otpd_schema_migrations", q);
	assert_int_equal(admin_int(c, sql), (int64_t)store_pg_migrations_count);
	snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.otpd_verification", q);
	assert_int_equal(admin_int(c, sql), N);
	PQfinish(c);
	drop_schema(schema);
}

/* PG_REAL_HOST: the database and the schema are created when missing. */
static void test_real_host_creates_database(void **state)
{
	(void)state;
	NEED_PG();
	char db[64], sql[256];
	snprintf(db, sizeof db, "otpd_test_new_%d", (int)getpid());
	struct store_pg_config cfg = config("Fresh Schema", 1);
	cfg.database = db;
	cfg.real_host = env.host;
	struct store *s = open_cfg(&cfg);
	assert_int_equal(send_code(s, EMAIL, "a@example.com", NULL, "3333", NOW, NULL), 0);
	store_close(s);

	/* a second start finds both */
	s = open_cfg(&cfg);
	assert_true(checks(s, BIT(EMAIL), "a@example.com", "3333", NOW + 1));
	store_close(s);

	PGconn *c = admin_connect(db);
	assert_int_equal(admin_int(c, "SELECT count(*) FROM \"Fresh Schema\".otpd_verification"), 1);
	PQfinish(c);
	c = admin_connect("postgres");
	snprintf(sql, sizeof sql, "DROP DATABASE %s WITH (FORCE)", db);
	admin_exec(c, sql);
	PQfinish(c);
}

/* Without PG_REAL_HOST a missing database is an error with a reason, not a hang. */
static void test_open_fails_with_reason(void **state)
{
	(void)state;
	NEED_PG();
	struct store_pg_config cfg = config("x", 1);
	cfg.database = "otpd_no_such_database";
	cfg.connect_timeout = 0;
	char err[512] = "";
	assert_null(store_pg_open(&cfg, err, sizeof err));
	assert_non_null(strstr(err, "otpd_no_such_database"));
	if (env.password != NULL && env.password[0] != '\0')
		assert_null(strstr(err, env.password));
	/* and a bad configuration says what is wrong */
	cfg = config("x", 0);
	err[0] = '\0';
	assert_null(store_pg_open(&cfg, err, sizeof err));
	assert_non_null(strstr(err, "pool"));
	cfg = config("x", 1);
	cfg.database = NULL;
	err[0] = '\0';
	assert_null(store_pg_open(&cfg, err, sizeof err));
	assert_true(strlen(err) > 0);
}

/* A schema newer than this otpd, or one whose last migration is recorded under another
 * name, is refused at open with a reason (PostgreSQL did not check the names before). */
static void test_refuses_unknown_schema(void **state)
{
	(void)state;
	NEED_PG();
	char schema[64], q[160], sql[512], err[512];
	unique_name(schema, sizeof schema, "otpd refuse");
	struct store *s = open_store(schema, 1);
	store_close(s);
	PGconn *c = admin_connect(NULL);
	quote_ident(c, schema, q, sizeof q);
	struct store_pg_config cfg = config(schema, 1);

	snprintf(sql, sizeof sql, "INSERT INTO %s.otpd_schema_migrations (version, name) VALUES "
	         "(%zu, '9999_future.sql')", q, store_pg_migrations_count + 1);
	admin_exec(c, sql);
	err[0] = '\0';
	assert_null(store_pg_open(&cfg, err, sizeof err));
	assert_non_null(strstr(err, "newer"));
	snprintf(sql, sizeof sql, "DELETE FROM %s.otpd_schema_migrations WHERE version = %zu", q,
	         store_pg_migrations_count + 1);
	admin_exec(c, sql);

	snprintf(sql, sizeof sql, "UPDATE %s.otpd_schema_migrations SET name = "
	         "'0003_someone_elses.sql' WHERE version = %zu", q, store_pg_migrations_count);
	admin_exec(c, sql);
	err[0] = '\0';
	assert_null(store_pg_open(&cfg, err, sizeof err));
	assert_non_null(strstr(err, "0003_someone_elses.sql"));
	assert_non_null(strstr(err, store_pg_migrations[store_pg_migrations_count - 1].name));

	/* put back, it opens again */
	snprintf(sql, sizeof sql, "UPDATE %s.otpd_schema_migrations SET name = '%s' WHERE "
	         "version = %zu", q, store_pg_migrations[store_pg_migrations_count - 1].name,
	         store_pg_migrations_count);
	admin_exec(c, sql);
	s = open_cfg(&cfg);
	store_close(s);
	PQfinish(c);
	drop_schema(schema);
}

/* ---- races between two handles --------------------------------------------------- */

struct race {
	struct store *s;
	pthread_barrier_t *go;
	int rounds;
	int what;             /* RACE_* */
	const char *target;
	int index;
	int ok, refused, failed;
	int64_t claimed[256];
	int n_claimed;
};

enum { RACE_SEND_TARGET, RACE_SEND_IP, RACE_CHECK_WRONG, RACE_CLAIM };

static void *race_thread(void *p)
{
	struct race *r = p;
	pthread_barrier_wait(r->go);
	for (int i = 0; i < r->rounds; i++) {
		int rc = 0;
		char text[64];
		switch (r->what) {
		case RACE_SEND_TARGET:
			/* one target, many ips */
			snprintf(text, sizeof text, "10.%d.0.%d", r->index, i);
			rc = send_code(r->s, SMS, r->target, text, "1234", NOW, NULL);
			break;
		case RACE_SEND_IP:
			/* one ip, many targets */
			snprintf(text, sizeof text, "7701%02d%05d", r->index, i);
			rc = send_code(r->s, SMS, text, "192.0.2.7", "1234", NOW, NULL);
			break;
		case RACE_CHECK_WRONG: {
			bool ok = true;
			snprintf(text, sizeof text, "w%d", r->index * 100 + i);
			rc = check_code(r->s, BIT(SMS), r->target, text, NOW + 10, &ok, NULL);
			if (rc == 0 && ok)
				rc = OTP_ERR_INTERNAL; /* a wrong code never passes */
			break;
		}
		case RACE_CLAIM: {
			struct store_job jobs[4];
			size_t n = 0;
			rc = store_outbox_claim(r->s, NOW + 1, NOW + 60, jobs, 4, &n);
			for (size_t j = 0; j < n; j++) {
				if (r->n_claimed < (int)(sizeof r->claimed / sizeof r->claimed[0]))
					r->claimed[r->n_claimed++] = jobs[j].id;
				store_job_fini(&jobs[j]);
			}
			break;
		}
		default:
			rc = OTP_ERR_INTERNAL;
		}
		if (rc == 0)
			r->ok++;
		else if (rc == OTP_ERR_LIMIT)
			r->refused++;
		else
			r->failed++;
	}
	return NULL;
}

/* Run `threads` racers split over two handles; sums ok/refused/failed into *total. */
static void race_run(struct store *a, struct store *b, int threads, int what,
                     const char *target, int rounds, struct race *rs, struct race *total)
{
	pthread_barrier_t go;
	pthread_t th[8];
	assert_true(threads <= 8);
	pthread_barrier_init(&go, NULL, (unsigned)threads);
	for (int i = 0; i < threads; i++) {
		memset(&rs[i], 0, sizeof rs[i]);
		rs[i].s = i % 2 ? b : a;
		rs[i].go = &go;
		rs[i].rounds = rounds;
		rs[i].what = what;
		rs[i].target = target;
		rs[i].index = i;
		assert_int_equal(pthread_create(&th[i], NULL, race_thread, &rs[i]), 0);
	}
	memset(total, 0, sizeof *total);
	for (int i = 0; i < threads; i++) {
		pthread_join(th[i], NULL);
		total->ok += rs[i].ok;
		total->refused += rs[i].refused;
		total->failed += rs[i].failed;
	}
	pthread_barrier_destroy(&go);
}

static void test_race_sends(void **state)
{
	(void)state;
	NEED_PG();
	char schema[64];
	unique_name(schema, sizeof schema, "otpd race send");
	struct store *a = open_store(schema, 3);
	struct store *b = open_store(schema, 3);
	struct race rs[8], total;

	/* rate 5 per target: 4 threads x 6 sends to one target from different ips */
	set_rule(a, SMS, OTP_LIMIT_TARGET, 5, 10);
	race_run(a, b, 4, RACE_SEND_TARGET, "77015550000", 6, rs, &total);
	assert_int_equal(total.failed, 0);
	assert_int_equal(total.ok, 5);
	assert_int_equal(total.refused, 19);

	/* rate 5 per ip: 4 threads x 6 sends from one ip to different targets */
	set_rule(b, SMS, OTP_LIMIT_IP, 5, 10);
	race_run(a, b, 4, RACE_SEND_IP, NULL, 6, rs, &total);
	assert_int_equal(total.failed, 0);
	assert_int_equal(total.ok, 5);
	assert_int_equal(total.refused, 19);
	struct store_outbox_counts oc;
	assert_int_equal(store_outbox_counts(a, &oc), 0);
	assert_int_equal(oc.pending, 10);

	store_close(a);
	store_close(b);
	drop_schema(schema);
}

static void test_race_checks(void **state)
{
	(void)state;
	NEED_PG();
	char schema[64];
	unique_name(schema, sizeof schema, "otpd race check");
	struct store *a = open_store(schema, 3);
	struct store *b = open_store(schema, 3);
	struct race rs[8], total;

	/* 4 racing wrong checks with a budget of 5: the right code still passes */
	assert_int_equal(send_code(a, SMS, "77016660001", NULL, "1111", NOW, NULL), 0);
	race_run(a, b, 4, RACE_CHECK_WRONG, "77016660001", 1, rs, &total);
	assert_int_equal(total.ok, 4);
	assert_true(checks(b, BIT(SMS), "77016660001", "1111", NOW + 11));

	/* 5 racing wrong checks: the code is dead, even for the right value */
	char id[STORE_ID_MAX];
	assert_int_equal(send_code(a, SMS, "77016660002", NULL, "2222", NOW, id), 0);
	race_run(a, b, 5, RACE_CHECK_WRONG, "77016660002", 1, rs, &total);
	assert_int_equal(total.ok, 5);
	assert_false(checks(a, BIT(SMS), "77016660002", "2222", NOW + 11));
	struct store_verification v;
	assert_int_equal(store_vf_get(a, "", id, &v), 0);
	assert_int_equal(v.attempts, 5);
	assert_int_equal(v.status, OTP_VS_MAX_ATTEMPTS);

	/* 8 threads x 2 = 16 wrong checks on a budget of 5: exactly 5 are counted, the
	 * others find no live code */
	assert_int_equal(send_code(a, SMS, "77016660003", NULL, "3333", NOW, id), 0);
	race_run(a, b, 8, RACE_CHECK_WRONG, "77016660003", 2, rs, &total);
	assert_int_equal(total.ok, 16);
	assert_int_equal(store_vf_get(b, "", id, &v), 0);
	assert_int_equal(v.attempts, 5);
	assert_int_equal(event_count(a, id, OTP_EV_CHECK_FAILED), 4);
	assert_int_equal(event_count(a, id, OTP_EV_MAX_ATTEMPTS), 1);

	store_close(a);
	store_close(b);
	drop_schema(schema);
}

static int cmp_i64(const void *x, const void *y)
{
	int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
	return (a > b) - (a < b);
}

/* Outbox jobs claimed by racing workers of two handles: each exactly once. */
static void test_race_claims(void **state)
{
	(void)state;
	NEED_PG();
	enum { JOBS = 60 };
	char schema[64], target[32];
	unique_name(schema, sizeof schema, "otpd race claim");
	struct store *a = open_store(schema, 4);
	struct store *b = open_store(schema, 4);
	for (int i = 0; i < JOBS; i++) {
		snprintf(target, sizeof target, "7701777%04d", i);
		assert_int_equal(send_code(a, SMS, target, NULL, "1234", NOW, NULL), 0);
	}
	struct race rs[8], total;
	race_run(a, b, 6, RACE_CLAIM, NULL, 8, rs, &total);
	assert_int_equal(total.failed, 0);
	int64_t all[8 * 256] = {0};
	int n = 0;
	for (int i = 0; i < 6; i++) {
		for (int j = 0; j < rs[i].n_claimed; j++)
			all[n++] = rs[i].claimed[j];
	}
	assert_int_equal(n, JOBS);
	qsort(all, (size_t)n, sizeof all[0], cmp_i64);
	for (int i = 1; i < n; i++)
		assert_true(all[i] != all[i - 1]);
	struct store_outbox_counts counts;
	assert_int_equal(store_outbox_counts(b, &counts), 0);
	assert_int_equal(counts.sending, JOBS);
	assert_int_equal(counts.pending, 0);

	/* a lease that ran out is claimed again, by the other handle */
	struct store_job jobs[4];
	size_t got = 0;
	assert_int_equal(store_outbox_claim(b, NOW + 61, NOW + 120, jobs, 4, &got), 0);
	assert_int_equal(got, 4);
	for (size_t i = 0; i < got; i++)
		store_job_fini(&jobs[i]);

	store_close(a);
	store_close(b);
	drop_schema(schema);
}

/* ---- reconnecting ----------------------------------------------------------------- */

/* Every public id in ids[0..n) has a verification in the store at `schema`. */
static void assert_all_stored(const char *schema, char (*ids)[STORE_ID_MAX], int n)
{
	struct store *s = open_store(schema, 1);
	for (int i = 0; i < n; i++) {
		struct store_verification v;
		int rc = store_vf_get(s, "", ids[i], &v);
		if (rc != 0)
			fail_msg("%s was answered 0 but is %s", ids[i], otp_err_name(rc));
	}
	store_close(s);
}

/* After the server terminated the pool's connections, the next operation may fail with
 * OTP_ERR_STORE (or succeed after reconnecting); the one after succeeds, and every send
 * answered 0 is stored. */
static void test_reconnect_after_terminate(void **state)
{
	(void)state;
	NEED_PG();
	enum { ROUNDS = 3, PER_ROUND = 3 };
	char schema[64], app[64], sql[256];
	char ok_ids[ROUNDS * PER_ROUND + 1][STORE_ID_MAX];
	int n_ok = 0;
	unique_name(schema, sizeof schema, "otpd reconnect");
	snprintf(app, sizeof app, "otpd-test-reconnect-%d", (int)getpid());
	assert_int_equal(setenv("PGAPPNAME", app, 1), 0);
	struct store *s = open_store(schema, 2);
	assert_int_equal(send_code(s, SMS, "77018880001", NULL, "1111", NOW, ok_ids[n_ok++]), 0);

	PGconn *c = admin_connect(NULL);
	snprintf(sql, sizeof sql, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
	         "WHERE application_name = '%s'", app);
	for (int round = 0; round < ROUNDS; round++) {
		assert_true(admin_int(c, sql) >= 1);
		for (int i = 0; i < PER_ROUND; i++) {
			char id[STORE_ID_MAX];
			char target[32];
			snprintf(target, sizeof target, "770188800%d%d", round, i);
			int rc = send_code(s, SMS, target, NULL, "2222", NOW, id);
			if (i == 0)
				assert_true(rc == 0 || rc == OTP_ERR_STORE);
			else
				assert_int_equal(rc, 0);
			if (rc == 0)
				snprintf(ok_ids[n_ok++], STORE_ID_MAX, "%s", id);
		}
		assert_false(checks(s, BIT(SMS), "77018880001", "0000", NOW + 1));
		assert_int_equal(store_ping(s), 0);
	}
	PQfinish(c);
	store_close(s);
	unsetenv("PGAPPNAME");
	assert_all_stored(schema, ok_ids, n_ok);
	drop_schema(schema);
}

/* A TCP proxy to the server that the test can take down and bring back on the same port:
 * the server "restarting" as the store sees it. One thread, poll() over every socket. */
struct proxy {
	int lfd, port, wake[2];
	pthread_t th;
};

static int proxy_upstream(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)env.port)};
	if (inet_pton(AF_INET, strcmp(env.host, "localhost") ? env.host : "127.0.0.1",
	              &sa.sin_addr) != 1 ||
	    connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static bool write_all(int fd, const char *buf, ssize_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, buf, (size_t)n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return false;
		buf += w;
		n -= w;
	}
	return true;
}

static void *proxy_main(void *arg)
{
	struct proxy *p = arg;
	enum { PAIRS = 32 };
	int fd[PAIRS][2];
	int n = 0;
	char buf[16384];
	for (;;) {
		struct pollfd pf[2 + 2 * PAIRS];
		pf[0] = (struct pollfd){.fd = p->lfd, .events = POLLIN};
		pf[1] = (struct pollfd){.fd = p->wake[0], .events = POLLIN};
		for (int i = 0; i < n; i++) {
			pf[2 + 2 * i] = (struct pollfd){.fd = fd[i][0], .events = POLLIN};
			pf[3 + 2 * i] = (struct pollfd){.fd = fd[i][1], .events = POLLIN};
		}
		if (poll(pf, (nfds_t)(2 + 2 * n), -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pf[1].revents)
			break;
		for (int i = n - 1; i >= 0; i--) {
			for (int side = 0; side < 2; side++) {
				if (!pf[2 + 2 * i + side].revents)
					continue;
				ssize_t got = recv(fd[i][side], buf, sizeof buf, 0);
				if (got > 0 && write_all(fd[i][1 - side], buf, got))
					continue;
				close(fd[i][0]);
				close(fd[i][1]);
				fd[i][0] = fd[n - 1][0];
				fd[i][1] = fd[n - 1][1];
				n--;
				break;
			}
		}
		if (pf[0].revents & POLLIN) {
			int cfd = accept(p->lfd, NULL, NULL);
			int ufd = cfd >= 0 ? proxy_upstream() : -1;
			if (cfd >= 0 && ufd >= 0 && n < PAIRS) {
				fd[n][0] = cfd;
				fd[n][1] = ufd;
				n++;
			} else {
				if (cfd >= 0)
					close(cfd);
				if (ufd >= 0)
					close(ufd);
			}
		}
	}
	for (int i = 0; i < n; i++) {
		close(fd[i][0]);
		close(fd[i][1]);
	}
	return NULL;
}

/* Listen on p->port (0: any free port, written back) and serve. */
static void proxy_start(struct proxy *p)
{
	p->lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(p->lfd >= 0);
	int one = 1;
	setsockopt(p->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p->port),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(p->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(listen(p->lfd, 16), 0);
	socklen_t len = sizeof sa;
	assert_int_equal(getsockname(p->lfd, (struct sockaddr *)&sa, &len), 0);
	p->port = ntohs(sa.sin_port);
	assert_int_equal(pipe(p->wake), 0);
	assert_int_equal(pthread_create(&p->th, NULL, proxy_main, p), 0);
}

/* Close the listener and every connection through it. */
static void proxy_stop(struct proxy *p)
{
	assert_int_equal(write(p->wake[1], "x", 1), 1);
	pthread_join(p->th, NULL);
	close(p->lfd);
	close(p->wake[0]);
	close(p->wake[1]);
}

/* A thread that keeps sending through one store and remembers what was answered 0. */
struct sender {
	struct store *s;
	pthread_mutex_t mu;
	pthread_cond_t cv;       /* a send was answered */
	bool stop;
	int ok, failed, other;
	char (*ids)[STORE_ID_MAX];
	int cap;
};

static void *sender_main(void *arg)
{
	struct sender *x = arg;
	for (int i = 0;; i++) {
		pthread_mutex_lock(&x->mu);
		bool stop = x->stop || x->ok >= x->cap;
		pthread_mutex_unlock(&x->mu);
		if (stop)
			return NULL;
		char id[STORE_ID_MAX], target[32];
		snprintf(target, sizeof target, "7701%07d", i);
		int rc = send_code(x->s, SMS, target, NULL, "1234", NOW, id);
		pthread_mutex_lock(&x->mu);
		if (rc == 0)
			snprintf(x->ids[x->ok++], STORE_ID_MAX, "%s", id);
		else if (rc == OTP_ERR_STORE)
			x->failed++;
		else
			x->other++;
		pthread_cond_broadcast(&x->cv);
		pthread_mutex_unlock(&x->mu);
	}
}

/* Wait (at most 30 s) until the sender has *counter >= want. */
static void sender_wait(struct sender *x, const int *counter, int want)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 30;
	pthread_mutex_lock(&x->mu);
	int rc = 0;
	while (*counter < want && rc == 0)
		rc = pthread_cond_timedwait(&x->cv, &x->mu, &until);
	bool reached = *counter >= want;
	pthread_mutex_unlock(&x->mu);
	if (!reached)
		fail_msg("the sender did not get there (%d of %d)", *counter, want);
}

/* The server goes away under a steady stream of sends and comes back on the same
 * address: sends fail with OTP_ERR_STORE meanwhile, none answered 0 is lost, and the
 * store reconnects by itself. */
static void test_reconnect_after_restart(void **state)
{
	(void)state;
	NEED_PG();
	char schema[64];
	unique_name(schema, sizeof schema, "otpd restart");
	struct proxy p = {.port = 0};
	proxy_start(&p);
	struct store_pg_config cfg = config(schema, 2);
	cfg.port = p.port;
	struct store *s = open_cfg(&cfg);

	struct sender x = {.s = s, .cap = 4096};
	x.ids = calloc((size_t)x.cap, sizeof *x.ids);
	assert_non_null(x.ids);
	pthread_mutex_init(&x.mu, NULL);
	pthread_cond_init(&x.cv, NULL);
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, sender_main, &x), 0);
	sender_wait(&x, &x.ok, 5);

	/* the server is gone: operations fail with OTP_ERR_STORE, quickly */
	proxy_stop(&p);
	sender_wait(&x, &x.failed, 3);
	assert_int_equal(store_ping(s), OTP_ERR_STORE);
	bool ok = true;
	assert_int_equal(check_code(s, BIT(SMS), "77010000000", "1234", NOW + 1, &ok, NULL),
	                 OTP_ERR_STORE);
	assert_false(ok);
	struct store_limits lim;
	assert_int_equal(store_rules_get(s, "", SMS, &lim), OTP_ERR_STORE);

	/* it is back on the same address: the next operations reconnect */
	proxy_start(&p);
	pthread_mutex_lock(&x.mu);
	int before = x.ok;
	pthread_mutex_unlock(&x.mu);
	sender_wait(&x, &x.ok, before + 5);
	pthread_mutex_lock(&x.mu);
	x.stop = true;
	pthread_mutex_unlock(&x.mu);
	pthread_join(th, NULL);
	assert_int_equal(x.other, 0);
	assert_int_equal(store_ping(s), 0);
	assert_true(checks(s, BIT(SMS), "77010000000", "1234", NOW + 1));
	store_close(s);
	proxy_stop(&p);

	/* every send answered 0 is in the database */
	assert_all_stored(schema, x.ids, x.ok);
	pthread_cond_destroy(&x.cv);
	pthread_mutex_destroy(&x.mu);
	free(x.ids);
	drop_schema(schema);
}

/* ---- the 0002 -> 0003 migration -------------------------------------------------------- */

static void pg_code(PGconn *c, int64_t id, int ch, const char *target, const char *code,
                    const char *ip, int64_t created, int64_t expire, bool void_, bool consumed,
                    const char *sealed)
{
	uint8_t hash[OTP_HASH_LEN], lookup[OTP_HASH_LEN];
	otp_code_hash(&key, (enum otp_channel)ch, target, code, hash);
	otp_lookup_hash(&key, (enum otp_channel)ch, code, lookup);
	char sid[24], sch[8], screated[24], sexpire[24];
	snprintf(sid, sizeof sid, "%lld", (long long)id);
	snprintf(sch, sizeof sch, "%d", ch);
	snprintf(screated, sizeof screated, "%lld", (long long)created);
	snprintf(sexpire, sizeof sexpire, "%lld", (long long)expire);
	/* the hashes and the sealed copy as binary parameters, the rest as text */
	const char *vals[11] = {sid, sch, target, (const char *)hash, (const char *)lookup, sealed,
	                        ip, screated, sexpire, void_ ? "t" : "f", consumed ? "t" : "f"};
	const int lens[11] = {0, 0, 0, OTP_HASH_LEN, OTP_HASH_LEN, sealed ? (int)strlen(sealed) : 0};
	const int fmts[11] = {0, 0, 0, 1, 1, 1};
	PGresult *r = PQexecParams(c,
	        "INSERT INTO otpd_code (id, channel, target, code_hash, lookup_hash, sealed_code, "
	        "ip, created_at, expire_at, void, consumed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
	        "$9, $10, $11)", 11, NULL, vals, lens, fmts, 0);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		fail_msg("otpd_code: %s", PQresultErrorMessage(r));
	PQclear(r);
}

/*
 * A schema of the previous otpd (migrations 0001 and 0002 only) opened by this one: 0003
 * turns its codes into compat verifications that still check with their codes, with
 * their attempts; its rules and pending jobs carry over; its sends still count.
 */
static void test_migration_0003_carries_0002_rows(void **state)
{
	(void)state;
	NEED_PG();
	assert_true(store_pg_migrations_count >= 3);
	char schema[64], q[160], sql[1024];
	unique_name(schema, sizeof schema, "otpd upgrade");
	PGconn *c = admin_connect(NULL);
	quote_ident(c, schema, q, sizeof q);
	snprintf(sql, sizeof sql, "CREATE SCHEMA %s; SET search_path TO %s; "
	         "CREATE TABLE otpd_schema_migrations (version integer PRIMARY KEY, name text NOT "
	         "NULL, applied_at timestamptz NOT NULL DEFAULT now())", q, q);
	admin_exec(c, sql);
	for (int m = 0; m < 2; m++) {
		admin_exec(c, store_pg_migrations[m].sql);
		snprintf(sql, sizeof sql, "INSERT INTO otpd_schema_migrations (version, name) VALUES "
		         "(%d, '%s')", store_pg_migrations[m].version, store_pg_migrations[m].name);
		admin_exec(c, sql);
	}
	pg_code(c, 1, SMS, "77010000001", "1111", "10.0.0.1", NOW - 60, NOW + 240, false, false,
	        "sealed:1111");
	pg_code(c, 2, CALL, "77010000001", "2222", NULL, NOW - 30, NOW + 270, false, false, NULL);
	pg_code(c, 3, SMS, "77010000002", "3333", NULL, NOW - 30, NOW + 270, true, false, NULL);
	pg_code(c, 4, SMS, "77010000003", "4444", NULL, NOW - 30, NOW + 270, false, true,
	        "sealed:4444");
	pg_code(c, 5, EMAIL, "a@example.com", "5555", NULL, NOW - 310, NOW - 10, false, false, NULL);
	admin_exec(c, "SELECT setval(pg_get_serial_sequence('otpd_code', 'id'), 5)");
	snprintf(sql, sizeof sql,
	         "INSERT INTO otpd_attempt VALUES (0, '77010000001', 2, %lld), "
	         "(0, '77010000002', 5, %lld);"
	         "INSERT INTO otpd_limit (channel, kind, minutes, rate) VALUES (0, 1, 60, 20), "
	         "(1, 0, 30, 1), (0, 0, 10, 2);"
	         "INSERT INTO otpd_outbox (id, code_id, channel, provider, state, payload, attempts, "
	         "next_at, created_at, updated_at) VALUES "
	         "(1, 1, 0, 'log', 'pending', 'payload:1111'::bytea, 1, %lld, %lld, %lld), "
	         "(2, 2, 2, 'log', 'sent', NULL, 1, %lld, %lld, %lld);"
	         "SELECT setval(pg_get_serial_sequence('otpd_outbox', 'id'), 2)",
	         (long long)(NOW - 40), (long long)(NOW - 40), (long long)(NOW - 50),
	         (long long)(NOW - 60), (long long)(NOW - 55), (long long)(NOW - 30),
	         (long long)(NOW - 30), (long long)(NOW - 29));
	admin_exec(c, sql);
	admin_exec(c, "RESET search_path");

	struct store *s = open_store(schema, 2);
	snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.otpd_schema_migrations", q);
	assert_int_equal(admin_int(c, sql), (int64_t)store_pg_migrations_count);
	snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_tables WHERE schemaname = '%s' AND "
	         "tablename IN ('otpd_code', 'otpd_attempt')", schema);
	assert_int_equal(admin_int(c, sql), 0);

	/* the live codes: compat verifications, their attempts carried */
	struct store_verification v1 = find_one(s, SMS, "77010000001");
	assert_int_equal(v1.id, 1);
	assert_int_equal(strncmp(v1.public_id, "otp_", 4), 0);
	assert_string_equal(v1.app_id, "");
	assert_int_equal(v1.status, OTP_VS_PENDING);
	assert_int_equal(v1.attempts, 2);
	assert_int_equal(v1.max_attempts, 5);
	assert_false(v1.consume);
	assert_true(v1.has_sealed_code);
	assert_string_equal(v1.ip, "10.0.0.1");
	assert_int_equal(v1.created_at, NOW - 60);
	assert_int_equal(v1.expire_at, NOW + 240);
	struct store_verification v2 = find_one(s, CALL, "77010000001");
	assert_int_equal(v2.attempts, 0);
	assert_true(strcmp(v1.public_id, v2.public_id) != 0);
	/* a void code is dead, a consumed one used up, an expired one expired */
	assert_int_equal(find_one(s, SMS, "77010000002").status, OTP_VS_MAX_ATTEMPTS);
	struct store_verification v4 = find_one(s, SMS, "77010000003");
	assert_int_equal(v4.status, OTP_VS_APPROVED);
	assert_true(v4.consume);
	assert_false(v4.has_sealed_code);
	assert_false(checks(s, BIT(SMS), "77010000002", "3333", NOW));
	assert_false(checks(s, BIT(SMS), "77010000003", "4444", NOW));
	assert_false(checks(s, BIT(EMAIL), "a@example.com", "5555", NOW));

	/* they check with their codes, and keep their budget */
	assert_false(checks(s, BIT(SMS), "77010000001", "0000", NOW));
	struct store_verification back;
	assert_int_equal(store_vf_get(s, "", v1.public_id, &back), 0);
	assert_int_equal(back.attempts, 3);
	assert_true(checks(s, BIT(SMS) | BIT(CALL), "77010000001", "1111", NOW + 1));
	assert_true(checks(s, BIT(CALL), "77010000001", "2222", NOW + 1));
	uint8_t *sealed = NULL;
	size_t len = 0;
	assert_int_equal(store_vf_sealed_latest(s, "", "77010000001", NOW + 2, &sealed, &len),
	                 OTP_ERR_NOT_FOUND); /* the newest live one (call) kept none */
	char tmpl[8];
	assert_int_equal(store_vf_material(s, "", v1.public_id, &sealed, &len, tmpl, sizeof tmpl),
	                 0);
	assert_int_equal(len, strlen("sealed:1111"));
	assert_memory_equal(sealed, "sealed:1111", len);
	free(sealed);

	/* the rules, in their order, as the compat app's */
	struct store_limits lim;
	assert_int_equal(store_rules_get(s, "", SMS, &lim), 0);
	assert_int_equal(lim.n, 2);
	assert_int_equal(lim.rules[0].kind, OTP_LIMIT_IP);
	assert_int_equal(lim.rules[0].minutes, 60);
	assert_int_equal(lim.rules[1].kind, OTP_LIMIT_TARGET);
	assert_int_equal(lim.rules[1].rate, 2);
	assert_int_equal(store_rules_get(s, "", EMAIL, &lim), 0);
	assert_int_equal(lim.n, 1);
	assert_int_equal(lim.rules[0].minutes, 30);
	/* replacing them still works (positions and ids carry on) */
	set_rule(s, CALL, OTP_LIMIT_TARGET, 9, 9);

	/* the sends still count: one email per 30 minutes, two sms per 10 */
	assert_int_equal(send_code(s, EMAIL, "a@example.com", NULL, "9999", NOW, NULL),
	                 OTP_ERR_LIMIT);
	assert_int_equal(send_code(s, SMS, "77010000001", "10.0.0.2", "9999", NOW, NULL), 0);
	assert_int_equal(send_code(s, SMS, "77010000001", "10.0.0.3", "9999", NOW, NULL),
	                 OTP_ERR_LIMIT);
	assert_int_equal(event_count(s, v1.public_id, OTP_EV_CREATED), 1);

	/* the pending job is still due, with its payload, and belongs to v1 */
	struct store_job job;
	size_t n = 0;
	assert_int_equal(store_outbox_claim(s, NOW - 40, NOW + 10, &job, 1, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(job.id, 1);
	assert_int_equal(job.attempts, 1);
	assert_int_equal(job.payload_len, strlen("payload:1111"));
	assert_memory_equal(job.payload, "payload:1111", job.payload_len);
	store_job_fini(&job);
	assert_int_equal(store_outbox_sent(s, 1, NOW + 3, "m-1"), 0);
	assert_int_equal(event_count(s, v1.public_id, OTP_EV_SENT), 1);
	/* new rows take new ids */
	char id[STORE_ID_MAX];
	assert_int_equal(send_code(s, SMS, "77010000009", NULL, "8888", NOW + 4, id), 0);
	assert_int_equal(store_vf_get(s, "", id, &back), 0);
	assert_true(back.id > 5);
	assert_true(checks(s, BIT(SMS), "77010000009", "8888", NOW + 5));

	store_close(s);
	PQfinish(c);
	drop_schema(schema);
}

/* ---- legacy import ---------------------------------------------------------------- */

/* The old service's tables in schema `lq` (quoted), as it created them, with live,
 * expired and unusable rows and rules, some of which otpd refuses. */
static void legacy_tables(PGconn *c, const char *lq)
{
	char sql[2048];
	snprintf(sql, sizeof sql,
	         "CREATE SCHEMA %s;"
	         "CREATE TABLE %s.otp_password (id serial PRIMARY KEY, channel int2 NOT NULL, "
	         "target varchar(255) NOT NULL, password varchar(255) NOT NULL, ip varchar(64), "
	         "expire_at timestamp NOT NULL, created_at timestamp NOT NULL DEFAULT now());"
	         "CREATE TABLE %s.otp_limit (id serial PRIMARY KEY, channel int2 NOT NULL, "
	         "measure int2 NOT NULL, rate int NOT NULL, minutes int NOT NULL);",
	         lq, lq, lq);
	admin_exec(c, sql);
	/* times in UTC, without zone, as the old service wrote them */
#define TS(off) "(to_timestamp(1700000000 + " #off ") AT TIME ZONE 'UTC')"
	snprintf(sql, sizeof sql,
	         "INSERT INTO %s.otp_password (channel, target, password, ip, expire_at, created_at) "
	         "VALUES "
	         "(0, '+77010000001', ' 12345 ', '198.51.100.1', " TS(300) ", " TS(-60) "),"
	         "(1, 'a@example.com', '54321', NULL, " TS(600) ", " TS(-120) "),"
	         "(2, '77010000002', '11111', '', " TS(120) ", " TS(-10) "),"
	         "(0, '77010000003', '22222', NULL, " TS(-1) ", " TS(-301) "),"
	         "(7, '77010000004', '33333', NULL, " TS(300) ", " TS(-1) "),"
	         "(0, '77010000005', '   ', NULL, " TS(300) ", " TS(-1) "),"
	         "(3, ' 0042 ', '44444', NULL, " TS(300) ", " TS(-1) ");"
	         "INSERT INTO %s.otp_limit (channel, measure, rate, minutes) VALUES "
	         "(0, 1, 20, 60), (0, 0, 5, 10), (1, 0, 1, 30), (0, 0, 5, 0), (9, 0, 1, 1),"
	         "(2, 1, 3, 5);",
	         lq, lq);
#undef TS
	admin_exec(c, sql);
}

static void assert_imported_rules(struct store *s)
{
	struct store_limits lim;
	assert_int_equal(store_rules_get(s, "", SMS, &lim), 0);
	assert_int_equal(lim.n, 2);
	assert_int_equal(lim.rules[0].kind, OTP_LIMIT_IP);
	assert_int_equal(lim.rules[0].rate, 20);
	assert_int_equal(lim.rules[0].minutes, 60);
	assert_int_equal(lim.rules[1].kind, OTP_LIMIT_TARGET);
	assert_int_equal(lim.rules[1].rate, 5);
	assert_int_equal(lim.rules[1].minutes, 10);
	assert_int_equal(store_rules_get(s, "", CALL, &lim), 0);
	assert_int_equal(lim.n, 1);
	assert_int_equal(lim.rules[0].kind, OTP_LIMIT_IP);
	assert_int_equal(store_rules_get(s, "", EMAIL, &lim), 0);
	assert_int_equal(lim.n, 1);
	assert_int_equal(lim.rules[0].rate, 1);
}

static void test_legacy_import(void **state)
{
	(void)state;
	NEED_PG();
	char legacy[64], schema[64], lq[160];
	unique_name(legacy, sizeof legacy, "legacy Otp");
	unique_name(schema, sizeof schema, "otpd import");

	PGconn *c = admin_connect(NULL);
	quote_ident(c, legacy, lq, sizeof lq);
	legacy_tables(c, lq);

	struct store *s = open_store(schema, 2);
	/* rules otpd already had: sms's are replaced, telegram's stay */
	set_rule(s, SMS, OTP_LIMIT_TARGET, 1, 1);
	set_rule(s, OTP_CH_TELEGRAM, OTP_LIMIT_TARGET, 7, 7);

	struct store_legacy_source src = {
		.host = env.host, .port = env.port, .database = env.database,
		.user = env.user, .password = env.password,
		.schema = legacy, .timezone = "UTC", .seal_codes = true,
	};
	struct store_legacy_counts n;
	char err[512] = "";
	int rc = store_legacy_import(s, &src, &key, NOW, &n, err, sizeof err);
	if (rc != 0)
		fail_msg("import: %s", err);
	assert_int_equal(n.rules, 4);
	assert_int_equal(n.rules_skipped, 2);
	assert_int_equal(n.codes, 4);
	assert_int_equal(n.codes_skipped, 2);
	assert_int_equal(n.codes_present, 0);

	/* the codes check, across sms + call as /sms/check does */
	const unsigned smscall = BIT(SMS) | BIT(CALL);
	assert_true(checks(s, smscall, "77010000001", "12345", NOW + 5));
	assert_true(checks(s, smscall, "77010000002", "11111", NOW + 5));
	assert_false(checks(s, smscall, "77010000003", "22222", NOW + 5)); /* expired before */
	assert_true(checks(s, BIT(EMAIL), "a@example.com", "54321", NOW + 5));
	assert_true(checks(s, BIT(OTP_CH_TELEGRAM), "42", "44444", NOW + 5));
	/* as compat verifications, their send time kept */
	struct store_verification v = find_one(s, SMS, "77010000001");
	assert_int_equal(v.created_at, NOW - 60);
	assert_int_equal(v.expire_at, NOW + 300);
	assert_int_equal(v.max_attempts, 5);
	assert_string_equal(v.ip, "198.51.100.1");

	/* GET /target and GET /password find them */
	struct store_check q = {.by = STORE_CHECK_LOOKUP, .app_id = "", .channel = EMAIL,
	                        .key = &key, .code = "54321", .now = NOW + 6};
	otp_lookup_hash(&key, EMAIL, "54321", q.lookup_hash);
	struct store_check_result res;
	assert_int_equal(store_vf_check(s, &q, &res), 0);
	assert_true(res.ok);
	assert_string_equal(res.v.target, "a@example.com");
	uint8_t *sealed = NULL;
	size_t sealed_len = 0;
	assert_int_equal(store_vf_sealed_latest(s, "", "77010000001", NOW, &sealed, &sealed_len), 0);
	uint8_t code[OTP_CODE_MAX + OTP_SEAL_OVERHEAD];
	size_t code_len = 0;
	assert_int_equal(otp_open(&key, "password", sealed, sealed_len, code, &code_len), 0);
	assert_int_equal(code_len, 5);
	assert_memory_equal(code, "12345", 5);
	free(sealed);

	/* the rules, in the old order; telegram's untouched */
	assert_imported_rules(s);
	struct store_limits lim;
	assert_int_equal(store_rules_get(s, "", OTP_CH_TELEGRAM, &lim), 0);
	assert_int_equal(lim.n, 1);
	assert_int_equal(lim.rules[0].rate, 7);

	/* imported codes count in the windows: email allows 1 per 30 minutes */
	assert_int_equal(send_code(s, EMAIL, "a@example.com", NULL, "9", NOW, NULL), OTP_ERR_LIMIT);
	/* nothing is delivered again */
	struct store_outbox_counts oc;
	assert_int_equal(store_outbox_counts(s, &oc), 0);
	assert_int_equal(oc.skipped, 4);
	assert_int_equal(oc.pending, 0);

	/* a second run adds nothing */
	rc = store_legacy_import(s, &src, &key, NOW, &n, err, sizeof err);
	if (rc != 0)
		fail_msg("import again: %s", err);
	assert_int_equal(n.codes, 0);
	assert_int_equal(n.codes_present, 4);
	assert_int_equal(n.rules, 4);
	assert_int_equal(store_outbox_counts(s, &oc), 0);
	assert_int_equal(oc.skipped, 4);

	/* a connection string works too; a missing table is a clear error */
	char conninfo[512];
	snprintf(conninfo, sizeof conninfo, "host=%s port=%d dbname=%s%s%s%s%s", env.host, env.port,
	         env.database, env.user ? " user=" : "", env.user ? env.user : "",
	         env.password ? " password=" : "", env.password ? env.password : "");
	struct store_legacy_source src2 = {.conninfo = conninfo, .schema = "no such schema"};
	assert_int_equal(store_legacy_import(s, &src2, &key, NOW, &n, err, sizeof err),
	                 OTP_ERR_INVALID);
	assert_non_null(strstr(err, "otp_limit"));

	store_close(s);
	PQfinish(c);
	drop_schema(schema);
	drop_schema(legacy);
}

/* The import writes through store.h only: into the SQLite backend just the same. */
static void test_legacy_import_into_sqlite(void **state)
{
	(void)state;
	NEED_PG();
	char legacy[64], lq[160], dir[128], path[192], err[512] = "";
	unique_name(legacy, sizeof legacy, "legacy sqlite");
	PGconn *c = admin_connect(NULL);
	quote_ident(c, legacy, lq, sizeof lq);
	legacy_tables(c, lq);

	const char *tmp = getenv("TMPDIR");
	snprintf(dir, sizeof dir, "%s/otpd-legacy-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof path, "%s/otpd.db", dir);
	struct store *s = store_sqlite_open(path, 2, err, sizeof err);
	if (s == NULL)
		fail_msg("store_sqlite_open: %s", err);

	struct store_legacy_source src = {
		.host = env.host, .port = env.port, .database = env.database,
		.user = env.user, .password = env.password, .schema = legacy,
		.timezone = "UTC",
	};
	struct store_legacy_counts n;
	if (store_legacy_import(s, &src, &key, NOW, &n, err, sizeof err) != 0)
		fail_msg("import: %s", err);
	assert_int_equal(n.rules, 4);
	assert_int_equal(n.codes, 4);
	assert_int_equal(n.codes_skipped, 2);
	assert_true(checks(s, BIT(SMS), "77010000001", "12345", NOW + 5));
	assert_true(checks(s, BIT(OTP_CH_TELEGRAM), "42", "44444", NOW + 5));
	/* not sealed unless asked */
	uint8_t *sealed = NULL;
	size_t sealed_len = 0;
	assert_int_equal(store_vf_sealed_latest(s, "", "a@example.com", NOW, &sealed, &sealed_len),
	                 OTP_ERR_NOT_FOUND);
	assert_imported_rules(s);
	assert_int_equal(send_code(s, EMAIL, "a@example.com", NULL, "9", NOW, NULL), OTP_ERR_LIMIT);

	store_close(s);
	static const char *const suffix[] = {"", "-wal", "-shm"};
	for (size_t i = 0; i < 3; i++) {
		char p[224];
		snprintf(p, sizeof p, "%s%s", path, suffix[i]);
		unlink(p);
	}
	rmdir(dir);
	PQfinish(c);
	drop_schema(legacy);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_quoted_schema),
		cmocka_unit_test(test_concurrent_open),
		cmocka_unit_test(test_real_host_creates_database),
		cmocka_unit_test(test_open_fails_with_reason),
		cmocka_unit_test(test_refuses_unknown_schema),
		cmocka_unit_test(test_race_sends),
		cmocka_unit_test(test_race_checks),
		cmocka_unit_test(test_race_claims),
		cmocka_unit_test(test_reconnect_after_terminate),
		cmocka_unit_test(test_reconnect_after_restart),
		cmocka_unit_test(test_migration_0003_carries_0002_rows),
		cmocka_unit_test(test_legacy_import),
		cmocka_unit_test(test_legacy_import_into_sqlite),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
