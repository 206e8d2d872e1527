//! `ingest_offsets` through `store::offsets` against a real TimescaleDB: a position never moves
//! backwards and its mark moves with it; an operator's overwrite sets it either way and forgets
//! the mark; groups and topics are apart.

use std::collections::{BTreeMap, HashMap};

use e2e::Database;
use store::offsets::{advance, list, load, load_marks, overwrite, LogMark};

const GROUP: &str = "store-offsets";
const TOPIC: &str = "usage";

fn mark(offset: i64, byte: u8) -> LogMark {
    LogMark {
        offset,
        sha256: vec![byte; 32],
    }
}

fn positions(entries: &[(i32, i64)]) -> BTreeMap<(String, i32), i64> {
    entries
        .iter()
        .map(|(partition, next)| ((TOPIC.to_owned(), *partition), *next))
        .collect()
}

fn marks(entries: &[(i32, LogMark)]) -> BTreeMap<(String, i32), LogMark> {
    entries
        .iter()
        .map(|(partition, mark)| ((TOPIC.to_owned(), *partition), mark.clone()))
        .collect()
}

#[tokio::test]
async fn positions_only_advance_with_their_marks_and_an_overwrite_resets_both() {
    let database = Database::start().await;
    database.migrate().await;
    let client = database.client().await;

    advance(
        &client,
        GROUP,
        &positions(&[(0, 10), (1, 5)]),
        &marks(&[(0, mark(9, 1))]),
    )
    .await
    .expect("advanced");
    assert_eq!(
        load(&client, GROUP, TOPIC, &[0, 1, 2]).await.expect("load"),
        HashMap::from([(0, 10), (1, 5)]),
        "a partition without a row is absent"
    );
    assert_eq!(
        load_marks(&client, GROUP, TOPIC, &[0, 1])
            .await
            .expect("marks"),
        HashMap::from([(0, mark(9, 1))]),
        "a position stored without a mark has none"
    );

    // Behind the stored position (a rebalance's stale writer): neither moves.
    advance(
        &client,
        GROUP,
        &positions(&[(0, 4)]),
        &marks(&[(0, mark(3, 2))]),
    )
    .await
    .expect("advanced");
    assert_eq!(
        load(&client, GROUP, TOPIC, &[0]).await.expect("load")[&0],
        10
    );
    assert_eq!(
        load_marks(&client, GROUP, TOPIC, &[0])
            .await
            .expect("marks")[&0],
        mark(9, 1)
    );

    advance(
        &client,
        GROUP,
        &positions(&[(0, 12)]),
        &marks(&[(0, mark(11, 3))]),
    )
    .await
    .expect("advanced");
    let listed: Vec<(i32, i64)> = list(&client, GROUP, TOPIC, false)
        .await
        .expect("list")
        .iter()
        .map(|stored| (stored.partition, stored.next_offset))
        .collect();
    assert_eq!(listed, [(0, 12), (1, 5)], "by partition");
    assert_eq!(
        load_marks(&client, GROUP, TOPIC, &[0])
            .await
            .expect("marks")[&0],
        mark(11, 3)
    );

    overwrite(&client, GROUP, TOPIC, &BTreeMap::from([(0, 2)]))
        .await
        .expect("overwritten");
    assert_eq!(
        load(&client, GROUP, TOPIC, &[0, 1]).await.expect("load"),
        HashMap::from([(0, 2), (1, 5)]),
        "an overwrite lowers the position"
    );
    assert!(
        load_marks(&client, GROUP, TOPIC, &[0])
            .await
            .expect("marks")
            .is_empty(),
        "and forgets the mark of a record it no longer passed"
    );
    assert!(
        load(&client, "another-group", TOPIC, &[0, 1])
            .await
            .expect("load")
            .is_empty(),
        "groups are apart"
    );
}
