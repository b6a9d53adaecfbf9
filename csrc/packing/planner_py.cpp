// Python front of the packing planner: converts the lengths (list or tensor) to int64, plans without the
// GIL, and builds the nested list of Python ints directly (no intermediate std::vector per row, no
// garbage-collector passes while building it).
#include "packing/planner_py.h"

#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/python_variable.h>

#include "packing/planner.h"

namespace py = pybind11;

namespace xgenmm {
namespace packing {

namespace {

std::vector<int64_t> lengths_from_sequence(py::handle obj) {
  py::object seq = py::reinterpret_steal<py::object>(
      PySequence_Fast(obj.ptr(), "plan_rows_ffd: lengths must be a sequence of ints or a 1-D integer tensor"));
  if (!seq) throw py::error_already_set();
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
  PyObject** items = PySequence_Fast_ITEMS(seq.ptr());
  std::vector<int64_t> out(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = items[i];
    long long v;
    if (PyLong_Check(item)) {
      v = PyLong_AsLongLong(item);
    } else if (PyIndex_Check(item)) {  // numpy integers and other __index__ types
      py::object as_int = py::reinterpret_steal<py::object>(PyNumber_Index(item));
      if (!as_int) throw py::error_already_set();
      v = PyLong_AsLongLong(as_int.ptr());
    } else {
      throw py::type_error("plan_rows_ffd: lengths[" + std::to_string(i) + "] is a '" +
                           Py_TYPE(item)->tp_name + "'; expected an int (token count)");
    }
    if (v == -1 && PyErr_Occurred()) throw py::error_already_set();  // e.g. OverflowError past int64
    out[static_cast<size_t>(i)] = static_cast<int64_t>(v);
  }
  return out;
}

at::Tensor lengths_from_tensor(const at::Tensor& t) {
  if (t.dim() != 1) {
    throw py::type_error("plan_rows_ffd: lengths tensor has " + std::to_string(t.dim()) +
                         " dimensions; expected a 1-D tensor of token counts");
  }
  if (!at::isIntegralType(t.scalar_type(), /*includeBool=*/false)) {
    throw py::type_error(std::string("plan_rows_ffd: lengths tensor has dtype ") + c10::toString(t.scalar_type()) +
                         "; expected an integer dtype (int64 preferred)");
  }
  return t.to(at::kCPU, at::kLong).contiguous();  // no copy for a contiguous CPU int64 tensor
}

// Turns the cyclic garbage collector off for its lifetime (restoring the previous state). Building ~10^5
// row lists otherwise triggers collections that scan the whole heap and can cost more than the planning;
// the lists hold only ints, so they cannot form cycles.
class GcPause {
 public:
  GcPause() : was_enabled_(PyGC_Disable() == 1) {}
  ~GcPause() {
    if (was_enabled_) PyGC_Enable();
  }
  GcPause(const GcPause&) = delete;
  GcPause& operator=(const GcPause&) = delete;

 private:
  bool was_enabled_;
};

py::list to_python(const FlatPlan& plan) {
  const GcPause gc_pause;
  const size_t rows = plan.num_rows();
  py::list out(rows);
  for (size_t r = 0; r < rows; ++r) {
    const int64_t begin = plan.row_start[r], end = plan.row_start[r + 1];
    PyObject* row = PyList_New(static_cast<Py_ssize_t>(end - begin));
    if (row == nullptr) throw py::error_already_set();
    PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(r), row);  // `out` owns it from here on
    for (int64_t k = begin; k < end; ++k) {
      PyObject* v = PyLong_FromLongLong(plan.items[k]);
      if (v == nullptr) throw py::error_already_set();
      PyList_SET_ITEM(row, static_cast<Py_ssize_t>(k - begin), v);
    }
  }
  return out;
}

}  // namespace

py::list plan_rows_ffd_py(py::handle lengths, int64_t budget) {
  FlatPlan plan;
  if (THPVariable_Check(lengths.ptr())) {
    const at::Tensor t = lengths_from_tensor(THPVariable_Unpack(lengths.ptr()));
    const int64_t* data = t.data_ptr<int64_t>();
    const size_t n = static_cast<size_t>(t.numel());
    py::gil_scoped_release no_gil;
    plan = plan_rows_ffd_flat(data, n, budget);
  } else {
    const std::vector<int64_t> v = lengths_from_sequence(lengths);
    py::gil_scoped_release no_gil;
    plan = plan_rows_ffd_flat(v.data(), v.size(), budget);
  }
  return to_python(plan);
}

}  // namespace packing
}  // namespace xgenmm
