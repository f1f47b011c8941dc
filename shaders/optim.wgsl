// Optimiser updates, one invocation per parameter element (PyTorch's formulas),
// for up to SLOTS parameter tensors per dispatch: a model's update is a few
// dispatches, not one per tensor (multi-tensor apply).
//
// optim_sgd_step:  g = grad + wd·p; with momentum: buf = g on the first step, else
//            momentum·buf + (1 − dampening)·g; g = nesterov ? g + momentum·buf : buf;
//            p −= lr·g.
// optim_adam_step: Adam: g = grad + wd·p (coupled L2). AdamW: p ·= 1 − lr·wd first.
//            m = β1·m + (1 − β1)·g;  v = β2·v + (1 − β2)·g²;
//            p −= (lr / bc1) · m / (sqrt(v) / sqrt(bc2) + eps)   (eps after the bias correction)
// bc1 = 1 − β1^t and sqrt(bc2) = sqrt(1 − β2^t) are computed on the host.
//
// Slot s binds parameter p<s>, gradient g<s>, momentum buffer / first moment
// m<s> and second moment v<s> (4 bindings a slot, 7 slots: 28 storage
// bindings for Adam, 21 for SGD, which never touches v; within the 31
// buffers Metal allows a stage). Unused slots and unused states are bound to
// small scratch buffers and never touched. The `_two` entry points bind
// slots 0 and 1 only, for adapters that allow fewer storage buffers.
// Workgroups are laid out slot after slot: slot s owns the flat workgroup ids
// [first[s], first[s + 1]), so a workgroup reads one tensor's contiguous run.

const SLOTS: u32 = 7u;

struct OptimParams {
    // Elements of each slot's tensor (0 for an unused slot).
    len: array<vec4<u32>, 2>,
    // The first flat workgroup id of each slot; first[SLOTS] is the total.
    first: array<vec4<u32>, 2>,
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
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> p0: array<f32>;
@group(0) @binding(1) var<storage, read> g0: array<f32>;
@group(0) @binding(2) var<storage, read_write> m0: array<f32>;
@group(0) @binding(3) var<storage, read_write> v0: array<f32>;
@group(0) @binding(4) var<storage, read_write> p1: array<f32>;
@group(0) @binding(5) var<storage, read> g1: array<f32>;
@group(0) @binding(6) var<storage, read_write> m1: array<f32>;
@group(0) @binding(7) var<storage, read_write> v1: array<f32>;
@group(0) @binding(8) var<storage, read_write> p2: array<f32>;
@group(0) @binding(9) var<storage, read> g2: array<f32>;
@group(0) @binding(10) var<storage, read_write> m2: array<f32>;
@group(0) @binding(11) var<storage, read_write> v2: array<f32>;
@group(0) @binding(12) var<storage, read_write> p3: array<f32>;
@group(0) @binding(13) var<storage, read> g3: array<f32>;
@group(0) @binding(14) var<storage, read_write> m3: array<f32>;
@group(0) @binding(15) var<storage, read_write> v3: array<f32>;
@group(0) @binding(16) var<storage, read_write> p4: array<f32>;
@group(0) @binding(17) var<storage, read> g4: array<f32>;
@group(0) @binding(18) var<storage, read_write> m4: array<f32>;
@group(0) @binding(19) var<storage, read_write> v4: array<f32>;
@group(0) @binding(20) var<storage, read_write> p5: array<f32>;
@group(0) @binding(21) var<storage, read> g5: array<f32>;
@group(0) @binding(22) var<storage, read_write> m5: array<f32>;
@group(0) @binding(23) var<storage, read_write> v5: array<f32>;
@group(0) @binding(24) var<storage, read_write> p6: array<f32>;
@group(0) @binding(25) var<storage, read> g6: array<f32>;
@group(0) @binding(26) var<storage, read_write> m6: array<f32>;
@group(0) @binding(27) var<storage, read_write> v6: array<f32>;
@group(0) @binding(28) var<uniform> params: OptimParams;

override WG: u32 = 256u;

const NESTEROV: u32 = 1u;
const FIRST: u32 = 2u;
const DECOUPLED: u32 = 4u;
const MOMENTUM: u32 = 8u;

// Bindings cannot be indexed, so each slot is a case.
fn load_p(s: u32, i: u32) -> f32 {
    switch s {
        case 0u: { return p0[i]; }
        case 1u: { return p1[i]; }
        case 2u: { return p2[i]; }
        case 3u: { return p3[i]; }
        case 4u: { return p4[i]; }
        case 5u: { return p5[i]; }
        default: { return p6[i]; }
    }
}

fn store_p(s: u32, i: u32, x: f32) {
    switch s {
        case 0u: { p0[i] = x; }
        case 1u: { p1[i] = x; }
        case 2u: { p2[i] = x; }
        case 3u: { p3[i] = x; }
        case 4u: { p4[i] = x; }
        case 5u: { p5[i] = x; }
        default: { p6[i] = x; }
    }
}

fn load_g(s: u32, i: u32) -> f32 {
    switch s {
        case 0u: { return g0[i]; }
        case 1u: { return g1[i]; }
        case 2u: { return g2[i]; }
        case 3u: { return g3[i]; }
        case 4u: { return g4[i]; }
        case 5u: { return g5[i]; }
        default: { return g6[i]; }
    }
}

fn load_m(s: u32, i: u32) -> f32 {
    switch s {
        case 0u: { return m0[i]; }
        case 1u: { return m1[i]; }
        case 2u: { return m2[i]; }
        case 3u: { return m3[i]; }
        case 4u: { return m4[i]; }
        case 5u: { return m5[i]; }
        default: { return m6[i]; }
    }
}

fn store_m(s: u32, i: u32, x: f32) {
    switch s {
        case 0u: { m0[i] = x; }
        case 1u: { m1[i] = x; }
        case 2u: { m2[i] = x; }
        case 3u: { m3[i] = x; }
        case 4u: { m4[i] = x; }
        case 5u: { m5[i] = x; }
        default: { m6[i] = x; }
    }
}

fn load_v(s: u32, i: u32) -> f32 {
    switch s {
        case 0u: { return v0[i]; }
        case 1u: { return v1[i]; }
        case 2u: { return v2[i]; }
        case 3u: { return v3[i]; }
        case 4u: { return v4[i]; }
        case 5u: { return v5[i]; }
        default: { return v6[i]; }
    }
}

fn store_v(s: u32, i: u32, x: f32) {
    switch s {
        case 0u: { v0[i] = x; }
        case 1u: { v1[i] = x; }
        case 2u: { v2[i] = x; }
        case 3u: { v3[i] = x; }
        case 4u: { v4[i] = x; }
        case 5u: { v5[i] = x; }
        default: { v6[i] = x; }
    }
}

fn slot_len(s: u32) -> u32 {
    return params.len[s / 4u][s % 4u];
}

fn slot_first(s: u32) -> u32 {
    return params.first[s / 4u][s % 4u];
}

// The (slot, element) this invocation updates; slot SLOTS when none.
fn locate(wid: vec3<u32>, lid: u32, nwg: vec3<u32>) -> vec2<u32> {
    let flat = wid.x + (wid.y + wid.z * nwg.y) * nwg.x;
    var s = 0u;
    while (s < SLOTS && flat >= slot_first(s + 1u)) { s++; }
    if (s == SLOTS) { return vec2<u32>(SLOTS, 0u); }
    let i = (flat - slot_first(s)) * WG + lid;
    if (i >= slot_len(s)) { return vec2<u32>(SLOTS, 0u); }
    return vec2<u32>(s, i);
}

// The update rules on one element's values: (p, state) in, new values out.
fn sgd_rule(p: f32, grad: f32, m: f32) -> vec2<f32> {
    let q = params;
    var g = grad + q.weight_decay * p;
    var buf = m;
    if ((q.flags & MOMENTUM) != 0u) {
        buf = g;
        if ((q.flags & FIRST) == 0u) { buf = q.momentum * m + (1.0 - q.dampening) * g; }
        if ((q.flags & NESTEROV) != 0u) { g = g + q.momentum * buf; } else { g = buf; }
    }
    return vec2<f32>(p - q.lr * g, buf);
}

fn adam_rule(p0: f32, grad: f32, m0: f32, v0: f32) -> vec3<f32> {
    let q = params;
    var p = p0;
    var g = grad;
    if ((q.flags & DECOUPLED) != 0u) { p *= 1.0 - q.lr * q.weight_decay; } else { g += q.weight_decay * p; }
    let m = q.beta1 * m0 + (1.0 - q.beta1) * g;
    let v = q.beta2 * v0 + (1.0 - q.beta2) * g * g;
    return vec3<f32>(p - (q.lr / q.bc1) * m / (sqrt(v) / q.bc2_sqrt + q.eps), m, v);
}

@compute @workgroup_size(WG)
fn optim_sgd_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let at = locate(wid, lid, nwg);
    let s = at.x;
    let i = at.y;
    if (s == SLOTS) { return; }
    var m = 0.0;
    let with_buf = (params.flags & MOMENTUM) != 0u;
    if (with_buf && (params.flags & FIRST) == 0u) { m = load_m(s, i); }
    let r = sgd_rule(load_p(s, i), load_g(s, i), m);
    if (with_buf) { store_m(s, i, r.y); }
    store_p(s, i, r.x);
}

@compute @workgroup_size(WG)
fn optim_adam_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let at = locate(wid, lid, nwg);
    let s = at.x;
    let i = at.y;
    if (s == SLOTS) { return; }
    let r = adam_rule(load_p(s, i), load_g(s, i), load_m(s, i), load_v(s, i));
    store_m(s, i, r.y);
    store_v(s, i, r.z);
    store_p(s, i, r.x);
}

// Two tensors a dispatch (the bindings of slots 0 and 1 only: 6 storage
// buffers for SGD, 8 for Adam): for adapters with fewer storage buffers per
// stage than the seven-slot entry points bind (WebGPU's default is 8). Same
// rules, same results. SGD's entry never names v0 or v1, so its layout
// leaves them out.
fn load2(b: u32, s: u32, i: u32) -> f32 {
    // b: 0 p, 1 g, 2 m.
    if (s == 0u) {
        switch b { case 0u: { return p0[i]; } case 1u: { return g0[i]; } default: { return m0[i]; } }
    }
    switch b { case 0u: { return p1[i]; } case 1u: { return g1[i]; } default: { return m1[i]; } }
}

fn store2(b: u32, s: u32, i: u32, x: f32) {
    // b: 0 p, 2 m.
    if (s == 0u) {
        if (b == 0u) { p0[i] = x; } else { m0[i] = x; }
        return;
    }
    if (b == 0u) { p1[i] = x; } else { m1[i] = x; }
}

fn load2_v(s: u32, i: u32) -> f32 {
    if (s == 0u) { return v0[i]; }
    return v1[i];
}

fn store2_v(s: u32, i: u32, x: f32) {
    if (s == 0u) { v0[i] = x; } else { v1[i] = x; }
}

@compute @workgroup_size(WG)
fn optim_sgd_step_two(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let at = locate(wid, lid, nwg);
    let s = at.x;
    let i = at.y;
    if (s >= 2u) { return; }
    var m = 0.0;
    let with_buf = (params.flags & MOMENTUM) != 0u;
    if (with_buf && (params.flags & FIRST) == 0u) { m = load2(2u, s, i); }
    let r = sgd_rule(load2(0u, s, i), load2(1u, s, i), m);
    if (with_buf) { store2(2u, s, i, r.y); }
    store2(0u, s, i, r.x);
}

@compute @workgroup_size(WG)
fn optim_adam_step_two(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let at = locate(wid, lid, nwg);
    let s = at.x;
    let i = at.y;
    if (s >= 2u) { return; }
    let r = adam_rule(load2(0u, s, i), load2(1u, s, i), load2(2u, s, i), load2_v(s, i));
    store2(2u, s, i, r.y);
    store2_v(s, i, r.z);
    store2(0u, s, i, r.x);
}
