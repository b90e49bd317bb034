// line_plot_svg (include/hydraopt/plot.h): the frame (axis ranges and the
// data-to-pixel maps), then each layer of the picture in drawing order:
// grid and axes, axis titles, lines, markers, off-scale labels, legend.
// Layout constants and the y-axis rule: src/report/sweep_report.h.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "hydraopt/plot.h"
#include "report/svg.h"
#include "report/sweep_report.h"

namespace hydraopt {
namespace {

using namespace svg;

using namespace sweep_svg_layout;

// Axis ranges and the maps from data to pixels.
struct Frame {
  double l = kLeft, r = kWidth - kRight, t = kTop, b = kHeight - kBottom;
  double x_max = 1, x_step = 1, y_max = 1, y_step = 0.2;
  double w() const { return r - l; }
  double h() const { return b - t; }
  double px(double f) const { return l + f / x_max * w(); }
  double py(double e) const { return t + (1 - e / y_max) * h(); }
  bool off_scale(double e) const { return e > y_max; }
};

Frame frame_for(const std::vector<PlotSeries>& input) {
  Frame fr;
  double e_max = 0;
  bool any_error = false;
  for (const auto& se : input) {
    for (const auto& [f, e] : se.points) {
      if (!std::isfinite(f) || !std::isfinite(e)) continue;
      fr.x_max = std::max(fr.x_max, f);
      if (!any_error || e > e_max) e_max = e;
      any_error = true;
    }
  }
  if (any_error && e_max > 0) {
    // A few baselines can be far worse than storing nothing (errors of 2-6);
    // cap the axis at kErrorCap and draw those points off scale instead.
    fr.y_step = nice_step(std::min(e_max, kErrorCap), 6);  // 4 to 7 intervals
    fr.y_max = std::min(kErrorCap, (std::floor(e_max / fr.y_step + 1e-9) + 1) * fr.y_step);  // strictly above e_max
  }
  fr.x_step = nice_step(fr.x_max, 10);
  return fr;
}

// One drawn series: its colour, marker shape and finite points.
struct Series {
  std::string name;
  const char* colour;
  int shape;
  std::vector<std::pair<double, double>> pts;  // (fraction, value)
};

std::vector<Series> styled(const std::vector<PlotSeries>& input) {
  std::vector<Series> series;
  for (size_t g = 0; g < input.size(); ++g) {
    Series se{input[g].name, kPalette[g % kPalette.size()], static_cast<int>((g + g / kPalette.size()) % kShapes), {}};
    for (const auto& [f, e] : input[g].points) {
      if (std::isfinite(f) && std::isfinite(e)) se.pts.emplace_back(f, e);
    }
    series.push_back(std::move(se));
  }
  return series;
}

std::string header(const std::string& title, const Frame& fr) {
  std::string s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  s += fmt::format(
      R"(<svg xmlns="http://www.w3.org/2000/svg" width="{0}" height="{1}" viewBox="0 0 {0} {1}" )"
      R"(font-family="sans-serif" font-size="12">)"
      "\n",
      kWidth, kHeight);
  s += fmt::format("<title>{}</title>\n", xml_escape(title));
  s += fmt::format(R"(<rect x="0" y="0" width="{}" height="{}" fill="#ffffff"/>)"
                   "\n",
                   kWidth, kHeight);
  // The title, shrunk to fit the width.
  double fs = 16;
  while (fs > 9 && text_width(title, fs) > kWidth - 20) fs -= 1;
  s += fmt::format(
      R"(<text x="{}" y="{}" text-anchor="middle" font-size="{}" font-weight="bold" fill="#222222">{}</text>)"
      "\n",
      num(kWidth / 2), num(fr.t - 18), fs, xml_escape(title));
  return s;
}

std::vector<double> ticks(double step, double max) {
  std::vector<double> out;
  for (int i = 0;; ++i) {
    const double v = i * step;
    if (v > max * (1 + 1e-9)) break;
    out.push_back(v);
  }
  return out;
}

// Gridlines, the plot frame, ticks and tick labels.
std::string grid_and_axes(const Frame& fr) {
  const std::vector<double> x_ticks = ticks(fr.x_step, fr.x_max), y_ticks = ticks(fr.y_step, fr.y_max);
  std::string s = R"(<g id="grid" stroke="#e3e3e3" stroke-width="1">)"
                  "\n";
  for (double v : x_ticks) {
    if (v == 0) continue;
    s += fmt::format(R"(<line x1="{0}" y1="{1}" x2="{0}" y2="{2}"/>)"
                     "\n",
                     num(fr.px(v)), num(fr.t), num(fr.b));
  }
  for (double v : y_ticks) {
    if (v == 0) continue;
    s += fmt::format(R"(<line x1="{1}" y1="{0}" x2="{2}" y2="{0}"/>)"
                     "\n",
                     num(fr.py(v)), num(fr.l), num(fr.r));
  }
  s += "</g>\n";

  s += R"(<g id="axes" stroke="#333333" stroke-width="1">)"
       "\n";
  s += fmt::format(R"(<rect x="{}" y="{}" width="{}" height="{}" fill="none"/>)"
                   "\n",
                   num(fr.l), num(fr.t), num(fr.w()), num(fr.h()));
  for (double v : x_ticks) {
    s += fmt::format(R"(<line x1="{0}" y1="{1}" x2="{0}" y2="{2}"/>)"
                     "\n",
                     num(fr.px(v)), num(fr.b), num(fr.b + 5));
  }
  for (double v : y_ticks) {
    s += fmt::format(R"(<line x1="{1}" y1="{0}" x2="{2}" y2="{0}"/>)"
                     "\n",
                     num(fr.py(v)), num(fr.l - 5), num(fr.l));
  }
  s += "</g>\n";

  const int xd = step_decimals(fr.x_step), yd = step_decimals(fr.y_step);
  s += R"(<g id="tick-labels" fill="#333333" font-size="11">)"
       "\n";
  for (double v : x_ticks) {
    s += fmt::format(R"(<text x="{}" y="{}" text-anchor="middle">{:.{}f}</text>)"
                     "\n",
                     num(fr.px(v)), num(fr.b + 18), v, xd);
  }
  for (double v : y_ticks) {
    s += fmt::format(R"(<text x="{}" y="{}" text-anchor="end">{:.{}f}</text>)"
                     "\n",
                     num(fr.l - 8), num(fr.py(v) + 4), v, yd);
  }
  s += "</g>\n";
  return s;
}

std::string axis_titles(const Frame& fr, const std::string& x_axis, const std::string& y_axis) {
  std::string s = fmt::format(
      R"(<text x="{}" y="{}" text-anchor="middle" font-size="13" fill="#222222">{}</text>)"
      "\n",
      num(fr.l + fr.w() / 2), num(fr.b + 42),
      x_axis.empty() ? std::string("storage (fraction of the original LoRA parameters)") : xml_escape(x_axis));
  s += fmt::format(
      R"~(<text x="{0}" y="{1}" transform="rotate(-90 {0} {1})" text-anchor="middle" font-size="13" fill="#222222">{2}</text>)~"
      "\n",
      num(20), num(fr.t + fr.h() / 2), xml_escape(y_axis));
  return s;
}

// A series' line in pixels, clipped at the top edge: runs of visible
// points, each extended to where its line crosses y_max.
std::vector<std::vector<std::pair<double, double>>> visible_runs(const Series& se, const Frame& fr) {
  std::vector<std::vector<std::pair<double, double>>> runs(1);
  auto add = [&](double x, double y) {
    auto& run = runs.back();
    const std::string key = num(x) + ',' + num(y);
    if (run.empty() || num(run.back().first) + ',' + num(run.back().second) != key) run.emplace_back(x, y);
  };
  for (size_t i = 0; i < se.pts.size(); ++i) {
    const auto [f, e] = se.pts[i];
    if (i > 0) {
      const auto [f0, e0] = se.pts[i - 1];
      if (fr.off_scale(e0) != fr.off_scale(e)) {  // the segment crosses the top edge
        const double t = (fr.y_max - e0) / (e - e0);
        add(fr.px(f0 + t * (f - f0)), fr.t);
        if (!fr.off_scale(e0)) runs.emplace_back();  // leaving: close this run
      }
    }
    if (!fr.off_scale(e)) add(fr.px(f), fr.py(e));
  }
  return runs;
}

std::string lines(const std::vector<Series>& series, const Frame& fr) {
  std::string s =
      R"(<g id="lines" fill="none" stroke-width="2" stroke-linejoin="round" stroke-linecap="round">)"
      "\n";
  for (const auto& se : series) {
    if (se.pts.size() < 2) continue;
    for (const auto& run : visible_runs(se, fr)) {
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
  return s + "</g>\n";
}

std::string markers(const std::vector<Series>& series, const Frame& fr, const std::string& value) {
  std::string s = R"(<g id="markers">)"
                  "\n";
  for (const auto& se : series) {
    s += fmt::format(R"(<g data-method="{}">)", xml_escape(se.name));
    for (const auto& [f, e] : se.pts) {
      const std::string tip =
          fmt::format("<title>{}: fraction {:.3f}, {} {:.4g}</title>", xml_escape(se.name), f, xml_escape(value), e);
      s += marker(se.shape, fr.px(f), fr.off_scale(e) ? fr.t : fr.py(e), se.colour, tip);
    }
    s += "</g>\n";
  }
  return s + "</g>\n";
}

// 3 significant digits: "6.17", "14.2", "123"; beyond that "1.23e5".
std::string off_scale_text(double e) {
  std::string text = fmt::format("{:#.3g}", e);
  if (e >= 999.5) {
    text = fmt::format("{:.2e}", e);
    const auto ep = text.find('e');
    const int ex = std::stoi(text.substr(ep + 1));
    text = text.substr(0, ep) + fmt::format("e{}", ex);
  }
  return text;
}

// Off-scale points: a caret above the top edge and a boxed label (marker
// shape + value) inside the plot, placed greedily left to right: beside
// the marker (right side, or left near the right edge), moved down one row
// at a time until it overlaps no label placed before.
std::string off_scale_labels(const std::vector<Series>& series, const Frame& fr) {
  struct OffScale {
    double x, e;
    const Series* se;
  };
  std::vector<OffScale> off;
  for (const auto& se : series) {
    for (const auto& [f, e] : se.pts) {
      if (fr.off_scale(e)) off.push_back({fr.px(f), e, &se});
    }
  }
  if (off.empty()) return "";
  // By x, then worst first (stable: ties keep series order).
  std::stable_sort(off.begin(), off.end(), [](const OffScale& a, const OffScale& b) {
    return a.x != b.x ? a.x < b.x : a.e > b.e;
  });
  std::string s = R"(<g id="off-scale">)"
                  "\n";
  std::vector<std::string> carets;
  for (const auto& o : off) {
    std::string c = fmt::format(R"(<polygon points="{},{} {},{} {},{}" fill="#333333"/>)", num(o.x), num(fr.t - 13.5),
                                num(o.x + 4), num(fr.t - 8), num(o.x - 4), num(fr.t - 8));
    if (std::find(carets.begin(), carets.end(), c) == carets.end()) carets.push_back(c);
  }
  for (const auto& c : carets) s += c + "\n";

  constexpr double fs = 11, row_h = 15, box_h = 13, gap = 8;
  struct Box {
    double x0, y0, x1, y1;
  };
  std::vector<Box> placed;
  for (const auto& o : off) {
    const std::string text = off_scale_text(o.e);
    const double w = 20 + text_width(text, fs);
    double x0 = o.x + gap;
    if (x0 + w > fr.r - 2) x0 = o.x - gap - w;
    double y0 = fr.t + 4;
    for (int k = 0; k < 200; ++k, y0 += row_h) {
      const bool clash = std::any_of(placed.begin(), placed.end(), [&](const Box& b) {
        return x0 < b.x1 + 2 && b.x0 < x0 + w + 2 && y0 < b.y1 && b.y0 < y0 + box_h;
      });
      if (!clash) break;
    }
    placed.push_back({x0, y0, x0 + w, y0 + box_h});
    const double cy = y0 + box_h / 2;
    s += fmt::format(
        R"(<g class="off-scale-label" data-method="{}"><rect x="{}" y="{}" width="{}" height="{}" rx="2" fill="#ffffff" fill-opacity="0.9" stroke="{}" stroke-width="0.8"/>)",
        xml_escape(o.se->name), num(x0), num(y0), num(w), num(box_h), o.se->colour);
    s += fmt::format(R"~(<g transform="translate({},{}) scale(0.75)">)~", num(x0 + 7.5), num(cy));
    s += marker(o.se->shape, 0, 0, o.se->colour, "");
    s += fmt::format(R"(</g><text x="{}" y="{}" font-size="{}" fill="#222222">{}</text></g>)"
                     "\n",
                     num(x0 + 16), num(cy + fs * 0.35), fs, text);
  }
  return s + "</g>\n";
}

// The legend in the right margin, top-aligned with the plot. Long names
// shrink down to 9 px, then are cut with an ellipsis (the full name stays
// in the entry's <title>).
std::string legend(const std::vector<Series>& series, const Frame& fr) {
  const double lx = fr.r + 16, lw = kWidth - lx - 8;
  const double text_x = 36, text_room = lw - text_x - 6;
  const size_t n = series.size();
  double row = 20;
  if (n > 0) row = std::clamp((fr.h() - 12) / static_cast<double>(n), 11.0, 20.0);
  const double lh = 10 + row * static_cast<double>(n);
  std::string s = fmt::format(R"~(<g id="legend" transform="translate({},{})">)~"
                              "\n",
                              num(lx), num(fr.t));
  s += fmt::format(R"(<rect x="0" y="0" width="{}" height="{}" fill="#ffffff" stroke="#bbbbbb"/>)"
                   "\n",
                   num(lw), num(lh));
  for (size_t i = 0; i < n; ++i) {
    const auto& se = series[i];
    const double cy = 5 + row * (static_cast<double>(i) + 0.5);
    double fs = std::min(12.0, row - 1);
    while (fs > 9 && text_width(se.name, fs) > text_room) fs -= 0.5;
    std::string label = se.name;
    if (text_width(label, fs) > text_room) {
      const auto keep = static_cast<size_t>(std::max(1.0, std::floor(text_room / (0.6 * fs)) - 1));
      label = utf8_prefix(label, keep) + "\u2026";
    }
    s += fmt::format(R"(<g class="legend-entry"><title>{}</title>)", xml_escape(se.name));
    if (se.pts.size() >= 2) {
      s += fmt::format(R"(<line x1="6" y1="{0}" x2="30" y2="{0}" stroke="{1}" stroke-width="2"/>)", num(cy), se.colour);
    }
    s += marker(se.shape, 18, cy, se.colour, "");
    s += fmt::format(R"(<text x="{}" y="{}" font-size="{}" fill="#222222">{}</text></g>)"
                     "\n",
                     num(text_x), num(cy + fs * 0.35), fs, xml_escape(label));
  }
  return s + "</g>\n";
}

}  // namespace

std::string line_plot_svg(const std::vector<PlotSeries>& input, const PlotLabels& labels) {
  const Frame fr = frame_for(input);
  const std::vector<Series> series = styled(input);
  std::string s = header(labels.title, fr);
  s += grid_and_axes(fr);
  s += axis_titles(fr, labels.x_axis, labels.y_axis);
  s += lines(series, fr);  // all lines first, then the markers on top
  s += markers(series, fr, labels.value);
  s += off_scale_labels(series, fr);
  s += legend(series, fr);
  if (series.empty()) {
    s += fmt::format(R"(<text x="{}" y="{}" text-anchor="middle" fill="#777777">no data</text>)"
                     "\n",
                     num(fr.l + fr.w() / 2), num(fr.t + fr.h() / 2));
  }
  return s + "</svg>\n";
}

}  // namespace hydraopt
