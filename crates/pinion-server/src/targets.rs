//! Where a webhook may point. Unless the operator allows private targets
//! (`--webhook-allow-private`), a webhook never reaches an address inside
//! the server's network (loopback, private, link-local, unspecified,
//! unique-local: see [`pinion_core::is_internal_address`]). The URL is
//! checked when it is set (an IP literal, however it is written, and
//! `localhost`), and every connection is checked on the address it
//! actually goes to: names are resolved by [`PublicOnly`], which hands
//! the connector only the public addresses, so a name that resolves
//! inside later (DNS rebinding) is refused at delivery.

use std::net::{IpAddr, SocketAddr};

use pinion_core::{WebhookUrl, is_internal_address};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a target is refused, in words for the caller.
pub fn refused(url: &WebhookUrl) -> Option<String> {
    let Ok(parsed) = reqwest::Url::parse(url.as_str()) else {
        return Some("the URL does not parse".to_owned());
    };
    // The parser writes every form of an IPv4 address (`2130706433`,
    // `0x7f.1`) as its dotted quad, and IPv6 in brackets.
    let Some(host) = parsed.host_str() else {
        return Some("the URL has no host".to_owned());
    };
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(address) = literal.parse::<IpAddr>() {
        return internal(address);
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    (name == "localhost" || name.ends_with(".localhost"))
        .then(|| format!("`{name}` is this machine"))
}

fn internal(address: IpAddr) -> Option<String> {
    is_internal_address(address).then(|| {
        format!("{address} is a loopback, private, link-local, unique-local or unspecified address")
    })
}

/// Resolves names as the system does, keeping only public addresses.
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|address| !is_internal_address(address.ip()))
                .collect();
            if public.is_empty() {
                let why = if found.is_empty() {
                    format!("`{host}` resolves to no address")
                } else {
                    format!(
                        "`{host}` resolves only to internal addresses; private webhook targets are not allowed on this server"
                    )
                };
                return Err(why.into());
            }
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_targets_are_refused_however_they_are_written() {
        for url in [
            "http://127.0.0.1:8080/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0.0.0.0/",
            "http://localhost/",
            "http://LOCALHOST./",
            "http://api.localhost/",
            "http://10.1.2.3/",
            "http://[fd00::1]/",
            "http://[::ffff:7f00:1]/",
        ] {
            let parsed = WebhookUrl::parse(url).unwrap();
            assert!(refused(&parsed).is_some(), "{url}");
        }
        for url in ["https://hooks.example.com/x", "http://93.184.216.34/"] {
            let parsed = WebhookUrl::parse(url).unwrap();
            assert_eq!(refused(&parsed), None, "{url}");
        }
    }
}
