// AVX-512 path (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq). One row: see
// row_tile. Many rows: many_rows.hpp, offsets decoded with vpcompressd.
#include <immintrin.h>

#include "many_rows.hpp"

namespace sparse_deploy::avx512 {
namespace {

struct Simd {
    static constexpr size_t kLanes = 16;

    // Offsets base + stride * j of the set bits j, in order.
    static size_t decode(uint32_t bits, int32_t base, int32_t stride, int32_t* out) {
        const __m512i j = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512i offsets = _mm512_add_epi32(_mm512_set1_epi32(base), _mm512_mullo_epi32(j, _mm512_set1_epi32(stride)));
        _mm512_storeu_si512(out, _mm512_maskz_compress_epi32(__mmask16(bits), offsets));
        return size_t(__builtin_popcount(bits));
    }

    // acc[i] += v[j] * xt[idx[j] + 16 i] for every non-zero j; U copies of the accumulators
    // keep at least four FMA chains in flight when NACC is small.
    template <int NACC>
    static void rows(const float* v, const int32_t* idx, size_t cnt, const float* xt, float* yt) {
        constexpr int U = NACC >= 4 ? 1 : 4 / NACC;
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

// R rows of W, all chunks: x's chunk is compressed under each row's bitmap (vcompressps,
// register form: faster in a throwaway microbenchmark than expanding the values, register or memory form) and
// multiplied with the row's next 16 packed values, of which only the first popcount meet a
// non-zero lane. Masks are read four chunks (one u64) at a time; the value streams are
// prefetched 1 KB ahead. A tile of 8 rows in flight beat 4 and 2 rows with 2 threads in
// throwaway microbenchmarks on a Zen 5 (not kept: the committed figures are the sweep's).
constexpr size_t kPrefetch = 256;  // floats ahead

// One tile of kMaskRows rows of W (the last tile may hold fewer real rows: `rows`).
inline void row_tile(const Packed& w, const float* xp, size_t tile, size_t rows, float* y) {
    constexpr int R = int(kMaskRows);
    const uint64_t* bits = reinterpret_cast<const uint64_t*>(w.masks) + tile * w.groups * kMaskRows;
    const size_t n = tile * kMaskRows;
    const float* p[R];
    __m512 a[R];
    for (int r = 0; r < R; ++r) {
        p[r] = w.values + w.rowptr[n + std::min<size_t>(size_t(r), rows - 1)];
        a[r] = _mm512_setzero_ps();
    }
    for (size_t g = 0; g < w.groups; ++g, bits += kMaskRows) {
        for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(p[r] + kPrefetch), _MM_HINT_T0);
        for (size_t j = 0; j < kMaskChunks; ++j) {
            const __m512 xv = _mm512_load_ps(xp + (g * kMaskChunks + j) * kChunk);
            for (int r = 0; r < R; ++r) {
                const uint64_t b = (bits[r] >> (16 * j)) & 0xffff;
                a[r] = _mm512_fmadd_ps(_mm512_maskz_compress_ps(__mmask16(b), xv), _mm512_loadu_ps(p[r]), a[r]);
                p[r] += __builtin_popcountll(b);
            }
        }
    }
    for (size_t r = 0; r < rows; ++r) y[n + r] = _mm512_reduce_add_ps(a[r]);
}

void one_row(const Packed& w, const float* x, float* y, const ParallelFor& parallel) {
    AlignedFloats xp = aligned_floats(w.groups * kMaskChunks * kChunk);  // x padded to whole groups
    std::memcpy(xp.get(), x, w.k * sizeof(float));
    const size_t tiles = (w.n + kMaskRows - 1) / kMaskRows, per_task = kRowTile / kMaskRows;
    parallel((tiles + per_task - 1) / per_task, [&](size_t t) {
        for (size_t tile = t * per_task; tile < std::min(tiles, (t + 1) * per_task); ++tile)
            row_tile(w, xp.get(), tile, std::min(kMaskRows, w.n - tile * kMaskRows), y);
    });
}

}  // namespace

void matmul(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel) {
    if (m == 1) return one_row(w, x, y, parallel);
    many_rows<Simd>(w, x, m, y, parallel);
}

}  // namespace sparse_deploy::avx512
