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

// One block of rows [m0, m0 + mb) of x, every row of W, through Simd::rows<NACC>.
//
// Loop order, and why: the reuse that matters is of transposed x, read S floats per non-zero.
// K is walked in blocks whose transposed x stays in L1/L2 (kXtBudget: 64 KB was best of
// 8 KB-1 MB in a throwaway microbenchmark on a Zen 5, 128 rows) while a task's tile of kNTile rows of W passes over it; each row keeps a cursor into its values, so a
// block starts where the previous one ended. The tile's accumulators (kNTile x S floats) live in L2.
template <class Simd, int NACC>
void many_rows_block(const Packed& w, const float* x, size_t m0, size_t mb, float* y, const ParallelFor& parallel) {
    constexpr size_t S = Simd::kLanes * NACC;  // stride of one column of transposed x
    AlignedFloats xt = aligned_floats(w.k * S);
    for (size_t r = 0; r < mb; ++r) {
        const float* xr = x + (m0 + r) * w.k;
        for (size_t c = 0; c < w.k; ++c) xt[c * S + r] = xr[c];
    }
    const size_t kb_chunks = std::max<size_t>(1, kXtBudget / (S * sizeof(float) * kChunk));
    const size_t tasks = (w.n + kNTile - 1) / kNTile;
    parallel(tasks, [&](size_t t) {
        const size_t n0 = t * kNTile, n1 = std::min(w.n, n0 + kNTile);
        AlignedFloats yt = aligned_floats((n1 - n0) * S);
        std::vector<int32_t> idx(kb_chunks * kChunk + 32);
        std::vector<uint64_t> cursor(w.rowptr + n0, w.rowptr + n1);
        for (size_t c0 = 0; c0 < w.chunks; c0 += kb_chunks) {
            const size_t c1 = std::min(w.chunks, c0 + kb_chunks);
            for (size_t n = n0; n < n1; ++n) {
                size_t cnt = 0;
                for (size_t c = c0; c < c1; ++c) cnt += Simd::decode(mask_at(w, n, c), int32_t(c * kChunk * S), int32_t(S), idx.data() + cnt);
                Simd::template rows<NACC>(w.values + cursor[n - n0], idx.data(), cnt, xt.get(), yt.get() + (n - n0) * S);
                cursor[n - n0] += cnt;
            }
        }
        for (size_t n = n0; n < n1; ++n)
            for (size_t r = 0; r < mb; ++r) y[(m0 + r) * w.n + n] = yt[(n - n0) * S + r];
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
