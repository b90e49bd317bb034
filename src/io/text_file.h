// Small text files (configs) read whole, with a size cap so that a huge or
// endless file (a FIFO, /dev/zero) is an error rather than memory exhaustion.
#pragma once

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <string>

#include "hydraopt/error.h"

namespace hydraopt::io {

/// The bytes of `p`; throws naming `p` if it cannot be opened or is larger than `cap`.
inline std::string read_text(const std::filesystem::path& p, size_t cap) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw Error(p.string(), "", "cannot open");
  std::string s;
  char buf[65536];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    s.append(buf, static_cast<size_t>(in.gcount()));
    if (s.size() > cap)
      throw Error(p.string(), "", "file larger than " + std::to_string(cap) + " bytes");
  }
  return s;
}

}  // namespace hydraopt::io
