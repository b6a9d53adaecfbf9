// Python module xgenmm_fast._C: torch/pybind11 front of the pure C++ cores in csrc/.
//
// Anyres preprocessing (csrc/anyres): images arrive as CPU tensors (zero-copy views of numpy arrays),
// uint8 (H, W) | (H, W, C in 1..4) or uint16 (H, W) ("I;16"); output is one (total_tiles, 3, s, s)
// tensor, float32 or (via a caller-allocated `out`) bfloat16 / float16.
//
// Packed anyres (csrc/anyres/anyres_pack.h): the batch's images as one flat uint8 buffer plus an
// int64 (n, 5) table of [byte_offset, height, width, channels, bytes_per_channel] per image. On the
// GPU (anyres_preprocess_cuda, compiled only with XGENMM_WITH_CUDA, i.e. setup.py's CUDA hook) one
// kernel makes all tiles; anyres_pack_emulated runs that kernel's per-pixel code on the CPU (tests).
#include <torch/extension.h>

#include <cstring>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "anyres/anyres.h"
#include "anyres/anyres_pack.h"
#include "packing/planner_py.h"

#if defined(XGENMM_WITH_CUDA)
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "anyres/anyres_cuda.h"
#endif

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace ax = xgenmm::anyres;

// Error messages are built from std::string pieces only (`cat` below), never through iostreams
// (c10::str, std::ostringstream). In the CUDA build on the GPU machine (the extension compiled by that
// image's /opt/gcc g++, torch 2.11+cu130, 2026-11-26) every message formatted through c10::str crashed
// the process (segfault, with c10::ValueError and with std::invalid_argument alike), while a
// std::string-built std::invalid_argument thrown inside the same call was raised cleanly; the iostream
// code inlined from one libstdc++'s headers and run against another's library is the suspect.
// Argument errors throw std::invalid_argument, which pybind11 raises as ValueError.
namespace msg {
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, at::ScalarType v) { s += c10::toString(v); }
inline void append(std::string& s, const at::Device& d) {
  if (d.is_cpu()) {
    s += "cpu";
  } else {
    s += d.is_cuda() ? "cuda" : "a non-CPU device";
    if (d.has_index()) s += ":" + std::to_string(static_cast<int>(d.index()));
  }
}
inline void append(std::string& s, at::IntArrayRef v) {
  s += "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  s += "]";
}
template <typename T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
inline void append(std::string& s, T v) {
  s += std::to_string(v);
}
template <typename... Args>
std::string cat(const Args&... args) {
  std::string s;
  (append(s, args), ...);
  return s;
}
}  // namespace msg

#define XGENMM_CHECK_ARG(cond, ...)                                   \
  do {                                                                \
    if (!(cond)) throw std::invalid_argument(msg::cat(__VA_ARGS__)); \
  } while (0)

namespace {

using IntPair = std::pair<int64_t, int64_t>;

int checked_int(int64_t v, const char* what) {
  XGENMM_CHECK_ARG(v > 0 && v <= std::numeric_limits<int>::max(), what, " must be a positive int32, got ", v);
  return static_cast<int>(v);
}

std::vector<ax::Size2> to_grids(const std::vector<IntPair>& grids) {
  XGENMM_CHECK_ARG(!grids.empty(), "grids must be a non-empty list of (width, height) pairs");
  std::vector<ax::Size2> out;
  out.reserve(grids.size());
  for (const IntPair& g : grids) out.push_back({checked_int(g.first, "grid width"), checked_int(g.second, "grid height")});
  return out;
}

ax::PassOrder to_pass_order(const std::string& order) {
  if (order == "pillow") return ax::PassOrder::kPillow;
  if (order == "horizontal_first") return ax::PassOrder::kHorizontalFirst;
  XGENMM_CHECK_ARG(false, "pass_order must be 'pillow' or 'horizontal_first', got '", order, "'");
  return ax::PassOrder::kPillow;
}

ax::Size2 to_size(const IntPair& s, const char* what) {
  return {checked_int(s.first, what), checked_int(s.second, what)};
}

// A fresh output tensor. Its pages are first touched by our writes; for a batch of several MB,
// faulting them in 4 KiB at a time costs about as much as computing the tiles, so ask for
// transparent huge pages on the 2 MiB-aligned part first (harmless where THP is off).
at::Tensor new_output(at::IntArrayRef sizes, at::ScalarType dtype) {
  at::Tensor t = at::empty(sizes, at::TensorOptions().dtype(dtype));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + t.nbytes();
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = end & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
  return t;
}

// The tensor must stay alive (and contiguous) while the view is used.
ax::ImageView to_view(const at::Tensor& t, size_t index) {
  XGENMM_CHECK_ARG(t.device().is_cpu(), "anyres_preprocess: image ", index, " is on ", t.device(),
                    "; expected a CPU tensor");
  XGENMM_CHECK_ARG(t.is_contiguous(), "anyres_preprocess: image ", index, " must be contiguous");
  ax::ImageView v{};
  const int64_t channels = t.dim() == 3 ? t.size(2) : (t.dim() == 2 ? 1 : -1);
  XGENMM_CHECK_ARG(channels >= 1, "anyres_preprocess: image ", index, " has shape ", t.sizes(),
                    "; expected (H, W) or (H, W, C)");
  if (t.scalar_type() == at::kByte) {
    switch (channels) {
      case 1: v.format = ax::PixelFormat::kL8; break;
      case 2: v.format = ax::PixelFormat::kLA8; break;
      case 3: v.format = ax::PixelFormat::kRGB8; break;
      case 4: v.format = ax::PixelFormat::kRGBA8; break;
      default:
        XGENMM_CHECK_ARG(false, "anyres_preprocess: image ", index, " has ", channels,
                          " channels; expected 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA)");
    }
  } else if (t.scalar_type() == at::kUInt16) {
    XGENMM_CHECK_ARG(channels == 1, "anyres_preprocess: uint16 image ", index, " has ", channels,
                      " channels; expected a single-channel I;16 image");
    v.format = ax::PixelFormat::kI16;
  } else {
    XGENMM_CHECK_ARG(false, "anyres_preprocess: image ", index, " has dtype ", t.scalar_type(),
                      "; expected uint8 or uint16");
  }
  v.height = checked_int(t.size(0), "image height");
  v.width = checked_int(t.size(1), "image width");
  v.data = t.data_ptr();
  return v;
}

// The normalisation LUT, CPU (3, 256) of dtype: float32 (v / 255 - mean[c]) / std[c] exactly as
// ToTensor + Normalize compute it; bfloat16 / float16 are those values rounded once, as .to(dtype).
at::Tensor normalize_lut(const std::vector<double>& mean, const std::vector<double>& stdv, at::ScalarType dtype) {
  XGENMM_CHECK_ARG(mean.size() == 3 && stdv.size() == 3, "mean and std must have 3 values (R, G, B), got ",
                    mean.size(), " and ", stdv.size());
  XGENMM_CHECK_ARG(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, "anyres: output dtype ",
                    dtype, " not supported; expected float32, bfloat16 or float16");
  float mean_f[3], std_f[3];
  for (int c = 0; c < 3; ++c) {
    mean_f[c] = static_cast<float>(mean[c]);
    std_f[c] = static_cast<float>(stdv[c]);
  }
  const ax::NormalizeLut<float> lut = ax::make_normalize_lut(mean_f, std_f);
  static_assert(sizeof(lut) == 3 * 256 * sizeof(float), "NormalizeLut must be a dense 3 x 256 array");
  at::Tensor t = at::empty({3, 256}, at::kFloat);
  std::memcpy(t.data_ptr<float>(), lut.data(), sizeof(lut));
  return dtype == at::kFloat ? t : t.to(dtype).contiguous();
}

std::tuple<at::Tensor, std::vector<int64_t>, std::vector<IntPair>> anyres_preprocess(
    const std::vector<at::Tensor>& images, const std::vector<IntPair>& grids, int64_t tile,
    const std::vector<double>& mean, const std::vector<double>& stdv, int64_t num_threads,
    std::optional<at::Tensor> out, const std::string& pass_order) {
  const ax::PassOrder order = to_pass_order(pass_order);
  XGENMM_CHECK_ARG(mean.size() == 3 && stdv.size() == 3, "mean and std must have 3 values (R, G, B), got ",
                    mean.size(), " and ", stdv.size());
  const int s = checked_int(tile, "tile");
  const std::vector<ax::Size2> g = to_grids(grids);

  std::vector<at::Tensor> keep;  // contiguous copies (usually the inputs themselves)
  keep.reserve(images.size());
  std::vector<ax::ImageView> views;
  views.reserve(images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    keep.push_back(images[i].contiguous());
    views.push_back(to_view(keep.back(), i));
  }
  const ax::BatchPlan plan = ax::plan_batch(views, g, s);

  at::Tensor result;
  if (out.has_value()) {
    result = *out;
    XGENMM_CHECK_ARG(result.device().is_cpu() && result.is_contiguous(),
                      "anyres_preprocess: out must be a contiguous CPU tensor");
    XGENMM_CHECK_ARG(result.dim() == 4 && result.size(0) == plan.total_tiles && result.size(1) == 3 &&
                          result.size(2) == s && result.size(3) == s,
                      "anyres_preprocess: out has shape ", result.sizes(), "; expected (", plan.total_tiles,
                      ", 3, ", s, ", ", s, ")");
  } else {
    result = new_output({plan.total_tiles, 3, s, s}, at::kFloat);
  }
  const at::ScalarType dtype = result.scalar_type();
  XGENMM_CHECK_ARG(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
                    "anyres_preprocess: out dtype ", dtype, " not supported; expected float32, bfloat16 or float16");

  const at::Tensor lut = normalize_lut(mean, stdv, dtype);
  const int threads = static_cast<int>(num_threads);

  if (dtype == at::kFloat) {
    ax::NormalizeLut<float> lut32;
    static_assert(sizeof(lut32) == 3 * 256 * sizeof(float), "NormalizeLut must be a dense 3 x 256 array");
    std::memcpy(lut32.data(), lut.data_ptr(), sizeof(lut32));
    float* dst = result.data_ptr<float>();
    pybind11::gil_scoped_release no_gil;
    ax::anyres_preprocess(views, s, plan, lut32, dst, threads, order);
  } else {
    ax::NormalizeLut<uint16_t> lut16;
    static_assert(sizeof(lut16) == 3 * 256 * sizeof(uint16_t), "NormalizeLut must be a dense 3 x 256 array");
    std::memcpy(lut16.data(), lut.data_ptr(), sizeof(lut16));
    uint16_t* dst = static_cast<uint16_t*>(result.data_ptr());
    pybind11::gil_scoped_release no_gil;
    ax::anyres_preprocess(views, s, plan, lut16, dst, threads, order);
  }

  std::vector<IntPair> shapes;
  shapes.reserve(plan.grid_shapes.size());
  for (const ax::Size2& sh : plan.grid_shapes) shapes.emplace_back(sh.w, sh.h);
  return {result, plan.tiles_per_image, shapes};
}

std::vector<at::Tensor> anyres_feature_masks(const std::vector<IntPair>& image_sizes, const std::vector<IntPair>& grids,
                                             int64_t tile, int64_t g) {
  const std::vector<ax::Size2> gr = to_grids(grids);
  const int s = checked_int(tile, "tile");
  const int gi = checked_int(g, "g");
  std::vector<at::Tensor> out;
  out.reserve(image_sizes.size());
  for (const IntPair& sz : image_sizes) {
    std::vector<float> m = ax::anyres_feature_mask(to_size(sz, "image size"), gr, s, gi);
    const int64_t rows = static_cast<int64_t>(m.size()) / (static_cast<int64_t>(gi) * gi);
    at::Tensor t = at::empty({rows, static_cast<int64_t>(gi) * gi}, at::kFloat);
    std::memcpy(t.data_ptr<float>(), m.data(), m.size() * sizeof(float));
    out.push_back(t);
  }
  return out;
}

IntPair best_grid(const IntPair& image_size, const std::vector<IntPair>& grids) {
  const ax::Size2 r = ax::select_best_resolution(to_size(image_size, "image size"), to_grids(grids));
  return {r.w, r.h};
}

IntPair grid_shape(const IntPair& image_size, const std::vector<IntPair>& grids, int64_t tile) {
  const ax::Size2 r = ax::grid_shape(to_size(image_size, "image size"), to_grids(grids), checked_int(tile, "tile"));
  return {r.w, r.h};
}

std::tuple<int64_t, int64_t, int64_t, int64_t> resize_and_pad_geometry(const IntPair& image_size,
                                                                       const IntPair& target) {
  const ax::ResizePad r = ax::resize_and_pad_geometry(to_size(image_size, "image size"), to_size(target, "target"));
  return {r.new_w, r.new_h, r.paste_x, r.paste_y};
}

std::pair<std::string, int64_t> feature_map_padding(const IntPair& image_size, int64_t map_w, int64_t map_h) {
  const ax::MapPadding p =
      ax::feature_map_padding(to_size(image_size, "image size"), checked_int(map_w, "map_w"), checked_int(map_h, "map_h"));
  return {p.rows ? "rows" : "cols", p.pad};
}

at::Tensor resize_bicubic(const at::Tensor& image, const IntPair& size, const std::string& pass_order) {
  const ax::PassOrder order = to_pass_order(pass_order);
  const at::Tensor img = image.contiguous();
  const ax::ImageView v = to_view(img, 0);
  const int w = checked_int(size.first, "width"), h = checked_int(size.second, "height");
  at::Tensor out = at::empty({h, w, 3}, at::kByte);
  uint8_t* dst = out.data_ptr<uint8_t>();
  {
    pybind11::gil_scoped_release no_gil;
    ax::resize_bicubic_rgb(v, w, h, dst, order);
  }
  return out;
}


// ---------------------------------------------------------------------------------------------
// Packed anyres: flat source buffer + per-image table (CUDA kernel and its CPU emulation)
// ---------------------------------------------------------------------------------------------

// descs: int64 (n, 5) rows [byte_offset, height, width, channels, bytes_per_channel].
std::vector<ax::PackSource> to_pack_sources(const at::Tensor& descs) {
  XGENMM_CHECK_ARG(descs.device().is_cpu() && descs.scalar_type() == at::kLong && descs.dim() == 2 &&
                        descs.size(1) == 5,
                    "anyres pack: descs must be a CPU int64 tensor (n_images, 5) of [byte_offset, height, width, "
                    "channels, bytes_per_channel], got ",
                    descs.scalar_type(), " ", descs.sizes(), " on ", descs.device());
  const at::Tensor d = descs.contiguous();
  const int64_t* row = d.data_ptr<int64_t>();
  std::vector<ax::PackSource> out;
  out.reserve(static_cast<size_t>(d.size(0)));
  for (int64_t i = 0; i < d.size(0); ++i, row += 5) {
    const int64_t offset = row[0], h = row[1], w = row[2], channels = row[3], itemsize = row[4];
    ax::PixelFormat format = ax::PixelFormat::kRGB8;
    if (itemsize == 1 && channels >= 1 && channels <= 4) {
      const ax::PixelFormat by_channels[4] = {ax::PixelFormat::kL8, ax::PixelFormat::kLA8, ax::PixelFormat::kRGB8,
                                              ax::PixelFormat::kRGBA8};
      format = by_channels[channels - 1];
    } else if (itemsize == 2 && channels == 1) {
      format = ax::PixelFormat::kI16;
    } else {
      XGENMM_CHECK_ARG(false, "anyres pack: image ", i, " has ", channels, " channels of ", itemsize,
                        " bytes; expected uint8 with 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA) channels, or uint16 with 1 "
                        "(I;16)");
    }
    XGENMM_CHECK_ARG(h > 0 && w > 0 && h <= std::numeric_limits<int>::max() && w <= std::numeric_limits<int>::max(),
                      "anyres pack: image ", i, " has size (h, w) = (", h, ", ", w, "); expected a non-empty image");
    out.push_back({offset, static_cast<int>(w), static_cast<int>(h), format});
  }
  return out;
}

at::ScalarType to_out_dtype(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "bfloat16") return at::kBFloat16;
  if (name == "float16") return at::kHalf;
  XGENMM_CHECK_ARG(false, "anyres pack: dtype must be 'float32', 'bfloat16' or 'float16', got '", name, "'");
  return at::kFloat;
}

std::vector<IntPair> shapes_of(const ax::PackPlan& plan) {
  std::vector<IntPair> shapes;
  shapes.reserve(plan.grid_shapes.size());
  for (const ax::Size2& sh : plan.grid_shapes) shapes.emplace_back(sh.w, sh.h);
  return shapes;
}

// The output: `out` checked (device, layout, shape, dtype agreeing with `dtype` when both are
// given), else a new tensor of `dtype` (float32 when neither is given) on `device`.
at::Tensor packed_output(const std::optional<at::Tensor>& out, const std::optional<std::string>& dtype,
                         int64_t total_tiles, int s, at::Device device, const char* fn) {
  if (out.has_value()) {
    const at::Tensor& r = *out;
    XGENMM_CHECK_ARG(r.device() == device && r.is_contiguous(), fn, ": out must be a contiguous tensor on ", device,
                      ", got one on ", r.device(), r.is_contiguous() ? "" : " (not contiguous)");
    XGENMM_CHECK_ARG(r.dim() == 4 && r.size(0) == total_tiles && r.size(1) == 3 && r.size(2) == s && r.size(3) == s,
                      fn, ": out has shape ", r.sizes(), "; expected (", total_tiles, ", 3, ", s, ", ", s, ")");
    XGENMM_CHECK_ARG(r.scalar_type() == at::kFloat || r.scalar_type() == at::kBFloat16 ||
                          r.scalar_type() == at::kHalf,
                      fn, ": out dtype ", r.scalar_type(), " not supported; expected float32, bfloat16 or float16");
    XGENMM_CHECK_ARG(!dtype.has_value() || to_out_dtype(*dtype) == r.scalar_type(), fn, ": dtype '", *dtype,
                      "' disagrees with out's dtype ", r.scalar_type());
    return r;
  }
  const at::ScalarType st = dtype.has_value() ? to_out_dtype(*dtype) : at::kFloat;
  return at::empty({total_tiles, 3, s, s}, at::TensorOptions().dtype(st).device(device));
}

using PackResult = std::tuple<at::Tensor, std::vector<int64_t>, std::vector<IntPair>>;

PackResult anyres_pack_emulated(const at::Tensor& data, const at::Tensor& descs, const std::vector<IntPair>& grids,
                                int64_t tile, const std::vector<double>& mean, const std::vector<double>& stdv,
                                std::optional<at::Tensor> out, std::optional<std::string> dtype,
                                const std::string& pass_order) {
  const ax::PassOrder order = to_pass_order(pass_order);
  XGENMM_CHECK_ARG(data.device().is_cpu() && data.scalar_type() == at::kByte && data.dim() == 1 &&
                        data.is_contiguous(),
                    "anyres_pack_emulated: data must be a contiguous 1-D uint8 CPU tensor, got ", data.scalar_type(),
                    " ", data.sizes(), " on ", data.device());
  const int s = checked_int(tile, "tile");
  const ax::PackPlan plan = ax::make_pack_plan(to_pack_sources(descs), data.numel(), to_grids(grids), s, order);
  at::Tensor result = packed_output(out, dtype, plan.total_tiles(), s, data.device(), "anyres_pack_emulated");
  const at::Tensor lut = normalize_lut(mean, stdv, result.scalar_type());
  const uint8_t* src = data.data_ptr<uint8_t>();
  {
    pybind11::gil_scoped_release no_gil;
    if (result.scalar_type() == at::kFloat) {
      ax::anyres_pack_emulate(src, plan, lut.data_ptr<float>(), result.data_ptr<float>());
    } else {
      ax::anyres_pack_emulate(src, plan, static_cast<const uint16_t*>(lut.data_ptr()),
                              static_cast<uint16_t*>(result.data_ptr()));
    }
  }
  return {result, plan.tiles_per_image, shapes_of(plan)};
}

#if defined(XGENMM_WITH_CUDA)
// One kernel for the batch on the current CUDA stream of data's device; asynchronous.
PackResult anyres_preprocess_cuda(const at::Tensor& data, const at::Tensor& descs, const std::vector<IntPair>& grids,
                                  int64_t tile, const std::vector<double>& mean, const std::vector<double>& stdv,
                                  std::optional<at::Tensor> out, std::optional<std::string> dtype,
                                  const std::string& pass_order) {
  const ax::PassOrder order = to_pass_order(pass_order);
  XGENMM_CHECK_ARG(data.is_cuda() && data.scalar_type() == at::kByte && data.dim() == 1 && data.is_contiguous(),
                    "anyres_preprocess_cuda: data must be a contiguous 1-D uint8 CUDA tensor, got ",
                    data.scalar_type(), " ", data.sizes(), " on ", data.device());
  const int s = checked_int(tile, "tile");
  const ax::PackPlan plan = ax::make_pack_plan(to_pack_sources(descs), data.numel(), to_grids(grids), s, order);
  const c10::cuda::CUDAGuard guard(data.device());
  at::Tensor result = packed_output(out, dtype, plan.total_tiles(), s, data.device(), "anyres_preprocess_cuda");
  if (plan.total_tiles() == 0) return {result, plan.tiles_per_image, shapes_of(plan)};
  const at::Tensor lut = normalize_lut(mean, stdv, result.scalar_type());

  // The tables and the LUT in one pinned host block, one upload (ordered before the kernel on the
  // stream; the caching host allocator keeps the block until the copy is done).
  auto align = [](size_t n) { return (n + 255) & ~size_t{255}; };
  const size_t images_at = 0;
  const size_t tiles_at = align(images_at + plan.images.size() * sizeof(ax::pack::PackImage));
  const size_t coeffs_at = align(tiles_at + plan.tiles.size() * sizeof(ax::pack::PackTile));
  const size_t lut_at = align(coeffs_at + plan.coeffs.size() * sizeof(int32_t));
  const size_t total = lut_at + static_cast<size_t>(lut.nbytes());
  at::Tensor host = at::empty({static_cast<int64_t>(total)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  uint8_t* h = host.data_ptr<uint8_t>();
  std::memcpy(h + images_at, plan.images.data(), plan.images.size() * sizeof(ax::pack::PackImage));
  std::memcpy(h + tiles_at, plan.tiles.data(), plan.tiles.size() * sizeof(ax::pack::PackTile));
  std::memcpy(h + coeffs_at, plan.coeffs.data(), plan.coeffs.size() * sizeof(int32_t));
  std::memcpy(h + lut_at, lut.data_ptr(), static_cast<size_t>(lut.nbytes()));
  const at::Tensor dev = host.to(data.device(), /*non_blocking=*/true);
  const uint8_t* d = dev.data_ptr<uint8_t>();

  ax::gpu::PackDeviceArgs args;
  args.src = data.data_ptr<uint8_t>();
  args.images = reinterpret_cast<const ax::pack::PackImage*>(d + images_at);
  args.tiles = reinterpret_cast<const ax::pack::PackTile*>(d + tiles_at);
  args.coeffs = reinterpret_cast<const int32_t*>(d + coeffs_at);
  args.num_tiles = plan.total_tiles();
  args.tile = s;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(data.device().index()).stream();
  cudaError_t err;
  if (result.scalar_type() == at::kFloat) {
    err = ax::gpu::launch_anyres_pack(args, reinterpret_cast<const float*>(d + lut_at), result.data_ptr<float>(),
                                      stream);
  } else {
    err = ax::gpu::launch_anyres_pack(args, reinterpret_cast<const uint16_t*>(d + lut_at),
                                      static_cast<uint16_t*>(result.data_ptr()), stream);
  }
  if (err != cudaSuccess)  // (std::runtime_error, not TORCH_CHECK: see msg::cat)
    throw std::runtime_error(msg::cat("anyres_preprocess_cuda: kernel launch failed: ", cudaGetErrorString(err)));
  return {result, plan.tiles_per_image, shapes_of(plan)};
}
#endif  // XGENMM_WITH_CUDA

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "xgenmm_fast C++ extension (anyres image preprocessing; CUDA kernels when built with CUDA)";
  m.def("anyres_preprocess", &anyres_preprocess, pybind11::arg("images"), pybind11::arg("grids"),
        pybind11::arg("tile"), pybind11::arg("mean"), pybind11::arg("std"), pybind11::arg("num_threads") = 0,
        pybind11::arg("out") = pybind11::none(), pybind11::arg("pass_order") = "pillow",
        "Anyres tiles of a batch of images.\n\n"
        "images: list of CPU tensors, uint8 (H, W) / (H, W, C) with C in 1..4 (L, LA, RGB, RGBA) or uint16 (H, W) "
        "(I;16); grids: [(width, height)] in pixels, multiples of tile; mean/std: 3 floats each; num_threads: 0 = "
        "all cores; out: optional contiguous (total_tiles, 3, tile, tile) float32/bfloat16/float16 tensor; "
        "pass_order: 'pillow' (Pillow 13: vertical pass first when the height shrinks > 2x the width change) or "
        "'horizontal_first' (older Pillow).\n"
        "Returns (pixel_values (total_tiles, 3, tile, tile), tiles_per_image [1 + n per image], grid_shapes "
        "[(tiles across, tiles down) per image]); per image the tiles are [base, tile_0, ..., tile_{n-1}].");
  m.def("anyres_feature_masks", &anyres_feature_masks, pybind11::arg("image_sizes"), pybind11::arg("grids"),
        pybind11::arg("tile"), pybind11::arg("g"),
        "Per image a float32 (1 + n, g*g) perceiver mask: base row all ones, then the (nph*g, npw*g) feature-map "
        "mask flattened row-major in n chunks of g*g (SPEC 3.5 grouping quirk).");
  m.def("best_grid", &best_grid, pybind11::arg("image_size"), pybind11::arg("grids"),
        "Best grid (width, height) for an image (W, H).");
  m.def("grid_shape", &grid_shape, pybind11::arg("image_size"), pybind11::arg("grids"), pybind11::arg("tile"),
        "Tiles (across, down) of the best grid.");
  m.def("resize_and_pad_geometry", &resize_and_pad_geometry, pybind11::arg("image_size"), pybind11::arg("target"),
        "(new_w, new_h, paste_x, paste_y).");
  m.def("feature_map_padding", &feature_map_padding, pybind11::arg("image_size"), pybind11::arg("map_w"),
        pybind11::arg("map_h"), "('rows' | 'cols', pad).");
  m.def("resize_bicubic", &resize_bicubic, pybind11::arg("image"), pybind11::arg("size"),
        pybind11::arg("pass_order") = "pillow",
        "Pillow-exact image.convert('RGB').resize((w, h), BICUBIC) -> uint8 (h, w, 3).");
  static const char* kPackedDoc =
      "data: contiguous 1-D uint8 tensor, the batch's images back to back (each a C-contiguous (H, W[, C]) array); "
      "descs: CPU int64 (n_images, 5) rows [byte_offset, height, width, channels, bytes_per_channel] (uint8: 1 to 4 "
      "channels L/LA/RGB/RGBA; uint16: 1 channel I;16, little-endian); grids, tile, mean, std, pass_order: as "
      "anyres_preprocess; out: optional contiguous (total_tiles, 3, tile, tile) float32/bfloat16/float16 tensor on "
      "data's device; dtype: 'float32' | 'bfloat16' | 'float16' for a new output (default float32, or out's).\n"
      "Returns (pixel_values, tiles_per_image, grid_shapes) as anyres_preprocess, with the same values.";
  m.def("anyres_pack_emulated", &anyres_pack_emulated, pybind11::arg("data"), pybind11::arg("descs"),
        pybind11::arg("grids"), pybind11::arg("tile"), pybind11::arg("mean"), pybind11::arg("std"),
        pybind11::arg("out") = pybind11::none(), pybind11::arg("dtype") = pybind11::none(),
        pybind11::arg("pass_order") = "pillow",
        (std::string("The CUDA anyres kernel's per-pixel code run on the CPU, one thread (for tests).\n\n") +
         kPackedDoc)
            .c_str());
#if defined(XGENMM_WITH_CUDA)
  m.def("anyres_preprocess_cuda", &anyres_preprocess_cuda, pybind11::arg("data"), pybind11::arg("descs"),
        pybind11::arg("grids"), pybind11::arg("tile"), pybind11::arg("mean"), pybind11::arg("std"),
        pybind11::arg("out") = pybind11::none(), pybind11::arg("dtype") = pybind11::none(),
        pybind11::arg("pass_order") = "pillow",
        (std::string("Anyres tiles of a batch in one CUDA kernel on the current stream (asynchronous); data on the "
                     "GPU.\n\n") +
         kPackedDoc)
            .c_str());
#endif
  m.def("plan_rows_ffd", &xgenmm::packing::plan_rows_ffd_py, pybind11::arg("lengths"), pybind11::arg("budget"),
        "First-fit-decreasing rows of sample indices, identical to xgenmm_fast.data.planner.plan_rows_reference.\n\n"
        "lengths: list[int] or 1-D integer tensor of token counts (>= 0); budget: tokens per row (> 0). "
        "Returns list[list[int]]: rows in creation order, indices in placement order; a sample longer than the "
        "budget gets a row of its own. Runs without the GIL. ValueError on budget <= 0 or a negative length.");
}
