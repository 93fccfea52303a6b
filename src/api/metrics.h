/*
 * metrics.h - the counters behind GET /metrics, rendered in the Prometheus text format
 * (version 0.0.4): HTTP requests per route and status with a latency histogram, sends
 * and checks per channel by outcome, the outbox's delivery outcomes (read at scrape
 * time through struct api_ctx's delivery_stats callback), and the backlog of the shared
 * outbox (read from the store at scrape time), refusals by route and reason, and the
 * process_* family of the Prometheus client libraries (CPU, memory, descriptors, start
 * time, read from /proc/self at scrape time).
 *
 * Labels come only from fixed sets (the route table, the channels, HTTP statuses
 * 100..599), never from what a client sent, so a scan of random paths cannot grow the
 * output: an unknown path or method is counted as route="other", method="other".
 * Thread-safety: every counter is a relaxed atomic; any thread adds, a scrape reads
 * without a lock (one request's counters may be seen half-added, as with any
 * Prometheus client library).
 */
#ifndef OTPD_API_METRICS_H
#define OTPD_API_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/otp.h"
#include "store/store.h"

struct api_metrics;

/* What the outbox has done since start (main.c fills it from outbox.h), in all and by
 * provider (names are static strings from a fixed set: the provider registry). */
#define API_PROVIDERS_MAX 17
struct api_provider_stats {
	const char *name;
	long long sent, retried, dead;
};
struct api_delivery_stats {
	long long sent, retried, dead, released, store_errors;
	struct api_provider_stats providers[API_PROVIDERS_MAX];
	size_t n_providers;
};

/* NULL when out of memory. `store` names the backend for otpd_build_info. */
struct api_metrics *api_metrics_new(const char *version, const char *store, double start_time);
void api_metrics_free(struct api_metrics *m);

/* One answered request of route `route` (api_route_find; -1: none). m may be NULL:
 * nothing is counted. */
void api_metrics_request(struct api_metrics *m, int route, int status, double seconds);

enum api_send_outcome { API_SEND_ACCEPTED, API_SEND_LIMITED, API_SEND_INVALID, API_SEND_FAILED };
void api_metrics_send(struct api_metrics *m, enum otp_channel ch, enum api_send_outcome o);

enum api_check_outcome { API_CHECK_TRUE, API_CHECK_FALSE, API_CHECK_FAILED };

/* A request of route `route` (-1: none) refused with HTTP `status` >= 400 and the
 * answer's machine-readable code (`status_code`; NULL or "" when it has none). Counted
 * by route and reason, the reason from a fixed set (unknown codes count as "other"),
 * so every refused send is counted by why: a limit, a bad field, auth, the store... */
void api_metrics_refusal(struct api_metrics *m, int route, int status, const char *code);
void api_metrics_check(struct api_metrics *m, enum otp_channel ch, enum api_check_outcome o);

/* What the HTTP edge did to a connection instead of answering it: refused it at
 * accept (over OTPD_MAX_CONNECTIONS or OTPD_MAX_CONNECTIONS_PER_IP), or closed it when
 * its head or body did not arrive in time. m may be NULL. */
enum api_edge_event {
	API_EDGE_REFUSED_MAX, API_EDGE_REFUSED_PER_IP, API_EDGE_TIMEOUT_HEAD,
	API_EDGE_TIMEOUT_BODY, API_EDGE_N
};
void api_metrics_edge(struct api_metrics *m, enum api_edge_event ev);

/* The whole exposition as a malloc'd string (caller frees), or NULL when out of memory.
 * `delivery` may be NULL (no outbox). `backlog` is what the store answered at `now`
 * (unix seconds), or NULL when it did not answer: then otpd_store_up is 0. */
char *api_metrics_render(const struct api_metrics *m, const struct api_delivery_stats *delivery,
                         const struct store_outbox_backlog *backlog, int64_t now);

#endif
