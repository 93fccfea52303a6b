/*
 * log.c - logfmt lines on stderr. Every line is built in a bounded stack buffer and
 * written with one write(2); an over-long value is cut, never overflowed.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 2048

/* Set once at start before any thread exists; read-only afterwards. */
static enum log_level min_level = LOG_INFO;
static bool journal = false;

void log_set_level(enum log_level lvl) { min_level = lvl; }
bool log_enabled(enum log_level lvl) { return lvl >= min_level || lvl == LOG_FATAL; }
void log_set_journal(bool on) { journal = on; }

static const char *level_name(enum log_level lvl)
{
	switch (lvl) {
	case LOG_DEBUG: return "debug";
	case LOG_INFO: return "info";
	case LOG_WARN: return "warn";
	case LOG_ERROR: return "error";
	case LOG_FATAL: return "fatal";
	}
	return "info";
}

/* syslog priorities (sd-daemon.h's SD_* prefixes): crit, err, warning, info, debug */
static const char *journal_prefix(enum log_level lvl)
{
	switch (lvl) {
	case LOG_DEBUG: return "<7>";
	case LOG_INFO: return "<6>";
	case LOG_WARN: return "<4>";
	case LOG_ERROR: return "<3>";
	case LOG_FATAL: return "<2>";
	}
	return "<6>";
}

static void put(char *buf, size_t cap, size_t *len, const char *s, size_t n)
{
	/* keep one byte for the newline */
	if (*len + 1 >= cap)
		return;
	size_t room = cap - 1 - *len;
	if (n > room)
		n = room;
	memcpy(buf + *len, s, n);
	*len += n;
}

static bool needs_quotes(const char *v)
{
	if (*v == '\0')
		return true;
	for (const unsigned char *p = (const unsigned char *)v; *p; p++)
		if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f)
			return true;
	return false;
}

void log_append_kv(char *buf, size_t cap, size_t *len, const char *key, const char *value)
{
	if (value == NULL)
		value = "";
	if (*len > 0)
		put(buf, cap, len, " ", 1);
	put(buf, cap, len, key, strlen(key));
	put(buf, cap, len, "=", 1);
	if (!needs_quotes(value)) {
		put(buf, cap, len, value, strlen(value));
		return;
	}
	put(buf, cap, len, "\"", 1);
	for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
		char esc[8];
		switch (*p) {
		case '"': put(buf, cap, len, "\\\"", 2); break;
		case '\\': put(buf, cap, len, "\\\\", 2); break;
		case '\n': put(buf, cap, len, "\\n", 2); break;
		case '\r': put(buf, cap, len, "\\r", 2); break;
		case '\t': put(buf, cap, len, "\\t", 2); break;
		default:
			if (*p < 0x20 || *p == 0x7f) {
				int n = snprintf(esc, sizeof esc, "\\x%02x", *p);
				put(buf, cap, len, esc, (size_t)n);
			} else {
				put(buf, cap, len, (const char *)p, 1);
			}
		}
	}
	put(buf, cap, len, "\"", 1);
}

static void vlog(enum log_level lvl, const char *msg, va_list ap)
{
	char line[LOG_LINE_MAX];
	size_t len = 0;
	char ts[40];
	struct timespec now;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	size_t tl = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + tl, sizeof ts - tl, ".%03ldZ", now.tv_nsec / 1000000L);
	if (journal) {
		/* the prefix is read by journald and not stored: not a logfmt field */
		memcpy(line, journal_prefix(lvl), 3);
		len = 3;
		log_append_kv(line, sizeof line, &len, "ts", ts);
		/* log_append_kv put a separating space after the prefix: drop it */
		memmove(line + 3, line + 4, len - 4);
		len--;
	} else {
		log_append_kv(line, sizeof line, &len, "ts", ts);
	}
	log_append_kv(line, sizeof line, &len, "level", level_name(lvl));
	log_append_kv(line, sizeof line, &len, "msg", msg);
	for (;;) {
		const char *k = va_arg(ap, const char *);
		if (k == NULL)
			break;
		const char *v = va_arg(ap, const char *);
		log_append_kv(line, sizeof line, &len, k, v);
	}
	line[len++] = '\n';
	ssize_t w = write(STDERR_FILENO, line, len);
	(void)w; /* nowhere to report a failed log write */
}

void log_write(enum log_level lvl, const char *msg, ...)
{
	if (!log_enabled(lvl))
		return;
	va_list ap;
	va_start(ap, msg);
	vlog(lvl, msg, ap);
	va_end(ap);
}

void log_access(const char *msg, ...)
{
	va_list ap;
	va_start(ap, msg);
	vlog(LOG_INFO, msg, ap);
	va_end(ap);
}

void log_mask_target(const char *target, char *out, size_t cap)
{
	if (cap == 0)
		return;
	size_t n = target ? strlen(target) : 0;
	const char *at = target ? strchr(target, '@') : NULL;
	if (at != NULL && at != target) {
		snprintf(out, cap, "%c***%s", target[0], at);
		return;
	}
	if (n < 9) {
		snprintf(out, cap, "***");
		return;
	}
	snprintf(out, cap, "%.4s***%s", target, target + n - 4);
}
