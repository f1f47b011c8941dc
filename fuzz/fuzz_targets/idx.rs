//! MNIST IDX pairs (raw or gzip): the first byte picks the split point
//! between the images file and the labels file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wgpu_cnn::data::mnist;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let cut = (cut as usize * rest.len()) / 255;
    let (images, labels) = rest.split_at(cut.min(rest.len()));
    if let Ok(d) = mnist::parse(Path::new("images"), images.to_vec(), Path::new("labels"), labels.to_vec()) {
        assert_eq!(d.images.len(), d.len() * d.item_shape.iter().product::<usize>());
        assert!(d.labels.iter().all(|&l| (0..10).contains(&l)));
    }
});
