/*
 * fuzz_request.h - turn fuzz bytes into a `struct api_request` as http/ would build it:
 * URL-decoded query arguments (C strings) and a raw, non-NUL-terminated body.
 *
 * Input format (readable seeds): `key=value` lines, then an empty line, then the body.
 * A line without '=' is a `?flag` argument (value ""). Without an empty line the whole
 * input is the body. At most API_QUERY_MAX arguments are kept, as http/ does.
 * The body is copied into a buffer of exactly its length, so ASan sees any over-read.
 */
#ifndef OTPD_FUZZ_REQUEST_H
#define OTPD_FUZZ_REQUEST_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

struct fuzz_request {
	struct api_request req;
	struct api_kv kv[API_QUERY_MAX];
	char *strings[2 * API_QUERY_MAX];
	size_t n_strings;
	char *body;
};

static inline const char *fuzz_keep(struct fuzz_request *fr, const uint8_t *p, size_t n)
{
	/* strndup stops at a NUL byte, like a C string handed over by libmicrohttpd */
	char *s = strndup((const char *)p, n);
	if (s == NULL)
		abort(); /* out of memory in the harness itself: not a finding */
	fr->strings[fr->n_strings++] = s;
	return s;
}

static inline void fuzz_request_build(struct fuzz_request *fr, const uint8_t *data, size_t size,
                                      const char *method, const char *path)
{
	memset(fr, 0, sizeof *fr);
	fr->req.method = method;
	fr->req.path = path;
	fr->req.request_id = "fuzz";
	fr->req.query = fr->kv;

	const uint8_t *body = data;
	size_t body_len = size;
	const uint8_t *sep = NULL;
	for (size_t i = 0; i + 1 < size; i++) {
		if (data[i] == '\n' && data[i + 1] == '\n') {
			sep = data + i;
			break;
		}
	}
	if (sep != NULL) {
		const uint8_t *p = data;
		while (p < sep && fr->req.n_query < API_QUERY_MAX) {
			const uint8_t *nl = memchr(p, '\n', (size_t)(sep - p));
			const uint8_t *end = nl ? nl : sep;
			const uint8_t *eq = memchr(p, '=', (size_t)(end - p));
			struct api_kv *kv = &fr->kv[fr->req.n_query++];
			if (eq != NULL) {
				kv->key = fuzz_keep(fr, p, (size_t)(eq - p));
				kv->value = fuzz_keep(fr, eq + 1, (size_t)(end - eq - 1));
			} else {
				kv->key = fuzz_keep(fr, p, (size_t)(end - p));
				kv->value = fuzz_keep(fr, (const uint8_t *)"", 0);
			}
			p = nl ? nl + 1 : sep;
		}
		body = sep + 2;
		body_len = size - (size_t)(body - data);
	}
	if (body_len > 0) {
		fr->body = malloc(body_len);
		if (fr->body == NULL)
			abort();
		memcpy(fr->body, body, body_len);
		fr->req.body = fr->body;
		fr->req.body_len = body_len;
	}
}

static inline void fuzz_request_free(struct fuzz_request *fr)
{
	for (size_t i = 0; i < fr->n_strings; i++)
		free(fr->strings[i]);
	free(fr->body);
	fr->n_strings = 0;
	fr->body = NULL;
}

#endif
