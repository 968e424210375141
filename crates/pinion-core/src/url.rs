//! What Pinion needs to know about URLs it is given (CI run links, later
//! webhook targets) without a URL library: whether the authority carries
//! credentials.

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
