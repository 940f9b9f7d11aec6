//! File descriptors. Every open connection holds one, and so do the databases, the listeners
//! and the runtime; once they run out, `accept` fails and nobody gets in, not even to be told
//! no. At start the soft limit (`ulimit -n`) is raised to the hard one, as Go's runtime does,
//! then `MAX_CONNECTIONS` and `HTTP_MAX_CONNECTIONS` are fitted under it, so that connections
//! beyond them are refused with 503 while there are still descriptors to refuse them with.

use std::io;

use crate::config::{Config, ConfigError, HTTP_MAX_CONNECTIONS, MAX_CONNECTIONS};
use crate::error::Chain;

/// Descriptors kept for everything but client connections: the two SQLite files (each a
/// writer, a checkpointer and up to four readers, each with the database, its WAL and its
/// shared memory open: about 40 in all), a MongoDB driver's pools and monitors (10 connections
/// per host by default), the listeners, stdio, the runtime's epoll and wake-up descriptors,
/// JWKS fetches, and the connections being refused.
pub const RESERVED: u64 = 256;

/// Room for plain HTTP requests beside `MAX_CONNECTIONS` WebSockets: a quarter of the
/// descriptors left after [`RESERVED`], at most this many.
pub const HTTP_ROOM: u64 = 1024;

/// `RLIMIT_NOFILE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: u64,
    pub hard: u64,
}

impl Limit {
    /// The limit in force now.
    pub fn current() -> io::Result<Self> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given and nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            soft: limit.rlim_cur,
            hard: limit.rlim_max,
        })
    }

    /// Raises the soft limit to the hard one and returns the limit in force afterwards. A
    /// hard limit the kernel will not grant (`RLIM_INFINITY` above `fs.nr_open`) leaves the
    /// soft one where it was.
    pub fn raise() -> io::Result<Self> {
        let limit = Self::current()?;
        if limit.soft >= limit.hard {
            return Ok(limit);
        }
        let raised = libc::rlimit {
            rlim_cur: limit.hard,
            rlim_max: limit.hard,
        };
        // SAFETY: setrlimit reads the struct it is given and nothing else.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            tracing::debug!(error = %Chain(&io::Error::last_os_error()), "raising ulimit -n to the hard limit failed");
        }
        Self::current()
    }
}

/// How many connections may be open, fitted to the descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// WebSockets in all: `MAX_CONNECTIONS`, or less when its default did not fit.
    pub sockets: usize,
    /// TCP connections in all, WebSockets included.
    pub connections: usize,
    /// `MAX_CONNECTIONS` was left at its default and lowered from this to fit.
    pub lowered_from: Option<usize>,
}

/// Fits the configured caps under `limit`. A cap that was set explicitly and does not fit is a
/// configuration error; a defaulted `MAX_CONNECTIONS` is lowered instead.
pub fn fit(config: &Config, limit: Limit) -> Result<Caps, ConfigError> {
    let available = limit.soft.saturating_sub(RESERVED);
    let room = (available / 4).min(HTTP_ROOM);
    let for_sockets = usize::try_from(available - room).unwrap_or(usize::MAX);
    let wanted = config.socket.limits.total;
    let refuse = |name: &'static str, value: usize, needs: String| {
        let advice = format!(
            "{needs}, but ulimit -n is {} (hard limit {}): raise the hard limit (ulimit -Hn, \
             LimitNOFILE= for systemd, --ulimit nofile= for Docker) or lower {name}",
            limit.soft, limit.hard
        );
        ConfigError::new(name, value.to_string(), advice)
    };
    if for_sockets == 0 {
        return Err(refuse(
            MAX_CONNECTIONS.setting.name,
            wanted,
            format!(
                "chatd needs more than {RESERVED} file descriptors (that many for its \
                 databases, listeners and runtime, the rest for connections)"
            ),
        ));
    }
    let (sockets, lowered_from) = if wanted <= for_sockets {
        (wanted, None)
    } else if config.socket.total_is_explicit {
        return Err(refuse(
            MAX_CONNECTIONS.setting.name,
            wanted,
            format!(
                "{wanted} sockets need {} file descriptors ({room} more for HTTP requests and \
                 {RESERVED} for the databases, listeners and runtime)",
                (wanted as u64).saturating_add(room + RESERVED)
            ),
        ));
    } else {
        (for_sockets, Some(wanted))
    };
    let connections = match config.http.max_connections {
        Some(explicit) if explicit as u64 > available => {
            return Err(refuse(
                HTTP_MAX_CONNECTIONS.setting.name,
                explicit,
                format!(
                    "{explicit} connections need {} file descriptors ({RESERVED} more for the \
                     databases, listeners and runtime)",
                    (explicit as u64).saturating_add(RESERVED)
                ),
            ));
        }
        Some(explicit) => explicit,
        // `sockets + room` never exceeds `available`.
        None => sockets + room as usize,
    };
    Ok(Caps {
        sockets,
        connections,
        lowered_from,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Config {
        let vars: HashMap<_, _> = vars.iter().copied().collect();
        Config::from_lookup(|name| vars.get(name).map(|v| v.to_string())).unwrap()
    }

    fn limit(soft: u64) -> Limit {
        Limit { soft, hard: soft }
    }

    #[test]
    fn what_fits_is_kept_and_http_gets_room_beside_the_sockets() {
        let caps = fit(&config(&[]), limit(1 << 20)).unwrap();
        assert_eq!(
            caps,
            Caps {
                sockets: 50_000,
                connections: 50_000 + 1024,
                lowered_from: None
            }
        );
        let caps = fit(&config(&[("HTTP_MAX_CONNECTIONS", "80")]), limit(4096)).unwrap();
        assert_eq!(caps.connections, 80);
    }

    #[test]
    fn a_default_that_does_not_fit_is_lowered() {
        // 1024 - 256 = 768 for connections: a quarter for HTTP requests, the rest for sockets.
        let caps = fit(&config(&[]), limit(1024)).unwrap();
        assert_eq!(
            caps,
            Caps {
                sockets: 576,
                connections: 768,
                lowered_from: Some(50_000)
            }
        );
    }

    #[test]
    fn an_explicit_cap_that_does_not_fit_is_refused_with_what_to_raise() {
        let err = fit(&config(&[("MAX_CONNECTIONS", "50000")]), limit(1024))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("MAX_CONNECTIONS=\"50000\""), "{err}");
        assert!(err.contains("ulimit -n is 1024"), "{err}");
        let err = fit(&config(&[("HTTP_MAX_CONNECTIONS", "5000")]), limit(4096))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("HTTP_MAX_CONNECTIONS=\"5000\""), "{err}");
        assert!(fit(&config(&[]), limit(RESERVED)).is_err());
        assert!(fit(&config(&[("MAX_CONNECTIONS", "1")]), limit(RESERVED + 1)).is_ok());
    }
}
