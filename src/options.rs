//! Tunables shared by every constructor: buffer capacity and message size limit.

/// The default limit on one encoded message: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;

/// The default capacity of a [`Backend::Thread`](crate::Backend::Thread) channel, in messages.
pub const DEFAULT_THREAD_CAPACITY: usize = 1024;

/// The default ring size of a [`Backend::Shm`](crate::Backend::Shm) connection, in bytes
/// of message data: 1 MiB per connected sender.
pub const DEFAULT_SHM_CAPACITY: usize = 1 << 20;

/// The default window of a `zenoh:` connection, in bytes of message data each sender may
/// have in flight before the receiver hands back credit: 4 MiB per connected sender.
#[cfg(feature = "zenoh")]
pub const DEFAULT_ZENOH_WINDOW: usize = 4 << 20;

/// Where the process's zenoh session takes its configuration from, when a `zenoh:` channel
/// opens it ([`Options::zenoh_config`], [`Options::zenoh_config_file`]).
#[cfg(feature = "zenoh")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ZenohConfig {
    /// A zenoh configuration in JSON5.
    Json5(String),
    /// A zenoh configuration file (JSON5 or YAML, as zenoh reads them).
    File(std::path::PathBuf),
}

/// Settings for [`channel_with`](crate::channel_with), [`Receiver::bind_with`](crate::Receiver::bind_with)
/// and [`Sender::connect_with`](crate::Sender::connect_with).
///
/// Capacity is per backend, and so is its unit:
///
/// | backend | unit | default |
/// |---|---|---|
/// | Thread | messages | [`DEFAULT_THREAD_CAPACITY`] (1024) |
/// | Socket (`unix:`, socketpair) | bytes of the kernel send buffer (`SO_SNDBUF`) | the kernel's, `net.core.wmem_default` (212,992 bytes on stock Linux) |
/// | Socket (`tcp:`) | bytes of the kernel send buffer (`SO_SNDBUF`) | autotuned by the kernel |
/// | Pipe | bytes of the pipe buffer (`F_SETPIPE_SZ`) | the kernel's, 65,536 bytes |
/// | Shm | bytes of each sender's ring (rounded up to a power of two, 4 KiB to 1 GiB); set by the receiver | [`DEFAULT_SHM_CAPACITY`] (1 MiB) |
/// | Zenoh (`zenoh:`, feature `zenoh`) | bytes of message data each sender may have in flight (its credit window; one message always fits when none is in flight); set by the receiver | `DEFAULT_ZENOH_WINDOW` (4 MiB) |
///
/// Every backend blocks (or reports `Full`) when its buffer is full. Stream backends also
/// buffer up to one read (64 KiB) plus one partly received message per connection in the
/// receiving process.
///
/// ```
/// use conduit::{channel_with, Backend, Options};
/// let opts = Options::new().capacity(16).max_message_size(1 << 20);
/// let (tx, rx) = channel_with::<Vec<u8>>(Backend::Thread, &opts)?;
/// tx.send(vec![1, 2, 3]).unwrap();
/// assert_eq!(rx.recv().unwrap(), vec![1, 2, 3]);
/// # Ok::<(), conduit::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub(crate) capacity: Option<usize>,
    pub(crate) max_message_size: usize,
    #[cfg(feature = "zenoh")]
    pub(crate) zenoh_config: Option<ZenohConfig>,
}

impl Default for Options {
    fn default() -> Self {
        Options::new()
    }
}

impl Options {
    /// The defaults: the backend's default capacity and a 64 MiB message limit.
    pub fn new() -> Self {
        Options {
            capacity: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            #[cfg(feature = "zenoh")]
            zenoh_config: None,
        }
    }

    /// Sets the buffer capacity, in the backend's unit (see the table above). Zero is
    /// raised to one.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity.max(1));
        self
    }

    /// Sets the largest encoded message, in bytes, that this side sends or accepts.
    /// A receiver refuses (and drops the connection of) a peer that sends more.
    /// The limit cannot exceed 4 GiB − 1.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.min(u32::MAX as usize);
        self
    }

    /// The zenoh configuration (JSON5) for the process's zenoh session, used as given.
    ///
    /// The first `zenoh:` channel of a process opens its one zenoh session, with the
    /// configuration its `Options` name, else the one the `ZENOH_CONFIG` environment
    /// variable names, else conduit's loopback-only default (see the `zenoh:` section of the
    /// crate docs). Later channels share that session; one whose `Options` name another
    /// configuration is refused with [`Error::Unsupported`](crate::Error::Unsupported).
    #[cfg(feature = "zenoh")]
    pub fn zenoh_config(mut self, json5: impl Into<String>) -> Self {
        self.zenoh_config = Some(ZenohConfig::Json5(json5.into()));
        self
    }

    /// Like [`Options::zenoh_config`], from a zenoh configuration file.
    #[cfg(feature = "zenoh")]
    pub fn zenoh_config_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.zenoh_config = Some(ZenohConfig::File(path.into()));
        self
    }

    pub(crate) fn thread_capacity(&self) -> usize {
        self.capacity.unwrap_or(DEFAULT_THREAD_CAPACITY)
    }
}
