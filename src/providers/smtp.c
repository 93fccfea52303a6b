/*
 * smtp.c - the `smtp` provider: email through libcurl's SMTP client (smtp:// with
 * STARTTLS as OTPD_SMTP_STARTTLS says, smtps:// with implicit TLS, AUTH when a username is
 * set). It writes a complete RFC 5322 / MIME message: CRLF lines, a Subject in RFC 2047
 * encoded-words when it is not plain ASCII, text/plain or multipart/alternative with an
 * html part, quoted-printable or base64 bodies. Headers are built only from validated
 * addresses and a subject whose line breaks are removed, so no input can add a header.
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

/*
 * Quoted-printable (RFC 2045 6.7): lines of at most 76 characters with soft breaks,
 * every line break of the input as CRLF, "=" and non-ASCII as =XX, white space before a
 * line end encoded, and a "." starting a line encoded so no line can end the DATA.
 */
static void qp_add(struct provider_buf *b, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *p = (const unsigned char *)s;
	size_t col = 0;
	while (*p) {
		if (*p == '\r' || *p == '\n') {
			if (p[0] == '\r' && p[1] == '\n')
				p++;
			p++;
			provider_buf_adds(b, "\r\n");
			col = 0;
			continue;
		}
		bool eol = p[1] == '\0' || p[1] == '\r' || p[1] == '\n';
		bool literal = (*p >= 33 && *p <= 126 && *p != '=') ||
		               ((*p == ' ' || *p == '\t') && !eol);
		size_t width = literal ? 1 : 3;
		if (col + width > 75) {
			provider_buf_adds(b, "=\r\n");
			col = 0;
		}
		if (literal && !(col == 0 && *p == '.')) {
			provider_buf_add(b, p, 1);
			col += 1;
		} else {
			char t[3] = {'=', hex[*p >> 4], hex[*p & 15]};
			provider_buf_add(b, t, 3);
			col += 3;
		}
		p++;
	}
}

static void base64_body_add(struct provider_buf *b, const char *s)
{
	/* 57 input bytes = 76 base64 characters per line */
	char line[sodium_base64_ENCODED_LEN(57, sodium_base64_VARIANT_ORIGINAL)];
	const unsigned char *p = (const unsigned char *)s;
	size_t n = strlen(s);
	while (n > 0) {
		size_t take = n < 57 ? n : 57;
		sodium_bin2base64(line, sizeof line, p, take, sodium_base64_VARIANT_ORIGINAL);
		provider_buf_adds(b, line);
		provider_buf_adds(b, "\r\n");
		p += take;
		n -= take;
	}
}

/* One body part: headers, blank line, encoded content ending in CRLF. Mostly-ASCII text
 * goes quoted-printable (readable), the rest base64 (a third smaller for Cyrillic). */
static void part_add(struct provider_buf *b, const char *mime, const char *content)
{
	size_t n = 0, high = 0;
	for (const unsigned char *p = (const unsigned char *)content; *p; p++, n++)
		if (*p >= 0x80)
			high++;
	bool b64 = high * 3 > n;
	provider_buf_addf(b, "Content-Type: %s; charset=UTF-8\r\n", mime);
	provider_buf_addf(b, "Content-Transfer-Encoding: %s\r\n\r\n",
	                  b64 ? "base64" : "quoted-printable");
	if (b64) {
		base64_body_add(b, content);
	} else {
		qp_add(b, content);
		if (b->len < 2 || b->p == NULL || memcmp(b->p + b->len - 2, "\r\n", 2) != 0)
			provider_buf_adds(b, "\r\n");
	}
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
	provider_buf_addf(b, "Date: %s, %02d %s %04d %02d:%02d:%02d +0000\r\n", days[tm.tm_wday],
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

/* The whole message into b; fills msgid (without brackets). */
static void build_message(const struct smtp_provider *sp, const struct otp_message *m,
                          int64_t job_id, time_t now, struct provider_buf *b,
                          char *msgid, size_t msgid_cap)
{
	char digest[33];
	char *subject = one_line(m->subject ? m->subject : "");
	if (subject == NULL) {
		b->failed = true;
		return;
	}
	message_digest(m, job_id, digest);
	snprintf(msgid, msgid_cap, "otpd.%" PRId64 ".%.16s@%s", job_id, digest, sp->domain);

	date_add(b, now);
	provider_buf_addf(b, "From: %s\r\n", sp->from_header);
	provider_buf_adds(b, "To: ");
	provider_buf_adds(b, m->target);
	provider_buf_adds(b, "\r\nSubject: ");
	if (plain_ascii(subject, 68))
		provider_buf_adds(b, subject);
	else
		encoded_words(b, subject);
	provider_buf_adds(b, "\r\n");
	provider_buf_addf(b, "Message-ID: <%s>\r\n", msgid);
	provider_buf_adds(b, "MIME-Version: 1.0\r\n");
	provider_buf_adds(b, "Auto-Submitted: auto-generated\r\n");
	if (m->text != NULL && m->html != NULL) {
		char boundary[48];
		snprintf(boundary, sizeof boundary, "=_otpd_%.16s", digest + 16);
		provider_buf_addf(b, "Content-Type: multipart/alternative; boundary=\"%s\"\r\n\r\n",
		                  boundary);
		provider_buf_addf(b, "--%s\r\n", boundary);
		part_add(b, "text/plain", m->text);
		provider_buf_addf(b, "--%s\r\n", boundary);
		part_add(b, "text/html", m->html);
		provider_buf_addf(b, "--%s--\r\n", boundary);
	} else if (m->html != NULL) {
		part_add(b, "text/html", m->html);
	} else {
		/* neither part (the compat /email takes both as optional): the old service's
		 * mail carried just the subject, and so does this one */
		part_add(b, "text/plain", m->text ? m->text : "");
	}
	free(subject);
}

struct upload {
	const char *p;
	size_t len, off;
};

static size_t on_read(char *dst, size_t size, size_t nmemb, void *ctx)
{
	struct upload *u = ctx;
	size_t room = size * nmemb;
	size_t n = u->len - u->off < room ? u->len - u->off : room;
	memcpy(dst, u->p + u->off, n);
	u->off += n;
	return n;
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
	struct provider_buf msg;
	struct curl_slist *rcpt = NULL;
	CURL *h = NULL;
	char errbuf[CURL_ERROR_SIZE] = "";
	char msgid[SMTP_ADDR_MAX + 64];
	char rcpt_addr[SMTP_ADDR_MAX + 3];
	int rc;

	r->msg_id[0] = '\0';
	r->error[0] = '\0';
	provider_buf_init(&msg, SMTP_MESSAGE_MAX);
	if (m->channel != OTP_CH_EMAIL)
		return provider_fail(r, OTP_ERR_PERMANENT, "smtp provider does not deliver channel %s",
		                     otp_channel_name(m->channel));
	if (m->target == NULL || !addr_ok(m->target))
		return provider_fail(r, OTP_ERR_PERMANENT, "not a deliverable email address");

	build_message(sp, m, job_id, time(NULL), &msg, msgid, sizeof msgid);
	if (msg.failed) {
		rc = provider_fail(r, OTP_ERR_PERMANENT, "email too large or out of memory");
		goto out;
	}
	snprintf(rcpt_addr, sizeof rcpt_addr, "<%s>", m->target);
	if ((rcpt = curl_slist_append(NULL, rcpt_addr)) == NULL || (h = provider_session_get(sess)) == NULL) {
		rc = provider_fail(r, OTP_ERR_NOMEM, "out of memory");
		goto out;
	}
	struct upload up = {.p = msg.p, .len = msg.len, .off = 0};
	long timeout = cfg->provider_timeout > 0 ? cfg->provider_timeout : 10;
	CURLcode cc;
	if ((cc = curl_easy_setopt(h, CURLOPT_URL, cfg->smtp_url)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "smtp,smtps")) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_TIMEOUT, timeout)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_USE_SSL, sp->use_ssl)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_MAIL_FROM, sp->from_addr)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_MAIL_RCPT, rcpt)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_UPLOAD, 1L)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_READDATA, &up)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)msg.len)) != CURLE_OK ||
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
	provider_session_put(sess, h);
	curl_slist_free_all(rcpt);
	provider_buf_fini(&msg);
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
