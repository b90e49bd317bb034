// Line plots as standalone SVG: storage fraction on x, any measure on y
// (the sweep's and the task benchmark's plots).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace hydraopt {

struct PlotSeries {
  std::string name;
  std::vector<std::pair<double, double>> points;  ///< (storage fraction, y)
};

struct PlotLabels {
  std::string title, y_axis, value;
  /// The x axis' title; empty: "storage (fraction of the original LoRA parameters)".
  std::string x_axis;
};

/// One line per series in the given order (points drawn in the given
/// order; callers sort them by x), x = storage fraction (or what
/// `labels.x_axis` names), y = whatever
/// `labels.y_axis` names; `labels.value` names y in each point's tooltip.
/// The y axis and the off-scale rule are sweep_svg's (src/report/sweep_report.h).
std::string line_plot_svg(const std::vector<PlotSeries>& series, const PlotLabels& labels);

}  // namespace hydraopt
