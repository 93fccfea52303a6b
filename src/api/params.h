/*
 * params.h - where a route's parameters come from, and how each kind of field is read and
 * validated. For the compat dialect: the query string first, then the body parsed as JSON
 * whatever the Content-Type; body fields override query fields (COMPAT.md). Other
 * dialects declare JSON or form bodies (route.h) and get the same object of parameters.
 * Strings are trimmed; an empty or all-white-space string counts as missing.
 * Every getter fills `struct otp_error` naming the field on failure and returns
 * OTP_ERR_INVALID; it returns 0 with *out = NULL for an absent optional field.
 * Ownership: strings returned through `char **out` are malloc'd; the caller frees.
 */
#ifndef OTPD_API_PARAMS_H
#define OTPD_API_PARAMS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "api/api.h"
#include "core/errors.h"

/* Merge query and body into one JSON object (*out, owned by the caller). Fails for a
 * body that is not JSON, not an object, has duplicate keys or invalid UTF-8, or for a
 * query string with invalid UTF-8. */
int params_collect(const struct api_request *req, json_t **out, struct otp_error *err);

#define PARAMS_FORM_FIELDS_MAX 256

/* Query, then a JSON object body (body fields win), for routes that speak JSON: a body
 * with another Content-Type than application/json is refused ("invalid_json"). */
int params_collect_json(const struct api_request *req, json_t **out, struct otp_error *err);
/* Query, then an application/x-www-form-urlencoded body (body fields win; a repeated
 * name keeps its last value): every name and value percent-decoded, valid UTF-8, no NUL.
 * Values are JSON strings in *out. */
int params_collect_form(const struct api_request *req, json_t **out, struct otp_error *err);

/* "\"name\" parameter must be set" */
int params_missing(const char *name, struct otp_error *err);

/* A string field. Numbers are cast to their decimal text when `cast_numbers`
 * (password, message, subject: the old service did); objects, arrays and booleans are
 * refused. Longer than max_bytes after trimming: refused. Control characters other than
 * \t \r \n refused unless allow_newlines. */
int params_string(json_t *p, const char *name, bool required, bool cast_numbers,
                  size_t max_bytes, bool allow_newlines, char **out, struct otp_error *err);

/* Phone: a string; an optional leading '+' is dropped; 5..20 digits. */
int params_phone(json_t *p, const char *name, bool required, char **out, struct otp_error *err);
/* Email: a string, a plausible address of at most 254 bytes. */
int params_email(json_t *p, const char *name, bool required, char **out, struct otp_error *err);
/* Telegram chat id: an integer (negative for groups) as a number or a string; *out is
 * its canonical decimal text. */
int params_chat_id(json_t *p, const char *name, bool required, char **out, struct otp_error *err);
/* Requester IP as the client gives it (the old service took any text): a string of at
 * most PARAMS_IP_MAX bytes without control characters; IPv6 addresses canonicalised. */
#define PARAMS_IP_MAX 64 /* the stores keep at most 64 bytes */
int params_ip(json_t *p, const char *name, char **out, struct otp_error *err);
/* Lifetime in seconds: an integer, a float (truncated) or a numeric string, in
 * 1..max. */
int params_lifetime(json_t *p, const char *name, int max, int *out, struct otp_error *err);
/* An integer (or integer string) in [min, max]; *present false when absent. */
int params_int(json_t *p, const char *name, int64_t min, int64_t max, bool *present,
               int64_t *out, struct otp_error *err);

#endif
