// Every op's analytic gradient against central finite differences in float64, on CPU and CUDA,
// and the proof that gradcheck catches a wrong gradient.
#include <sstream>

#include "autograd/gradcheck.h"
#include "test_util.h"

using namespace nala;

TEST_CASE("every registered op passes gradcheck") {
  for (Device device : test::devices()) {
    for (const GradcheckCase& c : builtin_gradcheck_cases()) {
      CAPTURE(c.name);
      CAPTURE(std::string(device_name(device)));
      GradcheckResult r = gradcheck(c.f, c.make_inputs(device));
      INFO(r.worst);
      CHECK(r.passed);
    }
  }
}

// relu with the gradient of leaky relu(0.1): wrong on the negative half.
static Tensor broken_relu(const Tensor& x) {
  Tensor y = relu(x.detach());
  record(y, "broken_relu", {x}, [x = x.detach()](const Tensor& dy) {
    Tensor slope = add(mul(gt(x, zeros({}, TensorOptions{x.dtype(), x.device()})), 0.9), 0.1);
    return std::vector<Tensor>{mul(dy, slope)};
  });
  return y;
}

TEST_CASE("gradcheck fails a wrong gradient and the table reports it") {
  std::vector<GradcheckCase> cases = {
      {"relu",
       [](Device) {
         return std::vector<Tensor>{
             from_vector({-1, 2, -3}, {3}, TensorOptions{DType::Float64, Device::CPU, true})};
       },
       [](const std::vector<Tensor>& x) { return relu(x[0]); }},
      {"broken_relu",
       [](Device) {
         return std::vector<Tensor>{
             from_vector({-1, 2, -3}, {3}, TensorOptions{DType::Float64, Device::CPU, true})};
       },
       [](const std::vector<Tensor>& x) { return broken_relu(x[0]); }},
  };
  std::ostringstream table;
  CHECK(run_gradcheck_table(cases, Device::CPU, table) == 1);
  CHECK(table.str().find("broken_relu") != std::string::npos);
  CHECK(table.str().find("FAIL") != std::string::npos);
  CHECK(table.str().find("1 of 2 ops failed") != std::string::npos);
}
