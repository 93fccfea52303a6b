/*
 * legacy.h - import from the service otpd replaces (COMPAT.md, "Storage the old service
 * used"): its otp_limit rules and its still-live otp_password codes, read from its
 * PostgreSQL database and written through any store backend, so a switch during business
 * hours loses neither the rules nor a code a person is about to type.
 * Never logs; never keeps or writes a code in clear (codes are hashed, and sealed only
 * when asked to).
 *
 * What is imported, and how:
 *   - otp_limit(channel, measure, rate, minutes), in id order: for each of sms, email and
 *     call the rules of both kinds are replaced by the old ones (a channel without old
 *     rules ends up without rules; telegram and whatsapp are left alone). Rules otpd would
 *     refuse (minutes outside 1..OTP_LIMIT_MINUTES_MAX, rate outside
 *     0..OTP_LIMIT_RATE_MAX, an unknown channel or measure, more than OTP_LIMIT_RULES_MAX
 *     per channel and kind) are skipped and counted.
 *   - otp_password rows with expire_at in the future (as of `now`): target and code
 *     trimmed, a phone's leading '+' dropped (as the API normalises them), hashed with
 *     otp_code_hash / otp_lookup_hash, and stored by store_vf_start as compat
 *     verifications (app "", 5 wrong checks, not consumed) with skip=true: the code is
 *     checkable at once and its job is recorded as "skipped" with provider "legacy"
 *     (nothing is delivered again). Channel 3, telegram (found only in the old service's
 *     docs), is imported as telegram with the chat id as the API writes it.
 *     created_at becomes the send time so the imported codes count in the sliding limit
 *     windows as they did in the old service. Each gets a public id derived from its
 *     keyed hash, so a second run finds the codes the first wrote (counted as present,
 *     not written again).
 *   - The timestamp columns have no time zone: they are read in `timezone`, or in the old
 *     server's TimeZone setting (how the old service compared them with NOW()).
 * Limits are cleared for sms, email and call while the codes are written (so no rule
 * refuses an imported code) and set last; when the import of codes fails, the old rules
 * are still set before the error is returned, so running it again is the remedy.
 *
 * Usage, as `otpd migrate-from-legacy` does it (main.c):
 *
 *     struct store_legacy_source src = {
 *         .conninfo = "host=old-db dbname=otp user=otp",   // or .host, .port, ...
 *         .schema = "public",
 *         .seal_codes = cfg->password_readback,
 *     };
 *     struct store_legacy_counts n;
 *     char err[512];
 *     if (store_legacy_import(store, &src, &key, time(NULL), &n, err, sizeof err) != 0)
 *         -> print err, exit 1
 *     -> print n.rules, n.codes, n.codes_present, n.rules_skipped, n.codes_skipped
 *
 * `store` is the new store, already opened (store_sqlite_open / store_pg_open, which
 * applied the migrations); it may be in the same PostgreSQL database and schema as the
 * old tables (otpd's tables are named otpd_*). Run it after the old service has taken
 * its last send, before (or right after) traffic moves to otpd.
 */
#ifndef OTPD_STORE_LEGACY_H
#define OTPD_STORE_LEGACY_H

#include <stdbool.h>
#include <stdint.h>

#include "core/otp.h"
#include "store/store.h"

/* Where the old service's tables are. */
struct store_legacy_source {
	/* A libpq connection string or URI ("host=... dbname=...", "postgresql://..."); when
	 * NULL or empty, the fields below are used instead (NULL/0: libpq's defaults and
	 * PG* environment variables, as for psql). TLS settings come from the environment
	 * (PGSSLMODE, ...) either way, unless the string names them. */
	const char *conninfo;
	const char *host;
	int port;
	const char *database;
	const char *user;
	const char *password;
	const char *schema;     /* where otp_password and otp_limit are; NULL: "public" */
	const char *timezone;   /* zone of the timestamp columns ("UTC", "Europe/Moscow");
	                           NULL: the old server's TimeZone */
	bool seal_codes;        /* also keep a sealed copy of each code for GET /password
	                           (set it when OTPD_PASSWORD_READBACK=true) */
};

struct store_legacy_counts {
	int64_t rules;          /* limit rules imported */
	int64_t rules_skipped;  /* old rules otpd would refuse (see above) */
	int64_t codes;          /* live codes imported */
	int64_t codes_present;  /* live codes already in the store (an earlier run) */
	int64_t codes_skipped;  /* live rows that cannot be imported: unknown channel (> 3),
	                           empty or overlong target or code */
};

/*
 * Import the rules and the live codes (see the top of this file). `key` hashes (and
 * seals) the codes: it must be the key otpd will run with. `now` is unix seconds.
 * Returns 0 with *counts filled, or OTP_ERR_STORE (the old database or the store failed;
 * a reason in err, cap bytes), OTP_ERR_INVALID (bad arguments, or the old tables are
 * missing or not as expected), OTP_ERR_NOMEM. counts may be NULL.
 */
int store_legacy_import(struct store *dst, const struct store_legacy_source *src,
                        const struct otp_key *key, int64_t now,
                        struct store_legacy_counts *counts, char *err, size_t cap);

#endif
