#include "hydraopt/calibration.h"

#include "hydraopt/error.h"
#include "io/calibration.h"

namespace hydraopt {

void write_calibration(const std::filesystem::path& path, const CalibrationFile& stats, int64_t max_rank) {
  io::CalibrationStats out;
  out.task = stats.task;
  out.base_model = stats.base_model;
  out.examples = stats.examples;
  for (const auto& [name, site] : stats.sites) {
    if (site.rows <= 0) throw Error(path.string(), name, "no input rows seen");
    out.sites[name] = io::sketch_second_moment(site.xtx / static_cast<double>(site.rows), max_rank);
    out.modules[name] = site.modules;
    out.rows = std::max(out.rows, site.rows);
  }
  io::write_calibration_stats(path, out);
}

}  // namespace hydraopt
