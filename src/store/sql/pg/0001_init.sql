-- 0001_init.sql - the first schema of otpd's PostgreSQL store (see src/store/pg.c).
-- Tables carry an otpd_ prefix so they can live in the old service's schema beside its
-- otp_password and otp_limit. Times are unix seconds set from otpd's clock (bigint), so
-- both backends and the tests share one notion of time. Codes are never stored in clear:
-- code_hash and lookup_hash are keyed hashes, sealed_code an AEAD blob present only when
-- GET /password is enabled. The migration runner (not this file) keeps
-- otpd_schema_migrations.

-- One row per accepted send. The rows also are the send log that sliding-window limits
-- count (a refused send writes nothing), so purge keeps a code while it is still inside
-- a limit window of its channel.
CREATE TABLE otpd_code (
	id          bigserial PRIMARY KEY,
	channel     smallint  NOT NULL CHECK (channel >= 0),
	target      text      NOT NULL,
	ip          text,
	code_hash   bytea     NOT NULL,
	lookup_hash bytea     NOT NULL,
	sealed_code bytea,
	created_at  bigint    NOT NULL,
	expire_at   bigint    NOT NULL,
	void        boolean   NOT NULL DEFAULT false, -- wrong checks exhausted
	consumed    boolean   NOT NULL DEFAULT false  -- used up by a successful check
);
-- checks (target, channels), /password (target) and per-target limit counts
CREATE INDEX otpd_code_target ON otpd_code (target, channel, created_at);
-- per-IP limit counts
CREATE INDEX otpd_code_ip ON otpd_code (ip, channel, created_at) WHERE ip IS NOT NULL;
-- GET /target
CREATE INDEX otpd_code_lookup ON otpd_code (lookup_hash);
-- purge
CREATE INDEX otpd_code_expire ON otpd_code (expire_at);

-- Wrong checks per (check channel, target); no row means 0. Both a send and a check
-- hold the advisory lock of (channel, target) while they touch a row here.
CREATE TABLE otpd_attempt (
	channel    smallint NOT NULL,
	target     text     NOT NULL,
	failures   integer  NOT NULL,
	updated_at bigint   NOT NULL,
	PRIMARY KEY (channel, target)
);

-- Send limits. The id orders the rules of a channel (both kinds) in the order they were
-- set; the first refusing rule decides.
CREATE TABLE otpd_limit (
	id      bigserial PRIMARY KEY,
	channel smallint  NOT NULL,
	kind    smallint  NOT NULL CHECK (kind IN (0, 1)),
	minutes integer   NOT NULL CHECK (minutes > 0),
	rate    integer   NOT NULL CHECK (rate >= 0)
);
CREATE INDEX otpd_limit_channel ON otpd_limit (channel, id);

-- The transactional outbox: one delivery job per send, written with its code.
CREATE TABLE otpd_outbox (
	id              bigserial PRIMARY KEY,
	code_id         bigint    REFERENCES otpd_code (id) ON DELETE SET NULL,
	channel         smallint  NOT NULL,
	provider        text      NOT NULL,
	state           text      NOT NULL
	                CHECK (state IN ('pending', 'sending', 'sent', 'dead', 'skipped')),
	payload         bytea,
	attempts        integer   NOT NULL DEFAULT 0,
	next_at         bigint    NOT NULL,
	lease_until     bigint,
	last_error      text,
	provider_msg_id text,
	request_id      text,
	created_at      bigint    NOT NULL,
	updated_at      bigint    NOT NULL
);
-- claiming due jobs and the worker's next wake-up
CREATE INDEX otpd_outbox_due ON otpd_outbox (next_at) WHERE state = 'pending';
-- re-claiming jobs whose worker died
CREATE INDEX otpd_outbox_lease ON otpd_outbox (lease_until) WHERE state = 'sending';
-- purge of finished jobs
CREATE INDEX otpd_outbox_done ON otpd_outbox (updated_at)
	WHERE state IN ('sent', 'dead', 'skipped');
-- keeps ON DELETE SET NULL cheap when purge deletes codes
CREATE INDEX otpd_outbox_code ON otpd_outbox (code_id);
