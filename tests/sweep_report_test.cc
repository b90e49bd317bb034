// Markdown table and SVG plot of a sweep: structure, grouping/sorting,
// escaping, the documented data -> pixel mapping and determinism.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "report/sweep_report.h"
#include "test_util.h"

namespace hydraopt {
namespace {

MergeReport rep(const std::string& method, double fraction, double err,
                std::vector<TaskError> tasks = {}, double seconds = 0.5) {
  MergeReport r;
  r.method = method;
  r.budget = fraction;
  r.original_params = 1000000;
  r.params = static_cast<int64_t>(std::llround(fraction * 1000000));
  r.fraction = fraction;
  r.bytes = 2 * r.params;  // f32 inputs stored as bf16
  r.original_bytes = 4 * r.original_params;
  r.byte_fraction = fraction / 2;
  r.bf16_fraction = fraction / 2;  // (not a real report's: bf16 bytes would give `fraction`)
  r.mean_rel_error = err;
  r.tasks = std::move(tasks);
  r.seconds = seconds;
  return r;
}

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

size_t count(const std::string& s, const std::string& needle) {
  size_t n = 0;
  for (size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + needle.size()))
    ++n;
  return n;
}

/// Cells of a Markdown row "| a | b |" (trimmed, '\|' kept escaped).
std::vector<std::string> cells(const std::string& row) {
  std::vector<std::string> out;
  std::string cur;
  for (size_t i = 1; i < row.size(); ++i) {
    if (row[i] == '|' && row[i - 1] != '\\') {
      size_t a = cur.find_first_not_of(' '), b = cur.find_last_not_of(' ');
      out.push_back(a == std::string::npos ? "" : cur.substr(a, b - a + 1));
      cur.clear();
    } else {
      cur += row[i];
    }
  }
  return out;
}

std::vector<MergeReport> sample() {
  return {
      rep("hydraopt", 0.5, 0.05, {{"t0", 0.04}, {"t1", 0.061234567}}),
      rep("ta", 0.025, 0.8, {{"x", 0.8}}),
      rep("hydraopt", 0.1, 0.3, {{"t0", 0.2}, {"t1", 0.4}}),
      rep("jd-diag", 0.25, 0.2),
      rep("hydraopt", 0.25, 0.12),
      rep("jd-diag", 0.05, 0.6),
  };
}

TEST(SweepMarkdown, HeaderAndOneRowPerReport) {
  auto ls = lines(sweep_markdown(sample()));
  ASSERT_EQ(ls.size(), 2u + 6u);
  auto header = cells(ls[0]);
  ASSERT_EQ(header.size(), 9u);
  EXPECT_EQ(header[0], "method");
  EXPECT_EQ(header[1], "budget");
  EXPECT_EQ(header[2], "params fraction");
  EXPECT_EQ(header[3], "bytes / bf16 copy");
  EXPECT_EQ(header[4], "stored params");
  EXPECT_EQ(header[5], "stored bytes");
  EXPECT_EQ(header[6], "mean rel. error");
  EXPECT_EQ(header[7], "worst task");
  EXPECT_EQ(header[8], "seconds");
  EXPECT_EQ(cells(ls[1]).size(), 9u);
  for (size_t i = 2; i < ls.size(); ++i) EXPECT_EQ(cells(ls[i]).size(), 9u) << ls[i];
  EXPECT_TRUE(lines(sweep_markdown({})).size() == 2u);
}

TEST(SweepMarkdown, GroupedByFirstAppearanceSortedByFraction) {
  auto ls = lines(sweep_markdown(sample()));
  std::vector<std::pair<std::string, std::string>> got;
  for (size_t i = 2; i < ls.size(); ++i) {
    auto c = cells(ls[i]);
    got.emplace_back(c[0], c[2]);
  }
  std::vector<std::pair<std::string, std::string>> want = {
      {"hydraopt", "0.100"}, {"hydraopt", "0.250"}, {"hydraopt", "0.500"},
      {"ta", "0.025"},       {"jd-diag", "0.050"},  {"jd-diag", "0.250"},
  };
  EXPECT_EQ(got, want);
}

TEST(SweepMarkdown, NumberFormatsAndWorstTask) {
  auto ls = lines(sweep_markdown(sample()));
  auto c = cells(ls[4]);  // hydraopt @ 0.5
  EXPECT_EQ(c[1], "0.5");
  EXPECT_EQ(c[2], "0.500");
  EXPECT_EQ(c[3], "0.250");
  EXPECT_EQ(c[4], "500,000");
  EXPECT_EQ(c[5], "1,000,000");
  EXPECT_EQ(c[6], "0.05000");
  EXPECT_EQ(c[7], "t1 (0.06123)");
  EXPECT_EQ(c[8], "0.50");
  auto d = cells(ls[6]);  // jd-diag @ 0.05, no tasks
  EXPECT_EQ(d[7], "—");
  MergeReport r = rep("a|b", 0.123456, 0.0123456789);
  r.budget = 0;
  auto e = cells(lines(sweep_markdown({r}))[2]);
  EXPECT_EQ(e[0], "a\\|b");
  EXPECT_EQ(e[1], "—");
  EXPECT_EQ(e[2], "0.123");
  EXPECT_EQ(e[6], "0.01235");
}

TEST(SweepSvg, WellFormedShape) {
  std::string svg = sweep_svg(sample(), "a sweep");
  EXPECT_EQ(count(svg, "<svg "), 1u);
  EXPECT_EQ(count(svg, "</svg>"), 1u);
  EXPECT_LT(svg.find("<svg "), svg.find("</svg>"));
  EXPECT_EQ(svg.find("</svg>") + std::string("</svg>\n").size(), svg.size());
  // Every element that opens also closes (or is self-closing).
  for (const char* tag : {"g", "text", "title", "circle", "polygon", "rect", "path"}) {
    std::regex open(std::string("<") + tag + "[ >]"), self(std::string("<") + tag + "[^>]*/>");
    size_t opens =
        std::distance(std::sregex_iterator(svg.begin(), svg.end(), open), std::sregex_iterator());
    size_t selfs =
        std::distance(std::sregex_iterator(svg.begin(), svg.end(), self), std::sregex_iterator());
    EXPECT_EQ(opens - selfs, count(svg, std::string("</") + tag + ">")) << tag;
  }
  EXPECT_EQ(svg.find("<script"), std::string::npos);
  EXPECT_EQ(svg.find("@import"), std::string::npos);
  EXPECT_EQ(svg.find("href"), std::string::npos);
  EXPECT_NE(svg.find("font-family=\"sans-serif\""), std::string::npos);
  EXPECT_NE(svg.find("storage (fraction of the original LoRA parameters)"), std::string::npos);
  EXPECT_NE(svg.find("mean relative error"), std::string::npos);
  EXPECT_NE(svg.find(">a sweep</text>"), std::string::npos);
}

TEST(SweepSvg, OnePolylinePerMultiPointMethodAndLegend) {
  auto reports = sample();
  std::string svg = sweep_svg(reports, "t");
  // hydraopt (3 points) and jd-diag (2 points) get lines; ta (1 point) not.
  EXPECT_EQ(count(svg, "<polyline"), 2u);
  EXPECT_NE(svg.find(R"(<polyline data-method="hydraopt")"), std::string::npos);
  EXPECT_NE(svg.find(R"(<polyline data-method="jd-diag")"), std::string::npos);
  auto legend = svg.substr(svg.find(R"(<g id="legend")"));
  legend = legend.substr(0, legend.find("</g>\n</g>"));
  for (const char* m : {"hydraopt", "ta", "jd-diag"}) {
    EXPECT_NE(legend.find(std::string(">") + m + "</text>"), std::string::npos) << m;
  }
  EXPECT_EQ(count(legend, "class=\"legend-entry\""), 3u);
  // One marker per finite point in the markers group.
  auto markers = svg.substr(svg.find(R"(<g id="markers")"));
  markers = markers.substr(0, markers.find(R"(<g id="legend")"));
  EXPECT_EQ(count(markers, "<title>"), reports.size());
}

TEST(SweepSvg, EscapesNames) {
  std::string svg =
      sweep_svg({rep("a<b & \"c\"", 0.1, 0.2), rep("a<b & \"c\"", 0.2, 0.1)}, "x < y & z");
  EXPECT_EQ(svg.find("a<b"), std::string::npos);
  EXPECT_EQ(svg.find("x < y"), std::string::npos);
  EXPECT_NE(svg.find("a&lt;b &amp; &quot;c&quot;"), std::string::npos);
  EXPECT_NE(svg.find("x &lt; y &amp; z"), std::string::npos);
  // No bare '&' anywhere: each one starts an entity.
  for (size_t p = svg.find('&'); p != std::string::npos; p = svg.find('&', p + 1)) {
    EXPECT_TRUE(svg.compare(p, 5, "&amp;") == 0 || svg.compare(p, 4, "&lt;") == 0 ||
                svg.compare(p, 4, "&gt;") == 0 || svg.compare(p, 6, "&quot;") == 0 ||
                svg.compare(p, 6, "&apos;") == 0)
        << svg.substr(p, 10);
  }
}

TEST(SweepSvg, KnownPointMapsToDocumentedPixel) {
  using namespace sweep_svg_layout;
  // Largest error 0.9 -> tick step 0.2, y axis 0..1; largest fraction 1 -> x axis 0..1.
  std::vector<MergeReport> reports = {rep("m", 0.25, 0.4), rep("m", 1.0, 0.9), rep("m", 0.05, 0.0)};
  std::string svg = sweep_svg(reports, "t");
  std::smatch mt;
  ASSERT_TRUE(
      std::regex_search(svg, mt, std::regex(R"(<polyline data-method="m"[^>]*points="([^"]*)\")")));
  std::vector<std::pair<double, double>> pts;
  std::istringstream in(mt[1].str());
  for (std::string tok; in >> tok;) {
    auto comma = tok.find(',');
    pts.emplace_back(std::stod(tok.substr(0, comma)), std::stod(tok.substr(comma + 1)));
  }
  ASSERT_EQ(pts.size(), 3u);
  const double w = kWidth - kLeft - kRight, h = kHeight - kTop - kBottom;
  auto expect_at = [&](size_t i, double f, double e, double xmax, double ymax) {
    EXPECT_NEAR(pts[i].first, kLeft + f / xmax * w, 0.5) << i;
    EXPECT_NEAR(pts[i].second, kTop + (1 - e / ymax) * h, 0.5) << i;
  };
  expect_at(0, 0.05, 0.0, 1, 1);  // sorted by fraction
  expect_at(1, 0.25, 0.4, 1, 1);
  expect_at(2, 1.0, 0.9, 1, 1);
  // The circle marker of the first method sits at the same spot.
  EXPECT_NE(
      svg.find(fmt::format(R"(<circle cx="{:.2f}" cy="{:.2f}")", kLeft + 0.25 * w, kTop + 0.6 * h)),
      std::string::npos);

  // x beyond 1 stretches the axis to the largest fraction.
  std::string svg2 = sweep_svg({rep("m", 2.0, 0.33), rep("m", 0.5, 0.1)}, "t");
  ASSERT_TRUE(std::regex_search(svg2, mt,
                                std::regex(R"(<polyline data-method="m"[^>]*points="([^"]*)\")")));
  std::istringstream in2(mt[1].str());
  std::string first;
  in2 >> first;
  EXPECT_NEAR(std::stod(first.substr(0, first.find(','))), kLeft + 0.5 / 2.0 * w, 0.5);
  // 0.33 / 6 = 0.055 -> step 0.1, y max 0.4.
  EXPECT_NEAR(std::stod(first.substr(first.find(',') + 1)), kTop + (1 - 0.1 / 0.4) * h, 0.5);
  EXPECT_NE(svg2.find(">0.4</text>"), std::string::npos);  // top y tick label
  EXPECT_NE(svg2.find(">2.0</text>"), std::string::npos);  // last x tick label
}

/// Values of the y tick labels (right-aligned <text> in the tick-labels group).
std::vector<double> y_tick_values(const std::string& svg) {
  auto g = svg.substr(svg.find(R"(<g id="tick-labels")"));
  g = g.substr(0, g.find("</g>"));
  std::vector<double> out;
  std::regex re(R"(<text [^>]*text-anchor="end">([^<]*)</text>)");
  for (auto it = std::sregex_iterator(g.begin(), g.end(), re); it != std::sregex_iterator(); ++it)
    out.push_back(std::stod((*it)[1]));
  return out;
}

TEST(SweepSvg, OffScaleErrorsAreClampedToTheTopEdgeAndLabelled) {
  using namespace sweep_svg_layout;
  // A baseline far worse than storing nothing must not squash the rest.
  std::vector<MergeReport> reports = {
      rep("linear", 0.0625, 6.0), rep("hydraopt", 0.05, 0.87), rep("hydraopt", 0.5, 0.13),
      rep("hydraopt", 1.0, 0.0),  rep("ties", 0.0625, 1.3),    rep("dare-ties", 0.0625, 2.657),
      rep("ta", 0.0625, 0.9),
  };
  std::string svg = sweep_svg(reports, "t");
  auto ticks = y_tick_values(svg);
  ASSERT_FALSE(ticks.empty());
  const double y_top = *std::max_element(ticks.begin(), ticks.end());
  EXPECT_LE(y_top, kErrorCap + 1e-9);
  EXPECT_GE(y_top, 0.9);
  EXPECT_NE(svg.find(">1.2</text>"), std::string::npos);  // 0.2 steps up to the cap

  // The off-scale values are labelled; on-scale ones are not.
  auto off = svg.substr(svg.find(R"(<g id="off-scale">)"));
  off = off.substr(0, off.find(R"(<g id="legend")"));
  EXPECT_NE(off.find(">6.00</text>"), std::string::npos);
  EXPECT_NE(off.find(">2.66</text>"), std::string::npos);
  EXPECT_NE(off.find(">1.30</text>"), std::string::npos);
  EXPECT_EQ(off.find(">0.900</text>"), std::string::npos);
  EXPECT_EQ(count(off, "class=\"off-scale-label\""), 3u);
  EXPECT_EQ(count(off, R"(fill="#333333")"), 1u);  // one caret: all three share an x

  // The marker of the 6.0 point (first method: a circle) sits on the top edge
  // at its true x; an on-scale point keeps the documented mapping.
  const double w = kWidth - kLeft - kRight, h = kHeight - kTop - kBottom;
  EXPECT_NE(svg.find(fmt::format(R"(<circle cx="{:.2f}" cy="{:.2f}")", kLeft + 0.0625 * w, kTop)),
            std::string::npos);
  EXPECT_NE(svg.find(fmt::format(R"(<rect x="{:.2f}" y="{:.2f}")", kLeft + 0.5 * w - 0.88 * 4.5,
                                 kTop + (1 - 0.13 / y_top) * h - 0.88 * 4.5)),
            std::string::npos);

  // Labels of points sharing an x do not overlap.
  std::regex box(R"~(<rect x="([^"]*)" y="([^"]*)" width="([^"]*)" height="([^"]*)")~");
  std::vector<std::array<double, 4>> boxes;
  for (auto it = std::sregex_iterator(off.begin(), off.end(), box); it != std::sregex_iterator();
       ++it) {
    boxes.push_back(
        {std::stod((*it)[1]), std::stod((*it)[2]), std::stod((*it)[3]), std::stod((*it)[4])});
  }
  ASSERT_EQ(boxes.size(), 3u);
  for (size_t i = 0; i < boxes.size(); ++i) {
    const auto& a = boxes[i];
    EXPECT_GE(a[0], kLeft);
    EXPECT_LE(a[0] + a[2], kWidth - kRight);
    EXPECT_GE(a[1], kTop);
    for (size_t j = 0; j < i; ++j) {
      const auto& b = boxes[j];
      bool apart =
          a[0] + a[2] <= b[0] || b[0] + b[2] <= a[0] || a[1] + a[3] <= b[1] || b[1] + b[3] <= a[1];
      EXPECT_TRUE(apart) << i << " overlaps " << j;
    }
  }
}

TEST(SweepSvg, LinesAreClippedAtTheTopEdge) {
  using namespace sweep_svg_layout;
  // 0.2 -> 3.0 -> 0.4: the line leaves and re-enters the plot: two runs,
  // one ending and one starting on the top edge where the segments cross 1.2.
  std::string svg = sweep_svg(
      {rep("m", 0.0, 0.2), rep("m", 0.5, 3.0), rep("m", 1.0, 0.4), rep("n", 0.2, 0.5)}, "t");
  std::regex re(R"(<polyline data-method="m"[^>]*points="([^"]*)\")");
  std::vector<std::vector<std::pair<double, double>>> runs;
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), re); it != std::sregex_iterator();
       ++it) {
    runs.emplace_back();
    std::istringstream in((*it)[1].str());
    for (std::string tok; in >> tok;) {
      auto comma = tok.find(',');
      runs.back().emplace_back(std::stod(tok.substr(0, comma)), std::stod(tok.substr(comma + 1)));
    }
  }
  ASSERT_EQ(runs.size(), 2u);
  ASSERT_EQ(runs[0].size(), 2u);
  ASSERT_EQ(runs[1].size(), 2u);
  const double w = kWidth - kLeft - kRight;
  EXPECT_NEAR(runs[0][1].second, kTop, 0.01);
  EXPECT_NEAR(runs[1][0].second, kTop, 0.01);
  // Crossings of y = 1.2 on (0, 0.2)-(0.5, 3.0) and (0.5, 3.0)-(1, 0.4).
  EXPECT_NEAR(runs[0][1].first, kLeft + 0.5 * (1.0 / 2.8) * w, 0.01);
  EXPECT_NEAR(runs[1][0].first, kLeft + (0.5 + 0.5 * (1.8 / 2.6)) * w, 0.01);
  EXPECT_NE(svg.find(">3.00</text>"), std::string::npos);
  // Without off-scale errors nothing changes: one polyline, no off-scale group.
  std::string plain = sweep_svg(sample(), "t");
  EXPECT_EQ(plain.find("off-scale"), std::string::npos);
}

TEST(SweepSvg, SinglePointMethodsAndEdgeCases) {
  std::string svg = sweep_svg({rep("solo", 0.025, 0.7)}, "t");
  EXPECT_EQ(count(svg, "<polyline"), 0u);
  EXPECT_NE(svg.find(">solo</text>"), std::string::npos);
  // Non-finite points are skipped, empty input still yields a plot.
  std::string svg2 = sweep_svg({rep("m", 0.1, NAN), rep("m", 0.2, 0.3)}, "t");
  EXPECT_EQ(count(svg2, "<polyline"), 0u);
  EXPECT_EQ(svg2.find("nan"), std::string::npos);
  std::string empty = sweep_svg({}, "t");
  EXPECT_NE(empty.find("no data"), std::string::npos);
  EXPECT_EQ(count(empty, "</svg>"), 1u);
}

TEST(SweepSvg, DistinctColoursAndShapes) {
  std::vector<MergeReport> reports;
  for (int m = 0; m < 8; ++m) {
    reports.push_back(rep("m" + std::to_string(m), 0.1, 0.1 * m + 0.05));
    reports.push_back(rep("m" + std::to_string(m), 0.5, 0.05 * m + 0.01));
  }
  std::string svg = sweep_svg(reports, "t");
  std::regex stroke(R"~(<polyline data-method="[^"]*" stroke="(#[0-9A-Fa-f]{6})")~");
  std::vector<std::string> colours;
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), stroke); it != std::sregex_iterator();
       ++it) {
    colours.push_back((*it)[1]);
  }
  ASSERT_EQ(colours.size(), 8u);
  std::sort(colours.begin(), colours.end());
  EXPECT_EQ(std::unique(colours.begin(), colours.end()), colours.end());
  // Shapes: one circle, one square; triangles/diamond/star are polygons, x and plus paths.
  auto markers = svg.substr(svg.find(R"(<g id="markers")"));
  markers = markers.substr(0, markers.find(R"(<g id="legend")"));
  EXPECT_EQ(count(markers, "<circle"), 2u);
  EXPECT_EQ(count(markers, "<rect"), 2u);
  EXPECT_EQ(count(markers, "<polygon"), 8u);
  EXPECT_EQ(count(markers, "<path"), 8u);  // x and plus: a white halo and the stroke
}

// `hydraopt sweep` twice, in two processes (other addresses: ASLR) and on
// 1 and 2 threads: the same sweep.svg, and the same sweep.json and sweep.md
// but for the measured seconds.
TEST(SweepReport, SameBytesAcrossProcessesAndThreadCounts) {
  test::TempDir d;
  std::string out;
  ASSERT_EQ(test::run(test::cli() + " synth " + (d / "s").string() + " --preset tiny --tasks 3", &out), 0) << out;
  const std::string in = " " + (d / "s/task00").string() + " " + (d / "s/task01").string() + " " +
                         (d / "s/task02").string();
  for (const char* threads : {"1", "2"}) {
    ASSERT_EQ(test::run(test::cli() + " sweep" + in + " --methods hydraopt,ta,jd-diag --budgets 0.3,0.6 --threads " +
                            threads + " --out " + (d / threads).string(),
                        &out),
              0)
        << out;
  }
  auto without_seconds = [&](const char* dir) {
    auto j = nlohmann::json::parse(test::read_text(d / dir / "sweep.json"));
    EXPECT_TRUE(j.is_array() && j.size() == 5u) << j.dump();
    for (auto& r : j) EXPECT_EQ(r.erase("seconds"), 1u);
    std::string md;
    for (const auto& l : lines(test::read_text(d / dir / "sweep.md"))) {
      auto c = cells(l);
      EXPECT_EQ(c.size(), 9u) << l;
      c.pop_back();  // seconds
      for (auto& x : c) md += x + "|";
      md += "\n";
    }
    return std::pair{j.dump(), md};
  };
  EXPECT_EQ(without_seconds("1"), without_seconds("2"));
  const std::string svg = test::read_text(d / "1" / "sweep.svg");
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_EQ(svg, test::read_text(d / "2" / "sweep.svg"));
  // No state carried from call to call (a counter, a cache) either.
  EXPECT_EQ(sweep_svg(sample(), "t") + sweep_markdown(sample()), sweep_svg(sample(), "t") + sweep_markdown(sample()));
}

}  // namespace
}  // namespace hydraopt
