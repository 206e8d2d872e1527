//! The Dockerfile's stages (the environment and user each one hands on) and the `.dockerignore`
//! patterns that decide what reaches the build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{assert_none, read, Deployment};

/// What a stage sets up for the container it becomes.
#[derive(Debug, Clone, Default)]
pub struct Stage {
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
}

fn unquote(value: &str) -> &str {
    let value = value.trim();
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// Stages by name (`#N` for an unnamed one), each with what it inherits from a parent stage.
pub fn stages(path: &Path) -> BTreeMap<String, Stage> {
    let text = read(path).replace("\\\n", " ");
    let mut stages: BTreeMap<String, Stage> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        match word.to_ascii_uppercase().as_str() {
            "FROM" => {
                let words: Vec<&str> = rest
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let base = words.first().copied().unwrap_or_default();
                let name = match words.get(1) {
                    Some(kw) if kw.eq_ignore_ascii_case("as") => words.get(2).copied(),
                    _ => None,
                };
                let inherited = stages.get(base).cloned().unwrap_or_default();
                let name = name.map_or_else(|| format!("#{}", stages.len()), str::to_owned);
                stages.insert(name.clone(), inherited);
                current = Some(name);
            }
            "ENV" => {
                let Some(stage) = current.as_ref().and_then(|name| stages.get_mut(name)) else {
                    continue;
                };
                for pair in rest.split_whitespace() {
                    if let Some((key, value)) = pair.split_once('=') {
                        stage.env.insert(key.to_owned(), unquote(value).to_owned());
                    }
                }
            }
            "USER" => {
                if let Some(stage) = current.as_ref().and_then(|name| stages.get_mut(name)) {
                    stage.user = Some(rest.trim().to_owned());
                }
            }
            _ => {}
        }
    }
    stages
}

/// `.dockerignore` as Docker applies it to a path relative to the build context: the last
/// matching pattern wins, `!` re-includes, and a pattern that matches a directory excludes what
/// is below it.
#[derive(Debug)]
pub struct DockerIgnore {
    patterns: Vec<String>,
}

impl DockerIgnore {
    pub fn load(path: &Path) -> Self {
        Self::parse(&read(path))
    }

    pub fn parse(text: &str) -> Self {
        Self {
            patterns: text
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(str::to_owned)
                .collect(),
        }
    }

    pub fn ignores(&self, relative: &Path) -> bool {
        let parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let mut verdict = false;
        for pattern in &self.patterns {
            let negate = pattern.starts_with('!');
            let pattern = pattern.trim_start_matches('!').trim_end_matches('/');
            let any_depth = pattern.strip_prefix("**/");
            for i in 1..=parts.len() {
                let prefix = parts[..i].join("/");
                if glob(&prefix, pattern) || any_depth.is_some_and(|p| glob(&prefix, p)) {
                    verdict = !negate;
                    break;
                }
            }
        }
        verdict
    }
}

/// `*` (any run of characters) and `?` (one character); everything else literal.
fn glob(text: &str, pattern: &str) -> bool {
    let (t, p): (Vec<char>, Vec<char>) = (text.chars().collect(), pattern.chars().collect());
    let (mut ti, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((star_p, star_t)) = star {
            pi = star_p + 1;
            ti = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[test]
fn dockerignore_matching() {
    let ignore = DockerIgnore::parse("# c\n.git\n**/target\n**/*.log\ndocs\n!docs/keep.md\n");
    assert!(ignore.ignores(Path::new(".git/HEAD")));
    assert!(ignore.ignores(Path::new("ledger/target/debug/x")));
    assert!(ignore.ignores(Path::new("a/b/run.log")));
    assert!(ignore.ignores(Path::new("docs/design.md")));
    assert!(!ignore.ignores(Path::new("docs/keep.md")));
    assert!(!ignore.ignores(Path::new("ledger/src/pricebook.toml")));
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "tests") {
                rust_sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// The paths of `include_str!("…")` and `include_bytes!("…")` in a source file.
fn embedded(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for macro_name in ["include_str!(", "include_bytes!("] {
        for (at, _) in text.match_indices(macro_name) {
            let rest = text[at + macro_name.len()..].trim_start();
            if let Some(rest) = rest.strip_prefix('"') {
                if let Some(end) = rest.find('"') {
                    out.push(&rest[..end]);
                }
            }
        }
    }
    out
}

#[test]
fn dockerignore_keeps_every_embedded_file_in_the_build_context() {
    let d = Deployment::load();
    let root = d.root.canonicalize().unwrap_or_else(|_| d.root.clone());
    let ignore = DockerIgnore::load(&root.join(".dockerignore"));
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        rust_sources(&entry.path().join("src"), &mut sources);
    }
    sources.sort();
    let mut found = 0;
    let mut problems = Vec::new();
    for source in &sources {
        for included in embedded(&read(source)) {
            let Some(dir) = source.parent() else { continue };
            let Ok(path) = dir.join(included).canonicalize() else {
                problems.push(format!(
                    "{} embeds {included}, which does not exist",
                    d.rel(source)
                ));
                continue;
            };
            found += 1;
            if let Ok(relative) = path.strip_prefix(&root) {
                if ignore.ignores(relative) {
                    problems.push(format!(
                        "{} embeds {}, which .dockerignore keeps out of the build",
                        d.rel(source),
                        relative.display()
                    ));
                }
            }
        }
    }
    assert!(
        found >= 2,
        "found {found} embedded files (the price book, the migrations)"
    );
    assert_none(".dockerignore", &problems);
}

#[test]
fn embedded_reads_both_macros() {
    assert_eq!(
        embedded(r#"include_str!("../x.toml"); include_bytes!( "y")"#),
        ["../x.toml", "y"]
    );
}
