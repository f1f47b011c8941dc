// Batch normalisation over [n, c, inner] (inner = H·W for 2-d, 1 for 1-d),
// per channel c, PyTorch's semantics.
//
// Statistics: a shifted two-pass with a fixed reduction tree (deterministic).
// The shift is one sample of the channel, so x − shift is exact for data far
// from zero (mean 1e4, std 1e-2 keeps its precision); the mean is carried as
// shift + mean_lo and never rounded to one f32 before x̂ is formed.
//   stats   = [shift c | mean_lo c | invstd c]     invstd = 1/sqrt(var_biased + eps)
//   running = [running_mean c | running_var c]     updated with the unbiased variance
//   dgamma, dbeta = Σ dy·x̂ and Σ dy per channel        (backward_reduce writes them)
// Entry points:
//   batchnorm_stats            one workgroup per channel
//   batchnorm_forward          one invocation per element (training: batch stats; eval: running)
//   batchnorm_backward_reduce  one workgroup per channel: Σdy, Σdy·x̂
//   batchnorm_backward_dx      one invocation per element
// The backward entry points also read x kept in f16 (mixed precision: halves
// packed two to a word, `X_HALF`), so backward needs no f32 copy of it.

struct BnParams {
    n: u32,
    c: u32,
    inner: u32,
    training: u32,
    eps: f32,
    momentum: f32,
    affine: u32,
    update_running: u32,
    // batchnorm_forward: 1 applies ReLU to the output (a ReLU layer after, fused).
    relu: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Raw words: f32 bits, or two f16 halves when X_HALF (see load_x).
@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> running: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(8) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(9) var<uniform> params: BnParams;

override WG: u32 = 256u;
override X_HALF: bool = false;

// x[i] as f32.
fn load_x(i: u32) -> f32 {
    if (X_HALF) {
        return f16_value((x[i >> 1u] >> (16u * (i & 1u))) & 0xffffu);
    }
    return bitcast<f32>(x[i]);
}

// The f32 of binary16 bits h, exactly (as cast.wgsl's; WGSL has no includes).
// By hand, not unpack2x16float, which needs naga's FLOAT16_IN_FLOAT32
// capability that not every adapter grants.
fn f16_value(h: u32) -> f32 {
    let neg = (h & 0x8000u) != 0u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0u) {
        let v = f32(m) * 5.9604645e-8; // m · 2⁻²⁴
        return select(v, -v, neg);
    }
    if (e == 31u) {
        return bitcast<f32>(((h & 0x8000u) << 16u) | 0x7f800000u | (m << 13u));
    }
    return bitcast<f32>(((h & 0x8000u) << 16u) | ((e + 112u) << 23u) | (m << 13u));
}

var<workgroup> red: array<f32, WG>;

// Sum of v over the workgroup (WG a power of two); every invocation gets it.
fn tree_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

// Flat index of the k-th element of channel ch, k over n·inner.
fn at(ch: u32, k: u32) -> u32 {
    let p = params;
    return ((k / p.inner) * p.c + ch) * p.inner + k % p.inner;
}

// x̂ of element i: from the batch statistics in training, the running ones in eval.
fn x_hat(ch: u32, i: u32) -> f32 {
    let c = params.c;
    if (params.training == 0u) {
        return (load_x(i) - running[ch]) * inverseSqrt(running[c + ch] + params.eps);
    }
    return ((load_x(i) - stats[ch]) - stats[c + ch]) * stats[2u * c + ch];
}

@compute @workgroup_size(WG)
fn batchnorm_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params;
    // One workgroup per channel; the grid folds into y and z past the per-dimension limit.
    let ch = wid.x + (wid.y + wid.z * nwg.y) * nwg.x;
    if (ch >= p.c) { return; } // uniform per workgroup
    let count = p.n * p.inner;
    let shift = load_x(at(ch, 0u));
    var s = 0.0;
    for (var k = lid.x; k < count; k += WG) { s += load_x(at(ch, k)) - shift; }
    let mean_lo = tree_sum(lid.x, s) / f32(count);
    var q = 0.0;
    for (var k = lid.x; k < count; k += WG) {
        let d = (load_x(at(ch, k)) - shift) - mean_lo;
        q += d * d;
    }
    let var_biased = tree_sum(lid.x, q) / f32(count);
    if (lid.x == 0u) {
        stats[ch] = shift;
        stats[p.c + ch] = mean_lo;
        stats[2u * p.c + ch] = inverseSqrt(var_biased + p.eps);
        if (p.update_running != 0u) {
            let m = p.momentum;
            running[ch] = (1.0 - m) * running[ch] + m * (shift + mean_lo);
            let unbiased = var_biased * f32(count) / f32(count - 1u);
            running[p.c + ch] = (1.0 - m) * running[p.c + ch] + m * unbiased;
        }
    }
}

@compute @workgroup_size(WG)
fn batchnorm_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let i = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (i >= p.n * p.c * p.inner) { return; }
    let ch = (i / p.inner) % p.c;
    var h = x_hat(ch, i);
    if (p.affine != 0u) { h = gamma[ch] * h + beta[ch]; }
    if (p.relu != 0u) { h = select(max(h, 0.0), h, is_nan(h)); } // NaN passes, as in PyTorch
    out[i] = h;
}

// By the bits: WGSL lets compilers assume NaN never occurs in float comparisons.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

@compute @workgroup_size(WG)
fn batchnorm_backward_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params;
    // One workgroup per channel; the grid folds into y and z past the per-dimension limit.
    let ch = wid.x + (wid.y + wid.z * nwg.y) * nwg.x;
    if (ch >= p.c) { return; }
    let count = p.n * p.inner;
    var sd = 0.0;
    var sdh = 0.0;
    for (var k = lid.x; k < count; k += WG) {
        let i = at(ch, k);
        sd += dy[i];
        sdh += dy[i] * x_hat(ch, i);
    }
    let sum_dy = tree_sum(lid.x, sd);
    let sum_dy_xhat = tree_sum(lid.x, sdh);
    if (lid.x == 0u) {
        dgamma[ch] = sum_dy_xhat;
        dbeta[ch] = sum_dy;
    }
}

@compute @workgroup_size(WG)
fn batchnorm_backward_dx(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let i = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (i >= p.n * p.c * p.inner) { return; }
    let ch = (i / p.inner) % p.c;
    var g = 1.0;
    if (p.affine != 0u) { g = gamma[ch]; }
    if (p.training == 0u) {
        // Eval mode: the statistics are constants.
        out[i] = dy[i] * g * inverseSqrt(running[p.c + ch] + p.eps);
        return;
    }
    let count = f32(p.n * p.inner);
    let invstd = stats[2u * p.c + ch];
    // dx = γ·invstd/m · (m·dy − Σdy − x̂·Σ(dy·x̂))
    out[i] = g * invstd / count * (count * dy[i] - dbeta[ch] - x_hat(ch, i) * dgamma[ch]);
}
