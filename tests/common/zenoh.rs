//! zenoh configurations for tests: everything on 127.0.0.1, multicast scouting off.
//!
//! A test process listens on a port of its own (picked free at start, so test binaries
//! running side by side never meet); the children it spawns get a configuration that
//! connects to it, through the `ZENOH_CONFIG` environment variable.

use std::process::Command;
use std::sync::OnceLock;

/// The short lease a child announces when a test stops it (`short_lease_config`): how long
/// it keeps its liveliness while silent (stopped, not dead). Every other session announces
/// the engine's default (10 s), so that a loaded machine that starves a live process for a
/// moment does not expire it. Killed processes are noticed sooner either way, when the
/// kernel closes their sockets.
pub const LEASE_MS: u64 = 2000;

/// The configuration of a test process's own session (not a child's).
pub fn config() -> &'static str {
    static CONFIG: OnceLock<String> = OnceLock::new();
    CONFIG.get_or_init(|| {
        format!(
            r#"{{ mode: "peer", listen: {{ endpoints: ["tcp/127.0.0.1:{}"] }}, {} }}"#,
            port(),
            COMMON
        )
    })
}

/// What every test configuration shares: no multicast.
const COMMON: &str = r#"scouting: { multicast: { enabled: false } }"#;

/// The port this process's session listens on.
pub fn port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("its address").port()
    })
}

/// Options for a test's zenoh channel: this process's configuration, or none in a child
/// (which takes its configuration from `ZENOH_CONFIG`).
pub fn opts() -> conduit::Options {
    if std::env::var_os("ZENOH_CONFIG").is_some() {
        conduit::Options::new()
    } else {
        conduit::Options::new().zenoh_config(config())
    }
}

/// The configuration for a child: listens on a port of its own, connects to this process.
pub fn child_config() -> String {
    format!(
        r#"{{ mode: "peer", listen: {{ endpoints: ["tcp/127.0.0.1:0"] }},
            connect: {{ endpoints: ["tcp/127.0.0.1:{}"] }}, {} }}"#,
        port(),
        COMMON
    )
}

/// A child's configuration announcing the short lease [`LEASE_MS`], for a child the test
/// stops (SIGSTOP) to see it expire.
pub fn short_lease_config() -> String {
    format!(
        r#"{{ mode: "peer", listen: {{ endpoints: ["tcp/127.0.0.1:0"] }},
            connect: {{ endpoints: ["tcp/127.0.0.1:{}"] }}, {},
            transport: {{ link: {{ tx: {{ lease: {LEASE_MS} }} }} }} }}"#,
        port(),
        COMMON
    )
}

/// Makes `cmd`'s process join this process's zenoh network.
pub fn join(cmd: &mut Command) {
    // This process's session must be open (listening) before the child connects.
    opened();
    cmd.env("ZENOH_CONFIG", child_config());
}

/// Opens this process's session with its test configuration (by binding and dropping a
/// throwaway receiver), so that channels made without options share it.
pub fn opened() {
    static OPEN: OnceLock<()> = OnceLock::new();
    OPEN.get_or_init(|| {
        let addr = format!("zenoh:conduit-test/open/{}", std::process::id());
        conduit::Receiver::<u8>::bind_with(&addr, &opts()).expect("open the zenoh session");
    });
}

/// A fresh `zenoh:` address, unique across processes and tests. The process's session is
/// open (with the test configuration) once this returns.
pub fn key(what: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    opened();
    format!(
        "zenoh:conduit-test/{what}/{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
