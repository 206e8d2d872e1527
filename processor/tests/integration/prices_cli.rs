//! `processor prices import-litellm` on the checked-in excerpt of LiteLLM's
//! catalog: the binary writes a price file that reads back as a book and
//! prices what the catalog says, and lists what it skipped.

use std::path::PathBuf;
use std::process::Command;

use chrono::{TimeZone, Utc};
use ledger::pricebook::{PricingStatus, RatingRequest, ServiceTier, UsageQuantities};
use ledger::PriceBook;
use rust_decimal::Decimal;

fn excerpt() -> PathBuf {
    // At run time, as cargo names it: a reused binary keeps its build checkout's path.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../ledger/tests/golden/litellm_excerpt.json")
}

#[test]
fn import_litellm_writes_a_price_file_that_prices_the_catalog() {
    let dir = std::env::temp_dir().join(format!("tokenledger-prices-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let output = dir.join("litellm.toml");
    let run = Command::new(env!("CARGO_BIN_EXE_processor"))
        .args(["prices", "import-litellm", "--input"])
        .arg(excerpt())
        .arg("--output")
        .arg(&output)
        .args(["--effective-from", "2026-12-01"])
        .output()
        .expect("processor runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("skipped dall-e-3"), "{stdout}");
    assert!(stdout.contains("2 catalog entries skipped"), "{stdout}");

    let text = std::fs::read_to_string(&output).expect("price file written");
    let book = PriceBook::from_toml(&text).expect("reads back as a book");
    assert!(stdout.contains(book.version()), "{stdout}");
    let quantities = UsageQuantities {
        input_uncached: 1_000_000,
        output: 1_000_000,
        ..UsageQuantities::default()
    };
    let ask = |at| {
        book.rate(&RatingRequest {
            tenant: "acme",
            provider: "openai",
            model: "gpt-4o",
            at,
            service_tier: ServiceTier::Standard,
            quantities: &quantities,
            supplied_cost: None,
        })
    };
    let rating = ask(Utc
        .with_ymd_and_hms(2026, 12, 2, 0, 0, 0)
        .single()
        .expect("time"));
    assert_eq!(
        rating.status,
        PricingStatus::Priced,
        "{}",
        rating.provenance.rule
    );
    assert_eq!(rating.cost, Decimal::new(125, 1), "$2.50 + $10 per million");
    assert!(rating
        .provenance
        .entry_id
        .as_deref()
        .is_some_and(|id| id.ends_with("@2026-12-01")));
    let before = ask(Utc
        .with_ymd_and_hms(2026, 11, 30, 0, 0, 0)
        .single()
        .expect("time"));
    assert_eq!(
        before.status,
        PricingStatus::Unpriced,
        "not in force before --effective-from"
    );

    let missing = Command::new(env!("CARGO_BIN_EXE_processor"))
        .args([
            "prices",
            "import-litellm",
            "--input",
            "/nonexistent.json",
            "--output",
        ])
        .arg(dir.join("none.toml"))
        .output()
        .expect("processor runs");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent.json"));
    let _ = std::fs::remove_dir_all(&dir);
}
