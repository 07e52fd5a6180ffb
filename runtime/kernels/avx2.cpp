// AVX2 + FMA path (compiled with -mavx2 -mfma -mbmi2 -mpopcnt). No expand instruction: a
// 16-column chunk is two 8-column halves, and each half's packed values are moved into place
// by vpermps with an index from a 256-entry table (rank of each set bit), the lanes whose bit
// is clear zeroed by a mask from a second table. A tile of eight rows is read as one stream,
// each group record in two halves of four rows (eight row pointers did not fit the 16 GPRs
// next to everything else: GCC spilled them). Many rows:
// many_rows.hpp, indices decoded from a table of set-bit positions.
#include <immintrin.h>

#include <array>

#include "many_rows.hpp"

namespace sparse_deploy::avx2 {
namespace {

struct Tables {
    alignas(32) std::array<std::array<int32_t, 8>, 256> expand_index{};  // lane j <- packed value rank(j)
    alignas(32) std::array<std::array<int32_t, 8>, 256> keep{};          // lane j: -1 if bit j set, else 0
    alignas(32) std::array<std::array<int32_t, 8>, 256> positions{};     // the set bits' positions, in order
    Tables() {
        for (int b = 0; b < 256; ++b) {
            int rank = 0;
            for (int j = 0; j < 8; ++j) {
                const bool set = (b >> j) & 1;
                expand_index[b][j] = set ? rank : 0;
                keep[b][j] = set ? -1 : 0;
                if (set) positions[b][rank++] = j;
            }
        }
    }
};
// Built on first use, from the AVX2 path only: a namespace-scope table would be constructed
// when the library loads, by code compiled for AVX2, on any CPU.
const Tables& tables() {
    static const Tables t;
    return t;
}

// 8 stored values as floats (int8 ones not yet scaled).
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

struct Simd {
    static constexpr size_t kLanes = 8;

    template <class V>
    static void widen16(const V* src, float* dst) {
        _mm256_storeu_ps(dst, load8(src));
        _mm256_storeu_ps(dst + 8, load8(src + 8));
    }

    // Offsets base + stride * j of the set bits j, in order.
    static size_t decode(uint32_t bits, int32_t base, int32_t stride, int32_t* out) {
        const __m256i s = _mm256_set1_epi32(stride);
        const uint32_t lo = bits & 0xff, hi = bits >> 8;
        const auto positions = [](uint32_t b) {
            return _mm256_load_si256(reinterpret_cast<const __m256i*>(tables().positions[b].data()));
        };
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                            _mm256_add_epi32(_mm256_set1_epi32(base), _mm256_mullo_epi32(positions(lo), s)));
        const size_t nlo = size_t(__builtin_popcount(lo));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + nlo),
                            _mm256_add_epi32(_mm256_set1_epi32(base + 8 * stride), _mm256_mullo_epi32(positions(hi), s)));
        return nlo + size_t(__builtin_popcount(hi));
    }

    template <int NACC>
    static void rows(const float* v, const int32_t* idx, size_t cnt, const float* xt, float* yt) {
        constexpr int U = NACC >= kFmaChains ? 1 : kFmaChains / NACC;
        __m256 acc[U][NACC];
        for (int u = 0; u < U; ++u)
            for (int i = 0; i < NACC; ++i) acc[u][i] = u == 0 ? _mm256_load_ps(yt + 8 * i) : _mm256_setzero_ps();
        size_t j = 0;
        for (; j + U <= cnt; j += U)
            for (int u = 0; u < U; ++u) {
                const __m256 wv = _mm256_broadcast_ss(v + j + u);
                const float* xr = xt + idx[j + u];
                for (int i = 0; i < NACC; ++i) acc[u][i] = _mm256_fmadd_ps(wv, _mm256_load_ps(xr + 8 * i), acc[u][i]);
            }
        for (; j < cnt; ++j) {
            const __m256 wv = _mm256_broadcast_ss(v + j);
            const float* xr = xt + idx[j];
            for (int i = 0; i < NACC; ++i) acc[0][i] = _mm256_fmadd_ps(wv, _mm256_load_ps(xr + 8 * i), acc[0][i]);
        }
        for (int i = 0; i < NACC; ++i) {
            __m256 s = acc[0][i];
            for (int u = 1; u < U; ++u) s = _mm256_add_ps(s, acc[u][i]);
            _mm256_store_ps(yt + 8 * i, s);
        }
    }
};

constexpr size_t kPrefetch = 8192;  // bytes ahead of the record being read (see avx512.cpp)

// acc += (the 8 columns of one half-chunk of W, expanded) * x
template <class V>
inline __m256 half(const Tables& t, uint32_t bits, const V*& p, __m256 xv, __m256 acc) {
    const __m256i index = _mm256_load_si256(reinterpret_cast<const __m256i*>(t.expand_index[bits].data()));
    const __m256 keep = _mm256_load_ps(reinterpret_cast<const float*>(t.keep[bits].data()));
    const __m256 wv = _mm256_and_ps(_mm256_permutevar8x32_ps(load8(p), index), keep);
    p += __builtin_popcount(bits);
    return _mm256_fmadd_ps(wv, xv, acc);
}

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// One tile of kMaskRows rows of W, all groups.
template <class V>
void row_tile(const Packed& w, const float* xp, size_t tile, float* y) {
    constexpr size_t R = kMaskRows, kHalf = R / 2;
    const Tables& t = tables();
    const uint8_t* q = w.data + w.tileptr[tile];
    const char* prefetched = reinterpret_cast<const char*>(q) + kPrefetch;
    __m256 a[R];
    for (size_t r = 0; r < R; ++r) a[r] = _mm256_setzero_ps();
    for (size_t g = 0; g < w.groups; ++g) {
        const V* p[R + 1];
        record_rows(q, p);
        prefetch_ahead(prefetched, p[R], kPrefetch);
        for (size_t r0 = 0; r0 < R; r0 += kHalf)
            for (size_t j = 0; j < kMaskChunks; ++j) {
                const float* xc = xp + (g * kMaskChunks + j) * kChunk;
                const __m256 xlo = _mm256_load_ps(xc), xhi = _mm256_load_ps(xc + 8);
                for (size_t r = r0; r < r0 + kHalf; ++r) {
                    const uint32_t b = uint32_t(record_mask(q, r) >> (16 * j));
                    a[r] = half(t, b & 0xff, p[r], xlo, a[r]);
                    a[r] = half(t, (b >> 8) & 0xff, p[r], xhi, a[r]);
                }
            }
        q = reinterpret_cast<const uint8_t*>(p[R]);
    }
    const size_t n = tile * R;
    for (size_t r = 0; r < R && n + r < w.n; ++r) y[n + r] = hsum(a[r]) * row_scale(w, n + r);
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

}  // namespace sparse_deploy::avx2
