//! `GET /v1/reconciliation` on the gateway: for an admin key, the JSON `processor reconcile report
//! --format json` prints for the same stored provider reports, ledger rows, price book and tenant
//! map; a tenant key is refused and bad parameters are a 400. The gateway reads only what the
//! processor stored (no provider is reachable here).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::admin_gateway::{self, get};
use e2e::{Binary, Database};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
const ADMIN_KEY: &str = "reconciliation-test-admin-key-0123456789";
const ACME_KEY: &str = "reconciliation-test-acme-key-0123456789";

/// Two days of OpenAI usage in the ledger and in the provider's stored reports, with known
/// differences: acme's input priced at twice the bill's rate, a project no tenant is mapped to,
/// and a third day the provider has not reported yet.
async fn store_data(db: &Database) {
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO gateway_mode_audit (id, tenant_id, provider, model, prompt_tokens, \
             completion_tokens, total_tokens, estimated_cost, created_at, cached_prompt_tokens, \
             cache_write_tokens, reasoning_tokens, pricing_status, labels, received_at, \
             payload_sha256, source_partition, source_offset, price_entry, cost_source) VALUES
             (gen_random_uuid(), 'acme', 'openai', 'gpt-4o', 1000000, 100000, 1100000, 4.00,
              TIMESTAMPTZ '2026-03-01 10:00:00+00', 0, 0, 0, 'priced', '{}'::jsonb,
              TIMESTAMPTZ '2026-03-01 10:00:01+00', '\\x00'::bytea, 0, 1,
              'openai/gpt-4o@2024-08-06', 'book'),
             (gen_random_uuid(), 'acme', 'openai', 'gpt-4o', 500000, 50000, 550000, 1.75,
              TIMESTAMPTZ '2026-03-02 10:00:00+00', 0, 0, 0, 'priced', '{}'::jsonb,
              TIMESTAMPTZ '2026-03-02 10:00:01+00', '\\x00'::bytea, 0, 2,
              'openai/gpt-4o@2024-08-06', 'book'),
             (gen_random_uuid(), 'acme', 'openai', 'gpt-4o', 7000, 700, 7700, 0.03,
              TIMESTAMPTZ '2026-03-03 10:00:00+00', 0, 0, 0, 'priced', '{}'::jsonb,
              TIMESTAMPTZ '2026-03-03 10:00:01+00', '\\x00'::bytea, 0, 3,
              'openai/gpt-4o@2024-08-06', 'book');
             INSERT INTO provider_fetch_runs (run_id, provider, report, from_day, to_day, query,
                 completed_at, pages)
             VALUES ('00000000-0000-7000-8000-000000000001', 'openai', 'usage', '2026-03-01',
                     '2026-03-03', '/v1/organization/usage/completions?bucket_width=1d', now(), 1),
                    ('00000000-0000-7000-8000-000000000002', 'openai', 'cost', '2026-03-01',
                     '2026-03-03', '/v1/organization/costs?bucket_width=1d', now(), 1);
             INSERT INTO provider_report_revisions (provider, report, day, revision, run_id,
                 fetched_at, content_sha256, row_count)
             SELECT 'openai', report, day, 1, run_id, now(), '\\x01'::bytea, 2
             FROM (VALUES ('usage', '00000000-0000-7000-8000-000000000001'::uuid),
                          ('cost', '00000000-0000-7000-8000-000000000002'::uuid)) r (report, run_id),
                  (VALUES (DATE '2026-03-01'), (DATE '2026-03-02')) d (day);
             INSERT INTO provider_usage_rows (provider, day, revision, ordinal, scope_id, model,
                 input_uncached, cache_read, cache_write_5m, cache_write_1h, output, requests, raw)
             VALUES ('openai', '2026-03-01', 1, 0, 'proj_acme', 'gpt-4o',
                     1000000, 0, 0, 0, 100000, 10, '{}'),
                    ('openai', '2026-03-01', 1, 1, 'proj_stray', 'gpt-4o',
                     20000, 0, 0, 0, 2000, 1, '{}'),
                    ('openai', '2026-03-02', 1, 0, 'proj_acme', 'gpt-4o',
                     500000, 0, 0, 0, 50000, 5, '{}');
             INSERT INTO provider_cost_rows (provider, day, revision, ordinal, scope_id, model,
                 token_kind, line_item, amount_usd, raw)
             VALUES ('openai', '2026-03-01', 1, 0, 'proj_acme', 'gpt-4o',
                     'input_uncached', 'gpt-4o-2024-08-06, input', 1.25, '{}'),
                    ('openai', '2026-03-01', 1, 1, 'proj_acme', 'gpt-4o',
                     'output', 'gpt-4o-2024-08-06, output', 1.00, '{}'),
                    ('openai', '2026-03-01', 1, 2, 'proj_stray', 'gpt-4o',
                     'input_uncached', 'gpt-4o-2024-08-06, input', 0.05, '{}'),
                    ('openai', '2026-03-02', 1, 0, 'proj_acme', 'gpt-4o',
                     'input_uncached', 'gpt-4o-2024-08-06, input', 1.25, '{}'),
                    ('openai', '2026-03-02', 1, 1, 'proj_acme', 'gpt-4o',
                     'output', 'gpt-4o-2024-08-06, output', 0.50, '{}');",
        )
        .await
        .unwrap_or_else(|e| panic!("storing the ledger rows and provider reports: {e}"));
}

/// Runs `processor <args>` against `db` with acme's project mapped.
async fn processor(db: &Database, dir: &Path, args: &[&str]) -> Output {
    let config = dir.join("processor.toml");
    std::fs::write(
        &config,
        "[reconcile.openai]\nproject_tenants = { proj_acme = \"acme\" }\n",
    )
    .expect("write the processor configuration");
    let mut command = tokio::process::Command::new(Binary::path("processor"));
    command
        .arg("--config")
        .arg(&config)
        .args(args)
        .env("TOKENLEDGER_DATABASE__URL", db.url())
        .env("TOKENLEDGER_LOG", "warn")
        .env_remove("TOKENLEDGER_CONFIG")
        .kill_on_drop(true);
    tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("processor {args:?} did not finish in {COMMAND_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run processor {args:?}: {e}"))
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

#[tokio::test]
async fn the_gateway_answers_admins_the_processors_json_and_refuses_the_rest() {
    let db = Database::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let migrated = processor(&db, dir.path(), &["migrate"]).await;
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    store_data(&db).await;
    let (mut gateway, base) = admin_gateway::start(
        &db,
        dir.path(),
        "[reconciliation.openai]\nproject_tenants = { proj_acme = \"acme\" }\n\n",
        ADMIN_KEY,
        ACME_KEY,
    )
    .await;

    let range = ["--from", "2026-03-01", "--to", "2026-03-04"];
    for tenant in [None, Some("acme")] {
        let mut args = vec![
            "reconcile",
            "report",
            "--provider",
            "openai",
            "--format",
            "json",
        ];
        args.extend(range);
        let mut url =
            format!("{base}/v1/reconciliation?provider=openai&from=2026-03-01&to=2026-03-04");
        if let Some(tenant) = tenant {
            args.extend(["--tenant", tenant]);
            url.push_str(&format!("&tenant={tenant}"));
        }
        let cli = processor(&db, dir.path(), &args).await;
        // Out of bounds (acme's price, the unmapped project) is exit status 2, with the JSON.
        assert_eq!(
            cli.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&cli.stderr)
        );
        let cli = json(&cli.stdout);
        let (status, http) = get(&url, ADMIN_KEY).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&http));
        let http = json(&http);
        assert_eq!(http, cli, "HTTP and CLI reconciliations differ");
        assert_eq!(http["within_bounds"], serde_json::json!(false));
        assert_eq!(http["uncompared_days"], serde_json::json!(["2026-03-03"]));
        assert!(
            http["groups"]
                .as_array()
                .expect("groups")
                .iter()
                .any(|g| g["tenant_id"] == "acme" && g["causes"]["price_difference"] != "0"),
            "{http}"
        );
        if tenant.is_none() {
            assert_eq!(
                http["unmapped_scopes"]["proj_stray"],
                serde_json::json!(22000)
            );
        } else {
            assert!(http["groups"]
                .as_array()
                .expect("groups")
                .iter()
                .all(|g| g["tenant_id"] == "acme"));
        }
    }

    let good = format!("{base}/v1/reconciliation?provider=openai&from=2026-03-01&to=2026-03-04");
    let (status, body) = get(&good, ACME_KEY).await;
    assert_eq!(
        status,
        403,
        "a tenant key is refused: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(json(&body)["error"], "forbidden");
    for bad in [
        "provider=azure&from=2026-03-01&to=2026-03-04",
        "provider=openai&from=2026-03-32&to=2026-03-04",
        "provider=openai&from=2026-03-04&to=2026-03-01",
        "provider=openai&from=2026-03-01&to=2026-03-01",
        "provider=openai&from=2020-01-01&to=2026-03-01",
        "provider=openai&from=2026-03-01",
    ] {
        let (status, body) = get(&format!("{base}/v1/reconciliation?{bad}"), ADMIN_KEY).await;
        assert_eq!(status, 400, "{bad}: {}", String::from_utf8_lossy(&body));
    }
    let (status, _) = get(&good, "not-a-key").await;
    assert_eq!(status, 401);
    gateway.assert_running();
}
