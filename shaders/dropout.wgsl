// Inverted dropout with a counter-based RNG: element i of (seed, step) is kept
// when hash(seed, step, i) ≥ p·2^24 (24-bit uniform), and kept values are
// scaled by 1/(1 − p). The mask is a pure function of (seed, step, i), so the
// backward pass regenerates it instead of storing it, and the CPU twin
// (src/ops/dropout.rs) reproduces it bit for bit.

struct DropoutParams {
    len: u32,
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    threshold: u32, // p · 2^24
    scale: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> params: DropoutParams;

override WG: u32 = 256u;

// PCG-RXS-M-XS hash (Jarzynski & Olano, "Hash Functions for GPU Rendering", 2020).
fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

fn keep(i: u32) -> bool {
    let h = pcg(pcg(pcg(pcg(params.seed_hi) ^ params.seed_lo) ^ params.step) ^ i);
    return (h >> 8u) >= params.threshold;
}

// Forward (src = x) and backward (src = dy) are the same masked scaling.
@compute @workgroup_size(WG)
fn dropout_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (i >= params.len) { return; }
    out[i] = select(0.0, src[i] * params.scale, keep(i));
}
