// Human-readable summaries of a sweep (a list of MergeReport): a Markdown
// table and a self-contained SVG plot of storage fraction vs mean relative
// error. Both are pure functions of their input (same input -> same bytes).
#pragma once

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
/// those without finite points). x runs from 0 to max(1, max fraction), y
/// from 0 to the first multiple of a 1-2-2.5-5 tick step strictly above the
/// largest finite error (1 when there is none). Non-finite points are not
/// drawn. Layout constants below; a data point (f, e) is drawn at
///   px = kLeft + f / x_max * (kWidth - kLeft - kRight)
///   py = kTop + (1 - e / y_max) * (kHeight - kTop - kBottom)
/// with coordinates written to 2 decimals.
std::string sweep_svg(const std::vector<MergeReport>& reports, const std::string& title);

namespace sweep_svg_layout {
inline constexpr double kWidth = 860, kHeight = 520;
/// Margins around the plot area; the legend lives in the right margin.
inline constexpr double kLeft = 76, kRight = 204, kTop = 48, kBottom = 64;
}  // namespace sweep_svg_layout

}  // namespace hydraopt
