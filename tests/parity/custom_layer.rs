//! A layer written outside the crate (`examples/custom_layer.rs`, a
//! squeeze-and-excitation block): its gradient check, a few training steps,
//! save and reload, and freezing, on both devices.

#[allow(dead_code)]
#[path = "../../examples/custom_layer.rs"]
mod example;

use wgpu_cnn::Device;

use crate::test_device;

fn custom(dev: &Device) {
    let (first, last) = example::run_on(dev, 4, 6).unwrap();
    assert!(last < first, "training the network with the block lowers the loss on {dev}: {first} → {last}");
}
test_device!(squeeze_excite_outside_the_crate, custom);
