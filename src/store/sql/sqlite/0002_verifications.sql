-- 0002_verifications.sql - one verification core under every dialect (src/store/store.c).
-- Codes become verifications with an id, an app, a status and the policy they obey;
-- every change of one is an event; apps and their API keys; idempotency keys. The rows
-- of 0001 are carried over: live codes stay checkable, sends stay inside their limit
-- windows (as "created" events), pending jobs stay deliverable.

CREATE TABLE apps (
	id         TEXT    PRIMARY KEY,
	name       TEXT    NOT NULL,
	settings   TEXT    NOT NULL,      -- JSON, see src/core/app.h
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL
);

-- The secret of a key is never stored: secret_hash is a keyed hash of it.
CREATE TABLE api_keys (
	id          TEXT    PRIMARY KEY,
	app_id      TEXT,                 -- NULL: an admin key, for every app
	secret_hash BLOB    NOT NULL,
	format      TEXT    NOT NULL,
	name        TEXT    NOT NULL DEFAULT '',
	created_at  INTEGER NOT NULL,
	revoked_at  INTEGER
);
CREATE INDEX api_keys_app ON api_keys (app_id, id);

-- status: 0 pending, 1 approved, 2 expired, 3 canceled, 4 max_attempts_reached, 5 failed.
-- channel/target are what the code was made for (the code hash covers them);
-- cur_channel/cur_target where it was sent last. sealed_code (AEAD) is kept only while
-- a resend or GET /password may need it, and erased when the verification ends.
CREATE TABLE verifications (
	id              INTEGER PRIMARY KEY,
	public_id       TEXT    NOT NULL UNIQUE,
	app_id          TEXT    NOT NULL,  -- '' : the compat dialect
	channel         INTEGER NOT NULL,
	target          TEXT    NOT NULL,
	cur_channel     INTEGER NOT NULL,
	cur_target      TEXT    NOT NULL,
	status          INTEGER NOT NULL CHECK (status BETWEEN 0 AND 5),
	code_hash       BLOB    NOT NULL,
	lookup_hash     BLOB    NOT NULL,
	sealed_code     BLOB,
	ip              TEXT,
	attempts        INTEGER NOT NULL DEFAULT 0,
	max_attempts    INTEGER NOT NULL,
	sends           INTEGER NOT NULL DEFAULT 1,
	max_sends       INTEGER NOT NULL,
	resend_cooldown INTEGER NOT NULL,
	consume         INTEGER NOT NULL,
	tmpl            TEXT,
	lang            TEXT,
	sender          TEXT,
	fallback        TEXT,
	created_at      INTEGER NOT NULL,
	updated_at      INTEGER NOT NULL,
	expire_at       INTEGER NOT NULL,
	last_sent_at    INTEGER NOT NULL
);
-- checks by target (every live code of a target), GET /password, and the sends that
-- per-target limit windows count (a verification is its first send)
CREATE INDEX verifications_target ON verifications (app_id, target, channel, created_at,
	expire_at);
-- per-ip limit windows (sends without an ip cost nothing here)
CREATE INDEX verifications_ip ON verifications (app_id, channel, ip, created_at)
	WHERE ip IS NOT NULL;
-- GET /target. A partial index with a condition on app_id would make SQLite re-prepare
-- every statement that compares app_id with a parameter at every execution, to see
-- whether the bound value lets it use the index (measured: 40% of a send's CPU).
CREATE INDEX verifications_lookup ON verifications (app_id, channel, lookup_hash);
-- the janitor: pending ones past their expiry, ended ones past retention
CREATE INDEX verifications_expire ON verifications (status, expire_at);
-- the janitor: sealed copies of codes that can no longer be used
CREATE INDEX verifications_sealed ON verifications (expire_at) WHERE sealed_code IS NOT NULL;

-- Every change of a verification, and refused sends. type: 1 created, 2 resent,
-- 3 delivered, 4 delivery_failed, 5 check_failed, 6 approved, 7 expired, 8 canceled,
-- 9 max_attempts_reached, 10 refused. A limit window counts the verifications made in
-- it and the resends (2) in it.
CREATE TABLE events (
	id              INTEGER PRIMARY KEY,
	verification_id INTEGER,          -- no foreign key: events outlive verifications
	public_id       TEXT,
	app_id          TEXT    NOT NULL,
	type            INTEGER NOT NULL,
	channel         INTEGER NOT NULL,
	target          TEXT    NOT NULL,
	ip              TEXT,
	detail          TEXT,
	created_at      INTEGER NOT NULL
);
CREATE INDEX events_resent_target ON events (app_id, channel, target, created_at)
	WHERE type = 2;
CREATE INDEX events_resent_ip ON events (app_id, channel, ip, created_at) WHERE type = 2;
CREATE INDEX events_verification ON events (verification_id);
-- No index on created_at: ids grow with time, and the janitor finds the old rows by id.

CREATE TABLE idempotency (
	app_id      TEXT    NOT NULL,
	key         TEXT    NOT NULL,
	fingerprint BLOB    NOT NULL,
	public_id   TEXT    NOT NULL,
	created_at  INTEGER NOT NULL,
	PRIMARY KEY (app_id, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_time ON idempotency (created_at);

CREATE TABLE meta (
	name  TEXT PRIMARY KEY,
	value TEXT NOT NULL
) WITHOUT ROWID;

-- The codes of 0001 as compat verifications (the sends the limit windows count, too).
-- Their policy was global configuration; they get the defaults (5 wrong checks, not
-- consumed) for the rest of their short life.
-- One the old service consumed is approved and used up (consume set), not checkable
-- again; an ended one keeps no sealed copy.
INSERT INTO verifications (id, public_id, app_id, channel, target, cur_channel, cur_target,
	status, code_hash, lookup_hash, sealed_code, ip, attempts, max_attempts, sends,
	max_sends, resend_cooldown, consume, created_at, updated_at, expire_at, last_sent_at)
SELECT c.id, 'otp_' || printf('%08x', c.created_at) || lower(hex(randomblob(12))), '',
	c.channel, c.target, c.channel,
	c.target, CASE WHEN c.void THEN 4 WHEN c.consumed THEN 1 ELSE 0 END,
	c.code_hash, c.lookup_hash,
	CASE WHEN c.void OR c.consumed THEN NULL ELSE c.sealed_code END, c.ip,
	coalesce((SELECT a.failures FROM attempts a
	          WHERE a.channel = c.channel AND a.target = c.target), 0),
	5, 1, 1, 0, c.consumed, c.created_at, c.created_at, c.expire_at, c.created_at
FROM codes c;
INSERT INTO events (verification_id, public_id, app_id, type, channel, target, ip,
	created_at)
SELECT id, public_id, '', 1, channel, target, ip, created_at FROM verifications;

-- Rules now belong to an app ('' : the compat dialect's, as before).
CREATE TABLE limit_rules_new (
	app_id   TEXT    NOT NULL DEFAULT '',
	channel  INTEGER NOT NULL,
	position INTEGER NOT NULL,
	kind     INTEGER NOT NULL CHECK (kind IN (0, 1)),
	minutes  INTEGER NOT NULL CHECK (minutes > 0),
	rate     INTEGER NOT NULL CHECK (rate >= 0),
	PRIMARY KEY (app_id, channel, position)
) WITHOUT ROWID;
INSERT INTO limit_rules_new (app_id, channel, position, kind, minutes, rate)
SELECT '', channel, position, kind, minutes, rate FROM limit_rules;
DROP TABLE limit_rules;
ALTER TABLE limit_rules_new RENAME TO limit_rules;

-- The outbox's jobs now belong to verifications (code_id keeps its name: a job of a
-- verification whose row was purged keeps NULL).
CREATE TABLE outbox_new (
	id              INTEGER PRIMARY KEY,
	code_id         INTEGER REFERENCES verifications (id) ON DELETE SET NULL,
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
INSERT INTO outbox_new SELECT id, code_id, channel, provider, state, payload, attempts,
	next_at, lease_until, last_error, provider_msg_id, request_id, created_at, updated_at
FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (state, next_at);
CREATE INDEX outbox_code ON outbox (code_id);

DROP TABLE attempts;
DROP TABLE codes;
