//! The one error type: every message names the op (or kernel) and the shapes involved.

/// Everything that can go wrong in wgpu-cnn.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operands whose shapes do not fit the op.
    #[error("{op}: {msg}")]
    Shape {
        /// The op that failed.
        op: &'static str,
        /// What was wrong, with the shapes or values.
        msg: String,
    },

    /// A setting outside its valid range (stride 0, a NaN learning rate, ...).
    #[error("{op}: invalid argument: {msg}")]
    InvalidArgument {
        /// The op that failed.
        op: &'static str,
        /// What was wrong, with the shapes or values.
        msg: String,
    },

    /// Host data whose length does not match the shape it was given.
    #[error("{op}: shape {shape:?} holds {expected} elements but {got} were given")]
    DataLength {
        /// The op that failed.
        op: &'static str,
        /// The shape given.
        shape: Vec<usize>,
        /// Elements the shape holds.
        expected: usize,
        /// Elements given.
        got: usize,
    },

    /// Operands that live on different devices.
    #[error("{op}: operands live on different devices ({a} and {b}); move one with Tensor::to_device")]
    DeviceMismatch {
        /// The op that failed.
        op: &'static str,
        /// One operand's device.
        a: String,
        /// The other's.
        b: String,
    },

    /// A buffer larger than the device can bind in one storage binding.
    #[error("{op}: {what} needs {bytes} bytes but the device binds at most {limit} bytes per storage buffer; split the work into smaller batches")]
    TooLarge {
        /// The op that failed.
        op: &'static str,
        /// The buffer.
        what: String,
        /// Its size.
        bytes: u64,
        /// The device's binding limit.
        limit: u64,
    },

    /// No adapter was found (or none matched the request).
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),

    /// The adapter refused to create a device.
    #[error("could not open a device on adapter `{adapter}`: {msg}")]
    RequestDevice {
        /// The adapter's name.
        adapter: String,
        /// wgpu's reason.
        msg: String,
    },

    /// A shader or pipeline failed to compile or validate.
    #[error("kernel `{kernel}`: {msg}")]
    Kernel {
        /// The kernel's name.
        kernel: &'static str,
        /// The compiler's or validator's message.
        msg: String,
    },

    /// A wgpu validation or out-of-memory error raised while running work.
    #[error("wgpu reported an error: {0}")]
    Wgpu(String),

    /// wgpu ran out of memory creating a buffer or running work.
    #[error("{op}: out of device memory: {msg}")]
    OutOfMemory {
        /// The op that failed.
        op: &'static str,
        /// wgpu's message.
        msg: String,
    },

    /// The device was lost (driver reset, `destroy`, unplugged). Every call
    /// on its tensors returns this from then on; open a new device.
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),

    /// Waiting for the GPU took longer than `GpuOptions::timeout`.
    #[error("{op}: the GPU did not finish within {seconds:.1} s (GpuOptions::timeout)")]
    Timeout {
        /// The op that failed.
        op: &'static str,
        /// The limit that passed.
        seconds: f64,
    },

    /// Training produced a NaN or infinite loss or gradient.
    #[error("training stopped at epoch {epoch}, step {step}: {what} is not finite; the weights after this step are not trustworthy and no checkpoint was written after it (lower the learning rate or set clip_grad_norm)")]
    NonFinite {
        /// What went NaN or infinite.
        what: String,
        /// The epoch, counting from 1.
        epoch: usize,
        /// The step, counting from 1.
        step: u64,
    },

    /// Training stopped on request (Ctrl-C, [`crate::train::StopFlag`]) after
    /// a complete step: the trainer is consistent and can be checkpointed and resumed.
    #[error("training interrupted after step {step} (epoch {epoch}, {epoch_step} batches into it)")]
    Interrupted {
        /// The epoch in progress, counting from 1.
        epoch: usize,
        /// Batches of it done.
        epoch_step: usize,
        /// Steps done in all.
        step: u64,
    },

    /// Reading a buffer back to the host failed.
    #[error("reading back a GPU buffer failed: {0}")]
    Readback(String),

    /// A data or checkpoint file that is missing, truncated or corrupt.
    #[error("{}: {kind}: {msg}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Which kind of problem.
        kind: FileErrorKind,
        /// Details.
        msg: String,
    },
}

/// What was wrong with a file, so callers can tell the cases apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileErrorKind {
    /// It could not be opened or read (missing, unreadable).
    Io,
    /// It could not be written (a missing directory, no permission, a full disk).
    Write,
    /// It ends before its header says it should.
    Truncated,
    /// It is longer than its header says.
    TrailingData,
    /// The magic number (or format tag) is not this format's.
    BadMagic,
    /// A header field other than the magic is malformed.
    BadHeader,
    /// Header counts whose product overflows, or a header larger than allowed.
    Overflow,
    /// Image and label counts differ.
    Inconsistent,
    /// A label outside the data set's classes.
    LabelOutOfRange,
    /// The compressed stream is corrupt (gzip CRC or format).
    Corrupt,
    /// Its checksum does not match the recorded provenance.
    Checksum,
    /// Names, shapes or dtypes do not match what was expected.
    Mismatch,
}

impl std::fmt::Display for FileErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileErrorKind::Io => "cannot read",
            FileErrorKind::Write => "cannot write",
            FileErrorKind::Truncated => "truncated",
            FileErrorKind::TrailingData => "unexpected trailing data",
            FileErrorKind::BadMagic => "wrong magic number",
            FileErrorKind::BadHeader => "bad header",
            FileErrorKind::Overflow => "sizes overflow",
            FileErrorKind::Inconsistent => "inconsistent contents",
            FileErrorKind::LabelOutOfRange => "label out of range",
            FileErrorKind::Corrupt => "corrupt",
            FileErrorKind::Checksum => "checksum mismatch",
            FileErrorKind::Mismatch => "does not match",
        })
    }
}

pub(crate) fn file_err<T>(path: &std::path::Path, kind: FileErrorKind, msg: impl Into<String>) -> Result<T> {
    Err(Error::File { path: path.to_path_buf(), kind, msg: msg.into() })
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for a shape error.
pub(crate) fn shape_err<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(Error::Shape { op, msg: msg.into() })
}
