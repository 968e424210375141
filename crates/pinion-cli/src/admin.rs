//! Offline administration: tokens and catalog entries written straight into
//! the database. A running server picks the change up within its reload
//! interval.

use anyhow::{Context, bail};
use pinion_core::{Repository, Scope, TemplateName, TokenName};
use pinion_server::token;
use pinion_store::{DatabaseUrl, NewToken, RuntimeRecord, Store};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cli::{Format, TemplateCommand, TokenCommand};

fn open(url: &str) -> anyhow::Result<Store> {
    let url = DatabaseUrl::parse(url)?;
    Store::open(&url).context("could not open the database")
}

pub fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            name,
            scope,
            templates,
            database,
        } => {
            let name = TokenName::parse(&name).context("--name")?;
            let scope = Scope::parse(&scope).context("--scope")?;
            let templates = if templates.is_empty() {
                None
            } else {
                Some(
                    templates
                        .iter()
                        .map(|template| TemplateName::parse(template))
                        .collect::<Result<Vec<_>, _>>()
                        .context("--template")?,
                )
            };
            let mut store = open(&database.database)?;
            let secret = token::generate()
                .map_err(|err| anyhow::anyhow!("the system random source failed: {err}"))?;
            store.create_token(&NewToken {
                name: name.clone(),
                scope,
                templates,
                secret_hash: secret.hash,
                created_at: OffsetDateTime::now_utc(),
            })?;
            println!("{}", secret.secret);
            eprintln!(
                "created token `{name}` with scope `{scope}`; the secret above is shown only once"
            );
            Ok(())
        }
        TokenCommand::List { format, database } => {
            let mut store = open(&database.database)?;
            let tokens = store.tokens()?;
            #[derive(Serialize)]
            struct Listed {
                name: String,
                scope: &'static str,
                templates: Option<Vec<String>>,
                created_at: String,
                revoked_at: Option<String>,
            }
            let listed: Vec<Listed> = tokens
                .iter()
                .map(|token| Listed {
                    name: token.name.to_string(),
                    scope: token.scope.as_str(),
                    templates: token
                        .templates
                        .as_ref()
                        .map(|names| names.iter().map(ToString::to_string).collect()),
                    created_at: token.created_at.format(&Rfc3339).unwrap_or_default(),
                    revoked_at: token.revoked_at.and_then(|at| at.format(&Rfc3339).ok()),
                })
                .collect();
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "tokens": listed }))?
                ),
                Format::Human => {
                    println!(
                        "{:<24} {:<8} {:<24} {:<28} status",
                        "name", "scope", "templates", "created"
                    );
                    for token in &listed {
                        println!(
                            "{:<24} {:<8} {:<24} {:<28} {}",
                            token.name,
                            token.scope,
                            token
                                .templates
                                .as_ref()
                                .map_or("(all)".to_owned(), |names| names.join(",")),
                            token.created_at,
                            token
                                .revoked_at
                                .as_ref()
                                .map_or("active".to_owned(), |at| format!("revoked {at}"))
                        );
                    }
                }
            }
            Ok(())
        }
        TokenCommand::Revoke { name, database } => {
            let name = TokenName::parse(&name).context("token name")?;
            let mut store = open(&database.database)?;
            if !store.revoke_token(&name, OffsetDateTime::now_utc())? {
                bail!("no active token named `{name}`");
            }
            eprintln!("revoked token `{name}`");
            Ok(())
        }
    }
}

pub fn template(command: TemplateCommand) -> anyhow::Result<()> {
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
            let mut store = open(&database.database)?;
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
