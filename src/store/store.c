/*
 * store.c - every operation of store.h, written once for both backends: the validation
 * of its request, the order of its statements (grouped in steps, each one round trip on
 * PostgreSQL), and the decisions of the core taken between them. The backends (sqlite.c,
 * pg.c) supply the SQL of each statement, the executor and the commit (backend.h).
 * Never logs; returns.
 *
 * DESIGN
 * A write operation reads first (step 1: locks, rules with their counts, the rows it
 * will change), decides in C with core/ (otp_limits_decide, otp_check_decide, the state
 * rules of a verification), and writes (step 2, flagged SB_LAST so PostgreSQL sends
 * COMMIT in the same round trip). A refusal that must be recorded (a "refused" event)
 * still commits: the transaction function returns 0 and the outcome travels in its
 * context. Locks, where a backend needs them, are taken in one order everywhere: an
 * idempotency key, then (channel, target), then (channel, ip); a verification's row is
 * locked (SQ_VF_LOCKED_*) before any advisory lock, and no operation that holds an
 * advisory lock waits for a verification row, so none can wait for another in a cycle.
 * A check first decides on a read snapshot (no lock, one round trip); only when the
 * outcome changes a row does it run again as a write, locking the rows and deciding
 * anew on what it reads under the lock.
 */
#include "store/backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "core/text.h"
#include "store/migrations.h"

/* ---- the arena ------------------------------------------------------------------------ */

struct sb_chunk {
	struct sb_chunk *next;
	size_t used, cap;
	_Alignas(16) unsigned char data[];
};

#define SB_CHUNK_MIN 8192

void *sb_alloc(struct sb_arena *a, size_t n)
{
	n = (n + 15u) & ~(size_t)15u;
	if (n == 0)
		n = 16;
	struct sb_chunk *c = a->head;
	if (c == NULL || c->cap - c->used < n) {
		size_t cap = n > SB_CHUNK_MIN ? n : SB_CHUNK_MIN;
		c = malloc(sizeof *c + cap);
		if (c == NULL)
			return NULL;
		c->cap = cap;
		c->used = 0;
		c->next = a->head;
		a->head = c;
	}
	void *p = c->data + c->used;
	c->used += n;
	return p;
}

void sb_arena_reset(struct sb_arena *a)
{
	/* results hold code hashes and sealed payloads: wipe them like secrets */
	for (struct sb_chunk *c = a->head, *next; c != NULL; c = next) {
		next = c->next;
		sodium_memzero(c->data, c->used);
		free(c);
	}
	a->head = NULL;
}

/* ---- parameters and cells ---------------------------------------------------------------- */

void sb_stmt_init(struct sb_stmt *st, enum sb_sql sql)
{
	memset(st, 0, sizeof *st);
	st->sql = sql;
}

static struct sb_val *next_arg(struct sb_stmt *st)
{
	/* a statement never has more parameters than its SQL; overflowing is a bug that the
	 * backend reports as a failed statement (n stays at the maximum) */
	if (st->n >= SB_ARGS_MAX)
		return NULL;
	return &st->a[st->n++];
}

void sb_arg_int(struct sb_stmt *st, int64_t v)
{
	struct sb_val *a = next_arg(st);
	if (a != NULL)
		*a = (struct sb_val){.t = SB_INT, .i = v};
}

void sb_arg_text(struct sb_stmt *st, const char *s)
{
	struct sb_val *a = next_arg(st);
	if (a == NULL)
		return;
	if (s == NULL)
		*a = (struct sb_val){.t = SB_NULL};
	else
		*a = (struct sb_val){.t = SB_TEXT, .p = s, .len = strlen(s)};
}

void sb_arg_blob(struct sb_stmt *st, const void *p, size_t len)
{
	struct sb_val *a = next_arg(st);
	if (a == NULL)
		return;
	if (p == NULL)
		*a = (struct sb_val){.t = SB_NULL};
	else
		*a = (struct sb_val){.t = SB_BLOB, .p = p, .len = len};
}

static const struct sb_val *cell(const struct sb_stmt *st, size_t row, size_t col)
{
	static const struct sb_val null_val = {.t = SB_NULL};
	if (row >= st->rows || col >= st->cols || st->cell == NULL)
		return &null_val;
	return &st->cell[row * st->cols + col];
}

bool sb_is_null(const struct sb_stmt *st, size_t row, size_t col)
{
	return cell(st, row, col)->t == SB_NULL;
}

int64_t sb_int(const struct sb_stmt *st, size_t row, size_t col)
{
	const struct sb_val *v = cell(st, row, col);
	return v->t == SB_INT ? v->i : 0;
}

const char *sb_str(const struct sb_stmt *st, size_t row, size_t col)
{
	const struct sb_val *v = cell(st, row, col);
	return v->t == SB_TEXT ? (const char *)v->p : "";
}

const uint8_t *sb_blob(const struct sb_stmt *st, size_t row, size_t col, size_t *len)
{
	const struct sb_val *v = cell(st, row, col);
	if (v->t != SB_BLOB && v->t != SB_TEXT) {
		*len = 0;
		return NULL;
	}
	*len = v->len;
	return v->p;
}

void sb_copy(const struct sb_stmt *st, size_t row, size_t col, char *dst, size_t cap)
{
	otp_text_clean(dst, cap, sb_str(st, row, col));
}

void sb_text_clean(char *out, size_t cap, const char *in)
{
	otp_text_clean(out, cap, in);
}

/* ---- shared small things ----------------------------------------------------------------- */

static bool channel_ok(int ch)
{
	return ch >= 0 && ch < OTP_CH_COUNT;
}

/* Text the store keeps: valid UTF-8, no control characters, at most max bytes. */
static bool text_ok(const char *s, size_t max, bool empty_ok)
{
	if (s == NULL)
		return false;
	size_t n = strnlen(s, max + 1);
	return n <= max && (empty_ok || n > 0) && otp_utf8_valid(s, n) && !otp_has_control(s, false);
}

static bool opt_text_ok(const char *s, size_t max)
{
	return s == NULL || text_ok(s, max, true);
}

/* A fallback route: "channel:target" lines, newline-separated. */
static bool route_ok(const char *s)
{
	size_t n = s != NULL ? strnlen(s, STORE_ROUTE_MAX) : 0;
	return s == NULL ||
	       (n < STORE_ROUTE_MAX && otp_utf8_valid(s, n) && !otp_has_control(s, true));
}

static bool target_ok(const char *t)
{
	return text_ok(t, OTP_TARGET_MAX, false);
}

static bool id_ok(const char *id)
{
	return text_ok(id, STORE_ID_MAX - 1, false);
}

/* app_id of a scoped operation: "" is the compat dialect's scope. */
static bool app_ok(const char *app)
{
	return text_ok(app, STORE_ID_MAX - 1, true);
}

/* FNV-1a of (tag, channel, app, s): the key of a transaction-scoped advisory lock. Equal
 * inputs give equal keys in every process; a collision only serialises two unrelated
 * requests. */
static int64_t lock_key(char tag, int ch, const char *app, const char *s)
{
	uint64_t h = UINT64_C(14695981039346656037);
	const unsigned char head[4] = {'o', (unsigned char)tag, (unsigned char)ch, '|'};
	for (size_t i = 0; i < sizeof head; i++) {
		h ^= head[i];
		h *= UINT64_C(1099511628211);
	}
	for (int part = 0; part < 2; part++) {
		const unsigned char *p = (const unsigned char *)(part == 0 ? app : s);
		for (; p != NULL && *p; p++) {
			h ^= *p;
			h *= UINT64_C(1099511628211);
		}
		h ^= '|';
		h *= UINT64_C(1099511628211);
	}
	int64_t k;
	memcpy(&k, &h, sizeof k);
	return k;
}

static void vf_read(const struct sb_stmt *st, size_t r, struct store_verification *v)
{
	memset(v, 0, sizeof *v);
	v->id = sb_int(st, r, 0);
	sb_copy(st, r, 1, v->public_id, sizeof v->public_id);
	sb_copy(st, r, 2, v->app_id, sizeof v->app_id);
	int64_t ch = sb_int(st, r, 3), cur = sb_int(st, r, 5), status = sb_int(st, r, 7);
	v->channel = channel_ok((int)ch) ? (enum otp_channel)ch : OTP_CH_SMS;
	sb_copy(st, r, 4, v->target, sizeof v->target);
	v->cur_channel = channel_ok((int)cur) ? (enum otp_channel)cur : v->channel;
	sb_copy(st, r, 6, v->cur_target, sizeof v->cur_target);
	v->status = status >= 0 && status < OTP_VS_COUNT ? (enum otp_vstatus)status
	                                                 : OTP_VS_FAILED;
	v->attempts = (int)sb_int(st, r, 8);
	v->max_attempts = (int)sb_int(st, r, 9);
	v->sends = (int)sb_int(st, r, 10);
	v->max_sends = (int)sb_int(st, r, 11);
	v->resend_cooldown = (int)sb_int(st, r, 12);
	v->consume = sb_int(st, r, 13) != 0;
	v->has_sealed_code = sb_int(st, r, 14) != 0;
	v->created_at = sb_int(st, r, 15);
	v->updated_at = sb_int(st, r, 16);
	v->expire_at = sb_int(st, r, 17);
	v->last_sent_at = sb_int(st, r, 18);
	sb_copy(st, r, 19, v->ip, sizeof v->ip);
	sb_copy(st, r, 20, v->lang, sizeof v->lang);
	sb_copy(st, r, 21, v->sender, sizeof v->sender);
	sb_copy(st, r, 22, v->fallback, sizeof v->fallback);
}

/* The rules of a step's SQ_RULES_COUNTED (kind, minutes, rate, count). */
static int rules_read(const struct sb_stmt *st, struct otp_limit_rule *rules, int64_t *counts,
                      size_t *n, bool *ip_rules)
{
	*n = 0;
	*ip_rules = false;
	if (st->rows > 2 * OTP_LIMIT_RULES_MAX)
		return OTP_ERR_STORE; /* store_rules_replace never stores more */
	for (size_t i = 0; i < st->rows; i++) {
		int64_t kind = sb_int(st, i, 0), minutes = sb_int(st, i, 1), rate = sb_int(st, i, 2);
		if ((kind != 0 && kind != 1) || minutes < 1 || minutes > OTP_LIMIT_MINUTES_MAX ||
		    rate < 0 || rate > OTP_LIMIT_RATE_MAX)
			return OTP_ERR_STORE;
		rules[i].kind = kind == 1 ? OTP_LIMIT_IP : OTP_LIMIT_TARGET;
		rules[i].minutes = (int)minutes;
		rules[i].rate = (int)rate;
		if (counts != NULL)
			counts[i] = sb_int(st, i, 3);
		*ip_rules = *ip_rules || rules[i].kind == OTP_LIMIT_IP;
	}
	*n = st->rows;
	return 0;
}

/* A send without an ip is no ip's send: the ip rules do not apply to it, not even one
 * of rate 0 (which forbids every send from an ip). */
static void rules_drop_ip(struct otp_limit_rule *rules, int64_t *counts, size_t *n)
{
	size_t k = 0;
	for (size_t i = 0; i < *n; i++) {
		if (rules[i].kind == OTP_LIMIT_IP)
			continue;
		rules[k] = rules[i];
		counts[k++] = counts[i];
	}
	*n = k;
}

static void stmt_lock2(struct sb_stmt *st, const char *app, enum otp_channel ch,
                       const char *target, const char *ip)
{
	sb_stmt_init(st, SQ_LOCK2);
	sb_arg_int(st, lock_key('t', ch, app, target));
	if (ip != NULL)
		sb_arg_int(st, lock_key('i', ch, app, ip));
	else
		sb_arg_text(st, NULL);
	sb_arg_text(st, app);
	sb_arg_int(st, ch);
}

static void stmt_rules_counted(struct sb_stmt *st, const char *app, enum otp_channel ch,
                               const char *target, const char *ip, int64_t now)
{
	sb_stmt_init(st, SQ_RULES_COUNTED);
	sb_arg_text(st, app);
	sb_arg_int(st, ch);
	sb_arg_text(st, target);
	sb_arg_text(st, ip);
	sb_arg_int(st, now);
}

static void stmt_event(struct sb_stmt *st, const char *public_id, const char *app, int type,
                       enum otp_channel ch, const char *target, const char *ip,
                       const char *detail, int64_t now)
{
	sb_stmt_init(st, SQ_EV_INSERT);
	sb_arg_text(st, public_id);
	sb_arg_text(st, app);
	sb_arg_int(st, type);
	sb_arg_int(st, ch);
	sb_arg_text(st, target);
	sb_arg_text(st, ip);
	sb_arg_text(st, detail);
	sb_arg_int(st, now);
}

static void stmt_job(struct sb_stmt *st, const char *public_id, enum otp_channel ch,
                     const char *provider, bool skip, const uint8_t *payload, size_t len,
                     int64_t now, const char *request_id)
{
	sb_stmt_init(st, SQ_JOB_INSERT);
	sb_arg_text(st, public_id);
	sb_arg_int(st, ch);
	sb_arg_text(st, provider);
	sb_arg_text(st, skip ? STORE_JOB_SKIPPED : STORE_JOB_PENDING);
	sb_arg_blob(st, skip ? NULL : payload, skip ? 0 : len);
	sb_arg_int(st, now);
	sb_arg_text(st, request_id);
}

static const char *refusal_detail(enum otp_limit_kind kind)
{
	return kind == OTP_LIMIT_IP ? "ip_limit" : "target_limit";
}

static int run(struct store *s, enum sb_mode mode, sb_txn_fn fn, void *arg)
{
	return s->ops->run(s, mode, fn, arg);
}

/* ---- start ----------------------------------------------------------------------------- */

enum outcome { OUT_OK, OUT_LIMIT, OUT_CONFLICT, OUT_IP_REQUIRED, OUT_NOT_FOUND };

struct start_ctx {
	const struct store_start *q;
	struct store_start_result *res;
	char request_id[128];
	enum outcome outcome;
};

static int start_replay(struct sb_tx *tx, struct start_ctx *x, const struct sb_stmt *idem)
{
	size_t len = 0;
	const uint8_t *fp = sb_blob(idem, 0, 0, &len);
	if (fp == NULL || len != OTP_HASH_LEN ||
	    sodium_memcmp(fp, x->q->idem_fingerprint, OTP_HASH_LEN) != 0) {
		x->outcome = OUT_CONFLICT;
		return 0;
	}
	struct sb_stmt get;
	sb_stmt_init(&get, SQ_VF_GET);
	sb_arg_text(&get, x->q->app_id);
	sb_arg_text(&get, sb_str(idem, 0, 1));
	int rc = sb_exec(tx, &get, 1, SB_LAST);
	if (rc != 0)
		return rc;
	if (get.rows != 1) {
		/* the first verification was purged already: the key is as good as new, but a
		 * replay must not make a second one silently */
		x->outcome = OUT_CONFLICT;
		return 0;
	}
	vf_read(&get, 0, &x->res->v);
	x->res->replayed = true;
	return 0;
}

/* The verification start_txn writes, as store_vf_get would read it back. */
static void start_row(const struct store_start *q, int64_t id, struct store_verification *v)
{
	memset(v, 0, sizeof *v);
	v->id = id;
	snprintf(v->public_id, sizeof v->public_id, "%s", q->public_id);
	snprintf(v->app_id, sizeof v->app_id, "%s", q->app_id);
	v->channel = v->cur_channel = q->channel;
	snprintf(v->target, sizeof v->target, "%s", q->target);
	snprintf(v->cur_target, sizeof v->cur_target, "%s", q->target);
	v->status = OTP_VS_PENDING;
	v->max_attempts = q->max_attempts;
	v->sends = 1;
	v->max_sends = q->max_sends;
	v->resend_cooldown = q->resend_cooldown;
	v->consume = q->consume;
	v->has_sealed_code = q->sealed_code != NULL;
	v->created_at = v->updated_at = v->last_sent_at = q->now;
	v->expire_at = q->expire_at;
	snprintf(v->ip, sizeof v->ip, "%s", q->ip ? q->ip : "");
	snprintf(v->lang, sizeof v->lang, "%s", q->lang ? q->lang : "");
	snprintf(v->sender, sizeof v->sender, "%s", q->sender ? q->sender : "");
	snprintf(v->fallback, sizeof v->fallback, "%s", q->fallback ? q->fallback : "");
}

static int start_txn(struct sb_tx *tx, void *arg)
{
	struct start_ctx *x = arg;
	const struct store_start *q = x->q;
	struct store_start_result *res = x->res;
	struct sb_stmt s1[4], s2[4];
	size_t n1 = 0, n2 = 0;
	int rc;

	memset(res, 0, sizeof *res);
	x->outcome = OUT_OK;
	if (q->idem_key != NULL) {
		sb_stmt_init(&s1[n1], SQ_LOCK);
		sb_arg_int(&s1[n1++], lock_key('k', 0, q->app_id, q->idem_key));
		sb_stmt_init(&s1[n1], SQ_IDEM_GET);
		sb_arg_text(&s1[n1], q->app_id);
		sb_arg_text(&s1[n1], q->idem_key);
		sb_arg_int(&s1[n1++], q->idem_since);
	}
	stmt_lock2(&s1[n1++], q->app_id, q->channel, q->target, q->ip);
	size_t rules_at = n1;
	stmt_rules_counted(&s1[n1++], q->app_id, q->channel, q->target, q->ip, q->now);
	if ((rc = sb_exec(tx, s1, n1, 0)) != 0)
		return rc;
	if (q->idem_key != NULL && s1[1].rows > 0)
		return start_replay(tx, x, &s1[1]);

	struct otp_limit_rule rules[2 * OTP_LIMIT_RULES_MAX];
	int64_t counts[2 * OTP_LIMIT_RULES_MAX];
	size_t n = 0;
	bool ip_rules = false;
	if ((rc = rules_read(&s1[rules_at], rules, counts, &n, &ip_rules)) != 0)
		return rc;
	if (ip_rules && q->require_ip && q->ip == NULL) {
		res->ip_required = true;
		x->outcome = OUT_IP_REQUIRED;
		return OTP_ERR_INVALID; /* a bad request: nothing is recorded */
	}
	if (q->ip == NULL)
		rules_drop_ip(rules, counts, &n);
	int refused = otp_limits_decide(rules, counts, n);
	if (refused >= 0) {
		res->refused_by = rules[refused];
		x->outcome = OUT_LIMIT;
		stmt_event(&s2[0], NULL, q->app_id, OTP_EV_REFUSED, q->channel, q->target, q->ip,
		           refusal_detail(rules[refused].kind), q->now);
		return sb_exec(tx, s2, 1, SB_LAST);
	}

	struct sb_stmt *ins = &s2[n2++];
	sb_stmt_init(ins, SQ_VF_INSERT);
	sb_arg_text(ins, q->public_id);
	sb_arg_text(ins, q->app_id);
	sb_arg_int(ins, q->channel);
	sb_arg_text(ins, q->target);
	sb_arg_blob(ins, q->code_hash, OTP_HASH_LEN);
	sb_arg_blob(ins, q->lookup_hash, OTP_HASH_LEN);
	sb_arg_blob(ins, q->sealed_code, q->sealed_code_len);
	sb_arg_text(ins, q->ip);
	sb_arg_int(ins, q->max_attempts);
	sb_arg_int(ins, q->max_sends);
	sb_arg_int(ins, q->resend_cooldown);
	sb_arg_int(ins, q->consume ? 1 : 0);
	sb_arg_text(ins, q->tmpl);
	sb_arg_text(ins, q->lang);
	sb_arg_text(ins, q->sender);
	sb_arg_text(ins, q->fallback);
	sb_arg_int(ins, q->now);
	sb_arg_int(ins, q->expire_at);
	stmt_job(&s2[n2++], q->public_id, q->channel, q->provider, q->skip, q->payload,
	         q->payload_len, q->now, q->request_id ? x->request_id : NULL);
	stmt_event(&s2[n2++], q->public_id, q->app_id, OTP_EV_CREATED, q->channel, q->target,
	           q->ip, q->skip ? "skipped" : q->provider, q->now);
	if (q->idem_key != NULL) {
		struct sb_stmt *idem = &s2[n2++];
		sb_stmt_init(idem, SQ_IDEM_INSERT);
		sb_arg_text(idem, q->app_id);
		sb_arg_text(idem, q->idem_key);
		sb_arg_blob(idem, q->idem_fingerprint, OTP_HASH_LEN);
		sb_arg_text(idem, q->public_id);
		sb_arg_int(idem, q->now);
	}
	if ((rc = sb_exec(tx, s2, n2, SB_LAST)) != 0)
		return rc;
	if (s2[0].rows != 1 || s2[1].rows != 1)
		return OTP_ERR_STORE;
	/* the row as written, from the request (the insert returns only its id) */
	start_row(q, sb_int(&s2[0], 0, 0), &res->v);
	res->job_id = sb_int(&s2[1], 0, 0);
	return 0;
}

int store_vf_start(struct store *s, const struct store_start *q, struct store_start_result *res)
{
	if (q == NULL || res == NULL)
		return OTP_ERR_INVALID;
	memset(res, 0, sizeof *res);
	if (!app_ok(q->app_id) || !id_ok(q->public_id) || !channel_ok((int)q->channel) ||
	    !target_ok(q->target) || !opt_text_ok(q->ip, STORE_IP_MAX) ||
	    (q->ip != NULL && q->ip[0] == '\0') ||
	    !text_ok(q->provider, STORE_PROVIDER_MAX - 1, false) ||
	    (!q->skip && (q->payload == NULL || q->payload_len == 0)) ||
	    (q->sealed_code != NULL && q->sealed_code_len == 0) ||
	    !opt_text_ok(q->lang, STORE_LANG_MAX - 1) || !opt_text_ok(q->sender, STORE_SENDER_MAX - 1) ||
	    !route_ok(q->fallback) ||
	    (q->tmpl != NULL && (strnlen(q->tmpl, STORE_TEMPLATE_MAX) >= STORE_TEMPLATE_MAX ||
	                         !otp_utf8_valid(q->tmpl, strlen(q->tmpl)))) ||
	    (q->idem_key != NULL && !text_ok(q->idem_key, 255, false)) ||
	    q->max_attempts < 0 || q->max_sends < 1 || q->resend_cooldown < 0 ||
	    q->expire_at <= q->now)
		return OTP_ERR_INVALID;
	struct start_ctx x = {.q = q, .res = res};
	sb_text_clean(x.request_id, sizeof x.request_id, q->request_id);
	int rc = run(s, SB_WRITE, start_txn, &x);
	if (rc == OTP_ERR_INVALID && x.outcome == OUT_IP_REQUIRED) {
		memset(res, 0, sizeof *res);
		res->ip_required = true;
		return OTP_ERR_INVALID;
	}
	if (rc != 0) {
		memset(res, 0, sizeof *res);
		return rc;
	}
	if (x.outcome == OUT_LIMIT)
		return OTP_ERR_LIMIT;
	if (x.outcome == OUT_CONFLICT)
		return OTP_ERR_CONFLICT;
	return 0;
}

/* ---- check ----------------------------------------------------------------------------- */

struct check_ctx {
	const struct store_check *q;
	struct store_check_result *res;
	bool need_write;      /* the read pass found an outcome that changes rows */
	struct otp_candidate cands[STORE_CANDIDATES_MAX];
};

static void stmt_candidates(struct sb_stmt *st, const struct store_check *q, bool locked)
{
	switch (q->by) {
	case STORE_CHECK_ID:
		sb_stmt_init(st, locked ? SQ_VF_LOCKED_ID : SQ_VF_CANDIDATES_ID);
		sb_arg_text(st, q->app_id);
		sb_arg_text(st, q->public_id);
		return;
	case STORE_CHECK_LOOKUP:
		sb_stmt_init(st, locked ? SQ_VF_LOCKED_LOOKUP : SQ_VF_CANDIDATES_LOOKUP);
		sb_arg_text(st, q->app_id);
		sb_arg_int(st, q->channel);
		sb_arg_blob(st, q->lookup_hash, OTP_HASH_LEN);
		sb_arg_int(st, q->now);
		return;
	case STORE_CHECK_TARGET:
	case STORE_CHECK_LATEST:
		break;
	}
	sb_stmt_init(st, locked ? SQ_VF_LOCKED_TARGET : SQ_VF_CANDIDATES_TARGET);
	sb_arg_text(st, q->app_id);
	sb_arg_text(st, q->target);
	for (int ch = 0; ch < OTP_CH_COUNT; ch++)
		sb_arg_int(st, (q->channel_mask & OTP_CH_BIT(ch)) ? ch : -1);
	sb_arg_int(st, q->now);
	sb_arg_int(st, q->by == STORE_CHECK_LATEST ? 1 : STORE_CANDIDATES_MAX);
}

/* Whether a candidate's code still erases its sealed copy after the decision. */
static bool ends(enum otp_vstatus status, bool consume)
{
	return status != OTP_VS_PENDING && !(status == OTP_VS_APPROVED && !consume);
}

static int check_txn(struct sb_tx *tx, void *arg)
{
	struct check_ctx *x = arg;
	const struct store_check *q = x->q;
	struct store_check_result *res = x->res;
	bool locked = tx->mode != SB_READ;
	struct sb_stmt s1;
	int rc;

	memset(res, 0, sizeof *res);
	x->need_write = false;
	stmt_candidates(&s1, q, locked);
	if ((rc = sb_exec(tx, &s1, 1, locked ? 0 : SB_LAST)) != 0)
		return rc;
	size_t n = s1.rows < STORE_CANDIDATES_MAX ? s1.rows : STORE_CANDIDATES_MAX;
	if (q->by == STORE_CHECK_ID) {
		if (s1.rows == 0)
			return 0;
		res->found = true;
		vf_read(&s1, 0, &res->v);
		if (!otp_verification_live(res->v.status, res->v.consume, res->v.expire_at, q->now))
			return 0; /* nothing to guard: answered by its status */
	}
	struct store_verification v;
	for (size_t i = 0; i < n; i++) {
		struct otp_candidate *c = &x->cands[i];
		size_t len = 0;
		const uint8_t *h = sb_blob(&s1, i, SB_VF_NCOLS - 1, &len);
		vf_read(&s1, i, &v);
		memset(c, 0, sizeof *c);
		c->id = v.id;
		if (h == NULL || len != OTP_HASH_LEN)
			return OTP_ERR_STORE;
		memcpy(c->hash, h, OTP_HASH_LEN);
		otp_code_hash(q->key, v.channel, v.target, q->code, c->presented);
		c->status = v.status;
		c->attempts = v.attempts;
		c->max_attempts = v.max_attempts;
		c->consume = v.consume;
	}
	if (n == 0) {
		/* as much work as a check of one code: timing does not tell whether any exists */
		uint8_t scratch[OTP_HASH_LEN];
		otp_code_hash(q->key, q->channel, q->target ? q->target : "", q->code, scratch);
		sodium_memzero(scratch, sizeof scratch);
		return 0;
	}
	res->found = true;
	struct otp_check_outcome out;
	otp_check_decide(x->cands, n, &out);
	size_t shown = out.ok ? out.matched : 0;
	vf_read(&s1, shown, &res->v);
	res->v.attempts = x->cands[shown].new_attempts;
	res->v.status = x->cands[shown].new_status;
	res->v.updated_at = x->cands[shown].write ? q->now : res->v.updated_at;
	for (size_t i = 0; i < n; i++)
		sodium_memzero(x->cands[i].presented, OTP_HASH_LEN);
	if (!out.any_write) {
		res->ok = out.ok;
		return 0;
	}
	if (!locked) {
		x->need_write = true;
		return 0;
	}

	/* the writes: each changed candidate and its event, then COMMIT */
	struct sb_stmt s2[2 * STORE_CANDIDATES_MAX];
	size_t n2 = 0;
	for (size_t i = 0; i < n; i++) {
		const struct otp_candidate *c = &x->cands[i];
		if (!c->write)
			continue;
		vf_read(&s1, i, &v);
		struct sb_stmt *up = &s2[n2++];
		sb_stmt_init(up, SQ_VF_SET_CHECKED);
		sb_arg_int(up, c->id);
		sb_arg_int(up, c->new_attempts);
		sb_arg_int(up, c->new_status);
		sb_arg_int(up, q->now);
		sb_arg_int(up, ends(c->new_status, c->consume) ? 1 : 0);
		/* the text parameters point into s1's cells (alive until the transaction ends),
		 * not into v, which the next candidate overwrites before the step runs */
		stmt_event(&s2[n2++], sb_str(&s1, i, 1), sb_str(&s1, i, 2), c->event, v.channel,
		           sb_str(&s1, i, 4), q->ip, NULL, q->now);
	}
	if ((rc = sb_exec(tx, s2, n2, SB_LAST)) != 0)
		return rc;
	res->ok = out.ok;
	return 0;
}

int store_vf_check(struct store *s, const struct store_check *q, struct store_check_result *res)
{
	if (res == NULL)
		return OTP_ERR_INVALID;
	memset(res, 0, sizeof *res);
	if (q == NULL || q->key == NULL || q->code == NULL || q->code[0] == '\0' ||
	    strnlen(q->code, OTP_CODE_MAX + 1) > OTP_CODE_MAX || !opt_text_ok(q->ip, STORE_IP_MAX))
		return OTP_ERR_INVALID;
	switch (q->by) {
	case STORE_CHECK_ID:
		if ((q->app_id != NULL && !app_ok(q->app_id)) || !id_ok(q->public_id))
			return OTP_ERR_INVALID;
		break;
	case STORE_CHECK_TARGET:
	case STORE_CHECK_LATEST: {
		const unsigned all = OTP_CH_BIT(OTP_CH_COUNT) - 1u;
		if (!app_ok(q->app_id) || !target_ok(q->target) || q->channel_mask == 0 ||
		    (q->channel_mask & ~all) != 0)
			return OTP_ERR_INVALID;
		break;
	}
	case STORE_CHECK_LOOKUP:
		/* finding a code by its value alone is compat's GET /target only */
		if (q->app_id == NULL || q->app_id[0] != '\0' || !channel_ok((int)q->channel))
			return OTP_ERR_INVALID;
		break;
	default:
		return OTP_ERR_INVALID;
	}
	struct check_ctx *x = calloc(1, sizeof *x);
	if (x == NULL)
		return OTP_ERR_NOMEM;
	x->q = q;
	x->res = res;
	/* decide on a snapshot; write (deciding again under the lock) only when needed */
	int rc = run(s, SB_READ, check_txn, x);
	if (rc == 0 && x->need_write)
		rc = run(s, SB_WRITE, check_txn, x);
	sodium_memzero(x, sizeof *x);
	free(x);
	if (rc != 0)
		memset(res, 0, sizeof *res);
	return rc;
}

/* ---- resend ---------------------------------------------------------------------------- */

struct resend_ctx {
	const struct store_resend *q;
	struct store_resend_result *res;
	char request_id[128];
	enum outcome outcome;
};

static void stmt_locked_id(struct sb_stmt *st, const char *app, const char *public_id)
{
	sb_stmt_init(st, SQ_VF_LOCKED_ID);
	sb_arg_text(st, app);
	sb_arg_text(st, public_id);
}

static int resend_refuse(struct sb_tx *tx, struct resend_ctx *x, enum store_resend_refusal why,
                         const char *detail)
{
	const struct store_resend *q = x->q;
	struct sb_stmt ev;
	x->res->refusal = why;
	x->outcome = why == STORE_RESEND_LIMIT ? OUT_LIMIT : OUT_CONFLICT;
	stmt_event(&ev, x->res->v.public_id, x->res->v.app_id, OTP_EV_REFUSED, q->channel,
	           q->target, q->ip, detail, q->now);
	return sb_exec(tx, &ev, 1, SB_LAST);
}

static int resend_txn(struct sb_tx *tx, void *arg)
{
	struct resend_ctx *x = arg;
	const struct store_resend *q = x->q;
	struct store_resend_result *res = x->res;
	struct sb_stmt s1[3], s2[3];
	int rc;

	memset(res, 0, sizeof *res);
	x->outcome = OUT_OK;
	stmt_locked_id(&s1[0], q->app_id, q->public_id);
	if ((rc = sb_exec(tx, s1, 1, 0)) != 0)
		return rc;
	if (s1[0].rows == 0) {
		x->outcome = OUT_NOT_FOUND;
		return 0;
	}
	struct store_verification *v = &res->v;
	vf_read(&s1[0], 0, v);
	if (otp_vstatus_at(v->status, v->expire_at, q->now) != OTP_VS_PENDING) {
		res->refusal = STORE_RESEND_NOT_PENDING;
		x->outcome = OUT_CONFLICT;
		return 0;
	}
	if (v->sends != q->expect_sends) {
		x->outcome = OUT_CONFLICT; /* another resend came first */
		return 0;
	}
	if (v->sends >= v->max_sends)
		return resend_refuse(tx, x, STORE_RESEND_MAX_SENDS, "max_sends");
	if (q->now < v->last_sent_at + v->resend_cooldown) {
		res->retry_at = v->last_sent_at + v->resend_cooldown;
		return resend_refuse(tx, x, STORE_RESEND_COOLDOWN, "cooldown");
	}
	stmt_lock2(&s1[1], v->app_id, q->channel, q->target, q->ip);
	stmt_rules_counted(&s1[2], v->app_id, q->channel, q->target, q->ip, q->now);
	if ((rc = sb_exec(tx, s1 + 1, 2, 0)) != 0)
		return rc;
	struct otp_limit_rule rules[2 * OTP_LIMIT_RULES_MAX];
	int64_t counts[2 * OTP_LIMIT_RULES_MAX];
	size_t n = 0;
	bool ip_rules;
	if ((rc = rules_read(&s1[2], rules, counts, &n, &ip_rules)) != 0)
		return rc;
	if (q->ip == NULL)
		rules_drop_ip(rules, counts, &n);
	int refused = otp_limits_decide(rules, counts, n);
	if (refused >= 0) {
		res->refused_by = rules[refused];
		return resend_refuse(tx, x, STORE_RESEND_LIMIT, refusal_detail(rules[refused].kind));
	}

	sb_stmt_init(&s2[0], SQ_VF_RESENT);
	sb_arg_int(&s2[0], v->id);
	sb_arg_int(&s2[0], q->channel);
	sb_arg_text(&s2[0], q->target);
	sb_arg_text(&s2[0], q->fallback);
	sb_arg_int(&s2[0], q->now);
	stmt_job(&s2[1], v->public_id, q->channel, q->provider, q->skip, q->payload,
	         q->payload_len, q->now, q->request_id ? x->request_id : NULL);
	stmt_event(&s2[2], v->public_id, v->app_id, OTP_EV_RESENT, q->channel, q->target, q->ip,
	           q->skip ? "skipped" : q->provider, q->now);
	if ((rc = sb_exec(tx, s2, 3, SB_LAST)) != 0)
		return rc;
	if (s2[0].rows != 1 || s2[1].rows != 1)
		return OTP_ERR_STORE;
	vf_read(&s2[0], 0, v);
	res->job_id = sb_int(&s2[1], 0, 0);
	return 0;
}

int store_vf_resend(struct store *s, const struct store_resend *q, struct store_resend_result *res)
{
	if (q == NULL || res == NULL)
		return OTP_ERR_INVALID;
	memset(res, 0, sizeof *res);
	if ((q->app_id != NULL && !app_ok(q->app_id)) || !id_ok(q->public_id) ||
	    !channel_ok((int)q->channel) || !target_ok(q->target) ||
	    !route_ok(q->fallback) || !opt_text_ok(q->ip, STORE_IP_MAX) ||
	    (q->ip != NULL && q->ip[0] == '\0') ||
	    !text_ok(q->provider, STORE_PROVIDER_MAX - 1, false) ||
	    (!q->skip && (q->payload == NULL || q->payload_len == 0)))
		return OTP_ERR_INVALID;
	struct resend_ctx x = {.q = q, .res = res};
	sb_text_clean(x.request_id, sizeof x.request_id, q->request_id);
	int rc = run(s, SB_WRITE, resend_txn, &x);
	if (rc != 0) {
		memset(res, 0, sizeof *res);
		return rc;
	}
	switch (x.outcome) {
	case OUT_NOT_FOUND: return OTP_ERR_NOT_FOUND;
	case OUT_LIMIT: return OTP_ERR_LIMIT;
	case OUT_CONFLICT: return OTP_ERR_CONFLICT;
	case OUT_OK:
	case OUT_IP_REQUIRED: break;
	}
	return 0;
}

/* ---- cancel, get, lists ------------------------------------------------------------------ */

struct vf_ctx {
	const char *app_id, *public_id;
	int64_t now;
	struct store_verification *v;
	enum outcome outcome;
};

static int cancel_txn(struct sb_tx *tx, void *arg)
{
	struct vf_ctx *x = arg;
	struct sb_stmt s1, s2[2];
	x->outcome = OUT_OK;
	stmt_locked_id(&s1, x->app_id, x->public_id);
	int rc = sb_exec(tx, &s1, 1, 0);
	if (rc != 0)
		return rc;
	if (s1.rows == 0) {
		x->outcome = OUT_NOT_FOUND;
		return 0;
	}
	vf_read(&s1, 0, x->v);
	if (otp_vstatus_at(x->v->status, x->v->expire_at, x->now) != OTP_VS_PENDING) {
		x->outcome = OUT_CONFLICT;
		return 0;
	}
	sb_stmt_init(&s2[0], SQ_VF_CANCEL);
	sb_arg_int(&s2[0], x->v->id);
	sb_arg_int(&s2[0], x->now);
	stmt_event(&s2[1], x->v->public_id, x->v->app_id, OTP_EV_CANCELED, x->v->cur_channel,
	           x->v->cur_target, NULL, NULL, x->now);
	if ((rc = sb_exec(tx, s2, 2, SB_LAST)) != 0)
		return rc;
	if (s2[0].rows != 1)
		return OTP_ERR_STORE;
	vf_read(&s2[0], 0, x->v);
	return 0;
}

static int vf_args_ok(const char *app_id, const char *public_id)
{
	return (app_id == NULL || app_ok(app_id)) && id_ok(public_id);
}

int store_vf_cancel(struct store *s, const char *app_id, const char *public_id, int64_t now,
                    struct store_verification *v)
{
	if (v == NULL)
		return OTP_ERR_INVALID;
	memset(v, 0, sizeof *v);
	if (!vf_args_ok(app_id, public_id))
		return OTP_ERR_INVALID;
	struct vf_ctx x = {.app_id = app_id, .public_id = public_id, .now = now, .v = v};
	int rc = run(s, SB_WRITE, cancel_txn, &x);
	if (rc != 0) {
		memset(v, 0, sizeof *v);
		return rc;
	}
	if (x.outcome == OUT_NOT_FOUND)
		return OTP_ERR_NOT_FOUND;
	return x.outcome == OUT_CONFLICT ? OTP_ERR_CONFLICT : 0;
}

static void stmt_get(struct sb_stmt *st, const char *app_id, const char *public_id)
{
	if (app_id == NULL) {
		sb_stmt_init(st, SQ_VF_GET_ANY);
	} else {
		sb_stmt_init(st, SQ_VF_GET);
		sb_arg_text(st, app_id);
	}
	sb_arg_text(st, public_id);
}

static int get_txn(struct sb_tx *tx, void *arg)
{
	struct vf_ctx *x = arg;
	struct sb_stmt st;
	x->outcome = OUT_OK;
	stmt_get(&st, x->app_id, x->public_id);
	int rc = sb_exec(tx, &st, 1, SB_LAST);
	if (rc != 0)
		return rc;
	if (st.rows == 0)
		x->outcome = OUT_NOT_FOUND;
	else
		vf_read(&st, 0, x->v);
	return 0;
}

int store_vf_get(struct store *s, const char *app_id, const char *public_id,
                 struct store_verification *v)
{
	if (v == NULL)
		return OTP_ERR_INVALID;
	memset(v, 0, sizeof *v);
	if (!vf_args_ok(app_id, public_id))
		return OTP_ERR_INVALID;
	struct vf_ctx x = {.app_id = app_id, .public_id = public_id, .v = v};
	int rc = run(s, SB_READ, get_txn, &x);
	if (rc == 0 && x.outcome == OUT_NOT_FOUND)
		rc = OTP_ERR_NOT_FOUND;
	if (rc != 0)
		memset(v, 0, sizeof *v);
	return rc;
}

/* A malloc'd copy of a blob cell (NULL for SQL NULL or an empty blob). */
static int blob_dup(const struct sb_stmt *st, size_t row, size_t col, uint8_t **out,
                    size_t *len)
{
	size_t n = 0;
	const uint8_t *p = sb_blob(st, row, col, &n);
	*out = NULL;
	*len = 0;
	if (p == NULL || n == 0)
		return 0;
	if ((*out = malloc(n)) == NULL)
		return OTP_ERR_NOMEM;
	memcpy(*out, p, n);
	*len = n;
	return 0;
}

struct sealed_ctx {
	const char *app_id, *key;   /* key: public id, or target (latest) */
	int64_t now;
	bool latest;
	uint8_t *sealed;
	size_t len;
	char *tmpl;
	size_t tmpl_cap;
	bool found;
};

static int sealed_txn(struct sb_tx *tx, void *arg)
{
	struct sealed_ctx *x = arg;
	struct sb_stmt st;
	free(x->sealed);
	x->sealed = NULL;
	x->len = 0;
	x->found = false;
	if (x->latest) {
		sb_stmt_init(&st, SQ_VF_SEALED_LATEST);
		sb_arg_text(&st, x->app_id);
		sb_arg_text(&st, x->key);
		sb_arg_int(&st, x->now);
	} else if (x->app_id == NULL) {
		sb_stmt_init(&st, SQ_VF_MATERIAL_ANY);
		sb_arg_text(&st, x->key);
	} else {
		sb_stmt_init(&st, SQ_VF_MATERIAL);
		sb_arg_text(&st, x->app_id);
		sb_arg_text(&st, x->key);
	}
	int rc = sb_exec(tx, &st, 1, SB_LAST);
	if (rc != 0 || st.rows == 0)
		return rc;
	x->found = true;
	if (x->tmpl != NULL)
		sb_copy(&st, 0, 1, x->tmpl, x->tmpl_cap);
	return blob_dup(&st, 0, 0, &x->sealed, &x->len);
}

int store_vf_material(struct store *s, const char *app_id, const char *public_id,
                      uint8_t **sealed, size_t *len, char *tmpl, size_t tmpl_cap)
{
	if (sealed == NULL || len == NULL || tmpl == NULL || tmpl_cap == 0)
		return OTP_ERR_INVALID;
	*sealed = NULL;
	*len = 0;
	tmpl[0] = '\0';
	if (!vf_args_ok(app_id, public_id))
		return OTP_ERR_INVALID;
	struct sealed_ctx x = {.app_id = app_id, .key = public_id, .tmpl = tmpl,
	                       .tmpl_cap = tmpl_cap};
	int rc = run(s, SB_READ, sealed_txn, &x);
	if (rc == 0 && !x.found)
		rc = OTP_ERR_NOT_FOUND;
	if (rc != 0) {
		free(x.sealed);
		tmpl[0] = '\0';
		return rc;
	}
	*sealed = x.sealed;
	*len = x.len;
	return 0;
}

int store_vf_sealed_latest(struct store *s, const char *app_id, const char *target,
                           int64_t now, uint8_t **sealed, size_t *len)
{
	if (sealed == NULL || len == NULL)
		return OTP_ERR_INVALID;
	*sealed = NULL;
	*len = 0;
	if (!app_ok(app_id) || !target_ok(target))
		return OTP_ERR_INVALID;
	struct sealed_ctx x = {.app_id = app_id, .key = target, .now = now, .latest = true};
	int rc = run(s, SB_READ, sealed_txn, &x);
	if (rc == 0 && x.sealed == NULL)
		rc = OTP_ERR_NOT_FOUND;
	if (rc != 0) {
		free(x.sealed);
		return rc;
	}
	*sealed = x.sealed;
	*len = x.len;
	return 0;
}

struct list_ctx {
	struct sb_stmt st;
	size_t limit;
	void *rows;
	size_t n;
	bool events;
};

static int list_txn(struct sb_tx *tx, void *arg)
{
	struct list_ctx *x = arg;
	x->n = 0;
	int rc = sb_exec(tx, &x->st, 1, SB_LAST);
	if (rc != 0)
		return rc;
	for (size_t i = 0; i < x->st.rows && i < x->limit; i++) {
		if (!x->events) {
			vf_read(&x->st, i, &((struct store_verification *)x->rows)[i]);
		} else {
			struct store_event *e = &((struct store_event *)x->rows)[i];
			memset(e, 0, sizeof *e);
			e->id = sb_int(&x->st, i, 0);
			e->type = (int)sb_int(&x->st, i, 1);
			sb_copy(&x->st, i, 2, e->public_id, sizeof e->public_id);
			sb_copy(&x->st, i, 3, e->app_id, sizeof e->app_id);
			int64_t ch = sb_int(&x->st, i, 4);
			e->channel = channel_ok((int)ch) ? (enum otp_channel)ch : OTP_CH_SMS;
			sb_copy(&x->st, i, 5, e->target, sizeof e->target);
			sb_copy(&x->st, i, 6, e->ip, sizeof e->ip);
			sb_copy(&x->st, i, 7, e->detail, sizeof e->detail);
			e->created_at = sb_int(&x->st, i, 8);
		}
		x->n = i + 1;
	}
	return 0;
}

int store_vf_list(struct store *s, const struct store_vf_filter *f,
                  struct store_verification *rows, size_t *n)
{
	if (n == NULL)
		return OTP_ERR_INVALID;
	*n = 0;
	if (f == NULL || rows == NULL || f->limit < 1 || f->limit > STORE_LIST_MAX ||
	    (f->app_id != NULL && !app_ok(f->app_id)) || (f->target != NULL && !target_ok(f->target)) ||
	    f->channel < -1 || f->channel >= OTP_CH_COUNT || f->status < -1 ||
	    f->status >= OTP_VS_COUNT || f->before_id < 0)
		return OTP_ERR_INVALID;
	struct list_ctx x = {.limit = f->limit, .rows = rows};
	sb_stmt_init(&x.st, SQ_VF_LIST);
	sb_arg_text(&x.st, f->app_id);
	sb_arg_text(&x.st, f->target);
	sb_arg_int(&x.st, f->channel);
	sb_arg_int(&x.st, f->status);
	sb_arg_int(&x.st, f->since);
	sb_arg_int(&x.st, f->until);
	sb_arg_int(&x.st, f->before_id);
	sb_arg_int(&x.st, (int64_t)f->limit);
	int rc = run(s, SB_READ, list_txn, &x);
	*n = rc == 0 ? x.n : 0;
	return rc;
}

int store_events_list(struct store *s, const struct store_event_filter *f,
                      struct store_event *rows, size_t *n)
{
	if (n == NULL)
		return OTP_ERR_INVALID;
	*n = 0;
	if (f == NULL || rows == NULL || f->limit < 1 || f->limit > STORE_LIST_MAX ||
	    (f->app_id != NULL && !app_ok(f->app_id)) ||
	    (f->public_id != NULL && !id_ok(f->public_id)) ||
	    (f->target != NULL && !target_ok(f->target)) || f->channel < -1 ||
	    f->channel >= OTP_CH_COUNT || f->type < 0 || f->type > OTP_EV_MAX || f->before_id < 0)
		return OTP_ERR_INVALID;
	struct list_ctx x = {.limit = f->limit, .rows = rows, .events = true};
	sb_stmt_init(&x.st, SQ_EV_LIST);
	sb_arg_text(&x.st, f->app_id);
	sb_arg_text(&x.st, f->public_id);
	sb_arg_text(&x.st, f->target);
	sb_arg_int(&x.st, f->channel);
	sb_arg_int(&x.st, f->type);
	sb_arg_int(&x.st, f->since);
	sb_arg_int(&x.st, f->until);
	sb_arg_int(&x.st, f->before_id);
	sb_arg_int(&x.st, (int64_t)f->limit);
	int rc = run(s, SB_READ, list_txn, &x);
	*n = rc == 0 ? x.n : 0;
	return rc;
}

/* ---- send-limit rules -------------------------------------------------------------------- */

struct rules_ctx {
	const char *app_id;
	enum otp_channel ch;
	const bool *kinds;
	const struct otp_limit_rule *rules;
	size_t n;
	struct store_limits *out;
};

static int rules_replace_txn(struct sb_tx *tx, void *arg)
{
	struct rules_ctx *x = arg;
	struct sb_stmt st[2 + 2 * OTP_LIMIT_RULES_MAX + 1];
	size_t n = 0;
	/* two replacements of one channel's rules must not interleave their delete and
	 * insert (both sets would survive) */
	sb_stmt_init(&st[n], SQ_LOCK);
	sb_arg_int(&st[n++], lock_key('l', x->ch, x->app_id, ""));
	for (int kind = 0; kind < 2; kind++) {
		if (!x->kinds[kind])
			continue;
		sb_stmt_init(&st[n], SQ_RULES_DELETE);
		sb_arg_text(&st[n], x->app_id);
		sb_arg_int(&st[n], x->ch);
		sb_arg_int(&st[n++], kind);
	}
	/* new rules go after the ones kept: rules apply in the order they were set */
	for (size_t i = 0; i < x->n; i++) {
		sb_stmt_init(&st[n], SQ_RULES_INSERT);
		sb_arg_text(&st[n], x->app_id);
		sb_arg_int(&st[n], x->ch);
		sb_arg_int(&st[n], x->rules[i].kind);
		sb_arg_int(&st[n], x->rules[i].minutes);
		sb_arg_int(&st[n++], x->rules[i].rate);
	}
	return sb_exec(tx, st, n, SB_LAST);
}

int store_rules_replace(struct store *s, const char *app_id, enum otp_channel ch,
                        const bool kinds[2], const struct otp_limit_rule *rules, size_t n)
{
	size_t per_kind[2] = {0, 0};
	if (!app_ok(app_id) || !channel_ok((int)ch) || kinds == NULL || (n > 0 && rules == NULL) ||
	    n > 2 * OTP_LIMIT_RULES_MAX)
		return OTP_ERR_INVALID;
	for (size_t i = 0; i < n; i++) {
		const struct otp_limit_rule *r = &rules[i];
		if ((r->kind != OTP_LIMIT_TARGET && r->kind != OTP_LIMIT_IP) || !kinds[r->kind] ||
		    r->minutes < 1 || r->minutes > OTP_LIMIT_MINUTES_MAX || r->rate < 0 ||
		    r->rate > OTP_LIMIT_RATE_MAX || ++per_kind[r->kind] > OTP_LIMIT_RULES_MAX)
			return OTP_ERR_INVALID;
	}
	if (!kinds[0] && !kinds[1])
		return 0;
	struct rules_ctx x = {.app_id = app_id, .ch = ch, .kinds = kinds, .rules = rules, .n = n};
	return run(s, SB_WRITE, rules_replace_txn, &x);
}

static int rules_get_txn(struct sb_tx *tx, void *arg)
{
	struct rules_ctx *x = arg;
	struct sb_stmt st;
	bool ip_rules;
	x->out->n = 0;
	sb_stmt_init(&st, SQ_RULES);
	sb_arg_text(&st, x->app_id);
	sb_arg_int(&st, x->ch);
	int rc = sb_exec(tx, &st, 1, SB_LAST);
	if (rc == 0)
		rc = rules_read(&st, x->out->rules, NULL, &x->out->n, &ip_rules);
	return rc;
}

int store_rules_get(struct store *s, const char *app_id, enum otp_channel ch,
                    struct store_limits *out)
{
	if (out == NULL)
		return OTP_ERR_INVALID;
	out->n = 0;
	if (!app_ok(app_id) || !channel_ok((int)ch))
		return OTP_ERR_INVALID;
	struct rules_ctx x = {.app_id = app_id, .ch = ch, .out = out};
	int rc = run(s, SB_READ, rules_get_txn, &x);
	if (rc != 0)
		out->n = 0;
	return rc;
}

/* ---- apps and keys ------------------------------------------------------------------------ */

void store_app_fini(struct store_app *a)
{
	if (a == NULL)
		return;
	free(a->settings);
	memset(a, 0, sizeof *a);
}

struct app_ctx {
	const struct store_app *in;
	bool create;
	const char *id, *after;
	struct store_app *rows;
	size_t max, n;
	enum outcome outcome;
};

static int app_read(const struct sb_stmt *st, size_t r, struct store_app *a)
{
	memset(a, 0, sizeof *a);
	sb_copy(st, r, 0, a->id, sizeof a->id);
	sb_copy(st, r, 1, a->name, sizeof a->name);
	a->settings = strdup(sb_str(st, r, 2));
	a->created_at = sb_int(st, r, 3);
	a->updated_at = sb_int(st, r, 4);
	return a->settings != NULL ? 0 : OTP_ERR_NOMEM;
}

static int app_put_txn(struct sb_tx *tx, void *arg)
{
	struct app_ctx *x = arg;
	const struct store_app *a = x->in;
	struct sb_stmt st[2];
	x->outcome = OUT_OK;
	sb_stmt_init(&st[0], SQ_LOCK);
	sb_arg_int(&st[0], lock_key('a', 0, a->id, ""));
	sb_stmt_init(&st[1], SQ_APP_GET);
	sb_arg_text(&st[1], a->id);
	int rc = sb_exec(tx, st, 2, 0);
	if (rc != 0)
		return rc;
	if (x->create == (st[1].rows > 0)) {
		x->outcome = x->create ? OUT_CONFLICT : OUT_NOT_FOUND;
		return 0;
	}
	sb_stmt_init(&st[0], x->create ? SQ_APP_INSERT : SQ_APP_UPDATE);
	sb_arg_text(&st[0], a->id);
	sb_arg_text(&st[0], a->name);
	sb_arg_text(&st[0], a->settings);
	sb_arg_int(&st[0], x->create ? a->created_at : a->updated_at);
	return sb_exec(tx, st, 1, SB_LAST);
}

int store_app_put(struct store *s, const struct store_app *a, bool create)
{
	if (a == NULL || !id_ok(a->id) || !text_ok(a->name, STORE_NAME_MAX - 1, false) ||
	    a->settings == NULL || strnlen(a->settings, STORE_SETTINGS_MAX) >= STORE_SETTINGS_MAX ||
	    !otp_utf8_valid(a->settings, strlen(a->settings)))
		return OTP_ERR_INVALID;
	struct app_ctx x = {.in = a, .create = create};
	int rc = run(s, SB_WRITE, app_put_txn, &x);
	if (rc == 0 && x.outcome == OUT_CONFLICT)
		rc = OTP_ERR_CONFLICT;
	if (rc == 0 && x.outcome == OUT_NOT_FOUND)
		rc = OTP_ERR_NOT_FOUND;
	return rc;
}

static int app_get_txn(struct sb_tx *tx, void *arg)
{
	struct app_ctx *x = arg;
	struct sb_stmt st;
	x->n = 0;
	if (x->id != NULL) {
		sb_stmt_init(&st, SQ_APP_GET);
		sb_arg_text(&st, x->id);
	} else {
		sb_stmt_init(&st, SQ_APP_LIST);
		sb_arg_text(&st, x->after);
		sb_arg_int(&st, (int64_t)x->max);
	}
	int rc = sb_exec(tx, &st, 1, SB_LAST);
	for (size_t i = 0; rc == 0 && i < st.rows && i < x->max; i++) {
		store_app_fini(&x->rows[i]);
		rc = app_read(&st, i, &x->rows[i]);
		x->n = i + 1;
	}
	return rc;
}

int store_app_get(struct store *s, const char *id, struct store_app *out)
{
	if (out == NULL)
		return OTP_ERR_INVALID;
	memset(out, 0, sizeof *out);
	if (!id_ok(id))
		return OTP_ERR_INVALID;
	struct app_ctx x = {.id = id, .rows = out, .max = 1};
	int rc = run(s, SB_READ, app_get_txn, &x);
	if (rc == 0 && x.n == 0)
		rc = OTP_ERR_NOT_FOUND;
	if (rc != 0)
		store_app_fini(out);
	return rc;
}

int store_app_list(struct store *s, const char *after, struct store_app *rows, size_t max,
                   size_t *n)
{
	if (n == NULL)
		return OTP_ERR_INVALID;
	*n = 0;
	if (rows == NULL || max < 1 || max > STORE_LIST_MAX || after == NULL ||
	    !text_ok(after, STORE_ID_MAX - 1, true))
		return OTP_ERR_INVALID;
	memset(rows, 0, max * sizeof *rows);
	struct app_ctx x = {.after = after, .rows = rows, .max = max};
	int rc = run(s, SB_READ, app_get_txn, &x);
	if (rc != 0) {
		for (size_t i = 0; i < max; i++)
			store_app_fini(&rows[i]);
		return rc;
	}
	*n = x.n;
	return 0;
}

static int app_delete_txn(struct sb_tx *tx, void *arg)
{
	struct app_ctx *x = arg;
	struct sb_stmt st[2];
	x->outcome = OUT_OK;
	sb_stmt_init(&st[0], SQ_KEY_DELETE_APP);
	sb_arg_text(&st[0], x->id);
	sb_stmt_init(&st[1], SQ_APP_DELETE);
	sb_arg_text(&st[1], x->id);
	int rc = sb_exec(tx, st, 2, SB_LAST);
	if (rc == 0 && st[1].rows == 0) {
		x->outcome = OUT_NOT_FOUND;
		return OTP_ERR_NOT_FOUND; /* roll back: nothing to delete */
	}
	return rc;
}

int store_app_delete(struct store *s, const char *id)
{
	if (!id_ok(id))
		return OTP_ERR_INVALID;
	struct app_ctx x = {.id = id};
	return run(s, SB_WRITE, app_delete_txn, &x);
}

struct key_ctx {
	const struct store_key *in;
	const char *id, *app_id;
	int64_t now;
	struct store_key *rows;
	size_t max, n;
	enum outcome outcome;
};

static void key_read(const struct sb_stmt *st, size_t r, struct store_key *k)
{
	size_t len = 0;
	memset(k, 0, sizeof *k);
	sb_copy(st, r, 0, k->id, sizeof k->id);
	sb_copy(st, r, 1, k->app_id, sizeof k->app_id);
	const uint8_t *h = sb_blob(st, r, 2, &len);
	if (h != NULL && len == OTP_HASH_LEN)
		memcpy(k->secret_hash, h, OTP_HASH_LEN);
	sb_copy(st, r, 3, k->format, sizeof k->format);
	sb_copy(st, r, 4, k->name, sizeof k->name);
	k->created_at = sb_int(st, r, 5);
	k->revoked_at = sb_int(st, r, 6);
}

static int key_create_txn(struct sb_tx *tx, void *arg)
{
	struct key_ctx *x = arg;
	const struct store_key *k = x->in;
	struct sb_stmt st[2];
	x->outcome = OUT_OK;
	sb_stmt_init(&st[0], SQ_KEY_GET);
	sb_arg_text(&st[0], k->id);
	int n = 1;
	if (k->app_id[0] != '\0') {
		sb_stmt_init(&st[1], SQ_APP_GET);
		sb_arg_text(&st[1], k->app_id);
		n = 2;
	}
	int rc = sb_exec(tx, st, (size_t)n, 0);
	if (rc != 0)
		return rc;
	if (st[0].rows > 0) {
		x->outcome = OUT_CONFLICT;
		return 0;
	}
	if (n == 2 && st[1].rows == 0) {
		x->outcome = OUT_NOT_FOUND;
		return 0;
	}
	sb_stmt_init(&st[0], SQ_KEY_INSERT);
	sb_arg_text(&st[0], k->id);
	sb_arg_text(&st[0], k->app_id[0] ? k->app_id : NULL);
	sb_arg_blob(&st[0], k->secret_hash, OTP_HASH_LEN);
	sb_arg_text(&st[0], k->format);
	sb_arg_text(&st[0], k->name);
	sb_arg_int(&st[0], k->created_at);
	return sb_exec(tx, st, 1, SB_LAST);
}

int store_key_create(struct store *s, const struct store_key *k)
{
	if (k == NULL || !id_ok(k->id) || !app_ok(k->app_id) || !text_ok(k->format, 15, false) ||
	    !text_ok(k->name, STORE_NAME_MAX - 1, true))
		return OTP_ERR_INVALID;
	struct key_ctx x = {.in = k};
	int rc = run(s, SB_WRITE, key_create_txn, &x);
	if (rc == 0 && x.outcome == OUT_CONFLICT)
		rc = OTP_ERR_CONFLICT;
	if (rc == 0 && x.outcome == OUT_NOT_FOUND)
		rc = OTP_ERR_NOT_FOUND;
	return rc;
}

static int key_get_txn(struct sb_tx *tx, void *arg)
{
	struct key_ctx *x = arg;
	struct sb_stmt st;
	x->n = 0;
	if (x->id != NULL) {
		sb_stmt_init(&st, SQ_KEY_GET);
		sb_arg_text(&st, x->id);
	} else if (x->app_id != NULL) {
		sb_stmt_init(&st, SQ_KEY_LIST);
		sb_arg_text(&st, x->app_id[0] ? x->app_id : NULL);
		sb_arg_int(&st, (int64_t)x->max);
	} else {
		sb_stmt_init(&st, SQ_KEY_LIST_ALL);
		sb_arg_int(&st, (int64_t)x->max);
	}
	int rc = sb_exec(tx, &st, 1, SB_LAST);
	for (size_t i = 0; rc == 0 && i < st.rows && i < x->max; i++) {
		key_read(&st, i, &x->rows[i]);
		x->n = i + 1;
	}
	return rc;
}

int store_key_get(struct store *s, const char *id, struct store_key *out)
{
	if (out == NULL)
		return OTP_ERR_INVALID;
	memset(out, 0, sizeof *out);
	if (!id_ok(id))
		return OTP_ERR_INVALID;
	struct key_ctx x = {.id = id, .rows = out, .max = 1};
	int rc = run(s, SB_READ, key_get_txn, &x);
	if (rc == 0 && x.n == 0)
		rc = OTP_ERR_NOT_FOUND;
	if (rc != 0)
		memset(out, 0, sizeof *out);
	return rc;
}

int store_key_list(struct store *s, const char *app_id, struct store_key *rows, size_t max,
                   size_t *n)
{
	if (n == NULL)
		return OTP_ERR_INVALID;
	*n = 0;
	if (rows == NULL || max < 1 || max > STORE_LIST_MAX || (app_id != NULL && !app_ok(app_id)))
		return OTP_ERR_INVALID;
	struct key_ctx x = {.app_id = app_id, .rows = rows, .max = max};
	int rc = run(s, SB_READ, key_get_txn, &x);
	*n = rc == 0 ? x.n : 0;
	return rc;
}

static int key_revoke_txn(struct sb_tx *tx, void *arg)
{
	struct key_ctx *x = arg;
	struct sb_stmt st;
	x->outcome = OUT_OK;
	sb_stmt_init(&st, SQ_KEY_REVOKE);
	sb_arg_text(&st, x->id);
	sb_arg_int(&st, x->now);
	int rc = sb_exec(tx, &st, 1, SB_LAST);
	if (rc == 0 && st.rows == 0)
		x->outcome = OUT_NOT_FOUND;
	return rc;
}

int store_key_revoke(struct store *s, const char *id, int64_t now)
{
	if (!id_ok(id))
		return OTP_ERR_INVALID;
	struct key_ctx x = {.id = id, .now = now};
	int rc = run(s, SB_WRITE, key_revoke_txn, &x);
	if (rc == 0 && x.outcome == OUT_NOT_FOUND)
		rc = OTP_ERR_NOT_FOUND;
	return rc;
}

/* ---- meta ---------------------------------------------------------------------------------- */

struct meta_ctx {
	const char *name, *value;
	char *out;
	size_t cap;
	enum outcome outcome;
};

static int meta_txn(struct sb_tx *tx, void *arg)
{
	struct meta_ctx *x = arg;
	struct sb_stmt st[2];
	bool put = x->value != NULL;
	x->outcome = OUT_OK;
	sb_stmt_init(&st[0], SQ_LOCK);
	sb_arg_int(&st[0], lock_key('m', 0, x->name, ""));
	sb_stmt_init(&st[1], SQ_META_GET);
	sb_arg_text(&st[1], x->name);
	int rc = sb_exec(tx, st, 2, put ? 0 : SB_LAST);
	if (rc != 0)
		return rc;
	if (st[1].rows > 0) {
		if (x->out != NULL)
			sb_copy(&st[1], 0, 0, x->out, x->cap);
		if (put && strcmp(sb_str(&st[1], 0, 0), x->value) != 0)
			x->outcome = OUT_CONFLICT;
		return 0;
	}
	if (!put) {
		x->outcome = OUT_NOT_FOUND;
		return 0;
	}
	sb_stmt_init(&st[0], SQ_META_INSERT);
	sb_arg_text(&st[0], x->name);
	sb_arg_text(&st[0], x->value);
	return sb_exec(tx, st, 1, SB_LAST);
}

int store_meta_get(struct store *s, const char *name, char *value, size_t cap)
{
	if (value == NULL || cap == 0 || !id_ok(name))
		return OTP_ERR_INVALID;
	value[0] = '\0';
	struct meta_ctx x = {.name = name, .out = value, .cap = cap};
	int rc = run(s, SB_READ, meta_txn, &x);
	if (rc == 0 && x.outcome == OUT_NOT_FOUND)
		rc = OTP_ERR_NOT_FOUND;
	return rc;
}

int store_meta_put_once(struct store *s, const char *name, const char *value)
{
	if (!id_ok(name) || !text_ok(value, 4096, true))
		return OTP_ERR_INVALID;
	struct meta_ctx x = {.name = name, .value = value};
	int rc = run(s, SB_WRITE, meta_txn, &x);
	if (rc == 0 && x.outcome == OUT_CONFLICT)
		rc = OTP_ERR_CONFLICT;
	return rc;
}

/* ---- housekeeping ---------------------------------------------------------------------------- */

#define PURGE_BATCH_MAX 10000

struct purge_ctx {
	const struct store_purge *p;
	int64_t expired, deleted;
	bool more;              /* some statement hit its batch: run again */
};

#define PURGE_EVENTS_PER_STEP 64

static int purge_txn(struct sb_tx *tx, void *arg)
{
	struct purge_ctx *x = arg;
	const struct store_purge *p = x->p;
	struct sb_stmt s1, ev[PURGE_EVENTS_PER_STEP], del[5];
	int rc;

	x->expired = x->deleted = 0;
	x->more = false;
	sb_stmt_init(&s1, SQ_PURGE_EXPIRE);
	sb_arg_int(&s1, p->now);
	sb_arg_int(&s1, p->batch);
	if ((rc = sb_exec(tx, &s1, 1, 0)) != 0)
		return rc;
	/* SQ_PURGE_EXPIRE returns public_id, app_id, cur_channel, cur_target */
	for (size_t i = 0; i < s1.rows; i += PURGE_EVENTS_PER_STEP) {
		size_t k = 0;
		for (size_t j = i; j < s1.rows && k < PURGE_EVENTS_PER_STEP; j++) {
			int64_t ch = sb_int(&s1, j, 2);
			stmt_event(&ev[k++], sb_str(&s1, j, 0), sb_str(&s1, j, 1), OTP_EV_EXPIRED,
			           channel_ok((int)ch) ? (enum otp_channel)ch : OTP_CH_SMS,
			           sb_str(&s1, j, 3), NULL, NULL, p->now);
		}
		if ((rc = sb_exec(tx, ev, k, 0)) != 0)
			return rc;
	}
	sb_stmt_init(&del[0], SQ_PURGE_SEALED);
	sb_arg_int(&del[0], p->now);
	sb_stmt_init(&del[1], SQ_PURGE_VERIFICATIONS);
	sb_arg_int(&del[1], p->ended_before);
	sb_arg_int(&del[1], p->now);
	sb_arg_int(&del[1], p->batch);
	sb_stmt_init(&del[2], SQ_PURGE_EVENTS);
	sb_arg_int(&del[2], p->events_before);
	sb_arg_int(&del[2], p->now);
	sb_arg_int(&del[2], p->batch);
	sb_stmt_init(&del[3], SQ_PURGE_JOBS);
	sb_arg_int(&del[3], p->jobs_before);
	sb_arg_int(&del[3], p->batch);
	sb_stmt_init(&del[4], SQ_PURGE_IDEM);
	sb_arg_int(&del[4], p->idem_before);
	sb_arg_int(&del[4], p->batch);
	if ((rc = sb_exec(tx, del, 5, SB_LAST)) != 0)
		return rc;
	x->expired = (int64_t)s1.rows;
	x->more = s1.rows >= (size_t)p->batch;
	for (size_t i = 1; i < 5; i++) {
		x->deleted += del[i].changes;
		x->more = x->more || del[i].changes >= p->batch;
	}
	return 0;
}

int store_purge(struct store *s, const struct store_purge *p, struct store_purge_counts *out)
{
	struct store_purge_counts sum = {0, 0};
	if (out != NULL)
		*out = sum;
	if (p == NULL || p->batch < 1 || p->batch > PURGE_BATCH_MAX)
		return OTP_ERR_INVALID;
	/* in batches, each its own short transaction, so a large purge never holds the
	 * writer (or many row locks) for long; bounded so a purge that keeps finding work
	 * yields to the next janitor round */
	for (int round = 0; round < 1000; round++) {
		struct purge_ctx x = {.p = p};
		int rc = run(s, SB_WRITE_RELAXED, purge_txn, &x);
		if (rc != 0)
			return rc;
		sum.expired += x.expired;
		sum.deleted += x.deleted;
		if (!x.more)
			break;
	}
	if (out != NULL)
		*out = sum;
	return 0;
}

/* ---- the outbox ------------------------------------------------------------------------------ */

void store_job_fini(struct store_job *job)
{
	if (job == NULL)
		return;
	/* the payload is a sealed message: nothing readable, but wipe it like a secret */
	if (job->payload != NULL) {
		sodium_memzero(job->payload, job->payload_len);
		free(job->payload);
	}
	memset(job, 0, sizeof *job);
}

void store_outbox_counts_set(struct store_outbox_counts *c, const char *state, int64_t n)
{
	if (state == NULL)
		return;
	if (strcmp(state, STORE_JOB_PENDING) == 0)
		c->pending = n;
	else if (strcmp(state, STORE_JOB_SENDING) == 0)
		c->sending = n;
	else if (strcmp(state, STORE_JOB_SENT) == 0)
		c->sent = n;
	else if (strcmp(state, STORE_JOB_DEAD) == 0)
		c->dead = n;
	else if (strcmp(state, STORE_JOB_SKIPPED) == 0)
		c->skipped = n;
}

struct claim_ctx {
	int64_t now, lease_until;
	struct store_job *jobs;
	size_t max, n;
};

static int claim_txn(struct sb_tx *tx, void *arg)
{
	struct claim_ctx *x = arg;
	struct sb_stmt st;
	for (size_t i = 0; i < x->n; i++)
		store_job_fini(&x->jobs[i]);
	x->n = 0;
	sb_stmt_init(&st, SQ_JOB_CLAIM);
	sb_arg_int(&st, x->now);
	sb_arg_int(&st, x->lease_until);
	sb_arg_int(&st, (int64_t)x->max);
	int rc = sb_exec(tx, &st, 1, SB_LAST);
	for (size_t i = 0; rc == 0 && i < st.rows && i < x->max; i++) {
		/* id, channel, provider, payload, attempts, created_at, lease_until */
		struct store_job *j = &x->jobs[i];
		int64_t ch = sb_int(&st, i, 1);
		j->id = sb_int(&st, i, 0);
		j->channel = channel_ok((int)ch) ? (enum otp_channel)ch : OTP_CH_SMS;
		sb_copy(&st, i, 2, j->provider, sizeof j->provider);
		rc = blob_dup(&st, i, 3, &j->payload, &j->payload_len);
		j->attempts = (int)sb_int(&st, i, 4);
		j->created_at = sb_int(&st, i, 5);
		j->lease_until = sb_int(&st, i, 6);
		x->n = i + 1;
	}
	return rc;
}

int store_outbox_claim(struct store *s, int64_t now, int64_t lease_until,
                       struct store_job *jobs, size_t max, size_t *n_out)
{
	if (n_out == NULL || (max > 0 && jobs == NULL))
		return OTP_ERR_INVALID;
	*n_out = 0;
	if (max == 0)
		return 0;
	memset(jobs, 0, max * sizeof *jobs);
	struct claim_ctx x = {.now = now, .lease_until = lease_until, .jobs = jobs, .max = max};
	int rc = run(s, SB_WRITE_RELAXED, claim_txn, &x);
	if (rc != 0) {
		/* a failed commit after a successful claim: nothing was claimed */
		for (size_t i = 0; i < x.n; i++)
			store_job_fini(&jobs[i]);
		return rc;
	}
	*n_out = x.n;
	return 0;
}

struct mark_ctx {
	enum sb_sql sql;
	int64_t id, now, next_at;
	char text[STORE_ERROR_MAX];
	int event;
};

static int mark_txn(struct sb_tx *tx, void *arg)
{
	struct mark_ctx *x = arg;
	struct sb_stmt st[3];
	size_t n = 0;
	sb_stmt_init(&st[n], x->sql);
	sb_arg_int(&st[n], x->id);
	if (x->sql != SQ_JOB_RELEASE)
		sb_arg_int(&st[n], x->now);
	if (x->sql == SQ_JOB_RETRY)
		sb_arg_int(&st[n], x->next_at);
	if (x->sql != SQ_JOB_RELEASE)
		sb_arg_text(&st[n], x->text[0] ? x->text : NULL);
	n++;
	if (x->event != 0) {
		sb_stmt_init(&st[n], SQ_EV_INSERT_FOR_JOB);
		sb_arg_int(&st[n], x->id);
		sb_arg_int(&st[n], x->event);
		sb_arg_text(&st[n], x->text[0] ? x->text : NULL);
		sb_arg_int(&st[n++], x->now);
	}
	if (x->sql == SQ_JOB_DEAD) {
		sb_stmt_init(&st[n], SQ_VF_FAIL_IF_UNDELIVERABLE);
		sb_arg_int(&st[n], x->id);
		sb_arg_int(&st[n++], x->now);
	}
	int rc = sb_exec(tx, st, n, SB_LAST);
	/* only a claimed (sending) job can be finished or released: roll back otherwise
	 * (a backend that folds the event into the job's statement did nothing either) */
	if (rc == 0 && st[0].rows != 1)
		return OTP_ERR_NOT_FOUND;
	return rc;
}

static int mark(struct store *s, struct mark_ctx *x, const char *text, size_t max)
{
	sb_text_clean(x->text, max < sizeof x->text ? max : sizeof x->text, text);
	return run(s, SB_WRITE_RELAXED, mark_txn, x);
}

int store_outbox_sent(struct store *s, int64_t id, int64_t now, const char *provider_msg_id)
{
	struct mark_ctx x = {.sql = SQ_JOB_SENT, .id = id, .now = now, .event = OTP_EV_SENT};
	return mark(s, &x, provider_msg_id, STORE_MSGID_MAX);
}

int store_outbox_retry(struct store *s, int64_t id, int64_t now, int64_t next_at,
                       const char *error)
{
	struct mark_ctx x = {.sql = SQ_JOB_RETRY, .id = id, .now = now, .next_at = next_at};
	return mark(s, &x, error, STORE_ERROR_MAX);
}

int store_outbox_dead(struct store *s, int64_t id, int64_t now, const char *error)
{
	struct mark_ctx x = {.sql = SQ_JOB_DEAD, .id = id, .now = now,
	                     .event = OTP_EV_DELIVERY_FAILED};
	return mark(s, &x, error, STORE_ERROR_MAX);
}

int store_outbox_release(struct store *s, int64_t id)
{
	struct mark_ctx x = {.sql = SQ_JOB_RELEASE, .id = id};
	return mark(s, &x, NULL, STORE_ERROR_MAX);
}

struct jobs_ctx {
	const struct store_job_filter *f;
	struct store_job_info *rows;
	size_t n;
	struct store_outbox_counts *counts;
};

static int counts_read(const struct sb_stmt *st, struct store_outbox_counts *out)
{
	memset(out, 0, sizeof *out);
	for (size_t i = 0; i < st->rows; i++)
		store_outbox_counts_set(out, sb_str(st, i, 0), sb_int(st, i, 1));
	return 0;
}

static int jobs_txn(struct sb_tx *tx, void *arg)
{
	struct jobs_ctx *x = arg;
	const struct store_job_filter *f = x->f;
	struct sb_stmt st[2];
	size_t n = 0;
	x->n = 0;
	if (f != NULL) {
		sb_stmt_init(&st[n], SQ_JOB_LIST);
		sb_arg_text(&st[n], f->state);
		sb_arg_int(&st[n], f->channel);
		sb_arg_text(&st[n], f->provider);
		sb_arg_int(&st[n], f->before_id);
		sb_arg_int(&st[n++], (int64_t)f->limit);
	}
	if (x->counts != NULL)
		sb_stmt_init(&st[n++], SQ_JOB_COUNTS);
	/* one step: both come from one snapshot, so the counts agree with the rows */
	int rc = sb_exec(tx, st, n, SB_LAST);
	if (rc != 0)
		return rc;
	for (size_t i = 0; f != NULL && i < st[0].rows && i < f->limit; i++) {
		struct store_job_info *r = &x->rows[i];
		memset(r, 0, sizeof *r);
		r->id = sb_int(&st[0], i, 0);
		r->code_id = sb_int(&st[0], i, 1);
		int64_t ch = sb_int(&st[0], i, 2);
		r->channel = channel_ok((int)ch) ? (enum otp_channel)ch : OTP_CH_SMS;
		sb_copy(&st[0], i, 3, r->provider, sizeof r->provider);
		sb_copy(&st[0], i, 4, r->state, sizeof r->state);
		r->attempts = (int)sb_int(&st[0], i, 5);
		r->created_at = sb_int(&st[0], i, 6);
		r->updated_at = sb_int(&st[0], i, 7);
		r->next_at = sb_int(&st[0], i, 8);
		sb_copy(&st[0], i, 9, r->last_error, sizeof r->last_error);
		sb_copy(&st[0], i, 10, r->provider_msg_id, sizeof r->provider_msg_id);
		x->n = i + 1;
	}
	if (x->counts != NULL)
		counts_read(&st[n - 1], x->counts);
	return 0;
}

int store_outbox_list(struct store *s, const struct store_job_filter *f,
                      struct store_job_info *rows, size_t *n_out,
                      struct store_outbox_counts *counts)
{
	if (n_out == NULL)
		return OTP_ERR_INVALID;
	*n_out = 0;
	if (counts != NULL)
		memset(counts, 0, sizeof *counts);
	if (f == NULL || rows == NULL || f->limit < 1 || f->limit > STORE_LIST_MAX ||
	    f->channel < -1 || f->channel >= OTP_CH_COUNT || f->before_id < 0 ||
	    (f->state != NULL && !text_ok(f->state, 15, false)) ||
	    (f->provider != NULL && !text_ok(f->provider, STORE_PROVIDER_MAX - 1, false)))
		return OTP_ERR_INVALID;
	struct jobs_ctx x = {.f = f, .rows = rows, .counts = counts};
	int rc = run(s, SB_READ, jobs_txn, &x);
	if (rc != 0) {
		if (counts != NULL)
			memset(counts, 0, sizeof *counts);
		return rc;
	}
	*n_out = x.n;
	return 0;
}

int store_outbox_counts(struct store *s, struct store_outbox_counts *out)
{
	if (out == NULL)
		return OTP_ERR_INVALID;
	struct jobs_ctx x = {.counts = out};
	int rc = run(s, SB_READ, jobs_txn, &x);
	if (rc != 0)
		memset(out, 0, sizeof *out);
	return rc;
}

struct row_ctx {
	enum sb_sql sql;
	int64_t v[3];
	int n;
};

static int row_txn(struct sb_tx *tx, void *arg)
{
	struct row_ctx *x = arg;
	struct sb_stmt st;
	sb_stmt_init(&st, x->sql);
	int rc = sb_exec(tx, &st, 1, SB_LAST);
	for (int i = 0; i < x->n; i++)
		x->v[i] = rc == 0 ? sb_int(&st, 0, (size_t)i) : 0;
	return rc;
}

int store_outbox_next_due(struct store *s, int64_t *next_at)
{
	if (next_at == NULL)
		return OTP_ERR_INVALID;
	struct row_ctx x = {.sql = SQ_JOB_NEXT_DUE, .n = 1};
	int rc = run(s, SB_READ, row_txn, &x);
	*next_at = rc == 0 ? x.v[0] : 0;
	return rc;
}

int store_outbox_backlog(struct store *s, struct store_outbox_backlog *out)
{
	if (out == NULL)
		return OTP_ERR_INVALID;
	struct row_ctx x = {.sql = SQ_JOB_BACKLOG, .n = 3};
	int rc = run(s, SB_READ, row_txn, &x);
	*out = (struct store_outbox_backlog){.pending = x.v[0], .sending = x.v[1],
	                                     .oldest_due = x.v[2]};
	if (rc != 0)
		memset(out, 0, sizeof *out);
	return rc;
}

/* ---- lifecycle --------------------------------------------------------------------------------- */

const char *store_name(const struct store *s)
{
	return s->ops->name;
}

int store_ping(struct store *s)
{
	return s->ops->ping(s);
}

void store_close(struct store *s)
{
	if (s != NULL)
		s->ops->close(s);
}

/* ---- migrations -------------------------------------------------------------------------------- */

struct migrate_ctx {
	const struct store_migration *m;
	size_t n;
	char *err;
	size_t cap;
	bool done;
};

/* Apply the next migration the database lacks (one transaction), or find none. */
static int migrate_txn(struct sb_tx *tx, void *arg)
{
	struct migrate_ctx *x = arg;
	struct sb_stmt st[2];
	x->done = false;
	sb_stmt_init(&st[0], SQ_MIGRATE_LOCK);
	sb_stmt_init(&st[1], SQ_MIGRATE_VERSION);
	int rc = sb_exec(tx, st, 2, 0);
	if (rc != 0) {
		snprintf(x->err, x->cap, "reading the schema version");
		return rc;
	}
	int64_t have = sb_int(&st[1], 0, 0);
	if (have < 0 || (uint64_t)have > x->n) {
		snprintf(x->err, x->cap, "database schema version %lld is newer than this otpd "
		         "knows (%zu): upgrade otpd", (long long)have, x->n);
		return OTP_ERR_STORE;
	}
	if (have > 0) {
		const struct store_migration *last = &x->m[have - 1];
		sb_stmt_init(&st[0], SQ_MIGRATE_NAME);
		sb_arg_int(&st[0], have);
		if ((rc = sb_exec(tx, st, 1, 0)) != 0) {
			snprintf(x->err, x->cap, "reading the applied migrations");
			return rc;
		}
		if (strcmp(sb_str(&st[0], 0, 0), last->name) != 0) {
			snprintf(x->err, x->cap, "migration %lld is recorded as \"%s\", this otpd has "
			         "\"%s\"", (long long)have, sb_str(&st[0], 0, 0), last->name);
			return OTP_ERR_STORE;
		}
	}
	if ((uint64_t)have == x->n) {
		x->done = true;
		return 0;
	}
	const struct store_migration *m = &x->m[have];
	if (m->version != have + 1) {
		snprintf(x->err, x->cap, "migration %s out of order", m->name);
		return OTP_ERR_STORE;
	}
	if ((rc = tx->s->ops->script(tx, m->sql, x->err, x->cap)) != 0)
		return rc;
	sb_stmt_init(&st[0], SQ_MIGRATE_RECORD);
	sb_arg_int(&st[0], m->version);
	sb_arg_text(&st[0], m->name);
	sb_arg_int(&st[0], (int64_t)time(NULL));
	if ((rc = sb_exec(tx, st, 1, SB_LAST)) != 0)
		snprintf(x->err, x->cap, "%s: recording it", m->name);
	return rc;
}

int sb_migrate(struct store *s, const struct store_migration *migrations, size_t n,
               char *err, size_t cap)
{
	char dummy[1];
	if (err == NULL || cap == 0) {
		err = dummy;
		cap = sizeof dummy;
	}
	err[0] = '\0';
	struct migrate_ctx x = {.m = migrations, .n = n, .err = err, .cap = cap};
	/* one transaction per migration, so a failure keeps those before it */
	for (size_t i = 0; i <= n; i++) {
		int rc = run(s, SB_WRITE, migrate_txn, &x);
		if (rc != 0) {
			if (err[0] == '\0')
				snprintf(err, cap, "migrations: %s", otp_err_name(rc));
			return OTP_ERR_STORE;
		}
		if (x.done)
			return 0;
	}
	snprintf(err, cap, "migrations did not finish");
	return OTP_ERR_STORE;
}
