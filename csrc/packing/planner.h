// Bin-packing planner for sequence packing, pure C++17, no torch.
//
// First-fit-decreasing, exactly as xgenmm_fast/data/planner.py::plan_rows_reference (the reference it is
// tested against, row for row and index for index):
//   1. order the samples by length, longest first, ties by index (the UNclipped length decides the order);
//   2. in that order, place min(length, budget) tokens into the first row, in creation order, whose free
//      space is >= that; else open a new row. A sample longer than the budget thus gets a row of its own
//      (pack_samples truncates it there).
// Rows come out in creation order, each row's indices in placement order.
//
// Cost O(n log n): a radix sort for step 1 and a max-segment-tree over the rows' free space for the
// first-fit query of step 2 (the reference scans all rows: O(n * rows)).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace xgenmm {
namespace packing {

// A plan in compressed-row form: row r holds items[row_start[r] : row_start[r + 1]] (sample indices).
// row_start has num_rows + 1 entries, row_start[0] == 0, row_start.back() == number of samples.
struct FlatPlan {
  std::vector<int64_t> row_start;
  std::vector<int64_t> items;
  size_t num_rows() const { return row_start.empty() ? 0 : row_start.size() - 1; }
};

// FFD plan of lengths[0 : n] into rows of `budget` tokens.
// Throws std::invalid_argument if budget <= 0 or a length is negative (the message names the index).
FlatPlan plan_rows_ffd_flat(const int64_t* lengths, size_t n, int64_t budget);

// The same plan as a list of rows; empty input -> empty plan.
std::vector<std::vector<int64_t>> plan_rows_ffd(const std::vector<int64_t>& lengths, int64_t budget);

}  // namespace packing
}  // namespace xgenmm
