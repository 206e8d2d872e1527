//! The processor's counters against committed batches.
use super::*;
use ledger::{Cost, PricingStatus, UsageEvent};
use rust_decimal::Decimal;

#[test]
fn label_bound_admits_first_values_then_folds_the_rest() {
    let mut bound = LabelBound::new(2);
    assert_eq!(bound.label("a"), "a");
    assert_eq!(bound.label("b"), "b");
    assert_eq!(bound.label("c"), OTHER_LABEL);
    assert_eq!(bound.label("a"), "a", "admitted values stay admitted");
    assert_eq!(bound.label("d"), OTHER_LABEL);
    let mut none = LabelBound::new(0);
    assert_eq!(none.label("x"), OTHER_LABEL);
}

fn row(tenant: &str, model: &str, status: PricingStatus) -> PricedEvent {
    let now = Utc::now();
    PricedEvent {
        event: UsageEvent {
            id: uuid::Uuid::now_v7(),
            created_at: now,
            tenant_id: tenant.into(),
            user_id: None,
            provider: "openai".into(),
            model: model.into(),
            prompt_tokens: 7,
            completion_tokens: 3,
            total_tokens: 10,
            cached_prompt_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            cache_write_1h_tokens: 0,
            service_tier: None,
            calls: Default::default(),
            unpriced_tokens: Default::default(),
            estimated_cost: None,
            labels: Default::default(),
            received_at: now,
            request_id: None,
            call_identity: false,
            reservation_id: None,
            api_key: None,
        },
        cost: Cost {
            usd: Decimal::new(25, 2),
            status,
        },
        pricing: Default::default(),
        content_sha256: [0; 32],
        record_index: 0,
        source_partition: 0,
        source_offset: 0,
    }
}

fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[test]
fn batch_sums_fold_into_the_same_series_as_row_by_row_counting() {
    let metrics = Metrics::new(1, 200).expect("metrics");
    let no_dead_letters = BTreeMap::new();
    let batch = |rows| CommittedBatch {
        consumed: <[PricedEvent]>::len(rows),
        new_rows: rows,
        duplicates: 0,
        conflicts: 0,
        dead_lettered: &no_dead_letters,
        committed_at: Utc::now(),
    };
    let duration = std::time::Duration::from_millis(1);
    let first = vec![
        row("t1", "gpt-4o", PricingStatus::Unpriced),
        row("t2", "gpt-4o", PricingStatus::Unpriced),
        row("t3", "gpt-4o", PricingStatus::Unpriced),
        row("t1", "gpt-4o", PricingStatus::Priced),
    ];
    metrics.record_batch(&batch(&first), duration);
    let second = vec![row("t2", "gpt-4o", PricingStatus::Priced)];
    metrics.record_batch(&batch(&second), duration);
    let text = metrics.render().expect("renders");
    let series = |name: &str, tenant: &str| {
        format!("{name}{{model=\"gpt-4o\",provider=\"openai\",tenant_id=\"{tenant}\"}}")
    };
    let total = "axonflow_orchestrator_provider_total_tokens";
    assert_eq!(value_of(&text, &series(total, "t1")), Some(20.0), "{text}");
    assert_eq!(value_of(&text, &series(total, "__other__")), Some(30.0));
    let cost = "axonflow_orchestrator_provider_total_cost";
    assert_eq!(value_of(&text, &series(cost, "t1")), Some(0.5));
    assert_eq!(value_of(&text, &series(cost, "__other__")), Some(0.75));
    assert_eq!(
        value_of(
            &text,
            "tokenledger_events_unpriced_total{model=\"gpt-4o\",provider=\"openai\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        value_of(&text, "tokenledger_end_to_end_latency_seconds_count"),
        Some(5.0),
        "one latency observation per new row"
    );
}

#[test]
fn guide_counters_have_exact_names_labels_and_bounded_cardinality() {
    let metrics = Metrics::new(2, 200).expect("metrics");
    let new_rows = vec![
        row("t1", "gpt-4o", PricingStatus::Priced),
        row("t2", "gpt-4o", PricingStatus::Priced),
        row("t3", "gpt-4o", PricingStatus::Unpriced),
        row("t4", "gpt-4o", PricingStatus::Priced),
    ];
    let batch = CommittedBatch {
        consumed: 5,
        new_rows: &new_rows,
        duplicates: 1,
        conflicts: 0,
        dead_lettered: &[(Reason::Undecodable, 1)].into(),
        committed_at: Utc::now(),
    };
    metrics.record_batch(&batch, std::time::Duration::from_millis(3));
    let text = metrics.render().expect("renders");
    let series = |name: &str, tenant: &str| {
        format!("{name}{{model=\"gpt-4o\",provider=\"openai\",tenant_id=\"{tenant}\"}}")
    };
    let total = "axonflow_orchestrator_provider_total_tokens";
    assert_eq!(value_of(&text, &series(total, "t1")), Some(10.0), "{text}");
    assert_eq!(value_of(&text, &series(total, "t2")), Some(10.0));
    assert_eq!(value_of(&text, &series(total, "__other__")), Some(20.0));
    assert_eq!(value_of(&text, &series(total, "t3")), None);
    let cost = "axonflow_orchestrator_provider_total_cost";
    assert_eq!(value_of(&text, &series(cost, "__other__")), Some(0.5));
    let prompt = "axonflow_orchestrator_provider_prompt_tokens";
    assert_eq!(value_of(&text, &series(prompt, "t1")), Some(7.0));
    let completion = "axonflow_orchestrator_provider_completion_tokens";
    assert_eq!(value_of(&text, &series(completion, "t1")), Some(3.0));
    assert_eq!(
        value_of(
            &text,
            "tokenledger_events_unpriced_total{model=\"gpt-4o\",provider=\"openai\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value_of(&text, "tokenledger_events_consumed_total"),
        Some(5.0)
    );
    assert_eq!(
        value_of(&text, "tokenledger_events_inserted_total"),
        Some(4.0)
    );
    assert_eq!(
        value_of(&text, "tokenledger_events_duplicate_total"),
        Some(1.0)
    );
    assert_eq!(
        value_of(
            &text,
            "tokenledger_events_dead_lettered_total{reason=\"undecodable\"}"
        ),
        Some(1.0)
    );
    assert_eq!(value_of(&text, "tokenledger_processor_up"), Some(1.0));
    for name in [
        "tokenledger_batch_size_bucket",
        "tokenledger_batch_duration_seconds_bucket",
        "tokenledger_end_to_end_latency_seconds_bucket",
        "tokenledger_last_commit_timestamp_seconds",
        "tokenledger_db_retries_total",
        "tokenledger_events_conflict_total",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
}

#[test]
fn unpriced_tokens_are_counted_by_component_with_client_fields_folded() {
    let metrics = Metrics::new(10, 200).expect("metrics");
    let mut audio = row("t1", "gpt-5", PricingStatus::Priced);
    audio.event.unpriced_tokens = [("input_audio".to_owned(), 600)].into();
    let mut odd = row("t1", "gpt-5", PricingStatus::Priced);
    odd.event.unpriced_tokens = [
        ("usage.hologram_tokens".to_owned(), 40),
        ("usage.smell_tokens".to_owned(), 2),
        ("input_audio".to_owned(), 1),
    ]
    .into();
    let rows = vec![audio, odd];
    let no_dead_letters = BTreeMap::new();
    let batch = CommittedBatch {
        consumed: 2,
        new_rows: &rows,
        duplicates: 0,
        conflicts: 0,
        dead_lettered: &no_dead_letters,
        committed_at: Utc::now(),
    };
    metrics.record_batch(&batch, std::time::Duration::from_millis(1));
    let text = metrics.render().expect("renders");
    let series = |component: &str| {
        format!(
            "tokenledger_tokens_unpriced_total{{component=\"{component}\",model=\"gpt-5\",provider=\"openai\"}}"
        )
    };
    assert_eq!(
        value_of(&text, &series("input_audio")),
        Some(601.0),
        "{text}"
    );
    assert_eq!(
        value_of(&text, &series("usage_field")),
        Some(42.0),
        "{text}"
    );
    assert!(!text.contains("hologram"), "{text}");
    assert_eq!(
        value_of(
            &text,
            "tokenledger_events_unpriced_total{model=\"gpt-5\",provider=\"openai\"}"
        ),
        None,
        "a partly priced event is priced"
    );
}
