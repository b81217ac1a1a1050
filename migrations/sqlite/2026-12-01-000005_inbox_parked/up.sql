-- Events waiting for a handler that is paused (circuit breaker open) or disabled after
-- failures are stored with status 'parked': kept, retried when due, but not counted in the
-- intake backlog. The sweeper finds the due ones through this index, as it does pending ones
-- through `inbox_due`.
CREATE INDEX inbox_parked ON inbox (next_attempt_at_ms, claimed_until_ms) WHERE status = 'parked';
