/*
 * metrics.c - counters and their Prometheus text rendering (metrics.h).
 *
 * DESIGN: one row of counters per route of routes.c plus one for everything else, each
 * with a counter per HTTP status 100..599 (only the non-zero ones are printed) and a
 * latency histogram kept as per-bucket counts, made cumulative when rendered. Sums are
 * kept in microseconds as integers so every counter is a plain atomic add.
 */
#include "api/metrics.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "api/routes.h"
#include "core/num.h"

#define M_STATUS_MIN 100
#define M_STATUS_N 500

static const double m_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                   0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define M_BUCKETS (sizeof m_buckets / sizeof m_buckets[0])

static const char *const send_names[] = {"accepted", "limited", "invalid", "failed"};
/* Reasons of refused requests: the dialect-neutral reasons of struct otp_error (one set
 * for every dialect, whatever each answers its clients with), then everything else. */
static const char *const refusal_names[] = {
	"missing_parameter", "invalid_parameter", "invalid_json", "invalid_form",
	"unauthorized", "forbidden", "not_found", "method_not_allowed", "too_large",
	"too_many_headers", "headers_too_large", "uri_too_long", "bad_request",
	"not_implemented", "ip_limit", "target_limit", "resend_cooldown", "max_sends_reached",
	"not_pending", "conflict", "idempotency_mismatch", "code_not_kept",
	"channel_not_allowed", "no_fallback", "disabled", "unavailable", "internal", "other"};
#define M_REFUSAL_N (sizeof refusal_names / sizeof refusal_names[0])
static const char *const check_names[] = {"true", "false", "failed"};
#define M_SEND_N (sizeof send_names / sizeof send_names[0])
#define M_CHECK_N (sizeof check_names / sizeof check_names[0])

struct m_route {
	atomic_ullong status[M_STATUS_N];
	atomic_ullong bucket[M_BUCKETS + 1];   /* per bucket, not cumulative; last: +Inf */
	atomic_ullong sum_us;
	atomic_ullong count;
	atomic_ullong refusals[M_REFUSAL_N];
};

struct api_metrics {
	char version[32];
	char store[16];
	double start_time;
	size_t n_rows;                          /* routes + "other" */
	struct m_route *rows;
	atomic_ullong sends[OTP_CH_COUNT][M_SEND_N];
	atomic_ullong checks[OTP_CH_COUNT][M_CHECK_N];
	atomic_ullong edge[API_EDGE_N];
};

struct api_metrics *api_metrics_new(const char *version, const char *store, double start_time)
{
	struct api_metrics *m = calloc(1, sizeof *m);
	if (m == NULL)
		return NULL;
	m->n_rows = api_route_count() + 1;
	m->rows = calloc(m->n_rows, sizeof *m->rows);
	if (m->rows == NULL) {
		free(m);
		return NULL;
	}
	snprintf(m->version, sizeof m->version, "%s", version ? version : "");
	snprintf(m->store, sizeof m->store, "%s", store ? store : "");
	m->start_time = start_time;
	for (size_t r = 0; r < m->n_rows; r++) {
		struct m_route *row = &m->rows[r];
		for (size_t i = 0; i < M_STATUS_N; i++)
			atomic_init(&row->status[i], 0);
		for (size_t i = 0; i <= M_BUCKETS; i++)
			atomic_init(&row->bucket[i], 0);
		atomic_init(&row->sum_us, 0);
		atomic_init(&row->count, 0);
		for (size_t i = 0; i < M_REFUSAL_N; i++)
			atomic_init(&row->refusals[i], 0);
	}
	for (size_t c = 0; c < OTP_CH_COUNT; c++) {
		for (size_t i = 0; i < M_SEND_N; i++)
			atomic_init(&m->sends[c][i], 0);
		for (size_t i = 0; i < M_CHECK_N; i++)
			atomic_init(&m->checks[c][i], 0);
	}
	for (size_t i = 0; i < API_EDGE_N; i++)
		atomic_init(&m->edge[i], 0);
	return m;
}

void api_metrics_free(struct api_metrics *m)
{
	if (m == NULL)
		return;
	free(m->rows);
	free(m);
}

static void add(atomic_ullong *a, unsigned long long n)
{
	atomic_fetch_add_explicit(a, n, memory_order_relaxed);
}

static unsigned long long get(const atomic_ullong *a)
{
	/* atomic_load_explicit takes a non-const pointer in C11 */
	return atomic_load_explicit((atomic_ullong *)a, memory_order_relaxed);
}

void api_metrics_request(struct api_metrics *m, int route, int status, double seconds)
{
	if (m == NULL)
		return;
	struct m_route *row = &m->rows[route < 0 || (size_t)route + 1 >= m->n_rows
	                                   ? m->n_rows - 1 : (size_t)route];
	if (status >= M_STATUS_MIN && status < M_STATUS_MIN + M_STATUS_N)
		add(&row->status[status - M_STATUS_MIN], 1);
	if (seconds < 0)
		seconds = 0;
	size_t b = 0;
	while (b < M_BUCKETS && seconds > m_buckets[b])
		b++;
	add(&row->bucket[b], 1);
	add(&row->sum_us, (unsigned long long)(seconds * 1e6 + 0.5));
	add(&row->count, 1);
}

void api_metrics_refusal(struct api_metrics *m, int route, int status, const char *code)
{
	if (m == NULL || status < 400)
		return;
	struct m_route *row = &m->rows[route < 0 || (size_t)route + 1 >= m->n_rows
	                                   ? m->n_rows - 1 : (size_t)route];
	size_t r = M_REFUSAL_N - 1; /* other */
	for (size_t i = 0; code != NULL && i + 1 < M_REFUSAL_N; i++)
		if (strcmp(refusal_names[i], code) == 0)
			r = i;
	add(&row->refusals[r], 1);
}

void api_metrics_send(struct api_metrics *m, enum otp_channel ch, enum api_send_outcome o)
{
	if (m != NULL && (unsigned)ch < OTP_CH_COUNT && (unsigned)o < M_SEND_N)
		add(&m->sends[ch][o], 1);
}

void api_metrics_check(struct api_metrics *m, enum otp_channel ch, enum api_check_outcome o)
{
	if (m != NULL && (unsigned)ch < OTP_CH_COUNT && (unsigned)o < M_CHECK_N)
		add(&m->checks[ch][o], 1);
}

void api_metrics_edge(struct api_metrics *m, enum api_edge_event ev)
{
	if (m != NULL && (unsigned)ev < API_EDGE_N)
		add(&m->edge[ev], 1);
}

/* ---- rendering ---------------------------------------------------------------------- */

struct m_buf {
	char *p;
	size_t len, cap;
	bool failed;
};

static void out(struct m_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void out(struct m_buf *b, const char *fmt, ...)
{
	if (b->failed)
		return;
	for (;;) {
		va_list ap;
		va_start(ap, fmt);
		int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->failed = true;
			return;
		}
		if ((size_t)n < b->cap - b->len) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = b->cap * 2 + (size_t)n;
		char *np = realloc(b->p, cap);
		if (np == NULL) {
			b->failed = true;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
}

static void family(struct m_buf *b, const char *name, const char *type, const char *help)
{
	out(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The method and route labels of row r. */
static void row_labels(const struct api_metrics *m, size_t r, const char **method,
                       const char **route)
{
	*method = "other";
	*route = "other";
	if (r + 1 < m->n_rows)
		api_route_at(r, method, route);
}

/* ---- process_*: what Prometheus client libraries export, from /proc/self ------------ */

#define PROC_READ_MAX 4096

/* The start of a /proc file into buf (NUL-terminated); false when it cannot be read. */
static bool proc_read(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ssize_t n = read(fd, buf, cap - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	return true;
}

/* Field `index` (1-based, as proc(5) counts them) of /proc/self/stat, parsed. The
 * command name (field 2) may hold spaces and parentheses: counting starts after the
 * last ')'. */
static bool stat_field(const char *stat, int index, int64_t *out)
{
	const char *p = strrchr(stat, ')');
	if (p == NULL || index < 3)
		return false;
	p++;
	for (int f = 3; *p != '\0'; f++) {
		while (*p == ' ')
			p++;
		size_t len = strcspn(p, " \n");
		if (f == index) {
			char tok[32];
			if (len == 0 || len >= sizeof tok)
				return false;
			memcpy(tok, p, len);
			tok[len] = '\0';
			return otp_parse_i64(tok, INT64_MIN, INT64_MAX, out) == 0;
		}
		p += len;
	}
	return false;
}

/* "btime N" of /proc/stat: boot time, unix seconds. */
static bool boot_time(int64_t *out)
{
	char buf[PROC_READ_MAX * 4];
	if (!proc_read("/proc/stat", buf, sizeof buf))
		return false;
	const char *p = strstr(buf, "\nbtime ");
	if (p == NULL)
		return false;
	p += 7;
	char tok[32];
	size_t len = strcspn(p, "\n");
	if (len == 0 || len >= sizeof tok)
		return false;
	memcpy(tok, p, len);
	tok[len] = '\0';
	return otp_parse_i64(tok, 0, INT64_MAX, out) == 0;
}

static void process_metrics(struct m_buf *b)
{
	char stat[PROC_READ_MAX];
	long ticks = sysconf(_SC_CLK_TCK);
	long page = sysconf(_SC_PAGESIZE);
	int64_t utime, stime, start, vsize, rss, btime;
	if (ticks > 0 && proc_read("/proc/self/stat", stat, sizeof stat)) {
		if (stat_field(stat, 14, &utime) && stat_field(stat, 15, &stime)) {
			family(b, "process_cpu_seconds_total", "counter",
			       "Total user and system CPU time spent in seconds.");
			out(b, "process_cpu_seconds_total %.2f\n", (double)(utime + stime) / (double)ticks);
		}
		if (stat_field(stat, 22, &start) && boot_time(&btime)) {
			family(b, "process_start_time_seconds", "gauge",
			       "Start time of the process since unix epoch in seconds.");
			out(b, "process_start_time_seconds %.2f\n",
			    (double)btime + (double)start / (double)ticks);
		}
		if (stat_field(stat, 23, &vsize)) {
			family(b, "process_virtual_memory_bytes", "gauge",
			       "Virtual memory size in bytes.");
			out(b, "process_virtual_memory_bytes %lld\n", (long long)vsize);
		}
		if (page > 0 && stat_field(stat, 24, &rss)) {
			family(b, "process_resident_memory_bytes", "gauge",
			       "Resident memory size in bytes.");
			out(b, "process_resident_memory_bytes %lld\n", (long long)rss * page);
		}
	}
	DIR *d = opendir("/proc/self/fd");
	if (d != NULL) {
		long long n = 0;
		const struct dirent *e;
		while ((e = readdir(d)) != NULL)
			if (e->d_name[0] != '.')
				n++;
		closedir(d);
		family(b, "process_open_fds", "gauge", "Number of open file descriptors.");
		out(b, "process_open_fds %lld\n", n - 1); /* not the one opendir used */
	}
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
		family(b, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
		out(b, "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
	}
}

char *api_metrics_render(const struct api_metrics *m, const struct api_delivery_stats *delivery,
                         const struct store_outbox_backlog *backlog, int64_t now)
{
	struct m_buf b = {.cap = 16384};
	if (m == NULL || (b.p = malloc(b.cap)) == NULL)
		return NULL;
	b.p[0] = '\0';

	family(&b, "otpd_build_info", "gauge", "Version and store backend of this otpd.");
	out(&b, "otpd_build_info{version=\"%s\",store=\"%s\"} 1\n", m->version, m->store);
	family(&b, "otpd_start_time_seconds", "gauge", "When this otpd started, unix seconds.");
	out(&b, "otpd_start_time_seconds %.3f\n", m->start_time);

	family(&b, "otpd_http_requests_total", "counter",
	       "HTTP requests answered, by route and status.");
	for (size_t r = 0; r < m->n_rows; r++) {
		const char *method, *route;
		row_labels(m, r, &method, &route);
		for (size_t s = 0; s < M_STATUS_N; s++) {
			unsigned long long n = get(&m->rows[r].status[s]);
			if (n > 0)
				out(&b, "otpd_http_requests_total{method=\"%s\",route=\"%s\",status=\"%zu\"} %llu\n",
				    method, route, s + M_STATUS_MIN, n);
		}
	}

	family(&b, "otpd_http_request_duration_seconds", "histogram",
	       "Time from the first byte of a request to its answer being queued.");
	for (size_t r = 0; r < m->n_rows; r++) {
		const struct m_route *row = &m->rows[r];
		if (get(&row->count) == 0)
			continue;
		const char *method, *route;
		row_labels(m, r, &method, &route);
		unsigned long long cum = 0;
		for (size_t i = 0; i <= M_BUCKETS; i++) {
			cum += get(&row->bucket[i]);
			if (i < M_BUCKETS)
				out(&b, "otpd_http_request_duration_seconds_bucket{method=\"%s\",route=\"%s\","
				    "le=\"%g\"} %llu\n", method, route, m_buckets[i], cum);
			else
				out(&b, "otpd_http_request_duration_seconds_bucket{method=\"%s\",route=\"%s\","
				    "le=\"+Inf\"} %llu\n", method, route, cum);
		}
		out(&b, "otpd_http_request_duration_seconds_sum{method=\"%s\",route=\"%s\"} %.6f\n",
		    method, route, (double)get(&row->sum_us) / 1e6);
		/* the +Inf bucket's total, so the count agrees with the buckets in one scrape */
		out(&b, "otpd_http_request_duration_seconds_count{method=\"%s\",route=\"%s\"} %llu\n",
		    method, route, cum);
	}

	family(&b, "otpd_http_connections_refused_total", "counter",
	       "Connections closed at accept, by the limit they were over.");
	out(&b, "otpd_http_connections_refused_total{limit=\"max_connections\"} %llu\n",
	    get(&m->edge[API_EDGE_REFUSED_MAX]));
	out(&b, "otpd_http_connections_refused_total{limit=\"max_connections_per_ip\"} %llu\n",
	    get(&m->edge[API_EDGE_REFUSED_PER_IP]));
	family(&b, "otpd_http_request_timeouts_total", "counter",
	       "Connections closed because a request's head (OTPD_HEADER_TIMEOUT) or body "
	       "(OTPD_BODY_TIMEOUT) did not arrive in time.");
	out(&b, "otpd_http_request_timeouts_total{phase=\"head\"} %llu\n",
	    get(&m->edge[API_EDGE_TIMEOUT_HEAD]));
	out(&b, "otpd_http_request_timeouts_total{phase=\"body\"} %llu\n",
	    get(&m->edge[API_EDGE_TIMEOUT_BODY]));

	family(&b, "otpd_sends_total", "counter",
	       "Codes sent, by channel and result: accepted (stored with its delivery job), "
	       "limited (refused by a limit), invalid (refused by the rules), failed (the "
	       "store failed).");
	for (size_t c = 0; c < OTP_CH_COUNT; c++)
		for (size_t i = 0; i < M_SEND_N; i++)
			out(&b, "otpd_sends_total{channel=\"%s\",result=\"%s\"} %llu\n",
			    otp_channel_name((enum otp_channel)c), send_names[i], get(&m->sends[c][i]));

	family(&b, "otpd_checks_total", "counter",
	       "Codes checked, by the check's channel and answer (failed: the store failed).");
	for (size_t c = 0; c < OTP_CH_COUNT; c++)
		for (size_t i = 0; i < M_CHECK_N; i++)
			out(&b, "otpd_checks_total{channel=\"%s\",result=\"%s\"} %llu\n",
			    otp_channel_name((enum otp_channel)c), check_names[i], get(&m->checks[c][i]));

	if (delivery != NULL) {
		family(&b, "otpd_outbox_deliveries_total", "counter",
		       "Delivery attempts by this process, by outcome (released: put back "
		       "untried at shutdown).");
		out(&b, "otpd_outbox_deliveries_total{outcome=\"sent\"} %lld\n", delivery->sent);
		out(&b, "otpd_outbox_deliveries_total{outcome=\"retry\"} %lld\n", delivery->retried);
		out(&b, "otpd_outbox_deliveries_total{outcome=\"dead\"} %lld\n", delivery->dead);
		out(&b, "otpd_outbox_deliveries_total{outcome=\"released\"} %lld\n",
		    delivery->released);
		family(&b, "otpd_outbox_store_errors_total", "counter",
		       "Claims and outcome writes of the outbox that the store refused.");
		out(&b, "otpd_outbox_store_errors_total %lld\n", delivery->store_errors);
	}
	family(&b, "otpd_store_up", "gauge",
	       "1 when the store answered this scrape's backlog query, else 0.");
	out(&b, "otpd_store_up %d\n", backlog != NULL);
	if (backlog != NULL) {
		family(&b, "otpd_outbox_jobs", "gauge",
		       "Delivery jobs waiting (pending) or being delivered (sending), of every "
		       "process on the store.");
		out(&b, "otpd_outbox_jobs{state=\"pending\"} %lld\n", (long long)backlog->pending);
		out(&b, "otpd_outbox_jobs{state=\"sending\"} %lld\n", (long long)backlog->sending);
		family(&b, "otpd_outbox_oldest_due_seconds", "gauge",
		       "How long the most overdue pending job has been due (0: none is due). "
		       "Growing means delivery is stuck or slower than the sends.");
		long long late = backlog->oldest_due > 0 && backlog->oldest_due < now
		                 ? (long long)(now - backlog->oldest_due) : 0;
		out(&b, "otpd_outbox_oldest_due_seconds %lld\n", late);
	}
	family(&b, "otpd_http_refusals_total", "counter",
	       "Requests answered with an error, by route and reason (the answer's "
	       "status_code; missing_parameter: a required field was absent).");
	for (size_t r = 0; r < m->n_rows; r++) {
		const char *method, *route;
		row_labels(m, r, &method, &route);
		for (size_t i = 0; i < M_REFUSAL_N; i++) {
			unsigned long long n = get(&m->rows[r].refusals[i]);
			if (n > 0)
				out(&b, "otpd_http_refusals_total{method=\"%s\",route=\"%s\",reason=\"%s\"} "
				    "%llu\n", method, route, refusal_names[i], n);
		}
	}
	if (delivery != NULL && delivery->n_providers > 0) {
		family(&b, "otpd_provider_deliveries_total", "counter",
		       "Delivery attempts by this process, by provider and outcome.");
		for (size_t i = 0; i < delivery->n_providers && i < API_PROVIDERS_MAX; i++) {
			const struct api_provider_stats *p = &delivery->providers[i];
			out(&b, "otpd_provider_deliveries_total{provider=\"%s\",outcome=\"sent\"} %lld\n",
			    p->name, p->sent);
			out(&b, "otpd_provider_deliveries_total{provider=\"%s\",outcome=\"retry\"} %lld\n",
			    p->name, p->retried);
			out(&b, "otpd_provider_deliveries_total{provider=\"%s\",outcome=\"dead\"} %lld\n",
			    p->name, p->dead);
		}
	}
	process_metrics(&b);
	if (b.failed) {
		free(b.p);
		return NULL;
	}
	return b.p;
}
