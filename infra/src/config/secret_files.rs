//! `*_file` twins of secret settings, the convention of Docker and
//! Kubernetes secrets: `database.url_file = "/run/secrets/db_url"` instead
//! of `database.url = "…"`. The twin is turned into `{ file = "…" }` at the
//! secret's own key, which [`crate::Secret`] reads from the file when it is
//! deserialized, remembering the path so `--print-config` shows the file,
//! never its content.

use figment::providers::Serialized;
use figment::value::{Dict, Value};
use figment::{Figment, Provider};

use super::ConfigError;

/// Rewrites the `<setting>_file` of each of `secrets` (dotted paths such as
/// `database.url`) found in `figment`. Setting both a secret and its
/// `_file` twin is an error: which one wins would be a guess.
pub(super) fn apply(
    figment: Figment,
    defaults: &impl Provider,
    secrets: &[&str],
) -> Result<Figment, ConfigError> {
    let mut twins = Vec::new();
    for setting in secrets {
        let twin = format!("{setting}_file");
        let Ok(path) = figment.extract_inner::<String>(&twin) else {
            if figment.find_value(&twin).is_ok() {
                return Err(ConfigError::Invalid(format!(
                    "{twin} must be the path of a file"
                )));
            }
            continue;
        };
        let set_by_user = figment
            .find_metadata(setting)
            .is_some_and(|metadata| metadata.name != defaults.metadata().name);
        if set_by_user {
            return Err(ConfigError::Invalid(format!(
                "{setting} and {twin} are both set: keep one"
            )));
        }
        twins.push((*setting, path));
    }
    if twins.is_empty() {
        return Ok(figment);
    }
    let mut value: Dict = figment
        .extract()
        .map_err(|error| ConfigError::Extract(Box::new(error)))?;
    for (setting, path) in twins {
        let (section, leaf) = setting.rsplit_once('.').unwrap_or(("", setting));
        let mut dict = &mut value;
        for part in section.split('.').filter(|part| !part.is_empty()) {
            match dict.get_mut(part) {
                Some(Value::Dict(_, inner)) => dict = inner,
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "{setting}_file: no section {section}"
                    )))
                }
            }
        }
        dict.remove(&format!("{leaf}_file"));
        let mut file = Dict::new();
        file.insert(crate::secret::FILE_KEY.to_owned(), Value::from(path));
        dict.insert(leaf.to_owned(), Value::from(file));
    }
    Ok(Figment::from(Serialized::defaults(value)))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use figment::Jail;
    use serde::{Deserialize, Serialize};

    use super::super::{load_with_secret_files, process_env, to_toml};
    use crate::Secret;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        database: Database,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Database {
        url: Secret,
        #[serde(skip_serializing_if = "Option::is_none")]
        webhook: Option<Secret>,
        keys_file: Option<String>,
    }

    impl Default for Database {
        fn default() -> Self {
            Self {
                url: Secret::from("host=localhost"),
                webhook: None,
                keys_file: None,
            }
        }
    }

    const SECRETS: &[&str] = &["database.url", "database.webhook"];

    fn load(jail: &Jail) -> Result<Sample, String> {
        let file = jail.directory().join("c.toml");
        load_with_secret_files::<Sample>(Some(&file), process_env(), SECRETS)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn a_secret_is_read_from_its_file_and_shown_as_the_file() {
        Jail::expect_with(|jail| {
            jail.create_file("url", "host=db password=hunter2\n")?;
            jail.create_file("hook", "https://hooks.example/T0KEN")?;
            jail.create_file(
                "c.toml",
                "[database]\nurl_file = \"url\"\nkeys_file = \"keys.toml\"\n",
            )?;
            jail.set_env("TOKENLEDGER_DATABASE__WEBHOOK_FILE", "hook");
            let config = load(jail).expect("loads");
            assert_eq!(config.database.url.expose(), "host=db password=hunter2");
            let webhook = config.database.webhook.as_ref().expect("webhook");
            assert_eq!(webhook.expose(), "https://hooks.example/T0KEN");
            // A setting that is itself a path is left alone.
            assert_eq!(config.database.keys_file.as_deref(), Some("keys.toml"));
            let printed = to_toml(&config).expect("renders");
            assert!(
                printed.contains("url = \"<read from file url>\""),
                "{printed}"
            );
            assert!(printed.contains("<read from file hook>"), "{printed}");
            assert!(!printed.contains("hunter2"), "{printed}");
            assert!(!printed.contains("T0KEN"), "{printed}");
            Ok(())
        });
    }

    #[test]
    fn a_missing_or_doubled_secret_file_is_a_clear_error() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[database]\nurl_file = \"/nonexistent/db_url\"\n")?;
            let error = load(jail).expect_err("missing file");
            assert!(
                error.contains("cannot read the secret file /nonexistent/db_url"),
                "{error}"
            );
            jail.create_file("empty", "\n")?;
            jail.create_file("c.toml", "[database]\nurl_file = \"empty\"\n")?;
            let error = load(jail).expect_err("empty file");
            assert!(error.contains("secret file empty is empty"), "{error}");
            jail.create_file("url", "host=db")?;
            jail.create_file(
                "c.toml",
                "[database]\nurl = \"host=x\"\nurl_file = \"url\"\n",
            )?;
            let error = load(jail).expect_err("both");
            assert!(
                error.contains("database.url and database.url_file"),
                "{error}"
            );
            Ok(())
        });
    }
}
