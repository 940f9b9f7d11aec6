//! Configuration from the environment. [`SETTINGS`] is the one list of variables, defaults and
//! meanings: parsing reads its defaults and `chatd --help` prints it.

use std::fmt::Display;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::hub::SocketLimits;

pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

const fn setting(name: &'static str, default: &'static str, help: &'static str) -> Setting {
    Setting {
        name,
        default,
        help,
    }
}

pub const SETTINGS: &[Setting] = &[
    setting("HOST", "0.0.0.0", "address to listen on"),
    setting(
        "PORT",
        "8080",
        "HTTP and WebSocket port (0 picks a free one)",
    ),
    setting(
        "METRICS_PORT",
        "",
        "serve /metrics on its own port instead of the main one",
    ),
    setting(
        "DATA_DIR",
        "./data",
        "the embedded store, the local outbox and the development secret",
    ),
    setting(
        "JWT_SECRET",
        "",
        "HS256 secret; unset: a development secret is generated once in DATA_DIR",
    ),
    setting(
        "JWT_PUBLIC_KEY",
        "",
        "an identity service's public key (PEM text, or @/path/key.pem): RS256/ES256 tokens instead of HS256",
    ),
    setting(
        "JWKS_URL",
        "",
        "an identity service's JWKS document: RS256/ES256 tokens, keys chosen by kid, cached",
    ),
    setting("JWT_ISSUER", "", "when set, a token's iss must be this"),
    setting(
        "JWT_AUDIENCE",
        "",
        "when set, a token's aud must include this",
    ),
    setting(
        "MONGO_URI",
        "",
        "MongoDB connection string; unset: the embedded store in DATA_DIR",
    ),
    setting("MONGO_DB", "chatdb", "MongoDB database"),
    setting(
        "MONGO_COLLECTION",
        "messages",
        "MongoDB collection of messages",
    ),
    setting(
        "MONGO_DEAD_LETTER_COLLECTION",
        "dead_letters",
        "MongoDB collection of messages that spent every attempt",
    ),
    setting(
        "STORE_TIMEOUT",
        "10s",
        "a store call taking longer counts as the store being unavailable (1ms to 1day)",
    ),
    setting(
        "ADMIN_TOKEN",
        "",
        "bearer token for /admin/*; unset: the admin API is off (404)",
    ),
    setting(
        "INSTANCE_ID",
        "",
        "this instance's name in dead letters; unset: hostname:pid",
    ),
    setting(
        "CONNECTIONS_REQUIRE_AUTH",
        "false",
        "require a JWT on POST /api/connections (the original left it open)",
    ),
    setting(
        "RATE_LIMIT_RPS",
        "5",
        "per-user token bucket refill rate on /api/* (0: no limit; else 0.001 to 1000000)",
    ),
    setting(
        "RATE_LIMIT_BURST",
        "10",
        "per-user token bucket size on /api/* (1 to 1000000)",
    ),
    setting(
        "MAX_BODY_BYTES",
        "65536",
        "largest request body; larger: 413 (1024 to 67108864)",
    ),
    setting(
        "MAX_MESSAGE_BYTES",
        "4096",
        "largest message content in bytes; larger: 413 (1 to MAX_BODY_BYTES)",
    ),
    setting(
        "MAX_PARTICIPANTS",
        "100",
        "most participants in a channel; more: 400 (1 to 10000)",
    ),
    setting(
        "RETRY_ATTEMPTS",
        "5",
        "persistence attempts before a message is dead-lettered (1 to 1000)",
    ),
    setting(
        "RETRY_BASE_MS",
        "100",
        "first retry delay; it doubles per attempt, with jitter (1 to RETRY_MAX_MS)",
    ),
    setting(
        "RETRY_MAX_MS",
        "30000",
        "longest retry delay (RETRY_BASE_MS to 86400000, a day)",
    ),
    setting(
        "RELAY_WORKERS",
        "4",
        "batches written to the store at once (1 to 1024)",
    ),
    setting(
        "RELAY_BATCH_SIZE",
        "256",
        "most messages in one store write (1 to 10000)",
    ),
    setting(
        "OUTBOX_QUEUE",
        "8192",
        "sends waiting for the outbox's next commit; beyond it: 503 (1 to 1048576)",
    ),
    setting(
        "IDEMPOTENCY_WINDOW",
        "24h",
        "how long an Idempotency-Key on POST /api/messages answers with its first message",
    ),
    setting(
        "BUS_CAPACITY",
        "4096",
        "events the fan-out may fall behind by before it skips (every socket is then closed with 4009 and recovers with since; 1 to 1048576)",
    ),
    setting(
        "MAX_SOCKETS_PER_USER",
        "16",
        "sockets one user may have open; beyond it the upgrade is refused with 429 (1 to 100000)",
    ),
    setting(
        "MAX_CONNECTIONS",
        "50000",
        "sockets open in all; beyond it the upgrade is refused with 503 (1 to 10000000; must fit ulimit -n, see README)",
    ),
    setting(
        "RECOVERY_LIMIT",
        "1000",
        "most missed messages /ws?since=<id> replays; beyond it the client is told to page history (1 to 100000)",
    ),
    setting(
        "RECOVERY_CONCURRENCY",
        "2",
        "reconnect recoveries read and replayed at once; an upgrade that waits more than a second for its turn gets 503 (1 to 1024)",
    ),
    setting(
        "WS_SEND_QUEUE_BYTES",
        "4194304",
        "bytes of frames queued per socket (4 MiB); beyond it a stalled socket is closed with 4008, a reading one with 4009 (1024 to 1073741824)",
    ),
    setting(
        "WS_STALL_TIMEOUT",
        "10s",
        "a socket whose queue is full and whose writer made no progress for this long is a slow consumer (4008; 100ms to 24h)",
    ),
    setting(
        "WS_MAX_INBOUND_BYTES",
        "65536",
        "largest frame a client may send (1 to 16777216)",
    ),
    setting(
        "WS_PING_INTERVAL",
        "30s",
        "how often sockets are pinged (10ms to 1day)",
    ),
    setting(
        "WS_PONG_TIMEOUT",
        "60s",
        "a socket whose last pong is this old is closed (checked at each ping; more than WS_PING_INTERVAL, at most 1day)",
    ),
    setting(
        "CORS_ALLOWED_ORIGINS",
        "",
        "web origins allowed to call chatd, comma-separated (https://app.example.com); unset: none",
    ),
    setting(
        "TLS_CERT",
        "",
        "PEM certificate chain: serve HTTPS and WSS (with TLS_KEY); unset: plain HTTP",
    ),
    setting("TLS_KEY", "", "PEM private key for TLS_CERT"),
    setting(
        "HTTP_HEADER_TIMEOUT",
        "10s",
        "a connection that has not sent a request's headers by then is closed (1ms to 1day)",
    ),
    setting(
        "HTTP_REQUEST_TIMEOUT",
        "30s",
        "a request not answered by then (a body trickling in, say) gets 408 (1ms to 1day)",
    ),
    setting(
        "HTTP_MAX_CONNECTIONS",
        "",
        "TCP connections open in all, WebSockets included; beyond it a new one gets 503 and is closed; unset: MAX_CONNECTIONS plus room for requests (must fit ulimit -n)",
    ),
    setting(
        "HTTP_MAX_PENDING_PER_CLIENT",
        "64",
        "connections one client address may hold that have gone 1 s without a whole request head (slowloris); beyond it: 503 (1 to 100000)",
    ),
    setting(
        "SHUTDOWN_TIMEOUT",
        "10s",
        "how long shutdown waits for the outbox to drain; the rest waits for the next start (0s to 1day)",
    ),
    setting("RUST_LOG", "info", "log filter, e.g. chatd=debug,info"),
    setting(
        "LOG_FORMAT",
        "pretty",
        "log lines as 'pretty' text or 'json'",
    ),
];

#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    /// `None`: `/metrics` is on the main port.
    pub metrics_port: Option<u16>,
    pub data_dir: PathBuf,
    pub jwt_secret: Option<String>,
    pub identity: Identity,
    pub store: StoreSettings,
    pub admin_token: Option<String>,
    pub instance_id: String,
    pub connections_require_auth: bool,
    pub recovery_limit: u32,
    /// Most reconnect recoveries read and replayed at once.
    pub recovery_concurrency: usize,
    pub rate_limit: RateLimit,
    pub limits: Limits,
    pub relay: RelaySettings,
    pub outbox_queue: usize,
    /// How long an idempotency key answers with its first message.
    pub idempotency_window: Duration,
    pub bus_capacity: usize,
    pub socket: SocketSettings,
    pub shutdown_timeout: Duration,
    pub http: HttpSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Certificate chain and key files; `None`: plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub allowed_origins: Vec<String>,
    /// Open TCP connections in all, WebSockets included; `None`: fitted at start from
    /// `MAX_CONNECTIONS` and the file-descriptor limit ([`crate::fds`]).
    pub max_connections: Option<usize>,
    /// Connections from one address that have not sent a whole request head yet.
    pub max_pending_per_client: usize,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub filter: String,
    pub json: bool,
}

/// Where the keys that verify tokens come from.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub public_key: Option<String>,
    pub jwks_url: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `None`: the embedded SQLite store in `DATA_DIR`.
    pub mongo: Option<MongoSettings>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct MongoSettings {
    pub uri: String,
    pub database: String,
    pub messages: String,
    pub dead_letters: String,
}

#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_message_bytes: usize,
    pub max_participants: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    pub workers: usize,
    pub batch_size: usize,
    pub retry_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct SocketSettings {
    pub limits: SocketLimits,
    /// `MAX_CONNECTIONS` was set rather than defaulted: when the file descriptors cannot hold
    /// it, start-up refuses instead of lowering it.
    pub total_is_explicit: bool,
    /// Most bytes of frames queued for one socket.
    pub queue_bytes: usize,
    /// How long a full queue's writer may make no progress before its socket is evicted.
    pub stall_timeout: Duration,
    pub max_inbound_bytes: usize,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {reason}")]
pub struct ConfigError {
    name: &'static str,
    value: String,
    reason: String,
}

impl ConfigError {
    pub fn new(name: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            name,
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// The longest any duration setting may be: far beyond any sensible timeout or interval, and
/// short enough that adding it to an `Instant` can never overflow.
pub const LONGEST: Duration = Duration::from_secs(24 * 60 * 60);
/// An idempotency key may answer for up to a year.
const LONGEST_KEY_WINDOW: Duration = Duration::from_secs(366 * 24 * 60 * 60);
const LONGEST_MS: u64 = 24 * 60 * 60 * 1000;
/// The shortest timeout: below it every request or store call would time out.
const SHORTEST_TIMEOUT: Duration = Duration::from_millis(1);
/// The shortest ping interval: shorter is a ping flood, not a keep-alive.
const SHORTEST_PING: Duration = Duration::from_millis(10);
/// The most items a queue may hold: the bus allocates its whole ring at start, and every other
/// queue holds its items in memory.
const LARGEST_QUEUE: usize = 1 << 20;
/// The largest request body (64 MiB): bodies are read whole into memory.
const LARGEST_BODY: usize = 64 << 20;
/// A non-zero `RATE_LIMIT_RPS` must be at least this (one request per 1,000 s), so waiting for a
/// token is a duration that fits; and at most [`FASTEST_RATE`].
const SLOWEST_RATE: f64 = 0.001;
const FASTEST_RATE: f64 = 1_000_000.0;

impl RateLimit {
    /// No limit at all (`RATE_LIMIT_RPS=0`).
    pub fn is_off(&self) -> bool {
        self.per_second == 0.0
    }

    /// How long the bucket takes to earn `tokens` (at most a full bucket); nothing when the limit
    /// is off. The configured ranges keep it under 32 years, so it always fits a `Duration`.
    pub fn time_to_earn(&self, tokens: f64) -> Duration {
        if self.is_off() {
            return Duration::ZERO;
        }
        let tokens = tokens.clamp(0.0, f64::from(self.burst));
        Duration::from_secs_f64(tokens / self.per_second)
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the configuration from any source of variables; an unset or empty variable takes
    /// its default from [`SETTINGS`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars(&lookup);
        let config = Self {
            host: vars.parse("HOST")?,
            port: vars.parse("PORT")?,
            metrics_port: match vars.optional("METRICS_PORT") {
                Some(_) => Some(vars.parse("METRICS_PORT")?),
                None => None,
            },
            data_dir: PathBuf::from(vars.text("DATA_DIR")),
            jwt_secret: vars.optional("JWT_SECRET"),
            identity: Identity {
                public_key: vars.optional("JWT_PUBLIC_KEY"),
                jwks_url: vars.optional("JWKS_URL"),
                issuer: vars.optional("JWT_ISSUER"),
                audience: vars.optional("JWT_AUDIENCE"),
            },
            store: StoreSettings {
                mongo: vars.optional("MONGO_URI").map(|uri| MongoSettings {
                    uri,
                    database: vars.text("MONGO_DB"),
                    messages: vars.text("MONGO_COLLECTION"),
                    dead_letters: vars.text("MONGO_DEAD_LETTER_COLLECTION"),
                }),
                timeout: vars.duration_in("STORE_TIMEOUT", SHORTEST_TIMEOUT..=LONGEST)?,
            },
            admin_token: vars.optional("ADMIN_TOKEN"),
            instance_id: vars
                .optional("INSTANCE_ID")
                .unwrap_or_else(default_instance_id),
            connections_require_auth: vars.parse("CONNECTIONS_REQUIRE_AUTH")?,
            recovery_limit: vars.number("RECOVERY_LIMIT", 1..=100_000)?,
            recovery_concurrency: vars.number("RECOVERY_CONCURRENCY", 1..=1024)?,
            rate_limit: RateLimit {
                per_second: vars.parse_where(
                    "RATE_LIMIT_RPS",
                    |v: &f64| *v == 0.0 || (SLOWEST_RATE..=FASTEST_RATE).contains(v),
                    format_args!("expected 0 (no limit) or {SLOWEST_RATE} to {FASTEST_RATE}"),
                )?,
                burst: vars.number("RATE_LIMIT_BURST", 1..=1_000_000)?,
            },
            limits: Limits {
                max_body_bytes: vars.number("MAX_BODY_BYTES", 1024..=LARGEST_BODY)?,
                max_message_bytes: vars.number("MAX_MESSAGE_BYTES", 1..=LARGEST_BODY)?,
                max_participants: vars.number("MAX_PARTICIPANTS", 1..=10_000)?,
            },
            relay: RelaySettings {
                workers: vars.number("RELAY_WORKERS", 1..=1024)?,
                batch_size: vars.number("RELAY_BATCH_SIZE", 1..=10_000)?,
                retry_attempts: vars.number("RETRY_ATTEMPTS", 1..=1000)?,
                retry_base: Duration::from_millis(vars.number("RETRY_BASE_MS", 1..=LONGEST_MS)?),
                retry_max: Duration::from_millis(vars.number("RETRY_MAX_MS", 1..=LONGEST_MS)?),
            },
            outbox_queue: vars.number("OUTBOX_QUEUE", 1..=LARGEST_QUEUE)?,
            idempotency_window: vars.duration_in(
                "IDEMPOTENCY_WINDOW",
                Duration::from_secs(1)..=LONGEST_KEY_WINDOW,
            )?,
            bus_capacity: vars.number("BUS_CAPACITY", 1..=LARGEST_QUEUE)?,
            socket: SocketSettings {
                limits: SocketLimits {
                    per_user: vars.number("MAX_SOCKETS_PER_USER", 1..=100_000)?,
                    total: vars.number("MAX_CONNECTIONS", 1..=10_000_000)?,
                },
                total_is_explicit: vars.is_set("MAX_CONNECTIONS"),
                queue_bytes: vars.number("WS_SEND_QUEUE_BYTES", 1024..=1 << 30)?,
                stall_timeout: vars
                    .duration_in("WS_STALL_TIMEOUT", Duration::from_millis(100)..=LONGEST)?,
                max_inbound_bytes: vars.number("WS_MAX_INBOUND_BYTES", 1..=16 << 20)?,
                ping_interval: vars.duration_in("WS_PING_INTERVAL", SHORTEST_PING..=LONGEST)?,
                pong_timeout: vars.duration_in("WS_PONG_TIMEOUT", SHORTEST_PING..=LONGEST)?,
            },
            shutdown_timeout: vars.duration_in("SHUTDOWN_TIMEOUT", Duration::ZERO..=LONGEST)?,
            http: HttpSettings {
                tls: match (vars.optional("TLS_CERT"), vars.optional("TLS_KEY")) {
                    (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
                    (None, None) => None,
                    (cert, _) => {
                        return Err(ConfigError {
                            name: if cert.is_some() {
                                "TLS_KEY"
                            } else {
                                "TLS_CERT"
                            },
                            value: String::new(),
                            reason: "TLS_CERT and TLS_KEY go together".into(),
                        });
                    }
                },
                header_timeout: vars
                    .duration_in("HTTP_HEADER_TIMEOUT", SHORTEST_TIMEOUT..=LONGEST)?,
                request_timeout: vars
                    .duration_in("HTTP_REQUEST_TIMEOUT", SHORTEST_TIMEOUT..=LONGEST)?,
                allowed_origins: allowed_origins(&vars)?,
                max_connections: match vars.optional("HTTP_MAX_CONNECTIONS") {
                    Some(_) => Some(vars.number("HTTP_MAX_CONNECTIONS", 1..=10_000_000)?),
                    None => None,
                },
                max_pending_per_client: vars.number("HTTP_MAX_PENDING_PER_CLIENT", 1..=100_000)?,
            },
            log: LogSettings {
                filter: log_filter(&vars)?,
                json: match vars.text("LOG_FORMAT").as_str() {
                    "json" => true,
                    "pretty" => false,
                    other => {
                        return Err(ConfigError {
                            name: "LOG_FORMAT",
                            value: other.into(),
                            reason: "expected 'pretty' or 'json'".into(),
                        });
                    }
                },
            },
        };
        if config.identity.public_key.is_some() && config.identity.jwks_url.is_some() {
            return Err(ConfigError {
                name: "JWKS_URL",
                value: config.identity.jwks_url.unwrap_or_default(),
                reason: "set JWT_PUBLIC_KEY or JWKS_URL, not both".into(),
            });
        }
        config.check_relations(&vars)?;
        Ok(config)
    }

    /// What no single range can say: settings that only make sense together.
    fn check_relations(&self, vars: &Vars<'_>) -> Result<(), ConfigError> {
        let refuse = |name, reason: &str| Err(ConfigError::new(name, vars.text(name), reason));
        if self.relay.retry_max < self.relay.retry_base {
            return refuse("RETRY_MAX_MS", "must not be less than RETRY_BASE_MS");
        }
        if self.limits.max_message_bytes > self.limits.max_body_bytes {
            return refuse(
                "MAX_MESSAGE_BYTES",
                "must not be more than MAX_BODY_BYTES: a message that large could never arrive",
            );
        }
        // The pong watch runs at each ping, and the first ping comes one interval after the
        // upgrade: a timeout not above the interval would close every socket at its first ping.
        if self.socket.pong_timeout <= self.socket.ping_interval {
            return refuse("WS_PONG_TIMEOUT", "must be more than WS_PING_INTERVAL");
        }
        if let Some(metrics) = self.metrics_port
            && metrics != 0
            && metrics == self.port
        {
            return refuse("METRICS_PORT", "must differ from PORT");
        }
        if let Some(url) = &self.identity.jwks_url {
            let scheme = reqwest::Url::parse(url).map(|url| url.scheme().to_string());
            if !matches!(scheme.as_deref(), Ok("http" | "https")) {
                return refuse("JWKS_URL", "expected an http:// or https:// URL");
            }
        }
        Ok(())
    }

    /// `chatd --help`'s list of variables.
    pub fn help() -> String {
        let width = SETTINGS.iter().map(|s| s.name.len()).max().unwrap_or(0);
        let mut text = String::from("Environment (default in brackets):\n");
        for s in SETTINGS {
            let default = if s.default.is_empty() {
                "unset"
            } else {
                s.default
            };
            text.push_str(&format!("  {:width$}  {} [{default}]\n", s.name, s.help));
        }
        text
    }
}

struct Vars<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Vars<'_> {
    /// The variable is set, not left to its default.
    fn is_set(&self, name: &'static str) -> bool {
        (self.0)(name).is_some_and(|value| !value.is_empty())
    }

    fn optional(&self, name: &'static str) -> Option<String> {
        Some(self.text(name)).filter(|value| !value.is_empty())
    }

    fn text(&self, name: &'static str) -> String {
        match (self.0)(name) {
            Some(value) if !value.is_empty() => value,
            _ => default_of(name).to_string(),
        }
    }

    fn parse<T: FromStr>(&self, name: &'static str) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        let value = self.text(name);
        value.parse().map_err(|e: T::Err| ConfigError {
            name,
            reason: e.to_string(),
            value,
        })
    }

    /// A number within `range`.
    fn number<T>(&self, name: &'static str, range: RangeInclusive<T>) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display,
        T::Err: Display,
    {
        self.parse_where(
            name,
            |v| range.contains(v),
            format_args!("expected {} to {}", range.start(), range.end()),
        )
    }

    fn parse_where<T: FromStr>(
        &self,
        name: &'static str,
        valid: impl Fn(&T) -> bool,
        expected: impl Display,
    ) -> Result<T, ConfigError>
    where
        T::Err: Display,
    {
        let parsed = self.parse(name)?;
        if valid(&parsed) {
            Ok(parsed)
        } else {
            Err(ConfigError {
                name,
                value: self.text(name),
                reason: format!("out of range: {expected}"),
            })
        }
    }

    /// A duration within `range`.
    fn duration_in(
        &self,
        name: &'static str,
        range: RangeInclusive<Duration>,
    ) -> Result<Duration, ConfigError> {
        let value = self.text(name);
        match parse_duration(&value) {
            Ok(duration) if range.contains(&duration) => Ok(duration),
            Ok(_) => Err(ConfigError {
                name,
                value,
                reason: format!(
                    "out of range: expected {} to {}",
                    humantime::format_duration(*range.start()),
                    humantime::format_duration(*range.end())
                ),
            }),
            Err(reason) => Err(ConfigError {
                name,
                value,
                reason,
            }),
        }
    }
}

/// `CORS_ALLOWED_ORIGINS`: origins as browsers send them, `scheme://host[:port]`. Anything else
/// (a bare host, a path) would never match a browser's `Origin`, so it is refused rather than
/// silently ignored.
fn allowed_origins(vars: &Vars<'_>) -> Result<Vec<String>, ConfigError> {
    let text = vars.text("CORS_ALLOWED_ORIGINS");
    let mut origins = Vec::new();
    for origin in text
        .split(',')
        .map(|origin| origin.trim().trim_end_matches('/'))
        .filter(|origin| !origin.is_empty())
    {
        let url = reqwest::Url::parse(origin).ok().filter(|url| {
            matches!(url.scheme(), "http" | "https")
                && url.has_host()
                && url.username().is_empty()
                && url.password().is_none()
                && url.path() == "/"
                && url.query().is_none()
                && url.fragment().is_none()
        });
        let Some(url) = url else {
            return Err(ConfigError::new(
                "CORS_ALLOWED_ORIGINS",
                text.clone(),
                format!("{origin:?} is not an origin like https://app.example.com"),
            ));
        };
        // As browsers write it: lower case, no default port.
        origins.push(url.origin().ascii_serialization());
    }
    Ok(origins)
}

/// `RUST_LOG`, checked here so that a filter the log cannot use is a configuration error.
fn log_filter(vars: &Vars<'_>) -> Result<String, ConfigError> {
    let filter = vars.text("RUST_LOG");
    match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(_) => Ok(filter),
        Err(e) => Err(ConfigError::new("RUST_LOG", filter, e.to_string())),
    }
}

fn default_of(name: &str) -> &'static str {
    SETTINGS
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.default)
        .unwrap_or_else(|| panic!("{name} is missing from SETTINGS"))
}

/// `hostname:pid`, which tells apart instances on one host and restarts of one instance.
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "chatd".into());
    format!("{host}:{}", std::process::id())
}

/// A duration as `10s`, `1m30s`, `250ms`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(text).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = config(&[]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.jwt_secret, None);
        assert!(c.store.mongo.is_none());
        assert_eq!(c.admin_token, None);
        assert!(c.instance_id.ends_with(&format!(":{}", std::process::id())));
        assert_eq!(c.rate_limit.per_second, 5.0);
        assert_eq!(c.rate_limit.burst, 10);
        assert_eq!(c.limits.max_message_bytes, 4096);
        assert_eq!(c.limits.max_participants, 100);
        assert_eq!(c.limits.max_body_bytes, 65536);
        assert_eq!(c.relay.retry_attempts, 5);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.socket.ping_interval, Duration::from_secs(30));
        assert_eq!(c.socket.pong_timeout, Duration::from_secs(60));
    }

    #[test]
    fn every_setting_is_read_and_documented() {
        let every = SETTINGS.iter().map(|s| (s.name, s.default));
        let c = config(&every.collect::<Vec<_>>()).unwrap();
        assert_eq!(c.port, 8080);
        let help = Config::help();
        for s in SETTINGS {
            assert!(help.contains(s.name), "{} missing from help", s.name);
        }
    }

    #[test]
    fn mongo_settings_come_with_mongo_uri() {
        let c = config(&[
            ("MONGO_URI", "mongodb://db:27017"),
            ("MONGO_COLLECTION", "msgs"),
        ])
        .unwrap();
        let mongo = c.store.mongo.unwrap();
        assert_eq!(mongo.uri, "mongodb://db:27017");
        assert_eq!(
            (mongo.database.as_str(), mongo.messages.as_str()),
            ("chatdb", "msgs")
        );
        assert_eq!(mongo.dead_letters, "dead_letters");
    }

    #[test]
    fn empty_means_unset_and_bad_values_name_the_variable() {
        let c = config(&[("JWT_SECRET", ""), ("PORT", "")]).unwrap();
        assert_eq!(c.jwt_secret, None);
        assert_eq!(c.port, 8080);
        let err = config(&[("PORT", "eighty")]).unwrap_err().to_string();
        assert!(err.starts_with("PORT=\"eighty\""), "{err}");
        assert!(config(&[("RELAY_WORKERS", "0")]).is_err());
        assert!(config(&[("RATE_LIMIT_RPS", "-1")]).is_err());
    }

    #[test]
    fn every_range_refuses_what_would_break_the_server() {
        for (name, value) in [
            ("WS_PING_INTERVAL", "0"),
            ("WS_PING_INTERVAL", "1ns"),
            ("STORE_TIMEOUT", "0s"),
            ("HTTP_HEADER_TIMEOUT", "0"),
            ("HTTP_REQUEST_TIMEOUT", "0ms"),
            ("SHUTDOWN_TIMEOUT", "1000000000000s"),
            ("RATE_LIMIT_RPS", "1e-300"),
            ("RATE_LIMIT_RPS", "NaN"),
            ("RATE_LIMIT_RPS", "inf"),
            ("RATE_LIMIT_BURST", "4294967295"),
            ("BUS_CAPACITY", "9223372036854775807"),
            ("OUTBOX_QUEUE", "18446744073709551615"),
            ("WS_SEND_QUEUE_BYTES", "0"),
            ("WS_STALL_TIMEOUT", "0"),
            ("IDEMPOTENCY_WINDOW", "0"),
            ("RELAY_WORKERS", "100000000"),
            ("RETRY_MAX_MS", "18446744073709551615"),
            ("MAX_MESSAGE_BYTES", "70000"),
            ("HTTP_MAX_PENDING_PER_CLIENT", "0"),
            ("HTTP_MAX_CONNECTIONS", "0"),
            ("CORS_ALLOWED_ORIGINS", "app.example.com"),
            ("CORS_ALLOWED_ORIGINS", "https://app.example.com/path"),
            ("JWKS_URL", "file:///etc/passwd"),
            ("RUST_LOG", "chatd=loud"),
        ] {
            let err = config(&[(name, value)])
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("{name}=")),
                "{name}={value}: {err}"
            );
        }
        let err = config(&[("RETRY_BASE_MS", "500"), ("RETRY_MAX_MS", "100")])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not be less than RETRY_BASE_MS"), "{err}");
        let err = config(&[("WS_PING_INTERVAL", "60s")])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("WS_PONG_TIMEOUT="), "{err}");
        assert!(config(&[("METRICS_PORT", "8080")]).is_err());
        assert!(config(&[("PORT", "0"), ("METRICS_PORT", "0")]).is_ok());
        assert!(config(&[("SHUTDOWN_TIMEOUT", "0s")]).is_ok());
        assert!(config(&[("RATE_LIMIT_RPS", "0.001")]).is_ok());
    }

    #[test]
    fn origins_are_kept_as_browsers_send_them() {
        let c = config(&[(
            "CORS_ALLOWED_ORIGINS",
            "https://App.Example.com/, http://localhost:3000,https://x.example:443",
        )])
        .unwrap();
        assert_eq!(
            c.http.allowed_origins,
            [
                "https://app.example.com",
                "http://localhost:3000",
                "https://x.example"
            ]
        );
    }

    #[test]
    fn durations_take_units_or_bare_seconds() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }

    /// Values at and past every edge a setting can have: zero, one, negative, the limits of
    /// every integer type and beyond, floats from the denormal to the infinite, durations from
    /// a nanosecond to longer than a `Duration` holds, empty, blank and garbage.
    const EDGES: &[&str] = &[
        "0",
        "1",
        "-1",
        "2",
        "63",
        "64",
        "1023",
        "1024",
        "65535",
        "65536",
        "1048576",
        "1048577",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "340282366920938463463374607431768211456",
        "0.5",
        "0.001",
        "0.0009",
        "-0",
        "1e-300",
        "5e-324",
        "1e308",
        "-1e308",
        "NaN",
        "inf",
        "-inf",
        "0s",
        "1ns",
        "1ms",
        "9ms",
        "10ms",
        "1s",
        "59s",
        "1day",
        "25h",
        "18446744073709551615s",
        "584942417355y",
        "99999999999999999999y",
        "",
        " ",
        "garbage",
        "true",
        "false",
        "json",
        "pretty",
        "::1",
        "http://",
        "https://app.example.com",
        "https://app.example.com/path",
        "chatd=loud",
    ];

    fn edge() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            4 => proptest::sample::select(EDGES).prop_map(str::to_string),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            1 => any::<f64>().prop_map(|n| n.to_string()),
            1 => (any::<u32>(), proptest::sample::select(&["ns", "ms", "s", "h", "d", "y"][..]))
                .prop_map(|(n, unit)| format!("{n}{unit}")),
            1 => "\\PC{0,16}",
        ]
    }

    /// Builds what the server builds from a configuration and computes what it computes with
    /// it (timers, deadlines, queues, the rate limiter's waits, the file-descriptor fit), so that
    /// a configuration `from_lookup` accepts cannot panic a worker later.
    fn use_as_the_server_does(config: &Config) {
        use crate::fds::{self, Limit};
        use crate::http::RateLimiter;
        use crate::pipeline::relay::Backoff;

        static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        let runtime = RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
        });
        let _entered = runtime.enter();
        let now = tokio::time::Instant::now();
        // The socket task's ping timer (it panics on a zero period) and its first tick.
        let ping = config.socket.ping_interval;
        drop(tokio::time::interval_at(now + ping, ping));
        // Every deadline computed as now + a setting.
        for timeout in [
            config.socket.pong_timeout,
            config.idempotency_window,
            config.shutdown_timeout,
            config.store.timeout,
            config.http.header_timeout,
            config.http.request_timeout,
        ] {
            let _ = now + timeout;
            let _ = std::time::Instant::now() + timeout;
        }
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(config.http.header_timeout);
        // The relay's retries, up to the last attempt and beyond.
        let relay = config.relay;
        let backoff = Backoff::new(relay.retry_base, relay.retry_max);
        for failures in [1, relay.retry_attempts, u32::MAX] {
            let _ = now + backoff.delay(failures);
        }
        let _ = tokio::sync::Semaphore::new(relay.workers);
        // Every queue the configuration sizes.
        drop(tokio::sync::mpsc::channel::<()>(config.outbox_queue));
        // A socket's stall clock and how often a stuck writer checks it.
        let _ = now + config.socket.stall_timeout + config.socket.stall_timeout / 4;
        drop(tokio::sync::broadcast::channel::<()>(config.bus_capacity));
        // The rate limiter: the wait for a token (and its Retry-After), the sweep's refill time.
        let limiter = RateLimiter::new(config.rate_limit);
        let start = std::time::Instant::now();
        let wait = config.rate_limit.time_to_earn(1.0);
        let _ = start + wait;
        let _ = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let _ = start
            + config
                .rate_limit
                .time_to_earn(f64::from(config.rate_limit.burst));
        limiter.evict_idle(start);
        // Fitting the connection caps to any descriptor limit.
        for soft in [0, 1, fds::RESERVED, 1024, 1 << 20, u64::MAX] {
            let _ = fds::fit(config, Limit { soft, hard: soft });
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        #[test]
        fn no_value_panics_and_every_accepted_configuration_is_safe_to_use(
            values in proptest::collection::vec(
                (0..SETTINGS.len(), edge()),
                1..3,
            )
        ) {
            let vars: HashMap<&str, String> =
                values.into_iter().map(|(i, value)| (SETTINGS[i].name, value)).collect();
            if let Ok(config) = Config::from_lookup(|name| vars.get(name).cloned()) {
                use_as_the_server_does(&config);
            }
        }
    }

    /// Every edge value in every setting, one at a time: the property test's random pairs and
    /// triples may miss one.
    #[test]
    fn every_edge_in_every_setting() {
        for setting in SETTINGS {
            for value in EDGES {
                if let Ok(config) = config(&[(setting.name, value)]) {
                    use_as_the_server_does(&config);
                }
            }
        }
    }
}
