// Hints to the kernel about large buffers.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>

namespace hydraopt::util {

/// Asks the kernel to back the whole 2 MiB pages inside [p, p + bytes) with
/// transparent huge pages (where it is set to "madvise", the default on
/// Debian). A buffer of tens of MB fresh from mmap then faults in by the
/// 2 MiB page instead of by the 4 KiB one: for 1,000 adapters the hydra
/// point's stack is 65 MB a module, and its 4 KiB faults cost seconds of
/// system time. Only a hint; ignored for buffers under 8 MiB.
inline void advise_huge_pages(void* p, size_t bytes) {
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (bytes < 4 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

}  // namespace hydraopt::util
