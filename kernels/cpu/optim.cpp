// CPU multi-tensor optimizer kernels: one call updates a whole list of parameters.
#include <cmath>

#include "kernels/kernels.h"

namespace nala::kernels::cpu {

template <typename T>
void sum_of_squares(const TensorList<T>& list, T* out) {
  double total = 0;  // in double: the squares of millions of small gradients
  for (int t = 0; t < list.count; ++t) {
    const T* x = list.arrays[0][t];
    double partial = 0;
#pragma omp parallel for reduction(+ : partial) if (list.sizes[t] > (1 << 15))
    for (int64_t i = 0; i < list.sizes[t]; ++i) partial += double(x[i]) * double(x[i]);
    total += partial;
  }
  *out += static_cast<T>(total);
}

template <typename T>
void adamw_update(const TensorList<T>& list, const AdamWStep& s, const T* grad_scale) {
  const T scale = grad_scale ? *grad_scale : T(1);
  const T lr = T(s.lr), b1 = T(s.beta1), b2 = T(s.beta2), eps = T(s.eps);
  const T inv_bc1 = T(1 / s.bias_correction1), inv_bc2 = T(1 / s.bias_correction2);
  for (int t = 0; t < list.count; ++t) {
    T* p = list.arrays[0][t];
    const T* g = list.arrays[1][t];
    T* m = list.arrays[2][t];
    T* v = list.arrays[3][t];
    const T decay = T(1) - lr * list.weight_decay[t];
#pragma omp parallel for if (list.sizes[t] > (1 << 15))
    for (int64_t i = 0; i < list.sizes[t]; ++i) {
      T gi = g[i] * scale;
      m[i] = b1 * m[i] + (T(1) - b1) * gi;
      v[i] = b2 * v[i] + (T(1) - b2) * gi * gi;
      p[i] = p[i] * decay - lr * (m[i] * inv_bc1) / (std::sqrt(v[i] * inv_bc2) + eps);
    }
  }
}

template void sum_of_squares<float>(const TensorList<float>&, float*);
template void sum_of_squares<double>(const TensorList<double>&, double*);
template void adamw_update<float>(const TensorList<float>&, const AdamWStep&, const float*);
template void adamw_update<double>(const TensorList<double>&, const AdamWStep&, const double*);

}  // namespace nala::kernels::cpu
