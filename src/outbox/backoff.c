/*
 * backoff.c - retry delays for the outbox (see backoff.h). Pure arithmetic plus one draw
 * from the caller's rng; never reads the clock.
 */
#include "outbox/backoff.h"

/* Upper bound on any delay: keeps the draw inside otp_rng_uniform's uint32 range and
 * the doubling far from int64 overflow. A week is already absurd for an OTP. */
#define BACKOFF_CEIL_MS (7LL * 24 * 3600 * 1000)

void outbox_backoff_window(int base_ms, int max_s, int attempts, int64_t *lo, int64_t *hi)
{
	int64_t base = base_ms > 0 ? base_ms : 0;
	int64_t cap = max_s > 0 ? (int64_t)max_s * 1000 : base;
	int64_t d = base;

	if (cap > BACKOFF_CEIL_MS)
		cap = BACKOFF_CEIL_MS;
	if (attempts < 1)
		attempts = 1;
	/* double attempts-1 times, stopping as soon as the cap is reached */
	for (int i = 1; i < attempts && d < cap; i++)
		d *= 2;
	if (d > cap)
		d = cap;
	*hi = d;
	*lo = base / 2 < d ? base / 2 : d;
}

int64_t outbox_backoff_ms(int base_ms, int max_s, int attempts, const struct otp_rng *rng)
{
	int64_t lo, hi;

	outbox_backoff_window(base_ms, max_s, attempts, &lo, &hi);
	if (hi <= lo)
		return hi;
	/* hi - lo + 1 <= BACKOFF_CEIL_MS + 1 < 2^32 */
	return lo + (int64_t)otp_rng_uniform(rng, (uint32_t)(hi - lo + 1));
}
