// AVX-512 path (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq). One row: see
// row_tile (values expanded with vexpandps). Many rows: many_rows.hpp, offsets decoded with vpcompressd.
#include <immintrin.h>

#include "many_rows.hpp"

namespace sparse_deploy::avx512 {
namespace {

// 16 stored values as floats (int8 ones not yet scaled).
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

struct Simd {
    static constexpr size_t kLanes = 16;

    template <class V>
    static void widen16(const V* src, float* dst) { _mm512_storeu_ps(dst, load16(src)); }

    // Offsets base + stride * j of the set bits j, in order.
    static size_t decode(uint32_t bits, int32_t base, int32_t stride, int32_t* out) {
        const __m512i j = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512i offsets = _mm512_add_epi32(_mm512_set1_epi32(base), _mm512_mullo_epi32(j, _mm512_set1_epi32(stride)));
        _mm512_storeu_si512(out, _mm512_maskz_compress_epi32(__mmask16(bits), offsets));
        return size_t(__builtin_popcount(bits));
    }

    // acc[i] += v[j] * xt[idx[j] + 16 i] for every non-zero j; U copies of the accumulators
    // keep kFmaChains independent FMA chains in flight (many_rows.hpp).
    template <int NACC>
    static void rows(const float* v, const int32_t* idx, size_t cnt, const float* xt, float* yt) {
        constexpr int U = NACC >= kFmaChains ? 1 : kFmaChains / NACC;
        __m512 acc[U][NACC];
        for (int u = 0; u < U; ++u)
            for (int i = 0; i < NACC; ++i) acc[u][i] = u == 0 ? _mm512_load_ps(yt + 16 * i) : _mm512_setzero_ps();
        size_t j = 0;
        for (; j + U <= cnt; j += U)
            for (int u = 0; u < U; ++u) {
                const __m512 wv = _mm512_set1_ps(v[j + u]);
                const float* xr = xt + idx[j + u];
                for (int i = 0; i < NACC; ++i) acc[u][i] = _mm512_fmadd_ps(wv, _mm512_load_ps(xr + 16 * i), acc[u][i]);
            }
        for (; j < cnt; ++j) {
            const __m512 wv = _mm512_set1_ps(v[j]);
            const float* xr = xt + idx[j];
            for (int i = 0; i < NACC; ++i) acc[0][i] = _mm512_fmadd_ps(wv, _mm512_load_ps(xr + 16 * i), acc[0][i]);
        }
        for (int i = 0; i < NACC; ++i) {
            __m512 s = acc[0][i];
            for (int u = 1; u < U; ++u) s = _mm512_add_ps(s, acc[u][i]);
            _mm512_store_ps(yt + 16 * i, s);
        }
    }
};

// One tile of kMaskRows rows of W, all groups: the row's next 16 packed values are loaded and
// expanded under the chunk's bitmap (vexpandps), then multiplied with x's chunk.
// Not the other way round (compressing x under the bitmap and multiplying with the 16 values
// as loaded, as fast in a throwaway microbenchmark): past a row's last value the load reads
// the next record's bitmaps, whose bits can spell NaN, and 0 * NaN is NaN. Expanding never
// lets a lane past the popcount through. gcc folds the load into vexpandps' memory form; forcing
// the register form (an empty asm between them) measured 0.91x at 70% and 0.79x at 90% on a Zen 4
// (throwaway A/B, 4 layers 4096 <-> 11008, one row). The tile is one sequential stream (see
// sparse_format.hpp); the software prefetch runs kPrefetch bytes ahead of the record being
// read, line by line, so every byte is asked for once and early (4-8 KB beat 1-2 KB and
// per-row prefetches in a throwaway microbenchmark on a Zen 5; the committed figures are the sweep's).
constexpr size_t kPrefetch = 8192;

template <class V>
inline void row_tile(const Packed& w, const float* xp, size_t tile, float* y) {
    constexpr size_t R = kMaskRows;
    const uint8_t* q = w.data + w.tileptr[tile];
    const char* prefetched = reinterpret_cast<const char*>(q) + kPrefetch;
    __m512 a[R];
    for (size_t r = 0; r < R; ++r) a[r] = _mm512_setzero_ps();
    for (size_t g = 0; g < w.groups; ++g) {
        const V* p[R + 1];
        record_rows(q, p);
        prefetch_ahead(prefetched, p[R], kPrefetch);
        uint64_t bits[R];
        for (size_t r = 0; r < R; ++r) bits[r] = record_mask(q, r);
        for (size_t j = 0; j < kMaskChunks; ++j) {
            const __m512 xv = _mm512_load_ps(xp + (g * kMaskChunks + j) * kChunk);
            for (size_t r = 0; r < R; ++r) {
                const uint64_t b = (bits[r] >> (16 * j)) & 0xffff;
                a[r] = _mm512_fmadd_ps(_mm512_maskz_expand_ps(__mmask16(b), load16(p[r])), xv, a[r]);
                p[r] += __builtin_popcountll(b);
            }
        }
        q = reinterpret_cast<const uint8_t*>(p[R]);
    }
    const size_t n = tile * R;
    for (size_t r = 0; r < R && n + r < w.n; ++r) y[n + r] = _mm512_reduce_add_ps(a[r]) * row_scale(w, n + r);
}

void one_row(const Packed& w, const float* x, float* y, const ParallelFor& parallel) {
    const AlignedFloats xp = padded_x(w, x);
    with_values(w, [&](auto v) { for_tiles(w, parallel, [&](size_t t) { row_tile<decltype(v)>(w, xp.get(), t, y); }); });
}

}  // namespace

void matmul(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel) {
    if (m == 1) return one_row(w, x, y, parallel);
    many_rows<Simd>(w, x, m, y, parallel);
}

}  // namespace sparse_deploy::avx512
