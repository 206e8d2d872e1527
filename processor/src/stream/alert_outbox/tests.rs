use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use ledger::budget::alert::AlertKind;
use ledger::{Period, ThresholdAlert};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use super::alert_payload;
use super::push::{is_rejection, push, Outcome};
use super::push::{LATE_LABEL, MIN_ACTIVE_AFTER_PUSH};

fn at(day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, day, hour, minute, 0)
        .single()
        .expect("valid time")
}

/// A daily crossing of 2026-03-10 in Europe/Berlin (the day ends 2026-03-10 23:00 UTC).
fn crossing(crossed_at: DateTime<Utc>) -> ThresholdAlert {
    ThresholdAlert {
        budget_id: Uuid::nil(),
        budget_name: "acme-daily".into(),
        tenant_id: "acme".into(),
        user_id: String::new(),
        kind: AlertKind::Threshold,
        period: Period::Daily,
        timezone: Tz::Europe__Berlin,
        period_start: at(9, 23, 0),
        period_end: at(10, 23, 0),
        threshold: 75,
        amount_usd: Decimal::from(100),
        spend_usd: Decimal::from(80),
        narrowing: String::new(),
        crossed_at,
        resolved_at: None,
    }
}

fn time(payload: &Value, field: &str) -> DateTime<Utc> {
    payload[field]
        .as_str()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("{field} in {payload}"))
}

#[test]
fn a_crossing_pushed_within_its_period_ends_with_the_period_and_is_not_late() {
    let alert = crossing(at(10, 9, 0));
    let payload = alert_payload(&alert, at(10, 9, 0) + Duration::seconds(2));
    assert_eq!(payload, alert.to_alertmanager_json());
    assert!(payload["labels"].get(LATE_LABEL).is_none());
    assert!(payload["annotations"].get(LATE_LABEL).is_none());
}

#[test]
fn a_crossing_pushed_in_the_last_hour_of_its_period_stays_active_an_hour() {
    let alert = crossing(at(10, 22, 50));
    let now = at(10, 22, 55);
    let payload = alert_payload(&alert, now);
    assert_eq!(time(&payload, "endsAt"), now + MIN_ACTIVE_AFTER_PUSH);
    assert!(payload["labels"].get(LATE_LABEL).is_none(), "{payload}");
}

#[test]
fn a_crossing_recorded_after_its_period_ended_is_late_and_active_from_now() {
    // An event dated in the period, recorded two days after it ended.
    let alert = crossing(at(12, 8, 0));
    let now = at(12, 8, 0) + Duration::milliseconds(300);
    let payload = alert_payload(&alert, now);
    assert_eq!(time(&payload, "startsAt"), alert.crossed_at);
    assert_eq!(time(&payload, "endsAt"), now + MIN_ACTIVE_AFTER_PUSH);
    assert_eq!(payload["labels"][LATE_LABEL], "true");
    assert_eq!(
        payload["annotations"][LATE_LABEL],
        "Delivered after its period ended (2026-03-11 00:00 Europe/Berlin): events dated in the \
         period arrived late, or delivery was held up past the period's end."
    );
    // Everything else is the crossing's own alert.
    let own = alert.to_alertmanager_json();
    assert_eq!(
        payload["annotations"]["summary"],
        own["annotations"]["summary"]
    );
    assert_eq!(payload["labels"]["period_start"], "2026-03-10");
    assert_eq!(payload["labels"]["threshold"], own["labels"]["threshold"]);
}

#[test]
fn a_crossing_held_up_past_the_period_end_is_late() {
    // Recorded before midnight, pushed after it (Alertmanager was down across the end).
    let alert = crossing(at(10, 22, 0));
    let payload = alert_payload(&alert, at(10, 23, 0));
    assert_eq!(payload["labels"][LATE_LABEL], "true");
    assert_eq!(time(&payload, "endsAt"), at(11, 0, 0));
}

#[test]
fn every_pushed_alert_starts_before_it_ends_and_is_active_for_an_hour() {
    // Alertmanager refuses an alert that ends before it starts; pushes happen at or after the
    // crossing, on the clock that recorded it.
    let period_end = at(10, 23, 0);
    for crossed_minutes in (-26 * 60..=3 * 24 * 60).step_by(7) {
        let crossed_at = period_end + Duration::minutes(crossed_minutes);
        for delay_seconds in [0, 1, 59, 3_599, 3_600, 86_400, 35 * 86_400] {
            let now = crossed_at + Duration::seconds(delay_seconds);
            let payload = alert_payload(&crossing(crossed_at), now);
            let (starts, ends) = (time(&payload, "startsAt"), time(&payload, "endsAt"));
            assert!(starts < ends, "{payload}");
            assert!(ends >= now + MIN_ACTIVE_AFTER_PUSH, "{payload}");
            assert!(ends >= period_end, "{payload}");
            let late = payload["labels"].get(LATE_LABEL).is_some();
            assert_eq!(late, period_end <= now, "{payload}");
        }
    }
}

#[test]
fn only_400_and_422_are_refusals() {
    for status in [400, 422] {
        assert!(is_rejection(StatusCode::from_u16(status).expect("status")));
    }
    for status in [401, 403, 404, 408, 413, 429, 500, 502, 503, 504] {
        assert!(
            !is_rejection(StatusCode::from_u16(status).expect("status")),
            "{status}"
        );
    }
}

/// A server answering every request with `response`, once per connection.
async fn answering(response: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut chunk = [0_u8; 4096];
                // Read the head and the (small) body before answering.
                while let Ok(read) = stream.read(&mut chunk).await {
                    if read == 0 {
                        return;
                    }
                    seen.extend_from_slice(&chunk[..read]);
                    let text = String::from_utf8_lossy(&seen);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|line| {
                                let (name, value) = line.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{address}/api/v2/alerts")
}

#[tokio::test]
async fn an_answer_is_read_as_accepted_refused_or_failed() {
    let http = reqwest::Client::new();
    let payload = Value::Array(vec![crossing(at(10, 9, 0)).to_alertmanager_json()]);
    let ok = answering("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
    assert_eq!(push(&http, &ok, &payload).await, Outcome::Accepted);
    let refused = answering(
        "HTTP/1.1 400 Bad Request\r\ncontent-length: 36\r\nconnection: close\r\n\r\n\
         \"start time must be before end time\"",
    )
    .await;
    assert_eq!(
        push(&http, &refused, &payload).await,
        Outcome::Rejected(
            "HTTP 400 Bad Request: \"start time must be before end time\"".to_owned()
        )
    );
    let unavailable = answering(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(matches!(
        push(&http, &unavailable, &payload).await,
        Outcome::Failed(message) if message.starts_with("HTTP 503")
    ));
    // Nothing listens on a port just released.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    assert!(matches!(
        push(&http, &format!("http://{closed}/api/v2/alerts"), &payload).await,
        Outcome::Failed(_)
    ));
}

/// A failed push's error text names the URL; what is stored in
/// `budget_alerts` and logged must not carry the webhook's path token or
/// `?token=`.
#[tokio::test]
async fn a_failed_push_reports_the_url_redacted() {
    let http = reqwest::Client::new();
    let payload = Value::Array(vec![crossing(at(10, 9, 0)).to_alertmanager_json()]);
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let url = format!("http://{closed}/services/T0/B0/SECRETTOKEN123?token=SECRETQUERY");
    let Outcome::Failed(message) = push(&http, &url, &payload).await else {
        panic!("nothing listens there");
    };
    assert!(!message.contains("SECRET"), "{message}");
    assert!(message.contains(&closed.to_string()), "{message}");
}
