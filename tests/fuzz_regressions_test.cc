// Inputs that crashed (or could crash) a reader, kept as regression tests.
// Each names how it was found.
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <string>

#include "hydraopt/error.h"
#include "io/bundle.h"
#include "io/peft_config.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace hydraopt {
namespace {

using test::error_of;

// Found by review while writing peft_config_fuzz: the error message printed
// the value with json::dump(), which recurses once per nesting level; a
// 200 KB config of nested arrays overflowed the stack (SIGSEGV).
TEST(FuzzRegression, DeeplyNestedPeftTypeIsAnErrorNotAStackOverflow) {
  const size_t depth = 200000;
  const std::string config =
      "{\"peft_type\":" + std::string(depth, '[') + std::string(depth, ']') + "}";
  const std::string e = error_of([&] { io::parse_peft_config(config, "adapter_config.json"); });
  EXPECT_NE(e.find("adapter_config.json: peft_type is a array"), std::string::npos)
      << e.substr(0, 200);
}

// Found by bundle_fuzz (49 executions): metadata that is not valid UTF-8
// made safetensors_header() throw nlohmann's type_error 316 instead of a
// hydraopt::Error. The same bytes in a task name (a directory name, or
// NAME=DIR) reached the bundle writer after the whole merge and ended as
// "internal error"; such names are now refused when the adapter is opened.
TEST(FuzzRegression, InvalidUtf8InNamesAndMetadataIsAnError) {
  EXPECT_THROW(io::safetensors_header({}, {{"hydraopt", "{\"a\":\"\xff\"}"}}), Error);
  EXPECT_THROW(io::safetensors_header({{"bad\xc3(", DType::F32, {1}, 0, 4}}, {}), Error);
  EXPECT_NE(error_of([] {
              io::check_task_name("caf\xe9", "x");
            }).find("cannot be used as a directory name"),
            std::string::npos);
  EXPECT_NO_THROW(io::check_task_name("caf\xc3\xa9", "x"));  // é in UTF-8 is fine
}

// A two-task shared-A bundle (one module, in 4, out 3, rank 2) whose
// module entry has head_of = `head_of` (JSON text), parsed from memory.
io::Bundle parse_bundle_with_head_of(const std::string& head_of) {
  const std::string meta = R"({"format":"hydraopt.bundle","version":1,"hydraopt_version":"0.1.0",
    "method":"hydraopt","parameters":{},"budget":0.6,"dtype":"F32","base_model":"m","fan_in_fan_out":false,
    "storage":{"params":20,"original_params":40},
    "tasks":[{"name":"a","source":"a","sha256":"","rank":2,"alpha":4,"use_rslora":false,"target_modules":[]},
             {"name":"b","source":"b","sha256":"","rank":2,"alpha":4,"use_rslora":false,"target_modules":[]}],
    "modules":[{"name":"m.q","in":4,"out":3,"family":"shared-A","rank":2,"groups":1,"diagonal_cores":false,
                "head_of":)" +
                           head_of + R"(,"core_of":[-1,-1],"body_of":[0,0],"scale":[1,1]}]})";
  std::vector<io::TensorData> ts = {
      io::tensor_from_matrix("m.q.head.0", Eigen::MatrixXd::Ones(3, 2), DType::F32),
      io::tensor_from_matrix("m.q.head.1", Eigen::MatrixXd::Ones(3, 2), DType::F32),
      io::tensor_from_matrix("m.q.body.0", Eigen::MatrixXd::Ones(2, 4), DType::F32)};
  static std::vector<std::byte> image;
  image = io::safetensors_serialize(std::move(ts), {{"hydraopt", meta}});
  return io::bundle_parse(io::SafetensorsFile::parse(image, "b.safetensors"));
}

// Found by review of bundle_parse, confirmed with bundle_fuzz on these
// inputs (a 60 s fuzz run had not reached them): json's get<int>() on 1e300
// is a float-to-int conversion out of range (UB), and INT_MAX as an index
// overflowed `max index + 1`. Both are now range-checked errors.
TEST(FuzzRegression, LayoutIndicesAreRangeChecked) {
  EXPECT_EQ(parse_bundle_with_head_of("[0,1]").modules.at(0).fit.heads.size(),
            2u);  // the valid form
  for (const char* bad : {"[0,1e300]", "[0,2147483647]", "[0,-1]", "[0,1.5]", "[0,\"1\"]", "{}"}) {
    const std::string e = error_of([&] { parse_bundle_with_head_of(bad); });
    EXPECT_NE(e.find("b.safetensors: tensor 'm.q': head_of"), std::string::npos)
        << bad << ": " << e;
  }
}

}  // namespace
}  // namespace hydraopt
