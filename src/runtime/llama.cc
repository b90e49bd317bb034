#include <Eigen/Core>
#include <fmt/format.h>
#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "hydraopt/error.h"
#include "hydraopt/model.h"
#include "hydraopt/bundle.h"
#include "hydraopt/tensors.h"

namespace hydraopt {

namespace fs = std::filesystem;
using Eigen::MatrixXf;
using Eigen::VectorXf;

namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct Layer {
  MatrixXf q, k, v, o, gate, up, down;  // out x in
  VectorXf norm1, norm2;
};

// x (T x d) normalised row by row, times the weight.
MatrixXf rms_norm(const MatrixXf& x, const VectorXf& w, double eps) {
  MatrixXf y(x.rows(), x.cols());
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    const float inv = 1.0f / std::sqrt(x.row(t).squaredNorm() / static_cast<float>(x.cols()) + static_cast<float>(eps));
    y.row(t) = (x.row(t) * inv).cwiseProduct(w.transpose());
  }
  return y;
}

}  // namespace

struct Model::Impl {
  ModelConfig cfg;
  MatrixXf embed, lm_head;  // vocab x d
  VectorXf final_norm;
  std::vector<Layer> layers;
  std::vector<std::string> names;  // module names in layer order, for deltas
  RowMatrix rope_cos, rope_sin;    // position x head_dim/2

  // y = x W^T (+ (x R^T) L^T)
  MatrixXf linear(const MatrixXf& x, const MatrixXf& w, const std::string& module, const Deltas* d) const {
    MatrixXf y = x * w.transpose();
    if (d) {
      auto it = d->find(module);
      if (it != d->end() && it->second.right.rows() > 0) {
        y.noalias() += (x * it->second.right.transpose()) * it->second.left.transpose();
      }
    }
    return y;
  }

  // Rotary embedding; row t of x sits at position pos[t] of its sequence.
  // Angles come from the tables built at load time (see init_rope).
  void rope(MatrixXf* x, int64_t n_heads, const std::vector<int>& pos) const {
    const int64_t hd = cfg.head_dim, half = hd / 2;
    for (Eigen::Index t = 0; t < x->rows(); ++t) {
      const auto c = rope_cos.row(pos[t]), s = rope_sin.row(pos[t]);
      for (int64_t h = 0; h < n_heads; ++h) {
        auto a = x->row(t).segment(h * hd, half), b = x->row(t).segment(h * hd + half, half);
        const Eigen::RowVectorXf a0 = a, b0 = b;
        a = a0.cwiseProduct(c) - b0.cwiseProduct(s);
        b = b0.cwiseProduct(c) + a0.cwiseProduct(s);
      }
    }
  }

  // cos/sin of position p times frequency j, computed in double once.
  void init_rope(int64_t positions) {
    const int64_t hd = cfg.head_dim, half = hd / 2;
    rope_cos.resize(positions, half);
    rope_sin.resize(positions, half);
    for (int64_t j = 0; j < half; ++j) {
      const double inv = std::pow(cfg.rope_theta, -2.0 * static_cast<double>(j) / static_cast<double>(hd));
      for (int64_t p = 0; p < positions; ++p) {
        const double ang = static_cast<double>(p) * inv;
        rope_cos(p, j) = static_cast<float>(std::cos(ang));
        rope_sin(p, j) = static_cast<float>(std::sin(ang));
      }
    }
  }

  // Several sequences packed one after another (rows), attending only
  // within their own sequence: the projections run as one large product.
  // Returns the logits of rows from[q] on of each sequence q (all rows
  // without `from`): the last layer computes only those rows' queries,
  // attention and MLP (every row's keys and values are still attended to).
  //
  // With `sites`, every linear module's input is added to them.
  MatrixXf forward(const std::vector<std::vector<int>>& seqs, const Deltas* d,
                   const std::vector<int64_t>* from = nullptr, InputSites* sites = nullptr) const {
    const int64_t D = cfg.hidden;
    if (from && from->size() != seqs.size()) throw std::invalid_argument("forward: one first row per sequence");
    std::vector<int64_t> start;
    std::vector<int> pos;
    int64_t T = 0;
    for (size_t q = 0; q < seqs.size(); ++q) {
      const auto& s = seqs[q];
      if (static_cast<int64_t>(s.size()) > cfg.max_positions) {
        throw Error(fmt::format("a sequence of {} tokens exceeds the model's max_position_embeddings ({})", s.size(),
                                cfg.max_positions));
      }
      if (from && ((*from)[q] < 0 || (*from)[q] > static_cast<int64_t>(s.size()))) {
        throw std::invalid_argument("forward: a first row outside its sequence");
      }
      start.push_back(T);
      for (size_t i = 0; i < s.size(); ++i) pos.push_back(static_cast<int>(i));
      T += static_cast<int64_t>(s.size());
    }
    start.push_back(T);
    MatrixXf x(T, D);
    for (size_t q = 0, t = 0; q < seqs.size(); ++q) {
      for (int tok : seqs[q]) {
        if (tok < 0 || tok >= cfg.vocab) throw Error("token id " + std::to_string(tok) + " out of range");
        x.row(static_cast<Eigen::Index>(t++)) = embed.row(tok);
      }
    }
    // The last layer's query rows: their indices in x and their positions.
    std::vector<Eigen::Index> kept;
    std::vector<int> kept_pos;
    if (from) {
      for (size_t q = 0; q < seqs.size(); ++q) {
        for (int64_t t = start[q] + (*from)[q]; t < start[q + 1]; ++t) {
          kept.push_back(static_cast<Eigen::Index>(t));
          kept_pos.push_back(pos[static_cast<size_t>(t)]);
        }
      }
    }
    if (T == 0 || (from && kept.empty())) return MatrixXf(0, cfg.vocab);
    const std::vector<int64_t> none(seqs.size(), 0);
    auto record = [&](const std::string& p, const std::vector<std::string>& modules, const MatrixXf& in) {
      if (!sites) return;
      InputSite& s = (*sites)[p + modules[0]];
      if (s.modules.empty()) {
        for (auto& m : modules) s.modules.push_back(p + m);
        s.xtx = Eigen::MatrixXd::Zero(in.cols(), in.cols());
      }
      s.xtx += (in.transpose() * in).cast<double>();
      s.rows += in.rows();
    };
    for (size_t l = 0; l < layers.size(); ++l) {
      const bool last = from && l + 1 == layers.size();
      const Layer& L = layers[l];
      const std::string p = "model.layers." + std::to_string(l) + ".";
      MatrixXf h = rms_norm(x, L.norm1, cfg.rms_eps);
      record(p, kAttentionInputs, h);
      MatrixXf k = linear(h, L.k, p + "self_attn.k_proj", d);
      MatrixXf v = linear(h, L.v, p + "self_attn.v_proj", d);
      rope(&k, cfg.kv_heads, pos);
      if (last) {
        h = h(kept, Eigen::all).eval();
        x = x(kept, Eigen::all).eval();
      }
      MatrixXf q = linear(h, L.q, p + "self_attn.q_proj", d);
      rope(&q, cfg.heads, last ? kept_pos : pos);
      const MatrixXf att = attention(q, k, v, start, last ? *from : none);
      record(p, kAttentionOutputs, att);
      x += linear(att, L.o, p + "self_attn.o_proj", d);
      MatrixXf h2 = rms_norm(x, L.norm2, cfg.rms_eps);
      record(p, kMlpInputs, h2);
      MatrixXf g = linear(h2, L.gate, p + "mlp.gate_proj", d);
      MatrixXf u = linear(h2, L.up, p + "mlp.up_proj", d);
      MatrixXf act = (g.array() / (1.0f + (-g.array()).exp()) * u.array()).matrix();  // SiLU(g) * u
      record(p, kMlpHidden, act);
      x += linear(act, L.down, p + "mlp.down_proj", d);
    }
    return rms_norm(x, final_norm, cfg.rms_eps) * lm_head.transpose();
  }

  // Causal attention within each sequence (rows start[q] .. start[q + 1] of
  // k and v); q holds each sequence's query rows from position first[q] on,
  // packed in sequence order.
  MatrixXf attention(const MatrixXf& q, const MatrixXf& k, const MatrixXf& v, const std::vector<int64_t>& start,
                     const std::vector<int64_t>& first) const {
    const int64_t hd = cfg.head_dim, group = cfg.heads / cfg.kv_heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    MatrixXf att(q.rows(), cfg.heads * hd);
    for (size_t sq = 0, qs = 0; sq + 1 < start.size(); ++sq) {
      const int64_t s0 = start[sq], n = start[sq + 1] - s0, f = first[sq], nq = n - f;
      if (nq == 0) continue;
      for (int64_t head = 0; head < cfg.heads; ++head) {
        const int64_t kvh = head / group;
        RowMatrix s = (q.block(static_cast<Eigen::Index>(qs), head * hd, nq, hd) *
                       k.block(s0, kvh * hd, n, hd).transpose()) * scale;
        for (int64_t t = 0; t < nq; ++t) {  // causal softmax of query f + t over keys u <= f + t
          auto live = s.row(t).head(f + t + 1).array();
          live = (live - live.maxCoeff()).exp();
          live /= live.sum();
          s.row(t).tail(n - f - t - 1).setZero();
        }
        att.block(static_cast<Eigen::Index>(qs), head * hd, nq, hd) = s * v.block(s0, kvh * hd, n, hd);
      }
      qs += static_cast<size_t>(nq);
    }
    return att;
  }
};

Model::Model() : impl_(std::make_unique<Impl>()) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::open(const fs::path& dir) {
  Model m;
  Impl& I = *m.impl_;
  I.cfg = llama_config_read(dir / "config.json");
  const ModelConfig& c = I.cfg;
  const TensorFile st = TensorFile::open(dir / "model.safetensors");
  auto get = [&](const std::string& name, int64_t rows, int64_t cols) -> MatrixXf {
    MatrixXf m = st.matrix(name).cast<float>();
    if (m.rows() != rows || m.cols() != std::max<int64_t>(cols, 1)) {
      throw Error(st.path(), name, "shape does not match config.json");
    }
    return m;
  };
  I.embed = get("model.embed_tokens.weight", c.vocab, c.hidden);
  I.lm_head = get("lm_head.weight", c.vocab, c.hidden);
  I.final_norm = get("model.norm.weight", c.hidden, 0).col(0);
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Layer L;
    L.q = get(p + "self_attn.q_proj.weight", c.heads * c.head_dim, c.hidden);
    L.k = get(p + "self_attn.k_proj.weight", c.kv_heads * c.head_dim, c.hidden);
    L.v = get(p + "self_attn.v_proj.weight", c.kv_heads * c.head_dim, c.hidden);
    L.o = get(p + "self_attn.o_proj.weight", c.hidden, c.heads * c.head_dim);
    L.gate = get(p + "mlp.gate_proj.weight", c.intermediate, c.hidden);
    L.up = get(p + "mlp.up_proj.weight", c.intermediate, c.hidden);
    L.down = get(p + "mlp.down_proj.weight", c.hidden, c.intermediate);
    L.norm1 = get(p + "input_layernorm.weight", c.hidden, 0).col(0);
    L.norm2 = get(p + "post_attention_layernorm.weight", c.hidden, 0).col(0);
    I.layers.push_back(std::move(L));
  }
  I.init_rope(c.max_positions);
  return m;
}

const ModelConfig& Model::config() const { return impl_->cfg; }

MatrixXf Model::forward(const std::vector<int>& tokens, const Deltas* deltas, int64_t from) const {
  const std::vector<int64_t> first{from};
  return impl_->forward(std::vector<std::vector<int>>{tokens}, deltas, from == 0 ? nullptr : &first);
}

std::vector<int> Model::encode_prompt(const std::string& prompt) const {
  std::vector<int> t = {impl_->cfg.bos};
  for (unsigned char c : prompt) t.push_back(c);
  t.push_back(impl_->cfg.sep);
  return t;
}

std::vector<int> Model::generate(const std::vector<int>& prompt, int max_new, const Deltas* deltas) const {
  std::vector<int> seq = prompt, out;
  if (seq.empty()) return out;  // nothing to continue
  for (int s = 0; s < max_new && static_cast<int64_t>(seq.size()) < impl_->cfg.max_positions; ++s) {
    const std::vector<int64_t> last{static_cast<int64_t>(seq.size()) - 1};
    MatrixXf logits = impl_->forward(std::vector<std::vector<int>>{seq}, deltas, &last);
    Eigen::Index best;
    logits.row(0).maxCoeff(&best);
    if (best == impl_->cfg.eos) break;
    out.push_back(static_cast<int>(best));
    seq.push_back(static_cast<int>(best));
  }
  return out;
}

void Model::add_input_moments(const std::vector<std::vector<int>>& seqs, const Deltas* deltas,
                              InputSites* sites) const {
  impl_->forward(seqs, deltas, nullptr, sites);
}

bool Model::greedy_matches(const std::vector<int>& prompt, const std::vector<int>& answer, const Deltas* deltas) const {
  return greedy_matches_batch({{prompt, answer}}, deltas)[0];
}

std::vector<bool> Model::greedy_matches_batch(const std::vector<std::pair<std::vector<int>, std::vector<int>>>& examples,
                                              const Deltas* deltas) const {
  std::vector<std::vector<int>> seqs;
  std::vector<int64_t> from;  // the row that predicts answer[0] (logits from there on)
  for (auto& [prompt, answer] : examples) {
    seqs.push_back(prompt);
    seqs.back().insert(seqs.back().end(), answer.begin(), answer.end());
    from.push_back(std::max<int64_t>(0, static_cast<int64_t>(prompt.size()) - 1));
  }
  MatrixXf logits = impl_->forward(seqs, deltas, &from);
  std::vector<bool> ok(examples.size());
  Eigen::Index row = 0;
  for (size_t e = 0; e < examples.size(); ++e) {
    const auto& [prompt, answer] = examples[e];
    bool good = !prompt.empty();
    for (size_t i = 0; good && i <= answer.size(); ++i) {
      const int want = i < answer.size() ? answer[i] : impl_->cfg.eos;
      Eigen::Index best;
      logits.row(row + static_cast<Eigen::Index>(i)).maxCoeff(&best);
      good = best == want;
    }
    ok[e] = good;
    row += static_cast<Eigen::Index>(static_cast<int64_t>(seqs[e].size()) - from[e]);
  }
  return ok;
}

std::vector<std::vector<int>> Model::greedy_outputs_batch(
    const std::vector<std::pair<std::vector<int>, std::vector<int>>>& examples, const std::vector<int>& max_new,
    const Deltas* deltas, std::vector<bool>* eos) const {
  if (max_new.size() != examples.size()) throw std::invalid_argument("greedy_outputs_batch: one max_new per example");
  const int64_t context = impl_->cfg.max_positions;
  struct State {
    std::vector<int> confirmed, guess;
    bool done = false, eos = false;
  };
  std::vector<State> st(examples.size());
  for (size_t e = 0; e < examples.size(); ++e) {
    const int64_t room = context - static_cast<int64_t>(examples[e].first.size());
    st[e].guess = examples[e].second;
    st[e].done = examples[e].first.empty() || room <= 0 || max_new[e] <= 0;
  }
  for (;;) {
    std::vector<size_t> active;
    std::vector<std::vector<int>> seqs;
    std::vector<int64_t> from;  // the row that predicts the first unconfirmed token
    for (size_t e = 0; e < examples.size(); ++e) {
      if (st[e].done) continue;
      const auto& prompt = examples[e].first;
      std::vector<int> seq = prompt;
      seq.insert(seq.end(), st[e].confirmed.begin(), st[e].confirmed.end());
      // The guess within the context and the new-token limit; each of its
      // tokens makes one more prediction.
      const int64_t left = std::min<int64_t>(context - static_cast<int64_t>(seq.size()),
                                             max_new[e] - static_cast<int64_t>(st[e].confirmed.size())) - 1;
      auto& g = st[e].guess;
      if (static_cast<int64_t>(g.size()) > std::max<int64_t>(0, left)) g.resize(static_cast<size_t>(std::max<int64_t>(0, left)));
      seq.insert(seq.end(), g.begin(), g.end());
      from.push_back(static_cast<int64_t>(prompt.size() + st[e].confirmed.size()) - 1);
      seqs.push_back(std::move(seq));
      active.push_back(e);
    }
    if (active.empty()) break;
    const MatrixXf logits = impl_->forward(seqs, deltas, &from);
    Eigen::Index row = 0;
    for (size_t a = 0; a < active.size(); ++a) {
      State& s = st[active[a]];
      const size_t prompt = examples[active[a]].first.size();
      const std::vector<int> guess = std::move(s.guess);
      s.guess.clear();
      for (size_t t = 0; t <= guess.size(); ++t) {
        Eigen::Index best;
        logits.row(row + static_cast<Eigen::Index>(t)).maxCoeff(&best);
        if (best == impl_->cfg.eos) {
          s.done = s.eos = true;
          break;
        }
        s.confirmed.push_back(static_cast<int>(best));
        if (static_cast<int64_t>(s.confirmed.size()) >= max_new[active[a]] ||
            static_cast<int64_t>(prompt + s.confirmed.size()) >= context) {
          s.done = true;
          break;
        }
        if (t < guess.size() && best == guess[t]) continue;
        // Off the guess: the argmaxes after t saw a wrong token; they are
        // the next pass's guess.
        for (size_t u = t + 1; u <= guess.size(); ++u) {
          logits.row(row + static_cast<Eigen::Index>(u)).maxCoeff(&best);
          s.guess.push_back(static_cast<int>(best));
        }
        break;
      }
      row += static_cast<Eigen::Index>(static_cast<int64_t>(seqs[a].size()) - from[a]);
    }
  }
  std::vector<std::vector<int>> out;
  if (eos) eos->clear();
  for (auto& s : st) {
    out.push_back(std::move(s.confirmed));
    if (eos) eos->push_back(s.eos);
  }
  return out;
}

Deltas deltas_from_adapter(const Adapter& adapter) {
  Deltas d;
  for (const auto& m : adapter.modules()) {
    ModuleLora l = adapter.load(m.name);
    d[m.name] = {(l.scale * l.B).cast<float>(), l.A.cast<float>()};
  }
  return d;
}

namespace {

// Task i's updates as the bundle stores them.
Deltas task_deltas(const Bundle& b, size_t i) {
  Deltas d;
  for (auto& u : b.task_update(i)) d[u.module] = {u.left.cast<float>(), u.right.cast<float>()};
  return d;
}

}  // namespace

Deltas deltas_from_bundle(const fs::path& bundle, const std::string& task) {
  const Bundle b = Bundle::open(bundle);
  return task_deltas(b, b.task_index(task));
}

std::vector<Deltas> bundle_deltas(const fs::path& bundle) {
  const Bundle b = Bundle::open(bundle);
  std::vector<Deltas> out;
  for (size_t i = 0; i < b.tasks().size(); ++i) out.push_back(task_deltas(b, i));
  return out;
}

}  // namespace hydraopt
