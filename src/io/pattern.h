// PEFT's rank_pattern / alpha_pattern key matching.
//
// A key is a regular expression; it applies to a module when the module
// name matches `(.*\.)?(key)$` from the start (Python re.match), i.e. the key
// matches a dot-separated suffix of the name.
//
// Keys come from untrusted configs. std::regex (libstdc++) backtracks
// recursively: `(a|a)*b` takes seconds at 24 characters and a long subject
// can overflow the stack. So keys are compiled here to a Thompson NFA and
// run as a Pike VM (a set of states advanced one byte at a time): time is
// O(name length x program size), memory O(program size), no recursion on
// the subject. Lengths are still capped (key 256, name 512, program 4096
// instructions after expanding counted repeats) so that cost stays small.
//
// Supported syntax (the ECMAScript subset PEFT configs use): literals,
// `.`, `[...]`/`[^...]` with ranges, `\d \D \w \W \s \S`, escaped
// punctuation, `\t \n \r \f \v \0 \xHH`, groups `(...)` and `(?:...)`,
// `|`, `* + ?` and `{m}` `{m,}` `{m,n}` (m, n <= 1000; lazy `?` suffixes
// accepted, they do not change whether a name matches), `^` and `$`.
// Refused with a clear error: backreferences, lookaround, `\b`/`\B`,
// `\u`/`\c` escapes. Matching is on bytes (module names are ASCII).
#pragma once

#include <bitset>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hydraopt::io {

inline constexpr size_t kMaxPatternLength = 256;
inline constexpr size_t kMaxModuleNameLength = 512;
inline constexpr size_t kMaxPatternProgram = 4096;
inline constexpr int kMaxPatternRepeat = 1000;

/// One compiled key: a program for the Pike VM.
class SuffixRegex {
 public:
  /// Compiles `(.*\.)?(key)$`; throws hydraopt::Error naming `file`.
  SuffixRegex(std::string_view key, const std::string& file);
  /// Whether the whole of `subject` matches.
  bool full_match(std::string_view subject) const;
  size_t program_size() const { return prog_.size(); }

  /// One instruction of the program.
  struct Inst {
    enum Op : uint8_t { kByte, kSplit, kJmp, kBegin, kEnd, kMatch };
    Op op = kMatch;
    int x = 0, y = 0;      ///< kSplit: both targets; kJmp: x
    std::bitset<256> set;  ///< kByte: the bytes accepted
  };

 private:
  std::vector<Inst> prog_;
};

class SuffixPatterns {
 public:
  /// Compiles the keys in order; throws hydraopt::Error naming `file` and the
  /// key if one is too long or not a valid regular expression.
  SuffixPatterns(const std::vector<std::string>& keys, const std::string& file);
  /// Index of the first key that matches `module`, if any.
  std::optional<size_t> match(const std::string& module) const;

 private:
  std::vector<SuffixRegex> regexes_;
  std::string file_;
};

}  // namespace hydraopt::io
