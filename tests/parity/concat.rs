//! Concatenation along channels: forward against an index oracle (torch.cat's
//! layout), backward as its adjoint (the split), errors for mismatched inputs.

use wgpu_cnn::ops::concat::{concat_backward, concat_forward};
use wgpu_cnn::{Device, Tensor};

use crate::harness::{assert_adjoint, random};
use crate::test_device;

fn parity(dev: &Device) {
    for (i, (n, channels, rest)) in [(2, vec![3, 1, 4], vec![5, 6]), (3, vec![2, 2], vec![]), (1, vec![7], vec![2, 3]), (4, vec![1, 64, 3], vec![3, 3])].into_iter().enumerate() {
        let shape = |c: usize| [vec![n, c], rest.clone()].concat();
        let inner: usize = rest.iter().product();
        let xs: Vec<Vec<f32>> = channels.iter().enumerate().map(|(j, &c)| random(10 * i as u64 + j as u64, n * c * inner)).collect();
        let ts: Vec<Tensor> = xs.iter().zip(&channels).map(|(x, &c)| Tensor::from_slice(dev, &shape(c), x).unwrap()).collect();
        let y = concat_forward(&ts.iter().collect::<Vec<_>>()).unwrap();
        let total: usize = channels.iter().sum();
        assert_eq!(y.shape(), shape(total).as_slice());
        let y = y.to_vec().unwrap();
        // Oracle: y[b, offset_j + c, k] = x_j[b, c, k].
        let mut offset = 0;
        for (x, &c) in xs.iter().zip(&channels) {
            for b in 0..n {
                for ch in 0..c {
                    for k in 0..inner {
                        assert_eq!(y[(b * total + offset + ch) * inner + k], x[(b * c + ch) * inner + k], "case {i} on {dev}");
                    }
                }
            }
            offset += c;
        }
        let dy = random(99 + i as u64, y.len());
        let parts = concat_backward(&Tensor::from_slice(dev, &shape(total), &dy).unwrap(), &channels).unwrap();
        for (p, &c) in parts.iter().zip(&channels) {
            assert_eq!(p.shape(), shape(c).as_slice());
        }
        let dx: Vec<f32> = parts.iter().flat_map(|p| p.to_vec().unwrap()).collect();
        let x: Vec<f32> = xs.concat();
        // ⟨concat(x), dy⟩ = Σ_j ⟨x_j, split(dy)_j⟩.
        assert_adjoint(&format!("concat case {i} on {dev}"), &y, &dy, &x, &dx);
    }
    // torch.cat([a, b], dim=1) from PyTorch 2.15.
    let (ta, tb) = (crate::harness::torch_tensor(dev, "cat.a"), crate::harness::torch_tensor(dev, "cat.b"));
    assert_eq!(concat_forward(&[&ta, &tb]).unwrap().to_vec().unwrap(), crate::harness::torch_value("cat.y").1, "torch.cat on {dev}");
    let a = Tensor::zeros(dev, &[2, 3, 4]).unwrap();
    assert!(concat_forward(&[&a, &Tensor::zeros(dev, &[2, 3, 5]).unwrap()]).is_err(), "different trailing dims");
    assert!(concat_forward(&[&a, &Tensor::zeros(dev, &[3, 3, 4]).unwrap()]).is_err(), "different batch");
    assert!(concat_forward(&[]).is_err());
    assert!(concat_backward(&a, &[1, 1]).is_err(), "3 channels do not split into 1 + 1");
}
test_device!(concat_parity, parity);
