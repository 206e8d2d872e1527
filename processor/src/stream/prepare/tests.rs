use std::collections::{HashMap, HashSet};

use chrono::{TimeZone, Utc};
use ledger::{PriceBook, PricingStatus, UsageEvent};
use uuid::Uuid;

use super::*;
use crate::record::Record;
use crate::stream::dead_letters::Reason;

pub(crate) fn event(n: u128, tenant: &str, prompt: u32) -> UsageEvent {
    UsageEvent {
        id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + n),
        created_at: Utc
            .with_ymd_and_hms(2026, 1, 5, 12, 0, 0)
            .single()
            .expect("valid time"),
        tenant_id: tenant.into(),
        user_id: None,
        provider: "openai".into(),
        model: "gpt-4o".into(),
        prompt_tokens: prompt,
        completion_tokens: 10,
        total_tokens: prompt + 10,
        cached_prompt_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cache_write_1h_tokens: 0,
        service_tier: None,
        calls: Default::default(),
        unpriced_tokens: Default::default(),
        estimated_cost: None,
        labels: Default::default(),
        received_at: Utc
            .with_ymd_and_hms(2026, 1, 5, 12, 0, 1)
            .single()
            .expect("valid time"),
        request_id: None,
        call_identity: false,
        reservation_id: None,
        api_key: None,
    }
}

fn record(partition: i32, offset: i64, value: &[u8]) -> Record {
    Record {
        topic: "usage-events".into(),
        partition,
        offset,
        key: Some(b"acme".to_vec()),
        value: Some(value.to_vec()),
        schema: Some(ledger::KAFKA_SCHEMA.as_bytes().to_vec()),
        timestamp_ms: None,
    }
}

pub(crate) fn event_record(partition: i32, offset: i64, event: &UsageEvent) -> Record {
    record(partition, offset, &event.to_kafka_value())
}

#[test]
fn dedupes_inside_the_batch_by_id_and_created_at() {
    let first = event(1, "acme", 100);
    let mut retried = first.clone();
    retried.received_at += chrono::Duration::seconds(30); // a gateway retry
    retried.request_id = Some("req-2".into());
    let mut later_same_id = first.clone();
    later_same_id.created_at += chrono::Duration::seconds(1); // another key
    let prepared = prepare(
        vec![
            event_record(0, 10, &first),
            event_record(0, 11, &retried),
            event_record(0, 12, &later_same_id),
        ],
        &PriceBook::builtin().expect("the built-in book parses"),
    );
    assert_eq!(prepared.unique.len(), 2);
    assert_eq!(
        prepared.unique[0].source_offset, 10,
        "first occurrence wins"
    );
    assert_eq!(prepared.repeats.len(), 1);
    assert_eq!(prepared.repeats[0].source_offset, 11);
    assert_eq!(
        prepared.repeats[0].content_sha256, prepared.unique[0].content_sha256,
        "what the gateway adds is not part of the content"
    );
    assert!(prepared.poison.is_empty());
}

#[test]
fn the_same_id_and_created_at_under_two_tenants_are_two_events() {
    let acme = event(1, "acme", 100);
    let globex = event(1, "globex", 100);
    let globex_again = globex.clone();
    let prepared = prepare(
        vec![
            event_record(0, 0, &globex),
            event_record(1, 0, &acme),
            event_record(0, 1, &globex_again),
        ],
        &PriceBook::builtin().expect("the built-in book parses"),
    );
    let tenants: Vec<&str> = prepared
        .unique
        .iter()
        .map(|p| p.event.tenant_id.as_str())
        .collect();
    assert_eq!(tenants, ["globex", "acme"], "one event per tenant");
    assert_eq!(prepared.repeats.len(), 1, "globex's retry is a repeat");

    // The database inserted acme's and holds globex's: no conflict either way.
    let key = |e: &UsageEvent| (e.tenant_id.clone(), e.id, e.created_at);
    let inserted: HashSet<EventKey> = [key(&acme)].into();
    let stored: HashMap<EventKey, Vec<u8>> =
        [(key(&globex), globex.content_sha256().to_vec())].into();
    let classification = classify(&prepared, &inserted, &stored).expect("consistent");
    assert_eq!(classification.new, [1]);
    assert_eq!(classification.duplicates, 2);
    assert!(classification.conflicts.is_empty());

    // Stored under acme's key, globex's content would be a conflict: the key decides.
    let stored_as_acme: HashMap<EventKey, Vec<u8>> = [
        (key(&globex), globex.content_sha256().to_vec()),
        (key(&acme), globex.content_sha256().to_vec()),
    ]
    .into();
    let classification = classify(&prepared, &HashSet::new(), &stored_as_acme).expect("consistent");
    assert_eq!(classification.conflicts.len(), 1);
    assert!(
        classification.conflicts[0].1.contains("(acme, "),
        "{}",
        classification.conflicts[0].1
    );
}

#[test]
fn poison_is_classified_and_offsets_cover_it() {
    let good = event(1, "acme", 100);
    let mut wrong_total = event(2, "acme", 100);
    wrong_total.total_tokens = 1;
    let mut huge = event(3, "acme", 0);
    huge.prompt_tokens = u32::MAX - 10;
    huge.total_tokens = u32::MAX;
    let mut wrong_schema = event_record(1, 7, &event(4, "acme", 1));
    wrong_schema.schema = Some(b"usage.v2".to_vec());
    let mut no_value = record(1, 8, b"");
    no_value.value = None;
    let prepared = prepare(
        vec![
            event_record(0, 5, &good),
            record(0, 6, b"{not json"),
            event_record(0, 9, &wrong_total),
            event_record(2, 3, &huge),
            wrong_schema,
            no_value,
        ],
        &PriceBook::builtin().expect("the built-in book parses"),
    );
    let reasons: Vec<(i64, Reason)> = prepared
        .poison
        .iter()
        .map(|(_, letter)| (letter.record.offset, letter.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            (6, Reason::Undecodable),
            (9, Reason::Invalid),
            (3, Reason::Invalid),
            (7, Reason::Schema),
            (8, Reason::Undecodable),
        ]
    );
    for (index, letter) in &prepared.poison {
        assert_eq!(prepared.records[*index], letter.record);
    }
    assert_eq!(prepared.unique.len(), 1);
    let offsets: Vec<((String, i32), i64)> = prepared.next_offsets.clone().into_iter().collect();
    assert_eq!(
        offsets,
        [
            (("usage-events".to_string(), 0), 10),
            (("usage-events".to_string(), 1), 9),
            (("usage-events".to_string(), 2), 4),
        ],
        "poison records advance the offsets too"
    );
}

#[test]
fn records_without_a_schema_header_are_accepted() {
    let mut plain = event_record(0, 0, &event(1, "acme", 1));
    plain.schema = None;
    let prepared = prepare(
        vec![plain],
        &PriceBook::builtin().expect("the built-in book parses"),
    );
    assert_eq!(prepared.unique.len(), 1);
}

#[test]
fn events_are_priced() {
    let mut provided = event(1, "acme", 100);
    provided.estimated_cost = Some(rust_decimal::Decimal::new(42, 3));
    let mut unknown = event(2, "acme", 100);
    unknown.model = "no-such-model".into();
    unknown.provider = "nobody".into();
    let prepared = prepare(
        vec![
            event_record(0, 0, &event(0, "acme", 1_000_000)),
            event_record(0, 1, &provided),
            event_record(0, 2, &unknown),
        ],
        &PriceBook::builtin().expect("the built-in book parses"),
    );
    let statuses: Vec<PricingStatus> = prepared.unique.iter().map(|p| p.cost.status).collect();
    assert_eq!(
        statuses,
        [
            PricingStatus::Priced,
            PricingStatus::Provided,
            PricingStatus::Unpriced
        ]
    );
    assert!(prepared.unique[0].cost.usd > rust_decimal::Decimal::ZERO);
    assert_eq!(
        prepared.unique[1].cost.usd,
        rust_decimal::Decimal::new(42, 3)
    );
    assert_eq!(prepared.unique[2].cost.usd, rust_decimal::Decimal::ZERO);
}

#[test]
fn classify_separates_new_duplicates_and_conflicts() {
    let new = event(1, "acme", 1);
    let stored_same = event(2, "acme", 2);
    let stored_other = event(3, "acme", 3);
    let mut conflicting = stored_other.clone();
    conflicting.prompt_tokens = 30;
    conflicting.total_tokens = 40;
    let mut repeat_conflicting_new = new.clone();
    repeat_conflicting_new.model = "gpt-4o-mini".into();
    let prepared = prepare(
        vec![
            event_record(0, 0, &new),
            event_record(0, 1, &stored_same),
            event_record(0, 2, &conflicting),
            event_record(0, 3, &new), // in-batch repeat, same content
            event_record(0, 4, &repeat_conflicting_new), // in-batch repeat, other content
        ],
        &PriceBook::builtin().expect("the built-in book parses"),
    );
    let key = |e: &UsageEvent| (e.tenant_id.clone(), e.id, e.created_at);
    let inserted: HashSet<EventKey> = [key(&new)].into();
    let stored: HashMap<EventKey, Vec<u8>> = [
        (key(&stored_same), stored_same.content_sha256().to_vec()),
        (key(&stored_other), stored_other.content_sha256().to_vec()),
    ]
    .into();
    let classification = classify(&prepared, &inserted, &stored).expect("consistent");
    assert_eq!(classification.new, [0]);
    assert_eq!(classification.duplicates, 2);
    let conflict_records: Vec<usize> = classification.conflicts.iter().map(|(i, _)| *i).collect();
    assert_eq!(conflict_records, [2, 4]);
}

#[test]
fn a_batch_inserted_whole_is_classified_as_with_every_key_inserted() {
    let first = event(1, "acme", 1);
    let other = event(2, "globex", 2);
    let mut retried = first.clone();
    retried.request_id = Some("req-2".into());
    let mut conflicting = other.clone();
    conflicting.prompt_tokens = 30;
    conflicting.total_tokens = 40;
    let book = PriceBook::builtin().expect("the built-in book parses");
    let batches = [
        vec![event_record(0, 0, &first), event_record(0, 1, &other)],
        vec![
            event_record(0, 0, &first),
            event_record(0, 1, &other),
            event_record(0, 2, &retried), // in-batch repeat, same content
            event_record(0, 3, &conflicting), // in-batch repeat, other content
            event_record(0, 4, &first),
        ],
    ];
    for records in batches {
        let prepared = prepare(records, &book);
        let every: HashSet<EventKey, KeyHasher> =
            prepared.unique.iter().map(PricedEvent::key).collect();
        let expected =
            classify(&prepared, &every, &HashMap::default()).expect("every key inserted");
        assert_eq!(classify_all_inserted(&prepared), expected);
    }
    let prepared = prepare(
        vec![
            event_record(0, 0, &first),
            event_record(0, 1, &other),
            event_record(0, 2, &retried),
            event_record(0, 3, &conflicting),
        ],
        &book,
    );
    let classification = classify_all_inserted(&prepared);
    assert_eq!(classification.new, [0, 1]);
    assert_eq!(classification.duplicates, 1);
    assert_eq!(classification.conflicts.len(), 1);
    assert_eq!(classification.conflicts[0].0, 3);
}

#[test]
fn classify_reports_a_key_that_is_neither_inserted_nor_stored() {
    let prepared = prepare(
        vec![event_record(0, 0, &event(1, "acme", 1))],
        &PriceBook::builtin().expect("the built-in book parses"),
    );
    let result = classify(&prepared, &HashSet::new(), &HashMap::new());
    assert!(matches!(result, Err(MissingStoredRow { .. })));
}
