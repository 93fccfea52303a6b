/*
 * handlers.h - the route handlers that one dialect's table names but another file holds
 * (the operators' endpoints of admin.c sit in the compat table: they answer in its
 * shape). A handler reads call->params and call->path, and either fills resp and
 * returns 0, or returns a negative enum otp_err with err filled; routes.c renders that.
 */
#ifndef OTPD_API_HANDLERS_H
#define OTPD_API_HANDLERS_H

#include "api/route.h"

/* compat.c: route arg is the enum otp_channel */
API_HANDLER(compat_send);
API_HANDLER(compat_check);
API_HANDLER(compat_limit_set);
API_HANDLER(compat_limit_get);
API_HANDLER(compat_target);
API_HANDLER(compat_password);
API_HANDLER(compat_telegram_webhook);

/* admin.c */
API_HANDLER(admin_health);
API_HANDLER(admin_ready);
API_HANDLER(admin_outbox);
API_HANDLER(admin_metrics);

#endif
