// Packing, viewing, ISA dispatch and the scalar reference of the bitmap-16 sparse MatMul.
#include "sparse_format.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

namespace sparse_deploy {
namespace {

size_t align64(size_t bytes) { return (bytes + 63) / 64 * 64; }

}  // namespace

namespace {

constexpr float kInt8Max = 127.0f;

// Per-row max |w|, scanning W in its stored order.
std::vector<float> row_absmax(const float* w, size_t n, size_t k, bool transposed) {
    std::vector<float> m(n, 0.0f);
    for (size_t i = 0; i < n * k; ++i) {
        const size_t row = transposed ? i % n : i / k;
        m[row] = std::max(m[row], std::fabs(w[i]));
    }
    return m;
}

// One scale per row: max |w[n, :]| / 127 (0 for an all-zero row, whose values are all zero).
std::vector<float> row_scales(const float* w, size_t n, size_t k, bool transposed) {
    std::vector<float> scale = row_absmax(w, n, k, transposed);
    for (float& sc : scale) sc /= kInt8Max;
    return scale;
}

// v's step on its row's grid (zero stays zero whatever the scale).
int8_t to_int8(float v, float scale) {
    return v == 0.0f ? int8_t(0) : int8_t(std::clamp(std::nearbyint(v / scale), -kInt8Max, kInt8Max));
}

}  // namespace

Int8Dense quantize_dense(const float* w, size_t n, size_t k, bool transposed) {
    Int8Dense q{std::vector<int8_t>(n * k), row_scales(w, n, k, transposed)};
    for (size_t i = 0; i < n * k; ++i) q.values[i] = to_int8(w[i], q.scales[transposed ? i % n : i / k]);
    return q;
}

bool int8_grid(const float* w, size_t n, size_t k, bool transposed) {
    const std::vector<float> scales = row_scales(w, n, k, transposed);
    for (size_t i = 0; i < n * k; ++i) {
        const float scale = scales[transposed ? i % n : i / k];
        if (w[i] == 0.0f) continue;
        const float q = w[i] / scale;
        if (!std::isfinite(q) || std::fabs(q - std::nearbyint(q)) > 1e-3f) return false;
    }
    return true;
}

std::vector<uint8_t> pack(const float* w, size_t n, size_t k, bool transposed, Values values) {
    const size_t chunks = (k + kChunk - 1) / kChunk;
    const size_t groups = (chunks + kMaskChunks - 1) / kMaskChunks;
    const size_t tiles = (n + kMaskRows - 1) / kMaskRows;
    const size_t vb = size_t(values);
    constexpr size_t kGroupCols = kMaskChunks * kChunk;

    // Two passes over W in its stored order (Wᵀ is scanned along its rows, never strided):
    // bitmaps per (row, group), then the values into their segments.
    std::vector<uint64_t> masks(n * groups, 0), cursor(n * groups, 0);
    const auto visit = [&](auto&& f) {
        if (transposed) {
            for (size_t col = 0; col < k; ++col)
                for (size_t row = 0; row < n; ++row) f(row, col, w[col * n + row]);
        } else {
            for (size_t row = 0; row < n; ++row)
                for (size_t col = 0; col < k; ++col) f(row, col, w[row * k + col]);
        }
    };
    uint64_t nnz = 0;
    visit([&](size_t row, size_t col, float v) {
        if (v == 0.0f) return;
        if (values == Values::i8 && !std::isfinite(v)) throw std::runtime_error("weight holds inf or nan: no int8 grid");
        masks[row * groups + col / kGroupCols] |= uint64_t(1) << (col % kGroupCols);
        ++nnz;
    });

    Header h{};
    h.magic = kMagic;
    h.version = kVersion;
    h.n = n;
    h.k = k;
    h.chunks = chunks;
    h.nnz = nnz;
    h.tiles = tiles;
    h.groups = groups;
    h.value_bytes = vb;
    h.off_tileptr = align64(sizeof(Header));
    h.off_scales = h.off_tileptr + align64((tiles + 1) * sizeof(uint64_t));
    h.off_qsums = h.off_scales + (values == Values::i8 ? align64(n * sizeof(float)) : 0);
    h.off_data = h.off_qsums + (values == Values::i8 ? align64(n * sizeof(int32_t)) : 0);
    h.total = h.off_data + align64(tiles * groups * kRecordHead + nnz * vb + kDataPad);

    std::vector<uint8_t> blob(h.total, 0);
    std::memcpy(blob.data(), &h, sizeof(h));
    auto* tileptr = reinterpret_cast<uint64_t*>(blob.data() + h.off_tileptr);
    uint8_t* data = blob.data() + h.off_data;
    uint64_t pos = 0;  // in bytes
    for (size_t t = 0; t < tiles; ++t) {
        tileptr[t] = pos;
        for (size_t g = 0; g < groups; ++g) {
            uint8_t* record = data + pos;
            pos += kRecordHead;
            for (size_t r = 0; r < kMaskRows; ++r) {
                const size_t row = t * kMaskRows + r;
                const uint64_t bits = row < n ? masks[row * groups + g] : 0;
                std::memcpy(record + sizeof(uint64_t) * r, &bits, sizeof bits);
                if (row < n) cursor[row * groups + g] = pos;
                pos += uint64_t(__builtin_popcountll(bits)) * vb;
            }
        }
    }
    tileptr[tiles] = pos;
    if (values == Values::f32) {
        visit([&](size_t row, size_t col, float v) {
            if (v == 0.0f) return;
            uint64_t& at = cursor[row * groups + col / kGroupCols];
            std::memcpy(data + at, &v, sizeof v);
            at += sizeof v;
        });
    } else {
        const std::vector<float> scale = row_scales(w, n, k, transposed);
        std::memcpy(blob.data() + h.off_scales, scale.data(), n * sizeof(float));
        auto* qsums = reinterpret_cast<int32_t*>(blob.data() + h.off_qsums);
        visit([&](size_t row, size_t col, float v) {
            if (v == 0.0f) return;
            const int8_t q = to_int8(v, scale[row]);
            data[cursor[row * groups + col / kGroupCols]++] = uint8_t(q);
            qsums[row] += int32_t(q);
        });
    }
    return blob;
}

Packed view(const uint8_t* blob, size_t size) {
    if (size < sizeof(Header)) throw std::runtime_error("sparse weight blob too small for its header");
    const auto* h = reinterpret_cast<const Header*>(blob);
    if (h->magic != kMagic) throw std::runtime_error("not a sparse weight blob (bad magic)");
    if (h->version != kVersion)
        throw std::runtime_error("sparse weight blob of format version " + std::to_string(h->version) + ", this library reads " +
                                 std::to_string(kVersion));
    if (h->value_bytes != size_t(Values::f32) && h->value_bytes != size_t(Values::i8))
        throw std::runtime_error("sparse weight blob with " + std::to_string(h->value_bytes) + "-byte values");
    const uint64_t records = h->tiles * h->groups * kRecordHead;
    const bool i8 = h->value_bytes == size_t(Values::i8);
    if (h->total != size || h->chunks != (h->k + kChunk - 1) / kChunk ||
        h->groups != (h->chunks + kMaskChunks - 1) / kMaskChunks || h->tiles != (h->n + kMaskRows - 1) / kMaskRows ||
        h->off_tileptr + (h->tiles + 1) * sizeof(uint64_t) > h->off_scales ||
        (i8 ? h->off_scales + h->n * sizeof(float) : h->off_scales) > h->off_qsums ||
        (i8 ? h->off_qsums + h->n * sizeof(int32_t) : h->off_qsums) > h->off_data ||
        h->off_data + records + h->nnz * h->value_bytes + kDataPad > size)
        throw std::runtime_error("sparse weight blob sizes do not add up");
    Packed p;
    p.h = h;
    p.n = h->n;
    p.k = h->k;
    p.chunks = h->chunks;
    p.groups = h->groups;
    p.tiles = h->tiles;
    p.values = Values(h->value_bytes);
    p.tileptr = reinterpret_cast<const uint64_t*>(blob + h->off_tileptr);
    p.scales = i8 ? reinterpret_cast<const float*>(blob + h->off_scales) : nullptr;
    p.qsums = i8 ? reinterpret_cast<const int32_t*>(blob + h->off_qsums) : nullptr;
    p.data = blob + h->off_data;
    if (p.tileptr[0] != 0 || p.tileptr[p.tiles] != records + h->nnz * h->value_bytes)
        throw std::runtime_error("sparse weight blob tile pointers do not add up");
    return p;
}

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::avx512: return "avx512";
        case Isa::avx2: return "avx2";
        default: return "scalar";
    }
}

Isa isa_from_name(const std::string& name) {
    if (name == "avx512") return Isa::avx512;
    if (name == "avx2") return Isa::avx2;
    if (name == "scalar") return Isa::scalar;
    throw std::runtime_error("unknown ISA '" + name + "' (choose avx512, avx2 or scalar)");
}

bool isa_supported(Isa isa) {
    __builtin_cpu_init();
    switch (isa) {
        case Isa::avx512:
            return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
        case Isa::avx2:
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
        default: return true;
    }
}

Isa best_isa() {
    if (isa_supported(Isa::avx512)) return Isa::avx512;
    if (isa_supported(Isa::avx2)) return Isa::avx2;
    return Isa::scalar;
}

void serial_for(size_t tasks, const std::function<void(size_t)>& f) {
    for (size_t t = 0; t < tasks; ++t) f(t);
}

void matmul(const Packed& w, const float* x, size_t m, float* y, Isa isa, const ParallelFor& parallel) {
    if (!isa_supported(isa)) throw std::runtime_error(std::string("this CPU cannot run the ") + isa_name(isa) + " path");
    if (m == 0 || w.n == 0) return;
    switch (isa) {
        case Isa::avx512: avx512::matmul(w, x, m, y, parallel); break;
        case Isa::avx2: avx2::matmul(w, x, m, y, parallel); break;
        default: scalar::matmul(w, x, m, y, parallel); break;
    }
}

const char* q8_path_name(Q8Path path) {
    switch (path) {
        case Q8Path::avx512_vnni: return "avx512_vnni";
        case Q8Path::avx2: return "avx2";
        default: return "scalar";
    }
}

bool q8_supported(Q8Path path) {
    __builtin_cpu_init();
    switch (path) {
        case Q8Path::avx512_vnni:
            return isa_supported(Isa::avx512) && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi2");
        case Q8Path::avx2: return isa_supported(Isa::avx2);
        default: return true;
    }
}

Q8Path best_q8_path() {
    if (q8_supported(Q8Path::avx512_vnni)) return Q8Path::avx512_vnni;
    if (q8_supported(Q8Path::avx2)) return Q8Path::avx2;
    return Q8Path::scalar;
}

Q8Path q8_path_for(Isa isa) {
    switch (isa) {
        case Isa::avx512: return q8_supported(Q8Path::avx512_vnni) ? Q8Path::avx512_vnni : Q8Path::avx2;
        case Isa::avx2: return Q8Path::avx2;
        default: return Q8Path::scalar;
    }
}

void quantize_rows(const float* x, size_t m, size_t k, size_t stride, uint8_t* xq, float* scale) {
    for (size_t i = 0; i < m; ++i) {
        const float* xi = x + i * k;
        float amax = 0.0f;
        for (size_t c = 0; c < k; ++c) amax = std::max(amax, std::fabs(xi[c]));
        scale[i] = amax > 0.0f && std::isfinite(amax) ? amax / kInt8Max : 1.0f;
        uint8_t* qi = xq + i * stride;
        for (size_t c = 0; c < k; ++c)
            qi[c] = uint8_t(int32_t(std::clamp(std::nearbyint(xi[c] / scale[i]), -kInt8Max, kInt8Max)) + kQ8Zero);
        std::fill(qi + k, qi + stride, uint8_t(kQ8Zero));
    }
}

void matmul_q8(const Packed& w, const float* x, size_t m, float* y, Q8Path path, const ParallelFor& parallel) {
    if (w.values != Values::i8) throw std::runtime_error("matmul_q8 needs a weight packed with int8 values");
    if (!q8_supported(path)) throw std::runtime_error(std::string("this CPU cannot run the ") + q8_path_name(path) + " path");
    if (m == 0 || w.n == 0) return;
    switch (path) {
        case Q8Path::avx512_vnni: avx512_vnni::matmul_q8(w, x, m, y, parallel); break;
        case Q8Path::avx2: avx2::matmul_q8(w, x, m, y, parallel); break;
        default: scalar::matmul_q8(w, x, m, y, parallel); break;
    }
}

namespace scalar {

namespace {

inline float value_at(const uint8_t* v, Values values) {
    if (values == Values::i8) return float(int8_t(*v));
    float f;
    std::memcpy(&f, v, sizeof f);
    return f;
}

// Every non-zero of tile t, in stored order: f(r, col, v) with r the row in the tile and v
// pointing at the stored value. The references below are this walk and their arithmetic.
template <class F>
void walk_tile(const Packed& w, size_t t, F&& f) {
    const size_t vb = size_t(w.values);
    const uint8_t* q = w.data + w.tileptr[t];
    for (size_t g = 0; g < w.groups; ++g) {
        const uint8_t* v = q + kRecordHead;
        for (size_t r = 0; r < kMaskRows; ++r)
            for (uint64_t bits = record_mask(q, r); bits; bits &= bits - 1, v += vb)
                f(r, g * kMaskChunks * kChunk + size_t(__builtin_ctzll(bits)), v);
        q = v;
    }
}

}  // namespace

// The reference: every other path is tested against this one. Tile by tile, group record by
// group record, row by row, set bit by set bit: no blocking, no tricks. int8 values are summed
// as integers-in-float and the row's sum scaled once, as the SIMD paths do.
void matmul(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel) {
    for_tiles(w, parallel, [&](size_t t) {
        std::vector<float> acc(m * kMaskRows, 0.0f);
        walk_tile(w, t, [&](size_t r, size_t col, const uint8_t* v) {
            const float value = value_at(v, w.values);
            for (size_t i = 0; i < m; ++i) acc[i * kMaskRows + r] += value * x[i * w.k + col];
        });
        for (size_t r = 0; r < kMaskRows && t * kMaskRows + r < w.n; ++r)
            for (size_t i = 0; i < m; ++i)
                y[i * w.n + t * kMaskRows + r] = acc[i * kMaskRows + r] * row_scale(w, t * kMaskRows + r);
    });
}

// The reference of matmul_q8: the same walk, integer sums.
void matmul_q8(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel) {
    const size_t stride = w.groups * kMaskChunks * kChunk;
    std::vector<uint8_t> xq(m * stride);
    std::vector<float> sx(m);
    quantize_rows(x, m, w.k, stride, xq.data(), sx.data());
    for_tiles(w, parallel, [&](size_t t) {
        std::vector<int64_t> dot(m * kMaskRows, 0);
        walk_tile(w, t, [&](size_t r, size_t col, const uint8_t* v) {
            for (size_t i = 0; i < m; ++i) dot[i * kMaskRows + r] += int64_t(int8_t(*v)) * xq[i * stride + col];
        });
        for (size_t r = 0; r < kMaskRows && t * kMaskRows + r < w.n; ++r) {
            const size_t n = t * kMaskRows + r;
            for (size_t i = 0; i < m; ++i)
                y[i * w.n + n] = sx[i] * w.scales[n] * float(dot[i * kMaskRows + r] - int64_t(kQ8Zero) * w.qsums[n]);
        }
    });
}

}  // namespace scalar
}  // namespace sparse_deploy
