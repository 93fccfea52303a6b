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
 *     host), and dropped (CASCADE) after the test over libpq.
 *
 * The same assertions run on both: where the two backends used to drift (an empty
 * target, how many candidates a check compares, which sealed copies purge erases, the
 * migration names checked at open) a test pins the one behaviour both must have.
 * Tests named sqlite_* look inside the SQLite file (schema version, file mode, erased
 * bytes on disk, the 0001 -> 0002 migration); they are skipped under PostgreSQL
 * (tests/unit/test_pg.c has the PostgreSQL ones). Codes are hashed with the real core
 * (fixed key), so hashes look like production ones; "sealed" copies and payloads are
 * opaque bytes to the store, so the tests use readable markers.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
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
#include "core/text.h"
#include "core/verification.h"
#include "store/migrations.h"
#include "store/store.h"

#define T0 ((int64_t)1700000000)
#define LIFETIME 300
#define PROVIDER "log"
#define SMS OTP_CH_SMS
#define EMAIL OTP_CH_EMAIL
#define CALL OTP_CH_CALL
#define BIT(ch) OTP_CH_BIT(ch)
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

static struct store *fx_try_open(const struct fx *f, int pool, char *err, size_t cap)
{
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
		return store_pg_open(&cfg, err, cap);
	}
	return store_sqlite_open(f->path, pool, err, cap);
}

static struct store *fx_open(const struct fx *f, int pool)
{
	char err[512] = "";
	struct store *s = fx_try_open(f, pool, err, sizeof err);
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

/* For the sqlite_* tests that build the database themselves: no store yet. */
static int fx_setup_empty(void **state)
{
	int rc = fx_setup(state);
	struct fx *f = *state;
	store_close(f->s);
	f->s = NULL;
	if (!f->pg)
		unlink(f->path);
	return rc;
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

/* ---- starting verifications ----------------------------------------------------------- */

static atomic_uint id_seq; /* racing threads start verifications too */

/* A start request and the buffers it points into: sensible defaults (5 attempts, 3
 * sends, 30 s cooldown, consumed on approval, no ip, no sealed copy) that a test changes
 * before vf_start(). The target must outlive the request. */
struct start_buf {
	struct store_start q;
	struct store_start_result res;
	char public_id[STORE_ID_MAX];
	char payload[OTP_TARGET_MAX + OTP_CODE_MAX + 16];
	char sealed[OTP_CODE_MAX + 16];
};

static struct store_start *start_init(struct start_buf *b, const char *app, enum otp_channel ch,
                                      const char *target, const char *code, int64_t now)
{
	memset(b, 0, sizeof *b);
	snprintf(b->public_id, sizeof b->public_id, "otp_t%06u", atomic_fetch_add(&id_seq, 1) + 1);
	snprintf(b->payload, sizeof b->payload, "payload:%s:%s", target, code);
	struct store_start *q = &b->q;
	q->app_id = app;
	q->public_id = b->public_id;
	q->channel = ch;
	q->target = target;
	otp_code_hash(&test_key, ch, target, code, q->code_hash);
	otp_lookup_hash(&test_key, ch, code, q->lookup_hash);
	q->max_attempts = 5;
	q->max_sends = 3;
	q->resend_cooldown = 30;
	q->consume = true;
	q->now = now;
	q->expire_at = now + LIFETIME;
	q->provider = PROVIDER;
	q->payload = (const uint8_t *)b->payload;
	q->payload_len = strlen(b->payload);
	q->request_id = "req-test";
	return q;
}

/* Keep a "sealed" copy of the code: opaque bytes to the store. */
static void start_seal(struct start_buf *b, const char *code)
{
	snprintf(b->sealed, sizeof b->sealed, "sealed:%s", code);
	b->q.sealed_code = (const uint8_t *)b->sealed;
	b->q.sealed_code_len = strlen(b->sealed);
}

static int vf_start(struct store *s, struct start_buf *b)
{
	return store_vf_start(s, &b->q, &b->res);
}

/* Start one with the defaults; the verification as written. */
static struct store_verification start_ok(struct store *s, const char *app, enum otp_channel ch,
                                          const char *target, const char *code, int64_t now)
{
	struct start_buf b;
	start_init(&b, app, ch, target, code, now);
	int rc = vf_start(s, &b);
	if (rc != 0)
		fail_msg("start %s %s: %s", target, code, otp_err_name(rc));
	return b.res.v;
}

static struct store_verification start_opts(struct store *s, struct start_buf *b)
{
	int rc = vf_start(s, b);
	if (rc != 0)
		fail_msg("start %s: %s", b->q.target, otp_err_name(rc));
	return b->res.v;
}

/* ---- checking ------------------------------------------------------------------------- */

static struct store_check ck_id(const char *app, const char *public_id, const char *code,
                                int64_t now)
{
	return (struct store_check){.by = STORE_CHECK_ID, .app_id = app, .public_id = public_id,
	                            .key = &test_key, .code = code, .now = now};
}

static struct store_check ck_target(const char *app, const char *target, unsigned mask,
                                    const char *code, int64_t now)
{
	return (struct store_check){.by = STORE_CHECK_TARGET, .app_id = app, .target = target,
	                            .channel_mask = mask, .key = &test_key, .code = code,
	                            .now = now};
}

static struct store_check ck_latest(const char *app, const char *target, unsigned mask,
                                    const char *code, int64_t now)
{
	struct store_check q = ck_target(app, target, mask, code, now);
	q.by = STORE_CHECK_LATEST;
	return q;
}

/* GET /target: the code's lookup hash finds its verification. */
static struct store_check ck_lookup(const char *app, enum otp_channel ch, const char *code,
                                    int64_t now)
{
	struct store_check q = {.by = STORE_CHECK_LOOKUP, .app_id = app, .channel = ch,
	                        .key = &test_key, .code = code, .now = now};
	otp_lookup_hash(&test_key, ch, code, q.lookup_hash);
	return q;
}

static struct store_check_result check_res(struct store *s, struct store_check q)
{
	struct store_check_result r;
	int rc = store_vf_check(s, &q, &r);
	if (rc != 0)
		fail_msg("check %s: %s", q.code, otp_err_name(rc));
	return r;
}

static bool check(struct store *s, struct store_check q)
{
	return check_res(s, q).ok;
}

/* ---- reading back --------------------------------------------------------------------- */

static struct store_verification get(struct store *s, const char *public_id)
{
	struct store_verification v;
	int rc = store_vf_get(s, NULL, public_id, &v);
	if (rc != 0)
		fail_msg("get %s: %s", public_id, otp_err_name(rc));
	return v;
}

static void assert_vf_equal(const struct store_verification *a, const struct store_verification *b)
{
	assert_int_equal(a->id, b->id);
	assert_string_equal(a->public_id, b->public_id);
	assert_string_equal(a->app_id, b->app_id);
	assert_int_equal(a->channel, b->channel);
	assert_string_equal(a->target, b->target);
	assert_int_equal(a->cur_channel, b->cur_channel);
	assert_string_equal(a->cur_target, b->cur_target);
	assert_int_equal(a->status, b->status);
	assert_int_equal(a->attempts, b->attempts);
	assert_int_equal(a->max_attempts, b->max_attempts);
	assert_int_equal(a->sends, b->sends);
	assert_int_equal(a->max_sends, b->max_sends);
	assert_int_equal(a->resend_cooldown, b->resend_cooldown);
	assert_int_equal(a->consume, b->consume);
	assert_int_equal(a->has_sealed_code, b->has_sealed_code);
	assert_int_equal(a->created_at, b->created_at);
	assert_int_equal(a->updated_at, b->updated_at);
	assert_int_equal(a->expire_at, b->expire_at);
	assert_int_equal(a->last_sent_at, b->last_sent_at);
	assert_string_equal(a->ip, b->ip);
	assert_string_equal(a->lang, b->lang);
	assert_string_equal(a->sender, b->sender);
	assert_string_equal(a->fallback, b->fallback);
}

/* Every verification matching f (limit set here), newest first; *n of them (malloc'd). */
static struct store_verification *vf_all(struct store *s, struct store_vf_filter f, size_t *n)
{
	struct store_verification *rows = calloc(STORE_LIST_MAX, sizeof *rows);
	assert_non_null(rows);
	f.limit = STORE_LIST_MAX;
	assert_int_equal(store_vf_list(s, &f, rows, n), 0);
	return rows;
}

static struct store_vf_filter vf_any(void)
{
	return (struct store_vf_filter){.channel = -1, .status = -1};
}

static size_t vf_count(struct store *s)
{
	size_t n = 0;
	free(vf_all(s, vf_any(), &n));
	return n;
}

static struct store_event_filter ev_any(void)
{
	return (struct store_event_filter){.channel = -1};
}

/* Events matching f, newest first (malloc'd), *n of them. */
static struct store_event *ev_all(struct store *s, struct store_event_filter f, size_t *n)
{
	struct store_event *rows = calloc(STORE_LIST_MAX, sizeof *rows);
	assert_non_null(rows);
	f.limit = STORE_LIST_MAX;
	assert_int_equal(store_events_list(s, &f, rows, n), 0);
	return rows;
}

/* How many events of `type` (0: any) the verification public_id (NULL: any) has. */
static size_t ev_count(struct store *s, const char *public_id, int type)
{
	struct store_event_filter f = ev_any();
	f.public_id = public_id;
	f.type = type;
	size_t n = 0;
	free(ev_all(s, f, &n));
	return n;
}

static size_t ev_total(struct store *s)
{
	return ev_count(s, NULL, 0);
}

/* The newest event of `type` of the verification. */
static struct store_event ev_last(struct store *s, const char *public_id, int type)
{
	struct store_event_filter f = ev_any();
	f.public_id = public_id;
	f.type = type;
	size_t n = 0;
	struct store_event *rows = ev_all(s, f, &n);
	if (n == 0)
		fail_msg("no %s event for %s", otp_event_name(type), public_id ? public_id : "-");
	struct store_event e = rows[0];
	free(rows);
	return e;
}

/* ---- rules and jobs -------------------------------------------------------------------- */

#define RULE(k, m, r) ((struct otp_limit_rule){.kind = (k), .minutes = (m), .rate = (r)})
#define TGT OTP_LIMIT_TARGET
#define IP OTP_LIMIT_IP

static void set_rules(struct store *s, const char *app, enum otp_channel ch, bool rep_target,
                      bool rep_ip, const struct otp_limit_rule *rules, size_t n)
{
	const bool kinds[2] = {rep_target, rep_ip};
	assert_int_equal(store_rules_replace(s, app, ch, kinds, rules, n), 0);
}

static void set_rule(struct store *s, const char *app, enum otp_channel ch,
                     struct otp_limit_rule r)
{
	set_rules(s, app, ch, true, true, &r, 1);
}

static struct store_outbox_counts job_counts(struct store *s)
{
	struct store_outbox_counts c;
	assert_int_equal(store_outbox_counts(s, &c), 0);
	return c;
}

/* Claim the one next due job at `now` (lease a minute); 0 when none. */
static int64_t claim_one(struct store *s, int64_t now)
{
	struct store_job job;
	size_t n = 0;
	assert_int_equal(store_outbox_claim(s, now, now + 60, &job, 1, &n), 0);
	if (n == 0)
		return 0;
	int64_t id = job.id;
	store_job_fini(&job);
	return id;
}

static struct store_job_info job_info(struct store *s, int64_t id)
{
	struct store_job_filter f = {.channel = -1, .before_id = id + 1, .limit = 1};
	struct store_job_info row;
	size_t n = 0;
	assert_int_equal(store_outbox_list(s, &f, &row, &n, NULL), 0);
	if (n != 1 || row.id != id)
		fail_msg("no job %lld", (long long)id);
	return row;
}

static struct store_purge purge_at(int64_t now)
{
	return (struct store_purge){.now = now, .batch = 100};
}

/* ---- lifecycle ------------------------------------------------------------------------- */

static void test_ping_and_name(void **state)
{
	struct fx *f = *state;
	assert_int_equal(store_ping(f->s), 0);
	assert_string_equal(store_name(f->s), f->pg ? "postgresql" : "sqlite");
}

static void test_reopen_keeps_data(void **state)
{
	struct fx *f = *state;
	struct store_verification v = start_ok(f->s, "", SMS, "79001112233", "1234", T0);
	set_rule(f->s, "", SMS, RULE(TGT, 10, 5));
	fx_reopen(f);
	fx_reopen(f); /* migrations already applied: nothing to do, nothing broken */
	struct store_verification back = get(f->s, v.public_id);
	assert_vf_equal(&v, &back);
	struct store_limits lim;
	assert_int_equal(store_rules_get(f->s, "", SMS, &lim), 0);
	assert_int_equal(lim.n, 1);
	assert_true(check(f->s, ck_id("", v.public_id, "1234", T0 + 1)));
}

/* ---- start ------------------------------------------------------------------------------ */

static void test_start_writes_verification_job_and_event(void **state)
{
	struct fx *f = *state;
	struct start_buf b;
	struct store_start *q = start_init(&b, "app1", EMAIL, "a@example.com", "A1B2", T0);
	start_seal(&b, "A1B2");
	q->ip = "2001:db8::1";
	q->max_attempts = 4;
	q->max_sends = 2;
	q->resend_cooldown = 45;
	q->consume = false;
	q->tmpl = "Your code is {code}";
	q->lang = "pt-BR";
	q->sender = "Acme";
	q->fallback = "sms,call";
	q->expire_at = T0 + 600;
	assert_int_equal(vf_start(f->s, &b), 0);
	const struct store_verification *v = &b.res.v;
	assert_false(b.res.replayed);
	assert_true(v->id > 0);
	assert_string_equal(v->public_id, b.public_id);
	assert_string_equal(v->app_id, "app1");
	assert_int_equal(v->channel, EMAIL);
	assert_string_equal(v->target, "a@example.com");
	assert_int_equal(v->cur_channel, EMAIL);
	assert_string_equal(v->cur_target, "a@example.com");
	assert_int_equal(v->status, OTP_VS_PENDING);
	assert_int_equal(v->attempts, 0);
	assert_int_equal(v->max_attempts, 4);
	assert_int_equal(v->sends, 1);
	assert_int_equal(v->max_sends, 2);
	assert_int_equal(v->resend_cooldown, 45);
	assert_false(v->consume);
	assert_true(v->has_sealed_code);
	assert_int_equal(v->created_at, T0);
	assert_int_equal(v->updated_at, T0);
	assert_int_equal(v->last_sent_at, T0);
	assert_int_equal(v->expire_at, T0 + 600);
	assert_string_equal(v->ip, "2001:db8::1");
	assert_string_equal(v->lang, "pt-BR");
	assert_string_equal(v->sender, "Acme");
	assert_string_equal(v->fallback, "sms,call");

	/* every field round-trips, by app and by any app; another app does not see it */
	struct store_verification back;
	assert_int_equal(store_vf_get(f->s, "app1", b.public_id, &back), 0);
	assert_vf_equal(v, &back);
	assert_int_equal(store_vf_get(f->s, NULL, b.public_id, &back), 0);
	assert_vf_equal(v, &back);
	assert_int_equal(store_vf_get(f->s, "", b.public_id, &back), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_vf_get(f->s, "app2", b.public_id, &back), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_vf_get(f->s, NULL, "otp_missing", &back), OTP_ERR_NOT_FOUND);

	/* its job: pending, claimable, payload intact, pointing at the verification */
	struct store_job_info info = job_info(f->s, b.res.job_id);
	assert_string_equal(info.state, STORE_JOB_PENDING);
	assert_int_equal(info.code_id, v->id);
	assert_int_equal(info.channel, EMAIL);
	assert_string_equal(info.provider, PROVIDER);
	assert_int_equal(info.next_at, T0);
	struct store_job job;
	size_t n = 0;
	assert_int_equal(store_outbox_claim(f->s, T0, T0 + 60, &job, 1, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(job.id, b.res.job_id);
	assert_int_equal(job.channel, EMAIL);
	assert_string_equal(job.provider, PROVIDER);
	assert_int_equal(job.payload_len, strlen(b.payload));
	assert_memory_equal(job.payload, b.payload, job.payload_len);
	assert_int_equal(job.attempts, 0);
	assert_int_equal(job.created_at, T0);
	assert_int_equal(job.lease_until, T0 + 60);
	store_job_fini(&job);

	/* its "created" event, and nothing else */
	assert_int_equal(ev_total(f->s), 1);
	struct store_event e = ev_last(f->s, b.public_id, OTP_EV_CREATED);
	assert_true(e.id > 0);
	assert_string_equal(e.app_id, "app1");
	assert_int_equal(e.channel, EMAIL);
	assert_string_equal(e.target, "a@example.com");
	assert_string_equal(e.ip, "2001:db8::1");
	assert_string_equal(e.detail, PROVIDER);
	assert_int_equal(e.created_at, T0);

	/* the material of a resend */
	uint8_t *sealed = NULL;
	size_t len = 0;
	char tmpl[STORE_TEMPLATE_MAX];
	assert_int_equal(store_vf_material(f->s, "app1", b.public_id, &sealed, &len, tmpl,
	                                   sizeof tmpl), 0);
	assert_non_null(sealed);
	assert_int_equal(len, strlen(b.sealed));
	assert_memory_equal(sealed, b.sealed, len);
	assert_string_equal(tmpl, "Your code is {code}");
	free(sealed);
}

static void test_start_optional_fields_absent(void **state)
{
	struct fx *f = *state;
	struct start_buf b;
	start_init(&b, "", SMS, "79001112233", "1234", T0);
	b.q.request_id = NULL;
	struct store_verification v = start_opts(f->s, &b);
	assert_string_equal(v.ip, "");
	assert_string_equal(v.lang, "");
	assert_string_equal(v.sender, "");
	assert_string_equal(v.fallback, "");
	assert_false(v.has_sealed_code);
	struct store_verification back = get(f->s, v.public_id);
	assert_vf_equal(&v, &back);
	uint8_t *sealed = (uint8_t *)"x";
	size_t len = 7;
	char tmpl[64] = "junk";
	assert_int_equal(store_vf_material(f->s, NULL, v.public_id, &sealed, &len, tmpl,
	                                   sizeof tmpl), 0);
	assert_null(sealed);
	assert_int_equal(len, 0);
	assert_string_equal(tmpl, "");
}

static void test_start_skip_records_skipped_job(void **state)
{
	struct fx *f = *state;
	struct start_buf b;
	start_init(&b, "", SMS, "79001112233", "1234", T0);
	b.q.skip = true;
	b.q.payload = NULL;
	b.q.payload_len = 0;
	struct store_verification v = start_opts(f->s, &b);
	assert_int_equal(v.status, OTP_VS_PENDING);
	assert_string_equal(job_info(f->s, b.res.job_id).state, STORE_JOB_SKIPPED);
	assert_int_equal(claim_one(f->s, T0 + 1), 0);
	struct store_outbox_counts c = job_counts(f->s);
	assert_int_equal(c.skipped, 1);
	assert_int_equal(c.pending, 0);
	assert_string_equal(ev_last(f->s, v.public_id, OTP_EV_CREATED).detail, "skipped");
	/* recorded, not delivered: the code still checks */
	assert_true(check(f->s, ck_target("", "79001112233", BIT(SMS), "1234", T0 + 1)));
}

/* A malformed start is OTP_ERR_INVALID on both backends and writes nothing. */
enum bad_start {
	BAD_EMPTY_TARGET, BAD_LONG_TARGET, BAD_UTF8_TARGET, BAD_CONTROL_TARGET, BAD_NULL_TARGET,
	BAD_APP_NULL, BAD_LONG_APP, BAD_PUBLIC_ID, BAD_CHANNEL, BAD_EMPTY_IP, BAD_LONG_IP,
	BAD_PROVIDER, BAD_NO_PAYLOAD, BAD_SEALED_LEN, BAD_LANG, BAD_TMPL_UTF8, BAD_IDEM_KEY,
	BAD_ATTEMPTS, BAD_SENDS, BAD_COOLDOWN, BAD_EXPIRED, BAD_COUNT
};

static void test_start_invalid_requests(void **state)
{
	struct fx *f = *state;
	char long_target[OTP_TARGET_MAX + 2], long_app[STORE_ID_MAX + 1], long_ip[STORE_IP_MAX + 2];
	memset(long_target, '7', sizeof long_target - 1);
	long_target[sizeof long_target - 1] = '\0';
	memset(long_app, 'a', sizeof long_app - 1);
	long_app[sizeof long_app - 1] = '\0';
	memset(long_ip, '1', sizeof long_ip - 1);
	long_ip[sizeof long_ip - 1] = '\0';
	for (int i = 0; i < BAD_COUNT; i++) {
		struct start_buf b;
		struct store_start *q = start_init(&b, "", SMS, "79001112233", "1234", T0);
		switch ((enum bad_start)i) {
		case BAD_EMPTY_TARGET: q->target = ""; break;
		case BAD_LONG_TARGET: q->target = long_target; break;
		case BAD_UTF8_TARGET: q->target = "7900\xff\xfe"; break;
		case BAD_CONTROL_TARGET: q->target = "7900\n111"; break;
		case BAD_NULL_TARGET: q->target = NULL; break;
		case BAD_APP_NULL: q->app_id = NULL; break;
		case BAD_LONG_APP: q->app_id = long_app; break;
		case BAD_PUBLIC_ID: q->public_id = ""; break;
		case BAD_CHANNEL: q->channel = (enum otp_channel)OTP_CH_COUNT; break;
		case BAD_EMPTY_IP: q->ip = ""; break;
		case BAD_LONG_IP: q->ip = long_ip; break;
		case BAD_PROVIDER: q->provider = ""; break;
		case BAD_NO_PAYLOAD: q->payload = NULL; break;
		case BAD_SEALED_LEN: q->sealed_code = (const uint8_t *)"x"; break;
		case BAD_LANG: q->lang = "a-very-long-language-tag"; break;
		case BAD_TMPL_UTF8: q->tmpl = "code \xc3"; break;
		case BAD_IDEM_KEY: q->idem_key = ""; break;
		case BAD_ATTEMPTS: q->max_attempts = -1; break;
		case BAD_SENDS: q->max_sends = 0; break;
		case BAD_COOLDOWN: q->resend_cooldown = -1; break;
		case BAD_EXPIRED: q->expire_at = q->now; break;
		case BAD_COUNT: break;
		}
		b.res.job_id = 99;
		int rc = vf_start(f->s, &b);
		if (rc != OTP_ERR_INVALID)
			fail_msg("bad start %d: %s, not invalid", i, otp_err_name(rc));
		assert_int_equal(b.res.job_id, 0);
	}
	assert_int_equal(store_vf_start(f->s, NULL, &(struct store_start_result){0}),
	                 OTP_ERR_INVALID);
	assert_int_equal(vf_count(f->s), 0);
	assert_int_equal(ev_total(f->s), 0);
	assert_int_equal(job_counts(f->s).pending, 0);

	/* the longest target is fine, on both */
	long_target[OTP_TARGET_MAX] = '\0';
	struct store_verification v = start_ok(f->s, "", SMS, long_target, "1234", T0);
	assert_string_equal(v.target, long_target);
	assert_true(check(f->s, ck_target("", long_target, BIT(SMS), "1234", T0 + 1)));
}

/* ---- start: send limits ----------------------------------------------------------------- */

static int start_rc(struct store *s, const char *app, enum otp_channel ch, const char *target,
                    const char *ip, int64_t now, struct store_start_result *res)
{
	struct start_buf b;
	start_init(&b, app, ch, target, "1234", now);
	b.q.ip = ip;
	int rc = vf_start(s, &b);
	if (res != NULL)
		*res = b.res;
	return rc;
}

static void test_limit_by_target(void **state)
{
	struct fx *f = *state;
	set_rule(f->s, "", SMS, RULE(TGT, 10, 2));
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", "10.0.0.1", T0, NULL), 0);
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", "10.0.0.2", T0 + 1, NULL), 0);
	struct store_start_result res;
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", "10.0.0.3", T0 + 2, &res),
	                 OTP_ERR_LIMIT);
	assert_int_equal(res.refused_by.kind, TGT);
	assert_int_equal(res.refused_by.minutes, 10);
	assert_int_equal(res.refused_by.rate, 2);
	assert_int_equal(res.job_id, 0);
	/* another target, another channel, another app: their own counts */
	assert_int_equal(start_rc(f->s, "", SMS, "79000000002", "10.0.0.3", T0 + 2, NULL), 0);
	assert_int_equal(start_rc(f->s, "", CALL, "79000000001", "10.0.0.3", T0 + 2, NULL), 0);
	assert_int_equal(start_rc(f->s, "a", SMS, "79000000001", "10.0.0.3", T0 + 2, NULL), 0);
}

static void test_limit_by_ip(void **state)
{
	struct fx *f = *state;
	set_rule(f->s, "", SMS, RULE(IP, 10, 2));
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", "10.0.0.1", T0, NULL), 0);
	assert_int_equal(start_rc(f->s, "", SMS, "79000000002", "10.0.0.1", T0, NULL), 0);
	struct store_start_result res;
	assert_int_equal(start_rc(f->s, "", SMS, "79000000003", "10.0.0.1", T0, &res),
	                 OTP_ERR_LIMIT);
	assert_int_equal(res.refused_by.kind, IP);
	assert_int_equal(start_rc(f->s, "", SMS, "79000000003", "10.0.0.2", T0, NULL), 0);
	assert_int_equal(start_rc(f->s, "", EMAIL, "x@example.com", "10.0.0.1", T0, NULL), 0);
	assert_int_equal(start_rc(f->s, "b", SMS, "79000000003", "10.0.0.1", T0, NULL), 0);
	/* a send without an ip is never refused by an ip rule, and counts for no ip */
	for (int i = 0; i < 4; i++)
		assert_int_equal(start_rc(f->s, "", SMS, "79000000004", NULL, T0, NULL), 0);
	assert_int_equal(start_rc(f->s, "", SMS, "79000000005", "10.0.0.2", T0, NULL), 0);
	assert_int_equal(start_rc(f->s, "", SMS, "79000000005", "10.0.0.2", T0, NULL),
	                 OTP_ERR_LIMIT);
}

static void test_limit_ip_rate_zero_spares_sends_without_ip(void **state)
{
	struct fx *f = *state;
	set_rule(f->s, "", SMS, RULE(IP, 60, 0));
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", NULL, T0, NULL), 0);
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", "10.0.0.1", T0, NULL),
	                 OTP_ERR_LIMIT);
}

static void test_limit_window_edges(void **state)
{
	struct fx *f = *state;
	set_rule(f->s, "", SMS, RULE(TGT, 10, 1));
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", NULL, T0, NULL), 0);
	/* the window is [now - 600, now]: a send at exactly now - 600 is inside */
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", NULL, T0 + 599, NULL),
	                 OTP_ERR_LIMIT);
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", NULL, T0 + 600, NULL),
	                 OTP_ERR_LIMIT);
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", NULL, T0 + 601, NULL), 0);
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", NULL, T0 + 602, NULL),
	                 OTP_ERR_LIMIT);
}

static void test_limit_first_refusing_rule_decides(void **state)
{
	struct fx *f = *state;
	const struct otp_limit_rule ip_first[] = {RULE(IP, 10, 1), RULE(TGT, 20, 1)};
	set_rules(f->s, "", SMS, true, true, ip_first, 2);
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", "10.0.0.1", T0, NULL), 0);
	struct store_start_result res;
	/* both refuse: the first set decides */
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", "10.0.0.1", T0, &res),
	                 OTP_ERR_LIMIT);
	assert_int_equal(res.refused_by.kind, IP);
	assert_int_equal(res.refused_by.minutes, 10);
	/* only the target rule refuses */
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", "10.0.0.2", T0, &res),
	                 OTP_ERR_LIMIT);
	assert_int_equal(res.refused_by.kind, TGT);
	assert_int_equal(res.refused_by.minutes, 20);
	/* the other order */
	const struct otp_limit_rule tgt_first[] = {RULE(TGT, 20, 1), RULE(IP, 10, 1)};
	set_rules(f->s, "", SMS, true, true, tgt_first, 2);
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", "10.0.0.1", T0, &res),
	                 OTP_ERR_LIMIT);
	assert_int_equal(res.refused_by.kind, TGT);
	/* the refusals were recorded with the reason of the rule that decided */
	struct store_event_filter ef = ev_any();
	ef.type = OTP_EV_REFUSED;
	size_t n = 0;
	struct store_event *ev = ev_all(f->s, ef, &n);
	assert_int_equal(n, 3);
	assert_string_equal(ev[0].detail, "target_limit");
	assert_string_equal(ev[1].detail, "target_limit");
	assert_string_equal(ev[2].detail, "ip_limit");
	free(ev);
}

static void test_limit_rate_zero_forbids_and_refusal_writes_only_an_event(void **state)
{
	struct fx *f = *state;
	set_rule(f->s, "", SMS, RULE(TGT, 5, 0));
	struct start_buf b;
	start_init(&b, "", SMS, "79000000001", "1234", T0);
	b.q.ip = "10.0.0.9";
	start_seal(&b, "1234");
	assert_int_equal(vf_start(f->s, &b), OTP_ERR_LIMIT);
	assert_int_equal(b.res.refused_by.rate, 0);
	assert_int_equal(vf_count(f->s), 0);
	struct store_outbox_counts c = job_counts(f->s);
	assert_int_equal(c.pending + c.skipped, 0);
	assert_int_equal(ev_total(f->s), 1);
	struct store_event e = ev_last(f->s, NULL, OTP_EV_REFUSED);
	assert_string_equal(e.public_id, "");
	assert_string_equal(e.app_id, "");
	assert_int_equal(e.channel, SMS);
	assert_string_equal(e.target, "79000000001");
	assert_string_equal(e.ip, "10.0.0.9");
	assert_string_equal(e.detail, "target_limit");
	assert_int_equal(e.created_at, T0);
	assert_int_equal(store_vf_get(f->s, NULL, b.public_id, &b.res.v), OTP_ERR_NOT_FOUND);
}

static void test_limit_refused_sends_do_not_count(void **state)
{
	struct fx *f = *state;
	set_rule(f->s, "", SMS, RULE(TGT, 10, 1));
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", "10.0.0.1", T0, NULL), 0);
	for (int i = 1; i <= 5; i++)
		assert_int_equal(start_rc(f->s, "", SMS, "79000000001", "10.0.0.1", T0 + 100 * i,
		                          NULL), OTP_ERR_LIMIT);
	/* the first send left the window; the refusals inside it never counted */
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", "10.0.0.1", T0 + 601, NULL), 0);
	assert_int_equal(vf_count(f->s), 2);
	assert_int_equal(job_counts(f->s).pending, 2);
	assert_int_equal(ev_count(f->s, NULL, OTP_EV_CREATED), 2);
	assert_int_equal(ev_count(f->s, NULL, OTP_EV_REFUSED), 5);
}

static void test_start_require_ip_follows_ip_rules(void **state)
{
	struct fx *f = *state;
	struct start_buf b;
	/* no ip rules: no ip needed */
	start_init(&b, "", SMS, "79000000001", "1234", T0);
	b.q.require_ip = true;
	assert_int_equal(vf_start(f->s, &b), 0);
	/* a target rule does not make the ip required */
	set_rule(f->s, "", SMS, RULE(TGT, 10, 100));
	start_init(&b, "", SMS, "79000000001", "1234", T0);
	b.q.require_ip = true;
	assert_int_equal(vf_start(f->s, &b), 0);
	/* an ip rule does */
	set_rules(f->s, "", SMS, false, true, &RULE(IP, 10, 100), 1);
	size_t events = ev_total(f->s);
	start_init(&b, "", SMS, "79000000001", "1234", T0);
	b.q.require_ip = true;
	assert_int_equal(vf_start(f->s, &b), OTP_ERR_INVALID);
	assert_true(b.res.ip_required);
	assert_int_equal(ev_total(f->s), events);
	assert_int_equal(vf_count(f->s), 2);
	/* with an ip it goes; without require_ip it goes too */
	start_init(&b, "", SMS, "79000000001", "1234", T0);
	b.q.require_ip = true;
	b.q.ip = "10.0.0.1";
	assert_int_equal(vf_start(f->s, &b), 0);
	assert_false(b.res.ip_required);
	start_init(&b, "", SMS, "79000000001", "1234", T0);
	assert_int_equal(vf_start(f->s, &b), 0);
	/* the ip rules of another channel or app do not count */
	start_init(&b, "", EMAIL, "x@example.com", "1234", T0);
	b.q.require_ip = true;
	assert_int_equal(vf_start(f->s, &b), 0);
	start_init(&b, "a", SMS, "79000000001", "1234", T0);
	b.q.require_ip = true;
	assert_int_equal(vf_start(f->s, &b), 0);
}

static void test_limits_are_per_app(void **state)
{
	struct fx *f = *state;
	set_rule(f->s, "a", SMS, RULE(TGT, 10, 1));
	set_rule(f->s, "b", SMS, RULE(TGT, 10, 1));
	assert_int_equal(start_rc(f->s, "a", SMS, "79000000001", NULL, T0, NULL), 0);
	assert_int_equal(start_rc(f->s, "a", SMS, "79000000001", NULL, T0, NULL), OTP_ERR_LIMIT);
	/* a's rules and sends do not touch "" (no rules) nor b (its own count) */
	for (int i = 0; i < 3; i++)
		assert_int_equal(start_rc(f->s, "", SMS, "79000000001", NULL, T0, NULL), 0);
	assert_int_equal(start_rc(f->s, "b", SMS, "79000000001", NULL, T0, NULL), 0);
	assert_int_equal(start_rc(f->s, "b", SMS, "79000000001", NULL, T0, NULL), OTP_ERR_LIMIT);
	/* and the codes of one app are not checked by another */
	struct store_verification v = start_ok(f->s, "c", SMS, "79000000009", "4321", T0);
	struct store_check_result r = check_res(f->s, ck_target("", "79000000009", BIT(SMS),
	                                                        "4321", T0 + 1));
	assert_false(r.found);
	assert_false(r.ok);
	assert_int_equal(get(f->s, v.public_id).attempts, 0);
	assert_true(check(f->s, ck_target("c", "79000000009", BIT(SMS), "4321", T0 + 1)));
}

/* ---- start: idempotency ----------------------------------------------------------------- */

static void idem_init(struct start_buf *b, const char *app, const char *key, uint8_t fp,
                      int64_t now, int64_t since)
{
	start_init(b, app, SMS, "79000000001", "1234", now);
	b->q.idem_key = key;
	memset(b->q.idem_fingerprint, fp, OTP_HASH_LEN);
	b->q.idem_since = since;
}

static void test_start_idempotency(void **state)
{
	struct fx *f = *state;
	set_rule(f->s, "a", SMS, RULE(TGT, 60, 1));
	struct start_buf first, b;
	idem_init(&first, "a", "key-1", 0x11, T0, T0 - 3600);
	assert_int_equal(vf_start(f->s, &first), 0);
	assert_false(first.res.replayed);

	/* the same key and fingerprint: the first answer again, nothing written (not even a
	 * refusal by the rule the first send used up) */
	idem_init(&b, "a", "key-1", 0x11, T0 + 5, T0 + 5 - 3600);
	assert_int_equal(vf_start(f->s, &b), 0);
	assert_true(b.res.replayed);
	assert_vf_equal(&b.res.v, &first.res.v);
	assert_int_equal(vf_count(f->s), 1);
	assert_int_equal(job_counts(f->s).pending, 1);
	assert_int_equal(ev_total(f->s), 1);

	/* another fingerprint: a conflict, nothing written */
	idem_init(&b, "a", "key-1", 0x22, T0 + 6, T0 + 6 - 3600);
	assert_int_equal(vf_start(f->s, &b), OTP_ERR_CONFLICT);
	assert_false(b.res.replayed);
	assert_int_equal(vf_count(f->s), 1);
	assert_int_equal(ev_total(f->s), 1);

	/* the same key in another app is another key */
	idem_init(&b, "b", "key-1", 0x22, T0 + 7, T0 + 7 - 3600);
	assert_int_equal(vf_start(f->s, &b), 0);
	assert_false(b.res.replayed);
	assert_string_equal(b.res.v.public_id, b.public_id);
	assert_int_equal(vf_count(f->s), 2);

	/* a key older than idem_since is forgotten: a new verification (and the limit
	 * applies to it) */
	idem_init(&b, "a", "key-1", 0x11, T0 + 3601, T0 + 1);
	assert_int_equal(vf_start(f->s, &b), 0);
	assert_false(b.res.replayed);
	assert_string_equal(b.res.v.public_id, b.public_id);
	idem_init(&b, "a", "key-1", 0x11, T0 + 3602, T0 + 2);
	assert_int_equal(vf_start(f->s, &b), 0);
	assert_true(b.res.replayed);
	assert_int_equal(vf_count(f->s), 3);
	idem_init(&b, "a", "key-2", 0x11, T0 + 3603, T0 + 3);
	assert_int_equal(vf_start(f->s, &b), OTP_ERR_LIMIT);
}

/* ---- check ------------------------------------------------------------------------------ */

static void test_check_by_id(void **state)
{
	struct fx *f = *state;
	struct start_buf b;
	start_init(&b, "a", SMS, "79000000001", "1234", T0);
	start_seal(&b, "1234");
	struct store_verification v = start_opts(f->s, &b);
	struct store_check q = ck_id("a", v.public_id, "1234", T0 + 10);
	q.ip = "10.0.0.5";
	struct store_check_result r = check_res(f->s, q);
	assert_true(r.ok);
	assert_true(r.found);
	assert_string_equal(r.v.public_id, v.public_id);
	assert_int_equal(r.v.status, OTP_VS_APPROVED);
	assert_int_equal(r.v.updated_at, T0 + 10);
	struct store_verification back = get(f->s, v.public_id);
	assert_int_equal(back.status, OTP_VS_APPROVED);
	assert_int_equal(back.updated_at, T0 + 10);
	assert_false(back.has_sealed_code); /* used up: its sealed copy goes */
	struct store_event e = ev_last(f->s, v.public_id, OTP_EV_APPROVED);
	assert_string_equal(e.app_id, "a");
	assert_string_equal(e.ip, "10.0.0.5");
	assert_int_equal(e.channel, SMS);
	assert_string_equal(e.target, "79000000001");
	assert_int_equal(e.created_at, T0 + 10);

	/* no longer live: found, not ok, nothing counted nor recorded */
	size_t events = ev_total(f->s);
	r = check_res(f->s, ck_id("a", v.public_id, "1234", T0 + 11));
	assert_true(r.found);
	assert_false(r.ok);
	assert_int_equal(r.v.status, OTP_VS_APPROVED);
	r = check_res(f->s, ck_id("a", v.public_id, "9999", T0 + 12));
	assert_true(r.found);
	assert_false(r.ok);
	assert_int_equal(get(f->s, v.public_id).attempts, 0);
	assert_int_equal(ev_total(f->s), events);

	/* unknown, or another app's: not found; NULL app: any app */
	r = check_res(f->s, ck_id("a", "otp_nope", "1234", T0 + 12));
	assert_false(r.found);
	assert_false(r.ok);
	struct store_verification w = start_ok(f->s, "a", SMS, "79000000002", "5555", T0);
	r = check_res(f->s, ck_id("b", w.public_id, "5555", T0 + 1));
	assert_false(r.found);
	assert_false(r.ok);
	r = check_res(f->s, ck_id("", w.public_id, "5555", T0 + 1));
	assert_false(r.found);
	assert_int_equal(get(f->s, w.public_id).attempts, 0);
	assert_true(check(f->s, ck_id(NULL, w.public_id, "5555", T0 + 1)));
}

static void test_check_by_id_wrong_code_events(void **state)
{
	struct fx *f = *state;
	struct start_buf b;
	start_init(&b, "a", SMS, "79000000001", "1234", T0);
	b.q.max_attempts = 2;
	start_seal(&b, "1234");
	struct store_verification v = start_opts(f->s, &b);
	struct store_check q = ck_id("a", v.public_id, "0000", T0 + 1);
	q.ip = "10.0.0.7";
	struct store_check_result r = check_res(f->s, q);
	assert_true(r.found);
	assert_false(r.ok);
	assert_int_equal(r.v.attempts, 1);
	assert_int_equal(r.v.status, OTP_VS_PENDING);
	struct store_event e = ev_last(f->s, v.public_id, OTP_EV_CHECK_FAILED);
	assert_string_equal(e.app_id, "a");
	assert_string_equal(e.ip, "10.0.0.7");
	assert_int_equal(e.created_at, T0 + 1);
	q.now = T0 + 2;
	r = check_res(f->s, q);
	assert_false(r.ok);
	assert_int_equal(r.v.attempts, 2);
	assert_int_equal(r.v.status, OTP_VS_MAX_ATTEMPTS);
	assert_int_equal(ev_count(f->s, v.public_id, OTP_EV_CHECK_FAILED), 1);
	assert_int_equal(ev_count(f->s, v.public_id, OTP_EV_MAX_ATTEMPTS), 1);
	assert_int_equal(ev_last(f->s, v.public_id, OTP_EV_MAX_ATTEMPTS).created_at, T0 + 2);
	struct store_verification back = get(f->s, v.public_id);
	assert_int_equal(back.status, OTP_VS_MAX_ATTEMPTS);
	assert_int_equal(back.attempts, 2);
	assert_false(back.has_sealed_code);
	/* dead: the right code does not revive it */
	r = check_res(f->s, ck_id("a", v.public_id, "1234", T0 + 3));
	assert_true(r.found);
	assert_false(r.ok);
	assert_int_equal(get(f->s, v.public_id).attempts, 2);
}

static void test_check_by_target_any_live_code_matches(void **state)
{
	struct fx *f = *state;
	struct store_verification a = start_ok(f->s, "", SMS, "79000000001", "1111", T0);
	struct store_verification b = start_ok(f->s, "", SMS, "79000000001", "2222", T0 + 1);
	struct store_verification c = start_ok(f->s, "", CALL, "79000000001", "3333", T0 + 2);
	const unsigned smscall = BIT(SMS) | BIT(CALL);
	struct store_check_result r = check_res(f->s, ck_target("", "79000000001", smscall, "1111",
	                                                        T0 + 3));
	assert_true(r.ok);
	assert_string_equal(r.v.public_id, a.public_id);
	r = check_res(f->s, ck_target("", "79000000001", smscall, "3333", T0 + 3));
	assert_true(r.ok);
	assert_string_equal(r.v.public_id, c.public_id);
	/* the mask: an sms-only check does not see the call code */
	struct store_verification d = start_ok(f->s, "", CALL, "79000000001", "4444", T0 + 3);
	r = check_res(f->s, ck_target("", "79000000001", BIT(SMS), "4444", T0 + 4));
	assert_false(r.ok);
	assert_true(r.found); /* b is live */
	assert_string_equal(r.v.public_id, b.public_id);
	assert_int_equal(r.v.attempts, 1);
	assert_int_equal(get(f->s, d.public_id).attempts, 0);
	assert_true(check(f->s, ck_target("", "79000000001", BIT(CALL), "4444", T0 + 5)));
	assert_true(check(f->s, ck_target("", "79000000001", ALL_CHANNELS, "2222", T0 + 5)));
	/* nothing live left */
	r = check_res(f->s, ck_target("", "79000000001", ALL_CHANNELS, "2222", T0 + 6));
	assert_false(r.found);
	assert_false(r.ok);
	/* another target */
	r = check_res(f->s, ck_target("", "79000000002", ALL_CHANNELS, "1111", T0 + 6));
	assert_false(r.found);
}

static void test_check_latest_compares_the_newest_only(void **state)
{
	struct fx *f = *state;
	struct store_verification old = start_ok(f->s, "a", SMS, "79000000001", "1111", T0);
	struct store_verification neu = start_ok(f->s, "a", SMS, "79000000001", "2222", T0 + 1);
	struct store_check_result r = check_res(f->s, ck_latest("a", "79000000001", BIT(SMS),
	                                                        "1111", T0 + 2));
	assert_false(r.ok);
	assert_true(r.found);
	assert_string_equal(r.v.public_id, neu.public_id);
	assert_int_equal(r.v.attempts, 1);
	assert_int_equal(get(f->s, old.public_id).attempts, 0);
	assert_int_equal(get(f->s, neu.public_id).attempts, 1);
	r = check_res(f->s, ck_latest("a", "79000000001", BIT(SMS), "2222", T0 + 3));
	assert_true(r.ok);
	assert_string_equal(r.v.public_id, neu.public_id);
	/* consumed: the older one is the newest live now */
	r = check_res(f->s, ck_latest("a", "79000000001", BIT(SMS), "1111", T0 + 4));
	assert_true(r.ok);
	assert_string_equal(r.v.public_id, old.public_id);
}

static void test_check_by_lookup(void **state)
{
	struct fx *f = *state;
	start_ok(f->s, "", EMAIL, "a@example.com", "777111", T0);
	struct store_verification b = start_ok(f->s, "", EMAIL, "b@example.com", "777111", T0 + 1);
	start_ok(f->s, "", SMS, "79000000001", "888222", T0 + 1);
	/* the newest live code with that lookup hash */
	struct store_check_result r = check_res(f->s, ck_lookup("", EMAIL, "777111", T0 + 2));
	assert_true(r.ok);
	assert_true(r.found);
	assert_string_equal(r.v.public_id, b.public_id);
	assert_string_equal(r.v.target, "b@example.com");
	/* another channel, an unknown code: nothing */
	r = check_res(f->s, ck_lookup("", SMS, "777111", T0 + 2));
	assert_false(r.found);
	/* finding a code by its value alone is compat's only: an app may not ask */
	struct store_check qx = ck_lookup("x", SMS, "888222", T0 + 2);
	assert_int_equal(store_vf_check(f->s, &qx, &r), OTP_ERR_INVALID);
	r = check_res(f->s, ck_lookup("", SMS, "000000", T0 + 2));
	assert_false(r.found);
	assert_false(r.ok);
	assert_true(check(f->s, ck_lookup("", SMS, "888222", T0 + 2)));
	/* the older one is found once the newer is used up */
	r = check_res(f->s, ck_lookup("", EMAIL, "777111", T0 + 3));
	assert_true(r.ok);
	assert_string_equal(r.v.target, "a@example.com");
}

static void test_check_expiry(void **state)
{
	struct fx *f = *state;
	struct store_verification v = start_ok(f->s, "", SMS, "79000000001", "1234", T0);
	struct store_verification w = start_ok(f->s, "", SMS, "79000000002", "1234", T0);
	assert_true(check(f->s, ck_target("", "79000000001", BIT(SMS), "1234",
	                                  T0 + LIFETIME - 1)));
	struct store_check_result r = check_res(f->s, ck_target("", "79000000002", BIT(SMS),
	                                                        "1234", T0 + LIFETIME));
	assert_false(r.ok);
	assert_false(r.found);
	r = check_res(f->s, ck_id("", w.public_id, "1234", T0 + LIFETIME));
	assert_true(r.found);
	assert_false(r.ok);
	assert_int_equal(otp_vstatus_at(r.v.status, r.v.expire_at, T0 + LIFETIME), OTP_VS_EXPIRED);
	assert_int_equal(get(f->s, w.public_id).attempts, 0);
	assert_int_equal(get(f->s, v.public_id).status, OTP_VS_APPROVED);
	assert_int_equal(ev_count(f->s, w.public_id, 0), 1);
}

static void test_check_wrong_code_counts_against_every_candidate(void **state)
{
	struct fx *f = *state;
	struct start_buf b;
	start_init(&b, "", SMS, "79000000001", "1111", T0);
	b.q.max_attempts = 2;
	struct store_verification a = start_opts(f->s, &b);
	start_init(&b, "", SMS, "79000000001", "2222", T0 + 1);
	b.q.max_attempts = 4;
	struct store_verification c = start_opts(f->s, &b);
	const struct store_check q = ck_target("", "79000000001", BIT(SMS), "0000", T0 + 2);
	struct store_check_result r = check_res(f->s, q);
	assert_false(r.ok);
	assert_true(r.found);
	assert_string_equal(r.v.public_id, c.public_id); /* the newest */
	assert_int_equal(r.v.attempts, 1);
	assert_int_equal(get(f->s, a.public_id).attempts, 1);
	assert_false(check(f->s, q));
	/* a reached its max; c has two left */
	struct store_verification av = get(f->s, a.public_id), cv = get(f->s, c.public_id);
	assert_int_equal(av.status, OTP_VS_MAX_ATTEMPTS);
	assert_int_equal(av.attempts, 2);
	assert_int_equal(cv.status, OTP_VS_PENDING);
	assert_int_equal(cv.attempts, 2);
	assert_int_equal(ev_count(f->s, a.public_id, OTP_EV_CHECK_FAILED), 1);
	assert_int_equal(ev_count(f->s, a.public_id, OTP_EV_MAX_ATTEMPTS), 1);
	assert_int_equal(ev_count(f->s, c.public_id, OTP_EV_CHECK_FAILED), 2);
	assert_int_equal(ev_count(f->s, c.public_id, OTP_EV_MAX_ATTEMPTS), 0);
	/* the dead one is no candidate any more: its code fails and costs c an attempt */
	assert_false(check(f->s, ck_target("", "79000000001", BIT(SMS), "1111", T0 + 3)));
	cv = get(f->s, c.public_id);
	assert_int_equal(cv.attempts, 3);
	assert_int_equal(get(f->s, a.public_id).attempts, 2);
	assert_true(check(f->s, ck_target("", "79000000001", BIT(SMS), "2222", T0 + 4)));
}

static void test_check_new_verification_does_not_refresh_older_attempts(void **state)
{
	struct fx *f = *state;
	struct start_buf b;
	start_init(&b, "", SMS, "79000000001", "1111", T0);
	b.q.max_attempts = 3;
	struct store_verification a = start_opts(f->s, &b);
	const struct store_check wrong = ck_target("", "79000000001", BIT(SMS), "0000", T0 + 1);
	assert_false(check(f->s, wrong));
	assert_false(check(f->s, wrong));
	/* a new code for the same target leaves the old one's count alone */
	start_init(&b, "", SMS, "79000000001", "2222", T0 + 2);
	b.q.max_attempts = 3;
	struct store_verification c = start_opts(f->s, &b);
	assert_int_equal(get(f->s, a.public_id).attempts, 2);
	assert_int_equal(c.attempts, 0);
	assert_false(check(f->s, wrong));
	assert_int_equal(get(f->s, a.public_id).status, OTP_VS_MAX_ATTEMPTS);
	assert_int_equal(get(f->s, c.public_id).attempts, 1);
	assert_false(check(f->s, ck_target("", "79000000001", BIT(SMS), "1111", T0 + 3)));
	assert_true(check(f->s, ck_target("", "79000000001", BIT(SMS), "2222", T0 + 3)));
}

static void test_check_masks_share_one_budget(void **state)
{
	struct fx *f = *state;
	struct start_buf b;
	start_init(&b, "", CALL, "79000000001", "1111", T0);
	b.q.max_attempts = 3;
	struct store_verification v = start_opts(f->s, &b);
	const unsigned smscall = BIT(SMS) | BIT(CALL);
	assert_false(check(f->s, ck_target("", "79000000001", smscall, "0000", T0 + 1)));
	assert_false(check(f->s, ck_target("", "79000000001", BIT(CALL), "0000", T0 + 2)));
	assert_int_equal(get(f->s, v.public_id).attempts, 2);
	assert_false(check(f->s, ck_latest("", "79000000001", smscall, "0000", T0 + 3)));
	assert_int_equal(get(f->s, v.public_id).status, OTP_VS_MAX_ATTEMPTS);
	assert_false(check(f->s, ck_target("", "79000000001", BIT(CALL), "1111", T0 + 4)));
	assert_false(check(f->s, ck_id("", v.public_id, "1111", T0 + 4)));
}

static void test_check_unlimited_attempts(void **state)
{
	struct fx *f = *state;
	struct start_buf b;
	start_init(&b, "", SMS, "79000000001", "1111", T0);
	b.q.max_attempts = 0;
	struct store_verification v = start_opts(f->s, &b);
	for (int i = 0; i < 20; i++)
		assert_false(check(f->s, ck_id("", v.public_id, "0000", T0 + 1 + i)));
	struct store_verification back = get(f->s, v.public_id);
	assert_int_equal(back.attempts, 20);
	assert_int_equal(back.status, OTP_VS_PENDING);
	assert_int_equal(ev_count(f->s, v.public_id, OTP_EV_MAX_ATTEMPTS), 0);
	assert_true(check(f->s, ck_id("", v.public_id, "1111", T0 + 30)));
}

static void test_check_consume_uses_the_code_up(void **state)
{
	struct fx *f = *state;
	struct store_verification v = start_ok(f->s, "", SMS, "79000000001", "1234", T0);
	assert_true(v.consume);
	const struct store_check q = ck_target("", "79000000001", BIT(SMS), "1234", T0 + 1);
	assert_true(check(f->s, q));
	struct store_check_result r = check_res(f->s, q);
	assert_false(r.ok);
	assert_false(r.found);
	assert_int_equal(ev_count(f->s, v.public_id, OTP_EV_APPROVED), 1);
}

static void test_check_reusable_code_keeps_answering_and_writes_nothing(void **state)
{
	struct fx *f = *state;
	struct start_buf b;
	start_init(&b, "", SMS, "79000000001", "1234", T0);
	b.q.consume = false;
	start_seal(&b, "1234");
	struct store_verification v = start_opts(f->s, &b);
	assert_true(check(f->s, ck_target("", "79000000001", BIT(SMS), "1234", T0 + 1)));
	struct store_verification after = get(f->s, v.public_id);
	assert_int_equal(after.status, OTP_VS_APPROVED);
	assert_int_equal(after.updated_at, T0 + 1);
	assert_true(after.has_sealed_code); /* still usable: /password may read it */
	size_t events = ev_total(f->s);
	for (int i = 2; i < 5; i++) {
		struct store_check_result r = check_res(f->s, ck_target("", "79000000001", BIT(SMS),
		                                                        "1234", T0 + i));
		assert_true(r.ok);
		assert_int_equal(r.v.status, OTP_VS_APPROVED);
	}
	assert_true(check(f->s, ck_id("", v.public_id, "1234", T0 + 5)));
	assert_true(check(f->s, ck_lookup("", SMS, "1234", T0 + 5)));
	struct store_verification again = get(f->s, v.public_id);
	assert_vf_equal(&after, &again);
	assert_int_equal(ev_total(f->s), events);
	assert_int_equal(ev_count(f->s, v.public_id, OTP_EV_APPROVED), 1);
	/* until it expires */
	assert_false(check(f->s, ck_id("", v.public_id, "1234", T0 + LIFETIME)));
}

/* Invalid requests: OTP_ERR_INVALID on both backends alike, nothing counted. */
enum bad_check {
	BADC_EMPTY_TARGET, BADC_LONG_TARGET, BADC_UTF8_TARGET, BADC_NULL_TARGET, BADC_MASK_ZERO,
	BADC_MASK_HIGH, BADC_NO_KEY, BADC_NO_CODE, BADC_EMPTY_CODE, BADC_LONG_CODE, BADC_APP_NULL,
	BADC_ID_EMPTY, BADC_ID_NULL, BADC_LOOKUP_CHANNEL, BADC_BY, BADC_IP_UTF8, BADC_COUNT
};

static void test_check_invalid_requests(void **state)
{
	struct fx *f = *state;
	struct store_verification v = start_ok(f->s, "", SMS, "79000000001", "1234", T0);
	char long_target[OTP_TARGET_MAX + 2], long_code[OTP_CODE_MAX + 2];
	memset(long_target, '7', sizeof long_target - 1);
	long_target[sizeof long_target - 1] = '\0';
	memset(long_code, '1', sizeof long_code - 1);
	long_code[sizeof long_code - 1] = '\0';
	for (int i = 0; i < BADC_COUNT; i++) {
		struct store_check q = ck_target("", "79000000001", BIT(SMS), "0000", T0 + 1);
		switch ((enum bad_check)i) {
		case BADC_EMPTY_TARGET: q.target = ""; break;
		case BADC_LONG_TARGET: q.target = long_target; break;
		case BADC_UTF8_TARGET: q.target = "7900\xc0\xaf"; break;
		case BADC_NULL_TARGET: q.target = NULL; break;
		case BADC_MASK_ZERO: q.channel_mask = 0; break;
		case BADC_MASK_HIGH: q.channel_mask = BIT(SMS) | BIT(OTP_CH_COUNT); break;
		case BADC_NO_KEY: q.key = NULL; break;
		case BADC_NO_CODE: q.code = NULL; break;
		case BADC_EMPTY_CODE: q.code = ""; break;
		case BADC_LONG_CODE: q.code = long_code; break;
		case BADC_APP_NULL: q.app_id = NULL; break;
		case BADC_ID_EMPTY: q = ck_id("", "", "0000", T0 + 1); break;
		case BADC_ID_NULL: q = ck_id("", NULL, "0000", T0 + 1); break;
		case BADC_LOOKUP_CHANNEL:
			q = ck_lookup("", SMS, "0000", T0 + 1);
			q.channel = (enum otp_channel)OTP_CH_COUNT;
			break;
		case BADC_BY: q.by = (enum store_check_by)42; break;
		case BADC_IP_UTF8: q.ip = "10.0.0.1\xff"; break;
		case BADC_COUNT: break;
		}
		struct store_check_result r;
		memset(&r, 0xab, sizeof r);
		int rc = store_vf_check(f->s, &q, &r);
		if (rc != OTP_ERR_INVALID)
			fail_msg("bad check %d: %s, not invalid", i, otp_err_name(rc));
		assert_false(r.ok);
		assert_false(r.found);
	}
	assert_int_equal(store_vf_check(f->s, NULL, &(struct store_check_result){0}),
	                 OTP_ERR_INVALID);
	assert_int_equal(get(f->s, v.public_id).attempts, 0);
	assert_int_equal(ev_total(f->s), 1);
	/* the longest code is a code (and a wrong one) */
	long_code[OTP_CODE_MAX] = '\0';
	assert_false(check(f->s, ck_target("", "79000000001", BIT(SMS), long_code, T0 + 1)));
	assert_int_equal(get(f->s, v.public_id).attempts, 1);
}

/* Both backends compare the same STORE_CANDIDATES_MAX newest live codes (SQLite used to
 * compare up to 1024, PostgreSQL 64). */
static void test_check_compares_the_newest_candidates_max(void **state)
{
	struct fx *f = *state;
	enum { N = STORE_CANDIDATES_MAX + 8 };
	char public_id[N][STORE_ID_MAX];
	for (int i = 0; i < N; i++) {
		char code[16];
		snprintf(code, sizeof code, "%04d", 1000 + i);
		struct store_verification v = start_ok(f->s, "", SMS, "79000000001", code, T0 + i);
		snprintf(public_id[i], sizeof public_id[i], "%s", v.public_id);
	}
	assert_false(check(f->s, ck_target("", "79000000001", BIT(SMS), "0000", T0 + N)));
	for (int i = 0; i < N; i++) {
		int expect = i >= N - STORE_CANDIDATES_MAX ? 1 : 0;
		if (get(f->s, public_id[i]).attempts != expect)
			fail_msg("verification %d of %d: attempts %d, not %d", i, N,
			         get(f->s, public_id[i]).attempts, expect);
	}
	/* the code of one past the newest 32 is not compared: wrong, and counted */
	char code[16];
	snprintf(code, sizeof code, "%04d", 1000 + N - STORE_CANDIDATES_MAX - 1);
	assert_false(check(f->s, ck_target("", "79000000001", BIT(SMS), code, T0 + N)));
	assert_int_equal(get(f->s, public_id[N - STORE_CANDIDATES_MAX - 1]).attempts, 0);
	assert_int_equal(get(f->s, public_id[N - 1]).attempts, 2);
	/* the oldest of the newest 32 is */
	snprintf(code, sizeof code, "%04d", 1000 + N - STORE_CANDIDATES_MAX);
	assert_true(check(f->s, ck_target("", "79000000001", BIT(SMS), code, T0 + N)));
	assert_int_equal(get(f->s, public_id[N - STORE_CANDIDATES_MAX]).status, OTP_VS_APPROVED);
}

/* ---- resend ----------------------------------------------------------------------------- */

static const char resend_payload[] = "payload:resend";

static struct store_resend rs_req(const char *app, const char *public_id, int expect_sends,
                                  enum otp_channel ch, const char *target, int64_t now)
{
	return (struct store_resend){
		.app_id = app, .public_id = public_id, .expect_sends = expect_sends, .channel = ch,
		.target = target, .now = now, .provider = "smtp",
		.payload = (const uint8_t *)resend_payload, .payload_len = sizeof resend_payload - 1,
		.request_id = "req-resend",
	};
}

static int resend(struct store *s, struct store_resend q, struct store_resend_result *res)
{
	struct store_resend_result local;
	return store_vf_resend(s, &q, res ? res : &local);
}

static void test_resend_queues_another_message(void **state)
{
	struct fx *f = *state;
	set_rule(f->s, "a", EMAIL, RULE(TGT, 10, 2));
	struct start_buf b;
	start_init(&b, "a", SMS, "79000000001", "1234", T0);
	b.q.fallback = "email,call";
	start_seal(&b, "1234");
	struct store_verification v = start_opts(f->s, &b);
	struct store_resend q = rs_req("a", v.public_id, 1, EMAIL, "a@example.com", T0 + 30);
	q.fallback = "call";
	q.ip = "10.0.0.1";
	struct store_resend_result res;
	assert_int_equal(resend(f->s, q, &res), 0);
	assert_int_equal(res.refusal, STORE_RESEND_OK);
	assert_true(res.job_id > 0);
	assert_int_equal(res.v.sends, 2);
	assert_int_equal(res.v.cur_channel, EMAIL);
	assert_string_equal(res.v.cur_target, "a@example.com");
	assert_string_equal(res.v.fallback, "call");
	assert_int_equal(res.v.last_sent_at, T0 + 30);
	assert_int_equal(res.v.updated_at, T0 + 30);
	assert_int_equal(res.v.channel, SMS); /* what the code was made for stays */
	assert_string_equal(res.v.target, "79000000001");
	assert_int_equal(res.v.status, OTP_VS_PENDING);
	assert_true(res.v.has_sealed_code);
	struct store_verification back = get(f->s, v.public_id);
	assert_vf_equal(&res.v, &back);

	/* its job, after the first one */
	struct store_job jobs[2];
	size_t n = 0;
	assert_int_equal(store_outbox_claim(f->s, T0 + 30, T0 + 90, jobs, 2, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(jobs[0].id, b.res.job_id);
	assert_int_equal(jobs[1].id, res.job_id);
	assert_int_equal(jobs[1].channel, EMAIL);
	assert_string_equal(jobs[1].provider, "smtp");
	assert_int_equal(jobs[1].payload_len, sizeof resend_payload - 1);
	assert_memory_equal(jobs[1].payload, resend_payload, jobs[1].payload_len);
	store_job_fini(&jobs[0]);
	store_job_fini(&jobs[1]);
	assert_int_equal(job_info(f->s, res.job_id).code_id, v.id);

	struct store_event e = ev_last(f->s, v.public_id, OTP_EV_RESENT);
	assert_string_equal(e.app_id, "a");
	assert_int_equal(e.channel, EMAIL);
	assert_string_equal(e.target, "a@example.com");
	assert_string_equal(e.ip, "10.0.0.1");
	assert_string_equal(e.detail, "smtp");
	assert_int_equal(e.created_at, T0 + 30);

	/* the resend counts in the windows of where it went */
	assert_int_equal(start_rc(f->s, "a", EMAIL, "a@example.com", NULL, T0 + 31, NULL), 0);
	assert_int_equal(start_rc(f->s, "a", EMAIL, "a@example.com", NULL, T0 + 32, NULL),
	                 OTP_ERR_LIMIT);
	/* the code still checks where it was made */
	assert_true(check(f->s, ck_target("a", "79000000001", BIT(SMS), "1234", T0 + 40)));

	/* a skipped resend records a skipped job */
	struct store_verification w = start_ok(f->s, "a", SMS, "79000000002", "1234", T0);
	q = rs_req(NULL, w.public_id, 1, SMS, "79000000002", T0 + 60);
	q.skip = true;
	q.payload = NULL;
	q.payload_len = 0;
	assert_int_equal(resend(f->s, q, &res), 0);
	assert_string_equal(job_info(f->s, res.job_id).state, STORE_JOB_SKIPPED);
	assert_string_equal(ev_last(f->s, w.public_id, OTP_EV_RESENT).detail, "skipped");
}

static void test_resend_refusals(void **state)
{
	struct fx *f = *state;
	struct store_resend_result res;
	struct start_buf b;
	start_init(&b, "a", SMS, "79000000001", "1234", T0);
	b.q.max_sends = 2;
	b.q.resend_cooldown = 30;
	struct store_verification v = start_opts(f->s, &b);

	/* unknown, or another app's */
	assert_int_equal(resend(f->s, rs_req("a", "otp_nope", 1, SMS, "79000000001", T0 + 60), &res),
	                 OTP_ERR_NOT_FOUND);
	assert_int_equal(resend(f->s, rs_req("b", v.public_id, 1, SMS, "79000000001", T0 + 60), &res),
	                 OTP_ERR_NOT_FOUND);

	/* the cooldown, with when to come back */
	size_t refused = ev_count(f->s, v.public_id, OTP_EV_REFUSED);
	assert_int_equal(resend(f->s, rs_req("a", v.public_id, 1, SMS, "79000000001", T0 + 29),
	                        &res), OTP_ERR_CONFLICT);
	assert_int_equal(res.refusal, STORE_RESEND_COOLDOWN);
	assert_int_equal(res.retry_at, T0 + 30);
	assert_int_equal(res.job_id, 0);
	assert_int_equal(ev_count(f->s, v.public_id, OTP_EV_REFUSED), refused + 1);
	assert_string_equal(ev_last(f->s, v.public_id, OTP_EV_REFUSED).detail, "cooldown");

	/* another resend came first: expect_sends does not match (refusal OK), no event */
	assert_int_equal(resend(f->s, rs_req("a", v.public_id, 0, SMS, "79000000001", T0 + 30),
	                        &res), OTP_ERR_CONFLICT);
	assert_int_equal(res.refusal, STORE_RESEND_OK);
	assert_int_equal(res.v.sends, 1);
	assert_int_equal(ev_count(f->s, v.public_id, OTP_EV_REFUSED), refused + 1);

	/* at the cooldown's end it goes; then max_sends is reached */
	assert_int_equal(resend(f->s, rs_req(NULL, v.public_id, 1, SMS, "79000000001", T0 + 30),
	                        &res), 0);
	assert_int_equal(res.v.sends, 2);
	assert_int_equal(resend(f->s, rs_req("a", v.public_id, 2, SMS, "79000000001", T0 + 100),
	                        &res), OTP_ERR_CONFLICT);
	assert_int_equal(res.refusal, STORE_RESEND_MAX_SENDS);
	assert_int_equal(ev_count(f->s, v.public_id, OTP_EV_REFUSED), refused + 2);
	assert_string_equal(ev_last(f->s, v.public_id, OTP_EV_REFUSED).detail, "max_sends");
	assert_int_equal(get(f->s, v.public_id).sends, 2);

	/* a send-limit rule of the channel it goes to */
	set_rule(f->s, "a", CALL, RULE(TGT, 10, 1));
	struct store_verification w = start_ok(f->s, "a", CALL, "79000000002", "1234", T0);
	refused = ev_count(f->s, w.public_id, OTP_EV_REFUSED);
	assert_int_equal(resend(f->s, rs_req("a", w.public_id, 1, CALL, "79000000002", T0 + 60),
	                        &res), OTP_ERR_LIMIT);
	assert_int_equal(res.refusal, STORE_RESEND_LIMIT);
	assert_int_equal(res.refused_by.kind, TGT);
	assert_int_equal(res.refused_by.rate, 1);
	assert_int_equal(res.job_id, 0);
	assert_int_equal(ev_count(f->s, w.public_id, OTP_EV_REFUSED), refused + 1);
	assert_string_equal(ev_last(f->s, w.public_id, OTP_EV_REFUSED).detail, "target_limit");
	assert_int_equal(get(f->s, w.public_id).sends, 1);
	/* ... but another channel has room */
	assert_int_equal(resend(f->s, rs_req("a", w.public_id, 1, SMS, "79000000002", T0 + 60),
	                        &res), 0);

	/* not pending: approved, canceled, expired; no event */
	struct store_verification x = start_ok(f->s, "a", SMS, "79000000003", "1234", T0);
	assert_true(check(f->s, ck_id("a", x.public_id, "1234", T0 + 1)));
	struct store_verification y = start_ok(f->s, "a", SMS, "79000000004", "1234", T0);
	struct store_verification tmp;
	assert_int_equal(store_vf_cancel(f->s, "a", y.public_id, T0 + 1, &tmp), 0);
	struct store_verification z = start_ok(f->s, "a", SMS, "79000000005", "1234", T0);
	const struct {
		const char *id;
		int64_t now;
		enum otp_vstatus status;
	} ended[] = {
		{x.public_id, T0 + 60, OTP_VS_APPROVED},
		{y.public_id, T0 + 60, OTP_VS_CANCELED},
		{z.public_id, T0 + LIFETIME, OTP_VS_PENDING},
	};
	size_t events = ev_total(f->s);
	for (size_t i = 0; i < sizeof ended / sizeof ended[0]; i++) {
		assert_int_equal(resend(f->s, rs_req("a", ended[i].id, 1, SMS, "79000000009",
		                                     ended[i].now), &res), OTP_ERR_CONFLICT);
		assert_int_equal(res.refusal, STORE_RESEND_NOT_PENDING);
		assert_int_equal(res.v.status, ended[i].status);
	}
	assert_int_equal(ev_total(f->s), events);

	/* malformed */
	struct store_resend bad = rs_req("a", w.public_id, 2, SMS, "", T0 + 100);
	assert_int_equal(resend(f->s, bad, &res), OTP_ERR_INVALID);
	bad = rs_req("a", w.public_id, 2, SMS, "79000000002", T0 + 100);
	bad.payload = NULL;
	assert_int_equal(resend(f->s, bad, &res), OTP_ERR_INVALID);
	bad = rs_req("a", w.public_id, 2, (enum otp_channel)OTP_CH_COUNT, "79000000002", T0 + 100);
	assert_int_equal(resend(f->s, bad, &res), OTP_ERR_INVALID);
	assert_int_equal(get(f->s, w.public_id).sends, 2);
}

/* ---- cancel, get, list ------------------------------------------------------------------- */

static void test_cancel(void **state)
{
	struct fx *f = *state;
	struct start_buf b;
	start_init(&b, "a", SMS, "79000000001", "1234", T0);
	start_seal(&b, "1234");
	struct store_verification v = start_opts(f->s, &b), out;
	assert_int_equal(store_vf_cancel(f->s, "b", v.public_id, T0 + 1, &out), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_vf_cancel(f->s, "a", "otp_nope", T0 + 1, &out), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_vf_cancel(f->s, "a", v.public_id, T0 + 5, &out), 0);
	assert_int_equal(out.status, OTP_VS_CANCELED);
	assert_false(out.has_sealed_code);
	assert_int_equal(out.updated_at, T0 + 5);
	struct store_verification back = get(f->s, v.public_id);
	assert_vf_equal(&out, &back);
	struct store_event e = ev_last(f->s, v.public_id, OTP_EV_CANCELED);
	assert_string_equal(e.app_id, "a");
	assert_int_equal(e.channel, SMS);
	assert_string_equal(e.target, "79000000001");
	assert_int_equal(e.created_at, T0 + 5);
	/* no longer checkable, nor cancelable: the answer says how it stands */
	assert_false(check(f->s, ck_target("a", "79000000001", BIT(SMS), "1234", T0 + 6)));
	size_t events = ev_total(f->s);
	assert_int_equal(store_vf_cancel(f->s, NULL, v.public_id, T0 + 7, &out), OTP_ERR_CONFLICT);
	assert_int_equal(out.status, OTP_VS_CANCELED);
	assert_int_equal(out.updated_at, T0 + 5);
	/* an expired one (not yet marked by purge) is not pending either */
	struct store_verification w = start_ok(f->s, "a", SMS, "79000000002", "1234", T0);
	assert_int_equal(store_vf_cancel(f->s, "a", w.public_id, T0 + LIFETIME, &out),
	                 OTP_ERR_CONFLICT);
	assert_int_equal(out.status, OTP_VS_PENDING);
	assert_int_equal(ev_total(f->s), events + 1);
	assert_int_equal(store_vf_cancel(f->s, "a", "", T0, &out), OTP_ERR_INVALID);
	assert_int_equal(store_vf_cancel(f->s, "a", v.public_id, T0, NULL), OTP_ERR_INVALID);
}

static void test_list_filters_and_order(void **state)
{
	struct fx *f = *state;
	struct store_verification v[6];
	v[0] = start_ok(f->s, "a", SMS, "79000000001", "1111", T0);
	v[1] = start_ok(f->s, "a", EMAIL, "x@example.com", "1111", T0 + 10);
	v[2] = start_ok(f->s, "b", SMS, "79000000001", "1111", T0 + 20);
	v[3] = start_ok(f->s, "", SMS, "79000000001", "1111", T0 + 30);
	v[4] = start_ok(f->s, "a", SMS, "79000000002", "1111", T0 + 40);
	v[5] = start_ok(f->s, "a", SMS, "79000000001", "2222", T0 + 50);
	assert_true(check(f->s, ck_id("a", v[5].public_id, "2222", T0 + 51)));
	const struct {
		struct store_vf_filter f;
		int expect[6]; /* indexes into v, newest first; -1 ends */
	} cases[] = {
		{{.channel = -1, .status = -1}, {5, 4, 3, 2, 1, 0}},
		{{.app_id = "a", .channel = -1, .status = -1}, {5, 4, 1, 0, -1}},
		{{.app_id = "", .channel = -1, .status = -1}, {3, -1}},
		{{.target = "79000000001", .channel = -1, .status = -1}, {5, 3, 2, 0, -1}},
		{{.app_id = "a", .target = "79000000001", .channel = -1, .status = -1}, {5, 0, -1}},
		{{.channel = EMAIL, .status = -1}, {1, -1}},
		{{.channel = -1, .status = OTP_VS_APPROVED}, {5, -1}},
		{{.channel = SMS, .status = OTP_VS_PENDING}, {4, 3, 2, 0, -1}},
		{{.channel = -1, .status = -1, .since = T0 + 10, .until = T0 + 40}, {3, 2, 1, -1}},
		{{.channel = -1, .status = -1, .since = T0 + 41}, {5, -1}},
		{{.channel = -1, .status = -1, .until = T0 + 10}, {0, -1}},
		{{.channel = -1, .status = -1, .before_id = v[2].id}, {1, 0, -1}},
		{{.channel = -1, .status = -1, .limit = 2}, {5, 4, -1}},
		{{.app_id = "zzz", .channel = -1, .status = -1}, {-1}},
	};
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		struct store_vf_filter flt = cases[c].f;
		if (flt.limit == 0)
			flt.limit = STORE_LIST_MAX;
		struct store_verification rows[8];
		size_t n = 99;
		assert_int_equal(store_vf_list(f->s, &flt, rows, &n), 0);
		size_t want = 0;
		while (want < 6 && cases[c].expect[want] >= 0)
			want++;
		if (n != want)
			fail_msg("case %zu: %zu rows, not %zu", c, n, want);
		for (size_t i = 0; i < n; i++)
			assert_string_equal(rows[i].public_id, v[cases[c].expect[i]].public_id);
	}
	/* a row as listed is the row as read */
	struct store_verification row, back = get(f->s, v[4].public_id);
	size_t n = 0;
	struct store_vf_filter one = vf_any();
	one.before_id = v[5].id;
	one.limit = 1;
	assert_int_equal(store_vf_list(f->s, &one, &row, &n), 0);
	assert_int_equal(n, 1);
	assert_vf_equal(&row, &back);
	/* malformed filters */
	struct store_vf_filter bad[6];
	for (size_t i = 0; i < 6; i++) {
		bad[i] = vf_any();
		bad[i].limit = 10;
	}
	bad[0].limit = 0;
	bad[1].limit = STORE_LIST_MAX + 1;
	bad[2].channel = OTP_CH_COUNT;
	bad[3].status = OTP_VS_COUNT;
	bad[4].target = "";
	bad[5].before_id = -1;
	for (size_t i = 0; i < 6; i++) {
		n = 5;
		assert_int_equal(store_vf_list(f->s, &bad[i], &row, &n), OTP_ERR_INVALID);
		assert_int_equal(n, 0);
	}
}

/* Pages by before_id neither lose nor repeat a row while rows are added between them. */
static void test_list_cursor_stable_under_inserts(void **state)
{
	struct fx *f = *state;
	char seen[32][STORE_ID_MAX];
	char made[32][STORE_ID_MAX];
	size_t n_seen = 0, n_made = 0;
	for (int i = 0; i < 7; i++) {
		struct store_verification v = start_ok(f->s, "a", SMS, "79000000001", "1111", T0 + i);
		snprintf(made[n_made++], STORE_ID_MAX, "%s", v.public_id);
	}
	struct store_vf_filter flt = vf_any();
	flt.app_id = "a";
	flt.limit = 3;
	for (int page = 0; page < 10; page++) {
		struct store_verification rows[3];
		size_t n = 0;
		assert_int_equal(store_vf_list(f->s, &flt, rows, &n), 0);
		for (size_t i = 0; i < n; i++) {
			assert_true(n_seen < 32);
			snprintf(seen[n_seen++], STORE_ID_MAX, "%s", rows[i].public_id);
		}
		if (n < flt.limit)
			break;
		flt.before_id = rows[n - 1].id;
		/* newer rows arrive between the pages */
		for (int k = 0; k < 2; k++) {
			start_ok(f->s, "a", SMS, "79000000001", "1111", T0 + 100 + page);
		}
	}
	/* exactly the first seven, newest first, once each */
	assert_int_equal(n_seen, 7);
	for (size_t i = 0; i < 7; i++)
		assert_string_equal(seen[i], made[6 - i]);
	/* the events list pages the same way */
	struct store_event_filter ef = ev_any();
	ef.app_id = "a";
	ef.limit = 4;
	size_t total = 0, expect = ev_total(f->s);
	int64_t last = INT64_MAX;
	for (int page = 0; page < 20; page++) {
		struct store_event rows[4];
		size_t n = 0;
		assert_int_equal(store_events_list(f->s, &ef, rows, &n), 0);
		for (size_t i = 0; i < n; i++) {
			assert_true(rows[i].id < last);
			last = rows[i].id;
		}
		total += n;
		if (n < ef.limit)
			break;
		ef.before_id = rows[n - 1].id;
		start_ok(f->s, "a", SMS, "79000000001", "1111", T0 + 200 + page);
	}
	assert_int_equal(total, expect);
	assert_int_equal(expect, 11);
}

static void test_events_list_filters(void **state)
{
	struct fx *f = *state;
	set_rule(f->s, "a", SMS, RULE(TGT, 10, 1));
	struct store_verification a = start_ok(f->s, "a", SMS, "79000000001", "1111", T0);
	struct store_verification b = start_ok(f->s, "b", EMAIL, "x@example.com", "2222", T0 + 10);
	assert_int_equal(start_rc(f->s, "a", SMS, "79000000001", NULL, T0 + 20, NULL),
	                 OTP_ERR_LIMIT);
	assert_false(check(f->s, ck_id("a", a.public_id, "0000", T0 + 30)));
	assert_true(check(f->s, ck_id("b", b.public_id, "2222", T0 + 40)));
	/* events: a created (T0), b created (T0+10), refused (T0+20), a check_failed (T0+30),
	 * b approved (T0+40) */
	const struct {
		struct store_event_filter f;
		int types[6]; /* newest first, 0 ends */
	} cases[] = {
		{{.channel = -1}, {OTP_EV_APPROVED, OTP_EV_CHECK_FAILED, OTP_EV_REFUSED, OTP_EV_CREATED,
		                   OTP_EV_CREATED}},
		{{.app_id = "a", .channel = -1}, {OTP_EV_CHECK_FAILED, OTP_EV_REFUSED, OTP_EV_CREATED}},
		{{.public_id = a.public_id, .channel = -1}, {OTP_EV_CHECK_FAILED, OTP_EV_CREATED}},
		{{.target = "x@example.com", .channel = -1}, {OTP_EV_APPROVED, OTP_EV_CREATED}},
		{{.channel = EMAIL}, {OTP_EV_APPROVED, OTP_EV_CREATED}},
		{{.channel = -1, .type = OTP_EV_CREATED}, {OTP_EV_CREATED, OTP_EV_CREATED}},
		{{.channel = -1, .since = T0 + 10, .until = T0 + 30}, {OTP_EV_REFUSED, OTP_EV_CREATED}},
		{{.channel = -1, .limit = 1}, {OTP_EV_APPROVED}},
		{{.app_id = "c", .channel = -1}, {0}},
	};
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		struct store_event_filter flt = cases[c].f;
		if (flt.limit == 0)
			flt.limit = 10;
		struct store_event rows[10];
		size_t n = 99;
		assert_int_equal(store_events_list(f->s, &flt, rows, &n), 0);
		size_t want = 0;
		while (want < 6 && cases[c].types[want] != 0)
			want++;
		if (n != want)
			fail_msg("case %zu: %zu events, not %zu", c, n, want);
		for (size_t i = 0; i < n; i++) {
			assert_int_equal(rows[i].type, cases[c].types[i]);
			if (i > 0)
				assert_true(rows[i].id < rows[i - 1].id);
		}
	}
	/* the cursor */
	struct store_event_filter flt = ev_any();
	flt.limit = 2;
	struct store_event rows[2];
	size_t n = 0;
	assert_int_equal(store_events_list(f->s, &flt, rows, &n), 0);
	assert_int_equal(n, 2);
	flt.before_id = rows[1].id;
	assert_int_equal(store_events_list(f->s, &flt, rows, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(rows[0].type, OTP_EV_REFUSED);
	assert_int_equal(rows[1].type, OTP_EV_CREATED);
	assert_string_equal(rows[1].public_id, b.public_id);
	/* malformed */
	struct store_event_filter bad = ev_any();
	bad.limit = 10;
	bad.type = OTP_EV_MAX + 1;
	assert_int_equal(store_events_list(f->s, &bad, rows, &n), OTP_ERR_INVALID);
	bad.type = 0;
	bad.limit = 0;
	assert_int_equal(store_events_list(f->s, &bad, rows, &n), OTP_ERR_INVALID);
	bad.limit = 10;
	bad.target = "";
	assert_int_equal(store_events_list(f->s, &bad, rows, &n), OTP_ERR_INVALID);
}

/* ---- material and sealed_latest ---------------------------------------------------------- */

static void test_material(void **state)
{
	struct fx *f = *state;
	struct start_buf b;
	start_init(&b, "a", SMS, "79000000001", "1234", T0);
	start_seal(&b, "1234");
	b.q.tmpl = "Code: {code}";
	struct store_verification v = start_opts(f->s, &b);
	uint8_t *sealed = NULL;
	size_t len = 0;
	char tmpl[64];
	assert_int_equal(store_vf_material(f->s, NULL, v.public_id, &sealed, &len, tmpl,
	                                   sizeof tmpl), 0);
	assert_int_equal(len, strlen("sealed:1234"));
	assert_memory_equal(sealed, "sealed:1234", len);
	assert_string_equal(tmpl, "Code: {code}");
	free(sealed);
	assert_int_equal(store_vf_material(f->s, "b", v.public_id, &sealed, &len, tmpl,
	                                   sizeof tmpl), OTP_ERR_NOT_FOUND);
	assert_null(sealed);
	assert_string_equal(tmpl, "");
	assert_int_equal(store_vf_material(f->s, "a", "otp_nope", &sealed, &len, tmpl,
	                                   sizeof tmpl), OTP_ERR_NOT_FOUND);
	/* a small tmpl buffer gets a cut copy */
	char small[6];
	assert_int_equal(store_vf_material(f->s, "a", v.public_id, &sealed, &len, small,
	                                   sizeof small), 0);
	assert_string_equal(small, "Code:");
	free(sealed);
	/* approved (consumed): the copy is gone, the template stays */
	assert_true(check(f->s, ck_id("a", v.public_id, "1234", T0 + 1)));
	assert_int_equal(store_vf_material(f->s, "a", v.public_id, &sealed, &len, tmpl,
	                                   sizeof tmpl), 0);
	assert_null(sealed);
	assert_int_equal(len, 0);
	assert_string_equal(tmpl, "Code: {code}");
	assert_int_equal(store_vf_material(f->s, "a", v.public_id, NULL, &len, tmpl, sizeof tmpl),
	                 OTP_ERR_INVALID);
}

static uint8_t *sealed_latest(struct store *s, const char *app, const char *target, int64_t now,
                              int *rc)
{
	uint8_t *sealed = NULL;
	size_t len = 0;
	*rc = store_vf_sealed_latest(s, app, target, now, &sealed, &len);
	if (*rc != 0) {
		assert_null(sealed);
		return NULL;
	}
	/* NUL-terminate a copy for comparisons */
	uint8_t *z = calloc(1, len + 1);
	assert_non_null(z);
	memcpy(z, sealed, len);
	free(sealed);
	return z;
}

static void test_sealed_latest(void **state)
{
	struct fx *f = *state;
	int rc = 0;
	struct start_buf b;
	start_init(&b, "", SMS, "79000000001", "1111", T0);
	start_seal(&b, "1111");
	start_opts(f->s, &b);
	start_init(&b, "", CALL, "79000000001", "2222", T0 + 1);
	start_seal(&b, "2222");
	struct store_verification two = start_opts(f->s, &b);
	start_init(&b, "a", SMS, "79000000001", "3333", T0 + 2);
	start_seal(&b, "3333");
	start_opts(f->s, &b);
	/* the newest live of the target on any channel, in its app */
	uint8_t *got = sealed_latest(f->s, "", "79000000001", T0 + 3, &rc);
	assert_int_equal(rc, 0);
	assert_string_equal((const char *)got, "sealed:2222");
	free(got);
	got = sealed_latest(f->s, "a", "79000000001", T0 + 3, &rc);
	assert_string_equal((const char *)got, "sealed:3333");
	free(got);
	/* the newest used up: the older one */
	assert_true(check(f->s, ck_id("", two.public_id, "2222", T0 + 4)));
	got = sealed_latest(f->s, "", "79000000001", T0 + 5, &rc);
	assert_string_equal((const char *)got, "sealed:1111");
	free(got);
	/* expired, unknown, none kept */
	assert_null(sealed_latest(f->s, "", "79000000001", T0 + LIFETIME, &rc));
	assert_int_equal(rc, OTP_ERR_NOT_FOUND);
	assert_null(sealed_latest(f->s, "", "79000000002", T0, &rc));
	assert_int_equal(rc, OTP_ERR_NOT_FOUND);
	start_ok(f->s, "", SMS, "79000000003", "4444", T0);
	assert_null(sealed_latest(f->s, "", "79000000003", T0 + 1, &rc));
	assert_int_equal(rc, OTP_ERR_NOT_FOUND);
	/* a reusable approved code keeps answering until it expires */
	start_init(&b, "", EMAIL, "r@example.com", "5555", T0);
	start_seal(&b, "5555");
	b.q.consume = false;
	start_opts(f->s, &b);
	assert_true(check(f->s, ck_target("", "r@example.com", BIT(EMAIL), "5555", T0 + 1)));
	got = sealed_latest(f->s, "", "r@example.com", T0 + 2, &rc);
	assert_string_equal((const char *)got, "sealed:5555");
	free(got);
	/* malformed */
	assert_null(sealed_latest(f->s, "", "", T0, &rc));
	assert_int_equal(rc, OTP_ERR_INVALID);
	assert_null(sealed_latest(f->s, NULL, "79000000001", T0, &rc));
	assert_int_equal(rc, OTP_ERR_INVALID);
}

/* ---- send-limit rules -------------------------------------------------------------------- */

static void assert_rules(struct store *s, const char *app, enum otp_channel ch,
                         const struct otp_limit_rule *want, size_t n)
{
	struct store_limits lim;
	assert_int_equal(store_rules_get(s, app, ch, &lim), 0);
	if (lim.n != n)
		fail_msg("%s/%d: %zu rules, not %zu", app, (int)ch, lim.n, n);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(lim.rules[i].kind, want[i].kind);
		assert_int_equal(lim.rules[i].minutes, want[i].minutes);
		assert_int_equal(lim.rules[i].rate, want[i].rate);
	}
}

static void test_rules_replace_and_get(void **state)
{
	struct fx *f = *state;
	assert_rules(f->s, "", SMS, NULL, 0);
	const struct otp_limit_rule first[] = {RULE(IP, 60, 20), RULE(TGT, 10, 5), RULE(IP, 1, 3)};
	set_rules(f->s, "", SMS, true, true, first, 3);
	assert_rules(f->s, "", SMS, first, 3);
	/* replacing one kind keeps the other; the new ones come after the kept */
	const struct otp_limit_rule tgt[] = {RULE(TGT, 30, 7), RULE(TGT, 5, 2)};
	set_rules(f->s, "", SMS, true, false, tgt, 2);
	const struct otp_limit_rule after[] = {RULE(IP, 60, 20), RULE(IP, 1, 3), RULE(TGT, 30, 7),
	                                      RULE(TGT, 5, 2)};
	assert_rules(f->s, "", SMS, after, 4);
	/* replacing none changes nothing */
	set_rules(f->s, "", SMS, false, false, NULL, 0);
	assert_rules(f->s, "", SMS, after, 4);
	/* per channel and per app */
	assert_rules(f->s, "", EMAIL, NULL, 0);
	assert_rules(f->s, "a", SMS, NULL, 0);
	set_rules(f->s, "a", SMS, true, true, &RULE(TGT, 1, 1), 1);
	assert_rules(f->s, "a", SMS, &RULE(TGT, 1, 1), 1);
	assert_rules(f->s, "", SMS, after, 4);
	/* [] clears the kinds replaced */
	set_rules(f->s, "", SMS, false, true, NULL, 0);
	assert_rules(f->s, "", SMS, tgt, 2);
	set_rules(f->s, "", SMS, true, true, NULL, 0);
	assert_rules(f->s, "", SMS, NULL, 0);
	assert_rules(f->s, "a", SMS, &RULE(TGT, 1, 1), 1);
	/* the most allowed per kind */
	struct otp_limit_rule many[2 * OTP_LIMIT_RULES_MAX];
	for (int i = 0; i < 2 * OTP_LIMIT_RULES_MAX; i++)
		many[i] = RULE(i % 2 ? IP : TGT, i + 1, i);
	set_rules(f->s, "", CALL, true, true, many, 2 * OTP_LIMIT_RULES_MAX);
	assert_rules(f->s, "", CALL, many, 2 * OTP_LIMIT_RULES_MAX);
}

static void test_rules_invalid_change_nothing(void **state)
{
	struct fx *f = *state;
	const struct otp_limit_rule keep[] = {RULE(TGT, 10, 5), RULE(IP, 60, 20)};
	set_rules(f->s, "", SMS, true, true, keep, 2);
	struct otp_limit_rule too_many[OTP_LIMIT_RULES_MAX + 1];
	for (size_t i = 0; i < OTP_LIMIT_RULES_MAX + 1; i++)
		too_many[i] = RULE(TGT, 1, 1);
	const struct {
		struct otp_limit_rule rules[2];
		size_t n;
		bool kinds[2];
	} bad[] = {
		{{RULE(TGT, 0, 1)}, 1, {true, true}},
		{{RULE(TGT, OTP_LIMIT_MINUTES_MAX + 1, 1)}, 1, {true, true}},
		{{RULE(TGT, 10, -1)}, 1, {true, true}},
		{{RULE(TGT, 10, OTP_LIMIT_RATE_MAX + 1)}, 1, {true, true}},
		{{RULE((enum otp_limit_kind)2, 10, 1)}, 1, {true, true}},
		{{RULE(TGT, 10, 1), RULE(IP, 10, 1)}, 2, {true, false}}, /* a kind not replaced */
		{{RULE(TGT, 10, 1), RULE(IP, 0, 1)}, 2, {true, true}},   /* one bad of two */
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_int_equal(store_rules_replace(f->s, "", SMS, bad[i].kinds, bad[i].rules, bad[i].n),
		                 OTP_ERR_INVALID);
	const bool both[2] = {true, true};
	assert_int_equal(store_rules_replace(f->s, "", SMS, both, too_many, OTP_LIMIT_RULES_MAX + 1),
	                 OTP_ERR_INVALID);
	assert_int_equal(store_rules_replace(f->s, "", SMS, both, NULL, 1), OTP_ERR_INVALID);
	assert_int_equal(store_rules_replace(f->s, "", SMS, NULL, keep, 2), OTP_ERR_INVALID);
	assert_int_equal(store_rules_replace(f->s, NULL, SMS, both, keep, 2), OTP_ERR_INVALID);
	assert_int_equal(store_rules_replace(f->s, "", (enum otp_channel)OTP_CH_COUNT, both, keep, 2),
	                 OTP_ERR_INVALID);
	assert_rules(f->s, "", SMS, keep, 2);
	struct store_limits lim;
	assert_int_equal(store_rules_get(f->s, "", (enum otp_channel)OTP_CH_COUNT, &lim),
	                 OTP_ERR_INVALID);
	assert_int_equal(store_rules_get(f->s, NULL, SMS, &lim), OTP_ERR_INVALID);
	assert_int_equal(lim.n, 0);
}

/* ---- apps, keys, meta -------------------------------------------------------------------- */

static void test_apps(void **state)
{
	struct fx *f = *state;
	struct store_app a = {.id = "app_b", .name = "Bee", .settings = (char *)"{\"x\":1}",
	                      .created_at = T0, .updated_at = T0};
	assert_int_equal(store_app_put(f->s, &a, true), 0);
	assert_int_equal(store_app_put(f->s, &a, true), OTP_ERR_CONFLICT);
	struct store_app got;
	assert_int_equal(store_app_get(f->s, "app_b", &got), 0);
	assert_string_equal(got.id, "app_b");
	assert_string_equal(got.name, "Bee");
	assert_string_equal(got.settings, "{\"x\":1}");
	assert_int_equal(got.created_at, T0);
	assert_int_equal(got.updated_at, T0);
	store_app_fini(&got);
	/* update: name and settings, created_at kept */
	struct store_app u = {.id = "app_b", .name = "Bee 2", .settings = (char *)"{\"y\":\"é\"}",
	                      .created_at = T0 + 999, .updated_at = T0 + 50};
	assert_int_equal(store_app_put(f->s, &u, false), 0);
	assert_int_equal(store_app_get(f->s, "app_b", &got), 0);
	assert_string_equal(got.name, "Bee 2");
	assert_string_equal(got.settings, "{\"y\":\"é\"}");
	assert_int_equal(got.created_at, T0);
	assert_int_equal(got.updated_at, T0 + 50);
	store_app_fini(&got);
	u.id[4] = 'x';
	assert_int_equal(store_app_put(f->s, &u, false), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_app_get(f->s, "app_x", &got), OTP_ERR_NOT_FOUND);
	store_app_fini(&got);
	/* list in id order, with a cursor */
	const char *ids[] = {"app_d", "app_a", "app_c"};
	for (size_t i = 0; i < 3; i++) {
		struct store_app n = {.name = "n", .settings = (char *)"{}", .created_at = T0,
		                      .updated_at = T0};
		snprintf(n.id, sizeof n.id, "%s", ids[i]);
		assert_int_equal(store_app_put(f->s, &n, true), 0);
	}
	struct store_app rows[3];
	size_t n = 0;
	assert_int_equal(store_app_list(f->s, "", rows, 3, &n), 0);
	assert_int_equal(n, 3);
	assert_string_equal(rows[0].id, "app_a");
	assert_string_equal(rows[1].id, "app_b");
	assert_string_equal(rows[2].id, "app_c");
	assert_string_equal(rows[1].settings, "{\"y\":\"é\"}");
	const char *after = "app_c";
	for (size_t i = 0; i < n; i++)
		store_app_fini(&rows[i]);
	assert_int_equal(store_app_list(f->s, after, rows, 3, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(rows[0].id, "app_d");
	store_app_fini(&rows[0]);
	assert_int_equal(store_app_list(f->s, "app_d", rows, 3, &n), 0);
	assert_int_equal(n, 0);
	/* delete */
	assert_int_equal(store_app_delete(f->s, "app_a"), 0);
	assert_int_equal(store_app_delete(f->s, "app_a"), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_app_get(f->s, "app_a", &got), OTP_ERR_NOT_FOUND);
	/* malformed */
	struct store_app bad = {.id = "", .name = "n", .settings = (char *)"{}"};
	assert_int_equal(store_app_put(f->s, &bad, true), OTP_ERR_INVALID);
	bad = (struct store_app){.id = "z", .name = "", .settings = (char *)"{}"};
	assert_int_equal(store_app_put(f->s, &bad, true), OTP_ERR_INVALID);
	bad = (struct store_app){.id = "z", .name = "n", .settings = NULL};
	assert_int_equal(store_app_put(f->s, &bad, true), OTP_ERR_INVALID);
	assert_int_equal(store_app_list(f->s, "", rows, 0, &n), OTP_ERR_INVALID);
	store_app_fini(NULL);
}

static struct store_key mk_key(const char *id, const char *app, uint8_t fill, int64_t at)
{
	struct store_key k = {.created_at = at};
	snprintf(k.id, sizeof k.id, "%s", id);
	snprintf(k.app_id, sizeof k.app_id, "%s", app);
	memset(k.secret_hash, fill, sizeof k.secret_hash);
	snprintf(k.format, sizeof k.format, "plain");
	snprintf(k.name, sizeof k.name, "key %s", id);
	return k;
}

static void test_keys(void **state)
{
	struct fx *f = *state;
	struct store_app a = {.id = "app_a", .name = "A", .settings = (char *)"{}", .created_at = T0,
	                      .updated_at = T0};
	assert_int_equal(store_app_put(f->s, &a, true), 0);
	snprintf(a.id, sizeof a.id, "app_b");
	assert_int_equal(store_app_put(f->s, &a, true), 0);
	struct store_key k1 = mk_key("k_1", "app_a", 0x11, T0);
	struct store_key k2 = mk_key("k_2", "app_a", 0x22, T0 + 1);
	struct store_key k3 = mk_key("k_3", "app_b", 0x33, T0 + 2);
	struct store_key k0 = mk_key("k_0", "", 0x44, T0 + 3); /* admin */
	assert_int_equal(store_key_create(f->s, &k2), 0);
	assert_int_equal(store_key_create(f->s, &k1), 0);
	assert_int_equal(store_key_create(f->s, &k3), 0);
	assert_int_equal(store_key_create(f->s, &k0), 0);
	assert_int_equal(store_key_create(f->s, &k1), OTP_ERR_CONFLICT);
	struct store_key orphan = mk_key("k_9", "app_missing", 0x55, T0);
	assert_int_equal(store_key_create(f->s, &orphan), OTP_ERR_NOT_FOUND);
	struct store_key got;
	assert_int_equal(store_key_get(f->s, "k_9", &got), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_key_get(f->s, "k_1", &got), 0);
	assert_string_equal(got.id, "k_1");
	assert_string_equal(got.app_id, "app_a");
	assert_memory_equal(got.secret_hash, k1.secret_hash, OTP_HASH_LEN);
	assert_string_equal(got.format, "plain");
	assert_string_equal(got.name, "key k_1");
	assert_int_equal(got.created_at, T0);
	assert_int_equal(got.revoked_at, 0);
	assert_int_equal(store_key_get(f->s, "k_0", &got), 0);
	assert_string_equal(got.app_id, "");

	struct store_key rows[8];
	size_t n = 0;
	assert_int_equal(store_key_list(f->s, "app_a", rows, 8, &n), 0);
	assert_int_equal(n, 2);
	assert_string_equal(rows[0].id, "k_1");
	assert_string_equal(rows[1].id, "k_2");
	assert_int_equal(store_key_list(f->s, "", rows, 8, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(rows[0].id, "k_0");
	assert_int_equal(store_key_list(f->s, NULL, rows, 8, &n), 0);
	assert_int_equal(n, 4);
	assert_string_equal(rows[0].id, "k_0");
	assert_string_equal(rows[3].id, "k_3");
	assert_int_equal(store_key_list(f->s, NULL, rows, 2, &n), 0);
	assert_int_equal(n, 2);

	/* revoke: idempotent, the first time stays */
	assert_int_equal(store_key_revoke(f->s, "k_2", T0 + 100), 0);
	assert_int_equal(store_key_revoke(f->s, "k_2", T0 + 200), 0);
	assert_int_equal(store_key_get(f->s, "k_2", &got), 0);
	assert_int_equal(got.revoked_at, T0 + 100);
	assert_int_equal(store_key_revoke(f->s, "k_9", T0 + 100), OTP_ERR_NOT_FOUND);

	/* deleting an app deletes its keys, and only its */
	assert_int_equal(store_app_delete(f->s, "app_a"), 0);
	assert_int_equal(store_key_get(f->s, "k_1", &got), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_key_get(f->s, "k_2", &got), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_key_list(f->s, NULL, rows, 8, &n), 0);
	assert_int_equal(n, 2);
	/* malformed */
	struct store_key bad = mk_key("", "app_b", 1, T0);
	assert_int_equal(store_key_create(f->s, &bad), OTP_ERR_INVALID);
	bad = mk_key("k_x", "app_b", 1, T0);
	bad.format[0] = '\0';
	assert_int_equal(store_key_create(f->s, &bad), OTP_ERR_INVALID);
	assert_int_equal(store_key_list(f->s, NULL, rows, 0, &n), OTP_ERR_INVALID);
}

static void test_meta(void **state)
{
	struct fx *f = *state;
	char v[64] = "junk";
	assert_int_equal(store_meta_get(f->s, "key_fp", v, sizeof v), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_meta_put_once(f->s, "key_fp", "abc123"), 0);
	assert_int_equal(store_meta_put_once(f->s, "key_fp", "abc123"), 0);
	assert_int_equal(store_meta_put_once(f->s, "key_fp", "other"), OTP_ERR_CONFLICT);
	assert_int_equal(store_meta_get(f->s, "key_fp", v, sizeof v), 0);
	assert_string_equal(v, "abc123");
	char small[4];
	assert_int_equal(store_meta_get(f->s, "key_fp", small, sizeof small), 0);
	assert_string_equal(small, "abc");
	assert_int_equal(store_meta_put_once(f->s, "other", ""), 0);
	assert_int_equal(store_meta_get(f->s, "other", v, sizeof v), 0);
	assert_string_equal(v, "");
	fx_reopen(f);
	assert_int_equal(store_meta_get(f->s, "key_fp", v, sizeof v), 0);
	assert_string_equal(v, "abc123");
	assert_int_equal(store_meta_put_once(f->s, "", "x"), OTP_ERR_INVALID);
	assert_int_equal(store_meta_get(f->s, "key_fp", v, 0), OTP_ERR_INVALID);
}

/* ---- purge ------------------------------------------------------------------------------- */

static void test_purge_expires_pending(void **state)
{
	struct fx *f = *state;
	struct start_buf b;
	start_init(&b, "a", SMS, "79000000001", "1111", T0);
	start_seal(&b, "1111");
	struct store_verification v = start_opts(f->s, &b);
	start_init(&b, "a", SMS, "79000000002", "2222", T0 + 200);
	start_seal(&b, "2222");
	struct store_verification w = start_opts(f->s, &b);
	/* one resent elsewhere: its expiry event names where it went last */
	struct store_verification r = start_ok(f->s, "", SMS, "79000000003", "3333", T0);
	assert_int_equal(resend(f->s, rs_req("", r.public_id, 1, EMAIL, "r@example.com", T0 + 60),
	                        NULL), 0);
	struct store_purge_counts c = {-1, -1};
	struct store_purge p = purge_at(T0 + LIFETIME - 1);
	assert_int_equal(store_purge(f->s, &p, &c), 0);
	assert_int_equal(c.expired, 0);
	assert_int_equal(c.deleted, 0);
	p = purge_at(T0 + LIFETIME);
	assert_int_equal(store_purge(f->s, &p, &c), 0);
	assert_int_equal(c.expired, 2);
	struct store_verification back = get(f->s, v.public_id);
	assert_int_equal(back.status, OTP_VS_EXPIRED);
	assert_false(back.has_sealed_code);
	assert_int_equal(back.updated_at, T0 + LIFETIME);
	struct store_event e = ev_last(f->s, v.public_id, OTP_EV_EXPIRED);
	assert_string_equal(e.app_id, "a");
	assert_int_equal(e.channel, SMS);
	assert_string_equal(e.target, "79000000001");
	assert_int_equal(e.created_at, T0 + LIFETIME);
	e = ev_last(f->s, r.public_id, OTP_EV_EXPIRED);
	assert_string_equal(e.app_id, "");
	assert_int_equal(e.channel, EMAIL);
	assert_string_equal(e.target, "r@example.com");
	/* the younger one is untouched */
	back = get(f->s, w.public_id);
	assert_int_equal(back.status, OTP_VS_PENDING);
	assert_true(back.has_sealed_code);
	/* once is enough */
	assert_int_equal(store_purge(f->s, &p, &c), 0);
	assert_int_equal(c.expired, 0);
	assert_int_equal(ev_count(f->s, v.public_id, OTP_EV_EXPIRED), 1);
	/* malformed */
	p.batch = 0;
	assert_int_equal(store_purge(f->s, &p, &c), OTP_ERR_INVALID);
	assert_int_equal(store_purge(f->s, NULL, &c), OTP_ERR_INVALID);
}

/* Both backends erase the sealed copy of a code that can no longer be used, approved ones
 * included (PostgreSQL used to keep those). */
static void test_purge_erases_sealed_copies_of_expired_codes(void **state)
{
	struct fx *f = *state;
	struct start_buf b;
	start_init(&b, "", SMS, "79000000001", "1111", T0);
	start_seal(&b, "1111");
	b.q.consume = false;
	struct store_verification v = start_opts(f->s, &b);
	assert_true(check(f->s, ck_id("", v.public_id, "1111", T0 + 1)));
	struct store_purge p = purge_at(T0 + LIFETIME - 1);
	assert_int_equal(store_purge(f->s, &p, NULL), 0);
	assert_true(get(f->s, v.public_id).has_sealed_code);
	p = purge_at(T0 + LIFETIME);
	assert_int_equal(store_purge(f->s, &p, NULL), 0);
	struct store_verification back = get(f->s, v.public_id);
	assert_int_equal(back.status, OTP_VS_APPROVED);
	assert_false(back.has_sealed_code);
	uint8_t *sealed = NULL;
	size_t len = 0;
	char tmpl[8];
	assert_int_equal(store_vf_material(f->s, "", v.public_id, &sealed, &len, tmpl, sizeof tmpl),
	                 0);
	assert_null(sealed);
}

static void test_purge_deletes_past_retention(void **state)
{
	struct fx *f = *state;
	set_rule(f->s, "", SMS, RULE(TGT, 60, 100));
	set_rule(f->s, "a", SMS, RULE(TGT, 10, 100));
	/* A: compat, approved, its job sent */
	struct store_verification a = start_ok(f->s, "", SMS, "79000000009", "1111", T0);
	assert_true(check(f->s, ck_id("", a.public_id, "1111", T0 + 1)));
	int64_t ja = claim_one(f->s, T0);
	assert_int_equal(store_outbox_sent(f->s, ja, T0 + 1, "m-1"), 0);
	/* C: compat email, pending (expires in this purge), its job dead */
	struct store_verification cv = start_ok(f->s, "", EMAIL, "c@example.com", "3333", T0);
	int64_t jc = claim_one(f->s, T0);
	assert_int_equal(store_outbox_dead(f->s, jc, T0 + 1, "bounced"), 0);
	/* B: app a, canceled; its job left pending */
	struct store_verification bv = start_ok(f->s, "a", SMS, "79000000002", "2222", T0);
	struct store_verification tmp;
	assert_int_equal(store_vf_cancel(f->s, "a", bv.public_id, T0 + 1, &tmp), 0);
	/* D: recent, with an idempotency key; E: old, with another */
	struct start_buf b;
	idem_init(&b, "", "key-d", 0x0d, T0 + 1100, 0);
	struct store_verification d = start_opts(f->s, &b);
	start_init(&b, "", EMAIL, "e@example.com", "5555", T0);
	b.q.idem_key = "key-e";
	memset(b.q.idem_fingerprint, 0x0e, OTP_HASH_LEN);
	struct store_verification e = start_opts(f->s, &b);
	assert_int_equal(store_vf_cancel(f->s, "", e.public_id, T0 + 2, &tmp), 0);

	const int64_t now = T0 + 1200;
	struct store_purge p = {.now = now, .ended_before = now, .events_before = now,
	                        .jobs_before = now, .idem_before = T0 + 1000, .batch = 100};
	struct store_purge_counts c;
	assert_int_equal(store_purge(f->s, &p, &c), 0);
	assert_int_equal(c.expired, 1);
	/* ended before the retention: gone (B, E); C ended just now, D is live; A ended
	 * but was sent inside the longest window of its (app, channel), 60 min of "" sms,
	 * so a limit still counts it: it stays until the window has passed */
	assert_int_equal(get(f->s, a.public_id).status, OTP_VS_APPROVED);
	assert_int_equal(store_vf_get(f->s, NULL, bv.public_id, &tmp), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_vf_get(f->s, NULL, e.public_id, &tmp), OTP_ERR_NOT_FOUND);
	assert_int_equal(get(f->s, cv.public_id).status, OTP_VS_EXPIRED);
	assert_int_equal(get(f->s, d.public_id).status, OTP_VS_PENDING);
	/* events: every old one goes (a verification itself is the send a limit counts;
	 * only resends count as events); C's expiry was recorded now */
	assert_int_equal(ev_count(f->s, a.public_id, 0), 0);
	assert_int_equal(ev_count(f->s, bv.public_id, 0), 0);
	assert_int_equal(ev_count(f->s, e.public_id, 0), 0);
	assert_int_equal(ev_count(f->s, cv.public_id, 0), 1);
	assert_int_equal(ev_count(f->s, cv.public_id, OTP_EV_EXPIRED), 1);
	assert_int_equal(ev_count(f->s, d.public_id, 0), 0);
	assert_int_equal(ev_total(f->s), 1);
	/* jobs: finished ones go, B's pending one stays (with no verification now), D's too */
	struct store_outbox_counts oc = job_counts(f->s);
	assert_int_equal(oc.sent, 0);
	assert_int_equal(oc.dead, 0);
	assert_int_equal(oc.pending, 3); /* B, D, E */
	/* 2 verifications + 10 events + 2 jobs + 1 key */
	assert_int_equal(c.deleted, 2 + 10 + 2 + 1);
	/* the kept send still counts: A's target is at its limit of one per hour */
	set_rule(f->s, "", SMS, RULE(TGT, 60, 1));
	assert_int_equal(start_rc(f->s, "", SMS, "79000000009", NULL, now + 1, NULL), OTP_ERR_LIMIT);
	/* idempotency: key-e is forgotten (a new verification), key-d is not */
	start_init(&b, "", EMAIL, "e@example.com", "5555", now + 2);
	b.q.idem_key = "key-e";
	memset(b.q.idem_fingerprint, 0x0e, OTP_HASH_LEN);
	assert_int_equal(vf_start(f->s, &b), 0);
	assert_false(b.res.replayed);
	idem_init(&b, "", "key-d", 0x0d, now + 3, 0);
	set_rules(f->s, "", SMS, true, true, NULL, 0);
	assert_int_equal(vf_start(f->s, &b), 0);
	assert_true(b.res.replayed);
	assert_string_equal(b.res.v.public_id, d.public_id);
}

static void test_purge_in_batches(void **state)
{
	struct fx *f = *state;
	enum { N = 25 };
	char ids[N][STORE_ID_MAX];
	for (int i = 0; i < N; i++) {
		struct start_buf b;
		char target[32];
		snprintf(target, sizeof target, "790000000%02d", i);
		start_init(&b, "a", SMS, target, "1111", T0);
		b.q.skip = true;
		start_seal(&b, "1111");
		struct store_verification v = start_opts(f->s, &b);
		snprintf(ids[i], sizeof ids[i], "%s", v.public_id);
		if (i % 2 == 0) {
			struct store_verification tmp;
			assert_int_equal(store_vf_cancel(f->s, "a", v.public_id, T0 + 1, &tmp), 0);
		}
	}
	struct store_purge p = {.now = T0 + 1000, .ended_before = T0 + 1000,
	                        .jobs_before = T0 + 1000, .batch = 4};
	struct store_purge_counts c;
	assert_int_equal(store_purge(f->s, &p, &c), 0);
	/* every one, over several rounds of at most 4 */
	assert_int_equal(c.expired, 12);
	assert_int_equal(c.deleted, 13 + N);
	for (int i = 0; i < N; i++) {
		struct store_verification v;
		int rc = store_vf_get(f->s, NULL, ids[i], &v);
		if (i % 2 == 0) {
			assert_int_equal(rc, OTP_ERR_NOT_FOUND);
		} else {
			assert_int_equal(rc, 0);
			assert_int_equal(v.status, OTP_VS_EXPIRED);
			assert_false(v.has_sealed_code);
		}
	}
	assert_int_equal(ev_count(f->s, NULL, OTP_EV_EXPIRED), 12);
	assert_int_equal(job_counts(f->s).skipped, 0);
}

/* ---- the outbox -------------------------------------------------------------------------- */

static void test_outbox_claim_order_and_payload(void **state)
{
	struct fx *f = *state;
	struct start_buf b[3];
	const char *targets[3] = {"79000000003", "79000000001", "79000000002"};
	const int64_t at[3] = {T0 + 20, T0, T0 + 10};
	for (int i = 0; i < 3; i++) {
		start_init(&b[i], "", SMS, targets[i], "1234", at[i]);
		start_opts(f->s, &b[i]);
	}
	struct store_job jobs[3];
	size_t n = 0;
	/* due ones only, oldest first */
	assert_int_equal(store_outbox_claim(f->s, T0 + 10, T0 + 70, jobs, 3, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(jobs[0].id, b[1].res.job_id);
	assert_int_equal(jobs[1].id, b[2].res.job_id);
	for (size_t i = 0; i < n; i++) {
		const struct start_buf *src = i == 0 ? &b[1] : &b[2];
		assert_int_equal(jobs[i].payload_len, strlen(src->payload));
		assert_memory_equal(jobs[i].payload, src->payload, jobs[i].payload_len);
		assert_int_equal(jobs[i].lease_until, T0 + 70);
		assert_string_equal(job_info(f->s, jobs[i].id).state, STORE_JOB_SENDING);
		store_job_fini(&jobs[i]);
	}
	store_job_fini(&jobs[0]); /* twice is harmless */
	store_job_fini(NULL);
	assert_int_equal(store_outbox_claim(f->s, T0 + 10, T0 + 70, jobs, 3, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(store_outbox_claim(f->s, T0 + 20, T0 + 80, jobs, 1, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(jobs[0].id, b[0].res.job_id);
	store_job_fini(&jobs[0]);
	assert_int_equal(store_outbox_claim(f->s, T0 + 20, T0 + 80, jobs, 0, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(store_outbox_claim(f->s, T0, T0, NULL, 1, &n), OTP_ERR_INVALID);
}

static void test_outbox_lease_expiry_reclaims(void **state)
{
	struct fx *f = *state;
	start_ok(f->s, "", SMS, "79000000001", "1234", T0);
	struct store_job job;
	size_t n = 0;
	assert_int_equal(store_outbox_claim(f->s, T0, T0 + 60, &job, 1, &n), 0);
	assert_int_equal(n, 1);
	int64_t id = job.id;
	store_job_fini(&job);
	assert_int_equal(claim_one(f->s, T0 + 60), 0); /* lease still held at its last second */
	/* the worker died: after its lease, another takes the job, attempts unchanged */
	assert_int_equal(store_outbox_claim(f->s, T0 + 61, T0 + 121, &job, 1, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(job.id, id);
	assert_int_equal(job.attempts, 0);
	assert_int_equal(job.lease_until, T0 + 121);
	assert_non_null(job.payload);
	store_job_fini(&job);
}


static void test_outbox_finish_acts_on_claimed_jobs_only(void **state)
{
	struct fx *f = *state;
	struct start_buf b;
	start_init(&b, "a", SMS, "79000000001", "1234", T0);
	struct store_verification v = start_opts(f->s, &b);
	const int64_t job = b.res.job_id;
	size_t n = 0;
	/* pending, not claimed: every finish is refused and changes nothing */
	size_t events = ev_total(f->s);
	assert_int_equal(store_outbox_sent(f->s, job, T0 + 1, "m"), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_outbox_retry(f->s, job, T0 + 1, T0 + 100, "e"), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_outbox_dead(f->s, job, T0 + 1, "e"), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_outbox_release(f->s, job), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_outbox_sent(f->s, job + 1000, T0 + 1, "m"), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_outbox_dead(f->s, job + 1000, T0 + 1, "m"), OTP_ERR_NOT_FOUND);
	struct store_job_info now = job_info(f->s, job);
	assert_string_equal(now.state, STORE_JOB_PENDING);
	assert_int_equal(now.attempts, 0);
	assert_int_equal(now.updated_at, T0);
	assert_string_equal(now.last_error, "");
	assert_int_equal(ev_total(f->s), events);
	assert_int_equal(get(f->s, v.public_id).status, OTP_VS_PENDING);

	/* release: back to pending, untouched, claimable at once */
	assert_int_equal(claim_one(f->s, T0 + 1), job);
	assert_int_equal(store_outbox_release(f->s, job), 0);
	now = job_info(f->s, job);
	assert_string_equal(now.state, STORE_JOB_PENDING);
	assert_int_equal(now.attempts, 0);
	assert_int_equal(store_outbox_release(f->s, job), OTP_ERR_NOT_FOUND);

	/* retry: pending again at next_at, one attempt more, the error kept */
	assert_int_equal(claim_one(f->s, T0 + 2), job);
	assert_int_equal(store_outbox_retry(f->s, job, T0 + 3, T0 + 90, "timeout"), 0);
	now = job_info(f->s, job);
	assert_string_equal(now.state, STORE_JOB_PENDING);
	assert_int_equal(now.attempts, 1);
	assert_int_equal(now.next_at, T0 + 90);
	assert_int_equal(now.updated_at, T0 + 3);
	assert_string_equal(now.last_error, "timeout");
	assert_int_equal(claim_one(f->s, T0 + 89), 0);
	assert_int_equal(store_outbox_retry(f->s, job, T0 + 4, T0 + 90, "x"), OTP_ERR_NOT_FOUND);
	assert_int_equal(ev_total(f->s), events);

	/* sent: one attempt more, the provider's id, a "sent" event */
	struct store_job claimed;
	assert_int_equal(store_outbox_claim(f->s, T0 + 90, T0 + 150, &claimed, 1, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(claimed.attempts, 1);
	store_job_fini(&claimed);
	assert_int_equal(store_outbox_sent(f->s, job, T0 + 91, "msg-42"), 0);
	now = job_info(f->s, job);
	assert_string_equal(now.state, STORE_JOB_SENT);
	assert_int_equal(now.attempts, 2);
	assert_string_equal(now.provider_msg_id, "msg-42");
	assert_int_equal(now.updated_at, T0 + 91);
	struct store_event e = ev_last(f->s, v.public_id, OTP_EV_SENT);
	assert_string_equal(e.app_id, "a");
	assert_int_equal(e.channel, SMS);
	assert_string_equal(e.target, "79000000001");
	assert_string_equal(e.detail, "msg-42");
	assert_int_equal(e.created_at, T0 + 91);
	assert_int_equal(ev_total(f->s), events + 1);
	/* finished: nothing acts on it again, nor writes */
	assert_int_equal(store_outbox_sent(f->s, job, T0 + 92, "again"), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_outbox_dead(f->s, job, T0 + 92, "late"), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_outbox_retry(f->s, job, T0 + 92, T0 + 99, "late"), OTP_ERR_NOT_FOUND);
	assert_int_equal(store_outbox_release(f->s, job), OTP_ERR_NOT_FOUND);
	assert_int_equal(ev_total(f->s), events + 1);
	now = job_info(f->s, job);
	assert_string_equal(now.state, STORE_JOB_SENT);
	assert_string_equal(now.provider_msg_id, "msg-42");
	assert_int_equal(now.attempts, 2);
	assert_int_equal(get(f->s, v.public_id).status, OTP_VS_PENDING);
	assert_int_equal(claim_one(f->s, T0 + 1000), 0);
}

static void test_outbox_dead_fails_undeliverable_native_verifications(void **state)
{
	struct fx *f = *state;
	/* native, one job: dead makes it failed */
	struct start_buf b;
	start_init(&b, "a", SMS, "79000000001", "1111", T0);
	start_seal(&b, "1111");
	struct store_verification v = start_opts(f->s, &b);
	assert_int_equal(claim_one(f->s, T0), b.res.job_id);
	assert_int_equal(store_outbox_dead(f->s, b.res.job_id, T0 + 1, "number unreachable"), 0);
	struct store_verification back = get(f->s, v.public_id);
	assert_int_equal(back.status, OTP_VS_FAILED);
	assert_false(back.has_sealed_code);
	assert_int_equal(back.updated_at, T0 + 1);
	struct store_event e = ev_last(f->s, v.public_id, OTP_EV_DELIVERY_FAILED);
	assert_string_equal(e.detail, "number unreachable");
	assert_string_equal(e.app_id, "a");
	assert_int_equal(e.created_at, T0 + 1);
	struct store_job_info info = job_info(f->s, b.res.job_id);
	assert_string_equal(info.state, STORE_JOB_DEAD);
	assert_string_equal(info.last_error, "number unreachable");
	assert_int_equal(info.attempts, 1);
	assert_false(check(f->s, ck_id("a", v.public_id, "1111", T0 + 2)));

	/* compat: stays pending and checkable (the old service never knew) */
	start_init(&b, "", SMS, "79000000002", "2222", T0 + 10);
	struct store_verification c = start_opts(f->s, &b);
	assert_int_equal(claim_one(f->s, T0 + 10), b.res.job_id);
	assert_int_equal(store_outbox_dead(f->s, b.res.job_id, T0 + 11, "no"), 0);
	assert_int_equal(get(f->s, c.public_id).status, OTP_VS_PENDING);
	assert_int_equal(ev_count(f->s, c.public_id, OTP_EV_DELIVERY_FAILED), 1);
	assert_true(check(f->s, ck_target("", "79000000002", BIT(SMS), "2222", T0 + 12)));

	/* native with a resend still waiting: pending until that one dies too */
	start_init(&b, "a", SMS, "79000000003", "3333", T0 + 20);
	b.q.resend_cooldown = 0;
	struct store_verification r = start_opts(f->s, &b);
	struct store_resend_result rr;
	assert_int_equal(resend(f->s, rs_req("a", r.public_id, 1, EMAIL, "r@example.com", T0 + 21),
	                        &rr), 0);
	struct store_job jobs[2];
	size_t n = 0;
	assert_int_equal(store_outbox_claim(f->s, T0 + 21, T0 + 81, jobs, 2, &n), 0);
	assert_int_equal(n, 2);
	store_job_fini(&jobs[0]);
	store_job_fini(&jobs[1]);
	assert_int_equal(store_outbox_dead(f->s, b.res.job_id, T0 + 22, "no"), 0);
	assert_int_equal(get(f->s, r.public_id).status, OTP_VS_PENDING);
	assert_int_equal(store_outbox_dead(f->s, rr.job_id, T0 + 23, "no"), 0);
	assert_int_equal(get(f->s, r.public_id).status, OTP_VS_FAILED);
	assert_int_equal(ev_count(f->s, r.public_id, OTP_EV_DELIVERY_FAILED), 2);

	/* native whose first message was delivered: a dead resend does not fail it */
	start_init(&b, "a", SMS, "79000000004", "4444", T0 + 30);
	b.q.resend_cooldown = 0;
	struct store_verification s4 = start_opts(f->s, &b);
	assert_int_equal(claim_one(f->s, T0 + 30), b.res.job_id);
	assert_int_equal(store_outbox_sent(f->s, b.res.job_id, T0 + 31, "ok"), 0);
	assert_int_equal(resend(f->s, rs_req("a", s4.public_id, 1, SMS, "79000000004", T0 + 32),
	                        &rr), 0);
	assert_int_equal(claim_one(f->s, T0 + 32), rr.job_id);
	assert_int_equal(store_outbox_dead(f->s, rr.job_id, T0 + 33, "no"), 0);
	assert_int_equal(get(f->s, s4.public_id).status, OTP_VS_PENDING);

	/* an approved one is left as it is */
	start_init(&b, "a", SMS, "79000000005", "5555", T0 + 40);
	struct store_verification s5 = start_opts(f->s, &b);
	assert_true(check(f->s, ck_id("a", s5.public_id, "5555", T0 + 40)));
	assert_int_equal(claim_one(f->s, T0 + 40), b.res.job_id);
	assert_int_equal(store_outbox_dead(f->s, b.res.job_id, T0 + 41, "no"), 0);
	assert_int_equal(get(f->s, s5.public_id).status, OTP_VS_APPROVED);
}

/* A provider's error text is cut to fit at a character boundary and made valid UTF-8,
 * in the job and in its event, on both backends. */
static void test_outbox_long_and_invalid_texts_are_cleaned(void **state)
{
	struct fx *f = *state;
	enum { N = 4 };
	char ids[N][STORE_ID_MAX];
	int64_t job[N];
	for (int i = 0; i < N; i++) {
		struct start_buf b;
		start_init(&b, "a", SMS, "79000000001", "1234", T0 + i);
		struct store_verification v = start_opts(f->s, &b);
		snprintf(ids[i], sizeof ids[i], "%s", v.public_id);
		job[i] = b.res.job_id;
		assert_int_equal(claim_one(f->s, T0 + i), job[i]);
	}
	char ascii[1000], multi[1001], msgid[400];
	memset(ascii, 'x', sizeof ascii - 1);
	ascii[sizeof ascii - 1] = '\0';
	for (size_t i = 0; i + 2 < sizeof multi; i += 2)
		memcpy(multi + i, "\xc3\xa9", 2); /* é */
	multi[sizeof multi - 1] = '\0';
	memset(msgid, 'm', sizeof msgid - 1);
	msgid[sizeof msgid - 1] = '\0';

	assert_int_equal(store_outbox_dead(f->s, job[0], T0 + 10, ascii), 0);
	struct store_job_info info = job_info(f->s, job[0]);
	assert_int_equal(strlen(info.last_error), STORE_ERROR_MAX - 1);
	assert_memory_equal(info.last_error, ascii, STORE_ERROR_MAX - 1);
	struct store_event e = ev_last(f->s, ids[0], OTP_EV_DELIVERY_FAILED);
	assert_int_equal(strlen(e.detail), STORE_ERROR_MAX - 1);

	assert_int_equal(store_outbox_retry(f->s, job[1], T0 + 10, T0 + 1000, multi), 0);
	info = job_info(f->s, job[1]);
	size_t len = strlen(info.last_error);
	assert_true(len >= STORE_ERROR_MAX - 2 && len <= STORE_ERROR_MAX - 1);
	assert_int_equal(len % 2, 0);
	assert_true(otp_utf8_valid(info.last_error, len));

	assert_int_equal(store_outbox_dead(f->s, job[2], T0 + 10, "bad \xff\xfe bytes\xc3"), 0);
	info = job_info(f->s, job[2]);
	assert_string_equal(info.last_error, "bad ?? bytes?");
	assert_string_equal(ev_last(f->s, ids[2], OTP_EV_DELIVERY_FAILED).detail, "bad ?? bytes?");

	assert_int_equal(store_outbox_sent(f->s, job[3], T0 + 10, msgid), 0);
	info = job_info(f->s, job[3]);
	assert_int_equal(strlen(info.provider_msg_id), STORE_MSGID_MAX - 1);
	assert_int_equal(strlen(ev_last(f->s, ids[3], OTP_EV_SENT).detail),
	                 STORE_MSGID_MAX - 1);

	/* no text at all */
	struct store_verification v = start_ok(f->s, "a", SMS, "79000000002", "1234", T0 + 20);
	int64_t id = claim_one(f->s, T0 + 20);
	assert_true(id > 0);
	assert_int_equal(store_outbox_sent(f->s, id, T0 + 21, NULL), 0);
	assert_string_equal(job_info(f->s, id).provider_msg_id, "");
	assert_string_equal(ev_last(f->s, v.public_id, OTP_EV_SENT).detail, "");
}

static void test_outbox_list_filters_pages_and_counts(void **state)
{
	struct fx *f = *state;
	int64_t id[6];
	for (int i = 0; i < 6; i++) {
		struct start_buf b;
		start_init(&b, "", i < 4 ? SMS : EMAIL, i < 4 ? "79000000001" : "x@example.com",
		           "1234", T0 + i);
		if (i >= 4)
			b.q.provider = "smtp";
		if (i == 5) {
			b.q.skip = true;
			b.q.payload = NULL;
		}
		start_opts(f->s, &b);
		id[i] = b.res.job_id;
	}
	assert_int_equal(claim_one(f->s, T0), id[0]);
	assert_int_equal(claim_one(f->s, T0 + 1), id[1]);
	assert_int_equal(claim_one(f->s, T0 + 2), id[2]);
	assert_int_equal(store_outbox_sent(f->s, id[0], T0 + 5, "m"), 0);
	assert_int_equal(store_outbox_dead(f->s, id[1], T0 + 5, "e"), 0);
	/* now: 0 sent, 1 dead, 2 sending, 3 pending, 4 pending (email, smtp), 5 skipped */
	const struct {
		struct store_job_filter f;
		int expect[7]; /* indexes into id, newest first; -1 ends */
	} cases[] = {
		{{.channel = -1, .limit = 10}, {5, 4, 3, 2, 1, 0, -1}},
		{{.state = STORE_JOB_PENDING, .channel = -1, .limit = 10}, {4, 3, -1}},
		{{.state = STORE_JOB_SENDING, .channel = -1, .limit = 10}, {2, -1}},
		{{.state = STORE_JOB_SENT, .channel = -1, .limit = 10}, {0, -1}},
		{{.state = STORE_JOB_DEAD, .channel = -1, .limit = 10}, {1, -1}},
		{{.state = STORE_JOB_SKIPPED, .channel = -1, .limit = 10}, {5, -1}},
		{{.channel = EMAIL, .limit = 10}, {5, 4, -1}},
		{{.provider = "smtp", .state = STORE_JOB_PENDING, .channel = -1, .limit = 10}, {4, -1}},
		{{.provider = PROVIDER, .channel = SMS, .limit = 10}, {3, 2, 1, 0, -1}},
		{{.channel = -1, .limit = 2}, {5, 4, -1}},
		{{.channel = -1, .before_id = id[4], .limit = 2}, {3, 2, -1}},
		{{.channel = -1, .before_id = id[2], .limit = 2}, {1, 0, -1}},
		{{.channel = -1, .before_id = id[0], .limit = 2}, {-1}},
		{{.state = "nonsense", .channel = -1, .limit = 10}, {-1}},
	};
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		struct store_job_info rows[10];
		struct store_outbox_counts counts;
		size_t n = 99;
		assert_int_equal(store_outbox_list(f->s, &cases[c].f, rows, &n, &counts), 0);
		size_t want = 0;
		while (want < 7 && cases[c].expect[want] >= 0)
			want++;
		if (n != want)
			fail_msg("case %zu: %zu jobs, not %zu", c, n, want);
		for (size_t i = 0; i < n; i++)
			assert_int_equal(rows[i].id, id[cases[c].expect[i]]);
		/* the counts are of every job, whatever the filter */
		assert_int_equal(counts.sent, 1);
		assert_int_equal(counts.dead, 1);
		assert_int_equal(counts.sending, 1);
		assert_int_equal(counts.pending, 2);
		assert_int_equal(counts.skipped, 1);
	}
	struct store_job_info rows[10];
	size_t n = 0;
	assert_int_equal(store_outbox_list(f->s, &cases[0].f, rows, &n, NULL), 0);
	assert_int_equal(n, 6);
	struct store_outbox_counts all = job_counts(f->s);
	assert_int_equal(all.pending + all.sending + all.sent + all.dead + all.skipped, 6);
	/* malformed */
	struct store_job_filter bad[4] = {
		{.channel = -1, .limit = 0},
		{.channel = -1, .limit = STORE_LIST_MAX + 1},
		{.channel = OTP_CH_COUNT, .limit = 10},
		{.channel = -1, .state = "", .limit = 10},
	};
	for (size_t i = 0; i < 4; i++)
		assert_int_equal(store_outbox_list(f->s, &bad[i], rows, &n, NULL), OTP_ERR_INVALID);
	assert_int_equal(store_outbox_list(f->s, &cases[0].f, rows, NULL, NULL), OTP_ERR_INVALID);
	assert_int_equal(store_outbox_counts(f->s, NULL), OTP_ERR_INVALID);
}

static void test_outbox_next_due_and_backlog(void **state)
{
	struct fx *f = *state;
	int64_t due = -1;
	struct store_outbox_backlog bl;
	assert_int_equal(store_outbox_next_due(f->s, &due), 0);
	assert_int_equal(due, 0);
	assert_int_equal(store_outbox_backlog(f->s, &bl), 0);
	assert_int_equal(bl.pending, 0);
	assert_int_equal(bl.sending, 0);
	assert_int_equal(bl.oldest_due, 0);
	start_ok(f->s, "", SMS, "79000000001", "1234", T0 + 50);
	start_ok(f->s, "", SMS, "79000000002", "1234", T0 + 10);
	start_ok(f->s, "", SMS, "79000000003", "1234", T0 + 30);
	struct start_buf b;
	start_init(&b, "", SMS, "79000000004", "1234", T0);
	b.q.skip = true;
	b.q.payload = NULL;
	start_opts(f->s, &b); /* skipped jobs never wait */
	assert_int_equal(store_outbox_next_due(f->s, &due), 0);
	assert_int_equal(due, T0 + 10);
	assert_int_equal(store_outbox_backlog(f->s, &bl), 0);
	assert_int_equal(bl.pending, 3);
	assert_int_equal(bl.sending, 0);
	assert_int_equal(bl.oldest_due, T0 + 10);
	int64_t id = claim_one(f->s, T0 + 40);
	assert_true(id > 0);
	assert_int_equal(store_outbox_next_due(f->s, &due), 0);
	assert_int_equal(due, T0 + 30);
	assert_int_equal(store_outbox_retry(f->s, id, T0 + 41, T0 + 20, "later"), 0);
	assert_int_equal(store_outbox_next_due(f->s, &due), 0);
	assert_int_equal(due, T0 + 20);
	assert_int_equal(claim_one(f->s, T0 + 40), id);
	assert_int_equal(store_outbox_backlog(f->s, &bl), 0);
	assert_int_equal(bl.pending, 2);
	assert_int_equal(bl.sending, 1);
	assert_int_equal(bl.oldest_due, T0 + 30);
	assert_int_equal(store_outbox_sent(f->s, id, T0 + 42, "m"), 0);
	assert_int_equal(store_outbox_backlog(f->s, &bl), 0);
	assert_int_equal(bl.pending, 2);
	assert_int_equal(bl.sending, 0);
	assert_int_equal(store_outbox_next_due(f->s, NULL), OTP_ERR_INVALID);
	assert_int_equal(store_outbox_backlog(f->s, NULL), OTP_ERR_INVALID);
}

/* ---- concurrency ------------------------------------------------------------------------- */

#define RACE_THREADS 8
#define RACE_SENDS 6
#define RACE_RATE 5

struct race {
	struct store *s;
	pthread_barrier_t *start;
	int which;
	int ok, limited, other;
};

static void *race_sender(void *arg)
{
	struct race *r = arg;
	pthread_barrier_wait(r->start);
	for (int i = 0; i < RACE_SENDS; i++) {
		struct start_buf b;
		char code[16];
		snprintf(code, sizeof code, "%d%d", r->which, i);
		start_init(&b, "", SMS, "79001112233", code, T0 + 1);
		snprintf(b.public_id, sizeof b.public_id, "otp_race_%d_%d", r->which, i);
		b.q.ip = "10.1.1.1";
		int rc = vf_start(r->s, &b);
		if (rc == 0)
			r->ok++;
		else if (rc == OTP_ERR_LIMIT)
			r->limited++;
		else
			r->other++;
	}
	return NULL;
}

/* RACE_THREADS threads (alternating between a and b) send to one target and ip. */
static void race_sends(struct store *a, struct store *b)
{
	struct race r[RACE_THREADS];
	pthread_t th[RACE_THREADS];
	pthread_barrier_t start;
	pthread_barrier_init(&start, NULL, RACE_THREADS);
	for (int i = 0; i < RACE_THREADS; i++) {
		r[i] = (struct race){.s = (i % 2 && b) ? b : a, .which = i, .start = &start};
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
	assert_int_equal(ok, RACE_RATE);
	assert_int_equal(limited, RACE_THREADS * RACE_SENDS - RACE_RATE);
	assert_int_equal(job_counts(a).pending, RACE_RATE);
	assert_int_equal(vf_count(a), RACE_RATE);
	assert_int_equal(ev_count(a, NULL, OTP_EV_CREATED), RACE_RATE);
	assert_int_equal(ev_count(a, NULL, OTP_EV_REFUSED), RACE_THREADS * RACE_SENDS - RACE_RATE);
}

static void test_concurrent_sends_respect_rate(void **state)
{
	struct fx *f = *state;
	set_rule(f->s, "", SMS, RULE(TGT, 10, RACE_RATE));
	race_sends(f->s, NULL);
}

static void test_concurrent_sends_from_two_handles_respect_rate(void **state)
{
	/* two stores on one database, like two otpd processes */
	struct fx *f = *state;
	set_rule(f->s, "", SMS, RULE(IP, 10, RACE_RATE));
	struct store *other = fx_open(f, 2);
	race_sends(f->s, other);
	store_close(other);
}

struct check_race {
	struct store *s;
	pthread_barrier_t *start;
	const char *public_id;
	const char *code;
	int rc;
	bool ok, found;
};

static void *race_checker(void *arg)
{
	struct check_race *r = arg;
	struct store_check q = ck_id("", r->public_id, r->code, T0 + 1);
	struct store_check_result res;
	pthread_barrier_wait(r->start);
	r->rc = store_vf_check(r->s, &q, &res);
	r->ok = res.ok;
	r->found = res.found;
	return NULL;
}

/* n threads (alternating between a and b) check codes[i] on one verification. */
static void race_checks(struct store *a, struct store *b, const char *public_id,
                        const char *const *codes, int n, struct check_race *r)
{
	pthread_t th[16];
	pthread_barrier_t start;
	assert_true(n <= 16);
	pthread_barrier_init(&start, NULL, (unsigned)n);
	for (int i = 0; i < n; i++) {
		r[i] = (struct check_race){.s = (i % 2 && b) ? b : a, .start = &start,
		                           .public_id = public_id, .code = codes[i]};
		assert_int_equal(pthread_create(&th[i], NULL, race_checker, &r[i]), 0);
	}
	for (int i = 0; i < n; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(r[i].rc, 0);
		assert_true(r[i].found);
	}
	pthread_barrier_destroy(&start);
}

static void concurrent_wrong_checks(struct fx *f, struct store *b)
{
	enum { N = 8 };
	static const char *const wrong[N] = {"0", "1", "2", "3", "4", "5", "6", "7"};
	struct check_race r[N];
	/* fewer than max_attempts: every one counts, none is lost */
	struct start_buf sb;
	start_init(&sb, "", SMS, "79001112233", "99999", T0);
	sb.q.max_attempts = 20;
	struct store_verification v = start_opts(f->s, &sb);
	race_checks(f->s, b, v.public_id, wrong, N, r);
	for (int i = 0; i < N; i++)
		assert_false(r[i].ok);
	assert_int_equal(get(f->s, v.public_id).attempts, N);
	assert_int_equal(ev_count(f->s, v.public_id, OTP_EV_CHECK_FAILED), N);
	assert_true(check(f->s, ck_id("", v.public_id, "99999", T0 + 2)));

	/* more than max_attempts: exactly max_attempts are evaluated, then it is dead */
	start_init(&sb, "", SMS, "79001112234", "99999", T0);
	sb.q.max_attempts = 3;
	v = start_opts(f->s, &sb);
	race_checks(f->s, b, v.public_id, wrong, N, r);
	struct store_verification back = get(f->s, v.public_id);
	assert_int_equal(back.attempts, 3);
	assert_int_equal(back.status, OTP_VS_MAX_ATTEMPTS);
	assert_int_equal(ev_count(f->s, v.public_id, OTP_EV_CHECK_FAILED), 2);
	assert_int_equal(ev_count(f->s, v.public_id, OTP_EV_MAX_ATTEMPTS), 1);
}

static void test_concurrent_wrong_checks_count_exactly(void **state)
{
	struct fx *f = *state;
	concurrent_wrong_checks(f, NULL);
}

static void test_concurrent_wrong_checks_from_two_handles_count_exactly(void **state)
{
	struct fx *f = *state;
	struct store *other = fx_open(f, 2);
	concurrent_wrong_checks(f, other);
	store_close(other);
}

/* A right guess among racing wrong ones: at most max_attempts guesses are evaluated
 * before the verification dies; if the right one was among them it won. */
static void test_concurrent_checks_with_the_right_code(void **state)
{
	struct fx *f = *state;
	enum { N = 8, MAX = 3, ROUNDS = 4 };
	struct store *other = fx_open(f, 2);
	for (int round = 0; round < ROUNDS; round++) {
		const char *codes[N] = {"0", "1", "2", "3", "4", "5", "6", "7"};
		codes[(round * 3 + 1) % N] = "99999";
		char target[32];
		snprintf(target, sizeof target, "7900111220%d", round);
		struct start_buf sb;
		start_init(&sb, "", SMS, target, "99999", T0);
		sb.q.max_attempts = MAX;
		struct store_verification v = start_opts(f->s, &sb);
		struct check_race r[N];
		race_checks(f->s, other, v.public_id, codes, N, r);
		int oks = 0;
		bool right_ok = false;
		for (int i = 0; i < N; i++) {
			oks += r[i].ok;
			if (strcmp(codes[i], "99999") == 0)
				right_ok = r[i].ok;
			else
				assert_false(r[i].ok);
		}
		assert_int_equal(oks, right_ok ? 1 : 0);
		struct store_verification back = get(f->s, v.public_id);
		size_t failed = ev_count(f->s, v.public_id, OTP_EV_CHECK_FAILED) +
		                ev_count(f->s, v.public_id, OTP_EV_MAX_ATTEMPTS);
		size_t approved = ev_count(f->s, v.public_id, OTP_EV_APPROVED);
		assert_int_equal(failed, (size_t)back.attempts);
		assert_true(failed + approved <= MAX);
		if (right_ok) {
			assert_int_equal(back.status, OTP_VS_APPROVED);
			assert_int_equal(approved, 1);
			assert_true(back.attempts < MAX);
		} else {
			assert_int_equal(back.status, OTP_VS_MAX_ATTEMPTS);
			assert_int_equal(back.attempts, MAX);
			assert_int_equal(approved, 0);
		}
	}
	store_close(other);
}

struct claim_race {
	struct store *s;
	pthread_barrier_t *start;
	int64_t ids[64];
	int n, rc;
};

static void *race_claimer(void *arg)
{
	struct claim_race *r = arg;
	pthread_barrier_wait(r->start);
	for (;;) {
		struct store_job jobs[3];
		size_t n = 0;
		r->rc = store_outbox_claim(r->s, T0 + 1, T0 + 60, jobs, 3, &n);
		if (r->rc != 0 || n == 0)
			return NULL;
		for (size_t i = 0; i < n; i++) {
			if (r->n < 64)
				r->ids[r->n++] = jobs[i].id;
			store_job_fini(&jobs[i]);
		}
	}
}

static int cmp_i64(const void *x, const void *y)
{
	int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
	return (a > b) - (a < b);
}

static void test_concurrent_claims_from_two_handles_never_share_a_job(void **state)
{
	struct fx *f = *state;
	enum { JOBS = 40, THREADS = 4 };
	for (int i = 0; i < JOBS; i++) {
		char target[32];
		snprintf(target, sizeof target, "790077700%02d", i);
		start_ok(f->s, "", SMS, target, "1234", T0);
	}
	struct store *other = fx_open(f, 2);
	struct claim_race r[THREADS];
	pthread_t th[THREADS];
	pthread_barrier_t start;
	pthread_barrier_init(&start, NULL, THREADS);
	for (int i = 0; i < THREADS; i++) {
		r[i] = (struct claim_race){.s = i % 2 ? other : f->s, .start = &start};
		assert_int_equal(pthread_create(&th[i], NULL, race_claimer, &r[i]), 0);
	}
	int64_t all[THREADS * 64];
	size_t n = 0;
	for (int i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(r[i].rc, 0);
		for (int j = 0; j < r[i].n; j++)
			all[n++] = r[i].ids[j];
	}
	pthread_barrier_destroy(&start);
	store_close(other);
	assert_int_equal(n, JOBS);
	qsort(all, n, sizeof all[0], cmp_i64);
	for (size_t i = 1; i < n; i++)
		assert_true(all[i] != all[i - 1]);
	assert_int_equal(job_counts(f->s).sending, JOBS);
}

struct list_race {
	struct store *s;
	atomic_int *done;
	int mismatches, rounds, rc;
};

static void *race_lister(void *arg)
{
	struct list_race *r = arg;
	struct store_job_info *rows = calloc(STORE_LIST_MAX, sizeof *rows);
	struct store_job_filter flt = {.channel = -1, .limit = STORE_LIST_MAX};
	if (rows == NULL) {
		r->rc = OTP_ERR_NOMEM;
		return NULL;
	}
	/* at least once after the writer finished */
	for (bool last = false; !last;) {
		last = atomic_load(r->done) != 0;
		struct store_outbox_counts c;
		size_t n = 0;
		r->rc = store_outbox_list(r->s, &flt, rows, &n, &c);
		if (r->rc != 0)
			break;
		if ((int64_t)n != c.pending + c.sending + c.sent + c.dead + c.skipped)
			r->mismatches++;
		r->rounds++;
	}
	free(rows);
	return NULL;
}

/* The listing and its counts come from one snapshot, even while jobs are added. */
static void test_concurrent_outbox_list_counts_one_snapshot(void **state)
{
	struct fx *f = *state;
	atomic_int done = 0;
	struct list_race r = {.s = f->s, .done = &done};
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, race_lister, &r), 0);
	for (int i = 0; i < 30; i++) {
		char target[32];
		snprintf(target, sizeof target, "790088800%02d", i);
		start_ok(f->s, "", SMS, target, "1234", T0);
	}
	atomic_store(&done, 1);
	pthread_join(th, NULL);
	assert_int_equal(r.rc, 0);
	assert_int_equal(r.mismatches, 0);
	assert_true(r.rounds > 0);
	assert_int_equal(job_counts(f->s).pending, 30);
}

/* ---- SQLite only ------------------------------------------------------------------------- */

static bool skip_unless_sqlite(const struct fx *f)
{
	if (f->pg) {
		skip();
		return true;
	}
	return false;
}

static sqlite3 *raw_open(const char *path, int flags)
{
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open_v2(path, &db, flags, NULL), SQLITE_OK);
	sqlite3_busy_timeout(db, 5000);
	return db;
}

static void raw_exec(sqlite3 *db, const char *sql)
{
	char *msg = NULL;
	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
		fail_msg("%s: %s", sql, msg ? msg : sqlite3_errmsg(db));
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
	start_ok(f->s, "", SMS, "79000000001", "1234", T0);
	fx_reopen(f);
	sqlite3 *db = raw_open(f->path, SQLITE_OPEN_READWRITE);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM schema_migrations"),
	                 (int64_t)store_sqlite_migrations_count);
	assert_int_equal(raw_int(db, "SELECT max(version) FROM schema_migrations"),
	                 (int64_t)store_sqlite_migrations_count);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM verifications"), 1);
	sqlite3_stmt *q = NULL;
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &q, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(q), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(q, 0), "wal");
	sqlite3_finalize(q);
	sqlite3_close(db);

	struct stat st;
	assert_int_equal(stat(f->path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	char wal[160];
	snprintf(wal, sizeof wal, "%s-wal", f->path);
	if (stat(wal, &st) == 0)
		assert_int_equal(st.st_mode & 0077, 0);
}

static void test_sqlite_refuses_newer_schema(void **state)
{
	struct fx *f = *state;
	if (skip_unless_sqlite(f))
		return;
	store_close(f->s);
	f->s = NULL;
	sqlite3 *db = raw_open(f->path, SQLITE_OPEN_READWRITE);
	char sql[160];
	snprintf(sql, sizeof sql, "INSERT INTO schema_migrations VALUES (%zu, '9999_future.sql', 0)",
	         store_sqlite_migrations_count + 1);
	raw_exec(db, sql);
	sqlite3_close(db);
	char err[256] = "";
	assert_null(store_sqlite_open(f->path, 1, err, sizeof err));
	assert_non_null(strstr(err, "newer"));
}

/* Both backends check the name of the last applied migration (PostgreSQL's did not). */
static void test_sqlite_refuses_a_migration_recorded_under_another_name(void **state)
{
	struct fx *f = *state;
	if (skip_unless_sqlite(f))
		return;
	store_close(f->s);
	f->s = NULL;
	sqlite3 *db = raw_open(f->path, SQLITE_OPEN_READWRITE);
	raw_exec(db, "UPDATE schema_migrations SET name = '0002_someone_elses.sql' "
	             "WHERE version = (SELECT max(version) FROM schema_migrations)");
	sqlite3_close(db);
	char err[256] = "";
	assert_null(store_sqlite_open(f->path, 1, err, sizeof err));
	assert_non_null(strstr(err, "0002_someone_elses.sql"));
	assert_non_null(strstr(err, store_sqlite_migrations[store_sqlite_migrations_count - 1].name));
}

static void test_sqlite_open_errors(void **state)
{
	struct fx *f = *state;
	if (skip_unless_sqlite(f))
		return;
	char path[160];
	const struct {
		const char *path;
		int pool;
	} bad[] = {
		{path, 1},      /* a missing directory */
		{f->dir, 1},    /* a directory */
		{f->path, 0},
		{f->path, 1000},
		{"", 1},
		{NULL, 1},
	};
	snprintf(path, sizeof path, "%s/missing-dir/otpd.db", f->dir);
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char err[256] = "";
		struct store *s = store_sqlite_open(bad[i].path, bad[i].pool, err, sizeof err);
		if (s != NULL)
			fail_msg("open %zu succeeded", i);
		assert_true(strlen(err) > 0);
	}
	/* a file that is not a database */
	char junk[160];
	snprintf(junk, sizeof junk, "%s/junk.db", f->dir);
	FILE *fp = fopen(junk, "wb");
	assert_non_null(fp);
	for (int i = 0; i < 512; i++)
		fputs("not a database ", fp);
	fclose(fp);
	char err[256] = "";
	assert_null(store_sqlite_open(junk, 1, err, sizeof err));
	assert_true(strlen(err) > 0);
	assert_null(store_sqlite_open(junk, 1, NULL, 0));
	unlink(junk);
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

static void test_sqlite_erased_secrets_leave_no_bytes(void **state)
{
	struct fx *f = *state;
	if (skip_unless_sqlite(f))
		return;
	struct start_buf b;
	/* payloads erased by delivery and by giving up; a sealed copy erased with failure */
	start_ok(f->s, "", SMS, "79000000001", "MARKERSENT", T0);
	start_ok(f->s, "", SMS, "79000000002", "MARKERDEAD", T0);
	start_init(&b, "a", SMS, "79000000003", "1234", T0);
	start_seal(&b, "XFAILED");
	struct store_verification failed = start_opts(f->s, &b);
	struct store_job jobs[3];
	size_t n = 0;
	assert_int_equal(store_outbox_claim(f->s, T0, T0 + 60, jobs, 3, &n), 0);
	assert_int_equal(n, 3);
	assert_int_equal(store_outbox_sent(f->s, jobs[0].id, T0 + 1, "m"), 0);
	assert_int_equal(store_outbox_dead(f->s, jobs[1].id, T0 + 1, "no"), 0);
	assert_int_equal(store_outbox_dead(f->s, jobs[2].id, T0 + 1, "no"), 0);
	for (size_t i = 0; i < n; i++)
		store_job_fini(&jobs[i]);
	assert_int_equal(get(f->s, failed.public_id).status, OTP_VS_FAILED);
	/* one left alone: its bytes are there (the search works) */
	start_ok(f->s, "", SMS, "79000000004", "MARKERLIVE", T0 + 1);
	start_init(&b, "", SMS, "79000000005", "1234", T0 + 1);
	start_seal(&b, "XKEPT");
	start_opts(f->s, &b);
	/* sealed copies erased by cancel, approval, expiry */
	struct store_verification tmp;
	start_init(&b, "", SMS, "79000000006", "1234", T0 + 1);
	start_seal(&b, "XCANCELED");
	assert_int_equal(store_vf_cancel(f->s, "", start_opts(f->s, &b).public_id, T0 + 2, &tmp), 0);
	start_init(&b, "", SMS, "79000000007", "7777", T0 + 1);
	start_seal(&b, "XAPPROVED");
	assert_true(check(f->s, ck_id("", start_opts(f->s, &b).public_id, "7777", T0 + 2)));
	start_init(&b, "", SMS, "79000000008", "1234", T0 - LIFETIME);
	start_seal(&b, "XEXPIRED");
	start_opts(f->s, &b);
	/* a row deleted by purge */
	start_init(&b, "", SMS, "79000000009", "1234", T0 - 2 * LIFETIME);
	b.q.tmpl = "XDELETEDTEMPLATE";
	assert_int_equal(store_vf_cancel(f->s, "", start_opts(f->s, &b).public_id,
	                                 T0 - 2 * LIFETIME + 1, &tmp), 0);
	struct store_purge p = {.now = T0 + 1, .ended_before = T0 - LIFETIME + 1, .batch = 100};
	assert_int_equal(store_purge(f->s, &p, NULL), 0);

	sqlite3 *db = raw_open(f->path, SQLITE_OPEN_READWRITE);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM outbox WHERE payload IS NULL"), 3);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM verifications WHERE sealed_code IS "
	                             "NOT NULL"), 1);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM verifications WHERE tmpl IS NOT NULL"),
	                 0);
	sqlite3_close(db);

	/* closing checkpoints the WAL into the file: what is live is there, what was erased
	 * is zeroed, not left in free space */
	store_close(f->s);
	f->s = NULL;
	assert_true(file_contains(f->path, "payload:79000000004:MARKERLIVE"));
	assert_true(file_contains(f->path, "sealed:XKEPT"));
	const char *const gone[] = {"MARKERSENT", "MARKERDEAD", "XFAILED", "XCANCELED",
	                            "XAPPROVED", "XEXPIRED", "XDELETEDTEMPLATE"};
	char wal[160];
	snprintf(wal, sizeof wal, "%s-wal", f->path);
	for (size_t i = 0; i < sizeof gone / sizeof gone[0]; i++) {
		if (file_contains(f->path, gone[i]))
			fail_msg("%s is still in the database file", gone[i]);
		if (file_contains(wal, gone[i]))
			fail_msg("%s is still in the -wal file", gone[i]);
	}
	f->s = fx_open(f, 1);
}

static void test_sqlite_pool_of_one_under_threads(void **state)
{
	/* more threads than readers: callers wait for a connection, none shares one */
	struct fx *f = *state;
	if (skip_unless_sqlite(f))
		return;
	store_close(f->s);
	f->s = fx_open(f, 1);
	set_rule(f->s, "", SMS, RULE(TGT, 10, RACE_RATE));
	atomic_int done = 0;
	struct list_race r = {.s = f->s, .done = &done};
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, race_lister, &r), 0);
	race_sends(f->s, NULL);
	atomic_store(&done, 1);
	pthread_join(th, NULL);
	assert_int_equal(r.rc, 0);
	assert_int_equal(r.mismatches, 0);
	assert_int_equal(store_ping(f->s), 0);
}

/* A row of 0001's codes table. */
static void raw_code(sqlite3 *db, int64_t id, int ch, const char *target, const char *code,
                     const char *ip, int64_t created, int64_t expire, int void_, int consumed,
                     const char *sealed)
{
	uint8_t hash[OTP_HASH_LEN], lookup[OTP_HASH_LEN];
	otp_code_hash(&test_key, (enum otp_channel)ch, target, code, hash);
	otp_lookup_hash(&test_key, (enum otp_channel)ch, code, lookup);
	sqlite3_stmt *st = NULL;
	assert_int_equal(sqlite3_prepare_v2(db,
	                 "INSERT INTO codes (id, channel, target, code_hash, lookup_hash, "
	                 "sealed_code, ip, created_at, expire_at, void, consumed) VALUES (?1, ?2, "
	                 "?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)", -1, &st, NULL), SQLITE_OK);
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_int(st, 2, ch);
	sqlite3_bind_text(st, 3, target, -1, SQLITE_STATIC);
	sqlite3_bind_blob(st, 4, hash, OTP_HASH_LEN, SQLITE_STATIC);
	sqlite3_bind_blob(st, 5, lookup, OTP_HASH_LEN, SQLITE_STATIC);
	if (sealed != NULL)
		sqlite3_bind_blob(st, 6, sealed, (int)strlen(sealed), SQLITE_STATIC);
	if (ip != NULL)
		sqlite3_bind_text(st, 7, ip, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 8, created);
	sqlite3_bind_int64(st, 9, expire);
	sqlite3_bind_int(st, 10, void_);
	sqlite3_bind_int(st, 11, consumed);
	assert_int_equal(sqlite3_step(st), SQLITE_DONE);
	sqlite3_finalize(st);
}

/* The verification migrated from 0001's code of (channel, target). */
static struct store_verification migrated(struct store *s, int ch, const char *target)
{
	struct store_vf_filter flt = vf_any();
	flt.app_id = "";
	flt.target = target;
	flt.channel = ch;
	size_t n = 0;
	struct store_verification *rows = vf_all(s, flt, &n);
	if (n != 1)
		fail_msg("%zu verifications of %d/%s", n, ch, target);
	struct store_verification v = rows[0];
	free(rows);
	return v;
}

/*
 * A database of the first schema (0001, as the previous otpd left it) opened by this
 * otpd: 0002 turns its codes into compat verifications that still check with their codes,
 * with their attempts; its rules and pending jobs carry over; its sends still count.
 */
static void test_sqlite_migration_0002_carries_0001_rows(void **state)
{
	struct fx *f = *state;
	if (skip_unless_sqlite(f))
		return;
	assert_true(store_sqlite_migrations_count >= 2);
	sqlite3 *db = raw_open(f->path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
	raw_exec(db, "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
	             "name TEXT NOT NULL, applied_at INTEGER NOT NULL)");
	raw_exec(db, store_sqlite_migrations[0].sql);
	char sql[1024];
	snprintf(sql, sizeof sql, "INSERT INTO schema_migrations VALUES (1, '%s', 0)",
	         store_sqlite_migrations[0].name);
	raw_exec(db, sql);
	raw_code(db, 1, SMS, "79000000001", "1111", "10.0.0.1", T0 - 60, T0 + 240, 0, 0,
	         "sealed:1111");
	raw_code(db, 2, CALL, "79000000001", "2222", NULL, T0 - 30, T0 + 270, 0, 0, NULL);
	raw_code(db, 3, SMS, "79000000002", "3333", NULL, T0 - 30, T0 + 270, 1, 0, NULL);
	raw_code(db, 4, SMS, "79000000003", "4444", NULL, T0 - 30, T0 + 270, 0, 1, "sealed:4444");
	raw_code(db, 5, EMAIL, "a@example.com", "5555", NULL, T0 - 310, T0 - 10, 0, 0, NULL);
	raw_exec(db, "INSERT INTO attempts VALUES (0, '79000000001', 2), (0, '79000000002', 5)");
	raw_exec(db, "INSERT INTO limit_rules VALUES (0, 1, 1, 60, 20), (0, 2, 0, 10, 2), "
	             "(1, 1, 0, 30, 1)");
	snprintf(sql, sizeof sql,
	         "INSERT INTO outbox (id, code_id, channel, provider, state, payload, attempts, "
	         "next_at, created_at, updated_at) VALUES "
	         "(1, 1, 0, 'log', 'pending', 'payload:1111', 1, %lld, %lld, %lld), "
	         "(2, 2, 2, 'log', 'sent', NULL, 1, %lld, %lld, %lld)",
	         (long long)(T0 - 50), (long long)(T0 - 60), (long long)(T0 - 55),
	         (long long)(T0 - 30), (long long)(T0 - 30), (long long)(T0 - 29));
	raw_exec(db, sql);
	sqlite3_close(db);

	f->s = fx_open(f, 2);
	db = raw_open(f->path, SQLITE_OPEN_READWRITE);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM schema_migrations"),
	                 (int64_t)store_sqlite_migrations_count);
	sqlite3_close(db);
	assert_int_equal(vf_count(f->s), 5);

	/* the live codes: compat verifications, their attempts carried */
	struct store_verification v1 = migrated(f->s, SMS, "79000000001");
	assert_int_equal(strncmp(v1.public_id, "otp_", 4), 0);
	assert_int_equal(strlen(v1.public_id), 4 + 32);
	assert_string_equal(v1.app_id, "");
	assert_int_equal(v1.status, OTP_VS_PENDING);
	assert_int_equal(v1.attempts, 2);
	assert_int_equal(v1.max_attempts, 5);
	assert_false(v1.consume);
	assert_true(v1.has_sealed_code);
	assert_string_equal(v1.ip, "10.0.0.1");
	assert_int_equal(v1.created_at, T0 - 60);
	assert_int_equal(v1.expire_at, T0 + 240);
	struct store_verification v2 = migrated(f->s, CALL, "79000000001");
	assert_int_equal(v2.attempts, 0);
	assert_int_equal(v2.status, OTP_VS_PENDING);
	/* a void code is dead, a consumed one used up, an expired one expired */
	struct store_verification v3 = migrated(f->s, SMS, "79000000002");
	assert_int_equal(v3.status, OTP_VS_MAX_ATTEMPTS);
	struct store_verification v4 = migrated(f->s, SMS, "79000000003");
	assert_int_equal(v4.status, OTP_VS_APPROVED);
	assert_true(v4.consume);
	assert_false(v4.has_sealed_code);
	int rc = 0;
	assert_null(sealed_latest(f->s, "", "79000000003", T0, &rc));
	assert_int_equal(rc, OTP_ERR_NOT_FOUND);
	assert_false(check(f->s, ck_target("", "79000000002", BIT(SMS), "3333", T0)));
	assert_false(check(f->s, ck_target("", "79000000003", BIT(SMS), "4444", T0)));
	assert_false(check(f->s, ck_target("", "a@example.com", BIT(EMAIL), "5555", T0)));

	/* they check with their codes, and keep their budget */
	const unsigned smscall = BIT(SMS) | BIT(CALL);
	assert_false(check(f->s, ck_target("", "79000000001", BIT(SMS), "0000", T0)));
	assert_int_equal(get(f->s, v1.public_id).attempts, 3);
	assert_true(check(f->s, ck_target("", "79000000001", smscall, "1111", T0 + 1)));
	assert_true(check(f->s, ck_target("", "79000000001", BIT(CALL), "2222", T0 + 1)));
	assert_true(check(f->s, ck_lookup("", SMS, "1111", T0 + 2))); /* reusable, as before */
	uint8_t *sealed = NULL;
	size_t len = 0;
	char tmpl[16];
	assert_int_equal(store_vf_material(f->s, "", v1.public_id, &sealed, &len, tmpl,
	                                   sizeof tmpl), 0);
	assert_int_equal(len, strlen("sealed:1111"));
	assert_memory_equal(sealed, "sealed:1111", len);
	free(sealed);

	/* the rules, in their order, as the compat app's */
	const struct otp_limit_rule sms_rules[] = {RULE(IP, 60, 20), RULE(TGT, 10, 2)};
	assert_rules(f->s, "", SMS, sms_rules, 2);
	assert_rules(f->s, "", EMAIL, &RULE(TGT, 30, 1), 1);

	/* the sends still count: one email per 30 minutes, two sms per 10 */
	assert_int_equal(start_rc(f->s, "", EMAIL, "a@example.com", NULL, T0, NULL), OTP_ERR_LIMIT);
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", "10.0.0.2", T0, NULL), 0);
	assert_int_equal(start_rc(f->s, "", SMS, "79000000001", "10.0.0.3", T0, NULL),
	                 OTP_ERR_LIMIT);
	assert_int_equal(ev_count(f->s, v1.public_id, OTP_EV_CREATED), 1);

	/* the pending job is still due, with its payload, and belongs to v1 */
	struct store_job job;
	size_t n = 0;
	assert_int_equal(store_outbox_claim(f->s, T0 - 50, T0 + 10, &job, 1, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(job.id, 1);
	assert_int_equal(job.attempts, 1);
	assert_int_equal(job.payload_len, strlen("payload:1111"));
	assert_memory_equal(job.payload, "payload:1111", job.payload_len);
	store_job_fini(&job);
	assert_int_equal(job_info(f->s, 1).code_id, v1.id);
	assert_int_equal(job_info(f->s, 2).code_id, v2.id);
	assert_int_equal(store_outbox_sent(f->s, 1, T0 + 3, "m-1"), 0);
	assert_int_equal(ev_count(f->s, v1.public_id, OTP_EV_SENT), 1);
	/* new rows take new ids */
	struct store_verification fresh = start_ok(f->s, "", SMS, "79000000009", "9999", T0 + 4);
	assert_true(fresh.id > 5);
	assert_true(check(f->s, ck_id("", fresh.public_id, "9999", T0 + 5)));
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
		T(test_ping_and_name),
		T(test_reopen_keeps_data),
		T(test_start_writes_verification_job_and_event),
		T(test_start_optional_fields_absent),
		T(test_start_skip_records_skipped_job),
		T(test_start_invalid_requests),
		T(test_limit_by_target),
		T(test_limit_by_ip),
		T(test_limit_ip_rate_zero_spares_sends_without_ip),
		T(test_limit_window_edges),
		T(test_limit_first_refusing_rule_decides),
		T(test_limit_rate_zero_forbids_and_refusal_writes_only_an_event),
		T(test_limit_refused_sends_do_not_count),
		T(test_start_require_ip_follows_ip_rules),
		T(test_limits_are_per_app),
		T(test_start_idempotency),
		T(test_check_by_id),
		T(test_check_by_id_wrong_code_events),
		T(test_check_by_target_any_live_code_matches),
		T(test_check_latest_compares_the_newest_only),
		T(test_check_by_lookup),
		T(test_check_expiry),
		T(test_check_wrong_code_counts_against_every_candidate),
		T(test_check_new_verification_does_not_refresh_older_attempts),
		T(test_check_masks_share_one_budget),
		T(test_check_unlimited_attempts),
		T(test_check_consume_uses_the_code_up),
		T(test_check_reusable_code_keeps_answering_and_writes_nothing),
		T(test_check_invalid_requests),
		T(test_check_compares_the_newest_candidates_max),
		T(test_resend_queues_another_message),
		T(test_resend_refusals),
		T(test_cancel),
		T(test_list_filters_and_order),
		T(test_list_cursor_stable_under_inserts),
		T(test_events_list_filters),
		T(test_material),
		T(test_sealed_latest),
		T(test_rules_replace_and_get),
		T(test_rules_invalid_change_nothing),
		T(test_apps),
		T(test_keys),
		T(test_meta),
		T(test_purge_expires_pending),
		T(test_purge_erases_sealed_copies_of_expired_codes),
		T(test_purge_deletes_past_retention),
		T(test_purge_in_batches),
		T(test_outbox_claim_order_and_payload),
		T(test_outbox_lease_expiry_reclaims),
		T(test_outbox_finish_acts_on_claimed_jobs_only),
		T(test_outbox_dead_fails_undeliverable_native_verifications),
		T(test_outbox_long_and_invalid_texts_are_cleaned),
		T(test_outbox_list_filters_pages_and_counts),
		T(test_outbox_next_due_and_backlog),
		T(test_concurrent_sends_respect_rate),
		T(test_concurrent_sends_from_two_handles_respect_rate),
		T(test_concurrent_wrong_checks_count_exactly),
		T(test_concurrent_wrong_checks_from_two_handles_count_exactly),
		T(test_concurrent_checks_with_the_right_code),
		T(test_concurrent_claims_from_two_handles_never_share_a_job),
		T(test_concurrent_outbox_list_counts_one_snapshot),
		T(test_sqlite_schema_versions_and_mode),
		T(test_sqlite_refuses_newer_schema),
		T(test_sqlite_refuses_a_migration_recorded_under_another_name),
		T(test_sqlite_open_errors),
		T(test_sqlite_erased_secrets_leave_no_bytes),
		T(test_sqlite_pool_of_one_under_threads),
		cmocka_unit_test_setup_teardown(test_sqlite_migration_0002_carries_0001_rows,
		                                fx_setup_empty, fx_teardown),
	};
#undef T
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	otp_key_wipe(&test_key);
	return rc;
}
