-- RECONSTRUCTION for benchmarks: the old service's tables (COMPAT.md, "Storage"), on
-- SQLite with unix-second timestamps. The index on target is a generous guess: without
-- it every check would scan the table.
PRAGMA journal_mode = WAL;
CREATE TABLE otp_password (
	id INTEGER PRIMARY KEY,
	channel INTEGER NOT NULL,   -- sms=0, email=1, call=2
	target TEXT NOT NULL,
	password TEXT NOT NULL,     -- in clear, as the old service stored it
	ip TEXT,
	expire_at INTEGER NOT NULL,
	created_at INTEGER NOT NULL
);
CREATE INDEX otp_password_target ON otp_password (target, channel);
CREATE TABLE otp_limit (
	id INTEGER PRIMARY KEY,
	channel INTEGER NOT NULL,
	measure INTEGER NOT NULL,   -- target=0, ip=1
	rate INTEGER NOT NULL,
	minutes INTEGER NOT NULL
);
