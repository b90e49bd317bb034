// libFuzzer target: the pattern matcher (rank_pattern / alpha_pattern keys).
// Input: KEY '\0' SUBJECT. Besides crashes and timeouts it checks the
// matcher against std::regex on short inputs (where backtracking is cheap):
// for every key both accept, both must agree on every subject.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <regex>
#include <string>
#include <string_view>

#include "hydraopt/error.h"
#include "io/pattern.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hydraopt;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t nul = in.find('\0');
  const std::string key(in.substr(0, nul));
  const std::string subject(nul == std::string_view::npos ? std::string_view()
                                                          : in.substr(nul + 1));
  bool ours;
  try {
    io::SuffixPatterns p({key}, "fuzz");
    ours = p.match(subject).has_value();
  } catch (const Error&) {
    return 0;
  }
  // Differential check, only where std::regex is safe to run: short key and
  // subject, no repeat counts (std::regex expands them), plain ASCII.
  if (key.size() > 12 || subject.size() > 12) return 0;
  for (char ch : key + subject) {
    const auto u = static_cast<unsigned char>(ch);
    if (u < 0x20 || u >= 0x7f || ch == '{') return 0;
  }
  try {
    std::regex r("(.*\\.)?(" + key + ")$", std::regex::ECMAScript);
    if (std::regex_match(subject, r) != ours) std::abort();
  } catch (const std::regex_error&) {
  }
  return 0;
}
