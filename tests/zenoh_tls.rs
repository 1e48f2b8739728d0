//! `zenoh:` over TLS, configured with zenoh's own settings: a certificate authority and a
//! server certificate for 127.0.0.1 are made at test time; a child that trusts the
//! authority connects and delivers, a child that trusts another one is refused.
//!
//! Its own test binary: a process has one zenoh session, and this one's listens only on
//! `tls/127.0.0.1:PORT` (multicast scouting off).
#![cfg(feature = "zenoh")]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Reaped;
use conduit::{Error, Options, Receiver, RecvTimeoutError, Sender};

const ENTRY: &str = "tls_child";
const ADDR_ENV: &str = "CDT_ZENOH_ADDR";
const PATIENCE: Duration = Duration::from_secs(20);

/// A certificate authority, a server certificate it signs for 127.0.0.1 and localhost,
/// and an unrelated authority, as PEM files in `dir`.
fn make_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let authority = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.clone().self_signed(&key).unwrap();
        (params, key, cert)
    };
    let (ca_params, ca_key, ca_cert) = authority("conduit test CA");
    let (_, _, other_cert) = authority("another CA");
    let server_key = KeyPair::generate().unwrap();
    let server_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let write = |name: &str, pem: String| std::fs::write(dir.join(name), pem).unwrap();
    write("ca.pem", ca_cert.pem());
    write("other-ca.pem", other_cert.pem());
    write("server.pem", server_cert.pem());
    write("server-key.pem", server_key.serialize_pem());
}

/// The receiving side: listens on TLS only.
fn server_config(dir: &Path, port: u16) -> String {
    format!(
        r#"{{ mode: "peer",
            listen: {{ endpoints: ["tls/127.0.0.1:{port}"] }},
            scouting: {{ multicast: {{ enabled: false }} }},
            transport: {{ link: {{ tls: {{
                root_ca_certificate: "{ca}",
                listen_certificate: "{cert}",
                listen_private_key: "{key}",
            }} }} }} }}"#,
        ca = dir.join("ca.pem").display(),
        cert = dir.join("server.pem").display(),
        key = dir.join("server-key.pem").display(),
    )
}

/// A connecting side that trusts `ca`; it listens nowhere.
fn client_config(ca: &Path, port: u16) -> String {
    format!(
        r#"{{ mode: "peer",
            listen: {{ endpoints: [] }},
            connect: {{ endpoints: ["tls/127.0.0.1:{port}"] }},
            scouting: {{ multicast: {{ enabled: false }} }},
            transport: {{ link: {{ tls: {{ root_ca_certificate: "{ca}" }} }} }} }}"#,
        ca = ca.display(),
    )
}

fn spawn(role: &str, addr: &str, config: &str) -> Reaped {
    let mut cmd = common::child_command(ENTRY, role);
    common::die_with_parent(&mut cmd);
    cmd.env(ADDR_ENV, addr).env("ZENOH_CONFIG", config);
    Reaped::new(cmd.spawn().expect("spawn the child"))
}

#[test]
fn tls_with_a_trusted_certificate_and_refused_with_another() {
    let dir: PathBuf = common::temp_dir();
    make_certificates(&dir);
    let port = common::zenoh::port();
    let addr = format!("zenoh:conduit-test/tls/{}", std::process::id());
    let opts = Options::new().zenoh_config(server_config(&dir, port));
    let rx = Receiver::<String>::bind_with(&addr, &opts).expect("bind over TLS");

    let trusted = spawn("trusted", &addr, &client_config(&dir.join("ca.pem"), port));
    for i in 0..100 {
        match rx.recv_timeout(PATIENCE) {
            Ok(s) => assert_eq!(s, format!("over TLS {i}")),
            Err(e) => panic!("message {i} over TLS: {e:?}"),
        }
    }
    assert!(matches!(
        rx.recv_timeout(PATIENCE),
        Err(RecvTimeoutError::Disconnected)
    ));
    trusted.expect_success(PATIENCE, "the child that trusts the authority");

    let refused = spawn(
        "refused",
        &addr,
        &client_config(&dir.join("other-ca.pem"), port),
    );
    refused.expect_success(PATIENCE, "the child that trusts another authority");
    assert!(
        matches!(rx.try_recv(), Err(conduit::TryRecvError::Disconnected)),
        "nothing arrived from the refused child"
    );
}

#[test]
fn tls_child() {
    let Some(role) = common::role() else {
        return;
    };
    common::child_watchdog(Duration::from_secs(60));
    let addr = std::env::var(ADDR_ENV).expect("the address");
    match role.as_str() {
        "trusted" => {
            let tx = Sender::<String>::connect(&addr).expect("connect over TLS");
            for i in 0..100 {
                tx.send(format!("over TLS {i}")).expect("send over TLS");
            }
        }
        // The TLS handshake fails (the server's certificate is not signed by the authority
        // this side trusts), so no receiver is ever found.
        "refused" => match Sender::<String>::connect(&addr) {
            Err(Error::NotFound { .. }) => {}
            other => panic!(
                "connect with the wrong authority: {:?}",
                other.map(|_| "connected")
            ),
        },
        other => panic!("unknown role {other}"),
    }
}
