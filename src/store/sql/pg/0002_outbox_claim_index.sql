-- Claims walk the due index in order with a LIMIT (an index scan, not a bitmap scan),
-- so index entries of jobs already claimed or sent are marked dead as they are passed
-- and later claims skip them. With the old one-column index and an OR of the two
-- claimable states, every claim read every dead entry left since the last vacuum:
-- thousands per claim under steady load.
DROP INDEX otpd_outbox_due;
CREATE INDEX otpd_outbox_due ON otpd_outbox (next_at, id) WHERE state = 'pending';
DROP INDEX otpd_outbox_lease;
CREATE INDEX otpd_outbox_lease ON otpd_outbox (lease_until, id) WHERE state = 'sending';
