// The tiny check harness of the standalone C++ tests (run by ctest): CHECK counts failures and goes on,
// so one run reports every failed check; finish() prints the summary and gives main's exit code.
#pragma once

#include <cstdio>

namespace xgenmm {
namespace testing {

inline int& failures() {
  static int count = 0;
  return count;
}

inline int finish(const char* name) {
  if (failures()) {
    std::fprintf(stderr, "%s: %d check(s) failed\n", name, failures());
    return 1;
  }
  std::printf("%s: all checks passed\n", name);
  return 0;
}

}  // namespace testing
}  // namespace xgenmm

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++::xgenmm::testing::failures();                                              \
    }                                                                               \
  } while (0)
