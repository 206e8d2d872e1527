use std::str::FromStr;

use chrono::{Datelike, Duration, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde_json::json;
use uuid::Uuid;

use super::*;

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .expect("valid time")
}

fn budget(value: serde_json::Value) -> Budget {
    Budget::from_json(Uuid::nil(), &value).unwrap_or_else(|e| panic!("{value}: {e:?}"))
}

fn event(tenant: &str, provider: &str, model: &str, labels: &[(&str, &str)]) -> UsageEvent {
    let at = utc(2026, 1, 5, 12, 0);
    UsageEvent {
        id: Uuid::nil(),
        created_at: at,
        tenant_id: tenant.into(),
        user_id: None,
        provider: provider.into(),
        model: model.into(),
        prompt_tokens: 1,
        completion_tokens: 1,
        total_tokens: 2,
        cached_prompt_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cache_write_1h_tokens: 0,
        service_tier: None,
        calls: Default::default(),
        unpriced_tokens: Default::default(),
        estimated_cost: None,
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        received_at: at,
        request_id: None,
        call_identity: false,
        reservation_id: None,
        api_key: None,
    }
}

#[test]
fn utc_days_and_months_are_calendar_periods() {
    let at = utc(2026, 1, 31, 23, 59);
    assert_eq!(
        period_bounds(Period::Daily, Tz::UTC, at),
        PeriodBounds {
            start: utc(2026, 1, 31, 0, 0),
            end: utc(2026, 2, 1, 0, 0)
        }
    );
    assert_eq!(
        period_bounds(Period::Monthly, Tz::UTC, at),
        PeriodBounds {
            start: utc(2026, 1, 1, 0, 0),
            end: utc(2026, 2, 1, 0, 0)
        }
    );
    let december = period_bounds(Period::Monthly, Tz::UTC, utc(2025, 12, 15, 0, 0));
    assert_eq!(
        december.end,
        utc(2026, 1, 1, 0, 0),
        "December ends in the next year"
    );
    let leap = period_bounds(Period::Monthly, Tz::UTC, utc(2028, 2, 29, 12, 0));
    assert_eq!(leap.end, utc(2028, 3, 1, 0, 0));
    let at_start = period_bounds(Period::Daily, Tz::UTC, utc(2026, 3, 1, 0, 0));
    assert_eq!(at_start.start, utc(2026, 3, 1, 0, 0), "start is inclusive");
}

#[test]
fn periods_follow_the_budgets_time_zone() {
    let tokyo: Tz = "Asia/Tokyo".parse().expect("zone");
    // 2026-01-31 20:00 UTC is already February 1st in Tokyo.
    let month = period_bounds(Period::Monthly, tokyo, utc(2026, 1, 31, 20, 0));
    assert_eq!(month.start, utc(2026, 1, 31, 15, 0));
    assert_eq!(month.end, utc(2026, 2, 28, 15, 0));
    let new_york: Tz = "America/New_York".parse().expect("zone");
    let day = period_bounds(Period::Daily, new_york, utc(2026, 1, 5, 3, 0));
    assert_eq!(
        day.start,
        utc(2026, 1, 4, 5, 0),
        "still the 4th in New York"
    );
}

#[test]
fn dst_days_last_23_and_25_hours() {
    let berlin: Tz = "Europe/Berlin".parse().expect("zone");
    let spring = period_bounds(Period::Daily, berlin, utc(2026, 3, 29, 12, 0));
    assert_eq!(spring.start, utc(2026, 3, 28, 23, 0));
    assert_eq!(spring.end - spring.start, Duration::hours(23));
    let autumn = period_bounds(Period::Daily, berlin, utc(2026, 10, 25, 12, 0));
    assert_eq!(autumn.start, utc(2026, 10, 24, 22, 0));
    assert_eq!(autumn.end - autumn.start, Duration::hours(25));
    let march = period_bounds(Period::Monthly, berlin, utc(2026, 3, 15, 0, 0));
    assert_eq!(march.start, utc(2026, 2, 28, 23, 0), "CET midnight");
    assert_eq!(march.end, utc(2026, 3, 31, 22, 0), "CEST midnight");
}

#[test]
fn a_day_whose_midnight_is_skipped_starts_when_clocks_resume() {
    // Chile moved from -04 to -03 at 2024-09-08 00:00 local: that midnight
    // never happened, the day began at 01:00 local (04:00 UTC).
    let santiago: Tz = "America/Santiago".parse().expect("zone");
    let day = period_bounds(Period::Daily, santiago, utc(2024, 9, 8, 12, 0));
    assert_eq!(day.start, utc(2024, 9, 8, 4, 0));
    let local = day.start.with_timezone(&santiago);
    assert_eq!((local.day(), local.hour()), (8, 1));
    let previous = period_bounds(Period::Daily, santiago, day.start - Duration::seconds(1));
    assert_eq!(previous.end, day.start, "days tile without gaps");
    assert_eq!(day.end - day.start, Duration::hours(23));
}

const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Santiago",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Apia",
    "America/Havana",
];

proptest! {
    #[test]
    fn periods_contain_their_instant_and_tile_time(
        zone in prop::sample::select(ZONES),
        seconds in 946_684_800_i64..4_102_444_800_i64, // 2000..2100
        period in prop::sample::select(vec![Period::Daily, Period::Weekly, Period::Monthly]),
    ) {
        let tz: Tz = zone.parse().expect("zone");
        let at = Utc.timestamp_opt(seconds, 0).single().expect("valid");
        let bounds = period_bounds(period, tz, at);
        prop_assert!(bounds.contains(at), "{bounds:?} does not contain {at}");
        prop_assert_eq!(period_bounds(period, tz, bounds.start), bounds);
        prop_assert_eq!(period_bounds(period, tz, bounds.end - Duration::microseconds(1)), bounds);
        let next = period_bounds(period, tz, bounds.end);
        prop_assert_eq!(next.start, bounds.end, "the next period starts where this one ends");
        let length = bounds.end - bounds.start;
        let (min, max) = match period {
            // Apia skipped a whole day in 2011; DST moves a day by ≤ 1 h.
            Period::Daily => (Duration::hours(22), Duration::hours(26)),
            Period::Weekly => (Duration::days(6), Duration::days(8)),
            Period::Monthly => (Duration::days(27), Duration::days(32)),
            Period::Rolling30d => (Duration::days(29), Duration::days(31)),
        };
        prop_assert!(length >= min && length <= max, "{zone} {period}: {length:?}");
        let local_start = bounds.start.with_timezone(&tz);
        prop_assert!(local_start.hour() <= 1, "{zone}: starts at local {local_start}");
        if period == Period::Monthly {
            prop_assert_eq!(local_start.day(), 1, "{}: month starts at local {}", zone, local_start);
        }
        if period == Period::Weekly {
            prop_assert_eq!(
                local_start.weekday(),
                chrono::Weekday::Mon,
                "{}: week starts at local {}",
                zone,
                local_start
            );
        }
    }

    #[test]
    fn crossings_over_a_rising_spend_are_each_threshold_once(
        increments in prop::collection::vec(0_i64..40_000, 1..30),
        amount_cents in 1_i64..1_000_000,
    ) {
        let amount = Decimal::new(amount_cents, 2);
        let thresholds = [25, 50, 75, 90, 100, 150];
        let mut spend = Decimal::ZERO;
        let mut recorded: Vec<u16> = Vec::new();
        for increment in increments {
            let next = spend + Decimal::new(increment, 2);
            let crossed_now = crossed(spend, next, amount, &thresholds);
            prop_assert!(crossed_now.iter().all(|t| !recorded.contains(t)));
            recorded.extend(crossed_now);
            spend = next;
        }
        prop_assert_eq!(recorded, reached(spend, amount, &thresholds));
    }

    #[test]
    fn format_usd_keeps_cents_and_never_rounds_to_zero(cents in 1_i64..10_000_000_000, extra in 0_u32..4) {
        let amount = Decimal::new(cents, 2 + extra);
        let text = format_usd(amount);
        prop_assert!(text.starts_with('$'));
        let parsed = Decimal::from_str(&text[1..]).expect("decimal");
        prop_assert_eq!(parsed, amount, "{}", text);
    }
}

#[test]
fn a_jump_from_40_to_95_percent_crosses_50_75_and_90_at_once() {
    let amount = dec!(1000);
    assert_eq!(
        crossed(dec!(400), dec!(950), amount, &DEFAULT_THRESHOLDS),
        vec![50, 75, 90]
    );
    assert_eq!(
        crossed(dec!(950), dec!(999.99), amount, &DEFAULT_THRESHOLDS),
        Vec::<u16>::new()
    );
    assert_eq!(
        crossed(dec!(999.99), dec!(1000), amount, &DEFAULT_THRESHOLDS),
        vec![100],
        "reaching the exact amount counts"
    );
    assert_eq!(
        reached(dec!(750), amount, &DEFAULT_THRESHOLDS),
        vec![50, 75]
    );
    assert_eq!(
        reached(dec!(749.9999999999), amount, &DEFAULT_THRESHOLDS),
        vec![50]
    );
    assert_eq!(
        crossed(dec!(0), dec!(3000), amount, &[100, 200, 300]),
        vec![100, 200, 300],
        "overrun thresholds"
    );
}

#[test]
fn scope_matches_tenant_provider_model_and_label() {
    let every =
        budget(json!({"name": "all", "tenant_id": "*", "period": "daily", "amount_usd": "10"}));
    assert!(every.matches(&event("acme", "openai", "gpt-4o", &[]), &book()));
    assert!(every.matches(&event("globex", "anthropic", "claude", &[]), &book()));

    let narrow = budget(json!({
        "name": "acme-support-gpt4o", "tenant_id": "acme", "provider": "OpenAI", "model": "gpt-4o",
        "label": {"key": "team", "value": "support"}, "period": "monthly", "amount_usd": "10"
    }));
    assert_eq!(
        narrow.scope.provider.as_deref(),
        Some("openai"),
        "provider is lower-cased"
    );
    assert!(narrow.matches(
        &event(
            "acme",
            "openai",
            "gpt-4o",
            &[("team", "support"), ("x", "y")]
        ),
        &book()
    ));
    assert!(!narrow.matches(
        &event("globex", "openai", "gpt-4o", &[("team", "support")]),
        &book()
    ));
    assert!(!narrow.matches(
        &event("acme", "azure", "gpt-4o", &[("team", "support")]),
        &book()
    ));
    assert!(!narrow.matches(
        &event("acme", "openai", "gpt-4o-mini", &[("team", "support")]),
        &book()
    ));
    assert!(!narrow.matches(
        &event("acme", "openai", "gpt-4o", &[("team", "sales")]),
        &book()
    ));
    assert!(!narrow.matches(&event("acme", "openai", "gpt-4o", &[]), &book()));
    assert_eq!(
        narrow.scope.narrowing(),
        "openai/gpt-4o, label team=support"
    );
}

#[test]
fn defaults_apply_and_the_json_round_trips() {
    let b = budget(
        json!({"name": "acme-monthly", "tenant_id": "acme", "period": "monthly", "amount_usd": 1000}),
    );
    assert_eq!(b.thresholds, DEFAULT_THRESHOLDS.to_vec());
    assert_eq!(b.timezone, Tz::UTC);
    assert!(!b.hard_limit);
    assert_eq!(b.amount_usd, dec!(1000));
    let mut shown = b.to_json();
    assert_eq!(shown["amount_usd"], "1000");
    assert_eq!(shown["timezone"], "UTC");
    shown.as_object_mut().expect("object").remove("id");
    assert_eq!(Budget::from_json(Uuid::nil(), &shown), Ok(b));
}

#[test]
fn validation_names_every_bad_field() {
    let errors = Budget::from_json(
        Uuid::nil(),
        &json!({
            "name": "has space", "tenant_id": "", "period": "hourly", "timezone": "Mars/Olympus",
            "amount_usd": "-5", "thresholds": [50, 50], "hard_limit": "yes", "colour": "red",
            "label": {"key": "bad key", "value": "x"}
        }),
    )
    .expect_err("invalid");
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    for field in [
        "colour",
        "name",
        "tenant_id",
        "label",
        "period",
        "timezone",
        "amount_usd",
        "thresholds",
        "hard_limit",
    ] {
        assert!(fields.contains(&field), "{field} missing from {errors:?}");
    }
    let missing = Budget::from_json(Uuid::nil(), &json!({})).expect_err("empty");
    let fields: Vec<&str> = missing.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["name", "tenant_id", "period", "amount_usd"]);
    assert!(missing.iter().all(|e| e.message == "is required"));

    for (amount, fragment) in [
        (json!(0), "greater than 0"),
        (json!(10.5), "fractions lose precision"),
        (json!("12 dollars"), "decimal string"),
        (json!("0.00000000001"), "decimal places"),
    ] {
        let errors = Budget::from_json(
            Uuid::nil(),
            &json!({"name": "b", "tenant_id": "acme", "period": "daily", "amount_usd": amount}),
        )
        .expect_err("bad amount");
        assert!(errors[0].message.contains(fragment), "{amount}: {errors:?}");
    }
    for thresholds in [
        json!([]),
        json!([0]),
        json!([1001]),
        json!([50.5]),
        json!("50"),
    ] {
        let errors = Budget::from_json(
            Uuid::nil(),
            &json!({"name": "b", "tenant_id": "acme", "period": "daily", "amount_usd": "1", "thresholds": thresholds}),
        )
        .expect_err("bad thresholds");
        assert_eq!(errors[0].field, "thresholds");
    }
    let sorted = budget(
        json!({"name": "b", "tenant_id": "acme", "period": "daily", "amount_usd": "1", "thresholds": [100, 50, 120]}),
    );
    assert_eq!(sorted.thresholds, vec![50, 100, 120]);
}

fn alert(threshold: u16, spend: Decimal) -> ThresholdAlert {
    ThresholdAlert {
        budget_id: Uuid::nil(),
        budget_name: "acme-monthly".into(),
        tenant_id: "acme".into(),
        user_id: String::new(),
        kind: AlertKind::Threshold,
        period: Period::Monthly,
        timezone: Tz::UTC,
        period_start: utc(2026, 1, 1, 0, 0),
        period_end: utc(2026, 2, 1, 0, 0),
        threshold,
        amount_usd: dec!(1000),
        spend_usd: spend,
        narrowing: String::new(),
        crossed_at: utc(2026, 1, 20, 10, 30),
        resolved_at: None,
    }
}

#[test]
fn alert_text_labels_and_payload() {
    let warning = alert(75, dec!(951.234));
    assert_eq!(
        warning.summary(),
        "75% of the monthly budget used: $750.00 of $1000.00 (tenant acme)"
    );
    assert_eq!(
        warning.description(),
        "Budget acme-monthly of tenant acme: $951.234 spent of $1000.00 (95.1%) when the 75% \
         threshold was recorded at 2026-01-20 10:30. Period 2026-01-01 00:00 to 2026-02-01 00:00 UTC."
    );
    let labels = warning.labels();
    assert_eq!(labels["alertname"], "LLMBudgetThreshold");
    assert_eq!(labels["severity"], "warning");
    assert_eq!(labels["threshold"], "75");
    assert_eq!(labels["period"], "monthly");
    assert_eq!(labels["period_start"], "2026-01-01");
    assert_eq!(alert(100, dec!(1000)).labels()["severity"], "critical");
    assert_eq!(alert(120, dec!(1200)).labels()["severity"], "critical");
    let payload = warning.to_alertmanager_json();
    assert_eq!(payload["startsAt"], "2026-01-20T10:30:00.000Z");
    assert_eq!(payload["endsAt"], "2026-02-01T00:00:00.000Z");
    assert_eq!(payload["labels"]["tenant_id"], "acme");
    assert_eq!(payload["annotations"]["runbook_url"], RUNBOOK_URL);
}

#[test]
fn an_each_user_alert_names_its_user_and_a_forecast_alert_its_kind() {
    let mut per_user = alert(75, dec!(800));
    per_user.user_id = "alice".into();
    assert_eq!(per_user.labels()["user_id"], "alice");
    assert!(per_user.summary().ends_with("(tenant acme, user alice)"));
    assert!(!alert(75, dec!(800)).labels().contains_key("user_id"));

    let mut forecast = alert(100, dec!(1500));
    forecast.kind = AlertKind::Forecast;
    let labels = forecast.labels();
    assert_eq!(labels["alertname"], FORECAST_ALERT_NAME);
    assert_eq!(labels["kind"], "forecast");
    assert!(!labels.contains_key("threshold"));
    assert_eq!(
        forecast.summary(),
        "The monthly budget is forecast to run out: $1500.00 projected of $1000.00 (tenant acme)"
    );
    let payload = forecast.to_alertmanager_json();
    assert_eq!(payload["endsAt"], "2026-02-01T00:00:00.000Z");
    forecast.resolved_at = Some(utc(2026, 1, 21, 8, 0));
    assert_eq!(
        forecast.to_alertmanager_json()["endsAt"],
        "2026-01-21T08:00:00.000Z"
    );
}

#[test]
fn usd_formatting() {
    assert_eq!(format_usd(dec!(750)), "$750.00");
    assert_eq!(format_usd(dec!(0.5)), "$0.50");
    assert_eq!(format_usd(dec!(0.005)), "$0.005");
    assert_eq!(format_usd(dec!(1234.5678)), "$1234.5678");
    assert_eq!(format_usd(threshold_amount(dec!(333.33), 50)), "$166.665");
}

fn book() -> crate::PriceBook {
    crate::PriceBook::builtin().expect("the built-in book parses")
}

/// A budget on a model counts every name the price book knows that model by (snapshots,
/// aliases, Bedrock inference-profile forms), and only those.
#[test]
fn a_model_budget_counts_every_name_the_price_book_knows_the_model_by() {
    let book = book();
    let gpt4o = budget(json!({
        "name": "gpt-4o", "tenant_id": "acme", "model": "gpt-4o", "period": "monthly",
        "amount_usd": "1", "hard_limit": true
    }));
    for (provider, model) in [
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o-2024-08-06"),
        ("openai", "gpt-4o-2024-05-13"),
        ("azure", "gpt-4o-2024-08-06"),
    ] {
        assert!(
            gpt4o.matches(&event("acme", provider, model, &[]), &book),
            "{provider}/{model} counts toward a budget on gpt-4o"
        );
    }
    for (provider, model) in [
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4o-mini-2024-07-18"),
    ] {
        assert!(
            !gpt4o.matches(&event("acme", provider, model, &[]), &book),
            "{provider}/{model} is another model"
        );
    }
    let snapshot = budget(json!({
        "name": "snapshot", "tenant_id": "acme", "model": "gpt-4o-2024-08-06",
        "period": "monthly", "amount_usd": "1"
    }));
    assert!(!snapshot.matches(&event("acme", "openai", "gpt-4o", &[]), &book));
    // Bedrock's inference-profile prefixes and version suffixes.
    let listed = book
        .entries()
        .find(|e| e.provider == "bedrock" && e.model.starts_with("anthropic."))
        .expect("a Bedrock Claude entry");
    let claude = budget(json!({
        "name": "claude", "tenant_id": "acme", "model": listed.model, "period": "monthly",
        "amount_usd": "1"
    }));
    let profiled = format!("us.{}-v1:0", listed.model);
    assert!(
        claude.matches(&event("acme", "bedrock", &profiled, &[]), &book),
        "{profiled} counts toward a budget on {}",
        listed.model
    );
    // An alias the book lists counts toward its model.
    if let Some((entry, alias)) = book
        .entries()
        .find_map(|e| e.aliases.first().map(|alias| (e, alias.clone())))
    {
        let aliased = budget(json!({
            "name": "aliased", "tenant_id": "acme", "model": entry.model, "period": "monthly",
            "amount_usd": "1"
        }));
        assert!(aliased.matches(&event("acme", &entry.provider, &alias, &[]), &book));
    };
}

/// A week is Monday 00:00 to Monday 00:00 local; the one with Europe's
/// autumn DST change lasts 169 hours.
#[test]
fn weekly_periods_run_monday_to_monday_in_the_budgets_zone() {
    let berlin: Tz = "Europe/Berlin".parse().expect("zone");
    // Thursday 2026-10-29; the clocks went back on Sunday 2026-10-25.
    let week = period_bounds(Period::Weekly, berlin, utc(2026, 10, 29, 12, 0));
    assert_eq!(week.start, utc(2026, 10, 25, 23, 0), "Monday 26 00:00 CET");
    assert_eq!(week.end, utc(2026, 11, 1, 23, 0));
    let dst_week = period_bounds(Period::Weekly, berlin, utc(2026, 10, 22, 12, 0));
    assert_eq!(
        dst_week.start,
        utc(2026, 10, 18, 22, 0),
        "Monday 19 00:00 CEST"
    );
    assert_eq!(dst_week.end - dst_week.start, Duration::hours(169));
    assert_eq!("weekly".parse::<Period>(), Ok(Period::Weekly));
}

#[test]
fn a_rolling_window_is_the_last_thirty_local_days_and_moves_a_day_at_a_time() {
    let at = |text: &str| text.parse::<DateTime<Utc>>().expect("instant");
    assert_eq!("rolling_30d".parse::<Period>(), Ok(Period::Rolling30d));
    assert_eq!(Period::Rolling30d.to_string(), "rolling_30d");
    let today = period_bounds(
        Period::Rolling30d,
        chrono_tz::UTC,
        at("2026-03-15T12:00:00Z"),
    );
    assert_eq!(
        (today.start, today.end),
        (at("2026-02-14T00:00:00Z"), at("2026-03-16T00:00:00Z"))
    );
    let tomorrow = period_bounds(Period::Rolling30d, chrono_tz::UTC, today.end);
    assert_eq!(
        (tomorrow.start, tomorrow.end),
        (at("2026-02-15T00:00:00Z"), at("2026-03-17T00:00:00Z")),
        "the window drops its oldest day at midnight"
    );
    // Local days: New York's window at 03:00 UTC on 15 March is still the
    // 14th's, and the DST change of 8 March makes it 30 days less an hour.
    let tz: Tz = "America/New_York".parse().expect("zone");
    let local = period_bounds(Period::Rolling30d, tz, at("2026-03-15T03:00:00Z"));
    assert_eq!(
        (local.start, local.end),
        (at("2026-02-13T05:00:00Z"), at("2026-03-15T04:00:00Z"))
    );
}

#[test]
fn a_late_event_counts_toward_every_rolling_window_up_to_today() {
    let at = |text: &str| text.parse::<DateTime<Utc>>().expect("instant");
    let now = at("2026-03-15T12:00:00Z");
    let windows =
        |event: &str| periods_containing(Period::Rolling30d, chrono_tz::UTC, at(event), now);
    let today = period_bounds(Period::Rolling30d, chrono_tz::UTC, now);
    assert_eq!(windows("2026-03-15T08:00:00Z"), vec![today]);
    let late = windows("2026-03-13T23:00:00Z");
    assert_eq!(late.len(), 3, "{late:?}");
    assert_eq!(late.last(), Some(&today));
    assert!(late.iter().all(|w| w.contains(at("2026-03-13T23:00:00Z"))));
    // An event older than the window counts toward 30 past windows, none
    // of them today's.
    let old = windows("2026-02-01T00:00:00Z");
    assert_eq!(old.len(), 30);
    assert!(!old.contains(&today));
    // Calendar periods: the one period of the event.
    assert_eq!(
        periods_containing(
            Period::Monthly,
            chrono_tz::UTC,
            at("2026-02-01T00:00:00Z"),
            now
        ),
        vec![period_bounds(
            Period::Monthly,
            chrono_tz::UTC,
            at("2026-02-01T00:00:00Z")
        )]
    );
}

#[test]
fn a_user_budget_counts_its_users_events_only() {
    let alice = budget(json!({
        "name": "acme-alice", "tenant_id": "acme", "user_id": "alice", "period": "daily",
        "amount_usd": "5"
    }));
    assert_eq!(alice.to_json()["user_id"], "alice");
    let with_user = |user: Option<&str>| UsageEvent {
        user_id: user.map(str::to_owned),
        ..event("acme", "openai", "gpt-4o", &[])
    };
    assert!(alice.matches(&with_user(Some("alice")), &book()));
    assert!(!alice.matches(&with_user(Some("bob")), &book()));
    assert!(!alice.matches(&with_user(None), &book()));
    assert_eq!(alice.scope.narrowing(), "user alice");
    assert_eq!(alice.scope.user.spend_key(Some("alice")), "");
    let everyone = budget(
        json!({"name": "acme", "tenant_id": "acme", "period": "daily",
                                 "amount_usd": "5"}),
    );
    assert!(everyone.matches(&with_user(Some("bob")), &book()));
}

#[test]
fn an_each_user_budget_counts_every_users_events_each_under_its_own_key() {
    let each = budget(json!({
        "name": "per-user", "tenant_id": "*", "user_id": "*", "period": "daily",
        "amount_usd": "5"
    }));
    assert_eq!(each.scope.user, UserScope::Each);
    assert_eq!(each.to_json()["user_id"], "*");
    assert_eq!(each.scope.narrowing(), "each user");
    let with_user = |user: Option<&str>| UsageEvent {
        user_id: user.map(str::to_owned),
        ..event("acme", "openai", "gpt-4o", &[])
    };
    for user in [Some("alice"), Some("bob"), None] {
        assert!(each.matches(&with_user(user), &book()));
    }
    assert_eq!(each.scope.user.spend_key(Some("alice")), "alice");
    assert_eq!(each.scope.user.spend_key(None), "");
    assert_eq!(each.scope.user.filter("alice"), Some("alice"));
    assert_eq!(
        UserScope::from_column(each.scope.user.as_column().map(str::to_owned)),
        UserScope::Each
    );
}
