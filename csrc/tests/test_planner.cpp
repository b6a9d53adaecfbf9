// Standalone checks of csrc/packing (no torch, no Python): hand-checked small plans, the plan's invariants
// on random inputs, agreement with a naive O(n * rows) first-fit-decreasing, and input errors. Run by ctest.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "packing/planner.h"
#include "tests/check.h"

using namespace xgenmm::packing;

namespace {

using Rows = std::vector<std::vector<int64_t>>;

// The definition, written the slow way (as xgenmm_fast/data/planner.py::plan_rows_reference).
Rows naive_ffd(const std::vector<int64_t>& lengths, int64_t budget) {
  std::vector<int64_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
  Rows rows;
  std::vector<int64_t> room;
  for (int64_t i : order) {
    const int64_t need = std::min(lengths[i], budget);
    size_t r = 0;
    while (r < room.size() && room[r] < need) ++r;
    if (r == room.size()) {
      rows.push_back({i});
      room.push_back(budget - need);
    } else {
      rows[r].push_back(i);
      room[r] -= need;
    }
  }
  return rows;
}

// Every index once; no row over budget unless it holds one over-long sample, whose only company can be
// zero-length samples (room >= 0 always holds, so those join the first row, over-long or not).
bool valid_plan(const Rows& rows, const std::vector<int64_t>& lengths, int64_t budget) {
  std::vector<int> seen(lengths.size(), 0);
  for (const auto& row : rows) {
    if (row.empty()) return false;
    int64_t total = 0, over_long = 0, nonzero = 0;
    for (int64_t i : row) {
      if (i < 0 || i >= static_cast<int64_t>(lengths.size()) || seen[i]++) return false;
      total += std::min(lengths[i], budget);
      over_long += lengths[i] > budget;
      nonzero += lengths[i] > 0;
    }
    if (total > budget || over_long > 1 || (over_long == 1 && nonzero > 1)) return false;
  }
  return std::all_of(seen.begin(), seen.end(), [](int s) { return s == 1; });
}

void test_hand_checked() {
  CHECK(plan_rows_ffd({}, 10).empty());
  CHECK((plan_rows_ffd({5}, 10) == Rows{{0}}));
  CHECK((plan_rows_ffd({25}, 10) == Rows{{0}}));  // over-long: a row of its own
  // sorted: 1(7) 3(6) 0(5) 2(3) 4(2); 7 -> r0 (room 3); 6 -> r1 (4); 5 -> r2 (5); 3 -> r0 (0); 2 -> r1 (2)
  CHECK((plan_rows_ffd({5, 7, 3, 6, 2}, 10) == Rows{{1, 2}, {3, 4}, {0}}));
  // ties by index; 4 + 4 + 2 == budget exactly
  CHECK((plan_rows_ffd({4, 2, 4}, 10) == Rows{{0, 2, 1}}));
  // over-long samples are clipped to the budget: they fill their row, nothing joins them
  CHECK((plan_rows_ffd({3, 12, 11, 7}, 10) == Rows{{1}, {2}, {3, 0}}));
  // zero-length samples join the first row (room >= 0 always), even a full one
  CHECK((plan_rows_ffd({0, 10, 0}, 10) == Rows{{1, 0, 2}}));
  CHECK((plan_rows_ffd({0, 0}, 1) == Rows{{0, 1}}));
  // first fit, not best fit: 7 -> r0 (room 3); 4 -> r1 (6); 4 -> r1 (2); 2 fits both, goes to r0
  CHECK((plan_rows_ffd({7, 4, 4, 2}, 10) == Rows{{0, 3}, {1, 2}}));
  // 9 -> r0 (room 1); 8 -> r1 (2); 2 -> r1 (r0 is too full); 1 -> r0
  CHECK((plan_rows_ffd({9, 8, 2, 1}, 10) == Rows{{0, 3}, {1, 2}}));
  // lengths spanning several radix bytes and far beyond the budget
  CHECK((plan_rows_ffd({int64_t{1} << 40, 300, int64_t{1} << 40, 70000}, 1000) == Rows{{0}, {2}, {3}, {1}}));
}

void test_random_matches_naive() {
  std::mt19937_64 rng(12345);
  const int64_t budgets[] = {1, 7, 64, 512, 4096, int64_t{1} << 40};  // the last: the int64 tree
  for (int trial = 0; trial < 400; ++trial) {
    const int64_t budget = budgets[trial % 6];
    const size_t n = trial < 50 ? static_cast<size_t>(trial) : static_cast<size_t>(rng() % 3000);
    std::uniform_int_distribution<int64_t> len(0, budget + budget / 2 + 1);
    std::vector<int64_t> lengths(n);
    for (int64_t& x : lengths) x = (rng() % 20 == 0) ? 0 : len(rng);
    const Rows got = plan_rows_ffd(lengths, budget);
    CHECK(valid_plan(got, lengths, budget));
    CHECK(got == naive_ffd(lengths, budget));
  }
}

void test_large_valid() {
  std::mt19937_64 rng(7);
  std::lognormal_distribution<double> len(6.0, 1.0);
  std::vector<int64_t> lengths(200000);
  for (int64_t& x : lengths) x = static_cast<int64_t>(len(rng));
  const Rows rows = plan_rows_ffd(lengths, 4096);
  CHECK(valid_plan(rows, lengths, 4096));
  int64_t used = 0;
  for (int64_t x : lengths) used += std::min<int64_t>(x, 4096);
  const int64_t lower = (used + 4095) / 4096;
  CHECK(static_cast<int64_t>(rows.size()) <= lower * 11 / 9 + 1);  // FFD's worst-case bound
  const FlatPlan flat = plan_rows_ffd_flat(lengths.data(), lengths.size(), 4096);
  CHECK(flat.num_rows() == rows.size() && flat.row_start.front() == 0 &&
        flat.row_start.back() == static_cast<int64_t>(lengths.size()));
}

bool throws_invalid(const std::vector<int64_t>& lengths, int64_t budget) {
  try {
    plan_rows_ffd(lengths, budget);
  } catch (const std::invalid_argument&) {
    return true;
  }
  return false;
}

void test_errors() {
  CHECK(throws_invalid({1, 2}, 0));
  CHECK(throws_invalid({1, 2}, -5));
  CHECK(throws_invalid({}, 0));  // the budget is checked even with nothing to plan
  CHECK(throws_invalid({1, -1, 2}, 10));
  CHECK(!throws_invalid({0, 0}, 1));
}

}  // namespace

int main() {
  test_hand_checked();
  test_random_matches_naive();
  test_large_valid();
  test_errors();
  return xgenmm::testing::finish("test_planner");
}
