// Inputs that crashed (or could crash) a reader, kept as regression tests.
// Each names how it was found.
#include <gtest/gtest.h>

#include <string>

#include "hydraopt/error.h"
#include "io/bundle.h"
#include "io/peft_config.h"
#include "io/safetensors.h"

namespace hydraopt {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected hydraopt::Error";
  return "";
}

// Found by review while writing peft_config_fuzz: the error message printed
// the value with json::dump(), which recurses once per nesting level; a
// 200 KB config of nested arrays overflowed the stack (SIGSEGV).
TEST(FuzzRegression, DeeplyNestedPeftTypeIsAnErrorNotAStackOverflow) {
  const size_t depth = 200000;
  const std::string config = "{\"peft_type\":" + std::string(depth, '[') + std::string(depth, ']') + "}";
  const std::string e = error_of([&] { io::parse_peft_config(config, "adapter_config.json"); });
  EXPECT_NE(e.find("adapter_config.json: peft_type is a array"), std::string::npos) << e.substr(0, 200);
}

}  // namespace
}  // namespace hydraopt
