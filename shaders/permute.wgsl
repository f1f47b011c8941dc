// Swaps the two leading axes of an [a, b, inner] tensor: out[j, i, t] = in[i, j, t] + bias.
//
// Conv keeps its GEMM output channel-major ([c_out, n, pixels]) and images are
// NCHW ([n, c, pixels]); this moves between the two, optionally adding a bias
// indexed by (output index / inner) mod bias_len — the channel, both for the
// swap and for a plain copy (a = 1). bias_len 0: no bias.
// in_offset / out_offset address a chunk of a larger buffer.

struct PermuteParams {
    a: u32,
    b: u32,
    inner: u32,
    bias_len: u32,
    in_offset: u32,
    out_offset: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<uniform> params: PermuteParams;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn permute_swap(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    // Indexed by the output, so writes are contiguous.
    let idx = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (idx >= p.a * p.b * p.inner) { return; }
    let t = idx % p.inner;
    let i = (idx / p.inner) % p.a;
    let j = idx / (p.inner * p.a);
    var v = src[p.in_offset + (i * p.b + j) * p.inner + t];
    if (p.bias_len != 0u) { v += bias[(idx / p.inner) % p.bias_len]; }
    dst[p.out_offset + idx] = v;
}
