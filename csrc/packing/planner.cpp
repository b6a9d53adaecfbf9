// First-fit-decreasing planner (see planner.h): radix sort + max-segment-tree first-fit.
#include "packing/planner.h"

#include <algorithm>
#include <array>
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

// Stable LSD radix sort by key, 8 bits a pass; passes whose byte is the same for every item are skipped
// (token counts usually span 2 bytes, so 2 passes). Stable + input in index order => ties by index.
void radix_sort(std::vector<Keyed>& a) {
  constexpr int kBits = 8, kBins = 1 << kBits, kPasses = 64 / kBits;
  const size_t n = a.size();
  std::vector<std::array<size_t, kBins>> hist(kPasses);
  for (auto& h : hist) h.fill(0);
  for (const Keyed& x : a) {
    for (int p = 0; p < kPasses; ++p) ++hist[p][(x.key >> (p * kBits)) & (kBins - 1)];
  }
  std::vector<Keyed> tmp(n);
  for (int p = 0; p < kPasses; ++p) {
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
// find(need) = the first row whose free space >= need, in O(log rows).
class FirstFit {
 public:
  // First row with free >= need, or -1 if none.
  int64_t find(int64_t need) const {
    if (cap_ == 0 || t_[1] < need) return -1;
    size_t i = 1;
    while (i < cap_) i = 2 * i + (t_[2 * i] >= need ? 0 : 1);
    return static_cast<int64_t>(i - cap_);
  }

  int64_t free_of(size_t row) const { return t_[cap_ + row]; }

  void set(size_t row, int64_t free) {
    size_t i = cap_ + row;
    t_[i] = free;
    for (i >>= 1; i != 0; i >>= 1) {
      const int64_t v = std::max(t_[2 * i], t_[2 * i + 1]);
      if (t_[i] == v) break;  // unchanged here => unchanged above
      t_[i] = v;
    }
  }

  // Opens a row with `free` tokens of room; returns its index.
  size_t push(int64_t free) {
    if (rows_ == cap_) grow();
    set(rows_, free);
    return rows_++;
  }

  size_t rows() const { return rows_; }

 private:
  static constexpr int64_t kAbsent = -1;  // below any need (needs are >= 0)

  void grow() {
    const size_t cap = cap_ == 0 ? 64 : 2 * cap_;
    std::vector<int64_t> t(2 * cap, kAbsent);
    std::copy(t_.begin() + cap_, t_.begin() + cap_ + rows_, t.begin() + cap);
    for (size_t i = cap - 1; i != 0; --i) t[i] = std::max(t[2 * i], t[2 * i + 1]);
    t_.swap(t);
    cap_ = cap;
  }

  size_t cap_ = 0;   // leaves (a power of two)
  size_t rows_ = 0;  // rows opened so far
  std::vector<int64_t> t_;  // t_[1] is the root; leaf of row r at t_[cap_ + r]; absent rows hold kAbsent
};

}  // namespace

FlatPlan plan_rows_ffd_flat(const int64_t* lengths, size_t n, int64_t budget) {
  if (budget <= 0) {
    throw std::invalid_argument("plan_rows_ffd: budget must be positive (tokens per row), got " +
                                std::to_string(budget));
  }
  int64_t max_len = 0;
  for (size_t i = 0; i < n; ++i) {
    if (lengths[i] < 0) {
      throw std::invalid_argument("plan_rows_ffd: lengths[" + std::to_string(i) + "] = " +
                                  std::to_string(lengths[i]) + " is negative; expected token counts >= 0");
    }
    max_len = std::max(max_len, lengths[i]);
  }
  FlatPlan plan;
  if (n == 0) return plan;

  // 1. longest first, ties by index
  std::vector<Keyed> order(n);
  for (size_t i = 0; i < n; ++i) {
    order[i] = {static_cast<uint64_t>(max_len - lengths[i]), static_cast<int64_t>(i)};
  }
  radix_sort(order);

  // 2. first fit; row_of[k] = the row of the k-th sample in that order
  FirstFit rows;
  std::vector<int64_t> row_of(n);
  for (size_t k = 0; k < n; ++k) {
    const int64_t need = std::min(max_len - static_cast<int64_t>(order[k].key), budget);
    const int64_t r = rows.find(need);
    if (r < 0) {
      row_of[k] = static_cast<int64_t>(rows.push(budget - need));
    } else {
      rows.set(static_cast<size_t>(r), rows.free_of(static_cast<size_t>(r)) - need);
      row_of[k] = r;
    }
  }

  // 3. compressed rows; within a row, placement order
  const size_t num_rows = rows.rows();
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
