//! Other environments' servers, read for the page's columns (`--peer
//! NAME=URL`, each with its read token in `PINION_PEER_TOKEN_<NAME>`). A
//! poller reads every peer's pins, drift report and fleet every few
//! seconds; the page shows the last reading, or, when the newest attempt
//! failed, that the peer is unreachable and when it was last seen. A peer
//! that cannot be read is never shown as an environment without pins.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use pinion_api::status::Environment;
use pinion_api::{DriftReport, FleetList, PinList};
use time::OffsetDateTime;

/// How often every peer is read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// How long one read of a peer may take.
const READ_TIMEOUT: Duration = Duration::from_secs(4);

/// Another environment's server.
#[derive(Clone)]
pub struct Peer {
    /// The environment's name, as its columns are headed.
    pub name: String,
    /// Its base URL.
    pub url: reqwest::Url,
    /// A `read` token for it; never printed.
    pub token: Option<String>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Peer")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Peer {
    /// A peer's name: 1 to 32 of `a-z A-Z 0-9 _ -`, so that its token's
    /// variable, `PINION_PEER_TOKEN_<NAME>` (upper case, `-` as `_`), is a
    /// name a shell can set.
    pub fn parse_name(name: &str) -> Result<String, String> {
        let valid = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            Ok(name.to_owned())
        } else {
            Err(format!(
                "peer name `{}` must be 1 to 32 of A-Z a-z 0-9 _ -",
                name.escape_debug()
            ))
        }
    }

    /// The variable that holds this peer's token.
    pub fn token_variable(name: &str) -> String {
        format!(
            "PINION_PEER_TOKEN_{}",
            name.to_ascii_uppercase().replace('-', "_")
        )
    }
}

/// What the page knows of one peer.
#[derive(Debug, Clone)]
pub struct PeerReading {
    pub name: String,
    pub url: String,
    /// The newest successful reading, and when it was made.
    pub last: Option<(Arc<Environment>, OffsetDateTime)>,
    /// Why the newest attempt failed; none when it succeeded (or none was
    /// made yet).
    pub error: Option<String>,
    /// Whether any attempt has finished.
    pub attempted: bool,
}

impl PeerReading {
    /// The environment, when the newest attempt reached it.
    pub fn reached(&self) -> Option<Arc<Environment>> {
        match (&self.last, &self.error, self.attempted) {
            (Some((environment, _)), None, true) => Some(environment.clone()),
            _ => None,
        }
    }

    /// When the peer last answered.
    pub fn last_seen(&self) -> Option<OffsetDateTime> {
        self.last.as_ref().map(|(_, at)| *at)
    }
}

/// Every peer's reading, in the order they were named.
#[derive(Debug, Default)]
pub struct Peers {
    readings: RwLock<Vec<PeerReading>>,
}

impl Peers {
    pub fn new(peers: &[Peer]) -> Peers {
        Peers {
            readings: RwLock::new(
                peers
                    .iter()
                    .map(|peer| PeerReading {
                        name: peer.name.clone(),
                        url: peer.url.to_string(),
                        last: None,
                        error: None,
                        attempted: false,
                    })
                    .collect(),
            ),
        }
    }

    pub fn readings(&self) -> Vec<PeerReading> {
        self.readings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, index: usize, result: Result<Environment, String>) {
        let mut readings = self
            .readings
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(reading) = readings.get_mut(index) else {
            return;
        };
        reading.attempted = true;
        match result {
            Ok(environment) => {
                reading.last = Some((Arc::new(environment), crate::clock::now()));
                reading.error = None;
            }
            Err(error) => reading.error = Some(error),
        }
    }
}

/// Reads every peer now, then every [`POLL_INTERVAL`]; runs until aborted.
pub async fn poll(peers: Vec<Peer>, readings: Arc<Peers>) {
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(READ_TIMEOUT)
        .user_agent(concat!("pinion/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "could not make the peers' HTTP client; peers are shown unreachable");
            for index in 0..peers.len() {
                readings.record(index, Err(format!("no HTTP client: {err}")));
            }
            return;
        }
    };
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // Every peer at once: an unreachable one costs one timeout, not one
        // per peer.
        let mut reads = tokio::task::JoinSet::new();
        for (index, peer) in peers.iter().enumerate() {
            let (client, peer) = (client.clone(), peer.clone());
            reads.spawn(async move { (index, read(&client, &peer).await) });
        }
        while let Some(joined) = reads.join_next().await {
            let Ok((index, result)) = joined else {
                continue;
            };
            if let (Err(error), Some(peer)) = (&result, peers.get(index)) {
                tracing::warn!(peer = %peer.name, error = %error, "could not read a peer");
            }
            readings.record(index, result);
        }
    }
}

async fn read(client: &reqwest::Client, peer: &Peer) -> Result<Environment, String> {
    let (pins, drift, fleet) = tokio::join!(
        get::<PinList>(client, peer, "cp/admin/runtime-image"),
        get::<DriftReport>(client, peer, "cp/admin/runtime-image/drift"),
        get::<FleetList>(client, peer, "cp/fleet"),
    );
    Ok(Environment {
        pins: pins?.pins,
        drift: drift?,
        fleet: fleet?.fleet,
    })
}

async fn get<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    peer: &Peer,
    path: &str,
) -> Result<T, String> {
    let url = peer
        .url
        .join(path)
        .map_err(|err| format!("{path}: {err}"))?;
    let mut request = client.get(url);
    if let Some(token) = &peer.token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|err| format!("{path}: {}", crate::error::chain(&err)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{path}: HTTP {status}"));
    }
    crate::capped::json::<T>(response, crate::capped::ANSWER_LIMIT)
        .await
        .map_err(|err| format!("{path}: {err}"))
}
