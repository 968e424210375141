//! `pinion digest`: what an image reference points at, from the registry;
//! and the registry settings every registry-facing command shares.

use std::path::PathBuf;
use std::time::Duration;

use pinion_registry::{Credentials, ImageName, Platform, Registry, RegistrySettings};

use crate::ExitCode;
use crate::cli::{DigestArgs, RegistryArgs};
use crate::output;

/// Registry settings from flags and the docker config file.
pub fn settings(args: &RegistryArgs) -> Result<RegistrySettings, String> {
    if args.registry_timeout == 0 || args.registry_timeout > 600 {
        return Err("--registry-timeout must be from 1 to 600 seconds".into());
    }
    let credentials =
        Credentials::from_first_file(credential_files()).map_err(|err| err.to_string())?;
    Ok(RegistrySettings {
        timeout: Duration::from_secs(args.registry_timeout),
        insecure_hosts: args
            .insecure_registries
            .iter()
            .map(|host| host.trim().to_owned())
            .filter(|host| !host.is_empty())
            .collect(),
        credentials,
        ..RegistrySettings::default()
    })
}

/// Where `docker login`, `skopeo login` and `podman login` keep
/// credentials, in the order they are looked for.
fn credential_files() -> Vec<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    [
        var("REGISTRY_AUTH_FILE").map(PathBuf::from),
        var("DOCKER_CONFIG").map(|dir| PathBuf::from(dir).join("config.json")),
        var("HOME").map(|home| PathBuf::from(home).join(".docker/config.json")),
    ]
    .into_iter()
    .flatten()
    .collect()
}

pub async fn run(args: DigestArgs) -> ExitCode {
    match resolve(&args).await {
        Ok(digest) => {
            output::line(&digest);
            ExitCode::Success
        }
        Err(reason) => {
            eprintln!("error: {reason}");
            ExitCode::Error
        }
    }
}

async fn resolve(args: &DigestArgs) -> Result<String, String> {
    let image = ImageName::parse(&args.image).map_err(|err| format!("image: {err}"))?;
    let platform = args
        .platform
        .as_deref()
        .map(Platform::parse)
        .transpose()
        .map_err(|err| format!("--platform: {err}"))?;
    let registry = Registry::new(settings(&args.registry)?).map_err(|err| err.to_string())?;
    let manifest = registry
        .manifest(&image.repository, &image.reference)
        .await
        .map_err(|err| err.to_string())?;
    match platform {
        None => Ok(manifest.digest.to_string()),
        Some(platform) => manifest
            .platform_digest(&platform)
            .map_err(|err| format!("`{image}`: {err}"))?
            .map(|digest| digest.to_string())
            .ok_or_else(|| format!("`{image}` has no manifest for platform `{platform}`")),
    }
}
