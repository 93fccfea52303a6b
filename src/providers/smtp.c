/*
 * smtp.c - the `smtp` provider: email through libcurl's SMTP client (smtp:// with
 * STARTTLS as OTPD_SMTP_STARTTLS says, smtps:// with implicit TLS, AUTH when a username is
 * set). The MIME structure and the body encodings (quoted-printable, base64) are
 * libcurl's (curl_mime_*): the text part, or a multipart/alternative of text and html.
 * What libcurl does not do is ours: the header fields (Date, From, To, Subject in RFC 2047
 * encoded-words when not plain ASCII, Message-ID), built only from validated addresses
 * and a subject whose line breaks are removed, so no input can add a header.
 */
#include <curl/curl.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/errors.h"
#include "providers/impl.h"

#define SMTP_MESSAGE_MAX (1024u * 1024u)
#define SMTP_ADDR_MAX 254u
#define SMTP_WORD_BYTES 39u /* input bytes per encoded-word: 52 base64 chars, 64 in all */

struct smtp_provider {
	struct provider base;
	const struct config *cfg;
	char *from_addr;    /* MAIL FROM */
	char *from_header;  /* From: value, display name encoded or quoted */
	char *domain;       /* right of the Message-ID */
	long use_ssl;       /* CURLOPT_USE_SSL */
};

/* An address we put in MAIL FROM / RCPT TO / a header: local@domain, no white space,
 * no control characters, nothing that ends or comments an address. */
static bool addr_ok(const char *a)
{
	size_t n = strlen(a);
	const char *at = strrchr(a, '@');
	if (n < 3 || n > SMTP_ADDR_MAX || at == NULL || at == a || at[1] == '\0')
		return false;
	for (const unsigned char *p = (const unsigned char *)a; *p; p++)
		if (*p <= ' ' || *p == 0x7f || strchr("<>()[],;:\"\\", *p) != NULL)
			return false;
	return true;
}

static void b64_add(struct provider_buf *b, const unsigned char *in, size_t n)
{
	char out[sodium_base64_ENCODED_LEN(SMTP_WORD_BYTES, sodium_base64_VARIANT_ORIGINAL)];
	while (n > 0) {
		size_t take = n < SMTP_WORD_BYTES ? n : SMTP_WORD_BYTES;
		sodium_bin2base64(out, sizeof out, in, take, sodium_base64_VARIANT_ORIGINAL);
		provider_buf_adds(b, out);
		in += take;
		n -= take;
	}
}

/* RFC 2047 B encoded-words, each whole UTF-8 characters, folded with CRLF SP. */
static void encoded_words(struct provider_buf *b, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n = strlen(s);
	bool first = true;
	while (n > 0) {
		size_t take = n < SMTP_WORD_BYTES ? n : SMTP_WORD_BYTES;
		/* do not split a character: end the word before the next one's lead byte */
		size_t cut = take;
		while (cut < n && cut > 0 && take - cut < 3 && (p[cut] & 0xC0) == 0x80)
			cut--;
		if (cut > 0 && (cut == n || (p[cut] & 0xC0) != 0x80))
			take = cut;
		provider_buf_adds(b, first ? "=?UTF-8?B?" : "\r\n =?UTF-8?B?");
		b64_add(b, p, take);
		provider_buf_adds(b, "?=");
		p += take;
		n -= take;
		first = false;
	}
}

static bool plain_ascii(const char *s, size_t max)
{
	size_t n = 0;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++, n++)
		if (*p < 0x20 || *p > 0x7e)
			return false;
	return n <= max && strstr(s, "=?") == NULL;
}

/* A header text with every control character (CR and LF above all) made a space. */
static char *one_line(const char *s)
{
	char *t = strdup(s);
	if (t == NULL)
		return NULL;
	for (unsigned char *p = (unsigned char *)t; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			*p = ' ';
	return t;
}

static void date_add(struct provider_buf *b, time_t now)
{
	static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	struct tm tm;
	if (gmtime_r(&now, &tm) == NULL || tm.tm_wday < 0 || tm.tm_wday > 6 || tm.tm_mon < 0 ||
	    tm.tm_mon > 11) {
		b->failed = true;
		return;
	}
	provider_buf_addf(b, "Date: %s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday],
	                  tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
	                  tm.tm_sec);
}

/* Stable across retries of one job and different between two messages: the job id and
 * a digest of what is sent (two deployments' job 12 to one mailbox must not collide,
 * as mail systems drop a second message with a Message-ID they have seen). */
static void message_digest(const struct otp_message *m, int64_t job_id, char hex[33])
{
	crypto_hash_sha256_state st;
	unsigned char d[crypto_hash_sha256_BYTES];
	char id[24];
	const char *parts[] = {m->target, m->subject, m->text, m->html};
	int n = snprintf(id, sizeof id, "%" PRId64, job_id);
	crypto_hash_sha256_init(&st);
	crypto_hash_sha256_update(&st, (const unsigned char *)id, (unsigned long long)n);
	for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
		const char *s = parts[i] ? parts[i] : "";
		crypto_hash_sha256_update(&st, (const unsigned char *)s, strlen(s) + 1);
	}
	crypto_hash_sha256_final(&st, d);
	sodium_bin2hex(hex, 33, d, 16);
	sodium_memzero(&st, sizeof st);
}

/* The header fields into hdr, one per list item; fills msgid (without brackets). */
static void build_headers(const struct smtp_provider *sp, const struct otp_message *m,
                          int64_t job_id, time_t now, struct curl_slist **hdr,
                          char *msgid, size_t msgid_cap, bool *failed)
{
	char digest[33];
	struct provider_buf b;
	char *subject = one_line(m->subject ? m->subject : "");
	if (subject == NULL) {
		*failed = true;
		return;
	}
	message_digest(m, job_id, digest);
	snprintf(msgid, msgid_cap, "otpd.%" PRId64 ".%.16s@%s", job_id, digest, sp->domain);
	for (int field = 0; field < 6 && !*failed; field++) {
		provider_buf_init(&b, SMTP_MESSAGE_MAX);
		switch (field) {
		case 0:
			date_add(&b, now);
			break;
		case 1:
			provider_buf_addf(&b, "From: %s", sp->from_header);
			break;
		case 2:
			provider_buf_addf(&b, "To: %s", m->target);
			break;
		case 3:
			provider_buf_adds(&b, "Subject: ");
			if (plain_ascii(subject, 68))
				provider_buf_adds(&b, subject);
			else
				encoded_words(&b, subject);
			break;
		case 4:
			provider_buf_addf(&b, "Message-ID: <%s>", msgid);
			break;
		default:
			provider_buf_adds(&b, "Auto-Submitted: auto-generated");
			break;
		}
		struct curl_slist *next = b.failed ? NULL : curl_slist_append(*hdr, b.p);
		if (next == NULL)
			*failed = true;
		else
			*hdr = next;
		provider_buf_fini(&b);
	}
	free(subject);
}

/* A copy of s with every line break as CRLF: libcurl's quoted-printable encoder keeps
 * CRLF as a line break and would escape a bare LF. */
static char *crlf_lines(const char *s)
{
	struct provider_buf b;
	provider_buf_init(&b, SMTP_MESSAGE_MAX);
	for (const char *p = s; *p; p++) {
		if (*p == '\r' || *p == '\n') {
			if (p[0] == '\r' && p[1] == '\n')
				p++;
			provider_buf_adds(&b, "\r\n");
		} else {
			provider_buf_add(&b, p, 1);
		}
	}
	provider_buf_add(&b, "", 0);
	char *out = b.failed || b.p == NULL ? NULL : strdup(b.p);
	provider_buf_fini(&b);
	return out;
}

/* One body part of mime: its type with charset, and quoted-printable for mostly-ASCII
 * text (readable), base64 otherwise (a third smaller for Cyrillic). */
static bool part_add(curl_mime *mime, const char *type, const char *content)
{
	size_t n = 0, high = 0;
	for (const unsigned char *p = (const unsigned char *)content; *p; p++, n++)
		if (*p >= 0x80)
			high++;
	char *text = crlf_lines(content);
	curl_mimepart *part = curl_mime_addpart(mime);
	bool ok = text != NULL && part != NULL &&
	          curl_mime_data(part, text, CURL_ZERO_TERMINATED) == CURLE_OK &&
	          curl_mime_type(part, type) == CURLE_OK &&
	          curl_mime_encoder(part, high * 3 > n ? "base64" : "quoted-printable") == CURLE_OK;
	free(text); /* curl_mime_data copied it */
	return ok;
}

/* The body: the text part, or text and html as the alternatives of the message itself
 * (its Content-Type header is then multipart/alternative, which libcurl completes with
 * the boundary); neither (the compat /email takes both as optional): an empty text part,
 * as the old service's mail carried just the subject. NULL when out of memory. */
static curl_mime *build_body(CURL *h, const struct otp_message *m, struct curl_slist **hdr)
{
	curl_mime *mime = curl_mime_init(h);
	if (mime == NULL)
		return NULL;
	bool ok;
	if (m->text != NULL && m->html != NULL) {
		struct curl_slist *next = curl_slist_append(*hdr, "Content-Type: multipart/alternative");
		if (next != NULL)
			*hdr = next;
		ok = next != NULL && part_add(mime, "text/plain; charset=UTF-8", m->text) &&
		     part_add(mime, "text/html; charset=UTF-8", m->html);
	} else {
		const char *content = m->html != NULL ? m->html : m->text != NULL ? m->text : "";
		ok = part_add(mime, m->html != NULL ? "text/html; charset=UTF-8"
		                                    : "text/plain; charset=UTF-8", content);
	}
	if (!ok) {
		curl_mime_free(mime);
		return NULL;
	}
	return mime;
}

static int classify(CURLcode cc, long reply)
{
	switch (cc) {
	case CURLE_OK:
		return 0;
	case CURLE_URL_MALFORMAT:
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_LOGIN_DENIED:     /* wrong OTPD_SMTP_USERNAME / PASSWORD */
	case CURLE_USE_SSL_FAILED:   /* OTPD_SMTP_STARTTLS=require, server has no STARTTLS */
		return OTP_ERR_PERMANENT;
	case CURLE_OUT_OF_MEMORY:
		return OTP_ERR_NOMEM;
	default:
		/* the server refused: 5xx is final (no such mailbox, ...), 4xx temporary */
		if (reply >= 500 && reply <= 599)
			return OTP_ERR_PERMANENT;
		return OTP_ERR_PROVIDER;
	}
}

static int smtp_send(struct provider *p, struct provider_session *sess,
                     const struct otp_message *m, int64_t job_id, struct provider_result *r)
{
	const struct smtp_provider *sp = (const struct smtp_provider *)p;
	const struct config *cfg = sp->cfg;
	struct curl_slist *rcpt = NULL, *hdr = NULL;
	curl_mime *body = NULL;
	CURL *h = NULL;
	char errbuf[CURL_ERROR_SIZE] = "";
	char msgid[SMTP_ADDR_MAX + 64];
	char rcpt_addr[SMTP_ADDR_MAX + 3];
	bool failed = false;
	int rc;

	r->msg_id[0] = '\0';
	r->error[0] = '\0';
	if (m->channel != OTP_CH_EMAIL)
		return provider_fail(r, OTP_ERR_PERMANENT, "smtp provider does not deliver channel %s",
		                     otp_channel_name(m->channel));
	if (m->target == NULL || !addr_ok(m->target))
		return provider_fail(r, OTP_ERR_PERMANENT, "not a deliverable email address");
	if ((m->text ? strlen(m->text) : 0) + (m->html ? strlen(m->html) : 0) > SMTP_MESSAGE_MAX / 2)
		return provider_fail(r, OTP_ERR_PERMANENT, "email too large");

	build_headers(sp, m, job_id, time(NULL), &hdr, msgid, sizeof msgid, &failed);
	snprintf(rcpt_addr, sizeof rcpt_addr, "<%s>", m->target);
	if (failed || (rcpt = curl_slist_append(NULL, rcpt_addr)) == NULL ||
	    (h = provider_session_get(sess)) == NULL || (body = build_body(h, m, &hdr)) == NULL) {
		rc = provider_fail(r, OTP_ERR_NOMEM, "out of memory");
		goto out;
	}
	long timeout = cfg->provider_timeout > 0 ? cfg->provider_timeout : 10;
	CURLcode cc;
	if ((cc = curl_easy_setopt(h, CURLOPT_URL, cfg->smtp_url)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "smtp,smtps")) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_TIMEOUT, timeout)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_USE_SSL, sp->use_ssl)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_MAIL_FROM, sp->from_addr)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_MAIL_RCPT, rcpt)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_MIMEPOST, body)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, provider_curl_cancel_cb)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_XFERINFODATA, (void *)&p->cancelled)) != CURLE_OK) {
		rc = provider_fail(r, classify(cc, 0), "%s", curl_easy_strerror(cc));
		goto out;
	}
	if (!provider_unset(cfg->smtp_username)) {
		if ((cc = curl_easy_setopt(h, CURLOPT_USERNAME, cfg->smtp_username)) != CURLE_OK ||
		    (cc = curl_easy_setopt(h, CURLOPT_PASSWORD,
		                           cfg->smtp_password ? cfg->smtp_password : "")) != CURLE_OK) {
			rc = provider_fail(r, OTP_ERR_NOMEM, "%s", curl_easy_strerror(cc));
			goto out;
		}
	}
	cc = curl_easy_perform(h);
	if (cc == CURLE_ABORTED_BY_CALLBACK) {
		rc = provider_fail(r, OTP_ERR_PROVIDER, "cancelled at shutdown");
		goto out;
	}
	if (cc == CURLE_OK) {
		provider_copy_detail(r->msg_id, sizeof r->msg_id, msgid);
		rc = 0;
		goto out;
	}
	long reply = 0;
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &reply);
	char detail[CURL_ERROR_SIZE];
	provider_copy_detail(detail, sizeof detail, errbuf[0] ? errbuf : curl_easy_strerror(cc));
	if (reply > 0)
		rc = provider_fail(r, classify(cc, reply), "SMTP %ld: %s", reply, detail);
	else
		rc = provider_fail(r, classify(cc, reply), "%s", detail);
out:
	provider_session_put(sess, h); /* before the lists and body it points at are freed */
	curl_mime_free(body);
	curl_slist_free_all(hdr);
	curl_slist_free_all(rcpt);
	provider_result_scrub(r, m->code, cfg->smtp_password);
	return rc;
}

static void smtp_free(struct provider *p)
{
	struct smtp_provider *sp = (struct smtp_provider *)p;
	if (sp == NULL)
		return;
	free(sp->from_addr);
	free(sp->from_header);
	free(sp->domain);
	free(sp);
}

static const struct provider_ops smtp_ops = {
	.name = "smtp",
	.send = smtp_send,
	.free = smtp_free,
};

static char *trimmed(const char *s, size_t n)
{
	while (n > 0 && (*s == ' ' || *s == '\t')) {
		s++;
		n--;
	}
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		n--;
	return strndup(s, n);
}

/*
 * OTPD_SMTP_FROM is "addr@example.com", "Name <addr@example.com>" or
 * "\"Name\" <addr@example.com>". Sets the bare address and the From: header value.
 */
static int parse_from(struct smtp_provider *sp, const char *from, char *err, size_t cap)
{
	struct provider_buf h;
	char *name = NULL;
	int rc = OTP_ERR_INVALID;

	provider_buf_init(&h, 4096);
	for (const unsigned char *p = (const unsigned char *)from; *p; p++) {
		if (*p < 0x20 || *p == 0x7f) {
			snprintf(err, cap, "smtp: OTPD_SMTP_FROM contains a control character");
			goto out;
		}
	}
	const char *lt = strchr(from, '<');
	if (lt != NULL) {
		const char *gt = strchr(lt, '>');
		if (gt == NULL || gt[1 + strspn(gt + 1, " \t")] != '\0') {
			snprintf(err, cap, "smtp: OTPD_SMTP_FROM is not \"Name <address>\"");
			goto out;
		}
		name = trimmed(from, (size_t)(lt - from));
		sp->from_addr = trimmed(lt + 1, (size_t)(gt - lt - 1));
	} else {
		name = strdup("");
		sp->from_addr = trimmed(from, strlen(from));
	}
	if (name == NULL || sp->from_addr == NULL) {
		snprintf(err, cap, "smtp: out of memory");
		goto out;
	}
	if (!addr_ok(sp->from_addr)) {
		snprintf(err, cap, "smtp: OTPD_SMTP_FROM has no valid address");
		goto out;
	}
	size_t nl = strlen(name);
	if (nl >= 2 && name[0] == '"' && name[nl - 1] == '"') {
		memmove(name, name + 1, nl - 2);
		name[nl - 2] = '\0';
	}
	if (name[0] == '\0') {
		provider_buf_adds(&h, sp->from_addr);
	} else {
		if (plain_ascii(name, 60) && strpbrk(name, "()<>[]:;@\\,.\"") == NULL) {
			provider_buf_adds(&h, name); /* an atom phrase: no quoting needed */
		} else if (plain_ascii(name, 60)) {
			provider_buf_adds(&h, "\"");
			for (const char *c = name; *c; c++) {
				if (*c == '"' || *c == '\\')
					provider_buf_adds(&h, "\\");
				provider_buf_add(&h, c, 1);
			}
			provider_buf_adds(&h, "\"");
		} else {
			encoded_words(&h, name);
		}
		provider_buf_addf(&h, " <%s>", sp->from_addr);
	}
	if (h.failed || (sp->from_header = strdup(h.p)) == NULL) {
		snprintf(err, cap, "smtp: out of memory");
		goto out;
	}
	if ((sp->domain = strdup(strrchr(sp->from_addr, '@') + 1)) == NULL) {
		snprintf(err, cap, "smtp: out of memory");
		goto out;
	}
	rc = 0;
out:
	free(name);
	provider_buf_fini(&h);
	return rc;
}

static struct provider *provider_smtp_new(const struct config *cfg, char *err, size_t cap)
{
	const struct provider_setting need[] = {
		{"OTPD_SMTP_URL", cfg->smtp_url},
		{"OTPD_SMTP_FROM", cfg->smtp_from},
	};
	if (!provider_require("smtp", need, sizeof need / sizeof need[0], err, cap))
		return NULL;
	if (strncmp(cfg->smtp_url, "smtp://", 7) != 0 && strncmp(cfg->smtp_url, "smtps://", 8) != 0) {
		snprintf(err, cap, "smtp: OTPD_SMTP_URL must start with smtp:// or smtps://");
		return NULL;
	}
	long use_ssl;
	const char *tls = provider_unset(cfg->smtp_starttls) ? "try" : cfg->smtp_starttls;
	if (strcmp(tls, "try") == 0) {
		use_ssl = CURLUSESSL_TRY;
	} else if (strcmp(tls, "require") == 0) {
		use_ssl = CURLUSESSL_ALL;
	} else if (strcmp(tls, "off") == 0) {
		use_ssl = CURLUSESSL_NONE;
	} else {
		snprintf(err, cap, "smtp: OTPD_SMTP_STARTTLS must be try, require or off");
		return NULL;
	}
	if (strncmp(cfg->smtp_url, "smtps://", 8) == 0)
		use_ssl = CURLUSESSL_ALL; /* implicit TLS: never fall back to clear text */
	struct smtp_provider *sp = calloc(1, sizeof *sp);
	if (sp == NULL) {
		snprintf(err, cap, "smtp: out of memory");
		return NULL;
	}
	sp->base.ops = &smtp_ops;
	sp->cfg = cfg;
	sp->use_ssl = use_ssl;
	if (parse_from(sp, cfg->smtp_from, err, cap) != 0) {
		smtp_free(&sp->base);
		return NULL;
	}
	return &sp->base;
}

static const char *const smtp_settings[] = {"OTPD_SMTP_URL", "OTPD_SMTP_USERNAME", "OTPD_SMTP_PASSWORD", "OTPD_SMTP_FROM", "OTPD_SMTP_STARTTLS", NULL};

const struct provider_def provider_smtp_def = {
	.name = "smtp",
	.channels = OTP_CH_BIT(OTP_CH_EMAIL),
	.settings = smtp_settings,
	.make = provider_smtp_new,
};
