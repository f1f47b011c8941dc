//! f32 ⇄ f16 storage casts: the CPU reference against IEEE binary16 itself
//! (every half round-trips; hand-worked ties, subnormals, overflow), and the
//! GPU against the CPU bit for bit.

use wgpu_cnn::ops::cast::{cast_f16_bits_cpu, cast_f16_value_cpu, cast_round_f16_cpu};
use wgpu_cnn::{Device, Tensor};

use crate::harness::random;
use crate::test_device;

#[test]
fn every_half_round_trips_and_ties_go_to_even() {
    for h in 0..=u16::MAX {
        let v = cast_f16_value_cpu(h);
        if v.is_nan() {
            assert!(cast_f16_value_cpu(cast_f16_bits_cpu(v)).is_nan(), "NaN {h:#06x}");
        } else {
            assert_eq!(cast_f16_bits_cpu(v), h, "{h:#06x} = {v}");
        }
    }
    let two = |e: i32| 2f32.powi(e);
    for (v, bits) in [
        (1.0, 0x3c00),
        (-2.0, 0xc000),
        (65504.0, 0x7bff),
        (65519.0, 0x7bff),          // below the tie with 65536: the largest half
        (65520.0, 0x7c00),          // the tie rounds to even, which is 2¹⁶: inf
        (1.0 + two(-11), 0x3c00),   // tie between 1 and 1 + 2⁻¹⁰: even (1)
        (1.0 + 3.0 * two(-11), 0x3c02), // tie between 1 + 2⁻¹⁰ and 1 + 2⁻⁹: even
        (1.0 + two(-11) + two(-20), 0x3c01), // just above the tie
        (two(-14), 0x0400),         // smallest normal
        (two(-24), 0x0001),         // smallest subnormal
        (two(-25), 0x0000),         // the tie with 0: even (0)
        (1.5 * two(-25), 0x0001),
        (3.0 * two(-25), 0x0002),   // tie between 1 and 2 ulps: even
        (1e-9, 0x0000),
        (-0.0, 0x8000),
        (f32::INFINITY, 0x7c00),
        (f32::NEG_INFINITY, 0xfc00),
        (1e10, 0x7c00),
    ] {
        assert_eq!(cast_f16_bits_cpu(v), bits, "f16({v:e})");
    }
}

/// Values over every range a half has: normals, subnormals, ties, overflow.
fn awkward(n: usize) -> Vec<f32> {
    let r = random(11, n);
    r.iter()
        .enumerate()
        .map(|(i, v)| match i % 6 {
            0 => *v,
            1 => v * 1e-6,                                   // subnormal halves
            2 => v * 7e4,                                    // some overflow
            3 => 1.0 + (i as f32) * 2f32.powi(-11),          // ties and near-ties
            4 => v * 2f32.powi(-25) * 3.0,                   // subnormal ties
            _ => -v * 300.0,
        })
        .collect()
}

fn matches_bit_for_bit(dev: &Device) {
    // Odd length: the last word holds one half.
    for n in [1, 2, 1001] {
        let v = awkward(n);
        let x = Tensor::from_slice(dev, &[n], &v).unwrap();
        let h = x.to_half().unwrap();
        let want: Vec<u16> = v.iter().map(|&f| cast_f16_bits_cpu(f)).collect();
        assert_eq!(h.to_bits().unwrap(), want, "f16 bits on {dev}, n = {n}");
        assert_eq!(h.shape(), &[n]);
        assert!(h.bytes() <= 2 * n + 2, "{} bytes for {n} halves", h.bytes());
        let back = h.to_f32().unwrap().to_vec().unwrap();
        let rounded: Vec<f32> = v.iter().map(|&f| cast_round_f16_cpu(f)).collect();
        assert_eq!(back.iter().map(|f| f.to_bits()).collect::<Vec<_>>(), rounded.iter().map(|f| f.to_bits()).collect::<Vec<_>>(), "back to f32 on {dev}");
    }
}
test_device!(cast_matches_ieee_rounding, matches_bit_for_bit);

fn write_invalidates(dev: &Device) {
    let mut x = Tensor::from_slice(dev, &[3], &[1.0, 2.0, 3.0]).unwrap();
    let first = x.to_half().unwrap();
    // The same buffer again: the copy is shared, not recast.
    assert_eq!(x.to_half().unwrap().to_f32().unwrap().to_vec().unwrap(), vec![1.0, 2.0, 3.0]);
    x.write(&[4.0, 5.0, 6.0]).unwrap();
    assert_eq!(x.to_half().unwrap().to_f32().unwrap().to_vec().unwrap(), vec![4.0, 5.0, 6.0], "an f16 copy made before a write is not reused on {dev}");
    assert_eq!(first.to_f32().unwrap().to_vec().unwrap(), vec![1.0, 2.0, 3.0]);
}
test_device!(cast_after_a_write_is_fresh, write_invalidates);

#[test]
fn cast_is_shared_by_layers_keeping_the_same_activation() {
    crate::harness::with_gpu("cast_is_shared", |_| {
        let own = Device::gpu_with(&wgpu_cnn::GpuOptions::default()).unwrap();
        let ctx = own.gpu_context().unwrap().clone();
        let x = Tensor::from_slice(&own, &[1000], &random(3, 1000)).unwrap();
        let before = ctx.host_counters();
        let (a, b) = (x.to_half().unwrap(), x.clone().to_half().unwrap());
        assert_eq!((ctx.host_counters() - before).dispatches, 1, "one cast for two copies");
        assert_eq!(a.to_bits().unwrap(), b.to_bits().unwrap());
        drop((a, b));
        let before = ctx.host_counters();
        let _c = x.to_half().unwrap();
        assert_eq!((ctx.host_counters() - before).dispatches, 1, "cast again once the copies are gone");
    });
}

#[test]
fn cast_windows_a_tensor_larger_than_one_binding() {
    crate::harness::with_gpu("cast_windows", |_| {
        let small = Device::gpu_with(&wgpu_cnn::GpuOptions { max_binding_bytes: Some(1 << 12), ..wgpu_cnn::GpuOptions::default() }).unwrap();
        let n = 3001; // three windows of 1,024 f32 (and a short one)
        let v = awkward(n);
        let h = Tensor::from_slice(&small, &[n], &v).unwrap().to_half().unwrap();
        assert_eq!(h.to_bits().unwrap(), v.iter().map(|&f| cast_f16_bits_cpu(f)).collect::<Vec<_>>());
        let back = h.to_f32().unwrap().to_vec().unwrap();
        assert_eq!(back.iter().map(|f| f.to_bits()).collect::<Vec<_>>(), v.iter().map(|&f| cast_round_f16_cpu(f).to_bits()).collect::<Vec<_>>());
    });
}
