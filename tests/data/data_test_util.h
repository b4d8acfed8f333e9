// Helpers for the data suite: a scratch directory and files written byte by byte.
#pragma once

#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace nala::test {

// A fresh directory under the system temp dir, removed with everything in it on destruction.
struct TempDir {
  std::filesystem::path path;

  explicit TempDir(const std::string& name)
      : path(std::filesystem::temp_directory_path() /
             ("nala_test_" + name + "_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string operator/(const std::string& relative) const { return (path / relative).string(); }
};

// Writes `bytes` to `path`, creating the directories above it.
inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

// doctest::Contains for a message built at run time (it takes only a C string).
inline doctest::Contains contains(const std::string& text) {
  return doctest::Contains(text.c_str());
}

}  // namespace nala::test
