/*
 * legacy.c - import of the old service's otp_limit rules and live otp_password codes
 * (see legacy.h for what is imported and how). Reads the old PostgreSQL database with
 * libpq, writes through the store interface only, so it works with either backend.
 * Never logs; codes are wiped from memory once hashed.
 */
#include "store/legacy.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <sodium.h>

#include "core/errors.h"
#include "core/limits.h"
#include "core/num.h"

#define LEGACY_FETCH 500                /* rows per FETCH from the cursor */
#define LEGACY_PROVIDER "legacy"
#define LEGACY_REQUEST_ID "legacy-import"
#define LEGACY_CHANNELS 3               /* sms, email, call: the old service's limits */
#define LEGACY_IP_MAX 64              /* longer: stored without ip */
#define LEGACY_SQL_MAX 1024

struct legacy_rules {
	size_t n;
	struct otp_limit_rule rules[2 * OTP_LIMIT_RULES_MAX];
	size_t per_kind[2];
};

static void legacy_err(char *err, size_t cap, const char *what, const char *msg)
{
	char clean[384];
	size_t o = 0;
	for (const char *p = msg ? msg : ""; *p && o + 1 < sizeof clean; p++)
		clean[o++] = (*p == '\n' || *p == '\r' || *p == '\t') ? ' ' : *p;
	while (o > 0 && clean[o - 1] == ' ')
		o--;
	clean[o] = '\0';
	snprintf(err, cap, "legacy import: %s%s%s", what, o ? ": " : "", clean);
}

static const char *legacy_result_error(PGconn *c, const PGresult *r)
{
	const char *m = r ? PQresultErrorMessage(r) : NULL;
	return m && *m ? m : PQerrorMessage(c);
}

/* Run a statement without rows; 0 or OTP_ERR_STORE with the reason in err. */
static int legacy_exec(PGconn *c, const char *sql, const char *what, char *err, size_t cap)
{
	PGresult *r = PQexec(c, sql);
	int rc = 0;
	if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
		legacy_err(err, cap, what, legacy_result_error(c, r));
		rc = OTP_ERR_STORE;
	}
	PQclear(r);
	return rc;
}

static void legacy_notice_ignore(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

static PGconn *legacy_connect(const struct store_legacy_source *src, char *err, size_t cap)
{
	PGconn *c;
	if (src->conninfo != NULL && src->conninfo[0] != '\0') {
		c = PQconnectdb(src->conninfo);
	} else {
		char port[16] = "";
		if (src->port > 0)
			snprintf(port, sizeof port, "%d", src->port);
		/* NULL or empty values are left to libpq's defaults (PGHOST, ...) */
		const char *keys[] = {"host", "port", "dbname", "user", "password",
		                      "fallback_application_name", "client_encoding", NULL};
		const char *vals[] = {src->host, port, src->database, src->user, src->password,
		                      "otpd-legacy-import", "UTF8", NULL};
		c = PQconnectdbParams(keys, vals, 0);
	}
	if (c == NULL) {
		legacy_err(err, cap, "connecting to the old database", "out of memory");
		return NULL;
	}
	if (PQstatus(c) != CONNECTION_OK) {
		legacy_err(err, cap, "connecting to the old database", PQerrorMessage(c));
		PQfinish(c);
		return NULL;
	}
	PQsetNoticeProcessor(c, legacy_notice_ignore, NULL);
	return c;
}

/* Copy `in` without leading and trailing white space (as PHP's trim) into out. false when
 * it does not fit. */
static bool legacy_trim(const char *in, char *out, size_t cap)
{
	const char *ws = " \t\n\r\v\f";
	while (*in && strchr(ws, *in))
		in++;
	size_t len = strlen(in);
	while (len > 0 && strchr(ws, in[len - 1]))
		len--;
	if (len >= cap)
		return false;
	memcpy(out, in, len);
	out[len] = '\0';
	return true;
}

/* The target as otpd's API stores it for the channel; false when it can't be one. */
static bool legacy_target(enum otp_channel ch, const char *raw, char *out, size_t cap)
{
	if (!legacy_trim(raw, out, cap) || out[0] == '\0')
		return false;
	if ((ch == OTP_CH_SMS || ch == OTP_CH_CALL) && out[0] == '+' && out[1] >= '0' &&
	    out[1] <= '9')
		memmove(out, out + 1, strlen(out));
	if (ch == OTP_CH_TELEGRAM) {
		int64_t id;
		if (otp_parse_i64(out, INT64_MIN + 1, INT64_MAX, &id) != 0 || id == 0)
			return false;
		snprintf(out, cap, "%" PRId64, id);
	}
	return true;
}

/* ---- rules ------------------------------------------------------------------------ */

static int legacy_read_rules(PGconn *c, const char *schema, struct legacy_rules *rules,
                             struct store_legacy_counts *n, char *err, size_t cap)
{
	char sql[LEGACY_SQL_MAX];
	int len = snprintf(sql, sizeof sql, "SELECT channel, measure, rate, minutes "
	                   "FROM %s.otp_limit ORDER BY id", schema);
	if (len < 0 || (size_t)len >= sizeof sql) {
		legacy_err(err, cap, "schema name", "too long");
		return OTP_ERR_INVALID;
	}
	PGresult *r = PQexec(c, sql);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		legacy_err(err, cap, "reading otp_limit", legacy_result_error(c, r));
		PQclear(r);
		return OTP_ERR_INVALID;
	}
	for (int i = 0; i < PQntuples(r); i++) {
		int64_t ch, measure, rate, minutes;
		bool ok = !PQgetisnull(r, i, 0) && !PQgetisnull(r, i, 1) && !PQgetisnull(r, i, 2) &&
		          !PQgetisnull(r, i, 3) &&
		          otp_parse_i64(PQgetvalue(r, i, 0), 0, LEGACY_CHANNELS - 1, &ch) == 0 &&
		          otp_parse_i64(PQgetvalue(r, i, 1), 0, 1, &measure) == 0 &&
		          otp_parse_i64(PQgetvalue(r, i, 2), 0, OTP_LIMIT_RATE_MAX, &rate) == 0 &&
		          otp_parse_i64(PQgetvalue(r, i, 3), 1, OTP_LIMIT_MINUTES_MAX, &minutes) == 0;
		if (ok && rules[ch].per_kind[measure] >= OTP_LIMIT_RULES_MAX)
			ok = false;
		if (!ok) {
			n->rules_skipped++;
			continue;
		}
		struct legacy_rules *lr = &rules[ch];
		lr->rules[lr->n].kind = measure == 1 ? OTP_LIMIT_IP : OTP_LIMIT_TARGET;
		lr->rules[lr->n].rate = (int)rate;
		lr->rules[lr->n].minutes = (int)minutes;
		lr->n++;
		lr->per_kind[measure]++;
	}
	PQclear(r);
	return 0;
}

static int legacy_set_rules(struct store *dst, const struct legacy_rules *rules,
                            struct store_legacy_counts *n, char *err, size_t cap)
{
	static const bool both[2] = {true, true};
	for (int ch = 0; ch < LEGACY_CHANNELS; ch++) {
		int rc = store_rules_replace(dst, "", (enum otp_channel)ch, both,
		                          rules ? rules[ch].rules : NULL, rules ? rules[ch].n : 0);
		if (rc != 0) {
			legacy_err(err, cap, "setting the limits in the store", otp_err_name(rc));
			return rc;
		}
		if (rules != NULL && n != NULL)
			n->rules += (int64_t)rules[ch].n;
	}
	return 0;
}

/* ---- codes ------------------------------------------------------------------------ */

struct legacy_ctx {
	struct store *dst;
	const struct otp_key *key;
	int64_t now;
	bool seal;
	struct store_legacy_counts *n;
	char *err;
	size_t cap;
};

/* The public id of an imported code: derived from its keyed hash, so a second run finds
 * the codes the first one wrote (and reveals nothing of the code). */
static void legacy_public_id(const uint8_t code_hash[OTP_HASH_LEN], char *out, size_t cap)
{
	static const char label[] = "otpd legacy import id";
	uint8_t id[16];
	char hex[2 * sizeof id + 1];
	crypto_generichash(id, sizeof id, code_hash, OTP_HASH_LEN, (const uint8_t *)label,
	                   sizeof label - 1);
	sodium_bin2hex(hex, sizeof hex, id, sizeof id);
	snprintf(out, cap, "otp_%s", hex);
}

/* Import row i of a FETCH (channel, target, password, ip, expire_at, created_at). */
static int legacy_code(const struct legacy_ctx *x, PGresult *r, int i)
{
	char target[OTP_TARGET_MAX + 1], code[OTP_CODE_MAX + 1], ip[LEGACY_IP_MAX + 1];
	char public_id[STORE_ID_MAX];
	uint8_t sealed[OTP_CODE_MAX + OTP_SEAL_OVERHEAD];
	int64_t ch = -1, expire_at = 0, created_at = 0;
	struct store_start req;
	struct store_start_result res;
	struct store_verification v;
	int rc = 0;

	memset(&req, 0, sizeof req);
	bool ok = !PQgetisnull(r, i, 0) && !PQgetisnull(r, i, 1) && !PQgetisnull(r, i, 2) &&
	          !PQgetisnull(r, i, 4) &&
	          otp_parse_i64(PQgetvalue(r, i, 0), 0, OTP_CH_TELEGRAM, &ch) == 0 &&
	          otp_parse_i64(PQgetvalue(r, i, 4), INT64_MIN, INT64_MAX, &expire_at) == 0;
	if (ok)
		ok = legacy_target((enum otp_channel)ch, PQgetvalue(r, i, 1), target, sizeof target);
	if (ok)
		ok = legacy_trim(PQgetvalue(r, i, 2), code, sizeof code) && code[0] != '\0';
	/* the code is in clear in the result: wipe it there as soon as it is copied */
	if (!PQgetisnull(r, i, 2))
		sodium_memzero(PQgetvalue(r, i, 2), (size_t)PQgetlength(r, i, 2));
	if (!ok) {
		x->n->codes_skipped++;
		goto out;
	}
	req.ip = NULL;
	if (!PQgetisnull(r, i, 3) && legacy_trim(PQgetvalue(r, i, 3), ip, sizeof ip) && ip[0])
		req.ip = ip;
	if (PQgetisnull(r, i, 5) ||
	    otp_parse_i64(PQgetvalue(r, i, 5), INT64_MIN, INT64_MAX, &created_at) != 0 ||
	    created_at > x->now)
		created_at = x->now;

	req.app_id = "";
	req.channel = (enum otp_channel)ch;
	req.target = target;
	otp_code_hash(x->key, req.channel, target, code, req.code_hash);
	otp_lookup_hash(x->key, req.channel, code, req.lookup_hash);
	legacy_public_id(req.code_hash, public_id, sizeof public_id);
	req.public_id = public_id;

	/* a second run: this code for this target is in the store already */
	rc = store_vf_get(x->dst, "", public_id, &v);
	if (rc == 0) {
		x->n->codes_present++;
		goto out;
	}
	if (rc != OTP_ERR_NOT_FOUND) {
		legacy_err(x->err, x->cap, "reading the store", otp_err_name(rc));
		goto out;
	}
	rc = 0;

	if (x->seal) {
		otp_seal(x->key, &otp_rng_system, "password", (const uint8_t *)code, strlen(code),
		         sealed);
		req.sealed_code = sealed;
		req.sealed_code_len = strlen(code) + OTP_SEAL_OVERHEAD;
	}
	/* the old service had no attempt limit nor consumption: the compat defaults */
	req.max_attempts = 5;
	req.max_sends = 1;
	req.now = created_at;
	req.expire_at = expire_at;
	req.provider = LEGACY_PROVIDER;
	req.skip = true;
	req.request_id = LEGACY_REQUEST_ID;
	rc = store_vf_start(x->dst, &req, &res);
	if (rc == 0) {
		x->n->codes++;
	} else if (rc == OTP_ERR_LIMIT || rc == OTP_ERR_INVALID) {
		/* a rule of a channel the import leaves alone, or a target the store refuses */
		x->n->codes_skipped++;
		rc = 0;
	} else {
		legacy_err(x->err, x->cap, "writing a code to the store", otp_err_name(rc));
	}
out:
	sodium_memzero(code, sizeof code);
	sodium_memzero(&req, sizeof req);
	return rc;
}

static int legacy_import_codes(PGconn *c, const char *schema, const struct legacy_ctx *x)
{
	char sql[LEGACY_SQL_MAX];
	/* timestamps without time zone are read in the session's TimeZone, as the old
	 * service's comparisons with NOW() did */
	int len = snprintf(sql, sizeof sql,
	                   "DECLARE otpd_legacy NO SCROLL CURSOR FOR "
	                   "SELECT channel, target, password, ip, "
	                   "ceil(extract(epoch FROM expire_at::timestamptz))::bigint, "
	                   "floor(extract(epoch FROM created_at::timestamptz))::bigint "
	                   "FROM %s.otp_password "
	                   "WHERE expire_at::timestamptz > to_timestamp(%" PRId64 ") ORDER BY id",
	                   schema, x->now);
	if (len < 0 || (size_t)len >= sizeof sql) {
		legacy_err(x->err, x->cap, "schema name", "too long");
		return OTP_ERR_INVALID;
	}
	PGresult *r = PQexec(c, sql);
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		legacy_err(x->err, x->cap, "reading otp_password", legacy_result_error(c, r));
		PQclear(r);
		return OTP_ERR_INVALID;
	}
	PQclear(r);
	int rc = 0;
	char fetch[64];
	snprintf(fetch, sizeof fetch, "FETCH %d FROM otpd_legacy", LEGACY_FETCH);
	for (;;) {
		r = PQexec(c, fetch);
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			legacy_err(x->err, x->cap, "reading otp_password", legacy_result_error(c, r));
			PQclear(r);
			return OTP_ERR_STORE;
		}
		int rows = PQntuples(r);
		for (int i = 0; i < rows && rc == 0; i++)
			rc = legacy_code(x, r, i);
		PQclear(r);
		if (rc != 0 || rows < LEGACY_FETCH)
			return rc;
	}
}

int store_legacy_import(struct store *dst, const struct store_legacy_source *src,
                        const struct otp_key *key, int64_t now,
                        struct store_legacy_counts *counts, char *err, size_t cap)
{
	struct store_legacy_counts n;
	struct legacy_rules rules[LEGACY_CHANNELS];
	char dummy[1];
	char *schema = NULL;
	PGconn *c = NULL;
	int rc = 0;

	if (err == NULL || cap == 0) {
		err = dummy;
		cap = sizeof dummy;
	}
	err[0] = '\0';
	memset(&n, 0, sizeof n);
	memset(rules, 0, sizeof rules);
	if (counts != NULL)
		memset(counts, 0, sizeof *counts);
	if (dst == NULL || src == NULL || key == NULL) {
		legacy_err(err, cap, "bad arguments", "");
		return OTP_ERR_INVALID;
	}

	c = legacy_connect(src, err, cap);
	if (c == NULL)
		return OTP_ERR_STORE;
	const char *sname = src->schema && src->schema[0] ? src->schema : "public";
	schema = PQescapeIdentifier(c, sname, strlen(sname));
	if (schema == NULL) {
		legacy_err(err, cap, "schema name", PQerrorMessage(c));
		rc = OTP_ERR_INVALID;
		goto out;
	}
	/* one consistent snapshot of both tables */
	rc = legacy_exec(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
	                 "starting a transaction", err, cap);
	if (rc == 0 && src->timezone != NULL && src->timezone[0] != '\0') {
		const char *vals[1] = {src->timezone};
		PGresult *r = PQexecParams(c, "SELECT set_config('TimeZone', $1, true)", 1, NULL,
		                           vals, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			legacy_err(err, cap, "time zone", legacy_result_error(c, r));
			rc = OTP_ERR_INVALID;
		}
		PQclear(r);
	}
	if (rc == 0)
		rc = legacy_read_rules(c, schema, rules, &n, err, cap);
	if (rc != 0)
		goto out;

	/* Nothing is written before here. Clear the old channels' rules so none refuses
	 * an imported code, import, then set the old rules, even when the codes failed. */
	rc = legacy_set_rules(dst, NULL, NULL, err, cap);
	if (rc != 0)
		goto out;
	struct legacy_ctx x = {.dst = dst, .key = key, .now = now, .seal = src->seal_codes,
	                       .n = &n, .err = err, .cap = cap};
	rc = legacy_import_codes(c, schema, &x);
	char rules_err[256] = "";
	int rc2 = legacy_set_rules(dst, rules, &n, rules_err, sizeof rules_err);
	if (rc == 0 && rc2 != 0) {
		rc = rc2;
		snprintf(err, cap, "%s", rules_err);
	}
out:
	if (c != NULL && PQtransactionStatus(c) != PQTRANS_IDLE) {
		PGresult *r = PQexec(c, "ROLLBACK");
		PQclear(r);
	}
	PQfreemem(schema);
	PQfinish(c);
	if (counts != NULL)
		*counts = n;
	return rc;
}
