/*
 * reply.h - success answers shared by the api/ handlers.
 */
#ifndef OTPD_API_REPLY_H
#define OTPD_API_REPLY_H

#include <stdbool.h>

#include "api/api.h"

/* 200 {"status": status} */
void reply_status(struct api_response *resp, bool status);
/* 200 {"status": true, "content": content}; takes ownership of content. */
void reply_content(struct api_response *resp, json_t *content);

#endif
