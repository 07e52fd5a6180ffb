// Packing, viewing, ISA dispatch and the scalar reference of the bitmap-16 sparse MatMul.
#include "sparse_format.hpp"

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
    auto at = [&](size_t row, size_t col) { return transposed ? w[col * n + row] : w[row * k + col]; };

    // Bitmaps first, scanning the stored layout row-major (Wᵀ is scanned along its rows).
    std::vector<uint16_t> masks(tiles * groups * kMaskRows * kMaskChunks, 0);
    std::vector<uint64_t> count(n, 0);
    if (transposed) {
        for (size_t col = 0; col < k; ++col)
            for (size_t row = 0; row < n; ++row)
                if (w[col * n + row] != 0.0f) {
                    masks[mask_index(groups, row, col / kChunk)] |= uint16_t(1u << (col % kChunk));
                    ++count[row];
                }
    } else {
        for (size_t row = 0; row < n; ++row)
            for (size_t col = 0; col < k; ++col)
                if (w[row * k + col] != 0.0f) {
                    masks[mask_index(groups, row, col / kChunk)] |= uint16_t(1u << (col % kChunk));
                    ++count[row];
                }
    }
    uint64_t nnz = 0;
    for (size_t row = 0; row < n; ++row) nnz += count[row];

    Header h{};
    h.magic = kMagic;
    h.version = 1;
    h.n = n;
    h.k = k;
    h.chunks = chunks;
    h.nnz = nnz;
    h.mask_words = masks.size();
    h.off_masks = align64(sizeof(Header));
    h.off_rowptr = h.off_masks + align64(masks.size() * sizeof(uint16_t));
    h.off_values = h.off_rowptr + align64((n + 1) * sizeof(uint64_t));
    h.total = h.off_values + align64((nnz + kValuePad) * sizeof(float));

    std::vector<uint8_t> blob(h.total, 0);
    std::memcpy(blob.data(), &h, sizeof(h));
    std::memcpy(blob.data() + h.off_masks, masks.data(), masks.size() * sizeof(uint16_t));
    auto* rowptr = reinterpret_cast<uint64_t*>(blob.data() + h.off_rowptr);
    auto* values = reinterpret_cast<float*>(blob.data() + h.off_values);
    rowptr[0] = 0;
    for (size_t row = 0; row < n; ++row) rowptr[row + 1] = rowptr[row] + count[row];
    std::vector<uint64_t> cursor(rowptr, rowptr + n);
    if (transposed) {
        for (size_t col = 0; col < k; ++col)
            for (size_t row = 0; row < n; ++row) {
                const float v = w[col * n + row];
                if (v != 0.0f) values[cursor[row]++] = v;
            }
    } else {
        for (size_t row = 0; row < n; ++row)
            for (size_t col = 0; col < k; ++col) {
                const float v = at(row, col);
                if (v != 0.0f) values[cursor[row]++] = v;
            }
    }
    return blob;
}

Packed view(const uint8_t* blob, size_t size) {
    if (size < sizeof(Header)) throw std::runtime_error("sparse weight blob too small for its header");
    const auto* h = reinterpret_cast<const Header*>(blob);
    if (h->magic != kMagic || h->version != 1) throw std::runtime_error("not a sparse weight blob (bad magic)");
    if (h->total != size || h->chunks != (h->k + kChunk - 1) / kChunk ||
        h->mask_words != ((h->n + kMaskRows - 1) / kMaskRows) * ((h->chunks + kMaskChunks - 1) / kMaskChunks) *
                             kMaskRows * kMaskChunks ||
        h->off_masks + h->mask_words * sizeof(uint16_t) > h->off_rowptr ||
        h->off_rowptr + (h->n + 1) * sizeof(uint64_t) > h->off_values ||
        h->off_values + (h->nnz + kValuePad) * sizeof(float) > size)
        throw std::runtime_error("sparse weight blob sizes do not add up");
    Packed p;
    p.h = h;
    p.n = h->n;
    p.k = h->k;
    p.chunks = h->chunks;
    p.groups = (h->chunks + kMaskChunks - 1) / kMaskChunks;
    p.masks = reinterpret_cast<const uint16_t*>(blob + h->off_masks);
    p.rowptr = reinterpret_cast<const uint64_t*>(blob + h->off_rowptr);
    p.values = reinterpret_cast<const float*>(blob + h->off_values);
    if (p.rowptr[p.n] != h->nnz) throw std::runtime_error("sparse weight blob row pointers do not add up");
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

// The reference: every other path is tested against this one. Row by row, chunk by chunk,
// set bit by set bit: no tiling, no tricks.
void matmul(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel) {
    const size_t tasks = (w.n + kRowTile - 1) / kRowTile;
    parallel(tasks, [&](size_t t) {
        const size_t n0 = t * kRowTile, n1 = std::min(w.n, n0 + kRowTile);
        for (size_t n = n0; n < n1; ++n) {
            for (size_t r = 0; r < m; ++r) {
                const float* xr = x + r * w.k;
                const float* v = w.values + w.rowptr[n];
                float acc = 0.0f;
                for (size_t c = 0; c < w.chunks; ++c) {
                    uint32_t bits = mask_at(w, n, c);
                    while (bits) {
                        const unsigned j = unsigned(__builtin_ctz(bits));
                        acc += *v++ * xr[c * kChunk + j];
                        bits &= bits - 1;
                    }
                }
                y[r * w.n + n] = acc;
            }
        }
    });
}

}  // namespace scalar
}  // namespace sparse_deploy
