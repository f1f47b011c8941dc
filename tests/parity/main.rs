//! The parity suite: each op's test body runs on the CPU reference and on the
//! GPU (lavapipe in CI), and is checked against an independent oracle.
//! One binary with a module per op stem, so it links once.

mod harness;
mod alloc;

#[global_allocator]
static ALLOC: alloc::Tracking = alloc::Tracking;

mod activation;
mod avgpool;
mod batchnorm;
mod bias;
mod cast;
mod clip;
mod col2im;
mod concat;
mod custom_layer;
mod conv2d;
mod corrupt;
mod dropout;
mod elementwise;
mod errors;
mod finetune;
mod gemm;
mod im2col;
mod layernorm;
mod loss;
mod loss_scale;
mod maxpool;
mod optim;
mod reliability;
mod pad;
mod precision;
mod parallel;
mod permute;
mod reduce;
mod softmax;
mod softmax_xent;
mod tensor;
mod nn;
mod images;
mod training;
mod trainer;
mod upsample;
mod zoo;
