// Row sums: out[off + r] = beta·out[off + r] + Σ_j f(in[r·len + j]) for a [rows, len]
// matrix, f the identity or the square (squared norms for gradient clipping).
//
// One workgroup per row: each invocation sums a strided slice, then a tree in
// workgroup memory (log2(WG) barriers per row, not per element). Bias gradients
// use it on channel-major gradients; beta = 1 accumulates across chunks.

struct ReduceParams {
    rows: u32,
    len: u32,
    beta: f32,
    square: u32,
    out_offset: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> params: ReduceParams;

override WG: u32 = 64u;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn reduce_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    // Uniform per workgroup, so the early exit cannot split a barrier.
    let row = wid.x + (wid.y + wid.z * nwg.y) * nwg.x;
    if (row >= params.rows) { return; }
    var acc = 0.0;
    for (var j = lid.x; j < params.len; j += WG) {
        let v = src[row * params.len + j];
        acc += select(v, v * v, params.square != 0u);
    }
    partial[lid.x] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) { partial[lid.x] += partial[lid.x + s]; }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        let o = params.out_offset + row;
        var v = partial[0];
        if (params.beta != 0.0) { v += params.beta * dst[o]; }
        dst[o] = v;
    }
}

// Column sums: out[off + e] = beta·out[off + e] + Σ_r f(in[r·len + e]) for a
// [rows, len] matrix, one invocation per column, rows summed in order (split-K
// adds its k-slice partial products with it: no transpose, one read of each).
@compute @workgroup_size(WG)
fn reduce_cols(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (e >= params.len) { return; }
    var acc = 0.0;
    for (var r = 0u; r < params.rows; r++) {
        let v = src[r * params.len + e];
        acc += select(v, v * v, params.square != 0u);
    }
    let o = params.out_offset + e;
    if (params.beta != 0.0) { acc += params.beta * dst[o]; }
    dst[o] = acc;
}
