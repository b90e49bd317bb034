#include "report/sweep_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <iterator>

namespace hydraopt {
namespace {

/// Indices of `reports` grouped by method (first-appearance order), sorted
/// by fraction inside a method (stable; NaN fractions last).
std::vector<std::vector<size_t>> group_by_method(const std::vector<MergeReport>& reports) {
  std::vector<std::string> names;
  std::vector<std::vector<size_t>> groups;
  for (size_t i = 0; i < reports.size(); ++i) {
    auto it = std::find(names.begin(), names.end(), reports[i].method);
    if (it == names.end()) {
      names.push_back(reports[i].method);
      groups.emplace_back();
      groups.back().push_back(i);
    } else {
      groups[static_cast<size_t>(it - names.begin())].push_back(i);
    }
  }
  for (auto& g : groups) {
    std::stable_sort(g.begin(), g.end(), [&](size_t a, size_t b) {
      double fa = reports[a].fraction, fb = reports[b].fraction;
      if (std::isnan(fa) || std::isnan(fb)) return !std::isnan(fa) && std::isnan(fb);
      return fa < fb;
    });
  }
  return groups;
}

// ---------------------------------------------------------------- Markdown

std::string md_cell(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '|') {
      out += "\\|";
    } else if (c == '\n' || c == '\r') {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

std::string grouped_int(int64_t v) {
  std::string digits = fmt::format("{}", v);
  size_t start = (!digits.empty() && digits[0] == '-') ? 1 : 0;
  std::string out = digits.substr(0, start);
  size_t n = digits.size() - start;
  for (size_t i = 0; i < n; ++i) {
    if (i > 0 && (n - i) % 3 == 0) out += ',';
    out += digits[start + i];
  }
  return out;
}

const TaskError* worst_task(const MergeReport& r) {
  const TaskError* worst = nullptr;
  for (const auto& t : r.tasks) {
    if (worst == nullptr) {
      worst = &t;
    } else if (std::isnan(t.rel_error)) {
      if (!std::isnan(worst->rel_error)) worst = &t;  // a NaN is the most alarming value
    } else if (t.rel_error > worst->rel_error) {
      worst = &t;
    }
  }
  return worst;
}

// ---------------------------------------------------------------- SVG helpers

/// XML-escapes text/attribute content; drops characters XML 1.0 forbids.
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

/// Number of UTF-8 code points (continuation bytes not counted).
size_t utf8_length(const std::string& s) {
  size_t n = 0;
  for (char ch : s) n += (static_cast<unsigned char>(ch) & 0xC0) != 0x80;
  return n;
}

/// The first `n` code points of `s`.
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

/// A conservative estimate of the width of sans-serif text (0.6 em per
/// character), used to keep labels inside their boxes without font metrics.
double text_width(const std::string& s, double font_size) {
  return 0.6 * font_size * static_cast<double>(utf8_length(s));
}

/// The smallest 1, 2, 2.5, 5 x 10^k step >= range / target.
double nice_step(double range, int target) {
  if (!(range > 0) || !std::isfinite(range)) return 1;
  double raw = range / target;
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (m * mag >= raw * (1 - 1e-9)) return m * mag;
  }
  return 10 * mag;
}

/// Decimals needed to print multiples of `step` exactly.
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

// Okabe & Ito (2008), "Color Universal Design": colour-blind-friendly. Its
// yellow (#F0E442) is nearly invisible on white and is replaced by the grey
// (#999999) that R's palette.colors("Okabe-Ito") ships with it.
constexpr std::array<const char*, 8> kPalette = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                                 "#E69F00", "#56B4E9", "#000000", "#999999"};
constexpr int kShapes = 8;

/// A marker of shape `shape` centred at (x, y). Filled shapes get a thin
/// white outline so overlapping markers stay distinguishable; x and plus are
/// stroked over a white halo. `inner` is placed inside the element (e.g. a <title>).
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

}  // namespace

std::string sweep_markdown(const std::vector<MergeReport>& reports) {
  std::string out =
      "| method | budget | storage fraction | stored params | mean rel. error | worst task | "
      "seconds |\n"
      "|---|---:|---:|---:|---:|---|---:|\n";
  for (const auto& group : group_by_method(reports)) {
    for (size_t i : group) {
      const MergeReport& r = reports[i];
      std::string budget = r.budget > 0 ? fmt::format("{:.4g}", r.budget) : "—";
      const TaskError* w = worst_task(r);
      std::string worst = w ? fmt::format("{} ({:#.4g})", md_cell(w->name), w->rel_error) : "—";
      out += fmt::format("| {} | {} | {:.3f} | {} | {:#.4g} | {} | {:.2f} |\n", md_cell(r.method),
                         budget, r.fraction, grouped_int(r.params), r.mean_rel_error, worst,
                         r.seconds);
    }
  }
  return out;
}

std::string sweep_svg(const std::vector<MergeReport>& reports, const std::string& title) {
  std::vector<PlotSeries> series;
  for (const auto& group : group_by_method(reports)) {
    PlotSeries se{reports[group[0]].method, {}};
    for (size_t i : group) se.points.emplace_back(reports[i].fraction, reports[i].mean_rel_error);
    series.push_back(std::move(se));
  }
  return line_plot_svg(series, {title, "mean relative error", "error"});
}

std::string line_plot_svg(const std::vector<PlotSeries>& input, const PlotLabels& labels) {
  using namespace sweep_svg_layout;
  const std::string& title = labels.title;
  const double plot_l = kLeft, plot_r = kWidth - kRight, plot_t = kTop, plot_b = kHeight - kBottom;
  const double plot_w = plot_r - plot_l, plot_h = plot_b - plot_t;

  // Axis ranges.
  double x_max = 1, e_max = 0;
  bool any_error = false;
  for (const auto& se : input) {
    for (const auto& [f, e] : se.points) {
      if (!std::isfinite(f) || !std::isfinite(e)) continue;
      x_max = std::max(x_max, f);
      if (!any_error || e > e_max) e_max = e;
      any_error = true;
    }
  }
  double y_step, y_max;
  if (!any_error || !(e_max > 0)) {
    y_step = 0.2;
    y_max = 1;
  } else {
    // A few baselines can be far worse than storing nothing (errors of 2-6);
    // cap the axis at kErrorCap and draw those points off scale instead.
    y_step = nice_step(std::min(e_max, kErrorCap), 6);  // 4 to 7 intervals
    y_max = std::min(kErrorCap,
                     (std::floor(e_max / y_step + 1e-9) + 1) * y_step);  // strictly above e_max
  }
  auto off_scale = [&](double e) { return e > y_max; };
  const double x_step = nice_step(x_max, 10);
  auto px = [&](double f) { return plot_l + f / x_max * plot_w; };
  auto py = [&](double e) { return plot_t + (1 - e / y_max) * plot_h; };

  std::string s;
  s += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  s += fmt::format(
      R"(<svg xmlns="http://www.w3.org/2000/svg" width="{0}" height="{1}" viewBox="0 0 {0} {1}" )"
      R"(font-family="sans-serif" font-size="12">)"
      "\n",
      kWidth, kHeight);
  s += fmt::format("<title>{}</title>\n", xml_escape(title));
  s += fmt::format(R"(<rect x="0" y="0" width="{}" height="{}" fill="#ffffff"/>)"
                   "\n",
                   kWidth, kHeight);

  // Title, shrunk to fit the width.
  {
    double fs = 16;
    while (fs > 9 && text_width(title, fs) > kWidth - 20) fs -= 1;
    s += fmt::format(
        R"(<text x="{}" y="{}" text-anchor="middle" font-size="{}" font-weight="bold" fill="#222222">{}</text>)"
        "\n",
        num(kWidth / 2), num(plot_t - 18), fs, xml_escape(title));
  }

  // Gridlines, ticks and tick labels.
  s += R"(<g id="grid" stroke="#e3e3e3" stroke-width="1">)"
       "\n";
  std::vector<double> x_ticks, y_ticks;
  for (int i = 0;; ++i) {
    double v = i * x_step;
    if (v > x_max * (1 + 1e-9)) break;
    x_ticks.push_back(v);
  }
  for (int i = 0;; ++i) {
    double v = i * y_step;
    if (v > y_max * (1 + 1e-9)) break;
    y_ticks.push_back(v);
  }
  for (double v : x_ticks) {
    if (v == 0) continue;
    s += fmt::format(R"(<line x1="{0}" y1="{1}" x2="{0}" y2="{2}"/>)"
                     "\n",
                     num(px(v)), num(plot_t), num(plot_b));
  }
  for (double v : y_ticks) {
    if (v == 0) continue;
    s += fmt::format(R"(<line x1="{1}" y1="{0}" x2="{2}" y2="{0}"/>)"
                     "\n",
                     num(py(v)), num(plot_l), num(plot_r));
  }
  s += "</g>\n";

  s += R"(<g id="axes" stroke="#333333" stroke-width="1">)"
       "\n";
  s += fmt::format(R"(<rect x="{}" y="{}" width="{}" height="{}" fill="none"/>)"
                   "\n",
                   num(plot_l), num(plot_t), num(plot_w), num(plot_h));
  for (double v : x_ticks) {
    s += fmt::format(R"(<line x1="{0}" y1="{1}" x2="{0}" y2="{2}"/>)"
                     "\n",
                     num(px(v)), num(plot_b), num(plot_b + 5));
  }
  for (double v : y_ticks) {
    s += fmt::format(R"(<line x1="{1}" y1="{0}" x2="{2}" y2="{0}"/>)"
                     "\n",
                     num(py(v)), num(plot_l - 5), num(plot_l));
  }
  s += "</g>\n";

  const int xd = step_decimals(x_step), yd = step_decimals(y_step);
  s += R"(<g id="tick-labels" fill="#333333" font-size="11">)"
       "\n";
  for (double v : x_ticks) {
    s += fmt::format(R"(<text x="{}" y="{}" text-anchor="middle">{:.{}f}</text>)"
                     "\n",
                     num(px(v)), num(plot_b + 18), v, xd);
  }
  for (double v : y_ticks) {
    s += fmt::format(R"(<text x="{}" y="{}" text-anchor="end">{:.{}f}</text>)"
                     "\n",
                     num(plot_l - 8), num(py(v) + 4), v, yd);
  }
  s += "</g>\n";

  // Axis titles.
  s += fmt::format(
      R"(<text x="{}" y="{}" text-anchor="middle" font-size="13" fill="#222222">{}</text>)"
      "\n",
      num(plot_l + plot_w / 2), num(plot_b + 42),
      "storage (fraction of the original LoRA parameters)");
  s += fmt::format(
      R"~(<text x="{0}" y="{1}" transform="rotate(-90 {0} {1})" text-anchor="middle" font-size="13" fill="#222222">{2}</text>)~"
      "\n",
      num(20), num(plot_t + plot_h / 2), xml_escape(labels.y_axis));

  // Series: all lines first, then all markers on top of them.
  struct Series {
    std::string name;
    const char* colour;
    int shape;
    std::vector<std::pair<double, double>> pts;  // (fraction, error), finite only
  };
  std::vector<Series> series;
  for (size_t g = 0; g < input.size(); ++g) {
    Series se;
    se.name = input[g].name;
    se.colour = kPalette[g % kPalette.size()];
    se.shape = static_cast<int>((g + g / kPalette.size()) % kShapes);
    for (const auto& [f, e] : input[g].points) {
      if (std::isfinite(f) && std::isfinite(e)) se.pts.emplace_back(f, e);
    }
    series.push_back(std::move(se));
  }

  s +=
      R"(<g id="lines" fill="none" stroke-width="2" stroke-linejoin="round" stroke-linecap="round">)"
      "\n";
  for (const auto& se : series) {
    if (se.pts.size() < 2) continue;
    // Clip at the top edge: split into runs of visible points, each run
    // extended to where its line crosses y_max.
    std::vector<std::vector<std::pair<double, double>>> runs(1);  // pixel coordinates
    auto add = [&](double x, double y) {
      auto& run = runs.back();
      std::string key = num(x) + ',' + num(y);
      if (run.empty() || num(run.back().first) + ',' + num(run.back().second) != key)
        run.emplace_back(x, y);
    };
    for (size_t i = 0; i < se.pts.size(); ++i) {
      const auto [f, e] = se.pts[i];
      if (i > 0) {
        const auto [f0, e0] = se.pts[i - 1];
        if (off_scale(e0) != off_scale(e)) {  // the segment crosses the top edge
          double t = (y_max - e0) / (e - e0);
          add(px(f0 + t * (f - f0)), plot_t);
          if (!off_scale(e0)) runs.emplace_back();  // leaving: close this run
        }
      }
      if (!off_scale(e)) add(px(f), py(e));
    }
    for (const auto& run : runs) {
      if (run.size() < 2) continue;
      std::string pts;
      for (const auto& [x, y] : run) {
        if (!pts.empty()) pts += ' ';
        pts += num(x) + ',' + num(y);
      }
      s += fmt::format(R"(<polyline data-method="{}" stroke="{}" points="{}"/>)"
                       "\n",
                       xml_escape(se.name), se.colour, pts);
    }
  }
  s += "</g>\n";

  s += R"(<g id="markers">)"
       "\n";
  for (const auto& se : series) {
    s += fmt::format(R"(<g data-method="{}">)", xml_escape(se.name));
    for (const auto& [f, e] : se.pts) {
      std::string tip = fmt::format("<title>{}: fraction {:.3f}, {} {:.4g}</title>", xml_escape(se.name), f,
                                    xml_escape(labels.value), e);
      s += marker(se.shape, px(f), off_scale(e) ? plot_t : py(e), se.colour, tip);
    }
    s += "</g>\n";
  }
  s += "</g>\n";

  // Off-scale points: a caret above the top edge and a boxed label (marker
  // shape + value) inside the plot, placed greedily left to right: beside
  // the marker (right side, or left near the right edge), moved down one row
  // at a time until it overlaps no label placed before.
  {
    struct OffScale {
      double x, e;
      const Series* se;
    };
    std::vector<OffScale> off;
    for (const auto& se : series) {
      for (const auto& [f, e] : se.pts) {
        if (off_scale(e)) off.push_back({px(f), e, &se});
      }
    }
    // By x, then worst first (stable: ties keep series order).
    std::stable_sort(off.begin(), off.end(), [](const OffScale& a, const OffScale& b) {
      return a.x != b.x ? a.x < b.x : a.e > b.e;
    });
    if (!off.empty()) {
      s += R"(<g id="off-scale">)"
           "\n";
      std::vector<std::string> carets;
      for (const auto& o : off) {
        std::string c = fmt::format(R"(<polygon points="{},{} {},{} {},{}" fill="#333333"/>)",
                                    num(o.x), num(plot_t - 13.5), num(o.x + 4), num(plot_t - 8),
                                    num(o.x - 4), num(plot_t - 8));
        if (std::find(carets.begin(), carets.end(), c) == carets.end()) carets.push_back(c);
      }
      for (const auto& c : carets) s += c + "\n";

      constexpr double fs = 11, row_h = 15, box_h = 13, gap = 8;
      struct Box {
        double x0, y0, x1, y1;
      };
      std::vector<Box> placed;
      for (const auto& o : off) {
        // 3 significant digits: "6.17", "14.2", "123"; beyond that "1.23e5".
        std::string text = fmt::format("{:#.3g}", o.e);
        if (o.e >= 999.5) {
          text = fmt::format("{:.2e}", o.e);
          auto ep = text.find('e');
          int ex = std::stoi(text.substr(ep + 1));
          text = text.substr(0, ep) + fmt::format("e{}", ex);
        }
        const double w = 20 + text_width(text, fs);
        double x0 = o.x + gap;
        if (x0 + w > plot_r - 2) x0 = o.x - gap - w;
        double y0 = plot_t + 4;
        for (int k = 0; k < 200; ++k, y0 += row_h) {
          bool clash = std::any_of(placed.begin(), placed.end(), [&](const Box& b) {
            return x0 < b.x1 + 2 && b.x0 < x0 + w + 2 && y0 < b.y1 && b.y0 < y0 + box_h;
          });
          if (!clash) break;
        }
        placed.push_back({x0, y0, x0 + w, y0 + box_h});
        const double cy = y0 + box_h / 2;
        s += fmt::format(
            R"(<g class="off-scale-label" data-method="{}"><rect x="{}" y="{}" width="{}" height="{}" rx="2" fill="#ffffff" fill-opacity="0.9" stroke="{}" stroke-width="0.8"/>)",
            xml_escape(o.se->name), num(x0), num(y0), num(w), num(box_h), o.se->colour);
        s += fmt::format(R"~(<g transform="translate({},{}) scale(0.75)">)~", num(x0 + 7.5),
                         num(cy));
        s += marker(o.se->shape, 0, 0, o.se->colour, "");
        s += fmt::format(R"(</g><text x="{}" y="{}" font-size="{}" fill="#222222">{}</text></g>)"
                         "\n",
                         num(x0 + 16), num(cy + fs * 0.35), fs, text);
      }
      s += "</g>\n";
    }
  }

  // Legend in the right margin, top-aligned with the plot.
  {
    const double lx = plot_r + 16, lw = kWidth - lx - 8;
    const double text_x = 36, text_room = lw - text_x - 6;
    const size_t n = series.size();
    double row = 20;
    if (n > 0) row = std::clamp((plot_h - 12) / static_cast<double>(n), 11.0, 20.0);
    const double lh = 10 + row * static_cast<double>(n);
    s += fmt::format(R"~(<g id="legend" transform="translate({},{})">)~"
                     "\n",
                     num(lx), num(plot_t));
    s += fmt::format(R"(<rect x="0" y="0" width="{}" height="{}" fill="#ffffff" stroke="#bbbbbb"/>)"
                     "\n",
                     num(lw), num(lh));
    for (size_t i = 0; i < n; ++i) {
      const auto& se = series[i];
      double cy = 5 + row * (static_cast<double>(i) + 0.5);
      // Shrink long names down to 9 px, then truncate with an ellipsis (the
      // full name stays in the entry's <title>).
      double fs = std::min(12.0, row - 1);
      while (fs > 9 && text_width(se.name, fs) > text_room) fs -= 0.5;
      std::string label = se.name;
      if (text_width(label, fs) > text_room) {
        size_t keep = static_cast<size_t>(std::max(1.0, std::floor(text_room / (0.6 * fs)) - 1));
        label = utf8_prefix(label, keep) + "\u2026";
      }
      s += fmt::format(R"(<g class="legend-entry"><title>{}</title>)", xml_escape(se.name));
      if (se.pts.size() >= 2) {
        s +=
            fmt::format(R"(<line x1="6" y1="{0}" x2="30" y2="{0}" stroke="{1}" stroke-width="2"/>)",
                        num(cy), se.colour);
      }
      s += marker(se.shape, 18, cy, se.colour, "");
      s += fmt::format(R"(<text x="{}" y="{}" font-size="{}" fill="#222222">{}</text></g>)"
                       "\n",
                       num(text_x), num(cy + fs * 0.35), fs, xml_escape(label));
    }
    s += "</g>\n";
  }

  if (series.empty()) {
    s += fmt::format(R"(<text x="{}" y="{}" text-anchor="middle" fill="#777777">no data</text>)"
                     "\n",
                     num(plot_l + plot_w / 2), num(plot_t + plot_h / 2));
  }
  s += "</svg>\n";
  return s;
}

}  // namespace hydraopt
