// A C interface to the kernels for tests and the kernel sweep (ctypes), outside any graph.
// Errors come back as a non-zero status and sd_last_error().
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>

#include "sparse_format.hpp"

namespace sparse_deploy {
void ov_parallel(size_t tasks, const std::function<void(size_t)>& f);  // ov_extension.cpp
}

namespace {
thread_local std::string last_error;

// Runs f; an exception becomes status 1 and sd_last_error().
template <class F>
int guarded(F&& f) {
    try {
        f();
        return 0;
    } catch (const std::exception& e) {
        last_error = e.what();
        return 1;
    }
}

sparse_deploy::ParallelFor pool(int threaded) {
    return threaded ? sparse_deploy::ParallelFor(sparse_deploy::ov_parallel) : sparse_deploy::ParallelFor(sparse_deploy::serial_for);
}
}  // namespace

extern "C" {

const char* sd_last_error() { return last_error.c_str(); }
int sd_isa_supported(int isa) { return sparse_deploy::isa_supported(sparse_deploy::Isa(isa)) ? 1 : 0; }
int sd_best_isa() { return int(sparse_deploy::best_isa()); }

// Packs W (n x k, or k x n when transposed) into a new blob with value_bytes 4 (f32) or 1
// (int8 per row); *size receives its length.
uint8_t* sd_pack(const float* w, size_t n, size_t k, int transposed, int value_bytes, size_t* size) {
    try {
        if (value_bytes != 4 && value_bytes != 1) throw std::runtime_error("value_bytes must be 4 (f32) or 1 (int8)");
        const std::vector<uint8_t> blob =
            sparse_deploy::pack(w, n, k, transposed != 0, sparse_deploy::Values(uint32_t(value_bytes)));
        auto* out = static_cast<uint8_t*>(std::malloc(blob.size()));
        if (!out) throw std::bad_alloc();
        std::memcpy(out, blob.data(), blob.size());
        *size = blob.size();
        return out;
    } catch (const std::exception& e) {
        last_error = e.what();
        return nullptr;
    }
}

void sd_free(uint8_t* blob) { std::free(blob); }

int sd_q8_supported(int path) { return sparse_deploy::q8_supported(sparse_deploy::Q8Path(path)) ? 1 : 0; }

// y (m x n) = x (m x k) · Wᵀ with x quantized per row to 8 bits (matmul_q8); needs int8 values.
int sd_matmul_q8(const uint8_t* blob, size_t size, const float* x, size_t m, float* y, int path, int threaded) {
    return guarded([&] {
        sparse_deploy::matmul_q8(sparse_deploy::view(blob, size), x, m, y, sparse_deploy::Q8Path(path), pool(threaded));
    });
}

// 1 when every row of W lies on its per-row int8 grid (sparse_format.hpp: int8_grid).
int sd_int8_grid(const float* w, size_t n, size_t k, int transposed) {
    return sparse_deploy::int8_grid(w, n, k, transposed != 0) ? 1 : 0;
}

// y (m x n) = x (m x k) · Wᵀ on the given ISA path; threaded=0 runs on the calling thread.
int sd_matmul(const uint8_t* blob, size_t size, const float* x, size_t m, float* y, int isa, int threaded) {
    return guarded(
        [&] { sparse_deploy::matmul(sparse_deploy::view(blob, size), x, m, y, sparse_deploy::Isa(isa), pool(threaded)); });
}

// *sum = the sum (mod 2^64) of n 64-bit words, read in `tasks` contiguous slices on the pool: a
// plain streaming read, the most a one-row kernel that reads each weight byte once can stream on
// this machine (the kernel sweep's read-loop cell, benchmarks/openvino_sparse_kernels.py). Four
// accumulators per slice, so that the loop waits on loads, not on one chain of adds.
int sd_stream_read(const uint64_t* data, size_t n, size_t tasks, int threaded, uint64_t* sum) {
    return guarded([&] {
        if (tasks == 0) throw std::runtime_error("tasks must be >= 1");
        std::vector<uint64_t> partial(tasks, 0);
        pool(threaded)(tasks, [&](size_t t) {
            const size_t end = n * (t + 1) / tasks;
            uint64_t a = 0, b = 0, c = 0, d = 0;
            size_t i = n * t / tasks;
            for (; i + 4 <= end; i += 4) {
                a += data[i];
                b += data[i + 1];
                c += data[i + 2];
                d += data[i + 3];
            }
            for (; i < end; ++i) a += data[i];
            partial[t] = a + b + c + d;
        });
        *sum = std::accumulate(partial.begin(), partial.end(), uint64_t{0});
    });
}

}  // extern "C"
