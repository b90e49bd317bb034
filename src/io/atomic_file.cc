#include "io/atomic_file.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "hydraopt/error.h"

namespace hydraopt::io {

namespace fs = std::filesystem;

namespace {

std::string temp_leaf(const fs::path& target) {
  std::string leaf = ".";
  leaf += target.filename().string();
  leaf += ".tmp.";
  return leaf;
}

fs::path parent_dir(const fs::path& target) {
  fs::path dir = target.parent_path();
  return dir.empty() ? fs::path(".") : dir;
}

// Flushes a directory's entries (the rename) to disk; best effort, as some
// file systems refuse fsync on directories.
void fsync_dir(const fs::path& dir) {
  int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d >= 0) {
    ::fsync(d);
    ::close(d);
  }
}

}  // namespace

AtomicFile::AtomicFile(fs::path target) : target_(std::move(target)) {
  const fs::path dir = parent_dir(target_);
  // An unnamed file (O_TMPFILE) leaves nothing behind even if the process
  // is killed; it gets a name only in commit(). Needs /proc/self/fd to be
  // linked, and a file system that supports it; else a named temporary.
  if (::access("/proc/self/fd", X_OK) == 0) {
    fd_ = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
    if (fd_ >= 0) return;
  }
  std::string templ = (dir / temp_leaf(target_)).string() + "XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  fd_ = ::mkstemp(buf.data());
  if (fd_ < 0) {
    throw Error(target_.string(), "",
                std::string("cannot create output file: ") + std::strerror(errno));
  }
  temp_ = buf.data();
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!temp_.empty()) {
    std::error_code ec;
    fs::remove(temp_, ec);
  }
}

void AtomicFile::write(std::span<const std::byte> bytes) {
  const std::byte* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      throw Error(target_.string(), "", std::string("write failed: ") + std::strerror(errno));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
}

void AtomicFile::write(std::string_view text) {
  write(std::as_bytes(std::span(text.data(), text.size())));
}

void AtomicFile::copy_from(int fd, uint64_t offset, uint64_t length) {
  auto fail = [&](int err) {
    throw Error(target_.string(), "", std::string("write failed: ") + std::strerror(err));
  };
  auto in = static_cast<off_t>(offset);
  bool kernel = true;
  std::vector<std::byte> buf;
  while (length > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(length, 1 << 30));
    ssize_t n = -1;
    if (kernel) {
      n = ::copy_file_range(fd, &in, fd_, nullptr, chunk, 0);
      if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
        kernel = false;  // e.g. across file systems on old kernels: copy by hand
        continue;
      }
    } else {
      buf.resize(std::min<size_t>(chunk, 1 << 22));
      n = ::pread(fd, buf.data(), buf.size(), in);
      if (n > 0) {
        write(std::span<const std::byte>(buf.data(), static_cast<size_t>(n)));
        in += n;
      }
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(errno);
    if (n == 0) fail(EIO);  // the source ended early
    length -= static_cast<uint64_t>(n);
  }
}

void write_all_at(int fd, std::span<const std::byte> bytes, uint64_t offset, const std::string& file) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::pwrite(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error(file, "", std::string("write failed: ") + std::strerror(errno));
    done += static_cast<size_t>(n);
  }
}

void AtomicFile::write_at(std::span<const std::byte> bytes, uint64_t offset) {
  write_all_at(fd_, bytes, offset, target_.string());
  // Only a hint (errors surface in commit's fsync). (A length of 0 would
  // mean "to the end of the file".)
  if (!bytes.empty()) ::sync_file_range(fd_, static_cast<off_t>(offset), static_cast<off_t>(bytes.size()), SYNC_FILE_RANGE_WRITE);
}

bool AtomicFile::insert_front(uint64_t length) {
  struct stat before {};
  if (::fstat(fd_, &before) != 0) throw Error(target_.string(), "", std::string("cannot stat output: ") + std::strerror(errno));
  if (::fallocate(fd_, FALLOC_FL_INSERT_RANGE, 0, static_cast<off_t>(length)) == 0) return true;
  const int err = errno;
  struct stat after {};
  if (::fstat(fd_, &after) != 0 || after.st_size != before.st_size) {
    throw Error(target_.string(), "", std::string("cannot make room for the header: ") + std::strerror(err));
  }
  return false;
}

void AtomicFile::commit() {
  // mkstemp creates 0600; outputs are ordinary user files.
  if (::fchmod(fd_, 0644) != 0 || ::fsync(fd_) != 0) {
    throw Error(target_.string(), "", std::string("cannot flush output: ") + std::strerror(errno));
  }
  if (temp_.empty()) {
    // Name the unnamed file beside the target (link() cannot replace an
    // existing target; rename() below does, atomically).
    const std::string proc = "/proc/self/fd/" + std::to_string(fd_);
    const fs::path dir = parent_dir(target_);
    for (unsigned attempt = 0;; ++attempt) {
      fs::path name =
          dir / (temp_leaf(target_) + std::to_string(::getpid()) + "." + std::to_string(attempt));
      if (::linkat(AT_FDCWD, proc.c_str(), AT_FDCWD, name.c_str(), AT_SYMLINK_FOLLOW) == 0) {
        temp_ = name;
        break;
      }
      if (errno != EEXIST || attempt > 100) {
        throw Error(target_.string(), "",
                    std::string("cannot name output file: ") + std::strerror(errno));
      }
    }
  }
  const int closed = ::close(fd_);
  fd_ = -1;
  if (closed != 0) {
    throw Error(target_.string(), "", std::string("cannot close output: ") + std::strerror(errno));
  }
  if (::rename(temp_.c_str(), target_.c_str()) != 0) {
    throw Error(target_.string(), "", std::string("cannot rename output: ") + std::strerror(errno));
  }
  temp_.clear();
  fsync_dir(parent_dir(target_));
}

AtomicDir::AtomicDir(const fs::path& target) : target_(fs::absolute(target)) {
  if (fs::exists(target_) && !(fs::is_directory(target_) && fs::is_empty(target_))) {
    throw Error(target_.string(), "", "already exists and is not an empty directory");
  }
  fs::path parent = target_.parent_path();
  std::error_code ec;
  fs::create_directories(parent, ec);
  std::string leaf = ".";
  leaf += target_.filename().string();
  leaf += ".tmp.XXXXXX";
  std::string templ = (parent / leaf).string();
  if (!::mkdtemp(templ.data())) throw Error(target_.string(), "", "cannot create a temporary directory beside it");
  temp_ = templ;
}

AtomicDir::~AtomicDir() {
  std::error_code ec;
  if (!done_) fs::remove_all(temp_, ec);
}

void AtomicDir::commit() {
  fs::permissions(temp_, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                             fs::perms::others_read | fs::perms::others_exec);
  if (fs::exists(target_)) fs::remove(target_);  // an empty directory (checked above)
  fs::rename(temp_, target_);
  done_ = true;
}

void write_file_atomic(const fs::path& path, std::string_view text) {
  AtomicFile f(path);
  f.write(text);
  f.commit();
}

void check_destination(const fs::path& path) {
  const fs::path dir = fs::absolute(path).parent_path();
  if (!fs::is_directory(dir)) throw Error(path.string(), "", "output directory does not exist");
  if (::access(dir.c_str(), W_OK) != 0) throw Error(path.string(), "", "output directory is not writable");
}

}  // namespace hydraopt::io
