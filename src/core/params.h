// Method parameters: what a method takes (ParamSpec, with its type, default
// and range) and the values a run uses once checked (Params).
//
// Values stay text, exactly as given (a report and a bundle record them as
// the user wrote them); typed accessors read them as numbers.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace hydraopt {

struct ParamSpec {
  enum class Type { kInteger, kReal, kChoice };

  std::string name;  ///< as in MergeOptions::params; the CLI flag is --name with '-' for '_'
  Type type = Type::kReal;
  std::string default_value;
  std::string help;
  /// Numbers: the allowed range, min excluded when min_open.
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  bool min_open = false;
  /// kChoice: the allowed words. Numbers: words allowed besides a number
  /// (lambda's "1/N").
  std::vector<std::string> words;

  /// The allowed values as text: "(0, 1]", ">= 0", "total | frequency".
  std::string range() const;
  /// Throws hydraopt::Error saying what is allowed if `value` is not.
  void check(const std::string& value) const;
};

/// Shorthands for the common kinds of parameter.
ParamSpec integer_param(std::string name, std::string default_value, std::string help, double min = 0,
                        double max = std::numeric_limits<double>::infinity());
ParamSpec real_param(std::string name, std::string default_value, std::string help, double min, double max,
                     bool min_open = false);
ParamSpec choice_param(std::string name, std::string default_value, std::string help, std::vector<std::string> words);

class Params {
 public:
  Params() = default;
  /// Every spec's value: the given one if any (checked), else its default.
  /// A given name that `method` does not take is an error naming both.
  static Params resolve(const std::string& method, const std::vector<ParamSpec>& specs,
                        const std::map<std::string, std::string>& given);

  const std::map<std::string, std::string>& values() const { return values_; }
  bool has(const std::string& name) const { return values_.count(name) > 0; }
  const std::string& text(const std::string& name) const;
  double real(const std::string& name) const;
  int64_t integer(const std::string& name) const;

 private:
  std::map<std::string, std::string> values_;
};

/// v as a finite number, or an Error naming the parameter.
double parse_number(const std::string& name, const std::string& v);

}  // namespace hydraopt
