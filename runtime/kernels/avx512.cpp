// AVX-512 path (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq). One row: see
// row_tile (values expanded with vexpandps). Many rows: many_rows.hpp.
#include <immintrin.h>

#include "many_rows.hpp"

namespace sparse_deploy::avx512 {
namespace {

// 16 stored values as floats (int8 ones not yet scaled).
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// The many-row primitives (many_rows.hpp).
struct Simd {
    using Vec = __m512;
    static constexpr size_t kLanes = 16;
    // From how many rows of x a block walks the bitmaps instead of decoded offsets. Throwaway
    // A/B on a Zen 5 (11008 x 4096, interleaved calls), bitmap walk vs offsets: 128 rows
    // 1.15-1.27x at 50-99%, 64 rows 1.33-1.38x, 32 rows 1.14x at 70% but 0.97x at 90%, 16 rows
    // and fewer 0.85-0.89x at 90%.
    static constexpr size_t kBitmapRows = 64;
    static Vec zero() { return _mm512_setzero_ps(); }
    static Vec load(const float* p) { return _mm512_load_ps(p); }
    static void store(float* p, Vec v) { _mm512_store_ps(p, v); }
    static Vec fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
    static Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
    static Vec broadcast(const float* v) { return _mm512_set1_ps(*v); }
    static Vec broadcast(const int8_t* v) { return _mm512_set1_ps(float(*v)); }

    template <class V>
    static void widen16(const V* src, float* dst) { _mm512_storeu_ps(dst, load16(src)); }

    // Offsets base + stride * j of the set bits j, in order.
    static size_t decode(uint32_t bits, int32_t base, int32_t stride, int32_t* out) {
        const __m512i j = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512i offsets = _mm512_add_epi32(_mm512_set1_epi32(base), _mm512_mullo_epi32(j, _mm512_set1_epi32(stride)));
        _mm512_storeu_si512(out, _mm512_maskz_compress_epi32(__mmask16(bits), offsets));
        return size_t(__builtin_popcount(bits));
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
