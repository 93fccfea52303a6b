/*
 * verify.c - the verification service (verify.h). The code is made or taken here, hashed
 * at once, and never leaves this file in clear except inside the sealed delivery payload
 * (and the sealed copy kept for resends or compat GET /password); every buffer that held
 * it is wiped before returning.
 */
#include "verify/verify.h"

#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/message.h"
#include "core/text.h"

/* The associated data of a kept code: binds the blob to that use. Compat's GET /password
 * copies (made before verifications existed) used the same label. */
#define AD_CODE "password"
#define AD_OUTBOX "outbox"
#define IDEM_WINDOW (24 * 3600)

static int store_failed(struct otp_error *err)
{
	return otp_error_set(err, OTP_ERR_STORE, "unavailable", "",
	                     "the database is unavailable, try again");
}

static int nomem(struct otp_error *err)
{
	return otp_error_set(err, OTP_ERR_NOMEM, "internal", "", "out of memory");
}

void verify_new_id(const struct otp_rng *rng, int64_t now, const char *prefix, char *out,
                   size_t cap)
{
	/* the time and a counter first, so new ids land at the end of their unique index
	 * (as ULIDs do) instead of on a random page of it: the sends of a group commit then
	 * write one page of that index, not one each (measured: 4.6 pages a commit less);
	 * 72 random bits after them make an id unguessable */
	static atomic_uint seq;
	uint8_t raw[9];
	char hex[2 * sizeof raw + 1];
	rng->fill(rng->ctx, raw, sizeof raw);
	sodium_bin2hex(hex, sizeof hex, raw, sizeof raw);
	unsigned n = atomic_fetch_add_explicit(&seq, 1, memory_order_relaxed) & 0xffffffu;
	snprintf(out, cap, "%s%08x%06x%s", prefix, (unsigned)(uint32_t)now, n, hex);
	sodium_memzero(raw, sizeof raw);
}

const char *verify_provider(const struct config *cfg, enum otp_channel channel)
{
	return cfg->dummy ? "dummy" : config_channel_provider(cfg, (int)channel);
}

/* Seal `len` bytes for `ad` into a malloc'd blob. */
static uint8_t *seal_new(const struct verify_env *env, const char *ad, const uint8_t *in,
                         size_t len, size_t *out_len)
{
	uint8_t *out = malloc(len + OTP_SEAL_OVERHEAD);
	if (out == NULL)
		return NULL;
	otp_seal(env->key, env->rng, ad, in, len, out);
	*out_len = len + OTP_SEAL_OVERHEAD;
	return out;
}

/* Texts otpd writes itself: from the message's template, or from the OTPD_TEMPLATE_*
 * of the channel for what the request did not bring. Owned here, wiped when done. */
struct rendered {
	char *text, *subject, *html;
};

static void rendered_fini(struct rendered *r)
{
	otp_secret_free(r->text);
	otp_secret_free(r->subject);
	otp_secret_free(r->html);
	memset(r, 0, sizeof *r);
}

static const char *channel_template(const struct config *cfg, enum otp_channel ch)
{
	switch (ch) {
	case OTP_CH_CALL: return cfg->template_call;
	case OTP_CH_TELEGRAM: return cfg->template_telegram;
	case OTP_CH_EMAIL: return cfg->template_email_text;
	case OTP_CH_SMS:
	case OTP_CH_WHATSAPP:
	case OTP_CH_COUNT: break;
	}
	return cfg->template_sms;
}

/*
 * The sealed delivery payload of one message of (channel, target) with `code`, into
 * *payload (malloc'd). Under DUMMY nothing is made (*payload NULL).
 */
static int make_payload(const struct verify_env *env, enum otp_channel ch, const char *target,
                        const char *code, int lifetime, const struct verify_message *msg,
                        uint8_t **payload, size_t *payload_len)
{
	const struct config *cfg = env->cfg;
	struct rendered r = {0};
	uint8_t *plain = NULL;
	size_t plain_len = 0;
	int rc = 0;

	*payload = NULL;
	*payload_len = 0;
	if (cfg->dummy)
		return 0;
	struct otp_message m = {
		.channel = ch,
		.target = (char *)target,
		.code = (char *)code,
		.text = (char *)msg->text,
		.subject = (char *)msg->subject,
		.html = (char *)msg->html,
		.lang = (char *)msg->lang,
		.sender = (char *)msg->sender,
		.lifetime = lifetime,
	};
	if (msg->tmpl != NULL) {
		r.text = otp_template_render(msg->tmpl, code, lifetime);
		if (r.text == NULL)
			goto fail;
		m.text = r.text;
	}
	if (ch == OTP_CH_EMAIL) {
		if (m.subject == NULL) {
			/* a whole email from the templates when no subject was given */
			r.subject = otp_template_render(cfg->template_email_subject, code, lifetime);
			if (r.subject == NULL)
				goto fail;
			m.subject = r.subject;
			if (m.text == NULL) {
				r.text = otp_template_render(cfg->template_email_text, code, lifetime);
				if (r.text == NULL)
					goto fail;
				m.text = r.text;
			}
			if (m.html == NULL && msg->tmpl == NULL && cfg->template_email_html != NULL) {
				r.html = otp_template_render(cfg->template_email_html, code, lifetime);
				if (r.html == NULL)
					goto fail;
				m.html = r.html;
			}
		}
	} else if (m.text == NULL) {
		r.text = otp_template_render(channel_template(cfg, ch), code, lifetime);
		if (r.text == NULL)
			goto fail;
		m.text = r.text;
	}
	rc = otp_message_encode(&m, &plain, &plain_len);
	if (rc == 0) {
		*payload = seal_new(env, AD_OUTBOX, plain, plain_len, payload_len);
		if (*payload == NULL)
			rc = OTP_ERR_NOMEM;
	}
	if (plain != NULL) {
		sodium_memzero(plain, plain_len);
		free(plain);
	}
	rendered_fini(&r);
	return rc;
fail:
	rendered_fini(&r);
	return OTP_ERR_NOMEM;
}

static bool code_ok(const char *code)
{
	size_t n = code ? strnlen(code, OTP_CODE_MAX + 1) : 0;
	return n > 0 && n <= OTP_CODE_MAX && otp_utf8_valid(code, n) && !otp_has_control(code, false);
}

int verify_start(const struct verify_env *env, const struct verify_start *in,
                 struct verify_started *out, struct otp_error *err)
{
	const char *field, *why;
	char public_id[STORE_ID_MAX], made[OTP_GEN_LENGTH_MAX + 1];
	struct store_start req;
	struct store_start_result res;
	uint8_t *payload = NULL, *sealed = NULL;
	size_t payload_len = 0, sealed_len = 0;
	int rc;

	memset(out, 0, sizeof *out);
	memset(&req, 0, sizeof req);
	if (otp_policy_check(&in->policy, &field, &why) != 0)
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", field, "\"%s\" %s",
		                     field, why);
	const char *code = in->code;
	if (code == NULL) {
		if (otp_code_make(env->rng, &in->policy.code, made) != 0)
			return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "code",
			                     "the code options leave nothing to make a code from");
		code = made;
	} else if (!code_ok(code)) {
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "code",
		                     "the code must be 1 to %u bytes of text", OTP_CODE_MAX);
	}

	int64_t now = env->now();
	verify_new_id(env->rng, now, "otp_", public_id, sizeof public_id);
	req.app_id = in->app_id;
	req.public_id = public_id;
	req.channel = in->channel;
	req.target = in->target;
	req.ip = in->ip;
	otp_code_hash(env->key, in->channel, in->target, code, req.code_hash);
	otp_lookup_hash(env->key, in->channel, code, req.lookup_hash);
	req.max_attempts = in->policy.max_attempts;
	req.max_sends = in->policy.max_sends;
	req.resend_cooldown = in->policy.resend_cooldown;
	req.consume = in->policy.consume;
	req.tmpl = in->msg.tmpl;
	req.lang = in->msg.lang;
	req.sender = in->msg.sender;
	req.fallback = in->fallback;
	req.now = now;
	req.expire_at = now + in->policy.lifetime;
	req.require_ip = in->require_ip;
	req.request_id = in->request_id;
	if (in->idem_key != NULL) {
		req.idem_key = in->idem_key;
		crypto_generichash(req.idem_fingerprint, sizeof req.idem_fingerprint,
		                   (const uint8_t *)in->idem_body, in->idem_body_len, NULL, 0);
		req.idem_since = now - IDEM_WINDOW;
	}
	if (in->keep_code) {
		sealed = seal_new(env, AD_CODE, (const uint8_t *)code, strlen(code), &sealed_len);
		if (sealed == NULL) {
			rc = nomem(err);
			goto out;
		}
		req.sealed_code = sealed;
		req.sealed_code_len = sealed_len;
	}
	rc = make_payload(env, in->channel, in->target, code, in->policy.lifetime, &in->msg,
	                  &payload, &payload_len);
	if (rc != 0) {
		rc = otp_error_set(err, rc, "internal", "", "could not encode the message");
		goto out;
	}
	req.provider = verify_provider(env->cfg, in->channel);
	req.payload = payload;
	req.payload_len = payload_len;
	req.skip = env->cfg->dummy;

	rc = store_vf_start(env->store, &req, &res);
	if (rc == OTP_ERR_LIMIT) {
		bool ip = res.refused_by.kind == OTP_LIMIT_IP;
		otp_error_set(err, OTP_ERR_LIMIT, ip ? "ip_limit" : "target_limit", "",
		              ip ? "the requester's address has reached its limit of sends"
		                 : "the recipient has reached its limit of sends");
		goto out;
	}
	if (rc == OTP_ERR_INVALID && res.ip_required) {
		rc = otp_error_set(err, OTP_ERR_INVALID, "missing_parameter", "ip",
		                   "\"ip\" parameter must be set");
		goto out;
	}
	if (rc == OTP_ERR_CONFLICT) {
		rc = otp_error_set(err, OTP_ERR_CONFLICT, "idempotency_mismatch", "Idempotency-Key",
		                   "this Idempotency-Key was used for another request in the last "
		                   "24 hours");
		goto out;
	}
	if (rc == OTP_ERR_INVALID) {
		rc = otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "",
		                   "the request holds a value the store cannot keep");
		goto out;
	}
	if (rc != 0) {
		rc = store_failed(err);
		goto out;
	}
	out->v = res.v;
	out->replayed = res.replayed;
	out->job_id = res.job_id;
	if (!res.replayed && !env->cfg->dummy && env->notify != NULL)
		env->notify(env->notify_arg);
out:
	sodium_memzero(made, sizeof made);
	sodium_memzero(&req, sizeof req);
	free(payload);
	if (sealed != NULL) {
		sodium_memzero(sealed, sealed_len);
		free(sealed);
	}
	return rc;
}

int verify_check(const struct verify_env *env, const struct verify_check *in,
                 struct store_check_result *out, struct otp_error *err)
{
	struct store_check req = {
		.by = in->by,
		.app_id = in->app_id,
		.public_id = in->public_id,
		.target = in->target,
		.channel_mask = in->channel_mask,
		.channel = in->channel,
		.key = env->key,
		.code = in->code,
		.ip = in->ip,
		.now = env->now(),
	};
	memset(out, 0, sizeof *out);
	if (!code_ok(in->code))
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "code",
		                     "the code must be 1 to %u bytes of text", OTP_CODE_MAX);
	if (in->by == STORE_CHECK_LOOKUP)
		otp_lookup_hash(env->key, in->channel, in->code, req.lookup_hash);
	int rc = store_vf_check(env->store, &req, out);
	sodium_memzero(&req, sizeof req);
	if (rc == OTP_ERR_INVALID)
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "",
		                     "the request holds a value the store cannot keep");
	if (rc != 0)
		return store_failed(err); /* fail closed: the caller answers 503, not false */
	return 0;
}

/* The code kept for a verification, opened into code (OTP_CODE_MAX + 1), and its
 * template into tmpl. */
static int kept_code(const struct verify_env *env, const char *app_id, const char *public_id,
                     char *code, char *tmpl, size_t tmpl_cap, struct otp_error *err)
{
	uint8_t *sealed = NULL;
	size_t len = 0, code_len = 0;
	int rc = store_vf_material(env->store, app_id, public_id, &sealed, &len, tmpl, tmpl_cap);
	if (rc == OTP_ERR_NOT_FOUND)
		return otp_error_set(err, OTP_ERR_NOT_FOUND, "not_found", "verification_id",
		                     "no such verification");
	if (rc != 0)
		return store_failed(err);
	if (sealed == NULL)
		return otp_error_set(err, OTP_ERR_CONFLICT, "not_pending", "verification_id",
		                     "the verification has ended: its code is no longer kept");
	if (len > OTP_CODE_MAX + OTP_SEAL_OVERHEAD ||
	    otp_open(env->key, AD_CODE, sealed, len, (uint8_t *)code, &code_len) != 0) {
		sodium_memzero(sealed, len);
		free(sealed);
		return otp_error_set(err, OTP_ERR_INTERNAL, "internal", "",
		                     "the kept code could not be opened (was the key changed?)");
	}
	sodium_memzero(sealed, len);
	free(sealed);
	code[code_len] = '\0';
	return 0;
}

static int resend_refused(const struct store_resend_result *res, int64_t now,
                          struct otp_error *err)
{
	switch (res->refusal) {
	case STORE_RESEND_NOT_PENDING:
		return otp_error_set(err, OTP_ERR_CONFLICT, "not_pending", "verification_id",
		                     "the verification is %s: there is nothing to resend",
		                     otp_vstatus_name(otp_vstatus_at(res->v.status, res->v.expire_at,
		                                                     now)));
	case STORE_RESEND_COOLDOWN: {
		int rc = otp_error_set(err, OTP_ERR_LIMIT, "resend_cooldown", "",
		                       "wait %lld seconds before sending it again",
		                       (long long)(res->retry_at - now));
		if (err != NULL)
			err->retry_after = res->retry_at - now;
		return rc;
	}
	case STORE_RESEND_MAX_SENDS:
		return otp_error_set(err, OTP_ERR_LIMIT, "max_sends_reached", "",
		                     "the verification was sent %d times, its most", res->v.max_sends);
	case STORE_RESEND_LIMIT: {
		bool ip = res->refused_by.kind == OTP_LIMIT_IP;
		return otp_error_set(err, OTP_ERR_LIMIT, ip ? "ip_limit" : "target_limit", "",
		                     ip ? "the requester's address has reached its limit of sends"
		                        : "the recipient has reached its limit of sends");
	}
	case STORE_RESEND_OK:
		break;
	}
	return otp_error_set(err, OTP_ERR_CONFLICT, "conflict", "verification_id",
	                     "the verification changed meanwhile: read it again");
}

int verify_resend(const struct verify_env *env, const struct verify_resend *in,
                  struct store_verification *out, struct otp_error *err)
{
	struct store_verification v;
	char code[OTP_CODE_MAX + 1] = "", tmpl[STORE_TEMPLATE_MAX];
	uint8_t *payload = NULL;
	size_t payload_len = 0;
	memset(out, 0, sizeof *out);
	int rc = verify_get(env, in->app_id, in->public_id, &v, err);
	if (rc != 0)
		return rc;
	int64_t now = env->now();
	if (otp_vstatus_at(v.status, v.expire_at, now) != OTP_VS_PENDING) {
		*out = v;
		return otp_error_set(err, OTP_ERR_CONFLICT, "not_pending", "verification_id",
		                     "the verification is %s: there is nothing to resend",
		                     otp_vstatus_name(otp_vstatus_at(v.status, v.expire_at, now)));
	}
	if ((rc = kept_code(env, in->app_id, in->public_id, code, tmpl, sizeof tmpl, err)) != 0)
		return rc;
	enum otp_channel ch = in->to_channel ? in->channel : v.cur_channel;
	const char *target = in->to_channel ? in->target : v.cur_target;
	struct verify_message msg = {
		.tmpl = tmpl[0] ? tmpl : NULL,
		.lang = v.lang[0] ? v.lang : NULL,
		.sender = v.sender[0] ? v.sender : NULL,
	};
	int lifetime = (int)(v.expire_at - now);
	rc = make_payload(env, ch, target, code, lifetime, &msg, &payload, &payload_len);
	sodium_memzero(code, sizeof code);
	if (rc != 0)
		return otp_error_set(err, rc, "internal", "", "could not encode the message");

	struct store_resend req = {
		.app_id = in->app_id,
		.public_id = in->public_id,
		.expect_sends = v.sends,
		.channel = ch,
		.target = target,
		.fallback = in->to_channel ? in->fallback : (v.fallback[0] ? v.fallback : NULL),
		.ip = in->ip ? in->ip : (v.ip[0] ? v.ip : NULL),
		.now = now,
		.provider = verify_provider(env->cfg, ch),
		.payload = payload,
		.payload_len = payload_len,
		.skip = env->cfg->dummy,
		.request_id = in->request_id,
	};
	struct store_resend_result res;
	rc = store_vf_resend(env->store, &req, &res);
	free(payload);
	if (rc == OTP_ERR_NOT_FOUND)
		return otp_error_set(err, OTP_ERR_NOT_FOUND, "not_found", "verification_id",
		                     "no such verification");
	if (rc == OTP_ERR_CONFLICT || rc == OTP_ERR_LIMIT) {
		*out = res.v;
		return resend_refused(&res, now, err);
	}
	if (rc == OTP_ERR_INVALID)
		return otp_error_set(err, OTP_ERR_INVALID, "invalid_parameter", "",
		                     "the request holds a value the store cannot keep");
	if (rc != 0)
		return store_failed(err);
	*out = res.v;
	if (!env->cfg->dummy && env->notify != NULL)
		env->notify(env->notify_arg);
	return 0;
}

int verify_cancel(const struct verify_env *env, const char *app_id, const char *public_id,
                  struct store_verification *out, struct otp_error *err)
{
	int64_t now = env->now();
	int rc = store_vf_cancel(env->store, app_id, public_id, now, out);
	if (rc == OTP_ERR_NOT_FOUND || rc == OTP_ERR_INVALID)
		return otp_error_set(err, OTP_ERR_NOT_FOUND, "not_found", "verification_id",
		                     "no such verification");
	if (rc == OTP_ERR_CONFLICT)
		return otp_error_set(err, OTP_ERR_CONFLICT, "not_pending", "verification_id",
		                     "the verification is %s: it cannot be canceled",
		                     otp_vstatus_name(otp_vstatus_at(out->status, out->expire_at, now)));
	if (rc != 0)
		return store_failed(err);
	return 0;
}

int verify_get(const struct verify_env *env, const char *app_id, const char *public_id,
               struct store_verification *out, struct otp_error *err)
{
	int rc = store_vf_get(env->store, app_id, public_id, out);
	/* an id the store cannot even hold names no verification either */
	if (rc == OTP_ERR_NOT_FOUND || rc == OTP_ERR_INVALID)
		return otp_error_set(err, OTP_ERR_NOT_FOUND, "not_found", "verification_id",
		                     "no such verification");
	if (rc != 0)
		return store_failed(err);
	return 0;
}
