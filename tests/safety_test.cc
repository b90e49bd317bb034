// Untrusted input and faults: task names that would escape the output
// directory, absurd size claims, and writes that fail or are killed midway.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>

#include "hydraopt/adapter.h"
#include "hydraopt/bundle.h"
#include "hydraopt/error.h"
#include "hydraopt/merge.h"
#include "hydraopt/synth.h"
#include "io/atomic_file.h"
#include "io/bundle.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace hydraopt {
namespace {

namespace fs = std::filesystem;

using test::error_of;

std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> v;
  for (auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}

// A bundle of 3 tiny synthetic tasks in d/b.safetensors; returns its path.
fs::path make_bundle(const test::TempDir& d) {
  SynthOptions o;
  o.tasks = 3;
  auto dirs = synth_write(d / "s", o);
  std::vector<std::string> specs;
  for (auto& p : dirs) specs.push_back(p.string());
  MergeOptions mo;
  mo.budget = 0.6;
  merge(AdapterSet::open(specs), mo, d / "b.safetensors");
  return d / "b.safetensors";
}

// Rewrites a bundle with task 0 renamed to `name` (as a hostile file would).
void rename_task(const fs::path& bundle, const std::string& name) {
  auto st = io::SafetensorsFile::open(bundle);
  std::vector<io::TensorData> ts;
  for (auto& t : st.tensors()) {
    auto b = st.bytes(t);
    ts.push_back({t.name, t.dtype, t.shape, {b.begin(), b.end()}});
  }
  auto meta = st.metadata();
  auto j = nlohmann::ordered_json::parse(meta.at("hydraopt"));
  j["tasks"][0]["name"] = name;
  meta["hydraopt"] = j.dump();
  io::safetensors_write(bundle, std::move(ts), meta);
}

TEST(Safety, TaskNamesThatWouldLeaveTheOutputDirectoryAreRefused) {
  test::TempDir d;
  const fs::path bundle = make_bundle(d);
  for (const std::string& name : std::vector<std::string>{
           "../escaped", "/tmp/abs", "..", ".", "a\nb", "x\\y", "", std::string(300, 'n')}) {
    rename_task(bundle, name);
    fs::create_directories(d / "out");
    const std::string e = error_of([&] { Bundle::open(bundle).export_peft("", d / "out" / "all"); });
    EXPECT_NE(e.find("cannot be used as a directory name"), std::string::npos) << e;
    EXPECT_EQ(e.rfind(bundle.string(), 0), 0u) << e;  // names the file
    EXPECT_TRUE(listing(d / "out").empty());
    EXPECT_FALSE(fs::exists(d / "escaped"));
    rename_task(bundle, "task00");
  }
  EXPECT_NO_THROW(Bundle::open(bundle).export_peft("", d / "out" / "all"));
  EXPECT_EQ(listing(d / "out" / "all"), (std::vector<std::string>{"task00", "task01", "task02"}));
}

TEST(Safety, DuplicateTaskNamesInABundleAreRefused) {
  test::TempDir d;
  const fs::path bundle = make_bundle(d);
  rename_task(bundle, "task01");
  EXPECT_NE(error_of([&] { io::bundle_read(bundle); }).find("'task01' appears twice"),
            std::string::npos);
}

TEST(Safety, TaskNamesFromArgumentsAndDirectoriesAreChecked) {
  test::TempDir d;
  SynthOptions o;
  o.tasks = 1;
  synth_write(d / "s", o);
  const std::string dir = (d / "s" / "task00").string();
  for (const std::string name : {"../up", "a/b", "..", "tab\there"}) {
    EXPECT_NE(error_of([&] {
                Adapter::open(name + "=" + dir);
              }).find("cannot be used as a directory name"),
              std::string::npos)
        << name;
  }
  EXPECT_EQ(Adapter::open("ok-name=" + dir).name(), "ok-name");
  fs::rename(d / "s" / "task00", d / "s" / "new\nline");
  EXPECT_THROW(Adapter::open((d / "s" / "new\nline").string()), Error);
}

// A header that claims a 1 TiB tensor (or a shape whose size overflows) is
// refused from the header alone: nothing is allocated or read.
TEST(Safety, HugeTensorClaimsFailAtOnce) {
  auto file_with = [](const std::string& entry) {
    std::string h = "{\"t\":" + entry + "}";
    h.append((8 - h.size() % 8) % 8, ' ');
    std::string f(8, '\0');
    uint64_t n = h.size();
    std::memcpy(f.data(), &n, 8);
    return f + h + std::string(16, '\0');
  };
  const auto start = std::chrono::steady_clock::now();
  const std::string tib =
      file_with(R"({"dtype":"F32","shape":[262144,1048576],"data_offsets":[0,1099511627776]})");
  std::string e = error_of(
      [&] { io::SafetensorsFile::parse(std::as_bytes(std::span(tib)), "big.safetensors"); });
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
  const std::string wraps =
      file_with(R"({"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]})");
  e = error_of(
      [&] { io::SafetensorsFile::parse(std::as_bytes(std::span(wraps)), "wrap.safetensors"); });
  EXPECT_NE(e.find("overflows"), std::string::npos) << e;
  EXPECT_NE(e.find("tensor 't'"), std::string::npos) << e;
  const std::string neg = file_with(R"({"dtype":"F32","shape":[-4,1],"data_offsets":[0,16]})");
  e = error_of(
      [&] { io::SafetensorsFile::parse(std::as_bytes(std::span(neg)), "neg.safetensors"); });
  EXPECT_NE(e.find("non-negative"), std::string::npos) << e;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 1.0);
}

// A --plan file is untrusted too: json's value<int>() on 1e300 was a
// float-to-int conversion out of range (undefined behaviour).
TEST(Safety, PlanFileNumbersAreRangeChecked) {
  test::TempDir d;
  const auto set = AdapterSet::open(test::synth_specs(2));
  for (const char* entry :
       {R"("rank":1e300,"groups":1)", R"("rank":2,"groups":-1)", R"("rank":"2")"}) {
    test::write_text(d / "plan.json", std::string(R"([{"name":")") + set.modules()[0].name +
                                          R"(","family":"shared-A",)" + entry + "}]");
    MergeOptions mo;
    mo.plan_file = (d / "plan.json").string();
    const std::string e = error_of([&] { merge(set, mo, ""); });
    EXPECT_NE(e.find("must be an integer"), std::string::npos) << entry << ": " << e;
  }
}

// A plan's precisions: each role an integer format the structure stores.
TEST(Safety, PlanFilePrecisionsAreChecked) {
  test::TempDir d;
  const auto set = AdapterSet::open(test::synth_specs(2));
  const std::string name = set.modules()[0].name;
  for (const auto& [precision, want] : std::vector<std::pair<std::string, std::string>>{
           {R"(3)", "precision is not an object"},
           {R"({"tail":"int4-g32-sym"})", "unknown role 'tail'"},
           {R"({"head":4})", "precision of head is not a string"},
           {R"({"head":"int5-g32-sym"})", "precision"},
           {R"({"core":"int4-g32-sym"})", "precision of core, which structure"}}) {
    test::write_text(d / "plan.json", R"([{"name":")" + name + R"(","family":"shared-A","rank":2,"groups":0,"precision":)" +
                                          precision + "}]");
    MergeOptions mo;
    mo.plan_file = (d / "plan.json").string();
    const std::string e = error_of([&] { merge(set, mo, ""); });
    EXPECT_NE(e.find(want), std::string::npos) << precision << ": " << e;
    EXPECT_NE(e.find("plan.json"), std::string::npos) << e;
    EXPECT_NE(e.find(name), std::string::npos) << e;
  }
}

// RLIMIT_FSIZE makes writes past `bytes` fail with EFBIG (SIGXFSZ ignored),
// like a full disk; restored at scope exit.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &old_);
    old_handler_ = ::signal(SIGXFSZ, SIG_IGN);
    rlimit r = old_;
    r.rlim_cur = bytes;
    ::setrlimit(RLIMIT_FSIZE, &r);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old_);
    ::signal(SIGXFSZ, old_handler_);
  }

 private:
  rlimit old_{};
  sighandler_t old_handler_;
};

std::vector<io::TensorData> big_tensors() {
  return {io::tensor_from_matrix("w", test::random_matrix(128, 256, 1), DType::F32)};  // 128 KiB
}

TEST(Safety, AFailedWriteLeavesThePreviousFileAndNoTemporaries) {
  test::TempDir d;
  const fs::path target = d / "out.safetensors";
  test::write_text(target, "previous version");
  std::string e;
  {
    FileSizeLimit limit(16 << 10);
    e = error_of([&] { io::safetensors_write(target, big_tensors()); });
  }
  EXPECT_NE(e.find("write failed: File too large"), std::string::npos) << e;
  EXPECT_EQ(e.rfind(target.string(), 0), 0u) << e;
  EXPECT_EQ(test::read_text(target), "previous version");
  EXPECT_EQ(listing(d.path()), std::vector<std::string>{"out.safetensors"});
  io::safetensors_write(target, big_tensors());  // and without the limit it works
  EXPECT_EQ(io::SafetensorsFile::open(target).tensors().size(), 1u);
}

TEST(Safety, AFailedMergeLeavesThePreviousBundleAndNoTemporaries) {
  test::TempDir d;
  SynthOptions o;
  o.tasks = 3;
  auto dirs = synth_write(d / "s", o);
  std::vector<std::string> specs;
  for (auto& p : dirs) specs.push_back(p.string());
  auto set = AdapterSet::open(specs);
  fs::create_directories(d / "out");
  const fs::path bundle = d / "out" / "b.safetensors";
  test::write_text(bundle, "previous bundle");
  MergeOptions mo;
  mo.budget = 1.0;
  std::string e;
  {
    FileSizeLimit limit(8 << 10);
    try {
      merge(set, mo, bundle);
      ADD_FAILURE() << "merge succeeded under an 8 KiB file size limit";
    } catch (const Error& x) {
      e = x.what();
    }
  }
  EXPECT_NE(e.find("File too large"), std::string::npos) << e;
  EXPECT_EQ(test::read_text(bundle), "previous bundle");
  EXPECT_EQ(listing(d / "out"), std::vector<std::string>{"b.safetensors"});
}

TEST(Safety, AFailedDirectoryExportLeavesNothing) {
  test::TempDir d;
  const fs::path bundle = make_bundle(d);
  fs::create_directories(d / "out");
  std::string e;
  {
    FileSizeLimit limit(4 << 10);
    e = error_of([&] { Bundle::open(bundle).export_peft("", d / "out" / "all"); });
  }
  EXPECT_NE(e.find("File too large"), std::string::npos) << e;
  EXPECT_TRUE(listing(d / "out").empty());  // neither the target nor a temporary directory
  e = "";
  {
    FileSizeLimit limit(4 << 10);
    e = error_of([&] { Bundle::open(bundle).export_peft("task01", d / "out" / "one"); });
  }
  EXPECT_NE(e.find("File too large"), std::string::npos) << e;
  EXPECT_TRUE(listing(d / "out").empty());
}

bool supports_unnamed_files(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  ::close(fd);
  return ::access("/proc/self/fd", X_OK) == 0;
}

// The process dies (SIGXFSZ, default action) in the middle of writing the
// output: the previous file is intact and no partial file carries its name;
// where O_TMPFILE works, nothing at all is left behind.
TEST(Safety, AProcessKilledMidWriteLeavesThePreviousFile) {
  test::TempDir d;
  const fs::path target = d / "out.safetensors";
  test::write_text(target, "previous version");
  auto tensors = big_tensors();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::signal(SIGXFSZ, SIG_DFL);
    rlimit r{};
    ::getrlimit(RLIMIT_FSIZE, &r);
    r.rlim_cur = 16 << 10;
    ::setrlimit(RLIMIT_FSIZE, &r);
    try {
      io::safetensors_write(target, std::move(tensors));
    } catch (...) {
    }
    ::_exit(0);  // not reached: the write past the limit kills the process
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status;
  EXPECT_EQ(WTERMSIG(status), SIGXFSZ);
  EXPECT_EQ(test::read_text(target), "previous version");
  if (supports_unnamed_files(d.path())) {
    EXPECT_EQ(listing(d.path()), std::vector<std::string>{"out.safetensors"});
  } else {
    for (auto& name : listing(d.path())) {
      EXPECT_TRUE(name == "out.safetensors" || name.rfind(".out.safetensors.tmp.", 0) == 0) << name;
    }
  }
}

// The CLI, killed the same way during merge: exit by signal, the previous
// bundle intact, no partial bundle.
TEST(Safety, CliMergeKilledMidWriteLeavesThePreviousBundle) {
  test::TempDir d;
  ASSERT_EQ(test::run(test::cli() + " synth " + (d / "s").string() + " --tasks 3"), 0);
  fs::create_directories(d / "out");
  const fs::path bundle = d / "out" / "b.safetensors";
  test::write_text(bundle, "previous bundle");
  const std::string merge = test::cli() + " merge " + (d / "s/task00").string() + " " + (d / "s/task01").string() +
                            " " + (d / "s/task02").string() + " --budget 1 -o " + bundle.string();
  std::string out;
  const int rc = test::run("bash -c 'ulimit -f 16; exec " + merge + "'", &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_EQ(test::read_text(bundle), "previous bundle");
  if (supports_unnamed_files(d / "out")) {
    EXPECT_EQ(listing(d / "out"), std::vector<std::string>{"b.safetensors"});
  }
  // With SIGXFSZ ignored the write fails instead: a one-line error, exit 1.
  const int rc2 = test::run("bash -c \"trap '' XFSZ; ulimit -f 16; exec " + merge + "\"", &out);
  EXPECT_EQ(rc2, 1) << out;
  EXPECT_NE(out.find("hydraopt: error: "), std::string::npos) << out;
  EXPECT_NE(out.find("File too large"), std::string::npos) << out;
  EXPECT_EQ(test::read_text(bundle), "previous bundle");
  EXPECT_EQ(listing(d / "out"), std::vector<std::string>{"b.safetensors"});
}

}  // namespace
}  // namespace hydraopt
