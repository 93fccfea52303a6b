/*
 * config.h - every setting of otpd, read from the environment in config.c and nowhere
 * else, through one table (name, type, range, default, secret, help). The result is an
 * immutable struct passed down to whoever needs it.
 * Thread-safety: immutable after config_load(); shared read-only by every thread.
 */
#ifndef OTPD_CONFIG_H
#define OTPD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum config_log_level { CONFIG_LOG_DEBUG, CONFIG_LOG_INFO, CONFIG_LOG_WARN, CONFIG_LOG_ERROR };

/* Strings are owned by the struct (freed by config_free); never NULL for settings with a
 * default, NULL for unset optional ones. */
struct config {
	/* listening and storage */
	char *listen;                 /* OTPD_LISTEN host:port */
	char *listen_host;            /* parsed from listen */
	int listen_port;
	char *data_dir;               /* OTPD_DATA_DIR */
	char *tls_cert;               /* OTPD_TLS_CERT: PEM file, or NULL: plain HTTP */
	char *tls_key;                /* OTPD_TLS_KEY: PEM file (set with tls_cert) */
	int threads;                  /* OTPD_THREADS, default PHP_PM_MAX_CHILDREN */
	int php_pm_max_children;      /* PHP_PM_MAX_CHILDREN */
	int php_pm_max_requests;      /* PHP_PM_MAX_REQUESTS (ignored) */
	bool php_pm_max_requests_set;
	long max_body_bytes;          /* OTPD_MAX_BODY_BYTES */
	int header_timeout;           /* OTPD_HEADER_TIMEOUT s: whole request head */
	int body_timeout;             /* OTPD_BODY_TIMEOUT s: whole body after the head */
	int max_connections;          /* OTPD_MAX_CONNECTIONS: open at once */
	int max_connections_per_ip;   /* OTPD_MAX_CONNECTIONS_PER_IP; 0 = no cap */
	enum config_log_level log_level; /* OTPD_LOG_LEVEL */
	bool access_log;              /* OTPD_ACCESS_LOG: one line per answered request */
	bool log_codes;               /* OTPD_LOG_CODES: show codes in the log provider */
	char *secret_key;             /* OTPD_SECRET_KEY (64 hex chars) or NULL: generated */
	int sqlite_pool;              /* OTPD_SQLITE_POOL */

	/* rules */
	int max_check_attempts;       /* OTPD_MAX_CHECK_ATTEMPTS */
	bool check_consumes;          /* OTPD_CHECK_CONSUMES */
	bool password_readback;       /* OTPD_PASSWORD_READBACK */
	int max_lifetime;             /* OTPD_MAX_LIFETIME seconds */
	int janitor_interval;         /* OTPD_JANITOR_INTERVAL seconds */
	int retention;                /* OTPD_RETENTION seconds: keep finished jobs this long */

	/* authentication */
	char *http_auth_username;     /* HTTP_AUTH_USERNAME */
	char *http_auth_password;     /* HTTP_AUTH_PASSWORD (secret) */
	char *admin_token;            /* OTPD_ADMIN_TOKEN (secret) or NULL */

	/* PostgreSQL (used when pg_host is set) */
	char *pg_host, *pg_real_host, *pg_database, *pg_user, *pg_password, *pg_schema;
	int pg_port;
	int pg_pool;                  /* OTPD_PG_POOL */
	int pg_connect_timeout;       /* OTPD_PG_CONNECT_TIMEOUT seconds */

	/* delivery */
	bool dummy;                   /* DUMMY */
	char *provider;               /* OTPD_PROVIDER: default for every channel */
	bool provider_set;            /* OTPD_PROVIDER was given (not the built-in default) */
	char *channel_provider[5];    /* OTPD_{SMS,EMAIL,CALL,TELEGRAM,WHATSAPP}_PROVIDER, by
	                                 enum otp_channel; NULL: use provider */
	int outbox_workers;           /* OTPD_OUTBOX_WORKERS */
	int outbox_max_tries;         /* OTPD_OUTBOX_MAX_TRIES */
	int outbox_max_age;           /* OTPD_OUTBOX_MAX_AGE seconds */
	int outbox_backoff_base_ms;   /* OTPD_OUTBOX_BACKOFF_BASE_MS */
	int outbox_backoff_max;       /* OTPD_OUTBOX_BACKOFF_MAX seconds */
	int outbox_lease;             /* OTPD_OUTBOX_LEASE seconds */
	int provider_timeout;         /* OTPD_PROVIDER_TIMEOUT seconds */
	int shutdown_timeout;         /* OTPD_SHUTDOWN_TIMEOUT seconds */

	/* queue provider (the old service's Queue) */
	char *queue_url;              /* OTP_QUEUE_URL */
	char *sms_url, *sms_worker;   /* OTP_SMS_URL, OTP_SMS_WORKER */
	char *call_url, *call_worker; /* OTP_CALL_URL, OTP_CALL_WORKER */
	char *email_url, *email_worker; /* OTP_EMAIL_URL, OTP_EMAIL_WORKER */
	char *telegram_url, *telegram_worker; /* OTP_TELEGRAM_URL, OTP_TELEGRAM_WORKER */
	char *telegram_app_token;     /* OTP_TELEGRAM_APP_TOKEN (secret) */

	/* telegram_bot provider and webhook */
	char *telegram_bot_token;     /* OTPD_TELEGRAM_BOT_TOKEN (secret) */
	char *telegram_api_url;       /* OTPD_TELEGRAM_API_URL */
	char *telegram_webhook_secret; /* OTPD_TELEGRAM_WEBHOOK_SECRET (secret) */
	int webhook_code_length;      /* OTPD_TELEGRAM_WEBHOOK_CODE_LENGTH */
	int webhook_lifetime;         /* OTPD_TELEGRAM_WEBHOOK_LIFETIME seconds */

	/* smtp provider */
	char *smtp_url;               /* OTPD_SMTP_URL smtp://host:587 or smtps://host:465 */
	char *smtp_username;          /* OTPD_SMTP_USERNAME */
	char *smtp_password;          /* OTPD_SMTP_PASSWORD (secret) */
	char *smtp_from;              /* OTPD_SMTP_FROM */
	char *smtp_starttls;          /* OTPD_SMTP_STARTTLS: try | require | off */

	/* twilio provider */
	char *twilio_base_url;        /* OTPD_TWILIO_BASE_URL */
	char *twilio_account_sid;     /* OTPD_TWILIO_ACCOUNT_SID */
	char *twilio_auth_token;      /* OTPD_TWILIO_AUTH_TOKEN (secret) */
	char *twilio_from;            /* OTPD_TWILIO_FROM */
	char *twilio_voice_language;  /* OTPD_TWILIO_VOICE_LANGUAGE */

	/* whatsapp provider */
	char *whatsapp_base_url;      /* OTPD_WHATSAPP_BASE_URL */
	char *whatsapp_token;         /* OTPD_WHATSAPP_TOKEN (secret) */
	char *whatsapp_phone_number_id; /* OTPD_WHATSAPP_PHONE_NUMBER_ID */
	char *whatsapp_template;      /* OTPD_WHATSAPP_TEMPLATE */
	char *whatsapp_language;      /* OTPD_WHATSAPP_LANGUAGE */

	/* webhook provider */
	char *webhook_url;            /* OTPD_WEBHOOK_URL */
	char *webhook_secret;         /* OTPD_WEBHOOK_SECRET (secret) */

	/* message templates, {code} and {minutes} */
	char *template_sms;           /* OTPD_TEMPLATE_SMS */
	char *template_call;          /* OTPD_TEMPLATE_CALL */
	char *template_email_subject; /* OTPD_TEMPLATE_EMAIL_SUBJECT */
	char *template_email_text;    /* OTPD_TEMPLATE_EMAIL_TEXT */
	char *template_email_html;    /* OTPD_TEMPLATE_EMAIL_HTML (NULL: none) */
	char *template_telegram;      /* OTPD_TEMPLATE_TELEGRAM */
};

/* A function returning an environment variable or NULL: getenv in production, a table
 * in tests. */
typedef const char *(*config_getenv_fn)(void *ctx, const char *name);

/*
 * Read every setting. On success returns 0 and *out (free with config_free). On bad
 * values returns OTP_ERR_INVALID, and errs (caller frees) holds one line per problem,
 * all of them, not just the first, each starting with the variable's name.
 *
 * Secrets need not be in the environment: for a secret NAME (OTPD_SECRET_KEY,
 * PG_PASSWORD, tokens, ...) NAME_FILE may name a file holding the value (Docker
 * secrets), and when neither is set and CREDENTIALS_DIRECTORY is (systemd's
 * LoadCredential=), a credential called NAME there is its value. OTPD_TLS_CERT and
 * OTPD_TLS_KEY, which are file names, take the credential's path. URLs are parsed with
 * libcurl's URL API (scheme and host required).
 */
int config_load(config_getenv_fn get, void *ctx, struct config **out, char **errs);

/*
 * Names in `envp` (environ: "NAME=value" strings, NULL-terminated) that look like
 * otpd's (OTPD_*, OTP_*, PG_*, HTTP_AUTH_*, PHP_PM_*) but are none of its variables:
 * one line per name in *lines (caller frees; NULL when there are none), with the
 * closest known name when one is near ("did you mean OTPD_LISTEN?"). Returns how many.
 */
int config_unknown_names(char *const *envp, char **lines);

/* true when stderr is the journal stream systemd gave us (JOURNAL_STREAM names its
 * device:inode, sd-daemon(3)): then log lines carry syslog priority prefixes. */
bool config_stderr_is_journal(config_getenv_fn get, void *ctx);
void config_free(struct config *c);

/* Print the settings in force, one `NAME=value` per line, secrets as "(set)". */
void config_dump(const struct config *c, FILE *f);

/* The table, for --help and the test that checks the README lists every variable. */
size_t config_var_count(void);
const char *config_var_name(size_t i);
const char *config_var_help(size_t i);
const char *config_var_default(size_t i); /* NULL: no default */

/* The provider name in force for a channel (enum otp_channel). */
const char *config_channel_provider(const struct config *c, int channel);

#endif
