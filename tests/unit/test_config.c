/*
 * test_config.c - the environment table: defaults, every bad value reported at once,
 * derived settings (threads from PHP_PM_MAX_CHILDREN, listen host/port), secrets never
 * dumped. The environment is a table, not the process's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "core/errors.h"

struct env { const char *const *kv; }; /* name, value, name, value, ..., NULL */

static const char *env_get(void *ctx, const char *name)
{
	const struct env *e = ctx;
	for (const char *const *p = e->kv; *p; p += 2)
		if (strcmp(p[0], name) == 0)
			return p[1];
	return NULL;
}

static struct config *load_ok(const char *const *kv)
{
	struct env e = {kv};
	struct config *c = NULL;
	char *errs = NULL;
	int rc = config_load(env_get, &e, &c, &errs);
	if (rc != 0)
		fprintf(stderr, "unexpected errors:\n%s", errs ? errs : "");
	assert_int_equal(rc, 0);
	assert_null(errs);
	return c;
}

static void test_defaults(void **state)
{
	(void)state;
	static const char *const kv[] = {NULL};
	struct config *c = load_ok(kv);
	assert_string_equal(c->listen_host, "127.0.0.1");
	assert_int_equal(c->listen_port, 8080);
	assert_string_equal(c->data_dir, "data");
	assert_int_equal(c->threads, 10); /* PHP_PM_MAX_CHILDREN's default */
	assert_int_equal(c->max_check_attempts, 5);
	assert_false(c->check_consumes);
	assert_false(c->password_readback);
	assert_false(c->dummy);
	assert_string_equal(c->provider, "queue");
	assert_string_equal(c->queue_url, "http://queue");
	assert_string_equal(c->sms_url, "http://sms");
	assert_string_equal(c->sms_worker, "sms");
	assert_string_equal(c->call_url, "http://sms");
	assert_string_equal(c->call_worker, "sms");
	assert_string_equal(c->email_url, "http://email");
	assert_string_equal(c->email_worker, "email");
	assert_string_equal(c->telegram_url, "http://telegram:8080");
	assert_string_equal(c->telegram_worker, "telegram");
	assert_string_equal(c->pg_schema, "public");
	assert_int_equal(c->pg_port, 5432);
	assert_null(c->pg_host);
	assert_null(c->secret_key);
	for (int ch = 0; ch < 5; ch++)
		assert_string_equal(config_channel_provider(c, ch), "queue");
	config_free(c);
}

static void test_values(void **state)
{
	(void)state;
	static const char *const kv[] = {
		"OTPD_LISTEN", "[::1]:9000", "PHP_PM_MAX_CHILDREN", "3", "DUMMY", "TRUE",
		"OTPD_PROVIDER", "log", "OTPD_EMAIL_PROVIDER", "smtp", "OTPD_MAX_BODY_BYTES", "1024",
		"OTPD_LOG_LEVEL", "warn", "OTPD_THREADS", "", /* empty = unset */
		"PG_HOST", "db", "PG_DATABASE", "otp", "PG_USER", "u", NULL};
	struct config *c = load_ok(kv);
	assert_string_equal(c->listen_host, "::1");
	assert_int_equal(c->listen_port, 9000);
	assert_int_equal(c->threads, 3);
	assert_true(c->dummy);
	assert_int_equal(c->max_body_bytes, 1024);
	assert_int_equal(c->log_level, CONFIG_LOG_WARN);
	assert_string_equal(config_channel_provider(c, 0), "log");
	assert_string_equal(config_channel_provider(c, 1), "smtp");
	config_free(c);

	static const char *const kv2[] = {"OTPD_THREADS", "7", "PHP_PM_MAX_CHILDREN", "3", NULL};
	c = load_ok(kv2);
	assert_int_equal(c->threads, 7); /* otpd's own setting wins */
	config_free(c);
}

static void test_all_errors_reported(void **state)
{
	(void)state;
	static const char *const kv[] = {
		"OTPD_LISTEN", "nope", "OTPD_MAX_CHECK_ATTEMPTS", "-1", "DUMMY", "maybe",
		"OTPD_PROVIDER", "carrier-pigeon", "OTPD_SECRET_KEY", "zz", "PG_PORT", "70000",
		"HTTP_AUTH_USERNAME", "admin", "PG_HOST", "db", "OTPD_LOG_LEVEL", "loud", NULL};
	struct env e = {kv};
	struct config *c = NULL;
	char *errs = NULL;
	assert_int_equal(config_load(env_get, &e, &c, &errs), OTP_ERR_INVALID);
	assert_null(c);
	assert_non_null(errs);
	static const char *const names[] = {
		"OTPD_LISTEN:", "OTPD_MAX_CHECK_ATTEMPTS:", "DUMMY:", "OTPD_PROVIDER:",
		"OTPD_SECRET_KEY:", "PG_PORT:", "HTTP_AUTH_PASSWORD:", "PG_DATABASE:", "PG_USER:",
		"OTPD_LOG_LEVEL:"};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		if (strstr(errs, names[i]) == NULL)
			fail_msg("%s not reported in:\n%s", names[i], errs);
	}
	free(errs);
}

static void test_secrets_not_dumped(void **state)
{
	(void)state;
	static const char *const kv[] = {
		"HTTP_AUTH_USERNAME", "admin", "HTTP_AUTH_PASSWORD", "hunter2-secret",
		"OTPD_SECRET_KEY", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
		"PG_PASSWORD", "pg-secret-pw", NULL};
	struct config *c = load_ok(kv);
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	assert_non_null(f);
	config_dump(c, f);
	fclose(f);
	assert_null(strstr(buf, "hunter2-secret"));
	assert_null(strstr(buf, "pg-secret-pw"));
	assert_null(strstr(buf, "00112233445566778899"));
	assert_non_null(strstr(buf, "HTTP_AUTH_PASSWORD=(set)"));
	assert_non_null(strstr(buf, "HTTP_AUTH_USERNAME=admin"));
	free(buf);
	config_free(c);
}

static void test_table_is_complete(void **state)
{
	(void)state;
	/* every variable has a name and a help line; names are unique */
	size_t n = config_var_count();
	assert_true(n > 50);
	for (size_t i = 0; i < n; i++) {
		assert_non_null(config_var_name(i));
		assert_true(strlen(config_var_help(i)) > 5);
		for (size_t j = i + 1; j < n; j++)
			assert_string_not_equal(config_var_name(i), config_var_name(j));
	}
	assert_null(config_var_name(n));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_values),
		cmocka_unit_test(test_all_errors_reported),
		cmocka_unit_test(test_secrets_not_dumped),
		cmocka_unit_test(test_table_is_complete),
	};
	return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
