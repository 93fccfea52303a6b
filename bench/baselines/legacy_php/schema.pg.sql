-- RECONSTRUCTION for benchmarks: the old service's tables (COMPAT.md, "Storage"). The
-- index on target is a generous guess: without it every check would scan the table.
CREATE TABLE otp_password (
	id bigserial PRIMARY KEY,
	channel int2 NOT NULL,      -- sms=0, email=1, call=2
	target text NOT NULL,
	password text NOT NULL,     -- in clear, as the old service stored it
	ip text,
	expire_at timestamptz NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX otp_password_target ON otp_password (target, channel);
CREATE TABLE otp_limit (
	id bigserial PRIMARY KEY,
	channel int2 NOT NULL,
	measure int2 NOT NULL,      -- target=0, ip=1
	rate int NOT NULL,
	minutes int NOT NULL
);
