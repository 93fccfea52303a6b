/*
 * cmd_health.c - `otpd health`: asks the otpd configured by the same environment
 * (OTPD_LISTEN, OTPD_TLS_CERT) for GET /health and exits 0 when it answers 200, else 1.
 * It is the container image's HEALTHCHECK: the image has no shell tools for the job, and
 * only otpd knows where it listens and whether that is HTTPS.
 * A wildcard listen address is asked on the loopback of its family. Over TLS the
 * server's certificate must be the configured one (it is the only trust anchor); the
 * host name is not checked, since the loopback is never the certificate's name.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "log.h"

#define HEALTH_TIMEOUT_S 5L

static size_t discard(char *data, size_t size, size_t nmemb, void *ctx)
{
	(void)data;
	(void)ctx;
	return size * nmemb;
}

int cmd_health(const struct config *cfg, int argc, char **argv)
{
	char url[400], errbuf[CURL_ERROR_SIZE] = "", status[8];
	long code = 0;
	int rc = 1;
	if (no_arguments(argc, argv) != 0)
		return 2;
	const char *host = cfg->listen_host;
	bool v6 = strchr(host, ':') != NULL;
	if (strcmp(host, "0.0.0.0") == 0 || host[0] == '\0')
		host = "127.0.0.1";
	else if (strcmp(host, "::") == 0)
		host = "::1";
	snprintf(url, sizeof url, "%s://%s%s%s:%d/health", cfg->tls_cert ? "https" : "http",
	         v6 ? "[" : "", host, v6 ? "]" : "", cfg->listen_port);

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return 1;
	CURL *h = curl_easy_init();
	CURLcode cc = CURLE_FAILED_INIT;
	if (h != NULL &&
	    (cc = curl_easy_setopt(h, CURLOPT_URL, url)) == CURLE_OK &&
	    (cc = curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https")) == CURLE_OK &&
	    (cc = curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L)) == CURLE_OK &&
	    (cc = curl_easy_setopt(h, CURLOPT_TIMEOUT, HEALTH_TIMEOUT_S)) == CURLE_OK &&
	    (cc = curl_easy_setopt(h, CURLOPT_USERAGENT, "otpd-health")) == CURLE_OK &&
	    (cc = curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard)) == CURLE_OK &&
	    (cc = curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf)) == CURLE_OK &&
	    (cfg->tls_cert == NULL ||
	     ((cc = curl_easy_setopt(h, CURLOPT_CAINFO, cfg->tls_cert)) == CURLE_OK &&
	      (cc = curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L)) == CURLE_OK)))
		cc = curl_easy_perform(h);
	if (cc == CURLE_OK)
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
	snprintf(status, sizeof status, "%ld", code);
	if (cc != CURLE_OK)
		log_write(LOG_ERROR, "health: no answer", "url", url, "error",
		          errbuf[0] ? errbuf : curl_easy_strerror(cc), LOG_END);
	else if (code != 200)
		log_write(LOG_ERROR, "health: not healthy", "url", url, "status", status, LOG_END);
	else
		rc = 0;
	curl_easy_cleanup(h);
	curl_global_cleanup();
	return rc;
}
