//! Parses `scheme:rest` addresses into a typed [`Address`].

use std::path::PathBuf;

use crate::Error;

/// A parsed endpoint address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Address {
    /// `thread:NAME`: the process-wide registry.
    Thread(String),
    /// `shm:PATH`: shared memory, rendezvous at a Unix socket file.
    Shm(PathBuf),
    /// `unix:PATH`: Unix domain stream socket.
    Unix(PathBuf),
    /// `tcp:HOST:PORT`.
    Tcp(String),
    /// `zenoh:KEY`: a zenoh key expression without wildcards.
    #[cfg_attr(not(feature = "zenoh"), allow(dead_code))]
    Zenoh(String),
}

/// Longest Unix socket path Linux accepts (`sun_path` is 108 bytes with the NUL).
const MAX_UNIX_PATH: usize = 107;

impl Address {
    pub(crate) fn parse(addr: &str) -> Result<Address, Error> {
        let bad = |reason: &str| Error::BadAddress {
            addr: addr.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = addr
            .split_once(':')
            .ok_or_else(|| bad("expected SCHEME:REST, where SCHEME is thread, shm, unix or tcp"))?;
        match scheme {
            "thread" => {
                if rest.is_empty() {
                    return Err(bad("the thread name is empty"));
                }
                Ok(Address::Thread(rest.to_string()))
            }
            "unix" | "shm" => {
                if rest.is_empty() {
                    return Err(bad("the socket path is empty"));
                }
                if rest.len() > MAX_UNIX_PATH {
                    return Err(bad("the socket path is longer than 107 bytes"));
                }
                if rest.contains('\0') {
                    return Err(bad("the socket path contains a NUL byte"));
                }
                let path = PathBuf::from(rest);
                Ok(if scheme == "unix" {
                    Address::Unix(path)
                } else {
                    Address::Shm(path)
                })
            }
            "tcp" => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| bad("expected tcp:HOST:PORT"))?;
                if host.is_empty() {
                    return Err(bad("the host is empty"));
                }
                port.parse::<u16>()
                    .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
                Ok(Address::Tcp(rest.to_string()))
            }
            "zenoh" => {
                check_zenoh_key(rest).map_err(bad)?;
                Ok(Address::Zenoh(rest.to_string()))
            }
            _ => Err(bad(
                "unknown scheme; expected thread:NAME, shm:PATH, unix:PATH, tcp:HOST:PORT or \
                 zenoh:KEY",
            )),
        }
    }
}

/// Checks a `zenoh:` key: zenoh key-expression chunks (`a/b/c`) without wildcards or
/// characters zenoh reserves. conduit adds its own chunks below the key.
fn check_zenoh_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("the zenoh key is empty");
    }
    if key.len() > 200 {
        return Err("the zenoh key is longer than 200 bytes");
    }
    if key.split('/').any(str::is_empty) {
        return Err("the zenoh key has an empty chunk (a leading, trailing or double '/')");
    }
    if key.contains(['*', '$', '?', '#', '\0']) || key.chars().any(char::is_whitespace) {
        return Err("the zenoh key contains a wildcard, whitespace or a character zenoh reserves");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme() {
        assert_eq!(
            Address::parse("thread:jobs").unwrap(),
            Address::Thread("jobs".into())
        );
        assert_eq!(
            Address::parse("unix:/tmp/a.sock").unwrap(),
            Address::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            Address::parse("shm:/tmp/a.sock").unwrap(),
            Address::Shm("/tmp/a.sock".into())
        );
        assert_eq!(
            Address::parse("tcp:127.0.0.1:80").unwrap(),
            Address::Tcp("127.0.0.1:80".into())
        );
        assert_eq!(
            Address::parse("tcp:[::1]:0").unwrap(),
            Address::Tcp("[::1]:0".into())
        );
        assert_eq!(
            Address::parse("zenoh:app/jobs").unwrap(),
            Address::Zenoh("app/jobs".into())
        );
    }

    #[test]
    fn rejects_bad_addresses() {
        for bad in [
            "",
            "jobs",
            "thread:",
            "unix:",
            "udp:1.2.3.4:5",
            "tcp:localhost",
            "tcp::80",
            "tcp:host:99999",
            "unix:/tmp/a\0b",
            "zenoh:",
            "zenoh:app/*",
            "zenoh:app/**",
            "zenoh:/app",
            "zenoh:app/",
            "zenoh:a//b",
            "zenoh:a$*b",
            "zenoh:a?b",
            "zenoh:a b",
        ] {
            let err = Address::parse(bad).unwrap_err();
            assert!(matches!(err, Error::BadAddress { .. }), "{bad:?}: {err}");
        }
        let long = format!("unix:/{}", "x".repeat(200));
        assert!(Address::parse(&long).is_err());
    }
}
