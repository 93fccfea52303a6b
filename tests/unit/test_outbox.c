/*
 * test_outbox.c - the outbox workers against the real SQLite store and the real
 * providers, with a local fake HTTP server (tests/fakes/fakes.py) at the network edge;
 * and the pure backoff math with a fixed rng.
 * Needs OTPD_TEST_SRCDIR (set by meson) to find the fake, and /usr/bin/python3.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "config.h"
#include "core/message.h"
#include "core/num.h"
#include "core/otp.h"
#include "outbox/backoff.h"
#include "outbox/outbox.h"
#include "store/store.h"

/* The provider the tests deliver through: a generic HTTP POST, pointed at the fake. */
#define TEST_PROVIDER "webhook"
#define WAIT_LONG_MS 20000

/* ---- small helpers ------------------------------------------------------------------ */

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* ---- a config from a table ---------------------------------------------------------- */

struct env {
	const char *name;
	const char *value;
};

#define ENV_MAX 48

struct env_table {
	struct env e[ENV_MAX];
	size_t n;
};

static const char *env_get(void *ctx, const char *name)
{
	const struct env_table *t = ctx;

	/* later entries override earlier ones */
	for (size_t i = t->n; i-- > 0;)
		if (strcmp(t->e[i].name, name) == 0)
			return t->e[i].value;
	return NULL;
}

static void env_set(struct env_table *t, const char *name, const char *value)
{
	assert_true(t->n < ENV_MAX);
	t->e[t->n].name = name;
	t->e[t->n].value = value;
	t->n++;
}

/* ---- the fixture -------------------------------------------------------------------- */

struct fx {
	char dir[64];
	char db[128];
	char port_file[128];
	char record[128];
	char base[80];
	char url[96];
	struct store *store;
	struct otp_key key;
	pid_t fake;
	struct env_table env;
	struct config *cfg;
	struct outbox *o;
};

static int fx_setup(void **state)
{
	struct fx *f = calloc(1, sizeof *f);
	uint8_t master[OTP_KEY_LEN];
	char err[256] = "";

	assert_non_null(f);
	snprintf(f->dir, sizeof f->dir, "/tmp/otpd-test-outbox-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->db, sizeof f->db, "%s/otpd.db", f->dir);
	snprintf(f->port_file, sizeof f->port_file, "%s/fake.port", f->dir);
	snprintf(f->record, sizeof f->record, "%s/fake.jsonl", f->dir);
	f->store = store_sqlite_open(f->db, 2, err, sizeof err);
	if (!f->store)
		fail_msg("store_sqlite_open: %s", err);
	for (size_t i = 0; i < sizeof master; i++)
		master[i] = (uint8_t)(i * 7 + 1);
	assert_int_equal(otp_key_init(&f->key, master), 0);
	f->fake = -1;

	/* small, fast settings; each test adds its own */
	env_set(&f->env, "OTPD_DATA_DIR", f->dir);
	env_set(&f->env, "OTPD_PROVIDER", TEST_PROVIDER);
	env_set(&f->env, "OTPD_OUTBOX_WORKERS", "2");
	env_set(&f->env, "OTPD_OUTBOX_MAX_TRIES", "10");
	env_set(&f->env, "OTPD_OUTBOX_MAX_AGE", "600");
	env_set(&f->env, "OTPD_OUTBOX_BACKOFF_BASE_MS", "10");
	env_set(&f->env, "OTPD_OUTBOX_BACKOFF_MAX", "1");
	env_set(&f->env, "OTPD_OUTBOX_LEASE", "30");
	env_set(&f->env, "OTPD_PROVIDER_TIMEOUT", "5");
	env_set(&f->env, "OTPD_WEBHOOK_SECRET", "test-webhook-secret");
	env_set(&f->env, "OTPD_TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef");
	env_set(&f->env, "OTPD_TWILIO_AUTH_TOKEN", "test-twilio-token");
	env_set(&f->env, "OTPD_TWILIO_FROM", "15550001111");
	*state = f;
	return 0;
}

static void fake_stop(struct fx *f)
{
	int status;

	if (f->fake <= 0)
		return;
	kill(f->fake, SIGTERM);
	for (int i = 0; i < 500; i++) {
		if (waitpid(f->fake, &status, WNOHANG) == f->fake) {
			f->fake = -1;
			return;
		}
		nap_ms(10);
	}
	kill(f->fake, SIGKILL);
	waitpid(f->fake, &status, 0);
	f->fake = -1;
}

static void rm_dir(const char *dir)
{
	const char *names[] = { "otpd.db", "otpd.db-wal", "otpd.db-shm", "fake.port",
	                        "fake.jsonl", "secret.key" };
	char p[192];

	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		snprintf(p, sizeof p, "%s/%s", dir, names[i]);
		unlink(p);
	}
	rmdir(dir);
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;

	outbox_free(f->o);
	fake_stop(f);
	store_close(f->store);
	config_free(f->cfg);
	otp_key_wipe(&f->key);
	rm_dir(f->dir);
	free(f);
	return 0;
}

/* Start the fake HTTP server with a script (JSON list, or NULL: always 200) and point
 * the provider at it. */
static void fake_start(struct fx *f, const char *script)
{
	const char *srcdir = getenv("OTPD_TEST_SRCDIR");
	char fakes[512], buf[32];
	int64_t deadline = now_ms() + 10000, port = 0;

	if (!srcdir)
		fail_msg("OTPD_TEST_SRCDIR is not set (run through meson test)");
	snprintf(fakes, sizeof fakes, "%s/tests/fakes/fakes.py", srcdir);
	f->fake = fork();
	assert_true(f->fake >= 0);
	if (f->fake == 0) {
		const char *argv[12] = { "/usr/bin/python3", fakes, "http", "--port", "0",
		                         "--port-file", f->port_file, "--record", f->record };
		int n = 9;
		if (script) {
			argv[n++] = "--script";
			argv[n++] = script;
		}
		argv[n] = NULL;
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	for (;;) {
		FILE *fp = fopen(f->port_file, "r");
		if (fp) {
			if (fgets(buf, sizeof buf, fp)) {
				buf[strcspn(buf, "\r\n")] = '\0';
				if (otp_parse_i64(buf, 1, 65535, &port) == 0) {
					fclose(fp);
					break;
				}
			}
			fclose(fp);
		}
		if (now_ms() > deadline || waitpid(f->fake, NULL, WNOHANG) == f->fake)
			fail_msg("fake HTTP server did not start");
		nap_ms(10);
	}
	snprintf(f->base, sizeof f->base, "http://127.0.0.1:%d", (int)port);
	snprintf(f->url, sizeof f->url, "%s/hook", f->base);
	env_set(&f->env, "OTPD_WEBHOOK_URL", f->url);
	env_set(&f->env, "OTPD_TWILIO_BASE_URL", f->base);
}

/* Requests the fake has received (it records each before answering). */
static int fake_requests(const struct fx *f)
{
	FILE *fp = fopen(f->record, "r");
	int n = 0, c;

	if (!fp)
		return 0;
	while ((c = fgetc(fp)) != EOF)
		if (c == '\n')
			n++;
	fclose(fp);
	return n;
}

static void wait_requests(const struct fx *f, int n, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;

	while (fake_requests(f) < n) {
		if (now_ms() > deadline)
			fail_msg("fake got %d requests, expected %d", fake_requests(f), n);
		nap_ms(10);
	}
}

static void load_config(struct fx *f)
{
	char *errs = NULL;

	config_free(f->cfg);
	f->cfg = NULL;
	if (config_load(env_get, &f->env, &f->cfg, &errs) != 0)
		fail_msg("config_load: %s", errs ? errs : "?");
	free(errs);
}

/* Load the config and start the outbox. */
static void outbox_up(struct fx *f)
{
	char err[256] = "";

	load_config(f);
	f->o = outbox_new(f->cfg, f->store, &f->key, err, sizeof err);
	if (!f->o)
		fail_msg("outbox_new: %s", err);
	assert_int_equal(outbox_start(f->o), 0);
}

/* Commit a code and its delivery job the way the send path does; returns the job id.
 * `seal_key` NULL: the fixture's key. */
static int64_t enqueue(struct fx *f, const char *target, const char *provider,
                       const struct otp_key *seal_key)
{
	struct otp_message m = {
		.channel = OTP_CH_SMS, .target = (char *)target, .code = "482913",
		.text = "Your code is 482913", .lifetime = 300,
	};
	struct store_start req;
	struct store_start_result res;
	char public_id[STORE_ID_MAX];
	static int seq;
	uint8_t *plain = NULL, *sealed = NULL;
	size_t len = 0;

	assert_int_equal(otp_message_encode(&m, &plain, &len), 0);
	sealed = malloc(len + OTP_SEAL_OVERHEAD);
	assert_non_null(sealed);
	otp_seal(seal_key ? seal_key : &f->key, &otp_rng_system, "outbox", plain, len, sealed);

	memset(&req, 0, sizeof req);
	memset(&res, 0, sizeof res);
	snprintf(public_id, sizeof public_id, "otp_test%d_%d", (int)getpid(), ++seq);
	req.app_id = "";
	req.public_id = public_id;
	req.max_attempts = 5;
	req.max_sends = 1;
	req.channel = OTP_CH_SMS;
	req.target = target;
	req.ip = "127.0.0.1";
	otp_code_hash(&f->key, OTP_CH_SMS, target, m.code, req.code_hash);
	otp_lookup_hash(&f->key, OTP_CH_SMS, m.code, req.lookup_hash);
	req.now = (int64_t)time(NULL);
	req.expire_at = req.now + 300;
	req.provider = provider ? provider : TEST_PROVIDER;
	req.payload = sealed;
	req.payload_len = len + OTP_SEAL_OVERHEAD;
	assert_int_equal(store_vf_start(f->store, &req, &res), 0);
	assert_true(res.job_id > 0);
	free(plain);
	free(sealed);
	return res.job_id;
}

static void job_info(struct fx *f, int64_t id, struct store_job_info *out)
{
	struct store_job_filter flt = { .state = NULL, .channel = -1, .provider = NULL,
	                                .before_id = id + 1, .limit = 1 };
	struct store_job_info row;
	size_t n = 0;

	assert_int_equal(store_outbox_list(f->store, &flt, &row, &n, NULL), 0);
	assert_int_equal(n, 1);
	assert_int_equal(row.id, id);
	*out = row;
}

/* Poll until the job is in `state`; returns its row. */
static void wait_state(struct fx *f, int64_t id, const char *state, int timeout_ms,
                       struct store_job_info *out)
{
	int64_t deadline = now_ms() + timeout_ms;

	for (;;) {
		job_info(f, id, out);
		if (strcmp(out->state, state) == 0)
			return;
		if (now_ms() > deadline)
			fail_msg("job %lld is %s (attempts %d, error '%s'), expected %s",
			         (long long)id, out->state, out->attempts, out->last_error, state);
		nap_ms(20);
	}
}

/* Bytes of the job's payload still in the database (0: erased). Read straight from the
 * file: the store API never hands a finished job's payload out. */
static int payload_bytes(const struct fx *f, int64_t id)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	int n = -1;

	assert_int_equal(sqlite3_open_v2(f->db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT length(payload) FROM outbox WHERE id = ?",
	                                    -1, &st, NULL), SQLITE_OK);
	sqlite3_bind_int64(st, 1, id);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	n = sqlite3_column_type(st, 0) == SQLITE_NULL ? 0 : sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return n;
}

/* ---- delivery ----------------------------------------------------------------------- */

static void test_delivered_once(void **state)
{
	struct fx *f = *state;
	struct store_job_info info;
	int64_t id, t0;

	fake_start(f, NULL);
	outbox_up(f);
	assert_string_equal(outbox_provider_for(f->o, OTP_CH_SMS), TEST_PROVIDER);
	assert_string_equal(outbox_provider_for(f->o, OTP_CH_WHATSAPP), TEST_PROVIDER);
	assert_null(outbox_provider_for(f->o, OTP_CH_COUNT));

	t0 = now_ms();
	id = enqueue(f, "77011234567", NULL, NULL);
	outbox_notify(f->o);
	wait_state(f, id, STORE_JOB_SENT, WAIT_LONG_MS, &info);
	/* notify wakes a worker at once: well before the 1 s poll would have */
	assert_true(now_ms() - t0 < 5000);
	outbox_stop(f->o, 5);
	assert_int_equal(info.attempts, 1);
	assert_int_equal(fake_requests(f), 1);
	assert_int_equal(payload_bytes(f, id), 0);
}

static void test_retry_then_delivered(void **state)
{
	struct fx *f = *state;
	struct store_job_info info;
	int64_t id;

	fake_start(f, "[{\"status\": 500, \"times\": 3}, {\"status\": 200}]");
	outbox_up(f);
	id = enqueue(f, "77011234567", NULL, NULL);
	outbox_notify(f->o);
	wait_state(f, id, STORE_JOB_SENT, WAIT_LONG_MS, &info);
	outbox_stop(f->o, 5);
	assert_int_equal(info.attempts, 4);
	assert_int_equal(fake_requests(f), 4);
	assert_int_equal(payload_bytes(f, id), 0);
}

static void test_dead_after_max_tries(void **state)
{
	struct fx *f = *state;
	struct store_job_info info;
	int64_t id;

	env_set(&f->env, "OTPD_OUTBOX_MAX_TRIES", "3");
	fake_start(f, "[{\"status\": 503}]");
	outbox_up(f);
	id = enqueue(f, "77011234567", NULL, NULL);
	outbox_notify(f->o);
	wait_state(f, id, STORE_JOB_DEAD, WAIT_LONG_MS, &info);
	outbox_stop(f->o, 5);
	assert_int_equal(info.attempts, 3);
	assert_int_equal(fake_requests(f), 3);
	assert_true(info.last_error[0] != '\0');
	assert_non_null(strstr(info.last_error, "gave up after 3 attempts"));
	assert_int_equal(payload_bytes(f, id), 0);
}

/* A job claimed by a worker that died keeps its lease; once it expires, a live worker
 * re-claims and delivers it. */
static void test_reclaimed_after_lease(void **state)
{
	struct fx *f = *state;
	struct store_job jobs[2];
	struct store_job_info info;
	size_t n = 0;
	int64_t id, now, lease_until;

	fake_start(f, NULL);
	id = enqueue(f, "77011234567", NULL, NULL);
	now = (int64_t)time(NULL);
	lease_until = now + 2;
	memset(jobs, 0, sizeof jobs);
	assert_int_equal(store_outbox_claim(f->store, now, lease_until, jobs, 2, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(jobs[0].id, id);
	store_job_fini(&jobs[0]);             /* ... and the worker "dies" */

	outbox_up(f);
	outbox_notify(f->o);
	/* while the lease holds, nobody touches it */
	while ((int64_t)time(NULL) < lease_until) {
		job_info(f, id, &info);
		assert_string_equal(info.state, STORE_JOB_SENDING);
		assert_int_equal(fake_requests(f), 0);
		nap_ms(50);
	}
	wait_state(f, id, STORE_JOB_SENT, WAIT_LONG_MS, &info);
	assert_true((int64_t)time(NULL) >= lease_until);
	outbox_stop(f->o, 5);
	assert_int_equal(info.attempts, 1);
	assert_int_equal(fake_requests(f), 1);
}

/* A provider that hangs: outbox_stop returns at its deadline, the job claimed with it
 * but not started goes back to pending untouched, and the hanging send is recorded
 * (timed out, retry) once outbox_free has joined its worker. */
static void test_stop_deadline_with_hanging_provider(void **state)
{
	struct fx *f = *state;
	struct store_job_info a, b;
	int64_t id1, id2, t0, took;

	env_set(&f->env, "OTPD_OUTBOX_WORKERS", "1");
	env_set(&f->env, "OTPD_PROVIDER_TIMEOUT", "5");
	env_set(&f->env, "OTPD_OUTBOX_LEASE", "60");
	fake_start(f, "[{\"status\": 200, \"delay\": 30}]");
	id1 = enqueue(f, "77011234567", NULL, NULL);
	id2 = enqueue(f, "77017654321", NULL, NULL);
	outbox_up(f);
	wait_requests(f, 1, WAIT_LONG_MS);    /* the first job is now hanging */

	t0 = now_ms();
	outbox_stop(f->o, 1);
	took = now_ms() - t0;
	/* the deadline, not the provider's 5 s timeout (slack for a loaded machine) */
	assert_true(took >= 900);
	assert_true(took < 4000);

	job_info(f, id1, &a);
	job_info(f, id2, &b);
	assert_string_equal(a.state, STORE_JOB_SENDING);
	assert_string_equal(b.state, STORE_JOB_PENDING);
	assert_int_equal(b.attempts, 0);

	/* free waits for the provider's own timeout, then the outcome is written */
	outbox_free(f->o);
	f->o = NULL;
	job_info(f, id1, &a);
	assert_string_equal(a.state, STORE_JOB_PENDING);
	assert_int_equal(a.attempts, 1);
	assert_true(a.last_error[0] != '\0');
	assert_int_equal(fake_requests(f), 1);
	assert_true(payload_bytes(f, id2) > 0);
}

/* Count the lines of `path` that contain `needle`. */
static int count_lines(const char *path, const char *needle)
{
	char line[4096];
	FILE *fp = fopen(path, "r");
	int n = 0;

	if (!fp)
		return 0;
	while (fgets(line, sizeof line, fp))
		if (strstr(line, needle))
			n++;
	fclose(fp);
	return n;
}

/* The database refuses writes (another connection holds the write lock past the store's
 * busy timeout): the claim fails, the worker logs it, backs off, and delivers once the
 * lock is gone. */
static void test_store_error_then_recovers(void **state)
{
	struct fx *f = *state;
	struct store_job_info info;
	sqlite3 *db = NULL;
	char log_path[160];
	int64_t id, until;
	int saved_err, fd;

	env_set(&f->env, "OTPD_OUTBOX_WORKERS", "1");
	fake_start(f, NULL);
	id = enqueue(f, "77011234567", NULL, NULL);

	assert_int_equal(sqlite3_open_v2(f->db, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);

	/* the log is the observable outcome of a failed claim: capture stderr */
	snprintf(log_path, sizeof log_path, "%s/stderr.log", f->dir);
	fflush(stderr);
	saved_err = dup(STDERR_FILENO);
	fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(saved_err >= 0 && fd >= 0);
	dup2(fd, STDERR_FILENO);
	close(fd);

	outbox_up(f);
	outbox_notify(f->o);
	/* longer than the store's busy timeout (10 s): at least one claim fails */
	until = now_ms() + 11500;
	while (now_ms() < until && count_lines(log_path, "outbox claim failed") == 0) {
		assert_int_equal(fake_requests(f), 0);
		nap_ms(50);
	}
	assert_int_equal(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);

	wait_state(f, id, STORE_JOB_SENT, WAIT_LONG_MS, &info);
	outbox_stop(f->o, 5);
	fflush(stderr);
	dup2(saved_err, STDERR_FILENO);
	close(saved_err);

	assert_int_equal(count_lines(log_path, "outbox claim failed"), 1);
	assert_int_equal(info.attempts, 1);
	assert_int_equal(fake_requests(f), 1);
	unlink(log_path);
}

/* A payload that does not open (sealed with another key) or names a provider that
 * cannot be built is dead at once, without a request. */
static void test_unusable_jobs_are_dead(void **state)
{
	struct fx *f = *state;
	struct otp_key other;
	uint8_t master[OTP_KEY_LEN];
	struct store_job_info info;
	int64_t bad_seal, bad_provider, good;

	memset(master, 0x5a, sizeof master);
	assert_int_equal(otp_key_init(&other, master), 0);
	fake_start(f, NULL);
	bad_seal = enqueue(f, "77011234567", NULL, &other);
	bad_provider = enqueue(f, "77011234568", "no-such-provider", NULL);
	good = enqueue(f, "77011234569", NULL, NULL);
	outbox_up(f);
	outbox_notify(f->o);

	wait_state(f, bad_seal, STORE_JOB_DEAD, WAIT_LONG_MS, &info);
	assert_non_null(strstr(info.last_error, "cannot be opened"));
	assert_int_equal(payload_bytes(f, bad_seal), 0);
	wait_state(f, bad_provider, STORE_JOB_DEAD, WAIT_LONG_MS, &info);
	assert_non_null(strstr(info.last_error, "no-such-provider"));
	wait_state(f, good, STORE_JOB_SENT, WAIT_LONG_MS, &info);
	outbox_stop(f->o, 5);
	assert_int_equal(fake_requests(f), 1);
	otp_key_wipe(&other);
}

/* A permanent refusal is dead at the first attempt; the provider's error, which quotes
 * the number, is stored and logged with the number masked. Also: channels configured
 * with different providers get each their own. */
static void test_permanent_refusal_masks_target(void **state)
{
	struct fx *f = *state;
	struct store_job_info info;
	int64_t id;

	env_set(&f->env, "OTPD_SMS_PROVIDER", "twilio");
	fake_start(f, "[{\"status\": 400, \"json\": {\"code\": 21211, \"status\": 400, "
	              "\"message\": \"The 'To' number +77011234567 is not a valid phone number.\"}}]");
	outbox_up(f);
	assert_string_equal(outbox_provider_for(f->o, OTP_CH_SMS), "twilio");
	assert_string_equal(outbox_provider_for(f->o, OTP_CH_EMAIL), TEST_PROVIDER);
	id = enqueue(f, "77011234567", "twilio", NULL);
	outbox_notify(f->o);
	wait_state(f, id, STORE_JOB_DEAD, WAIT_LONG_MS, &info);
	outbox_stop(f->o, 5);
	assert_int_equal(info.attempts, 1);
	assert_int_equal(fake_requests(f), 1);
	assert_non_null(strstr(info.last_error, "21211"));
	assert_non_null(strstr(info.last_error, "+7701***4567"));
	assert_null(strstr(info.last_error, "77011234567"));
	assert_int_equal(payload_bytes(f, id), 0);
}

/* Many jobs, several workers: each delivered exactly once. */
static void test_many_jobs_each_once(void **state)
{
	struct fx *f = *state;
	struct store_job_info info;
	int64_t ids[40];
	char target[32];

	env_set(&f->env, "OTPD_OUTBOX_WORKERS", "4");
	fake_start(f, NULL);
	outbox_up(f);
	for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
		snprintf(target, sizeof target, "7701%07zu", i);
		ids[i] = enqueue(f, target, NULL, NULL);
		outbox_notify(f->o);
	}
	for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
		wait_state(f, ids[i], STORE_JOB_SENT, WAIT_LONG_MS, &info);
		assert_int_equal(info.attempts, 1);
	}
	outbox_stop(f->o, 5);
	assert_int_equal(fake_requests(f), (int)(sizeof ids / sizeof ids[0]));
}

static void test_dummy_builds_no_provider(void **state)
{
	struct fx *f = *state;
	char err[256] = "";

	/* no webhook URL: the provider could not be built, and need not be */
	env_set(&f->env, "DUMMY", "true");
	load_config(f);
	f->o = outbox_new(f->cfg, f->store, &f->key, err, sizeof err);
	assert_non_null(f->o);
	for (int ch = 0; ch < OTP_CH_COUNT; ch++)
		assert_string_equal(outbox_provider_for(f->o, ch), "dummy");
	assert_int_equal(outbox_start(f->o), 0);
	outbox_stop(f->o, 1);
}

static void test_new_fails_on_incomplete_provider(void **state)
{
	struct fx *f = *state;
	char err[256] = "";

	/* OTPD_PROVIDER=webhook without OTPD_WEBHOOK_URL */
	load_config(f);
	f->o = outbox_new(f->cfg, f->store, &f->key, err, sizeof err);
	assert_null(f->o);
	assert_non_null(strstr(err, TEST_PROVIDER));
}

/* ---- backoff (pure) ----------------------------------------------------------------- */

static void test_backoff_window(void **state)
{
	static const struct {
		int base_ms, max_s, attempts;
		int64_t lo, hi;
	} cases[] = {
		{ 1000, 300, 1, 500, 1000 },
		{ 1000, 300, 2, 500, 2000 },
		{ 1000, 300, 3, 500, 4000 },
		{ 1000, 300, 9, 500, 256000 },
		{ 1000, 300, 10, 500, 300000 },            /* capped */
		{ 1000, 300, 1000000, 500, 300000 },       /* no overflow */
		{ 1000, 300, 0, 500, 1000 },               /* < 1 counts as 1 */
		{ 1000, 300, -5, 500, 1000 },
		{ 100, 1, 5, 50, 1000 },
		{ 10, 1, 3, 5, 40 },
		{ 3000, 1, 1, 1000, 1000 },                /* cap below base wins */
		{ 1, 86400, 60, 0, 86400000 },
		{ 3600000, 86400, 40, 1800000, 86400000 },
		{ 0, 10, 3, 0, 0 },
		{ 1000, 0, 7, 500, 1000 },                 /* no cap: stays at base */
		{ 2147483647, 86400, 3, 86400000, 86400000 },
	};

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int64_t lo = -1, hi = -1;
		outbox_backoff_window(cases[i].base_ms, cases[i].max_s, cases[i].attempts, &lo, &hi);
		if (lo != cases[i].lo || hi != cases[i].hi)
			fail_msg("case %zu: got [%lld, %lld], want [%lld, %lld]", i, (long long)lo,
			         (long long)hi, (long long)cases[i].lo, (long long)cases[i].hi);
	}
}

/* A fixed, seeded generator (xorshift64*): the same seed gives the same delays. */
struct xs {
	uint64_t s;
};

static void xs_fill(void *ctx, void *buf, size_t n)
{
	struct xs *x = ctx;
	uint8_t *p = buf;

	for (size_t i = 0; i < n; i++) {
		x->s ^= x->s >> 12;
		x->s ^= x->s << 25;
		x->s ^= x->s >> 27;
		p[i] = (uint8_t)((x->s * 2685821657736338717ULL) >> 56);
	}
}

static void never_fill(void *ctx, void *buf, size_t n)
{
	(void)ctx;
	(void)buf;
	(void)n;
	fail_msg("the rng was used for an empty window");
}

static void test_backoff_draws(void **state)
{
	struct xs a = { 0x9e3779b97f4a7c15ULL }, b = { 0x9e3779b97f4a7c15ULL };
	struct otp_rng ra = { xs_fill, &a }, rb = { xs_fill, &b };
	const struct otp_rng never = { never_fill, NULL };

	(void)state;
	for (int attempts = 1; attempts <= 12; attempts++) {
		int64_t lo, hi, seen_min = INT64_MAX, seen_max = INT64_MIN;
		outbox_backoff_window(1000, 300, attempts, &lo, &hi);
		for (int i = 0; i < 2000; i++) {
			int64_t d = outbox_backoff_ms(1000, 300, attempts, &ra);
			/* deterministic for a fixed rng */
			assert_int_equal(d, outbox_backoff_ms(1000, 300, attempts, &rb));
			assert_true(d >= lo && d <= hi);
			if (d < seen_min)
				seen_min = d;
			if (d > seen_max)
				seen_max = d;
		}
		/* jitter spreads over the whole window, not a corner of it */
		assert_true(seen_min <= lo + (hi - lo) / 20);
		assert_true(seen_max >= hi - (hi - lo) / 20);
	}
	/* an empty window needs no randomness */
	assert_int_equal(outbox_backoff_ms(3000, 1, 4, &never), 1000);
	assert_int_equal(outbox_backoff_ms(0, 10, 4, &never), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_backoff_window),
		cmocka_unit_test(test_backoff_draws),
		cmocka_unit_test_setup_teardown(test_delivered_once, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_retry_then_delivered, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_dead_after_max_tries, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_reclaimed_after_lease, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_stop_deadline_with_hanging_provider, fx_setup,
		                                fx_teardown),
		cmocka_unit_test_setup_teardown(test_store_error_then_recovers, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_unusable_jobs_are_dead, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_permanent_refusal_masks_target, fx_setup,
		                                fx_teardown),
		cmocka_unit_test_setup_teardown(test_many_jobs_each_once, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_dummy_builds_no_provider, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_new_fails_on_incomplete_provider, fx_setup,
		                                fx_teardown),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
