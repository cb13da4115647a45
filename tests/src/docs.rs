//! The Markdown files' references, checked, so that the docs cannot point
//! at a file, a heading or a line that is not there. Part of `cargo test
//! --workspace` (this crate's unit tests), so `bash tests/run.sh` and CI run
//! it.
//!
//! Every `*.md` file of the repository is read, except under `.git/`, any
//! `target/`, and the folders the tools write ([`GENERATED`]: the fuzzer's
//! finds, the benchmark's results), which a reference may name without
//! their being there. Fenced code blocks are not read. The rules the docs
//! follow:
//!
//! - **Links.** A relative link `[text](path)` names a file or folder
//!   relative to the Markdown file that holds it. `[text](path.md#anchor)`
//!   and `[text](#anchor)` must name a heading of that Markdown file, by the
//!   anchor GitHub makes of it (lowercase; every character but letters,
//!   digits, `_`, `-` and spaces dropped; spaces become `-`; a repeated
//!   anchor gets `-1`, `-2`…). An anchor of another kind of file must be a
//!   line, `#L12` or `#L12-L20`, within it. Links with a scheme (`https:`,
//!   `mailto:`) are not followed.
//! - **Paths in backticks.** A code span that is one path ending in `.rs`,
//!   `.proto`, `.sh`, `.go`, `.py`, `.toml`, `.yaml`, `.yml`, `.json`, `.md`
//!   or `Dockerfile`, or a path of two or more folders ending in `/`
//!   (`tests/kube/`), is a reference to the repository: with a `/`, it must
//!   exist relative to the repository root or to the Markdown file's folder
//!   (so write paths from the root: `tests/src/netns.rs`, not
//!   `src/netns.rs`); without one (`kubelet.rs`), a file of that name must
//!   exist somewhere in the repository. A `:LINE` or `:FIRST-LAST` after a
//!   file must be within its lines. A span with any other character than
//!   letters, digits, `.`, `_`, `-` and `/` (a space, `*`, `<`…) is not a
//!   path; nor is a bare ending (`.proto`), a folder of one name (`h1/`,
//!   `divert.dev/`), or an absolute path (`/run`, a place in a container).
//!   The files of a user's project that the docs name are in
//!   [`USERS_FILES`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Files the docs name that belong to a user's project, not to this
/// repository: the Okteto manifests `divert deploy` looks for.
const USERS_FILES: [&str; 3] = ["okteto.yml", "okteto.yaml", ".okteto/okteto.yml"];

/// The endings of a code span that make it a file reference.
const FILE_ENDINGS: [&str; 11] = [
    ".rs",
    ".proto",
    ".sh",
    ".go",
    ".py",
    ".toml",
    ".yaml",
    ".yml",
    ".json",
    ".md",
    "Dockerfile",
];

/// Folders the tools write and git ignores: the fuzzer's finds and the
/// benchmark's results. They are never read, and a reference to one is
/// taken as it is, since a clean clone (CI's) does not have them.
const GENERATED: [&str; 4] = [
    "fuzz/corpus",
    "fuzz/artifacts",
    "fuzz/coverage",
    "bench/results",
];

/// Whether `relative` is in a folder never read: `.git`, build output, or
/// one of [`GENERATED`].
fn skipped(relative: &Path) -> bool {
    relative
        .components()
        .any(|c| matches!(c.as_os_str().to_str(), Some(".git" | "target")))
        || is_generated(relative)
}

fn is_generated(relative: &Path) -> bool {
    let s = relative.to_string_lossy();
    let s = s.trim_end_matches('/');
    GENERATED
        .iter()
        .any(|p| s == *p || s.starts_with(&format!("{p}/")))
}

/// One reference that does not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The Markdown file, relative to the repository root.
    pub file: String,
    pub line: usize,
    /// The reference as written.
    pub reference: String,
    pub why: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: `{}` {}",
            self.file, self.line, self.reference, self.why
        )
    }
}

/// What a Markdown file refers to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct References {
    /// `(line, target)` of each link.
    pub links: Vec<(usize, String)>,
    /// `(line, content)` of each code span.
    pub spans: Vec<(usize, String)>,
    /// The anchors of its headings.
    pub anchors: BTreeSet<String>,
}

/// The repository as the checks see it: its root, every file and folder
/// under it, and the Markdown files read.
pub struct Repository {
    root: PathBuf,
    /// Every file's name, for bare file names.
    names: BTreeSet<String>,
    /// The Markdown files (relative path → text).
    markdown: BTreeMap<String, String>,
}

impl Repository {
    /// Walks the repository at `root`.
    pub fn read(root: &Path) -> Repository {
        let mut repo = Repository {
            root: root.to_path_buf(),
            names: BTreeSet::new(),
            markdown: BTreeMap::new(),
        };
        let mut folders = vec![PathBuf::new()];
        while let Some(folder) = folders.pop() {
            let entries = std::fs::read_dir(root.join(&folder))
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", root.join(&folder).display()));
            for entry in entries {
                let entry = entry.expect("a folder entry");
                let relative = folder.join(entry.file_name());
                if skipped(&relative) {
                    continue;
                }
                let kind = entry.file_type().expect("a file type");
                if kind.is_dir() {
                    folders.push(relative);
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".md") {
                    let text = std::fs::read_to_string(root.join(&relative))
                        .unwrap_or_else(|e| panic!("cannot read {}: {e}", relative.display()));
                    repo.markdown
                        .insert(relative.to_string_lossy().into_owned(), text);
                }
                repo.names.insert(name);
            }
        }
        repo
    }

    /// This repository (the parent of this crate's folder).
    pub fn this() -> Repository {
        let root = crate::crate_dir()
            .parent()
            .expect("the tests crate lives in the repository");
        Repository::read(root)
    }

    /// The Markdown files read, relative to the root.
    pub fn markdown_files(&self) -> impl Iterator<Item = &str> {
        self.markdown.keys().map(String::as_str)
    }

    /// Problems with the links of every Markdown file (anchors included).
    pub fn link_problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        for (file, text) in &self.markdown {
            let refs = references(text);
            for (line, target) in &refs.links {
                if let Err(why) = self.resolve_link(file, &refs.anchors, target) {
                    out.push(Problem {
                        file: file.clone(),
                        line: *line,
                        reference: target.clone(),
                        why,
                    });
                }
            }
        }
        out
    }

    /// Problems with the file paths in backticks of every Markdown file.
    pub fn path_problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        for (file, text) in &self.markdown {
            for (line, span) in references(text).spans {
                if let Err(why) = self.resolve_path(file, &span) {
                    out.push(Problem {
                        file: file.clone(),
                        line,
                        reference: span,
                        why,
                    });
                }
            }
        }
        out
    }

    /// The folder of Markdown file `file` (relative to the root).
    fn folder_of(file: &str) -> PathBuf {
        Path::new(file)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// `path` relative to `base` (both relative to the root), normalized;
    /// `None` if it leaves the repository.
    fn join(base: &Path, path: &str) -> Option<PathBuf> {
        let mut out = PathBuf::new();
        for c in base.join(path).components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::CurDir => {}
                Component::ParentDir => {
                    if !out.pop() {
                        return None;
                    }
                }
                Component::RootDir | Component::Prefix(_) => return None,
            }
        }
        Some(out)
    }

    fn resolve_link(
        &self,
        file: &str,
        own_anchors: &BTreeSet<String>,
        target: &str,
    ) -> Result<(), String> {
        if has_scheme(target) {
            return Ok(());
        }
        let (path, anchor) = match target.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (target, None),
        };
        if path.is_empty() {
            let anchor = anchor.unwrap_or_default();
            return if own_anchors.contains(anchor) {
                Ok(())
            } else {
                Err(format!("names no heading of {file}"))
            };
        }
        let relative = Self::join(&Self::folder_of(file), path)
            .ok_or_else(|| "leads outside the repository".to_owned())?;
        let full = self.root.join(&relative);
        if !full.exists() || skipped(&relative) {
            return Err(format!(
                "does not resolve: no {} (a link is relative to its Markdown file's folder)",
                relative.display()
            ));
        }
        let Some(anchor) = anchor else {
            return Ok(());
        };
        let key = relative.to_string_lossy().into_owned();
        if let Some(text) = self.markdown.get(&key) {
            if references(text).anchors.contains(anchor) {
                Ok(())
            } else {
                Err(format!("names no heading of {key}"))
            }
        } else {
            let lines = line_count(&full).map_err(|e| format!("cannot read {key}: {e}"))?;
            match line_anchor(anchor) {
                Some((first, last)) if first >= 1 && first <= last && last <= lines => Ok(()),
                Some(_) => Err(format!("is past the end of {key} ({lines} lines)")),
                None => Err(format!(
                    "has an anchor that is neither a heading nor a line (#L12) of {key}"
                )),
            }
        }
    }

    fn resolve_path(&self, file: &str, span: &str) -> Result<(), String> {
        let Some(reference) = path_reference(span) else {
            return Ok(());
        };
        if USERS_FILES.contains(&reference.path) || is_generated(Path::new(reference.path)) {
            return Ok(());
        }
        let found = if reference.path.trim_end_matches('/').contains('/') {
            [PathBuf::new(), Self::folder_of(file)]
                .iter()
                .filter_map(|base| Self::join(base, reference.path))
                .find(|p| !skipped(p) && self.root.join(p).exists())
                .ok_or_else(|| {
                    format!(
                        "does not exist, from the repository root or from {}'s folder",
                        file
                    )
                })?
        } else if self.names.contains(reference.path) {
            return match reference.lines {
                None => Ok(()),
                Some(_) => Err(
                    "has a line number but no folder: write the path from the repository root"
                        .to_owned(),
                ),
            };
        } else {
            return Err("names no file of the repository".to_owned());
        };
        let full = self.root.join(&found);
        if reference.path.ends_with('/') && !full.is_dir() {
            return Err("is not a folder".to_owned());
        }
        if let Some((first, last)) = reference.lines {
            let lines =
                line_count(&full).map_err(|e| format!("cannot read {}: {e}", found.display()))?;
            if first == 0 || first > last || last > lines {
                return Err(format!(
                    "is past the end of {} ({lines} lines)",
                    found.display()
                ));
            }
        }
        Ok(())
    }
}

fn line_count(path: &Path) -> std::io::Result<usize> {
    Ok(std::fs::read_to_string(path)?.lines().count())
}

/// Whether a link target has a scheme (`https:`, `mailto:`): not a path.
fn has_scheme(target: &str) -> bool {
    match target.split_once(':') {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && !scheme.contains('/')
        }
        None => false,
    }
}

/// `L12` or `L12-L20`: the lines.
fn line_anchor(anchor: &str) -> Option<(usize, usize)> {
    let (first, last) = match anchor.split_once('-') {
        Some((a, b)) => (a, b),
        None => (anchor, anchor),
    };
    let n = |s: &str| s.strip_prefix('L')?.parse::<usize>().ok();
    Some((n(first)?, n(last)?))
}

/// A code span read as a path into the repository.
#[derive(Debug, PartialEq, Eq)]
pub struct PathReference<'a> {
    pub path: &'a str,
    /// `:LINE` (both the same) or `:FIRST-LAST`.
    pub lines: Option<(usize, usize)>,
}

/// The path a code span names, if it is one (see the module's rules).
pub fn path_reference(span: &str) -> Option<PathReference<'_>> {
    let (path, lines) = match span.split_once(':') {
        Some((path, rest)) => {
            let (first, last) = match rest.split_once('-') {
                Some((a, b)) => (a, b),
                None => (rest, rest),
            };
            let first = first.parse::<usize>().ok()?;
            let last = last.parse::<usize>().ok()?;
            (path, Some((first, last)))
        }
        None => (span, None),
    };
    if path.is_empty()
        || path.starts_with('/')
        || !path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
    {
        return None;
    }
    let name = path.rsplit('/').next().unwrap_or_default();
    let is_file = FILE_ENDINGS
        .iter()
        .any(|e| name.ends_with(e) && (name.len() > e.len() || !e.starts_with('.')));
    let is_folder = path.ends_with('/') && path.trim_end_matches('/').contains('/');
    if !(is_file || is_folder) || (is_folder && lines.is_some()) {
        return None;
    }
    Some(PathReference { path, lines })
}

/// The anchor GitHub gives a heading whose text (as written) is `heading`.
pub fn github_anchor(heading: &str) -> String {
    rendered_text(heading)
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// A heading's text as GitHub renders it, for its anchor: a link's text
/// without its target, emphasis markers and backticks dropped (punctuation
/// is dropped from anchors anyway, but `_` is not).
fn rendered_text(heading: &str) -> String {
    let mut out = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find("](") else {
            break;
        };
        let Some(end) = after[close + 2..].find(')') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(&after[..close]);
        rest = &after[close + 2 + end + 1..];
    }
    out.push_str(rest);
    // `_` and `*` around words are emphasis; inside a code span `_` stays.
    let mut text = String::new();
    let mut in_code = false;
    for c in out.chars() {
        match c {
            '`' => in_code = !in_code,
            '*' if !in_code => {}
            _ => text.push(c),
        }
    }
    text.trim().to_owned()
}

/// Reads a Markdown text: its links, code spans and heading anchors,
/// outside fenced code blocks.
pub fn references(text: &str) -> References {
    let mut refs = References::default();
    // Fenced blocks become blank lines, so line numbers stay right.
    let mut fence: Option<(char, usize)> = None;
    let mut lines = Vec::new();
    let mut seen_anchors: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let run = |ch: char| trimmed.chars().take_while(|c| *c == ch).count();
        match fence {
            Some((ch, len)) => {
                if run(ch) >= len && trimmed.trim_end().chars().all(|c| c == ch) {
                    fence = None;
                }
                lines.push("");
                continue;
            }
            None => {
                let opened = ['`', '~'].into_iter().find(|ch| run(*ch) >= 3);
                if let Some(ch) = opened {
                    fence = Some((ch, run(ch)));
                    lines.push("");
                    continue;
                }
            }
        }
        lines.push(line);
        let hashes = trimmed.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes)
            && line.len() - trimmed.len() <= 3
            && trimmed[hashes..].starts_with(' ')
        {
            let heading = trimmed[hashes..].trim().trim_end_matches('#').trim();
            let base = github_anchor(heading);
            let n = seen_anchors.entry(base.clone()).or_insert(0);
            let anchor = if *n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            *n += 1;
            refs.anchors.insert(anchor);
        }
    }
    let text: Vec<char> = lines.join("\n").chars().collect();
    let mut line = 1;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            '\n' => {
                line += 1;
                i += 1;
            }
            '\\' => i += 2,
            '`' => {
                let n = text[i..].iter().take_while(|c| **c == '`').count();
                match closing_backticks(&text, i + n, n) {
                    Some(end) => {
                        let content: String = text[i + n..end]
                            .iter()
                            .map(|c| if *c == '\n' { ' ' } else { *c })
                            .collect();
                        let content =
                            match content.strip_prefix(' ').and_then(|c| c.strip_suffix(' ')) {
                                Some(inner) if !inner.trim().is_empty() => inner.to_owned(),
                                _ => content,
                            };
                        refs.spans.push((line, content));
                        line += text[i..end].iter().filter(|c| **c == '\n').count();
                        i = end + n;
                    }
                    None => i += n,
                }
            }
            ']' if text.get(i + 1) == Some(&'(') => {
                if let Some((target, end)) = link_target(&text, i + 2) {
                    refs.links.push((line, target));
                    line += text[i..end].iter().filter(|c| **c == '\n').count();
                    i = end;
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    refs
}

/// Where the run of exactly `n` backticks that closes a code span opened
/// before `from` starts, within the paragraph (a blank line ends it).
fn closing_backticks(text: &[char], from: usize, n: usize) -> Option<usize> {
    let mut j = from;
    while j < text.len() {
        if text[j] == '\n' && text.get(j + 1) == Some(&'\n') {
            return None;
        }
        if text[j] == '`' {
            let run = text[j..].iter().take_while(|c| **c == '`').count();
            if run == n {
                return Some(j);
            }
            j += run;
        } else {
            j += 1;
        }
    }
    None
}

/// The destination of a link whose `(` is just before `from`, and where
/// the link ends.
fn link_target(text: &[char], from: usize) -> Option<(String, usize)> {
    let mut j = from;
    while text.get(j).is_some_and(|c| *c == ' ') {
        j += 1;
    }
    if text.get(j) == Some(&'<') {
        let end = j + text[j..].iter().position(|c| *c == '>')?;
        let target: String = text[j + 1..end].iter().collect();
        let close = end + text[end..].iter().position(|c| *c == ')')?;
        return Some((target, close + 1));
    }
    let start = j;
    let mut depth = 0;
    while let Some(c) = text.get(j) {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => break,
            ')' => depth -= 1,
            c if c.is_whitespace() => break,
            _ => {}
        }
        j += 1;
    }
    if j == start || j >= text.len() {
        return None;
    }
    let target: String = text[start..j].iter().collect();
    let close = j + text[j..].iter().position(|c| *c == ')')?;
    Some((target, close + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(what: &str, problems: &[Problem]) -> String {
        let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
        format!(
            "{} {what} in the Markdown files do not resolve:\n{}",
            problems.len(),
            list.join("\n")
        )
    }

    #[test]
    fn every_relative_link_in_the_markdown_files_resolves() {
        let repo = Repository::this();
        assert!(
            repo.markdown_files().any(|f| f == "README.md"),
            "the walk found no README.md"
        );
        let problems = repo.link_problems();
        assert!(problems.is_empty(), "{}", report("links", &problems));
    }

    #[test]
    fn every_file_path_in_backticks_in_the_markdown_files_exists() {
        let repo = Repository::this();
        let problems = repo.path_problems();
        assert!(problems.is_empty(), "{}", report("paths", &problems));
    }

    #[test]
    fn anchors_are_made_as_github_makes_them() {
        for (heading, anchor) in [
            ("The routing rule", "the-routing-rule"),
            ("`divert-proxy proxy`", "divert-proxy-proxy"),
            (
                "In a cluster: `divert install`, a label, `divert deploy`",
                "in-a-cluster-divert-install-a-label-divert-deploy",
            ),
            (
                "Operating the proxy: admin API, metrics, decision logs, tap, drain",
                "operating-the-proxy-admin-api-metrics-decision-logs-tap-drain",
            ),
            (
                "Today's figures (2026-12-01, commit `f519b58`)",
                "todays-figures-2026-12-01-commit-f519b58",
            ),
            ("A — B", "a--b"),
            ("[`names`](core/src/names.rs) and ports", "names-and-ports"),
            ("`snake_case` stays", "snake_case-stays"),
        ] {
            assert_eq!(github_anchor(heading), anchor, "{heading}");
        }
    }

    #[test]
    fn a_repeated_heading_gets_a_numbered_anchor() {
        let refs = references("# Results\n\n## Results\n\n### Results\n");
        let anchors: Vec<&str> = refs.anchors.iter().map(String::as_str).collect();
        assert_eq!(anchors, ["results", "results-1", "results-2"]);
    }

    #[test]
    fn code_blocks_and_code_spans_hide_links_and_headings() {
        let refs = references(
            "# Title\n\n```sh\n# not a heading\n[no](link.md)\n```\n\n\
             `[not](a-link.md)` and [a](real.md#title) over\n\
             [two](lines.md) and `a span\nover lines.rs`\n",
        );
        assert_eq!(
            refs.links,
            [(8, "real.md#title".to_owned()), (9, "lines.md".to_owned())]
        );
        assert_eq!(
            refs.spans,
            [
                (8, "[not](a-link.md)".to_owned()),
                (9, "a span over lines.rs".to_owned())
            ]
        );
        assert_eq!(refs.anchors, BTreeSet::from(["title".to_owned()]));
    }

    #[test]
    fn paths_in_backticks_are_told_from_other_code() {
        let path = |s| path_reference(s).map(|r| (r.path, r.lines));
        assert_eq!(path("proxy/src/http.rs"), Some(("proxy/src/http.rs", None)));
        assert_eq!(path("kubelet.rs"), Some(("kubelet.rs", None)));
        assert_eq!(
            path("proxy/src/http.rs:120"),
            Some(("proxy/src/http.rs", Some((120, 120))))
        );
        assert_eq!(path("a/b.rs:3-9"), Some(("a/b.rs", Some((3, 9)))));
        assert_eq!(path("deploy/Dockerfile"), Some(("deploy/Dockerfile", None)));
        assert_eq!(path("tests/kube/"), Some(("tests/kube/", None)));
        for not_a_path in [
            "cargo test -p divert-tests",
            "divert.dev/",
            "h1/",
            "/var/run/secrets/divert.dev/serviceaccount",
            "fuzz/artifacts/<target>/",
            "*.rs",
            "divert_proxy::run",
            "https://example.com/a.md",
            "10.0.0.0/8",
            "table_version",
            ".proto",
        ] {
            assert_eq!(path(not_a_path), None, "{not_a_path}");
        }
    }

    /// The checks fail when a reference breaks: a repository made for the
    /// test, with one good and one broken reference of each kind.
    #[test]
    fn a_broken_reference_is_reported_with_its_file_and_its_line() {
        let dir = crate::TempDir::new("docs-check");
        let root = dir.path();
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(root.join("src/lib.rs"), "one\ntwo\nthree\n").unwrap();
        std::fs::write(root.join("README.md"), "# Top\n\n## Part one\n").unwrap();
        std::fs::write(
            root.join("docs/page.md"),
            "# Page\n\n\
             [fine](../README.md#part-one), [fine](#page), `src/lib.rs:3`, `lib.rs`\n\
             [gone](../NOPE.md) and [no heading](../README.md#part-two)\n\
             `src/lib.rs:4` then `src/main.rs` then `main.rs`\n\
             [self](#nowhere) [out](../../etc/passwd) `okteto.yml`\n\
             `bench/results/` and `bench/results/2026/summary.md`, which a clean clone lacks\n",
        )
        .unwrap();
        let repo = Repository::read(root);
        let show = |ps: Vec<Problem>| -> Vec<String> {
            ps.iter()
                .map(|p| format!("{}:{}: {}", p.file, p.line, p.reference))
                .collect()
        };
        assert_eq!(
            show(repo.link_problems()),
            [
                "docs/page.md:4: ../NOPE.md",
                "docs/page.md:4: ../README.md#part-two",
                "docs/page.md:6: #nowhere",
                "docs/page.md:6: ../../etc/passwd",
            ]
        );
        assert_eq!(
            show(repo.path_problems()),
            [
                "docs/page.md:5: src/lib.rs:4",
                "docs/page.md:5: src/main.rs",
                "docs/page.md:5: main.rs",
            ]
        );
        let message = repo.path_problems()[0].to_string();
        assert!(
            message.starts_with(
                "docs/page.md:5: `src/lib.rs:4` is past the end of src/lib.rs (3 lines)"
            ),
            "{message}"
        );
    }
}
