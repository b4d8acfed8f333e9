// Element types and devices: the two tags every tensor carries and every op dispatches on.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace nala {

enum class DType { Float32, Float64, Int32, Int64, UInt8 };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // "float32", ...
inline bool is_floating(DType dtype) { return dtype == DType::Float32 || dtype == DType::Float64; }

// The DType of a C++ scalar type: dtype_of<float>() == DType::Float32.
template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::Float32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::Float64;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::Int32;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::Int64;
}
template <>
constexpr DType dtype_of<uint8_t>() {
  return DType::UInt8;
}

// Calls f(T{}) with the C++ type of `dtype`, for any of the five dtypes.
template <typename F>
decltype(auto) visit_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32:
      return f(float{});
    case DType::Float64:
      return f(double{});
    case DType::Int32:
      return f(int32_t{});
    case DType::Int64:
      return f(int64_t{});
    case DType::UInt8:
      return f(uint8_t{});
  }
  return f(float{});
}

enum class Device { CPU, CUDA };
const char* device_name(Device device);  // "cpu" or "cuda"
Device parse_device(const std::string& name);

}  // namespace nala
