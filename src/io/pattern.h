// PEFT's rank_pattern / alpha_pattern key matching.
//
// A key is a regular expression; it applies to a module when the module
// name matches `(.*\.)?(key)$` from the start (Python re.match), i.e. the key
// matches a dot-separated suffix of the name. Keys come from untrusted
// configs, so pattern and name lengths are capped before std::regex (which
// backtracks recursively) ever sees them.
#pragma once

#include <optional>
#include <regex>
#include <string>
#include <vector>

namespace hydraopt::io {

inline constexpr size_t kMaxPatternLength = 256;
inline constexpr size_t kMaxModuleNameLength = 512;

class SuffixPatterns {
 public:
  /// Compiles the keys in order; throws hydraopt::Error naming `file` and the
  /// key if one is too long or not a valid regular expression.
  SuffixPatterns(const std::vector<std::string>& keys, const std::string& file);
  /// Index of the first key that matches `module`, if any.
  std::optional<size_t> match(const std::string& module) const;

 private:
  std::vector<std::regex> regexes_;
  std::string file_;
};

}  // namespace hydraopt::io
