//! The ops: one file per op stem, each holding the CPU reference (the spec)
//! and the GPU wrapper side by side, matching `shaders/<stem>.wgsl` and
//! `tests/parity/<stem>.rs`.

pub mod gemm;
