// im2col: NCHW images → column matrix, images folded into the columns.
//
// input: [n, c, h, w] starting at in_offset (a chunk of a larger batch).
// cols:  [c·kh·kw, n·oh·ow]; row (ci·kh + ki)·kw + kj, column img·oh·ow + oy·ow + ox.
// The entry is input[img, ci, oy·sh − ph + ki·dh, ox·sw − pw + kj·dw], or 0 in the padding.
// Grouped convs need nothing special: group g owns rows g·(c/groups)·kh·kw onward.
// One invocation per row segment of ow entries; the grid folds into y and z past
// the per-dimension workgroup limit.

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
    in_offset: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> input: array<f32>;
@group(0) @binding(1) var<storage, read_write> cols: array<f32>;
@group(0) @binding(2) var<uniform> params: Im2colParams;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn im2col(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // One invocation per output row segment (row, img, oy): its ow entries share
    // every index computation. Integer division has no SIMD form on CPU
    // adapters, and per element it cost more than the copy itself.
    let p = params;
    let segs = p.n * p.oh;
    let t = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (t >= p.c * p.kh * p.kw * segs) { return; }
    let row = t / segs;
    let seg = t % segs; // img·oh + oy
    let oy = seg % p.oh;
    let img = seg / p.oh;
    let kj = row % p.kw;
    let ki = (row / p.kw) % p.kh;
    let ci = row / (p.kw * p.kh);
    let out = row * (segs * p.ow) + seg * p.ow;
    let y = i32(oy * p.stride_h + ki * p.dil_h) - i32(p.pad_h);
    if (y < 0 || y >= i32(p.h)) {
        for (var ox = 0u; ox < p.ow; ox++) { cols[out + ox] = 0.0; }
        return;
    }
    let src = p.in_offset + ((img * p.c + ci) * p.h + u32(y)) * p.w;
    let x0 = i32(kj * p.dil_w) - i32(p.pad_w);
    for (var ox = 0u; ox < p.ow; ox++) {
        let x = x0 + i32(ox * p.stride_w);
        var v = 0.0;
        if (x >= 0 && x < i32(p.w)) { v = input[src + u32(x)]; }
        cols[out + ox] = v;
    }
}
