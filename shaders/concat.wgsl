// Concatenation along dim 1 (channels) of [n, c, inner] tensors: forward copies
// one input into its channel slice of the output (one dispatch per input);
// backward copies a slice of the gradient out (one dispatch per input).

struct ConcatParams {
    n: u32,
    c_part: u32,   // channels of this input
    c_total: u32,  // channels of the concatenation
    offset: u32,   // first channel of this input in the concatenation
    inner: u32,    // product of the dims after dim 1
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> params: ConcatParams;

override WG: u32 = 256u;

// Element idx of the part → its index in the whole.
fn whole_index(idx: u32) -> u32 {
    let p = params;
    let i = idx % p.inner;
    let c = (idx / p.inner) % p.c_part;
    let b = idx / (p.inner * p.c_part);
    return (b * p.c_total + p.offset + c) * p.inner + i;
}

@compute @workgroup_size(WG)
fn concat_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (idx >= params.n * params.c_part * params.inner) { return; }
    dst[whole_index(idx)] = src[idx];
}

@compute @workgroup_size(WG)
fn concat_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (idx >= params.n * params.c_part * params.inner) { return; }
    dst[idx] = src[whole_index(idx)];
}
