// Optimiser updates, one invocation per parameter element (PyTorch's formulas).
//
// optim_sgd_step:  g = grad + wd·p; with momentum: buf = g on the first step, else
//            momentum·buf + (1 − dampening)·g; g = nesterov ? g + momentum·buf : buf;
//            p −= lr·g.
// optim_adam_step: Adam: g = grad + wd·p (coupled L2). AdamW: p ·= 1 − lr·wd first.
//            m = β1·m + (1 − β1)·g;  v = β2·v + (1 − β2)·g²;
//            p −= (lr / bc1) · m / (sqrt(v) / sqrt(bc2) + eps)   (eps after the bias correction)
// bc1 = 1 − β1^t and sqrt(bc2) = sqrt(1 − β2^t) are computed on the host.

struct OptimParams {
    len: u32,
    flags: u32, // 1: nesterov, 2: first step, 4: decoupled weight decay, 8: momentum
    lr: f32,
    momentum: f32,
    dampening: f32,
    weight_decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    bc1: f32,
    bc2_sqrt: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> state1: array<f32>; // momentum buffer / m
@group(0) @binding(3) var<storage, read_write> state2: array<f32>; // v
@group(0) @binding(4) var<uniform> params: OptimParams;

override WG: u32 = 256u;

const NESTEROV: u32 = 1u;
const FIRST: u32 = 2u;
const DECOUPLED: u32 = 4u;
const MOMENTUM: u32 = 8u;

@compute @workgroup_size(WG)
fn optim_sgd_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = params;
    let i = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (i >= q.len) { return; }
    var g = grad[i] + q.weight_decay * param[i];
    if ((q.flags & MOMENTUM) != 0u) {
        var buf = g;
        if ((q.flags & FIRST) == 0u) { buf = q.momentum * state1[i] + (1.0 - q.dampening) * g; }
        state1[i] = buf;
        if ((q.flags & NESTEROV) != 0u) { g = g + q.momentum * buf; } else { g = buf; }
    }
    param[i] -= q.lr * g;
}

@compute @workgroup_size(WG)
fn optim_adam_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = params;
    let i = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (i >= q.len) { return; }
    var p = param[i];
    var g = grad[i];
    if ((q.flags & DECOUPLED) != 0u) { p *= 1.0 - q.lr * q.weight_decay; } else { g += q.weight_decay * p; }
    let m = q.beta1 * state1[i] + (1.0 - q.beta1) * g;
    let v = q.beta2 * state2[i] + (1.0 - q.beta2) * g * g;
    state1[i] = m;
    state2[i] = v;
    param[i] = p - (q.lr / q.bc1) * m / (sqrt(v) / q.bc2_sqrt + q.eps);
}
