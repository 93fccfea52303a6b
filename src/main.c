/*
 * main.c - wires otpd together: the commands (one table row each), configuration, the
 * service key, the store, the outbox workers, the janitor, the HTTP server; then waits
 * for signals and drains.
 *
 * DESIGN: signals are blocked in every thread (the mask is set before any thread is
 * created) and taken synchronously by sigtimedwait() here, so no code runs in a signal
 * handler. SIGTERM, SIGINT and SIGQUIT stop; SIGHUP reloads (the TLS pair); the other
 * signals whose default would kill a daemon and that otpd has no use for (SIGUSR1,
 * SIGUSR2, SIGALRM, ...) are taken too, logged and ignored. Under systemd the same loop
 * tells the manager READY=1 once serving, RELOADING=1 / READY=1 around a reload,
 * WATCHDOG=1 every half of WATCHDOG_USEC, and STOPPING=1 (sd_notify(3); without
 * NOTIFY_SOCKET these are no-ops). Shutdown order is the reverse of start: stop taking
 * requests and let those in flight finish, stop the outbox (in-flight sends finish,
 * claimed-but-unsent jobs are released), stop the janitor, close the store.
 * Every line otpd writes on stderr is logfmt, fatal start errors included; what a
 * command prints for its user (the configuration, an import's counts) goes to stdout.
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
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "api/api.h"
#include "commands.h"
#include "config.h"
#include "core/otp.h"
#include "http/server.h"
#include "http/tls.h"
#include "log.h"
#include "outbox/outbox.h"
#include "providers/provider.h"
#include "store/legacy.h"
#include "store/store.h"

#define KEY_FILE "secret.key"

extern char **environ;

static const char *env_get(void *ctx, const char *name)
{
	(void)ctx;
	return getenv(name);
}

static int64_t now_unix(void)
{
	return (int64_t)time(NULL);
}

/* A start that cannot go on: one logfmt line, level=fatal. `detail` may be "". */
static void fatal(const char *what, const char *detail)
{
	log_write(LOG_FATAL, what, "error", detail, LOG_END);
}

void refuse_argument(const char *cmd, const char *arg)
{
	log_write(LOG_FATAL, "unexpected argument", "command", cmd, "argument", arg,
	          "usage", "see otpd --help", LOG_END);
}

/* Commands that take no arguments refuse any (`otpd migrate --dry-run` must not
 * migrate). 0, or 2 after saying so. */
int no_arguments(int argc, char **argv)
{
	if (argc <= 1)
		return 0;
	refuse_argument(argv[0], argv[1]);
	return 2;
}

/* Unknown OTPD_* (and the old service's prefixes) names: at start a warning each, since
 * a typo otherwise silently leaves a setting at its default. */
static void warn_unknown_names(void)
{
	char *lines = NULL;
	if (config_unknown_names(environ, &lines) > 0) {
		for (char *l = lines, *nl; l != NULL && *l; l = nl + 1) {
			nl = strchr(l, '\n');
			if (nl == NULL)
				break;
			*nl = '\0';
			log_write(LOG_WARN, "unknown variable ignored", "problem", l, LOG_END);
		}
	}
	free(lines);
}

/* The master key: OTPD_SECRET_KEY, or OTPD_DATA_DIR/secret.key, generated on first start
 * (mode 0600, written with O_EXCL so two processes starting together agree). */
int command_load_key(const struct config *cfg, uint8_t master[OTP_KEY_LEN], char *err,
                     size_t cap)
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

struct store *command_open_store(const struct config *cfg, char *err, size_t cap)
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
	for (size_t i = 0; i < st.n_providers && i < API_PROVIDERS_MAX; i++)
		out->providers[out->n_providers++] = (struct api_provider_stats){
			.name = st.providers[i].name, .sent = st.providers[i].sent,
			.retried = st.providers[i].retried, .dead = st.providers[i].dead};
}


static void report_problem(void *arg, const char *var, int level, const char *text)
{
	int *errors = arg;
	log_write(level == LOG_ERROR ? LOG_ERROR : LOG_WARN, "configuration problem", "var", var,
	          "problem", text, LOG_END);
	if (level == LOG_ERROR)
		(*errors)++;
}

/* ---- signals and the service manager ------------------------------------------------ */

static const int stop_signals[] = {SIGTERM, SIGINT, SIGQUIT};
/* default action "terminate" (or stop), no use in otpd: taken and logged instead */
static const int ignored_signals[] = {SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF,
                                      SIGPOLL, SIGTTIN, SIGTTOU, SIGXFSZ};

static const char *signal_name(int sig)
{
	switch (sig) {
	case SIGTERM: return "SIGTERM";
	case SIGINT: return "SIGINT";
	case SIGQUIT: return "SIGQUIT";
	case SIGHUP: return "SIGHUP";
	case SIGUSR1: return "SIGUSR1";
	case SIGUSR2: return "SIGUSR2";
	case SIGALRM: return "SIGALRM";
	case SIGVTALRM: return "SIGVTALRM";
	case SIGPROF: return "SIGPROF";
	case SIGPOLL: return "SIGPOLL";
	case SIGTTIN: return "SIGTTIN";
	case SIGTTOU: return "SIGTTOU";
	case SIGXFSZ: return "SIGXFSZ";
	}
	return "signal";
}

static void handled_signals(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGHUP);
	for (size_t i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++)
		sigaddset(set, stop_signals[i]);
	for (size_t i = 0; i < sizeof ignored_signals / sizeof ignored_signals[0]; i++)
		sigaddset(set, ignored_signals[i]);
}

static void notify_ready(const struct config *cfg, const char *store)
{
	char status[400];
	snprintf(status, sizeof status, "READY=1\nSTATUS=serving on %s%s (%s)", cfg->listen,
	         cfg->tls_cert ? " with TLS" : "", store);
	sd_notify(0, status);
}

/* SIGHUP: the certificate and key are read again and served to new connections; a pair
 * that cannot be used is logged and the old one kept. The log is stderr, which belongs to
 * whoever started otpd (journald, docker, a shell redirect) and is rotated by them:
 * there is nothing of otpd's to reopen. */
static void reload(const struct config *cfg, struct http_server *http, struct http_tls **tls)
{
	char err[4400] = "", msg[64];
	struct timespec mono;
	clock_gettime(CLOCK_MONOTONIC, &mono);
	snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu",
	         (unsigned long long)mono.tv_sec * 1000000ULL +
	         (unsigned long long)mono.tv_nsec / 1000ULL);
	sd_notify(0, msg);
	if (*tls == NULL) {
		log_write(LOG_INFO, "reload: no TLS configured, nothing to reload", "log",
		          "stderr (not reopened: its owner rotates it)", LOG_END);
	} else {
		struct http_tls *fresh = NULL;
		if (http_tls_load(cfg, &fresh, err, sizeof err) == 0 &&
		    http_server_reload_tls(http, fresh, err, sizeof err) == 0) {
			http_tls_free(*tls);
			*tls = fresh;
			log_write(LOG_INFO, "reload: TLS certificate and key reloaded", "cert",
			          cfg->tls_cert, "log", "stderr (not reopened: its owner rotates it)",
			          LOG_END);
		} else {
			http_tls_free(fresh);
			log_write(LOG_ERROR, "reload: TLS pair refused, the previous one is kept",
			          "error", err, LOG_END);
		}
	}
	notify_ready(cfg, "reloaded");
}

/* Serve until a stop signal; returns it. */
static int wait_for_stop(const struct config *cfg, struct http_server *http,
                         struct http_tls **tls)
{
	sigset_t set;
	uint64_t wd_usec = 0;
	handled_signals(&set);
	/* WATCHDOG=1 at half the interval the manager asked for (sd_watchdog_enabled(3)) */
	bool watchdog = sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0;
	for (;;) {
		siginfo_t info;
		struct timespec wait = {3600, 0};
		if (watchdog) {
			uint64_t half = wd_usec / 2;
			wait.tv_sec = (time_t)(half / 1000000u);
			wait.tv_nsec = (long)(half % 1000000u) * 1000L;
			sd_notify(0, "WATCHDOG=1");
		}
		int sig = sigtimedwait(&set, &info, &wait);
		if (sig < 0)
			continue; /* the watchdog's tick (EAGAIN), or EINTR */
		for (size_t i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++)
			if (sig == stop_signals[i])
				return sig;
		if (sig == SIGHUP) {
			reload(cfg, http, tls);
			continue;
		}
		char pid[24];
		snprintf(pid, sizeof pid, "%ld", (long)info.si_pid);
		log_write(LOG_WARN, "signal ignored: otpd has no use for it", "signal",
		          signal_name(sig), "from_pid", pid, LOG_END);
	}
}

static int cmd_serve(const struct config *cfg, int argc, char **argv)
{
	if (no_arguments(argc, argv) != 0)
		return 2;
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

	warn_unknown_names();
	if (cfg->php_pm_max_requests_set)
		log_write(LOG_INFO, "PHP_PM_MAX_REQUESTS has no meaning for otpd and is ignored", LOG_END);
	/* before anything is created: a bad file is a configuration error */
	if (http_tls_load(cfg, &tls, err, sizeof err) != 0 ||
	    (tls != NULL && http_tls_check_files(cfg, now_unix(), err, sizeof err) != 0)) {
		fatal("invalid configuration", err);
		http_tls_free(tls);
		return 2;
	}
	/* every channel's provider: known, complete, able to deliver it (all problems
	 * listed, before anything is written) */
	int provider_errors = 0;
	provider_check_config(cfg, report_problem, &provider_errors);
	if (provider_errors > 0) {
		fatal("invalid configuration", "see the lines above");
		http_tls_free(tls);
		return 2;
	}
	struct stat kst;
	if (tls != NULL && stat(cfg->tls_key, &kst) == 0 && (kst.st_mode & 077) != 0)
		log_write(LOG_WARN, "TLS key file is readable by others: chmod 600 it", "path",
		          cfg->tls_key, LOG_END);
	if ((cfg->pg_host == NULL || cfg->secret_key == NULL) && mkdir(cfg->data_dir, 0700) != 0 &&
	    errno != EEXIST) {
		snprintf(err, sizeof err, "OTPD_DATA_DIR: cannot create %s: %s", cfg->data_dir,
		         strerror(errno));
		fatal("invalid configuration", err);
		http_tls_free(tls);
		return 2;
	}
	if (command_load_key(cfg, master, err, sizeof err) != 0) {
		fatal("invalid configuration", err);
		http_tls_free(tls);
		return 2;
	}
	if (otp_key_init(&key, master) != 0) {
		fatal("cannot initialise libsodium", "");
		http_tls_free(tls);
		return 1;
	}
	sodium_memzero(master, sizeof master);

	store = command_open_store(cfg, err, sizeof err);
	if (store == NULL) {
		fatal("store", err);
		goto out;
	}
	outbox = outbox_new(cfg, store, &key, err, sizeof err);
	if (outbox == NULL) {
		fatal("invalid configuration", err);
		status = 2;
		goto out;
	}
	if (outbox_start(outbox) != 0) {
		fatal("cannot start the delivery workers", "");
		goto out;
	}

	metrics = api_metrics_new(OTPD_VERSION, store_name(store), (double)now_unix());
	if (metrics == NULL) {
		fatal("out of memory", "");
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
		fatal("cannot serve", err);
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

	notify_ready(cfg, store_name(store));
	int sig = wait_for_stop(cfg, http, &tls);
	log_write(LOG_INFO, "shutting down", "signal", signal_name(sig), LOG_END);
	sd_notify(0, "STOPPING=1\nSTATUS=stopping: finishing requests and deliveries");
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

static int cmd_migrate(const struct config *cfg, int argc, char **argv)
{
	if (no_arguments(argc, argv) != 0)
		return 2;
	char err[8192] = "";
	if (cfg->pg_host == NULL && mkdir(cfg->data_dir, 0700) != 0 && errno != EEXIST) {
		snprintf(err, sizeof err, "OTPD_DATA_DIR: cannot create %s: %s", cfg->data_dir,
		         strerror(errno));
		fatal("invalid configuration", err);
		return 2;
	}
	/* Opening a store applies its pending migrations. */
	struct store *s = command_open_store(cfg, err, sizeof err);
	if (s == NULL) {
		fatal("store", err);
		return 1;
	}
	store_close(s);
	printf("migrations applied\n");
	return 0;
}

/* otpd migrate-from-legacy [CONNINFO] [--schema S] [--timezone Z] */
static int cmd_migrate_from_legacy(const struct config *cfg, int argc, char **argv)
{
	char err[8192] = "";
	struct store_legacy_source src = {.seal_codes = cfg->password_readback};
	for (int i = 1; i < argc; i++) {
		if ((strcmp(argv[i], "--schema") == 0 || strcmp(argv[i], "--timezone") == 0) &&
		    i + 1 < argc) {
			if (strcmp(argv[i], "--schema") == 0)
				src.schema = argv[++i];
			else
				src.timezone = argv[++i];
		} else if (argv[i][0] != '-' && src.conninfo == NULL) {
			src.conninfo = argv[i];
		} else {
			refuse_argument(argv[0], argv[i]);
			return 2;
		}
	}
	if (src.conninfo == NULL) {
		if (cfg->pg_host == NULL) {
			fatal("migrate-from-legacy: name the old database",
			      "otpd migrate-from-legacy 'host=old-db dbname=otp user=otp', or set PG_* "
			      "to it (the old tables may share otpd's database)");
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
		snprintf(err, sizeof err, "OTPD_DATA_DIR: cannot create %s: %s", cfg->data_dir,
		         strerror(errno));
		fatal("invalid configuration", err);
		return 2;
	}
	uint8_t master[OTP_KEY_LEN];
	struct otp_key key;
	if (command_load_key(cfg, master, err, sizeof err) != 0) {
		fatal("invalid configuration", err);
		return 2;
	}
	otp_key_init(&key, master);
	sodium_memzero(master, sizeof master);
	struct store *store = command_open_store(cfg, err, sizeof err);
	if (store == NULL) {
		fatal("store", err);
		otp_key_wipe(&key);
		return 1;
	}
	struct store_legacy_counts n = {0};
	int rc = store_legacy_import(store, &src, &key, now_unix(), &n, err, sizeof err);
	store_close(store);
	otp_key_wipe(&key);
	if (rc != 0) {
		fatal("migrate-from-legacy failed", err[0] ? err : otp_err_name(rc));
		return 1;
	}
	printf("imported %lld limit rules (%lld skipped), %lld live codes (%lld already present, "
	       "%lld skipped)\n",
	       (long long)n.rules, (long long)n.rules_skipped, (long long)n.codes,
	       (long long)n.codes_present, (long long)n.codes_skipped);
	return 0;
}


/* ---- --check-config ----------------------------------------------------------------- */

/* Can otpd create files in `dir` (or create `dir` itself)? Tried for real, with a file
 * made and removed at once, since access(2) says yes to root on a read-only mount.
 * Nothing is left behind: a missing directory is probed in its nearest existing parent. */
static bool dir_writable(const char *dir, char *why, size_t cap)
{
	char probe[4200], path[4100];
	snprintf(path, sizeof path, "%s", dir);
	for (;;) {
		struct stat st;
		if (stat(path, &st) == 0) {
			if (!S_ISDIR(st.st_mode)) {
				snprintf(why, cap, "%s is not a directory", path);
				return false;
			}
			break;
		}
		char *slash = strrchr(path, '/');
		if (slash == NULL) {
			snprintf(path, sizeof path, ".");
			continue;
		}
		if (slash == path) {
			path[1] = '\0';
			continue;
		}
		*slash = '\0';
	}
	snprintf(probe, sizeof probe, "%s/.otpd-check-XXXXXX", path);
	int fd = mkstemp(probe);
	if (fd < 0) {
		snprintf(why, cap, "cannot create files in %s: %s", path, strerror(errno));
		return false;
	}
	close(fd);
	unlink(probe);
	return true;
}

static int cmd_check_config(const struct config *cfg, int argc, char **argv)
{
	int errors = 0;
	char err[4400] = "";
	if (no_arguments(argc, argv) != 0)
		return 2;
	char *lines = NULL;
	if (config_unknown_names(environ, &lines) > 0) {
		for (char *l = lines, *nl; l != NULL && *l; l = nl + 1) {
			nl = strchr(l, '\n');
			if (nl == NULL)
				break;
			*nl = '\0';
			char *colon = strchr(l, ':');
			if (colon != NULL)
				*colon = '\0';
			log_write(LOG_ERROR, "configuration problem", "var", l, "problem",
			          colon ? colon + 2 : "unknown variable", LOG_END);
			errors++;
		}
	}
	free(lines);
	provider_check_config(cfg, report_problem, &errors); /* counts into errors */
	struct http_tls *tls = NULL;
	if (http_tls_load(cfg, &tls, err, sizeof err) != 0 ||
	    http_tls_check_files(cfg, now_unix(), err, sizeof err) != 0) {
		char var[32];
		snprintf(var, sizeof var, "%.*s", (int)strcspn(err, ": "), err);
		log_write(LOG_ERROR, "configuration problem", "var", var, "problem", err, LOG_END);
		errors++;
	}
	http_tls_free(tls);
	if (cfg->pg_host == NULL || cfg->secret_key == NULL) {
		if (!dir_writable(cfg->data_dir, err, sizeof err)) {
			log_write(LOG_ERROR, "configuration problem", "var", "OTPD_DATA_DIR", "problem",
			          err, LOG_END);
			errors++;
		}
	}
	if (errors == 0)
		config_dump(cfg, stdout);
	return errors == 0 ? 0 : 2;
}


/* ---- the command table -------------------------------------------------------------- */

static int cmd_help(const struct config *cfg, int argc, char **argv);

static int cmd_version(const struct config *cfg, int argc, char **argv)
{
	(void)cfg;
	if (no_arguments(argc, argv) != 0)
		return 2;
	printf("otpd %s\n", OTPD_VERSION);
	return 0;
}

/* One row per command: add a command by adding a row (its handler may live in its own
 * file, declared in commands.h). `alias` is a second spelling (-t, -V); `config`: the
 * handler gets the loaded configuration (else NULL). */
static const struct command commands[] = {
	{"serve", NULL, cmd_serve, true, "serve HTTP (the default: otpd with no command)"},
	{"--check-config", "-t", cmd_check_config, true,
	 "validate the configuration as a start would (unknown variables, URLs, the TLS pair, "
	 "the data directory, providers and their channels), print it; exit 0 or 2"},
	{"health", NULL, cmd_health, true,
	 "ask the otpd of OTPD_LISTEN for GET /health (HTTPS with OTPD_TLS_CERT); exit 0 or 1"},
	{"migrate", NULL, cmd_migrate, true, "apply pending database migrations and exit"},
	{"migrate-from-legacy", NULL, cmd_migrate_from_legacy, true,
	 "[CONNINFO] [--schema S] [--timezone Z]: import the old service's otp_limit rules "
	 "and live otp_password codes (default: the database and schema of PG_*)"},
	{"app", NULL, cmd_app, true,
	 "create|list|show|update|delete: the apps of the native API and their settings "
	 "(otpd app --help)"},
	{"key", NULL, cmd_key, true,
	 "create|list|revoke: API keys of an app, or admin keys (otpd key --help)"},
	{"--help", "-h", cmd_help, false, "print this help"},
	{"--version", "-V", cmd_version, false, "print the version"},
};

#define N_COMMANDS (sizeof commands / sizeof commands[0])

static int cmd_help(const struct config *cfg, int argc, char **argv)
{
	(void)cfg;
	if (no_arguments(argc, argv) != 0)
		return 2;
	printf("usage: otpd [command] [arguments]\n");
	for (size_t i = 0; i < N_COMMANDS; i++) {
		char name[64];
		snprintf(name, sizeof name, "%s%s%s", commands[i].name, commands[i].alias ? ", " : "",
		         commands[i].alias ? commands[i].alias : "");
		printf("  %-22s %s\n", name, commands[i].help);
	}
	printf("Signals: TERM/INT/QUIT stop gracefully, HUP reloads the TLS certificate and "
	       "key, USR1/USR2 and others are ignored (logged).\n");
	printf("Environment variables:\n");
	for (size_t i = 0; i < config_var_count(); i++) {
		const char *def = config_var_default(i);
		printf("  %-34s %s%s%s%s\n", config_var_name(i), config_var_help(i),
		       def ? " [default: " : "", def ? def : "", def ? "]" : "");
	}
	return 0;
}

static const struct command *command_find(const char *name)
{
	for (size_t i = 0; i < N_COMMANDS; i++)
		if (strcmp(commands[i].name, name) == 0 ||
		    (commands[i].alias != NULL && strcmp(commands[i].alias, name) == 0))
			return &commands[i];
	return NULL;
}

int main(int argc, char **argv)
{
	log_set_journal(config_stderr_is_journal(env_get, NULL));
	const struct command *cmd = command_find(argc > 1 ? argv[1] : "serve");
	if (cmd == NULL) {
		log_write(LOG_FATAL, "unknown command", "command", argv[1], "usage",
		          "otpd [command] [arguments]; otpd --help lists them", LOG_END);
		return 2;
	}
	/* the handler sees its own name as argv[0] */
	int cargc = argc > 1 ? argc - 1 : 1;
	char *self[] = {(char *)cmd->name, NULL};
	char **cargv = argc > 1 ? argv + 1 : self;
	if (!cmd->config)
		return cmd->run(NULL, cargc, cargv);

	struct config *cfg = NULL;
	char *errs = NULL;
	int rc = config_load(env_get, NULL, &cfg, &errs);
	if (rc != 0) {
		/* one line per problem, each naming its variable ("VAR: what is wrong") */
		for (char *l = errs, *nl; l != NULL && *l; l = nl + 1) {
			nl = strchr(l, '\n');
			if (nl != NULL)
				*nl = '\0';
			char var[64];
			snprintf(var, sizeof var, "%.*s", (int)strcspn(l, ":"), l);
			log_write(LOG_ERROR, "configuration problem", "var", var, "problem", l, LOG_END);
			if (nl == NULL)
				break;
		}
		fatal("invalid configuration", errs ? "see the lines above" : "out of memory");
		free(errs);
		return 2;
	}
	log_set_level((enum log_level)cfg->log_level);
	if (sodium_init() < 0) {
		fatal("cannot initialise libsodium", "");
		config_free(cfg);
		return 1;
	}
	if (cmd->run == cmd_serve) {
		/* Block the signals before any thread exists so every thread inherits the mask
		 * and only the main loop receives them. */
		sigset_t set;
		handled_signals(&set);
		pthread_sigmask(SIG_BLOCK, &set, NULL);
		signal(SIGPIPE, SIG_IGN);
	}
	int status = cmd->run(cfg, cargc, cargv);
	config_free(cfg);
	return status;
}
