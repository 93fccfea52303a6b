/*
 * tls.c - GnuTLS checks of a certificate and key pair (tls.h). Loading the pair into a
 * credentials structure is exactly what libmicrohttpd does at start, so a pair that
 * passes here is one it accepts; what fails gets a message naming the variable.
 */
#include "http/tls.h"

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <string.h>

int http_tls_check_pem(const char *cert, size_t cert_len, const char *key, size_t key_len,
                       int64_t now, int64_t *not_after, char *err, size_t cap)
{
	gnutls_certificate_credentials_t cred = NULL;
	gnutls_x509_crt_t crt = NULL;
	gnutls_datum_t raw = {NULL, 0};
	int rc = -1;
	const gnutls_datum_t c = {(unsigned char *)(uintptr_t)cert, (unsigned)cert_len};
	const gnutls_datum_t k = {(unsigned char *)(uintptr_t)key, (unsigned)key_len};

	if (gnutls_certificate_allocate_credentials(&cred) < 0) {
		snprintf(err, cap, "OTPD_TLS_CERT: out of memory");
		return -1;
	}
	int g = gnutls_certificate_set_x509_key_mem2(cred, &c, &k, GNUTLS_X509_FMT_PEM, NULL, 0);
	if (g < 0) {
		switch (g) {
		case GNUTLS_E_CERTIFICATE_KEY_MISMATCH:
			snprintf(err, cap, "OTPD_TLS_KEY is not the key of OTPD_TLS_CERT");
			break;
		case GNUTLS_E_BASE64_DECODING_ERROR:
		case GNUTLS_E_ASN1_DER_ERROR:
		case GNUTLS_E_PK_INVALID_PRIVKEY:
		case GNUTLS_E_DECRYPTION_FAILED:
			snprintf(err, cap, "OTPD_TLS_KEY: not a usable unencrypted PEM private key (%s)",
			         gnutls_strerror(g));
			break;
		default:
			snprintf(err, cap, "OTPD_TLS_CERT/OTPD_TLS_KEY: GnuTLS refuses the pair (%s)",
			         gnutls_strerror(g));
		}
		goto out;
	}
	/* the leaf of the chain just loaded, for its validity period */
	if (gnutls_certificate_get_crt_raw(cred, 0, 0, &raw) < 0 ||
	    gnutls_x509_crt_init(&crt) < 0 ||
	    gnutls_x509_crt_import(crt, &raw, GNUTLS_X509_FMT_DER) < 0) {
		snprintf(err, cap, "OTPD_TLS_CERT: the certificate cannot be read back");
		goto out;
	}
	time_t until = gnutls_x509_crt_get_expiration_time(crt);
	time_t from = gnutls_x509_crt_get_activation_time(crt);
	if (not_after != NULL)
		*not_after = (int64_t)until;
	if (until != (time_t)-1 && (int64_t)until < now) {
		snprintf(err, cap, "OTPD_TLS_CERT: the certificate expired");
		goto out;
	}
	if (from != (time_t)-1 && (int64_t)from > now) {
		snprintf(err, cap, "OTPD_TLS_CERT: the certificate is not valid yet");
		goto out;
	}
	rc = 0;
out:
	gnutls_x509_crt_deinit(crt);
	gnutls_certificate_free_credentials(cred); /* wipes the key it holds */
	return rc;
}

int http_tls_check_files(const struct config *cfg, int64_t now, char *err, size_t cap)
{
	gnutls_datum_t c = {NULL, 0}, k = {NULL, 0};
	int rc = -1;
	if (cfg->tls_cert == NULL || cfg->tls_key == NULL)
		return 0;
	if (gnutls_load_file(cfg->tls_cert, &c) < 0) {
		snprintf(err, cap, "OTPD_TLS_CERT: cannot read %s", cfg->tls_cert);
		goto out;
	}
	if (gnutls_load_file(cfg->tls_key, &k) < 0) {
		snprintf(err, cap, "OTPD_TLS_KEY: cannot read %s", cfg->tls_key);
		goto out;
	}
	rc = http_tls_check_pem((const char *)c.data, c.size, (const char *)k.data, k.size, now,
	                        NULL, err, cap);
out:
	if (k.data != NULL) {
		gnutls_memset(k.data, 0, k.size);
		gnutls_free(k.data);
	}
	gnutls_free(c.data);
	return rc;
}
