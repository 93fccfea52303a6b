/*
 * provider.c - the registry of delivery providers: the rows of list.h, each a provider's
 * name, channels, settings and constructor (defined in the provider's own file), and the
 * start-up check that every channel's provider exists, is complete and can deliver it.
 * It must not know how any provider talks to its service.
 */
#include <stdio.h>
#include <string.h>

#include "core/otp.h"
#include "log.h"
#include "providers/impl.h"

#define PROVIDER(x) extern const struct provider_def provider_##x##_def;
#include "providers/list.h"
#undef PROVIDER

static const struct provider_def *const registry[] = {
#define PROVIDER(x) &provider_##x##_def,
#include "providers/list.h"
#undef PROVIDER
};

#define N_PROVIDERS (sizeof registry / sizeof registry[0])

const struct provider_def *provider_def_at(size_t i)
{
	return i < N_PROVIDERS ? registry[i] : NULL;
}

const struct provider_def *provider_find(const char *name)
{
	for (size_t i = 0; name != NULL && i < N_PROVIDERS; i++)
		if (strcmp(registry[i]->name, name) == 0)
			return registry[i];
	return NULL;
}

int provider_known(const char *name)
{
	return provider_find(name) != NULL;
}

bool provider_serves(const char *name, int channel)
{
	const struct provider_def *d = provider_find(name);
	return d != NULL && channel >= 0 && channel < OTP_CH_COUNT &&
	       (d->channels & OTP_CH_BIT(channel)) != 0;
}

/* "log queue ..." into buf, for error messages. */
static void names(char *buf, size_t cap, int channel)
{
	size_t len = 0;
	buf[0] = '\0';
	for (size_t i = 0; i < N_PROVIDERS; i++) {
		if (channel >= 0 && !(registry[i]->channels & OTP_CH_BIT(channel)))
			continue;
		int n = snprintf(buf + len, cap - len, "%s%s", len ? " " : "", registry[i]->name);
		if (n < 0 || (size_t)n >= cap - len)
			break;
		len += (size_t)n;
	}
}

struct provider *provider_new(const char *name, const struct config *cfg, char *err, size_t cap)
{
	if (cap > 0)
		err[0] = '\0';
	provider_global_init();
	const struct provider_def *d = provider_find(name);
	if (d != NULL)
		return d->make(cfg, err, cap);
	char known[256];
	names(known, sizeof known, -1);
	snprintf(err, cap, "unknown provider \"%s\" (known: %s)", name ? name : "", known);
	return NULL;
}

static const char *const channel_var[OTP_CH_COUNT] = {
	[OTP_CH_SMS] = "OTPD_SMS_PROVIDER",
	[OTP_CH_EMAIL] = "OTPD_EMAIL_PROVIDER",
	[OTP_CH_CALL] = "OTPD_CALL_PROVIDER",
	[OTP_CH_TELEGRAM] = "OTPD_TELEGRAM_PROVIDER",
	[OTP_CH_WHATSAPP] = "OTPD_WHATSAPP_PROVIDER",
};

int provider_check_config(const struct config *cfg, provider_report_fn report, void *arg)
{
	int errors = 0;
	char text[600], err[PROVIDER_ERROR_MAX], can[256];
	const char *built[OTP_CH_COUNT] = {NULL};

	if (cfg->dummy)
		return 0;
	for (int ch = 0; ch < OTP_CH_COUNT; ch++) {
		const char *name = config_channel_provider(cfg, ch);
		bool own = cfg->channel_provider[ch] != NULL;
		const char *var = own ? channel_var[ch] : "OTPD_PROVIDER";
		const char *chname = otp_channel_name((enum otp_channel)ch);
		if (provider_find(name) == NULL) {
			/* config.c knows the names too, so this is a bug between the two tables */
			snprintf(text, sizeof text, "unknown provider \"%s\"", name ? name : "");
			report(arg, var, LOG_ERROR, text);
			errors++;
			continue;
		}
		if (!provider_serves(name, ch)) {
			names(can, sizeof can, ch);
			/* An explicit choice that cannot deliver is an error. The built-in default
			 * (queue, the old service's Queue, which knows no whatsapp) only warns:
			 * otherwise the old service's configuration would not start. */
			bool chosen = own || cfg->provider_set;
			snprintf(text, sizeof text, "provider %s cannot deliver %s; set %s to one of: %s",
			         name, chname, channel_var[ch], can);
			report(arg, chosen ? var : channel_var[ch], chosen ? LOG_ERROR : LOG_WARN, text);
			if (chosen)
				errors++;
			continue;
		}
		bool dup = false;
		for (int i = 0; i < ch; i++)
			dup = dup || (built[i] != NULL && strcmp(built[i], name) == 0);
		if (dup)
			continue;
		built[ch] = name;
		struct provider *p = provider_new(name, cfg, err, sizeof err);
		if (p == NULL) {
			snprintf(text, sizeof text, "provider %s (for %s): %s", name, chname, err);
			report(arg, var, LOG_ERROR, text);
			errors++;
		}
		provider_free(p);
	}
	return errors;
}
