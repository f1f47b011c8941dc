// Activations, forward (out = f(x)) and backward (out = dy · f'(x), from the saved input x).
// kind: 0 ReLU, 1 LeakyReLU(slope), 2 sigmoid, 3 tanh, 4 GELU (erf), 5 GELU (tanh approximation).
// ReLU's gradient at exactly 0 is 0; LeakyReLU's is the slope (PyTorch's choices).
// sigmoid and tanh are written so that ±100 (and beyond) neither overflows nor gives NaN.

struct ActParams {
    len: u32,
    kind: u32,
    slope: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> params: ActParams;

override WG: u32 = 256u;

const SQRT_2_OVER_PI: f32 = 0.7978845608028654;
const INV_SQRT_2: f32 = 0.7071067811865476;
const INV_SQRT_2PI: f32 = 0.3989422804014327;

fn sigmoid(v: f32) -> f32 {
    if (v >= 0.0) { return 1.0 / (1.0 + exp(-v)); }
    let e = exp(v);
    return e / (1.0 + e);
}

fn tanh_stable(v: f32) -> f32 {
    let e = exp(-2.0 * abs(v));
    return sign(v) * (1.0 - e) / (1.0 + e);
}

// Abramowitz & Stegun 7.1.26, |error| < 1.5e-7; the CPU twin uses the same formula.
fn erf_approx(v: f32) -> f32 {
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return sign(v) * (1.0 - poly * exp(-a * a));
}

// By the bits: WGSL lets compilers assume NaN never occurs in float comparisons.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

fn forward(v: f32) -> f32 {
    switch params.kind {
        case 0u: { return select(max(v, 0.0), v, is_nan(v)); } // NaN passes, as in PyTorch
        case 1u: { return select(params.slope * v, v, v > 0.0); }
        case 2u: { return sigmoid(v); }
        case 3u: { return tanh_stable(v); }
        case 4u: { return 0.5 * v * (1.0 + erf_approx(v * INV_SQRT_2)); }
        default: {
            let u = SQRT_2_OVER_PI * (v + 0.044715 * v * v * v);
            return 0.5 * v * (1.0 + tanh_stable(u));
        }
    }
}

fn derivative(v: f32) -> f32 {
    switch params.kind {
        case 0u: { return select(0.0, 1.0, v > 0.0); }
        case 1u: { return select(params.slope, 1.0, v > 0.0); }
        case 2u: { let s = sigmoid(v); return s * (1.0 - s); }
        case 3u: { let t = tanh_stable(v); return 1.0 - t * t; }
        case 4u: { return 0.5 * (1.0 + erf_approx(v * INV_SQRT_2)) + v * INV_SQRT_2PI * exp(-0.5 * v * v); }
        default: {
            let u = SQRT_2_OVER_PI * (v + 0.044715 * v * v * v);
            let t = tanh_stable(u);
            return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v);
        }
    }
}

@compute @workgroup_size(WG)
fn activation_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (i >= params.len) { return; }
    out[i] = forward(x[i]);
}

@compute @workgroup_size(WG)
fn activation_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (i >= params.len) { return; }
    out[i] = dy[i] * derivative(x[i]);
}
