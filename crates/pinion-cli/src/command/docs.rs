//! The CLI's own documentation: shell completions and man pages, both made
//! from the clap definitions, so they cannot drift from the flags.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::ExitCode;
use crate::cli::Cli;

/// `pinion completions SHELL`: the script on stdout.
pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "pinion", &mut script);
    if crate::output::bytes(&script) {
        ExitCode::Success
    } else {
        ExitCode::Error
    }
}

/// `pinion man-pages DIR`: `pinion.1` and one page per subcommand
/// (`pinion-serve.1`, `pinion-token-create.1`, …).
pub fn man_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let command = Cli::command().name("pinion");
    write_pages(&command, "pinion", dir)
}

fn write_pages(command: &clap::Command, name: &str, dir: &Path) -> anyhow::Result<()> {
    let page = command.clone().name(name.to_owned());
    let mut roff = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut roff)
        .with_context(|| format!("rendering the man page of `{name}`"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, roff).with_context(|| format!("writing {}", path.display()))?;
    for sub in command.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}
