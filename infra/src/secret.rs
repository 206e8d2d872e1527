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
/// - a database URL (`postgres://…`) keeps its shape; the password of its
///   user info is hidden, as is every query parameter whose name
///   [`is_secret_name`] (`?password=`, `&sslpassword=`, …);
/// - any other URL (a webhook, Alertmanager) shows its scheme and host
///   only, and the rest (user info, path, query) as a fingerprint when
///   there is any: webhooks carry tokens in the path
///   (`/services/T0/B0/TOKEN`), not only in the query or the user info;
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

/// `text` (an error message, a log line) with every URL in it shown as
/// [`redact`] shows one: HTTP clients name the URL they failed to reach.
pub fn redact_urls_in(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(separator) = rest.find("://") {
        let scheme_start = rest[..separator]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        if scheme_start == separator {
            // `://` with no scheme before it: prose, not a URL.
            shown.push_str(&rest[..separator + 3]);
            rest = &rest[separator + 3..];
            continue;
        }
        let url_end = rest[separator..]
            .find(char::is_whitespace)
            .map_or(rest.len(), |i| separator + i);
        // Punctuation around a URL in prose (`(URL)`, `"URL",`) is not part
        // of it.
        let url = rest[scheme_start..url_end]
            .trim_end_matches([')', ']', '}', '>', '"', '\'', ',', '.', ';', ':']);
        shown.push_str(&rest[..scheme_start]);
        shown.push_str(&redact_url(url).unwrap_or_else(|| REDACTED.to_owned()));
        rest = &rest[scheme_start + url.len()..];
    }
    shown.push_str(rest);
    shown
}

/// A short SHA-256 of a hidden value: two settings can be told apart or
/// matched without showing either.
fn fingerprint(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(text.as_bytes())[..6])
}

fn redact_url(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let mut scheme_chars = scheme.chars();
    let valid_scheme = scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme_chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme || text.contains(char::is_whitespace) {
        return None;
    }
    // Parsers disagree on where user info ends when a password holds `#`,
    // `?` or `/` (tokio-postgres reads `u:hunt#er2@db` as user `u`, password
    // `hunt#er2`), so everything up to the last `@` counts as user info:
    // that hides too much rather than too little.
    let (userinfo, host_and_rest) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let host_end = host_and_rest
        .find(['/', '?', '#'])
        .unwrap_or(host_and_rest.len());
    let (host, after_host) = host_and_rest.split_at(host_end);
    if !DATABASE_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
        let nothing_hidden = userinfo.is_none() && (after_host.is_empty() || after_host == "/");
        return Some(if nothing_hidden {
            text.to_owned()
        } else {
            format!("{scheme}://{host}/{REDACTED}#sha256:{}", fingerprint(text))
        });
    }
    let mut shown = format!("{scheme}://");
    if let Some(userinfo) = userinfo {
        let (user, has_password) = match userinfo.split_once(':') {
            Some((user, _password)) => (user, true),
            None => (userinfo, false),
        };
        // A user name is a role, not a credential; but what reads as one may
        // be a query cut at an `@` inside a value, which is hidden whole.
        let plain_user = !user.contains(['/', '?', '#', '=', '&']);
        match (plain_user, has_password) {
            (true, true) => shown.push_str(&format!("{user}:{REDACTED}")),
            (true, false) => shown.push_str(user),
            (false, _) => shown.push_str(REDACTED),
        }
        shown.push('@');
    }
    shown.push_str(host);
    let (before_fragment, fragment) = match after_host.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (after_host, None),
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
        // tokio-postgres reads everything up to the last `@` as user info
        ("postgres://u:hunter#2@db/x", "postgres://u:<redacted>@db/x"),
        (
            "postgres://u:hunter2?x@db/x?sslmode=require",
            "postgres://u:<redacted>@db/x?sslmode=require",
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
        // webhook credentials: scheme, host and a fingerprint of the rest
        (
            "http://alerts:hunter2@hooks.example:8080/tokenledger",
            "http://hooks.example:8080/<redacted>#sha256:{fingerprint}",
        ),
        (
            "http://hunter2@hooks.example/tokenledger",
            "http://hooks.example/<redacted>#sha256:{fingerprint}",
        ),
        (
            "http://hooks.example/alert?channel=ops&token=hunter2",
            "http://hooks.example/<redacted>#sha256:{fingerprint}",
        ),
        (
            "http://hooks.example/alert?api_key=hunter2#top",
            "http://hooks.example/<redacted>#sha256:{fingerprint}",
        ),
        (
            "http://hooks.internal/services/T0/B0/hunter2TOKEN123",
            "http://hooks.internal/<redacted>#sha256:{fingerprint}",
        ),
        (
            "https://hooks.example/a#hunter2@b",
            "https://b/<redacted>#sha256:{fingerprint}",
        ),
        ("http://alertmanager:9093", "http://alertmanager:9093"),
        ("http://alertmanager:9093/", "http://alertmanager:9093/"),
    ];

    /// A case's expected text, its fingerprint filled in.
    fn expected(input: &str, expected: &str) -> String {
        expected.replace("{fingerprint}", &fingerprint(input))
    }

    #[test]
    fn every_credential_form_is_redacted() {
        for (input, expected) in CASES {
            let expected = &self::expected(input, expected);
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
            let expected = self::expected(input, expected);
            let secret = Secret::from(*input);
            assert_eq!(secret.to_string(), expected);
            assert_eq!(format!("{secret:?}"), format!("Secret({expected:?})"));
            let serialized = toml::Value::try_from(&secret).expect("serializes");
            assert_eq!(serialized.as_str(), Some(expected.as_str()));
            assert_eq!(secret.expose(), *input);
        }
    }

    #[test]
    fn different_hidden_parts_have_different_fingerprints() {
        assert_ne!(
            redact("http://hooks.internal/services/T0/B0/A"),
            redact("http://hooks.internal/services/T0/B0/B")
        );
    }

    #[test]
    fn urls_inside_an_error_message_are_redacted() {
        let message = "error sending request for url \
            (http://127.0.0.1:9/services/T0/B0/hunter2TOKEN?token=hunter2): connection refused; \
            also postgres://u:hunter#2@db/x, and a plain :// here";
        let shown = redact_urls_in(message);
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(
            shown.starts_with(
                "error sending request for url (http://127.0.0.1:9/<redacted>#sha256:"
            ),
            "{shown}"
        );
        assert!(shown.contains("): connection refused; also postgres://u:<redacted>@db/x, and"));
        assert!(shown.ends_with("a plain :// here"), "{shown}");
        assert_eq!(redact_urls_in("no url at all"), "no url at all");
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
