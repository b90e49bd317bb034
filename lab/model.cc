#include "model.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <stdexcept>

#include "hydraopt/dtype.h"
#include "hydraopt/llama_config.h"
#include "hydraopt/tensors.h"

namespace lab {

namespace fs = std::filesystem;
using nlohmann::json;

// ---------------------------------------------------------------- config

json Config::to_json() const {
  return json{{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"hidden_size", hidden},
              {"intermediate_size", intermediate},
              {"num_hidden_layers", layers},
              {"num_attention_heads", heads},
              {"num_key_value_heads", kv_heads},
              {"head_dim", head_dim},
              {"rms_norm_eps", rms_eps},
              {"rope_theta", rope_theta},
              {"vocab_size", vocab},
              {"max_position_embeddings", max_positions},
              {"tie_word_embeddings", false},
              {"bos_token_id", kBos},
              {"eos_token_id", kEos},
              {"pad_token_id", kPad},
              {"sep_token_id", kSep},
              {"hidden_act", "silu"},
              {"attention_bias", false},
              {"mlp_bias", false},
              {"torch_dtype", "float32"}};
}

// The project's one config.json reader (include/hydraopt/llama_config.h),
// then what the lab does not implement.
Config Config::read(const fs::path& dir) {
  const hydraopt::LlamaConfig l = hydraopt::llama_config_read(dir);
  Config c;
  c.hidden = l.hidden;
  c.intermediate = l.intermediate;
  c.layers = l.layers;
  c.heads = l.heads;
  c.kv_heads = l.kv_heads;
  c.head_dim = l.head_dim;
  c.rms_eps = l.rms_eps;
  c.rope_theta = l.rope_theta;
  c.vocab = l.vocab;
  c.max_positions = l.max_positions;
  if (l.tied_embeddings) throw std::runtime_error("config: tied embeddings are not supported");
  const std::pair<const char*, std::pair<int64_t, int64_t>> ids[] = {
      {"bos_token_id", {l.bos, kBos}}, {"eos_token_id", {l.eos, kEos}}, {"pad_token_id", {l.pad, kPad}},
      {"sep_token_id", {l.sep, kSep}}};
  for (const auto& [key, got_want] : ids) {
    if (got_want.first != got_want.second) {
      throw std::runtime_error(std::string("config: ") + key + " must be " + std::to_string(got_want.second));
    }
  }
  c.check();
  return c;
}

void Config::check() const {
  auto bad = [](const std::string& s) { throw std::runtime_error("config: " + s); };
  if (vocab < 260) bad("vocab_size must be >= 260 (bytes + 4 special tokens)");
  if (hidden <= 0 || intermediate <= 0 || layers <= 0 || heads <= 0 || kv_heads <= 0 || head_dim <= 0)
    bad("sizes must be positive");
  if (heads % kv_heads != 0) bad("num_attention_heads must be a multiple of num_key_value_heads");
  if (head_dim % 2 != 0) bad("head_dim must be even (RoPE)");
  if (max_positions < 2) bad("max_position_embeddings must be >= 2");
}

// ---------------------------------------------------------------- io helpers

namespace {

json read_json(const fs::path& p) {
  std::ifstream in(p);
  if (!in) throw std::runtime_error("cannot open " + p.string());
  return json::parse(in);
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p);
  out << s << "\n";
  if (!out) throw std::runtime_error("cannot write " + p.string());
}

torch::Tensor read_tensor(const hydraopt::TensorFile& f, const std::string& name, const std::vector<int64_t>& shape) {
  if (!f.contains(name)) throw std::runtime_error(f.path() + ": missing tensor " + name);
  if (f.shape(name) != shape) {
    std::string got, want;
    for (auto d : f.shape(name)) got += std::to_string(d) + ",";
    for (auto d : shape) want += std::to_string(d) + ",";
    throw std::runtime_error(f.path() + ": tensor " + name + " has shape [" + got + "], expected [" + want + "]");
  }
  const Eigen::MatrixXd m = f.matrix(name);  // exact for F32; a 1-D tensor as a column
  torch::Tensor out = torch::empty(shape, torch::kFloat32);
  float* p = out.data_ptr<float>();
  for (int64_t i = 0; i < m.rows(); ++i)
    for (int64_t j = 0; j < m.cols(); ++j) p[i * m.cols() + j] = static_cast<float>(m(i, j));
  return out;
}

hydraopt::F32Tensor to_data(const std::string& name, const torch::Tensor& t) {
  torch::Tensor c = t.detach().to(torch::kFloat32).contiguous();
  hydraopt::F32Tensor d;
  d.name = name;
  d.shape.assign(c.sizes().begin(), c.sizes().end());
  d.values.assign(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  return d;
}

std::string layer_prefix(int64_t i) { return "model.layers." + std::to_string(i) + "."; }

}  // namespace

int64_t count_params(const std::vector<torch::Tensor>& ts) {
  int64_t n = 0;
  for (const auto& t : ts) n += t.numel();
  return n;
}

// ---------------------------------------------------------------- base model

std::vector<std::pair<std::string, torch::Tensor>> Model::named_base() const {
  std::vector<std::pair<std::string, torch::Tensor>> v;
  v.emplace_back("model.embed_tokens.weight", embed);
  for (int64_t i = 0; i < static_cast<int64_t>(layers.size()); ++i) {
    const auto& L = layers[i];
    const std::string p = layer_prefix(i);
    v.emplace_back(p + "self_attn.q_proj.weight", L.q);
    v.emplace_back(p + "self_attn.k_proj.weight", L.k);
    v.emplace_back(p + "self_attn.v_proj.weight", L.v);
    v.emplace_back(p + "self_attn.o_proj.weight", L.o);
    v.emplace_back(p + "mlp.gate_proj.weight", L.gate);
    v.emplace_back(p + "mlp.up_proj.weight", L.up);
    v.emplace_back(p + "mlp.down_proj.weight", L.down);
    v.emplace_back(p + "input_layernorm.weight", L.ln1);
    v.emplace_back(p + "post_attention_layernorm.weight", L.ln2);
  }
  v.emplace_back("model.norm.weight", final_norm);
  v.emplace_back("lm_head.weight", lm_head);
  return v;
}

std::vector<torch::Tensor> Model::base_parameters() const {
  std::vector<torch::Tensor> v;
  for (auto& [n, t] : named_base()) v.push_back(t);
  return v;
}

Model Model::random(const Config& cfg, uint64_t seed) {
  cfg.check();
  torch::manual_seed(seed);
  Model m;
  m.cfg = cfg;
  const int64_t d = cfg.hidden, I = cfg.intermediate, hd = cfg.head_dim;
  auto mat = [](int64_t r, int64_t c) { return (torch::randn({r, c}) * 0.02).requires_grad_(true); };
  auto ones = [](int64_t n) { return torch::ones({n}).requires_grad_(true); };
  m.embed = mat(cfg.vocab, d);
  for (int64_t i = 0; i < cfg.layers; ++i) {
    Layer L;
    L.q = mat(cfg.heads * hd, d);
    L.k = mat(cfg.kv_heads * hd, d);
    L.v = mat(cfg.kv_heads * hd, d);
    L.o = mat(d, cfg.heads * hd);
    L.gate = mat(I, d);
    L.up = mat(I, d);
    L.down = mat(d, I);
    L.ln1 = ones(d);
    L.ln2 = ones(d);
    m.layers.push_back(L);
  }
  m.final_norm = ones(d);
  m.lm_head = mat(cfg.vocab, d);
  return m;
}

Model Model::load(const fs::path& dir) {
  Model m;
  m.cfg = Config::read(dir);
  const Config& c = m.cfg;
  const int64_t d = c.hidden, I = c.intermediate, hd = c.head_dim;
  const auto f = hydraopt::TensorFile::open(dir / "model.safetensors");
  m.embed = read_tensor(f, "model.embed_tokens.weight", {c.vocab, d});
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string p = layer_prefix(i);
    Layer L;
    L.q = read_tensor(f, p + "self_attn.q_proj.weight", {c.heads * hd, d});
    L.k = read_tensor(f, p + "self_attn.k_proj.weight", {c.kv_heads * hd, d});
    L.v = read_tensor(f, p + "self_attn.v_proj.weight", {c.kv_heads * hd, d});
    L.o = read_tensor(f, p + "self_attn.o_proj.weight", {d, c.heads * hd});
    L.gate = read_tensor(f, p + "mlp.gate_proj.weight", {I, d});
    L.up = read_tensor(f, p + "mlp.up_proj.weight", {I, d});
    L.down = read_tensor(f, p + "mlp.down_proj.weight", {d, I});
    L.ln1 = read_tensor(f, p + "input_layernorm.weight", {d});
    L.ln2 = read_tensor(f, p + "post_attention_layernorm.weight", {d});
    m.layers.push_back(L);
  }
  m.final_norm = read_tensor(f, "model.norm.weight", {d});
  m.lm_head = read_tensor(f, "lm_head.weight", {c.vocab, d});
  return m;
}

void Model::save(const fs::path& dir) const {
  fs::create_directories(dir);
  write_text(dir / "config.json", cfg.to_json().dump(2));
  std::vector<hydraopt::F32Tensor> data;
  for (const auto& [name, t] : named_base()) data.push_back(to_data(name, t));
  hydraopt::write_tensors(dir / "model.safetensors", data, {{"format", "pt"}});
}

// ---------------------------------------------------------------- LoRA

namespace {

std::string lora_prefix(int64_t layer, int module) {
  return "base_model.model.model.layers." + std::to_string(layer) + ".self_attn." + kLoraModules[module];
}

}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> Model::named_lora() const {
  std::vector<std::pair<std::string, torch::Tensor>> v;
  for (int64_t i = 0; i < static_cast<int64_t>(lora.size()); ++i) {
    for (int m = 0; m < 4; ++m) {
      v.emplace_back(lora_prefix(i, m) + ".lora_A.weight", lora[i][m].A);
      v.emplace_back(lora_prefix(i, m) + ".lora_B.weight", lora[i][m].B);
    }
  }
  return v;
}

std::vector<torch::Tensor> Model::lora_parameters() const {
  std::vector<torch::Tensor> v;
  for (auto& [n, t] : named_lora()) v.push_back(t);
  return v;
}

void Model::add_lora(int64_t r, double alpha, uint64_t seed_a) {
  if (r <= 0) throw std::runtime_error("LoRA rank must be positive");
  lora_r = r;
  lora_alpha = alpha;
  lora.clear();
  auto gen = at::detail::createCPUGenerator(seed_a);
  for (const auto& L : layers) {
    std::array<LoraPair, 4> pairs;
    const torch::Tensor* ws[4] = {&L.q, &L.k, &L.v, &L.o};
    for (int m = 0; m < 4; ++m) {
      const int64_t out = ws[m]->size(0), in = ws[m]->size(1);
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      torch::Tensor A = torch::empty({r, in});
      A.uniform_(-bound, bound, gen);
      pairs[m].A = A.requires_grad_(true);
      pairs[m].B = torch::zeros({out, r}).requires_grad_(true);
    }
    lora.push_back(pairs);
  }
}

void Model::load_lora(const fs::path& dir) {
  json c = read_json(dir / "adapter_config.json");
  lora_r = c.value("r", int64_t{8});
  lora_alpha = c.value("lora_alpha", 8.0);
  if (c.value("use_rslora", false)) throw std::runtime_error("adapter: use_rslora is not supported by the lab");
  if (c.contains("rank_pattern") && !c["rank_pattern"].empty())
    throw std::runtime_error("adapter: rank_pattern is not supported by the lab");
  if (c.contains("alpha_pattern") && !c["alpha_pattern"].empty())
    throw std::runtime_error("adapter: alpha_pattern is not supported by the lab");
  const auto f = hydraopt::TensorFile::open(dir / "adapter_model.safetensors");
  lora.clear();
  for (int64_t i = 0; i < static_cast<int64_t>(layers.size()); ++i) {
    const auto& L = layers[i];
    const torch::Tensor* ws[4] = {&L.q, &L.k, &L.v, &L.o};
    std::array<LoraPair, 4> pairs;
    for (int m = 0; m < 4; ++m) {
      const int64_t out = ws[m]->size(0), in = ws[m]->size(1);
      const std::string p = lora_prefix(i, m);
      if (!f.contains(p + ".lora_A.weight")) {  // module not adapted: rank-0 update
        pairs[m].A = torch::zeros({lora_r, in});
        pairs[m].B = torch::zeros({out, lora_r});
        continue;
      }
      pairs[m].A = read_tensor(f, p + ".lora_A.weight", {lora_r, in});
      pairs[m].B = read_tensor(f, p + ".lora_B.weight", {out, lora_r});
    }
    lora.push_back(pairs);
  }
}

void Model::save_lora(const fs::path& dir, hydraopt::DType dtype) const {
  fs::create_directories(dir);
  json c = {{"peft_type", "LORA"},
            {"task_type", "CAUSAL_LM"},
            {"base_model_name_or_path", "hydraopt-tiny-llama"},
            {"r", lora_r},
            {"lora_alpha", lora_alpha},
            {"lora_dropout", 0.0},
            {"bias", "none"},
            {"use_rslora", false},
            {"fan_in_fan_out", false},
            {"target_modules", {"q_proj", "k_proj", "v_proj", "o_proj"}}};
  if (lora_alpha == std::floor(lora_alpha)) c["lora_alpha"] = static_cast<int64_t>(lora_alpha);
  write_text(dir / "adapter_config.json", c.dump(2));
  std::vector<hydraopt::F32Tensor> data;
  for (const auto& [name, t] : named_lora()) data.push_back(to_data(name, t));
  hydraopt::write_tensors(dir / "adapter_model.safetensors", data, {{"format", "pt"}}, dtype);
}

// ---------------------------------------------------------------- forward

torch::Tensor Model::linear(const torch::Tensor& x, const torch::Tensor& w, int64_t layer, int module) const {
  torch::Tensor y = torch::matmul(x, w.t());
  if (!lora.empty()) {
    const auto& p = lora[layer][module];
    y = y + torch::matmul(torch::matmul(x, p.A.t()), p.B.t()) * lora_scale();
  }
  return y;
}

namespace {

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  return x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps) * w;
}

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t h = x.size(-1) / 2;
  return torch::cat({-x.slice(-1, h), x.slice(-1, 0, h)}, -1);
}

// cos/sin tables [T, hd] for positions pos0 .. pos0+T-1. Angles in double,
// rounded to float (the Eigen implementation does the same).
std::pair<torch::Tensor, torch::Tensor> rope_tables(int64_t pos0, int64_t T, int64_t hd, double theta) {
  torch::Tensor c = torch::empty({T, hd}), s = torch::empty({T, hd});
  auto ca = c.accessor<float, 2>();
  auto sa = s.accessor<float, 2>();
  const int64_t half = hd / 2;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < half; ++j) {
      const double inv = std::pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(hd));
      const double ang = static_cast<double>(pos0 + t) * inv;
      ca[t][j] = ca[t][j + half] = static_cast<float>(std::cos(ang));
      sa[t][j] = sa[t][j + half] = static_cast<float>(std::sin(ang));
    }
  }
  return {c, s};
}

}  // namespace

torch::Tensor Model::forward(const torch::Tensor& tokens, KVCache* cache) const {
  const int64_t B = tokens.size(0), T = tokens.size(1);
  const int64_t d = cfg.hidden, H = cfg.heads, KV = cfg.kv_heads, hd = cfg.head_dim;
  if (cache && cache->k.empty()) {
    cache->k.resize(cfg.layers);
    cache->v.resize(cfg.layers);
  }
  const int64_t pos0 = (cache && cache->k[0].defined()) ? cache->k[0].size(2) : 0;
  const int64_t total = pos0 + T;
  if (total > cfg.max_positions) throw std::runtime_error("sequence longer than max_position_embeddings");
  auto [cos, sin] = rope_tables(pos0, T, hd, cfg.rope_theta);
  // mask[i][j]: query pos0+i may not see key j
  torch::Tensor mask = torch::arange(total).unsqueeze(0) > (torch::arange(T) + pos0).unsqueeze(1);
  const double inv_sqrt = 1.0 / std::sqrt(static_cast<double>(hd));

  torch::Tensor x = torch::embedding(embed, tokens);  // [B, T, d]
  for (int64_t l = 0; l < cfg.layers; ++l) {
    const Layer& L = layers[l];
    torch::Tensor h = rms_norm(x, L.ln1, cfg.rms_eps);
    torch::Tensor q = linear(h, L.q, l, 0).view({B, T, H, hd}).transpose(1, 2);
    torch::Tensor k = linear(h, L.k, l, 1).view({B, T, KV, hd}).transpose(1, 2);
    torch::Tensor v = linear(h, L.v, l, 2).view({B, T, KV, hd}).transpose(1, 2);
    q = q * cos + rotate_half(q) * sin;
    k = k * cos + rotate_half(k) * sin;
    if (cache) {
      if (cache->k[l].defined()) {
        k = torch::cat({cache->k[l], k}, 2);
        v = torch::cat({cache->v[l], v}, 2);
      }
      cache->k[l] = k;
      cache->v[l] = v;
    }
    if (H != KV) {
      k = k.repeat_interleave(H / KV, 1);  // head h uses kv head h / (H / KV)
      v = v.repeat_interleave(H / KV, 1);
    }
    torch::Tensor scores = torch::matmul(q, k.transpose(-2, -1)) * inv_sqrt;  // [B, H, T, total]
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
    torch::Tensor attn = torch::matmul(torch::softmax(scores, -1), v);  // [B, H, T, hd]
    attn = attn.transpose(1, 2).reshape({B, T, H * hd});
    x = x + linear(attn, L.o, l, 3);
    h = rms_norm(x, L.ln2, cfg.rms_eps);
    torch::Tensor mlp = torch::silu(torch::matmul(h, L.gate.t())) * torch::matmul(h, L.up.t());
    x = x + torch::matmul(mlp, L.down.t());
  }
  x = rms_norm(x, final_norm, cfg.rms_eps);
  (void)d;
  return torch::matmul(x, lm_head.t());
}

}  // namespace lab
