// Finite-difference gradient checking.
//
// gradcheck(f, inputs) compares, for every input that requires grad, the gradient that
// backward() computes against central differences (L(x + h) - L(x - h)) / 2h of the scalar
// L = sum(f(inputs) * r), r a fixed random weighting of the output. Run it in float64.
#pragma once

#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace nala {

using TensorFn = std::function<Tensor(const std::vector<Tensor>&)>;

struct GradcheckResult {
  bool passed = true;
  double worst_error = 0.0;  // max |analytic - numeric| / max(|analytic|, |numeric|, 1)
  std::string worst;         // where: input, index, both values
};

GradcheckResult gradcheck(const TensorFn& f, const std::vector<Tensor>& inputs, double step = 1e-6,
                          double tolerance = 1e-6);

// One entry of the table `nala gradcheck` prints: an op applied to inputs made for a device.
struct GradcheckCase {
  std::string name;
  std::function<std::vector<Tensor>(Device)> make_inputs;  // float64, requires_grad set
  TensorFn f;
};

// Every differentiable op of the library, on small random non-degenerate inputs
// (autograd/gradcheck_cases.cpp).
const std::vector<GradcheckCase>& builtin_gradcheck_cases();

// Runs the cases on `device`, prints "op  worst error  PASS/FAIL" rows, returns the failures.
int run_gradcheck_table(const std::vector<GradcheckCase>& cases, Device device, std::ostream& os);

}  // namespace nala
