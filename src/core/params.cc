#include "core/params.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "hydraopt/error.h"

namespace hydraopt {

namespace {

std::string number_text(double x) {
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  std::string s = std::to_string(x);
  s.erase(s.find_last_not_of('0') + 1);
  if (s.back() == '.') s.pop_back();
  return s;
}

std::string joined(const std::vector<std::string>& words, const char* sep) {
  std::string s;
  for (auto& w : words) s += (s.empty() ? "" : sep) + w;
  return s;
}

}  // namespace

double parse_number(const std::string& name, const std::string& v) {
  try {
    size_t pos = 0;
    const double d = std::stod(v, &pos);
    if (pos == v.size() && std::isfinite(d)) return d;
  } catch (...) {
  }
  throw Error("parameter " + name + "=" + v + " is not a number");
}

std::string ParamSpec::range() const {
  if (type == Type::kChoice) return joined(words, " | ");
  const bool lo = std::isfinite(min), hi = std::isfinite(max);
  std::string r = lo && hi ? fmt::format("{}{}, {}]", min_open ? '(' : '[', number_text(min), number_text(max))
                  : lo     ? fmt::format("{} {}", min_open ? ">" : ">=", number_text(min))
                  : hi     ? fmt::format("<= {}", number_text(max))
                           : std::string("any number");
  if (type == Type::kInteger) r = fmt::format("integer {}", r);
  for (auto& w : words) r += fmt::format(" or {}", w);
  return r;
}

void ParamSpec::check(const std::string& value) const {
  if (std::find(words.begin(), words.end(), value) != words.end()) return;
  if (type == Type::kChoice) throw Error(name + " must be " + joined(words, " or ") + ", not '" + value + "'");
  const double d = parse_number(name, value);
  const bool in_range = (min_open ? d > min : d >= min) && d <= max;
  if (type == Type::kInteger && (!in_range || d != std::floor(d))) {
    if (min == 0 && !std::isfinite(max)) throw Error(name + " must be a non-negative integer");
    throw Error(name + " must be an " + range() + ", got " + value);
  }
  if (!in_range) {
    const std::string r = range();
    throw Error(name + " must be " + (r[0] == '(' || r[0] == '[' ? "in " : "") + r + ", got " + value);
  }
}

namespace {

ParamSpec param(std::string name, ParamSpec::Type type, std::string default_value, std::string help) {
  ParamSpec p;
  p.name = std::move(name);
  p.type = type;
  p.default_value = std::move(default_value);
  p.help = std::move(help);
  return p;
}

}  // namespace

ParamSpec integer_param(std::string name, std::string default_value, std::string help, double min, double max) {
  ParamSpec p = param(std::move(name), ParamSpec::Type::kInteger, std::move(default_value), std::move(help));
  p.min = min;
  p.max = max;
  return p;
}

ParamSpec real_param(std::string name, std::string default_value, std::string help, double min, double max,
                     bool min_open) {
  ParamSpec p = param(std::move(name), ParamSpec::Type::kReal, std::move(default_value), std::move(help));
  p.min = min;
  p.max = max;
  p.min_open = min_open;
  return p;
}

ParamSpec choice_param(std::string name, std::string default_value, std::string help, std::vector<std::string> words) {
  ParamSpec p = param(std::move(name), ParamSpec::Type::kChoice, std::move(default_value), std::move(help));
  p.words = std::move(words);
  return p;
}

Params Params::resolve(const std::string& method, const std::vector<ParamSpec>& specs,
                       const std::map<std::string, std::string>& given) {
  Params out;
  for (auto& p : specs) out.values_[p.name] = p.default_value;
  for (const auto& entry : given) {
    const std::string& k = entry.first;  // not a structured binding: clang 14 cannot capture one
    const std::string& v = entry.second;
    auto it = std::find_if(specs.begin(), specs.end(), [&](const ParamSpec& p) { return p.name == k; });
    if (it == specs.end()) {
      std::vector<std::string> names;
      for (auto& p : specs) names.push_back(p.name);
      throw Error("method " + method + " has no parameter '" + k + "'" +
                  (names.empty() ? " (it takes none)" : " (it takes: " + joined(names, ", ") + ")"));
    }
    it->check(v);
    out.values_[k] = v;
  }
  return out;
}

const std::string& Params::text(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) throw Error("internal: no parameter '" + name + "'");
  return it->second;
}

double Params::real(const std::string& name) const { return parse_number(name, text(name)); }

int64_t Params::integer(const std::string& name) const { return static_cast<int64_t>(parse_number(name, text(name))); }

}  // namespace hydraopt
