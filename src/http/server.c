/*
 * server.c - libmicrohttpd glue, and the edge's defences against hostile clients.
 *
 * DESIGN: libmicrohttpd runs its own thread pool (cfg->threads threads, poll); each
 * request is handled to the end on the pool thread that read it, so a handler may block
 * on the store. poll, not epoll: libmicrohttpd 0.9.75 (Debian 12) races with itself when
 * a thread pool on epoll is quiesced (the quiescing thread and a worker both remove the
 * listen socket from the worker's epoll set and the loser aborts the process), and a
 * drain must never crash. With OTPD_TLS_CERT/OTPD_TLS_KEY the same daemon speaks TLS 1.2
 * and 1.3 only (GnuTLS inside libmicrohttpd); the PEM files are read by main before
 * anything is created, so an unusable file is a configuration error (exit 2).
 *
 * Connections: every open connection has a `struct edge_conn` (libmicrohttpd's socket
 * context, made in on_connection STARTED, freed in CLOSED) on one list guarded by
 * `mu`. The accept policy callback refuses a connection at once — libmicrohttpd closes
 * it — past OTPD_MAX_CONNECTIONS or OTPD_MAX_CONNECTIONS_PER_IP; libmicrohttpd's own
 * limit is set above ours, because at its limit it stops accepting and clients wait
 * silently in the backlog. libmicrohttpd's idle timeout restarts on every byte, so it
 * bounds nothing against a client that trickles: each edge_conn records its phase (head,
 * body, answer) and when it began, and the reaper thread shuts down (shutdown(2)) a
 * connection whose head is not in after OTPD_HEADER_TIMEOUT or whose body is not in
 * after OTPD_BODY_TIMEOUT; its worker then sees end of file and closes it. The reaper
 * holds `mu` while it calls shutdown() and libmicrohttpd calls CLOSED (which takes `mu`)
 * before it closes the socket, so the reaper never touches a number reused by another
 * connection. While an answer is being made (the handler may wait on the store) no
 * deadline runs.
 *
 * Requests: the URI log callback (which libmicrohttpd calls as soon as the request line
 * is in, before the headers) makes the per-request `struct conn` and checks the raw
 * target (length, control characters, also percent-encoded ones, which libmicrohttpd
 * would decode into C strings cut at a NUL). The first access callback, before any body
 * byte is read, checks the head (framing.c: RFC 9112 framing, Host, head size) and the
 * declared length; a refusal there is answered with Connection: close so libmicrohttpd
 * closes the connection after it and nothing pipelined behind it is read as a request.
 * The body is accumulated into a per-request buffer that never grows past
 * OTPD_MAX_BODY_BYTES: a declared Content-Length over the limit is refused at the first
 * callback, a chunked body that grows over it is discarded and refused at the end.
 * `in_flight` counts requests between their first access callback and their
 * completion, so a drain can wait for exactly those. What libmicrohttpd still answers
 * by itself (a head larger than its memory pool, a Content-Length that is not a number,
 * a version other than HTTP/1.x, broken chunked framing) is logged and counted from its
 * error log line; see docs/architecture.md.
 */
#include "http/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/routes.h"
#include "core/num.h"
#include "http/framing.h"
#include "http/tls.h"
#include "log.h"

/* libmicrohttpd's memory per connection (read buffer, parsed head, answer head). Above
 * 32 KiB it is mmap'ed, so pages a client never fills cost nothing. It is four times
 * HTTP_HEAD_MAX so that heads between the two get otpd's JSON 431, not the library's. */
#define MHD_POOL_BYTES (4 * HTTP_HEAD_MAX)
/* How often the reaper looks at the deadlines. */
#define REAPER_TICK_MS 200
/* File descriptors kept for everything but client connections (store, outbox, logs). */
#define FD_RESERVE 256

enum edge_phase { EDGE_HEAD, EDGE_BODY, EDGE_ANSWER };

/* One TCP connection. Every field but the list links and `cut` is set before the
 * connection is on the list and never changed; phase, since_ms and cut are guarded by
 * the server's `mu`. */
struct edge_conn {
	struct edge_conn *prev, *next;
	MHD_socket fd;
	uint8_t ip[16];               /* IPv4 as ::ffff:a.b.c.d, so one compare fits both */
	bool has_ip;
	enum edge_phase phase;
	int64_t since_ms;             /* monotonic ms when phase began */
	bool cut;                     /* the reaper shut it down */
};

struct http_server {
	struct MHD_Daemon *daemon;
	const struct config *cfg;
	const struct api_ctx *api;
	atomic_int in_flight;
	int quiesced_fd;          /* listen socket taken back by a drain; closed at stop */
	int max_conns;            /* OTPD_MAX_CONNECTIONS, lowered to what RLIMIT_NOFILE allows */

	pthread_mutex_t mu;       /* guards conns, n_conns and every edge_conn's phase */
	struct edge_conn *conns;
	int n_conns;
	pthread_cond_t reaper_cv; /* with mu: wakes the reaper to stop */
	bool reaper_stop;         /* guarded by mu */
	bool reaper_running;
	pthread_t reaper;
	atomic_llong refusal_logged_ms; /* last warn line about refusals (one per 10 s) */
};

struct conn {
	char *body;
	size_t len, cap;
	bool started;             /* the first access callback has run */
	bool counted;             /* in in_flight */
	bool too_large;
	bool too_many_args;
	bool too_many_headers;
	bool bad_arg;             /* a decoded query value holds a NUL */
	int target_rc;            /* http_target_check of the raw target */
	struct otp_error target_err;
	const char *path;         /* the path of the target (absolute-form stripped) */
	struct edge_conn *edge;   /* may be NULL */
	struct api_kv query[API_QUERY_MAX];
	size_t n_query;
	struct api_kv headers[API_HEADERS_MAX];
	size_t n_headers;
	struct http_field fields[API_HEADERS_MAX];
	size_t n_fields;
	char bad_arg_name[32];
	char client_ip[INET6_ADDRSTRLEN];
	struct timespec start;
	char request_id[40];
};

static int64_t now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

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

/* A query argument, as libmicrohttpd decoded it. A decoded value shorter as a C string
 * than its length held a %00: refused (the raw target check catches it first; this is
 * the second line, on what api/ would actually be given). */
static enum MHD_Result collect_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                   size_t key_size, const char *value, size_t value_size)
{
	(void)kind;
	struct conn *c = cls;
	if (c->n_query >= API_QUERY_MAX) {
		c->too_many_args = true;
		return MHD_NO;
	}
	if (strlen(key) != key_size || (value != NULL && strlen(value) != value_size)) {
		c->bad_arg = true;
		snprintf(c->bad_arg_name, sizeof c->bad_arg_name, "%s", key);
		return MHD_NO;
	}
	c->query[c->n_query].key = key;
	c->query[c->n_query].value = value ? value : "";
	c->n_query++;
	return MHD_YES;
}

static void set_client_ip(struct conn *c, struct MHD_Connection *con);

/* Queue r. With `close`, the answer says Connection: close and libmicrohttpd closes the
 * connection once it is sent: for refusals after which the rest of the stream cannot be
 * trusted to be framed as the client meant. */
static enum MHD_Result send_response(struct http_server *s, struct MHD_Connection *con,
                                     struct conn *c, const char *method, const char *url,
                                     const struct api_response *r, bool close)
{
	char *text = NULL;
	struct MHD_Response *resp;
	size_t bytes = 0;
	if (c->edge != NULL) {
		pthread_mutex_lock(&s->mu);
		c->edge->phase = EDGE_ANSWER;
		pthread_mutex_unlock(&s->mu);
	}
	if (r->status == 204) {
		resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
	} else if (r->text != NULL) {
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
	for (int i = 0; i < r->n_headers && i < API_RESP_HEADERS_MAX; i++)
		MHD_add_response_header(resp, r->headers[i].name, r->headers[i].value);
	if (close)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
	enum MHD_Result ret = MHD_queue_response(con, (unsigned)r->status, resp);
	MHD_destroy_response(resp);
	double took_ms = elapsed_ms(&c->start);
	api_metrics_request(s->api->metrics, r->route, r->status, took_ms / 1000.0);
	/* The answer's dialect-neutral reason when it is an error (set where the error
	 * became the answer); counted as the refusal's reason, and logged. */
	const char *code = r->status >= 400 && r->reason[0] != '\0' ? r->reason : NULL;
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

/* Answer e, made here before api_handle, in the shape of the route's dialect. */
static enum MHD_Result send_refusal(struct http_server *s, struct MHD_Connection *con,
                                    struct conn *c, const char *method, const char *url,
                                    const struct otp_error *e, bool close)
{
	struct api_response r = {0};
	api_refuse(s->api, method, url, e, &r);
	enum MHD_Result ret = send_response(s, con, c, method, url, &r, close);
	api_response_fini(&r);
	return ret;
}

static enum MHD_Result send_error(struct http_server *s, struct MHD_Connection *con,
                                  struct conn *c, const char *method, const char *url,
                                  int code, const char *status_code, const char *message,
                                  bool close)
{
	struct otp_error e = {0};
	otp_error_set(&e, code, status_code, "", "%s", message);
	return send_refusal(s, con, c, method, url, &e, close);
}

/* Every header field with its length (a NUL inside a value is seen by framing.c). */
static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      size_t key_size, const char *value, size_t value_size)
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
	c->fields[c->n_fields].name = key;
	c->fields[c->n_fields].name_len = key_size;
	c->fields[c->n_fields].value = value ? value : "";
	c->fields[c->n_fields].value_len = value ? value_size : 0;
	c->n_fields++;
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

/* ---- connections: caps at accept, deadlines ------------------------------------------ */

/* The address as 16 bytes (IPv4 mapped into IPv6). False for other families. */
static bool addr_key(const struct sockaddr *sa, uint8_t out[16])
{
	if (sa == NULL)
		return false;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
		memset(out, 0, 10);
		out[10] = 0xff;
		out[11] = 0xff;
		memcpy(out + 12, &in->sin_addr, 4);
		return true;
	}
	if (sa->sa_family == AF_INET6) {
		memcpy(out, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
		return true;
	}
	return false;
}

/* A warn line at most every 10 s while connections are being refused: an attack must
 * not turn into a flood of log lines; the metric counts each one. */
static void log_refusal(struct http_server *s, const char *limit, const struct sockaddr *sa)
{
	int64_t now = now_ms(), last = atomic_load(&s->refusal_logged_ms);
	if (now - last < 10000 || !atomic_compare_exchange_strong(&s->refusal_logged_ms, &last, now))
		return;
	char ip[INET6_ADDRSTRLEN] = "";
	if (sa != NULL && sa->sa_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, ip,
		          sizeof ip);
	else if (sa != NULL && sa->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, ip,
		          sizeof ip);
	log_write(LOG_WARN, "connection refused", "limit", limit, "client", ip,
	          "detail", "further refusals are counted in otpd_http_connections_refused_total "
	          "and logged at most every 10 s", LOG_END);
}

/* libmicrohttpd's accept policy: a connection over a limit is closed at once. The count
 * is of connections already on the list, so with several pool threads accepting at the
 * same instant the caps may be passed by at most a thread or so each. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
	(void)addrlen;
	struct http_server *s = cls;
	uint8_t key[16];
	bool has_key = addr_key(addr, key);
	int per_ip = s->cfg->max_connections_per_ip, same = 0;
	bool over_max;
	pthread_mutex_lock(&s->mu);
	over_max = s->n_conns >= s->max_conns;
	if (!over_max && per_ip > 0 && has_key)
		for (const struct edge_conn *e = s->conns; e != NULL && same < per_ip; e = e->next)
			same += e->has_ip && memcmp(e->ip, key, 16) == 0;
	pthread_mutex_unlock(&s->mu);
	if (over_max) {
		api_metrics_edge(s->api->metrics, API_EDGE_REFUSED_MAX);
		log_refusal(s, "OTPD_MAX_CONNECTIONS", addr);
		return MHD_NO;
	}
	if (per_ip > 0 && same >= per_ip) {
		api_metrics_edge(s->api->metrics, API_EDGE_REFUSED_PER_IP);
		log_refusal(s, "OTPD_MAX_CONNECTIONS_PER_IP", addr);
		return MHD_NO;
	}
	return MHD_YES;
}

static void on_connection(void *cls, struct MHD_Connection *con, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
	struct http_server *s = cls;
	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		struct edge_conn *e = calloc(1, sizeof *e);
		*socket_context = e;
		if (e == NULL)
			return; /* untracked: only libmicrohttpd's idle timeout applies to it */
		const union MHD_ConnectionInfo *fi =
			MHD_get_connection_info(con, MHD_CONNECTION_INFO_CONNECTION_FD);
		const union MHD_ConnectionInfo *ai =
			MHD_get_connection_info(con, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
		e->fd = fi != NULL ? fi->connect_fd : MHD_INVALID_SOCKET;
		e->has_ip = ai != NULL && addr_key(ai->client_addr, e->ip);
		e->phase = EDGE_HEAD;
		e->since_ms = now_ms();
		pthread_mutex_lock(&s->mu);
		e->next = s->conns;
		if (s->conns != NULL)
			s->conns->prev = e;
		s->conns = e;
		s->n_conns++;
		pthread_mutex_unlock(&s->mu);
		return;
	}
	struct edge_conn *e = *socket_context;
	if (e == NULL)
		return;
	pthread_mutex_lock(&s->mu);
	if (e->prev != NULL)
		e->prev->next = e->next;
	else
		s->conns = e->next;
	if (e->next != NULL)
		e->next->prev = e->prev;
	s->n_conns--;
	pthread_mutex_unlock(&s->mu);
	free(e);
	*socket_context = NULL;
}

static void set_phase(struct http_server *s, struct edge_conn *e, enum edge_phase phase)
{
	if (e == NULL)
		return;
	pthread_mutex_lock(&s->mu);
	e->phase = phase;
	e->since_ms = now_ms();
	pthread_mutex_unlock(&s->mu);
}

/* Shut down every connection past its head or body deadline; one log line per sweep
 * that cut any. */
static void *reaper_main(void *arg)
{
	struct http_server *s = arg;
	int64_t head_ms = (int64_t)s->cfg->header_timeout * 1000;
	int64_t body_ms = (int64_t)s->cfg->body_timeout * 1000;
	pthread_mutex_lock(&s->mu);
	while (!s->reaper_stop) {
		struct timespec until;
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_nsec += REAPER_TICK_MS * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&s->reaper_cv, &s->mu, &until);
		if (s->reaper_stop)
			break;
		int64_t now = now_ms();
		long heads = 0, bodies = 0;
		for (struct edge_conn *e = s->conns; e != NULL; e = e->next) {
			if (e->cut || e->fd == MHD_INVALID_SOCKET || e->phase == EDGE_ANSWER)
				continue;
			int64_t limit = e->phase == EDGE_HEAD ? head_ms : body_ms;
			if (now - e->since_ms < limit)
				continue;
			/* the worker sees end of file and closes; nothing is answered: a client
			 * this slow is not waiting for one */
			shutdown(e->fd, SHUT_RDWR);
			e->cut = true;
			if (e->phase == EDGE_HEAD)
				heads++;
			else
				bodies++;
		}
		if (heads + bodies == 0)
			continue;
		pthread_mutex_unlock(&s->mu);
		for (long i = 0; i < heads; i++)
			api_metrics_edge(s->api->metrics, API_EDGE_TIMEOUT_HEAD);
		for (long i = 0; i < bodies; i++)
			api_metrics_edge(s->api->metrics, API_EDGE_TIMEOUT_BODY);
		char h[24], b[24];
		snprintf(h, sizeof h, "%ld", heads);
		snprintf(b, sizeof b, "%ld", bodies);
		log_write(LOG_INFO, "request timeout", "heads", h, "bodies", b, LOG_END);
		pthread_mutex_lock(&s->mu);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

/* ---- requests ------------------------------------------------------------------------ */

/* The URI log callback: the request line is in, the headers are not. Makes the request's
 * context (libmicrohttpd hands it to every access callback and to on_completed) and
 * checks the raw target, which libmicrohttpd will decode into C strings. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *con)
{
	(void)cls;
	struct conn *c = calloc(1, sizeof *c);
	if (c == NULL)
		return NULL;
	clock_gettime(CLOCK_MONOTONIC, &c->start);
	const union MHD_ConnectionInfo *si =
		MHD_get_connection_info(con, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	c->edge = si != NULL ? si->socket_context : NULL;
	c->target_rc = http_target_check(uri, strlen(uri), &c->target_err);
	return c;
}

/* The first access callback: the head is in, no body byte has been read. False when the
 * request may go on, else true with the answer queued (and the connection to be closed). */
static bool refuse_head(struct http_server *s, struct MHD_Connection *con, struct conn *c,
                        const char *method, const char *version, enum MHD_Result *ret)
{
	struct otp_error e = {0};
	if (c->target_rc == OTP_ERR_URI_TOO_LONG) {
		*ret = send_refusal(s, con, c, method, c->path, &c->target_err, true);
		return true;
	}
	MHD_get_connection_values_n(con, MHD_HEADER_KIND, collect_header, c);
	if (c->too_many_headers) {
		*ret = send_error(s, con, c, method, c->path, OTP_ERR_HEADERS, "too_many_headers",
		                  "too many request header fields", true);
		return true;
	}
	const union MHD_ConnectionInfo *hi =
		MHD_get_connection_info(con, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
	struct http_head head = {
		.version = version != NULL ? version : "",
		.fields = c->fields,
		.n_fields = c->n_fields,
		.head_bytes = hi != NULL ? hi->header_size : 0,
	};
	struct http_body_framing framing;
	if (http_framing_check(&head, &framing, &e) != 0) {
		*ret = send_refusal(s, con, c, method, c->path, &e, true);
		return true;
	}
	if (c->target_rc != 0) {
		*ret = send_refusal(s, con, c, method, c->path, &c->target_err, true);
		return true;
	}
	if (framing.has_length && framing.length > s->cfg->max_body_bytes) {
		*ret = send_error(s, con, c, method, c->path, OTP_ERR_TOO_LARGE, "too_large",
		                  "the request body is larger than OTPD_MAX_BODY_BYTES", true);
		return true;
	}
	return false;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *con, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
	struct http_server *s = cls;
	struct conn *c = *con_cls;

	if (c == NULL)
		return MHD_NO; /* on_uri ran out of memory */
	if (!c->started) {
		enum MHD_Result ret;
		c->started = true;
		c->counted = true;
		atomic_fetch_add(&s->in_flight, 1);
		set_phase(s, c->edge, EDGE_BODY);
		c->path = http_target_path(url);
		set_request_id(c, MHD_lookup_connection_value(con, MHD_HEADER_KIND, "X-Request-Id"));
		if (refuse_head(s, con, c, method, version, &ret))
			return ret;
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

	/* the whole request is in: no deadline while the answer is made */
	set_phase(s, c->edge, EDGE_ANSWER);
	const char *path = c->path;
	if (c->too_large)
		return send_error(s, con, c, method, path, OTP_ERR_TOO_LARGE, "too_large",
		                  "the request body is larger than OTPD_MAX_BODY_BYTES", false);
	MHD_get_connection_values_n(con, MHD_GET_ARGUMENT_KIND, collect_arg, c);
	if (c->bad_arg) {
		struct otp_error e = {0};
		otp_error_set(&e, OTP_ERR_INVALID, "invalid_parameter", c->bad_arg_name,
		              "\"%s\" must not contain control characters", c->bad_arg_name);
		return send_refusal(s, con, c, method, path, &e, false);
	}
	if (c->too_many_args)
		return send_error(s, con, c, method, path, OTP_ERR_INVALID, "invalid_parameter",
		                  "too many query parameters", false);
	set_client_ip(c, con);

	struct api_request req = {
		.method = method,
		.path = path,
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
	enum MHD_Result ret = send_response(s, con, c, method, path, &resp, false);
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
	/* a kept-alive connection's next head is due within OTPD_HEADER_TIMEOUT from now */
	set_phase(s, c->edge, EDGE_HEAD);
	if (c->body != NULL) {
		/* bodies carry codes */
		sodium_memzero(c->body, c->cap);
		free(c->body);
	}
	if (c->counted)
		atomic_fetch_sub(&s->in_flight, 1);
	free(c);
	*con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	struct http_server *s = cls;
	char msg[256];
	vsnprintf(msg, sizeof msg, fmt, ap);
	size_t n = strlen(msg);
	while (n > 0 && msg[n - 1] == '\n')
		msg[--n] = '\0';
	/* libmicrohttpd answers some requests itself, before any callback of otpd runs (see
	 * the DESIGN block); it says so in one line, which is the only trace otpd gets: it
	 * becomes the access log line and the metric of that answer. */
	static const char mark[] = "HTTP response code is ";
	const char *at = strstr(msg, mark);
	if (at != NULL) {
		char digits[4] = {0};
		int64_t status = 0;
		memcpy(digits, at + sizeof mark - 1, 3);
		if (otp_parse_i64(digits, 100, 599, &status) == 0) {
			char *body = strstr(at, " ('");
			if (body != NULL)
				*body = '\0'; /* its HTML body says nothing more */
			api_metrics_request(s->api->metrics, -1, (int)status, 0);
			log_write(LOG_INFO, "request", "status", digits, "by", "libmicrohttpd",
			          "detail", msg, LOG_END);
			return;
		}
	}
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

/* Client connections the process can hold: OTPD_MAX_CONNECTIONS, with the soft
 * RLIMIT_NOFILE raised towards the hard one to make room; lowered (with a warning) when
 * even the hard limit is too small. */
static int connection_budget(const struct config *cfg)
{
	rlim_t want = (rlim_t)cfg->max_connections + FD_RESERVE;
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return cfg->max_connections;
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
		struct rlimit up = rl;
		up.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &up) == 0)
			rl = up;
	}
	if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want)
		return cfg->max_connections;
	int fit = rl.rlim_cur > FD_RESERVE + 16 ? (int)(rl.rlim_cur - FD_RESERVE) : 16;
	char have[24], use[24];
	snprintf(have, sizeof have, "%llu", (unsigned long long)rl.rlim_cur);
	snprintf(use, sizeof use, "%d", fit);
	log_write(LOG_WARN, "OTPD_MAX_CONNECTIONS lowered to fit the open file limit",
	          "nofile", have, "max_connections", use, LOG_END);
	return fit;
}

static void edge_fini(struct http_server *s)
{
	if (s->reaper_running) {
		pthread_mutex_lock(&s->mu);
		s->reaper_stop = true;
		pthread_cond_signal(&s->reaper_cv);
		pthread_mutex_unlock(&s->mu);
		pthread_join(s->reaper, NULL);
		s->reaper_running = false;
	}
	/* libmicrohttpd has said CLOSED for every connection by now; this is for safety */
	while (s->conns != NULL) {
		struct edge_conn *e = s->conns;
		s->conns = e->next;
		free(e);
	}
	pthread_cond_destroy(&s->reaper_cv);
	pthread_mutex_destroy(&s->mu);
}

/*
 * Start a daemon with every setting of the edge: on the address `addr` (reused), or on
 * the already listening socket `fd` (a TLS reload). NULL when libmicrohttpd refuses.
 */
static struct MHD_Daemon *daemon_start(struct http_server *s, bool ipv6,
                                       const struct http_tls *tls, const struct sockaddr *addr,
                                       MHD_socket fd)
{
	const struct config *cfg = s->cfg;
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ITC |
	                 MHD_USE_ERROR_LOG;
	if (ipv6)
		flags |= MHD_USE_IPv6;
	struct MHD_OptionItem opts[] = {
		{MHD_OPTION_HTTPS_MEM_CERT, 0, tls ? tls->cert : NULL},
		{MHD_OPTION_HTTPS_MEM_KEY, 0, tls ? tls->key : NULL},
		{MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)TLS_PRIORITIES},
		{MHD_OPTION_END, 0, NULL},
		{MHD_OPTION_END, 0, NULL},
		{MHD_OPTION_END, 0, NULL},
	};
	size_t n = 3;
	if (tls != NULL)
		flags |= MHD_USE_TLS;
	else
		n = 0;
	if (fd != MHD_INVALID_SOCKET) {
		opts[n++] = (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, (intptr_t)fd, NULL};
	} else {
		opts[n++] = (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, (void *)addr};
		opts[n++] = (struct MHD_OptionItem){MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, NULL};
	}
	opts[n] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
	/* libmicrohttpd's own connection limit (split evenly over the pool threads) is kept
	 * above ours with room for each thread's share to be uneven: at it, a thread stops
	 * accepting and new clients wait unanswered in the kernel's backlog, which is what
	 * on_accept's immediate refusal is there to prevent. */
	unsigned mhd_limit = (unsigned)s->max_conns * 2u + (unsigned)cfg->threads * 4u;
	return MHD_start_daemon(
		flags, (uint16_t)cfg->listen_port, on_accept, s, on_request, s,
		MHD_OPTION_ARRAY, opts,
		MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->threads,
		MHD_OPTION_CONNECTION_LIMIT, mhd_limit,
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)MHD_POOL_BYTES,
		/* the idle limit of a connection that is sent its answer but does not read it;
		 * heads and bodies have the reaper's deadlines */
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
		MHD_OPTION_URI_LOG_CALLBACK, on_uri, s,
		MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
		MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
		MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s,
		MHD_OPTION_END);
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
	pthread_condattr_t ca;
	if (s == NULL || pthread_condattr_init(&ca) != 0) {
		free(s);
		freeaddrinfo(ai);
		snprintf(err, cap, "out of memory");
		return NULL;
	}
	s->cfg = cfg;
	s->api = api;
	atomic_init(&s->in_flight, 0);
	atomic_init(&s->refusal_logged_ms, INT64_MIN / 2);
	s->quiesced_fd = -1;
	s->max_conns = connection_budget(cfg);
	pthread_mutex_init(&s->mu, NULL);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->reaper_cv, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&s->reaper, NULL, reaper_main, s) != 0) {
		edge_fini(s);
		free(s);
		freeaddrinfo(ai);
		snprintf(err, cap, "cannot start the HTTP deadline thread");
		return NULL;
	}
	s->reaper_running = true;
	s->daemon = daemon_start(s, ai->ai_family == AF_INET6, tls, ai->ai_addr, MHD_INVALID_SOCKET);
	freeaddrinfo(ai);
	if (s->daemon == NULL) {
		if (tls != NULL)
			snprintf(err, cap, "HTTPS could not start on %s: the address is in use or "
			         "not allowed, or OTPD_TLS_KEY is not the key of OTPD_TLS_CERT",
			         cfg->listen);
		else
			snprintf(err, cap, "OTPD_LISTEN: cannot listen on %s (in use, or not allowed)",
			         cfg->listen);
		edge_fini(s);
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
	edge_fini(s);
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
	bool ipv6 = getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family == AF_INET6;
	struct MHD_Daemon *fresh = daemon_start(s, ipv6, tls, NULL, fd);
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
