#include "io/gguf_export.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <optional>
#include <regex>
#include <set>

#include "hydraopt/error.h"
#include "hydraopt/gguf.h"
#include "io/atomic_file.h"
#include "io/gguf.h"
#include "io/safetensors.h"

namespace hydraopt::io {

namespace fs = std::filesystem;
using Eigen::MatrixXd;

namespace {

// The GGUF architecture: llama.cpp runs model_type llama and mistral as "llama".
constexpr const char* kArchitecture = "llama";

// A Hugging Face LLaMA module name split into layer and llama.cpp tensor.
struct LlamaModule {
  int64_t layer = -1;
  std::string gguf;  // "attn_q", ...
  std::string proj;  // "q_proj", ...
};

const std::map<std::string, std::string>& gguf_names() {
  static const std::map<std::string, std::string> names = {
      {"self_attn.q_proj", "attn_q"}, {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"}, {"self_attn.o_proj", "attn_output"},
      {"mlp.gate_proj", "ffn_gate"},  {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"}};
  return names;
}

std::optional<LlamaModule> llama_module(const std::string& name) {
  static const std::regex re(R"(model\.layers\.(\d{1,6})\.((self_attn|mlp)\.(\w+)))");
  std::smatch m;
  if (!std::regex_match(name, m, re)) return std::nullopt;
  auto it = gguf_names().find(m[2].str());
  if (it == gguf_names().end()) return std::nullopt;
  return LlamaModule{std::stoll(m[1].str()), it->second, m[4].str()};
}

// (out, in) of a module of `c`.
std::pair<int64_t, int64_t> module_shape(const LlamaConfig& c, const std::string& proj) {
  const int64_t q = c.heads * c.head_dim, kv = c.kv_heads * c.head_dim;
  if (proj == "q_proj") return {q, c.hidden};
  if (proj == "k_proj" || proj == "v_proj") return {kv, c.hidden};
  if (proj == "o_proj") return {c.hidden, q};
  if (proj == "down_proj") return {c.hidden, c.intermediate};
  return {c.intermediate, c.hidden};  // gate_proj, up_proj
}

// Output rows in llama.cpp's order for q_proj / k_proj; other modules keep theirs.
MatrixXd llama_rows(const MatrixXd& m, const LlamaConfig& c, const std::string& proj) {
  if (proj == "q_proj") return permute_rows(m, llama_rope_row_order(c.heads, c.head_dim));
  if (proj == "k_proj") return permute_rows(m, llama_rope_row_order(c.kv_heads, c.head_dim));
  return m;
}

}  // namespace

LlamaConfig gguf_base_config(const fs::path& path) {
  LlamaConfig c = llama_config_read(path);
  const std::string file = (fs::is_directory(path) ? path / "config.json" : path).string();
  if (c.model_type != "llama" && c.model_type != "mistral") {
    throw Error(file, "",
                "model_type '" + c.model_type +
                    "' is not supported for GGUF export (llama.cpp's \"llama\" graph runs "
                    "model_type llama and mistral)");
  }
  if (c.rope_scaling) throw Error(file, "", "rope_scaling is not supported for GGUF export");
  if (c.attention_bias || c.mlp_bias) {
    throw Error(file, "", "attention or MLP biases are not supported for GGUF export");
  }
  return c;
}

GgufTensor gguf_lora_tensor(std::string name, const MatrixXd& m,
                            const std::optional<QuantFormat>& stored, DType dtype,
                            const std::string& folded, GgufTensorChoice* choice, bool block_types) {
  choice->stored = stored ? stored->name() : "float";
  choice->reason.clear();
  if (stored && !block_types) {
    choice->reason = "block types turned off";
  } else if (stored) {
    const std::optional<GgmlType> type = ggml_block_type(*stored);
    std::string& why = choice->reason;
    if (!type) {
      why = stored->name() + " has no exact ggml type (Q8_0 has no minimum)";
    } else if (m.cols() < m.rows()) {
      why = "its groups run down the columns; ggml's blocks run along the rows";
    } else if (m.cols() % 32 != 0) {
      why = fmt::format("its rows of {} are not whole ggml blocks of 32", m.cols());
    } else {
      // Exact or nothing: quantized again, the values must come back bit for bit.
      std::optional<QuantizedMatrix> q;
      try {
        q = quantize(m, *stored);
      } catch (const Error&) {  // a scale or minimum beyond f16: not the stored values
      }
      if (q && dequantize(*q) == m) {
        GgufTensor t = gguf_block_tensor(std::move(name), *q);
        choice->type = ggml_type_name(t.type);
        return t;
      }
      why =
          "its values are not " + stored->name() + "'s" + (folded.empty() ? "" : " once " + folded);
    }
  }
  GgufTensor t = gguf_tensor(std::move(name), m, dtype);
  choice->type = ggml_type_name(t.type);
  return t;
}

std::vector<GgufTensorChoice> export_gguf_lora(const Bundle& b, size_t task,
                                               const LlamaConfig& base, const fs::path& file,
                                               DType dtype, const std::string& label,
                                               bool block_types) {
  ggml_float_type(dtype);
  if (b.fan_in_fan_out)
    throw Error(label, "", "fan_in_fan_out (Conv1D) adapters have no llama.cpp LLaMA form");
  const BundleTask& t = b.tasks.at(task);
  struct Pair {
    std::string name, proj;
    MatrixXd left, right;  // s H C (out x k), R (k x in)
    std::optional<QuantFormat> heads, bodies;
    double scale = 1;
    bool core = false;
  };
  std::vector<Pair> pairs;
  std::map<int64_t, int> rank_count;
  for (const auto& m : b.modules) {
    const ModuleFit& f = m.fit;
    if (f.right(task).rows() == 0) continue;  // the task has no update here
    auto lm = llama_module(m.name);
    if (!lm)
      throw Error(
          label, m.name,
          "module has no llama.cpp LLaMA tensor (q/k/v/o/gate/up/down_proj of model.layers.N)");
    if (lm->layer >= base.layers) {
      throw Error(
          label, m.name,
          fmt::format("layer {} is beyond the base model's {} layers", lm->layer, base.layers));
    }
    auto [out, in] = module_shape(base, lm->proj);
    if (m.out != out || m.in != in) {
      throw Error(
          label, m.name,
          fmt::format("shape {} x {} differs from the base model's {} x {}", m.out, m.in, out, in));
    }
    Pair p{fmt::format("blk.{}.{}.weight", lm->layer, lm->gguf),
           lm->proj,
           f.left(task),
           f.right(task),
           m.precision.heads,
           m.precision.bodies,
           f.scale[task],
           f.core_of[task] >= 0};
    ++rank_count[p.right.rows()];
    pairs.push_back(std::move(p));
  }
  if (pairs.empty()) throw Error(label, "", "task '" + t.name + "' has no modules in the bundle");
  // alpha = the most common rank: those modules' B carry exactly s H C.
  const int64_t alpha =
      std::max_element(rank_count.begin(), rank_count.end(), [](auto& x, auto& y) {
        return x.second < y.second;
      })->first;
  std::vector<GgufTensor> tensors;
  std::vector<GgufTensorChoice> choices;
  auto add = [&](std::string name, const MatrixXd& m, const std::optional<QuantFormat>& stored,
                 const std::string& folded) {
    GgufTensorChoice c{t.name, name, "", "", ""};
    tensors.push_back(gguf_lora_tensor(std::move(name), m, stored, dtype, folded, &c, block_types));
    choices.push_back(std::move(c));
  };
  for (auto& p : pairs) {
    const int64_t k = p.right.rows();
    MatrixXd left = llama_rows(p.left, base, p.proj);
    const double fold = static_cast<double>(k) / static_cast<double>(alpha);
    if (k != alpha) left *= fold;
    add(p.name + ".lora_a", p.right, p.bodies, "");
    std::string folded = p.core ? "the task's core is multiplied in" : "";
    if (p.scale * fold != 1) {
      folded += fmt::format("{}the scale {:g} is folded in", folded.empty() ? "" : " and ",
                            p.scale * fold);
    }
    add(p.name + ".lora_b", left, p.heads, folded);
  }
  std::vector<GgufKV> kvs = {gguf_kv_string("general.architecture", kArchitecture),
                             gguf_kv_string("general.type", "adapter"),
                             gguf_kv_string("general.name", t.name),
                             gguf_kv_string("adapter.type", "lora"),
                             gguf_kv_f32("adapter.lora.alpha", static_cast<float>(alpha)),
                             gguf_kv_u32("general.alignment", kGgufAlignment)};
  gguf_write(file, kvs, tensors);
  return choices;
}

std::vector<GgufTensorChoice> export_gguf_lora_all(const Bundle& b, const LlamaConfig& base,
                                                   const fs::path& dir, DType dtype,
                                                   const std::string& label, bool block_types) {
  AtomicDir out(dir);
  for (auto& t : b.tasks) {
    check_task_name(t.name, label);
    if (t.name.size() + 5 > 255)
      throw Error(label, "", "task name '" + t.name + "' is too long for a file name");
  }
  std::vector<GgufTensorChoice> choices;
  for (size_t i = 0; i < b.tasks.size(); ++i) {
    auto c = export_gguf_lora(b, i, base, out.path() / (b.tasks[i].name + ".gguf"), dtype, label,
                              block_types);
    choices.insert(choices.end(), c.begin(), c.end());
  }
  out.commit();
  return choices;
}

void export_gguf_model(const fs::path& model_dir, const fs::path& file, DType dtype) {
  ggml_float_type(dtype);
  const LlamaConfig c = gguf_base_config(model_dir);
  const fs::path st_path =
      (fs::is_directory(model_dir) ? model_dir : model_dir.parent_path()) / "model.safetensors";
  auto st = SafetensorsFile::open(st_path);
  std::set<std::string> used;
  auto get = [&](const std::string& name, int64_t rows, int64_t cols) -> MatrixXd {
    const TensorInfo* t = st.find(name);
    if (!t) throw Error(st.path(), name, "missing");
    used.insert(name);
    TensorInfo t2 = *t;
    const bool vec = cols == 0;
    if (vec) {
      if (t->shape.size() != 1) throw Error(st.path(), name, "expected a vector");
      t2.shape = {t->shape[0], 1};
    } else if (t->shape.size() != 2) {
      throw Error(st.path(), name, "expected a matrix");
    }
    MatrixXd m = st.matrix(t2);
    if (m.rows() != rows || m.cols() != (vec ? 1 : cols)) {
      throw Error(st.path(), name,
                  fmt::format("shape differs from config.json's ({} x {})", rows, vec ? 1 : cols));
    }
    return m;
  };
  std::vector<GgufTensor> tensors;
  auto matrix = [&](const std::string& gguf, const std::string& hf, const std::string& proj,
                    int64_t rows, int64_t cols) {
    tensors.push_back(gguf_tensor(gguf, llama_rows(get(hf, rows, cols), c, proj), dtype));
  };
  auto norm = [&](const std::string& gguf, const std::string& hf) {
    tensors.push_back(gguf_tensor(gguf, Eigen::VectorXd(get(hf, c.hidden, 0).col(0)), DType::F32));
  };
  matrix("token_embd.weight", "model.embed_tokens.weight", "", c.vocab, c.hidden);
  norm("output_norm.weight", "model.norm.weight");
  if (!c.tied_embeddings) matrix("output.weight", "lm_head.weight", "", c.vocab, c.hidden);
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l), g = fmt::format("blk.{}.", l);
    norm(g + "attn_norm.weight", p + "input_layernorm.weight");
    norm(g + "ffn_norm.weight", p + "post_attention_layernorm.weight");
    for (const auto& [hf, gguf] : gguf_names()) {
      const std::string proj = hf.substr(hf.find('.') + 1);
      auto [out, in] = module_shape(c, proj);
      matrix(g + gguf + ".weight", p + hf + ".weight", proj, out, in);
    }
  }
  for (const auto& t : st.tensors()) {
    if (!used.count(t.name) && t.name.find("rotary_emb.inv_freq") == std::string::npos) {
      throw Error(st.path(), t.name, "tensor has no place in a llama.cpp LLaMA model");
    }
  }

  // Byte-level vocabulary with our ids (see gguf_export.h).
  if (c.vocab < 256)
    throw Error(st_path.string(), "", "a byte-level vocabulary needs at least 256 ids");
  std::vector<std::string> tokens(static_cast<size_t>(c.vocab));
  std::vector<int32_t> types(tokens.size(), 5);
  for (int b = 0; b < 256; ++b) {
    tokens[static_cast<size_t>(b)] = fmt::format("<0x{:02X}>", b);
    types[static_cast<size_t>(b)] = 6;
  }
  for (int64_t i = 256; i < c.vocab; ++i)
    tokens[static_cast<size_t>(i)] = fmt::format("<unused_{}>", i);
  std::set<int64_t> specials;
  for (auto [id, text] :
       {std::pair{c.bos, "<s>"}, {c.eos, "</s>"}, {c.pad, "<pad>"}, {c.sep, "<sep>"}}) {
    if (id < 256 || id >= c.vocab || !specials.insert(id).second) {
      throw Error(
          st_path.string(), "",
          fmt::format(
              "special token id {} ({}) must be distinct, at least 256 and below vocab_size", id,
              text));
    }
    tokens[static_cast<size_t>(id)] = text;
    types[static_cast<size_t>(id)] = 3;
  }
  const uint32_t file_type = dtype == DType::F32 ? 0 : dtype == DType::F16 ? 1 : 32;
  const std::string a = kArchitecture;
  auto u32 = [](int64_t v) { return static_cast<uint32_t>(v); };
  std::vector<GgufKV> kvs = {
      gguf_kv_string("general.architecture", a),
      gguf_kv_string("general.type", "model"),
      gguf_kv_string("general.name", c.name),
      gguf_kv_u32("general.file_type", file_type),
      gguf_kv_u32("general.alignment", kGgufAlignment),
      gguf_kv_u32(a + ".context_length", u32(c.max_positions)),
      gguf_kv_u32(a + ".embedding_length", u32(c.hidden)),
      gguf_kv_u32(a + ".block_count", u32(c.layers)),
      gguf_kv_u32(a + ".feed_forward_length", u32(c.intermediate)),
      gguf_kv_u32(a + ".attention.head_count", u32(c.heads)),
      gguf_kv_u32(a + ".attention.head_count_kv", u32(c.kv_heads)),
      gguf_kv_u32(a + ".attention.key_length", u32(c.head_dim)),
      gguf_kv_u32(a + ".attention.value_length", u32(c.head_dim)),
      gguf_kv_u32(a + ".rope.dimension_count", u32(c.head_dim)),
      gguf_kv_f32(a + ".rope.freq_base", static_cast<float>(c.rope_theta)),
      gguf_kv_f32(a + ".attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_eps)),
      gguf_kv_u32(a + ".vocab_size", u32(c.vocab)),
      gguf_kv_string("tokenizer.ggml.model", "llama"),
      gguf_kv_strings("tokenizer.ggml.tokens", tokens),
      gguf_kv_f32s("tokenizer.ggml.scores", std::vector<float>(tokens.size(), 0.0f)),
      gguf_kv_i32s("tokenizer.ggml.token_type", types),
      gguf_kv_u32("tokenizer.ggml.bos_token_id", u32(c.bos)),
      gguf_kv_u32("tokenizer.ggml.eos_token_id", u32(c.eos)),
      gguf_kv_u32("tokenizer.ggml.padding_token_id", u32(c.pad)),
      gguf_kv_bool("tokenizer.ggml.add_bos_token", true),
      gguf_kv_bool("tokenizer.ggml.add_eos_token", false),
      gguf_kv_bool("tokenizer.ggml.add_space_prefix", false),
  };
  gguf_write(file, kvs, tensors);
}

}  // namespace hydraopt::io

namespace hydraopt {

namespace fs = std::filesystem;

namespace {

// Like the directory exports, a file export creates its parent directories.
void prepare_file_target(const fs::path& out) {
  if (fs::is_directory(out))
    throw Error(out.string(), "", "is a directory (give the .gguf file to write)");
  std::error_code ec;
  const fs::path parent = fs::absolute(out).parent_path();
  fs::create_directories(parent, ec);
  if (!fs::is_directory(parent)) throw Error(out.string(), "", "cannot create its directory");
}

}  // namespace

std::vector<GgufTensorChoice> io::export_bundle_gguf(const io::Bundle& b, const std::string& label,
                                                     const std::string& task,
                                                     const fs::path& base_model,
                                                     const fs::path& out,
                                                     std::optional<DType> dtype, bool block_types) {
  const LlamaConfig base = io::gguf_base_config(base_model);
  const DType dt = dtype.value_or(b.dtype);
  if (task.empty()) return io::export_gguf_lora_all(b, base, out, dt, label, block_types);
  const size_t i = io::task_index(b, task, label);
  prepare_file_target(out);
  return io::export_gguf_lora(b, i, base, out, dt, label, block_types);
}

void export_model_gguf(const fs::path& model_dir, const fs::path& out, std::optional<DType> dtype) {
  io::gguf_base_config(model_dir);  // report input errors before creating directories
  prepare_file_target(out);
  io::export_gguf_model(model_dir, out, dtype.value_or(DType::F32));
}

}  // namespace hydraopt
