//! How both binaries layer their configuration: the typed defaults, then an
//! optional TOML file, then `TOKENLEDGER_<SECTION>__<KEY>` environment
//! variables, keeping only the variables that name one of the binary's own
//! sections. Each binary owns its typed `Config` (sections, defaults,
//! cross-field rules); this module owns the layering and the print path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
        top_level.iter().any(|name| {
            // A duration setting also answers to its name without the unit
            // (crate::duration).
            let unitless = name
                .strip_suffix("_ms")
                .or_else(|| name.strip_suffix("_secs"))
                .or_else(|| name.strip_suffix("_s"));
            name.eq_ignore_ascii_case(first)
                || unitless.is_some_and(|unitless| unitless.eq_ignore_ascii_case(first))
        })
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
    let names = match figment::value::Value::serialize(C::default()) {
        Ok(figment::value::Value::Dict(_, dict)) => Arc::new(dict),
        _ => Arc::default(),
    };
    let mut figment = Figment::from(&defaults);
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::MissingFile {
                path: path.to_owned(),
            });
        }
        figment = figment.merge(UnitNames::new(Toml::file_exact(path), &names));
    }
    figment = figment.merge(UnitNames::new(own_settings::<C>(env).split("__"), &names));
    secret_files::apply(figment, &defaults, secrets)?
        .extract()
        .map_err(|error| ConfigError::Extract(Box::new(error)))
}

/// A provider whose duration settings named without their unit
/// (`request_timeout`, see [`crate::duration`]) are renamed to the name the
/// defaults use (`request_timeout_ms`), so the two do not meet as two
/// settings when the layers merge. The source (file, variable) stays the
/// provider's, so errors still name it.
struct UnitNames<P> {
    inner: P,
    names: Arc<figment::value::Dict>,
}

impl<P> UnitNames<P> {
    fn new(inner: P, names: &Arc<figment::value::Dict>) -> Self {
        Self {
            inner,
            names: names.clone(),
        }
    }
}

impl<P: figment::Provider> figment::Provider for UnitNames<P> {
    fn metadata(&self) -> figment::Metadata {
        self.inner.metadata()
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut data = self.inner.data()?;
        for dict in data.values_mut() {
            with_unit_names(dict, &self.names);
        }
        Ok(data)
    }
}

fn with_unit_names(dict: &mut figment::value::Dict, names: &figment::value::Dict) {
    let keys: Vec<String> = dict.keys().cloned().collect();
    for key in keys {
        let mut name = key.clone();
        if !names.contains_key(&key) {
            if let Some(named) = ["_ms", "_secs", "_s"]
                .iter()
                .map(|unit| format!("{key}{unit}"))
                .find(|named| names.contains_key(named) && !dict.contains_key(named))
            {
                if let Some(value) = dict.remove(&key) {
                    dict.insert(named.clone(), value);
                }
                name = named;
            }
        }
        if let (
            Some(figment::value::Value::Dict(_, inner)),
            Some(figment::value::Value::Dict(_, inner_names)),
        ) = (dict.get_mut(&name), names.get(&name))
        {
            with_unit_names(inner, inner_names);
        }
    }
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
