//! How both binaries layer their configuration: the typed defaults, then an
//! optional TOML file, then `TOKENLEDGER_<SECTION>__<KEY>` environment
//! variables, keeping only the variables that name one of the binary's own
//! sections. Each binary owns its typed `Config` (sections, defaults,
//! cross-field rules); this module owns the layering and the print path.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

mod secret_files;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Prefix of every environment variable that overrides a setting; `__`
/// separates nesting levels (`TOKENLEDGER_KAFKA__BROKERS`).
pub const ENV_PREFIX: &str = "TOKENLEDGER_";
/// Environment variable naming the TOML file when `--config` is absent.
pub const CONFIG_FILE_ENV: &str = "TOKENLEDGER_CONFIG";
/// Environment variable holding the log filter.
pub const LOG_FILTER_ENV: &str = "TOKENLEDGER_LOG";
/// Variables with the prefix that are not settings, as they read after
/// the prefix (compared case-insensitively).
const NOT_SETTINGS: &[&str] = &["CONFIG", "LOG"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} does not exist")]
    MissingFile { path: PathBuf },
    /// The message names the offending key; it is not a `source` so that
    /// an error chain does not print it twice.
    #[error("invalid configuration: {0}")]
    Extract(Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("cannot render the configuration as TOML")]
    Render(#[from] toml::ser::Error),
}

/// The file to read: `flag` (from `--config`) if given, else
/// `TOKENLEDGER_CONFIG` when it is set and not empty.
pub fn file_path(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(CONFIG_FILE_ENV)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    })
}

/// The process's `TOKENLEDGER_…` variables.
pub fn process_env() -> Env {
    Env::prefixed(ENV_PREFIX)
}

/// Keeps only the variables that name one of `C`'s settings. The gateway
/// and the processor share the prefix, so one environment file can serve
/// both, and tools export variables of their own under it; a setting's
/// section (or top-level key) is matched, and an unknown key inside a known
/// section is still refused by `C`'s `deny_unknown_fields`.
fn own_settings<C: Serialize + Default>(env: Env) -> Env {
    let top_level: Vec<String> = match figment::value::Value::serialize(C::default()) {
        Ok(figment::value::Value::Dict(_, dict)) => dict.into_keys().collect(),
        _ => Vec::new(),
    };
    env.filter(move |key| {
        let first = key.as_str().split("__").next().unwrap_or_default();
        top_level
            .iter()
            .any(|name| name.eq_ignore_ascii_case(first))
    })
    .ignore(NOT_SETTINGS)
}

/// `C`'s defaults, then `file` (if any), then the variables of `env` that
/// name one of `C`'s settings. A file that is named but missing is an
/// error: figment would read it as empty, and a typo in `--config` must not
/// silently run on defaults.
pub fn load<C>(file: Option<&Path>, env: Env) -> Result<C, ConfigError>
where
    C: Serialize + DeserializeOwned + Default,
{
    load_with_secret_files(file, env, &[])
}

/// Like [`load`], where each of `secrets` (dotted paths of
/// [`crate::Secret`] settings, `database.url`) may instead be read from the
/// file its `<setting>_file` twin names. A missing, unreadable or empty
/// file is an error naming the setting and the path.
pub fn load_with_secret_files<C>(
    file: Option<&Path>,
    env: Env,
    secrets: &[&str],
) -> Result<C, ConfigError>
where
    C: Serialize + DeserializeOwned + Default,
{
    let defaults = Serialized::defaults(C::default());
    let mut figment = Figment::from(&defaults);
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::MissingFile {
                path: path.to_owned(),
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(own_settings::<C>(env).split("__"));
    secret_files::apply(figment, &defaults, secrets)?
        .extract()
        .map_err(|error| ConfigError::Extract(Box::new(error)))
}

/// The configuration as `--print-config` shows it. Every credential is a
/// [`crate::secret::Secret`] or a [`crate::kafka::Properties`] value, which
/// serialize redacted, so nothing here has to remember which fields to hide.
pub fn to_toml<C: Serialize>(config: &C) -> Result<String, ConfigError> {
    Ok(toml::to_string_pretty(config)?)
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use std::collections::BTreeMap;

    use figment::Jail;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        net: Net,
        extra: BTreeMap<String, String>,
        timeout_ms: u64,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Net {
        listen: String,
        port: u16,
    }

    impl Default for Net {
        fn default() -> Self {
            Self {
                listen: "127.0.0.1".into(),
                port: 80,
            }
        }
    }

    #[test]
    fn defaults_then_file_then_environment() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "c.toml",
                "timeout_ms = 5\n[net]\nlisten = \"file\"\nport = 81\n",
            )?;
            jail.set_env("TOKENLEDGER_NET__PORT", "82");
            jail.set_env("TOKENLEDGER_EXTRA__A", "b");
            let config: Sample =
                load(Some(Path::new("c.toml")), process_env()).map_err(|e| e.to_string())?;
            assert_eq!(config.net.listen, "file", "the file wins over defaults");
            assert_eq!(config.net.port, 82, "the environment wins over the file");
            assert_eq!(config.extra.get("a").map(String::as_str), Some("b"));
            assert_eq!(config.timeout_ms, 5);
            Ok(())
        });
    }

    #[test]
    fn only_variables_naming_own_sections_are_read() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("TOKENLEDGER_CONFIG", "/elsewhere.toml");
            jail.set_env("TOKENLEDGER_LOG", "debug");
            jail.set_env("TOKENLEDGER_HTTP__LISTEN", "0.0.0.0:1");
            jail.set_env("TOKENLEDGER_TANSU_BIN", "/opt/tansu");
            jail.set_env("TOKENLEDGER_TIMEOUT_MS", "7");
            let config: Sample = load(None, process_env()).map_err(|e| e.to_string())?;
            assert_eq!(config.timeout_ms, 7);
            assert_eq!(config.net, Net::default());
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_in_a_known_section_is_refused() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("TOKENLEDGER_NET__PROT", "1");
            let err = load::<Sample>(None, process_env()).expect_err("typo refused");
            assert!(err.to_string().contains("prot"), "{err}");

            jail.clear_env();
            jail.create_file("typo.toml", "[net]\nlistn = \"x\"\n")?;
            let err =
                load::<Sample>(Some(Path::new("typo.toml")), process_env()).expect_err("refused");
            assert!(err.to_string().contains("listn"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_named_but_missing_file_is_an_error() {
        let err = load::<Sample>(Some(Path::new("/nonexistent/c.toml")), process_env())
            .expect_err("missing file refused");
        assert!(matches!(err, ConfigError::MissingFile { .. }), "{err}");
    }

    #[test]
    fn the_flag_wins_over_the_variable_and_an_empty_variable_is_unset() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("TOKENLEDGER_CONFIG", "env.toml");
            assert_eq!(file_path(None), Some(PathBuf::from("env.toml")));
            assert_eq!(
                file_path(Some(Path::new("flag.toml"))),
                Some(PathBuf::from("flag.toml"))
            );
            jail.set_env("TOKENLEDGER_CONFIG", "");
            assert_eq!(file_path(None), None);
            Ok(())
        });
    }
}
