//! Shapes and parameter counts of the bundled networks.
//!
//!     cargo run --release --example model_summary
use wgpu_cnn::nn::{models, Init, Initializer};
use wgpu_cnn::Device;

fn main() -> wgpu_cnn::Result<()> {
    let dev = Device::Cpu;
    let init = &mut Initializer::new(0, Init::PytorchDefault);
    println!("LeNet-5 on 1@28×28\n{}\n", models::lenet5(&dev, init)?.summary(&[1, 1, 28, 28])?);
    println!("The course-notes network on 3@128×128\n{}\n", models::course_notes_net(&dev, init)?.summary(&[1, 3, 128, 128])?);
    println!("VGG-small on 3@32×32\n{}\n", models::vgg_small(&dev, init)?.summary(&[1, 3, 32, 32])?);
    println!("ResNet-20 on 3@32×32\n{}", models::resnet20(&dev, init)?.summary(&[1, 3, 32, 32])?);
    Ok(())
}
