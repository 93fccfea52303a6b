/*
 * server.c - libmicrohttpd glue.
 *
 * DESIGN: libmicrohttpd runs its own thread pool (cfg->threads threads, poll); each
 * request is handled to the end on the pool thread that read it, so a handler may block
 * on the store. poll, not epoll: libmicrohttpd 0.9.75 (Debian 12) races with itself when
 * a thread pool on epoll is quiesced (the quiescing thread and a worker both remove the
 * listen socket from the worker's epoll set and the loser aborts the process), and a
 * drain must never crash. With OTPD_TLS_CERT/OTPD_TLS_KEY the same daemon speaks TLS 1.2
 * and 1.3 only (GnuTLS inside libmicrohttpd); the PEM files are read by main before
 * anything is created, so an unusable file is a configuration error (exit 2).
 * The body is accumulated into a per-request buffer that never grows past
 * OTPD_MAX_BODY_BYTES: a declared Content-Length over the limit is refused at the first
 * callback (before any body byte is read), a chunked body that grows over it is
 * discarded and refused at the end. `in_flight` counts requests between their first
 * callback and their completion, so a drain can wait for exactly those.
 */
#include "http/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <sodium.h>
#include <stdatomic.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/routes.h"
#include "core/num.h"
#include "http/tls.h"
#include "log.h"

struct http_server {
	struct MHD_Daemon *daemon;
	const struct config *cfg;
	const struct api_ctx *api;
	atomic_int in_flight;
	int quiesced_fd;          /* listen socket taken back by a drain; closed at stop */
};

struct conn {
	char *body;
	size_t len, cap;
	bool too_large;
	bool too_many_args;
	bool too_many_headers;
	struct api_kv query[API_QUERY_MAX];
	size_t n_query;
	struct api_kv headers[API_HEADERS_MAX];
	size_t n_headers;
	char client_ip[INET6_ADDRSTRLEN];
	struct timespec start;
	char request_id[40];
};

static double elapsed_ms(const struct timespec *t0)
{
	struct timespec t1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

/* Use the caller's X-Request-Id when it is short and tame, else make one. */
static void set_request_id(struct conn *c, const char *given)
{
	if (given != NULL) {
		size_t n = strlen(given);
		bool ok = n > 0 && n < sizeof c->request_id;
		for (size_t i = 0; ok && i < n; i++) {
			char ch = given[i];
			ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
			     (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.';
		}
		if (ok) {
			memcpy(c->request_id, given, n + 1);
			return;
		}
	}
	uint8_t raw[8];
	randombytes_buf(raw, sizeof raw);
	sodium_bin2hex(c->request_id, sizeof c->request_id, raw, sizeof raw);
}

static enum MHD_Result collect_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
	(void)kind;
	struct conn *c = cls;
	if (c->n_query >= API_QUERY_MAX) {
		c->too_many_args = true;
		return MHD_NO;
	}
	c->query[c->n_query].key = key;
	c->query[c->n_query].value = value ? value : "";
	c->n_query++;
	return MHD_YES;
}

static void set_client_ip(struct conn *c, struct MHD_Connection *con);

static enum MHD_Result send_response(struct http_server *s, struct MHD_Connection *con,
                                     struct conn *c, const char *method, const char *url,
                                     const struct api_response *r)
{
	char *text = NULL;
	struct MHD_Response *resp;
	size_t bytes;
	if (r->text != NULL) {
		/* a copy: the response outlives r */
		bytes = strlen(r->text);
		resp = MHD_create_response_from_buffer(bytes, r->text, MHD_RESPMEM_MUST_COPY);
	} else if (r->body != NULL && (text = json_dumps(r->body, JSON_COMPACT)) != NULL) {
		bytes = strlen(text);
		resp = MHD_create_response_from_buffer(bytes, text, MHD_RESPMEM_MUST_FREE);
	} else {
		static const char fallback[] = "{\"status\":false,\"message\":\"internal error\"}";
		bytes = sizeof fallback - 1;
		resp = MHD_create_response_from_buffer(sizeof fallback - 1, (void *)fallback,
		                                       MHD_RESPMEM_PERSISTENT);
	}
	if (resp == NULL) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
	                        r->text != NULL && r->content_type != NULL ? r->content_type
	                                                                   : "application/json");
	MHD_add_response_header(resp, "X-Request-Id", c->request_id);
	if (r->basic_challenge)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
		                        "Basic realm=\"otpd\", charset=\"UTF-8\"");
	if (r->allow != NULL)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
	enum MHD_Result ret = MHD_queue_response(con, (unsigned)r->status, resp);
	MHD_destroy_response(resp);
	double took_ms = elapsed_ms(&c->start);
	api_metrics_request(s->api->metrics, r->route, r->status, took_ms / 1000.0);
	/* The answer's machine-readable code when it is an error (the dialects' shapes all
	 * carry it as "status_code"); counted as the refusal's reason, and logged. */
	const char *code = r->status >= 400
	                   ? json_string_value(json_object_get(r->body, "status_code")) : NULL;
	api_metrics_refusal(s->api->metrics, r->route, r->status, code);
	if (s->cfg->access_log) {
		char status[8], ms[24], size[24];
		if (c->client_ip[0] == '\0')
			set_client_ip(c, con); /* refused before the request was read whole */
		snprintf(status, sizeof status, "%d", r->status);
		snprintf(ms, sizeof ms, "%.2f", took_ms);
		snprintf(size, sizeof size, "%zu", bytes);
		const char *ua = MHD_lookup_connection_value(con, MHD_HEADER_KIND,
		                                             MHD_HTTP_HEADER_USER_AGENT);
		/* The query string is never logged: it may carry a code. Its own switch, not a
		 * level: an operator who wants warnings only still gets the access log. */
		log_access("request", "req", c->request_id, "client", c->client_ip,
		           "method", method, "path", url, "status", status,
		           "code", code ? code : "", "bytes", size, "ms", ms,
		           "ua", ua ? ua : "", LOG_END);
	}
	return ret;
}

static enum MHD_Result send_error(struct http_server *s, struct MHD_Connection *con,
                                  struct conn *c, const char *method, const char *url,
                                  int code, const char *status_code, const char *message)
{
	struct otp_error e = {0};
	struct api_response r = {0};
	otp_error_set(&e, code, status_code, "", "%s", message);
	api_refuse(s->api, method, url, &e, &r); /* answered here, before api_handle */
	enum MHD_Result ret = send_response(s, con, c, method, url, &r);
	api_response_fini(&r);
	return ret;
}

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value)
{
	(void)kind;
	struct conn *c = cls;
	if (c->n_headers >= API_HEADERS_MAX) {
		c->too_many_headers = true;
		return MHD_NO;
	}
	c->headers[c->n_headers].key = key;
	c->headers[c->n_headers].value = value ? value : "";
	c->n_headers++;
	return MHD_YES;
}

/* The peer's address as text, into c->client_ip ("" when unknown). */
static void set_client_ip(struct conn *c, struct MHD_Connection *con)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(con, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	c->client_ip[0] = '\0';
	if (ci == NULL || ci->client_addr == NULL)
		return;
	const struct sockaddr *sa = ci->client_addr;
	if (sa->sa_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr,
		          c->client_ip, sizeof c->client_ip);
	else if (sa->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr,
		          c->client_ip, sizeof c->client_ip);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *con, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
	(void)version;
	struct http_server *s = cls;
	struct conn *c = *con_cls;

	if (c == NULL) {
		c = calloc(1, sizeof *c);
		if (c == NULL)
			return MHD_NO;
		*con_cls = c;
		atomic_fetch_add(&s->in_flight, 1);
		clock_gettime(CLOCK_MONOTONIC, &c->start);
		set_request_id(c, MHD_lookup_connection_value(con, MHD_HEADER_KIND, "X-Request-Id"));
		const char *cl = MHD_lookup_connection_value(con, MHD_HEADER_KIND,
		                                             MHD_HTTP_HEADER_CONTENT_LENGTH);
		int64_t declared = 0;
		/* libmicrohttpd has already refused a Content-Length that is not a number; one
		 * too large for int64 is over any limit */
		if (cl != NULL && (otp_parse_i64(cl, 0, INT64_MAX, &declared) != 0 ||
		                   declared > s->cfg->max_body_bytes))
			return send_error(s, con, c, method, url, OTP_ERR_TOO_LARGE, "too_large",
			                  "the request body is larger than OTPD_MAX_BODY_BYTES");
		return MHD_YES;
	}

	if (*upload_data_size > 0) {
		size_t n = *upload_data_size;
		*upload_data_size = 0;
		if (c->too_large || c->len + n > (size_t)s->cfg->max_body_bytes) {
			c->too_large = true;
			return MHD_YES;
		}
		if (c->len + n > c->cap) {
			size_t cap = c->cap ? c->cap : 1024;
			while (cap < c->len + n)
				cap *= 2;
			if (cap > (size_t)s->cfg->max_body_bytes)
				cap = (size_t)s->cfg->max_body_bytes;
			char *nb = realloc(c->body, cap);
			if (nb == NULL)
				return MHD_NO;
			c->body = nb;
			c->cap = cap;
		}
		memcpy(c->body + c->len, upload_data, n);
		c->len += n;
		return MHD_YES;
	}

	if (c->too_large)
		return send_error(s, con, c, method, url, OTP_ERR_TOO_LARGE, "too_large",
		                  "the request body is larger than OTPD_MAX_BODY_BYTES");
	MHD_get_connection_values(con, MHD_GET_ARGUMENT_KIND, collect_arg, c);
	if (c->too_many_args)
		return send_error(s, con, c, method, url, OTP_ERR_INVALID, "invalid_parameter",
		                  "too many query parameters");
	MHD_get_connection_values(con, MHD_HEADER_KIND, collect_header, c);
	if (c->too_many_headers)
		return send_error(s, con, c, method, url, OTP_ERR_HEADERS, "too_many_headers",
		                  "too many request header fields");
	set_client_ip(c, con);

	struct api_request req = {
		.method = method,
		.path = url,
		.request_id = c->request_id,
		.query = c->query,
		.n_query = c->n_query,
		.headers = c->headers,
		.n_headers = c->n_headers,
		.content_type = MHD_lookup_connection_value(con, MHD_HEADER_KIND,
		                                            MHD_HTTP_HEADER_CONTENT_TYPE),
		.client_ip = c->client_ip,
		.body = c->body,
		.body_len = c->len,
	};
	struct api_response resp = {0};
	api_handle(s->api, &req, &resp);
	enum MHD_Result ret = send_response(s, con, c, method, url, &resp);
	api_response_fini(&resp);
	return ret;
}

static void on_completed(void *cls, struct MHD_Connection *con, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
	(void)con;
	(void)toe;
	struct http_server *s = cls;
	struct conn *c = *con_cls;
	if (c == NULL)
		return;
	if (c->body != NULL) {
		/* bodies carry codes */
		sodium_memzero(c->body, c->cap);
		free(c->body);
	}
	free(c);
	*con_cls = NULL;
	atomic_fetch_sub(&s->in_flight, 1);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	char msg[256];
	vsnprintf(msg, sizeof msg, fmt, ap);
	size_t n = strlen(msg);
	while (n > 0 && msg[n - 1] == '\n')
		msg[--n] = '\0';
	log_write(LOG_DEBUG, "http", "detail", msg, LOG_END);
}

#define TLS_FILE_MAX (1024 * 1024)
/* TLS 1.2 and 1.3 only, GnuTLS' normal ciphers within them */
#define TLS_PRIORITIES "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"

struct http_tls {
	char *cert;            /* PEM, NUL-terminated */
	char *key;             /* PEM, NUL-terminated; wiped when freed */
	size_t key_len;
};

/* The whole file at path into a malloc'd NUL-terminated string. */
static char *read_pem(const char *var, const char *path, size_t *len, char *err, size_t cap)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		snprintf(err, cap, "%s: cannot read %s: %s", var, path, strerror(errno));
		return NULL;
	}
	char *buf = malloc(TLS_FILE_MAX + 1);
	size_t n = buf ? fread(buf, 1, TLS_FILE_MAX + 1, f) : 0;
	bool read_error = ferror(f) != 0;
	fclose(f);
	if (buf == NULL) {
		snprintf(err, cap, "%s: out of memory", var);
		return NULL;
	}
	const char *why = read_error ? "cannot be read" : n == 0 ? "is empty"
	                  : n > TLS_FILE_MAX ? "is larger than 1 MiB" : NULL;
	if (why == NULL) {
		buf[n] = '\0';
		if (strstr(buf, "-----BEGIN ") == NULL)
			why = "is not a PEM file";
	}
	if (why != NULL) {
		sodium_memzero(buf, n); /* n <= TLS_FILE_MAX + 1, the buffer's size */
		free(buf);
		snprintf(err, cap, "%s: %s %s", var, path, why);
		return NULL;
	}
	*len = n;
	return buf;
}

int http_tls_load(const struct config *cfg, struct http_tls **out, char *err, size_t cap)
{
	*out = NULL;
	if (cfg->tls_cert == NULL || cfg->tls_key == NULL)
		return 0;
	struct http_tls *t = calloc(1, sizeof *t);
	size_t cert_len = 0;
	if (t == NULL) {
		snprintf(err, cap, "OTPD_TLS_CERT: out of memory");
		return -1;
	}
	t->cert = read_pem("OTPD_TLS_CERT", cfg->tls_cert, &cert_len, err, cap);
	if (t->cert != NULL)
		t->key = read_pem("OTPD_TLS_KEY", cfg->tls_key, &t->key_len, err, cap);
	if (t->key == NULL) {
		http_tls_free(t);
		return -1;
	}
	*out = t;
	return 0;
}

void http_tls_free(struct http_tls *t)
{
	if (t == NULL)
		return;
	free(t->cert);
	if (t->key != NULL)
		sodium_memzero(t->key, t->key_len);
	free(t->key);
	free(t);
}

struct http_server *http_server_start(const struct config *cfg, const struct api_ctx *api,
                                      const struct http_tls *tls, char *err, size_t cap)
{
	struct addrinfo hints = {0}, *ai = NULL;
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	char port[8];
	snprintf(port, sizeof port, "%d", cfg->listen_port);
	int gai = getaddrinfo(cfg->listen_host, port, &hints, &ai);
	if (gai != 0) {
		snprintf(err, cap, "OTPD_LISTEN: cannot resolve %s: %s", cfg->listen_host,
		         gai_strerror(gai));
		return NULL;
	}
	struct http_server *s = calloc(1, sizeof *s);
	if (s == NULL) {
		freeaddrinfo(ai);
		snprintf(err, cap, "out of memory");
		return NULL;
	}
	s->cfg = cfg;
	s->api = api;
	atomic_init(&s->in_flight, 0);
	s->quiesced_fd = -1;
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ITC |
	                 MHD_USE_ERROR_LOG;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	struct MHD_OptionItem tls_opts[] = {
		{MHD_OPTION_HTTPS_MEM_CERT, 0, tls ? tls->cert : NULL},
		{MHD_OPTION_HTTPS_MEM_KEY, 0, tls ? tls->key : NULL},
		{MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)TLS_PRIORITIES},
		{MHD_OPTION_END, 0, NULL},
	};
	if (tls != NULL)
		flags |= MHD_USE_TLS;
	else
		tls_opts[0].option = MHD_OPTION_END;
	s->daemon = MHD_start_daemon(
		flags, (uint16_t)cfg->listen_port, NULL, NULL, on_request, s,
		MHD_OPTION_ARRAY, tls_opts,
		MHD_OPTION_SOCK_ADDR, ai->ai_addr,
		MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->threads,
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
		MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
		MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
		MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1,
		MHD_OPTION_END);
	freeaddrinfo(ai);
	if (s->daemon == NULL) {
		if (tls != NULL)
			snprintf(err, cap, "HTTPS could not start on %s: the address is in use or "
			         "not allowed, or OTPD_TLS_KEY is not the key of OTPD_TLS_CERT",
			         cfg->listen);
		else
			snprintf(err, cap, "OTPD_LISTEN: cannot listen on %s (in use, or not allowed)",
			         cfg->listen);
		free(s);
		return NULL;
	}
	return s;
}

void http_server_drain(struct http_server *s, int deadline_s)
{
	if (s == NULL || s->daemon == NULL)
		return;
	/* Workers may still hold the listen socket's number in the poll set they are
	 * waiting on, so it is not closed until they are stopped: shutdown() alone makes
	 * the kernel refuse new connections right away. */
	MHD_socket fd = MHD_quiesce_daemon(s->daemon);
	if (fd != MHD_INVALID_SOCKET) {
		shutdown(fd, SHUT_RDWR);
		s->quiesced_fd = fd;
	}
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (atomic_load(&s->in_flight) > 0 && elapsed_ms(&t0) < deadline_s * 1000.0) {
		struct timespec nap = {0, 10 * 1000 * 1000};
		nanosleep(&nap, NULL);
	}
}

void http_server_stop(struct http_server *s)
{
	if (s == NULL)
		return;
	if (s->daemon != NULL)
		MHD_stop_daemon(s->daemon);
	if (s->quiesced_fd >= 0)
		close(s->quiesced_fd);
	free(s);
}

/*
 * SIGHUP's certificate swap. libmicrohttpd reads its certificate once, when a daemon
 * starts, so a new pair means a new daemon: it is started on the same listening socket
 * (MHD_OPTION_LISTEN_SOCKET) with the same settings, then the old daemon is quiesced
 * (it stops accepting; the socket stays open for the new one) and stopped once the
 * connections it still serves are done, or after OTPD_SHUTDOWN_TIMEOUT — as an nginx
 * reload lets old workers finish. Between the two starts both accept, so no client
 * is refused; a pair GnuTLS or libmicrohttpd refuses leaves the old daemon serving.
 * Called from the main thread only, like start and drain.
 */
int http_server_reload_tls(struct http_server *s, const struct http_tls *tls, char *err,
                           size_t cap)
{
	if (s == NULL || s->daemon == NULL || tls == NULL) {
		snprintf(err, cap, "TLS is not configured: nothing to reload");
		return -1;
	}
	if (http_tls_check_pem(tls->cert, strlen(tls->cert), tls->key, tls->key_len,
	                       (int64_t)time(NULL), NULL, err, cap) != 0)
		return -1;
	const union MHD_DaemonInfo *li = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_LISTEN_FD);
	if (li == NULL || li->listen_fd == MHD_INVALID_SOCKET) {
		snprintf(err, cap, "the listening socket is gone (otpd is stopping)");
		return -1;
	}
	MHD_socket fd = li->listen_fd;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ITC |
	                 MHD_USE_ERROR_LOG | MHD_USE_TLS;
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	struct MHD_Daemon *fresh = MHD_start_daemon(
		flags, (uint16_t)s->cfg->listen_port, NULL, NULL, on_request, s,
		MHD_OPTION_HTTPS_MEM_CERT, tls->cert,
		MHD_OPTION_HTTPS_MEM_KEY, tls->key,
		MHD_OPTION_HTTPS_PRIORITIES, TLS_PRIORITIES,
		MHD_OPTION_LISTEN_SOCKET, fd,
		MHD_OPTION_THREAD_POOL_SIZE, (unsigned)s->cfg->threads,
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
		MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
		MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
		MHD_OPTION_END);
	if (fresh == NULL) {
		snprintf(err, cap, "libmicrohttpd refused the new certificate and key");
		return -1;
	}
	struct MHD_Daemon *old = s->daemon;
	s->daemon = fresh;
	/* the old daemon lets go of the socket (the new one keeps it open) */
	(void)MHD_quiesce_daemon(old);
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		const union MHD_DaemonInfo *ci =
			MHD_get_daemon_info(old, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
		if (ci == NULL || ci->num_connections == 0 ||
		    elapsed_ms(&t0) >= s->cfg->shutdown_timeout * 1000.0)
			break;
		struct timespec nap = {0, 10 * 1000 * 1000};
		nanosleep(&nap, NULL);
	}
	MHD_stop_daemon(old);
	return 0;
}
