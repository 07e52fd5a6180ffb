// Packing, viewing, ISA dispatch and the scalar reference of the bitmap-16 sparse MatMul.
#include "sparse_format.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace sparse_deploy {
namespace {

size_t align64(size_t bytes) { return (bytes + 63) / 64 * 64; }

}  // namespace

std::vector<uint8_t> pack(const float* w, size_t n, size_t k, bool transposed) {
    const size_t chunks = (k + kChunk - 1) / kChunk;
    const size_t groups = (chunks + kMaskChunks - 1) / kMaskChunks;
    const size_t tiles = (n + kMaskRows - 1) / kMaskRows;
    constexpr size_t kGroupCols = kMaskChunks * kChunk;

    // Two passes over W in its stored order (Wᵀ is scanned along its rows, never strided):
    // bitmaps and counts per (row, group), then the values into their segments.
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
    const size_t data_floats = tiles * groups * kRecordHead + nnz + kValuePad;
    h.off_tileptr = align64(sizeof(Header));
    h.off_data = h.off_tileptr + align64((tiles + 1) * sizeof(uint64_t));
    h.total = h.off_data + align64(data_floats * sizeof(float));

    std::vector<uint8_t> blob(h.total, 0);
    std::memcpy(blob.data(), &h, sizeof(h));
    auto* tileptr = reinterpret_cast<uint64_t*>(blob.data() + h.off_tileptr);
    auto* data = reinterpret_cast<float*>(blob.data() + h.off_data);
    uint64_t pos = 0;  // in floats
    for (size_t t = 0; t < tiles; ++t) {
        tileptr[t] = pos;
        for (size_t g = 0; g < groups; ++g) {
            float* record = data + pos;
            pos += kRecordHead;
            for (size_t r = 0; r < kMaskRows; ++r) {
                const size_t row = t * kMaskRows + r;
                const uint64_t bits = row < n ? masks[row * groups + g] : 0;
                std::memcpy(record + 2 * r, &bits, sizeof bits);
                if (row < n) cursor[row * groups + g] = pos;
                pos += uint64_t(__builtin_popcountll(bits));
            }
        }
    }
    tileptr[tiles] = pos;
    visit([&](size_t row, size_t col, float v) {
        if (v != 0.0f) data[cursor[row * groups + col / kGroupCols]++] = v;
    });
    return blob;
}

Packed view(const uint8_t* blob, size_t size) {
    if (size < sizeof(Header)) throw std::runtime_error("sparse weight blob too small for its header");
    const auto* h = reinterpret_cast<const Header*>(blob);
    if (h->magic != kMagic) throw std::runtime_error("not a sparse weight blob (bad magic)");
    if (h->version != kVersion)
        throw std::runtime_error("sparse weight blob of format version " + std::to_string(h->version) + ", this library reads " +
                                 std::to_string(kVersion));
    const uint64_t records = h->tiles * h->groups * kRecordHead;
    if (h->total != size || h->chunks != (h->k + kChunk - 1) / kChunk ||
        h->groups != (h->chunks + kMaskChunks - 1) / kMaskChunks || h->tiles != (h->n + kMaskRows - 1) / kMaskRows ||
        h->off_tileptr + (h->tiles + 1) * sizeof(uint64_t) > h->off_data ||
        h->off_data + (records + h->nnz + kValuePad) * sizeof(float) > size)
        throw std::runtime_error("sparse weight blob sizes do not add up");
    Packed p;
    p.h = h;
    p.n = h->n;
    p.k = h->k;
    p.chunks = h->chunks;
    p.groups = h->groups;
    p.tiles = h->tiles;
    p.tileptr = reinterpret_cast<const uint64_t*>(blob + h->off_tileptr);
    p.data = reinterpret_cast<const float*>(blob + h->off_data);
    if (p.tileptr[0] != 0 || p.tileptr[p.tiles] != records + h->nnz)
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

namespace scalar {

// The reference: every other path is tested against this one. Tile by tile, group record by
// group record, row by row, set bit by set bit: no blocking, no tricks.
void matmul(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel) {
    const size_t per_task = kRowTile / kMaskRows;
    parallel((w.tiles + per_task - 1) / per_task, [&](size_t task) {
        std::vector<float> acc(m * kMaskRows);
        for (size_t t = task * per_task; t < std::min(w.tiles, (task + 1) * per_task); ++t) {
            std::fill(acc.begin(), acc.end(), 0.0f);
            const float* q = w.data + w.tileptr[t];
            for (size_t g = 0; g < w.groups; ++g) {
                const float* v = q + kRecordHead;
                for (size_t r = 0; r < kMaskRows; ++r) {
                    uint64_t bits = record_mask(q, r);
                    while (bits) {
                        const size_t col = g * kMaskChunks * kChunk + size_t(__builtin_ctzll(bits));
                        for (size_t i = 0; i < m; ++i) acc[i * kMaskRows + r] += *v * x[i * w.k + col];
                        ++v;
                        bits &= bits - 1;
                    }
                }
                q = v;
            }
            for (size_t r = 0; r < kMaskRows && t * kMaskRows + r < w.n; ++r)
                for (size_t i = 0; i < m; ++i) y[i * w.n + t * kMaskRows + r] = acc[i * kMaskRows + r];
        }
    });
}

}  // namespace scalar
}  // namespace sparse_deploy
