// Average pooling over NCHW planes, forward and backward (gather form).
//
// Divisor (PyTorch's rule): with count_include_pad, the window clipped to the
// padded input; without, the number of in-bounds elements. Global average
// pooling is the case kernel = (h, w).

struct PoolParams {
    planes: u32,        // n · c
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    count_include_pad: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;       // forward: x; backward: dy
@group(0) @binding(1) var<storage, read_write> dst: array<f32>; // forward: y; backward: dx
@group(0) @binding(2) var<uniform> params: PoolParams;

override WG: u32 = 256u;

struct Window {
    ys: u32,
    ye: u32,
    xs: u32,
    xe: u32,
    divisor: f32,
}

fn window(oy: u32, ox: u32) -> Window {
    let p = params;
    let y0 = i32(oy * p.stride_h) - i32(p.pad_h);
    let x0 = i32(ox * p.stride_w) - i32(p.pad_w);
    let y1 = min(y0 + i32(p.kh), i32(p.h + p.pad_h));
    let x1 = min(x0 + i32(p.kw), i32(p.w + p.pad_w));
    let padded = (y1 - y0) * (x1 - x0);
    var win: Window;
    win.ys = u32(max(y0, 0));
    win.xs = u32(max(x0, 0));
    win.ye = u32(min(y1, i32(p.h)));
    win.xe = u32(min(x1, i32(p.w)));
    if (p.count_include_pad != 0u) {
        win.divisor = f32(padded);
    } else {
        win.divisor = f32((win.ye - win.ys) * (win.xe - win.xs));
    }
    return win;
}

@compute @workgroup_size(WG)
fn avgpool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let idx = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (idx >= p.planes * p.oh * p.ow) { return; }
    let ox = idx % p.ow;
    let oy = (idx / p.ow) % p.oh;
    let plane = idx / (p.ow * p.oh);
    let win = window(oy, ox);
    let base = plane * p.h * p.w;
    var acc = 0.0;
    for (var y = win.ys; y < win.ye; y++) {
        for (var x = win.xs; x < win.xe; x++) {
            acc += src[base + y * p.w + x];
        }
    }
    dst[idx] = acc / win.divisor;
}

@compute @workgroup_size(WG)
fn avgpool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let idx = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (idx >= p.planes * p.h * p.w) { return; }
    let x = idx % p.w;
    let y = (idx / p.w) % p.h;
    let plane = idx / (p.w * p.h);
    let oy_lo = u32(max(i32(y + p.pad_h) - i32(p.kh) + i32(p.stride_h), 0)) / p.stride_h;
    let oy_hi = min((y + p.pad_h) / p.stride_h + 1u, p.oh);
    let ox_lo = u32(max(i32(x + p.pad_w) - i32(p.kw) + i32(p.stride_w), 0)) / p.stride_w;
    let ox_hi = min((x + p.pad_w) / p.stride_w + 1u, p.ow);
    var acc = 0.0;
    for (var oy = oy_lo; oy < oy_hi; oy++) {
        for (var ox = ox_lo; ox < ox_hi; ox++) {
            let win = window(oy, ox);
            if (y >= win.ys && y < win.ye && x >= win.xs && x < win.xe) {
                acc += src[(plane * p.oh + oy) * p.ow + ox] / win.divisor;
            }
        }
    }
    dst[idx] = acc;
}

// Adaptive average pooling (PyTorch's AdaptiveAvgPool2d): output cell (oy, ox)
// averages rows [floor(oy·h/oh), ceil((oy+1)·h/oh)) and likewise for columns;
// windows may overlap, and when oh > h they repeat input rows. Kernel, stride
// and padding fields are unused.

fn adaptive_start(o: u32, len: u32, out: u32) -> u32 {
    return (o * len) / out;
}

fn adaptive_end(o: u32, len: u32, out: u32) -> u32 {
    return ((o + 1u) * len + out - 1u) / out;
}

@compute @workgroup_size(WG)
fn avgpool_adaptive_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let idx = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (idx >= p.planes * p.oh * p.ow) { return; }
    let ox = idx % p.ow;
    let oy = (idx / p.ow) % p.oh;
    let plane = idx / (p.ow * p.oh);
    let ys = adaptive_start(oy, p.h, p.oh);
    let ye = adaptive_end(oy, p.h, p.oh);
    let xs = adaptive_start(ox, p.w, p.ow);
    let xe = adaptive_end(ox, p.w, p.ow);
    let base = plane * p.h * p.w;
    var acc = 0.0;
    for (var y = ys; y < ye; y++) {
        for (var x = xs; x < xe; x++) {
            acc += src[base + y * p.w + x];
        }
    }
    dst[idx] = acc / f32((ye - ys) * (xe - xs));
}

@compute @workgroup_size(WG)
fn avgpool_adaptive_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let idx = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (idx >= p.planes * p.h * p.w) { return; }
    let x = idx % p.w;
    let y = (idx / p.w) % p.h;
    let plane = idx / (p.w * p.h);
    // The cells whose windows can hold (y, x); each is checked exactly.
    let oy_lo = (y * p.oh) / p.h;
    let oy_hi = min(((y + 1u) * p.oh + p.h - 1u) / p.h, p.oh);
    let ox_lo = (x * p.ow) / p.w;
    let ox_hi = min(((x + 1u) * p.ow + p.w - 1u) / p.w, p.ow);
    var acc = 0.0;
    for (var oy = oy_lo; oy < oy_hi; oy++) {
        let ys = adaptive_start(oy, p.h, p.oh);
        let ye = adaptive_end(oy, p.h, p.oh);
        if (y < ys || y >= ye) { continue; }
        for (var ox = ox_lo; ox < ox_hi; ox++) {
            let xs = adaptive_start(ox, p.w, p.ow);
            let xe = adaptive_end(ox, p.w, p.ow);
            if (x >= xs && x < xe) {
                acc += src[(plane * p.oh + oy) * p.ow + ox] / f32((ye - ys) * (xe - xs));
            }
        }
    }
    dst[idx] = acc;
}
