//! Tensors, the device recorder and the buffer pool.

use wgpu_cnn::ops::gemm::{gemm, GemmConfig};
use wgpu_cnn::{Device, Tensor};

use crate::harness::with_gpu;
use crate::test_device;

fn round_trip(dev: &Device) {
    let data: Vec<f32> = (0..30).map(|i| i as f32 * 0.5 - 3.0).collect();
    let t = Tensor::from_vec(dev, &[2, 3, 5], data.clone()).unwrap();
    assert_eq!(t.shape(), &[2, 3, 5]);
    assert_eq!(t.to_vec().unwrap(), data);
    let arr = t.to_array().unwrap();
    assert_eq!(arr[[1, 2, 4]], data[29]);
    let back = Tensor::from_array(dev, &arr).unwrap();
    assert_eq!(back.to_vec().unwrap(), data);
    let copy = t.clone();
    let r = t.reshape(&[6, 5]).unwrap();
    assert_eq!(r.shape(), &[6, 5]);
    assert_eq!(copy.to_vec().unwrap(), data);
    let mut w = Tensor::zeros(dev, &[3]).unwrap();
    assert_eq!(w.to_vec().unwrap(), vec![0.0; 3]);
    w.write(&[1.0, 2.0, 3.0]).unwrap();
    assert_eq!(w.to_vec().unwrap(), vec![1.0, 2.0, 3.0]);
    assert_eq!(Tensor::full(dev, &[2], 7.5).unwrap().to_vec().unwrap(), vec![7.5, 7.5]);
}
test_device!(tensor_round_trip, round_trip);

/// A value written into a tensor after an op was recorded must not leak into that op.
#[test]
fn gpu_write_after_recorded_use_keeps_order() {
    with_gpu("tensor::gpu_write_after_recorded_use_keeps_order", |dev| {
        let mut a = Tensor::from_vec(dev, &[1, 1], vec![2.0]).unwrap();
        let b = Tensor::from_vec(dev, &[1, 1], vec![3.0]).unwrap();
        let c = gemm(&a, &b, GemmConfig::default()).unwrap();
        a.write(&[100.0]).unwrap();
        assert_eq!(c.to_vec().unwrap(), vec![6.0]);
        assert_eq!(a.to_vec().unwrap(), vec![100.0]);
    });
}

/// A step that repeats is planned (its tensors packed into slabs), and from
/// then on allocates nothing: the pool serves it.
#[test]
fn gpu_pool_reuses_buffers() {
    with_gpu("tensor::gpu_pool_reuses_buffers", |_| {
        // A private, untuned context: the shared one is busy with parallel
        // tests, and GEMM tuning would run submissions of its own.
        let dev = Device::gpu_with(&wgpu_cnn::GpuOptions { autotune: false, ..Default::default() }).unwrap();
        let ctx = dev.gpu_context().unwrap().clone();
        // A chain of 20 GEMMs (a step worth planning has at least 16 tensors).
        let step = || {
            let a = Tensor::from_vec(&dev, &[33, 17], vec![1.0; 33 * 17]).unwrap();
            let b = Tensor::from_vec(&dev, &[17, 17], vec![0.5; 17 * 17]).unwrap();
            let mut c = gemm(&a, &b, GemmConfig::default()).unwrap();
            for _ in 0..20 {
                c = gemm(&c, &b, GemmConfig { trans_b: true, ..GemmConfig::default() }).unwrap();
            }
            // Every row of c is 8.5^21 / 17^20 · 17 = 17·0.5^21·… : check it stays exact.
            let want = 17.0f32 * 0.5 * (17.0f32 * 0.5).powi(20) / 17f32.powi(0);
            let got = c.to_vec().unwrap()[0];
            assert!((got - want).abs() <= want * 1e-4, "{got} vs {want}");
        };
        step();
        let first = ctx.pool_stats();
        // The second step repeats the first: the pool plans it, and the third creates the plan's slabs.
        step();
        step();
        let planned = ctx.pool_stats();
        for _ in 0..3 {
            step();
        }
        let after = ctx.pool_stats();
        assert!(first.allocations > 0);
        assert!(planned.planned_bytes > 0 && planned.planned_bytes <= first.allocated_bytes, "{first:?} -> {planned:?}");
        assert_eq!(after.allocations, planned.allocations, "steps 4..6 allocated: {planned:?} -> {after:?}");
        assert_eq!(after.allocated_bytes, planned.allocated_bytes);
        assert!(after.reuses > planned.reuses);
    });
}

/// A step that changes shape gets a new plan: tensors still held in the
/// old plan's slabs stay valid and go with them, results stay exact, and
/// memory does not grow from one round of the same shapes to the next.
#[test]
fn gpu_plans_follow_a_changing_step() {
    with_gpu("tensor::gpu_plans_follow_a_changing_step", |_| {
        let dev = Device::gpu_with(&wgpu_cnn::GpuOptions { autotune: false, ..Default::default() }).unwrap();
        let ctx = dev.gpu_context().unwrap().clone();
        // A chain of 20 products of `rows` ones by 0.5·ones: every entry is 8.5^21.
        let step = |rows: usize| {
            let a = Tensor::from_vec(&dev, &[rows, 17], vec![1.0; rows * 17]).unwrap();
            let b = Tensor::from_vec(&dev, &[17, 17], vec![0.5; 17 * 17]).unwrap();
            let mut c = gemm(&a, &b, GemmConfig::default()).unwrap();
            for _ in 0..20 {
                c = gemm(&c, &b, GemmConfig { trans_b: true, ..GemmConfig::default() }).unwrap();
            }
            c
        };
        let want = 8.5f32.powi(21);
        let check = |c: &Tensor| assert!(c.to_vec().unwrap().iter().all(|&v| (v - want).abs() <= want * 1e-4));
        let mut rounds = Vec::new();
        let mut held = None;
        for _ in 0..3 {
            for rows in [33, 9] {
                for k in 0..4 {
                    let c = step(rows);
                    check(&c);
                    // One result outlives its plan: held into the other shape's steps.
                    if k == 3 {
                        if let Some(old) = held.replace(c) {
                            check(&old);
                        }
                    }
                }
            }
            rounds.push(ctx.pool_stats().allocated_bytes);
        }
        assert!(ctx.pool_stats().planned_bytes > 0);
        assert_eq!(rounds[2], rounds[1], "memory grew from one round of shapes to the next: {rounds:?}");
    });
}

/// Within one recording (one submit), a buffer released after its last
/// recorded use serves a later op's output; an upload (a queue write, which
/// lands before the whole submission) never gets such a buffer; results stay
/// exact either way.
#[test]
fn gpu_pool_reuses_within_a_recording() {
    with_gpu("tensor::gpu_pool_reuses_within_a_recording", |_| {
        // Private and untuned: GEMM tuning would allocate operands of its own.
        let dev = Device::gpu_with(&wgpu_cnn::GpuOptions { autotune: false, ..Default::default() }).unwrap();
        let ctx = dev.gpu_context().unwrap().clone();
        let ones = |r, c| Tensor::from_vec(&dev, &[r, c], vec![1.0; r * c]).unwrap();
        let (a, b) = (ones(40, 30), ones(30, 40));
        dev.synchronize().unwrap();
        let before = ctx.pool_stats();
        // c (40×40) is written, read by d, then released: e, of c's size, takes its buffer.
        let c = gemm(&a, &b, GemmConfig::default()).unwrap();
        let d = gemm(&c, &a, GemmConfig::default()).unwrap();
        drop(c);
        let e = gemm(&a, &b, GemmConfig { alpha: 2.0, ..GemmConfig::default() }).unwrap();
        let mid = ctx.pool_stats();
        assert_eq!(mid.allocations - before.allocations, 2, "e should reuse c's buffer: {before:?} -> {mid:?}");
        // An upload of e's size after e is released must not land in e's buffer
        // before the recorded GEMMs that read and wrote it run.
        let f = gemm(&e, &a, GemmConfig::default()).unwrap();
        drop(e);
        let g = Tensor::from_vec(&dev, &[40, 40], vec![-7.0; 1600]).unwrap();
        assert_eq!(ctx.pool_stats().allocations - mid.allocations, 2, "the upload takes a fresh buffer");
        assert!(d.to_vec().unwrap().iter().all(|&v| v == 30.0 * 40.0));
        assert!(f.to_vec().unwrap().iter().all(|&v| v == 60.0 * 40.0));
        assert!(g.to_vec().unwrap().iter().all(|&v| v == -7.0));
        let s = ctx.pool_stats();
        assert!(s.peak_live_bytes >= s.live_bytes && s.live_bytes > 0, "{s:?}");
    });
}

/// Size classes waste less than an eighth of a request (of 1 KiB or more).
#[test]
fn size_classes_waste_under_an_eighth() {
    for bytes in (1024u64..1 << 20).step_by(4093).chain([(1 << 30) + 1, 411_041_792, 3 << 20]) {
        let class = wgpu_cnn::pool::size_class(bytes);
        assert!(class >= bytes && (class - bytes) * 8 < bytes, "{bytes} -> {class}");
    }
}

/// Clones are values: an in-place write through one never shows in the other
/// (on the GPU the buffer is shared until the first such write).
fn copy_on_write(dev: &Device) {
    use wgpu_cnn::ops::elementwise::{elementwise_combine, elementwise_fill};
    use wgpu_cnn::ops::gemm::gemm_into;
    let a = Tensor::from_vec(dev, &[2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    let mut b = a.clone();
    b.write(&[9.0; 4]).unwrap();
    let mut c = a.clone();
    elementwise_fill(&mut c, 5.0).unwrap();
    let mut d = a.clone();
    elementwise_combine(&mut d, &a, 1.0, 1.0).unwrap();
    let mut e = a.clone();
    gemm_into(&a, &a, &mut e, GemmConfig { beta: 1.0, ..GemmConfig::default() }).unwrap();
    assert_eq!(a.to_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0], "the original changed on {dev}");
    assert_eq!(b.to_vec().unwrap(), vec![9.0; 4]);
    assert_eq!(c.to_vec().unwrap(), vec![5.0; 4]);
    assert_eq!(d.to_vec().unwrap(), vec![2.0, 4.0, 6.0, 8.0]);
    assert_eq!(e.to_vec().unwrap(), vec![8.0, 12.0, 18.0, 26.0]);
}
test_device!(tensor_copy_on_write, copy_on_write);
