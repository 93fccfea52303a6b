/*
 * backoff.h - when to try a failed delivery again: exponential from a base, doubling per
 * attempt, capped, with jitter drawn from a passed-in otp_rng. Pure: no clock, no I/O,
 * so tests fix the randomness.
 * Thread-safety: reentrant (the rng's own contract applies).
 */
#ifndef OTPD_OUTBOX_BACKOFF_H
#define OTPD_OUTBOX_BACKOFF_H

#include <stdint.h>

#include "core/otp.h"

/*
 * The window a retry delay is drawn from after `attempts` failed attempts (>= 1; smaller
 * counts as 1): hi = min(base_ms * 2^(attempts-1), max_s * 1000), lo = min(base_ms / 2,
 * hi). base_ms <= 0 gives 0/0; max_s <= 0 means "no cap beyond base_ms". Never overflows.
 */
void outbox_backoff_window(int base_ms, int max_s, int attempts, int64_t *lo, int64_t *hi);

/* A delay in milliseconds drawn uniformly from outbox_backoff_window(): "full jitter"
 * with a floor of base/2 so retries never collapse onto the failure that caused them. */
int64_t outbox_backoff_ms(int base_ms, int max_s, int attempts, const struct otp_rng *rng);

#endif
