/*
 * fuzz_message.c - libFuzzer target for otp_message_decode() (src/core/message.h): the
 * bytes of a delivery job, read back from the outbox. Whatever decodes must encode again
 * and decode to the same message (round trip), and otp_message_fini() must free it all
 * (a failed decode must leave nothing allocated).
 * The decoded text is also rendered as a {code}/{minutes} template, with the decoded
 * code and lifetime, and the result's length is checked against a count of the
 * placeholders.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/message.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) { \
	fprintf(stderr, "%s:%d: contract broken: %s\n", __FILE__, __LINE__, #cond); \
	abort(); } } while (0)

static bool same(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static size_t count(const char *s, const char *needle)
{
	size_t n = 0, k = strlen(needle);
	while (*s) {
		if (strncmp(s, needle, k) == 0) {
			n++;
			s += k;
		} else {
			s++;
		}
	}
	return n;
}

static void check_render(const char *tmpl, const char *code, int lifetime)
{
	char *r = otp_template_render(tmpl, code, lifetime);
	CHECK(r != NULL);
	char minutes[16];
	snprintf(minutes, sizeof minutes, "%d", lifetime <= 0 ? 0 : (lifetime + 59) / 60);
	/* render replaces left to right; count the same way (a {code} that overlaps a
	 * {minutes} cannot happen: both start with '{' and neither contains another '{') */
	size_t nc = count(tmpl, "{code}"), nm = count(tmpl, "{minutes}");
	size_t want = strlen(tmpl) - 6 * nc - 9 * nm + nc * strlen(code) + nm * strlen(minutes);
	CHECK(strlen(r) == want);
	free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct otp_message m;
	if (otp_message_decode(data, size, &m) != 0)
		return 0; /* nothing to free: the leak checker holds decode to that */
	CHECK(m.target != NULL && m.code != NULL);
	CHECK((int)m.channel >= 0 && m.channel < OTP_CH_COUNT);

	uint8_t *enc = NULL;
	size_t len = 0;
	CHECK(otp_message_encode(&m, &enc, &len) == 0);
	struct otp_message back;
	CHECK(otp_message_decode(enc, len, &back) == 0);
	CHECK(back.channel == m.channel && back.lifetime == m.lifetime);
	CHECK(same(back.target, m.target) && same(back.code, m.code) && same(back.text, m.text) &&
	      same(back.subject, m.subject) && same(back.html, m.html));
	free(enc);
	otp_message_fini(&back);

	if (m.text != NULL)
		check_render(m.text, m.code, m.lifetime);
	check_render(m.target, m.code, m.lifetime);

	otp_message_fini(&m);
	return 0;
}
