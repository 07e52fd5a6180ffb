// AVX2 + FMA path (compiled with -mavx2 -mfma -mbmi2 -mpopcnt). No expand instruction: a
// 16-column chunk is two 8-column halves, and each half's packed values are moved into place
// by vpermps with an index from a 256-entry table (rank of each set bit), the lanes whose bit
// is clear zeroed by a mask from a second table. A tile of eight rows is read as one stream,
// each group record in two halves of four rows (eight row pointers did not fit the 16 GPRs
// next to everything else: GCC spilled them). Many rows: many_rows.hpp (narrow blocks: offsets
// decoded from a table of set-bit positions).
#include <immintrin.h>

#include <array>
#include <cstdlib>
#include <vector>

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

// The many-row primitives (many_rows.hpp).
struct Simd {
    using Vec = __m256;
    static constexpr size_t kLanes = 8;
    // From how many rows of x a block walks the bitmaps instead of decoded offsets: 1.27-1.36x at
    // 64 and 128 rows (throwaway A/B on a Zen 5, 11008 x 4096, 70 and 90%, interleaved calls);
    // at 2-16 rows the runs disagreed (0.8-1.3x), so narrow blocks keep the offsets.
    static constexpr size_t kBitmapRows = 64;
    static Vec zero() { return _mm256_setzero_ps(); }
    static Vec load(const float* p) { return _mm256_load_ps(p); }
    static void store(float* p, Vec v) { _mm256_store_ps(p, v); }
    static Vec fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
    static Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
    static Vec broadcast(const float* v) { return _mm256_broadcast_ss(v); }
    static Vec broadcast(const int8_t* v) { return _mm256_set1_ps(float(*v)); }

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

// --- matmul_q8 on AVX2 (no VNNI, no byte compress): a row's packed int8 values are moved
// under its bitmap with vpshufb, 16 columns at a time, then multiplied with x by vpmaddubsw +
// vpmaddwd. The shuffle's source is the chunk's first 8 values (its low half's non-zeros come
// first) next to the 8 bytes that end at its last value (its high half's non-zeros, right-
// aligned there), so each half's shuffle index depends on its own 8 bitmap bits only: two
// 256-entry tables, no offset arithmetic (clear bits index 0x80, which vpshufb zeroes). The
// 8 bytes before a chunk's end can start before the row's values: those lanes are never read.
// vpmaddubsw takes u8 x s8 and saturates a pair's sum at 16 bits: with x as u8 (0..255, zero
// point 128) two products can reach 64770, so x is taken signed (xq - 128, which is exactly
// symmetric: |x| <= 127) and its sign moved onto the weight (vpsignb): |x| * (±w) pairs stay
// below 2 * 127 * 127 = 32258. The dot is then Σ x_s8 q, with no zero-point correction. One
// pointer walks the tile: row r's values follow row r-1's in a record, the next record row 7's.

struct ShuffleTables {
    alignas(64) std::array<uint64_t, 256> low{};   // byte j: rank of bit j, or 0x80 (clear)
    alignas(64) std::array<uint64_t, 256> high{};  // byte j: 16 - popcount + rank of bit j, or 0x80
    ShuffleTables() {
        for (int b = 0; b < 256; ++b) {
            const int count = __builtin_popcount(unsigned(b));
            int rank = 0;
            for (int j = 0; j < 8; ++j) {
                const bool set = (b >> j) & 1;
                low[b] |= uint64_t(set ? rank : 0x80) << (8 * j);
                high[b] |= uint64_t(set ? 16 - count + rank : 0x80) << (8 * j);
                rank += set;
            }
        }
    }
};
const ShuffleTables& shuffle_tables() {  // on first use, from the AVX2 path only (see tables())
    static const ShuffleTables t;
    return t;
}

inline __m128i load_low(const void* p) { return _mm_loadl_epi64(static_cast<const __m128i*>(p)); }
inline __m128i with_high(__m128i lo, const void* p) {
    return _mm_castpd_si128(_mm_loadh_pd(_mm_castsi128_pd(lo), static_cast<const double*>(p)));
}

// 16 columns' int8 weights in place (bits: their 16-bit bitmap), reading from p on.
inline __m128i expand16(const ShuffleTables& t, uint32_t bits, const int8_t*& p) {
    const size_t count = size_t(__builtin_popcount(bits));
    const __m128i source = with_high(load_low(p), p + count - 8);
    const __m128i index = with_high(load_low(&t.low[bits & 0xff]), &t.high[bits >> 8]);
    p += count;
    return _mm_shuffle_epi8(source, index);
}

// Eight 8-lane int32 sums to one int32 each: out[r] = Σ a[r].
inline void hsum8(const __m256i a[kMaskRows], int32_t out[kMaskRows]) {
    const __m256i s01 = _mm256_hadd_epi32(a[0], a[1]), s23 = _mm256_hadd_epi32(a[2], a[3]);
    const __m256i s45 = _mm256_hadd_epi32(a[4], a[5]), s67 = _mm256_hadd_epi32(a[6], a[7]);
    const __m256i s0123 = _mm256_hadd_epi32(s01, s23), s4567 = _mm256_hadd_epi32(s45, s67);
    // lanes: [r0 r1 r2 r3 | r0 r1 r2 r3] halves of each; fold the two 128-bit halves
    const __m256i lo = _mm256_permute2x128_si256(s0123, s4567, 0x20), hi = _mm256_permute2x128_si256(s0123, s4567, 0x31);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_add_epi32(lo, hi));
}

// One tile of W against every row of x (xs: x_s8, xa: |x_s8|, stride bytes per row).
void q8_tile(const Packed& w, const int8_t* xs, const uint8_t* xa, size_t stride, const float* sx, size_t m, size_t tile,
             float* y) {
    constexpr size_t R = kMaskRows, kGroupCols = kMaskChunks * kChunk;
    const ShuffleTables& t = shuffle_tables();
    const __m256i ones = _mm256_set1_epi16(1);
    const uint8_t* start = w.data + w.tileptr[tile];
    const char* prefetched = reinterpret_cast<const char*>(start) + kPrefetch;
    const size_t n = tile * R;
    for (size_t i = 0; i < m; ++i) {
        const uint8_t* q = start;
        __m256i a[R];
        for (size_t r = 0; r < R; ++r) a[r] = _mm256_setzero_si256();
        for (size_t g = 0; g < w.groups; ++g) {
            const int8_t* p = reinterpret_cast<const int8_t*>(q + kRecordHead);
            const size_t col = i * stride + g * kGroupCols;
#pragma GCC unroll 8
            for (size_t r = 0; r < R; ++r) {
                const uint64_t bits = record_mask(q, r);
                for (size_t h = 0; h < 2; ++h) {
                    const __m128i lo = expand16(t, uint32_t(bits >> (32 * h)) & 0xffff, p);
                    const __m128i hi = expand16(t, uint32_t(bits >> (32 * h + 16)) & 0xffff, p);
                    const __m256i wv = _mm256_set_m128i(hi, lo);
                    const __m256i s = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs + col + 32 * h));
                    const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa + col + 32 * h));
                    a[r] = _mm256_add_epi32(a[r], _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(wv, s)), ones));
                }
            }
            if (i == 0) prefetch_ahead(prefetched, p, kPrefetch);
            q = reinterpret_cast<const uint8_t*>(p);
        }
        int32_t dot[R];
        hsum8(a, dot);
        for (size_t r = 0; r < R && n + r < w.n; ++r) y[i * w.n + n + r] = sx[i] * w.scales[n + r] * float(dot[r]);
    }
}

}  // namespace

void matmul(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel) {
    if (m == 1) return one_row(w, x, y, parallel);
    many_rows<Simd>(w, x, m, y, parallel);
}

void matmul_q8(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel) {
    const size_t stride = w.groups * kMaskChunks * kChunk;
    std::vector<uint8_t> xq(m * stride), xa(m * stride);
    std::vector<int8_t> xs(m * stride);
    std::vector<float> sx(m);
    quantize_rows(x, m, w.k, stride, xq.data(), sx.data());
    for (size_t c = 0; c < m * stride; ++c) {
        xs[c] = int8_t(int32_t(xq[c]) - kQ8Zero);
        xa[c] = uint8_t(std::abs(int32_t(xs[c])));
    }
    for_tiles(w, parallel, [&](size_t tile) { q8_tile(w, xs.data(), xa.data(), stride, sx.data(), m, tile, y); });
}

}  // namespace sparse_deploy::avx2
