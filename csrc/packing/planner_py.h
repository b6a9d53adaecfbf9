// Python front of the packing planner (csrc/packing/planner.h) for xgenmm_fast._C; compiled by setup.py
// only (it needs Python and torch headers), not part of the pure C++ library that CMake builds.
#pragma once

#include <cstdint>

#include <pybind11/pybind11.h>

namespace xgenmm {
namespace packing {

// plan_rows_ffd(lengths, budget) -> list[list[int]].
// lengths: a sequence of ints (list, tuple, ...) or a 1-D integer tensor (any device; read as int64).
// Planning runs with the GIL released. Errors: ValueError for budget <= 0 or a negative length,
// TypeError for a length that is not an int or a tensor that is not 1-D integer.
pybind11::list plan_rows_ffd_py(pybind11::handle lengths, int64_t budget);

}  // namespace packing
}  // namespace xgenmm
