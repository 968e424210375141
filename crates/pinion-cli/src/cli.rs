//! The command line, as clap parses it. Nothing here does IO: `main` turns
//! these into settings and runs one function per subcommand.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Pinion: which exact image each runtime template runs, and proof of it.
#[derive(Debug, Parser)]
#[command(name = "pinion", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control-plane HTTP service.
    Serve(ServeArgs),
    /// Create, list and revoke API tokens directly in the database.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Change the template catalog directly in the database.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Move a pin on one or more control planes; succeed only if it moved.
    Promote(PromoteArgs),
    /// Read pins back; succeed only if each equals the expected digest.
    Verify(VerifyArgs),
    /// Move a pin back to a digest it had before.
    Rollback(RollbackArgs),
    /// Hold a pin: promotions to it are refused until it is released.
    Hold(HoldArgs),
    /// Release a pin's hold.
    Release(ReleaseArgs),
    /// Show who moved which pin, when, from what, newest first.
    History(HistoryArgs),
    /// Print the manifest digest an image reference points at, alone on stdout.
    Digest(DigestArgs),
    /// Compare every pin with what its repository's tag points at now.
    Drift(DriftArgs),
    /// Follow the change feed: print events as they happen, resuming after
    /// the last one printed whenever the connection drops.
    Watch(WatchArgs),
    /// Print every image reference a registry clean-up must keep, one per
    /// line: pinned, run by a live instance, or recent in a pin's history.
    Retention(RetentionArgs),
    /// Every pin of every target side by side: digest, age, who moved it,
    /// drift and fleet as each server sees them, and what disagrees. Exit 1
    /// when something is stale, behind or disagrees.
    Status(StatusArgs),
    /// Print a shell completion script: `pinion completions bash >
    /// /etc/bash_completion.d/pinion`.
    Completions(CompletionsArgs),
    /// Write a man page for `pinion` and each subcommand into a directory
    /// (what `cargo xtask man` runs).
    #[command(hide = true)]
    ManPages(ManPagesArgs),
    /// Print the API's OpenAPI description, as `GET /openapi.json` serves it
    /// (what `cargo xtask openapi` writes to `docs/openapi.json`).
    #[command(hide = true)]
    Openapi,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManPagesArgs {
    /// The directory to write `pinion.1`, `pinion-serve.1`, … into.
    pub dir: std::path::PathBuf,
}

/// How to reach registries.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Reach this registry (`host:port`) over plain HTTP (loopback ones always are). Repeatable.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST",
        env = "PINION_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// Seconds each registry request may take.
    #[arg(
        long = "registry-timeout",
        value_name = "SECONDS",
        env = "PINION_REGISTRY_TIMEOUT",
        default_value_t = 20
    )]
    pub registry_timeout: u64,
}

#[derive(Debug, Args)]
pub struct DigestArgs {
    /// `repository[:tag]` or `repository@sha256:…`.
    pub image: String,
    /// For a multi-platform image, the platform's manifest (`os/arch[/variant]`).
    #[arg(long)]
    pub platform: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct DriftArgs {
    /// The tag every pin is compared with.
    #[arg(long, default_value = "latest")]
    pub tag: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct DatabaseArg {
    /// Database URL, e.g. `sqlite://pinion.db`.
    #[arg(
        long,
        env = "PINION_DATABASE_URL",
        default_value = "sqlite://pinion.db"
    )]
    pub database: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "PINION_LISTEN", default_value = "127.0.0.1:7878")]
    pub listen: String,
    #[command(flatten)]
    pub database: DatabaseArg,
    /// Check that a promoted digest exists in the template's registry:
    /// `off`, `warn` or `require`.
    #[arg(long, env = "PINION_REGISTRY_CHECK", default_value = "require")]
    pub registry_check: String,
    /// Seconds a request may take before it is answered with 408.
    #[arg(long, env = "PINION_REQUEST_TIMEOUT", default_value_t = 30)]
    pub request_timeout: u64,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// How often the drift watcher checks every pin's tag: `300`, `30s`, `5m`, `500ms`.
    #[arg(long, env = "PINION_DRIFT_INTERVAL", default_value = "5m")]
    pub drift_interval: String,
    /// The tag the drift watcher compares pins with.
    #[arg(long, env = "PINION_DRIFT_TAG", default_value = "latest")]
    pub drift_tag: String,
    /// `strict`: every read first checks the database's change counter, so a
    /// write acknowledged by any replica is seen at once (reads fail while
    /// the database is down). `fast`: reads are answered from memory; other
    /// replicas' writes arrive within milliseconds. `auto`: strict on
    /// PostgreSQL (replicas), fast on SQLite (one server).
    #[arg(long, env = "PINION_READ_CONSISTENCY", default_value = "auto", value_parser = ["auto", "fast", "strict"])]
    pub read_consistency: String,
    /// Refuse promotions that carry no `git_sha` and `ci_run_url`.
    #[arg(long, env = "PINION_REQUIRE_PROVENANCE", default_value_t = false, action = clap::ArgAction::Set, value_name = "true|false")]
    pub require_provenance: bool,
    /// How many refused writes the audit log keeps, of each class (those of
    /// valid tokens; failed authentications, summarised per source).
    #[arg(long, env = "PINION_AUDIT_RETENTION", default_value_t = 10_000)]
    pub audit_retention: usize,
    /// Make a new, empty database when there is none at `--database`. Set
    /// `false` in production units, so a wrong path or a lost volume stops
    /// the server instead of starting it afresh with no pins.
    #[arg(long, env = "PINION_CREATE_DATABASE", default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub create_database: bool,
    /// Require a token (scope `read`) on `/metrics`; a template-restricted
    /// token then sees only its templates' series.
    #[arg(long, env = "PINION_METRICS_TOKEN_REQUIRED", default_value_t = false, action = clap::ArgAction::Set, value_name = "true|false")]
    pub metrics_token_required: bool,
    /// The file of the key webhook secrets are sealed with (64 hex digits).
    /// Default with SQLite: `<database>.key` beside the database, made on
    /// first start. With PostgreSQL there is no default: give every replica
    /// the same file, or webhooks cannot be made.
    #[arg(long, env = "PINION_SECRET_KEY_FILE", value_name = "PATH")]
    pub secret_key_file: Option<std::path::PathBuf>,
    /// The waits between webhook delivery attempts; after the last, a
    /// delivery is `failed`.
    #[arg(
        long,
        env = "PINION_WEBHOOK_RETRY_SCHEDULE",
        default_value = "5s,5m,30m,2h,5h,10h,10h",
        value_name = "DURATION,..."
    )]
    pub webhook_retry_schedule: String,
    /// Events are kept at least this long…
    #[arg(
        long,
        env = "PINION_EVENT_RETENTION_AGE",
        default_value = "7d",
        value_name = "DURATION"
    )]
    pub event_retention_age: String,
    /// …and at least this many of the newest, whichever keeps more.
    #[arg(
        long,
        env = "PINION_EVENT_RETENTION_COUNT",
        default_value_t = 100_000,
        value_name = "N"
    )]
    pub event_retention_count: u32,
    /// A pin whose fleet is still behind this long after the pin moved is
    /// `stalled` (and a `fleet.stalled` event says so).
    #[arg(
        long,
        env = "PINION_PROGRESS_DEADLINE",
        default_value = "10m",
        value_name = "DURATION"
    )]
    pub progress_deadline: String,
    /// `NAME=URL`: refuse promotions of digests that have not soaked on this
    /// environment's server first (its `read` token in `PINION_SOAK_TOKEN`).
    #[arg(long, env = "PINION_SOAK_SOURCE", value_name = "NAME=URL")]
    pub soak_source: Option<String>,
    /// How long a digest must have run on the soak source's pin.
    #[arg(
        long,
        env = "PINION_SOAK",
        default_value = "24h",
        value_name = "DURATION"
    )]
    pub soak: String,
    /// Abort a canary (and hold its pin) when the unhealthy share of the
    /// instances running it exceeds the stable instances' by more than PCT
    /// points. Unset: canaries are never aborted for their health.
    #[arg(long, env = "PINION_CANARY_MAX_UNHEALTHY", value_name = "PCT")]
    pub canary_max_unhealthy: Option<f64>,
    /// The fewest live instances running a canary that the health rule
    /// decides on: with fewer, it decides nothing.
    #[arg(
        long,
        env = "PINION_CANARY_MIN_REPORTS",
        default_value_t = 20,
        value_name = "N"
    )]
    pub canary_min_reports: u64,
    /// Threads answering HTTP. Default: one per CPU core but one (at least
    /// one), leaving a core to the writer thread, the kernel's network work
    /// and database checks (see docs/benchmarks.md for the measurements).
    #[arg(long, env = "PINION_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Serve HTTPS with this certificate chain (PEM); it is read again when
    /// the file changes or on SIGHUP. Needs `--tls-key`.
    #[arg(
        long,
        env = "PINION_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(
        long,
        env = "PINION_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,
    /// What the page (`/ui`) calls this server's environment, heading its
    /// column group.
    #[arg(
        long,
        env = "PINION_ENVIRONMENT",
        default_value = "this server",
        value_name = "NAME"
    )]
    pub environment: String,
    /// Another environment's server, shown beside this one on the page
    /// (repeatable). Its `read` token goes in `PINION_PEER_TOKEN_<NAME>`
    /// (NAME upper-cased, `-` as `_`), never on the command line.
    #[arg(long = "peer", value_name = "NAME=URL")]
    pub peers: Vec<String>,
    /// How long a page session lasts; it ends sooner when its token is
    /// revoked or expires, or on sign-out.
    #[arg(
        long,
        env = "PINION_SESSION_LIFETIME",
        default_value = "12h",
        value_name = "DURATION"
    )]
    pub session_lifetime: String,
    /// The regions pins may be in, comma-separated (e.g.
    /// `global,us-east-2,eu-west-1`): a pin, canary or hold elsewhere is
    /// refused with `unknown_region`. Unset: any region, and a promotion
    /// that creates a region's first pin says so.
    #[arg(long, env = "PINION_REGIONS", value_name = "REGION,...")]
    pub regions: Option<String>,
    /// The most instances the fleet holds (live, and silent but not yet
    /// forgotten): a report of new instances past it is refused whole with
    /// `429 fleet_full`. About 400 bytes of memory an instance.
    #[arg(
        long,
        env = "PINION_FLEET_MAX_INSTANCES",
        default_value_t = 200_000,
        value_name = "N"
    )]
    pub fleet_max_instances: usize,
    /// The most instances one reporting token may have in the fleet.
    /// Unset: no limit beyond the total.
    #[arg(long, env = "PINION_FLEET_MAX_INSTANCES_PER_TOKEN", value_name = "N")]
    pub fleet_max_instances_per_token: Option<usize>,
    /// The most event streams (`/cp/events` as a stream, the page's live
    /// updates) one token may hold open; one more is `429 too_many_streams`.
    #[arg(
        long,
        env = "PINION_MAX_STREAMS_PER_TOKEN",
        default_value_t = 64,
        value_name = "N"
    )]
    pub max_streams_per_token: usize,
    /// Let webhooks point at loopback, private (RFC 1918), link-local,
    /// unique-local or unspecified addresses. Off: such a URL is refused
    /// when set, and never connected to (checked on the address connected
    /// to, so a name that resolves there later is refused too).
    #[arg(long, env = "PINION_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set, value_name = "true|false")]
    pub webhook_allow_private: bool,
    /// Failed authentications one source (an IPv4 address, an IPv6 /64) may
    /// make at once before it is answered `429 too_many_auth_failures`; one
    /// more is allowed each second after. Raise it only for a trusted
    /// client that is meant to fail often (an API fuzzer).
    #[arg(
        long,
        env = "PINION_AUTH_FAILURE_BURST",
        default_value_t = 20,
        value_name = "N"
    )]
    pub auth_failure_burst: u32,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (and only the secret) on stdout.
    Create {
        /// The token's name; it is what `promoted_by` records.
        #[arg(long)]
        name: String,
        /// `read`, `report`, `promote` or `admin` (each implies the ones
        /// before it; `report` is for provisioners and instances).
        #[arg(long)]
        scope: String,
        /// Restrict the token to this template (repeatable).
        #[arg(long = "template")]
        templates: Vec<String>,
        #[command(flatten)]
        database: DatabaseArg,
    },
    /// List tokens (names, scopes, restrictions; never secrets).
    List {
        /// `human` (lines for people) or `json` (one document, for scripts).
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        #[command(flatten)]
        database: DatabaseArg,
    },
    /// Revoke the active token of that name.
    Revoke {
        /// The token's name (never its secret).
        name: String,
        #[command(flatten)]
        database: DatabaseArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Add or change a catalog entry.
    Add {
        /// The template's name, e.g. `codex`.
        name: String,
        /// The repository images of this template are pushed to.
        #[arg(long)]
        repository: String,
        /// Refuse promotions of this template.
        #[arg(long)]
        not_pinnable: bool,
        #[command(flatten)]
        database: DatabaseArg,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// How to talk to control planes: shared by [`Remote`] and [`OneRemote`].
#[derive(Debug, Clone, Args)]
pub struct Access {
    /// The environment variable holding the token for `--server`.
    #[arg(long, value_name = "VAR", default_value = "PINION_TOKEN")]
    pub token_env: String,
    /// Seconds each request may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
    /// Allow plain `http://` to a host that is not loopback.
    #[arg(long)]
    pub allow_insecure_http: bool,
    /// Trust this CA (a PEM file) for `https://` servers, beside the
    /// built-in roots: for control planes with a private CA.
    #[arg(long, env = "PINION_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// `human` (lines for people) or `json` (one document, for scripts).
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

/// Where to send a request and how.
#[derive(Debug, Args)]
pub struct Remote {
    /// The control plane's base URL (default: `PINION_SERVER`, when no
    /// `--target` is given).
    #[arg(long, conflicts_with = "targets")]
    pub server: Option<String>,
    /// `NAME=URL` (repeatable); the token comes from `PINION_TOKEN_<NAME>`.
    #[arg(long = "target", value_name = "NAME=URL")]
    pub targets: Vec<String>,
    #[command(flatten)]
    pub access: Access,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// Template name, e.g. `codex`.
    #[arg(long)]
    pub template: String,
    /// The manifest digest, `sha256:` and 64 lowercase hex digits.
    #[arg(long)]
    pub digest: String,
    /// Region; `global` is the default and the fallback.
    #[arg(long, default_value = "global")]
    pub region: String,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// The commit the image was built from.
    #[arg(long)]
    pub git_sha: Option<String>,
    /// A note kept with the pin.
    #[arg(long)]
    pub notes: Option<String>,
    /// Compare-and-swap: move only if the pin is at this digest now.
    #[arg(long, value_name = "DIGEST")]
    pub expect: Option<String>,
    /// A CI run number or similar; an older build than the pin's is refused.
    #[arg(long, value_name = "N")]
    pub build_sequence: Option<i64>,
    /// Override the build-sequence guard.
    #[arg(long)]
    pub force: bool,
    /// Link to the CI run (default in Actions: this run's URL).
    #[arg(long, value_name = "URL")]
    pub ci_run_url: Option<String>,
    /// Source repository (default in Actions: `$GITHUB_REPOSITORY`).
    #[arg(long, value_name = "OWNER/NAME")]
    pub source_repository: Option<String>,
    /// Workflow name (default in Actions: `$GITHUB_WORKFLOW`).
    #[arg(long, value_name = "NAME")]
    pub workflow: Option<String>,
    /// Keep the pin's canary standing (by default a promotion of another
    /// digest than the canary's ends it, so every instance moves).
    #[arg(long)]
    pub keep_canary: bool,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The template whose pin moves back.
    #[arg(long)]
    pub template: String,
    /// The pin's region.
    #[arg(long, default_value = "global")]
    pub region: String,
    /// The digest to return to (default: the one before the current one).
    #[arg(long, value_name = "DIGEST")]
    pub to: Option<String>,
    /// Why: kept in the pin's history (and the hold's reason, with
    /// `--hold` and no `--reason`).
    #[arg(long)]
    pub notes: Option<String>,
    /// Hold the pin in the same step, so no pipeline moves it off again
    /// until it is released.
    #[arg(long)]
    pub hold: bool,
    /// Why it is held (with `--hold`; default: the notes).
    #[arg(long, requires = "hold")]
    pub reason: Option<String>,
    /// Keep the pin's canary standing (by default a move to another digest
    /// than the canary's ends it).
    #[arg(long)]
    pub keep_canary: bool,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct HoldArgs {
    /// The template whose pin is held.
    #[arg(long)]
    pub template: String,
    /// The pin's region.
    #[arg(long, default_value = "global")]
    pub region: String,
    /// Why: shown on the pin and in every refused promotion.
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The template whose pin's hold is released.
    #[arg(long)]
    pub template: String,
    /// The pin's region.
    #[arg(long, default_value = "global")]
    pub region: String,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this template's entries (default: every template the token
    /// may see).
    #[arg(long)]
    pub template: Option<String>,
    /// Only this region's entries.
    #[arg(long)]
    pub region: Option<String>,
    /// How many entries, newest first (1 to 1000).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    #[command(flatten)]
    pub remote: OneRemote,
}

/// One control plane, for commands that read one (`history`).
#[derive(Debug, Args)]
pub struct OneRemote {
    /// The control plane's base URL (default: `PINION_SERVER`, when no
    /// `--target` is given).
    #[arg(long, conflicts_with = "target")]
    pub server: Option<String>,
    /// `NAME=URL` (once); the token comes from `PINION_TOKEN_<NAME>`.
    #[arg(long, value_name = "NAME=URL")]
    pub target: Option<String>,
    #[command(flatten)]
    pub access: Access,
}

impl OneRemote {
    /// The same, as the general form target parsing takes.
    pub fn to_remote(&self) -> Remote {
        Remote {
            server: self.server.clone(),
            targets: self.target.iter().cloned().collect(),
            access: self.access.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only this template's events.
    #[arg(long)]
    pub template: Option<String>,
    /// Only events of this type (repeatable), e.g. `pin.promoted`.
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Start after this event id (default: only what happens from now on).
    #[arg(long, value_name = "ID")]
    pub after: Option<i64>,
    #[command(flatten)]
    pub remote: OneRemote,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// After the pin check, wait until at least this percent of the live
    /// instances the pin governs run its digest (and one at least does).
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub converged: Option<u8>,
    /// How long `--converged` waits: `30s`, `10m`, `1h`.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10m",
        requires = "converged"
    )]
    pub wait: String,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct RetentionArgs {
    /// Keep the digests of each pin's newest N history entries too.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub history: u32,
    #[command(flatten)]
    pub remote: OneRemote,
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every subcommand and every flag says what it is for, in `--help`
    /// and in the man pages made from it.
    #[test]
    fn every_flag_and_subcommand_has_help() {
        let mut missing = Vec::new();
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (the subcommand)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let command = Cli::command();
        command.clone().debug_assert();
        walk(&command, "pinion", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:#?}");
    }
}
