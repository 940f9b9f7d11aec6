//! Configuration from the environment. [`SETTINGS`] is the one list of variables, defaults and
//! meanings: parsing reads its defaults and `chatd --help` prints it.

use std::net::IpAddr;
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
        "a store call taking longer counts as the store being unavailable",
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
        "per-user token bucket refill rate on /api/* (0: no limit)",
    ),
    setting(
        "RATE_LIMIT_BURST",
        "10",
        "per-user token bucket size on /api/*",
    ),
    setting(
        "MAX_BODY_BYTES",
        "65536",
        "largest request body; larger: 413",
    ),
    setting(
        "MAX_MESSAGE_BYTES",
        "4096",
        "largest message content in bytes; larger: 413",
    ),
    setting(
        "MAX_PARTICIPANTS",
        "100",
        "most participants in a channel; more: 400",
    ),
    setting(
        "RETRY_ATTEMPTS",
        "5",
        "persistence attempts before a message is dead-lettered",
    ),
    setting(
        "RETRY_BASE_MS",
        "100",
        "first retry delay; it doubles per attempt, with jitter",
    ),
    setting("RETRY_MAX_MS", "30000", "longest retry delay"),
    setting("RELAY_WORKERS", "4", "batches written to the store at once"),
    setting(
        "RELAY_BATCH_SIZE",
        "256",
        "most messages in one store write",
    ),
    setting(
        "OUTBOX_QUEUE",
        "8192",
        "sends waiting for the outbox's next commit; beyond it: 503",
    ),
    setting(
        "IDEMPOTENCY_WINDOW",
        "24h",
        "how long an Idempotency-Key on POST /api/messages answers with its first message",
    ),
    setting(
        "BUS_CAPACITY",
        "4096",
        "events the fan-out may fall behind by before it skips (every socket is then closed with 4009 and recovers with since)",
    ),
    setting(
        "MAX_SOCKETS_PER_USER",
        "16",
        "sockets one user may have open; beyond it the upgrade is refused with 429",
    ),
    setting(
        "MAX_CONNECTIONS",
        "50000",
        "sockets open in all; beyond it the upgrade is refused with 503 (mind ulimit -n)",
    ),
    setting(
        "RECOVERY_LIMIT",
        "1000",
        "most missed messages /ws?since=<id> replays; beyond it the client is told to page history",
    ),
    setting(
        "RECOVERY_CONCURRENCY",
        "8",
        "reconnect recoveries read at once; an upgrade that waits more than a second for its turn gets 503",
    ),
    setting(
        "WS_SEND_QUEUE_BYTES",
        "4194304",
        "bytes of frames queued per socket (4 MiB); beyond it a stalled socket is closed with 4008, a reading one with 4009",
    ),
    setting(
        "WS_STALL_TIMEOUT",
        "10s",
        "a socket whose queue is full and whose writer made no progress for this long is a slow consumer (4008)",
    ),
    setting(
        "WS_MAX_INBOUND_BYTES",
        "65536",
        "largest frame a client may send",
    ),
    setting("WS_PING_INTERVAL", "30s", "how often sockets are pinged"),
    setting(
        "WS_PONG_TIMEOUT",
        "60s",
        "a socket whose last pong is this old is closed (checked at each ping)",
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
        "a connection that has not sent a request's headers by then is closed",
    ),
    setting(
        "HTTP_REQUEST_TIMEOUT",
        "30s",
        "a request not answered by then (a body trickling in, say) gets 408",
    ),
    setting(
        "SHUTDOWN_TIMEOUT",
        "10s",
        "how long shutdown waits for the outbox to drain; the rest waits for the next start",
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
                timeout: vars.duration("STORE_TIMEOUT")?,
            },
            admin_token: vars.optional("ADMIN_TOKEN"),
            instance_id: vars
                .optional("INSTANCE_ID")
                .unwrap_or_else(default_instance_id),
            connections_require_auth: vars.parse("CONNECTIONS_REQUIRE_AUTH")?,
            recovery_limit: vars.parse_checked("RECOVERY_LIMIT", |v| *v >= 1)?,
            recovery_concurrency: vars
                .parse_checked("RECOVERY_CONCURRENCY", |v| (1..=1024).contains(v))?,
            rate_limit: RateLimit {
                per_second: vars
                    .parse_checked("RATE_LIMIT_RPS", |v: &f64| v.is_finite() && *v >= 0.0)?,
                burst: vars.parse_checked("RATE_LIMIT_BURST", |v| *v >= 1)?,
            },
            limits: Limits {
                max_body_bytes: vars.parse_checked("MAX_BODY_BYTES", |v| *v >= 1024)?,
                max_message_bytes: vars.parse_checked("MAX_MESSAGE_BYTES", |v| *v >= 1)?,
                max_participants: vars.parse_checked("MAX_PARTICIPANTS", |v| *v >= 1)?,
            },
            relay: RelaySettings {
                workers: vars.parse_checked("RELAY_WORKERS", |v| *v >= 1)?,
                batch_size: vars.parse_checked("RELAY_BATCH_SIZE", |v| *v >= 1)?,
                retry_attempts: vars.parse_checked("RETRY_ATTEMPTS", |v| *v >= 1)?,
                retry_base: Duration::from_millis(
                    vars.parse_checked("RETRY_BASE_MS", |v| *v >= 1)?,
                ),
                retry_max: Duration::from_millis(vars.parse("RETRY_MAX_MS")?),
            },
            outbox_queue: vars.parse_checked("OUTBOX_QUEUE", |v| *v >= 1)?,
            idempotency_window: vars.duration_within(
                "IDEMPOTENCY_WINDOW",
                Duration::from_secs(1)..=Duration::from_secs(366 * 24 * 3600),
            )?,
            bus_capacity: vars.parse_checked("BUS_CAPACITY", |v| *v >= 1)?,
            socket: SocketSettings {
                limits: SocketLimits {
                    per_user: vars.parse_checked("MAX_SOCKETS_PER_USER", |v| *v >= 1)?,
                    total: vars.parse_checked("MAX_CONNECTIONS", |v| *v >= 1)?,
                },
                queue_bytes: vars.parse_checked("WS_SEND_QUEUE_BYTES", |v| *v >= 1024)?,
                stall_timeout: vars.duration_within(
                    "WS_STALL_TIMEOUT",
                    Duration::from_millis(100)..=Duration::from_secs(3600),
                )?,
                max_inbound_bytes: vars.parse_checked("WS_MAX_INBOUND_BYTES", |v| *v >= 1)?,
                ping_interval: vars.duration("WS_PING_INTERVAL")?,
                pong_timeout: vars.duration("WS_PONG_TIMEOUT")?,
            },
            shutdown_timeout: vars.duration("SHUTDOWN_TIMEOUT")?,
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
                header_timeout: vars.duration("HTTP_HEADER_TIMEOUT")?,
                request_timeout: vars.duration("HTTP_REQUEST_TIMEOUT")?,
                allowed_origins: vars
                    .text("CORS_ALLOWED_ORIGINS")
                    .split(',')
                    .map(|origin| origin.trim().trim_end_matches('/').to_string())
                    .filter(|origin| !origin.is_empty())
                    .collect(),
            },
            log: LogSettings {
                filter: vars.text("RUST_LOG"),
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
        Ok(config)
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

    fn parse_checked<T: FromStr>(
        &self,
        name: &'static str,
        valid: impl Fn(&T) -> bool,
    ) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        let parsed = self.parse(name)?;
        if valid(&parsed) {
            Ok(parsed)
        } else {
            Err(ConfigError {
                name,
                value: self.text(name),
                reason: "out of range".into(),
            })
        }
    }

    fn duration(&self, name: &'static str) -> Result<Duration, ConfigError> {
        let value = self.text(name);
        parse_duration(&value).map_err(|reason| ConfigError {
            name,
            value,
            reason,
        })
    }
}

impl Vars<'_> {
    fn duration_within(
        &self,
        name: &'static str,
        range: std::ops::RangeInclusive<Duration>,
    ) -> Result<Duration, ConfigError> {
        let duration = self.duration(name)?;
        if range.contains(&duration) {
            Ok(duration)
        } else {
            Err(ConfigError {
                name,
                value: self.text(name),
                reason: format!(
                    "out of range ({} to {})",
                    humantime::format_duration(*range.start()),
                    humantime::format_duration(*range.end())
                ),
            })
        }
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
    fn durations_take_units_or_bare_seconds() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }
}
