// Per-channel bias for tensors [outer, channels, inner].
//   bias_add   out[i] = a[i] + b[(i / inner) mod channels]      one invocation per element
//   bias_grad  out[ch] = beta·out[ch] + Σ_{n,t} a[(n·channels + ch)·inner + t]   one per channel

struct BiasParams {
    len: u32,
    inner: u32,
    channels: u32,
    outer: u32,
    beta: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> params: BiasParams;

override WG: u32 = 256u;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
}

@compute @workgroup_size(WG)
fn bias_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= params.len) { return; }
    out[i] = a[i] + b[(i / params.inner) % params.channels];
}

@compute @workgroup_size(WG)
fn bias_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let ch = index(gid, nwg);
    if (ch >= params.channels) { return; }
    var s = 0.0;
    for (var n = 0u; n < params.outer; n++) {
        let base = (n * params.channels + ch) * params.inner;
        for (var t = 0u; t < params.inner; t++) { s += a[base + t]; }
    }
    if (params.beta != 0.0) { s += params.beta * out[ch]; }
    out[ch] = s;
}
