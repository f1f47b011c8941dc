// Fused softmax + cross-entropy over rows of logits [n, c], and standalone
// (log-)softmax. One invocation per row; log-sum-exp with the row max
// subtracted, so logits of ±1e4 stay finite and accurate.
//
// target = (1 − ε)·onehot(label) + ε/c (label smoothing ε)
// row_loss[r] = scale · Σ_j −target_j·log p_j          (0 for an ignored row)
// grad[r, j]  = scale · (softmax_j − target_j)         (0 for an ignored row)
// scale = 1/(non-ignored rows) for the mean, 1 for the sum: the host counts the
// rows when it validates the labels, before any dispatch.

struct XentParams {
    n: u32,
    c: u32,
    smoothing: f32,
    scale: f32,
    ignore_index: u32, // 0xffffffff: none
    log: u32,          // softmax_xent_probs: 1 writes log-softmax
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read_write> row_loss: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // gradient, or (log-)softmax
@group(0) @binding(4) var<uniform> params: XentParams;

override WG: u32 = 64u;

// log p_j = (x_j − max) − ln Σ exp(x − max). Never form lse = max + ln Σ: at
// |x| ~ 1e4 its f32 rounding (~1e-3) would show up in every probability.
struct Row {
    max: f32,
    log_sum: f32,
}

fn row_stats(base: u32) -> Row {
    var m = logits[base];
    for (var j = 1u; j < params.c; j++) { m = max(m, logits[base + j]); }
    var s = 0.0;
    for (var j = 0u; j < params.c; j++) { s += exp(logits[base + j] - m); }
    return Row(m, log(s));
}

// Row r's gradient into `out`; returns its (scaled) loss.
fn xent_row(r: u32) -> f32 {
    let p = params;
    let base = r * p.c;
    let label = labels[r];
    if (label == p.ignore_index) {
        for (var j = 0u; j < p.c; j++) { out[base + j] = 0.0; }
        return 0.0;
    }
    let st = row_stats(base);
    let off = p.smoothing / f32(p.c);
    var loss = 0.0;
    for (var j = 0u; j < p.c; j++) {
        var t = off;
        if (j == label) { t += 1.0 - p.smoothing; }
        let logp = (logits[base + j] - st.max) - st.log_sum;
        loss -= t * logp;
        out[base + j] = p.scale * (exp(logp) - t);
    }
    return p.scale * loss;
}

@compute @workgroup_size(WG)
fn softmax_xent_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (r >= params.n) { return; }
    row_loss[r] = xent_row(r);
}

var<workgroup> part: array<f32, WG>;

// softmax_xent_forward for a batch of at most WG rows, in one workgroup that
// also adds the rows' losses (a tree in workgroup memory, the same order as
// reduce_rows): row_loss[0] is the loss, no second dispatch.
@compute @workgroup_size(WG)
fn softmax_xent_forward_one(@builtin(local_invocation_id) lid: vec3<u32>) {
    let r = lid.x;
    var loss = 0.0;
    if (r < params.n) { loss = xent_row(r); }
    part[r] = loss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (r < s) { part[r] += part[r + s]; }
        workgroupBarrier();
    }
    if (r == 0u) { row_loss[0] = part[0]; }
}

@compute @workgroup_size(WG)
fn softmax_xent_probs(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let r = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (r >= p.n) { return; }
    let base = r * p.c;
    let st = row_stats(base);
    for (var j = 0u; j < p.c; j++) {
        let logp = (logits[base + j] - st.max) - st.log_sum;
        if (p.log != 0u) { out[base + j] = logp; } else { out[base + j] = exp(logp); }
    }
}
