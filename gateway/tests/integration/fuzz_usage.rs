//! Arbitrary bodies at `POST /v1/usage`: every answer is 2xx or 4xx, never
//! 5xx and never a panic, and a 4xx appends nothing.

use crate::support::*;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Posts `body` and checks the invariants; returns the status.
fn check(
    app: &TestApp,
    runtime: &tokio::runtime::Runtime,
    key: Option<&str>,
    body: Vec<u8>,
) -> Result<u16, TestCaseError> {
    let before = app.appender.acknowledged().len();
    let (status, _, json) = runtime.block_on(send_json(&app.router, post_usage(key, body)));
    let after = app.appender.acknowledged().len();
    prop_assert!(
        (200..300).contains(&status) || (400..500).contains(&status),
        "status {status}: {json}"
    );
    if status >= 400 {
        prop_assert_eq!(after, before, "a {} appended events: {}", status, json);
        prop_assert!(json["error"].is_string(), "error bodies are JSON: {}", json);
    } else {
        prop_assert_eq!(status, 202);
        let accepted = json["accepted"].as_u64().unwrap_or(0) as usize;
        prop_assert_eq!(after - before, accepted);
    }
    Ok(status)
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u32>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Events close to valid, with fields dropped, replaced or added, so the
/// fuzzer reaches acceptance, validation and the tenant check alike.
fn near_event() -> impl Strategy<Value = Value> {
    let field_names = prop::sample::select(
        ledger::event::KNOWN_FIELDS
            .iter()
            .copied()
            .chain(["unknown_field"])
            .collect::<Vec<_>>(),
    );
    let tenant = prop::sample::select(vec!["acme", "globex", "", "acme "]);
    (
        tenant,
        prop::collection::vec((field_names, prop::option::of(any_json())), 0..3),
    )
        .prop_map(|(tenant, edits)| {
            let mut object: Map<String, Value> = match event(tenant) {
                Value::Object(object) => object,
                _ => Map::new(),
            };
            for (name, replacement) in edits {
                match replacement {
                    Some(value) => object.insert(name.to_owned(), value),
                    None => object.remove(name),
                };
            }
            Value::Object(object)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_cause_a_server_error(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let app = app();
        let runtime = runtime();
        check(&app, &runtime, Some(ACME_KEY), body)?;
    }

    #[test]
    fn arbitrary_json_never_causes_a_server_error(value in any_json()) {
        let app = app();
        let runtime = runtime();
        check(&app, &runtime, Some(ACME_KEY), value.to_string().into_bytes())?;
    }

    #[test]
    fn near_valid_batches_are_accepted_whole_or_refused_whole(
        events in prop::collection::vec(near_event(), 1..6),
        as_array in any::<bool>(),
        key in prop::sample::select(vec![Some(ACME_KEY), Some(ADMIN_KEY), None]),
    ) {
        let app = app();
        let runtime = runtime();
        let body = if as_array || events.len() > 1 {
            Value::Array(events.clone())
        } else {
            events[0].clone()
        };
        let status = check(&app, &runtime, key, body.to_string().into_bytes())?;
        if status == 202 {
            prop_assert_eq!(app.appender.acknowledged().len(), events.len());
        }
    }
}

#[test]
fn the_near_valid_generator_reaches_acceptance_validation_and_the_tenant_check() {
    // Guards the property above against a generator that only ever
    // produces one kind of answer, which would make it vacuous.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let app = app();
    let runtime = runtime();
    let mut runner = TestRunner::deterministic();
    let mut statuses = std::collections::BTreeSet::new();
    for _ in 0..300 {
        let event = near_event()
            .new_tree(&mut runner)
            .expect("generates")
            .current();
        let status = check(
            &app,
            &runtime,
            Some(ACME_KEY),
            event.to_string().into_bytes(),
        )
        .expect("invariants hold");
        statuses.insert(status);
    }
    for expected in [202, 400, 403] {
        assert!(
            statuses.contains(&expected),
            "never saw {expected}: {statuses:?}"
        );
    }
}
