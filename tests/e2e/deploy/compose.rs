//! docker-compose.yml as Compose resolves it: the YAML read with a YAML library, every `${VAR}` in
//! its values interpolated with the settings of `.env.example`, then read into the few fields the
//! checks look at. A field in a shape this reader does not know is a loud failure, never a
//! silently empty list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use super::read;

/// The compose file, resolved.
#[derive(Debug)]
pub struct Compose {
    pub services: BTreeMap<String, Service>,
    /// Every `${VAR}` the file's values reference.
    pub variables: BTreeSet<String>,
    /// The `${VAR:?message}` ones: Compose refuses to load without them.
    pub required: BTreeSet<String>,
    /// `image:` of each service as written, before interpolation.
    pub images_as_written: BTreeMap<String, String>,
}

/// One service, with short and long syntax normalised.
#[derive(Debug)]
pub struct Service {
    pub image: Option<String>,
    pub build: Option<Build>,
    /// `restart:`; Compose's default is `"no"`, which marks a one-shot job.
    pub restart: String,
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub ports: Vec<Port>,
    pub volumes: Vec<Volume>,
    /// The healthcheck's command, empty when there is none or it is disabled.
    pub healthcheck: Vec<String>,
    /// Dependency → the condition it waits for.
    pub depends_on: BTreeMap<String, String>,
}

impl Service {
    pub fn is_one_shot(&self) -> bool {
        self.restart == "no"
    }

    /// Every `http://…` URL in the healthcheck command.
    pub fn healthcheck_urls(&self) -> Vec<String> {
        self.healthcheck
            .iter()
            .flat_map(|word| word.split_whitespace())
            .filter(|part| part.starts_with("http://"))
            .map(str::to_owned)
            .collect()
    }

    /// Bind mounts as container path → host path.
    pub fn binds(&self) -> BTreeMap<&str, &Path> {
        self.volumes
            .iter()
            .filter(|v| v.bind)
            .map(|v| (v.target.as_str(), v.source.as_path()))
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct Build {
    pub context: PathBuf,
    pub dockerfile: PathBuf,
    pub target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub host_ip: Option<String>,
    pub published: Option<String>,
    pub target: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub bind: bool,
    /// For a bind mount the host path, resolved against the project directory.
    pub source: PathBuf,
    pub target: String,
}

/// The raw shapes Compose accepts for the fields read here.
mod raw {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde_yaml_ng::Value;

    #[derive(Deserialize)]
    pub struct File {
        pub services: BTreeMap<String, Service>,
    }

    #[derive(Deserialize)]
    pub struct Service {
        pub image: Option<String>,
        pub build: Option<Build>,
        pub restart: Option<String>,
        pub command: Option<Words>,
        #[serde(default)]
        pub environment: Option<Environment>,
        #[serde(default)]
        pub ports: Vec<Port>,
        #[serde(default)]
        pub volumes: Vec<Volume>,
        pub healthcheck: Option<Healthcheck>,
        pub depends_on: Option<DependsOn>,
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum Build {
        Context(String),
        Full {
            context: Option<String>,
            dockerfile: Option<String>,
            target: Option<String>,
        },
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum Words {
        Shell(String),
        Exec(Vec<String>),
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum Environment {
        Map(BTreeMap<String, Option<Value>>),
        List(Vec<String>),
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum Port {
        // Long first: `Short(Value)` would accept a mapping too.
        Long {
            target: u16,
            published: Option<Value>,
            host_ip: Option<String>,
        },
        Short(Value),
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum Volume {
        Short(String),
        Long {
            #[serde(rename = "type")]
            kind: String,
            source: Option<String>,
            target: String,
        },
    }

    #[derive(Deserialize)]
    pub struct Healthcheck {
        pub test: Option<Words>,
        #[serde(default)]
        pub disable: bool,
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum DependsOn {
        List(Vec<String>),
        Map(BTreeMap<String, Dependency>),
    }

    #[derive(Deserialize)]
    pub struct Dependency {
        pub condition: Option<String>,
    }
}

/// `NAME=value` settings of `.env.example` (commented lines skipped), as `--env-file` reads them.
pub fn env_example_settings(root: &Path) -> BTreeMap<String, String> {
    read(&root.join(".env.example"))
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// Every variable `.env.example` documents, set or shown commented out (`# NAME=default`).
pub fn env_example_documented(root: &Path) -> BTreeSet<String> {
    read(&root.join(".env.example"))
        .lines()
        .filter_map(|line| {
            let line = line.strip_prefix('#').unwrap_or(line).trim_start();
            let (name, _) = line.split_once('=')?;
            let mut chars = name.chars();
            let first_ok = chars.next().is_some_and(|c| c.is_ascii_uppercase());
            let rest_ok = chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            (first_ok && rest_ok).then(|| name.to_owned())
        })
        .collect()
}

/// A `${…}` reference found while interpolating.
#[derive(Debug, Default)]
pub struct References {
    pub names: BTreeSet<String>,
    pub required: BTreeSet<String>,
}

/// Compose interpolation: `${NAME}`, `$NAME`, `${NAME:-default}`, `${NAME-default}`,
/// `${NAME:?message}`, `${NAME?message}`; `$$` is a literal `$`. A variable with neither a setting
/// nor a default is an error, as a required one is for Compose.
pub fn interpolate(
    value: &str,
    settings: &BTreeMap<String, String>,
    refs: &mut References,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let (body, after) = if let Some(braced) = rest.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unterminated ${{ in {value:?}"))?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if end == 0 {
                return Err(format!("a lone $ in {value:?}: write $$ for a literal $"));
            }
            (&rest[..end], &rest[end..])
        };
        let name_end = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(body.len());
        let (name, modifier) = body.split_at(name_end);
        refs.names.insert(name.to_owned());
        let setting = settings.get(name);
        let resolved = match modifier {
            "" => setting.cloned(),
            m if m.starts_with(":-") => Some(
                setting
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .unwrap_or_else(|| m[2..].to_owned()),
            ),
            m if m.starts_with('-') => Some(setting.cloned().unwrap_or_else(|| m[1..].to_owned())),
            m if m.starts_with(":?") || m.starts_with('?') => {
                refs.required.insert(name.to_owned());
                setting.filter(|v| !v.is_empty()).cloned()
            }
            m => return Err(format!("unknown modifier {m:?} in ${{{body}}}")),
        };
        let resolved = resolved.ok_or_else(|| {
            format!("${{{name}}} has neither a value in .env.example nor a default")
        })?;
        out.push_str(&resolved);
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

/// Interpolates every string scalar of `value` (keys stay as written, as in Compose).
fn interpolate_tree(
    value: &mut Value,
    settings: &BTreeMap<String, String>,
    refs: &mut References,
    errors: &mut Vec<String>,
) {
    match value {
        Value::String(text) => match interpolate(text, settings, refs) {
            Ok(resolved) => *text = resolved,
            Err(e) => errors.push(e),
        },
        Value::Sequence(items) => {
            for item in items {
                interpolate_tree(item, settings, refs, errors);
            }
        }
        Value::Mapping(map) => {
            for (_, item) in map.iter_mut() {
                interpolate_tree(item, settings, refs, errors);
            }
        }
        Value::Tagged(tagged) => interpolate_tree(&mut tagged.value, settings, refs, errors),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A scalar as the string Compose hands to a container.
fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

fn words(words: Option<raw::Words>) -> Vec<String> {
    match words {
        None => Vec::new(),
        Some(raw::Words::Shell(line)) => line.split_whitespace().map(str::to_owned).collect(),
        Some(raw::Words::Exec(words)) => words,
    }
}

/// `[host_ip:][published:]target[/protocol]`.
pub fn parse_short_port(text: &str) -> Result<Port, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (host_ip, published, target) = match parts.as_slice() {
        [target] => (None, None, *target),
        [published, target] => (None, Some(*published), *target),
        [host_ip, published, target] => (Some(*host_ip), Some(*published), *target),
        _ => return Err(format!("cannot read the port {text:?}")),
    };
    let target = target.split('/').next().unwrap_or_default();
    Ok(Port {
        host_ip: host_ip.filter(|h| !h.is_empty()).map(str::to_owned),
        published: published.map(str::to_owned),
        target: target
            .parse()
            .map_err(|_| format!("cannot read the container port of {text:?}"))?,
    })
}

/// `source:target[:mode]`; a source that is a path makes a bind mount, resolved against `project`.
pub fn parse_short_volume(text: &str, project: &Path) -> Result<Volume, String> {
    let mut parts = text.split(':');
    let (Some(source), Some(target)) = (parts.next(), parts.next()) else {
        return Err(format!("cannot read the volume {text:?}"));
    };
    let bind = source.starts_with(['.', '/', '~']);
    Ok(Volume {
        bind,
        source: if bind {
            project.join(source)
        } else {
            PathBuf::from(source)
        },
        target: target.to_owned(),
    })
}

impl Compose {
    /// Reads `file` with `settings` as its `.env`, relative to the project directory `project`.
    pub fn load(file: &Path, project: &Path, settings: &BTreeMap<String, String>) -> Self {
        let text = read(file);
        Self::parse(&text, project, settings)
            .unwrap_or_else(|problems| panic!("{}: {}", file.display(), problems.join("; ")))
    }

    pub fn parse(
        text: &str,
        project: &Path,
        settings: &BTreeMap<String, String>,
    ) -> Result<Self, Vec<String>> {
        let mut tree: Value = serde_yaml_ng::from_str(text).map_err(|e| vec![e.to_string()])?;
        let images_as_written = tree
            .get("services")
            .and_then(Value::as_mapping)
            .map(|services| {
                services
                    .iter()
                    .filter_map(|(name, svc)| {
                        Some((
                            name.as_str()?.to_owned(),
                            svc.get("image")?.as_str()?.to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut refs = References::default();
        let mut errors = Vec::new();
        interpolate_tree(&mut tree, settings, &mut refs, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let file: raw::File = serde_yaml_ng::from_value(tree).map_err(|e| vec![e.to_string()])?;
        let mut services = BTreeMap::new();
        for (name, svc) in file.services {
            let service = Self::service(svc, project).map_err(|e| vec![format!("{name}: {e}")])?;
            services.insert(name, service);
        }
        Ok(Self {
            services,
            variables: refs.names,
            required: refs.required,
            images_as_written,
        })
    }

    fn service(svc: raw::Service, project: &Path) -> Result<Service, String> {
        let build = svc.build.map(|build| {
            let (context, dockerfile, target) = match build {
                raw::Build::Context(context) => (context, None, None),
                raw::Build::Full {
                    context,
                    dockerfile,
                    target,
                } => (context.unwrap_or_else(|| ".".into()), dockerfile, target),
            };
            let context = project.join(context);
            Build {
                dockerfile: context.join(dockerfile.as_deref().unwrap_or("Dockerfile")),
                context,
                target,
            }
        });
        let environment = match svc.environment {
            None => BTreeMap::new(),
            Some(raw::Environment::Map(map)) => map
                .into_iter()
                .map(|(k, v)| (k, v.as_ref().map(scalar_text).unwrap_or_default()))
                .collect(),
            Some(raw::Environment::List(items)) => items
                .into_iter()
                .map(|item| match item.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (item, String::new()),
                })
                .collect(),
        };
        let mut ports = Vec::new();
        for port in svc.ports {
            ports.push(match port {
                raw::Port::Short(value) => parse_short_port(&scalar_text(&value))?,
                raw::Port::Long {
                    target,
                    published,
                    host_ip,
                } => Port {
                    host_ip,
                    published: published.as_ref().map(scalar_text),
                    target,
                },
            });
        }
        let mut volumes = Vec::new();
        for volume in svc.volumes {
            volumes.push(match volume {
                raw::Volume::Short(text) => parse_short_volume(&text, project)?,
                raw::Volume::Long {
                    kind,
                    source,
                    target,
                } => {
                    let bind = kind == "bind";
                    let source = source.unwrap_or_default();
                    Volume {
                        bind,
                        source: if bind {
                            project.join(source)
                        } else {
                            PathBuf::from(source)
                        },
                        target,
                    }
                }
            });
        }
        let healthcheck = match svc.healthcheck {
            Some(h) if !h.disable => words(h.test),
            _ => Vec::new(),
        };
        let depends_on = match svc.depends_on {
            None => BTreeMap::new(),
            Some(raw::DependsOn::List(names)) => names
                .into_iter()
                .map(|n| (n, "service_started".to_owned()))
                .collect(),
            Some(raw::DependsOn::Map(map)) => map
                .into_iter()
                .map(|(n, d)| (n, d.condition.unwrap_or_else(|| "service_started".into())))
                .collect(),
        };
        Ok(Service {
            image: svc.image,
            build,
            restart: svc.restart.unwrap_or_else(|| "no".into()),
            command: words(svc.command),
            environment,
            ports,
            volumes,
            healthcheck,
            depends_on,
        })
    }

    /// Lays out `service`'s bind mounts under `dir` as symlinks at their container paths, so that
    /// a validator run on `dir/<container path>` resolves relative paths as the container will.
    pub fn lay_out(&self, service: &str, dir: &Path) -> PathBuf {
        let base = dir.join(service);
        let svc = self
            .services
            .get(service)
            .unwrap_or_else(|| panic!("docker-compose.yml has no service {service}"));
        for (target, source) in svc.binds() {
            let link = base.join(target.trim_start_matches('/'));
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
            }
            std::os::unix::fs::symlink(source, &link)
                .unwrap_or_else(|e| panic!("cannot link {}: {e}", link.display()));
        }
        base
    }
}
