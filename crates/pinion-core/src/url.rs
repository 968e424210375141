//! What Pinion needs to know about URLs it is given (CI run links, webhook
//! targets) without a URL library: whether the authority carries
//! credentials, and which addresses a webhook may not reach.

use std::net::{IpAddr, Ipv4Addr};

/// Whether an address is inside the network a server runs in rather than
/// out on the internet: loopback, private (RFC 1918), link-local (cloud
/// metadata services live there), unspecified, unique-local, or "this
/// network" (`0.0.0.0/8`). An IPv4 address written as IPv6 (`::ffff:…`,
/// `::…`) is judged as the IPv4 address it is. A webhook never reaches one
/// unless the operator allows it: it would be a request forged from inside.
pub fn is_internal_address(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                // fc00::/7, unique local.
                || (first & 0xfe00) == 0xfc00
                // fe80::/10, link-local.
                || (first & 0xffc0) == 0xfe80
                // ::a.b.c.d, IPv4-compatible (deprecated, still routed to v4
                // by some stacks).
                || (v6.segments()[..6].iter().all(|s| *s == 0)
                    && internal_v4(Ipv4Addr::from_bits(
                        u32::try_from(v6.to_bits() & 0xffff_ffff).unwrap_or_default(),
                    )))
        }
    }
}

fn internal_v4(v4: Ipv4Addr) -> bool {
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.octets()[0] == 0
}

/// Whether `input`, read as `scheme://authority/…`, has a `userinfo@` part
/// in its authority. Anything that is not shaped like that has none.
pub(crate) fn has_credentials(input: &str) -> bool {
    let Some((_, rest)) = input.split_once("://") else {
        return false;
    };
    let authority_end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    rest[..authority_end].contains('@')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_told_from_public_ones() {
        for internal in [
            "127.0.0.1",
            "127.8.9.10",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
        ] {
            let address: IpAddr = internal.parse().unwrap();
            assert!(is_internal_address(address), "{internal}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            let address: IpAddr = public.parse().unwrap();
            assert!(!is_internal_address(address), "{public}");
        }
    }

    #[test]
    fn credentials_are_found_only_in_the_authority() {
        for with in [
            "https://user:pw@ci.example.com/run/1",
            "https://token@ci.example.com",
            "http://a:b@c?x",
            "https://u@h\\path",
        ] {
            assert!(has_credentials(with), "{with}");
        }
        for without in [
            "https://ci.example.com/run/1",
            "https://ci.example.com/users/@me",
            "https://ci.example.com/?mail=a@b",
            "https://ci.example.com/#a@b",
            "no scheme@here",
        ] {
            assert!(!has_credentials(without), "{without}");
        }
    }
}
