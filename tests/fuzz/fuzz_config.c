/*
 * fuzz_config.c - libFuzzer target for config_load() (src/config.h) with a getenv table
 * built from the input. The environment is operator input, not a network peer's, but
 * it is parsed by the same rules and a crash there is a crash at start-up.
 *
 * Input: lines. `NAME=value` sets a variable of the table by name; any other line sets
 * the variable whose index is the line's first byte (modulo the table size) to the rest
 * of the line, so the fuzzer reaches every variable without guessing names. A later line
 * overrides an earlier one.
 *
 * Checks: success gives a usable struct (listen host and port, threads, a provider per
 * channel) whose dump has one line per variable and never shows a secret; failure gives
 * one "NAME: problem" line per error, each naming a variable of the table.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "core/errors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) { \
	fprintf(stderr, "%s:%d: contract broken: %s\n", __FILE__, __LINE__, #cond); \
	abort(); } } while (0)

#define MAX_VARS 256

struct env {
	size_t n;
	char *value[MAX_VARS]; /* by table index; NULL: unset */
};

static const char *env_get(void *ctx, const char *name)
{
	struct env *e = ctx;
	for (size_t i = 0; i < e->n; i++)
		if (strcmp(config_var_name(i), name) == 0)
			return e->value[i];
	return NULL;
}

static bool known_name(const char *s, size_t len)
{
	for (size_t i = 0; i < config_var_count(); i++) {
		const char *n = config_var_name(i);
		if (strlen(n) == len && memcmp(n, s, len) == 0)
			return true;
	}
	return false;
}

static void set(struct env *e, size_t i, const uint8_t *v, size_t len)
{
	free(e->value[i]);
	e->value[i] = strndup((const char *)v, len);
	if (e->value[i] == NULL)
		abort();
}

static void check_dump(const struct config *c, const struct env *e)
{
	static const char *const secrets[] = {
		"OTPD_SECRET_KEY", "HTTP_AUTH_PASSWORD", "PG_PASSWORD", "OTP_TELEGRAM_APP_TOKEN",
		"OTPD_TELEGRAM_BOT_TOKEN", "OTPD_TELEGRAM_WEBHOOK_SECRET", "OTPD_SMTP_PASSWORD",
		"OTPD_TWILIO_AUTH_TOKEN", "OTPD_WHATSAPP_TOKEN", "OTPD_WEBHOOK_SECRET",
	};
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	CHECK(f != NULL);
	config_dump(c, f);
	CHECK(fclose(f) == 0);
	/* one NAME=value line per variable, in table order (values hold no newline: the
	 * input is split on them) */
	const char *line = buf;
	for (size_t i = 0; i < e->n; i++) {
		const char *name = config_var_name(i);
		size_t nl = strlen(name);
		const char *eol = memchr(line, '\n', len - (size_t)(line - buf));
		CHECK(eol != NULL);
		CHECK(strncmp(line, name, nl) == 0 && line[nl] == '=');
		for (size_t s = 0; s < sizeof secrets / sizeof secrets[0]; s++)
			if (strcmp(secrets[s], name) == 0)
				CHECK(eol == line + nl + 1 || strncmp(line + nl + 1, "(set)\n", 6) == 0);
		line = eol + 1;
	}
	CHECK(line == buf + len);
	free(buf);
}

static void check_errors(const char *errs)
{
	CHECK(errs != NULL && errs[0] != '\0');
	for (const char *line = errs; *line;) {
		const char *colon = strstr(line, ": ");
		const char *nl = strchr(line, '\n');
		CHECK(nl != NULL && colon != NULL && colon < nl);
		CHECK(known_name(line, (size_t)(colon - line)));
		line = nl + 1;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct env e = {0};
	e.n = config_var_count();
	CHECK(e.n > 0 && e.n <= MAX_VARS);

	const uint8_t *p = data, *end = data + size;
	while (p < end) {
		const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
		const uint8_t *le = nl ? nl : end;
		const uint8_t *eq = memchr(p, '=', (size_t)(le - p));
		bool named = false;
		if (eq != NULL) {
			for (size_t i = 0; i < e.n; i++) {
				const char *n = config_var_name(i);
				if (strlen(n) == (size_t)(eq - p) && memcmp(n, p, (size_t)(eq - p)) == 0) {
					set(&e, i, eq + 1, (size_t)(le - eq - 1));
					named = true;
					break;
				}
			}
		}
		if (!named && le > p)
			set(&e, p[0] % e.n, p + 1, (size_t)(le - p - 1));
		p = nl ? nl + 1 : end;
	}

	struct config *c = NULL;
	char *errs = NULL;
	int rc = config_load(env_get, &e, &c, &errs);
	if (rc == 0) {
		CHECK(c != NULL && errs == NULL);
		CHECK(c->listen != NULL && c->listen_host != NULL);
		CHECK(c->listen_port >= 1 && c->listen_port <= 65535);
		CHECK(c->threads >= 1 && c->max_body_bytes >= 256);
		CHECK(c->data_dir != NULL && c->provider != NULL);
		for (int ch = 0; ch < 5; ch++)
			CHECK(config_channel_provider(c, ch) != NULL);
		if (c->http_auth_username != NULL && c->http_auth_username[0] != '\0')
			CHECK(c->http_auth_password != NULL && c->http_auth_password[0] != '\0');
		check_dump(c, &e);
		config_free(c);
	} else {
		CHECK(c == NULL);
		CHECK(rc == OTP_ERR_INVALID || rc == OTP_ERR_NOMEM);
		if (rc == OTP_ERR_INVALID)
			check_errors(errs);
		free(errs);
	}
	for (size_t i = 0; i < e.n; i++)
		free(e.value[i]);
	return 0;
}
