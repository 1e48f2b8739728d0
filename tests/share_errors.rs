//! The errors of handing a channel end to a child process, and of taking one from a parent,
//! say what happened: a handle that cannot be handed over now is `CannotShare`, a bad
//! inheritance name or variable is `BadInheritance`, never an address or I/O error.

#[path = "common/mod.rs"]
mod common;

use std::process::Command;

use conduit::{channel, Backend, Error, Receiver, Sender};

fn expect_cannot_share(result: Result<(), Error>, what: &str) {
    match result {
        Err(e @ Error::CannotShare { .. }) => {
            assert!(e.to_string().contains("cannot be handed"), "{what}: {e}")
        }
        other => panic!("{what}: expected CannotShare, got {other:?}"),
    }
}

#[test]
fn a_bound_receiver_cannot_be_shared() {
    for scheme in ["unix", "shm"] {
        let addr = format!("{scheme}:{}", common::temp_dir().join("r.sock").display());
        let rx = Receiver::<u64>::bind(&addr).expect("bind");
        let result = rx.share_with_child(&mut Command::new("true"), "RX");
        expect_cannot_share(result, &addr);
    }
}

#[test]
fn a_shm_sender_is_handed_over_once() {
    let (tx, _rx) = channel::<u64>(Backend::Shm).expect("shm pair");
    tx.share_with_child(&mut Command::new("true"), "TX")
        .expect("the first hand-over");
    expect_cannot_share(
        tx.share_with_child(&mut Command::new("true"), "TX"),
        "a second hand-over",
    );
}

#[test]
fn bad_inheritance_names_and_variables() {
    match Receiver::<u64>::from_parent("not a name!") {
        Err(Error::BadInheritance { .. }) => {}
        other => panic!("an invalid name: expected BadInheritance, got {other:?}"),
    }
    let var = "CONDUIT_FD_GARBLED";
    std::env::set_var(var, "not;a;token");
    let result = Sender::<u64>::from_parent("GARBLED");
    std::env::remove_var(var);
    match result {
        Err(e @ Error::BadInheritance { .. }) => {
            assert!(e.to_string().contains(var), "{e}")
        }
        other => panic!("a garbled variable: expected BadInheritance, got {other:?}"),
    }
}
