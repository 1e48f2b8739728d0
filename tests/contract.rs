//! The public contract of `../shared/DESIGN.md` §1, spelled out as types: if a signature
//! drifts, this file stops compiling.
#![allow(clippy::type_complexity)] // the point is to spell each signature out in full

use std::time::Duration;

use conduit::{
    channel, Backend, Error, Message, Receiver, RecvError, RecvTimeoutError, SendError,
    SendTimeoutError, Sender, TryRecvError, TrySendError,
};

fn is_message<T: Message>() {}
fn is_error<E: std::error::Error + std::fmt::Debug + std::fmt::Display>() {}
fn is_clone_send<T: Clone + Send>() {}

#[test]
fn signatures_match_the_design() {
    is_message::<(u32, String)>();
    let _: fn(Backend) -> Result<(Sender<u64>, Receiver<u64>), Error> = channel::<u64>;
    let _: fn(&str) -> Result<Receiver<u64>, Error> = Receiver::<u64>::bind;
    let _: fn(&Receiver<u64>) -> Result<u64, RecvError> = Receiver::<u64>::recv;
    let _: fn(&Receiver<u64>) -> Result<u64, TryRecvError> = Receiver::<u64>::try_recv;
    let _: fn(&Receiver<u64>, Duration) -> Result<u64, RecvTimeoutError> =
        Receiver::<u64>::recv_timeout;
    let _: fn(&str) -> Result<Sender<u64>, Error> = Sender::<u64>::connect;
    let _: fn(&Sender<u64>, u64) -> Result<(), SendError<u64>> = Sender::<u64>::send;
    let _: fn(&Sender<u64>, u64) -> Result<(), TrySendError<u64>> = Sender::<u64>::try_send;
    let _: fn(&Sender<u64>, u64, Duration) -> Result<(), SendTimeoutError<u64>> =
        Sender::<u64>::send_timeout;
    is_clone_send::<Sender<u64>>();
    is_error::<Error>();
    is_error::<RecvError>();
    is_error::<TryRecvError>();
    is_error::<RecvTimeoutError>();
    is_error::<SendError<u64>>();
    is_error::<TrySendError<u64>>();
    is_error::<SendTimeoutError<u64>>();
    // The enum and its variants, and `Debug` without `T: Debug`.
    struct Opaque;
    let backends = [
        Backend::Thread,
        Backend::Shm,
        Backend::Socket,
        Backend::Pipe,
    ];
    assert_eq!(backends.len(), 4);
    let e = SendError::Disconnected(Opaque);
    assert!(e.is_disconnected());
    assert_eq!(format!("{e:?}"), "Disconnected(..)");
    let _ = e.into_inner();
    let _ = TrySendError::Full(Opaque).into_inner();
    let _ = TrySendError::Disconnected(Opaque).into_inner();
    let _ = SendTimeoutError::Timeout(Opaque).into_inner();
    let _ = SendTimeoutError::Disconnected(Opaque).into_inner();
    let _ = (
        RecvError::Disconnected,
        TryRecvError::Empty,
        TryRecvError::Disconnected,
    );
    let _ = (RecvTimeoutError::Timeout, RecvTimeoutError::Disconnected);
}

#[test]
fn iterators_borrow_the_receiver() {
    let (tx, rx) = channel::<u8>(Backend::Thread).unwrap();
    tx.send(1).unwrap();
    drop(tx);
    let it: &mut dyn Iterator<Item = u8> = &mut rx.try_iter();
    assert_eq!(it.next(), Some(1));
    assert_eq!(rx.iter().count(), 0);
}
