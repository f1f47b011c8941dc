// f32 ⇄ f16 storage (mixed precision keeps activations for backward in f16):
//   cast_to_f16  out[w] = f16(x[2w]) | f16(x[2w+1]) << 16   (words of two halves)
//   cast_to_f32  out[i] = f32(half i of x)
// The halves are packed in u32 words by hand, not stored as `f16`: core WGSL,
// so every adapter (with or without SHADER_F16) stores the same bits, and the
// rounding is IEEE round-to-nearest-even everywhere (pack2x16float leaves the
// rounding direction to the implementation, and naga wants its FLOAT16_IN_FLOAT32
// capability for it), so the CPU twin matches bit for bit.
// A tensor larger than one binding is cast in windows: `start` is the first
// element of this window (even, so it begins on a word).

struct CastParams {
    len: u32,   // elements in this window
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG: u32 = 256u;

// Both entry points see raw words; f32 data is bitcast (free).
@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<uniform> params: CastParams;

// IEEE binary16 bits of f, rounded to nearest even; overflow → ±inf, NaN stays NaN.
fn f16_bits(f: f32) -> u32 {
    let x = bitcast<u32>(f);
    let sign = (x >> 16u) & 0x8000u;
    let e = i32((x >> 23u) & 0xffu);
    let m = x & 0x7fffffu;
    if (e == 255) {
        return sign | 0x7c00u | select(0u, 0x200u | (m >> 13u), m != 0u);
    }
    let he = e - 112; // rebiased exponent (127 → 15)
    if (he >= 31) {
        return sign | 0x7c00u;
    }
    if (he <= 0) {
        // Subnormal half (or zero): the 24-bit significand shifted right.
        if (he < -10) {
            return sign;
        }
        let full = m | 0x800000u;
        let shift = u32(14 - he);
        let rem = full & ((1u << shift) - 1u);
        let halfway = 1u << (shift - 1u);
        var h = full >> shift;
        if (rem > halfway || (rem == halfway && (h & 1u) == 1u)) {
            h += 1u;
        }
        return sign | h;
    }
    var h = (u32(he) << 10u) | (m >> 13u);
    let rem = m & 0x1fffu;
    // A carry out of the significand bumps the exponent: still correct (up to inf).
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) == 1u)) {
        h += 1u;
    }
    return sign | h;
}

@compute @workgroup_size(WG)
fn cast_to_f16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    let i = 2u * w;
    if (i >= params.len) { return; }
    var hi = 0u;
    if (i + 1u < params.len) {
        hi = f16_bits(bitcast<f32>(x[i + 1u]));
    }
    out[w] = f16_bits(bitcast<f32>(x[i])) | (hi << 16u);
}

// The f32 of binary16 bits h (exact: every half is an f32).
fn f16_value(h: u32) -> f32 {
    let neg = (h & 0x8000u) != 0u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0u) {
        let v = f32(m) * 5.9604645e-8; // m · 2⁻²⁴
        return select(v, -v, neg);
    }
    if (e == 31u) {
        return bitcast<f32>(((h & 0x8000u) << 16u) | 0x7f800000u | (m << 13u));
    }
    return bitcast<f32>(((h & 0x8000u) << 16u) | ((e + 112u) << 23u) | (m << 13u));
}

@compute @workgroup_size(WG)
fn cast_to_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (i >= params.len) { return; }
    out[i] = bitcast<u32>(f16_value((x[i >> 1u] >> (16u * (i & 1u))) & 0xffffu));
}
