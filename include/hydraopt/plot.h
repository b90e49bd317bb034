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
  std::string x_axis = "storage (fraction of the original LoRA parameters)";
};

/// One line per series in the given order (points drawn in the given
/// order; callers sort them by x), x = a storage fraction (labels.x_axis), y = whatever
/// `labels.y_axis` names; `labels.value` names y in each point's tooltip.
/// The y axis and the off-scale rule are sweep_svg's (src/report/sweep_report.h).
std::string line_plot_svg(const std::vector<PlotSeries>& series, const PlotLabels& labels);

}  // namespace hydraopt
