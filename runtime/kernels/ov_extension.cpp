// The OpenVINO side: a SparseMatMul op that runs the bitmap-16 kernels, and a conversion
// extension that takes over the ONNX frontend's MatMul. A MatMul whose second input is a 2-D
// f32 constant with at least SPARSE_DEPLOY_OV_MIN_SPARSITY zeros becomes
// SparseMatMul(x, packed) with the weight packed once, here, when the model is read; every
// other MatMul (attention, OATS's dense low-rank factors, OSSCAR's sliced weights, weights
// too dense to gain) stays OpenVINO's own. So one standard ONNX file serves ONNX Runtime,
// DeepSparse and OpenVINO alike: no custom-domain nodes in the artifact.
//
// int8: a weight whose every row lies on its symmetric int8 grid (quantized per output channel
// by the pipeline's quantize step and stored dequantized in the artifact, so that every other
// runtime reads plain f32) is packed with int8 values: a quarter of the value bytes. With up to
// kQ8MaxRows rows of x (decode, small batches; every count on AVX-512 VNNI) it runs matmul_q8:
// x quantized per row when called, integer dot products, as ONNX Runtime's quantize_dynamic
// does; with more rows (prefill) on the other paths the f32 many-row kernel widens the int8
// values once per tile and keeps x in f32.
// An on-grid weight too dense for the sparse op (a 50% model's MatMuls below the threshold, an
// int8 lm_head) becomes OpenVINO's own int8 weight compression instead: an i8 constant ->
// Convert -> Multiply by the per-output-channel scale, the pattern its CPU plugin runs as a
// compressed FullyConnected, as `openvino-int8` runs every weight of the dense model: left f32,
// such a weight would stream four times the bytes of the int8 baselines it is compared with.
// SPARSE_DEPLOY_OV_VALUES=f32 keeps every weight f32 (the activations are then never rounded).
//
// Environment, read at conversion time:
//   SPARSE_DEPLOY_OV_MIN_SPARSITY  share of zeros from which a weight goes sparse (default below)
//   SPARSE_DEPLOY_OV_ISA           auto | avx512 | avx2 | scalar (auto: the widest this CPU runs)
//   SPARSE_DEPLOY_OV_VALUES        auto (default: on-grid weights int8) | f32
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/core/parallel.hpp>
#include <openvino/frontend/onnx/extension/conversion.hpp>
#include <openvino/op/constant.hpp>
#include <openvino/op/convert.hpp>
#include <openvino/op/matmul.hpp>
#include <openvino/op/multiply.hpp>
#include <openvino/op/op.hpp>

#include "sparse_format.hpp"

namespace sparse_deploy {

// Rows of x up to which an int8 weight runs matmul_q8 (x quantized, integer dots) rather than
// the f32 many-row kernel: matmul_q8 re-reads each tile per row of x, the many-row kernel decodes
// it once for all of them. On AVX2 the two were close at 8 rows (benchmarks/results/int8_kernels.md:
// 89.7 vs 80.7 ms on the chain at 70%) and matmul_q8 2x slower at 16 (a throwaway run).
constexpr size_t kQ8MaxRows = 8;

// Rows of x up to which an int8 weight runs matmul_q8 on `path`: every count on AVX-512 VNNI,
// whose many-row kernel expands each tile of W once and runs the dense int8 product on it
// (avx512_vnni.cpp); kQ8MaxRows on the others, which re-read the tile per row of x.
size_t q8_max_rows(Q8Path path) { return path == Q8Path::avx512_vnni ? SIZE_MAX : kQ8MaxRows; }

// The fallback when SPARSE_DEPLOY_OV_MIN_SPARSITY is not set; sparse-deploy always sets it, per
// graph flavour, from runtime/openvino_runner.py (chosen from the kernel sweep): MIN_SPARSITY, the
// same as this, for prefill and encoder graphs, MIN_SPARSITY_DECODE for decode graphs.
constexpr double kDefaultMinSparsity = 0.5;

void ov_parallel(size_t tasks, const std::function<void(size_t)>& f) {
    ov::parallel_for(tasks, [&](size_t t) { f(t); });
}

class SparseMatMul : public ov::op::Op {
public:
    OPENVINO_OP("SparseMatMul", "sparse_deploy");

    SparseMatMul() = default;
    SparseMatMul(const ov::Output<ov::Node>& x, const ov::Output<ov::Node>& packed, int64_t n, int64_t k,
                 std::string isa, std::string weight, std::string values, std::string q8)
        : Op({x, packed}),
          m_n(n),
          m_k(k),
          m_isa(std::move(isa)),
          m_weight(std::move(weight)),
          m_values(std::move(values)),
          m_q8(std::move(q8)) {
        constructor_validate_and_infer_types();
    }

    void validate_and_infer_types() override {
        ov::PartialShape shape = get_input_partial_shape(0);
        if (shape.rank().is_static()) {
            const auto rank = shape.rank().get_length();
            NODE_VALIDATION_CHECK(this, rank >= 1, "SparseMatMul needs x of rank >= 1");
            NODE_VALIDATION_CHECK(this, shape[rank - 1].compatible(m_k), "SparseMatMul: x's last dimension is not ", m_k);
            if (rank == 1)
                shape = ov::PartialShape{m_n};
            else
                shape[rank - 1] = m_n;
        }
        set_output_type(0, get_input_element_type(0), shape);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        check_new_args_count(this, args);
        return std::make_shared<SparseMatMul>(args[0], args[1], m_n, m_k, m_isa, m_weight, m_values, m_q8);
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("n", m_n);
        visitor.on_attribute("k", m_k);
        visitor.on_attribute("isa", m_isa);
        visitor.on_attribute("weight", m_weight);
        visitor.on_attribute("values", m_values);
        visitor.on_attribute("q8", m_q8);
        return true;
    }

    bool has_evaluate() const override { return true; }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const ov::Tensor& x = inputs[0];
        const ov::Tensor& blob = inputs[1];
        const Packed w = view(static_cast<const uint8_t*>(blob.data()), blob.get_byte_size());
        ov::Shape out_shape = x.get_shape();
        if (out_shape.empty()) return false;
        const size_t m = ov::shape_size(out_shape) / size_t(m_k);
        out_shape.back() = size_t(m_n);
        outputs[0].set_shape(out_shape);
        const Isa isa = isa_from_name(m_isa);
        if (w.values == Values::i8 && m <= q8_max_rows(q8_path_for(isa)))
            matmul_q8(w, x.data<const float>(), m, outputs[0].data<float>(), q8_path_for(isa), ov_parallel);
        else
            matmul(w, x.data<const float>(), m, outputs[0].data<float>(), isa, ov_parallel);
        return true;
    }

private:
    int64_t m_n = 0, m_k = 0;
    std::string m_isa = "scalar";
    std::string m_weight;
    std::string m_values = "f32";  // how the packed weight stores its non-zeros: f32 or int8
    std::string m_q8;              // int8 values: the matmul_q8 path of small batches (empty for f32)
};

namespace {

double min_sparsity() {
    const char* s = std::getenv("SPARSE_DEPLOY_OV_MIN_SPARSITY");
    return s && *s ? std::atof(s) : kDefaultMinSparsity;
}

bool int8_values() {
    const char* s = std::getenv("SPARSE_DEPLOY_OV_VALUES");
    const std::string name = s && *s ? s : "auto";
    if (name != "auto" && name != "f32") throw std::runtime_error("SPARSE_DEPLOY_OV_VALUES=" + name + ": choose auto or f32");
    return name == "auto";
}

std::string chosen_isa() {
    const char* s = std::getenv("SPARSE_DEPLOY_OV_ISA");
    const std::string name = s && *s ? s : "auto";
    if (name == "auto") return isa_name(best_isa());
    const Isa isa = isa_from_name(name);
    if (!isa_supported(isa)) throw std::runtime_error("SPARSE_DEPLOY_OV_ISA=" + name + ": this CPU cannot run it");
    return name;
}

// Wᵀ (K x N, on its per-output-channel int8 grid) as OpenVINO's int8 weight compression holds it.
ov::Output<ov::Node> dense_int8_weight(const float* wt, size_t n, size_t k) {
    const Int8Dense q = quantize_dense(wt, n, k, /*transposed=*/true);
    auto values = std::make_shared<ov::op::v0::Constant>(ov::element::i8, ov::Shape{k, n}, q.values.data());
    auto scales = std::make_shared<ov::op::v0::Constant>(ov::element::f32, ov::Shape{1, n}, q.scales.data());
    return std::make_shared<ov::op::v1::Multiply>(std::make_shared<ov::op::v0::Convert>(values, ov::element::f32), scales);
}

ov::OutputVector convert_matmul(const ov::frontend::NodeContext& ctx) {
    const ov::Output<ov::Node> x = ctx.get_input(0), b = ctx.get_input(1);
    const auto weight = ov::as_type_ptr<ov::op::v0::Constant>(b.get_node_shared_ptr());
    if (weight && weight->get_element_type() == ov::element::f32 && weight->get_shape().size() == 2) {
        const size_t k = weight->get_shape()[0], n = weight->get_shape()[1];
        const float* data = weight->get_data_ptr<float>();
        size_t zeros = 0;
        for (size_t i = 0; i < k * n; ++i) zeros += data[i] == 0.0f;
        const bool i8 = k * n > 0 && int8_values() && int8_grid(data, n, k, /*transposed=*/true);
        if (k * n > 0 && double(zeros) / double(k * n) >= min_sparsity()) {
            const std::vector<uint8_t> blob = pack(data, n, k, /*transposed=*/true, i8 ? Values::i8 : Values::f32);
            auto packed = std::make_shared<ov::op::v0::Constant>(ov::element::u8, ov::Shape{blob.size()}, blob.data());
            const std::string isa = chosen_isa();
            auto op = std::make_shared<SparseMatMul>(x, packed, int64_t(n), int64_t(k), isa, weight->get_friendly_name(),
                                                     i8 ? "int8" : "f32",
                                                     i8 ? q8_path_name(q8_path_for(isa_from_name(isa))) : "");
            return {op};
        }
        if (i8) return {std::make_shared<ov::op::v0::MatMul>(x, dense_int8_weight(data, n, k))};
    }
    return {std::make_shared<ov::op::v0::MatMul>(x, b)};
}

}  // namespace
}  // namespace sparse_deploy

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>(
    {std::make_shared<ov::OpExtension<sparse_deploy::SparseMatMul>>(),
     std::make_shared<ov::frontend::onnx::ConversionExtension>("MatMul", sparse_deploy::convert_matmul)}));
