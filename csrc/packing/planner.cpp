// First-fit-decreasing planner (see planner.h): radix sort + max-segment-tree first-fit.
#include "packing/planner.h"

#include <algorithm>
#include <array>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

namespace xgenmm {
namespace packing {

namespace {

struct Keyed {
  uint64_t key;  // max_length - length: ascending key == longest first
  int64_t index;
};

// Stable LSD radix sort by key, 8 bits a pass, over the bytes that max_key spans (token counts usually
// span 2 bytes: 2 passes); a pass whose byte is the same for every item is skipped.
// Stable + input in index order => ties stay in index order.
void radix_sort(std::vector<Keyed>& a, uint64_t max_key) {
  constexpr int kBits = 8, kBins = 1 << kBits;
  int passes = 0;
  while (passes < 64 / kBits && (max_key >> (passes * kBits)) != 0) ++passes;
  const size_t n = a.size();
  std::vector<std::array<size_t, kBins>> hist(passes);
  for (auto& h : hist) h.fill(0);
  for (const Keyed& x : a) {
    for (int p = 0; p < passes; ++p) ++hist[p][(x.key >> (p * kBits)) & (kBins - 1)];
  }
  std::vector<Keyed> tmp(n);
  for (int p = 0; p < passes; ++p) {
    std::array<size_t, kBins>& h = hist[p];
    if (std::any_of(h.begin(), h.end(), [n](size_t c) { return c == n; })) continue;  // one bucket: no-op
    size_t sum = 0;
    for (size_t& c : h) {  // counts -> first output slot of each bucket
      const size_t c0 = c;
      c = sum;
      sum += c0;
    }
    for (const Keyed& x : a) tmp[h[(x.key >> (p * kBits)) & (kBins - 1)]++] = x;
    a.swap(tmp);
  }
}

// Max-segment-tree over the rows' free space, in row creation order; grows by doubling.
// place(need) puts `need` tokens into the first row whose free space is >= need, opening a row when none
// has room, in O(log rows): one descent from the root, then the same path back up to refresh the maxima.
// Free space is at most the budget, so Value = int32_t halves the tree's memory when the budget fits.
template <typename Value>
class FirstFit {
 public:
  explicit FirstFit(int64_t budget) : budget_(static_cast<Value>(budget)) {}

  // Row that received `need` (0 <= need <= budget).
  size_t place(Value need) {
    if (cap_ == 0 || t_[1] < need) {  // no row has room: open one
      if (rows_ == cap_) grow();
      update(cap_ + rows_, static_cast<Value>(budget_ - need));
      return rows_++;
    }
    size_t i = 1;
    while (i < cap_) i = 2 * i + (t_[2 * i] >= need ? 0 : 1);
    update(i, static_cast<Value>(t_[i] - need));
    return i - cap_;
  }

  size_t rows() const { return rows_; }

 private:
  static constexpr Value kAbsent = -1;  // leaves of rows not opened yet: below any need (needs are >= 0)

  void update(size_t leaf, Value free) {
    t_[leaf] = free;
    for (size_t i = leaf >> 1; i != 0; i >>= 1) {
      const Value v = std::max(t_[2 * i], t_[2 * i + 1]);
      if (t_[i] == v) break;  // unchanged here => unchanged above
      t_[i] = v;
    }
  }

  void grow() {
    const size_t cap = cap_ == 0 ? 64 : 2 * cap_;
    std::vector<Value> t(2 * cap, kAbsent);
    std::copy(t_.begin() + cap_, t_.begin() + cap_ + rows_, t.begin() + cap);
    for (size_t i = cap - 1; i != 0; --i) t[i] = std::max(t[2 * i], t[2 * i + 1]);
    t_.swap(t);
    cap_ = cap;
  }

  Value budget_;
  size_t cap_ = 0;   // leaves (a power of two)
  size_t rows_ = 0;  // rows opened so far
  std::vector<Value> t_;  // t_[1] is the root; leaf of row r at t_[cap_ + r]; absent rows hold kAbsent
};

// Step 2 of the plan: row_of[k] = the row of the k-th sample in FFD order.
template <typename Value>
size_t first_fit(const std::vector<Keyed>& order, int64_t max_len, int64_t budget, std::vector<int64_t>& row_of) {
  FirstFit<Value> rows(budget);
  for (size_t k = 0; k < order.size(); ++k) {
    const int64_t need = std::min(max_len - static_cast<int64_t>(order[k].key), budget);
    row_of[k] = static_cast<int64_t>(rows.place(static_cast<Value>(need)));
  }
  return rows.rows();
}

}  // namespace

FlatPlan plan_rows_ffd_flat(const int64_t* lengths, size_t n, int64_t budget) {
  if (budget <= 0) {
    throw std::invalid_argument("plan_rows_ffd: budget must be positive (tokens per row), got " +
                                std::to_string(budget));
  }
  int64_t max_len = 0, min_len = n == 0 ? 0 : lengths[0];
  for (size_t i = 0; i < n; ++i) {
    if (lengths[i] < 0) {
      throw std::invalid_argument("plan_rows_ffd: lengths[" + std::to_string(i) + "] = " +
                                  std::to_string(lengths[i]) + " is negative; expected token counts >= 0");
    }
    max_len = std::max(max_len, lengths[i]);
    min_len = std::min(min_len, lengths[i]);
  }
  FlatPlan plan;
  if (n == 0) return plan;

  // 1. longest first, ties by index
  std::vector<Keyed> order(n);
  for (size_t i = 0; i < n; ++i) {
    order[i] = {static_cast<uint64_t>(max_len - lengths[i]), static_cast<int64_t>(i)};
  }
  radix_sort(order, static_cast<uint64_t>(max_len - min_len));

  // 2. first fit
  std::vector<int64_t> row_of(n);
  const size_t num_rows = budget <= std::numeric_limits<int32_t>::max()
                              ? first_fit<int32_t>(order, max_len, budget, row_of)
                              : first_fit<int64_t>(order, max_len, budget, row_of);

  // 3. compressed rows; within a row, placement order
  plan.row_start.assign(num_rows + 1, 0);
  for (size_t k = 0; k < n; ++k) ++plan.row_start[row_of[k] + 1];
  for (size_t r = 0; r < num_rows; ++r) plan.row_start[r + 1] += plan.row_start[r];
  std::vector<int64_t> cursor(plan.row_start.begin(), plan.row_start.end() - 1);
  plan.items.resize(n);
  for (size_t k = 0; k < n; ++k) plan.items[cursor[row_of[k]]++] = order[k].index;
  return plan;
}

std::vector<std::vector<int64_t>> plan_rows_ffd(const std::vector<int64_t>& lengths, int64_t budget) {
  const FlatPlan flat = plan_rows_ffd_flat(lengths.data(), lengths.size(), budget);
  std::vector<std::vector<int64_t>> rows(flat.num_rows());
  for (size_t r = 0; r < rows.size(); ++r) {
    rows[r].assign(flat.items.begin() + flat.row_start[r], flat.items.begin() + flat.row_start[r + 1]);
  }
  return rows;
}

}  // namespace packing
}  // namespace xgenmm
