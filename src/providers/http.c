/*
 * http.c - POST through libcurl for the HTTP providers: one easy handle per call, a total
 * timeout of cfg->provider_timeout seconds, http/https only, no redirects, no signals,
 * and an answer kept up to PROVIDER_HTTP_BODY_MAX bytes. Errors never contain the URL
 * (a Telegram Bot URL holds its token) and are scrubbed of req->redact.
 */
#include "providers/http.h"

#include <curl/curl.h>
#include <stdio.h>
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

int provider_http_post(const struct config *cfg, const struct provider_http_req *req,
                       struct provider_http_resp *resp, char *err, size_t cap)
{
	int rc = OTP_ERR_NOMEM;
	CURL *h = NULL;
	struct curl_slist *hdrs = NULL, *tmp = NULL;
	char errbuf[CURL_ERROR_SIZE] = "";
	char ctype[128];

	provider_global_init();
	resp->status = 0;
	resp->len = 0;
	resp->truncated = false;
	resp->body[0] = '\0';
	if (cap > 0)
		err[0] = '\0';

	h = curl_easy_init();
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
	curl_slist_free_all(hdrs);
	curl_easy_cleanup(h);
	return rc;
}
