// Zero padding of NCHW planes by (top, bottom, left, right) (PyTorch's
// ZeroPad2d / F.pad), and its backward, which crops the gradient.

struct PadParams {
    planes: u32,
    h: u32,
    w: u32,
    top: u32,
    bottom: u32,
    left: u32,
    right: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;       // forward: x; backward: dy
@group(0) @binding(1) var<storage, read_write> dst: array<f32>; // forward: y; backward: dx
@group(0) @binding(2) var<uniform> params: PadParams;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn pad_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let ph = p.h + p.top + p.bottom;
    let pw = p.w + p.left + p.right;
    let idx = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (idx >= p.planes * ph * pw) { return; }
    let x = idx % pw;
    let y = (idx / pw) % ph;
    let plane = idx / (pw * ph);
    var v = 0.0;
    if (y >= p.top && y < p.top + p.h && x >= p.left && x < p.left + p.w) {
        v = src[(plane * p.h + y - p.top) * p.w + x - p.left];
    }
    dst[idx] = v;
}

@compute @workgroup_size(WG)
fn pad_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let ph = p.h + p.top + p.bottom;
    let pw = p.w + p.left + p.right;
    let idx = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (idx >= p.planes * p.h * p.w) { return; }
    let x = idx % p.w;
    let y = (idx / p.w) % p.h;
    let plane = idx / (p.w * p.h);
    dst[idx] = src[(plane * ph + y + p.top) * pw + x + p.left];
}
