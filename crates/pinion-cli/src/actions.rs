//! GitHub Actions and Gitea Actions integration: `::error::` annotations,
//! step outputs in `$GITHUB_OUTPUT`, and Markdown in `$GITHUB_STEP_SUMMARY`.
//! Outside those runners every function does nothing. What to write is the
//! caller's business (see `report`); this module only knows the runner.

use std::io::Write;

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

/// Prints `::error::MESSAGE` on stderr (runners read commands from both
/// streams; stdout stays clean for `--format json`).
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

/// Appends Markdown to `$GITHUB_STEP_SUMMARY`.
pub fn write_summary(markdown: &str) {
    append("GITHUB_STEP_SUMMARY", markdown);
}

/// A value for a Markdown table cell.
pub fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_workflow_command_data() {
        assert_eq!(escape("50% done\r\nnext"), "50%25 done%0D%0Anext");
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
