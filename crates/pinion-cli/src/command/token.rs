//! `pinion token create|list|revoke`: tokens written straight into the
//! database. A running server picks the change up within its reload
//! interval. Only the secret's SHA-256 is stored.

use anyhow::{Context, bail};
use pinion_core::{Scope, TemplateName, TokenName};
use pinion_server::token;
use pinion_store::NewToken;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::template::{open_existing, open_or_create};
use crate::cli::{Format, TokenCommand};
use crate::output;

pub fn run(command: TokenCommand) -> anyhow::Result<()> {
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
            let mut store = open_or_create(&database.database)?;
            let secret = token::generate()
                .map_err(|err| anyhow::anyhow!("the system random source failed: {err}"))?;
            store.create_token(&NewToken {
                name: name.clone(),
                scope,
                templates,
                secret_hash: secret.hash,
                created_at: OffsetDateTime::now_utc(),
                created_by: None,
                expires_at: None,
            })?;
            if !output::line(&secret.secret) {
                bail!(
                    "the secret could not be written to stdout; token `{name}` was created, revoke it"
                );
            }
            eprintln!(
                "created token `{name}` with scope `{scope}`; the secret above is shown only once"
            );
            Ok(())
        }
        TokenCommand::List { format, database } => {
            let mut store = open_existing(&database.database)?;
            let tokens = store.tokens()?;
            #[derive(Serialize)]
            struct Listed {
                name: String,
                scope: &'static str,
                templates: Option<Vec<String>>,
                created_at: String,
                revoked_at: Option<String>,
            }
            let time = |at: OffsetDateTime| at.format(&Rfc3339).unwrap_or_else(|_| at.to_string());
            let listed: Vec<Listed> = tokens
                .iter()
                .map(|token| Listed {
                    name: token.name.to_string(),
                    scope: token.scope.as_str(),
                    templates: token
                        .templates
                        .as_ref()
                        .map(|names| names.iter().map(ToString::to_string).collect()),
                    created_at: time(token.created_at),
                    revoked_at: token.revoked_at.map(time),
                })
                .collect();
            match format {
                Format::Json => {
                    output::json(&serde_json::json!({ "tokens": listed }));
                }
                Format::Human => {
                    let mut open = output::line(&format!(
                        "{:<24} {:<8} {:<24} {:<28} status",
                        "name", "scope", "templates", "created"
                    ));
                    for token in &listed {
                        open = open
                            && output::line(&format!(
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
                            ));
                    }
                }
            }
            Ok(())
        }
        TokenCommand::Revoke { name, database } => {
            let name = TokenName::parse(&name).context("token name")?;
            let mut store = open_existing(&database.database)?;
            if !store.revoke_token(&name, OffsetDateTime::now_utc())? {
                bail!("no active token named `{name}`");
            }
            eprintln!("revoked token `{name}`");
            Ok(())
        }
    }
}
