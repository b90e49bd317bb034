#include "methods/cluster.h"

#include <limits>
#include <map>
#include <numeric>

namespace hydraopt {

Dendrogram::Dendrogram(const Eigen::MatrixXd& d2_in, const std::vector<double>& w_in)
    : n_(static_cast<int>(w_in.size())) {
  Eigen::MatrixXd d2 = d2_in;  // squared distances between cluster centroids
  std::vector<double> w = w_in;
  for (double& x : w) x = std::max(x, 1e-300);
  std::vector<bool> alive(n_, true);
  for (int step = 0; step + 1 < n_; ++step) {
    double best = std::numeric_limits<double>::infinity();
    int ba = -1, bb = -1;
    for (int a = 0; a < n_; ++a) {
      if (!alive[a]) continue;
      for (int b = a + 1; b < n_; ++b) {
        if (!alive[b]) continue;
        double cost = w[a] * w[b] / (w[a] + w[b]) * std::max(0.0, d2(a, b));
        if (cost < best) {
          best = cost;
          ba = a;
          bb = b;
        }
      }
    }
    // Centroid distances after merging b into a (Lance-Williams, centroid form).
    const double wa = w[ba], wb = w[bb], W = wa + wb;
    for (int c = 0; c < n_; ++c) {
      if (!alive[c] || c == ba || c == bb) continue;
      double v = wa / W * d2(ba, c) + wb / W * d2(bb, c) - wa * wb / (W * W) * d2(ba, bb);
      d2(ba, c) = d2(c, ba) = v;
    }
    w[ba] = W;
    alive[bb] = false;
    merges_.emplace_back(ba, bb);
  }
}

std::vector<int> Dendrogram::cut(int groups) const {
  groups = std::max(1, std::min(groups, n_));
  std::vector<int> parent(n_);
  std::iota(parent.begin(), parent.end(), 0);
  auto find = [&](int x) {
    while (parent[x] != x) x = parent[x] = parent[parent[x]];
    return x;
  };
  for (int m = 0; m < n_ - groups; ++m) parent[find(merges_[m].second)] = find(merges_[m].first);
  std::vector<int> labels(n_);
  for (int i = 0; i < n_; ++i) labels[i] = find(i);
  return canonical_labels(labels);
}

std::vector<int> canonical_labels(const std::vector<int>& labels) {
  std::map<int, int> ids;
  std::vector<int> out(labels.size());
  for (size_t i = 0; i < labels.size(); ++i) {
    auto [it, fresh] = ids.emplace(labels[i], static_cast<int>(ids.size()));
    out[i] = it->second;
  }
  return out;
}

}  // namespace hydraopt
