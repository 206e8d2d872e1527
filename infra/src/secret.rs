//! Credentials in configuration: [`Secret`], the type of every setting that
//! holds one, and [`redact`], the one rule for what of such a value may be
//! shown. A `Secret` prints, debugs and serializes only through [`redact`],
//! so `--print-config`, error messages and `{:?}` cannot leak it; the value
//! itself is reached only through [`Secret::expose`], at the places that
//! connect.

use std::fmt;
use std::path::PathBuf;

use serde::{Serialize, Serializer};

mod from_file;

pub use from_file::{read_secret_file, FILE_KEY};

/// What a hidden part of a value is shown as.
pub const REDACTED: &str = "<redacted>";

/// URL schemes whose user name (without a password) is not a credential.
/// Elsewhere (`https://TOKEN@hooks.example/…`) a lone user part often is one.
const DATABASE_SCHEMES: &[&str] = &["postgres", "postgresql"];

/// libpq's connection keywords: a keyword/value string is recognised by
/// starting with one of them, so an opaque secret that merely contains `=`
/// (base64 padding, a password like `a=b`) is hidden whole instead of being
/// read as `key=value` pairs.
const LIBPQ_KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "require_auth",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslmode",
    "sslnegotiation",
    "requiressl",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
];

/// Parts of a setting's or parameter's name that mark its value as a
/// credential. Broad on purpose: hiding a key file's path costs nothing,
/// printing a password is the bug this module exists to prevent.
const SECRET_NAME_PARTS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "key",
    "credential",
    "signature",
    "auth",
];

/// Whole names that mark a credential but are too short to match as parts.
const SECRET_NAMES: &[&str] = &["pass", "pwd", "pw", "sig"];

/// Whether a parameter or property called `name` holds a credential
/// (`password`, `sslpassword`, `api_key`, `access_token`,
/// `sasl.oauthbearer.config`, `ssl.key.pem`, …).
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_NAMES.contains(&name.as_str())
        || SECRET_NAME_PARTS.iter().any(|part| name.contains(part))
}

/// `text` with every credential in it replaced by [`REDACTED`]:
///
/// - a URL (`scheme://…`) keeps its shape; the password of its user info is
///   hidden (and a lone user name, except for database URLs, where it is
///   just the role), as is every query parameter whose name
///   [`is_secret_name`] (`?password=`, `&sslpassword=`, `?token=`, …);
/// - a libpq keyword/value string (`host=db password='hunter 2'`) keeps its
///   other pairs; secret pairs become `key=<redacted>`, quoted or not;
/// - anything else (an API key, a hash, a password on its own, a string
///   that does not parse as either form) is hidden whole.
pub fn redact(text: &str) -> String {
    if let Some(shown) = redact_url(text) {
        return shown;
    }
    if let Some(shown) = redact_keyword_pairs(text) {
        return shown;
    }
    if text.is_empty() {
        String::new()
    } else {
        REDACTED.to_owned()
    }
}

fn redact_url(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let mut scheme_chars = scheme.chars();
    let valid_scheme = scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme_chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme || text.contains(char::is_whitespace) {
        return None;
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after_authority) = rest.split_at(authority_end);
    let mut shown = format!("{scheme}://");
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _password)) => shown.push_str(&format!("{user}:{REDACTED}")),
                None if DATABASE_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) => {
                    shown.push_str(userinfo)
                }
                None => shown.push_str(REDACTED),
            }
            shown.push('@');
            shown.push_str(host);
        }
        None => shown.push_str(authority),
    }
    let (before_fragment, fragment) = match after_authority.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (after_authority, None),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            shown.push_str(path);
            shown.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if is_secret_name(name) => format!("{name}={REDACTED}"),
                    _ => pair.to_owned(),
                })
                .collect();
            shown.push_str(&params.join("&"));
        }
        None => shown.push_str(before_fragment),
    }
    if let Some(fragment) = fragment {
        shown.push('#');
        shown.push_str(fragment);
    }
    Some(shown)
}

/// libpq's keyword/value form: `key = value` pairs separated by white
/// space, a value either bare (up to white space) or single-quoted with
/// `\'` and `\\` escapes. `None` when `text` is not in that form.
fn redact_keyword_pairs(text: &str) -> Option<String> {
    let mut shown = String::with_capacity(text.len());
    let mut rest = text;
    let mut first = true;
    loop {
        let trimmed = rest.trim_start();
        shown.push_str(&rest[..rest.len() - trimmed.len()]);
        rest = trimmed;
        if rest.is_empty() {
            return (!first).then_some(shown);
        }
        let key_len = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_len];
        let valid_key =
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key || (first && !LIBPQ_KEYWORDS.contains(&key)) {
            return None;
        }
        let value = rest[key_len..].trim_start().strip_prefix('=')?.trim_start();
        let value_len = match value.strip_prefix('\'') {
            Some(quoted) => 1 + quoted_len(quoted)?,
            None => value.find(char::is_whitespace).unwrap_or(value.len()),
        };
        let pair_len = rest.len() - value.len() + value_len;
        if is_secret_name(key) {
            shown.push_str(key);
            shown.push('=');
            shown.push_str(REDACTED);
        } else {
            shown.push_str(&rest[..pair_len]);
        }
        rest = &rest[pair_len..];
        first = false;
    }
}

/// Length of a single-quoted value after its opening quote, closing quote
/// included; `None` when it is never closed.
fn quoted_len(quoted: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in quoted.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '\'' if !escaped => return Some(i + 1),
            _ => escaped = false,
        }
    }
    None
}

/// A setting that holds a credential: a connection string with a password,
/// a URL with credentials, an API key or its hash. Shown, debugged and
/// serialized only as [`redact`] shows it; read with [`Secret::expose`].
///
/// Serializing redacts too, so configuration defaults (which the layering
/// serializes) must never hold a credential, which a default should not.
///
/// A secret may come from a file (`<setting>_file`, see
/// [`crate::config::load_with_secret_files`]); it then serializes as the
/// file's path, never its content.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String, Option<PathBuf>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into(), None)
    }

    /// The value itself, for the code that connects or compares with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The file the value was read from, if it was.
    pub fn file(&self) -> Option<&std::path::Path> {
        self.1.as_deref()
    }

    /// The value as it may be shown.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value, None)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned(), None)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Secret").field(&self.redacted()).finish()
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let Some(path) = &self.1 {
            return serializer.serialize_str(&from_file::shown(path));
        }
        serializer.serialize_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every form a credential takes in tokenledger's settings, with what
    /// may be shown of it.
    const CASES: &[(&str, &str)] = &[
        // URL user info
        (
            "postgres://u:hunter2@db:5432/x",
            "postgres://u:<redacted>@db:5432/x",
        ),
        ("postgresql://u@db/x", "postgresql://u@db/x"),
        (
            "postgres://u:p%40ss@h1,h2/x?sslmode=require",
            "postgres://u:<redacted>@h1,h2/x?sslmode=require",
        ),
        // query parameters
        (
            "postgres://u@db/x?password=hunter2",
            "postgres://u@db/x?password=<redacted>",
        ),
        (
            "postgres://db/x?user=u&password=hunter2&sslmode=require",
            "postgres://db/x?user=u&password=<redacted>&sslmode=require",
        ),
        (
            "postgres://db/x?sslpassword=hunter2",
            "postgres://db/x?sslpassword=<redacted>",
        ),
        // keyword/value, unquoted and quoted
        (
            "host=db user=u password=hunter2 dbname=x",
            "host=db user=u password=<redacted> dbname=x",
        ),
        (
            "host=db password='hunter 2' user=u",
            "host=db password=<redacted> user=u",
        ),
        (
            "host=db password='p w\\'x' user=u",
            "host=db password=<redacted> user=u",
        ),
        (
            "host=db password = hunter2 user=u",
            "host=db password=<redacted> user=u",
        ),
        ("password=hunter2", "password=<redacted>"),
        (
            "host=db sslpassword=hunter2 sslkey=/k.pem",
            "host=db sslpassword=<redacted> sslkey=<redacted>",
        ),
        (
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        ),
        // an unclosed quote is not keyword/value: hidden whole
        ("host=db password='hunter2", "<redacted>"),
        // API keys and their hashes, passwords on their own
        (
            "c8b5a0a8b8f3f9a4d6a1e2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3",
            "<redacted>",
        ),
        ("tl_live_hunter2", "<redacted>"),
        ("aHVudGVyMg==", "<redacted>"),
        ("a=hunter2", "<redacted>"),
        ("", ""),
        // webhook credentials
        (
            "http://alerts:hunter2@hooks.example:8080/tokenledger",
            "http://alerts:<redacted>@hooks.example:8080/tokenledger",
        ),
        (
            "http://hunter2@hooks.example/tokenledger",
            "http://<redacted>@hooks.example/tokenledger",
        ),
        (
            "http://hooks.example/alert?channel=ops&token=hunter2",
            "http://hooks.example/alert?channel=ops&token=<redacted>",
        ),
        (
            "http://hooks.example/alert?api_key=hunter2#top",
            "http://hooks.example/alert?api_key=<redacted>#top",
        ),
        (
            "http://hooks.example/alert?access_token=hunter2&x=1",
            "http://hooks.example/alert?access_token=<redacted>&x=1",
        ),
        ("http://alertmanager:9093", "http://alertmanager:9093"),
    ];

    #[test]
    fn every_credential_form_is_redacted() {
        for (input, expected) in CASES {
            let shown = redact(input);
            assert_eq!(&shown, expected, "input {input:?}");
            if shown != *input {
                assert!(!shown.contains("hunter"), "{input:?} shown as {shown:?}");
            }
        }
    }

    #[test]
    fn a_secret_never_prints_its_value() {
        for (input, expected) in CASES {
            let secret = Secret::from(*input);
            assert_eq!(secret.to_string(), *expected);
            assert_eq!(format!("{secret:?}"), format!("Secret({expected:?})"));
            let serialized = toml::Value::try_from(&secret).expect("serializes");
            assert_eq!(serialized.as_str(), Some(*expected));
            assert_eq!(secret.expose(), *input);
        }
    }

    #[test]
    fn a_secret_deserializes_from_a_plain_string() {
        #[derive(serde::Deserialize)]
        struct Holder {
            url: Secret,
        }
        let holder: Holder = toml::from_str("url = \"host=db password=hunter2\"").expect("parses");
        assert_eq!(holder.url.expose(), "host=db password=hunter2");
    }

    #[test]
    fn secret_names_are_recognised() {
        for name in [
            "password",
            "sslpassword",
            "sasl.password",
            "ssl.key.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "api_key",
            "X-Api-Key",
            "access_token",
            "pwd",
            "sig",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "host",
            "user",
            "dbname",
            "client.id",
            "security.protocol",
            "linger.ms",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }
}
