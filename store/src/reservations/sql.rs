//! The statements over the reservation tables.

pub(super) const BY_IDEMPOTENCY_KEY: &str = "
SELECT id, request_sha256, answer, expires_at FROM budget_reservations
WHERE tenant_id = $1 AND idempotency_key = $2";

/// The reservation with its answer, its holds on budgets `$13` (each under
/// the user key `$19`) and the log entries of the hard-limited ones
/// (`$14..$18`, `$20`), in one statement (one
/// round trip while the spend rows are locked). `ON CONFLICT
/// DO NOTHING`: a request with the same idempotency key that committed
/// first wins, nothing is held, and this one answers with that one.
pub(super) const INSERT_RESERVATION: &str = "
WITH r AS (
    INSERT INTO budget_reservations (id, tenant_id, user_id, api_key, provider, model, labels,
                                     amount_usd, idempotency_key, request_sha256, answer,
                                     expires_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $12, now() + make_interval(secs => $11))
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
    RETURNING id, tenant_id, amount_usd, expires_at
), held AS (
    INSERT INTO budget_reservation_holds (budget_id, tenant_id, user_id, reservation_id,
                                          amount_usd, expires_at)
    SELECT k.budget_id, r.tenant_id, k.user_id, r.id, r.amount_usd, r.expires_at
    FROM r, UNNEST($13::uuid[], $19::text[]) AS k(budget_id, user_id)
), logged AS (
    INSERT INTO budget_reservation_log (tenant_id, budget_id, user_id, period_start, kind,
                                        reservation_id, delta_spend_usd, delta_reserved_usd,
                                        spend_usd, reserved_usd, amount_usd)
    SELECT r.tenant_id, k.budget_id, k.user_id, k.period_start, 'grant', r.id, 0, r.amount_usd,
           k.spend, k.reserved, k.amount
    FROM r, UNNEST($14::uuid[], $15::timestamptz[], $16::numeric[], $17::numeric[],
                   $18::numeric[], $20::text[])
         AS k(budget_id, period_start, spend, reserved, amount, user_id)
)
SELECT expires_at FROM r";

/// The current spend rows, locked in the batch's key order.
pub(super) const LOCK_SPEND_ROWS: &str = "
SELECT s.budget_id, s.spend_usd
FROM budget_spend AS s
JOIN UNNEST($2::uuid[], $3::timestamptz[], $4::text[]) AS k(budget_id, period_start, user_id)
  ON s.budget_id = k.budget_id AND s.period_start = k.period_start AND s.user_id = k.user_id
WHERE s.tenant_id = $1
ORDER BY s.budget_id, s.tenant_id, s.user_id, s.period_start
FOR UPDATE OF s";

/// Every hold still stored, expired or not: the grant runs after the
/// expired ones of its budgets were released under the same lock.
pub(super) const HELD: &str = "
SELECT h.budget_id, sum(h.amount_usd) AS held_usd
FROM budget_reservation_holds AS h
JOIN UNNEST($2::uuid[], $3::text[]) AS k(budget_id, user_id)
  ON h.budget_id = k.budget_id AND h.user_id = k.user_id
WHERE h.tenant_id = $1
GROUP BY h.budget_id";

/// The holds of reservations still open at the statement's time.
pub(super) const OPEN_HOLDS: &str = "
SELECT h.budget_id, sum(h.amount_usd) AS held_usd
FROM budget_reservation_holds AS h
JOIN UNNEST($2::uuid[], $3::text[]) AS k(budget_id, user_id)
  ON h.budget_id = k.budget_id AND h.user_id = k.user_id
WHERE h.tenant_id = $1 AND h.expires_at > now()
GROUP BY h.budget_id";

/// Releases the expired holds of a tenant on the given budgets; a
/// reservation still open is closed as expired at its expiry time.
pub(super) const EXPIRE_HOLDS: &str = "
WITH gone AS (
    DELETE FROM budget_reservation_holds AS h
    USING UNNEST($2::uuid[], $3::text[]) AS k(budget_id, user_id)
    WHERE h.tenant_id = $1 AND h.budget_id = k.budget_id AND h.user_id = k.user_id
      AND h.expires_at <= now()
    RETURNING h.budget_id, h.reservation_id, h.amount_usd
), closed AS (
    UPDATE budget_reservations AS r
    SET released_at = r.expires_at, release_reason = 'expired'
    WHERE r.id IN (SELECT reservation_id FROM gone) AND r.released_at IS NULL
)
SELECT budget_id, reservation_id, amount_usd FROM gone ORDER BY budget_id, reservation_id";

pub(super) const FIND: &str = "
SELECT tenant_id, user_id, release_reason FROM budget_reservations
WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)";

pub(super) const HOLD_BUDGETS: &str = "
SELECT budget_id FROM budget_reservation_holds WHERE reservation_id = $1 ORDER BY budget_id";

/// Closes an open reservation; one whose expiry has passed is closed as
/// expired whatever the caller asked (its holds stopped counting then).
pub(super) const CLOSE: &str = "
UPDATE budget_reservations
SET released_at = LEAST(now(), expires_at),
    release_reason = CASE WHEN expires_at <= now() THEN 'expired' ELSE $2 END,
    settled_by = $3
WHERE id = $1 AND released_at IS NULL
RETURNING release_reason";

pub(super) const DELETE_HOLDS: &str = "
DELETE FROM budget_reservation_holds WHERE reservation_id = $1
RETURNING budget_id, amount_usd";

pub(super) const LOG: &str = "
INSERT INTO budget_reservation_log (tenant_id, budget_id, user_id, period_start, kind,
                                    reservation_id, delta_spend_usd, delta_reserved_usd,
                                    spend_usd, reserved_usd, amount_usd)
SELECT $1, k.budget_id, k.user_id, k.period_start, k.kind, k.reservation_id, 0, k.delta,
       k.spend, k.reserved, k.amount
FROM UNNEST($2::uuid[], $3::timestamptz[], $4::text[], $5::uuid[], $6::numeric[],
            $7::numeric[], $8::numeric[], $9::numeric[], $10::text[])
     AS k(budget_id, period_start, kind, reservation_id, delta, spend, reserved, amount,
          user_id)";
