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

// Found by bundle_fuzz (49 executions): metadata that is not valid UTF-8
// made safetensors_header() throw nlohmann's type_error 316 instead of a
// hydraopt::Error. The same bytes in a task name (a directory name, or
// NAME=DIR) reached the bundle writer after the whole merge and ended as
// "internal error"; such names are now refused when the adapter is opened.
TEST(FuzzRegression, InvalidUtf8InNamesAndMetadataIsAnError) {
  EXPECT_THROW(io::safetensors_header({}, {{"hydraopt", "{\"a\":\"\xff\"}"}}), Error);
  EXPECT_THROW(io::safetensors_header({{"bad\xc3(", DType::F32, {1}, 0, 4}}, {}), Error);
  EXPECT_NE(error_of([] { io::check_task_name("caf\xe9", "x"); }).find("cannot be used as a directory name"),
            std::string::npos);
  EXPECT_NO_THROW(io::check_task_name("caf\xc3\xa9", "x"));  // é in UTF-8 is fine
}

}  // namespace
}  // namespace hydraopt
