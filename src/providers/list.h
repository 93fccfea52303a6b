/*
 * list.h - the rows of the provider registry: PROVIDER(x) names the `provider_x_def`
 * that providers/x.c defines. Adding a provider = its file + one row here (and the file
 * in meson.build). Included twice by provider.c: once to declare, once to tabulate.
 */
PROVIDER(log)
PROVIDER(queue)
PROVIDER(telegram)
PROVIDER(telegram_bot)
PROVIDER(smtp)
PROVIDER(twilio)
PROVIDER(whatsapp)
PROVIDER(webhook)
