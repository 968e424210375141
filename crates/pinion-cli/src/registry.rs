//! `pinion digest`: what an image reference points at, from the registry.

use std::time::Duration;

use pinion_registry::{Credentials, ImageName, Platform, Registry, RegistrySettings};

use crate::ExitCode;
use crate::cli::{DigestArgs, RegistryArgs};

/// Registry settings from flags and the docker config file.
pub fn settings(args: &RegistryArgs) -> Result<RegistrySettings, String> {
    if args.registry_timeout == 0 || args.registry_timeout > 600 {
        return Err("--registry-timeout must be from 1 to 600 seconds".into());
    }
    let credentials = Credentials::from_environment().map_err(|err| err.to_string())?;
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

pub async fn digest(args: DigestArgs) -> ExitCode {
    match resolve(&args).await {
        Ok(digest) => {
            println!("{digest}");
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
