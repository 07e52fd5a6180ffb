// The many-row (prefill, batch > 1) driver shared by the SIMD paths: x is transposed into
// column-major blocks so that one non-zero w[n, k] meets a contiguous run of x[:, k] (up to
// kLanes * NACC rows at once), and every non-zero is multiplied once per row of x, never a zero.
// Two ways to find a non-zero's column, chosen by the block's width S = kLanes * NACC rows of x:
// - S >= Simd::kBitmapRows: read off the row's bitmap as it is multiplied (tzcnt, blsr; row_block);
// - narrower: decoded into a list of offsets first (vpcompressd or a table; decode_tile, then
//   offset_rows): fewer instructions per non-zero (an offset load against tzcnt, blsr and a
//   multiply), which pays when each non-zero has only one or two vectors of x to multiply; the
//   decode's work per chunk is what the wide blocks save.
//
// A path provides:  struct Simd { using Vec; static constexpr size_t kLanes;
//                                 zero(), load(const float*) (aligned), store(float*, Vec),
//                                 fmadd(a, b, c), add(a, b), broadcast(const V*) (one value as floats),
//                                 kBitmapRows, and where narrower blocks exist:
//                                 decode(bits, base, stride, int32_t* out) (base + stride * j for set bits j),
//                                 widen16(const V*, float*) (16 values as floats) };
// (see avx2.cpp / avx512.cpp).
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

// Independent FMA chains the multiply loops keep in flight (U = kFmaChains / NACC copies of
// its accumulators): two FMA pipes x 4 cycles of latency need eight to stay busy. Four (the
// previous choice) left 16-row blocks (NACC = 1) at half the FMA rate; sixteen on AVX-512 was
// no faster at 16 rows and slower at 128 (throwaway A/B of the two builds, paired, Zen 5).
constexpr int kFmaChains = 8;

// One row of W's accumulators over S = kLanes * NACC rows of y, in U = kFmaChains / NACC copies
// (independent FMA chains): loaded from yt (copy 0) and stored back as the sum of the copies.
template <class Simd, int NACC>
struct Accumulators {
    static constexpr int U = NACC >= kFmaChains ? 1 : kFmaChains / NACC;
    typename Simd::Vec a[U][NACC];
    explicit Accumulators(const float* yt) {
        for (int u = 0; u < U; ++u)
            for (int i = 0; i < NACC; ++i) a[u][i] = u == 0 ? Simd::load(yt + Simd::kLanes * i) : Simd::zero();
    }
    void store(float* yt) const {
        for (int i = 0; i < NACC; ++i) {
            typename Simd::Vec sum = a[0][i];
            for (int u = 1; u < U; ++u) sum = Simd::add(sum, a[u][i]);
            Simd::store(yt + Simd::kLanes * i, sum);
        }
    }
};

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

// y[m0 + r, n] = yt[(n - n0) * S + r] * scale(n) for the task's rows n0..n1 of W, in blocks of
// kYCols rows of W: a block's part of yt (kYCols x S floats) stays in L1 while y is written row
// by row, contiguously. Row by row over the whole task read yt at a stride of S floats, a new
// cache line per element, and cost a third of the 128-row call at 90% sparsity (throwaway
// timing, Zen 5); a write per row of W per row of y would touch a page each. Templated on the
// path so that its name says which ISA file compiled it (test_kernels.py reads the names).
template <class Simd, size_t S>
void write_back(const float* yt, const Packed& w, size_t n0, size_t n1, size_t m0, size_t mb, float* y) {
    constexpr size_t kYCols = 16;
    float scale[kYCols];
    for (size_t b0 = n0; b0 < n1; b0 += kYCols) {
        const size_t b1 = std::min(n1, b0 + kYCols);
        for (size_t n = b0; n < b1; ++n) scale[n - b0] = row_scale(w, n);
        for (size_t r = 0; r < mb; ++r) {
            float* yr = y + (m0 + r) * w.n;
            for (size_t n = b0; n < b1; ++n) yr[n] = yt[(n - n0) * S + r] * scale[n - b0];
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

// acc += v[j] * xt[idx[j]] for every non-zero j of one row (NACC vectors: S rows of y).
template <class Simd, int NACC>
void offset_rows(const float* v, const int32_t* idx, size_t cnt, const float* xt, float* yt) {
    using Vec = typename Simd::Vec;
    constexpr size_t L = Simd::kLanes;
    Accumulators<Simd, NACC> accs(yt);
    auto& acc = accs.a;
    constexpr int U = Accumulators<Simd, NACC>::U;
    size_t j = 0;
    for (; j + U <= cnt; j += U)
        for (int u = 0; u < U; ++u) {
            const Vec wv = Simd::broadcast(v + j + u);
            const float* xr = xt + idx[j + u];
            for (int i = 0; i < NACC; ++i) acc[u][i] = Simd::fmadd(wv, Simd::load(xr + L * i), acc[u][i]);
        }
    for (; j < cnt; ++j) {
        const Vec wv = Simd::broadcast(v + j);
        const float* xr = xt + idx[j];
        for (int i = 0; i < NACC; ++i) acc[0][i] = Simd::fmadd(wv, Simd::load(xr + L * i), acc[0][i]);
    }
    accs.store(yt);
}

// Each row's bitmap and first value in the group records [q, ...) of a block of `groups`
// groups (masks[r * stride + g], vals[r * stride + g]); returns the record after the last one.
template <class V>
const uint8_t* block_rows(const uint8_t* q, size_t groups, size_t stride, uint64_t* masks, const V** vals) {
    for (size_t g = 0; g < groups; ++g) {
        const V* p[kMaskRows + 1];
        record_rows(q, p);
        for (size_t r = 0; r < kMaskRows; ++r) {
            masks[r * stride + g] = record_mask(q, r);
            vals[r * stride + g] = p[r];
        }
        q = reinterpret_cast<const uint8_t*>(p[kMaskRows]);
    }
    return q;
}

// acc (NACC vectors: S rows of y for one row n of W) += w[n, k] * xt[k] for every non-zero of
// row n in the block's groups (masks[g]: the row's bitmap of group g, vals[g]: its values).
// Each non-zero's column is read off the bitmap (tzcnt, then blsr) as it is multiplied.
// Why not a decoded list of offsets (the previous kernel: vpcompressd per chunk into an array,
// then one offset load per non-zero): the decode and its stores took ~3.5 of 18 ms of a 128-row
// call on 11008 x 4096 at 70% (throwaway, Zen 5, a build without the multiply). U copies of the
// accumulators keep kFmaChains independent FMA chains in flight.
template <class Simd, int NACC, class V>
void row_block(const uint64_t* masks, const V* const* vals, size_t groups, const float* xt, float* yt) {
    using Vec = typename Simd::Vec;
    constexpr size_t L = Simd::kLanes, S = L * NACC, kGroupCols = kMaskChunks * kChunk;
    Accumulators<Simd, NACC> accs(yt);
    auto& acc = accs.a;
    constexpr int U = Accumulators<Simd, NACC>::U;
    const auto fma = [&](Vec* a, const V* v, uint64_t& b, const float* xg) {
        const Vec wv = Simd::broadcast(v);
        const float* xr = xg + size_t(__builtin_ctzll(b)) * S;
        b &= b - 1;
        for (int i = 0; i < NACC; ++i) a[i] = Simd::fmadd(wv, Simd::load(xr + L * i), a[i]);
    };
    for (size_t g = 0; g < groups; ++g) {
        uint64_t b = masks[g];
        const V* v = vals[g];
        const float* xg = xt + g * kGroupCols * S;
        const size_t cnt = size_t(__builtin_popcountll(b));
        size_t j = 0;
        for (; j + U <= cnt; j += U)
            for (int u = 0; u < U; ++u) fma(acc[u], v + j + u, b, xg);
        // The rest on chains of their own too: a group of fewer than U non-zeros (90%, 16 rows)
        // on one chain left the others idle.
        for (int u = 0; u + 1 < U; ++u)
            if (j + u < cnt) fma(acc[u], v + j + u, b, xg);
    }
    accs.store(yt);
}

// One block of rows [m0, m0 + mb) of x, every row of W, through row_block<NACC>.
//
// Loop order, and why: the reuse that matters is of transposed x, read S floats per non-zero.
// K is walked in blocks of whole groups whose transposed x stays in L1 (kXtBudget) while a
// task's kNTile rows of W pass over it; each tile keeps a cursor into its records, so a block
// starts where the previous one ended, and asks for the lines of its next block (as many bytes
// as this one took) while the task's other tiles are multiplied. The tile's accumulators
// (kNTile x S floats) live in L2.
template <class Simd, int NACC, class V>
void many_rows_block(const Packed& w, const float* x, size_t m0, size_t mb, float* y, const ParallelFor& parallel) {
    constexpr size_t S = Simd::kLanes * NACC;  // stride of one column of transposed x
    constexpr size_t kTilesPerTask = kNTile / kMaskRows;
    AlignedFloats xt = aligned_floats(w.k * S);
    transpose_rows<S>(x, w.k, m0, mb, xt.get());
    const size_t kb_groups = std::max<size_t>(1, kXtBudget / (S * sizeof(float) * kChunk * kMaskChunks));
    const size_t tasks = (w.tiles + kTilesPerTask - 1) / kTilesPerTask;
    parallel(tasks, [&](size_t task) {
        const size_t t0 = task * kTilesPerTask, t1 = std::min(w.tiles, t0 + kTilesPerTask);
        const size_t n0 = t0 * kMaskRows, n1 = std::min(w.n, t1 * kMaskRows);
        AlignedFloats yt = aligned_floats((t1 - t0) * kMaskRows * S);
        std::vector<const uint8_t*> cursor(t1 - t0);
        std::vector<const char*> prefetched(t1 - t0);
        for (size_t t = t0; t < t1; ++t) {
            cursor[t - t0] = w.data + w.tileptr[t];
            prefetched[t - t0] = reinterpret_cast<const char*>(cursor[t - t0]);
        }
        // Tile t's rows over one block of groups (multiply: from the tile's cursor to past the
        // block), then the cursor moved on and the next block's lines asked for.
        const auto tile_block = [&](size_t t, auto&& multiply) {
            const uint8_t* start = cursor[t - t0];
            cursor[t - t0] = multiply(start);
            prefetch_ahead(prefetched[t - t0], cursor[t - t0], size_t(cursor[t - t0] - start));
        };
        float* const ytile = yt.get();
        if constexpr (S >= Simd::kBitmapRows) {
            std::vector<uint64_t> masks(kMaskRows * kb_groups);  // [row][group of the block]
            std::vector<const V*> vals(kMaskRows * kb_groups);
            for (size_t g0 = 0; g0 < w.groups; g0 += kb_groups) {
                const size_t groups = std::min(w.groups, g0 + kb_groups) - g0;
                for (size_t t = t0; t < t1; ++t)
                    tile_block(t, [&](const uint8_t* q) {
                        q = block_rows(q, groups, kb_groups, masks.data(), vals.data());
                        for (size_t r = 0; r < kMaskRows && t * kMaskRows + r < n1; ++r)
                            row_block<Simd, NACC, V>(masks.data() + r * kb_groups, vals.data() + r * kb_groups,
                                                     groups, xt.get() + g0 * kMaskChunks * kChunk * S,
                                                     ytile + ((t - t0) * kMaskRows + r) * S);
                        return q;
                    });
            }
        } else {
            const size_t len = kb_groups * kMaskChunks * kChunk + 32;  // per row; + room for the decode's 16-wide stores
            std::vector<int32_t> idx(kMaskRows * len);
            std::vector<float> val(kMaskRows * len);
            size_t cnt[kMaskRows];
            const float* v[kMaskRows];
            for (size_t g0 = 0; g0 < w.groups; g0 += kb_groups) {
                const size_t g1 = std::min(w.groups, g0 + kb_groups);
                for (size_t t = t0; t < t1; ++t)
                    tile_block(t, [&](const uint8_t* q) {
                        q = decode_tile<Simd, S, V>(q, g0, g1, len, idx.data(), val.data(), cnt, v);
                        for (size_t r = 0; r < kMaskRows && t * kMaskRows + r < n1; ++r)
                            offset_rows<Simd, NACC>(v[r], idx.data() + r * len, cnt[r], xt.get(),
                                                    ytile + ((t - t0) * kMaskRows + r) * S);
                        return q;
                    });
            }
        }
        write_back<Simd, S>(yt.get(), w, n0, n1, m0, mb, y);
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
