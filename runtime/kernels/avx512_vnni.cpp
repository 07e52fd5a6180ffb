// matmul_q8 on AVX-512 with VNNI and VBMI2 (compiled with -mavx512vnni -mavx512vbmi2 on top of
// the AVX-512 flags; Ice Lake, Zen 4 and later). Per row of W and group of 64 columns: x's
// quantized bytes are compressed under the row's 64-bit bitmap (vpcompressb), so that they line
// up with the row's packed int8 values, and one vpdpbusd multiplies and sums all of them (u8 x
// s8, four per 32-bit lane). Past a row's last value the 64-byte load reads the next values or
// bitmaps; the compressed x is zero there, and integer products of zero are zero.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "sparse_format.hpp"

namespace sparse_deploy::avx512_vnni {
namespace {

constexpr size_t kPrefetch = 8192;  // bytes ahead of the record being read (see avx512.cpp)

// One tile of W against every row of xq: the tile's records stay in L1/L2 while the rows of x
// pass over them, so W is streamed from memory once whatever m is.
void row_tile(const Packed& w, const uint8_t* xq, size_t stride, const float* sx, size_t m, size_t tile, float* y) {
    constexpr size_t R = kMaskRows;
    const uint8_t* start = w.data + w.tileptr[tile];
    const char* prefetched = reinterpret_cast<const char*>(start) + kPrefetch;
    const size_t n = tile * R;
    for (size_t i = 0; i < m; ++i) {
        const uint8_t* q = start;
        const uint8_t* xi = xq + i * stride;
        __m512i a[R];
        for (size_t r = 0; r < R; ++r) a[r] = _mm512_setzero_si512();
        for (size_t g = 0; g < w.groups; ++g) {
            const int8_t* p[R + 1];
            record_rows(q, p);
            if (i == 0) prefetch_ahead(prefetched, p[R], kPrefetch);
            const __m512i xg = _mm512_loadu_si512(xi + g * kMaskChunks * kChunk);
            for (size_t r = 0; r < R; ++r) {
                const __mmask64 bits = __mmask64(record_mask(q, r));
                a[r] = _mm512_dpbusd_epi32(a[r], _mm512_maskz_compress_epi8(bits, xg), _mm512_loadu_si512(p[r]));
            }
            q = reinterpret_cast<const uint8_t*>(p[R]);
        }
        for (size_t r = 0; r < R && n + r < w.n; ++r) {
            const int32_t dot = _mm512_reduce_add_epi32(a[r]);
            y[i * w.n + n + r] = sx[i] * w.scales[n + r] * float(dot - kQ8Zero * w.qsums[n + r]);
        }
    }
}

}  // namespace

void matmul_q8(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel) {
    const size_t stride = w.groups * kMaskChunks * kChunk;
    std::vector<uint8_t> xq(m * stride + 64);
    std::vector<float> sx(m);
    quantize_rows(x, m, w.k, stride, xq.data(), sx.data());
    for_tiles(w, parallel, [&](size_t tile) { row_tile(w, xq.data(), stride, sx.data(), m, tile, y); });
}

}  // namespace sparse_deploy::avx512_vnni
