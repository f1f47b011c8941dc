// Batched f32 GEMM:  C[b] = alpha · op(A[b]) · op(B[b]) + beta · C[b]
//
// Row-major storage. op(A) is M×K: A is stored M×K, or K×M when trans_a.
// op(B) is K×N: B is stored K×N, or N×K when trans_b. C is M×N.
// stride_* is the element distance between batch items (0 broadcasts one matrix
// over the batch); offset_* is where item 0 starts, so a caller can address a
// slice of a larger buffer without copying it.
//
// Two entry points share the bindings and params:
//   gemm_blocked — barrier-free, 8×8 outputs per invocation held in registers
//                  (16 loads feed 64 FMAs: on llvmpipe every storage load is
//                  costly, and 8×8 ran 1.9× faster than 4×4; benches/NOTES.md).
//                  For CPU-type adapters (lavapipe), where barriers are costly.
//   gemm_tiled   — workgroup-memory tiles of TILE_M×TILE_N with a TILE_K-deep
//                  k-slab, 4×4 outputs per invocation. For real GPUs.
// Grid: x over column blocks, y over row blocks, z over the batch; row_base and
// col_base offset a dispatch that covers part of a larger grid.
// beta == 0 never reads C (pooled buffers hold stale data, possibly NaN).
// Epilogue: bias_mode 1 adds aux[j] to column j (a linear layer's bias), 2
// adds aux[i] to row i, 0 none; relu 1 then applies ReLU (a layer followed by
// a ReLU layer, fused); relu 2 instead multiplies by aux[idx] > 0, the
// backward of a ReLU whose output aux is laid out like C (a linear layer's
// input gradient through the ReLU before it). aux is read by nothing else.
// Row sums: rowsum 1 also writes Σ_p op(A)[i][p] (+ beta·old, no alpha) to
// rs[rowsum_offset + batch·m + i], the bias gradient beside a weight gradient
// (A = dy) in the same pass over A; the invocations of column block 0 keep
// them. rowsum 2 (split-K) writes each slice's sums after its partial C, at
// c[offset_c + batch·stride_c + m·n + i]; gemm_split_reduce adds both up.

struct GemmParams {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    trans_a: u32,
    trans_b: u32,
    alpha: f32,
    beta: f32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    offset_a: u32,
    offset_b: u32,
    offset_c: u32,
    // First row and column of this dispatch: the host splits grids that pass
    // the per-dimension workgroup limit into several dispatches.
    row_base: u32,
    col_base: u32,
    // Split-K: when non-zero, batch item z sums only p in [z·k_chunk, (z+1)·k_chunk)
    // (the host then sets stride_a = stride_b = 0 and adds the partial products).
    k_chunk: u32,
    bias_mode: u32,
    relu: u32,
    // Non-zero: C's column j is pixel j % c_img_cols of image j / c_img_cols,
    // stored NCHW (images c_img_stride apart, rows c_img_cols apart), so a
    // convolution's output needs no permute.
    c_img_cols: u32,
    c_img_stride: u32,
    // The same mapping on the loads, so a backward pass reads a convolution's
    // NCHW gradient as its [C_out, images·pixels] matrix without a permute:
    // a_img_cols non-zero: op(A)'s k index p is pixel p % a_img_cols of image
    // p / a_img_cols (A not transposed, rows a_img_cols apart); b_img_cols
    // non-zero: op(B)'s column j likewise (B not transposed).
    a_img_cols: u32,
    a_img_stride: u32,
    b_img_cols: u32,
    b_img_stride: u32,
    rowsum: u32,
    rowsum_offset: u32,
    // Implicit convolution (CONV pipelines, conv_h != 0): B is not stored;
    // it is the column matrix [taps, images·pixels] of the NCHW input bound
    // as b, gathered in the load (no im2col pass, no column buffer). A tap
    // r = (ci, ki, kj) and a pixel q = (img, oy, ox) each walk an
    // (outer, middle, inner) index; see Walk. The element is
    // b[base + tap.o + pix.o + Y·conv_w + X] with Y = tap.y + pix.y and
    // X = tap.x + pix.x, or 0 outside [0, conv_h) × [0, conv_w) (padding).
    // op(B)[p][j]: p a tap and j a pixel, or with trans_b p a pixel and j a tap.
    conv_h: u32,
    conv_w: u32,
    tap_inner: u32, // kw
    tap_mid: u32,   // kh
    tap_dx: u32,    // dilation w
    tap_dy: u32,    // dilation h
    tap_outer: u32, // h·w, elements from one input channel to the next
    pix_inner: u32, // ow
    pix_mid: u32,   // oh
    pix_dx: u32,    // stride w
    pix_dy: u32,    // stride h
    pix_outer: u32, // elements from one image to the next
    pix_x0: i32,    // −padding w
    pix_y0: i32,    // −padding h
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<storage, read> aux: array<f32>; // bias, or the ReLU output (relu 2)
@group(0) @binding(4) var<storage, read_write> rs: array<f32>; // row sums (rowsum 1)
@group(0) @binding(5) var<uniform> params: GemmParams;

// Invocations per workgroup along x (columns) and y (rows).
override WG_X: u32 = 8u;
override WG_Y: u32 = 8u;
// The NCHW load mapping of A and the row sums, compiled in only for the
// pipelines that use them: in the k loop they cost the plain GEMM 4–8% on
// lavapipe (benches/RESULTS.md).
override MAPPED: bool = false;
// The implicit convolution's gather on B's loads (conv_* params); with it,
// b_img_cols is unused.
override CONV: bool = false;
// Depth of the k-slab staged in workgroup memory (gemm_tiled only).
override TILE_K: u32 = 16u;
// gemm_tiled: each invocation owns a 4×4 block, so a workgroup covers (4·WG_Y)×(4·WG_X).
override TILE_M: u32 = WG_Y * 4u;
override TILE_N: u32 = WG_X * 4u;
// gemm_blocked: each invocation owns an 8×8 block, a workgroup (8·WG_Y)×(8·WG_X).
const BLOCK: u32 = 8u;
// gemm_blocked_wide: a 16×16 block, a workgroup (16·WG_Y)×(16·WG_X).
const WIDE: u32 = 16u;

// Element strides of op(A)[i][p] and op(B)[p][j] in their buffers.
struct Strides {
    a_i: u32,
    a_p: u32,
    b_p: u32,
    b_j: u32,
}

fn strides() -> Strides {
    var s: Strides;
    if (params.trans_a != 0u) { s.a_i = 1u; s.a_p = params.m; } else { s.a_i = params.k; s.a_p = 1u; }
    if (params.trans_b != 0u) { s.b_p = 1u; s.b_j = params.k; } else { s.b_p = params.n; s.b_j = 1u; }
    if (params.a_img_cols != 0u) { s.a_i = params.a_img_cols; }
    if (params.b_img_cols != 0u) { s.b_p = params.b_img_cols; }
    return s;
}

// Offset of op(A)[·][p] from its row, and of op(B)[·][j] from its k row.
fn a_off(p: u32, s: Strides) -> u32 {
    if (!MAPPED || params.a_img_cols == 0u) { return p * s.a_p; }
    return (p / params.a_img_cols) * params.a_img_stride + p % params.a_img_cols;
}

fn b_off(j: u32, s: Strides) -> u32 {
    if (params.b_img_cols == 0u) { return j * s.b_j; }
    return (j / params.b_img_cols) * params.b_img_stride + j % params.b_img_cols;
}

// Implicit convolution. A position along a tap or pixel walk: (channel or
// image offset, y, x). Index i is inner i % inner, middle (i / inner) % mid,
// outer the rest; x = x0 + inner·dx, y = y0 + middle·dy, o = outer·stride.
struct Walk {
    inner: u32,
    mid: u32,
    dx: u32,
    dy: u32,
    outer: u32,
    x0: i32,
    y0: i32,
}

fn tap_walk() -> Walk {
    return Walk(params.tap_inner, params.tap_mid, params.tap_dx, params.tap_dy, params.tap_outer, 0, 0);
}

fn pix_walk() -> Walk {
    return Walk(params.pix_inner, params.pix_mid, params.pix_dx, params.pix_dy, params.pix_outer, params.pix_x0, params.pix_y0);
}

// The walk of op(B)'s k index p and of its column j.
fn k_walk() -> Walk {
    if (params.trans_b != 0u) { return pix_walk(); }
    return tap_walk();
}

fn j_walk() -> Walk {
    if (params.trans_b != 0u) { return tap_walk(); }
    return pix_walk();
}

fn walk_at(w: Walk, i: u32) -> vec3<i32> {
    let inner = i % w.inner;
    let rest = i / w.inner;
    return vec3<i32>(i32((rest / w.mid) * w.outer), w.y0 + i32((rest % w.mid) * w.dy), w.x0 + i32(inner * w.dx));
}

// A k loop's walk, stepped by additions: (o, y, x) and the inner and middle counters.
struct Cursor {
    at: vec3<i32>,
    inner: u32,
    mid: u32,
}

fn cursor_at(w: Walk, i: u32) -> Cursor {
    return Cursor(walk_at(w, i), i % w.inner, (i / w.inner) % w.mid);
}

fn cursor_next(w: Walk, c: Cursor) -> Cursor {
    var n = c;
    n.inner += 1u;
    n.at.z += i32(w.dx);
    if (n.inner == w.inner) {
        n.inner = 0u;
        n.at.z = w.x0;
        n.mid += 1u;
        n.at.y += i32(w.dy);
        if (n.mid == w.mid) {
            n.mid = 0u;
            n.at.y = w.y0;
            n.at.x += i32(w.outer);
        }
    }
    return n;
}

// Four gathered elements: columns at (o, y, x) = (o4, y4, x4) + k.
fn conv_load4(base: u32, o4: vec4<i32>, y4: vec4<i32>, x4: vec4<i32>, k: vec3<i32>) -> vec4<f32> {
    let yy = y4 + k.y;
    let xx = x4 + k.z;
    let ok = (vec4<u32>(yy) < vec4<u32>(params.conv_h)) & (vec4<u32>(xx) < vec4<u32>(params.conv_w));
    let at = vec4<u32>(select(vec4<i32>(0), o4 + k.x + yy * i32(params.conv_w) + xx, ok)) + base;
    let v = vec4<f32>(b[at.x], b[at.y], b[at.z], b[at.w]);
    return select(vec4<f32>(0.0), v, ok);
}

fn conv_load1(base: u32, at: vec3<i32>) -> f32 {
    let ok = u32(at.y) < params.conv_h && u32(at.z) < params.conv_w;
    let i = select(0, at.x + at.y * i32(params.conv_w) + at.z, ok);
    return select(0.0, b[base + u32(i)], ok);
}

// The column parts of op(B)'s columns j, j + WG_X, j + 2·WG_X, j + 3·WG_X
// (clamped like cols4): offsets, ys and xs.
struct Cols4 {
    o: vec4<i32>,
    y: vec4<i32>,
    x: vec4<i32>,
}

fn conv_cols4(j: u32) -> Cols4 {
    let w = j_walk();
    let last = params.n - 1u;
    let c0 = walk_at(w, min(j, last));
    let c1 = walk_at(w, min(j + WG_X, last));
    let c2 = walk_at(w, min(j + 2u * WG_X, last));
    let c3 = walk_at(w, min(j + 3u * WG_X, last));
    return Cols4(vec4<i32>(c0.x, c1.x, c2.x, c3.x), vec4<i32>(c0.y, c1.y, c2.y, c3.y), vec4<i32>(c0.z, c1.z, c2.z, c3.z));
}

// Buffer offsets of op(A)'s rows i..i+3 and of op(B)'s columns j, j+WG_X, …,
// j+3·WG_X, clamped onto the last valid row/column: the loads stay in bounds
// without branches, and store_block drops the duplicates.
fn rows4(i: u32, s: Strides, base: u32) -> vec4<u32> {
    let last = params.m - 1u;
    return vec4<u32>(min(i, last), min(i + 1u, last), min(i + 2u, last), min(i + 3u, last)) * s.a_i + base;
}

fn cols4(j: u32, s: Strides, base: u32) -> vec4<u32> {
    let last = params.n - 1u;
    return vec4<u32>(b_off(min(j, last), s), b_off(min(j + WG_X, last), s), b_off(min(j + 2u * WG_X, last), s), b_off(min(j + 3u * WG_X, last), s)) + base;
}

fn load_a(r: vec4<u32>, pa: u32) -> vec4<f32> {
    return vec4<f32>(a[r.x + pa], a[r.y + pa], a[r.z + pa], a[r.w + pa]);
}

fn load_b(c: vec4<u32>, pb: u32) -> vec4<f32> {
    return vec4<f32>(b[c.x + pb], b[c.y + pb], b[c.z + pb], b[c.w + pb]);
}

// The k range batch item `batch` sums: all of it, or its split-K slice.
fn k_range(batch: u32) -> vec2<u32> {
    if (params.k_chunk == 0u) { return vec2<u32>(0u, params.k); }
    let begin = batch * params.k_chunk;
    return vec2<u32>(begin, min(params.k, begin + params.k_chunk));
}

// By the bits: WGSL lets compilers assume NaN never occurs in float comparisons.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// Writes a 4×4 register block whose top-left is (i0, j0); rows step by di, columns by dj.
fn store_block(batch: u32, i0: u32, j0: u32, di: u32, dj: u32, acc: array<vec4<f32>, 4>) {
    let base = params.offset_c + batch * params.stride_c;
    for (var r = 0u; r < 4u; r++) {
        let i = i0 + r * di;
        if (i >= params.m) { break; }
        for (var col = 0u; col < 4u; col++) {
            let j = j0 + col * dj;
            if (j >= params.n) { break; }
            var idx = base + i * params.n + j;
            if (params.c_img_cols != 0u) {
                idx = base + (j / params.c_img_cols) * params.c_img_stride + i * params.c_img_cols + j % params.c_img_cols;
            }
            var v = params.alpha * acc[r][col];
            if (params.beta != 0.0) { v += params.beta * c[idx]; }
            if (params.bias_mode == 1u) { v += aux[j]; } else if (params.bias_mode == 2u) { v += aux[i]; }
            if (params.relu == 1u) {
                v = select(max(v, 0.0), v, is_nan(v)); // NaN passes, as in PyTorch
            } else if (params.relu == 2u) {
                v *= select(0.0, 1.0, aux[idx] > 0.0);
            }
            c[idx] = v;
        }
    }
}

// The row sums of rows i0, i0 + di, i0 + 2·di, i0 + 3·di (see rowsum above).
fn store_rowsum(batch: u32, i0: u32, di: u32, v: vec4<f32>) {
    for (var r = 0u; r < 4u; r++) {
        let i = i0 + r * di;
        if (i >= params.m) { break; }
        if (params.rowsum == 1u) {
            let o = params.rowsum_offset + batch * params.m + i;
            var x = v[r];
            if (params.beta != 0.0) { x += params.beta * rs[o]; }
            rs[o] = x;
        } else {
            c[params.offset_c + batch * params.stride_c + params.m * params.n + i] = v[r];
        }
    }
}

@compute @workgroup_size(WG_X, WG_Y, 1)
fn gemm_blocked(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    // Rows i0..i0+7 are adjacent; columns j0 + WG_X·c (c < 8) are interleaved
    // across the workgroup, so invocations that run as neighbouring SIMD lanes
    // read neighbouring addresses of B. Four 4×4 quadrants: acc (rows 0–3,
    // columns 0–3), acc2 (rows 4–7), acc3 (columns 4–7), acc4 (both).
    let i0 = params.row_base + wid.y * (WG_Y * BLOCK) + lid.y * BLOCK;
    let j0 = params.col_base + wid.x * (WG_X * BLOCK) + lid.x;
    let batch = wid.z;
    if (i0 >= params.m || j0 >= params.n || batch >= params.batch) { return; }
    let s = strides();
    let base_a = params.offset_a + batch * params.stride_a;
    let base_b = params.offset_b + batch * params.stride_b;
    let ra = rows4(i0, s, base_a);
    let rb = rows4(i0 + 4u, s, base_a);
    let cb = cols4(j0, s, base_b);
    let cc = cols4(j0 + 4u * WG_X, s, base_b);
    var acc: array<vec4<f32>, 4>;
    var acc2: array<vec4<f32>, 4>;
    var acc3: array<vec4<f32>, 4>;
    var acc4: array<vec4<f32>, 4>;
    var rsa = vec4<f32>();
    var rsb = vec4<f32>();
    let kr = k_range(batch);
    // CONV: op(B)'s columns' parts are fixed; the k part advances with p.
    let kw = k_walk();
    var kc: Cursor;
    var g0: Cols4;
    var g1: Cols4;
    if (CONV) {
        kc = cursor_at(kw, kr.x);
        g0 = conv_cols4(j0);
        g1 = conv_cols4(j0 + 4u * WG_X);
    }
    for (var p = kr.x; p < kr.y; p++) {
        let pa = a_off(p, s);
        let pb = p * s.b_p;
        let av = load_a(ra, pa);
        let aw = load_a(rb, pa);
        var bv: vec4<f32>;
        var bw: vec4<f32>;
        if (CONV) {
            bv = conv_load4(base_b, g0.o, g0.y, g0.x, kc.at);
            bw = conv_load4(base_b, g1.o, g1.y, g1.x, kc.at);
            kc = cursor_next(kw, kc);
        } else {
            bv = load_b(cb, pb);
            bw = load_b(cc, pb);
        }
        if (MAPPED) {
            rsa += av;
            rsb += aw;
        }
        acc[0] += av.x * bv;
        acc[1] += av.y * bv;
        acc[2] += av.z * bv;
        acc[3] += av.w * bv;
        acc2[0] += aw.x * bv;
        acc2[1] += aw.y * bv;
        acc2[2] += aw.z * bv;
        acc2[3] += aw.w * bv;
        acc3[0] += av.x * bw;
        acc3[1] += av.y * bw;
        acc3[2] += av.z * bw;
        acc3[3] += av.w * bw;
        acc4[0] += aw.x * bw;
        acc4[1] += aw.y * bw;
        acc4[2] += aw.z * bw;
        acc4[3] += aw.w * bw;
    }
    store_block(batch, i0, j0, 1u, WG_X, acc);
    if (i0 + 4u < params.m) { store_block(batch, i0 + 4u, j0, 1u, WG_X, acc2); }
    if (MAPPED && params.rowsum != 0u && j0 == 0u) {
        store_rowsum(batch, i0, 1u, rsa);
        store_rowsum(batch, i0 + 4u, 1u, rsb);
    }
    if (j0 + 4u * WG_X < params.n) {
        store_block(batch, i0, j0 + 4u * WG_X, 1u, WG_X, acc3);
        if (i0 + 4u < params.m) { store_block(batch, i0 + 4u, j0 + 4u * WG_X, 1u, WG_X, acc4); }
    }
}

// gemm_blocked with a 16×16 block per invocation (32 loads feed 256 FMAs): for
// large GEMMs on CPU adapters. Written out in full: as loops over arrays,
// llvmpipe keeps the accumulators in memory and runs 2.6× slower.
@compute @workgroup_size(WG_X, WG_Y, 1)
fn gemm_blocked_wide(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i0 = params.row_base + wid.y * (WG_Y * WIDE) + lid.y * WIDE;
    let j0 = params.col_base + wid.x * (WG_X * WIDE) + lid.x;
    let batch = wid.z;
    if (i0 >= params.m || j0 >= params.n || batch >= params.batch) { return; }
    let s = strides();
    let base_a = params.offset_a + batch * params.stride_a;
    let base_b = params.offset_b + batch * params.stride_b;
    let ra0 = rows4(i0, s, base_a);
    let ra1 = rows4(i0 + 4u, s, base_a);
    let ra2 = rows4(i0 + 8u, s, base_a);
    let ra3 = rows4(i0 + 12u, s, base_a);
    let cb0 = cols4(j0, s, base_b);
    let cb1 = cols4(j0 + 4u * WG_X, s, base_b);
    let cb2 = cols4(j0 + 8u * WG_X, s, base_b);
    let cb3 = cols4(j0 + 12u * WG_X, s, base_b);
    var acc00: array<vec4<f32>, 4>; var acc01: array<vec4<f32>, 4>; var acc02: array<vec4<f32>, 4>; var acc03: array<vec4<f32>, 4>;
    var acc10: array<vec4<f32>, 4>; var acc11: array<vec4<f32>, 4>; var acc12: array<vec4<f32>, 4>; var acc13: array<vec4<f32>, 4>;
    var acc20: array<vec4<f32>, 4>; var acc21: array<vec4<f32>, 4>; var acc22: array<vec4<f32>, 4>; var acc23: array<vec4<f32>, 4>;
    var acc30: array<vec4<f32>, 4>; var acc31: array<vec4<f32>, 4>; var acc32: array<vec4<f32>, 4>; var acc33: array<vec4<f32>, 4>;
    var rs0 = vec4<f32>(); var rs1 = vec4<f32>(); var rs2 = vec4<f32>(); var rs3 = vec4<f32>();
    let kr = k_range(batch);
    let kw = k_walk();
    var kc: Cursor;
    var g0: Cols4; var g1: Cols4; var g2: Cols4; var g3: Cols4;
    if (CONV) {
        kc = cursor_at(kw, kr.x);
        g0 = conv_cols4(j0);
        g1 = conv_cols4(j0 + 4u * WG_X);
        g2 = conv_cols4(j0 + 8u * WG_X);
        g3 = conv_cols4(j0 + 12u * WG_X);
    }
    for (var p = kr.x; p < kr.y; p++) {
        let pa = a_off(p, s);
        let pb = p * s.b_p;
        let a0 = load_a(ra0, pa);
        let a1 = load_a(ra1, pa);
        let a2 = load_a(ra2, pa);
        let a3 = load_a(ra3, pa);
        var b0: vec4<f32>; var b1: vec4<f32>; var b2: vec4<f32>; var b3: vec4<f32>;
        if (CONV) {
            b0 = conv_load4(base_b, g0.o, g0.y, g0.x, kc.at);
            b1 = conv_load4(base_b, g1.o, g1.y, g1.x, kc.at);
            b2 = conv_load4(base_b, g2.o, g2.y, g2.x, kc.at);
            b3 = conv_load4(base_b, g3.o, g3.y, g3.x, kc.at);
            kc = cursor_next(kw, kc);
        } else {
            b0 = load_b(cb0, pb);
            b1 = load_b(cb1, pb);
            b2 = load_b(cb2, pb);
            b3 = load_b(cb3, pb);
        }
        if (MAPPED) { rs0 += a0; rs1 += a1; rs2 += a2; rs3 += a3; }
        acc00[0] += a0.x * b0; acc00[1] += a0.y * b0; acc00[2] += a0.z * b0; acc00[3] += a0.w * b0;
        acc01[0] += a0.x * b1; acc01[1] += a0.y * b1; acc01[2] += a0.z * b1; acc01[3] += a0.w * b1;
        acc02[0] += a0.x * b2; acc02[1] += a0.y * b2; acc02[2] += a0.z * b2; acc02[3] += a0.w * b2;
        acc03[0] += a0.x * b3; acc03[1] += a0.y * b3; acc03[2] += a0.z * b3; acc03[3] += a0.w * b3;
        acc10[0] += a1.x * b0; acc10[1] += a1.y * b0; acc10[2] += a1.z * b0; acc10[3] += a1.w * b0;
        acc11[0] += a1.x * b1; acc11[1] += a1.y * b1; acc11[2] += a1.z * b1; acc11[3] += a1.w * b1;
        acc12[0] += a1.x * b2; acc12[1] += a1.y * b2; acc12[2] += a1.z * b2; acc12[3] += a1.w * b2;
        acc13[0] += a1.x * b3; acc13[1] += a1.y * b3; acc13[2] += a1.z * b3; acc13[3] += a1.w * b3;
        acc20[0] += a2.x * b0; acc20[1] += a2.y * b0; acc20[2] += a2.z * b0; acc20[3] += a2.w * b0;
        acc21[0] += a2.x * b1; acc21[1] += a2.y * b1; acc21[2] += a2.z * b1; acc21[3] += a2.w * b1;
        acc22[0] += a2.x * b2; acc22[1] += a2.y * b2; acc22[2] += a2.z * b2; acc22[3] += a2.w * b2;
        acc23[0] += a2.x * b3; acc23[1] += a2.y * b3; acc23[2] += a2.z * b3; acc23[3] += a2.w * b3;
        acc30[0] += a3.x * b0; acc30[1] += a3.y * b0; acc30[2] += a3.z * b0; acc30[3] += a3.w * b0;
        acc31[0] += a3.x * b1; acc31[1] += a3.y * b1; acc31[2] += a3.z * b1; acc31[3] += a3.w * b1;
        acc32[0] += a3.x * b2; acc32[1] += a3.y * b2; acc32[2] += a3.z * b2; acc32[3] += a3.w * b2;
        acc33[0] += a3.x * b3; acc33[1] += a3.y * b3; acc33[2] += a3.z * b3; acc33[3] += a3.w * b3;
    }
    if (i0 + 0u < params.m && j0 + 0u * WG_X < params.n) { store_block(batch, i0 + 0u, j0 + 0u * WG_X, 1u, WG_X, acc00); }
    if (i0 + 0u < params.m && j0 + 4u * WG_X < params.n) { store_block(batch, i0 + 0u, j0 + 4u * WG_X, 1u, WG_X, acc01); }
    if (i0 + 0u < params.m && j0 + 8u * WG_X < params.n) { store_block(batch, i0 + 0u, j0 + 8u * WG_X, 1u, WG_X, acc02); }
    if (i0 + 0u < params.m && j0 + 12u * WG_X < params.n) { store_block(batch, i0 + 0u, j0 + 12u * WG_X, 1u, WG_X, acc03); }
    if (i0 + 4u < params.m && j0 + 0u * WG_X < params.n) { store_block(batch, i0 + 4u, j0 + 0u * WG_X, 1u, WG_X, acc10); }
    if (i0 + 4u < params.m && j0 + 4u * WG_X < params.n) { store_block(batch, i0 + 4u, j0 + 4u * WG_X, 1u, WG_X, acc11); }
    if (i0 + 4u < params.m && j0 + 8u * WG_X < params.n) { store_block(batch, i0 + 4u, j0 + 8u * WG_X, 1u, WG_X, acc12); }
    if (i0 + 4u < params.m && j0 + 12u * WG_X < params.n) { store_block(batch, i0 + 4u, j0 + 12u * WG_X, 1u, WG_X, acc13); }
    if (i0 + 8u < params.m && j0 + 0u * WG_X < params.n) { store_block(batch, i0 + 8u, j0 + 0u * WG_X, 1u, WG_X, acc20); }
    if (i0 + 8u < params.m && j0 + 4u * WG_X < params.n) { store_block(batch, i0 + 8u, j0 + 4u * WG_X, 1u, WG_X, acc21); }
    if (i0 + 8u < params.m && j0 + 8u * WG_X < params.n) { store_block(batch, i0 + 8u, j0 + 8u * WG_X, 1u, WG_X, acc22); }
    if (i0 + 8u < params.m && j0 + 12u * WG_X < params.n) { store_block(batch, i0 + 8u, j0 + 12u * WG_X, 1u, WG_X, acc23); }
    if (i0 + 12u < params.m && j0 + 0u * WG_X < params.n) { store_block(batch, i0 + 12u, j0 + 0u * WG_X, 1u, WG_X, acc30); }
    if (i0 + 12u < params.m && j0 + 4u * WG_X < params.n) { store_block(batch, i0 + 12u, j0 + 4u * WG_X, 1u, WG_X, acc31); }
    if (i0 + 12u < params.m && j0 + 8u * WG_X < params.n) { store_block(batch, i0 + 12u, j0 + 8u * WG_X, 1u, WG_X, acc32); }
    if (i0 + 12u < params.m && j0 + 12u * WG_X < params.n) { store_block(batch, i0 + 12u, j0 + 12u * WG_X, 1u, WG_X, acc33); }
    if (MAPPED && params.rowsum != 0u && j0 == 0u) {
        store_rowsum(batch, i0, 1u, rs0);
        store_rowsum(batch, i0 + 4u, 1u, rs1);
        store_rowsum(batch, i0 + 8u, 1u, rs2);
        store_rowsum(batch, i0 + 12u, 1u, rs3);
    }
}

// One element of a k-slab being staged in workgroup memory: where it goes
// (k-major, p·rows + i) and its value (0 out of range). The slab covers k in
// [p0, p0 + TILE_K) and `rows` rows (columns, for B) from row0; element e is
// numbered so the fastest-moving index follows memory order, and neighbouring
// invocations read neighbouring addresses.
struct SlabElem {
    at: u32,
    v: f32,
}

fn slab_a(e: u32, rows: u32, row0: u32, p0: u32, kend: u32, base: u32, s: Strides) -> SlabElem {
    var i: u32; var p: u32;
    if (params.trans_a != 0u) { p = e / rows; i = e % rows; } else { i = e / TILE_K; p = e % TILE_K; }
    let gi = row0 + i;
    let gp = p0 + p;
    var v = 0.0;
    if (gi < params.m && gp < kend) { v = a[base + gi * s.a_i + a_off(gp, s)]; }
    return SlabElem(p * rows + i, v);
}

fn slab_b(e: u32, cols: u32, col0: u32, p0: u32, kend: u32, base: u32, s: Strides) -> SlabElem {
    var j: u32; var p: u32;
    if (params.trans_b != 0u) { j = e / TILE_K; p = e % TILE_K; } else { p = e / cols; j = e % cols; }
    let gj = col0 + j;
    let gp = p0 + p;
    var v = 0.0;
    if (gj < params.n && gp < kend) {
        if (CONV) {
            v = conv_load1(base, walk_at(k_walk(), gp) + walk_at(j_walk(), gj));
        } else {
            v = b[base + gp * s.b_p + b_off(gj, s)];
        }
    }
    return SlabElem(p * cols + j, v);
}

// Slabs of op(A) and op(B), stored k-major: as_[p·TILE_M + i], bs[p·TILE_N + j].
var<workgroup> as_: array<f32, TILE_K * TILE_M>;
var<workgroup> bs: array<f32, TILE_K * TILE_N>;

@compute @workgroup_size(WG_X, WG_Y, 1)
fn gemm_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    // No early return: every invocation must reach the barriers.
    let batch = wid.z;
    let row0 = params.row_base + wid.y * TILE_M;
    let col0 = params.col_base + wid.x * TILE_N;
    let s = strides();
    let base_a = params.offset_a + batch * params.stride_a;
    let base_b = params.offset_b + batch * params.stride_b;
    let threads = WG_X * WG_Y;
    var acc: array<vec4<f32>, 4>;
    var rsa = vec4<f32>();
    // Uniform across the workgroup (it depends on wid.z only), so the barriers stay uniform.
    let kr = k_range(batch);
    for (var p0 = kr.x; p0 < kr.y; p0 += TILE_K) {
        for (var e = tid; e < TILE_K * TILE_M; e += threads) {
            let x = slab_a(e, TILE_M, row0, p0, kr.y, base_a, s);
            as_[x.at] = x.v;
        }
        for (var e = tid; e < TILE_K * TILE_N; e += threads) {
            let x = slab_b(e, TILE_N, col0, p0, kr.y, base_b, s);
            bs[x.at] = x.v;
        }
        workgroupBarrier();
        // Rows ly + WG_Y·r and columns lx + WG_X·c: neighbouring invocations hit
        // neighbouring banks.
        for (var p = 0u; p < TILE_K; p++) {
            let ao = p * TILE_M + lid.y;
            let bo = p * TILE_N + lid.x;
            let av = vec4<f32>(as_[ao], as_[ao + WG_Y], as_[ao + 2u * WG_Y], as_[ao + 3u * WG_Y]);
            let bv = vec4<f32>(bs[bo], bs[bo + WG_X], bs[bo + 2u * WG_X], bs[bo + 3u * WG_X]);
            if (MAPPED) { rsa += av; }
            acc[0] += av.x * bv;
            acc[1] += av.y * bv;
            acc[2] += av.z * bv;
            acc[3] += av.w * bv;
        }
        workgroupBarrier();
    }
    if (batch < params.batch) {
        store_block(batch, row0 + lid.y, col0 + lid.x, WG_Y, WG_X, acc);
        if (MAPPED && params.rowsum != 0u && col0 + lid.x == 0u) { store_rowsum(batch, row0 + lid.y, WG_Y, rsa); }
    }
}

// gemm_tiled8 — gemm_tiled with an 8×8 block per invocation (as four 4×4
// quadrants, rows ly + WG_Y·r, columns lx + WG_X·c): with 16×16 invocations a
// 128×128 tile, 16 shared-memory loads feeding 64 FMAs per k step (the shape
// of the fastest published WebGPU SGEMMs). For real GPUs; the tuner times it.
override TILE8_M: u32 = WG_Y * 8u;
override TILE8_N: u32 = WG_X * 8u;
var<workgroup> as8: array<f32, TILE_K * TILE8_M>;
var<workgroup> bs8: array<f32, TILE_K * TILE8_N>;

@compute @workgroup_size(WG_X, WG_Y, 1)
fn gemm_tiled8(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    // No early return: every invocation must reach the barriers.
    let batch = wid.z;
    let row0 = params.row_base + wid.y * TILE8_M;
    let col0 = params.col_base + wid.x * TILE8_N;
    let s = strides();
    let base_a = params.offset_a + batch * params.stride_a;
    let base_b = params.offset_b + batch * params.stride_b;
    let threads = WG_X * WG_Y;
    var acc00: array<vec4<f32>, 4>;
    var acc01: array<vec4<f32>, 4>;
    var acc10: array<vec4<f32>, 4>;
    var acc11: array<vec4<f32>, 4>;
    var rs0 = vec4<f32>();
    var rs1 = vec4<f32>();
    let kr = k_range(batch);
    for (var p0 = kr.x; p0 < kr.y; p0 += TILE_K) {
        for (var e = tid; e < TILE_K * TILE8_M; e += threads) {
            let x = slab_a(e, TILE8_M, row0, p0, kr.y, base_a, s);
            as8[x.at] = x.v;
        }
        for (var e = tid; e < TILE_K * TILE8_N; e += threads) {
            let x = slab_b(e, TILE8_N, col0, p0, kr.y, base_b, s);
            bs8[x.at] = x.v;
        }
        workgroupBarrier();
        for (var p = 0u; p < TILE_K; p++) {
            let ao = p * TILE8_M + lid.y;
            let bo = p * TILE8_N + lid.x;
            let a0 = vec4<f32>(as8[ao], as8[ao + WG_Y], as8[ao + 2u * WG_Y], as8[ao + 3u * WG_Y]);
            let a1 = vec4<f32>(as8[ao + 4u * WG_Y], as8[ao + 5u * WG_Y], as8[ao + 6u * WG_Y], as8[ao + 7u * WG_Y]);
            let b0 = vec4<f32>(bs8[bo], bs8[bo + WG_X], bs8[bo + 2u * WG_X], bs8[bo + 3u * WG_X]);
            let b1 = vec4<f32>(bs8[bo + 4u * WG_X], bs8[bo + 5u * WG_X], bs8[bo + 6u * WG_X], bs8[bo + 7u * WG_X]);
            if (MAPPED) {
                rs0 += a0;
                rs1 += a1;
            }
            acc00[0] += a0.x * b0; acc00[1] += a0.y * b0; acc00[2] += a0.z * b0; acc00[3] += a0.w * b0;
            acc01[0] += a0.x * b1; acc01[1] += a0.y * b1; acc01[2] += a0.z * b1; acc01[3] += a0.w * b1;
            acc10[0] += a1.x * b0; acc10[1] += a1.y * b0; acc10[2] += a1.z * b0; acc10[3] += a1.w * b0;
            acc11[0] += a1.x * b1; acc11[1] += a1.y * b1; acc11[2] += a1.z * b1; acc11[3] += a1.w * b1;
        }
        workgroupBarrier();
    }
    if (batch < params.batch) {
        let r = row0 + lid.y;
        let c = col0 + lid.x;
        store_block(batch, r, c, WG_Y, WG_X, acc00);
        store_block(batch, r, c + 4u * WG_X, WG_Y, WG_X, acc01);
        store_block(batch, r + 4u * WG_Y, c, WG_Y, WG_X, acc10);
        store_block(batch, r + 4u * WG_Y, c + 4u * WG_X, WG_Y, WG_X, acc11);
        if (MAPPED && params.rowsum != 0u && c == 0u) {
            store_rowsum(batch, r, WG_Y, rs0);
            store_rowsum(batch, r + 4u * WG_Y, WG_Y, rs1);
        }
    }
}

// Split-K's second dispatch: C[e] = Σ_z partial[z][e] (+ beta·C[e]) over the
// `batch` k slices, each slice m·n wide plus m row sums with rowsum 2, which
// go to rs[rowsum_offset + i]. Slices are added in order (deterministic).
// Bindings as the GEMM's: a holds the partials.
@compute @workgroup_size(WG_X * WG_Y)
fn gemm_split_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * (WG_X * WG_Y);
    let mn = params.m * params.n;
    let width = mn + select(0u, params.m, params.rowsum != 0u);
    if (e >= width) { return; }
    var acc = 0.0;
    for (var z = 0u; z < params.batch; z++) { acc += a[z * width + e]; }
    if (e < mn) {
        let o = params.offset_c + e;
        if (params.beta != 0.0) { acc += params.beta * c[o]; }
        c[o] = acc;
    } else {
        let o = params.rowsum_offset + e - mn;
        if (params.beta != 0.0) { acc += params.beta * rs[o]; }
        rs[o] = acc;
    }
}
