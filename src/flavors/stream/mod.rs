//! Stream flavor: encoded messages as length-prefixed frames (`frame.rs`) over a Unix
//! socket, a TCP socket or a pipe.
//!
//! - `mod.rs` (here): anonymous pairs.
//! - `send.rs`: the sending half: framing, vectored writes, committed tails.
//! - `sink.rs`: large messages written as they are encoded, byte strings straight from the
//!   caller's value.
//! - `write.rs`: writes under a deadline, without `SIGPIPE`.
//! - `recv.rs`: the receiving half: polling every connection, the fair scan.

use std::os::fd::OwnedFd;

use crate::sys::StreamKind;
use crate::{Error, Options};

mod recv;
mod send;
mod sink;
mod write;

pub(crate) use recv::StreamReceiver;
pub(crate) use send::StreamSender;

/// Creates an anonymous pair: a Unix socketpair, or a pipe.
pub(crate) fn pair(pipe: bool, opts: &Options) -> Result<(StreamSender, StreamReceiver), Error> {
    let (read_end, write_end, kind) = if pipe {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| Error::io("creating a pipe", e))?;
        if let Some(cap) = opts.capacity {
            rustix::pipe::fcntl_setpipe_size(&w, cap)
                .map_err(|e| Error::io("setting the pipe's capacity", e))?;
        }
        (r, w, StreamKind::Pipe)
    } else {
        let (a, b) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::io("creating a socketpair", e))?;
        let (a, b) = (OwnedFd::from(a), OwnedFd::from(b));
        // The receiving end never writes; the sending end never reads.
        let _ = rustix::net::shutdown(&a, rustix::net::Shutdown::Write);
        (a, b, StreamKind::Unix)
    };
    let tx = StreamSender::from_fd(write_end, kind, opts)?;
    let rx = StreamReceiver::from_fd(read_end, kind, opts)?;
    Ok((tx, rx))
}
