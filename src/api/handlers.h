/*
 * handlers.h - the route handlers of every dialect, as listed in routes.c. A handler
 * reads `params` (query + body merged, see params.h) or the raw request, and either
 * fills resp and returns 0, or returns a negative enum otp_err with err filled; routes.c
 * turns that into the error answer.
 */
#ifndef OTPD_API_HANDLERS_H
#define OTPD_API_HANDLERS_H

#include "api/api.h"

typedef int (*api_handler_fn)(const struct api_ctx *ctx, const struct api_request *req,
                              json_t *params, int arg, struct api_response *resp,
                              struct otp_error *err);

/* compat.c: arg is the enum otp_channel */
int compat_send(const struct api_ctx *, const struct api_request *, json_t *, int,
                struct api_response *, struct otp_error *);
int compat_check(const struct api_ctx *, const struct api_request *, json_t *, int,
                 struct api_response *, struct otp_error *);
int compat_limit_set(const struct api_ctx *, const struct api_request *, json_t *, int,
                     struct api_response *, struct otp_error *);
int compat_limit_get(const struct api_ctx *, const struct api_request *, json_t *, int,
                     struct api_response *, struct otp_error *);
int compat_target(const struct api_ctx *, const struct api_request *, json_t *, int,
                  struct api_response *, struct otp_error *);
int compat_password(const struct api_ctx *, const struct api_request *, json_t *, int,
                    struct api_response *, struct otp_error *);
int compat_telegram_webhook(const struct api_ctx *, const struct api_request *, json_t *, int,
                            struct api_response *, struct otp_error *);

/* admin.c */
int admin_health(const struct api_ctx *, const struct api_request *, json_t *, int,
                 struct api_response *, struct otp_error *);
int admin_ready(const struct api_ctx *, const struct api_request *, json_t *, int,
                struct api_response *, struct otp_error *);
int admin_outbox(const struct api_ctx *, const struct api_request *, json_t *, int,
                 struct api_response *, struct otp_error *);
int admin_metrics(const struct api_ctx *, const struct api_request *, json_t *, int,
                  struct api_response *, struct otp_error *);

#endif
