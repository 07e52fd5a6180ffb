// The many-row (prefill, batch > 1) driver shared by the SIMD paths: x is transposed into
// column-major blocks so that one non-zero w[n, k] meets a contiguous run of x[:, k] (up to
// kLanes * NACC rows at once), and every non-zero is multiplied once per row of x, never a zero.
// Work per non-zero: one broadcast, one offset load, NACC fused multiply-adds.
//
// A path provides:  struct Simd { static constexpr size_t kLanes;
//                                 static size_t decode(bits, base, stride, int32_t* out);  // base + stride * j for set bits j
//                                 template <int NACC> static void rows(...); }      // see avx2.cpp / avx512.cpp
#pragma once

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "sparse_format.hpp"

// Everything here has internal linkage (anonymous namespace): each ISA file compiles its own
// copy with its own instruction set, and the linker can never hand an AVX-512 build of a
// helper to the scalar path (tests/test_kernels.py checks the library for such leaks).
namespace sparse_deploy {
namespace {

struct AlignedFree {
    void operator()(float* p) const { std::free(p); }
};
using AlignedFloats = std::unique_ptr<float[], AlignedFree>;

inline AlignedFloats aligned_floats(size_t count) {
    const size_t bytes = (count * sizeof(float) + 63) / 64 * 64;
    auto* p = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);
    return AlignedFloats(p);
}

// x's rows [m0, m0 + mb) transposed into xt (column c at xt + c * S), in blocks of columns
// whose part of xt stays in L1 while each row of x is read contiguously.
template <size_t S>
void transpose_rows(const float* x, size_t k, size_t m0, size_t mb, float* xt) {
    constexpr size_t kCols = 32;
    for (size_t c0 = 0; c0 < k; c0 += kCols) {
        const size_t c1 = std::min(k, c0 + kCols);
        for (size_t r = 0; r < mb; ++r) {
            const float* xr = x + (m0 + r) * k;
            for (size_t c = c0; c < c1; ++c) xt[c * S + r] = xr[c];
        }
    }
}

// Offsets into xt of row n's non-zeros in mask groups [g0, g1), in column order; returns how many.
template <class Simd, size_t S>
size_t decode_row(const Packed& w, size_t n, size_t g0, size_t g1, int32_t* out) {
    const uint64_t* bits = reinterpret_cast<const uint64_t*>(w.masks) + ((n / kMaskRows) * w.groups + g0) * kMaskRows +
                           n % kMaskRows;
    size_t cnt = 0;
    for (size_t g = g0; g < g1; ++g, bits += kMaskRows) {
        const uint64_t b = *bits;  // the group's kMaskChunks bitmaps of row n
        const int32_t base = int32_t(g * kMaskChunks * kChunk * S);
        for (size_t j = 0; j < kMaskChunks; ++j)
            cnt += Simd::decode(uint32_t(b >> (16 * j)) & 0xffff, base + int32_t(j * kChunk * S), int32_t(S), out + cnt);
    }
    return cnt;
}

// One block of rows [m0, m0 + mb) of x, every row of W, through Simd::rows<NACC>.
//
// Loop order, and why: the reuse that matters is of transposed x, read S floats per non-zero.
// K is walked in blocks of whole mask groups whose transposed x stays in L1 (kXtBudget) while a
// task's tile of kNTile rows of W passes over it; each row keeps a cursor into its values, so a
// block starts where the previous one ended. The tile's accumulators (kNTile x S floats) live in
// L2. Row n + 1's offsets are decoded before row n is multiplied (two buffers): the decode's
// wide stores have retired by the time the multiply loads the offsets back, instead of stalling
// it once per row and block (measured: benchmarks/results/openvino_sparse_kernels.md).
template <class Simd, int NACC>
void many_rows_block(const Packed& w, const float* x, size_t m0, size_t mb, float* y, const ParallelFor& parallel) {
    constexpr size_t S = Simd::kLanes * NACC;  // stride of one column of transposed x
    AlignedFloats xt = aligned_floats(w.k * S);
    transpose_rows<S>(x, w.k, m0, mb, xt.get());
    const size_t kb_groups = std::max<size_t>(1, kXtBudget / (S * sizeof(float) * kChunk * kMaskChunks));
    const size_t idx_len = kb_groups * kMaskChunks * kChunk + 32;  // + room for the decode's 16-wide stores
    const size_t tasks = (w.n + kNTile - 1) / kNTile;
    parallel(tasks, [&](size_t t) {
        const size_t n0 = t * kNTile, n1 = std::min(w.n, n0 + kNTile);
        AlignedFloats yt = aligned_floats((n1 - n0) * S);
        std::vector<int32_t> idx(2 * idx_len);
        std::vector<uint64_t> cursor(w.rowptr + n0, w.rowptr + n1);
        for (size_t g0 = 0; g0 < w.groups; g0 += kb_groups) {
            const size_t g1 = std::min(w.groups, g0 + kb_groups);
            int32_t* cur = idx.data();
            int32_t* next = idx.data() + idx_len;
            size_t cnt = decode_row<Simd, S>(w, n0, g0, g1, cur);
            for (size_t n = n0; n < n1; ++n) {
                const size_t cnt_next = n + 1 < n1 ? decode_row<Simd, S>(w, n + 1, g0, g1, next) : 0;
                Simd::template rows<NACC>(w.values + cursor[n - n0], cur, cnt, xt.get(), yt.get() + (n - n0) * S);
                cursor[n - n0] += cnt;
                std::swap(cur, next);
                cnt = cnt_next;
            }
        }
        for (size_t r = 0; r < mb; ++r)  // y row by row: a write per row of W per row of y touches a page each
            for (size_t n = n0; n < n1; ++n) y[(m0 + r) * w.n + n] = yt[(n - n0) * S + r];
    });
}

template <class Simd>
void many_rows(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel) {
    constexpr size_t kMaxRows = Simd::kLanes * 8;
    for (size_t m0 = 0; m0 < m; m0 += kMaxRows) {
        const size_t mb = std::min(kMaxRows, m - m0);
        switch ((mb + Simd::kLanes - 1) / Simd::kLanes) {
            case 1: many_rows_block<Simd, 1>(w, x, m0, mb, y, parallel); break;
            case 2: many_rows_block<Simd, 2>(w, x, m0, mb, y, parallel); break;
            case 3: many_rows_block<Simd, 3>(w, x, m0, mb, y, parallel); break;
            case 4: many_rows_block<Simd, 4>(w, x, m0, mb, y, parallel); break;
            case 5: many_rows_block<Simd, 5>(w, x, m0, mb, y, parallel); break;
            case 6: many_rows_block<Simd, 6>(w, x, m0, mb, y, parallel); break;
            case 7: many_rows_block<Simd, 7>(w, x, m0, mb, y, parallel); break;
            default: many_rows_block<Simd, 8>(w, x, m0, mb, y, parallel); break;
        }
    }
}

}  // namespace
}  // namespace sparse_deploy
