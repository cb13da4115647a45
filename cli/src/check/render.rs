//! The report: text for people (one line per check, hints below failures)
//! or JSON for tools.

use serde::Serialize;

use super::{CheckResult, exit_status};

/// One line per check (`✔`, `‼` for a pass with a warning, or `✘`, and its
/// name), what was found indented below it, a `hint:` line for each way to
/// fix a failure or a warning, and a summary.
pub fn render_text(results: &[CheckResult]) -> String {
    let mut out = String::new();
    for r in results {
        out.push_str(match (r.passed, r.warning) {
            (true, false) => "✔ ",
            (true, true) => "‼ ",
            (false, _) => "✘ ",
        });
        out.push_str(r.name);
        out.push('\n');
        for d in &r.detail {
            out.push_str("    ");
            out.push_str(d);
            out.push('\n');
        }
        for h in &r.hint {
            out.push_str("    hint: ");
            out.push_str(h);
            out.push('\n');
        }
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    out.push('\n');
    let warned = results.iter().filter(|r| r.warning).count();
    if failed == 0 && warned > 0 {
        out.push_str(&format!(
            "All {} checks passed; {warned} with a warning (‼).\n",
            results.len()
        ));
    } else if failed == 0 {
        out.push_str(&format!("All {} checks passed.\n", results.len()));
    } else {
        out.push_str(&format!("{failed} of {} checks failed.\n", results.len()));
    }
    out
}

#[derive(Serialize)]
struct JsonReport<'a> {
    namespace: &'a str,
    passed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    checks: &'a [CheckResult],
}

/// `{"namespace", "passed", "checks": [{"id", "name", "passed", "detail",
/// "hint"}]}`, and `"warning": true` on a check that passed with one.
pub fn render_json(install_ns: &str, results: &[CheckResult]) -> String {
    json(&JsonReport {
        namespace: install_ns,
        passed: exit_status(results) == 0,
        error: None,
        checks: results,
    })
}

/// The JSON report when the cluster could not be reached: no checks, an `error`.
pub fn render_json_error(install_ns: &str, error: &str) -> String {
    json(&JsonReport {
        namespace: install_ns,
        passed: false,
        error: Some(error),
        checks: &[],
    })
}

fn json(report: &JsonReport) -> String {
    // Strings, booleans and lists only: serializing cannot fail.
    serde_json::to_string_pretty(report).unwrap_or_default()
}
