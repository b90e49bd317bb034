#include "io/pattern.h"

#include "hydraopt/error.h"

namespace hydraopt::io {

SuffixPatterns::SuffixPatterns(const std::vector<std::string>& keys, const std::string& file)
    : file_(file) {
  for (const auto& key : keys) {
    if (key.size() > kMaxPatternLength) {
      throw Error(file, "", "pattern key longer than " + std::to_string(kMaxPatternLength) +
                                " characters: '" + key.substr(0, 40) + "...'");
    }
    try {
      regexes_.emplace_back("(.*\\.)?(" + key + ")$", std::regex::ECMAScript | std::regex::optimize);
    } catch (const std::regex_error& e) {
      throw Error(file, "", "pattern key '" + key + "' is not a valid regular expression: " + e.what());
    }
  }
}

std::optional<size_t> SuffixPatterns::match(const std::string& module) const {
  if (module.size() > kMaxModuleNameLength) {
    throw Error(file_, module.substr(0, 40) + "...", "module name too long to match patterns");
  }
  for (size_t i = 0; i < regexes_.size(); ++i) {
    try {
      if (std::regex_match(module, regexes_[i])) return i;
    } catch (const std::regex_error& e) {
      throw Error(file_, module, std::string("pattern matching failed: ") + e.what());
    }
  }
  return std::nullopt;
}

}  // namespace hydraopt::io
