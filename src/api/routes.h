/*
 * routes.h - the route table seen from outside the dispatcher: how many routes there
 * are, which one a request names, and each one's method and path (for metrics labels).
 */
#ifndef OTPD_API_ROUTES_H
#define OTPD_API_ROUTES_H

#include <stddef.h>

size_t api_route_count(void);
/* Index of the route for (method, path), HEAD counting as GET; -1 when none. */
int api_route_find(const char *method, const char *path);
/* Method and path of route i (static strings); i < api_route_count(). */
void api_route_at(size_t i, const char **method, const char **path);

#endif
