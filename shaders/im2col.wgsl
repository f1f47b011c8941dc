// im2col: NCHW images → column matrix, images folded into the columns.
//
// input: [n, c, h, w] starting at in_offset (a chunk of a larger batch).
// cols:  [c·kh·kw, n·oh·ow]; row (ci·kh + ki)·kw + kj, column img·oh·ow + oy·ow + ox.
// The entry is input[img, ci, oy·sh − ph + ki·dh, ox·sw − pw + kj·dw], or 0 in the padding.
// Grouped convs need nothing special: group g owns rows g·(c/groups)·kh·kw onward.
// One invocation per column-matrix element; a 2-d grid lifts the 65535-workgroup limit.

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
    let p = params;
    let ncols = p.n * p.oh * p.ow;
    let idx = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * WG;
    if (idx >= p.c * p.kh * p.kw * ncols) { return; }
    let row = idx / ncols;
    let col = idx % ncols;
    let kj = row % p.kw;
    let ki = (row / p.kw) % p.kh;
    let ci = row / (p.kw * p.kh);
    let img = col / (p.oh * p.ow);
    let ox = col % p.ow;
    let oy = (col / p.ow) % p.oh;
    let y = i32(oy * p.stride_h + ki * p.dil_h) - i32(p.pad_h);
    let x = i32(ox * p.stride_w + kj * p.dil_w) - i32(p.pad_w);
    var v = 0.0;
    if (y >= 0 && y < i32(p.h) && x >= 0 && x < i32(p.w)) {
        v = input[p.in_offset + ((img * p.c + ci) * p.h + u32(y)) * p.w + u32(x)];
    }
    cols[idx] = v;
}
