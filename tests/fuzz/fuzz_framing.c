/*
 * fuzz_framing.c - libFuzzer target for http/framing.c: the input is a raw request head
 * (`METHOD target VERSION`, then `Name: value` lines, CRLF or LF), split the way
 * libmicrohttpd hands it over (a name is everything before the first colon, the value
 * is trimmed of spaces and tabs). Contract: no crash or over-read, every refusal has a
 * message and one of the codes framing.h lists, and an accepted head has one framing.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/framing.h"

#define FIELDS_MAX 64

static void broken(const char *what)
{
	fprintf(stderr, "contract broken: %s\n", what);
	abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* a copy of exactly the input's length, so ASan sees any over-read */
	char *buf = malloc(size + 1);
	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	struct http_field fields[FIELDS_MAX];
	size_t n = 0;
	const char *p = buf, *end = buf + size;
	const char *nl = memchr(p, '\n', size);
	const char *line_end = nl != NULL ? nl : end;
	/* request line: target is the second word, version the third */
	const char *sp1 = memchr(p, ' ', (size_t)(line_end - p));
	const char *target = sp1 != NULL ? sp1 + 1 : line_end;
	const char *sp2 = memchr(target, ' ', (size_t)(line_end - target));
	size_t target_len = (size_t)((sp2 != NULL ? sp2 : line_end) - target);
	char version[16] = "HTTP/1.1";
	if (sp2 != NULL) {
		size_t vl = (size_t)(line_end - sp2 - 1);
		if (vl > 0 && sp2[vl] == '\r')
			vl--;
		if (vl < sizeof version) {
			memcpy(version, sp2 + 1, vl);
			version[vl] = '\0';
		}
	}
	p = nl != NULL ? nl + 1 : end;
	while (p < end && n < FIELDS_MAX) {
		nl = memchr(p, '\n', (size_t)(end - p));
		line_end = nl != NULL ? nl : end;
		const char *stop = line_end;
		if (stop > p && stop[-1] == '\r')
			stop--;
		if (stop == p)
			break; /* the empty line ends the head */
		const char *colon = memchr(p, ':', (size_t)(stop - p));
		if (colon != NULL) {
			const char *v = colon + 1;
			while (v < stop && (*v == ' ' || *v == '\t'))
				v++;
			const char *ve = stop;
			while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
				ve--;
			fields[n++] = (struct http_field){p, (size_t)(colon - p), v, (size_t)(ve - v)};
		}
		p = nl != NULL ? nl + 1 : end;
	}
	struct http_head head = {version, fields, n, size};
	struct http_body_framing fr;
	struct otp_error e = {0};
	int rc = http_framing_check(&head, &fr, &e);
	if (rc != 0 && (e.message[0] == '\0' || (rc != OTP_ERR_INVALID && rc != OTP_ERR_HEADERS &&
	                                         rc != OTP_ERR_UNSUPPORTED)))
		broken("framing refusal without a message or with another code");
	if (rc == 0 && fr.chunked && fr.has_length)
		broken("both chunked and a length accepted");
	if (rc == 0 && fr.has_length && fr.length < 0)
		broken("negative length accepted");
	memset(&e, 0, sizeof e);
	rc = http_target_check(target, target_len, &e);
	if (rc != 0 && (e.message[0] == '\0' || (rc != OTP_ERR_INVALID && rc != OTP_ERR_URI_TOO_LONG)))
		broken("target refusal without a message or with another code");
	if (target_len > 0 && target[0] != '\0') {
		/* http_target_path needs a C string: the target up to its end */
		char *t = strndup(target, target_len);
		if (t != NULL) {
			const char *path = http_target_path(t);
			/* the target itself, a part of it starting with '/', or "/" for an
			 * absolute-form target without a path */
			uintptr_t at = (uintptr_t)path, lo = (uintptr_t)t;
			bool inside = at >= lo && at <= lo + strlen(t);
			if (!(path == t || (inside && path[0] == '/') || strcmp(path, "/") == 0))
				broken("path neither the target nor a path within it");
			free(t);
		}
	}
	free(buf);
	return 0;
}
