//! The Okteto manifest (`okteto.yml`), as far as Divert uses it: the
//! `deploy` and `destroy` commands and the `divert` section (under
//! `deploy`, where Okteto's schema has it, or at the top). An existing
//! Okteto manifest works as it is: the sections Divert does not run
//! (`build`, `dependencies`) are listed with a note, Okteto's other sections
//! (`dev`, `test`, …) are accepted, and any other field is a warning, since
//! Okteto's schema is larger than ours. A wrong type, a missing
//! `divert.namespace` or an unknown driver is an error naming the field and
//! the line.
//!
//! The manifest is parsed first, as written; then variables are expanded in
//! its string values (`expand`), so that a value, whatever it holds (a
//! newline, a `:`), stays the value it was and can never change the
//! manifest's structure. The variables are the process environment, the
//! `--var`s and the namespaces: `OKTETO_NAMESPACE` and `DIVERT_NAMESPACE`
//! (the divert namespace), and `OKTETO_SHARED_NAMESPACE` and
//! `DIVERT_SHARED_NAMESPACE` (the shared one, which `divert.namespace`
//! itself names: it is expanded first). A command keeps its text as
//! written beside the expanded one it runs, so what is printed never shows
//! a secret passed in a variable.

pub mod expand;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use divert_core::names::env::{
    OKTETO_NAMESPACE, OKTETO_SHARED_NAMESPACE, PROXY_NAMESPACE, SHARED_NAMESPACE,
};

/// Where a manifest is looked for, in order, when `-f` is not given.
pub const FILES: [&str; 3] = ["okteto.yml", "okteto.yaml", ".okteto/okteto.yml"];

/// Okteto's own sections that Divert accepts and does not use (`build`
/// and `dependencies` are listed to the user as not run).
const OKTETO_SECTIONS: [&str; 10] = [
    "name",
    "namespace",
    "context",
    "icon",
    "dev",
    "test",
    "external",
    "variables",
    "build",
    "dependencies",
];

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("no manifest in {}: looked for {}; pass -f FILE", dir.display(), FILES.join(", "))]
    NotFound { dir: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {field}: {source}", path.display())]
    Expand {
        path: PathBuf,
        field: String,
        #[source]
        source: expand::Unclosed,
    },
    /// A value that came from variables is not what its field takes.
    #[error("{}: {field}: {message}", path.display())]
    Value {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// serde_yaml_ng's message names the field and the line.
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error(
        "{}: no divert section: add deploy.divert.namespace with the shared namespace \
         (namespace: ${{OKTETO_SHARED_NAMESPACE:-staging}})",
        path.display()
    )]
    NoDivert { path: PathBuf },
}

/// The routing driver a manifest asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// Divert's own proxies (the default).
    Divert,
    /// Okteto's default, nginx plus Linkerd, which Divert replaces.
    Nginx,
    /// Okteto's Istio driver.
    Istio,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Divert => "divert",
            Driver::Nginx => "nginx",
            Driver::Istio => "istio",
        }
    }
}

impl std::str::FromStr for Driver {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "divert" => Ok(Driver::Divert),
            "nginx" => Ok(Driver::Nginx),
            "istio" => Ok(Driver::Istio),
            other => Err(format!(
                "unknown driver {other:?}, expected divert, nginx or istio"
            )),
        }
    }
}

impl Driver {
    /// The driver of an install (`divert install --driver`, and the
    /// controller's): Divert's own proxies, or Istio's routes too.
    pub fn parse_installed(s: &str) -> Result<Driver, String> {
        match s.parse()? {
            Driver::Nginx => Err(
                "nginx is Okteto's driver, which Divert's own proxies replace: \
                 use divert (the default) or istio"
                    .to_owned(),
            ),
            d => Ok(d),
        }
    }
}

/// One command of `deploy` or `destroy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Its name, or the command as written: what progress lines print.
    pub name: String,
    /// The command as written, variables and all.
    pub command: String,
    /// The command with its variables expanded: what runs. Never printed.
    pub run: String,
}

/// The `divert` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Divert {
    pub driver: Driver,
    /// The shared namespace.
    pub namespace: String,
    /// The docs' `debug: true`: the proxies log every decision.
    pub debug: bool,
}

/// A section of the manifest that Divert does not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotRun {
    /// `build` or `dependencies`.
    pub section: &'static str,
    /// The images or repositories it names.
    pub names: Vec<String>,
}

impl NotRun {
    /// What to tell the user.
    pub fn note(&self) -> String {
        let what = match self.section {
            "build" => {
                "images are not built: build and push them yourself, and name them in the deploy commands"
            }
            _ => {
                "dependencies are not deployed: deploy them yourself, or use the shared namespace's"
            }
        };
        format!("{} ({}): {what}", self.section, self.names.join(", "))
    }
}

/// A manifest, read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    pub path: PathBuf,
    pub deploy: Vec<Step>,
    pub destroy: Vec<Step>,
    pub divert: Divert,
    /// Sections Okteto runs and Divert does not, with what they name.
    pub not_run: Vec<NotRun>,
    /// Fields Divert does not know (`deploy.commands.0.timeout`).
    pub warnings: Vec<String>,
}

/// Finds the manifest: `file` if given, else the first of [`FILES`] in `dir`.
pub fn find(dir: &Path, file: Option<&Path>) -> Result<PathBuf, ManifestError> {
    if let Some(f) = file {
        return Ok(f.to_path_buf());
    }
    FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| ManifestError::NotFound {
            dir: dir.to_path_buf(),
        })
}

/// A manifest whose structure was judged, its values not yet expanded:
/// every mistake of type, a missing `divert` section or a literal unknown
/// driver is found here, before anything asks the cluster.
pub struct Judged {
    path: PathBuf,
    deploy: Vec<RawStep>,
    destroy: Vec<RawStep>,
    divert: RawDivert,
    /// Where the `divert` section was: `deploy.divert` or `divert`.
    divert_at: &'static str,
    not_run: Vec<NotRun>,
    warnings: Vec<String>,
}

/// Reads the manifest at `path` and judges its structure ([`judge`]).
pub fn read(path: &Path) -> Result<Judged, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    judge(path, &text)
}

/// Reads a manifest's text and expands it for divert namespace
/// `namespace`, with `vars` (`--var`s) over `env` (the process
/// environment): [`judge`], then [`Judged::expand`].
pub fn parse(
    path: &Path,
    text: &str,
    namespace: &str,
    vars: &BTreeMap<String, String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Manifest, ManifestError> {
    judge(path, text)?.expand(namespace, vars, env)
}

/// Parses a manifest's text as written, judging its structure: serde's
/// errors name the field and the line.
pub fn judge(path: &Path, text: &str) -> Result<Judged, ManifestError> {
    let mut warnings = Vec::new();
    let raw: Raw =
        serde_ignored::deserialize(serde_yaml_ng::Deserializer::from_str(text), |field| {
            let field = field.to_string().replace(".?", "");
            let top = field.split('.').next().unwrap_or_default();
            if !OKTETO_SECTIONS.contains(&top) {
                warnings.push(field);
            }
        })
        .map_err(|e| ManifestError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let (deploy, nested, divert_at) = match raw.deploy {
        None => (Vec::new(), None, "divert"),
        Some(RawDeploy::Commands(c)) => (c, None, "divert"),
        Some(RawDeploy::Object { commands, divert }) => {
            let at = if divert.is_some() {
                "deploy.divert"
            } else {
                "divert"
            };
            (commands, divert, at)
        }
    };
    let divert = nested
        .or(raw.divert)
        .ok_or_else(|| ManifestError::NoDivert {
            path: path.to_path_buf(),
        })?;
    let mut not_run = Vec::new();
    if let Some(build) = raw.build {
        not_run.push(NotRun {
            section: "build",
            names: build.into_keys().collect(),
        });
    }
    if let Some(deps) = raw.dependencies {
        not_run.push(NotRun {
            section: "dependencies",
            names: deps.0,
        });
    }
    Ok(Judged {
        path: path.to_path_buf(),
        deploy,
        destroy: raw.destroy.map(|d| d.0).unwrap_or_default(),
        divert,
        divert_at,
        not_run,
        warnings,
    })
}

impl Judged {
    /// Expands the variables in the values, for divert namespace
    /// `namespace`, with `vars` (`--var`s) over `env`.
    pub fn expand(
        self,
        namespace: &str,
        vars: &BTreeMap<String, String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Manifest, ManifestError> {
        let Judged {
            path,
            deploy,
            destroy,
            divert,
            divert_at,
            not_run,
            warnings,
        } = self;
        let path = path.as_path();
        let mut known = vars.clone();
        for name in [PROXY_NAMESPACE, OKTETO_NAMESPACE] {
            known
                .entry(name.to_owned())
                .or_insert_with(|| namespace.to_owned());
        }
        let expander = |known: &BTreeMap<String, String>| {
            let known = known.clone();
            move |field: &str, value: &str| {
                let lookup = |name: &str| known.get(name).cloned().or_else(|| env(name));
                expand::expand(value, &lookup).map_err(|source| ManifestError::Expand {
                    path: path.to_path_buf(),
                    field: field.to_owned(),
                    source,
                })
            }
        };
        // The shared namespace is what divert.namespace says, which may
        // itself use the variables: expanded first, then known to every
        // other value.
        let shared = expander(&known)(&format!("{divert_at}.namespace"), &divert.namespace)?;
        for name in [SHARED_NAMESPACE, OKTETO_SHARED_NAMESPACE] {
            known
                .entry(name.to_owned())
                .or_insert_with(|| shared.clone());
        }
        let x = expander(&known);
        let bad = |field: String, message: String| ManifestError::Value {
            path: path.to_path_buf(),
            field,
            message,
        };
        let driver = match divert.driver {
            None => Driver::Divert,
            Some(Var::Value(d)) => d,
            Some(Var::Text(t)) => {
                let field = format!("{divert_at}.driver");
                x(&field, &t)?.parse().map_err(|m| bad(field, m))?
            }
        };
        let debug = match divert.debug {
            Var::Value(b) => b,
            Var::Text(t) => {
                let field = format!("{divert_at}.debug");
                match x(&field, &t)?.as_str() {
                    "true" => true,
                    "false" | "" => false,
                    other => return Err(bad(field, format!("{other:?} is not true or false"))),
                }
            }
        };
        let steps = |section: &str, raw: Vec<RawStep>| -> Result<Vec<Step>, ManifestError> {
            raw.into_iter()
                .enumerate()
                .map(|(i, r)| {
                    let run = x(&format!("{section}.commands[{i}].command"), &r.command)?;
                    Ok(Step {
                        name: r.name.unwrap_or_else(|| r.command.clone()),
                        command: r.command,
                        run,
                    })
                })
                .collect()
        };
        Ok(Manifest {
            path: path.to_path_buf(),
            deploy: steps("deploy", deploy)?,
            destroy: steps("destroy", destroy)?,
            divert: Divert {
                driver,
                namespace: shared,
                debug,
            },
            not_run,
            warnings,
        })
    }
}

/// A value that is either what its field takes, or text with variables
/// in it, to be expanded and then read (`driver: ${DRIVER}`). Text
/// without a `$` is read at once, so its errors name the line.
enum Var<T> {
    Value(T),
    Text(String),
}

impl<'de> Deserialize<'de> for Var<Driver> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.contains('$') {
            return Ok(Var::Text(s));
        }
        s.parse().map(Var::Value).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Var<bool> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Var<bool>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or a variable")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Var<bool>, E> {
                Ok(Var::Value(b))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Var<bool>, E> {
                if s.contains('$') {
                    Ok(Var::Text(s.to_owned()))
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(s), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Default for Var<bool> {
    fn default() -> Self {
        Var::Value(false)
    }
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    deploy: Option<RawDeploy>,
    #[serde(default)]
    destroy: Option<RawCommands>,
    #[serde(default)]
    divert: Option<RawDivert>,
    #[serde(default)]
    build: Option<BTreeMap<String, IgnoredAny>>,
    #[serde(default)]
    dependencies: Option<Names>,
}

#[derive(Deserialize)]
struct RawDivert {
    #[serde(default)]
    driver: Option<Var<Driver>>,
    namespace: String,
    #[serde(default)]
    debug: Var<bool>,
}

/// `deploy`: a list of commands, or an object with `commands` and
/// `divert` (and Okteto's `compose`, `endpoints`, `image`, `remote`, which
/// Divert does not use).
enum RawDeploy {
    Commands(Vec<RawStep>),
    Object {
        commands: Vec<RawStep>,
        divert: Option<RawDivert>,
    },
}

#[derive(Deserialize)]
struct RawDeployObject {
    #[serde(default)]
    commands: Vec<RawStep>,
    #[serde(default)]
    divert: Option<RawDivert>,
}

impl<'de> Deserialize<'de> for RawDeploy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDeploy;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of commands, or an object with commands and divert")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawDeploy, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(RawDeploy::Commands)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawDeploy, A::Error> {
                let o = RawDeployObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawDeploy::Object {
                    commands: o.commands,
                    divert: o.divert,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `destroy`: a list of commands, or an object with `commands`.
struct RawCommands(Vec<RawStep>);

#[derive(Deserialize)]
struct RawCommandsObject {
    #[serde(default)]
    commands: Vec<RawStep>,
}

impl<'de> Deserialize<'de> for RawCommands {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCommands;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of commands, or an object with commands")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawCommands, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(RawCommands)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawCommands, A::Error> {
                RawCommandsObject::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|o| RawCommands(o.commands))
            }
        }
        d.deserialize_any(V)
    }
}

/// A command: a string, or `name` and `command`.
struct RawStep {
    name: Option<String>,
    command: String,
}

#[derive(Deserialize)]
struct RawNamedStep {
    #[serde(default)]
    name: Option<String>,
    command: String,
}

impl<'de> Deserialize<'de> for RawStep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawStep;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command, or an object with name and command")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawStep, E> {
                Ok(RawStep {
                    name: None,
                    command: s.to_owned(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawStep, A::Error> {
                let n = RawNamedStep::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawStep {
                    name: n.name,
                    command: n.command,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `dependencies`: a map of names, or a list of repositories.
struct Names(Vec<String>);

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Names;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of dependencies, or a list of repositories")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Names, A::Error> {
                let mut names = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    names.push(s);
                }
                Ok(Names(names))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Names, A::Error> {
                let mut names = Vec::new();
                while let Some((k, _)) = map.next_entry::<String, IgnoredAny>()? {
                    names.push(k);
                }
                Ok(Names(names))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests;
