//! GitHub Actions and Gitea Actions integration: `::error::` annotations,
//! step outputs in `$GITHUB_OUTPUT`, and a Markdown step summary in
//! `$GITHUB_STEP_SUMMARY`. Outside those runners every function does nothing.

use std::io::Write;

use crate::gate::Report;

pub fn in_actions() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| value == "true");
    set("GITHUB_ACTIONS") || set("GITEA_ACTIONS")
}

/// Workflow commands end at a newline; `%`, CR and LF must be escaped.
fn escape(message: &str) -> String {
    message
        .replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Prints `::error::MESSAGE` on stderr (runners read commands from both streams;
/// stdout stays clean for `--format json`).
pub fn error_annotation(message: &str) {
    if in_actions() {
        eprintln!("::error::{}", escape(message));
    }
}

fn append(variable: &str, text: &str) {
    if !in_actions() {
        return;
    }
    let Some(path) = std::env::var_os(variable).filter(|path| !path.is_empty()) else {
        return;
    };
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .and_then(|mut file| file.write_all(text.as_bytes()));
    if let Err(err) = written {
        eprintln!("warning: could not append to ${variable}: {err}");
    }
}

/// Appends `key=value` lines to `$GITHUB_OUTPUT`. Values are single-line.
pub fn write_output(pairs: &[(&str, String)]) {
    let mut text = String::new();
    for (key, value) in pairs {
        let value: String = value.chars().filter(|c| *c != '\n' && *c != '\r').collect();
        text.push_str(&format!("{key}={value}\n"));
    }
    append("GITHUB_OUTPUT", &text);
}

/// Appends a Markdown table of the outcome at each target.
pub fn write_summary(command: &str, report: &Report) {
    let mut text = format!(
        "### pinion {command}: `{}`/`{}` → `{}`: {}\n\n| target | outcome | detail |\n|---|---|---|\n",
        report.template_name,
        report.region,
        report.image_digest.as_deref().unwrap_or("(previous)"),
        if report.ok { "ok" } else { "FAILED" }
    );
    for target in &report.targets {
        let detail = target
            .error
            .as_deref()
            .unwrap_or(target.server.as_str())
            .replace('|', "\\|");
        text.push_str(&format!(
            "| {} | {} | {} |\n",
            target.target, target.outcome, detail
        ));
    }
    text.push('\n');
    append("GITHUB_STEP_SUMMARY", &text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_workflow_command_data() {
        assert_eq!(escape("50% done\r\nnext"), "50%25 done%0D%0Anext");
    }
}
