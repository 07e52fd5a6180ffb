// The compressed weight of a sparse MatMul y = x · Wᵀ, and the kernels that read it.
//
// Format ("bitmap-16", version 2): W is N x K (out x in). Each row is cut into chunks of 16
// columns; a chunk is one uint16 bitmap (bit j: column 16c + j is non-zero) and its non-zeros
// are packed in column order. Rows come in tiles of kMaskRows (8), columns in groups of
// kMaskChunks (4) chunks, and the weight is one stream of group records, tile by tile:
//
//   tile t, group g:  8 x u64 bitmaps (row r's four chunk bitmaps, chunk j in bits 16j..16j+15)
//                     then row 0's non-zeros of the group, row 1's, ..., row 7's
//
// The non-zeros are f32, or int8 with one f32 scale per row (w = scale[n] * q, symmetric,
// |q| <= 127): Values::i8, for weights that were quantized that way (issue: sparse + int8).
//
// Why one stream: the one-row kernel reads a tile front to back, so the hardware and one
// software prefetch pointer see a single sequential stream per thread. With the bitmaps in
// their own array and a value stream per row (version 1: nine streams per thread) the same
// kernel waited on memory far below the bandwidth a dense loop gets (the kernel sweep before
// and after: benchmarks/results/openvino_sparse_kernels.md). Bytes per logical weight: 2/16 =
// 0.125 for the bitmaps + 4 (1 - s) for f32 values, 1 (1 - s) for int8 ones (+ 1/K for the
// tile pointers, 4/K for int8's scales): 1.33 at 70% instead of 4 (a bandwidth ceiling of
// 3.0x over dense f32), 0.43 with int8 values (2.35x over dense int8).
// Why a bitmap and not column indices: batch-1 decode is bound by the bytes it streams, and a
// bitmap is the cheapest index there is at the sparsities we serve (a 16-bit column index
// costs 2 (1 - s) bytes, more than 0.125 below 94% sparsity). AVX-512 expands a chunk's values
// under the bitmap with one instruction (vexpandps); AVX2 permutes from a 256-entry table.
//
// Everything lives in one byte blob (64-byte aligned sections), so that a graph can carry the
// packed weight as one u8 constant: header, tileptr u64[tiles + 1] (byte offsets of the tiles'
// first records), scales f32[N] and qsums i32[N] (int8 only), data (records + kDataPad bytes: the padding
// lets a kernel load 64 bytes from its last value on). Rows past N in the last tile and chunks
// past K in the last group have empty bitmaps.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace sparse_deploy {

constexpr uint32_t kMagic = 0x31575053;  // "SPW1"
constexpr uint32_t kVersion = 2;
constexpr size_t kChunk = 16;            // columns per bitmap chunk
constexpr size_t kDataPad = 64;  // bytes after the last value: a kernel loads up to 64 from a value on
constexpr size_t kMaskRows = 8;    // rows per tile
constexpr size_t kMaskChunks = 4;  // chunks per group (one u64 of bitmaps per row)
constexpr size_t kRecordHead = kMaskRows * sizeof(uint64_t);  // bytes of bitmaps per record

// How the non-zeros are stored (the value: bytes per non-zero).
enum class Values : uint32_t { f32 = 4, i8 = 1 };

struct Header {
    uint32_t magic;
    uint32_t version;
    uint64_t n, k, chunks, nnz, tiles, groups, value_bytes;
    uint64_t off_tileptr, off_scales, off_qsums, off_data, total;
};

// A read-only view of a packed blob (no copy).
struct Packed {
    const Header* h = nullptr;
    const uint64_t* tileptr = nullptr;
    const uint8_t* data = nullptr;
    const float* scales = nullptr;  // int8 values only
    const int32_t* qsums = nullptr;  // int8 values only: per row, the sum of its int8 values (for matmul_q8)
    Values values = Values::f32;
    size_t n = 0, k = 0, chunks = 0, groups = 0, tiles = 0;
};

// Internal linkage on purpose: each ISA file compiles its own copy of these with its own
// instruction set, so the linker can never hand a wide build of a helper to the scalar path.
namespace {

// Row r's four chunk bitmaps in the group record at q.
inline uint64_t record_mask(const uint8_t* q, size_t r) {
    uint64_t bits;
    std::memcpy(&bits, q + sizeof(uint64_t) * r, sizeof bits);
    return bits;
}

// Where each row's non-zeros (of type V) start in the group record at q (p[kMaskRows]: the
// next record).
template <class V>
inline void record_rows(const uint8_t* q, const V* p[kMaskRows + 1]) {
    p[0] = reinterpret_cast<const V*>(q + kRecordHead);
    for (size_t r = 0; r < kMaskRows; ++r) p[r + 1] = p[r] + __builtin_popcountll(record_mask(q, r));
}

// A tile is one stream: ask for every line of it once, `ahead` bytes before the reader
// reaches it (`next`: the first line not yet asked for; `end`: where the reader is now).
inline void prefetch_ahead(const char*& next, const void* end, size_t ahead) {
    for (const char* target = static_cast<const char*>(end) + ahead; next < target; next += 64)
        __builtin_prefetch(next, 0, 3);
}

// The scale of row n's values (1 for f32 values).
inline float row_scale(const Packed& w, size_t n) { return w.scales ? w.scales[n] : 1.0f; }

}  // namespace

// Pack a dense weight given as W (N x K, row-major) or as Wᵀ (K x N, row-major: how an ONNX
// MatMul stores it; transposed=true). Returns the blob. Values::i8 rounds each row to the
// grid scale * q with scale = max |w[n, :]| / 127: exact for a weight already on that grid
// (int8_grid), a round-to-nearest quantization otherwise.
std::vector<uint8_t> pack(const float* w, size_t n, size_t k, bool transposed, Values values = Values::f32);

// Whether every row of W lies on its int8 grid (above), to within float rounding: a weight that
// was quantized per row, symmetric, and stored dequantized (how the artifact carries it).
bool int8_grid(const float* w, size_t n, size_t k, bool transposed);

// A weight on its per-row int8 grid kept dense (too few zeros for the bitmap format): its int8
// values in W's stored order and one scale per row (the same rounding as pack's Values::i8).
struct Int8Dense {
    std::vector<int8_t> values;
    std::vector<float> scales;
};
Int8Dense quantize_dense(const float* w, size_t n, size_t k, bool transposed);

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

// y (M x N) = x (M x K) · Wᵀ for int8 values with x quantized too, row by row, when called
// (dynamic, like ONNX Runtime's quantize_dynamic: scale max |x_i| / 127, u8 with zero point
// 128): integer dot products, y = scale_x * scale_w * (Σ xq q - 128 Σ q). Not the same numbers
// as matmul: the activations are rounded to 8 bits. Why: with f32 activations, widening int8
// values to floats costs more per chunk than the bytes they save (docs/kernels.md); an integer
// dot product over a whole group (vpcompressb + vpdpbusd) does 64 columns in three instructions,
// and AVX2 (vpshufb + vpmaddubsw, avx2.cpp) 32 columns in about twelve.
enum class Q8Path { scalar = 0, avx512_vnni = 1, avx2 = 2 };
const char* q8_path_name(Q8Path path);
bool q8_supported(Q8Path path);
Q8Path best_q8_path();
Q8Path q8_path_for(Isa isa);  // the int8 path that goes with an f32 one (avx512 -> avx512_vnni where the CPU has it)
void matmul_q8(const Packed& w, const float* x, size_t m, float* y, Q8Path path, const ParallelFor& parallel);

// x's rows quantized for matmul_q8: xq (m x stride bytes, columns past k left at the zero
// point) and one scale per row.
void quantize_rows(const float* x, size_t m, size_t k, size_t stride, uint8_t* xq, float* scale);
constexpr int32_t kQ8Zero = 128;

namespace scalar {
void matmul_q8(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel);
}
namespace avx2 {
void matmul_q8(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel);
}
namespace avx512_vnni {
void matmul_q8(const Packed& w, const float* x, size_t m, float* y, const ParallelFor& parallel);
}

// Shared by the SIMD paths: the many-row kernels work on x transposed into column blocks.
constexpr size_t kRowTile = 64;       // rows of W per task (one-row path): whole tiles
constexpr size_t kNTile = 256;            // rows of W per task (many-row path)
constexpr size_t kXtBudget = 32 * 1024;  // bytes of transposed x per block of K: in L1 (see many_rows.hpp)

// Internal linkage, as above: the tile loop and value-type dispatch every path shares.
namespace {

// Runs f(tile) for every tile of W, in tasks of kRowTile rows on `parallel`.
template <class F>
inline void for_tiles(const Packed& w, const ParallelFor& parallel, F&& f) {
    const size_t per_task = kRowTile / kMaskRows;
    parallel((w.tiles + per_task - 1) / per_task, [&](size_t task) {
        for (size_t t = task * per_task; t < std::min(w.tiles, (task + 1) * per_task); ++t) f(t);
    });
}

// Calls f(V{}) with V the blob's value type (float or int8_t).
template <class F>
inline void with_values(const Packed& w, F&& f) {
    if (w.values == Values::i8)
        f(int8_t{});
    else
        f(float{});
}

}  // namespace

}  // namespace sparse_deploy
