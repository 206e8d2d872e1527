use super::*;
use crate::stream::prepare::tests::{event, event_record};
use crate::stream::prepare::{prepare, PreparedBatch};
use ledger::PriceBook;

fn batch(first: u128, count: u128) -> PreparedBatch {
    let records = (first..first + count)
        .map(|n| event_record(0, n as i64, &event(n, "acme", 10)))
        .collect();
    prepare(
        records,
        &PriceBook::builtin().expect("the built-in book parses"),
    )
}

fn hinted_ids(recent: &RecentKeys, batch: &PreparedBatch) -> Vec<uuid::Uuid> {
    let rows: Vec<&PricedEvent> = batch.unique.iter().collect();
    let (direct, hinted) = recent.split(&rows);
    assert_eq!(
        direct.len() + hinted.len(),
        rows.len(),
        "every row goes one way"
    );
    hinted.iter().map(|row| row.event.id).collect()
}

#[test]
fn remembered_keys_are_hinted_and_others_go_straight_in() {
    let recent = RecentKeys::default();
    let stored = batch(0, 3);
    let next = batch(2, 3);
    assert!(
        hinted_ids(&recent, &next).is_empty(),
        "nothing remembered yet"
    );
    recent.remember(stored.unique.iter().map(|row| &row.content_sha256));
    assert_eq!(hinted_ids(&recent, &next), vec![next.unique[0].event.id]);
}

#[test]
fn the_older_generation_is_dropped_when_the_newer_fills_up() {
    let recent = RecentKeys::with_generation(2);
    let keys = batch(0, 6);
    let hashes = |range: std::ops::Range<usize>| {
        keys.unique[range]
            .iter()
            .map(|row| &row.content_sha256)
            .collect::<Vec<_>>()
    };
    recent.remember(hashes(0..2));
    recent.remember(hashes(2..4));
    recent.remember(hashes(0..1)); // forgotten already: a new key again
    let ids: Vec<uuid::Uuid> = keys.unique.iter().map(|row| row.event.id).collect();
    assert_eq!(
        hinted_ids(&recent, &keys),
        vec![ids[0], ids[2], ids[3]],
        "the last two generations only"
    );
}
