#include "report/sweep_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <iterator>

namespace hydraopt {
namespace {

/// The storage a report is plotted and sorted at: the fraction of the
/// parameters, or with byte budgets the fraction of a bf16 copy's bytes.
double storage_axis(const MergeReport& r) { return r.unit == BudgetUnit::kBytes ? r.bf16_fraction : r.fraction; }

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
      double fa = storage_axis(reports[a]), fb = storage_axis(reports[b]);
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

}  // namespace

std::string sweep_markdown(const std::vector<MergeReport>& reports) {
  std::string out =
      "| method | budget | params fraction | bytes / bf16 copy | stored params | stored bytes | mean rel. error | "
      "worst task | seconds |\n"
      "|---|---:|---:|---:|---:|---:|---:|---|---:|\n";
  for (const auto& group : group_by_method(reports)) {
    for (size_t i : group) {
      const MergeReport& r = reports[i];
      std::string budget = r.budget > 0 ? fmt::format("{:.4g}", r.budget) : "—";
      const TaskError* w = worst_task(r);
      std::string worst = w ? fmt::format("{} ({:#.4g})", md_cell(w->name), w->rel_error) : "—";
      out += fmt::format("| {} | {} | {:.3f} | {:.3f} | {} | {} | {:#.4g} | {} | {:.2f} |\n", md_cell(r.method),
                         budget, r.fraction, r.bf16_fraction, grouped_int(r.params), grouped_int(r.bytes),
                         r.mean_rel_error, worst, r.seconds);
    }
  }
  return out;
}

std::string sweep_svg(const std::vector<MergeReport>& reports, const std::string& title) {
  std::vector<PlotSeries> series;
  for (const auto& group : group_by_method(reports)) {
    PlotSeries se{reports[group[0]].method, {}};
    for (size_t i : group) se.points.emplace_back(storage_axis(reports[i]), reports[i].mean_rel_error);
    series.push_back(std::move(se));
  }
  PlotLabels labels{title, "mean relative error", "error", ""};
  if (!reports.empty() && reports[0].unit == BudgetUnit::kBytes) labels.x_axis = "storage (bytes as a fraction of a bf16 copy of the adapters)";
  return line_plot_svg(series, labels);
}

}  // namespace hydraopt
