// Human-readable summaries of a sweep (a list of MergeReport): a Markdown
// table and a self-contained SVG plot of storage fraction vs mean relative
// error. Both are pure functions of their input (same input -> same bytes).
#pragma once

#include "hydraopt/plot.h"

#include <string>
#include <vector>

#include "hydraopt/merge.h"

namespace hydraopt {

/// A Markdown table: one row per report, columns method | budget | storage
/// fraction | stored params | mean rel. error | worst task (name and rel
/// error) | seconds; rows grouped by method in first-appearance order,
/// sorted by fraction inside a method (stable: ties keep input order).
/// Numbers: errors 4 significant digits (trailing zeros kept: "0.1200"),
/// budget up to 4 significant digits, fraction 3 decimals,
/// params with ',' thousands separators, seconds 2 decimals; a budget <= 0
/// (methods without a budget) and a report without tasks show "—".
/// '|' in names is escaped as "\|", line breaks become spaces.
std::string sweep_markdown(const std::vector<MergeReport>& reports);

/// A self-contained SVG plot (no scripts, no external fonts/CSS):
/// x = storage fraction (MergeReport::fraction), y = mean relative error;
/// one <polyline> per method with >= 2 finite points (points sorted by
/// fraction) plus a marker per point; a method with a single point gets just
/// a marker. Colours: the Okabe-Ito palette (its yellow swapped for its
/// grey, #999999, for contrast on white); marker shapes:
/// circle, square, triangle up, diamond, triangle down, x, plus, star, chosen
/// so that (colour, shape) pairs stay distinct for up to 64 methods.
/// The legend sits outside the plot on the right, listing every method (also
/// those without finite points). x runs from 0 to max(1, max fraction). y
/// runs from 0 to y_max = min(kErrorCap, the first multiple of the tick
/// step strictly above e_max), e_max being the largest finite error and the
/// tick step the smallest 1-2-2.5-5 x 10^k value >= min(e_max, kErrorCap) / 6
/// (y_max = 1 when there is no positive error). So a few baselines far
/// worse than storing nothing (error > 1) cannot squash the interesting
/// 0..1 range. A point with e > y_max is "off scale": its marker
/// sits on the top edge (py = kTop) under a small upward caret, and a boxed
/// label (its marker shape + the error to 3 significant digits: "6.17",
/// "14.2", "1.23e5")
/// is placed next to it inside the plot, stacked downwards so the labels of
/// points at the same or nearby x never overlap. Lines are clipped at the
/// top edge (a line leaving and re-entering the plot becomes one <polyline>
/// per visible run). Non-finite points are not drawn. Layout constants
/// below; a data point (f, e) with e <= y_max is drawn at
///   px = kLeft + f / x_max * (kWidth - kLeft - kRight)
///   py = kTop + (1 - e / y_max) * (kHeight - kTop - kBottom)
/// with coordinates written to 2 decimals.
std::string sweep_svg(const std::vector<MergeReport>& reports, const std::string& title);

namespace sweep_svg_layout {
inline constexpr double kWidth = 860, kHeight = 520;
/// Margins around the plot area; the legend lives in the right margin.
inline constexpr double kLeft = 76, kRight = 204, kTop = 48, kBottom = 64;
/// The y axis never extends above this error (see sweep_svg); larger errors
/// are drawn off scale on the top edge. A multiple of its own tick step
/// (nice_step(kErrorCap) = 0.2), so the top of the axis gets a tick label.
inline constexpr double kErrorCap = 1.2;
}  // namespace sweep_svg_layout

}  // namespace hydraopt
