//! Seeded weight initialisation, generated on the host so the same seed gives
//! the same weights on every device.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How weights are drawn (biases follow PyTorch: U(−1/√fan_in, 1/√fan_in), or
/// zero for the Kaiming and Xavier schemes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// PyTorch's Conv/Linear default: kaiming_uniform with a = √5, i.e. U(±1/√fan_in).
    PytorchDefault,
    /// He normal for ReLU networks: N(0, 2/fan_in).
    KaimingNormal,
    /// He uniform: U(±√(6/fan_in)).
    KaimingUniform,
    /// Glorot normal: N(0, 2/(fan_in + fan_out)).
    XavierNormal,
    /// Glorot uniform: U(±√(6/(fan_in + fan_out))).
    XavierUniform,
}

/// A seeded stream of initial weights.
pub struct Initializer {
    rng: StdRng,
    /// The scheme for weights (biases follow PyTorch's default).
    pub scheme: Init,
}

impl Initializer {
    /// A generator seeded with `seed` drawing weights by `scheme`.
    pub fn new(seed: u64, scheme: Init) -> Initializer {
        Initializer { rng: StdRng::seed_from_u64(seed), scheme }
    }

    fn uniform(&mut self, n: usize, bound: f32) -> Vec<f32> {
        (0..n).map(|_| self.rng.random_range(-bound..=bound)).collect()
    }

    /// Box–Muller normal samples (rand has no normal distribution without rand_distr).
    fn normal(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u1: f64 = 1.0 - self.rng.random::<f64>(); // (0, 1]
                let u2: f64 = self.rng.random();
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32 * std
            })
            .collect()
    }

    /// `n` weights for a layer with the given fans.
    pub fn weights(&mut self, n: usize, fan_in: usize, fan_out: usize) -> Vec<f32> {
        let (fi, fo) = (fan_in as f32, fan_out as f32);
        match self.scheme {
            Init::PytorchDefault => self.uniform(n, 1.0 / fi.sqrt()),
            Init::KaimingNormal => self.normal(n, (2.0 / fi).sqrt()),
            Init::KaimingUniform => self.uniform(n, (6.0 / fi).sqrt()),
            Init::XavierNormal => self.normal(n, (2.0 / (fi + fo)).sqrt()),
            Init::XavierUniform => self.uniform(n, (6.0 / (fi + fo)).sqrt()),
        }
    }

    /// `n` biases for a layer with this fan-in.
    pub fn biases(&mut self, n: usize, fan_in: usize) -> Vec<f32> {
        match self.scheme {
            Init::PytorchDefault => self.uniform(n, 1.0 / (fan_in as f32).sqrt()),
            _ => vec![0.0; n],
        }
    }

    /// A fresh seed for a layer's own random stream (dropout).
    pub fn next_seed(&mut self) -> u64 {
        self.rng.random()
    }
}
