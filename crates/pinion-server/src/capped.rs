//! Answers this server reads from other servers (the page's peers, the
//! soak source) are read to at most [`ANSWER_LIMIT`] bytes, streaming: a
//! compromised or broken neighbour cannot make this server hold more.

/// The most of one answer that is read (the contract's figure).
pub const ANSWER_LIMIT: usize = 8 * 1024 * 1024;

/// Reads a JSON answer of at most `limit` bytes and decodes it; a larger
/// one is an error as soon as it is seen to be larger.
pub async fn json<T: serde::de::DeserializeOwned>(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<T, String> {
    let too_large = || format!("the answer is larger than {} MiB", limit / (1024 * 1024));
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| err.without_url().to_string())?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|err| format!("the answer does not decode: {err}"))
}
