//! The parity suite: each op's test body runs on the CPU reference and on the
//! GPU (lavapipe in CI), and is checked against an independent oracle.
//! One binary with a module per op stem, so it links once.

mod harness;

mod avgpool;
mod col2im;
mod conv2d;
mod errors;
mod gemm;
mod im2col;
mod maxpool;
mod permute;
mod reduce;
mod tensor;
