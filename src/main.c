/*
 * main.c - wires otpd together: configuration, the service key, the store, the outbox
 * workers, the janitor, the HTTP server; then waits for SIGTERM/SIGINT and drains.
 *
 * DESIGN: signals are blocked in every thread (the mask is set before any thread is
 * created) and taken synchronously by sigwait() here, so no code runs in a signal
 * handler. Shutdown order is the reverse of start: stop taking requests and let those in
 * flight finish, stop the outbox (in-flight sends finish, claimed-but-unsent jobs are
 * released), stop the janitor, close the store.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/api.h"
#include "config.h"
#include "core/otp.h"
#include "http/server.h"
#include "log.h"
#include "outbox/outbox.h"
#include "providers/provider.h"
#include "store/legacy.h"
#include "store/store.h"

#define KEY_FILE "secret.key"

static const char *env_get(void *ctx, const char *name)
{
	(void)ctx;
	return getenv(name);
}

static int64_t now_unix(void)
{
	return (int64_t)time(NULL);
}

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: otpd [command]\n"
	        "  (none)                 serve HTTP (configured by environment variables)\n"
	        "  --check-config         validate the configuration, print it, exit 0 or 2\n"
	        "  migrate                apply pending database migrations and exit\n"
	        "  migrate-from-legacy [CONNINFO] [--schema S] [--timezone Z]\n"
	        "                         import the old service's otp_limit rules and live\n"
	        "                         otp_password codes from PostgreSQL (default: the\n"
	        "                         database and schema of PG_*), into otpd's store\n"
	        "  --help, --version\n"
	        "Environment variables:\n");
	for (size_t i = 0; i < config_var_count(); i++) {
		const char *def = config_var_default(i);
		fprintf(f, "  %-34s %s%s%s%s\n", config_var_name(i), config_var_help(i),
		        def ? " [default: " : "", def ? def : "", def ? "]" : "");
	}
}

/* The master key: OTPD_SECRET_KEY, or OTPD_DATA_DIR/secret.key, generated on first start
 * (mode 0600, written with O_EXCL so two processes starting together agree). */
static int load_key(const struct config *cfg, uint8_t master[OTP_KEY_LEN], char *err, size_t cap)
{
	char hex[2 * OTP_KEY_LEN + 2];
	size_t bin_len = 0;
	if (cfg->secret_key != NULL) {
		if (sodium_hex2bin(master, OTP_KEY_LEN, cfg->secret_key, strlen(cfg->secret_key), NULL,
		                   &bin_len, NULL) != 0 || bin_len != OTP_KEY_LEN) {
			snprintf(err, cap, "OTPD_SECRET_KEY: must be 64 hex characters");
			return -1;
		}
		return 0;
	}
	char path[4200];
	snprintf(path, sizeof path, "%s/%s", cfg->data_dir, KEY_FILE);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd >= 0) {
		randombytes_buf(master, OTP_KEY_LEN);
		sodium_bin2hex(hex, sizeof hex, master, OTP_KEY_LEN);
		size_t n = strlen(hex);
		hex[n++] = '\n';
		bool ok = write(fd, hex, n) == (ssize_t)n && fsync(fd) == 0;
		close(fd);
		sodium_memzero(hex, sizeof hex);
		if (!ok) {
			unlink(path);
			snprintf(err, cap, "cannot write %s: %s", path, strerror(errno));
			return -1;
		}
		log_write(LOG_INFO, "generated a new secret key", "path", path, LOG_END);
		return 0;
	}
	if (errno != EEXIST) {
		snprintf(err, cap, "cannot create %s: %s", path, strerror(errno));
		return -1;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(err, cap, "cannot read %s: %s", path, strerror(errno));
		return -1;
	}
	struct stat st;
	if (fstat(fd, &st) == 0 && (st.st_mode & 077) != 0)
		log_write(LOG_WARN, "secret key file is readable by others: chmod 600 it", "path", path,
		          LOG_END);
	ssize_t n = read(fd, hex, sizeof hex - 1);
	close(fd);
	if (n < 0)
		n = 0;
	hex[n] = '\0';
	while (n > 0 && (hex[n - 1] == '\n' || hex[n - 1] == '\r' || hex[n - 1] == ' '))
		hex[--n] = '\0';
	int rc = sodium_hex2bin(master, OTP_KEY_LEN, hex, (size_t)n, NULL, &bin_len, NULL);
	sodium_memzero(hex, sizeof hex);
	if (rc != 0 || bin_len != OTP_KEY_LEN) {
		snprintf(err, cap, "%s: must hold 64 hex characters", path);
		return -1;
	}
	return 0;
}

/* Build (and drop) the provider of every channel, as the outbox does at start, so
 * --check-config reports incomplete provider settings too. Prints each problem once;
 * returns how many there were. */
static int check_providers(const struct config *cfg)
{
	static const char *const channels[] = {"sms", "email", "call", "telegram", "whatsapp"};
	const char *seen[5] = {NULL};
	int problems = 0;
	if (cfg->dummy)
		return 0;
	for (int ch = 0; ch < 5; ch++) {
		const char *name = config_channel_provider(cfg, ch);
		bool dup = false;
		for (int i = 0; i < ch; i++)
			dup = dup || (seen[i] != NULL && strcmp(seen[i], name) == 0);
		seen[ch] = name;
		if (dup)
			continue;
		char err[512] = "";
		struct provider *p = provider_new(name, cfg, err, sizeof err);
		if (p == NULL) {
			fprintf(stderr, "otpd: provider %s (for %s): %s\n", name, channels[ch], err);
			problems++;
		}
		provider_free(p);
	}
	return problems;
}

static struct store *open_store(const struct config *cfg, char *err, size_t cap)
{
	if (cfg->pg_host != NULL) {
		struct store_pg_config pc = {
			.host = cfg->pg_host,
			.real_host = cfg->pg_real_host,
			.port = cfg->pg_port,
			.database = cfg->pg_database,
			.user = cfg->pg_user,
			.password = cfg->pg_password,
			.schema = cfg->pg_schema,
			.pool = cfg->pg_pool,
			.connect_timeout = cfg->pg_connect_timeout,
		};
		return store_pg_open(&pc, err, cap);
	}
	char path[4200];
	snprintf(path, sizeof path, "%s/otpd.db", cfg->data_dir);
	return store_sqlite_open(path, cfg->sqlite_pool, err, cap);
}

/* ---- janitor: purges expired codes and old finished jobs ---------------------------- */

struct janitor {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stop;          /* guarded by mu */
	struct store *store;
	const struct config *cfg;
};

static void *janitor_main(void *arg)
{
	struct janitor *j = arg;
	pthread_mutex_lock(&j->mu);
	while (!j->stop) {
		pthread_mutex_unlock(&j->mu);
		int64_t now = now_unix();
		/* idempotency keys answer for 24 hours; ended verifications, events and finished
		 * jobs stay for OTPD_RETENTION (sends inside a limit window longer) */
		struct store_purge p = {
			.now = now,
			.ended_before = now - j->cfg->retention,
			.events_before = now - j->cfg->retention,
			.jobs_before = now - j->cfg->retention,
			.idem_before = now - 24 * 3600 - 60,
			.batch = 1000,
		};
		struct store_purge_counts n = {0, 0};
		int rc = store_purge(j->store, &p, &n);
		if (rc != 0) {
			log_write(LOG_WARN, "janitor: purge failed", "error", otp_err_name(rc), LOG_END);
		} else if (n.expired > 0 || n.deleted > 0) {
			char e[24], d[24];
			snprintf(e, sizeof e, "%lld", (long long)n.expired);
			snprintf(d, sizeof d, "%lld", (long long)n.deleted);
			log_write(LOG_INFO, "janitor: expired and purged", "expired", e, "rows", d, LOG_END);
		}
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += j->cfg->janitor_interval;
		pthread_mutex_lock(&j->mu);
		while (!j->stop && pthread_cond_timedwait(&j->cv, &j->mu, &until) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&j->mu);
	return NULL;
}

static void outbox_wake(void *arg)
{
	outbox_notify(arg);
}

static void delivery_stats(void *arg, struct api_delivery_stats *out)
{
	struct outbox_stats st;
	outbox_stats(arg, &st);
	*out = (struct api_delivery_stats){.sent = st.sent, .retried = st.retried,
	                                   .dead = st.dead, .released = st.released,
	                                   .store_errors = st.store_errors};
}

static int serve(const struct config *cfg)
{
	char err[8192] = "";
	int status = 1;
	uint8_t master[OTP_KEY_LEN];
	struct otp_key key;
	struct store *store = NULL;
	struct outbox *outbox = NULL;
	struct http_server *http = NULL;
	struct janitor jan = {.store = NULL, .cfg = cfg};
	bool janitor_started = false;
	struct api_metrics *metrics = NULL;
	struct http_tls *tls = NULL;

	if (cfg->php_pm_max_requests_set)
		log_write(LOG_INFO, "PHP_PM_MAX_REQUESTS has no meaning for otpd and is ignored", LOG_END);
	/* before anything is created: a bad file is a configuration error */
	if (http_tls_load(cfg, &tls, err, sizeof err) != 0) {
		fprintf(stderr, "otpd: %s\n", err);
		return 2;
	}
	struct stat kst;
	if (tls != NULL && stat(cfg->tls_key, &kst) == 0 && (kst.st_mode & 077) != 0)
		log_write(LOG_WARN, "TLS key file is readable by others: chmod 600 it", "path",
		          cfg->tls_key, LOG_END);
	if ((cfg->pg_host == NULL || cfg->secret_key == NULL) && mkdir(cfg->data_dir, 0700) != 0 &&
	    errno != EEXIST) {
		fprintf(stderr, "otpd: OTPD_DATA_DIR: cannot create %s: %s\n", cfg->data_dir,
		        strerror(errno));
		http_tls_free(tls);
		return 2;
	}
	if (load_key(cfg, master, err, sizeof err) != 0) {
		fprintf(stderr, "otpd: %s\n", err);
		http_tls_free(tls);
		return 2;
	}
	if (otp_key_init(&key, master) != 0) {
		fprintf(stderr, "otpd: cannot initialise libsodium\n");
		http_tls_free(tls);
		return 1;
	}
	sodium_memzero(master, sizeof master);

	store = open_store(cfg, err, sizeof err);
	if (store == NULL) {
		fprintf(stderr, "otpd: store: %s\n", err);
		goto out;
	}
	outbox = outbox_new(cfg, store, &key, err, sizeof err);
	if (outbox == NULL) {
		fprintf(stderr, "otpd: delivery: %s\n", err);
		status = 2;
		goto out;
	}
	if (outbox_start(outbox) != 0) {
		fprintf(stderr, "otpd: cannot start the delivery workers\n");
		goto out;
	}

	metrics = api_metrics_new(OTPD_VERSION, store_name(store), (double)now_unix());
	if (metrics == NULL) {
		fprintf(stderr, "otpd: out of memory\n");
		goto out;
	}
	struct api_ctx api = {
		.cfg = cfg,
		.verify = {
			.cfg = cfg,
			.store = store,
			.key = &key,
			.rng = &otp_rng_system,
			.now = now_unix,
			.notify = outbox_wake,
			.notify_arg = outbox,
		},
		.store = store,
		.key = &key,
		.rng = &otp_rng_system,
		.now = now_unix,
		.notify = outbox_wake,
		.notify_arg = outbox,
		.metrics = metrics,
		.delivery_stats = delivery_stats,
		.delivery_stats_arg = outbox,
	};
	http = http_server_start(cfg, &api, tls, err, sizeof err);
	if (http == NULL) {
		fprintf(stderr, "otpd: %s\n", err);
		goto out;
	}
	jan.store = store;
	pthread_mutex_init(&jan.mu, NULL);
	pthread_cond_init(&jan.cv, NULL);
	if (pthread_create(&jan.thread, NULL, janitor_main, &jan) == 0)
		janitor_started = true;

	char threads[16], workers[16];
	snprintf(threads, sizeof threads, "%d", cfg->threads);
	snprintf(workers, sizeof workers, "%d", cfg->outbox_workers);
	log_write(LOG_INFO, "otpd started", "listen", cfg->listen, "store", store_name(store),
	          "threads", threads, "outbox_workers", workers, "dummy", cfg->dummy ? "true" : "false",
	          LOG_END);

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	int sig = 0;
	sigwait(&set, &sig);
	log_write(LOG_INFO, "shutting down", "signal", sig == SIGTERM ? "SIGTERM" : "SIGINT", LOG_END);
	status = 0;

out:;
	/* One OTPD_SHUTDOWN_TIMEOUT for the whole stop: the outbox keeps delivering while
	 * the HTTP side drains, and gets what is left of the deadline after it. */
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (http != NULL) {
		http_server_drain(http, cfg->shutdown_timeout);
		http_server_stop(http);
	}
	if (janitor_started) {
		pthread_mutex_lock(&jan.mu);
		jan.stop = true;
		pthread_cond_signal(&jan.cv);
		pthread_mutex_unlock(&jan.mu);
		pthread_join(jan.thread, NULL);
		pthread_cond_destroy(&jan.cv);
		pthread_mutex_destroy(&jan.mu);
	}
	if (outbox != NULL) {
		clock_gettime(CLOCK_MONOTONIC, &t1);
		int left = cfg->shutdown_timeout - (int)(t1.tv_sec - t0.tv_sec);
		outbox_stop(outbox, left > 0 ? left : 0);
		outbox_free(outbox);
	}
	store_close(store);
	api_metrics_free(metrics);
	http_tls_free(tls);
	otp_key_wipe(&key);
	if (status == 0)
		log_write(LOG_INFO, "otpd stopped", LOG_END);
	return status;
}

static int migrate(const struct config *cfg)
{
	char err[8192] = "";
	if (cfg->pg_host == NULL && mkdir(cfg->data_dir, 0700) != 0 && errno != EEXIST) {
		fprintf(stderr, "otpd: OTPD_DATA_DIR: cannot create %s: %s\n", cfg->data_dir,
		        strerror(errno));
		return 2;
	}
	/* Opening a store applies its pending migrations. */
	struct store *s = open_store(cfg, err, sizeof err);
	if (s == NULL) {
		fprintf(stderr, "otpd: store: %s\n", err);
		return 1;
	}
	store_close(s);
	printf("migrations applied\n");
	return 0;
}

/* otpd migrate-from-legacy [CONNINFO] [--schema S] [--timezone Z] */
static int migrate_from_legacy(const struct config *cfg, int argc, char **argv)
{
	char err[8192] = "";
	struct store_legacy_source src = {.seal_codes = cfg->password_readback};
	for (int i = 2; i < argc; i++) {
		if ((strcmp(argv[i], "--schema") == 0 || strcmp(argv[i], "--timezone") == 0) &&
		    i + 1 < argc) {
			if (strcmp(argv[i], "--schema") == 0)
				src.schema = argv[++i];
			else
				src.timezone = argv[++i];
		} else if (argv[i][0] != '-' && src.conninfo == NULL) {
			src.conninfo = argv[i];
		} else {
			fprintf(stderr, "otpd: migrate-from-legacy: unexpected argument '%s'\n", argv[i]);
			return 2;
		}
	}
	if (src.conninfo == NULL) {
		if (cfg->pg_host == NULL) {
			fprintf(stderr, "otpd: migrate-from-legacy: name the old database, e.g.\n"
			                "  otpd migrate-from-legacy 'host=old-db dbname=otp user=otp'\n"
			                "or set PG_* to it (the old tables may share otpd's database)\n");
			return 2;
		}
		src.host = cfg->pg_host;
		src.port = cfg->pg_port;
		src.database = cfg->pg_database;
		src.user = cfg->pg_user;
		src.password = cfg->pg_password;
		if (src.schema == NULL)
			src.schema = cfg->pg_schema;
	}
	if (cfg->pg_host == NULL && mkdir(cfg->data_dir, 0700) != 0 && errno != EEXIST) {
		fprintf(stderr, "otpd: OTPD_DATA_DIR: cannot create %s: %s\n", cfg->data_dir,
		        strerror(errno));
		return 2;
	}
	uint8_t master[OTP_KEY_LEN];
	struct otp_key key;
	if (load_key(cfg, master, err, sizeof err) != 0) {
		fprintf(stderr, "otpd: %s\n", err);
		return 2;
	}
	otp_key_init(&key, master);
	sodium_memzero(master, sizeof master);
	struct store *store = open_store(cfg, err, sizeof err);
	if (store == NULL) {
		fprintf(stderr, "otpd: store: %s\n", err);
		otp_key_wipe(&key);
		return 1;
	}
	struct store_legacy_counts n = {0};
	int rc = store_legacy_import(store, &src, &key, now_unix(), &n, err, sizeof err);
	store_close(store);
	otp_key_wipe(&key);
	if (rc != 0) {
		fprintf(stderr, "otpd: migrate-from-legacy: %s\n", err[0] ? err : otp_err_name(rc));
		return 1;
	}
	printf("imported %lld limit rules (%lld skipped), %lld live codes (%lld already present, "
	       "%lld skipped)\n",
	       (long long)n.rules, (long long)n.rules_skipped, (long long)n.codes,
	       (long long)n.codes_present, (long long)n.codes_skipped);
	return 0;
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : NULL;
	if (cmd != NULL && (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0)) {
		usage(stdout);
		return 0;
	}
	if (cmd != NULL && strcmp(cmd, "--version") == 0) {
		printf("otpd %s\n", OTPD_VERSION);
		return 0;
	}
	if (cmd != NULL && strcmp(cmd, "--check-config") != 0 && strcmp(cmd, "migrate") != 0 &&
	    strcmp(cmd, "migrate-from-legacy") != 0) {
		fprintf(stderr, "otpd: unknown command '%s'\n", cmd);
		usage(stderr);
		return 2;
	}

	struct config *cfg = NULL;
	char *errs = NULL;
	int rc = config_load(env_get, NULL, &cfg, &errs);
	if (rc != 0) {
		fprintf(stderr, "otpd: invalid configuration:\n%s", errs ? errs : "out of memory\n");
		free(errs);
		return 2;
	}
	log_set_level((enum log_level)cfg->log_level);

	if (cmd != NULL && strcmp(cmd, "--check-config") == 0) {
		int problems = check_providers(cfg);
		struct http_tls *tls = NULL;
		char terr[4400] = "";
		if (http_tls_load(cfg, &tls, terr, sizeof terr) != 0) {
			fprintf(stderr, "otpd: %s\n", terr);
			problems++;
		}
		http_tls_free(tls);
		if (problems == 0)
			config_dump(cfg, stdout);
		config_free(cfg);
		return problems == 0 ? 0 : 2;
	}
	if (sodium_init() < 0) {
		fprintf(stderr, "otpd: cannot initialise libsodium\n");
		config_free(cfg);
		return 1;
	}
	int status;
	if (cmd != NULL && strcmp(cmd, "migrate") == 0) {
		status = migrate(cfg);
	} else if (cmd != NULL && strcmp(cmd, "migrate-from-legacy") == 0) {
		status = migrate_from_legacy(cfg, argc, argv);
	} else {
		/* Block the signals before any thread exists so every thread inherits the mask
		 * and only sigwait() in serve() receives them. */
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGTERM);
		sigaddset(&set, SIGINT);
		pthread_sigmask(SIG_BLOCK, &set, NULL);
		signal(SIGPIPE, SIG_IGN);
		status = serve(cfg);
	}
	config_free(cfg);
	return status;
}
