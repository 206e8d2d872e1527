-- V10__unpriced_tokens.sql: the tokens a row counted that the price book has no rate for, so that
-- a partly priced row is never read as a fully priced one. Runs inside one transaction; every
-- statement is idempotent.
--
-- e.g. {"input_audio": 600, "input_cache_write_12h": 2000, "usage.hologram_tokens": 40}: OpenAI
-- audio tokens, OpenAI cache writes kept 12 hours, a count field of a provider's usage object that
-- tokenledger does not know. They stay inside prompt_tokens / completion_tokens (the totals are
-- what the provider counted), estimated_cost covers the rest, and pricing_rule names them
-- ("...; not priced: input_audio 600 tokens"). NULL: every token was priced (and every row stored
-- before this version). Nullable without a default, so adding it touches no compressed chunk.
ALTER TABLE gateway_mode_audit
    ADD COLUMN IF NOT EXISTS unpriced_tokens JSONB;
