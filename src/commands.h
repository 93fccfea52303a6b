/*
 * commands.h - otpd's subcommands: main.c's table has one row per command (name, an
 * alias, handler, whether it needs the configuration, one line of help); a handler may
 * live in a file of its own (cmd_<name>.c) and is declared here.
 * A handler gets argv[0] = its command's name and argv[1..] its arguments, and returns
 * the exit status: 0, 1 for a failure, 2 for bad usage or configuration. Every line it
 * writes on stderr goes through log.h (logfmt); what it tells its user, on stdout.
 */
#ifndef OTPD_COMMANDS_H
#define OTPD_COMMANDS_H

#include <stdbool.h>

#include "config.h"

typedef int (*command_fn)(const struct config *cfg, int argc, char **argv);

struct command {
	const char *name;
	const char *alias;    /* NULL: none */
	command_fn run;
	bool config;          /* load (and validate) the configuration first */
	const char *help;
};

/* Refuse arguments to a command that takes none: 0, or 2 after a usage line. */
int no_arguments(int argc, char **argv);
/* Log "unexpected argument" for command `cmd` (the caller returns 2). */
void refuse_argument(const char *cmd, const char *arg);

/* The master key of this configuration (OTPD_SECRET_KEY, or the key file of
 * OTPD_DATA_DIR, made on first use): 0, or -1 with the reason in err. */
int command_load_key(const struct config *cfg, uint8_t master[32], char *err, size_t cap);
/* The store of this configuration, migrated; NULL with the reason in err. */
struct store;
struct store *command_open_store(const struct config *cfg, char *err, size_t cap);

/* otpd app ... and otpd key ... (cmd_apps.c) */
int cmd_app(const struct config *cfg, int argc, char **argv);
int cmd_key(const struct config *cfg, int argc, char **argv);

/* otpd health: GET /health of the otpd that this configuration describes. */
int cmd_health(const struct config *cfg, int argc, char **argv);

#endif
