// Dynamic loss scaling on the device (PyTorch's GradScaler), so a step needs
// no readback to decide whether to update:
//   loss_scale_apply    out = alpha·scale·x                  (the loss's gradient, scaled)
//   loss_scale_unscale  g = g / scale in place for up to SLOTS gradients a dispatch (slot s
//                       owns the flat workgroups [first[s], first[s + 1]), as the
//                       optimiser's multi-tensor kernels lay them out); a value that is
//                       not finite sets found
//   loss_scale_update   one invocation: backs the scale off (found) or grows it after
//                       `interval` clean steps, clears found, and writes the indirect
//                       arguments of the step's gated dispatches (the optimiser's): their
//                       workgroup counts from `counts`, or zeros when found (skipped).
// state: [scale (f32 bits), clean steps since the last change, skipped steps, found].
// counts: [count, then x, y, z of each gated dispatch] (the gate's template).

const SLOTS: u32 = 7u;

struct LossScaleParams {
    // loss_scale_unscale: elements of each slot's gradient, and each slot's
    // first flat workgroup id (first[SLOTS] is the total).
    slot_len: array<vec4<u32>, 2>,
    first: array<vec4<u32>, 2>,
    len: u32,
    alpha: f32,
    growth: f32,
    backoff: f32,
    interval: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> state: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> counts: array<u32>;
@group(0) @binding(4) var<storage, read_write> args: array<u32>;
@group(0) @binding(5) var<uniform> params: LossScaleParams;
@group(0) @binding(6) var<storage, read_write> g0: array<f32>;
@group(0) @binding(7) var<storage, read_write> g1: array<f32>;
@group(0) @binding(8) var<storage, read_write> g2: array<f32>;
@group(0) @binding(9) var<storage, read_write> g3: array<f32>;
@group(0) @binding(10) var<storage, read_write> g4: array<f32>;
@group(0) @binding(11) var<storage, read_write> g5: array<f32>;
@group(0) @binding(12) var<storage, read_write> g6: array<f32>;

override WG: u32 = 256u;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
}

@compute @workgroup_size(WG)
fn loss_scale_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= params.len) { return; }
    out[i] = params.alpha * bitcast<f32>(state[0]) * x[i];
}

// Bindings cannot be indexed, so each slot is a case: g / scale in place, the value returned.
fn unscale(s: u32, i: u32, inv: f32) -> f32 {
    var v = 0.0;
    switch s {
        case 0u: { v = g0[i] * inv; g0[i] = v; }
        case 1u: { v = g1[i] * inv; g1[i] = v; }
        case 2u: { v = g2[i] * inv; g2[i] = v; }
        case 3u: { v = g3[i] * inv; g3[i] = v; }
        case 4u: { v = g4[i] * inv; g4[i] = v; }
        case 5u: { v = g5[i] * inv; g5[i] = v; }
        default: { v = g6[i] * inv; g6[i] = v; }
    }
    return v;
}

@compute @workgroup_size(WG)
fn loss_scale_unscale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let flat = wid.x + (wid.y + wid.z * nwg.y) * nwg.x;
    var s = 0u;
    while (s < SLOTS && flat >= params.first[(s + 1u) / 4u][(s + 1u) % 4u]) { s++; }
    if (s == SLOTS) { return; }
    let i = (flat - params.first[s / 4u][s % 4u]) * WG + lid;
    if (i >= params.slot_len[s / 4u][s % 4u]) { return; }
    let v = unscale(s, i, 1.0 / bitcast<f32>(state[0]));
    // By the bits: compilers may assume floats are finite. Every writer writes 1.
    if ((bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u) {
        state[3] = 1u;
    }
}

@compute @workgroup_size(1)
fn loss_scale_update() {
    let found = state[3] != 0u;
    var scale = bitcast<f32>(state[0]);
    if (found) {
        scale *= params.backoff;
        state[1] = 0u;
        state[2] += 1u;
    } else {
        state[1] += 1u;
        if (state[1] == params.interval) {
            scale = min(scale * params.growth, 3.40282347e38);
            state[1] = 0u;
        }
    }
    state[0] = bitcast<u32>(scale);
    state[3] = 0u;
    let n = 3u * counts[0];
    for (var i = 0u; i < n; i++) {
        args[i] = select(counts[1u + i], 0u, found);
    }
}
