-- V12__model_budget_names.sql: a budget narrowed to a model counts every name the price book
-- knows the model by (dated snapshots such as `gpt-4o-2024-08-06`, aliases, Bedrock
-- inference-profile and version forms), not only the name itself (ledger::budget,
-- `Scope::matches_model`; docs/design.md, "Budgets and alerts").
--
-- Spend kept under the old rule (exact names only) is dropped, the way an edit of a budget's scope
-- drops it: the next batch with a matching event rebuilds the row from the audit table for its
-- whole period under the new rule and records every threshold the rebuilt spend reaches, and the
-- status endpoint computes a missing row the same way meanwhile.
--
-- Runs inside one transaction.

DELETE FROM budget_spend AS s
USING budgets AS b
WHERE b.id = s.budget_id AND b.model IS NOT NULL;
