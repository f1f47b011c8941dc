// Softmax and log-softmax along any axis of a tensor viewed as [outer, dim, inner],
// forward and backward; one invocation per (outer, inner) line.

struct SoftmaxParams {
    outer: u32,
    dim: u32,
    inner: u32,
    log: u32,
}

@group(0) @binding(0) var<storage, read> y: array<f32>;          // forward: x; backward: y (the forward's output)
@group(0) @binding(1) var<storage, read> dy: array<f32>;         // backward only
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // forward: y; backward: dx
@group(0) @binding(3) var<uniform> params: SoftmaxParams;

override WG: u32 = 64u;

fn line_base(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
}

@compute @workgroup_size(WG)
fn softmax_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let line = line_base(gid, nwg);
    if (line >= p.outer * p.inner) { return; }
    let base = (line / p.inner) * p.dim * p.inner + line % p.inner;
    var m = y[base];
    for (var k = 1u; k < p.dim; k++) { m = max(m, y[base + k * p.inner]); }
    var s = 0.0;
    for (var k = 0u; k < p.dim; k++) { s += exp(y[base + k * p.inner] - m); }
    let ls = log(s);
    for (var k = 0u; k < p.dim; k++) {
        let z = y[base + k * p.inner] - m;
        out[base + k * p.inner] = select(exp(z) / s, z - ls, p.log != 0u);
    }
}

// softmax: dx = y ⊙ (dy − Σ dy ⊙ y);  log-softmax: dx = dy − exp(y) Σ dy.
@compute @workgroup_size(WG)
fn softmax_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let line = line_base(gid, nwg);
    if (line >= p.outer * p.inner) { return; }
    let base = (line / p.inner) * p.dim * p.inner + line % p.inner;
    var s = 0.0;
    for (var k = 0u; k < p.dim; k++) {
        let i = base + k * p.inner;
        s += select(dy[i] * y[i], dy[i], p.log != 0u);
    }
    for (var k = 0u; k < p.dim; k++) {
        let i = base + k * p.inner;
        out[i] = select(y[i] * (dy[i] - s), dy[i] - exp(y[i]) * s, p.log != 0u);
    }
}
