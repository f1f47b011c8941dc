// Regression losses, elementwise: each element's term (already scaled by
// 1/len for a mean) and its gradient; the loss is the sum of the terms
// (reduce_rows). kind: 0 MSE, 1 L1, 2 smooth L1 (Huber with beta, PyTorch's),
// 3 negative log-likelihood against weighted one-hot targets (term −goal·pred).

struct LossParams {
    len: u32,
    kind: u32,
    beta: f32,
    scale: f32,   // 1/len (mean) or 1 (sum)
}

@group(0) @binding(0) var<storage, read> pred: array<f32>;
@group(0) @binding(1) var<storage, read> goal: array<f32>;   // the target ("target" is reserved)
@group(0) @binding(2) var<storage, read_write> terms: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;
@group(0) @binding(4) var<uniform> params: LossParams;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn loss_regression(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let i = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (i >= p.len) { return; }
    let d = pred[i] - goal[i];
    let a = abs(d);
    var term: f32;
    var g: f32;
    if (p.kind == 3u) {
        // goal holds w[label]/Σw at the label's class (0 elsewhere and for ignored rows).
        term = select(0.0, -goal[i] * pred[i], goal[i] != 0.0);
        g = -goal[i];
    } else if (p.kind == 0u) {
        term = d * d;
        g = 2.0 * d;
    } else if (p.kind == 1u || (p.kind == 2u && a >= p.beta)) {
        // L1, or smooth L1's linear part (sign(0) = 0, as PyTorch).
        term = select(a, a - 0.5 * p.beta, p.kind == 2u);
        g = sign(d);
    } else {
        term = 0.5 * d * d / p.beta;
        g = d / p.beta;
    }
    terms[i] = term * p.scale;
    grad[i] = g * p.scale;
}
