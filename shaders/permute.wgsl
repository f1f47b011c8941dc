// Swaps the two leading axes of an [a, b, inner] tensor: out[j, i, t] = in[i, j, t] + bias.
//
// Conv keeps its GEMM output channel-major ([c_out, n, pixels]) and images are
// NCHW ([n, c, pixels]); this moves between the two, optionally adding a bias
// indexed by (output index / inner) mod bias_len — the channel, both for the
// swap and for a plain copy (a = 1). bias_len 0: no bias.
// in_offset / out_offset address a chunk of a larger buffer. relu 1 applies
// ReLU after the bias (a convolution followed by a ReLU layer, fused). flip 1
// also reverses `inner`: a convolution's weights [c_out, c_in, taps] become
// those of the convolution that maps dy to dx ([c_in, c_out, taps reversed]).

struct PermuteParams {
    a: u32,
    b: u32,
    inner: u32,
    bias_len: u32,
    in_offset: u32,
    out_offset: u32,
    relu: u32,
    flip: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<uniform> params: PermuteParams;

override WG: u32 = 256u;
// Elements per invocation along `inner`: the index arithmetic (integer
// division has no SIMD form on CPU adapters) is shared by SEG outputs.
override SEG: u32 = 32u;

@compute @workgroup_size(WG)
fn permute_swap(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let segs = (p.inner + SEG - 1u) / SEG;
    let s = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (s >= p.a * p.b * segs) { return; }
    // Output row r = j·a + i holds in[i, j, ·]; this invocation covers t0..t1 of it.
    let r = s / segs;
    let t0 = (s % segs) * SEG;
    let t1 = min(t0 + SEG, p.inner);
    let i = r % p.a;
    let j = r / p.a;
    var add = 0.0;
    if (p.bias_len != 0u) { add = bias[r % p.bias_len]; }
    let src0 = p.in_offset + (i * p.b + j) * p.inner;
    let dst0 = p.out_offset + r * p.inner;
    // Indexed by the output, so writes are contiguous.
    if (p.relu != 0u) {
        for (var t = t0; t < t1; t++) {
            let v = src[src0 + t] + add;
            dst[dst0 + t] = select(max(v, 0.0), v, is_nan(v)); // NaN passes, as in PyTorch
        }
    } else if (p.flip != 0u) {
        for (var t = t0; t < t1; t++) {
            dst[dst0 + t] = src[src0 + p.inner - 1u - t] + add;
        }
    } else {
        for (var t = t0; t < t1; t++) {
            dst[dst0 + t] = src[src0 + t] + add;
        }
    }
}

// By the bits: WGSL lets compilers assume NaN never occurs in float comparisons.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}
