// matmul_q8 on AVX-512 with VNNI and VBMI2 (compiled with -mavx512vnni -mavx512vbmi2 on top of
// the AVX-512 flags; Ice Lake, Zen 4 and later). Per row of W and group of 64 columns: x's
// quantized bytes are compressed under the row's 64-bit bitmap (vpcompressb), so that they line
// up with the row's packed int8 values, and one vpdpbusd multiplies and sums all of them (u8 x
// s8, four per 32-bit lane). Past a row's last value the 64-byte load reads the next values or
// bitmaps; the compressed x is zero there, and integer products of zero are zero.
//
// With many rows of x (prefill, batches from kExpandRows) compressing x again for every pair of
// rows is the work: instead each tile of W is expanded once into dense int8 (vpexpandb under
// each group's bitmap, zeros elsewhere) in the layout of a dense VNNI GEMM, 8 rows x 8 columns
// per 64-byte block, and each row of x broadcasts 8 bytes at a time against it: one vpdpbusd per
// 8 columns serves all 8 rows of the tile, and the block is loaded once for kRowBlock rows of x.
// This is the dense int8 product that ONNX Runtime's quantize_dynamic runs, with W read from
// memory in its compressed form.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "sparse_format.hpp"

namespace sparse_deploy::avx512_vnni {
namespace {

constexpr size_t kPrefetch = 8192;  // bytes ahead of the record being read (see avx512.cpp)
constexpr size_t kExpandRows = 4;   // rows of x from which a tile is expanded once (expanded_tile)
constexpr size_t kRowBlock = 8;     // rows of x per pass over an expanded tile (one accumulator each)

// y's entries of one tile's rows from their integer dot products with x row i.
inline void store_tile(const Packed& w, const __m512i* a, const float* sx, size_t i, size_t n, float* y) {
    for (size_t r = 0; r < kMaskRows && n + r < w.n; ++r) {
        const int32_t dot = _mm512_reduce_add_epi32(a[r]);
        y[i * w.n + n + r] = sx[i] * w.scales[n + r] * float(dot - kQ8Zero * w.qsums[n + r]);
    }
}

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
        store_tile(w, a, sx, i, n, y);
    }
}

// Eight zmm rows (64 bytes each) as eight blocks of 8 x 8 bytes: block c holds, for each row r,
// its bytes [8c, 8c + 8) at [8r, 8r + 8) (a transpose of 64-bit elements).
inline void interleave_rows(const __m512i rows[kMaskRows], int8_t* out) {
    __m512i t[8];
    for (size_t r = 0; r < 8; r += 2) {
        t[r] = _mm512_unpacklo_epi64(rows[r], rows[r + 1]);      // per 128-bit lane j: row r, r+1 qword 2j
        t[r + 1] = _mm512_unpackhi_epi64(rows[r], rows[r + 1]);  // ... qword 2j + 1
    }
    for (size_t odd = 0; odd < 2; ++odd) {
        const __m512i& a = t[odd];
        const __m512i& b = t[2 + odd];
        const __m512i& c = t[4 + odd];
        const __m512i& d = t[6 + odd];
        const __m512i ab01 = _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(1, 0, 1, 0));
        const __m512i cd01 = _mm512_shuffle_i64x2(c, d, _MM_SHUFFLE(1, 0, 1, 0));
        const __m512i ab23 = _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(3, 2, 3, 2));
        const __m512i cd23 = _mm512_shuffle_i64x2(c, d, _MM_SHUFFLE(3, 2, 3, 2));
        _mm512_storeu_si512(out + (0 + odd) * 64, _mm512_shuffle_i64x2(ab01, cd01, _MM_SHUFFLE(2, 0, 2, 0)));
        _mm512_storeu_si512(out + (2 + odd) * 64, _mm512_shuffle_i64x2(ab01, cd01, _MM_SHUFFLE(3, 1, 3, 1)));
        _mm512_storeu_si512(out + (4 + odd) * 64, _mm512_shuffle_i64x2(ab23, cd23, _MM_SHUFFLE(2, 0, 2, 0)));
        _mm512_storeu_si512(out + (6 + odd) * 64, _mm512_shuffle_i64x2(ab23, cd23, _MM_SHUFFLE(3, 1, 3, 1)));
    }
}

// One tile of W expanded to dense int8 (vpexpandb under each group's bitmap) in VNNI order:
// per 8 columns one 64-byte block, row r's 8 bytes at [8r, 8r + 8).
void expand_tile(const Packed& w, size_t tile, int8_t* wd) {
    constexpr size_t R = kMaskRows;
    const uint8_t* q = w.data + w.tileptr[tile];
    for (size_t g = 0; g < w.groups; ++g) {
        const int8_t* p[R + 1];
        record_rows(q, p);
        __m512i rows[R];
        for (size_t r = 0; r < R; ++r) rows[r] = _mm512_maskz_expandloadu_epi8(__mmask64(record_mask(q, r)), p[r]);
        interleave_rows(rows, wd + g * kMaskChunks * kChunk * R);
        q = reinterpret_cast<const uint8_t*>(p[R]);
    }
}

// Rows [i0, i0 + XR) of xq against the expanded tile wd. Per block of 8 columns, x's 8 bytes are
// broadcast to every 64-bit lane, so lane pair (2r, 2r + 1) of one vpdpbusd sums row r's 8
// products: one accumulator per row of x holds all 8 rows of W, and W's block is loaded once
// for the XR rows of x.
template <size_t XR>
void expanded_rows(const Packed& w, const int8_t* wd, const uint8_t* xq, size_t stride, const float* sx, size_t i0,
                   size_t n, float* y) {
    __m512i a[XR];
    for (size_t j = 0; j < XR; ++j) a[j] = _mm512_setzero_si512();
    for (size_t c = 0; c < stride; c += 8) {
        const __m512i wb = _mm512_loadu_si512(wd + c * kMaskRows);
        for (size_t j = 0; j < XR; ++j) {
            int64_t xb;
            std::memcpy(&xb, xq + (i0 + j) * stride + c, sizeof xb);
            a[j] = _mm512_dpbusd_epi32(a[j], _mm512_set1_epi64(xb), wb);
        }
    }
    const size_t rows = std::min(kMaskRows, w.n - n);
    const __mmask8 valid = __mmask8((1u << rows) - 1);
    const __m256 scales = _mm256_maskz_loadu_ps(valid, w.scales + n);
    const __m256i zero_sums = _mm256_mullo_epi32(_mm256_maskz_loadu_epi32(valid, w.qsums + n), _mm256_set1_epi32(kQ8Zero));
    for (size_t j = 0; j < XR; ++j) {
        const __m256i dots = _mm512_cvtepi64_epi32(_mm512_add_epi32(a[j], _mm512_srli_epi64(a[j], 32)));
        const __m256 out = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(sx[i0 + j]), scales),
                                         _mm256_cvtepi32_ps(_mm256_sub_epi32(dots, zero_sums)));
        _mm256_mask_storeu_ps(y + (i0 + j) * w.n + n, valid, out);
    }
}

// One tile of W expanded once into wd, then every row of xq against it, kRowBlock rows at a time.
void expanded_tile(const Packed& w, const uint8_t* xq, size_t stride, const float* sx, size_t m, size_t tile, float* y,
                   int8_t* wd) {
    const size_t n = tile * kMaskRows;
    expand_tile(w, tile, wd);
    size_t i = 0;
    for (; i + kRowBlock <= m; i += kRowBlock) expanded_rows<kRowBlock>(w, wd, xq, stride, sx, i, n, y);
    if (m - i >= 4) {  // the last < kRowBlock rows as 4 + 2 + 1
        expanded_rows<4>(w, wd, xq, stride, sx, i, n, y);
        i += 4;
    }
    if (m - i >= 2) {
        expanded_rows<2>(w, wd, xq, stride, sx, i, n, y);
        i += 2;
    }
    if (m - i == 1) expanded_rows<1>(w, wd, xq, stride, sx, i, n, y);
}

}  // namespace

void matmul_q8(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel) {
    const size_t stride = w.groups * kMaskChunks * kChunk;
    std::vector<uint8_t> xq(m * stride + 64);
    std::vector<float> sx(m);
    quantize_rows(x, m, w.k, stride, xq.data(), sx.data());
    if (m < kExpandRows) {
        for_tiles(w, parallel, [&](size_t tile) { row_tile(w, xq.data(), stride, sx.data(), m, tile, y); });
        return;
    }
    for_tiles(w, parallel, [&](size_t tile) {
        thread_local std::vector<int8_t> wd;  // one expanded tile per thread, reused across calls
        wd.resize(kMaskRows * stride);
        expanded_tile(w, xq.data(), stride, sx.data(), m, tile, y, wd.data());
    });
}

}  // namespace sparse_deploy::avx512_vnni
