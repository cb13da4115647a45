//! Choosing between iptables' legacy and nf_tables backends, and running
//! `*-save` / `*-restore`.
//!
//! Both backends can coexist in one kernel, and rules in the one the pod's
//! other components do not use are simply not seen by them. So `auto` follows
//! whatever is already in use in this network namespace: legacy if
//! `iptables-legacy-save` shows anything, else nft (the default of current
//! distributions).

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::rules::{self, Ruleset, Table};
use crate::{Error, Family, Mode};

/// An iptables backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Legacy,
    Nft,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Legacy => "legacy",
            BackendKind::Nft => "nft",
        })
    }
}

/// How the binaries of the chosen backend are named in this image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// `iptables-legacy-save`, `iptables-nft-restore`, …
    Suffixed,
    /// Only `iptables-save`/`iptables-restore`, whose backend `iptables
    /// --version` tells.
    Plain,
}

/// The chosen backend, how its binaries are named, and why it was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub kind: BackendKind,
    pub naming: Naming,
    pub reason: String,
}

impl Backend {
    pub fn save_binary(&self, family: Family) -> String {
        binary(family, self.naming_kind(), "save")
    }

    pub fn restore_binary(&self, family: Family) -> String {
        binary(family, self.naming_kind(), "restore")
    }

    /// The restore command line, as shown in dry-run headers and errors.
    pub fn restore_command(&self, family: Family) -> String {
        format!("{} --noflush", self.restore_binary(family))
    }

    fn naming_kind(&self) -> Option<BackendKind> {
        match self.naming {
            Naming::Suffixed => Some(self.kind),
            Naming::Plain => None,
        }
    }
}

/// `iptables-nft-save`, `ip6tables-legacy-restore`, `iptables-save`, …
fn binary(family: Family, kind: Option<BackendKind>, tool: &str) -> String {
    match kind {
        Some(kind) => format!("{}-{kind}-{tool}", family.iptables()),
        None => format!("{}-{tool}", family.iptables()),
    }
}

/// What backend choice needs to know about the machine; a trait so the
/// choice is tested without one.
pub trait Probe {
    /// Whether `binary` is an executable file in `PATH`.
    fn exists(&self, binary: &str) -> bool;
    /// Runs `binary args…` and returns its standard output, or why not.
    fn output(&self, binary: &str, args: &[&str]) -> Result<String, Error>;
}

/// The real machine.
pub struct System;

impl Probe for System {
    fn exists(&self, binary: &str) -> bool {
        find_in_path(binary).is_some()
    }

    fn output(&self, binary: &str, args: &[&str]) -> Result<String, Error> {
        let output = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| spawn_error(binary, e))?;
        if !output.status.success() {
            return Err(Error::CommandFailed {
                command: command_line(binary, args),
                status: output.status.to_string(),
                stderr: tidy_stderr(&output.stderr),
            });
        }
        String::from_utf8(output.stdout).map_err(|_| Error::CommandFailed {
            command: command_line(binary, args),
            status: "success".into(),
            stderr: "its output is not UTF-8".into(),
        })
    }
}

fn find_in_path(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn spawn_error(binary: &str, source: io::Error) -> Error {
    if source.kind() == io::ErrorKind::NotFound {
        Error::MissingBinary {
            binary: binary.to_string(),
        }
    } else {
        Error::Spawn {
            binary: binary.to_string(),
            source,
        }
    }
}

fn command_line(binary: &str, args: &[&str]) -> String {
    std::iter::once(binary)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// stderr as one line: without blank lines and the generic "Try `… -h'" hint.
fn tidy_stderr(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Try `"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The backend `iptables --version` reports: `iptables v1.8.9 (nf_tables)`
/// or `iptables v1.8.9 (legacy)`. Versions before 1.8 print neither and are
/// legacy-only.
pub fn kind_from_version(version: &str) -> BackendKind {
    if version.contains("(nf_tables)") {
        BackendKind::Nft
    } else {
        BackendKind::Legacy
    }
}

/// Chooses the backend for `mode`, checking that its save and restore
/// binaries exist for every family in `families`.
pub fn choose(mode: Mode, families: &[Family], probe: &impl Probe) -> Result<Backend, Error> {
    let installed = Installed { families, probe };
    let wanted = match mode {
        Mode::Legacy => BackendKind::Legacy,
        Mode::Nft => BackendKind::Nft,
        Mode::Auto => return choose_auto(&installed),
    };
    if installed.has(Some(wanted)) {
        return Ok(Backend {
            kind: wanted,
            naming: Naming::Suffixed,
            reason: format!("--mode {wanted}"),
        });
    }
    match installed.plain_kind()? {
        Some(found) if found == wanted => Ok(Backend {
            kind: wanted,
            naming: Naming::Plain,
            reason: format!("--mode {wanted}; `iptables --version` says {found}"),
        }),
        Some(found) => Err(Error::WrongBackend { wanted, found }),
        None => Err(Error::MissingBinary {
            binary: installed.first_missing(Some(wanted)),
        }),
    }
}

fn choose_auto(installed: &Installed<'_, impl Probe>) -> Result<Backend, Error> {
    let suffixed = |kind, reason: String| {
        Ok(Backend {
            kind,
            naming: Naming::Suffixed,
            reason,
        })
    };
    match (
        installed.has(Some(BackendKind::Legacy)),
        installed.has(Some(BackendKind::Nft)),
    ) {
        (true, true) => {
            let (kind, reason) = auto_from_legacy_save(installed.families, installed.probe);
            suffixed(kind, reason)
        }
        (true, false) => suffixed(
            BackendKind::Legacy,
            "only the legacy binaries are installed".into(),
        ),
        (false, true) => suffixed(
            BackendKind::Nft,
            "only the nft binaries are installed".into(),
        ),
        (false, false) => match installed.plain_kind()? {
            Some(kind) => Ok(Backend {
                kind,
                naming: Naming::Plain,
                reason: format!(
                    "only plain iptables-save/-restore are installed; `iptables --version` says {kind}"
                ),
            }),
            None => Err(Error::MissingBinary {
                binary: installed.first_missing(Some(BackendKind::Nft)),
            }),
        },
    }
}

/// Which iptables binaries this image has, for the families we program.
struct Installed<'a, P> {
    families: &'a [Family],
    probe: &'a P,
}

impl<P: Probe> Installed<'_, P> {
    /// Whether save and restore exist for every family, suffixed with `kind`
    /// (`None`: the plain names).
    fn has(&self, kind: Option<BackendKind>) -> bool {
        self.families.iter().all(|&f| {
            self.probe.exists(&binary(f, kind, "save"))
                && self.probe.exists(&binary(f, kind, "restore"))
        })
    }

    /// The first binary of `kind` that is absent, to name in the error.
    fn first_missing(&self, kind: Option<BackendKind>) -> String {
        self.families
            .iter()
            .flat_map(|&f| [binary(f, kind, "restore"), binary(f, kind, "save")])
            .find(|b| !self.probe.exists(b))
            .unwrap_or_else(|| binary(Family::V4, kind, "restore"))
    }

    /// The backend behind the plain names, if they are all there.
    fn plain_kind(&self) -> Result<Option<BackendKind>, Error> {
        if !self.has(None) {
            return Ok(None);
        }
        let version = self.probe.output(Family::V4.iptables(), &["--version"])?;
        Ok(Some(kind_from_version(&version)))
    }
}

/// Legacy if `iptables-legacy-save` (or `ip6tables-legacy-save`) shows any
/// rule or user chain in this network namespace, else nft. A legacy-save
/// that cannot run counts as showing nothing.
fn auto_from_legacy_save(families: &[Family], probe: &impl Probe) -> (BackendKind, String) {
    let mut unreadable = Vec::new();
    for &family in families {
        let save = binary(family, Some(BackendKind::Legacy), "save");
        match probe.output(&save, &[]) {
            Ok(text) => match rules::parse_save(&text) {
                Ok(ruleset) if ruleset.has_content() => {
                    return (
                        BackendKind::Legacy,
                        format!("{save} shows rules in this network namespace"),
                    );
                }
                Ok(_) => {}
                Err(e) => unreadable.push(format!("{save}: {e}")),
            },
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    let mut reason = "no legacy rules in this network namespace".to_string();
    if !unreadable.is_empty() {
        reason.push_str(&format!(" (could not read: {})", unreadable.join("; ")));
    }
    (BackendKind::Nft, reason)
}

/// Reads the nat table of one family. A save that prints no nat table (some
/// nft versions, before anything was added) means an empty one.
pub fn read_nat(backend: &Backend, family: Family, probe: &impl Probe) -> Result<Table, Error> {
    let save = backend.save_binary(family);
    let text = probe.output(&save, &["-t", "nat"])?;
    let ruleset: Ruleset = rules::parse_save(&text).map_err(|source| Error::ParseSave {
        command: format!("{save} -t nat"),
        source,
    })?;
    Ok(ruleset
        .table("nat")
        .cloned()
        .unwrap_or_else(Table::empty_nat))
}

/// Runs `<restore> --noflush` with `input` on stdin: one atomic change.
pub fn restore(backend: &Backend, family: Family, input: &str) -> Result<(), Error> {
    let binary = backend.restore_binary(family);
    let command = backend.restore_command(family);
    let mut child = Command::new(&binary)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(&binary, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A restore that rejects its input may exit before reading it all;
        // its exit status and stderr then say why, not this broken pipe.
        if let Err(e) = stdin.write_all(input.as_bytes())
            && e.kind() != io::ErrorKind::BrokenPipe
        {
            return Err(Error::Spawn { binary, source: e });
        }
    }
    let output = child.wait_with_output().map_err(|source| Error::Spawn {
        binary: binary.clone(),
        source,
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = tidy_stderr(&output.stderr);
    let offending = offending_line(&stderr)
        .and_then(|n| Some((n, input.lines().nth(n.checked_sub(1)?)?.to_string())));
    Err(Error::RestoreFailed {
        command,
        status: output.status.to_string(),
        stderr,
        offending,
    })
}

/// The input line a restore error names: `Error occurred at line: 9` or
/// `iptables-restore: line 3 failed`.
pub fn offending_line(stderr: &str) -> Option<usize> {
    let number = |s: &str| {
        s.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    if let Some((_, rest)) = stderr.split_once("Error occurred at line:") {
        return number(rest);
    }
    let (_, rest) = stderr.split_once(": line ")?;
    number(rest)
}

/// The save binary a dry run would read when no backend could be chosen.
pub fn assumed(mode: Mode) -> Backend {
    let kind = match mode {
        Mode::Legacy => BackendKind::Legacy,
        Mode::Nft | Mode::Auto => BackendKind::Nft,
    };
    Backend {
        kind,
        naming: Naming::Suffixed,
        reason: "assumed".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A machine with the given binaries; `outputs` maps a command line to its
    /// output (absent = the command fails).
    struct Fake {
        binaries: Vec<&'static str>,
        outputs: HashMap<&'static str, &'static str>,
    }

    impl Probe for Fake {
        fn exists(&self, binary: &str) -> bool {
            self.binaries.contains(&binary)
        }

        fn output(&self, binary: &str, args: &[&str]) -> Result<String, Error> {
            let line = command_line(binary, args);
            match self.outputs.get(line.as_str()) {
                Some(out) => Ok(out.to_string()),
                None if !self.exists(binary) => Err(Error::MissingBinary {
                    binary: binary.into(),
                }),
                None => Err(Error::CommandFailed {
                    command: line,
                    status: "exit status: 1".into(),
                    stderr: "Permission denied (you must be root)".into(),
                }),
            }
        }
    }

    const ALL_SUFFIXED: [&str; 8] = [
        "iptables-legacy-save",
        "iptables-legacy-restore",
        "iptables-nft-save",
        "iptables-nft-restore",
        "ip6tables-legacy-save",
        "ip6tables-legacy-restore",
        "ip6tables-nft-save",
        "ip6tables-nft-restore",
    ];
    const BOTH: [Family; 2] = [Family::V4, Family::V6];
    const LEGACY_WITH_RULES: &str = include_str!("../testdata/legacy-programmed.txt");
    const LEGACY_FRESH_NAT: &str = "# Generated by iptables-save v1.8.9\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

    fn fake(binaries: &[&'static str], outputs: &[(&'static str, &'static str)]) -> Fake {
        Fake {
            binaries: binaries.to_vec(),
            outputs: outputs.iter().copied().collect(),
        }
    }

    fn choose_ok(mode: Mode, families: &[Family], probe: &Fake) -> Backend {
        match choose(mode, families, probe) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn auto_is_legacy_when_legacy_save_shows_rules() {
        let probe = fake(
            &ALL_SUFFIXED,
            &[
                ("iptables-legacy-save", LEGACY_WITH_RULES),
                ("ip6tables-legacy-save", ""),
            ],
        );
        let b = choose_ok(Mode::Auto, &BOTH, &probe);
        assert_eq!((b.kind, b.naming), (BackendKind::Legacy, Naming::Suffixed));
        assert!(
            b.reason.contains("iptables-legacy-save shows rules"),
            "{}",
            b.reason
        );
        assert_eq!(
            b.restore_command(Family::V6),
            "ip6tables-legacy-restore --noflush"
        );
        // IPv6 rules alone are evidence too.
        let probe = fake(
            &ALL_SUFFIXED,
            &[
                ("iptables-legacy-save", ""),
                ("ip6tables-legacy-save", LEGACY_WITH_RULES),
            ],
        );
        assert_eq!(
            choose_ok(Mode::Auto, &BOTH, &probe).kind,
            BackendKind::Legacy
        );
    }

    #[test]
    fn auto_is_nft_when_legacy_shows_nothing_or_cannot_run() {
        // Empty output (no legacy tables loaded) or only empty built-in chains.
        for legacy in ["", LEGACY_FRESH_NAT] {
            let probe = fake(
                &ALL_SUFFIXED,
                &[
                    ("iptables-legacy-save", legacy),
                    ("ip6tables-legacy-save", ""),
                ],
            );
            let b = choose_ok(Mode::Auto, &BOTH, &probe);
            assert_eq!(b.kind, BackendKind::Nft);
            assert_eq!(
                b.restore_command(Family::V4),
                "iptables-nft-restore --noflush"
            );
        }
        let probe = fake(&ALL_SUFFIXED, &[]);
        let b = choose_ok(Mode::Auto, &[Family::V4], &probe);
        assert_eq!(b.kind, BackendKind::Nft);
        assert!(b.reason.contains("Permission denied"), "{}", b.reason);
    }

    #[test]
    fn auto_uses_whichever_backend_is_installed() {
        let probe = fake(&["iptables-legacy-save", "iptables-legacy-restore"], &[]);
        assert_eq!(
            choose_ok(Mode::Auto, &[Family::V4], &probe).kind,
            BackendKind::Legacy
        );
        let probe = fake(&["iptables-nft-save", "iptables-nft-restore"], &[]);
        assert_eq!(
            choose_ok(Mode::Auto, &[Family::V4], &probe).kind,
            BackendKind::Nft
        );
    }

    #[test]
    fn plain_binaries_take_their_mode_from_version() {
        let plain = ["iptables", "iptables-save", "iptables-restore"];
        let probe = fake(
            &plain,
            &[("iptables --version", "iptables v1.8.9 (legacy)\n")],
        );
        let b = choose_ok(Mode::Auto, &[Family::V4], &probe);
        assert_eq!((b.kind, b.naming), (BackendKind::Legacy, Naming::Plain));
        assert_eq!(b.restore_command(Family::V4), "iptables-restore --noflush");
        assert_eq!(b.save_binary(Family::V4), "iptables-save");
        let probe = fake(
            &plain,
            &[("iptables --version", "iptables v1.8.9 (nf_tables)\n")],
        );
        assert_eq!(
            choose_ok(Mode::Nft, &[Family::V4], &probe).naming,
            Naming::Plain
        );
        match choose(Mode::Legacy, &[Family::V4], &probe) {
            Err(Error::WrongBackend {
                wanted: BackendKind::Legacy,
                found: BackendKind::Nft,
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_binaries_are_named() {
        let probe = fake(&[], &[]);
        match choose(Mode::Auto, &[Family::V4], &probe) {
            Err(e @ Error::MissingBinary { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("iptables-nft-restore") && msg.contains("install iptables"),
                    "{msg}"
                );
            }
            other => panic!("{other:?}"),
        }
        // IPv4 binaries only: IPv6 names the one missing.
        let probe = fake(&["iptables-legacy-save", "iptables-legacy-restore"], &[]);
        match choose(Mode::Legacy, &BOTH, &probe) {
            Err(Error::MissingBinary { binary }) => assert_eq!(binary, "ip6tables-legacy-restore"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn finds_the_line_restore_complains_about() {
        assert_eq!(
            offending_line(
                "iptables-restore v1.8.9 (legacy): too many ports specified; Error occurred at line: 3"
            ),
            Some(3)
        );
        assert_eq!(offending_line("iptables-restore: line 12 failed"), Some(12));
        assert_eq!(
            offending_line(
                "iptables-nft-restore: line 3 failed: Bad rule (does a matching rule exist in that chain?)."
            ),
            Some(3)
        );
        assert_eq!(
            offending_line("iptables-restore: unable to initialize table 'nat'"),
            None
        );
    }

    #[test]
    fn version_strings() {
        assert_eq!(
            kind_from_version("iptables v1.8.9 (nf_tables)"),
            BackendKind::Nft
        );
        assert_eq!(
            kind_from_version("iptables v1.8.9 (legacy)"),
            BackendKind::Legacy
        );
        assert_eq!(kind_from_version("iptables v1.6.1"), BackendKind::Legacy);
    }
}
