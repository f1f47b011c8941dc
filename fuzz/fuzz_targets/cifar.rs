//! CIFAR-10 binary batches.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wgpu_cnn::data::cifar;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = cifar::parse(Path::new("batch.bin"), data) {
        assert_eq!(d.len() * cifar::RECORD, data.len());
        assert!(d.labels.iter().all(|&l| (0..10).contains(&l)));
    }
});
