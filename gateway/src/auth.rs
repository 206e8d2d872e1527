//! API-key authentication: the key ring built from configuration, the
//! [`Authenticated`] extractor every protected handler takes, and each key's
//! [`TrustPolicy`]: whether its events may carry their own cost and how far
//! back they may be dated.
//!
//! Only SHA-256 hashes of keys are configured. A presented key is hashed and
//! compared with every configured hash in constant time, so neither the
//! comparison nor the position of the match leaks through timing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use ledger::event::IndexedFieldError;
use ledger::UsageEvent;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use crate::config::KeyKind;
use crate::config::{AuthConfig, KeyConfig, KeysFile};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing or unknown API key")]
    Unauthenticated,
    #[error("cannot read auth.keys_file {path}")]
    KeysFileUnreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("auth.keys_file {path} is not a valid keys file")]
    KeysFileInvalid {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("API key #{position} ({origin}): {problem}")]
    InvalidKey {
        position: usize,
        origin: &'static str,
        problem: String,
    },
    #[error("API keys #{first} and #{second} (counting auth.keys, then auth.keys_file) have the same sha256: remove one")]
    DuplicateKey { first: usize, second: usize },
    #[error("authentication is enabled but no API keys are configured (set auth.keys or auth.keys_file, or auth.enabled = false)")]
    NoKeys,
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        // Configuration errors never reach a request; anything else is a
        // refused key, and saying which part failed would help an attacker.
        (
            StatusCode::UNAUTHORIZED,
            [(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
            Json(json!({
                "error": "unauthorized",
                "message": "missing or unknown API key (send Authorization: Bearer <key>)",
            })),
        )
            .into_response()
    }
}

/// Who is calling, once the key has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The tenant a tenant or service key is bound to; `None` for admin
    /// keys and when authentication is disabled.
    pub tenant: Option<String>,
    /// Admin keys may write any tenant's events and manage budgets.
    pub admin: bool,
    pub kind: KeyKind,
    pub policy: TrustPolicy,
    /// The key's configured name (never its hash), if it has one: stamped
    /// on the events it appends and on its reservations.
    pub key_name: Option<String>,
}

impl Authenticated {
    /// The caller when authentication is disabled: an admin.
    pub fn unauthenticated_admin() -> Self {
        Self {
            tenant: None,
            admin: true,
            kind: KeyKind::Admin,
            policy: TrustPolicy::TRUSTED,
            key_name: None,
        }
    }

    /// Whether this caller may write or read data of `tenant_id`.
    pub fn may_access_tenant(&self, tenant_id: &str) -> bool {
        self.admin || self.tenant.as_deref() == Some(tenant_id)
    }
}

/// What a key's events are believed about. A tenant key by default has
/// neither: a tenant that could set its own cost or date its usage weeks
/// back could lower its bill or move spend into closed budget periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustPolicy {
    /// Whether `estimated_cost` is accepted; otherwise it is refused, not
    /// dropped, so a client never believes its figure was used.
    pub allow_caller_cost: bool,
    /// How far before its arrival an event may be dated; `None` leaves only
    /// the global backfill window (`validation.backfill_days`).
    pub max_lateness: Option<Duration>,
}

impl TrustPolicy {
    pub const TRUSTED: Self = Self {
        allow_caller_cost: true,
        max_lateness: None,
    };

    /// Refuses a batch if any event asks for more than this policy allows,
    /// naming every such event. A caller cost is refused before lateness.
    /// `indexed` says whether the body was an array, so errors carry the
    /// event's index.
    pub fn check(
        &self,
        events: &[UsageEvent],
        received_at: DateTime<Utc>,
        indexed: bool,
    ) -> Result<(), TrustRefusal> {
        let refuse = |index: usize, field: &str, message: String| IndexedFieldError {
            index: indexed.then_some(index),
            field: field.into(),
            message,
        };
        if !self.allow_caller_cost {
            let errors: Vec<IndexedFieldError> = events
                .iter()
                .enumerate()
                .filter(|(_, event)| event.estimated_cost.is_some())
                .map(|(index, _)| {
                    refuse(
                        index,
                        "estimated_cost",
                        "this API key may not set its own cost; leave estimated_cost out and the price book prices the event (a service key may send it)".into(),
                    )
                })
                .collect();
            if !errors.is_empty() {
                return Err(TrustRefusal::CallerCost(errors));
            }
        }
        if let Some(max_lateness) = self.max_lateness {
            let oldest = received_at - max_lateness;
            let errors: Vec<IndexedFieldError> = events
                .iter()
                .enumerate()
                .filter(|(_, event)| event.created_at < oldest)
                .map(|(index, _)| {
                    refuse(
                        index,
                        "created_at",
                        format!(
                            "is more than {} before the gateway received it, further back than this API key may write (created_at, or the time of a UUIDv7 id without it; a service key may backfill)",
                            describe(max_lateness)
                        ),
                    )
                })
                .collect();
            if !errors.is_empty() {
                return Err(TrustRefusal::TooLate {
                    errors,
                    max_lateness,
                });
            }
        }
        Ok(())
    }
}

/// Why a key's policy refused a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustRefusal {
    #[error("this API key may not set estimated_cost, sent in {} event(s): its usage is priced from the price book", .0.len())]
    CallerCost(Vec<IndexedFieldError>),
    #[error("{} event(s) are dated more than {} before they were received, further back than this API key may write", .errors.len(), describe(*.max_lateness))]
    TooLate {
        errors: Vec<IndexedFieldError>,
        max_lateness: Duration,
    },
}

/// A lateness in the largest whole unit that states it exactly.
fn describe(duration: Duration) -> String {
    let ms = duration.num_milliseconds();
    let (amount, unit) = [
        (86_400_000, "day"),
        (3_600_000, "hour"),
        (60_000, "minute"),
        (1_000, "second"),
    ]
    .into_iter()
    .find(|(size, _)| ms % size == 0)
    .map_or((ms, "millisecond"), |(size, unit)| (ms / size, unit));
    format!("{amount} {unit}{}", if amount == 1 { "" } else { "s" })
}

#[derive(Clone)]
struct KeyEntry {
    sha256: [u8; 32],
    principal: Authenticated,
}

/// The configured keys. Clones share one set of keys, so a reload
/// ([`KeyRing::reload`], on SIGHUP) reaches every route at once.
#[derive(Clone)]
pub struct KeyRing {
    enabled: bool,
    entries: Arc<RwLock<Arc<Vec<KeyEntry>>>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("enabled", &self.enabled)
            .field("keys", &self.len())
            .finish()
    }
}

impl KeyRing {
    /// Builds the ring from `auth.keys` plus the keys in `auth.keys_file`.
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthError> {
        if !config.enabled {
            return Ok(Self::disabled());
        }
        let mut entries = Vec::new();
        for (position, key) in config.keys.iter().enumerate() {
            entries.push(parse_key(config, key, position + 1, "auth.keys")?);
        }
        if let Some(path) = &config.keys_file {
            for (position, key) in read_keys_file(path)?.keys.iter().enumerate() {
                entries.push(parse_key(config, key, position + 1, "auth.keys_file")?);
            }
        }
        if entries.is_empty() {
            return Err(AuthError::NoKeys);
        }
        // Two entries with one hash are one key with two meanings: which
        // tenant it writes as would depend on the order of the files.
        let mut seen: HashMap<[u8; 32], usize> = HashMap::new();
        for (index, entry) in entries.iter().enumerate() {
            if let Some(first) = seen.insert(entry.sha256, index) {
                return Err(AuthError::DuplicateKey {
                    first: first + 1,
                    second: index + 1,
                });
            }
        }
        Ok(Self {
            enabled: true,
            entries: Arc::new(RwLock::new(Arc::new(entries))),
        })
    }

    /// Accepts every request as an admin. Only for an explicit
    /// `auth.enabled = false`.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            entries: Arc::default(),
        }
    }

    fn current(&self) -> Arc<Vec<KeyEntry>> {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the keys again (`auth.keys` as given, `auth.keys_file` from
    /// disk) and, if they are valid, replaces the ring's keys for every
    /// clone: a revoked key stops working for the next request. Invalid
    /// keys leave the ring as it was. Turning authentication on or off
    /// takes a restart. Returns the number of keys now in force.
    pub fn reload(&self, config: &AuthConfig) -> Result<usize, AuthError> {
        if !self.enabled || !config.enabled {
            return Ok(0);
        }
        let fresh = Self::from_config(config)?.current();
        let count = fresh.len();
        *self.entries.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(count)
    }

    /// Whether a key in force carries `name`: a budget of one key names
    /// it, and a name no key has would count nothing.
    pub fn has_key_named(&self, name: &str) -> bool {
        self.current()
            .iter()
            .any(|entry| entry.principal.key_name.as_deref() == Some(name))
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn len(&self) -> usize {
        self.current().len()
    }

    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    /// Checks the `Authorization: Bearer <key>` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Authenticated, AuthError> {
        if !self.enabled {
            return Ok(Authenticated::unauthenticated_admin());
        }
        let presented = bearer_token(headers).ok_or(AuthError::Unauthenticated)?;
        let presented_sha256: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Visit every entry whatever matches, so the time taken does not
        // depend on which key (if any) was presented.
        let mut found: Option<&KeyEntry> = None;
        let entries = self.current();
        for entry in entries.iter() {
            let is_match: bool = entry.sha256.ct_eq(&presented_sha256).into();
            if is_match && found.is_none() {
                found = Some(entry);
            }
        }
        found
            .map(|entry| entry.principal.clone())
            .ok_or(AuthError::Unauthenticated)
    }
}

/// Hex SHA-256 of a key, the form `auth.keys[].sha256` takes.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Longest key name (a budget's `api_key`).
const MAX_KEY_NAME_CHARS: usize = 100;

fn parse_key(
    config: &AuthConfig,
    key: &KeyConfig,
    position: usize,
    origin: &'static str,
) -> Result<KeyEntry, AuthError> {
    let invalid = |problem: &str| AuthError::InvalidKey {
        position,
        origin,
        problem: problem.to_owned(),
    };
    let mut sha256 = [0_u8; 32];
    hex::decode_to_slice(key.sha256.expose().trim(), &mut sha256)
        .map_err(|_| invalid("sha256 must be 64 hex digits (see `gateway hash-key`)"))?;
    let policy = key.policy(config).map_err(invalid)?;
    let max_lateness = match policy.max_lateness_ms {
        Some(ms) => Some(
            i64::try_from(ms)
                .ok()
                .and_then(Duration::try_milliseconds)
                .ok_or_else(|| invalid("max_lateness_ms is too large"))?,
        ),
        None => None,
    };
    if let Some(name) = &key.name {
        let valid = (1..=MAX_KEY_NAME_CHARS).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if !valid {
            return Err(invalid(
                "name must be 1-100 ASCII letters, digits, '-', '_', '.' or ':'",
            ));
        }
    }
    let principal = Authenticated {
        tenant: key
            .tenant_id
            .clone()
            .filter(|_| policy.kind != KeyKind::Admin),
        admin: policy.kind == KeyKind::Admin,
        kind: policy.kind,
        policy: TrustPolicy {
            allow_caller_cost: policy.allow_caller_cost,
            max_lateness,
        },
        key_name: key.name.clone(),
    };
    Ok(KeyEntry { sha256, principal })
}

fn read_keys_file(path: &Path) -> Result<KeysFile, AuthError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::KeysFileUnreadable {
        path: shown.clone(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| AuthError::KeysFileInvalid {
        path: shown,
        source: Box::new(source),
    })
}

impl<S> FromRequestParts<S> for Authenticated
where
    Arc<KeyRing>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ring = Arc::<KeyRing>::from_ref(state);
        ring.authenticate(&parts.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> KeyRing {
        KeyRing::from_config(&AuthConfig {
            enabled: true,
            keys: vec![
                KeyConfig::tenant(hash_key("acme-secret"), "acme"),
                KeyConfig::admin(hash_key("root-secret")),
            ],
            ..AuthConfig::default()
        })
        .expect("valid ring")
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).expect("header"));
        headers
    }

    #[test]
    fn hash_key_is_hex_sha256() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn tenant_and_admin_keys_authenticate() {
        let ring = ring();
        let tenant = ring
            .authenticate(&headers("Bearer acme-secret"))
            .expect("tenant key");
        assert_eq!(tenant.tenant.as_deref(), Some("acme"));
        assert!(!tenant.admin);
        assert!(tenant.may_access_tenant("acme"));
        assert!(!tenant.may_access_tenant("globex"));
        let admin = ring
            .authenticate(&headers("bearer root-secret"))
            .expect("admin key, scheme case-insensitive");
        assert!(admin.admin);
        assert!(admin.may_access_tenant("globex"));
    }

    #[test]
    fn unknown_missing_and_malformed_credentials_are_refused() {
        let ring = ring();
        for value in [
            "Bearer nope",
            "Bearer ",
            "Basic YWNtZTpzZWNyZXQ=",
            "acme-secret",
        ] {
            assert!(ring.authenticate(&headers(value)).is_err(), "{value}");
        }
        assert!(ring.authenticate(&HeaderMap::new()).is_err());
    }

    #[test]
    fn enabled_without_keys_is_a_configuration_error() {
        let err = KeyRing::from_config(&AuthConfig::default()).expect_err("no keys");
        assert!(matches!(err, AuthError::NoKeys));
    }

    #[test]
    fn disabled_auth_admits_everyone_as_admin() {
        let ring = KeyRing::from_config(&AuthConfig {
            enabled: false,
            ..AuthConfig::default()
        })
        .expect("disabled ring");
        let who = ring.authenticate(&HeaderMap::new()).expect("admitted");
        assert!(who.admin);
    }

    #[test]
    fn bad_key_entries_are_refused() {
        for (sha256, tenant_id, admin) in [
            ("xyz".to_string(), Some("acme"), false),
            (hash_key("k"), Some("acme"), true),
            (hash_key("k"), None, false),
            (hash_key("k"), Some(" "), false),
        ] {
            let config = AuthConfig {
                keys: vec![KeyConfig {
                    admin,
                    ..KeyConfig::of_kind(sha256, None, tenant_id)
                }],
                ..AuthConfig::default()
            };
            assert!(KeyRing::from_config(&config).is_err());
        }
    }

    #[test]
    fn keys_file_adds_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.toml");
        std::fs::write(
            &path,
            format!(
                "[[keys]]\nsha256 = \"{}\"\ntenant_id = \"globex\"\n",
                hash_key("globex-secret")
            ),
        )
        .expect("write keys");
        let ring = KeyRing::from_config(&AuthConfig {
            keys_file: Some(path),
            ..AuthConfig::default()
        })
        .expect("ring from file");
        let who = ring
            .authenticate(&headers("Bearer globex-secret"))
            .expect("file key");
        assert_eq!(who.tenant.as_deref(), Some("globex"));
    }

    #[test]
    fn a_lateness_is_described_in_its_largest_exact_unit() {
        assert_eq!(describe(Duration::hours(6)), "6 hours");
        assert_eq!(describe(Duration::days(1)), "1 day");
        assert_eq!(describe(Duration::minutes(90)), "90 minutes");
        assert_eq!(describe(Duration::milliseconds(1_500)), "1500 milliseconds");
    }

    #[test]
    fn an_event_exactly_at_the_lateness_is_accepted_and_one_before_refused() {
        let received_at = Utc::now();
        let policy = TrustPolicy {
            allow_caller_cost: false,
            max_lateness: Some(Duration::hours(6)),
        };
        let mut event: UsageEvent = ledger::event::parse_batch(
            br#"{"tenant_id":"acme","provider":"openai","model":"gpt-4o","prompt_tokens":1,"completion_tokens":1}"#,
            received_at,
            &ledger::event::ValidationLimits::default(),
        )
        .expect("valid")
        .remove(0);
        event.created_at = received_at - Duration::hours(6);
        assert_eq!(policy.check(&[event.clone()], received_at, false), Ok(()));
        event.created_at -= Duration::microseconds(1);
        assert!(matches!(
            policy.check(&[event], received_at, false),
            Err(TrustRefusal::TooLate { .. })
        ));
    }
}
