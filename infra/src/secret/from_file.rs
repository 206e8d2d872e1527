//! A [`Secret`] read from a file: deserialized from `{ file = "<path>" }`
//! (what a `<setting>_file` twin is turned into), shown as its path.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::Secret;

/// The key of the `{ file = "<path>" }` form.
pub const FILE_KEY: &str = "file";

/// How `--print-config` shows a secret read from `path`.
pub(super) fn shown(path: &Path) -> String {
    format!("<read from file {}>", path.display())
}

/// The file's content, less one trailing line break (`echo secret > file`
/// writes one, and no credential ends with it).
pub fn read_secret_file(path: PathBuf) -> Result<Secret, String> {
    let content = std::fs::read_to_string(&path)
        .map_err(|error| format!("cannot read the secret file {}: {error}", path.display()))?;
    let value = content
        .strip_suffix("\r\n")
        .or_else(|| content.strip_suffix('\n'))
        .unwrap_or(&content);
    if value.is_empty() {
        return Err(format!("the secret file {} is empty", path.display()));
    }
    Ok(Secret(value.to_owned(), Some(path)))
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;

        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = Secret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Secret, E> {
                Ok(Secret::from(value))
            }

            fn visit_string<E: de::Error>(self, value: String) -> Result<Secret, E> {
                Ok(Secret::from(value))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Secret, A::Error> {
                let mut path = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != FILE_KEY || path.is_some() {
                        return Err(de::Error::unknown_field(&key, &[FILE_KEY]));
                    }
                    path = Some(map.next_value::<PathBuf>()?);
                }
                let path = path.ok_or_else(|| de::Error::missing_field(FILE_KEY))?;
                read_secret_file(path).map_err(de::Error::custom)
            }
        }

        deserializer.deserialize_any(SecretVisitor)
    }
}
