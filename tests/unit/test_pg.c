/*
 * test_pg.c - what only the PostgreSQL backend must do, against a real server (skipped
 * unless OTPD_TEST_PG_HOST is set; scripts/pg-test-server.sh starts one): migrations
 * into a quoted non-public schema, several otpd opening at once, creating the database
 * with PG_REAL_HOST, exact limits and attempt counts when two store handles (as two
 * processes would) race, outbox claims never handed out twice, reconnecting after the
 * server dropped the connections or went away, and the legacy import.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "core/num.h"
#include "core/otp.h"
#include "store/legacy.h"
#include "store/migrations.h"
#include "store/store.h"

#define NOW INT64_C(1700000000)

struct pg_env {
	const char *host, *user, *database, *password;
	int port;
};

static struct pg_env env;
static bool have_pg;
static int name_seq;

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
	assert_string_equal(s->ops->name, "postgresql");
	return s;
}

static struct store *open_store(const char *schema, int pool)
{
	struct store_pg_config cfg = config(schema, pool);
	return open_cfg(&cfg);
}

static const uint8_t payload[] = "sealed";

static int send_code(struct store *s, enum otp_channel ch, const char *target, const char *ip,
                     uint8_t tag, int64_t now)
{
	struct store_send q;
	struct store_send_result res;
	memset(&q, 0, sizeof q);
	q.channel = ch;
	q.target = target;
	q.ip = ip;
	memset(q.code_hash, tag, sizeof q.code_hash);
	memset(q.lookup_hash, tag ^ 0x5a, sizeof q.lookup_hash);
	q.now = now;
	q.expire_at = now + 300;
	q.provider = "log";
	q.payload = payload;
	q.payload_len = sizeof payload;
	q.request_id = "test";
	return store_send(s, &q, &res);
}

static int check_code(struct store *s, enum otp_channel ch, const char *target, uint8_t tag,
                      int max_failures, bool *ok)
{
	struct store_check q;
	memset(&q, 0, sizeof q);
	q.channel = ch;
	q.channel_mask = OTP_CH_BIT(ch);
	q.target = target;
	memset(q.presented[ch], tag, OTP_HASH_LEN);
	q.now = NOW + 10;
	q.max_failures = max_failures;
	return store_check(s, &q, ok);
}

static void set_rule(struct store *s, enum otp_channel ch, enum otp_limit_kind kind, int rate,
                     int minutes)
{
	bool replace[2] = {true, true};
	struct otp_limit_rule r = {.kind = kind, .rate = rate, .minutes = minutes};
	assert_int_equal(store_set_limits(s, ch, replace, &r, 1), 0);
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

	/* the operations land in that schema */
	assert_int_equal(send_code(s, OTP_CH_SMS, "77010000001", "10.0.0.1", 1, NOW), 0);
	bool ok = false;
	assert_int_equal(check_code(s, OTP_CH_SMS, "77010000001", 1, 5, &ok), 0);
	assert_true(ok);
	snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.otpd_code", q);
	assert_int_equal(admin_int(c, sql), 1);
	snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.otpd_outbox WHERE state = 'pending'", q);
	assert_int_equal(admin_int(c, sql), 1);

	/* opening again applies nothing twice */
	struct store *s2 = open_store(schema, 1);
	snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.otpd_schema_migrations", q);
	assert_int_equal(admin_int(c, sql), (int64_t)store_pg_migrations_count);
	assert_int_equal(check_code(s2, OTP_CH_SMS, "77010000001", 1, 5, &ok), 0);
	assert_true(ok);

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
		store_close(args[i].s);
	}
	PGconn *c = admin_connect(NULL);
	quote_ident(c, schema, q, sizeof q);
	snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.otpd_schema_migrations", q);
	assert_int_equal(admin_int(c, sql), (int64_t)store_pg_migrations_count);
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
	assert_int_equal(send_code(s, OTP_CH_EMAIL, "a@example.com", NULL, 3, NOW), 0);
	store_close(s);

	/* a second start finds both */
	s = open_cfg(&cfg);
	store_close(s);

	PGconn *c = admin_connect(db);
	assert_int_equal(admin_int(c, "SELECT count(*) FROM \"Fresh Schema\".otpd_code"), 1);
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
		char target[64];
		switch (r->what) {
		case RACE_SEND_TARGET:
			/* one target, many ips */
			snprintf(target, sizeof target, "10.%d.0.%d", r->index, i);
			rc = send_code(r->s, OTP_CH_SMS, r->target, target, (uint8_t)i, NOW);
			break;
		case RACE_SEND_IP:
			/* one ip, many targets */
			snprintf(target, sizeof target, "7701%02d%05d", r->index, i);
			rc = send_code(r->s, OTP_CH_SMS, target, "192.0.2.7", (uint8_t)i, NOW);
			break;
		case RACE_CHECK_WRONG: {
			bool ok = true;
			rc = check_code(r->s, OTP_CH_SMS, r->target, 0xee, 5, &ok);
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
	set_rule(a, OTP_CH_SMS, OTP_LIMIT_TARGET, 5, 10);
	race_run(a, b, 4, RACE_SEND_TARGET, "77015550000", 6, rs, &total);
	assert_int_equal(total.failed, 0);
	assert_int_equal(total.ok, 5);
	assert_int_equal(total.refused, 19);

	/* rate 5 per ip: 4 threads x 6 sends from one ip to different targets */
	set_rule(b, OTP_CH_SMS, OTP_LIMIT_IP, 5, 10);
	race_run(a, b, 4, RACE_SEND_IP, NULL, 6, rs, &total);
	assert_int_equal(total.failed, 0);
	assert_int_equal(total.ok, 5);
	assert_int_equal(total.refused, 19);

	store_close(a);
	store_close(b);
	drop_schema(schema);
}

static void test_race_checks(void **state)
{
	(void)state;
	NEED_PG();
	char schema[64], q[160], sql[512];
	unique_name(schema, sizeof schema, "otpd race check");
	struct store *a = open_store(schema, 3);
	struct store *b = open_store(schema, 3);
	struct race rs[8], total;
	bool ok = false;

	/* 4 racing wrong checks with a limit of 5: the right code still passes */
	assert_int_equal(send_code(a, OTP_CH_SMS, "77016660001", NULL, 0x11, NOW), 0);
	race_run(a, b, 4, RACE_CHECK_WRONG, "77016660001", 1, rs, &total);
	assert_int_equal(total.ok, 4);
	assert_int_equal(check_code(b, OTP_CH_SMS, "77016660001", 0x11, 5, &ok), 0);
	assert_true(ok);

	/* 5 racing wrong checks: the code is dead, even for the right value */
	assert_int_equal(send_code(a, OTP_CH_SMS, "77016660002", NULL, 0x22, NOW), 0);
	race_run(a, b, 5, RACE_CHECK_WRONG, "77016660002", 1, rs, &total);
	assert_int_equal(total.ok, 5);
	assert_int_equal(check_code(a, OTP_CH_SMS, "77016660002", 0x22, 5, &ok), 0);
	assert_false(ok);

	/* 4 threads x 3 = 12 wrong checks: two lock-outs, and 2 counted since the last;
	 * a lost update would leave fewer */
	assert_int_equal(send_code(a, OTP_CH_SMS, "77016660003", NULL, 0x33, NOW), 0);
	race_run(a, b, 4, RACE_CHECK_WRONG, "77016660003", 3, rs, &total);
	assert_int_equal(total.ok, 12);
	PGconn *c = admin_connect(NULL);
	quote_ident(c, schema, q, sizeof q);
	snprintf(sql, sizeof sql, "SELECT failures FROM %s.otpd_attempt "
	         "WHERE channel = 0 AND target = '77016660003'", q);
	assert_int_equal(admin_int(c, sql), 2);
	PQfinish(c);

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
		assert_int_equal(send_code(a, OTP_CH_SMS, target, NULL, (uint8_t)i, NOW), 0);
	}
	struct race rs[8], total;
	race_run(a, b, 6, RACE_CLAIM, NULL, 8, rs, &total);
	assert_int_equal(total.failed, 0);
	int64_t all[JOBS + 8 * 256] = {0};
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

/* After the server terminated the pool's connections, the next operation may fail with
 * OTP_ERR_STORE (or succeed after reconnecting); the one after succeeds. */
static void test_reconnect_after_terminate(void **state)
{
	(void)state;
	NEED_PG();
	char schema[64], app[64], sql[256];
	unique_name(schema, sizeof schema, "otpd reconnect");
	snprintf(app, sizeof app, "otpd-test-reconnect-%d", (int)getpid());
	assert_int_equal(setenv("PGAPPNAME", app, 1), 0);
	struct store *s = open_store(schema, 2);
	assert_int_equal(send_code(s, OTP_CH_SMS, "77018880001", NULL, 1, NOW), 0);

	PGconn *c = admin_connect(NULL);
	snprintf(sql, sizeof sql, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
	         "WHERE application_name = '%s'", app);
	for (int round = 0; round < 3; round++) {
		assert_true(admin_int(c, sql) >= 1);
		int rc = send_code(s, OTP_CH_SMS, "77018880001", NULL, 2, NOW);
		assert_true(rc == 0 || rc == OTP_ERR_STORE);
		assert_int_equal(send_code(s, OTP_CH_SMS, "77018880001", NULL, 3, NOW), 0);
		bool ok = false;
		assert_int_equal(check_code(s, OTP_CH_SMS, "77018880001", 3, 5, &ok), 0);
		assert_true(ok);
		assert_int_equal(store_ping(s), 0);
	}
	PQfinish(c);
	store_close(s);
	unsetenv("PGAPPNAME");
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
	assert_int_equal(send_code(s, OTP_CH_SMS, "77019990001", NULL, 1, NOW), 0);

	/* the server is gone: operations fail with OTP_ERR_STORE, quickly, and nothing
	 * crashes */
	proxy_stop(&p);
	assert_int_equal(send_code(s, OTP_CH_SMS, "77019990001", NULL, 2, NOW), OTP_ERR_STORE);
	assert_int_equal(store_ping(s), OTP_ERR_STORE);
	bool ok = true;
	assert_int_equal(check_code(s, OTP_CH_SMS, "77019990001", 1, 5, &ok), OTP_ERR_STORE);
	assert_false(ok);
	struct store_limits lim;
	assert_int_equal(store_get_limits(s, OTP_CH_SMS, &lim), OTP_ERR_STORE);

	/* it is back on the same address: the next operations reconnect */
	proxy_start(&p);
	assert_int_equal(store_ping(s), 0);
	assert_int_equal(check_code(s, OTP_CH_SMS, "77019990001", 1, 5, &ok), 0);
	assert_true(ok);
	assert_int_equal(send_code(s, OTP_CH_SMS, "77019990001", NULL, 3, NOW), 0);
	store_close(s);
	proxy_stop(&p);
	drop_schema(schema);
}

/* ---- legacy import ---------------------------------------------------------------- */

static void test_key(struct otp_key *key)
{
	uint8_t master[OTP_KEY_LEN];
	for (size_t i = 0; i < sizeof master; i++)
		master[i] = (uint8_t)(i * 7 + 1);
	assert_int_equal(otp_key_init(key, master), 0);
}

static int check_real(struct store *s, const struct otp_key *key, enum otp_channel ch,
                      unsigned mask, const char *target, const char *code, bool *ok)
{
	struct store_check q;
	memset(&q, 0, sizeof q);
	q.channel = ch;
	q.channel_mask = mask;
	q.target = target;
	for (int c = 0; c < OTP_CH_COUNT; c++) {
		if (mask & OTP_CH_BIT(c))
			otp_code_hash(key, (enum otp_channel)c, target, code, q.presented[c]);
	}
	q.now = NOW + 5;
	q.max_failures = 5;
	return store_check(s, &q, ok);
}

/* The old service's tables in schema `lq` (quoted), as it created them, with live,
 * expired and unusable rows and rules, some of which otpd refuses. */
static void legacy_tables(PGconn *c, const char *lq)
{
	char sql[2048];
	/* the old service's tables, as it created them */
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

static void test_legacy_import(void **state)
{
	(void)state;
	NEED_PG();
	char legacy[64], schema[64], lq[160];
	unique_name(legacy, sizeof legacy, "legacy Otp");
	unique_name(schema, sizeof schema, "otpd import");
	struct otp_key key;
	test_key(&key);

	PGconn *c = admin_connect(NULL);
	quote_ident(c, legacy, lq, sizeof lq);
	legacy_tables(c, lq);

	struct store *s = open_store(schema, 2);
	/* rules otpd already had: sms's are replaced, telegram's stay */
	set_rule(s, OTP_CH_SMS, OTP_LIMIT_TARGET, 1, 1);
	set_rule(s, OTP_CH_TELEGRAM, OTP_LIMIT_TARGET, 7, 7);

	char port[16];
	snprintf(port, sizeof port, "port=%d", env.port);
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
	bool ok = false;
	unsigned smscall = OTP_CH_BIT(OTP_CH_SMS) | OTP_CH_BIT(OTP_CH_CALL);
	assert_int_equal(check_real(s, &key, OTP_CH_SMS, smscall, "77010000001", "12345", &ok), 0);
	assert_true(ok);
	assert_int_equal(check_real(s, &key, OTP_CH_SMS, smscall, "77010000002", "11111", &ok), 0);
	assert_true(ok);
	assert_int_equal(check_real(s, &key, OTP_CH_SMS, smscall, "77010000003", "22222", &ok), 0);
	assert_false(ok); /* expired before the import */
	assert_int_equal(check_real(s, &key, OTP_CH_EMAIL, OTP_CH_BIT(OTP_CH_EMAIL),
	                            "a@example.com", "54321", &ok), 0);
	assert_true(ok);
	assert_int_equal(check_real(s, &key, OTP_CH_TELEGRAM, OTP_CH_BIT(OTP_CH_TELEGRAM), "42",
	                            "44444", &ok), 0);
	assert_true(ok);

	/* GET /target and GET /password find them */
	uint8_t lookup[OTP_HASH_LEN];
	char target[OTP_TARGET_MAX];
	otp_lookup_hash(&key, OTP_CH_EMAIL, "54321", lookup);
	assert_int_equal(store_find_target(s, OTP_CH_EMAIL, lookup, NOW, target, sizeof target), 0);
	assert_string_equal(target, "a@example.com");
	uint8_t *sealed = NULL;
	size_t sealed_len = 0;
	assert_int_equal(store_find_sealed_code(s, "77010000001", NOW, &sealed, &sealed_len), 0);
	uint8_t code[OTP_CODE_MAX + OTP_SEAL_OVERHEAD];
	size_t code_len = 0;
	assert_int_equal(otp_open(&key, "password", sealed, sealed_len, code, &code_len), 0);
	assert_memory_equal(code, "12345", 5);
	assert_int_equal(code_len, 5);
	free(sealed);

	/* the rules, in the old order; telegram's untouched */
	struct store_limits lim;
	assert_int_equal(store_get_limits(s, OTP_CH_SMS, &lim), 0);
	assert_int_equal(lim.n, 2);
	assert_int_equal(lim.rules[0].kind, OTP_LIMIT_IP);
	assert_int_equal(lim.rules[0].rate, 20);
	assert_int_equal(lim.rules[0].minutes, 60);
	assert_int_equal(lim.rules[1].kind, OTP_LIMIT_TARGET);
	assert_int_equal(lim.rules[1].rate, 5);
	assert_int_equal(lim.rules[1].minutes, 10);
	assert_int_equal(store_get_limits(s, OTP_CH_CALL, &lim), 0);
	assert_int_equal(lim.n, 1);
	assert_int_equal(lim.rules[0].kind, OTP_LIMIT_IP);
	assert_int_equal(store_get_limits(s, OTP_CH_TELEGRAM, &lim), 0);
	assert_int_equal(lim.n, 1);
	assert_int_equal(lim.rules[0].rate, 7);

	/* imported codes count in the windows: email allows 1 per 30 minutes */
	assert_int_equal(send_code(s, OTP_CH_EMAIL, "a@example.com", NULL, 9, NOW), OTP_ERR_LIMIT);
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
	snprintf(conninfo, sizeof conninfo, "host=%s %s dbname=%s%s%s%s%s", env.host, port,
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
	struct otp_key key;
	test_key(&key);
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
	bool ok = false;
	assert_int_equal(check_real(s, &key, OTP_CH_SMS, OTP_CH_BIT(OTP_CH_SMS), "77010000001",
	                            "12345", &ok), 0);
	assert_true(ok);
	/* not sealed unless asked */
	uint8_t *sealed = NULL;
	size_t sealed_len = 0;
	assert_int_equal(store_find_sealed_code(s, "77010000001", NOW, &sealed, &sealed_len),
	                 OTP_ERR_NOT_FOUND);
	struct store_limits lim;
	assert_int_equal(store_get_limits(s, OTP_CH_SMS, &lim), 0);
	assert_int_equal(lim.n, 2);
	assert_int_equal(lim.rules[0].kind, OTP_LIMIT_IP);

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
		cmocka_unit_test(test_race_sends),
		cmocka_unit_test(test_race_checks),
		cmocka_unit_test(test_race_claims),
		cmocka_unit_test(test_reconnect_after_terminate),
		cmocka_unit_test(test_reconnect_after_restart),
		cmocka_unit_test(test_legacy_import),
		cmocka_unit_test(test_legacy_import_into_sqlite),
	};
	return cmocka_run_group_tests(tests, group_setup, NULL);
}
