//! `pinion template add`: a catalog entry written straight into the
//! database (the offline twin of `PUT /cp/admin/runtimes/{name}`), and how
//! offline commands open the database.

use anyhow::Context;
use pinion_core::{Repository, TemplateName};
use pinion_store::{DatabaseUrl, RuntimeRecord, Store};
use time::OffsetDateTime;

use crate::cli::TemplateCommand;

/// Opens a database that must exist: reads and revocations do not quietly
/// make a new, empty one at a mistyped path.
pub fn open_existing(url: &str) -> anyhow::Result<Store> {
    let url = DatabaseUrl::parse(url)?;
    Store::open_existing(&url).context(
        "could not open the database (give --database or PINION_DATABASE_URL; `pinion template add` creates one)",
    )
}

/// Opens a database, creating it if absent, and says so on stderr.
pub fn open_or_create(url: &str) -> anyhow::Result<Store> {
    let url = DatabaseUrl::parse(url)?;
    let new = url.is_missing();
    let store = Store::open(&url).context("could not open the database")?;
    if let (true, Some(path)) = (new, url.sqlite_path()) {
        eprintln!("created new database `{}`", path.display());
    }
    Ok(store)
}

pub fn run(command: TemplateCommand) -> anyhow::Result<()> {
    match command {
        TemplateCommand::Add {
            name,
            repository,
            not_pinnable,
            database,
        } => {
            let runtime = RuntimeRecord {
                name: TemplateName::parse(&name).context("template name")?,
                repository: Some(Repository::parse(&repository).context("--repository")?),
                pinnable: !not_pinnable,
            };
            let mut store = open_or_create(&database.database)?;
            let created = store.put_runtime(&runtime, OffsetDateTime::now_utc())?;
            eprintln!(
                "{} template `{}` with repository `{}`",
                if created { "added" } else { "updated" },
                runtime.name,
                repository
            );
            Ok(())
        }
    }
}
