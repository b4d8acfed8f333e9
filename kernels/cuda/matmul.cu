// Batched GEMM through cuBLAS.
//
// cuBLAS is column-major, and a row-major matrix read as column-major is its transpose. So the
// row-major C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T: B and A swap
// places, m and n swap, and each keeps its own transpose flag and leading dimension.
#include <algorithm>
#include <climits>
#include <stdexcept>
#include <string>

#include "kernels/cuda/cuda_check.h"
#include "kernels/kernels.h"

namespace nala::kernels::cuda {

namespace {

// cuBLAS's data and compute types for T. float uses TF32 tensor cores when allowed.
template <typename T>
struct CublasTypes;

template <>
struct CublasTypes<float> {
  static constexpr cudaDataType_t data = CUDA_R_32F;
  static cublasComputeType_t compute() {
    return allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  }
};

template <>
struct CublasTypes<double> {
  static constexpr cudaDataType_t data = CUDA_R_64F;
  static cublasComputeType_t compute() { return CUBLAS_COMPUTE_64F; }
};

// cuBLAS takes sizes and leading dimensions as int.
int to_int(int64_t value, const char* name) {
  if (value < 0 || value > INT_MAX)
    throw std::invalid_argument(std::string("gemm: ") + name + " = " + std::to_string(value) +
                                " is outside cuBLAS's int range");
  return static_cast<int>(value);
}

// cuBLAS rejects a leading dimension below 1, which an empty (k == 0) operand may have.
int to_leading_dim(int64_t ld, const char* name) { return to_int(std::max<int64_t>(ld, 1), name); }

cublasOperation_t to_op(bool transpose) { return transpose ? CUBLAS_OP_T : CUBLAS_OP_N; }

}  // namespace

// With k == 0 cuBLAS still scales C by beta (writing zeros when beta == 0).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, int64_t stride_a, const T* b, int64_t ldb, int64_t stride_b, T beta, T* c,
          int64_t ldc, int64_t stride_c, int64_t batch) {
  if (m == 0 || n == 0 || batch == 0) return;
  using Types = CublasTypes<T>;
  NALA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      cublas_handle(), to_op(trans_b), to_op(trans_a), to_int(n, "n"), to_int(m, "m"),
      to_int(k, "k"), &alpha, b, Types::data, to_leading_dim(ldb, "ldb"), stride_b, a, Types::data,
      to_leading_dim(lda, "lda"), stride_a, &beta, c, Types::data, to_leading_dim(ldc, "ldc"),
      stride_c, to_int(batch, "batch"), Types::compute(), CUBLAS_GEMM_DEFAULT));
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          int64_t, const float*, int64_t, int64_t, float, float*, int64_t, int64_t,
                          int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           int64_t, const double*, int64_t, int64_t, double, double*, int64_t,
                           int64_t, int64_t);

}  // namespace nala::kernels::cuda
