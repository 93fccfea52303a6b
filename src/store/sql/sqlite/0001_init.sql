-- 0001_init.sql - the first schema of otpd's SQLite store (see src/store/sqlite.c).
-- Times are unix seconds. Codes are never stored in clear: code_hash and lookup_hash are
-- keyed hashes, sealed_code an AEAD blob present only when GET /password is enabled.

-- One row per accepted send. The rows also are the send log that sliding-window limits
-- count (a refused send writes nothing), so purge keeps a code while it is still inside
-- a limit window of its channel.
CREATE TABLE codes (
	id          INTEGER PRIMARY KEY,
	channel     INTEGER NOT NULL,
	target      TEXT    NOT NULL,
	code_hash   BLOB    NOT NULL,
	lookup_hash BLOB    NOT NULL,
	sealed_code BLOB,
	ip          TEXT,
	created_at  INTEGER NOT NULL,
	expire_at   INTEGER NOT NULL,
	void        INTEGER NOT NULL DEFAULT 0,
	consumed    INTEGER NOT NULL DEFAULT 0
);
-- checks, /password and per-target limit counts: (channel, target) then the send time;
-- expire_at is carried in the index so expired rows are skipped without a table lookup.
CREATE INDEX codes_target ON codes (channel, target, created_at, expire_at);
-- per-IP limit counts
CREATE INDEX codes_ip ON codes (channel, ip, created_at) WHERE ip IS NOT NULL;
-- GET /target
CREATE INDEX codes_lookup ON codes (channel, lookup_hash);

-- Wrong checks per (check channel, target); no row means 0.
CREATE TABLE attempts (
	channel  INTEGER NOT NULL,
	target   TEXT    NOT NULL,
	failures INTEGER NOT NULL,
	PRIMARY KEY (channel, target)
) WITHOUT ROWID;

-- Send limits. `position` orders the rules of a channel (both kinds) in the order they
-- were set; the first refusing rule decides.
CREATE TABLE limit_rules (
	channel  INTEGER NOT NULL,
	position INTEGER NOT NULL,
	kind     INTEGER NOT NULL CHECK (kind IN (0, 1)),
	minutes  INTEGER NOT NULL CHECK (minutes > 0),
	rate     INTEGER NOT NULL CHECK (rate >= 0),
	PRIMARY KEY (channel, position)
) WITHOUT ROWID;

-- The transactional outbox: one delivery job per send, written with its code.
CREATE TABLE outbox (
	id              INTEGER PRIMARY KEY,
	code_id         INTEGER REFERENCES codes (id) ON DELETE SET NULL,
	channel         INTEGER NOT NULL,
	provider        TEXT    NOT NULL,
	state           TEXT    NOT NULL
	                CHECK (state IN ('pending', 'sending', 'sent', 'dead', 'skipped')),
	payload         BLOB,
	attempts        INTEGER NOT NULL DEFAULT 0,
	next_at         INTEGER NOT NULL,
	lease_until     INTEGER,
	last_error      TEXT,
	provider_msg_id TEXT,
	request_id      TEXT,
	created_at      INTEGER NOT NULL,
	updated_at      INTEGER NOT NULL
);
-- claiming due jobs, the worker's next wake-up, counts per state
CREATE INDEX outbox_due ON outbox (state, next_at);
-- keeps ON DELETE SET NULL cheap when purge deletes codes
CREATE INDEX outbox_code ON outbox (code_id);
