// rank_pattern / alpha_pattern keys: the linear-time matcher agrees with
// std::regex where std::regex is safe, and hostile keys cost microseconds.
#include <gtest/gtest.h>

#include <chrono>
#include <regex>

#include "hydraopt/error.h"
#include "io/pattern.h"

namespace hydraopt {
namespace {

using io::SuffixPatterns;
using io::SuffixRegex;

std::string error_of(const std::string& key) {
  try {
    SuffixRegex r(key, "adapter_config.json");
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "key accepted: " << key;
  return "";
}

TEST(Pattern, AgreesWithStdRegexOnPeftShapedKeys) {
  const std::vector<std::string> keys = {"q_proj",
                                         "layers.1.self_attn.q_proj",
                                         "1.self_attn.q_proj",
                                         "model\\.layers\\.\\d+\\.mlp\\..*",
                                         "(q|v)_proj",
                                         "[qv]_proj",
                                         "layers\\.[0-9]{1,2}\\.self_attn\\.q_proj",
                                         ".*",
                                         "a{2,3}",
                                         "x?q_proj",
                                         "(?:q|k)_proj",
                                         "[^q]_proj",
                                         "\\w+_proj",
                                         "^model.layers.0.self_attn.q_proj",
                                         "proj$",
                                         "layers.(1|11).self_attn.q_proj",
                                         "[a-c-]x",
                                         "",
                                         "q_pro+j",
                                         "(a|)+q_proj",
                                         "a{2,}",
                                         "[\\d.]+",
                                         "\\x71_proj",
                                         "(a*)*",
                                         "[]",
                                         "[^]"};
  const std::vector<std::string> names = {"model.layers.0.self_attn.q_proj",
                                          "model.layers.1.self_attn.q_proj",
                                          "model.layers.11.self_attn.q_proj",
                                          "model.layers.0.self_attn.v_proj",
                                          "model.layers.3.mlp.down_proj",
                                          "aa",
                                          "aaa",
                                          "aaaa",
                                          "a",
                                          "q_proj",
                                          "xq_proj",
                                          "k_proj",
                                          "bx",
                                          "-x",
                                          ".x",
                                          "model.layers.0.self_attn.q_prooooj",
                                          "a.q_proj",
                                          "",
                                          "1.2.3"};
  for (const auto& k : keys) {
    SuffixRegex ours(k, "f");
    std::regex ref("(.*\\.)?(" + k + ")$", std::regex::ECMAScript);
    for (const auto& n : names)
      EXPECT_EQ(ours.full_match(n), std::regex_match(n, ref)) << k << " on " << n;
  }
}

TEST(Pattern, FirstMatchingKeyWins) {
  SuffixPatterns p({"layers.1.self_attn.q_proj", "q_proj", "proj"}, "f");
  EXPECT_EQ(p.match("model.layers.1.self_attn.q_proj"), 0u);
  EXPECT_EQ(p.match("model.layers.11.self_attn.q_proj"), 1u);  // a dotted suffix, not any suffix
  EXPECT_EQ(p.match("model.layers.0.mlp.up_proj"), std::nullopt);
  EXPECT_EQ(p.match("model.layers.0.mlp.proj"), 2u);
}

// Each of these makes libstdc++'s backtracking std::regex take exponential
// time (`(a|a)*b` on 24 characters: ~3 s; on 512: never finishes).
TEST(Pattern, HostileKeysRunInLinearTime) {
  const std::string subject(io::kMaxModuleNameLength, 'a');
  const std::string dotted = [] {
    std::string s;
    while (s.size() + 2 <= io::kMaxModuleNameLength) s += "a.";
    return s;
  }();
  const auto start = std::chrono::steady_clock::now();
  for (const char* key :
       {"(a|a)*b", "(a*)*b", "((a+)+)+b", "(.*)*x", "(a|aa)*c", "(.*\\.)*(.*\\.)*b",
        "(?:a?){100}a{100}b", "((((((a*)*)*)*)*)*)*b", "(a|a?)+b"}) {
    SuffixRegex r(key, "f");
    EXPECT_FALSE(r.full_match(subject)) << key;
    EXPECT_FALSE(r.full_match(dotted)) << key;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 2.0);  // ~10 ms in Release, well under a second under ASan
}

TEST(Pattern, HostileKeysAreRefusedWithClearErrors) {
  EXPECT_NE(error_of(std::string(300, 'a')).find("longer than 256"), std::string::npos);
  EXPECT_NE(error_of("(a{1000}){1000}").find("too complex"), std::string::npos);
  EXPECT_NE(error_of("((a{30}){30}){30}").find("too complex"), std::string::npos);
  EXPECT_NE(error_of("a{1001}").find("repeat count above 1000"), std::string::npos);
  EXPECT_NE(error_of("a{99999999999999999999}").find("repeat count"), std::string::npos);
  EXPECT_NE(error_of(std::string(128, '(')).find("not a valid regular expression"),
            std::string::npos);
  EXPECT_NE(error_of("(a)\\1").find("backreference"), std::string::npos);
  EXPECT_NE(error_of("(?=q)q_proj").find("does not support"), std::string::npos);
  EXPECT_NE(error_of("\\bq").find("does not support"), std::string::npos);
  EXPECT_NE(error_of("a**").find("nothing to repeat"), std::string::npos);
  EXPECT_NE(error_of("[z-a]").find("range out of order"), std::string::npos);
  EXPECT_NE(error_of("[abc").find("unterminated"), std::string::npos);
  EXPECT_NE(error_of("\\").find("trailing backslash"), std::string::npos);
  // The message names the file and the key.
  EXPECT_EQ(error_of("(").rfind("adapter_config.json: pattern key '('", 0), 0u);
}

TEST(Pattern, DeepNestingWithinTheLengthCapIsFine) {
  std::string key = std::string(120, '(') + "q_proj" + std::string(120, ')');
  SuffixRegex r(key, "f");
  EXPECT_TRUE(r.full_match("model.layers.0.self_attn.q_proj"));
}

TEST(Pattern, LongModuleNamesAreRefused) {
  SuffixPatterns p({"q_proj"}, "cfg.json");
  EXPECT_THROW(p.match(std::string(io::kMaxModuleNameLength + 1, 'a')), Error);
  EXPECT_EQ(p.match(std::string(io::kMaxModuleNameLength - 7, 'a') + ".q_proj"), 0u);
}

}  // namespace
}  // namespace hydraopt
