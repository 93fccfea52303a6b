/*
 * http.c - POST through libcurl for the HTTP providers: a total timeout of
 * cfg->provider_timeout seconds, http/https only, no redirects, no signals, and an
 * answer kept up to PROVIDER_HTTP_BODY_MAX bytes. Errors never contain the URL (a
 * Telegram Bot URL holds its token) and are scrubbed of req->redact.
 *
 * DESIGN: a provider_session is one libcurl easy handle owned by one outbox worker
 * thread. curl_easy_reset() between transfers clears every option (so nothing of one
 * provider's request leaks into the next: headers, credentials, body) but keeps the
 * handle's connection cache, DNS cache and TLS session ids, so consecutive deliveries
 * to one provider reuse its connection (HTTP keep-alive, one TLS handshake) instead of
 * opening a new one each time. Without a session a call makes and drops its own handle.
 */
#include "providers/http.h"

#include <curl/curl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "providers/impl.h"

static size_t on_body(char *data, size_t size, size_t nmemb, void *ctx)
{
	struct provider_http_resp *resp = ctx;
	size_t n = size * nmemb;
	size_t room = PROVIDER_HTTP_BODY_MAX - resp->len;
	size_t take = n < room ? n : room;
	memcpy(resp->body + resp->len, data, take);
	resp->len += take;
	resp->body[resp->len] = '\0';
	if (take < n)
		resp->truncated = true; /* keep reading: the status matters, not the tail */
	return n;
}

static void transport_error(CURLcode cc, const char *detail, const char *redact,
                            char *err, size_t cap)
{
	char d[CURL_ERROR_SIZE];
	provider_copy_detail(d, sizeof d, detail[0] ? detail : curl_easy_strerror(cc));
	size_t n = redact ? strlen(redact) : 0;
	for (char *p = n ? strstr(d, redact) : NULL; p != NULL; p = strstr(p + n, redact))
		memset(p, '*', n);
	snprintf(err, cap, "%s", d);
}

int provider_curl_cancel_cb(void *data, curl_off_t dltotal, curl_off_t dlnow,
                            curl_off_t ultotal, curl_off_t ulnow)
{
	(void)dltotal; (void)dlnow; (void)ultotal; (void)ulnow;
	return atomic_load((const atomic_bool *)data) ? 1 : 0;
}

int provider_http_classify(long status)
{
	if (status >= 200 && status <= 299)
		return 0;
	if (status == 408 || status == 429 || (status >= 500 && status <= 599))
		return OTP_ERR_PROVIDER;
	return OTP_ERR_PERMANENT;
}

struct provider_session {
	CURL *h;
	bool busy;       /* handed out and not yet put back: a bug if asked again */
};

struct provider_session *provider_session_new(void)
{
	provider_global_init();
	struct provider_session *s = calloc(1, sizeof *s);
	if (s != NULL && (s->h = curl_easy_init()) == NULL) {
		free(s);
		s = NULL;
	}
	return s;
}

void provider_session_free(struct provider_session *s)
{
	if (s == NULL)
		return;
	curl_easy_cleanup(s->h);
	free(s);
}

CURL *provider_session_get(struct provider_session *s)
{
	provider_global_init();
	if (s == NULL || s->busy)
		return curl_easy_init();
	s->busy = true;
	curl_easy_reset(s->h);
	return s->h;
}

void provider_session_put(struct provider_session *s, CURL *h)
{
	if (h == NULL)
		return;
	if (s != NULL && s->h == h) {
		/* the request's buffers (headers, body, error buffer) die with the caller's
		 * frame: no option may keep pointing at them */
		curl_easy_reset(h);
		s->busy = false;
		return;
	}
	curl_easy_cleanup(h);
}

int provider_http_post(const struct config *cfg, struct provider_session *s,
                       const struct provider_http_req *req, struct provider_http_resp *resp,
                       char *err, size_t cap)
{
	int rc = OTP_ERR_NOMEM;
	CURL *h = NULL;
	struct curl_slist *hdrs = NULL, *tmp = NULL;
	char errbuf[CURL_ERROR_SIZE] = "";
	char ctype[128];

	resp->status = 0;
	resp->len = 0;
	resp->truncated = false;
	resp->body[0] = '\0';
	if (cap > 0)
		err[0] = '\0';

	h = provider_session_get(s);
	if (h == NULL) {
		snprintf(err, cap, "cannot create an HTTP client");
		goto out;
	}
	/* "Expect:" turns off 100-continue: one round trip, and fakes need not speak it */
	snprintf(ctype, sizeof ctype, "Content-Type: %s",
	         req->content_type ? req->content_type : "application/octet-stream");
	const char *fixed[] = {ctype, "Expect:", "Accept: application/json, */*"};
	for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
		if ((tmp = curl_slist_append(hdrs, fixed[i])) == NULL)
			goto out;
		hdrs = tmp;
	}
	for (size_t i = 0; req->headers != NULL && req->headers[i] != NULL; i++) {
		if ((tmp = curl_slist_append(hdrs, req->headers[i])) == NULL)
			goto out;
		hdrs = tmp;
	}

	long timeout = cfg->provider_timeout > 0 ? cfg->provider_timeout : 10;
	CURLcode cc = CURLE_OK;
	if ((cc = curl_easy_setopt(h, CURLOPT_URL, req->url)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https")) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_TIMEOUT, timeout)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_USERAGENT, "otpd")) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_POST, 1L)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body ? req->body : "")) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_WRITEDATA, resp)) != CURLE_OK ||
	    (cc = curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf)) != CURLE_OK) {
		rc = cc == CURLE_OUT_OF_MEMORY ? OTP_ERR_NOMEM : OTP_ERR_PERMANENT;
		transport_error(cc, "", req->redact, err, cap);
		goto out;
	}
	if (req->basic_user != NULL && req->basic_password != NULL) {
		if ((cc = curl_easy_setopt(h, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC)) != CURLE_OK ||
		    (cc = curl_easy_setopt(h, CURLOPT_USERNAME, req->basic_user)) != CURLE_OK ||
		    (cc = curl_easy_setopt(h, CURLOPT_PASSWORD, req->basic_password)) != CURLE_OK) {
			rc = OTP_ERR_NOMEM;
			transport_error(cc, "", req->redact, err, cap);
			goto out;
		}
	}

	if (req->cancel != NULL &&
	    ((cc = curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L)) != CURLE_OK ||
	     (cc = curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, provider_curl_cancel_cb)) != CURLE_OK ||
	     (cc = curl_easy_setopt(h, CURLOPT_XFERINFODATA, (void *)req->cancel)) != CURLE_OK)) {
		rc = OTP_ERR_NOMEM;
		transport_error(cc, "", req->redact, err, cap);
		goto out;
	}
	cc = curl_easy_perform(h);
	if (cc == CURLE_ABORTED_BY_CALLBACK) {
		rc = OTP_ERR_PROVIDER;
		snprintf(err, cap, "cancelled at shutdown");
		goto out;
	}
	if (cc != CURLE_OK) {
		switch (cc) {
		case CURLE_URL_MALFORMAT:
		case CURLE_UNSUPPORTED_PROTOCOL:
			rc = OTP_ERR_PERMANENT;
			break;
		case CURLE_OUT_OF_MEMORY:
			rc = OTP_ERR_NOMEM;
			break;
		default:
			rc = OTP_ERR_PROVIDER;
		}
		transport_error(cc, errbuf, req->redact, err, cap);
		goto out;
	}
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->status);
	rc = 0;
out:
	provider_session_put(s, h);
	curl_slist_free_all(hdrs);
	return rc;
}

int provider_http_send(const struct config *cfg, struct provider_session *s,
                       const struct provider_http_req *req, struct provider_http_resp *resp,
                       struct provider_result *r)
{
	resp->status = 0;
	resp->len = 0;
	resp->body[0] = '\0';
	int rc = provider_http_post(cfg, s, req, resp, r->error, sizeof r->error);
	if (rc != 0)
		return rc;
	rc = provider_http_classify(resp->status);
	if (rc != 0)
		snprintf(r->error, sizeof r->error, "HTTP %ld", resp->status);
	return rc;
}

int provider_post_json(const struct config *cfg, struct provider_session *s,
                       struct provider_http_req *req, json_t *doc,
                       struct provider_http_resp *resp, struct provider_result *r)
{
	resp->status = 0;
	if (doc == NULL)
		return provider_fail(r, OTP_ERR_PERMANENT, "message cannot be encoded as JSON");
	/* jansson checked every string when it was made: dumping fails only for memory */
	char *body = json_dumps(doc, PROVIDER_JSON_FLAGS);
	json_decref(doc);
	if (body == NULL)
		return provider_fail(r, OTP_ERR_NOMEM, "out of memory");
	req->content_type = "application/json";
	req->body = body;
	req->body_len = strlen(body);
	int rc = provider_http_send(cfg, s, req, resp, r);
	sodium_memzero(body, req->body_len);
	free(body);
	req->body = NULL;
	req->body_len = 0;
	return rc;
}

