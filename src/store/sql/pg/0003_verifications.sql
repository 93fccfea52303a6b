-- 0003_verifications.sql - one verification core under every dialect (src/store/store.c).
-- Codes become verifications with an id, an app, a status and the policy they obey;
-- every change of one is an event; apps and their API keys; idempotency keys. The rows
-- of 0001 are carried over: live codes stay checkable, sends stay inside their limit
-- windows (as "created" events), pending jobs stay deliverable.

CREATE TABLE otpd_app (
	id         text   PRIMARY KEY,
	name       text   NOT NULL,
	settings   text   NOT NULL,     -- JSON, see src/core/app.h
	created_at bigint NOT NULL,
	updated_at bigint NOT NULL
);

-- The secret of a key is never stored: secret_hash is a keyed hash of it.
CREATE TABLE otpd_api_key (
	id          text   PRIMARY KEY,
	app_id      text,               -- NULL: an admin key, for every app
	secret_hash bytea  NOT NULL,
	format      text   NOT NULL,
	name        text   NOT NULL DEFAULT '',
	created_at  bigint NOT NULL,
	revoked_at  bigint
);
CREATE INDEX otpd_api_key_app ON otpd_api_key (app_id, id);

-- status: 0 pending, 1 approved, 2 expired, 3 canceled, 4 max_attempts_reached, 5 failed.
-- channel/target are what the code was made for (the code hash covers them);
-- cur_channel/cur_target where it was sent last. sealed_code (AEAD) is kept only while
-- a resend or GET /password may need it, and erased when the verification ends.
CREATE TABLE otpd_verification (
	id              bigserial PRIMARY KEY,
	public_id       text      NOT NULL UNIQUE,
	app_id          text      NOT NULL,  -- '' : the compat dialect
	channel         smallint  NOT NULL,
	target          text      NOT NULL,
	cur_channel     smallint  NOT NULL,
	cur_target      text      NOT NULL,
	status          smallint  NOT NULL CHECK (status BETWEEN 0 AND 5),
	code_hash       bytea     NOT NULL,
	lookup_hash     bytea     NOT NULL,
	sealed_code     bytea,
	ip              text,
	attempts        integer   NOT NULL DEFAULT 0,
	max_attempts    integer   NOT NULL,
	sends           integer   NOT NULL DEFAULT 1,
	max_sends       integer   NOT NULL,
	resend_cooldown integer   NOT NULL,
	consume         boolean   NOT NULL,
	tmpl            text,
	lang            text,
	sender          text,
	fallback        text,
	created_at      bigint    NOT NULL,
	updated_at      bigint    NOT NULL,
	expire_at       bigint    NOT NULL,
	last_sent_at    bigint    NOT NULL
);
-- checks by target, GET /password, and the sends per-target limit windows count
CREATE INDEX otpd_verification_target ON otpd_verification (target, channel, app_id,
	created_at, expire_at);
-- per-ip limit windows
CREATE INDEX otpd_verification_ip ON otpd_verification (ip, channel, app_id, created_at)
	WHERE ip IS NOT NULL;
-- GET /target, which only the compat dialect has
CREATE INDEX otpd_verification_lookup ON otpd_verification (lookup_hash) WHERE app_id = '';
CREATE INDEX otpd_verification_expire ON otpd_verification (status, expire_at);
CREATE INDEX otpd_verification_sealed ON otpd_verification (expire_at)
	WHERE sealed_code IS NOT NULL;

-- Every change of a verification, and refused sends. type: 1 created, 2 resent,
-- 3 delivered, 4 delivery_failed, 5 check_failed, 6 approved, 7 expired, 8 canceled,
-- 9 max_attempts_reached, 10 refused. A limit window counts the verifications made in
-- it and the resends (2) in it.
CREATE TABLE otpd_event (
	id              bigserial PRIMARY KEY,
	verification_id bigint,          -- no foreign key: events outlive verifications
	public_id       text,
	app_id          text      NOT NULL,
	type            smallint  NOT NULL,
	channel         smallint  NOT NULL,
	target          text      NOT NULL,
	ip              text,
	detail          text,
	created_at      bigint    NOT NULL
);
CREATE INDEX otpd_event_resent_target ON otpd_event (target, channel, app_id, created_at)
	WHERE type = 2;
CREATE INDEX otpd_event_resent_ip ON otpd_event (ip, channel, app_id, created_at)
	WHERE type = 2 AND ip IS NOT NULL;
CREATE INDEX otpd_event_verification ON otpd_event (verification_id);
-- No index on created_at: ids grow with time, and the janitor finds the old rows by id.

CREATE TABLE otpd_idem (
	app_id      text   NOT NULL,
	key         text   NOT NULL,
	fingerprint bytea  NOT NULL,
	public_id   text   NOT NULL,
	created_at  bigint NOT NULL,
	PRIMARY KEY (app_id, key)
);
CREATE INDEX otpd_idem_time ON otpd_idem (created_at);

CREATE TABLE otpd_meta (
	name  text PRIMARY KEY,
	value text NOT NULL
);

-- The codes of 0001 as compat verifications. Their policy was global configuration;
-- they get the defaults (5 wrong checks, not consumed) for the rest of their short life.
-- One the old service consumed is approved and used up (consume set), not checkable
-- again; an ended one keeps no sealed copy.
INSERT INTO otpd_verification (id, public_id, app_id, channel, target, cur_channel,
	cur_target, status, code_hash, lookup_hash, sealed_code, ip, attempts, max_attempts,
	sends, max_sends, resend_cooldown, consume, created_at, updated_at, expire_at,
	last_sent_at)
SELECT c.id, 'otp_' || lpad(to_hex(c.created_at), 8, '0') ||
	substr(md5(random()::text || clock_timestamp()::text || c.id::text), 1, 24), '',
	c.channel, c.target, c.channel, c.target,
	CASE WHEN c.void THEN 4 WHEN c.consumed THEN 1 ELSE 0 END,
	c.code_hash, c.lookup_hash,
	CASE WHEN c.void OR c.consumed THEN NULL ELSE c.sealed_code END, c.ip,
	coalesce((SELECT a.failures FROM otpd_attempt a
	          WHERE a.channel = c.channel AND a.target = c.target), 0),
	5, 1, 1, 0, c.consumed, c.created_at, c.created_at, c.expire_at, c.created_at
FROM otpd_code c;
SELECT setval(pg_get_serial_sequence('otpd_verification', 'id'),
	greatest((SELECT max(id) FROM otpd_verification), 1));
INSERT INTO otpd_event (verification_id, public_id, app_id, type, channel, target, ip,
	created_at)
SELECT id, public_id, '', 1, channel, target, ip, created_at FROM otpd_verification;

-- Rules now belong to an app ('' : the compat dialect's, as before); position orders
-- them as id did.
ALTER TABLE otpd_limit ADD COLUMN app_id text NOT NULL DEFAULT '';
ALTER TABLE otpd_limit ADD COLUMN position bigint;
UPDATE otpd_limit SET position = id;
ALTER TABLE otpd_limit ALTER COLUMN position SET NOT NULL;
DROP INDEX otpd_limit_channel;
CREATE INDEX otpd_limit_channel ON otpd_limit (app_id, channel, position);

-- The outbox's jobs now belong to verifications (code_id keeps its name).
ALTER TABLE otpd_outbox DROP CONSTRAINT IF EXISTS otpd_outbox_code_id_fkey;
ALTER TABLE otpd_outbox ADD CONSTRAINT otpd_outbox_code_id_fkey FOREIGN KEY (code_id)
	REFERENCES otpd_verification (id) ON DELETE SET NULL;

DROP TABLE otpd_attempt;
DROP TABLE otpd_code;
