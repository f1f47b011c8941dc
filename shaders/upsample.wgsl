// Upsampling (PyTorch's Upsample / interpolate) over NCHW planes, forward and
// backward in gather form (no atomics). The source coordinate of output o is
// o·in/out (nearest: floor) or (o + 0.5)·in/out − 0.5 clamped at 0 (bilinear,
// align_corners = false), so sizes, not scale factors, define the map.

struct UpsampleParams {
    planes: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    bilinear: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;       // forward: x; backward: dy
@group(0) @binding(1) var<storage, read_write> dst: array<f32>; // forward: y; backward: dx
@group(0) @binding(2) var<uniform> params: UpsampleParams;

override WG: u32 = 256u;

fn nearest(o: u32, len: u32, out: u32) -> u32 {
    return min((o * len) / out, len - 1u);
}

// Bilinear taps of output o along one axis: (i0, i1, weight of i1).
fn taps(o: u32, len: u32, out: u32) -> vec3<f32> {
    let s = max((f32(o) + 0.5) * f32(len) / f32(out) - 0.5, 0.0);
    let i0 = min(u32(floor(s)), len - 1u);
    let i1 = min(i0 + 1u, len - 1u);
    return vec3<f32>(f32(i0), f32(i1), s - f32(i0));
}

// The weight with which output o reads input i along one axis.
fn weight(o: u32, i: u32, len: u32, out: u32) -> f32 {
    if (params.bilinear == 0u) {
        return select(0.0, 1.0, nearest(o, len, out) == i);
    }
    let t = taps(o, len, out);
    var wt = 0.0;
    if (u32(t.x) == i) { wt += 1.0 - t.z; }
    if (u32(t.y) == i) { wt += t.z; }
    return wt;
}

@compute @workgroup_size(WG)
fn upsample_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let idx = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (idx >= p.planes * p.oh * p.ow) { return; }
    let ox = idx % p.ow;
    let oy = (idx / p.ow) % p.oh;
    let base = (idx / (p.ow * p.oh)) * p.h * p.w;
    if (p.bilinear == 0u) {
        dst[idx] = src[base + nearest(oy, p.h, p.oh) * p.w + nearest(ox, p.w, p.ow)];
        return;
    }
    let ty = taps(oy, p.h, p.oh);
    let tx = taps(ox, p.w, p.ow);
    let y0 = u32(ty.x);
    let y1 = u32(ty.y);
    let x0 = u32(tx.x);
    let x1 = u32(tx.y);
    let top = src[base + y0 * p.w + x0] * (1.0 - tx.z) + src[base + y0 * p.w + x1] * tx.z;
    let bottom = src[base + y1 * p.w + x0] * (1.0 - tx.z) + src[base + y1 * p.w + x1] * tx.z;
    dst[idx] = top * (1.0 - ty.z) + bottom * ty.z;
}

// The outputs that can read input i along one axis: [lo, hi).
fn readers(i: u32, len: u32, out: u32) -> vec2<u32> {
    let lo = u32(max(floor((f32(i) - 1.0) * f32(out) / f32(len)) - 1.0, 0.0));
    let hi = min(u32(ceil((f32(i) + 2.0) * f32(out) / f32(len))) + 1u, out);
    return vec2<u32>(lo, hi);
}

@compute @workgroup_size(WG)
fn upsample_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let idx = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (idx >= p.planes * p.h * p.w) { return; }
    let x = idx % p.w;
    let y = (idx / p.w) % p.h;
    let base = (idx / (p.w * p.h)) * p.oh * p.ow;
    let ry = readers(y, p.h, p.oh);
    let rx = readers(x, p.w, p.ow);
    var acc = 0.0;
    for (var oy = ry.x; oy < ry.y; oy++) {
        let wy = weight(oy, y, p.h, p.oh);
        if (wy == 0.0) { continue; }
        for (var ox = rx.x; ox < rx.y; ox++) {
            let wx = weight(ox, x, p.w, p.ow);
            if (wx != 0.0) {
                acc += src[base + oy * p.ow + ox] * wy * wx;
            }
        }
    }
    dst[idx] = acc;
}
