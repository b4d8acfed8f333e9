#include "nn/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace nala {

// ---- the JSON subset of a safetensors header: objects, arrays, strings, integers >= 0 ----

namespace {

struct Json {
  enum Kind { Object, Array, String, Integer } kind = Object;
  std::vector<std::pair<std::string, Json>> members;  // Object, in file order
  std::vector<Json> items;                            // Array
  std::string text;                                   // String
  uint64_t integer = 0;                               // Integer
};

class JsonParser {
 public:
  JsonParser(const std::string& text, const std::string& path) : s_(text), path_(path) {}

  Json parse_document() {
    Json v = parse_value(0);
    skip_space();
    if (pos_ != s_.size()) fail("unexpected characters after the JSON object");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw std::runtime_error(path_ + ": corrupt safetensors header: " + why + " (at byte " +
                             std::to_string(pos_) + " of the header)");
  }
  void skip_space() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t'))
      ++pos_;
  }
  char peek() {
    skip_space();
    if (pos_ >= s_.size()) fail("the header ends in the middle of a value");
    return s_[pos_];
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }

  Json parse_value(int depth) {
    if (depth > 8) fail("nested too deeply");
    char c = peek();
    if (c == '{') return parse_object(depth);
    if (c == '[') return parse_array(depth);
    if (c == '"') {
      Json v;
      v.kind = Json::String;
      v.text = parse_string();
      return v;
    }
    if (c >= '0' && c <= '9') return parse_integer();
    fail("expected an object, array, string or non-negative integer");
  }

  Json parse_object(int depth) {
    Json v;
    v.kind = Json::Object;
    expect('{');
    if (peek() == '}') {
      ++pos_;
      return v;
    }
    while (true) {
      if (peek() != '"') fail("expected a member name");
      std::string key = parse_string();
      expect(':');
      v.members.emplace_back(key, parse_value(depth + 1));
      if (peek() == '}') {
        ++pos_;
        return v;
      }
      expect(',');
    }
  }

  Json parse_array(int depth) {
    Json v;
    v.kind = Json::Array;
    expect('[');
    if (peek() == ']') {
      ++pos_;
      return v;
    }
    while (true) {
      v.items.push_back(parse_value(depth + 1));
      if (peek() == ']') {
        ++pos_;
        return v;
      }
      expect(',');
    }
  }

  Json parse_integer() {
    Json v;
    v.kind = Json::Integer;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
      uint64_t digit = static_cast<uint64_t>(s_[pos_++] - '0');
      if (v.integer > (UINT64_MAX - digit) / 10) fail("integer too large");
      v.integer = v.integer * 10 + digit;
    }
    if (pos_ < s_.size() && (s_[pos_] == '.' || s_[pos_] == 'e' || s_[pos_] == 'E'))
      fail("expected an integer, got a fraction");
    return v;
  }

  std::string parse_string() {
    expect('"');
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character inside a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out += e;
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u':
          append_utf8(out, parse_code_point());
          break;
        default:
          fail(std::string("bad escape \\") + e);
      }
    }
  }

  // After "\u": four hex digits, or a surrogate pair "XXXX\uYYYY".
  uint32_t parse_code_point() {
    auto hex4 = [&]() {
      if (pos_ + 4 > s_.size()) fail("short \\u escape");
      uint32_t v = 0;
      for (int i = 0; i < 4; ++i) {
        char h = s_[pos_++];
        int digit = h >= '0' && h <= '9'   ? h - '0'
                    : h >= 'a' && h <= 'f' ? h - 'a' + 10
                    : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                           : -1;
        if (digit < 0) fail("bad hex digit in \\u escape");
        v = v * 16 + static_cast<uint32_t>(digit);
      }
      return v;
    };
    uint32_t cp = hex4();
    if (cp >= 0xD800 && cp < 0xDC00) {
      if (s_.compare(pos_, 2, "\\u") != 0) fail("lone high surrogate");
      pos_ += 2;
      uint32_t low = hex4();
      if (low < 0xDC00 || low >= 0xE000) fail("bad low surrogate");
      cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    }
    return cp;
  }

  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  const std::string& s_;
  const std::string& path_;
  size_t pos_ = 0;
};

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// ---- dtypes and checksums ----

const char* safetensors_dtype(DType dtype) {
  switch (dtype) {
    case DType::Float32:
      return "F32";
    case DType::Float64:
      return "F64";
    case DType::Int32:
      return "I32";
    case DType::Int64:
      return "I64";
    case DType::UInt8:
      return "U8";
  }
  return "?";
}

bool parse_safetensors_dtype(const std::string& name, DType& dtype) {
  for (DType d : {DType::Float32, DType::Float64, DType::Int32, DType::Int64, DType::UInt8})
    if (name == safetensors_dtype(d)) return dtype = d, true;
  return false;
}

// CRC-32 (IEEE 802.3, as zlib computes it) of n bytes: each tensor's is stored in the metadata
// as crc32.<name>, so a damaged byte anywhere in the data is found and named.
uint32_t crc32(const void* data, size_t n) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xFFFFFFFFu;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

// ---- files ----

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<FILE, FileCloser>;

[[noreturn]] void io_error(const std::string& what, const std::string& path) {
  throw std::runtime_error(what + " " + path + ": " + std::strerror(errno));
}

void write_bytes(FILE* f, const void* data, size_t n, const std::string& path) {
  if (n && std::fwrite(data, 1, n, f) != n) io_error("cannot write", path);
}

}  // namespace

// ---- safetensors ----

void save_safetensors(const std::string& path, const StateDict& tensors, const Metadata& metadata) {
  // CPU copies in C order, their offsets, and the header that lists them.
  std::vector<Tensor> host;
  Metadata meta = metadata;
  std::string header = "{";
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__" || name.empty())
      throw std::invalid_argument("save_safetensors: bad tensor name '" + name + "'");
    Tensor c = copy_tensor(t, Device::CPU, t.dtype());
    uint64_t bytes = static_cast<uint64_t>(c.numel()) * dtype_size(c.dtype());
    std::string shape;
    for (int64_t s : c.shape()) shape += (shape.empty() ? "" : ",") + std::to_string(s);
    header += json_string(name) + ":{\"dtype\":\"" + safetensors_dtype(c.dtype()) +
              "\",\"shape\":[" + shape + "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + bytes) + "]},";
    meta["crc32." + name] = std::to_string(crc32(c.raw_data(), bytes));
    offset += bytes;
    host.push_back(c);
  }
  header += "\"__metadata__\":{";
  bool first = true;
  for (const auto& [key, value] : meta) {
    header += (first ? "" : ",") + json_string(key) + ":" + json_string(value);
    first = false;
  }
  header += "}}";
  header.resize((header.size() + 7) / 8 * 8, ' ');

  // Write path.tmp, push it to the disk, then rename it over path (atomic on POSIX).
  std::string tmp = path + ".tmp";
  {
    File f(std::fopen(tmp.c_str(), "wb"));
    if (!f) io_error("save_safetensors: cannot create", tmp);
    try {
      unsigned char length[8];
      for (int i = 0; i < 8; ++i)
        length[i] = static_cast<unsigned char>(uint64_t(header.size()) >> (8 * i));
      write_bytes(f.get(), length, 8, tmp);
      write_bytes(f.get(), header.data(), header.size(), tmp);
      // nala runs on little-endian hosts (x86-64, ARM64), so memory order is the file's order.
      for (const Tensor& c : host)
        write_bytes(f.get(), c.raw_data(), c.numel() * dtype_size(c.dtype()), tmp);
      if (std::fflush(f.get()) != 0 || fsync(fileno(f.get())) != 0)
        io_error("save_safetensors: cannot flush", tmp);
    } catch (...) {
      f.reset();
      std::remove(tmp.c_str());
      throw;
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    io_error("save_safetensors: cannot rename " + tmp + " to", path);
  }
  // Make the rename itself durable: fsync the directory that holds the file.
  size_t slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  int fd = open(dir.c_str(), O_RDONLY);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
}

namespace {

// One tensor's entry in the header.
struct TensorEntry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

struct Header {
  std::vector<TensorEntry> entries;
  Metadata metadata;
  uint64_t data_start;  // file offset of the data section
  uint64_t data_size;
};

Header read_header(FILE* f, const std::string& path) {
  auto fail = [&](const std::string& why) { throw std::runtime_error(path + ": " + why); };
  if (fseeko(f, 0, SEEK_END) != 0) io_error("load_safetensors: cannot seek in", path);
  auto file_size = static_cast<uint64_t>(ftello(f));
  std::rewind(f);
  unsigned char length[8];
  if (file_size < 8 || std::fread(length, 1, 8, f) != 8)
    fail("truncated: " + std::to_string(file_size) + " bytes, not even the 8-byte header length");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(length[i]) << (8 * i);
  if (n > file_size - 8)
    fail("truncated or not a safetensors file: the header length says " + std::to_string(n) +
         " bytes, but only " + std::to_string(file_size - 8) + " follow");
  std::string text(n, '\0');
  if (std::fread(text.data(), 1, n, f) != n) io_error("load_safetensors: cannot read", path);

  Json root = JsonParser(text, path).parse_document();
  if (root.kind != Json::Object) fail("corrupt safetensors header: not a JSON object");
  Header h;
  h.data_start = 8 + n;
  h.data_size = file_size - 8 - n;
  for (const auto& [name, value] : root.members) {
    if (name == "__metadata__") {
      if (value.kind != Json::Object)
        fail("corrupt safetensors header: __metadata__ is not an object");
      for (const auto& [key, v] : value.members) {
        if (v.kind != Json::String)
          fail("corrupt safetensors header: metadata '" + key + "' is not a string");
        h.metadata[key] = v.text;
      }
      continue;
    }
    auto bad = [&](const std::string& why) { fail("tensor '" + name + "': " + why); };
    if (value.kind != Json::Object) bad("entry is not an object");
    const Json *dtype = nullptr, *shape = nullptr, *offsets = nullptr;
    for (const auto& [key, v] : value.members) {
      if (key == "dtype") dtype = &v;
      if (key == "shape") shape = &v;
      if (key == "data_offsets") offsets = &v;
    }
    if (!dtype || !shape || !offsets) bad("needs dtype, shape and data_offsets");
    TensorEntry e;
    e.name = name;
    if (dtype->kind != Json::String || !parse_safetensors_dtype(dtype->text, e.dtype))
      bad("unsupported dtype (nala reads F32, F64, I32, I64, U8)");
    if (shape->kind != Json::Array) bad("shape is not an array");
    uint64_t numel = 1;
    for (const Json& s : shape->items) {
      if (s.kind != Json::Integer || s.integer > (uint64_t(1) << 40)) bad("bad shape entry");
      e.shape.push_back(static_cast<int64_t>(s.integer));
      numel *= s.integer;
      if (numel > (uint64_t(1) << 40)) bad("shape too large");
    }
    if (offsets->kind != Json::Array || offsets->items.size() != 2 ||
        offsets->items[0].kind != Json::Integer || offsets->items[1].kind != Json::Integer)
      bad("data_offsets must be [begin, end]");
    e.begin = offsets->items[0].integer;
    e.end = offsets->items[1].integer;
    uint64_t bytes = numel * dtype_size(e.dtype);
    if (e.end < e.begin || e.end - e.begin != bytes)
      bad("shape " + shape_str(e.shape) + " of " + dtype->text + " needs " + std::to_string(bytes) +
          " bytes, but data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
          "] hold " + (e.end < e.begin ? "a negative count" : std::to_string(e.end - e.begin)));
    if (e.end > h.data_size)
      bad("data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
          "] run past the end of the data (" + std::to_string(h.data_size) +
          " bytes): the file is truncated");
    h.entries.push_back(e);
  }
  return h;
}

}  // namespace

SafetensorsFile load_safetensors(const std::string& path) {
  File f(std::fopen(path.c_str(), "rb"));
  if (!f) io_error("load_safetensors: cannot open", path);
  Header h = read_header(f.get(), path);
  SafetensorsFile out;
  for (const TensorEntry& e : h.entries) {
    Tensor t = empty(e.shape, TensorOptions{e.dtype});
    size_t bytes = e.end - e.begin;
    if (fseeko(f.get(), static_cast<off_t>(h.data_start + e.begin), SEEK_SET) != 0 ||
        std::fread(t.raw_data(), 1, bytes, f.get()) != bytes)
      throw std::runtime_error(path + ": tensor '" + e.name +
                               "': cannot read its bytes (truncated?)");
    auto crc = h.metadata.find("crc32." + e.name);
    if (crc != h.metadata.end() && crc->second != std::to_string(crc32(t.raw_data(), bytes)))
      throw std::runtime_error(path + ": tensor '" + e.name +
                               "': checksum mismatch, the file is corrupt");
    out.tensors[e.name] = t;
  }
  out.metadata = h.metadata;
  return out;
}

// ---- training checkpoints ----

static const char* kFormat = "nala-checkpoint-1";

void save_checkpoint(const std::string& path, const Module& model, const Optimizer* optimizer,
                     const ModelEma* ema, const TrainingProgress& progress,
                     const Metadata& config) {
  StateDict all = model.state_dict();
  for (const auto& [name, t] : all)
    if (name.rfind("optim.", 0) == 0 || name.rfind("ema.", 0) == 0)
      throw std::invalid_argument("save_checkpoint: model tensor '" + name +
                                  "' clashes with the optim./ema. prefixes");
  if (optimizer)
    for (const auto& [name, t] : optimizer->state_dict()) all["optim." + name] = t;
  if (ema)
    for (const auto& [name, t] : ema->state_dict()) all["ema." + name] = t;
  GeneratorState rng = generator_state();
  Metadata meta = {{"format", kFormat},
                   {"step", std::to_string(progress.step)},
                   {"epoch", std::to_string(progress.epoch)},
                   {"rng.seed", std::to_string(rng.seed)},
                   {"rng.offset", std::to_string(rng.offset)}};
  for (const auto& [key, value] : config) meta["config." + key] = value;
  save_safetensors(path, all, meta);
}

TrainingProgress load_checkpoint(const std::string& path, Module& model, Optimizer* optimizer,
                                 ModelEma* ema, const Metadata& config) {
  auto fail = [&](const std::string& why) {
    throw std::runtime_error("load_checkpoint: " + path + ": " + why);
  };
  SafetensorsFile file = load_safetensors(path);
  const Metadata& meta = file.metadata;
  auto get = [&](const std::string& key) {
    auto it = meta.find(key);
    if (it == meta.end()) fail("no metadata entry '" + key + "'");
    return it->second;
  };
  auto get_u64 = [&](const std::string& key) {
    std::string v = get(key);
    char* end = nullptr;
    errno = 0;
    unsigned long long x = std::strtoull(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno)
      fail("metadata '" + key + "' = '" + v + "' is not an integer");
    return static_cast<uint64_t>(x);
  };
  if (get("format") != kFormat) fail("format '" + get("format") + "', expected " + kFormat);
  std::string differences;
  for (const auto& [key, value] : config) {
    auto it = meta.find("config." + key);
    std::string saved = it == meta.end() ? "(none)" : "'" + it->second + "'";
    if (it == meta.end() || it->second != value)
      differences +=
          (differences.empty() ? "" : ", ") + key + " " + saved + " (this model: '" + value + "')";
  }
  if (!differences.empty()) fail("written for another model config: " + differences);
  StateDict model_state, optim_state, ema_state;
  for (const auto& [name, t] : file.tensors) {
    if (name.rfind("optim.", 0) == 0)
      optim_state[name.substr(6)] = t;
    else if (name.rfind("ema.", 0) == 0)
      ema_state[name.substr(4)] = t;
    else
      model_state[name] = t;
  }
  if (optimizer && optim_state.empty()) fail("no optimizer state (optim.*) in the file");
  if (ema && ema_state.empty()) fail("no EMA weights (ema.*) in the file");
  try {
    model.load_state_dict(model_state);
    if (optimizer) optimizer->load_state_dict(optim_state);
    if (ema) ema->load_state_dict(ema_state);
  } catch (const std::invalid_argument& e) {
    fail(e.what());
  }
  TrainingProgress progress;
  progress.step = static_cast<int64_t>(get_u64("step"));
  progress.epoch = static_cast<int64_t>(get_u64("epoch"));
  set_generator_state(GeneratorState{get_u64("rng.seed"), get_u64("rng.offset")});
  return progress;
}

Metadata checkpoint_config(const std::string& path) {
  File f(std::fopen(path.c_str(), "rb"));
  if (!f) io_error("checkpoint_config: cannot open", path);
  Metadata config;
  for (const auto& [key, value] : read_header(f.get(), path).metadata)
    if (key.rfind("config.", 0) == 0) config[key.substr(7)] = value;
  return config;
}

}  // namespace nala
