//! Configuration from the environment. Each variable is declared once below (name, default,
//! accepted values, help); the parser reads those declarations, [`SETTINGS`] lists them for
//! `chatd --help`, and a test holds README's table to what they print.

use std::fmt::Display;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// What every variable has. The typed declarations ([`Value`], [`Number`], [`Span`]) add the
/// values they accept, so that a setting's name, default, range and help are written once and
/// the parser, `chatd --help`, README's table and the tests all read that one declaration.
pub struct Setting {
    pub name: &'static str,
    /// What an unset or empty variable means, written as an operator would set it, and parsed
    /// like a set value; empty: unset.
    pub default: &'static str,
    /// The meaning, with `{range}`, or `{min}` and `{max}`, where the declared bounds go, so the
    /// help cannot state other bounds than the parser enforces. Read through
    /// [`Declared::help`].
    help: &'static str,
}

/// A variable parsed with `FromStr` whose type is its whole range: an address, a port, a flag.
pub struct Value<T> {
    pub setting: Setting,
    parsed_as: PhantomData<fn() -> T>,
}

/// A number within `range`, or exactly `no_limit` where that value turns a limit off.
pub struct Number<T> {
    pub setting: Setting,
    pub range: RangeInclusive<T>,
    pub no_limit: Option<T>,
}

/// A duration within `range`.
pub struct Span {
    pub setting: Setting,
    pub range: RangeInclusive<Duration>,
}

/// Any declaration, as `--help`, README's table and the tests see it.
pub trait Declared {
    fn setting(&self) -> &Setting;

    /// The lowest and highest value accepted, written as the out-of-range errors write them;
    /// `None` for text, and for values whose type is their range.
    fn bounds(&self) -> Option<(String, String)> {
        None
    }

    /// The help text with the declared bounds in place.
    fn help(&self) -> String {
        let help = self.setting().help;
        match self.bounds() {
            Some((min, max)) => help
                .replace("{range}", &format!("{min} to {max}"))
                .replace("{min}", &min)
                .replace("{max}", &max),
            None => help.to_string(),
        }
    }
}

impl Declared for Setting {
    fn setting(&self) -> &Setting {
        self
    }
}

impl<T> Declared for Value<T> {
    fn setting(&self) -> &Setting {
        &self.setting
    }
}

impl<T: Display> Number<T> {
    fn min_max(&self) -> (String, String) {
        (self.range.start().to_string(), self.range.end().to_string())
    }
}

impl<T: Display> Declared for Number<T> {
    fn setting(&self) -> &Setting {
        &self.setting
    }

    fn bounds(&self) -> Option<(String, String)> {
        Some(self.min_max())
    }
}

impl Span {
    fn min_max(&self) -> (String, String) {
        let format = |d: &Duration| humantime::format_duration(*d).to_string();
        (format(self.range.start()), format(self.range.end()))
    }
}

impl Declared for Span {
    fn setting(&self) -> &Setting {
        &self.setting
    }

    fn bounds(&self) -> Option<(String, String)> {
        Some(self.min_max())
    }
}

const fn text(name: &'static str, default: &'static str, help: &'static str) -> Setting {
    Setting {
        name,
        default,
        help,
    }
}

const fn value<T>(name: &'static str, default: &'static str, help: &'static str) -> Value<T> {
    Value {
        setting: text(name, default, help),
        parsed_as: PhantomData,
    }
}

const fn number<T>(
    name: &'static str,
    default: &'static str,
    range: RangeInclusive<T>,
    help: &'static str,
) -> Number<T> {
    Number {
        setting: text(name, default, help),
        range,
        no_limit: None,
    }
}

const fn span(
    name: &'static str,
    default: &'static str,
    range: RangeInclusive<Duration>,
    help: &'static str,
) -> Span {
    Span {
        setting: text(name, default, help),
        range,
    }
}

pub const HOST: Value<ListenHost> = value(
    "HOST",
    "0.0.0.0",
    "address to listen on: an IP address, or a host name this machine resolves (localhost)",
);
pub const PORT: Value<u16> = value(
    "PORT",
    "8080",
    "HTTP and WebSocket port (0 picks a free one)",
);
pub const METRICS_PORT: Value<u16> = value(
    "METRICS_PORT",
    "",
    "an internal port for /metrics and /admin/* (both leave the main port): publish only the main one",
);
pub const DATA_DIR: Setting = text(
    "DATA_DIR",
    "./data",
    "the embedded store, the local outbox and the development secret",
);
pub const JWT_SECRET: Setting = text(
    "JWT_SECRET",
    "",
    "HS256 secret; unset: a development secret is generated once in DATA_DIR",
);
pub const JWT_SECRET_FILE: Setting = text(
    "JWT_SECRET_FILE",
    "",
    "a file holding JWT_SECRET (a Docker or Kubernetes secret), instead of the variable",
);
pub const JWT_PUBLIC_KEY: Setting = text(
    "JWT_PUBLIC_KEY",
    "",
    "an identity service's public key (PEM text, or @/path/key.pem): RS256/ES256 tokens instead of HS256",
);
pub const JWKS_URL: Setting = text(
    "JWKS_URL",
    "",
    "an identity service's JWKS document: RS256/ES256 tokens, keys chosen by kid, cached",
);
pub const JWT_ISSUER: Setting = text("JWT_ISSUER", "", "when set, a token's iss must be this");
pub const JWT_AUDIENCE: Setting = text(
    "JWT_AUDIENCE",
    "",
    "when set, a token's aud must include this",
);
pub const MONGO_URI: Setting = text(
    "MONGO_URI",
    "",
    "MongoDB connection string; unset: the embedded store in DATA_DIR",
);
pub const MONGO_URI_FILE: Setting = text(
    "MONGO_URI_FILE",
    "",
    "a file holding MONGO_URI (which may carry a password), instead of the variable",
);
pub const MONGO_DB: Setting = text("MONGO_DB", "chatdb", "MongoDB database");
pub const MONGO_COLLECTION: Setting = text(
    "MONGO_COLLECTION",
    "messages",
    "MongoDB collection of messages",
);
pub const MONGO_DEAD_LETTER_COLLECTION: Setting = text(
    "MONGO_DEAD_LETTER_COLLECTION",
    "dead_letters",
    "MongoDB collection of messages that spent every attempt",
);
pub const STORE_TIMEOUT: Span = span(
    "STORE_TIMEOUT",
    "10s",
    SHORTEST_TIMEOUT..=LONGEST,
    "a store call taking longer counts as the store being unavailable ({range})",
);
pub const ADMIN_TOKEN: Setting = text(
    "ADMIN_TOKEN",
    "",
    "bearer token for /admin/*; unset: the admin API is off (404)",
);
pub const ADMIN_TOKEN_FILE: Setting = text(
    "ADMIN_TOKEN_FILE",
    "",
    "a file holding ADMIN_TOKEN, instead of the variable",
);
pub const INSTANCE_ID: Setting = text(
    "INSTANCE_ID",
    "",
    "this instance's name in logs, metrics and dead letters; unset: the hostname",
);
pub const NATS_URL: Setting = text(
    "NATS_URL",
    "",
    "NATS server with JetStream, e.g. nats://127.0.0.1:4222: cluster mode (needs MONGO_URI); unset: one process",
);
pub const NATS_CONNECT_TIMEOUT: Span = span(
    "NATS_CONNECT_TIMEOUT",
    "5s",
    SHORTEST_TIMEOUT..=LONGEST,
    "how long start-up waits for NATS before giving up ({range})",
);
pub const NATS_STREAM: Setting = text(
    "NATS_STREAM",
    "CHATD_MESSAGES",
    "the JetStream stream that is the cluster's outbox (with <name>_KEYS and <name>_INSTANCES beside it)",
);
pub const NATS_REPLICAS: Number<usize> = number(
    "NATS_REPLICAS",
    "1",
    1..=5,
    "copies JetStream keeps of the stream, on as many NATS servers ({range})",
);
pub const NATS_MAX_BYTES: Number<u64> = number(
    "NATS_MAX_BYTES",
    "8589934592",
    (1 << 20)..=(1 << 40),
    "the most the stream holds (8 GiB, about an hour of 5,000 msg/s unstored); full, sends get 503. JetStream must have that much disk free when it creates the stream ({range})",
);
pub const CONNECTIONS_REQUIRE_AUTH: Value<bool> = value(
    "CONNECTIONS_REQUIRE_AUTH",
    "false",
    "require a JWT on POST /api/connections (the original left it open)",
);
/// A non-zero rate must be at least one request per 1,000 s, so that waiting for a token is a
/// duration that fits.
pub const RATE_LIMIT_RPS: Number<f64> = Number {
    no_limit: Some(0.0),
    ..number(
        "RATE_LIMIT_RPS",
        "5",
        0.001..=1_000_000.0,
        "per-user token bucket refill rate on /api/* (0: no limit; else {range})",
    )
};
pub const RATE_LIMIT_BURST: Number<u32> = number(
    "RATE_LIMIT_BURST",
    "10",
    1..=1_000_000,
    "per-user token bucket size on /api/* ({range})",
);
pub const MAX_BODY_BYTES: Number<usize> = number(
    "MAX_BODY_BYTES",
    "65536",
    1024..=LARGEST_BODY,
    "largest request body; larger: 413 ({range})",
);
pub const MAX_MESSAGE_BYTES: Number<usize> = number(
    "MAX_MESSAGE_BYTES",
    "4096",
    1..=LARGEST_BODY,
    "largest message content in bytes; larger: 413 ({min} to MAX_BODY_BYTES)",
);
pub const MAX_PARTICIPANTS: Number<usize> = number(
    "MAX_PARTICIPANTS",
    "100",
    1..=10_000,
    "most participants in a channel; more: 400 ({range})",
);
pub const RETRY_ATTEMPTS: Number<u32> = number(
    "RETRY_ATTEMPTS",
    "5",
    1..=1000,
    "persistence attempts before a message is dead-lettered ({range})",
);
pub const RETRY_BASE_MS: Number<u64> = number(
    "RETRY_BASE_MS",
    "100",
    1..=LONGEST_MS,
    "first retry delay; it doubles per attempt, with jitter ({min} to RETRY_MAX_MS)",
);
pub const RETRY_MAX_MS: Number<u64> = number(
    "RETRY_MAX_MS",
    "30000",
    1..=LONGEST_MS,
    "longest retry delay (RETRY_BASE_MS to {max}, a day)",
);
pub const RELAY_WORKERS: Number<usize> = number(
    "RELAY_WORKERS",
    "4",
    1..=1024,
    "batches written to the store at once ({range})",
);
pub const RELAY_BATCH_SIZE: Number<usize> = number(
    "RELAY_BATCH_SIZE",
    "256",
    1..=10_000,
    "most messages in one store write ({range})",
);
pub const OUTBOX_QUEUE: Number<usize> = number(
    "OUTBOX_QUEUE",
    "8192",
    1..=LARGEST_QUEUE,
    "sends waiting for the outbox's next commit; beyond it: 503 ({range})",
);
pub const IDEMPOTENCY_WINDOW: Span = span(
    "IDEMPOTENCY_WINDOW",
    "24h",
    Duration::from_secs(1)..=LONGEST_KEY_WINDOW,
    "how long an Idempotency-Key on POST /api/messages answers with its first message ({range})",
);
pub const BUS_CAPACITY: Number<usize> = number(
    "BUS_CAPACITY",
    "4096",
    1..=LARGEST_QUEUE,
    "events the fan-out may fall behind by before it skips (every socket is then closed with 4009 and recovers with since; {range})",
);
pub const MAX_SOCKETS_PER_USER: Number<usize> = number(
    "MAX_SOCKETS_PER_USER",
    "16",
    1..=100_000,
    "sockets one user may have open; beyond it the upgrade is refused with 429 ({range})",
);
pub const MAX_CONNECTIONS: Number<usize> = number(
    "MAX_CONNECTIONS",
    "50000",
    1..=10_000_000,
    "sockets open in all; beyond it the upgrade is refused with 503 ({range}; must fit ulimit -n, see README)",
);
pub const RECOVERY_LIMIT: Number<u32> = number(
    "RECOVERY_LIMIT",
    "1000",
    1..=100_000,
    "most missed messages /ws?since=<id> replays; beyond it the client is told to page history ({range})",
);
pub const RECOVERY_CONCURRENCY: Number<usize> = number(
    "RECOVERY_CONCURRENCY",
    "2",
    1..=1024,
    "reconnect recoveries read and replayed at once; an upgrade that waits more than a second for its turn gets 503 ({range})",
);
pub const WS_SEND_QUEUE_BYTES: Number<usize> = number(
    "WS_SEND_QUEUE_BYTES",
    "4194304",
    1024..=1 << 30,
    "bytes of frames queued per socket (4 MiB); beyond it a stalled socket is closed with 4008, a reading one with 4009 ({range})",
);
pub const WS_STALL_TIMEOUT: Span = span(
    "WS_STALL_TIMEOUT",
    "10s",
    Duration::from_millis(100)..=LONGEST,
    "a socket whose queue is full and whose writer made no progress for this long is a slow consumer (4008; {range})",
);
pub const WS_MAX_INBOUND_BYTES: Number<usize> = number(
    "WS_MAX_INBOUND_BYTES",
    "65536",
    1..=16 << 20,
    "largest frame a client may send ({range})",
);
pub const WS_PING_INTERVAL: Span = span(
    "WS_PING_INTERVAL",
    "30s",
    SHORTEST_PING..=LONGEST,
    "how often sockets are pinged ({range})",
);
pub const WS_PONG_TIMEOUT: Span = span(
    "WS_PONG_TIMEOUT",
    "60s",
    SHORTEST_PING..=LONGEST,
    "a socket whose last pong is this old is closed (checked at each ping; more than WS_PING_INTERVAL, at most {max})",
);
pub const CORS_ALLOWED_ORIGINS: Setting = text(
    "CORS_ALLOWED_ORIGINS",
    "",
    "web origins allowed to call chatd, comma-separated (https://app.example.com); unset: none",
);
pub const WEB_UI: Value<bool> = value(
    "WEB_UI",
    "true",
    "serve the chat page at / (false: / is an unknown route)",
);
pub const TLS_CERT: Setting = text(
    "TLS_CERT",
    "",
    "PEM certificate chain: serve HTTPS and WSS (with TLS_KEY); unset: plain HTTP",
);
pub const TLS_KEY: Setting = text("TLS_KEY", "", "PEM private key for TLS_CERT");
pub const HTTP_HEADER_TIMEOUT: Span = span(
    "HTTP_HEADER_TIMEOUT",
    "10s",
    SHORTEST_TIMEOUT..=LONGEST,
    "a connection that has not sent a request's headers by then is closed ({range})",
);
pub const HTTP_REQUEST_TIMEOUT: Span = span(
    "HTTP_REQUEST_TIMEOUT",
    "30s",
    SHORTEST_TIMEOUT..=LONGEST,
    "a request not answered by then (a body trickling in, say) gets 408 ({range})",
);
pub const HTTP_MAX_CONNECTIONS: Number<usize> = number(
    "HTTP_MAX_CONNECTIONS",
    "",
    1..=10_000_000,
    "TCP connections open in all, WebSockets included; beyond it a new one gets 503 and is closed; unset: MAX_CONNECTIONS plus room for requests ({range}; must fit ulimit -n)",
);
pub const HTTP_MAX_PENDING_PER_CLIENT: Number<usize> = number(
    "HTTP_MAX_PENDING_PER_CLIENT",
    "64",
    1..=100_000,
    "connections one client address may hold that have gone 1 s without a whole request head (slowloris); beyond it: 503 ({range})",
);
pub const SHUTDOWN_TIMEOUT: Span = span(
    "SHUTDOWN_TIMEOUT",
    "10s",
    Duration::ZERO..=LONGEST,
    "how long shutdown waits for the outbox to drain; the rest waits for the next start ({range})",
);
pub const RUST_LOG: Setting = text("RUST_LOG", "info", "log filter, e.g. chatd=debug,info");
pub const LOG_FORMAT: Setting = text(
    "LOG_FORMAT",
    "pretty",
    "log lines as 'pretty' text or 'json'",
);

/// Every variable chatd reads, in `--help`'s and README's order. A test checks that the parser
/// reads exactly these.
pub const SETTINGS: &[&dyn Declared] = &[
    &HOST,
    &PORT,
    &METRICS_PORT,
    &DATA_DIR,
    &JWT_SECRET,
    &JWT_SECRET_FILE,
    &JWT_PUBLIC_KEY,
    &JWKS_URL,
    &JWT_ISSUER,
    &JWT_AUDIENCE,
    &MONGO_URI,
    &MONGO_URI_FILE,
    &MONGO_DB,
    &MONGO_COLLECTION,
    &MONGO_DEAD_LETTER_COLLECTION,
    &STORE_TIMEOUT,
    &ADMIN_TOKEN,
    &ADMIN_TOKEN_FILE,
    &INSTANCE_ID,
    &NATS_URL,
    &NATS_CONNECT_TIMEOUT,
    &NATS_STREAM,
    &NATS_REPLICAS,
    &NATS_MAX_BYTES,
    &CONNECTIONS_REQUIRE_AUTH,
    &RATE_LIMIT_RPS,
    &RATE_LIMIT_BURST,
    &MAX_BODY_BYTES,
    &MAX_MESSAGE_BYTES,
    &MAX_PARTICIPANTS,
    &RETRY_ATTEMPTS,
    &RETRY_BASE_MS,
    &RETRY_MAX_MS,
    &RELAY_WORKERS,
    &RELAY_BATCH_SIZE,
    &OUTBOX_QUEUE,
    &IDEMPOTENCY_WINDOW,
    &BUS_CAPACITY,
    &MAX_SOCKETS_PER_USER,
    &MAX_CONNECTIONS,
    &RECOVERY_LIMIT,
    &RECOVERY_CONCURRENCY,
    &WS_SEND_QUEUE_BYTES,
    &WS_STALL_TIMEOUT,
    &WS_MAX_INBOUND_BYTES,
    &WS_PING_INTERVAL,
    &WS_PONG_TIMEOUT,
    &CORS_ALLOWED_ORIGINS,
    &WEB_UI,
    &TLS_CERT,
    &TLS_KEY,
    &HTTP_HEADER_TIMEOUT,
    &HTTP_REQUEST_TIMEOUT,
    &HTTP_MAX_CONNECTIONS,
    &HTTP_MAX_PENDING_PER_CLIENT,
    &SHUTDOWN_TIMEOUT,
    &RUST_LOG,
    &LOG_FORMAT,
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
    /// `None`: one process, on the in-process bus.
    pub cluster: Option<ClusterSettings>,
    pub connections_require_auth: bool,
    /// Serve the chat page at `/`.
    pub web_ui: bool,
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

/// Cluster mode: the instances that share one NATS and one store.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub nats_url: String,
    pub connect_timeout: Duration,
    pub stream: String,
    pub replicas: usize,
    /// The most the messages stream holds, in bytes.
    pub max_bytes: u64,
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

/// How many sockets may be open.
#[derive(Debug, Clone, Copy)]
pub struct SocketLimits {
    pub per_user: usize,
    pub total: usize,
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
            host: vars.value(&HOST)?.0,
            port: vars.value(&PORT)?,
            metrics_port: match vars.optional(&METRICS_PORT.setting) {
                Some(_) => Some(vars.value(&METRICS_PORT)?),
                None => None,
            },
            data_dir: PathBuf::from(vars.text(&DATA_DIR)),
            jwt_secret: vars.secret(&JWT_SECRET, &JWT_SECRET_FILE)?,
            identity: Identity {
                public_key: vars.optional(&JWT_PUBLIC_KEY),
                jwks_url: vars.optional(&JWKS_URL),
                issuer: vars.optional(&JWT_ISSUER),
                audience: vars.optional(&JWT_AUDIENCE),
            },
            store: StoreSettings {
                mongo: vars
                    .secret(&MONGO_URI, &MONGO_URI_FILE)?
                    .map(|uri| MongoSettings {
                        uri,
                        database: vars.text(&MONGO_DB),
                        messages: vars.text(&MONGO_COLLECTION),
                        dead_letters: vars.text(&MONGO_DEAD_LETTER_COLLECTION),
                    }),
                timeout: vars.duration(&STORE_TIMEOUT)?,
            },
            admin_token: vars.secret(&ADMIN_TOKEN, &ADMIN_TOKEN_FILE)?,
            instance_id: vars
                .optional(&INSTANCE_ID)
                .unwrap_or_else(default_instance_id),
            cluster: cluster(&vars)?,
            connections_require_auth: vars.value(&CONNECTIONS_REQUIRE_AUTH)?,
            web_ui: vars.value(&WEB_UI)?,
            recovery_limit: vars.number(&RECOVERY_LIMIT)?,
            recovery_concurrency: vars.number(&RECOVERY_CONCURRENCY)?,
            rate_limit: RateLimit {
                per_second: vars.number(&RATE_LIMIT_RPS)?,
                burst: vars.number(&RATE_LIMIT_BURST)?,
            },
            limits: Limits {
                max_body_bytes: vars.number(&MAX_BODY_BYTES)?,
                max_message_bytes: vars.number(&MAX_MESSAGE_BYTES)?,
                max_participants: vars.number(&MAX_PARTICIPANTS)?,
            },
            relay: RelaySettings {
                workers: vars.number(&RELAY_WORKERS)?,
                batch_size: vars.number(&RELAY_BATCH_SIZE)?,
                retry_attempts: vars.number(&RETRY_ATTEMPTS)?,
                retry_base: Duration::from_millis(vars.number(&RETRY_BASE_MS)?),
                retry_max: Duration::from_millis(vars.number(&RETRY_MAX_MS)?),
            },
            outbox_queue: vars.number(&OUTBOX_QUEUE)?,
            idempotency_window: vars.duration(&IDEMPOTENCY_WINDOW)?,
            bus_capacity: vars.number(&BUS_CAPACITY)?,
            socket: SocketSettings {
                limits: SocketLimits {
                    per_user: vars.number(&MAX_SOCKETS_PER_USER)?,
                    total: vars.number(&MAX_CONNECTIONS)?,
                },
                total_is_explicit: vars.is_set(&MAX_CONNECTIONS.setting),
                queue_bytes: vars.number(&WS_SEND_QUEUE_BYTES)?,
                stall_timeout: vars.duration(&WS_STALL_TIMEOUT)?,
                max_inbound_bytes: vars.number(&WS_MAX_INBOUND_BYTES)?,
                ping_interval: vars.duration(&WS_PING_INTERVAL)?,
                pong_timeout: vars.duration(&WS_PONG_TIMEOUT)?,
            },
            shutdown_timeout: vars.duration(&SHUTDOWN_TIMEOUT)?,
            http: HttpSettings {
                tls: match (vars.optional(&TLS_CERT), vars.optional(&TLS_KEY)) {
                    (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
                    (None, None) => None,
                    (cert, _) => {
                        return Err(ConfigError {
                            name: if cert.is_some() {
                                TLS_KEY.name
                            } else {
                                TLS_CERT.name
                            },
                            value: String::new(),
                            reason: "TLS_CERT and TLS_KEY go together".into(),
                        });
                    }
                },
                header_timeout: vars.duration(&HTTP_HEADER_TIMEOUT)?,
                request_timeout: vars.duration(&HTTP_REQUEST_TIMEOUT)?,
                allowed_origins: allowed_origins(&vars)?,
                max_connections: match vars.optional(&HTTP_MAX_CONNECTIONS.setting) {
                    Some(_) => Some(vars.number(&HTTP_MAX_CONNECTIONS)?),
                    None => None,
                },
                max_pending_per_client: vars.number(&HTTP_MAX_PENDING_PER_CLIENT)?,
            },
            log: LogSettings {
                filter: log_filter(&vars)?,
                json: match vars.text(&LOG_FORMAT).as_str() {
                    "json" => true,
                    "pretty" => false,
                    other => {
                        return Err(ConfigError {
                            name: LOG_FORMAT.name,
                            value: other.into(),
                            reason: "expected 'pretty' or 'json'".into(),
                        });
                    }
                },
            },
        };
        if config.identity.public_key.is_some() && config.identity.jwks_url.is_some() {
            return Err(ConfigError {
                name: JWKS_URL.name,
                value: config.identity.jwks_url.unwrap_or_default(),
                reason: "set JWT_PUBLIC_KEY or JWKS_URL, not both".into(),
            });
        }
        config.check_relations(&vars)?;
        Ok(config)
    }

    /// What no single range can say: settings that only make sense together.
    fn check_relations(&self, vars: &Vars<'_>) -> Result<(), ConfigError> {
        let refuse = |setting: &Setting, reason: &str| {
            Err(ConfigError::new(setting.name, vars.text(setting), reason))
        };
        if self.relay.retry_max < self.relay.retry_base {
            return refuse(&RETRY_MAX_MS.setting, "must not be less than RETRY_BASE_MS");
        }
        if self.limits.max_message_bytes > self.limits.max_body_bytes {
            return refuse(
                &MAX_MESSAGE_BYTES.setting,
                "must not be more than MAX_BODY_BYTES: a message that large could never arrive",
            );
        }
        // The pong watch runs at each ping, and the first ping comes one interval after the
        // upgrade: a timeout not above the interval would close every socket at its first ping.
        if self.socket.pong_timeout <= self.socket.ping_interval {
            return refuse(
                &WS_PONG_TIMEOUT.setting,
                "must be more than WS_PING_INTERVAL",
            );
        }
        if let Some(metrics) = self.metrics_port
            && metrics != 0
            && metrics == self.port
        {
            return refuse(&METRICS_PORT.setting, "must differ from PORT");
        }
        if self.cluster.is_some() && self.store.mongo.is_none() {
            return refuse(
                &NATS_URL,
                "cluster mode needs MONGO_URI: every instance must share one store, and the \
                 embedded store belongs to one instance's disk",
            );
        }
        if let Some(url) = &self.identity.jwks_url {
            let scheme = reqwest::Url::parse(url).map(|url| url.scheme().to_string());
            if !matches!(scheme.as_deref(), Ok("http" | "https")) {
                return refuse(&JWKS_URL, "expected an http:// or https:// URL");
            }
        }
        Ok(())
    }

    /// `chatd --help`'s list of variables.
    pub fn help() -> String {
        let width = SETTINGS
            .iter()
            .map(|s| s.setting().name.len())
            .max()
            .unwrap_or(0);
        let mut text = String::from("Environment (default in brackets):\n");
        for declared in SETTINGS {
            let s = declared.setting();
            let default = if s.default.is_empty() {
                "unset"
            } else {
                s.default
            };
            let help = declared.help();
            text.push_str(&format!("  {:width$}  {help} [{default}]\n", s.name));
        }
        text
    }
}

struct Vars<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Vars<'_> {
    /// The variable is set, not left to its default.
    fn is_set(&self, setting: &Setting) -> bool {
        (self.0)(setting.name).is_some_and(|value| !value.is_empty())
    }

    fn optional(&self, setting: &Setting) -> Option<String> {
        Some(self.text(setting)).filter(|value| !value.is_empty())
    }

    /// A secret from its variable, or from the file its `_FILE` variable names (the way
    /// Docker and Kubernetes hand secrets over), without the file's final line break.
    fn secret(&self, value: &Setting, file: &Setting) -> Result<Option<String>, ConfigError> {
        let Some(path) = self.optional(file) else {
            return Ok(self.optional(value));
        };
        let refused = |reason: String| ConfigError::new(file.name, path.clone(), reason);
        if self.is_set(value) {
            return Err(refused(format!(
                "set {} or {}, not both",
                value.name, file.name
            )));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| refused(e.to_string()))?;
        let secret = text.strip_suffix('\n').unwrap_or(&text);
        let secret = secret.strip_suffix('\r').unwrap_or(secret);
        if secret.is_empty() {
            return Err(refused("the file is empty".into()));
        }
        Ok(Some(secret.to_string()))
    }

    /// The value, or the declared default when the variable is unset or empty.
    fn text(&self, setting: &Setting) -> String {
        match (self.0)(setting.name) {
            Some(value) if !value.is_empty() => value,
            _ => setting.default.to_string(),
        }
    }

    fn value<T: FromStr>(&self, declared: &Value<T>) -> Result<T, ConfigError>
    where
        T::Err: Display,
    {
        self.parse(&declared.setting)
    }

    fn parse<T: FromStr>(&self, setting: &Setting) -> Result<T, ConfigError>
    where
        T::Err: Display,
    {
        let value = self.text(setting);
        value.parse().map_err(|e: T::Err| ConfigError {
            name: setting.name,
            reason: e.to_string(),
            value,
        })
    }

    fn number<T>(&self, declared: &Number<T>) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display,
        T::Err: Display,
    {
        let setting = &declared.setting;
        let parsed = self.parse(setting)?;
        if declared.range.contains(&parsed) || declared.no_limit.as_ref() == Some(&parsed) {
            return Ok(parsed);
        }
        let (min, max) = declared.min_max();
        let expected = match &declared.no_limit {
            Some(off) => format!("expected {off} (no limit) or {min} to {max}"),
            None => format!("expected {min} to {max}"),
        };
        Err(ConfigError {
            name: setting.name,
            value: self.text(setting),
            reason: format!("out of range: {expected}"),
        })
    }

    fn duration(&self, declared: &Span) -> Result<Duration, ConfigError> {
        let setting = &declared.setting;
        let value = self.text(setting);
        match parse_duration(&value) {
            Ok(duration) if declared.range.contains(&duration) => Ok(duration),
            Ok(_) => {
                let (min, max) = declared.min_max();
                Err(ConfigError {
                    name: setting.name,
                    value,
                    reason: format!("out of range: expected {min} to {max}"),
                })
            }
            Err(reason) => Err(ConfigError {
                name: setting.name,
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
    let text = vars.text(&CORS_ALLOWED_ORIGINS);
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
                CORS_ALLOWED_ORIGINS.name,
                text.clone(),
                format!("{origin:?} is not an origin like https://app.example.com"),
            ));
        };
        // As browsers write it: lower case, no default port.
        origins.push(url.origin().ascii_serialization());
    }
    Ok(origins)
}

/// The NATS settings are checked whether or not `NATS_URL` turns cluster mode on, so that a
/// mistake shows before the day it is used.
fn cluster(vars: &Vars<'_>) -> Result<Option<ClusterSettings>, ConfigError> {
    let settings = ClusterSettings {
        nats_url: vars.text(&NATS_URL),
        connect_timeout: vars.duration(&NATS_CONNECT_TIMEOUT)?,
        stream: vars.text(&NATS_STREAM),
        replicas: vars.number(&NATS_REPLICAS)?,
        max_bytes: vars.number(&NATS_MAX_BYTES)?,
    };
    if !is_stream_name(&settings.stream) {
        return Err(ConfigError::new(
            NATS_STREAM.name,
            settings.stream,
            "expected letters, digits, '-' and '_' only (a JetStream stream name)",
        ));
    }
    Ok(Some(settings).filter(|s| !s.nats_url.is_empty()))
}

/// `RUST_LOG`, checked here so that a filter the log cannot use is a configuration error.
fn log_filter(vars: &Vars<'_>) -> Result<String, ConfigError> {
    let filter = vars.text(&RUST_LOG);
    match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(_) => Ok(filter),
        Err(e) => Err(ConfigError::new(RUST_LOG.name, filter, e.to_string())),
    }
}

/// `HOST`: an IP address, or a name resolved once at start (`localhost`, a container's own
/// name), to its first address.
pub struct ListenHost(IpAddr);

impl FromStr for ListenHost {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(ip) = text.parse() {
            return Ok(Self(ip));
        }
        use std::net::ToSocketAddrs;
        (text, 0)
            .to_socket_addrs()
            .map_err(|e| {
                format!("neither an IP address nor a host name this machine resolves: {e}")
            })?
            .next()
            .map(|addr| Self(addr.ip()))
            .ok_or_else(|| "a host name without addresses".to_string())
    }
}

/// The hostname, which stays the same across restarts (a container's or a pod's name), so that
/// logs, metrics and dead letters follow one instance through them.
fn default_instance_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "chatd".into())
}

/// JetStream refuses other characters in a stream's name; the subjects chatd publishes on
/// start with it, so '.', '*' and '>' would also change what they mean.
fn is_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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
        assert!(!c.instance_id.is_empty());
        assert!(c.cluster.is_none());
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
    fn secrets_come_from_their_variable_or_from_a_file_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwt_secret");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let path = file.display().to_string();
        let c = config(&[("JWT_SECRET_FILE", &path), ("ADMIN_TOKEN", "direct")]).unwrap();
        assert_eq!(c.jwt_secret.as_deref(), Some("from-a-file"));
        assert_eq!(c.admin_token.as_deref(), Some("direct"));

        let both = config(&[("JWT_SECRET_FILE", &path), ("JWT_SECRET", "x")]).unwrap_err();
        assert_eq!(both.name, "JWT_SECRET_FILE");
        assert!(both.reason.contains("not both"), "{both}");
        let missing = config(&[("ADMIN_TOKEN_FILE", "/nonexistent/token")]).unwrap_err();
        assert_eq!(missing.name, "ADMIN_TOKEN_FILE");
        std::fs::write(&file, "\n").unwrap();
        let empty = config(&[("MONGO_URI_FILE", &path)]).unwrap_err();
        assert!(empty.reason.contains("empty"), "{empty}");
    }

    #[test]
    fn host_takes_an_address_or_a_name_this_machine_resolves() {
        assert_eq!(
            config(&[("HOST", "127.0.0.1")]).unwrap().host,
            IpAddr::from([127, 0, 0, 1])
        );
        assert!(config(&[("HOST", "localhost")]).unwrap().host.is_loopback());
        let refused = config(&[("HOST", "no-such-host.invalid")]).unwrap_err();
        assert_eq!(refused.name, "HOST");
        assert!(
            refused.reason.contains("neither an IP address"),
            "{refused}"
        );
    }

    /// A variable the parser reads but [`SETTINGS`] lacks would be missing from `--help` and
    /// README; one listed but never read would be documented and ignored.
    #[test]
    fn the_parser_reads_exactly_the_declared_settings() {
        use std::cell::RefCell;
        use std::collections::BTreeSet;

        let read = RefCell::new(BTreeSet::new());
        // With MongoDB on, so that its settings are read too.
        Config::from_lookup(|name| {
            read.borrow_mut().insert(name.to_string());
            (name == MONGO_URI.name).then(|| "mongodb://db:27017".to_string())
        })
        .unwrap();
        let declared: BTreeSet<String> = SETTINGS
            .iter()
            .map(|s| s.setting().name.to_string())
            .collect();
        assert_eq!(read.into_inner(), declared);
        assert_eq!(declared.len(), SETTINGS.len(), "a setting is listed twice");
    }

    #[test]
    fn every_default_is_a_valid_value() {
        let every = SETTINGS
            .iter()
            .map(|s| (s.setting().name, s.setting().default));
        let c = config(&every.collect::<Vec<_>>()).unwrap();
        assert_eq!(c.port, 8080);
        let help = Config::help();
        for s in SETTINGS {
            assert!(
                help.contains(s.setting().name),
                "{} missing from help",
                s.setting().name
            );
        }
    }

    /// Help states the bounds the parser enforces by naming them, so it cannot state others:
    /// `{range}`, or `{min}` and `{max}`, where a bound may instead be another setting (a
    /// relation that [`Config::check_relations`] enforces).
    #[test]
    fn help_shows_every_declared_bound() {
        let names: Vec<&str> = SETTINGS.iter().map(|s| s.setting().name).collect();
        for declared in SETTINGS.iter().filter(|s| s.bounds().is_some()) {
            let Setting { name, help, .. } = declared.setting();
            let names_another = names
                .iter()
                .any(|other| other != name && help.contains(other));
            let shows = |bound| help.contains("{range}") || help.contains(bound) || names_another;
            assert!(
                shows("{min}") && shows("{max}"),
                "{name}'s help hides its range: {help}"
            );
        }
    }

    /// README's table is `--help`'s list; on a difference, the message is the table to paste.
    #[test]
    fn readme_table_is_the_declared_settings() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let header = "| Variable | Default | Meaning |\n|---|---|---|\n";
        let start = readme.find(header).expect("README's configuration table") + header.len();
        let end = readme[start..]
            .find("\n\n")
            .map_or(readme.len(), |end| start + end + 1);
        let mut table = String::new();
        for declared in SETTINGS {
            let Setting { name, default, .. } = declared.setting();
            let default = if default.is_empty() {
                "unset".to_string()
            } else {
                format!("`{default}`")
            };
            table.push_str(&format!("| `{name}` | {default} | {} |\n", declared.help()));
        }
        assert!(
            readme[start..end] == table,
            "README's configuration table differs from the declarations; it should read:\n{table}"
        );
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
    fn nats_url_puts_an_instance_in_cluster_mode_on_a_shared_store_only() {
        let err = config(&[("NATS_URL", "nats://127.0.0.1:4222")])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("NATS_URL=") && err.contains("needs MONGO_URI"),
            "{err}"
        );
        let mongo = ("MONGO_URI", "mongodb://db:27017");
        let c = config(&[mongo, ("NATS_URL", "nats://n:4222"), ("INSTANCE_ID", "a")]).unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.nats_url, "nats://n:4222");
        assert_eq!(cluster.stream, "CHATD_MESSAGES");
        assert_eq!(cluster.replicas, 1);
        assert_eq!(cluster.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.instance_id, "a");
        for (name, value) in [
            ("NATS_STREAM", "chat.messages"),
            ("NATS_STREAM", "chat>"),
            ("NATS_REPLICAS", "0"),
            ("NATS_REPLICAS", "6"),
            ("NATS_CONNECT_TIMEOUT", "0s"),
        ] {
            let err = config(&[mongo, ("NATS_URL", "nats://n:4222"), (name, value)])
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("{name}=")),
                "{name}={value}: {err}"
            );
        }
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

    /// Each declared bound and the values just past it, read from the declaration, so that a
    /// range changed there is tried at its new edges.
    fn declared_edges(declared: &dyn Declared) -> Vec<String> {
        let (inside, outside) = bounds_and_beyond(declared);
        inside.into_iter().chain(outside).collect()
    }

    /// The declared bounds, and the values just below the lowest and just above the highest.
    fn bounds_and_beyond(declared: &dyn Declared) -> (Vec<String>, Vec<String>) {
        let Some((min, max)) = declared.bounds() else {
            return Default::default();
        };
        let beyond = |bound: &str, up: bool| -> Option<String> {
            if let Ok(n) = bound.parse::<i128>() {
                Some((if up { n + 1 } else { n - 1 }).to_string())
            } else if let Ok(x) = bound.parse::<f64>() {
                Some((if up { x.next_up() } else { x.next_down() }).to_string())
            } else {
                let ns = parse_duration(bound).unwrap().as_nanos();
                let ns = if up {
                    ns.checked_add(1)
                } else {
                    ns.checked_sub(1)
                };
                ns.map(|ns| format!("{ns}ns"))
            }
        };
        let outside = [beyond(&min, false), beyond(&max, true)];
        (vec![min, max], outside.into_iter().flatten().collect())
    }

    /// A setting and a value for it: often one at or just past its declared bounds.
    fn setting_and_value() -> impl proptest::strategy::Strategy<Value = (usize, String)> {
        use proptest::prelude::*;
        (0..SETTINGS.len()).prop_flat_map(|i| {
            let edges = declared_edges(SETTINGS[i]);
            let value = if edges.is_empty() {
                edge().boxed()
            } else {
                prop_oneof![edge(), proptest::sample::select(edges)].boxed()
            };
            (Just(i), value)
        })
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
            values in proptest::collection::vec(setting_and_value(), 1..3)
        ) {
            let vars: HashMap<&str, String> = values
                .into_iter()
                .map(|(i, value)| (SETTINGS[i].setting().name, value))
                .collect();
            if let Ok(config) = Config::from_lookup(|name| vars.get(name).cloned()) {
                use_as_the_server_does(&config);
            }
        }
    }

    /// Out of range is refused, naming the variable, whatever else is set: ranges are checked
    /// before relations.
    #[test]
    fn just_past_every_declared_bound_is_refused() {
        for declared in SETTINGS {
            let name = declared.setting().name;
            for value in bounds_and_beyond(*declared).1 {
                let err = config(&[(name, &value)])
                    .map(|_| ())
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.starts_with(&format!("{name}=")),
                    "{name}={value}: {err}"
                );
            }
        }
    }

    /// Every edge value in every setting, one at a time: the property test's random pairs and
    /// triples may miss one.
    #[test]
    fn every_edge_in_every_setting() {
        for declared in SETTINGS {
            let name = declared.setting().name;
            for value in EDGES
                .iter()
                .map(|v| v.to_string())
                .chain(declared_edges(*declared))
            {
                if let Ok(config) = config(&[(name, &value)]) {
                    use_as_the_server_does(&config);
                }
            }
        }
    }
}
