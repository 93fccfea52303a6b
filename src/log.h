/*
 * log.h - one structured line per event on stderr, logfmt: `ts=... level=info msg=...
 * key=value ...`. Values are quoted and escaped so no input can forge a line or a key.
 * The level is checked before anything is formatted. Targets are masked with
 * log_mask_target(); codes, keys and passwords are never given to the logger.
 * Thread-safety: log_set_level() and log_set_journal() once at start (before threads);
 * log_write() from any thread — each line is written with one write(2) so lines never
 * interleave. stderr is never reopened: it belongs to whoever started otpd (journald,
 * docker, a shell), who also rotates it.
 */
#ifndef OTPD_LOG_H
#define OTPD_LOG_H

#include <stdbool.h>
#include <stddef.h>

/* LOG_FATAL: otpd stops after this line; always written, whatever the level. */
enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3, LOG_FATAL = 4 };

void log_set_level(enum log_level lvl);
bool log_enabled(enum log_level lvl);

/* When stderr is connected to the journal (systemd sets JOURNAL_STREAM to the device and
 * inode of that stream, see sd-daemon(3)), prefix every line with its syslog priority
 * ("<3>" for errors) so `journalctl -p warning` works. Call once at start. */
void log_set_journal(bool on);

/* The end of log_write's key/value list: a pointer-typed NULL, since a bare NULL may be
 * an int in a variadic call. */
#define LOG_END ((const char *)0)

/* log_write(LOG_INFO, "started", "listen", "127.0.0.1:8080", "threads", "4", LOG_END):
 * msg, then key/value string pairs ending with LOG_END. A NULL value prints as "". */
void log_write(enum log_level lvl, const char *msg, ...) __attribute__((sentinel));

/* An access log line: level=info, written whatever the level (OTPD_ACCESS_LOG is its
 * switch, checked by the caller). Same arguments as log_write. */
void log_access(const char *msg, ...) __attribute__((sentinel));

/* Mask a target for the log: phones and ids keep their first 4 and last 4 characters
 * (7701***4567), emails their first character and domain (f***@example.com). Short
 * values become "***". Always NUL-terminates out. */
void log_mask_target(const char *target, char *out, size_t cap);

/* Append `key=value` (escaped) to buf at *len (bounded by cap); the line builder used by
 * log_write, exported for modules that build their own lines (tests use it too). */
void log_append_kv(char *buf, size_t cap, size_t *len, const char *key, const char *value);

#endif
