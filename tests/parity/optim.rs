//! Optimisers: three steps against a hand-written f64 reference (PyTorch's
//! documented algorithms), on every device.

use wgpu_cnn::ops::optim::{optim_adam_step, optim_adam_step_multi, optim_sgd_step, optim_sgd_step_multi, AdamConfig, SgdConfig, Slot, OPTIM_SLOTS};
use wgpu_cnn::{Device, Tensor, Tolerance};

use crate::harness::random;
use crate::test_device;

const STEPS: usize = 3;

fn grads(len: usize) -> Vec<Vec<f32>> {
    (0..STEPS).map(|s| random(40 + s as u64, len)).collect()
}

/// torch.optim.SGD's algorithm in f64.
fn sgd_ref(p0: &[f32], gs: &[Vec<f32>], c: &SgdConfig) -> Vec<Vec<f32>> {
    let mut p: Vec<f64> = p0.iter().map(|&v| v as f64).collect();
    let mut buf = vec![0f64; p.len()];
    let mut out = Vec::new();
    for (t, g) in gs.iter().enumerate() {
        for i in 0..p.len() {
            let mut d = g[i] as f64 + c.weight_decay as f64 * p[i];
            if c.momentum != 0.0 {
                buf[i] = if t == 0 { d } else { c.momentum as f64 * buf[i] + (1.0 - c.dampening as f64) * d };
                d = if c.nesterov { d + c.momentum as f64 * buf[i] } else { buf[i] };
            }
            p[i] -= c.lr as f64 * d;
        }
        out.push(p.iter().map(|&v| v as f32).collect());
    }
    out
}

/// torch.optim.Adam / AdamW's documented algorithm in f64 (m̂, v̂ form).
fn adam_ref(p0: &[f32], gs: &[Vec<f32>], c: &AdamConfig) -> Vec<Vec<f32>> {
    let (b1, b2, lr, wd, eps) = (c.beta1 as f64, c.beta2 as f64, c.lr as f64, c.weight_decay as f64, c.eps as f64);
    let mut p: Vec<f64> = p0.iter().map(|&v| v as f64).collect();
    let (mut m, mut v) = (vec![0f64; p.len()], vec![0f64; p.len()]);
    let mut out = Vec::new();
    for (t, g) in gs.iter().enumerate() {
        let t = (t + 1) as i32;
        for i in 0..p.len() {
            let mut gi = g[i] as f64;
            if c.decoupled {
                p[i] *= 1.0 - lr * wd;
            } else {
                gi += wd * p[i];
            }
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let (mh, vh) = (m[i] / (1.0 - b1.powi(t)), v[i] / (1.0 - b2.powi(t)));
            p[i] -= lr * mh / (vh.sqrt() + eps);
        }
        out.push(p.iter().map(|&v| v as f32).collect());
    }
    out
}

fn sgd(dev: &Device) {
    let len = 37;
    let p0 = random(1, len);
    let gs = grads(len);
    let base = SgdConfig::new(0.1);
    for cfg in [
        base,
        SgdConfig { weight_decay: 0.01, ..base },
        SgdConfig { momentum: 0.9, ..base },
        SgdConfig { momentum: 0.9, dampening: 0.5, ..base },
        SgdConfig { momentum: 0.9, nesterov: true, weight_decay: 5e-4, ..base },
    ] {
        let want = sgd_ref(&p0, &gs, &cfg);
        let mut p = Tensor::from_slice(dev, &[len], &p0).unwrap();
        let mut buf = Tensor::zeros(dev, &[len]).unwrap();
        for (t, g) in gs.iter().enumerate() {
            let g = Tensor::from_slice(dev, &[len], g).unwrap();
            let b = (cfg.momentum > 0.0).then_some(&mut buf);
            optim_sgd_step(&mut p, &g, b, t == 0, &cfg).unwrap();
            Tolerance::new(1e-6, 1e-5).assert(&format!("sgd {cfg:?} step {} on {dev}", t + 1), &p.to_vec().unwrap(), &want[t]);
        }
    }
}
test_device!(optim_sgd, sgd);

fn adam(dev: &Device) {
    let len = 37;
    let p0 = random(2, len);
    let gs = grads(len);
    let small: Vec<Vec<f32>> = gs.iter().map(|g| g.iter().map(|v| v * 1e-2).collect()).collect();
    for (cfg, gs) in [
        (AdamConfig::adam(1e-2), &gs),
        (AdamConfig { weight_decay: 0.1, ..AdamConfig::adam(1e-2) }, &gs),
        (AdamConfig::adamw(1e-2), &gs),
        // eps comparable to sqrt(v̂): only "eps after the bias correction" matches.
        (AdamConfig { eps: 1e-2, ..AdamConfig::adam(1e-2) }, &small),
    ] {
        let want = adam_ref(&p0, gs, &cfg);
        let mut p = Tensor::from_slice(dev, &[len], &p0).unwrap();
        let (mut m, mut v) = (Tensor::zeros(dev, &[len]).unwrap(), Tensor::zeros(dev, &[len]).unwrap());
        for (t, g) in gs.iter().enumerate() {
            let g = Tensor::from_slice(dev, &[len], g).unwrap();
            optim_adam_step(&mut p, &g, &mut m, &mut v, t as u32 + 1, &cfg).unwrap();
            Tolerance::new(1e-6, 1e-5).assert(&format!("adam {cfg:?} step {} on {dev}", t + 1), &p.to_vec().unwrap(), &want[t]);
        }
    }
}
test_device!(optim_adam, adam);

/// Nine tensors of uneven sizes in one call (on the GPU: a full dispatch of
/// seven slots, then two): each ends where its own per-tensor reference does.
fn multi(dev: &Device) {
    let lens = [1usize, 37, 256, 257, 2, 1000, 3, 513, 64];
    assert!(lens.len() > OPTIM_SLOTS);
    let p0: Vec<Vec<f32>> = lens.iter().enumerate().map(|(i, &l)| random(60 + i as u64, l)).collect();
    let gs: Vec<Vec<Vec<f32>>> = lens.iter().map(|&l| grads(l)).collect();
    let upload = |v: &[f32]| Tensor::from_slice(dev, &[v.len()], v).unwrap();
    let zeros = || lens.iter().map(|&l| Tensor::zeros(dev, &[l]).unwrap()).collect::<Vec<_>>();
    // SGD with Nesterov momentum and weight decay.
    let cfg = SgdConfig { momentum: 0.9, nesterov: true, weight_decay: 5e-4, ..SgdConfig::new(0.1) };
    let (mut p, mut buf): (Vec<Tensor>, Vec<Tensor>) = (p0.iter().map(|v| upload(v)).collect(), zeros());
    for t in 0..STEPS {
        let g: Vec<Tensor> = gs.iter().map(|g| upload(&g[t])).collect();
        let mut slots: Vec<Slot> = p.iter_mut().zip(&g).zip(buf.iter_mut()).map(|((param, grad), b)| Slot { param, grad, state1: Some(b), state2: None }).collect();
        optim_sgd_step_multi(&mut slots, t == 0, &cfg).unwrap();
    }
    for (i, p) in p.iter().enumerate() {
        let want = sgd_ref(&p0[i], &gs[i], &cfg);
        Tolerance::new(1e-6, 1e-5).assert(&format!("multi-tensor sgd, tensor {i} on {dev}"), &p.to_vec().unwrap(), &want[STEPS - 1]);
    }
    // AdamW.
    let cfg = AdamConfig::adamw(1e-2);
    let (mut p, mut m, mut v): (Vec<Tensor>, _, _) = (p0.iter().map(|v| upload(v)).collect(), zeros(), zeros());
    for t in 0..STEPS {
        let g: Vec<Tensor> = gs.iter().map(|g| upload(&g[t])).collect();
        let mut slots: Vec<Slot> = p.iter_mut().zip(&g).zip(m.iter_mut().zip(v.iter_mut())).map(|((param, grad), (m, v))| Slot { param, grad, state1: Some(m), state2: Some(v) }).collect();
        optim_adam_step_multi(&mut slots, t as u32 + 1, &cfg).unwrap();
    }
    for (i, p) in p.iter().enumerate() {
        let want = adam_ref(&p0[i], &gs[i], &cfg);
        Tolerance::new(1e-6, 1e-5).assert(&format!("multi-tensor adamw, tensor {i} on {dev}"), &p.to_vec().unwrap(), &want[STEPS - 1]);
    }
    // Adam without a second moment, and a gradient of the wrong shape, are refused by name.
    let (mut a, g, mut b) = (upload(&[1.0, 2.0]), upload(&[0.5, 0.5]), upload(&[0.0, 0.0]));
    let e = optim_adam_step_multi(&mut [Slot { param: &mut a, grad: &g, state1: Some(&mut b), state2: None }], 1, &cfg).unwrap_err().to_string();
    assert!(e.contains("adam") && e.contains("moments"), "{e}");
    let short = upload(&[0.5]);
    let e = optim_sgd_step_multi(&mut [Slot { param: &mut a, grad: &short, state1: None, state2: None }], true, &SgdConfig::new(0.1)).unwrap_err().to_string();
    assert!(e.contains("optim_sgd_step") && e.contains("gradient"), "{e}");
}
test_device!(optim_multi, multi);

fn bad_settings(dev: &Device) {
    let mut p = Tensor::zeros(dev, &[3]).unwrap();
    let g = Tensor::zeros(dev, &[3]).unwrap();
    for lr in [f32::NAN, -0.1, f32::INFINITY] {
        let e = optim_sgd_step(&mut p, &g, None, true, &SgdConfig::new(lr)).unwrap_err().to_string();
        assert!(e.contains("learning rate"), "{e}");
        let (mut m, mut v) = (Tensor::zeros(dev, &[3]).unwrap(), Tensor::zeros(dev, &[3]).unwrap());
        assert!(optim_adam_step(&mut p, &g, &mut m, &mut v, 1, &AdamConfig::adam(lr)).is_err());
    }
    let e = optim_sgd_step(&mut p, &g, None, true, &SgdConfig { momentum: 0.9, ..SgdConfig::new(0.1) }).unwrap_err().to_string();
    assert!(e.contains("momentum buffer"), "{e}");
    assert!(optim_sgd_step(&mut p, &Tensor::zeros(dev, &[4]).unwrap(), None, true, &SgdConfig::new(0.1)).is_err());
}
test_device!(optim_bad_settings, bad_settings);
