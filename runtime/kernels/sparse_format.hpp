// The compressed weight of a sparse MatMul y = x · Wᵀ, and the kernels that read it.
//
// Format ("bitmap-16"): W is N x K (out x in). Each row is cut into chunks of 16 columns; a
// chunk is one uint16 bitmap (bit j: column 16c + j is non-zero) and the chunk's non-zeros are
// packed, in column order, into one values array shared by all rows. Bitmaps are grouped so
// that the one-row kernel reads them through one pointer: rows in tiles of kMaskRows, chunks in
// groups of kMaskChunks, laid out [tile][group][row in tile][chunk in group] (see mask_index;
// rows and chunks padded with empty bitmaps). Why: with one pointer per row the kernel ran out
// of registers and GCC spilled the row pointers (much slower in a throwaway microbenchmark). Bytes per logical weight:
// 2/16 = 0.125 for the bitmap + 4 (1 - s) for the values (+ 8/K for the row pointers): 1.33 at 70% instead of 4, a bandwidth ceiling of 3.0x over dense.
// Why a bitmap and not column indices: batch-1 decode is bound by the bytes it streams, and a
// bitmap is the cheapest index there is at the sparsities we serve (a 16-bit column index
// costs 2 (1 - s) bytes, more than 0.125 below 94% sparsity). AVX-512 expands a chunk's values
// with one instruction (vexpandps); AVX2 does it with a permute from a 256-entry table.
//
// Everything lives in one byte blob (64-byte aligned sections), so that a graph can carry the
// packed weight as one u8 constant: header, masks u16[N*C], rowptr u64[N+1], values
// f32[nnz + 16] (the padding lets a kernel load 16 values past the last one).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace sparse_deploy {

constexpr uint32_t kMagic = 0x31575053;  // "SPW1"
constexpr size_t kChunk = 16;            // columns per bitmap chunk
constexpr size_t kValuePad = 16;
constexpr size_t kMaskRows = 8;    // rows per bitmap tile
constexpr size_t kMaskChunks = 4;  // chunks per bitmap group (one u64 per row)

struct Header {
    uint32_t magic;
    uint32_t version;
    uint64_t n, k, chunks, nnz, mask_words;  // mask_words: u16 entries of the (padded) bitmap array
    uint64_t off_masks, off_rowptr, off_values, total;
};

// A read-only view of a packed blob (no copy).
struct Packed {
    const Header* h = nullptr;
    const uint16_t* masks = nullptr;
    const uint64_t* rowptr = nullptr;
    const float* values = nullptr;
    size_t n = 0, k = 0, chunks = 0, groups = 0;  // groups = chunks rounded up to kMaskChunks, / kMaskChunks
};

// Where the bitmap of (row n, chunk c) sits in the masks array.
inline size_t mask_index(size_t groups, size_t n, size_t c) {
    return (((n / kMaskRows) * groups + c / kMaskChunks) * kMaskRows + n % kMaskRows) * kMaskChunks + c % kMaskChunks;
}
inline uint32_t mask_at(const Packed& w, size_t n, size_t c) { return w.masks[mask_index(w.groups, n, c)]; }

// Pack a dense weight given as W (N x K, row-major) or as Wᵀ (K x N, row-major: how an ONNX
// MatMul stores it; transposed=true). Returns the blob.
std::vector<uint8_t> pack(const float* w, size_t n, size_t k, bool transposed);

// View a blob; throws std::runtime_error when it is not one (wrong magic, sizes that do not add up).
Packed view(const uint8_t* blob, size_t size);

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2 };
const char* isa_name(Isa isa);
Isa isa_from_name(const std::string& name);  // throws on an unknown name
Isa best_isa();                              // the widest this CPU runs
bool isa_supported(Isa isa);

// Runs f(task) for task in [0, tasks): the host's thread pool (ov::parallel_for in the
// extension), or a plain loop.
using ParallelFor = std::function<void(size_t tasks, const std::function<void(size_t)>& f)>;
void serial_for(size_t tasks, const std::function<void(size_t)>& f);

// y (M x N) = x (M x K) · Wᵀ. Rows of x and y are contiguous.
void matmul(const Packed& w, const float* x, size_t m, float* y, Isa isa, const ParallelFor& parallel);

// Per-ISA kernels (each in its own translation unit, compiled for its ISA).
namespace scalar {
void matmul(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel);
}
namespace avx2 {
void matmul(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel);
}
namespace avx512 {
void matmul(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel);
}

// Shared by the SIMD paths: the many-row kernels work on x transposed into column blocks.
constexpr size_t kRowTile = 64;       // rows of W per task (one-row path)
constexpr size_t kNTile = 256;            // rows of W per task (many-row path)
constexpr size_t kXtBudget = 32 * 1024;  // bytes of transposed x per block of K: in L1 (see many_rows.hpp)

}  // namespace sparse_deploy
