//! The process's one zenoh session, opened by its first `zenoh:` channel and shared by the
//! rest, and the configuration it is opened with.
//!
//! The configuration comes from the channel's [`Options`] (JSON5 or a file), else from the
//! `ZENOH_CONFIG` environment variable (a file path, or JSON5 when it starts with `{`), else
//! it is conduit's loopback-only default ([`default_config`]). A given configuration is used
//! as given.

use std::path::Path;

use parking_lot::Mutex;
use zenoh::{Config, Session, Wait};

use crate::options::ZenohConfig;
use crate::{Error, Options};

/// The local port the default configuration meets on: the first process listens on it,
/// the others connect to it (and then to each other, by zenoh's gossip).
pub(crate) const DEFAULT_PORT: u16 = 17447;

/// The environment variable naming a zenoh configuration, as zenoh's own tools read it.
pub(crate) const CONFIG_ENV: &str = "ZENOH_CONFIG";

/// The open session and what it was opened with (`None`: the default or the environment).
static SESSION: Mutex<Option<(Option<ZenohConfig>, Session)>> = Mutex::new(None);

/// The process's session, opened on first use. A channel whose `Options` name a
/// configuration other than the one the session was opened with is refused.
pub(crate) fn session(addr: &str, opts: &Options) -> Result<Session, Error> {
    let mut slot = SESSION.lock();
    if let Some((opened_with, session)) = &*slot {
        return match &opts.zenoh_config {
            Some(wanted) if Some(wanted) != opened_with.as_ref() => Err(Error::Unsupported {
                what: format!(
                    "a zenoh configuration other than the one this process's zenoh session \
                     was opened with ({}), asked for by {addr:?},",
                    describe(opened_with.as_ref())
                ),
            }),
            _ => Ok(session.clone()),
        };
    }
    let session = match &opts.zenoh_config {
        Some(given) => open(addr, load(addr, given)?)?,
        None => match std::env::var_os(CONFIG_ENV) {
            Some(value) => {
                let value = value.to_string_lossy();
                let given = if value.trim_start().starts_with('{') {
                    ZenohConfig::Json5(value.into_owned())
                } else {
                    ZenohConfig::File(value.into_owned().into())
                };
                open(addr, load(addr, &given)?)?
            }
            None => open_default(addr)?,
        },
    };
    *slot = Some((opts.zenoh_config.clone(), session.clone()));
    Ok(session)
}

fn describe(config: Option<&ZenohConfig>) -> String {
    match config {
        None => "the default configuration (or ZENOH_CONFIG's)".to_string(),
        Some(ZenohConfig::Json5(_)) => "a JSON5 configuration from its Options".to_string(),
        Some(ZenohConfig::File(path)) => format!("the configuration file {}", path.display()),
    }
}

fn load(addr: &str, given: &ZenohConfig) -> Result<Config, Error> {
    let bad = |what: String, e: zenoh::Error| Error::BadAddress {
        addr: addr.to_string(),
        reason: format!("{what} is not a valid zenoh configuration: {e}"),
    };
    match given {
        ZenohConfig::Json5(text) => {
            Config::from_json5(text).map_err(|e| bad("the JSON5 configuration".into(), e))
        }
        ZenohConfig::File(path) => Config::from_file(Path::new(path))
            .map_err(|e| bad(format!("the file {}", path.display()), e)),
    }
}

fn open(addr: &str, config: Config) -> Result<Session, Error> {
    zenoh::open(config).wait().map_err(|e| {
        Error::io(
            format!("opening the zenoh session for {addr:?}"),
            std::io::Error::other(e.to_string()),
        )
    })
}

/// conduit's default: a peer that reaches nothing beyond 127.0.0.1. Multicast scouting off;
/// gossip (which only runs over connections already open) on, so processes that met at
/// [`DEFAULT_PORT`] learn each other's listeners and connect directly. The data queue of a
/// link holds 16 batches instead of zenoh's 2 (docs/performance.md: 1 MiB messages went
/// from 1.1 to 2.3 GiB/s).
pub(crate) fn default_config(listen_port: u16, connect: bool) -> String {
    let connect = if connect {
        format!("\"tcp/127.0.0.1:{DEFAULT_PORT}\"")
    } else {
        String::new()
    };
    format!(
        r#"{{
            mode: "peer",
            listen: {{ endpoints: ["tcp/127.0.0.1:{listen_port}"] }},
            connect: {{ endpoints: [{connect}] }},
            scouting: {{ multicast: {{ enabled: false }}, gossip: {{ enabled: true }} }},
            transport: {{ link: {{ tx: {{ queue: {{ size: {{ data: 16 }} }} }} }} }},
        }}"#
    )
}

/// Opens the default: listening on [`DEFAULT_PORT`] when it is free (this process is where
/// the others meet), else on a port the kernel picks, connected to [`DEFAULT_PORT`].
fn open_default(addr: &str) -> Result<Session, Error> {
    let first = Config::from_json5(&default_config(DEFAULT_PORT, false))
        .expect("the default configuration parses");
    if let Ok(session) = zenoh::open(first).wait() {
        return Ok(session);
    }
    let joined =
        Config::from_json5(&default_config(0, true)).expect("the default configuration parses");
    open(addr, joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both shapes of the default parse, scout by no multicast, and name only 127.0.0.1.
    #[test]
    fn the_default_stays_on_loopback() {
        for (port, connect) in [(DEFAULT_PORT, false), (0, true)] {
            let config = Config::from_json5(&default_config(port, connect)).unwrap();
            let get = |key: &str| config.get_json(key).unwrap();
            assert_eq!(get("scouting/multicast/enabled"), "false");
            assert_eq!(get("mode"), "\"peer\"");
            for key in ["listen/endpoints", "connect/endpoints"] {
                let endpoints = get(key);
                let named: Vec<&str> = endpoints.split('"').filter(|s| s.contains('/')).collect();
                assert!(
                    named.iter().all(|e| e.starts_with("tcp/127.0.0.1:")),
                    "{key}: {endpoints}"
                );
            }
            assert_eq!(get("connect/endpoints").contains("17447"), connect);
        }
    }
}
