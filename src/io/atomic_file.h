// Output files that appear complete or not at all.
//
// Bytes go to a temporary file in the target's directory; commit() flushes
// it to disk (fsync), renames it over the target and flushes the directory.
// If commit() is never reached (an exception, a failed write) the destructor
// removes the temporary file, so a previous version of the target stays
// intact and no partial output is ever visible under the target's name.
// Where the file system supports it (ext4, xfs, btrfs, tmpfs) the temporary
// file is unnamed (O_TMPFILE) until commit(), so even a process killed
// mid-write (SIGKILL, SIGXFSZ) leaves nothing behind; elsewhere it is a
// hidden `.<name>.tmp.XXXXXX` beside the target.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

namespace hydraopt::io {

/// Writes all of `bytes` to `fd` at `offset` (pwrite, resumed after short
/// writes and EINTR); a failure is an Error naming `file`.
void write_all_at(int fd, std::span<const std::byte> bytes, uint64_t offset, const std::string& file);

class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path target);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(std::span<const std::byte> bytes);
  void write(std::string_view text);
  /// Appends `length` bytes of the open file `fd` from `offset` (in the
  /// kernel with copy_file_range where it can, else through a buffer).
  void copy_from(int fd, uint64_t offset, uint64_t length);
  /// Writes `bytes` at `offset` (thread-safe for disjoint ranges) and starts
  /// their write-back to disk, so that commit() has little left to flush.
  void write_at(std::span<const std::byte> bytes, uint64_t offset);
  /// Shifts the whole content `length` bytes up, leaving a hole at the
  /// start, without copying it (fallocate's FALLOC_FL_INSERT_RANGE: ext4,
  /// xfs). `length` must be a multiple of the file system's block size. False
  /// where the file system cannot; the file is then as it was.
  bool insert_front(uint64_t length);
  /// Whether the temporary file has no name (O_TMPFILE): then nothing is
  /// left behind even if the process is killed.
  bool unnamed() const { return temp_.empty(); }
  /// The open temporary file (read-write), e.g. for copy_from().
  int fd() const { return fd_; }
  /// fsync + rename over the target; the object is finished afterwards.
  void commit();

 private:
  std::filesystem::path target_;
  std::filesystem::path temp_;  ///< named temporary file; empty while unnamed

  int fd_ = -1;
};

/// A directory that appears complete or not at all. The constructor checks
/// that the target is absent or an empty directory and creates a temporary
/// directory beside it (path()); commit() renames that onto the target. If
/// commit() is never reached, the temporary directory is removed.
class AtomicDir {
 public:
  explicit AtomicDir(const std::filesystem::path& target);
  ~AtomicDir();
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;

  const std::filesystem::path& path() const { return temp_; }
  const std::filesystem::path& target() const { return target_; }
  void commit();

 private:
  std::filesystem::path target_, temp_;
  bool done_ = false;
};

/// Writes `text` to `path` atomically.
void write_file_atomic(const std::filesystem::path& path, std::string_view text);

/// Fails (Error naming `path`) when `path`'s directory does not exist or is
/// not writable: checked before the work, not after.
void check_destination(const std::filesystem::path& path);

}  // namespace hydraopt::io
