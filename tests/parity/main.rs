//! The parity suite: each op's test body runs on the CPU reference and on the
//! GPU (lavapipe in CI), and is checked against an independent oracle.
//! One binary with a module per op stem, so it links once.

mod harness;

mod errors;
mod gemm;
mod tensor;
