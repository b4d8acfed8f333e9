// Printing (NumPy style) and .npy files.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <sstream>
#include <stdexcept>

#include "tensor/tensor.h"

namespace nala {

// ---- printing ----

// Prints dims [d, ...) of the values starting at flat position `base`; tensors with more than
// 1000 elements show the first and last 3 entries of each dim, like NumPy.
static void print_dim(std::ostream& os, const std::vector<double>& v, const Shape& shape, size_t d,
                      int64_t base, bool integral, bool summarize, int indent) {
  int64_t stride = 1;
  for (size_t i = d + 1; i < shape.size(); ++i) stride *= shape[i];
  os << "[";
  for (int64_t i = 0; i < shape[d]; ++i) {
    if (summarize && shape[d] > 6 && i == 3) {
      os << (d + 1 == shape.size() ? "..., " : "...,\n" + std::string(indent + d + 1, ' '));
      i = shape[d] - 3;
    }
    if (d + 1 == shape.size()) {
      double x = v[base + i];
      if (integral)
        os << static_cast<long long>(x);
      else
        os << std::setprecision(4) << std::fixed << x;
    } else {
      print_dim(os, v, shape, d + 1, base + i * stride, integral, summarize, indent);
    }
    if (i + 1 < shape[d])
      os << (d + 1 == shape.size() ? ", " : ",\n" + std::string(indent + d + 1, ' '));
  }
  os << "]";
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) {
  if (!t.defined()) return os << "tensor(undefined)";
  std::vector<double> v = t.to_vector<double>();
  std::ostringstream body;
  const int indent = 7;  // strlen("tensor(")
  if (t.dim() == 0)
    body << std::setprecision(4) << std::fixed << v[0];
  else
    print_dim(body, v, t.shape(), 0, 0, !is_floating(t.dtype()), t.numel() > 1000, indent);
  os << "tensor(" << body.str() << ", shape=" << shape_str(t.shape())
     << ", dtype=" << dtype_name(t.dtype()) << ", device=" << device_name(t.device());
  if (t.requires_grad()) os << ", requires_grad=true";
  return os << ")";
}

std::string to_string(const Tensor& t) {
  std::ostringstream os;
  os << t;
  return os.str();
}

// ---- .npy ----
// Format: magic "\x93NUMPY", major, minor, header length (2 bytes in v1, 4 in v2/v3), then an
// ASCII Python dict {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } padded with
// spaces to a multiple of 64 bytes and ended by '\n', then the raw data.

static DType dtype_from_descr(const std::string& descr, const std::string& path) {
  if (descr.size() != 3 || (descr[0] != '<' && descr[0] != '|' && descr[0] != '='))
    throw std::runtime_error("load_npy: " + path + ": unsupported dtype descr '" + descr +
                             "' (need little-endian f4, f8, i4, i8 or u1)");
  std::string code = descr.substr(1);
  if (code == "f4") return DType::Float32;
  if (code == "f8") return DType::Float64;
  if (code == "i4") return DType::Int32;
  if (code == "i8") return DType::Int64;
  if (code == "u1") return DType::UInt8;
  throw std::runtime_error("load_npy: " + path + ": unsupported dtype descr '" + descr + "'");
}

static const char* descr_of(DType dtype) {
  switch (dtype) {
    case DType::Float32:
      return "<f4";
    case DType::Float64:
      return "<f8";
    case DType::Int32:
      return "<i4";
    case DType::Int64:
      return "<i8";
    case DType::UInt8:
      return "|u1";
  }
  return "";
}

// Returns the text after `'key':` in the header dict, or throws.
static std::string header_value(const std::string& header, const std::string& key,
                                const std::string& path) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos)
    throw std::runtime_error("load_npy: " + path + ": header has no '" + key + "'");
  size_t colon = header.find(':', k);
  if (colon == std::string::npos)
    throw std::runtime_error("load_npy: " + path + ": malformed header");
  size_t start = header.find_first_not_of(' ', colon + 1);
  if (start == std::string::npos)
    throw std::runtime_error("load_npy: " + path + ": malformed header");
  return header.substr(start);
}

Tensor load_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("load_npy: cannot open " + path);
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    throw std::runtime_error("load_npy: " + path + " is not a .npy file (bad magic)");
  int major = static_cast<unsigned char>(magic[6]);
  uint32_t header_len = 0;
  if (major == 1) {
    unsigned char b[2];
    if (!f.read(reinterpret_cast<char*>(b), 2))
      throw std::runtime_error("load_npy: " + path + ": truncated header");
    header_len = b[0] | (b[1] << 8);
  } else if (major == 2 || major == 3) {
    unsigned char b[4];
    if (!f.read(reinterpret_cast<char*>(b), 4))
      throw std::runtime_error("load_npy: " + path + ": truncated header");
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t(b[3]) << 24);
  } else {
    throw std::runtime_error("load_npy: " + path + ": unsupported .npy version " +
                             std::to_string(major));
  }
  if (header_len > (1u << 20)) throw std::runtime_error("load_npy: " + path + ": header too long");
  std::string header(header_len, '\0');
  if (!f.read(header.data(), header_len))
    throw std::runtime_error("load_npy: " + path + ": truncated header");

  std::string descr_v = header_value(header, "descr", path);
  if (descr_v.empty() || descr_v[0] != '\'')
    throw std::runtime_error("load_npy: " + path + ": malformed descr");
  size_t end = descr_v.find('\'', 1);
  if (end == std::string::npos) throw std::runtime_error("load_npy: " + path + ": malformed descr");
  DType dtype = dtype_from_descr(descr_v.substr(1, end - 1), path);
  bool fortran = header_value(header, "fortran_order", path).rfind("True", 0) == 0;
  std::string shape_v = header_value(header, "shape", path);
  if (shape_v.empty() || shape_v[0] != '(')
    throw std::runtime_error("load_npy: " + path + ": malformed shape");
  size_t close = shape_v.find(')');
  if (close == std::string::npos)
    throw std::runtime_error("load_npy: " + path + ": malformed shape");
  Shape shape;
  std::stringstream ss(shape_v.substr(1, close - 1));
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t a = item.find_first_not_of(' ');
    if (a == std::string::npos) continue;
    try {
      size_t used = 0;
      long long v = std::stoll(item.substr(a), &used);
      if (v < 0) throw std::invalid_argument("negative");
      shape.push_back(v);
    } catch (const std::exception&) {
      throw std::runtime_error("load_npy: " + path + ": malformed shape entry '" + item + "'");
    }
  }
  if (shape.size() > 8) throw std::runtime_error("load_npy: " + path + ": more than 8 dims");
  // Fortran order: the data is the transpose, stored C order with the shape reversed.
  Shape stored = fortran ? Shape(shape.rbegin(), shape.rend()) : shape;
  Tensor t = empty(stored, TensorOptions{dtype, Device::CPU});
  size_t bytes = t.numel() * dtype_size(dtype);
  if (bytes && !f.read(static_cast<char*>(t.raw_data()), bytes))
    throw std::runtime_error("load_npy: " + path + ": file holds fewer bytes than shape " +
                             shape_str(shape) + " of " + dtype_name(dtype) + " needs");
  if (fortran && t.dim() > 1) {
    std::vector<int64_t> rev(t.dim());
    for (int64_t i = 0; i < t.dim(); ++i) rev[i] = t.dim() - 1 - i;
    t = t.permute(rev).contiguous();
  }
  return t;
}

void save_npy(const std::string& path, const Tensor& t_in) {
  Tensor t = copy_tensor(t_in, Device::CPU, t_in.dtype());
  std::string shape = "(";
  for (int64_t s : t.shape()) shape += std::to_string(s) + ", ";
  if (t.dim() > 1)
    shape.resize(shape.size() - 2);
  else if (t.dim() == 1)
    shape.resize(shape.size() - 1);
  shape += ")";
  std::string header = std::string("{'descr': '") + descr_of(t.dtype()) +
                       "', 'fortran_order': False, 'shape': " + shape + ", }";
  size_t total = 10 + header.size() + 1;
  header += std::string((64 - total % 64) % 64, ' ') + "\n";
  std::ofstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("save_npy: cannot open " + path + " for writing");
  uint16_t len = static_cast<uint16_t>(header.size());
  f.write("\x93NUMPY\x01\x00", 8);
  f.put(static_cast<char>(len & 0xff));
  f.put(static_cast<char>(len >> 8));
  f.write(header.data(), header.size());
  f.write(static_cast<const char*>(t.raw_data()), t.numel() * dtype_size(t.dtype()));
  if (!f) throw std::runtime_error("save_npy: write to " + path + " failed");
}

}  // namespace nala
