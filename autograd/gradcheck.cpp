#include "autograd/gradcheck.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <ostream>
#include <random>
#include <sstream>

#include "autograd/ops.h"

namespace nala {

// L = sum(out * r), evaluated in double on the host.
static double weighted_sum(const Tensor& out, const std::vector<double>& r) {
  std::vector<double> v = out.to_vector<double>();
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) s += v[i] * r[i];
  return s;
}

GradcheckResult gradcheck(const TensorFn& f, const std::vector<Tensor>& inputs, double step,
                          double tolerance) {
  GradcheckResult result;
  for (const Tensor& x : inputs) x.zero_grad();
  Tensor out = f(inputs);
  std::mt19937_64 rng(1234);
  std::uniform_real_distribution<double> dist(0.5, 1.5);
  std::vector<double> r(out.numel());
  for (double& w : r) w = dist(rng);
  Tensor r_t = from_vector(r, out.shape(), TensorOptions{out.dtype(), out.device()});
  sum(mul(out, r_t)).backward();

  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& x = inputs[i];
    if (!x.defined() || !x.requires_grad()) continue;
    std::vector<double> analytic =
        x.grad().defined() ? x.grad().to_vector<double>() : std::vector<double>(x.numel(), 0.0);
    std::vector<double> values = x.to_vector<double>();
    for (int64_t j = 0; j < x.numel(); ++j) {
      // Evaluate L with element j moved by +h and -h (fresh leaf tensors, no graph).
      auto eval_at = [&](double delta) {
        std::vector<double> moved = values;
        moved[j] += delta;
        std::vector<Tensor> args = inputs;
        args[i] = from_vector(moved, x.shape(), TensorOptions{x.dtype(), x.device()});
        NoGradGuard no_grad;
        return weighted_sum(f(args), r);
      };
      double numeric = (eval_at(step) - eval_at(-step)) / (2 * step);
      double a = analytic[j];
      double err = std::abs(a - numeric) / std::max({std::abs(a), std::abs(numeric), 1.0});
      if (!(err <= result.worst_error) || std::isnan(err)) {
        result.worst_error = std::isnan(err) ? INFINITY : err;
        std::ostringstream where;
        where << "input " << i << " " << shape_str(x.shape()) << " element " << j << ": analytic "
              << std::setprecision(10) << a << ", numeric " << numeric;
        result.worst = where.str();
      }
    }
  }
  result.passed = result.worst_error <= tolerance;
  return result;
}

int run_gradcheck_table(const std::vector<GradcheckCase>& cases, Device device, std::ostream& os) {
  int failures = 0;
  os << std::left << std::setw(28) << "op" << std::setw(14) << "worst error"
     << "result\n";
  for (const GradcheckCase& c : cases) {
    GradcheckResult r;
    std::string error;
    try {
      r = gradcheck(c.f, c.make_inputs(device));
    } catch (const std::exception& e) {
      r.passed = false;
      error = e.what();
    }
    failures += !r.passed;
    os << std::left << std::setw(28) << c.name << std::setw(14) << std::setprecision(2)
       << std::scientific << r.worst_error << (r.passed ? "PASS" : "FAIL");
    if (!r.passed) os << "  " << (error.empty() ? r.worst : error);
    os << "\n";
  }
  os << failures << " of " << cases.size() << " ops failed on " << device_name(device) << "\n";
  return failures;
}

}  // namespace nala
