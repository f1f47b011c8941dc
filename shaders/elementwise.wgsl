// Elementwise arithmetic training needs. One invocation per element.
//   elementwise_add           out = alpha·a + beta·b; relu 1: then ReLU (NaN passes);
//                             relu 2: then times mask > 0 (the backward of a ReLU whose
//                             output is mask: a residual block's input gradient)
//   elementwise_combine       out = alpha·a + beta·out   (in place; beta = 0 never reads out)
//   elementwise_fill          out = alpha
//   elementwise_combine_sign  out = alpha·sign(a) + beta·out   (L1 regularisation)
//   elementwise_mul           out = alpha·a·b[i / inner]   (inner 1: a product; else b
//                             scales runs of `inner` elements: a channel gate)

struct EwParams {
    len: u32,
    alpha: f32,
    beta: f32,
    relu: u32,
    inner: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>; // elementwise_add, relu 2
@group(0) @binding(4) var<uniform> params: EwParams;

override WG: u32 = 256u;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
}

@compute @workgroup_size(WG)
fn elementwise_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= params.len) { return; }
    let v = params.alpha * a[i] + params.beta * b[i];
    if (params.relu == 2u) {
        out[i] = v * select(0.0, 1.0, mask[i] > 0.0);
        return;
    }
    // By the bits: compilers may assume NaN never occurs in float comparisons.
    let nan = (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
    out[i] = select(v, select(max(v, 0.0), v, nan), params.relu != 0u);
}

@compute @workgroup_size(WG)
fn elementwise_combine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= params.len) { return; }
    var v = params.alpha * a[i];
    if (params.beta != 0.0) { v += params.beta * out[i]; }
    out[i] = v;
}

@compute @workgroup_size(WG)
fn elementwise_fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= params.len) { return; }
    out[i] = params.alpha;
}

@compute @workgroup_size(WG)
fn elementwise_combine_sign(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= params.len) { return; }
    out[i] = params.alpha * sign(a[i]) + params.beta * out[i];
}

@compute @workgroup_size(WG)
fn elementwise_mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= params.len) { return; }
    out[i] = params.alpha * a[i] * b[i / params.inner];
}
