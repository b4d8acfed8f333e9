// Tensor: views share storage, copies, dtypes, printing, random numbers, .npy files.
#include <cstdint>
#include <cstdio>
#include <fstream>

#include "kernels/fast_divisor.h"
#include "kernels/kernels.h"
#include "test_util.h"

using namespace nala;

TEST_CASE("views share storage and see writes through the base") {
  Tensor x = arange(12).reshape({3, 4});
  Tensor t = x.t();
  CHECK(t.shape() == Shape{4, 3});
  CHECK(t.storage() == x.storage());
  CHECK_FALSE(t.is_contiguous());
  x.select(0, 1).copy_(full({4}, -1.0));
  CHECK(t.to_vector<double>() == std::vector<double>{0, -1, 8, 1, -1, 9, 2, -1, 10, 3, -1, 11});
}

TEST_CASE("reshape views when it can and copies when it must") {
  Tensor x = arange(24).reshape({2, 3, 4});
  CHECK(x.reshape({6, 4}).storage() == x.storage());
  CHECK(x.reshape({2, -1}).shape() == Shape{2, 12});
  CHECK(x.permute({2, 0, 1}).view({4, 6}).storage() == x.storage());  // dims 0, 1 stay adjacent
  Tensor p = x.permute({1, 0, 2});
  CHECK_THROWS_WITH_AS(p.view({6, 4}), doctest::Contains("use reshape"), std::invalid_argument);
  Tensor r = p.reshape({6, 4});
  CHECK(r.storage() != x.storage());
  // row i of r is p[i / 2][i % 2] = x[i % 2][i / 2]: r[3][2] = x[1][1][2]
  CHECK(r.to_vector<double>()[3 * 4 + 2] == 12 + 4 + 2);
  CHECK_THROWS_WITH_AS(x.reshape({5, 5}), "reshape: cannot view shape [2, 3, 4] as [5, 5]",
                       std::invalid_argument);
}

TEST_CASE("transposing copies, tile by tile, put every element where the index says") {
  // Dims of 17-40 elements: the CPU copies them in 16 x 16 tiles with ragged edges; planes over
  // the other dims; a copy into a strided destination; a conversion on the way.
  Tensor x = arange(2 * 17 * 5 * 19).reshape({2, 17, 5, 19});
  const std::vector<double> xs = x.to_vector<double>();
  const std::vector<double> p = x.permute({0, 3, 2, 1}).contiguous().to_vector<double>();
  bool all_equal = true;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t w = 0; w < 19; ++w)
      for (int64_t c = 0; c < 5; ++c)
        for (int64_t h = 0; h < 17; ++h)
          all_equal &= p[((b * 19 + w) * 5 + c) * 17 + h] == xs[((b * 17 + h) * 5 + c) * 19 + w];
  CHECK(all_equal);
  Tensor m = arange(40 * 33, TensorOptions{DType::Float64}).reshape({40, 33});
  const std::vector<double> ms = m.to_vector<double>();
  // m^T (33 x 40) at (i, j) is m[j][i] = ms[j * 33 + i].
  auto is_m_transposed = [&](const std::vector<double>& t) {
    bool equal = t.size() == 33 * 40;
    for (int64_t i = 0; equal && i < 33; ++i)
      for (int64_t j = 0; j < 40; ++j) equal &= t[i * 40 + j] == ms[j * 33 + i];
    return equal;
  };
  Tensor into = zeros({33, 80}, TensorOptions{DType::Float64}).slice(1, 0, 40);  // rows 80 apart
  into.copy_(m.t());
  CHECK(is_m_transposed(into.to_vector<double>()));
  Tensor as_float = m.t().to(DType::Float32);  // float64 -> float32 on the way
  CHECK(as_float.dtype() == DType::Float32);
  CHECK(is_m_transposed(as_float.to_vector<double>()));
}

TEST_CASE("slice, select, expand, squeeze") {
  Tensor x = arange(10);
  CHECK(x.slice(0, 1, 8, 3).to_vector<double>() == std::vector<double>{1, 4, 7});
  CHECK(x.slice(0, -3, 10).to_vector<double>() == std::vector<double>{7, 8, 9});
  Tensor e = arange(3).reshape({3, 1}).expand({3, 2});
  CHECK(e.strides()[1] == 0);
  CHECK(e.contiguous().to_vector<double>() == std::vector<double>{0, 0, 1, 1, 2, 2});
  CHECK_THROWS_AS(arange(3).expand({2, 4}), std::invalid_argument);
  CHECK(arange(3).unsqueeze(0).shape() == Shape{1, 3});
  CHECK(arange(3).unsqueeze(-1).squeeze(1).shape() == Shape{3});
}

TEST_CASE("dtype conversion and factories") {
  Tensor x = from_vector({1.5, -2.25, 3.0}, {3});
  CHECK(x.dtype() == DType::Float32);
  CHECK(x.to(DType::Int64).to_vector<int64_t>() == std::vector<int64_t>{1, -2, 3});
  CHECK(x.to(DType::Float64).to_vector<double>() == std::vector<double>{1.5, -2.25, 3.0});
  CHECK(full({2, 2}, 7.0, TensorOptions{DType::UInt8}).to_vector<uint8_t>() ==
        std::vector<uint8_t>{7, 7, 7, 7});
  CHECK(zeros({0, 3}).numel() == 0);
  CHECK_THROWS_WITH_AS(from_data(std::vector<float>{1, 2}, {3}),
                       doctest::Contains("do not fill shape [3]"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(arange(4).item(), doctest::Contains("more than one element"),
                       std::invalid_argument);
}

TEST_CASE("printing shows values, shape, dtype and device like NumPy") {
  Tensor x = from_vector({1, 2, 3, 4}, {2, 2});
  CHECK(to_string(x) ==
        "tensor([[1.0000, 2.0000],\n        [3.0000, 4.0000]], shape=[2, 2], dtype=float32, "
        "device=cpu)");
  CHECK(to_string(arange(3, TensorOptions{DType::Int64})) ==
        "tensor([0, 1, 2], shape=[3], dtype=int64, device=cpu)");
  CHECK(to_string(arange(2000)).find("..., ") != std::string::npos);
}

TEST_CASE("random numbers are reproducible from a seed and follow their distribution") {
  manual_seed(3);
  Tensor a = randn({10000});
  manual_seed(3);
  Tensor b = randn({10000});
  CHECK(a.to_vector<float>() == b.to_vector<float>());
  Tensor c = randn({10000});
  CHECK(a.to_vector<float>() != c.to_vector<float>());
  double m = mean(a).item(), v = var(a).item();
  CHECK(std::abs(m) < 0.05);  // standard error 0.01
  CHECK(std::abs(v - 1.0) < 0.05);
  Tensor u = rand({10000}, TensorOptions{DType::Float64});
  CHECK(max(u).item() < 1.0);
  CHECK(-max(neg(u)).item() >= 0.0);
  Tensor t = trunc_normal({5000}, 1.0, -0.5, 0.5);
  CHECK(max(abs(t)).item() <= 0.5);
}

static std::string temp_path(const char* name) { return std::string("/tmp/nala_test_") + name; }

TEST_CASE(".npy round trip for every dtype") {
  for (DType dt : {DType::Float32, DType::Float64, DType::Int32, DType::Int64, DType::UInt8}) {
    Tensor x = arange(24, TensorOptions{dt}).reshape({2, 3, 4});
    save_npy(temp_path("rt.npy"), x.permute({2, 0, 1}));
    Tensor y = load_npy(temp_path("rt.npy"));
    CHECK(y.dtype() == dt);
    CHECK(y.shape() == Shape{4, 2, 3});
    CHECK(y.to_vector<double>() == x.permute({2, 0, 1}).to_vector<double>());
  }
}

// Writes a .npy file byte by byte, as NumPy 1.x writes np.array([[1, 2, 3], [4, 5, 6]], '<f8').
static void write_reference_npy(const std::string& path, bool fortran) {
  std::string header = std::string("{'descr': '<f8', 'fortran_order': ") +
                       (fortran ? "True" : "False") + ", 'shape': (2, 3), }";
  header += std::string((64 - (10 + header.size() + 1) % 64) % 64, ' ') + "\n";
  std::ofstream f(path, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  f.put(static_cast<char>(header.size()));
  f.put(0);
  f << header;
  double c_order[] = {1, 2, 3, 4, 5, 6}, f_order[] = {1, 4, 2, 5, 3, 6};
  f.write(reinterpret_cast<const char*>(fortran ? f_order : c_order), sizeof(c_order));
}

TEST_CASE(".npy reads a file written byte by byte, C and Fortran order") {
  for (bool fortran : {false, true}) {
    write_reference_npy(temp_path("ref.npy"), fortran);
    Tensor x = load_npy(temp_path("ref.npy"));
    CHECK(x.shape() == Shape{2, 3});
    CHECK(x.to_vector<double>() == std::vector<double>{1, 2, 3, 4, 5, 6});
  }
}

TEST_CASE("malformed .npy files are clear errors") {
  CHECK_THROWS_WITH_AS(load_npy("/nonexistent/x.npy"), "load_npy: cannot open /nonexistent/x.npy",
                       std::runtime_error);
  std::ofstream(temp_path("bad.npy")) << "hello world, not numpy";
  CHECK_THROWS_WITH_AS(load_npy(temp_path("bad.npy")), doctest::Contains("bad magic"),
                       std::runtime_error);
  // Truncated data: keep the header, drop the last bytes.
  write_reference_npy(temp_path("trunc.npy"), false);
  std::ifstream in(temp_path("trunc.npy"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream(temp_path("trunc.npy"), std::ios::binary) << bytes.substr(0, bytes.size() - 5);
  CHECK_THROWS_WITH_AS(load_npy(temp_path("trunc.npy")), doctest::Contains("fewer bytes"),
                       std::runtime_error);
  // An unsupported dtype.
  std::string h = bytes;
  h.replace(h.find("<f8"), 3, ">f8");
  std::ofstream(temp_path("be.npy"), std::ios::binary) << h;
  CHECK_THROWS_WITH_AS(load_npy(temp_path("be.npy")), doctest::Contains("unsupported dtype"),
                       std::runtime_error);
}

// The caching allocator of one device, through its kernels:: functions.
template <typename Allocate, typename Deallocate, typename Stats, typename Reset,
          typename EmptyCache>
static void check_caching_allocator(Allocate allocate, Deallocate deallocate, Stats stats,
                                    Reset reset_peak_stats, EmptyCache empty_cache,
                                    const std::string& name) {
  empty_cache();
  reset_peak_stats();
  const kernels::AllocatorStats start = stats();
  // A block is rounded up (1000 bytes -> 1024), and a freed one is handed out again.
  void* a = allocate(1000);
  REQUIRE(a != nullptr);
  CHECK(stats().bytes_in_use == start.bytes_in_use + 1024);
  CHECK(stats().num_system_allocs == start.num_system_allocs + 1);
  deallocate(a, 1000);
  CHECK(stats().bytes_in_use == start.bytes_in_use);
  CHECK(stats().bytes_cached == 1024);
  void* b = allocate(1000);
  CHECK(b == a);
  CHECK(stats().num_system_allocs == start.num_system_allocs + 1);
  CHECK(stats().bytes_cached == 0);
  // A cached block too small for the request, or more than twice its size, is not used for it.
  deallocate(b, 1000);         // cached: 1024
  void* big = allocate(5000);  // 5120: the 1024 block is too small
  deallocate(big, 5000);       // cached: 1024, 5120
  void* mid = allocate(2000);  // 2048: the 5120 block is more than twice that
  CHECK(mid != a);
  CHECK(mid != big);
  CHECK(stats().num_system_allocs == start.num_system_allocs + 3);
  CHECK(stats().peak_bytes_in_use == start.bytes_in_use + 5120);
  deallocate(mid, 2000);
  empty_cache();
  CHECK(stats().bytes_cached == 0);
  // Freeing what it did not hand out is a bug, named.
  int not_ours = 0;
  CHECK_THROWS_WITH_AS(deallocate(&not_ours, 4), doctest::Contains((name + " deallocate").c_str()),
                       std::logic_error);
  // Out of memory: a clear error with the size (2^50 bytes = 2^30 MiB) and the statistics.
  CHECK_THROWS_WITH_AS(
      allocate(size_t(1) << 50),
      doctest::Contains((name + " out of memory: tried to allocate 1073741824.00 MiB").c_str()),
      std::runtime_error);
}

TEST_CASE("caching allocators: reuse, statistics, empty_cache, clear errors") {
  check_caching_allocator(kernels::cpu::allocate, kernels::cpu::deallocate,
                          kernels::cpu::allocator_stats, kernels::cpu::reset_peak_stats,
                          kernels::cpu::empty_cache, "host");
#ifdef NALA_WITH_CUDA
  if (!test::cuda_available()) return;
  check_caching_allocator(kernels::cuda::allocate, kernels::cuda::deallocate,
                          kernels::cuda::allocator_stats, kernels::cuda::reset_peak_stats,
                          kernels::cuda::empty_cache, "CUDA");
#endif
}

TEST_CASE("FastDivisor divides like / for every divisor and dividend it is used with") {
  // Divisors 1..1024 and some large ones; dividends dense near 0, just below 2^31, and spread
  // between (the multiply-high must neither round down a quotient nor overflow its sum).
  std::vector<int> divisors;
  for (int d = 1; d <= 1024; ++d) divisors.push_back(d);
  for (int d : {4093, 65535, 65536, 65537, 1 << 20, 123456789, (1 << 30) + 7, INT32_MAX})
    divisors.push_back(d);
  std::vector<int> dividends;
  for (int n = 0; n < 4096; ++n) dividends.push_back(n);
  for (int n = INT32_MAX - 1024; n < INT32_MAX; ++n) dividends.push_back(n);
  dividends.push_back(INT32_MAX);
  uint64_t state = 7;
  for (int k = 0; k < 1024; ++k) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    dividends.push_back(static_cast<int>(state >> 33));  // < 2^31
  }
  int wrong = 0;
  for (int d : divisors) {
    const kernels::FastDivisor by(d);
    for (int n : dividends) wrong += by.divide(n) != n / d;
  }
  CHECK(wrong == 0);
}
