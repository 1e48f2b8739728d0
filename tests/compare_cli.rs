//! The `compare` example's command line and JSON rows, tested where `cargo test` runs them:
//! the example's own modules, included by path (examples' unit tests run only with
//! `cargo test --example compare`). Cheap: no peer is started.

#[allow(dead_code)] // the tool uses more of these modules than the tests do
#[path = "../examples/compare/cli.rs"]
mod cli;
#[allow(dead_code)]
#[path = "../examples/compare/names.rs"]
mod names;
#[allow(dead_code)]
#[path = "../examples/compare/report.rs"]
mod report;

use cli::{parse, parse_or_usage, parse_sizes, Mode, Parsed, USAGE};
use names::{format_size, Name};
use report::{Row, Rtt, Throughput};

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

fn config(line: &str) -> cli::Config {
    match parse(&args(line)) {
        Ok(Parsed::Run(cfg)) => cfg,
        other => panic!("{line:?} parsed as {other:?}"),
    }
}

#[test]
fn defaults_measure_every_row_at_five_sizes() {
    let cfg = config("");
    assert_eq!(cfg.names, Name::ALL.to_vec());
    assert_eq!(cfg.sizes, vec![8, 64, 4096, 65536, 1 << 20]);
    assert_eq!(cfg.mode, Mode::Default);
    assert!(!cfg.json_only);
    // Unasked, the spot rows run at their few sizes; named, or in a full run, at all.
    assert!(!cfg.every_size);
    assert!(config("--backends ipc-bytes").every_size);
    assert!(config("--full").every_size);
    assert!(!config("--quick").every_size);
    assert!(!Name::IpcBytes.measures_unasked(8) && Name::IpcBytes.measures_unasked(1 << 20));
    assert!(Name::Iceoryx2Wait.measures_unasked(8) && !Name::Iceoryx2Wait.measures_unasked(64));
    assert!(Name::Shm.measures_unasked(64) && !Name::ShmVec.measures_unasked(64));
}

#[test]
fn sizes_take_units_and_come_back_sorted_and_unique() {
    assert_eq!(
        parse_sizes("8,64,4KiB,1MiB").unwrap(),
        vec![8, 64, 4096, 1 << 20]
    );
    assert_eq!(
        parse_sizes("1M,4k,64B,64,2kib").unwrap(),
        vec![64, 2048, 4096, 1 << 20]
    );
    assert_eq!(config("--sizes=512").sizes, vec![512]);
    assert_eq!(
        parse_sizes("16MiB,64MiB").unwrap(),
        vec![16 << 20, 64 << 20]
    );
    for bad in ["", "0", "8,", "4 KiB", "1GiB", "65MiB", "-8", "8x", "KiB"] {
        assert!(parse_sizes(bad).is_err(), "{bad:?} was accepted");
    }
    let sizes = [8, 64, 4096, 65536, 1 << 20, 1536];
    let shown: Vec<_> = sizes.iter().map(|&s| format_size(s)).collect();
    assert_eq!(
        shown,
        ["8 B", "64 B", "4 KiB", "64 KiB", "1 MiB", "1.5 KiB"]
    );
}

#[test]
fn backends_take_names_and_groups() {
    assert_eq!(
        config("--backends shm,unix,floor").names,
        vec![Name::Floor, Name::Shm, Name::Unix]
    );
    assert_eq!(
        config("--backends peers").names,
        vec![
            Name::Crossbeam,
            Name::RawSocketpair,
            Name::IpcChannel,
            Name::IpcBytes,
            Name::IpcShmem,
            Name::Iceoryx2,
            Name::Iceoryx2Wait
        ]
    );
    let mut backends = vec![Name::Thread, Name::Shm, Name::Unix, Name::Tcp];
    #[cfg(feature = "zenoh")]
    backends.push(Name::Zenoh);
    backends.extend([Name::Pipe, Name::IpcChannel]);
    assert_eq!(config("--backends backends,ipc-channel").names, backends);
    #[cfg(feature = "zenoh")]
    assert_eq!(
        config("--backends zenoh,tcp").names,
        vec![Name::Tcp, Name::Zenoh]
    );
    for &name in Name::ALL {
        assert_eq!(Name::parse(name.as_str()), Some(name));
    }
}

#[test]
fn modes_and_json_only() {
    let quick = config("--quick --json-only");
    assert_eq!((quick.mode, quick.json_only), (Mode::Quick, true));
    let full = config("--full");
    assert_eq!(full.mode, Mode::Full);
    assert!(full.sizes.len() > 5 && full.sizes.contains(&(4 << 20)));
    assert_eq!(full.sizes.last(), Some(&(64 << 20)));
    // --sizes wins over the mode's sizes, in either order.
    assert_eq!(config("--sizes 8 --full").sizes, vec![8]);
    assert_eq!(parse(&args("-h")), Ok(Parsed::Help));
    assert_eq!(parse(&args("--quick --help")), Ok(Parsed::Help));
}

#[test]
fn a_bad_command_line_is_one_line_then_the_usage_with_status_2() {
    for line in [
        "--bogus",
        "extra",
        "--sizes",
        "--sizes 3GiB",
        "--backends shm,nope",
        "--backends",
        "--quick --full",
        "--quick=yes",
    ] {
        let refusal = parse_or_usage(&args(line)).expect_err(line);
        assert_eq!(refusal.status, 2, "{line}");
        let (first, rest) = refusal.message.split_once('\n').unwrap();
        assert!(first.starts_with("compare: "), "{line}: {first}");
        assert_eq!(rest, format!("\n{USAGE}"), "{line}");
    }
}

#[test]
fn the_usage_explains_every_flag() {
    for flag in [
        "--backends",
        "--sizes",
        "--quick",
        "--full",
        "--json-only",
        "--help",
    ] {
        assert!(USAGE.contains(flag), "{flag} is not in the usage");
    }
    for field in [
        "name",
        "kind",
        "workload",
        "size",
        "p50_ns",
        "p99_ns",
        "msgs_per_s",
        "bytes_per_s",
    ] {
        assert!(
            USAGE.contains(field),
            "the JSON field {field} is not described"
        );
    }
}

#[test]
fn json_rows_have_the_documented_shape() {
    let rows = vec![
        Row::rtt(
            Name::Floor,
            8,
            Ok(Rtt {
                p50_ns: 297.04,
                p99_ns: 410.0,
                batch: 4,
                samples: 1000,
            }),
        ),
        Row::throughput(
            Name::Shm,
            4096,
            Ok(Throughput {
                msgs_per_s: 2.0e6,
                bytes_per_s: 2.0e6 * 4096.0,
                runs: 3,
            }),
        ),
        Row::rtt(Name::IpcChannel, 64, Err("recv: Disconnected".into())),
    ];
    let json: serde_json::Value = serde_json::from_str(&report::to_json(&rows)).unwrap();
    let array = json
        .as_array()
        .expect("a top-level array, one object per row");
    assert_eq!(array.len(), 3);
    let keys = [
        "name",
        "kind",
        "workload",
        "size",
        "p50_ns",
        "p99_ns",
        "msgs_per_s",
        "bytes_per_s",
        "batch",
        "samples",
        "error",
    ];
    for row in array {
        let object = row.as_object().unwrap();
        let mut found: Vec<&str> = object.keys().map(String::as_str).collect();
        let mut expected = keys.to_vec();
        found.sort_unstable();
        expected.sort_unstable();
        assert_eq!(found, expected);
        assert!(["backend", "peer", "floor"].contains(&row["kind"].as_str().unwrap()));
        assert!(["rtt", "throughput"].contains(&row["workload"].as_str().unwrap()));
    }
    let (floor, shm, ipc) = (&array[0], &array[1], &array[2]);
    assert_eq!(floor["name"], "floor");
    assert_eq!(floor["kind"], "floor");
    assert_eq!(floor["p50_ns"], 297.0);
    assert_eq!(floor["batch"], 4);
    assert!(floor["msgs_per_s"].is_null() && floor["bytes_per_s"].is_null());
    assert_eq!(shm["kind"], "backend");
    assert_eq!(shm["workload"], "throughput");
    assert_eq!(shm["size"], 4096);
    assert_eq!(shm["msgs_per_s"], 2.0e6);
    assert!(shm["p50_ns"].is_null() && shm["p99_ns"].is_null());
    assert!(shm["error"].is_null());
    assert_eq!(ipc["kind"], "peer");
    assert_eq!(ipc["error"], "recv: Disconnected");
    assert!(ipc["p50_ns"].is_null());
}
