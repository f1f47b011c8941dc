// Gradient clipping by global norm, entirely on the device:
//   clip_scale  out[i] ·= min(1, max_norm / (sqrt(norm2[0]) + 1e-6))
// norm2[0] is the squared global norm, summed by reduce_rows beforehand.

struct ClipParams {
    len: u32,
    max_norm: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> norm2: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> params: ClipParams;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn clip_scale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (i >= params.len) { return; }
    out[i] *= min(1.0, params.max_norm / (sqrt(norm2[0]) + 1e-6));
}
