-- V4__alert_delivery.sql: a threshold crossing a target refused is set aside with the reason.
-- Runs inside one transaction; every statement is idempotent.
--
-- A target that answers 400 or 422 to an alert refuses that alert's content; pushing it again
-- cannot succeed, and left pending it would be retried forever and hold up the alerts pushed in
-- the same request. The outbox pushes such a batch again one alert at a time, delivers the
-- others, and marks each refused alert here: it is no longer claimed nor counted as pending,
-- and `tokenledger_budget_alerts_rejected_total` counts it (docs/design.md, "Budgets and
-- alerts"; docs/runbooks.md, TokenledgerBudgetAlertsRejected).

ALTER TABLE budget_alerts
    -- When Alertmanager refused the alert; NULL while it is pending or once it is delivered.
    ADD COLUMN IF NOT EXISTS alertmanager_rejected_at TIMESTAMPTZ,
    -- When the webhook refused the alert.
    ADD COLUMN IF NOT EXISTS webhook_rejected_at      TIMESTAMPTZ,
    -- Why, per refusing target: `alertmanager: HTTP 400 Bad Request: <body>`, several joined
    -- with `; `.
    ADD COLUMN IF NOT EXISTS rejection                TEXT;
