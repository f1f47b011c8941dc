// Max pooling over NCHW planes, with an argmax mask for the backward pass.
//
// Forward: one invocation per output; out = max over the window's in-bounds
// elements (padding never wins), mask = flat index y·w + x of the winner within
// its input plane. Ties keep the first maximum in row-major window order
// (PyTorch's rule). Backward: gather form — one invocation per input element
// sums the output gradients of every window whose mask chose it.
// maxpool_backward_relu also applies the backward of a ReLU before the pooling:
// dx = gathered · (x > 0), x being the pooling's input (the ReLU's output), so
// the pair costs one dispatch, not two. With X_HALF that x is kept in f16
// (mixed precision: halves packed two to a word) and read as such.

struct PoolParams {
    planes: u32,        // n · c
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    count_include_pad: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;        // forward: x; backward: dy
@group(0) @binding(1) var<storage, read_write> mask: array<u32>; // forward writes, backward reads
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;  // forward: y; backward: dx
@group(0) @binding(3) var<storage, read> relu_out: array<u32>; // maxpool_backward_relu: the pooling's input (raw words)
@group(0) @binding(4) var<uniform> params: PoolParams;

override WG: u32 = 256u;
override X_HALF: bool = false;

// Whether the ReLU's output at i is > 0. From an f16's bits (exact): sign
// clear, not zero, not NaN (at most 0x7c00, +inf).
fn relu_passes(i: u32) -> bool {
    if (X_HALF) {
        let h = (relu_out[i >> 1u] >> (16u * (i & 1u))) & 0xffffu;
        return h != 0u && h <= 0x7c00u;
    }
    return bitcast<f32>(relu_out[i]) > 0.0;
}

// By the bits: WGSL lets compilers assume NaN never occurs in float comparisons.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

@compute @workgroup_size(WG)
fn maxpool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let idx = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (idx >= p.planes * p.oh * p.ow) { return; }
    let ox = idx % p.ow;
    let oy = (idx / p.ow) % p.oh;
    let plane = idx / (p.ow * p.oh);
    let y0 = i32(oy * p.stride_h) - i32(p.pad_h);
    let x0 = i32(ox * p.stride_w) - i32(p.pad_w);
    // Clip the window to the input: padding is never a candidate.
    let ys = u32(max(y0, 0));
    let xs = u32(max(x0, 0));
    let ye = u32(min(y0 + i32(p.kh), i32(p.h)));
    let xe = u32(min(x0 + i32(p.kw), i32(p.w)));
    let base = plane * p.h * p.w;
    var best_i = ys * p.w + xs;
    var best = src[base + best_i];
    for (var y = ys; y < ye; y++) {
        for (var x = xs; x < xe; x++) {
            let v = src[base + y * p.w + x];
            // NaN wins (and the first one stays), as in PyTorch: a NaN input
            // must reach the loss, not vanish in a comparison.
            if (v > best || (is_nan(v) && !is_nan(best))) {
                best = v;
                best_i = y * p.w + x;
            }
        }
    }
    dst[idx] = best;
    mask[idx] = best_i;
}

// The gradient reaching input element idx (idx < planes·h·w): the sum over
// the windows containing it whose mask chose it.
fn gather(idx: u32) -> f32 {
    let p = params;
    let x = idx % p.w;
    let y = (idx / p.w) % p.h;
    let plane = idx / (p.w * p.h);
    let here = y * p.w + x;
    // Windows containing y: oy·sh − ph ≤ y ≤ oy·sh − ph + kh − 1.
    let oy_lo = u32(max(i32(y + p.pad_h) - i32(p.kh) + i32(p.stride_h), 0)) / p.stride_h;
    let oy_hi = min((y + p.pad_h) / p.stride_h + 1u, p.oh);
    let ox_lo = u32(max(i32(x + p.pad_w) - i32(p.kw) + i32(p.stride_w), 0)) / p.stride_w;
    let ox_hi = min((x + p.pad_w) / p.stride_w + 1u, p.ow);
    var acc = 0.0;
    for (var oy = oy_lo; oy < oy_hi; oy++) {
        for (var ox = ox_lo; ox < ox_hi; ox++) {
            let o = (plane * p.oh + oy) * p.ow + ox;
            if (mask[o] == here) { acc += src[o]; }
        }
    }
    return acc;
}

@compute @workgroup_size(WG)
fn maxpool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let idx = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (idx >= p.planes * p.h * p.w) { return; }
    dst[idx] = gather(idx);
}

@compute @workgroup_size(WG)
fn maxpool_backward_relu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let idx = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (idx >= p.planes * p.h * p.w) { return; }
    // ReLU's derivative from its output, as activation_backward takes it: 1 where > 0.
    dst[idx] = gather(idx) * select(0.0, 1.0, relu_passes(idx));
}
