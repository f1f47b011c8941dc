// col2im: column-matrix gradients → NCHW input gradients, in gather form.
//
// The exact adjoint of im2col.wgsl (same layout, same params): one invocation per
// input element sums every column entry that was read from it. Deterministic, no
// float atomics. Writes dx[out_offset + ...] (a chunk of a larger batch).
// relu != 0: also the backward of the ReLU whose output relu_out is the
// convolution's input (laid out like dx): each sum times relu_out > 0.

struct Im2colParams {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    kh: u32,
    kw: u32,
    oh: u32,
    ow: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    dil_h: u32,
    dil_w: u32,
    out_offset: u32,
    relu: u32,
}

@group(0) @binding(0) var<storage, read> cols: array<f32>;
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@group(0) @binding(2) var<storage, read> relu_out: array<f32>;
@group(0) @binding(3) var<uniform> params: Im2colParams;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn col2im(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = params;
    let idx = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (idx >= p.n * p.c * p.h * p.w) { return; }
    let x = idx % p.w;
    let y = (idx / p.w) % p.h;
    let ci = (idx / (p.w * p.h)) % p.c;
    let img = idx / (p.w * p.h * p.c);
    let ncols = p.n * p.oh * p.ow;
    var acc = 0.0;
    for (var ki = 0u; ki < p.kh; ki++) {
        // y = oy·sh − ph + ki·dh  ⇒  oy = (y + ph − ki·dh) / sh when that divides.
        let ty = i32(y + p.pad_h) - i32(ki * p.dil_h);
        if (ty < 0 || u32(ty) % p.stride_h != 0u) { continue; }
        let oy = u32(ty) / p.stride_h;
        if (oy >= p.oh) { continue; }
        for (var kj = 0u; kj < p.kw; kj++) {
            let tx = i32(x + p.pad_w) - i32(kj * p.dil_w);
            if (tx < 0 || u32(tx) % p.stride_w != 0u) { continue; }
            let ox = u32(tx) / p.stride_w;
            if (ox >= p.ow) { continue; }
            let row = (ci * p.kh + ki) * p.kw + kj;
            acc += cols[row * ncols + (img * p.oh + oy) * p.ow + ox];
        }
    }
    if (p.relu != 0u) { acc *= select(0.0, 1.0, relu_out[p.out_offset + idx] > 0.0); }
    dx[p.out_offset + idx] = acc;
}
