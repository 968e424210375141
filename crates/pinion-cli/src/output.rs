//! Writing to stdout without panicking: `println!` panics when the reader
//! went away (`pinion history | head -1`). Data goes to stdout through
//! here; a closed pipe ends the output quietly.

use std::io::Write;

/// Writes `text` and a newline to stdout. Returns false when stdout is
/// closed or failing, so the caller can stop producing output.
pub fn line(text: &str) -> bool {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Ok(()) => true,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => false,
        Err(err) => {
            eprintln!("error: could not write to stdout: {err}");
            false
        }
    }
}

/// Writes a JSON document, pretty-printed, on stdout.
pub fn json(value: &impl serde::Serialize) -> bool {
    match serde_json::to_string_pretty(value) {
        Ok(text) => line(&text),
        Err(err) => {
            eprintln!("error: could not render the report: {err}");
            false
        }
    }
}

/// Writes bytes as they are to stdout.
pub fn bytes(data: &[u8]) -> bool {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(data).and_then(|()| stdout.flush()) {
        Ok(()) => true,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => false,
        Err(err) => {
            eprintln!("error: could not write to stdout: {err}");
            false
        }
    }
}

/// A warning on stderr: the step goes on, a person should look.
pub fn warn(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "warning: {text}");
}
