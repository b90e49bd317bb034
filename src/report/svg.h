// SVG building blocks for the plots (report/plot_svg.cc): escaping, text
// width estimates, axis steps, number formatting, colours and markers.
#pragma once

#include <array>
#include <cstddef>
#include <string>

namespace hydraopt::svg {

/// XML-escapes text/attribute content; drops characters XML 1.0 forbids.
std::string xml_escape(const std::string& s);
/// Number of UTF-8 code points (continuation bytes not counted).
size_t utf8_length(const std::string& s);
/// The first `n` code points of `s`.
std::string utf8_prefix(const std::string& s, size_t n);
/// A conservative estimate of the width of sans-serif text (0.6 em per
/// character), used to keep labels inside their boxes without font metrics.
double text_width(const std::string& s, double font_size);
/// The smallest 1, 2, 2.5, 5 x 10^k step >= range / target.
double nice_step(double range, int target);
/// Decimals needed to print multiples of `step` exactly.
int step_decimals(double step);
/// A coordinate with 2 decimals ("-0.00" written "0.00").
std::string num(double v);

// Okabe & Ito (2008), "Color Universal Design": colour-blind-friendly. Its
// yellow (#F0E442) is nearly invisible on white and is replaced by the grey
// (#999999) that R's palette.colors("Okabe-Ito") ships with it.
constexpr std::array<const char*, 8> kPalette = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                                 "#E69F00", "#56B4E9", "#000000", "#999999"};
constexpr int kShapes = 8;

/// A marker of shape `shape` centred at (x, y). Filled shapes get a thin
/// white outline so overlapping markers stay distinguishable; x and plus are
/// stroked over a white halo. `inner` is placed inside the element (e.g. a <title>).
std::string marker(int shape, double x, double y, const char* colour, const std::string& inner);

}  // namespace hydraopt::svg
