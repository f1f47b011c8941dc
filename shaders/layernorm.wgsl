// Layer normalisation (and group normalisation) over rows of a [rows, d] view:
// each row is normalised with its own mean and biased variance, then scaled and
// shifted per element of the affine shape. LayerNorm: rows = everything before
// the normalised dims, d = their product, groups = inner = 1 (affine index =
// the element). GroupNorm over [n, c, hw] with g groups: rows = n·g,
// d = c/g·hw, affine index = the channel = ((row % g)·d + e) / hw. One
// invocation per row.

struct NormParams {
    rows: u32,
    d: u32,
    groups: u32,
    inner: u32,
    eps: f32,
    affine: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> beta_or_dy: array<f32>;    // forward: β; backward: dy
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;   // [rows, 2]: mean, 1/σ
@group(0) @binding(4) var<storage, read_write> out: array<f32>;     // forward: y; backward: dx
@group(0) @binding(5) var<storage, read_write> dyxhat: array<f32>;  // backward: dy·x̂, for dγ
@group(0) @binding(6) var<uniform> params: NormParams;

override WG: u32 = 64u;

fn row_of(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
}

fn channel(row: u32, e: u32) -> u32 {
    return ((row % params.groups) * params.d + e) / params.inner;
}

@compute @workgroup_size(WG)
fn layernorm_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let row = row_of(gid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.d;
    // Two passes (mean, then squared deviations): stabler than E[x²] − E[x]².
    var s = 0.0;
    for (var e = 0u; e < p.d; e++) { s += x[base + e]; }
    let mean = s / f32(p.d);
    var v = 0.0;
    for (var e = 0u; e < p.d; e++) {
        let t = x[base + e] - mean;
        v += t * t;
    }
    let rstd = inverseSqrt(v / f32(p.d) + p.eps);
    stats[2u * row] = mean;
    stats[2u * row + 1u] = rstd;
    for (var e = 0u; e < p.d; e++) {
        var y = (x[base + e] - mean) * rstd;
        if (p.affine != 0u) {
            let c = channel(row, e);
            y = y * gamma[c] + beta_or_dy[c];
        }
        out[base + e] = y;
    }
}

// dx = (1/σ)(g − mean(g) − x̂·mean(g·x̂)) with g = dy·γ.
@compute @workgroup_size(WG)
fn layernorm_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let row = row_of(gid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.d;
    let mean = stats[2u * row];
    let rstd = stats[2u * row + 1u];
    var sg = 0.0;
    var sgx = 0.0;
    for (var e = 0u; e < p.d; e++) {
        let xhat = (x[base + e] - mean) * rstd;
        let dy = beta_or_dy[base + e];
        var g = dy;
        if (p.affine != 0u) { g = dy * gamma[channel(row, e)]; }
        sg += g;
        sgx += g * xhat;
        dyxhat[base + e] = dy * xhat;
    }
    let n = f32(p.d);
    for (var e = 0u; e < p.d; e++) {
        let xhat = (x[base + e] - mean) * rstd;
        var g = beta_or_dy[base + e];
        if (p.affine != 0u) { g = g * gamma[channel(row, e)]; }
        out[base + e] = rstd * (g - sg / n - xhat * sgx / n);
    }
}
