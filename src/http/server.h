/*
 * server.h - the HTTP edge: libmicrohttpd with a thread pool, the request body limit
 * (413 before the body is read), Basic auth, request ids, the access log, and turning
 * api_response into bytes. The only module that includes microhttpd.h.
 * Thread-safety: start/quiesce/stop from the main thread only.
 */
#ifndef OTPD_HTTP_SERVER_H
#define OTPD_HTTP_SERVER_H

#include <stddef.h>

#include "api/api.h"
#include "config.h"

struct http_server;

/* Listen on cfg->listen_host:listen_port with cfg->threads threads. `api` must outlive
 * the server. NULL with a reason in err when the address can't be bound. */
struct http_server *http_server_start(const struct config *cfg, const struct api_ctx *api,
                                      char *err, size_t cap);
/* Stop accepting connections, then wait up to deadline_s seconds for requests in flight
 * to be answered. */
void http_server_drain(struct http_server *s, int deadline_s);
/* Close everything and free. Accepts NULL. */
void http_server_stop(struct http_server *s);

#endif
