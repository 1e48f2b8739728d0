//! The conformance suite: one set of scenarios, each run against every backend it applies to.
//!
//! Every scenario is a function `fn(Setup)`; the [`conformance!`] macro expands it into one
//! `#[test]` per backend, named `<scenario>::<Setup>` (for example
//! `delivery::fifo_per_producer::Tcp`), so a failure names the backend in the test name as
//! well as in its message.

#[path = "../common/mod.rs"]
mod common;

mod bounds;
mod capacity;
mod delivery;
mod disconnect;
mod errors;
mod messages;
mod readiness;
mod setup;
mod sharing;

/// Emits `$item` for every setup, only with the `zenoh` feature for the zenoh one.
macro_rules! gated {
    (Zenoh, $item:item) => {
        #[cfg(feature = "zenoh")]
        $item
    };
    ($setup:ident, $item:item) => {
        $item
    };
}

/// Expands `module::scenario` into a module of tests, one per listed setup (every setup
/// when none are listed).
macro_rules! conformance {
    ($module:ident :: $scenario:ident) => {
        conformance!($module::$scenario => [
            ThreadAnon, ThreadNamed, SocketAnon, PipeAnon, Unix, Tcp, ShmAnon, ShmBound, Zenoh
        ]);
    };
    ($module:ident :: $scenario:ident => [$($setup:ident),+ $(,)?]) => {
        mod $scenario {
            $(
                gated!($setup,
                    #[test]
                    #[allow(non_snake_case)]
                    fn $setup() {
                        crate::$module::$scenario(crate::setup::Setup::$setup);
                    }
                );
            )+
        }
    };
}

/// Setups with an address that more senders can connect to.
macro_rules! bound {
    ($module:ident :: $scenario:ident) => {
        conformance!($module::$scenario => [ThreadNamed, Unix, Tcp, ShmBound, Zenoh]);
    };
}

/// Setups that encode messages into bytes: streams, shared-memory rings and zenoh (all
/// but threads).
macro_rules! stream {
    ($module:ident :: $scenario:ident) => {
        conformance!($module::$scenario => [
            SocketAnon, PipeAnon, Unix, Tcp, ShmAnon, ShmBound, Zenoh
        ]);
    };
}

// 1, 2, 9: ordering, producers, no interleaving.
conformance!(delivery::fifo_per_producer);
conformance!(delivery::many_producers);
conformance!(delivery::clones_never_interleave);

// 3, 4, 11: disconnection both ways, reconnection.
conformance!(disconnect::drain_then_disconnected);
conformance!(disconnect::iterators);
conformance!(disconnect::send_after_receiver_dropped);
conformance!(disconnect::blocked_send_fails_when_receiver_drops);
bound!(disconnect::reconnect_after_disconnect);

// 5, 6: capacity and timeouts.
conformance!(capacity::try_send_full_then_room);
conformance!(capacity::recv_timeout_and_try_recv_on_empty);
stream!(capacity::try_send_larger_than_the_buffer);

// 7, 8, 12: message sizes and shapes.
conformance!(messages::huge_message);
stream!(messages::over_size_limit);
conformance!(messages::receiver_size_limit_applies_to_sender => [Unix, Tcp, ShmBound, Zenoh]);
conformance!(messages::serde_structs);
stream!(bounds::exactly_the_limit);
conformance!(bounds::exactly_the_receivers_limit => [Unix, Tcp, ShmBound, Zenoh]);
conformance!(messages::larger_than_the_buffer);

// 10: constructor errors.
bound!(errors::connect_errors);

// 13, 14, 15: one end shared between threads; room after one receive. Grouped under
// `sharing_tests::` so that `cargo test --test conformance sharing` selects them.
mod sharing_tests {
    conformance!(sharing::try_send_beside_a_blocked_send);
    conformance!(sharing::try_send_beside_a_blocked_send_timeout);
    conformance!(sharing::try_send_on_a_shared_blocked_sender);
    conformance!(sharing::send_timeout_beside_a_blocked_send);
    conformance!(sharing::send_timeout_on_a_shared_blocked_sender);
    conformance!(sharing::try_recv_beside_a_blocked_recv);
    conformance!(sharing::try_recv_beside_a_blocked_recv_timeout);
    conformance!(sharing::recv_timeout_beside_a_blocked_recv);
    conformance!(sharing::recv_timeout_beside_a_blocked_recv_timeout);
    conformance!(sharing::shared_receiver_takes_each_message_once);
    conformance!(sharing::one_recv_makes_room);
    // A child process sends: it inherits the sender or connects to the address (a zenoh:
    // child joins this process's zenoh network over 127.0.0.1).
    conformance!(sharing::request_ack_across_processes => [
        SocketAnon, PipeAnon, Unix, Tcp, ShmAnon, ShmBound, Zenoh
    ]);
}

// The readiness descriptor: readable when a message is ready or the senders are gone (the
// last one dropped, or a sender process killed), quiet when drained, no lost wake-up.
// Grouped under `readiness_tests::`.
mod readiness_tests {
    conformance!(readiness::readable_when_a_message_is_ready);
    conformance!(readiness::readable_when_the_last_sender_goes);
    conformance!(readiness::no_lost_wakeup);
    conformance!(readiness::no_lost_wakeup_in_lockstep);
    conformance!(readiness::shared_receiver_loses_no_wakeup);
    conformance!(readiness::readable_when_a_sender_process_is_killed => [
        SocketAnon, PipeAnon, Unix, Tcp, ShmAnon, ShmBound, Zenoh
    ]);
}
