/*
 * config.c - every environment variable of otpd in one table: name, type, range,
 * default, secret or not, help. config_load() reads them all, reports every bad value
 * (not just the first), and fills an immutable struct config. Nothing else in otpd
 * calls getenv(). Secrets may also come from files (NAME_FILE) or systemd credentials
 * (CREDENTIALS_DIRECTORY), read here too, so the rest of otpd sees one value.
 */
#include "config.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/errors.h"
#include "core/num.h"

/* V_URL: parsed by libcurl's URL API; `choices` lists the schemes allowed. */
enum var_type { V_STR, V_INT, V_BOOL, V_LEVEL, V_ENUM, V_URL };

struct var {
	const char *name;
	enum var_type type;
	size_t off;            /* offset of the field in struct config */
	long long min, max;    /* V_INT range; V_STR max length (0: no limit) */
	const char *def;       /* default as text; NULL: unset */
	bool secret;           /* never printed */
	const char *choices;   /* V_ENUM: space-separated words; V_URL: schemes */
	const char *help;
};

#define F(field) offsetof(struct config, field)
#define PROVIDERS "log queue telegram telegram_bot smtp twilio whatsapp webhook"

static const struct var vars[] = {
	/* otpd's own: listening, storage, rules */
	{"OTPD_LISTEN", V_STR, F(listen), 0, 300, "127.0.0.1:8080", false, NULL,
	 "host:port to listen on ([::1]:8080 for IPv6, 0.0.0.0:80 for every interface)"},
	{"OTPD_DATA_DIR", V_STR, F(data_dir), 0, 4000, "data", false, NULL,
	 "directory for the SQLite database and the generated secret key (created 0700)"},
	{"OTPD_TLS_CERT", V_STR, F(tls_cert), 0, 4000, NULL, false, NULL,
	 "with OTPD_TLS_KEY: serve HTTPS; a PEM file with the certificate (and its chain); "
	 "re-read on SIGHUP"},
	{"OTPD_TLS_KEY", V_STR, F(tls_key), 0, 4000, NULL, false, NULL,
	 "the PEM file of the certificate's private key; re-read on SIGHUP"},
	{"OTPD_THREADS", V_INT, F(threads), 1, 1024, NULL, false, NULL,
	 "HTTP worker threads (default: PHP_PM_MAX_CHILDREN)"},
	{"OTPD_MAX_BODY_BYTES", V_INT, F(max_body_bytes), 256, 16777216, "65536", false, NULL,
	 "largest request body accepted; larger ones get 413 before they are read"},
	{"OTPD_HEADER_TIMEOUT", V_INT, F(header_timeout), 1, 300, "10", false, NULL,
	 "seconds a client has to send a whole request head (from connecting, or from the "
	 "previous answer on a kept-alive connection), however steadily it trickles"},
	{"OTPD_BODY_TIMEOUT", V_INT, F(body_timeout), 1, 3600, "30", false, NULL,
	 "seconds a client has to send a whole request body once its head is in"},
	{"OTPD_MAX_CONNECTIONS", V_INT, F(max_connections), 16, 65536, "4096", false, NULL,
	 "open client connections at once; past it a new one is closed at once"},
	{"OTPD_MAX_CONNECTIONS_PER_IP", V_INT, F(max_connections_per_ip), 0, 65536, "128", false,
	 NULL, "open connections from one client address; past it a new one is closed at "
	 "once (0: no cap; raise it behind a reverse proxy)"},
	{"OTPD_LOG_LEVEL", V_LEVEL, F(log_level), 0, 0, "info", false, NULL,
	 "debug, info, warn or error"},
	{"OTPD_ACCESS_LOG", V_BOOL, F(access_log), 0, 0, "true", false, NULL,
	 "one log line per answered request (client, method, path, status, error, bytes, "
	 "duration, user agent), whatever OTPD_LOG_LEVEL says"},
	{"OTPD_LOG_CODES", V_BOOL, F(log_codes), 0, 0, "false", false, NULL,
	 "log provider prints codes and messages in clear (local development only)"},
	{"OTPD_SECRET_KEY", V_STR, F(secret_key), 64, 64, NULL, true, NULL,
	 "64 hex characters: the key for code hashes and sealing (default: generated once "
	 "into OTPD_DATA_DIR/secret.key, mode 0600)"},
	{"OTPD_SQLITE_POOL", V_INT, F(sqlite_pool), 1, 64, "4", false, NULL,
	 "SQLite connections"},
	{"OTPD_MAX_CHECK_ATTEMPTS", V_INT, F(max_check_attempts), 0, 1000, "5", false, NULL,
	 "compat dialect: wrong checks a code takes before it is void; 0 = unlimited"},
	{"OTPD_CHECK_CONSUMES", V_BOOL, F(check_consumes), 0, 0, "false", false, NULL,
	 "a successful check uses the code up (the old service kept it valid)"},
	{"OTPD_PASSWORD_READBACK", V_BOOL, F(password_readback), 0, 0, "false", false, NULL,
	 "serve GET /password (keeps an encrypted copy of each code)"},
	{"OTPD_MAX_LIFETIME", V_INT, F(max_lifetime), 1, 31536000, "86400", false, NULL,
	 "largest lifetime a send may ask for, seconds"},
	{"OTPD_JANITOR_INTERVAL", V_INT, F(janitor_interval), 1, 86400, "60", false, NULL,
	 "seconds between purges of expired codes"},
	{"OTPD_RETENTION", V_INT, F(retention), 60, 31536000, "604800", false, NULL,
	 "seconds to keep finished delivery jobs for GET /admin/outbox"},
	/* authentication */
	{"HTTP_AUTH_USERNAME", V_STR, F(http_auth_username), 0, 256, NULL, false, NULL,
	 "with HTTP_AUTH_PASSWORD: HTTP Basic auth on every endpoint but /health and /ready"},
	{"HTTP_AUTH_PASSWORD", V_STR, F(http_auth_password), 0, 256, NULL, true, NULL,
	 "password for HTTP Basic auth"},
	{"OTPD_ADMIN_TOKEN", V_STR, F(admin_token), 0, 256, NULL, true, NULL,
	 "a secret of at least 32 characters: as a Bearer token it opens /admin/apps and "
	 "/admin/keys (to make the first keys where nobody can run otpd key create)"},
	/* PostgreSQL */
	{"PG_HOST", V_STR, F(pg_host), 0, 255, NULL, false, NULL,
	 "PostgreSQL host (or pooler); when set otpd uses PostgreSQL instead of SQLite"},
	{"PG_REAL_HOST", V_STR, F(pg_real_host), 0, 255, NULL, false, NULL,
	 "the database server itself: at start otpd waits for it, creates the database and "
	 "schema if missing, and migrates there"},
	{"PG_PORT", V_INT, F(pg_port), 1, 65535, "5432", false, NULL, "PostgreSQL port"},
	{"PG_DATABASE", V_STR, F(pg_database), 0, 63, NULL, false, NULL, "PostgreSQL database"},
	{"PG_USER", V_STR, F(pg_user), 0, 63, NULL, false, NULL, "PostgreSQL user"},
	{"PG_PASSWORD", V_STR, F(pg_password), 0, 1024, NULL, true, NULL, "PostgreSQL password"},
	{"PG_SCHEMA", V_STR, F(pg_schema), 0, 63, "public", false, NULL,
	 "PostgreSQL schema (search_path, quoted)"},
	{"OTPD_PG_POOL", V_INT, F(pg_pool), 1, 256, "16", false, NULL,
	 "PostgreSQL connections per otpd process"},
	{"OTPD_PG_CONNECT_TIMEOUT", V_INT, F(pg_connect_timeout), 1, 3600, "60", false, NULL,
	 "seconds to wait for PostgreSQL at start"},
	/* the old container's settings */
	{"PHP_PM_MAX_CHILDREN", V_INT, F(php_pm_max_children), 1, 1024, "10", false, NULL,
	 "the old service's worker count: default of OTPD_THREADS"},
	{"PHP_PM_MAX_REQUESTS", V_INT, F(php_pm_max_requests), 0, 100000000, "500", false, NULL,
	 "accepted for compatibility and ignored (logged)"},
	{"DUMMY", V_BOOL, F(dummy), 0, 0, "false", false, NULL,
	 "true: codes are stored and checkable, nothing is delivered (jobs are 'skipped')"},
	/* delivery */
	{"OTPD_PROVIDER", V_ENUM, F(provider), 0, 0, "queue", false, PROVIDERS,
	 "default delivery provider for every channel"},
	{"OTPD_SMS_PROVIDER", V_ENUM, F(channel_provider[0]), 0, 0, NULL, false, PROVIDERS,
	 "provider for sms (default OTPD_PROVIDER)"},
	{"OTPD_EMAIL_PROVIDER", V_ENUM, F(channel_provider[1]), 0, 0, NULL, false, PROVIDERS,
	 "provider for email (default OTPD_PROVIDER)"},
	{"OTPD_CALL_PROVIDER", V_ENUM, F(channel_provider[2]), 0, 0, NULL, false, PROVIDERS,
	 "provider for voice calls (default OTPD_PROVIDER)"},
	{"OTPD_TELEGRAM_PROVIDER", V_ENUM, F(channel_provider[3]), 0, 0, NULL, false, PROVIDERS,
	 "provider for telegram (default OTPD_PROVIDER)"},
	{"OTPD_WHATSAPP_PROVIDER", V_ENUM, F(channel_provider[4]), 0, 0, NULL, false, PROVIDERS,
	 "provider for whatsapp (default OTPD_PROVIDER)"},
	{"OTPD_OUTBOX_WORKERS", V_INT, F(outbox_workers), 1, 64, "8", false, NULL,
	 "delivery worker threads"},
	{"OTPD_OUTBOX_MAX_TRIES", V_INT, F(outbox_max_tries), 1, 1000, "10", false, NULL,
	 "delivery attempts before a job is dead"},
	{"OTPD_OUTBOX_MAX_AGE", V_INT, F(outbox_max_age), 1, 604800, "3600", false, NULL,
	 "seconds after which an undelivered job is dead"},
	{"OTPD_OUTBOX_BACKOFF_BASE_MS", V_INT, F(outbox_backoff_base_ms), 1, 3600000, "1000", false,
	 NULL, "first retry delay, doubled per attempt (with jitter)"},
	{"OTPD_OUTBOX_BACKOFF_MAX", V_INT, F(outbox_backoff_max), 1, 86400, "300", false, NULL,
	 "longest retry delay, seconds"},
	{"OTPD_OUTBOX_LEASE", V_INT, F(outbox_lease), 1, 3600, "60", false, NULL,
	 "seconds a worker owns a claimed job; after that another may re-claim it"},
	{"OTPD_PROVIDER_TIMEOUT", V_INT, F(provider_timeout), 1, 600, "10", false, NULL,
	 "seconds one delivery request may take"},
	{"OTPD_SHUTDOWN_TIMEOUT", V_INT, F(shutdown_timeout), 0, 600, "10", false, NULL,
	 "seconds SIGTERM waits for in-flight requests and deliveries"},
	/* queue provider: the old service's variables */
	{"OTP_QUEUE_URL", V_URL, F(queue_url), 0, 2048, "http://queue", false, "http https",
	 "Queue service URL (queue provider)"},
	{"OTP_SMS_URL", V_URL, F(sms_url), 0, 2048, "http://sms", false, "http https", "SMS service URL"},
	{"OTP_SMS_WORKER", V_STR, F(sms_worker), 0, 256, "sms", false, NULL, "Queue worker for sms"},
	{"OTP_CALL_URL", V_URL, F(call_url), 0, 2048, "http://sms", false, "http https",
	 "service URL for calls"},
	{"OTP_CALL_WORKER", V_STR, F(call_worker), 0, 256, "sms", false, NULL,
	 "Queue worker for calls"},
	{"OTP_EMAIL_URL", V_URL, F(email_url), 0, 2048, "http://email", false, "http https",
	 "Email service URL"},
	{"OTP_EMAIL_WORKER", V_STR, F(email_worker), 0, 256, "email", false, NULL,
	 "Queue worker for email"},
	{"OTP_TELEGRAM_URL", V_URL, F(telegram_url), 0, 2048, "http://telegram:8080", false, "http https",
	 "http-telegram-notify URL (queue and telegram providers)"},
	{"OTP_TELEGRAM_WORKER", V_STR, F(telegram_worker), 0, 256, "telegram", false, NULL,
	 "Queue worker for telegram"},
	{"OTP_TELEGRAM_APP_TOKEN", V_STR, F(telegram_app_token), 0, 1024, NULL, true, NULL,
	 "http-telegram-notify APP_TOKEN (X-Auth-Token)"},
	/* telegram bot and webhook */
	{"OTPD_TELEGRAM_BOT_TOKEN", V_STR, F(telegram_bot_token), 0, 256, NULL, true, NULL,
	 "Telegram Bot API token (telegram_bot provider)"},
	{"OTPD_TELEGRAM_API_URL", V_URL, F(telegram_api_url), 0, 2048, "https://api.telegram.org", false, "http https", "Telegram Bot API base URL"},
	{"OTPD_TELEGRAM_WEBHOOK_SECRET", V_STR, F(telegram_webhook_secret), 0, 256, NULL, true, NULL,
	 "required X-Telegram-Bot-Api-Secret-Token of POST /telegram/webhook"},
	{"OTPD_TELEGRAM_WEBHOOK_CODE_LENGTH", V_INT, F(webhook_code_length), 4, 12, "6", false, NULL,
	 "digits of codes made by the Telegram webhook"},
	{"OTPD_TELEGRAM_WEBHOOK_LIFETIME", V_INT, F(webhook_lifetime), 1, 86400, "300", false, NULL,
	 "lifetime of codes made by the Telegram webhook, seconds"},
	/* smtp */
	{"OTPD_SMTP_URL", V_URL, F(smtp_url), 0, 2048, NULL, false, "smtp smtps",
	 "smtp://host:587 (STARTTLS) or smtps://host:465"},
	{"OTPD_SMTP_USERNAME", V_STR, F(smtp_username), 0, 256, NULL, false, NULL, "SMTP user"},
	{"OTPD_SMTP_PASSWORD", V_STR, F(smtp_password), 0, 1024, NULL, true, NULL, "SMTP password"},
	{"OTPD_SMTP_FROM", V_STR, F(smtp_from), 0, 320, NULL, false, NULL,
	 "From address, e.g. OTP <otp@example.com>"},
	{"OTPD_SMTP_STARTTLS", V_ENUM, F(smtp_starttls), 0, 0, "try", false, "try require off",
	 "STARTTLS on smtp:// URLs"},
	/* twilio */
	{"OTPD_TWILIO_BASE_URL", V_URL, F(twilio_base_url), 0, 2048, "https://api.twilio.com", false, "http https", "Twilio API base URL"},
	{"OTPD_TWILIO_ACCOUNT_SID", V_STR, F(twilio_account_sid), 0, 64, NULL, false, NULL,
	 "Twilio account SID"},
	{"OTPD_TWILIO_AUTH_TOKEN", V_STR, F(twilio_auth_token), 0, 256, NULL, true, NULL,
	 "Twilio auth token"},
	{"OTPD_TWILIO_FROM", V_STR, F(twilio_from), 0, 64, NULL, false, NULL,
	 "Twilio sender number (+15550001111) or messaging service SID"},
	{"OTPD_TWILIO_VOICE_LANGUAGE", V_STR, F(twilio_voice_language), 0, 16, "en-US", false, NULL,
	 "language of the spoken code"},
	/* whatsapp */
	{"OTPD_WHATSAPP_BASE_URL", V_URL, F(whatsapp_base_url), 0, 2048, "https://graph.facebook.com/v19.0", false, "http https", "WhatsApp Cloud API base URL"},
	{"OTPD_WHATSAPP_TOKEN", V_STR, F(whatsapp_token), 0, 1024, NULL, true, NULL,
	 "WhatsApp Cloud API access token"},
	{"OTPD_WHATSAPP_PHONE_NUMBER_ID", V_STR, F(whatsapp_phone_number_id), 0, 64, NULL, false,
	 NULL, "WhatsApp sender phone number id"},
	{"OTPD_WHATSAPP_TEMPLATE", V_STR, F(whatsapp_template), 0, 512, "otp", false, NULL,
	 "approved authentication template name"},
	{"OTPD_WHATSAPP_LANGUAGE", V_STR, F(whatsapp_language), 0, 16, "en_US", false, NULL,
	 "template language code"},
	/* webhook */
	{"OTPD_WEBHOOK_URL", V_URL, F(webhook_url), 0, 2048, NULL, false, "http https",
	 "URL the webhook provider POSTs each message to"},
	{"OTPD_WEBHOOK_SECRET", V_STR, F(webhook_secret), 0, 1024, NULL, true, NULL,
	 "key of the X-Otpd-Signature HMAC-SHA256"},
	/* templates */
	{"OTPD_TEMPLATE_SMS", V_STR, F(template_sms), 0, 2048, "Your code is {code}", false, NULL,
	 "sms/whatsapp text where a flow brings none; {code}, {minutes}"},
	{"OTPD_TEMPLATE_CALL", V_STR, F(template_call), 0, 2048, "Your code is {code}", false, NULL,
	 "text read out by voice calls (the compat /call brings none)"},
	{"OTPD_TEMPLATE_EMAIL_SUBJECT", V_STR, F(template_email_subject), 0, 998,
	 "Your code is {code}", false, NULL, "email subject where a flow brings none"},
	{"OTPD_TEMPLATE_EMAIL_TEXT", V_STR, F(template_email_text), 0, 8192,
	 "Your code is {code}. It expires in {minutes} minutes.", false, NULL, "email text part where a flow brings no subject"},
	{"OTPD_TEMPLATE_EMAIL_HTML", V_STR, F(template_email_html), 0, 65536, NULL, false, NULL,
	 "email html part where a flow brings no subject (none by default)"},
	{"OTPD_TEMPLATE_TELEGRAM", V_STR, F(template_telegram), 0, 4096,
	 "Your code is {code}", false, NULL, "telegram message (the webhook's codes)"},
};

#define N_VARS (sizeof vars / sizeof vars[0])

size_t config_var_count(void) { return N_VARS; }
const char *config_var_name(size_t i) { return i < N_VARS ? vars[i].name : NULL; }
const char *config_var_help(size_t i) { return i < N_VARS ? vars[i].help : NULL; }
const char *config_var_default(size_t i) { return i < N_VARS ? vars[i].def : NULL; }

/* A growing buffer of error lines, one per bad variable. */
struct errbuf {
	char *s;
	size_t len;
	bool oom;
};

static void err_add(struct errbuf *e, const char *name, const char *what)
{
	size_t add = strlen(name) + strlen(what) + 3;
	char *n = realloc(e->s, e->len + add + 1);
	if (n == NULL) {
		e->oom = true;
		return;
	}
	e->s = n;
	int w = snprintf(e->s + e->len, add + 1, "%s: %s\n", name, what);
	if (w > 0)
		e->len += (size_t)w;
}

static bool word_in(const char *word, const char *list)
{
	size_t n = strlen(word);
	for (const char *p = list; *p;) {
		const char *sp = strchr(p, ' ');
		size_t len = sp ? (size_t)(sp - p) : strlen(p);
		if (len == n && strncmp(p, word, n) == 0)
			return true;
		if (sp == NULL)
			break;
		p = sp + 1;
	}
	return false;
}

static int parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = {"true", "1", "yes", "on"};
	static const char *const no[] = {"false", "0", "no", "off"};
	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(s, yes[i]) == 0) { *out = true; return 0; }
		if (strcasecmp(s, no[i]) == 0) { *out = false; return 0; }
	}
	return OTP_ERR_INVALID;
}

static int parse_level(const char *s, enum config_log_level *out)
{
	static const char *const names[] = {"debug", "info", "warn", "error"};
	for (size_t i = 0; i < 4; i++)
		if (strcasecmp(s, names[i]) == 0) {
			*out = (enum config_log_level)i;
			return 0;
		}
	return OTP_ERR_INVALID;
}

/* Why `s` is not a usable URL with one of `schemes` (space-separated), or NULL. The
 * reason never quotes the URL: it may hold credentials (user:password@host). */
static const char *url_problem(const char *s, const char *schemes, char *msg, size_t cap)
{
	const char *why = NULL;
	char *scheme = NULL, *host = NULL;
	CURLU *u = curl_url();
	if (u == NULL)
		return "out of memory";
	CURLUcode uc = curl_url_set(u, CURLUPART_URL, s, 0);
	if (uc != CURLUE_OK) {
		snprintf(msg, cap, "not a URL (%s)", curl_url_strerror(uc));
		why = msg;
	} else if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	           !word_in(scheme, schemes)) {
		snprintf(msg, cap, "must be a URL whose scheme is one of: %s", schemes);
		why = msg;
	} else if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || host[0] == '\0') {
		why = "must name a host";
	}
	curl_free(scheme);
	curl_free(host);
	curl_url_cleanup(u);
	return why;
}

/* Apply one value (or its default when `s` is NULL) to the struct. */
static void apply(struct config *c, const struct var *v, const char *s, struct errbuf *e)
{
	char *field = (char *)c + v->off;
	char msg[160];
	if (s == NULL)
		s = v->def;
	if (s == NULL)
		return;
	switch (v->type) {
	case V_STR:
	case V_URL:
	case V_ENUM: {
		size_t n = strlen(s);
		if (v->type != V_ENUM && v->max > 0 && (long long)n > v->max) {
			snprintf(msg, sizeof msg, "longer than %lld characters", v->max);
			err_add(e, v->name, msg);
			return;
		}
		if (v->type == V_STR && v->min > 0 && (long long)n < v->min) {
			snprintf(msg, sizeof msg, "shorter than %lld characters", v->min);
			err_add(e, v->name, msg);
			return;
		}
		if (v->type == V_ENUM && !word_in(s, v->choices)) {
			snprintf(msg, sizeof msg, "must be one of: %s", v->choices);
			err_add(e, v->name, msg);
			return;
		}
		const char *bad_url = v->type == V_URL ? url_problem(s, v->choices, msg, sizeof msg)
		                                       : NULL;
		if (bad_url != NULL) {
			err_add(e, v->name, bad_url);
			return;
		}
		char *dup = strdup(s);
		if (dup == NULL) {
			e->oom = true;
			return;
		}
		free(*(char **)field);
		*(char **)field = dup;
		return;
	}
	case V_INT: {
		int64_t n;
		if (otp_parse_i64(s, v->min, v->max, &n) != 0) {
			snprintf(msg, sizeof msg, "must be an integer from %lld to %lld", v->min, v->max);
			err_add(e, v->name, msg);
			return;
		}
		if (v->off == F(max_body_bytes))
			*(long *)field = (long)n;
		else
			*(int *)field = (int)n;
		return;
	}
	case V_BOOL:
		if (parse_bool(s, (bool *)field) != 0)
			err_add(e, v->name, "must be true or false");
		return;
	case V_LEVEL:
		if (parse_level(s, (enum config_log_level *)field) != 0)
			err_add(e, v->name, "must be debug, info, warn or error");
		return;
	}
}

static bool is_hex(const char *s)
{
	for (; *s; s++)
		if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f') || (*s >= 'A' && *s <= 'F')))
			return false;
	return true;
}

/* host:port, [v6]:port. */
static void parse_listen(struct config *c, struct errbuf *e)
{
	const char *s = c->listen;
	const char *colon = strrchr(s, ':');
	if (colon == NULL || colon == s) {
		err_add(e, "OTPD_LISTEN", "must be host:port");
		return;
	}
	int64_t port;
	if (otp_parse_i64(colon + 1, 1, 65535, &port) != 0) {
		err_add(e, "OTPD_LISTEN", "port must be an integer from 1 to 65535");
		return;
	}
	const char *h = s;
	size_t hl = (size_t)(colon - s);
	if (h[0] == '[') {
		if (hl < 3 || h[hl - 1] != ']') {
			err_add(e, "OTPD_LISTEN", "IPv6 host must be in brackets: [::1]:8080");
			return;
		}
		h++;
		hl -= 2;
	}
	c->listen_host = strndup(h, hl);
	if (c->listen_host == NULL)
		e->oom = true;
	c->listen_port = (int)port;
}

static bool is_set(const char *s) { return s != NULL && s[0] != '\0'; }

#define CRED_NAME_MAX 64
#define SECRET_FILE_MAX 65536

/* The contents of a secret's file (NAME_FILE, or a credential), one trailing line break
 * dropped, into a malloc'd string; NULL with the reason in e. The buffer is wiped. */
static char *read_secret(const struct var *v, const char *what, const char *path,
                         struct errbuf *e)
{
	char msg[300];
	size_t cap = v->max > 0 ? (size_t)v->max + 3 : SECRET_FILE_MAX;
	char *buf = malloc(cap);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = 0, got;
	if (buf == NULL) {
		e->oom = true;
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	if (fd < 0) {
		snprintf(msg, sizeof msg, "%s: cannot read %s: %s", what, path, strerror(errno));
		err_add(e, v->name, msg);
		free(buf);
		return NULL;
	}
	while ((size_t)n < cap - 1 && (got = read(fd, buf + n, cap - 1 - (size_t)n)) > 0)
		n += got;
	close(fd);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		n--;
	buf[n] = '\0';
	if ((size_t)n > cap - 3 || strlen(buf) != (size_t)n) {
		snprintf(msg, sizeof msg, "%s: %s is too long or not text", what, path);
		err_add(e, v->name, msg);
		memset(buf, 0, cap);
		free(buf);
		return NULL;
	}
	return buf;
}

/* Variables naming a file: a systemd credential of that name gives its path (a
 * secret's credential gives its contents). */
static bool cred_path(const struct var *v)
{
	return v->off == F(tls_cert) || v->off == F(tls_key);
}

/*
 * Where a variable's value comes from when the environment does not give it: NAME_FILE
 * (secrets), or a systemd credential named NAME (secrets: its contents; file names: its
 * path). Returns a malloc'd value (*owned: wipe and free it) or NULL.
 */
static char *from_elsewhere(const struct var *v, config_getenv_fn get, void *ctx,
                            struct errbuf *e)
{
	char fname[CRED_NAME_MAX + 8], path[4200];
	if (v->secret) {
		snprintf(fname, sizeof fname, "%s_FILE", v->name);
		const char *file = get(ctx, fname);
		if (is_set(file))
			return read_secret(v, fname, file, e);
	}
	if (!v->secret && !cred_path(v))
		return NULL;
	const char *dir = get(ctx, "CREDENTIALS_DIRECTORY");
	if (!is_set(dir))
		return NULL;
	int n = snprintf(path, sizeof path, "%s/%s", dir, v->name);
	if (n < 0 || (size_t)n >= sizeof path || access(path, F_OK) != 0)
		return NULL;
	if (cred_path(v)) {
		char *dup = strdup(path);
		if (dup == NULL)
			e->oom = true;
		return dup;
	}
	snprintf(fname, sizeof fname, "credential %s", v->name);
	return read_secret(v, fname, path, e);
}

int config_load(config_getenv_fn get, void *ctx, struct config **out, char **errs)
{
	*out = NULL;
	*errs = NULL;
	struct config *c = calloc(1, sizeof *c);
	if (c == NULL)
		return OTP_ERR_NOMEM;
	struct errbuf e = {0};
	bool threads_set = false;
	for (size_t i = 0; i < N_VARS; i++) {
		const char *s = get(ctx, vars[i].name);
		char *owned = NULL;
		/* An empty variable is treated as unset, like a shell user expects. */
		if (s != NULL && s[0] == '\0')
			s = NULL;
		if (vars[i].secret && s != NULL) {
			char fname[CRED_NAME_MAX + 8];
			snprintf(fname, sizeof fname, "%s_FILE", vars[i].name);
			if (is_set(get(ctx, fname))) {
				err_add(&e, vars[i].name, "set it or its _FILE, not both");
				continue;
			}
		}
		if (s == NULL)
			s = owned = from_elsewhere(&vars[i], get, ctx, &e);
		if (vars[i].off == F(threads) && s != NULL)
			threads_set = true;
		if (vars[i].off == F(php_pm_max_requests) && s != NULL)
			c->php_pm_max_requests_set = true;
		if (vars[i].off == F(provider) && s != NULL)
			c->provider_set = true;
		apply(c, &vars[i], s, &e);
		if (owned != NULL) {
			memset(owned, 0, strlen(owned));
			free(owned);
		}
	}
	if (!threads_set)
		c->threads = c->php_pm_max_children;
	if (c->listen != NULL)
		parse_listen(c, &e);
	if (c->secret_key != NULL && !is_hex(c->secret_key))
		err_add(&e, "OTPD_SECRET_KEY", "must be 64 hex characters");
	if (is_set(c->http_auth_username) != is_set(c->http_auth_password))
		err_add(&e, is_set(c->http_auth_username) ? "HTTP_AUTH_PASSWORD" : "HTTP_AUTH_USERNAME",
		        "HTTP_AUTH_USERNAME and HTTP_AUTH_PASSWORD must be set together");
	if (is_set(c->tls_cert) != is_set(c->tls_key))
		err_add(&e, is_set(c->tls_cert) ? "OTPD_TLS_KEY" : "OTPD_TLS_CERT",
		        "OTPD_TLS_CERT and OTPD_TLS_KEY must be set together");
	if (is_set(c->admin_token) && strlen(c->admin_token) < 32)
		err_add(&e, "OTPD_ADMIN_TOKEN", "must be at least 32 characters (e.g. openssl rand "
		        "-hex 32)");
	if (is_set(c->http_auth_username) && strchr(c->http_auth_username, ':') != NULL)
		err_add(&e, "HTTP_AUTH_USERNAME", "must not contain ':'");
	if (is_set(c->pg_host)) {
		if (!is_set(c->pg_database))
			err_add(&e, "PG_DATABASE", "required when PG_HOST is set");
		if (!is_set(c->pg_user))
			err_add(&e, "PG_USER", "required when PG_HOST is set");
	}
	if (e.oom) {
		free(e.s);
		config_free(c);
		return OTP_ERR_NOMEM;
	}
	if (e.len > 0) {
		*errs = e.s;
		config_free(c);
		return OTP_ERR_INVALID;
	}
	*out = c;
	return 0;
}

void config_free(struct config *c)
{
	if (c == NULL)
		return;
	for (size_t i = 0; i < N_VARS; i++) {
		if (vars[i].type == V_STR || vars[i].type == V_ENUM || vars[i].type == V_URL) {
			char **p = (char **)((char *)c + vars[i].off);
			if (*p != NULL && vars[i].secret)
				memset(*p, 0, strlen(*p)); /* wipe secrets */
			free(*p);
		}
	}
	free(c->listen_host);
	free(c);
}

void config_dump(const struct config *c, FILE *f)
{
	for (size_t i = 0; i < N_VARS; i++) {
		const struct var *v = &vars[i];
		const char *field = (const char *)c + v->off;
		switch (v->type) {
		case V_STR:
		case V_URL:
		case V_ENUM: {
			const char *s = *(char *const *)field;
			if (s == NULL)
				fprintf(f, "%s=\n", v->name);
			else
				fprintf(f, "%s=%s\n", v->name, v->secret ? "(set)" : s);
			break;
		}
		case V_INT:
			if (v->off == F(max_body_bytes))
				fprintf(f, "%s=%ld\n", v->name, *(const long *)field);
			else
				fprintf(f, "%s=%d\n", v->name, *(const int *)field);
			break;
		case V_BOOL:
			fprintf(f, "%s=%s\n", v->name, *(const bool *)field ? "true" : "false");
			break;
		case V_LEVEL: {
			static const char *const names[] = {"debug", "info", "warn", "error"};
			fprintf(f, "%s=%s\n", v->name, names[*(const enum config_log_level *)field]);
			break;
		}
		}
	}
}

const char *config_channel_provider(const struct config *c, int channel)
{
	if (channel >= 0 && channel < 5 && c->channel_provider[channel] != NULL)
		return c->channel_provider[channel];
	return c->provider;
}

/* ---- names that look like ours but are not ------------------------------------------ */

static const char *const own_prefixes[] = {"OTPD_", "OTP_", "PG_", "HTTP_AUTH_", "PHP_PM_"};

/* Levenshtein distance of a and b (both at most CONFIG_NAME_MAX bytes), two rows. */
#define CONFIG_NAME_MAX 64
static size_t distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	size_t prev[CONFIG_NAME_MAX + 1], cur[CONFIG_NAME_MAX + 1];
	if (la > CONFIG_NAME_MAX || lb > CONFIG_NAME_MAX)
		return (size_t)-1;
	for (size_t j = 0; j <= lb; j++)
		prev[j] = j;
	for (size_t i = 1; i <= la; i++) {
		cur[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
			size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
			cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
		}
		memcpy(prev, cur, (lb + 1) * sizeof prev[0]);
	}
	return prev[lb];
}

static bool known_name(const char *name)
{
	size_t n = strlen(name);
	for (size_t i = 0; i < N_VARS; i++) {
		if (strcmp(vars[i].name, name) == 0)
			return true;
		size_t vl = strlen(vars[i].name);
		if (vars[i].secret && n == vl + 5 && strncmp(name, vars[i].name, vl) == 0 &&
		    strcmp(name + vl, "_FILE") == 0)
			return true;
	}
	return false;
}

int config_unknown_names(char *const *envp, char **lines)
{
	struct errbuf e = {0};
	int count = 0;
	*lines = NULL;
	for (size_t k = 0; envp != NULL && envp[k] != NULL; k++) {
		const char *eq = strchr(envp[k], '=');
		size_t n = eq ? (size_t)(eq - envp[k]) : strlen(envp[k]);
		char name[CONFIG_NAME_MAX + 1];
		bool ours = false;
		if (n == 0 || n > CONFIG_NAME_MAX)
			continue;
		memcpy(name, envp[k], n);
		name[n] = '\0';
		for (size_t p = 0; p < sizeof own_prefixes / sizeof own_prefixes[0]; p++)
			ours = ours || strncmp(name, own_prefixes[p], strlen(own_prefixes[p])) == 0;
		if (!ours || known_name(name))
			continue;
		/* the nearest name, if it is near: a third of the name's length at most */
		const char *best = NULL;
		size_t best_d = n / 3 + 1;
		for (size_t i = 0; i < N_VARS; i++) {
			size_t d = distance(name, vars[i].name);
			if (d < best_d) {
				best_d = d;
				best = vars[i].name;
			}
		}
		char msg[160];
		if (best != NULL)
			snprintf(msg, sizeof msg, "unknown variable (did you mean %s?)", best);
		else
			snprintf(msg, sizeof msg, "unknown variable: otpd does not read it");
		err_add(&e, name, msg);
		count++;
	}
	if (e.oom) {
		free(e.s);
		return count;
	}
	*lines = e.s;
	return count;
}

bool config_stderr_is_journal(config_getenv_fn get, void *ctx)
{
	const char *js = get(ctx, "JOURNAL_STREAM");
	struct stat st;
	char mine[64];
	if (!is_set(js) || fstat(STDERR_FILENO, &st) != 0)
		return false;
	/* the stream is ours only while stderr still is that file: a child whose stderr was
	 * redirected keeps the variable but not the stream */
	snprintf(mine, sizeof mine, "%llu:%llu", (unsigned long long)st.st_dev,
	         (unsigned long long)st.st_ino);
	return strcmp(js, mine) == 0;
}
