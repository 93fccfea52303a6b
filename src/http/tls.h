/*
 * tls.h - checks of a TLS certificate and key before otpd serves with them, through
 * GnuTLS (the library libmicrohttpd serves TLS with): both parse, the key is the
 * certificate's, the certificate has not expired. Used by --check-config, at start and
 * by the SIGHUP reload, so a bad pair is named before it could stop anything.
 * Thread-safety: reentrant; no state.
 */
#ifndef OTPD_HTTP_TLS_H
#define OTPD_HTTP_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* 0 when the PEM certificate (with its chain) and the PEM key belong together and the
 * certificate is valid at `now` (unix seconds); -1 with the reason in err, naming
 * OTPD_TLS_CERT or OTPD_TLS_KEY. *not_after (may be NULL) gets the certificate's expiry.
 * Never puts key material in err. */
int http_tls_check_pem(const char *cert, size_t cert_len, const char *key, size_t key_len,
                       int64_t now, int64_t *not_after, char *err, size_t cap);

/* The same for the files of cfg->tls_cert / cfg->tls_key (0 when TLS is not set). */
int http_tls_check_files(const struct config *cfg, int64_t now, char *err, size_t cap);

#endif
