/*
 * test_providers.c - every provider's exact request, checked against the local fake
 * servers of tests/fakes/fakes.py (started per test on a free port, read back from their
 * record file), and how each answer is classified: delivered, retry, permanent.
 * Settings come from config_load with a table instead of the environment.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

#include "config.h"
#include "core/errors.h"
#include "core/message.h"
#include "core/num.h"
#include "providers/provider.h"

/* ---- the fakes ------------------------------------------------------------------- */

/* End of fake_start's argument list: a pointer-typed NULL for the variadic list. */
#define ARGS_END ((const char *)0)

struct fake {
	pid_t pid;
	int port;
	char dir[64];
	char record[128];
	char url[64];
};

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Start `fakes.py kind ... extra` and wait (polling, bounded) for its port file. */
static void fake_start(struct fake *f, const char *kind, ...)
{
	const char *srcdir = getenv("OTPD_TEST_SRCDIR");
	char script[512], portfile[128];
	const char *argv[32];
	size_t argc = 0;
	va_list ap;

	memset(f, 0, sizeof *f);
	snprintf(f->dir, sizeof f->dir, "/tmp/otpd-test-providers-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->record, sizeof f->record, "%s/record.jsonl", f->dir);
	snprintf(portfile, sizeof portfile, "%s/port", f->dir);
	snprintf(script, sizeof script, "%s/tests/fakes/fakes.py", srcdir ? srcdir : ".");

	argv[argc++] = "/usr/bin/python3";
	argv[argc++] = script;
	argv[argc++] = kind;
	argv[argc++] = "--port-file";
	argv[argc++] = portfile;
	argv[argc++] = "--record";
	argv[argc++] = f->record;
	va_start(ap, kind);
	for (const char *a = va_arg(ap, const char *); a != NULL; a = va_arg(ap, const char *)) {
		assert_true(argc < sizeof argv / sizeof argv[0] - 1);
		argv[argc++] = a;
	}
	va_end(ap);
	argv[argc] = NULL;

	f->pid = fork();
	assert_true(f->pid >= 0);
	if (f->pid == 0) {
		/* the fake goes when the test goes, even when an assertion ends it early */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		int devnull = open("/dev/null", O_WRONLY);
		if (devnull >= 0)
			dup2(devnull, STDOUT_FILENO);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 1000; i++) { /* up to 10 s */
		FILE *pf = fopen(portfile, "r");
		if (pf != NULL) {
			char line[32] = "";
			char *got = fgets(line, sizeof line, pf);
			fclose(pf);
			line[strcspn(line, "\n")] = '\0';
			int64_t port = 0;
			assert_non_null(got);
			assert_int_equal(otp_parse_i64(line, 1, 65535, &port), 0);
			f->port = (int)port;
			snprintf(f->url, sizeof f->url, "http://127.0.0.1:%d", f->port);
			return;
		}
		int status;
		if (waitpid(f->pid, &status, WNOHANG) == f->pid)
			fail_msg("fake %s exited before listening (status %d)", kind, status);
		sleep_ms(10);
	}
	fail_msg("fake %s did not start", kind);
}

static void fake_stop(struct fake *f)
{
	char path[160];
	if (f->pid > 0) {
		kill(f->pid, SIGTERM);
		waitpid(f->pid, NULL, 0);
		f->pid = 0;
	}
	unlink(f->record);
	snprintf(path, sizeof path, "%s/port", f->dir);
	unlink(path);
	rmdir(f->dir);
}

/* Every record so far, as a JSON array. */
static json_t *fake_records(const struct fake *f)
{
	json_t *all = json_array();
	FILE *fp = fopen(f->record, "r");
	if (fp == NULL)
		return all;
	char *line = NULL;
	size_t cap = 0;
	while (getline(&line, &cap, fp) > 0) {
		json_error_t je;
		json_t *rec = json_loads(line, 0, &je);
		if (rec == NULL)
			fail_msg("bad record line: %s", je.text);
		json_array_append_new(all, rec);
	}
	free(line);
	fclose(fp);
	return all;
}

static json_t *only_record(const struct fake *f)
{
	json_t *all = fake_records(f);
	assert_int_equal(json_array_size(all), 1);
	json_t *rec = json_incref(json_array_get(all, 0));
	json_decref(all);
	return rec;
}

/* The recorded body bytes, NUL-terminated (caller frees). */
static char *rec_body(const json_t *rec, size_t *len)
{
	const char *hex = json_string_value(json_object_get(rec, "body_hex"));
	assert_non_null(hex);
	size_t n = strlen(hex) / 2;
	char *out = malloc(n + 1);
	assert_non_null(out);
	size_t got = 0;
	assert_int_equal(sodium_hex2bin((unsigned char *)out, n, hex, strlen(hex), NULL, &got, NULL), 0);
	out[got] = '\0';
	if (len)
		*len = got;
	return out;
}

static const char *rec_header(const json_t *rec, const char *name)
{
	json_t *hs = json_object_get(rec, "headers");
	size_t i;
	json_t *h;
	json_array_foreach(hs, i, h) {
		if (strcasecmp(json_string_value(json_array_get(h, 0)), name) == 0)
			return json_string_value(json_array_get(h, 1));
	}
	return NULL;
}

static const char *rec_str(const json_t *rec, const char *key)
{
	return json_string_value(json_object_get(rec, key));
}

static void assert_body(const json_t *rec, const char *want)
{
	char *got = rec_body(rec, NULL);
	assert_string_equal(got, want);
	free(got);
}

/* ---- configuration ---------------------------------------------------------------- */

#define ENV_MAX 32

struct env {
	const char *name[ENV_MAX];
	char value[ENV_MAX][256];
	size_t n;
};

static void env_set(struct env *e, const char *name, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void env_set(struct env *e, const char *name, const char *fmt, ...)
{
	assert_true(e->n < ENV_MAX);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->value[e->n], sizeof e->value[e->n], fmt, ap);
	va_end(ap);
	e->name[e->n++] = name;
}

static const char *env_get(void *ctx, const char *name)
{
	const struct env *e = ctx;
	for (size_t i = e->n; i-- > 0;)
		if (strcmp(e->name[i], name) == 0)
			return e->value[i];
	return NULL;
}

static struct config *env_config(struct env *e)
{
	struct config *c = NULL;
	char *errs = NULL;
	if (config_load(env_get, e, &c, &errs) != 0)
		fail_msg("config_load: %s", errs ? errs : "?");
	return c;
}

static struct provider *must_new(const char *name, const struct config *c)
{
	char err[256];
	struct provider *p = provider_new(name, c, err, sizeof err);
	if (p == NULL)
		fail_msg("provider_new(%s): %s", name, err);
	assert_string_equal(provider_name(p), name);
	return p;
}

static struct otp_message msg(enum otp_channel ch, const char *target, const char *code,
                              const char *text)
{
	struct otp_message m = {
		.channel = ch,
		.target = (char *)target,
		.code = (char *)code,
		.text = (char *)text,
		.lifetime = 300,
	};
	return m;
}

/* No provider error may carry the code or a credential. */
static void assert_clean_error(const struct provider_result *r, const char *code,
                               const char *secret)
{
	if (code != NULL)
		assert_null(strstr(r->error, code));
	if (secret != NULL)
		assert_null(strstr(r->error, secret));
}

/* A port nothing listens on: bind, read the port, close. */
static int closed_port(void)
{
	struct fake f;
	fake_start(&f, "http", ARGS_END);
	int port = f.port;
	fake_stop(&f);
	return port;
}

/* ---- registry ----------------------------------------------------------------------- */

static void test_registry(void **state)
{
	(void)state;
	const char *names[] = {"log", "queue", "telegram", "telegram_bot", "smtp", "twilio",
	                       "whatsapp", "webhook"};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		assert_int_equal(provider_known(names[i]), 1);
	assert_int_equal(provider_known("nope"), 0);
	assert_int_equal(provider_known(NULL), 0);

	struct env e = {0};
	struct config *c = env_config(&e);
	char err[256];
	assert_null(provider_new("nope", c, err, sizeof err));
	assert_non_null(strstr(err, "nope"));

	/* with defaults only, these lack a setting: the error names the variable */
	const struct {
		const char *provider, *var;
	} missing[] = {
		{"telegram", "OTP_TELEGRAM_APP_TOKEN"},
		{"telegram_bot", "OTPD_TELEGRAM_BOT_TOKEN"},
		{"smtp", "OTPD_SMTP_URL"},
		{"twilio", "OTPD_TWILIO_ACCOUNT_SID"},
		{"whatsapp", "OTPD_WHATSAPP_TOKEN"},
		{"webhook", "OTPD_WEBHOOK_URL"},
	};
	for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++) {
		err[0] = '\0';
		assert_null(provider_new(missing[i].provider, c, err, sizeof err));
		if (strstr(err, missing[i].var) == NULL)
			fail_msg("%s: error \"%s\" does not name %s", missing[i].provider, err,
			         missing[i].var);
	}
	/* the old service's defaults are enough for the queue and log providers */
	provider_free(must_new("queue", c));
	provider_free(must_new("log", c));
	config_free(c);

	struct env e2 = {0};
	env_set(&e2, "OTPD_WEBHOOK_URL", "http://127.0.0.1:1/hook");
	c = env_config(&e2);
	assert_null(provider_new("webhook", c, err, sizeof err));
	assert_non_null(strstr(err, "OTPD_WEBHOOK_SECRET"));
	config_free(c);

	/* a URL of the wrong scheme is refused by the configuration already */
	struct env e3 = {0};
	env_set(&e3, "OTPD_SMTP_URL", "http://mail.example.com");
	env_set(&e3, "OTPD_SMTP_FROM", "otp@example.com");
	char *errs = NULL;
	c = NULL;
	assert_int_equal(config_load(env_get, &e3, &c, &errs), OTP_ERR_INVALID);
	assert_non_null(strstr(errs, "OTPD_SMTP_URL"));
	free(errs);

	/* the registry declares what each provider delivers */
	assert_true(provider_serves("twilio", OTP_CH_SMS));
	assert_true(provider_serves("twilio", OTP_CH_CALL));
	assert_false(provider_serves("twilio", OTP_CH_EMAIL));
	assert_true(provider_serves("smtp", OTP_CH_EMAIL));
	assert_false(provider_serves("smtp", OTP_CH_SMS));
	assert_false(provider_serves("queue", OTP_CH_WHATSAPP));
	for (int ch = 0; ch < OTP_CH_COUNT; ch++) {
		assert_true(provider_serves("log", ch));
		assert_true(provider_serves("webhook", ch));
	}
	assert_false(provider_serves("nope", OTP_CH_SMS));
	/* config.c's list of provider names (OTPD_*_PROVIDER) accepts every registry row */
	for (size_t i = 0; provider_def_at(i) != NULL; i++) {
		struct env en = {0};
		env_set(&en, "OTPD_PROVIDER", "%s", provider_def_at(i)->name);
		struct config *cn = NULL;
		char *cerrs = NULL;
		if (config_load(env_get, &en, &cn, &cerrs) != 0)
			fail_msg("config.c refuses provider %s: %s", provider_def_at(i)->name, cerrs);
		config_free(cn);
	}
	/* every row names its settings, and each of them is a configuration variable */
	for (size_t i = 0; provider_def_at(i) != NULL; i++) {
		const struct provider_def *d = provider_def_at(i);
		assert_non_null(d->settings);
		for (const char *const *v = d->settings; *v != NULL; v++) {
			bool found = false;
			for (size_t k = 0; k < config_var_count(); k++)
				found = found || strcmp(config_var_name(k), *v) == 0;
			if (!found)
				fail_msg("%s: setting %s is not in config.c's table", d->name, *v);
		}
	}

	struct env e4 = {0};
	env_set(&e4, "OTPD_SMTP_URL", "smtp://127.0.0.1:1");
	env_set(&e4, "OTPD_SMTP_FROM", "OTP <otp@example.com>\r\nBcc: x@y.z");
	c = env_config(&e4);
	assert_null(provider_new("smtp", c, err, sizeof err));
	assert_non_null(strstr(err, "OTPD_SMTP_FROM"));
	config_free(c);
}

/* ---- log ---------------------------------------------------------------------------- */

/* Run one send of the log provider with stderr captured; returns what it wrote. */
static char *log_capture(bool show_codes, const struct otp_message *m, int64_t job)
{
	struct env e = {0};
	env_set(&e, "OTPD_LOG_CODES", "%s", show_codes ? "true" : "false");
	struct config *c = env_config(&e);
	struct provider *p = must_new("log", c);
	char path[] = "/tmp/otpd-test-log-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	fflush(stderr);
	int saved = dup(STDERR_FILENO);
	assert_true(saved >= 0);
	dup2(fd, STDERR_FILENO);
	struct provider_result r;
	int rc = provider_send(p, NULL, m, job, &r);
	dup2(saved, STDERR_FILENO);
	close(saved);
	assert_int_equal(rc, 0);
	off_t size = lseek(fd, 0, SEEK_END);
	assert_true(size > 0 && size < 65536);
	char *out = calloc(1, (size_t)size + 1);
	assert_non_null(out);
	assert_int_equal(pread(fd, out, (size_t)size, 0), size);
	close(fd);
	provider_free(p);
	config_free(c);
	/* exactly one line */
	assert_non_null(strchr(out, '\n'));
	assert_ptr_equal(strchr(out, '\n'), out + size - 1);
	return out;
}

static void test_log_masks(void **state)
{
	(void)state;
	struct otp_message m = msg(OTP_CH_SMS, "77011234567", "12345", "Your code is 12345");
	char *out = log_capture(false, &m, 12);
	if (strstr(out, "level=info msg=deliver provider=log channel=sms target=7701***4567 "
	                "code=***** job=12\n") == NULL)
		fail_msg("unexpected log line: %s", out);
	assert_null(strstr(out, "12345"));
	assert_null(strstr(out, "Your code"));
	free(out);

	struct otp_message em = msg(OTP_CH_EMAIL, "john.doe@example.com", "987654", "Code 987654");
	em.subject = (char *)"Your code";
	out = log_capture(false, &em, 7);
	if (strstr(out, " channel=email target=j***@example.com code=****** job=7\n") == NULL)
		fail_msg("unexpected log line: %s", out);
	assert_null(strstr(out, "987654"));
	free(out);

	struct otp_message tm = msg(OTP_CH_TELEGRAM, "-1001234567890", "1234", "1234");
	out = log_capture(false, &tm, 3);
	if (strstr(out, " channel=telegram target=-100***7890 code=**** job=3\n") == NULL)
		fail_msg("unexpected log line: %s", out);
	free(out);
}

static void test_log_codes_escaped(void **state)
{
	(void)state;
	struct otp_message m = msg(OTP_CH_SMS, "77011234567", "12345",
	                           "Code 12345\nlevel=error msg=forged \"x\"=\\");
	char *out = log_capture(true, &m, 12);
	if (strstr(out, " code=12345 job=12 text=\"Code 12345\\nlevel=error msg=forged "
	                "\\\"x\\\"=\\\\\"\n") == NULL)
		fail_msg("unexpected log line: %s", out);
	free(out);

	struct otp_message em = msg(OTP_CH_EMAIL, "a@example.com", "55", "t");
	em.subject = (char *)"Sign in";
	out = log_capture(true, &em, 1);
	if (strstr(out, " code=55 job=1 subject=\"Sign in\" text=t\n") == NULL)
		fail_msg("unexpected log line: %s", out);
	free(out);
}

/* ---- queue ---------------------------------------------------------------------------- */

static struct config *queue_config(const struct fake *f)
{
	struct env e = {0};
	env_set(&e, "OTP_QUEUE_URL", "%s", f->url);
	env_set(&e, "OTP_TELEGRAM_APP_TOKEN", "app-token-1");
	return env_config(&e);
}

static void test_queue_bodies(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, "http", ARGS_END);
	struct config *c = queue_config(&f);
	struct provider *p = must_new("queue", c);
	struct provider_result r;

	const struct {
		struct otp_message m;
		const char *body;
	} cases[] = {
		{msg(OTP_CH_SMS, "77011234567", "12345", "Your code is 12345"),
		 "{\"url\":\"http://sms/sms\",\"method\":\"post\",\"worker\":\"sms\",\"json\":"
		 "{\"phones\":\"77011234567\",\"message\":\"Your code is 12345\",\"type\":\"sms\","
		 "\"force\":true}}"},
		{msg(OTP_CH_CALL, "77011234567", "12345", "Your code is 12345"),
		 "{\"url\":\"http://sms/sms\",\"method\":\"post\",\"worker\":\"sms\",\"json\":"
		 "{\"phones\":\"77011234567\",\"message\":\"1 2 3 4 5\",\"type\":\"call\","
		 "\"force\":true}}"},
		{{.channel = OTP_CH_EMAIL, .target = (char *)"user@example.com", .code = (char *)"4321",
		  .subject = (char *)"Код", .lifetime = 60},
		 "{\"url\":\"http://email/smtp\",\"method\":\"post\",\"worker\":\"email\",\"json\":"
		 "{\"to\":\"user@example.com\",\"subject\":\"Код\",\"text\":null,\"html\":null,"
		 "\"force\":true}}"},
		{{.channel = OTP_CH_EMAIL, .target = (char *)"user@example.com", .code = (char *)"4321",
		  .subject = (char *)"S", .text = (char *)"T \"4321\"", .html = (char *)"<b>4321</b>"},
		 "{\"url\":\"http://email/smtp\",\"method\":\"post\",\"worker\":\"email\",\"json\":"
		 "{\"to\":\"user@example.com\",\"subject\":\"S\",\"text\":\"T \\\"4321\\\"\","
		 "\"html\":\"<b>4321</b>\",\"force\":true}}"},
		{msg(OTP_CH_TELEGRAM, "-1001234567890", "777", "Code: 777"),
		 "{\"url\":\"http://telegram:8080/msg\",\"method\":\"post\",\"worker\":\"telegram\","
		 "\"headers\":{\"X-Auth-Token\":\"app-token-1\"},\"json\":{\"to\":-1001234567890,"
		 "\"message\":\"Code: 777\"}}"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		assert_int_equal(provider_send(p, NULL, &cases[i].m, (int64_t)i + 1, &r), 0);

	json_t *all = fake_records(&f);
	assert_int_equal(json_array_size(all), sizeof cases / sizeof cases[0]);
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		json_t *rec = json_array_get(all, i);
		assert_string_equal(rec_str(rec, "method"), "POST");
		assert_string_equal(rec_str(rec, "path"), "/task");
		assert_string_equal(rec_header(rec, "Content-Type"), "application/json");
		assert_body(rec, cases[i].body);
	}
	json_decref(all);

	/* the Queue never carried WhatsApp: refused for good, nothing sent */
	struct otp_message w = msg(OTP_CH_WHATSAPP, "77011234567", "12345", "x");
	assert_int_equal(provider_send(p, NULL, &w, 9, &r), OTP_ERR_PERMANENT);
	assert_non_null(strstr(r.error, "whatsapp"));
	struct otp_message bad = msg(OTP_CH_TELEGRAM, "12a", "12345", "x");
	assert_int_equal(provider_send(p, NULL, &bad, 9, &r), OTP_ERR_PERMANENT);
	all = fake_records(&f);
	assert_int_equal(json_array_size(all), sizeof cases / sizeof cases[0]);
	json_decref(all);

	provider_free(p);
	config_free(c);
	fake_stop(&f);
}

static void test_queue_classification(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, "http", "--script",
	           "[{\"status\":500,\"times\":1},{\"status\":503,\"times\":1},"
	           "{\"status\":429,\"times\":1},{\"status\":408,\"times\":1},"
	           "{\"status\":400,\"times\":1,\"body\":\"12345 rejected\"},{\"status\":404,\"times\":1},"
	           "{\"status\":301,\"times\":1},{\"status\":201,\"times\":1},{\"status\":200}]",
	           ARGS_END);
	struct config *c = queue_config(&f);
	struct provider *p = must_new("queue", c);
	const int want[] = {OTP_ERR_PROVIDER, OTP_ERR_PROVIDER, OTP_ERR_PROVIDER, OTP_ERR_PROVIDER,
	                    OTP_ERR_PERMANENT, OTP_ERR_PERMANENT, OTP_ERR_PERMANENT, 0, 0};
	struct otp_message m = msg(OTP_CH_SMS, "77011234567", "12345", "Your code is 12345");
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
		struct provider_result r;
		int rc = provider_send(p, NULL, &m, 5, &r);
		if (rc != want[i])
			fail_msg("answer %zu: got %d want %d (%s)", i, rc, want[i], r.error);
		if (rc != 0)
			assert_non_null(strstr(r.error, "HTTP "));
		assert_clean_error(&r, "12345", NULL);
	}
	provider_free(p);
	config_free(c);
	fake_stop(&f);
}

static void test_transport_errors(void **state)
{
	(void)state;
	/* nobody listening: retry */
	struct env e = {0};
	env_set(&e, "OTP_QUEUE_URL", "http://127.0.0.1:%d", closed_port());
	struct config *c = env_config(&e);
	struct provider *p = must_new("queue", c);
	struct otp_message m = msg(OTP_CH_SMS, "77011234567", "12345", "Your code is 12345");
	struct provider_result r;
	assert_int_equal(provider_send(p, NULL, &m, 1, &r), OTP_ERR_PROVIDER);
	assert_true(r.error[0] != '\0');
	assert_null(strstr(r.error, "127.0.0.1:"));
	provider_free(p);
	config_free(c);

	/* an answer slower than OTPD_PROVIDER_TIMEOUT: retry */
	struct fake f;
	fake_start(&f, "http", "--script", "[{\"status\":200,\"delay\":5}]", ARGS_END);
	struct env e2 = {0};
	env_set(&e2, "OTP_QUEUE_URL", "%s", f.url);
	env_set(&e2, "OTPD_PROVIDER_TIMEOUT", "1");
	c = env_config(&e2);
	p = must_new("queue", c);
	time_t t0 = time(NULL);
	assert_int_equal(provider_send(p, NULL, &m, 1, &r), OTP_ERR_PROVIDER);
	assert_true(time(NULL) - t0 <= 3);
	assert_true(r.error[0] != '\0');
	provider_free(p);
	config_free(c);
	fake_stop(&f);
}

/* ---- telegram (http-telegram-notify) -------------------------------------------------- */

static void test_telegram_notify(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, "http", "--script",
	           "[{\"status\":500,\"times\":1,\"body\":\"Sent message 55 to -100123\"},"
	           "{\"status\":200,\"times\":1,\"body\":\"ok\"},"
	           "{\"status\":500,\"times\":1,\"body\":\"telegram: 12345 boom\"},"
	           "{\"status\":502,\"times\":1},{\"status\":401,\"times\":1,\"body\":\"bad token\"}]",
	           ARGS_END);
	struct env e = {0};
	env_set(&e, "OTP_TELEGRAM_URL", "%s", f.url);
	env_set(&e, "OTP_TELEGRAM_APP_TOKEN", "s3cret-app-token");
	struct config *c = env_config(&e);
	struct provider *p = must_new("telegram", c);
	struct otp_message m = msg(OTP_CH_TELEGRAM, "-100123", "12345", "Your code is 12345");
	struct provider_result r;

	assert_int_equal(provider_send(p, NULL, &m, 1, &r), 0); /* the 500 "Sent message" quirk */
	assert_int_equal(provider_send(p, NULL, &m, 2, &r), 0);
	assert_int_equal(provider_send(p, NULL, &m, 3, &r), OTP_ERR_PROVIDER);
	assert_non_null(strstr(r.error, "HTTP 500"));
	assert_clean_error(&r, "12345", "s3cret-app-token");
	assert_int_equal(provider_send(p, NULL, &m, 4, &r), OTP_ERR_PROVIDER);
	assert_int_equal(provider_send(p, NULL, &m, 5, &r), OTP_ERR_PERMANENT);
	assert_clean_error(&r, "12345", "s3cret-app-token");

	json_t *all = fake_records(&f);
	assert_int_equal(json_array_size(all), 5);
	json_t *rec = json_array_get(all, 0);
	assert_string_equal(rec_str(rec, "method"), "POST");
	assert_string_equal(rec_str(rec, "path"), "/msg");
	assert_string_equal(rec_header(rec, "X-Auth-Token"), "s3cret-app-token");
	assert_string_equal(rec_header(rec, "Content-Type"), "application/json");
	assert_body(rec, "{\"to\":-100123,\"message\":\"Your code is 12345\"}");
	json_decref(all);

	struct otp_message sms = msg(OTP_CH_SMS, "77011234567", "12345", "x");
	assert_int_equal(provider_send(p, NULL, &sms, 6, &r), OTP_ERR_PERMANENT);
	provider_free(p);
	config_free(c);
	fake_stop(&f);
}

/* ---- telegram_bot ---------------------------------------------------------------------- */

static void test_telegram_bot(void **state)
{
	(void)state;
	const char *token = "123456:AAbbCC_dd-ee";
	struct fake f;
	fake_start(&f, "http", "--script",
	           "[{\"path\":\"/bot123456:AAbbCC_dd-ee/sendMessage\",\"times\":1,\"status\":200,"
	           "\"json\":{\"ok\":true,\"result\":{\"message_id\":4711,\"chat\":{\"id\":42}}}},"
	           "{\"times\":1,\"status\":429,\"json\":{\"ok\":false,\"error_code\":429,"
	           "\"description\":\"Too Many Requests: retry after 3\",\"parameters\":{\"retry_after\":3}}},"
	           "{\"times\":1,\"status\":400,\"json\":{\"ok\":false,\"error_code\":400,"
	           "\"description\":\"Bad Request: chat not found\"}},"
	           "{\"times\":1,\"status\":403,\"json\":{\"ok\":false,\"error_code\":403,"
	           "\"description\":\"Forbidden: bot was blocked by the user\"}},"
	           "{\"times\":1,\"status\":502,\"body\":\"Bad Gateway\"},"
	           "{\"times\":1,\"status\":200,\"json\":{\"ok\":false}}]",
	           ARGS_END);
	struct env e = {0};
	env_set(&e, "OTPD_TELEGRAM_API_URL", "%s", f.url);
	env_set(&e, "OTPD_TELEGRAM_BOT_TOKEN", "%s", token);
	struct config *c = env_config(&e);
	struct provider *p = must_new("telegram_bot", c);
	struct otp_message m = msg(OTP_CH_TELEGRAM, "42", "12345", "Your code is 12345");
	struct provider_result r;

	assert_int_equal(provider_send(p, NULL, &m, 1, &r), 0);
	assert_string_equal(r.msg_id, "4711");
	assert_int_equal(provider_send(p, NULL, &m, 2, &r), OTP_ERR_PROVIDER);
	assert_non_null(strstr(r.error, "Too Many Requests"));
	assert_int_equal(provider_send(p, NULL, &m, 3, &r), OTP_ERR_PERMANENT);
	assert_non_null(strstr(r.error, "chat not found"));
	assert_clean_error(&r, "12345", token);
	assert_int_equal(provider_send(p, NULL, &m, 4, &r), OTP_ERR_PERMANENT);
	assert_int_equal(provider_send(p, NULL, &m, 5, &r), OTP_ERR_PROVIDER);
	assert_int_equal(provider_send(p, NULL, &m, 6, &r), OTP_ERR_PROVIDER); /* 200 without ok */

	json_t *all = fake_records(&f);
	assert_int_equal(json_array_size(all), 6);
	json_t *rec = json_array_get(all, 0);
	assert_string_equal(rec_str(rec, "path"), "/bot123456:AAbbCC_dd-ee/sendMessage");
	assert_string_equal(rec_header(rec, "Content-Type"), "application/json");
	assert_body(rec, "{\"chat_id\":42,\"text\":\"Your code is 12345\"}");
	json_decref(all);
	provider_free(p);
	config_free(c);
	fake_stop(&f);

	/* the token is in the URL: a transport error must not show it */
	struct env e2 = {0};
	env_set(&e2, "OTPD_TELEGRAM_API_URL", "http://127.0.0.1:%d", closed_port());
	env_set(&e2, "OTPD_TELEGRAM_BOT_TOKEN", "%s", token);
	c = env_config(&e2);
	p = must_new("telegram_bot", c);
	assert_int_equal(provider_send(p, NULL, &m, 1, &r), OTP_ERR_PROVIDER);
	assert_clean_error(&r, "12345", token);
	assert_null(strstr(r.error, "AAbb"));
	provider_free(p);
	config_free(c);

	struct env e3 = {0};
	env_set(&e3, "OTPD_TELEGRAM_BOT_TOKEN", "123/../x");
	c = env_config(&e3);
	char err[256];
	assert_null(provider_new("telegram_bot", c, err, sizeof err));
	assert_non_null(strstr(err, "OTPD_TELEGRAM_BOT_TOKEN"));
	config_free(c);
}

/* ---- twilio ------------------------------------------------------------------------------ */

/* Decode application/x-www-form-urlencoded "k=v&k=v" into pairs (in place). */
static size_t form_decode(char *s, char *keys[], char *values[], size_t max)
{
	size_t n = 0;
	for (char *save = NULL, *pair = strtok_r(s, "&", &save); pair && n < max;
	     pair = strtok_r(NULL, "&", &save)) {
		char *eq = strchr(pair, '=');
		assert_non_null(eq);
		*eq = '\0';
		keys[n] = pair;
		values[n] = eq + 1;
		for (char *part = pair; part; part = part == pair ? eq + 1 : NULL) {
			char *w = part;
			for (char *q = part; *q; q++) {
				if (*q == '%' && q[1] && q[2]) {
					char hx[3] = {q[1], q[2], 0};
					*w++ = (char)strtol(hx, NULL, 16);
					q += 2;
				} else {
					*w++ = *q == '+' ? ' ' : *q;
				}
			}
			*w = '\0';
		}
		n++;
	}
	return n;
}

static void test_twilio(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, "http", "--script",
	           "[{\"path\":\"/2010-04-01/Accounts/AC0123abcd/Messages.json\",\"times\":1,"
	           "\"status\":201,\"json\":{\"sid\":\"SM0001\",\"status\":\"queued\"}},"
	           "{\"path\":\"/2010-04-01/Accounts/AC0123abcd/Calls.json\",\"times\":2,"
	           "\"status\":201,\"json\":{\"sid\":\"CA0002\",\"status\":\"queued\"}},"
	           "{\"times\":1,\"status\":400,\"json\":{\"code\":21211,"
	           "\"message\":\"The 'To' number +77011234567 is not a valid phone number.\","
	           "\"status\":400}},"
	           "{\"times\":1,\"status\":429,\"json\":{\"code\":20429,\"message\":\"Too Many Requests\"}},"
	           "{\"times\":1,\"status\":401,\"json\":{\"code\":20003,\"message\":\"Authenticate\"}}]",
	           ARGS_END);
	struct env e = {0};
	env_set(&e, "OTPD_TWILIO_BASE_URL", "%s", f.url);
	env_set(&e, "OTPD_TWILIO_ACCOUNT_SID", "AC0123abcd");
	env_set(&e, "OTPD_TWILIO_AUTH_TOKEN", "tw-auth-token");
	env_set(&e, "OTPD_TWILIO_FROM", "+15550001111");
	struct config *c = env_config(&e);
	struct provider *p = must_new("twilio", c);
	struct provider_result r;

	struct otp_message sms = msg(OTP_CH_SMS, "77011234567", "12345", "Your code is 12345");
	assert_int_equal(provider_send(p, NULL, &sms, 12, &r), 0);
	assert_string_equal(r.msg_id, "SM0001");
	struct otp_message call = msg(OTP_CH_CALL, "77011234567", "12345", "Your code is 12345");
	assert_int_equal(provider_send(p, NULL, &call, 13, &r), 0);
	assert_string_equal(r.msg_id, "CA0002");
	struct otp_message odd = msg(OTP_CH_CALL, "+77011234567", "907", "<Code> & \"907\"");
	assert_int_equal(provider_send(p, NULL, &odd, 14, &r), 0);
	assert_int_equal(provider_send(p, NULL, &sms, 15, &r), OTP_ERR_PERMANENT);
	assert_non_null(strstr(r.error, "21211"));
	assert_clean_error(&r, "12345", "tw-auth-token");
	assert_int_equal(provider_send(p, NULL, &sms, 16, &r), OTP_ERR_PROVIDER);
	assert_int_equal(provider_send(p, NULL, &sms, 17, &r), OTP_ERR_PERMANENT);
	struct otp_message em = msg(OTP_CH_EMAIL, "a@example.com", "1", "x");
	assert_int_equal(provider_send(p, NULL, &em, 18, &r), OTP_ERR_PERMANENT);
	struct otp_message wa = msg(OTP_CH_WHATSAPP, "77011234567", "1", "x");
	assert_int_equal(provider_send(p, NULL, &wa, 18, &r), OTP_ERR_PERMANENT);

	json_t *all = fake_records(&f);
	assert_int_equal(json_array_size(all), 6);
	char basic[128], want_auth[160];
	const char *cred = "AC0123abcd:tw-auth-token";
	sodium_bin2base64(basic, sizeof basic, (const unsigned char *)cred, strlen(cred),
	                  sodium_base64_VARIANT_ORIGINAL);
	snprintf(want_auth, sizeof want_auth, "Basic %s", basic);

	json_t *rec = json_array_get(all, 0);
	assert_string_equal(rec_str(rec, "path"), "/2010-04-01/Accounts/AC0123abcd/Messages.json");
	assert_string_equal(rec_header(rec, "Authorization"), want_auth);
	assert_string_equal(rec_header(rec, "I-Twilio-Idempotency-Token"), "otpd-12");
	assert_string_equal(rec_header(rec, "Content-Type"), "application/x-www-form-urlencoded");
	assert_body(rec, "To=%2B77011234567&From=%2B15550001111&Body=Your%20code%20is%2012345");

	rec = json_array_get(all, 1);
	assert_string_equal(rec_str(rec, "path"), "/2010-04-01/Accounts/AC0123abcd/Calls.json");
	assert_string_equal(rec_header(rec, "I-Twilio-Idempotency-Token"), "otpd-13");
	char *body = rec_body(rec, NULL);
	char *k[8], *v[8];
	assert_int_equal(form_decode(body, k, v, 8), 3);
	assert_string_equal(k[0], "To");
	assert_string_equal(v[0], "+77011234567");
	assert_string_equal(k[1], "From");
	assert_string_equal(v[1], "+15550001111");
	assert_string_equal(k[2], "Twiml");
	assert_string_equal(v[2], "<Response><Say language=\"en-US\">Your code is 1, 2, 3, 4, 5</Say>"
	                          "<Pause length=\"1\"/><Say language=\"en-US\">Your code is 1, 2, 3, "
	                          "4, 5</Say></Response>");
	free(body);

	rec = json_array_get(all, 2);
	body = rec_body(rec, NULL);
	assert_int_equal(form_decode(body, k, v, 8), 3);
	assert_string_equal(v[0], "+77011234567");
	assert_string_equal(v[2], "<Response><Say language=\"en-US\">&lt;Code&gt; &amp; &quot;9, 0, "
	                          "7&quot;</Say><Pause length=\"1\"/><Say language=\"en-US\">&lt;Code"
	                          "&gt; &amp; &quot;9, 0, 7&quot;</Say></Response>");
	free(body);
	json_decref(all);
	provider_free(p);
	config_free(c);
	fake_stop(&f);

	/* a Messaging Service as sender: MessagingServiceSid, and no calls */
	fake_start(&f, "http", "--script", "[{\"status\":201,\"json\":{\"sid\":\"SM9\"}}]",
	           ARGS_END);
	struct env e2 = {0};
	env_set(&e2, "OTPD_TWILIO_BASE_URL", "%s", f.url);
	env_set(&e2, "OTPD_TWILIO_ACCOUNT_SID", "AC0123abcd");
	env_set(&e2, "OTPD_TWILIO_AUTH_TOKEN", "tw-auth-token");
	env_set(&e2, "OTPD_TWILIO_FROM", "MG0123");
	c = env_config(&e2);
	p = must_new("twilio", c);
	assert_int_equal(provider_send(p, NULL, &sms, 1, &r), 0);
	assert_int_equal(provider_send(p, NULL, &call, 2, &r), OTP_ERR_PERMANENT);
	assert_non_null(strstr(r.error, "OTPD_TWILIO_FROM"));
	rec = only_record(&f);
	assert_body(rec, "To=%2B77011234567&MessagingServiceSid=MG0123&Body=Your%20code%20is%2012345");
	json_decref(rec);
	provider_free(p);
	config_free(c);
	fake_stop(&f);
}

/* ---- whatsapp ---------------------------------------------------------------------------- */

static void test_whatsapp(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, "http", "--script",
	           "[{\"times\":1,\"status\":200,\"json\":{\"messaging_product\":\"whatsapp\","
	           "\"contacts\":[{\"input\":\"77011234567\",\"wa_id\":\"77011234567\"}],"
	           "\"messages\":[{\"id\":\"wamid.HBgL\"}]}},"
	           "{\"times\":1,\"status\":400,\"json\":{\"error\":{\"message\":\"(#131056) Pair rate "
	           "limit hit\",\"type\":\"OAuthException\",\"code\":131056}}},"
	           "{\"times\":1,\"status\":400,\"json\":{\"error\":{\"message\":\"(#100) Invalid "
	           "parameter\",\"type\":\"OAuthException\",\"code\":100}}},"
	           "{\"times\":1,\"status\":401,\"json\":{\"error\":{\"message\":\"Error validating "
	           "access token\",\"type\":\"OAuthException\",\"code\":190}}},"
	           "{\"times\":1,\"status\":500,\"json\":{\"error\":{\"code\":131000}}}]",
	           ARGS_END);
	struct env e = {0};
	env_set(&e, "OTPD_WHATSAPP_BASE_URL", "%s/v19.0", f.url);
	env_set(&e, "OTPD_WHATSAPP_TOKEN", "EAAG-wa-token");
	env_set(&e, "OTPD_WHATSAPP_PHONE_NUMBER_ID", "106540352242922");
	env_set(&e, "OTPD_WHATSAPP_TEMPLATE", "auth_code");
	env_set(&e, "OTPD_WHATSAPP_LANGUAGE", "ru");
	struct config *c = env_config(&e);
	struct provider *p = must_new("whatsapp", c);
	struct otp_message m = msg(OTP_CH_WHATSAPP, "77011234567", "482913", "Your code is 482913");
	struct provider_result r;

	assert_int_equal(provider_send(p, NULL, &m, 1, &r), 0);
	assert_string_equal(r.msg_id, "wamid.HBgL");
	assert_int_equal(provider_send(p, NULL, &m, 2, &r), OTP_ERR_PROVIDER); /* rate limit in a 400 */
	assert_int_equal(provider_send(p, NULL, &m, 3, &r), OTP_ERR_PERMANENT);
	assert_non_null(strstr(r.error, "Invalid parameter"));
	assert_int_equal(provider_send(p, NULL, &m, 4, &r), OTP_ERR_PERMANENT);
	assert_clean_error(&r, "482913", "EAAG-wa-token");
	assert_int_equal(provider_send(p, NULL, &m, 5, &r), OTP_ERR_PROVIDER);
	struct otp_message sms = msg(OTP_CH_SMS, "77011234567", "1", "x");
	assert_int_equal(provider_send(p, NULL, &sms, 6, &r), OTP_ERR_PERMANENT);

	json_t *all = fake_records(&f);
	assert_int_equal(json_array_size(all), 5);
	json_t *rec = json_array_get(all, 0);
	assert_string_equal(rec_str(rec, "path"), "/v19.0/106540352242922/messages");
	assert_string_equal(rec_header(rec, "Authorization"), "Bearer EAAG-wa-token");
	assert_string_equal(rec_header(rec, "Content-Type"), "application/json");
	assert_body(rec,
	            "{\"messaging_product\":\"whatsapp\",\"to\":\"77011234567\",\"type\":\"template\","
	            "\"template\":{\"name\":\"auth_code\",\"language\":{\"code\":\"ru\"},"
	            "\"components\":[{\"type\":\"body\",\"parameters\":[{\"type\":\"text\","
	            "\"text\":\"482913\"}]},{\"type\":\"button\",\"sub_type\":\"url\",\"index\":\"0\","
	            "\"parameters\":[{\"type\":\"text\",\"text\":\"482913\"}]}]}}");
	json_decref(all);
	provider_free(p);
	config_free(c);
	fake_stop(&f);
}

/* ---- webhook ------------------------------------------------------------------------------ */

static void test_webhook(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, "http", "--script",
	           "[{\"times\":1,\"status\":202,\"json\":{\"id\":\"hook-1\"}},"
	           "{\"times\":1,\"status\":204},"
	           "{\"times\":1,\"status\":500},{\"times\":1,\"status\":410}]",
	           ARGS_END);
	const char *secret = "whsec-0123456789";
	struct env e = {0};
	env_set(&e, "OTPD_WEBHOOK_URL", "%s/hooks/otp?src=otpd", f.url);
	env_set(&e, "OTPD_WEBHOOK_SECRET", "%s", secret);
	struct config *c = env_config(&e);
	struct provider *p = must_new("webhook", c);
	struct provider_result r;

	struct otp_message m = {.channel = OTP_CH_EMAIL, .target = (char *)"a@example.com",
	                        .code = (char *)"12345", .text = (char *)"Your code is 12345",
	                        .subject = (char *)"Code \"12345\"", .lifetime = 300};
	assert_int_equal(provider_send(p, NULL, &m, 12, &r), 0);
	assert_string_equal(r.msg_id, "hook-1");
	struct otp_message sms = msg(OTP_CH_SMS, "77011234567", "999", NULL);
	assert_int_equal(provider_send(p, NULL, &sms, 13, &r), 0);
	assert_int_equal(provider_send(p, NULL, &sms, 14, &r), OTP_ERR_PROVIDER);
	assert_int_equal(provider_send(p, NULL, &sms, 15, &r), OTP_ERR_PERMANENT);
	assert_clean_error(&r, "999", secret);

	json_t *all = fake_records(&f);
	assert_int_equal(json_array_size(all), 4);
	const char *want[] = {
		"{\"id\":12,\"channel\":\"email\",\"target\":\"a@example.com\",\"code\":\"12345\","
		"\"message\":\"Your code is 12345\",\"subject\":\"Code \\\"12345\\\"\",\"html\":null}",
		"{\"id\":13,\"channel\":\"sms\",\"target\":\"77011234567\",\"code\":\"999\","
		"\"message\":null,\"subject\":null,\"html\":null}",
	};
	for (size_t i = 0; i < 2; i++) {
		json_t *rec = json_array_get(all, i);
		assert_string_equal(rec_str(rec, "path"), "/hooks/otp?src=otpd");
		assert_body(rec, want[i]);
		/* the receiver's check: HMAC-SHA256(secret, exact body bytes) */
		size_t len = 0;
		char *body = rec_body(rec, &len);
		unsigned char mac[crypto_auth_hmacsha256_BYTES];
		crypto_auth_hmacsha256_state st;
		crypto_auth_hmacsha256_init(&st, (const unsigned char *)secret, strlen(secret));
		crypto_auth_hmacsha256_update(&st, (const unsigned char *)body, len);
		crypto_auth_hmacsha256_final(&st, mac);
		char hex[2 * sizeof mac + 1], sig[sizeof hex + 8], job[24];
		sodium_bin2hex(hex, sizeof hex, mac, sizeof mac);
		snprintf(sig, sizeof sig, "sha256=%s", hex);
		assert_string_equal(rec_header(rec, "X-Otpd-Signature"), sig);
		snprintf(job, sizeof job, "%zu", 12 + i);
		assert_string_equal(rec_header(rec, "X-Otpd-Job"), job);
		free(body);
	}
	json_decref(all);
	provider_free(p);
	config_free(c);
	fake_stop(&f);
}

/* ---- smtp ------------------------------------------------------------------------------- */

static struct config *smtp_config_from(const struct fake *f, const char *from,
                                       const char *starttls, const char *user,
                                       const char *password)
{
	struct env e = {0};
	env_set(&e, "OTPD_SMTP_URL", "smtp://127.0.0.1:%d", f->port);
	env_set(&e, "OTPD_SMTP_FROM", "%s", from);
	if (starttls)
		env_set(&e, "OTPD_SMTP_STARTTLS", "%s", starttls);
	if (user)
		env_set(&e, "OTPD_SMTP_USERNAME", "%s", user);
	if (password)
		env_set(&e, "OTPD_SMTP_PASSWORD", "%s", password);
	return env_config(&e);
}

static struct config *smtp_config(const struct fake *f, const char *starttls, const char *user,
                                  const char *password)
{
	return smtp_config_from(f, "Example OTP <otp@example.com>", starttls, user, password);
}

/* The value of header `name` in a message (first occurrence; unfolded), or NULL. */
static char *mail_header(const char *data, const char *name)
{
	size_t nl = strlen(name);
	const char *end = strstr(data, "\r\n\r\n");
	assert_non_null(end);
	for (const char *line = data; line < end;) {
		const char *eol = strstr(line, "\r\n");
		if (strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
			const char *v = line + nl + 1;
			while (*v == ' ')
				v++;
			char *out = calloc(1, (size_t)(end - v) + 1);
			size_t k = 0;
			/* unfold continuation lines */
			for (const char *q = v; q < end + 2; q++) {
				if (q[0] == '\r' && q[1] == '\n') {
					if (q[2] != ' ' && q[2] != '\t')
						break;
					q += 1;
					continue;
				}
				out[k++] = *q;
			}
			return out;
		}
		line = eol + 2;
	}
	return NULL;
}

static void assert_crlf_only(const char *data, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (data[i] == '\n')
			assert_true(i > 0 && data[i - 1] == '\r');
		if (data[i] == '\r')
			assert_true(i + 1 < len && data[i + 1] == '\n');
	}
	/* RFC 5322: lines of at most 998 characters; we keep to 78 in headers */
	size_t col = 0;
	for (size_t i = 0; i < len; i++) {
		col = data[i] == '\n' ? 0 : col + 1;
		assert_true(col <= 998);
	}
}

static char *b64_decode(const char *s)
{
	size_t n = strlen(s);
	char *out = calloc(1, n + 1);
	size_t got = 0;
	assert_int_equal(sodium_base642bin((unsigned char *)out, n, s, n, "\r\n", &got, NULL,
	                                   sodium_base64_VARIANT_ORIGINAL), 0);
	out[got] = '\0';
	return out;
}

/* Decode "=?UTF-8?B?...?=" words separated by folding white space. */
static char *decode_words(const char *v)
{
	char *out = calloc(1, strlen(v) + 1);
	size_t k = 0;
	const char *p = v;
	while ((p = strstr(p, "=?UTF-8?B?")) != NULL) {
		p += 10;
		const char *end = strstr(p, "?=");
		assert_non_null(end);
		char *enc = strndup(p, (size_t)(end - p));
		char *dec = b64_decode(enc);
		memcpy(out + k, dec, strlen(dec));
		k += strlen(dec);
		free(enc);
		free(dec);
		p = end + 2;
	}
	out[k] = '\0';
	return out;
}

static char *qp_decode(const char *s)
{
	char *out = calloc(1, strlen(s) + 1);
	size_t k = 0;
	for (const char *p = s; *p; p++) {
		if (p[0] == '=' && p[1] == '\r' && p[2] == '\n') {
			p += 2;
		} else if (p[0] == '=') {
			char hx[3] = {p[1], p[2], 0};
			out[k++] = (char)strtol(hx, NULL, 16);
			p += 2;
		} else {
			out[k++] = *p;
		}
	}
	return out;
}

/* The boundary of a multipart Content-Type value (quoted or not); malloc'd. */
static char *mail_boundary(const char *ctype)
{
	const char *b = strstr(ctype, "boundary=");
	assert_non_null(b);
	b += 9;
	size_t n = *b == '"' ? strcspn(++b, "\"") : strcspn(b, "; \t");
	return strndup(b, n);
}

/* The one body part of a multipart/mixed message (its headers, blank line and content,
 * without the CRLF before the closing delimiter); malloc'd. */
static char *only_part(const char *data)
{
	char *ct = mail_header(data, "Content-Type");
	assert_non_null(ct);
	assert_true(strncmp(ct, "multipart/mixed;", 16) == 0);
	char *b = mail_boundary(ct);
	free(ct);
	char open[120], close[120];
	snprintf(open, sizeof open, "\r\n--%s\r\n", b);
	snprintf(close, sizeof close, "\r\n--%s--\r\n", b);
	free(b);
	const char *body = strstr(data, "\r\n\r\n") + 2;
	const char *p = strstr(body, open);
	assert_non_null(p);
	p += strlen(open);
	const char *end = strstr(p, close);
	assert_non_null(end);
	assert_null(strstr(p, open)); /* one part only */
	assert_string_equal(end + strlen(close), "");
	return strndup(p, (size_t)(end - p));
}

static void test_smtp_plain_message(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, "smtp", "--auth", "mailer:pw-smtp", "--starttls", ARGS_END);
	struct config *c = smtp_config(&f, NULL, "mailer", "pw-smtp");
	struct provider *p = must_new("smtp", c);
	struct provider_result r;
	struct otp_message m = {
		.channel = OTP_CH_EMAIL, .target = (char *)"user@example.org", .code = (char *)"12345",
		.subject = (char *)"Your code is 12345\r\nBcc: victim@example.net",
		.text = (char *)"Your code is 12345.\n.\nIt expires in 5 minutes. 1+1=2",
		.lifetime = 300,
	};
	assert_int_equal(provider_send(p, NULL, &m, 12, &r), 0);
	assert_true(strncmp(r.msg_id, "otpd.12.", 8) == 0);
	assert_non_null(strstr(r.msg_id, "@example.com"));

	json_t *rec = only_record(&f);
	assert_string_equal(rec_str(rec, "mail_from"), "otp@example.com");
	assert_string_equal(json_string_value(json_array_get(json_object_get(rec, "rcpt_to"), 0)),
	                    "user@example.org");
	json_t *auth = json_object_get(rec, "auth");
	assert_string_equal(rec_str(auth, "username"), "mailer");
	assert_string_equal(rec_str(auth, "password"), "pw-smtp");
	assert_true(json_is_true(json_object_get(rec, "starttls_requested"))); /* "try" */
	size_t len = 0;
	char *data = rec_body(rec, &len);
	assert_crlf_only(data, len);

	char *h;
	assert_non_null(h = mail_header(data, "Date"));
	/* "Tue, 02 Jan 2024 10:00:00 +0000" */
	assert_int_equal(strlen(h), 31);
	assert_string_equal(h + 25, " +0000");
	free(h);
	assert_non_null(h = mail_header(data, "From"));
	assert_string_equal(h, "Example OTP <otp@example.com>");
	free(h);
	assert_non_null(h = mail_header(data, "To"));
	assert_string_equal(h, "user@example.org");
	free(h);
	assert_non_null(h = mail_header(data, "Subject"));
	assert_string_equal(h, "Your code is 12345  Bcc: victim@example.net");
	free(h);
	assert_null(mail_header(data, "Bcc")); /* no injected header */
	assert_non_null(h = mail_header(data, "Message-ID"));
	char want_id[200];
	snprintf(want_id, sizeof want_id, "<%s>", r.msg_id);
	assert_string_equal(h, want_id);
	assert_int_equal(strlen(h), strlen("<otpd.12.0123456789abcdef@example.com>"));
	free(h);
	assert_non_null(h = mail_header(data, "MIME-Version"));
	assert_string_equal(h, "1.0");
	free(h);
	/* one text part, quoted-printable by libcurl: line breaks as CRLF, "=" escaped (a
	 * lone "." line is safe: libcurl's SMTP client dot-stuffs the DATA) */
	char *part = only_part(data);
	assert_non_null(h = mail_header(part, "Content-Type"));
	assert_string_equal(h, "text/plain; charset=UTF-8");
	free(h);
	assert_non_null(h = mail_header(part, "Content-Transfer-Encoding"));
	assert_string_equal(h, "quoted-printable");
	free(h);
	assert_string_equal(strstr(part, "\r\n\r\n") + 4,
	                    "Your code is 12345.\r\n.\r\nIt expires in 5 minutes. 1+1=3D2");
	free(part);
	free(data);
	json_decref(rec);

	/* the same job again (a retry) has the same Message-ID */
	char first[PROVIDER_MSGID_MAX];
	snprintf(first, sizeof first, "%s", r.msg_id);
	assert_int_equal(provider_send(p, NULL, &m, 12, &r), 0);
	assert_string_equal(r.msg_id, first);

	/* no text and no html (compat /email allows it): a mail with the subject only */
	struct otp_message bare = m;
	bare.text = NULL;
	assert_int_equal(provider_send(p, NULL, &bare, 20, &r), 0);
	json_t *all = fake_records(&f);
	assert_int_equal(json_array_size(all), 3);
	data = rec_body(json_array_get(all, 2), &len);
	assert_crlf_only(data, len);
	part = only_part(data);
	assert_non_null(h = mail_header(part, "Content-Type"));
	assert_string_equal(h, "text/plain; charset=UTF-8");
	free(h);
	assert_string_equal(strstr(part, "\r\n\r\n"), "\r\n\r\n"); /* empty body */
	free(part);
	free(data);
	json_decref(all);

	/* a target that would add a header or a recipient is refused, nothing sent */
	struct otp_message bad = m;
	bad.target = (char *)"user@example.org\r\nBcc: x@example.net";
	assert_int_equal(provider_send(p, NULL, &bad, 13, &r), OTP_ERR_PERMANENT);
	bad.target = (char *)"<user@example.org>";
	assert_int_equal(provider_send(p, NULL, &bad, 13, &r), OTP_ERR_PERMANENT);
	all = fake_records(&f);
	assert_int_equal(json_array_size(all), 3);
	json_decref(all);
	struct otp_message sms = msg(OTP_CH_SMS, "77011234567", "1", "x");
	assert_int_equal(provider_send(p, NULL, &sms, 14, &r), OTP_ERR_PERMANENT);

	provider_free(p);
	config_free(c);
	fake_stop(&f);
}

static void test_smtp_mime(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, "smtp", "--starttls", ARGS_END);
	struct config *c = smtp_config_from(&f, "Служба «Код» <otp@example.com>", "off", NULL, NULL);
	struct provider *p = must_new("smtp", c);
	struct provider_result r;
	const char *subject = "Код подтверждения: 4321 — вход в личный кабинет компании";
	const char *text = "Ваш код: 4321. Он действует 5 минут.";
	char longline[300];
	memset(longline, 'a', sizeof longline - 1);
	longline[sizeof longline - 1] = '\0';
	longline[100] = ' ';
	struct otp_message m = {
		.channel = OTP_CH_EMAIL, .target = (char *)"user@example.org", .code = (char *)"4321",
		.subject = (char *)subject, .text = (char *)text,
		.html = (char *)longline, .lifetime = 300,
	};
	assert_int_equal(provider_send(p, NULL, &m, 7, &r), 0);
	json_t *rec = only_record(&f);
	assert_true(json_is_false(json_object_get(rec, "starttls_requested")));
	assert_true(json_is_null(json_object_get(rec, "auth")));
	size_t len = 0;
	char *data = rec_body(rec, &len);
	assert_crlf_only(data, len);

	assert_string_equal(rec_str(rec, "mail_from"), "otp@example.com");
	char *h = mail_header(data, "From");
	assert_non_null(h);
	assert_true(strncmp(h, "=?UTF-8?B?", 10) == 0);
	char *dec = decode_words(h);
	assert_string_equal(dec, "Служба «Код»");
	free(dec);
	assert_string_equal(h + strlen(h) - 18, " <otp@example.com>");
	free(h);

	/* the subject: encoded-words, folded, each line short, decoding to the original */
	h = mail_header(data, "Subject");
	assert_non_null(h);
	dec = decode_words(h);
	assert_string_equal(dec, subject);
	free(dec);
	free(h);
	const char *sl = strstr(data, "\r\nSubject: ");
	for (const char *q = sl + 2; ; ) {
		const char *eol = strstr(q, "\r\n");
		assert_true(eol - q <= 78);
		if (eol[2] != ' ')
			break;
		q = eol + 2;
	}

	h = mail_header(data, "Content-Type");
	assert_true(strncmp(h, "multipart/alternative;", 22) == 0);
	char *boundary = mail_boundary(h);
	free(h);
	char delim[100], close[100];
	snprintf(delim, sizeof delim, "\r\n--%s\r\n", boundary);
	snprintf(close, sizeof close, "\r\n--%s--\r\n", boundary);
	free(boundary);
	const char *body = strstr(data, "\r\n\r\n") + 2; /* keep the CRLF before the first delimiter */
	const char *p1 = strstr(body, delim);
	assert_non_null(p1);
	const char *p2 = strstr(p1 + 1, delim);
	assert_non_null(p2);
	const char *end = strstr(p2 + 1, close);
	assert_non_null(end);
	assert_string_equal(end + strlen(close), "");

	/* part 1: Cyrillic text goes base64 */
	char *part1 = strndup(p1 + strlen(delim), (size_t)(p2 - p1 - strlen(delim)));
	const char *pt = "Content-Type: text/plain; charset=UTF-8\r\n"
	                 "Content-Transfer-Encoding: base64\r\n\r\n";
	assert_true(strncmp(part1, pt, strlen(pt)) == 0);
	dec = b64_decode(part1 + strlen(pt));
	assert_string_equal(dec, text);
	free(dec);
	free(part1);

	/* part 2: ASCII html goes quoted-printable with soft breaks, lines <= 76 */
	char *part2 = strndup(p2 + strlen(delim), (size_t)(end - p2 - strlen(delim)));
	const char *ph = "Content-Type: text/html; charset=UTF-8\r\n"
	                 "Content-Transfer-Encoding: quoted-printable\r\n\r\n";
	assert_true(strncmp(part2, ph, strlen(ph)) == 0);
	const char *qp = part2 + strlen(ph);
	for (const char *q = qp; *q;) {
		const char *eol = strstr(q, "\r\n");
		if (eol == NULL)
			eol = q + strlen(q);
		assert_true(eol - q <= 76);
		q = *eol ? eol + 2 : eol;
	}
	dec = qp_decode(qp);
	assert_string_equal(dec, longline);
	free(dec);
	free(part2);
	free(data);
	json_decref(rec);
	provider_free(p);
	config_free(c);
	fake_stop(&f);
}

static void test_smtp_classification(void **state)
{
	(void)state;
	struct otp_message m = {.channel = OTP_CH_EMAIL, .target = (char *)"user@example.org",
	                        .code = (char *)"12345", .subject = (char *)"S",
	                        .text = (char *)"Your code is 12345"};
	struct provider_result r;
	struct fake f;

	/* RCPT refused for good, then a temporary DATA refusal */
	fake_start(&f, "smtp", "--rcpt-reply", "550 5.1.1 <user@example.org>: 12345 unknown",
	           "--rcpt-reply", "250 2.1.5 Ok", "--data-reply", "451 4.3.0 Try again later",
	           "--data-reply", "250 2.0.0 Ok", ARGS_END);
	struct config *c = smtp_config(&f, "try", NULL, NULL);
	struct provider *p = must_new("smtp", c);
	assert_int_equal(provider_send(p, NULL, &m, 1, &r), OTP_ERR_PERMANENT);
	assert_non_null(strstr(r.error, "550"));
	assert_clean_error(&r, "12345", NULL);
	assert_int_equal(provider_send(p, NULL, &m, 2, &r), OTP_ERR_PROVIDER);
	assert_non_null(strstr(r.error, "451"));
	assert_int_equal(provider_send(p, NULL, &m, 3, &r), 0);
	provider_free(p);
	config_free(c);
	fake_stop(&f);

	/* wrong password: permanent, and the password is not in the error */
	fake_start(&f, "smtp", "--auth", "mailer:right", "--auth-mechs", "LOGIN", ARGS_END);
	c = smtp_config(&f, "try", "mailer", "wrong-pass");
	p = must_new("smtp", c);
	assert_int_equal(provider_send(p, NULL, &m, 1, &r), OTP_ERR_PERMANENT);
	assert_clean_error(&r, "12345", "wrong-pass");
	config_free(c);
	provider_free(p);
	/* AUTH LOGIN works too; a display name with specials is quoted */
	c = smtp_config_from(&f, "\"Example, Inc.\" <otp@example.com>", "try", "mailer", "right");
	p = must_new("smtp", c);
	assert_int_equal(provider_send(p, NULL, &m, 1, &r), 0);
	json_t *rec = only_record(&f);
	assert_string_equal(rec_str(json_object_get(rec, "auth"), "mech"), "LOGIN");
	char *data = rec_body(rec, NULL);
	char *from = mail_header(data, "From");
	assert_string_equal(from, "\"Example, Inc.\" <otp@example.com>");
	free(from);
	free(data);
	json_decref(rec);
	provider_free(p);
	config_free(c);
	fake_stop(&f);

	/* STARTTLS required but the server cannot: permanent, nothing sent in clear */
	fake_start(&f, "smtp", "--starttls", ARGS_END);
	c = smtp_config(&f, "require", NULL, NULL);
	p = must_new("smtp", c);
	assert_int_equal(provider_send(p, NULL, &m, 1, &r), OTP_ERR_PERMANENT);
	json_t *all = fake_records(&f);
	assert_int_equal(json_array_size(all), 0);
	json_decref(all);
	provider_free(p);
	config_free(c);
	fake_stop(&f);

	/* nobody listening: retry */
	struct env e = {0};
	env_set(&e, "OTPD_SMTP_URL", "smtp://127.0.0.1:%d", closed_port());
	env_set(&e, "OTPD_SMTP_FROM", "otp@example.com");
	c = env_config(&e);
	p = must_new("smtp", c);
	assert_int_equal(provider_send(p, NULL, &m, 1, &r), OTP_ERR_PROVIDER);
	provider_free(p);
	config_free(c);
}

int main(void)
{
	/* a fake that dies must not kill the test through SIGPIPE */
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_registry),
		cmocka_unit_test(test_log_masks),
		cmocka_unit_test(test_log_codes_escaped),
		cmocka_unit_test(test_queue_bodies),
		cmocka_unit_test(test_queue_classification),
		cmocka_unit_test(test_transport_errors),
		cmocka_unit_test(test_telegram_notify),
		cmocka_unit_test(test_telegram_bot),
		cmocka_unit_test(test_twilio),
		cmocka_unit_test(test_whatsapp),
		cmocka_unit_test(test_webhook),
		cmocka_unit_test(test_smtp_plain_message),
		cmocka_unit_test(test_smtp_mime),
		cmocka_unit_test(test_smtp_classification),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
