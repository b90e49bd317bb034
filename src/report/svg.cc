// SVG building blocks for the plots.
#include "report/svg.h"

#include <fmt/format.h>

#include <cmath>

namespace hydraopt::svg {

std::string xml_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size() + 8);
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') break;
        out += ch;
    }
  }
  return out;
}

size_t utf8_length(const std::string& s) {
  size_t n = 0;
  for (char ch : s) n += (static_cast<unsigned char>(ch) & 0xC0) != 0x80;
  return n;
}

std::string utf8_prefix(const std::string& s, size_t n) {
  size_t count = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) {
      if (count == n) return s.substr(0, i);
      ++count;
    }
  }
  return s;
}

double text_width(const std::string& s, double font_size) {
  return 0.6 * font_size * static_cast<double>(utf8_length(s));
}

double nice_step(double range, int target) {
  if (!(range > 0) || !std::isfinite(range)) return 1;
  double raw = range / target;
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (m * mag >= raw * (1 - 1e-9)) return m * mag;
  }
  return 10 * mag;
}

int step_decimals(double step) {
  int k = static_cast<int>(std::floor(std::log10(step) + 1e-9));
  double mant = step / std::pow(10.0, k);
  int d = std::max(0, -k);
  if (std::abs(mant - std::round(mant)) > 1e-6) d = std::max(0, 1 - k);  // 2.5 x 10^k
  return d;
}

std::string num(double v) {
  std::string s = fmt::format("{:.2f}", v);
  if (s == "-0.00") s = "0.00";
  return s;
}


std::string marker(int shape, double x, double y, const char* colour, const std::string& inner) {
  constexpr double r = 4.5;
  const std::string fill = fmt::format(R"(fill="{}" stroke="#ffffff" stroke-width="1")", colour);
  auto poly = [&](std::initializer_list<std::pair<double, double>> pts) {
    std::string p;
    for (const auto& [dx, dy] : pts) {
      if (!p.empty()) p += ' ';
      p += num(x + dx * r) + ',' + num(y + dy * r);
    }
    return fmt::format(R"(<polygon points="{}" {}>{}</polygon>)", p, fill, inner);
  };
  switch (shape % kShapes) {
    case 0:
      return fmt::format(R"(<circle cx="{}" cy="{}" r="{}" {}>{}</circle>)", num(x), num(y), num(r),
                         fill, inner);
    case 1: {
      double h = 0.88 * r;
      return fmt::format(R"(<rect x="{}" y="{}" width="{}" height="{}" {}>{}</rect>)", num(x - h),
                         num(y - h), num(2 * h), num(2 * h), fill, inner);
    }
    case 2:
      return poly({{0, -1.2}, {1.1, 0.8}, {-1.1, 0.8}});
    case 3:
      return poly({{0, -1.25}, {1.1, 0}, {0, 1.25}, {-1.1, 0}});
    case 4:
      return poly({{0, 1.2}, {1.1, -0.8}, {-1.1, -0.8}});
    case 5:
    case 6: {
      double a = 1.05 * r;
      std::string d =
          shape % kShapes == 5
              ? fmt::format("M{},{}L{},{}M{},{}L{},{}", num(x - a), num(y - a), num(x + a),
                            num(y + a), num(x - a), num(y + a), num(x + a), num(y - a))
              : fmt::format("M{},{}L{},{}M{},{}L{},{}", num(x - a * 1.15), num(y),
                            num(x + a * 1.15), num(y), num(x), num(y - a * 1.15), num(x),
                            num(y + a * 1.15));
      // A white halo under the stroke keeps overlapping markers apart.
      return fmt::format(
          R"(<path d="{0}" fill="none" stroke="#ffffff" stroke-width="4.5" stroke-linecap="round"/>)"
          R"(<path d="{0}" fill="none" stroke="{1}" stroke-width="2.5" stroke-linecap="round">{2}</path>)",
          d, colour, inner);
    }
    default: {  // five-pointed star
      std::string p;
      const double pi = 3.14159265358979323846;
      for (int k = 0; k < 10; ++k) {
        double rad = (k % 2 == 0 ? 1.35 : 0.6) * r;
        double ang = -pi / 2 + k * pi / 5;
        if (!p.empty()) p += ' ';
        p += num(x + rad * std::cos(ang)) + ',' + num(y + rad * std::sin(ang));
      }
      return fmt::format(R"(<polygon points="{}" {}>{}</polygon>)", p, fill, inner);
    }
  }
}

}  // namespace hydraopt::svg
