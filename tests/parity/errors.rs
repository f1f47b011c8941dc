//! Bad input gives an Error naming the op and the shapes, never a panic; the
//! device stays usable afterwards.

use wgpu_cnn::ops::gemm::{gemm, gemm_into, GemmConfig};
use wgpu_cnn::{Device, Error, Tensor, Tolerance};

use crate::test_device;

fn expect_err<T: std::fmt::Debug>(r: wgpu_cnn::Result<T>, needles: &[&str]) -> Error {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "error `{msg}` should mention `{n}`");
    }
    e
}

fn bad_input(dev: &Device) {
    let a = Tensor::from_vec(dev, &[2, 3], vec![1.0; 6]).unwrap();
    let b = Tensor::from_vec(dev, &[4, 5], vec![1.0; 20]).unwrap();
    let e = expect_err(gemm(&a, &b, GemmConfig::default()), &["gemm", "inner dimensions", "[2, 3]", "[4, 5]"]);
    assert!(matches!(e, Error::Shape { op: "gemm", .. }));

    expect_err(Tensor::from_vec(dev, &[2, 0, 3], vec![]), &["zero-size", "[2, 0, 3]"]);
    let e = expect_err(Tensor::from_vec(dev, &[2, 3], vec![1.0; 5]), &["[2, 3]", "6", "5"]);
    assert!(matches!(e, Error::DataLength { expected: 6, got: 5, .. }));
    expect_err(Tensor::zeros(dev, &[0]), &["zero-size"]);
    expect_err(a.clone().reshape(&[4, 2]), &["reshape", "[2, 3]", "[4, 2]"]);

    let v = Tensor::from_vec(dev, &[6], vec![1.0; 6]).unwrap();
    expect_err(gemm(&v, &a, GemmConfig::default()), &["2-D or 3-D", "[6]"]);
    let a3 = Tensor::from_vec(dev, &[2, 2, 3], vec![1.0; 12]).unwrap();
    let b3 = Tensor::from_vec(dev, &[3, 3, 2], vec![1.0; 18]).unwrap();
    expect_err(gemm(&a3, &b3, GemmConfig::default()), &["batch sizes differ"]);
    expect_err(gemm(&a, &a, GemmConfig { beta: 1.0, ..GemmConfig::default() }), &["beta", "gemm_into"]);
    let bt = Tensor::from_vec(dev, &[3, 2], vec![1.0; 6]).unwrap();
    let mut wrong_c = Tensor::zeros(dev, &[3, 3]).unwrap();
    expect_err(gemm_into(&a, &bt, &mut wrong_c, GemmConfig::default()), &["C has shape [3, 3]", "[2, 2]"]);

    // Still usable.
    let c = gemm(&a, &bt, GemmConfig::default()).unwrap();
    assert_eq!(c.to_vec().unwrap(), vec![3.0; 4]);
}
test_device!(bad_input_is_an_error, bad_input);

#[test]
fn operands_on_different_devices() {
    crate::harness::with_gpu("errors::operands_on_different_devices", |gpu| {
        let a = Tensor::from_vec(gpu, &[2, 2], vec![1.0; 4]).unwrap();
        let b = Tensor::from_vec(&Device::Cpu, &[2, 2], vec![1.0; 4]).unwrap();
        expect_err(gemm(&a, &b, GemmConfig::default()), &["gemm", "different devices", "to_device"]);
        let moved = b.to_device(gpu).unwrap();
        assert_eq!(gemm(&a, &moved, GemmConfig::default()).unwrap().to_vec().unwrap(), vec![2.0; 4]);
    });
}

#[test]
fn tolerance_reports_mismatches() {
    let t = Tolerance::new(1e-3, 1e-3);
    assert!(t.check("op", &[1.0, 2.0], &[1.0005, 2.0]).is_ok());
    let msg = t.check("myop", &[1.0, 2.0, 3.0], &[1.0, 2.5, 3.0]).unwrap_err();
    assert!(msg.contains("myop") && msg.contains("max diff 0.5") && msg.contains("[1] got 2 want 2.5"), "{msg}");
    assert!(t.check("nan", &[f32::NAN], &[1.0]).is_err());
    assert!(t.check("nan", &[f32::NAN], &[f32::NAN]).is_ok());
}
