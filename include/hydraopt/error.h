// Errors reported to users of hydraopt.
//
// Every problem caused by input (a file, a config, a command-line value) is
// thrown as hydraopt::Error, which names the file, the tensor (when there is
// one) and the reason, so that the CLI can print it on one line. Internal
// invariants use assert; the library never aborts on user input.
#pragma once

#include <stdexcept>
#include <string>

namespace hydraopt {

class Error : public std::runtime_error {
 public:
  Error(std::string file, std::string tensor, std::string reason)
      : std::runtime_error(format(file, tensor, reason)),
        file_(std::move(file)),
        tensor_(std::move(tensor)),
        reason_(std::move(reason)) {}

  explicit Error(std::string reason) : Error("", "", std::move(reason)) {}

  const std::string& file() const { return file_; }
  const std::string& tensor() const { return tensor_; }
  const std::string& reason() const { return reason_; }

 private:
  static std::string format(const std::string& file, const std::string& tensor,
                            const std::string& reason) {
    std::string s;
    if (!file.empty()) s += file + ": ";
    if (!tensor.empty()) s += "tensor '" + tensor + "': ";
    return s + reason;
  }

  std::string file_, tensor_, reason_;
};

}  // namespace hydraopt
