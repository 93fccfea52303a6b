/*
 * server.h - the HTTP edge: libmicrohttpd with a thread pool, optional TLS, the request
 * body limit (413 before the body is read), Basic auth, request ids, the access log, and
 * turning api_response into bytes. The only module that includes microhttpd.h.
 * Thread-safety: start/quiesce/stop from the main thread only.
 */
#ifndef OTPD_HTTP_SERVER_H
#define OTPD_HTTP_SERVER_H

#include <stddef.h>

#include "api/api.h"
#include "config.h"

struct http_server;

/* The certificate and key of OTPD_TLS_CERT / OTPD_TLS_KEY, read into memory. */
struct http_tls;

/* Read the PEM files when TLS is configured: 0 with *out set (NULL when it is not), or
 * -1 with the reason in err (unreadable, empty, over 1 MiB, or not PEM). */
int http_tls_load(const struct config *cfg, struct http_tls **out, char *err, size_t cap);
/* Wipe the key and free. Accepts NULL. */
void http_tls_free(struct http_tls *t);

/* Listen on cfg->listen_host:listen_port with cfg->threads threads, HTTPS when tls is
 * not NULL. `api` and `tls` must outlive the server. NULL with a reason in err when the
 * address can't be bound (or the TLS key and certificate are refused). */
struct http_server *http_server_start(const struct config *cfg, const struct api_ctx *api,
                                      const struct http_tls *tls, char *err, size_t cap);
/* Stop accepting connections, then wait up to deadline_s seconds for requests in flight
 * to be answered. */
void http_server_drain(struct http_server *s, int deadline_s);
/* Close everything and free. Accepts NULL. */
void http_server_stop(struct http_server *s);

/* Serve new connections with the certificate and key of `tls` (loaded by
 * http_tls_load; it must outlive the call only): 0 when they do, -1 with the reason in
 * err when the pair is refused, and the previous pair keeps serving. Connections
 * already open finish on the old pair (for at most OTPD_SHUTDOWN_TIMEOUT). Main thread
 * only. */
int http_server_reload_tls(struct http_server *s, const struct http_tls *tls, char *err,
                           size_t cap);

#endif
