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
#include <type_traits>
#include <vector>

#include "sparse_format.hpp"

// Everything here has internal linkage (anonymous namespace): each ISA file compiles its own
// copy with its own instruction set, and the linker can never hand an AVX-512 build of a
// helper to the scalar path (tests/test_kernels.py checks the library for such leaks).
namespace sparse_deploy {
namespace {

// Independent FMA chains a path's rows<NACC> keeps in flight (U = kFmaChains / NACC copies of
// its accumulators): two FMA pipes x 4 cycles of latency need eight to stay busy. Four (the
// previous choice) left 16-row blocks (NACC = 1) at half the FMA rate; sixteen on AVX-512 was
// no faster at 16 rows and slower at 128 (throwaway A/B of the two builds, paired, Zen 5).
constexpr int kFmaChains = 8;

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

// x padded with zeros to whole groups: the one-row kernels read x a group at a time.
inline AlignedFloats padded_x(const Packed& w, const float* x) {
    AlignedFloats xp = aligned_floats(w.groups * kMaskChunks * kChunk);
    std::memcpy(xp.get(), x, w.k * sizeof(float));
    return xp;
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

// One tile's rows over the group records [q, ...) of groups [g0, g1): for each row r, the
// offsets into xt of its non-zeros (idx + r * len), in column order, how many (cnt[r]), and
// where its values lie as floats (v[r]): in the record itself when the block is one group of
// f32 values, else widened and copied into val + r * len (a row's values of several groups are
// not contiguous; int8 ones are not floats). Returns the record after the last group: a tile's
// records are read once, front to back, whatever the blocking.
template <class Simd, size_t S, class V>
const uint8_t* decode_tile(const uint8_t* q, size_t g0, size_t g1, size_t len, int32_t* idx, float* val, size_t* cnt,
                           const float** v) {
    const bool copy = g1 - g0 > 1 || !std::is_same_v<V, float>;
    for (size_t r = 0; r < kMaskRows; ++r) cnt[r] = 0;
    for (size_t g = g0; g < g1; ++g) {
        const V* p = reinterpret_cast<const V*>(q + kRecordHead);
        const int32_t base = int32_t(g * kMaskChunks * kChunk * S);
        for (size_t r = 0; r < kMaskRows; ++r) {
            const uint64_t b = record_mask(q, r);
            if (!copy) v[r] = reinterpret_cast<const float*>(p);
            for (size_t j = 0; j < kMaskChunks; ++j) {
                const uint32_t bits = uint32_t(b >> (16 * j)) & 0xffff;
                const size_t c = Simd::decode(bits, base + int32_t(j * kChunk * S), int32_t(S), idx + r * len + cnt[r]);
                if (copy) Simd::widen16(p, val + r * len + cnt[r]);  // 16; the surplus is overwritten
                p += c;
                cnt[r] += c;
            }
        }
        q = reinterpret_cast<const uint8_t*>(p);
    }
    if (copy)
        for (size_t r = 0; r < kMaskRows; ++r) v[r] = val + r * len;
    return q;
}

// One block of rows [m0, m0 + mb) of x, every row of W, through Simd::rows<NACC>.
//
// Loop order, and why: the reuse that matters is of transposed x, read S floats per non-zero.
// K is walked in blocks of whole groups whose transposed x stays in L1 (kXtBudget) while a
// task's kNTile rows of W pass over it; each tile keeps a cursor into its records, so a block
// starts where the previous one ended. The tile's accumulators (kNTile x S floats) live in L2.
// A whole tile (8 rows) is decoded into offsets and values before its rows are multiplied: the
// decode's wide stores have retired by the time the multiply loads them back (one row decoded
// right before its own multiply stalled it, benchmarks/results/openvino_sparse_kernels.md).
template <class Simd, int NACC, class V>
void many_rows_block(const Packed& w, const float* x, size_t m0, size_t mb, float* y, const ParallelFor& parallel) {
    constexpr size_t S = Simd::kLanes * NACC;  // stride of one column of transposed x
    constexpr size_t kTilesPerTask = kNTile / kMaskRows;
    AlignedFloats xt = aligned_floats(w.k * S);
    transpose_rows<S>(x, w.k, m0, mb, xt.get());
    const size_t kb_groups = std::max<size_t>(1, kXtBudget / (S * sizeof(float) * kChunk * kMaskChunks));
    const size_t len = kb_groups * kMaskChunks * kChunk + 32;  // per row; + room for the decode's 16-wide stores
    const size_t tasks = (w.tiles + kTilesPerTask - 1) / kTilesPerTask;
    parallel(tasks, [&](size_t task) {
        const size_t t0 = task * kTilesPerTask, t1 = std::min(w.tiles, t0 + kTilesPerTask);
        const size_t n0 = t0 * kMaskRows, n1 = std::min(w.n, t1 * kMaskRows);
        AlignedFloats yt = aligned_floats((t1 - t0) * kMaskRows * S);
        std::vector<int32_t> idx(kMaskRows * len);
        std::vector<float> val(kMaskRows * len);
        std::vector<const uint8_t*> cursor(t1 - t0);
        for (size_t t = t0; t < t1; ++t) cursor[t - t0] = w.data + w.tileptr[t];
        size_t cnt[kMaskRows];
        const float* v[kMaskRows];
        for (size_t g0 = 0; g0 < w.groups; g0 += kb_groups) {
            const size_t g1 = std::min(w.groups, g0 + kb_groups);
            for (size_t t = t0; t < t1; ++t) {
                cursor[t - t0] = decode_tile<Simd, S, V>(cursor[t - t0], g0, g1, len, idx.data(), val.data(), cnt, v);
                for (size_t r = 0; r < kMaskRows && t * kMaskRows + r < n1; ++r)
                    Simd::template rows<NACC>(v[r], idx.data() + r * len, cnt[r], xt.get(),
                                              yt.get() + ((t - t0) * kMaskRows + r) * S);
            }
        }
        for (size_t r = 0; r < mb; ++r)  // y row by row: a write per row of W per row of y touches a page each
            for (size_t n = n0; n < n1; ++n) y[(m0 + r) * w.n + n] = yt[(n - n0) * S + r] * row_scale(w, n);
    });
}

template <class Simd, class V>
void many_rows_values(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel) {
    constexpr size_t kMaxRows = Simd::kLanes * 8;
    for (size_t m0 = 0; m0 < m; m0 += kMaxRows) {
        const size_t mb = std::min(kMaxRows, m - m0);
        switch ((mb + Simd::kLanes - 1) / Simd::kLanes) {
            case 1: many_rows_block<Simd, 1, V>(w, x, m0, mb, y, parallel); break;
            case 2: many_rows_block<Simd, 2, V>(w, x, m0, mb, y, parallel); break;
            case 3: many_rows_block<Simd, 3, V>(w, x, m0, mb, y, parallel); break;
            case 4: many_rows_block<Simd, 4, V>(w, x, m0, mb, y, parallel); break;
            case 5: many_rows_block<Simd, 5, V>(w, x, m0, mb, y, parallel); break;
            case 6: many_rows_block<Simd, 6, V>(w, x, m0, mb, y, parallel); break;
            case 7: many_rows_block<Simd, 7, V>(w, x, m0, mb, y, parallel); break;
            default: many_rows_block<Simd, 8, V>(w, x, m0, mb, y, parallel); break;
        }
    }
}

template <class Simd>
void many_rows(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel) {
    with_values(w, [&](auto v) { many_rows_values<Simd, decltype(v)>(w, x, m, y, parallel); });
}

}  // namespace
}  // namespace sparse_deploy
