// Anyres preprocessing: see anyres.h. Formulas mirror xgenmm_fast/data/anyres.py and Pillow's
// bicubic resampler (libImaging/Resample.c, 8 bits per channel) operation for operation; build with
// -ffp-contract=off so that no multiply-add is fused (the float roundings are part of the result).
#include "anyres.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

// x86-64 with GCC or Clang: AVX2 kernels chosen at run time (the build targets baseline x86-64).
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(XGENMM_NO_SIMD_DISPATCH)
#define XGENMM_X86_DISPATCH 1
#include <immintrin.h>
#else
#define XGENMM_X86_DISPATCH 0
#endif
// GCC on Linux also clones a few plain loops for AVX2 (ifunc).
#if XGENMM_X86_DISPATCH && !defined(__clang__) && defined(__linux__)
#define XGENMM_TARGET_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define XGENMM_TARGET_CLONES
#endif

namespace xgenmm {
namespace anyres {

namespace {

int64_t floor_div(int64_t a, int64_t b) {  // Python's a // b
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

std::string size_str(Size2 s) { return "(" + std::to_string(s.w) + ", " + std::to_string(s.h) + ")"; }

}  // namespace

// =============================================================================================
// Grid arithmetic: each line mirrors xgenmm_fast/data/anyres.py (doubles where Python has floats).
// =============================================================================================

Size2 select_best_resolution(Size2 image, const std::vector<Size2>& grids) {
  const int64_t width = image.w, height = image.h;
  if (width <= 0 || height <= 0) {
    throw std::invalid_argument("image size must be positive, got (w, h) = " + size_str(image));
  }
  if (grids.empty()) throw std::invalid_argument("select_best_resolution: empty list of grids");
  bool have_best = false;
  Size2 best{0, 0};
  int64_t best_eff = 0;
  bool best_waste_is_inf = true;  // Python starts from float("inf")
  int64_t best_waste = 0;
  for (const Size2& g : grids) {
    const double scale = std::min(static_cast<double>(g.w) / static_cast<double>(width),
                                  static_cast<double>(g.h) / static_cast<double>(height));
    const int64_t down_w = static_cast<int64_t>(static_cast<double>(width) * scale);
    const int64_t down_h = static_cast<int64_t>(static_cast<double>(height) * scale);
    const int64_t eff = std::min(down_w * down_h, width * height);
    const int64_t waste = static_cast<int64_t>(g.w) * g.h - eff;
    if (eff > best_eff || (eff == best_eff && (best_waste_is_inf || waste < best_waste))) {
      best = g;
      best_eff = eff;
      best_waste = waste;
      best_waste_is_inf = false;
      have_best = true;
    }
  }
  if (!have_best) best = grids[0];
  return best;
}

Size2 grid_shape(Size2 image, const std::vector<Size2>& grids, int tile) {
  const Size2 g = select_best_resolution(image, grids);
  return {g.w / tile, g.h / tile};
}

ResizePad resize_and_pad_geometry(Size2 image, Size2 target) {
  const double width = image.w, height = image.h;
  const int64_t tw = target.w, th = target.h;
  const double scale_w = static_cast<double>(tw) / width;
  const double scale_h = static_cast<double>(th) / height;
  int64_t new_w, new_h;
  if (scale_w < scale_h) {
    new_w = tw;
    new_h = std::min(static_cast<int64_t>(std::ceil(height * scale_w)), th);
  } else {
    new_h = th;
    new_w = std::min(static_cast<int64_t>(std::ceil(width * scale_h)), tw);
  }
  return {static_cast<int>(new_w), static_cast<int>(new_h), static_cast<int>(floor_div(tw - new_w, 2)),
          static_cast<int>(floor_div(th - new_h, 2))};
}

MapPadding feature_map_padding(Size2 image, int map_w, int map_h) {
  const double orig_w = image.w, orig_h = image.h;
  if (orig_w / orig_h > static_cast<double>(map_w) / static_cast<double>(map_h)) {
    const int64_t new_h = static_cast<int64_t>(orig_h * (static_cast<double>(map_w) / orig_w));
    return {true, static_cast<int>(floor_div(map_h - new_h, 2))};
  }
  const int64_t new_w = static_cast<int64_t>(orig_w * (static_cast<double>(map_h) / orig_h));
  return {false, static_cast<int>(floor_div(map_w - new_w, 2))};
}

std::vector<uint8_t> feature_map_mask(Size2 image, Size2 grid, int g) {
  const int map_w = grid.w * g, map_h = grid.h * g;
  std::vector<uint8_t> mask(static_cast<size_t>(map_w) * map_h, 1);
  const MapPadding p = feature_map_padding(image, map_w, map_h);
  if (p.pad > 0) {  // the original zeroes [len - pad:], which is empty (not everything) for pad == 0
    if (p.rows) {
      for (int r = 0; r < map_h; ++r) {
        if (r < p.pad || r >= map_h - p.pad) std::fill_n(mask.begin() + static_cast<size_t>(r) * map_w, map_w, 0);
      }
    } else {
      for (int r = 0; r < map_h; ++r) {
        for (int c = 0; c < map_w; ++c) {
          if (c < p.pad || c >= map_w - p.pad) mask[static_cast<size_t>(r) * map_w + c] = 0;
        }
      }
    }
  }
  return mask;
}

std::vector<float> anyres_feature_mask(Size2 image, const std::vector<Size2>& grids, int tile, int g) {
  const Size2 shape = grid_shape(image, grids, tile);
  const std::vector<uint8_t> map = feature_map_mask(image, shape, g);
  // [(1 + n), g*g]: base tile's all-ones row, then the joint map in row-major chunks of g*g.
  std::vector<float> out(static_cast<size_t>(g) * g + map.size(), 1.0f);
  for (size_t i = 0; i < map.size(); ++i) out[static_cast<size_t>(g) * g + i] = map[i] ? 1.0f : 0.0f;
  return out;
}

// =============================================================================================
// Bicubic coefficients (Pillow precompute_coeffs + normalize_coeffs_8bpc)
// =============================================================================================

namespace {

constexpr double kBicubicSupport = 2.0;

inline double bicubic_filter(double x) {  // Keys cubic, a = -0.5
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

}  // namespace

ResampleCoeffs bicubic_coeffs(int in_size, int out_size) {
  if (in_size <= 0 || out_size <= 0) {
    throw std::invalid_argument("bicubic_coeffs: sizes must be positive, got in_size=" + std::to_string(in_size) +
                                ", out_size=" + std::to_string(out_size));
  }
  ResampleCoeffs c;
  c.in_size = in_size;
  c.out_size = out_size;
  // Pillow passes the source box as floats: in1 - in0 is computed in float, then widened.
  const float in0 = 0.0f, in1 = static_cast<float>(in_size);
  const double scale = static_cast<double>(in1 - in0) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = kBicubicSupport * filterscale;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; ++x) {
      const double w = bicubic_filter((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) k[x] /= ww;
    }
    int32_t* kk = &c.weights[static_cast<size_t>(xx) * c.ksize];
    for (int x = 0; x < xmax; ++x) {  // to fixed point, rounding half away from zero
      kk[x] = k[x] < 0 ? static_cast<int32_t>(-0.5 + k[x] * (1 << kPrecisionBits))
                       : static_cast<int32_t>(0.5 + k[x] * (1 << kPrecisionBits));
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

// =============================================================================================
// Resampling on planar 8-bit channels
//
// A resampling pass computes each output line as a fixed-point weighted sum of a few input lines:
// rows for the vertical pass, columns for the horizontal one. Columns are made rows by transposing
// strips of up to kStrip rows (SIMD 16x16 byte blocks), so both passes run the same vectorised row
// kernel, combine_lines, and the intermediates stay in cache. The arithmetic per output value is
// exactly Pillow's: int32 accumulator starting at 2^(P-1), sum of uint8 * int32 weight in input
// order, clip8 after each pass; the pass order is Pillow's (PassOrder).
// =============================================================================================

namespace detail {

inline uint8_t clip8(int32_t acc) {  // Pillow's clip8: (acc >> PRECISION_BITS) clamped to [0, 255]
  int32_t v = acc >> kPrecisionBits;
  v = v < 0 ? 0 : v;
  v = v > 255 ? 255 : v;
  return static_cast<uint8_t>(v);
}

template <int B>
inline void combine_block(const uint8_t* src, ptrdiff_t stride, const int32_t* k, int taps, uint8_t* out) {
  int32_t acc[B];
  for (int t = 0; t < B; ++t) acc[t] = 1 << (kPrecisionBits - 1);
  for (int j = 0; j < taps; ++j) {
    const uint8_t* p = src + j * stride;
    const int32_t kj = k[j];
    for (int t = 0; t < B; ++t) acc[t] += static_cast<int32_t>(p[t]) * kj;
  }
  for (int t = 0; t < B; ++t) out[t] = clip8(acc[t]);
}

void combine_lines_generic(const uint8_t* src, ptrdiff_t stride, const int32_t* k, int taps, int n, uint8_t* out) {
  int i = 0;
  for (; i + 32 <= n; i += 32) combine_block<32>(src + i, stride, k, taps, out + i);
  for (; i + 8 <= n; i += 8) combine_block<8>(src + i, stride, k, taps, out + i);
  for (; i < n; ++i) combine_block<1>(src + i, stride, k, taps, out + i);
}

#if XGENMM_X86_DISPATCH
// 32 outputs per step: bytes widened to int32 straight from memory, multiplied by the broadcast
// weight and summed; then >> 22 and saturating packs int32 -> int16 -> uint8, which is clip8 here
// (the shifted sums lie in [-512, 511]), and a lane fix-up restores the byte order.
__attribute__((target("avx2"))) void combine_lines_avx2(const uint8_t* src, ptrdiff_t stride, const int32_t* k,
                                                        int taps, int n, uint8_t* out) {
  const __m256i bias = _mm256_set1_epi32(1 << (kPrecisionBits - 1));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i a0 = bias, a1 = bias, a2 = bias, a3 = bias;
    const uint8_t* p = src + i;
    for (int j = 0; j < taps; ++j, p += stride) {
      const __m256i kj = _mm256_set1_epi32(k[j]);
      a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))), kj));
      a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8))), kj));
      a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 16))), kj));
      a3 = _mm256_add_epi32(a3, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 24))), kj));
    }
    a0 = _mm256_srai_epi32(a0, kPrecisionBits);
    a1 = _mm256_srai_epi32(a1, kPrecisionBits);
    a2 = _mm256_srai_epi32(a2, kPrecisionBits);
    a3 = _mm256_srai_epi32(a3, kPrecisionBits);
    const __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(a0, a1), _mm256_packs_epi32(a2, a3));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_permutevar8x32_epi32(bytes, order));
  }
  if (i < n) combine_lines_generic(src + i, stride, k, taps, n - i, out + i);
}
#endif

std::atomic<bool> g_force_generic{false};  // testing::force_generic_kernels

// out[i] = clip8(2^21 + sum_j k[j] * src[j * stride + i]) for i in [0, n). Sums of |k| stay below
// 1.2 * 2^22, so the int32 accumulators cannot overflow (Pillow relies on the same bound).
void combine_lines(const uint8_t* src, ptrdiff_t stride, const int32_t* k, int taps, int n, uint8_t* out) {
#if XGENMM_X86_DISPATCH
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx2 && !g_force_generic.load(std::memory_order_relaxed)) {
    combine_lines_avx2(src, stride, k, taps, n, out);
    return;
  }
#endif
  combine_lines_generic(src, stride, k, taps, n, out);
}

#if defined(__SSE2__)
// dst[c * ds + r] = src[r * ss + c] for a 16 x 16 block: four rounds of interleaving, each doubling
// the width of the units that already hold a transposed column piece (8 -> 16 -> 32 -> 64 bits).
inline void transpose16x16(const uint8_t* src, ptrdiff_t ss, uint8_t* dst, ptrdiff_t ds) {
  __m128i x[16], b[16], c[16], d[16];
  for (int i = 0; i < 16; ++i) x[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i * ss));
  for (int p = 0; p < 8; ++p) {  // b[2p]: columns 0-7 of rows 2p, 2p+1 as 16-bit units; b[2p+1]: 8-15
    b[2 * p] = _mm_unpacklo_epi8(x[2 * p], x[2 * p + 1]);
    b[2 * p + 1] = _mm_unpackhi_epi8(x[2 * p], x[2 * p + 1]);
  }
  for (int q = 0; q < 4; ++q) {  // c[4q + m]: columns 4m..4m+3 of rows 4q..4q+3 as 32-bit units
    c[4 * q + 0] = _mm_unpacklo_epi16(b[4 * q + 0], b[4 * q + 2]);
    c[4 * q + 1] = _mm_unpackhi_epi16(b[4 * q + 0], b[4 * q + 2]);
    c[4 * q + 2] = _mm_unpacklo_epi16(b[4 * q + 1], b[4 * q + 3]);
    c[4 * q + 3] = _mm_unpackhi_epi16(b[4 * q + 1], b[4 * q + 3]);
  }
  for (int o = 0; o < 2; ++o) {  // d[8o + t]: columns 2t, 2t+1 of rows 8o..8o+7 as 64-bit units
    for (int m = 0; m < 4; ++m) {
      d[8 * o + 2 * m] = _mm_unpacklo_epi32(c[8 * o + m], c[8 * o + 4 + m]);
      d[8 * o + 2 * m + 1] = _mm_unpackhi_epi32(c[8 * o + m], c[8 * o + 4 + m]);
    }
  }
  for (int t = 0; t < 8; ++t) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (2 * t) * ds), _mm_unpacklo_epi64(d[t], d[8 + t]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (2 * t + 1) * ds), _mm_unpackhi_epi64(d[t], d[8 + t]));
  }
}
#endif

// dst[c * ds + r] = src[r * ss + c] for a rows x cols byte matrix.
void transpose_bytes(const uint8_t* src, ptrdiff_t ss, int rows, int cols, uint8_t* dst, ptrdiff_t ds) {
  int r0 = 0;
#if defined(__SSE2__)
  constexpr int kRowsPerPass = 64;  // 64 source rows at a time: each destination cache line filled at once
  for (; r0 + 16 <= rows; r0 += kRowsPerPass) {
    const int r_end = r0 + std::min(kRowsPerPass, (rows - r0) / 16 * 16);
    int c0 = 0;
    for (; c0 + 16 <= cols; c0 += 16) {
      for (int r = r0; r < r_end; r += 16) transpose16x16(src + r * ss + c0, ss, dst + c0 * ds + r, ds);
    }
    for (int c = c0; c < cols; ++c) {
      for (int r = r0; r < r_end; ++r) dst[c * ds + r] = src[r * ss + c];
    }
    if (r_end - r0 < kRowsPerPass) {
      r0 = r_end;
      break;
    }
  }
#endif
  for (int r = r0; r < rows; ++r) {
    const uint8_t* s = src + r * ss;
    for (int c = 0; c < cols; ++c) dst[c * ds + r] = s[c];
  }
}

// planes[c][i] = src[i * stride + c] for c < 3 (stride 3: RGB, 4: RGBA / RGBX).
XGENMM_TARGET_CLONES
void deinterleave3(const uint8_t* __restrict src, size_t n, int stride, uint8_t* __restrict r, uint8_t* __restrict g,
                   uint8_t* __restrict b) {
  if (stride == 3) {
    for (size_t i = 0; i < n; ++i) {
      r[i] = src[3 * i];
      g[i] = src[3 * i + 1];
      b[i] = src[3 * i + 2];
    }
  } else {
    for (size_t i = 0; i < n; ++i) {
      r[i] = src[4 * i];
      g[i] = src[4 * i + 1];
      b[i] = src[4 * i + 2];
    }
  }
}

// Copies n values to dst bypassing the cache where possible: the output (several MB per image) is
// written once and read later by someone else, so reading its lines in first would only cost time.
template <typename T>
inline void stream_out(T* dst, const T* src, int n) {
#if defined(__SSE2__)
  constexpr int kPer = 16 / sizeof(T);
  int i = 0;
  while (i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15) != 0) {
    dst[i] = src[i];
    ++i;
  }
  for (; i + kPer <= n; i += kPer) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
  }
  for (; i < n; ++i) dst[i] = src[i];
#else
  std::memcpy(dst, src, sizeof(T) * n);
#endif
}

inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace detail

namespace {

int planes_of(PixelFormat f) { return (f == PixelFormat::kRGB8 || f == PixelFormat::kRGBA8) ? 3 : 1; }

int input_channels(PixelFormat f) {
  switch (f) {
    case PixelFormat::kL8: return 1;
    case PixelFormat::kLA8: return 2;
    case PixelFormat::kRGB8: return 3;
    case PixelFormat::kRGBA8: return 4;
    case PixelFormat::kI16: return 1;
  }
  return 0;
}

// Resampling runs in strips of kStrip rows so that the intermediate images (transposed strip,
// horizontal output) stay in the core's L2 instead of making full-image round trips to memory.
constexpr int kStrip = 128;

// Scratch buffers of one worker, reused from image to image.
struct Workspace {
  std::vector<uint8_t> planes;  // source channels, H x W each (filled as rows are needed)
  std::vector<uint8_t> tstrip;  // one plane of a strip, transposed: W lines of <= kStrip bytes
  std::vector<uint8_t> hstrip;  // its horizontal pass output, still transposed: out_w lines
  std::vector<uint8_t> vstrip;  // vertical-first: vertical pass output of a strip, NP x kStrip x W
  std::vector<uint8_t> inter;   // rows with the horizontal pass done, NP x rows x out_w
  std::vector<uint8_t> lines;   // one output row, NP x out_w

  size_t capacity() const {
    return planes.capacity() + tstrip.capacity() + hstrip.capacity() + vstrip.capacity() + inter.capacity() +
           lines.capacity();
  }
};

// Workspaces outlive a call so that their pages are faulted in once, not per batch. One that grew
// past kKeepBytes (a huge image) is dropped instead of kept.
class WorkspacePool {
 public:
  std::unique_ptr<Workspace> acquire() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.empty()) return std::make_unique<Workspace>();
    std::unique_ptr<Workspace> ws = std::move(free_.back());
    free_.pop_back();
    return ws;
  }
  void release(std::unique_ptr<Workspace> ws) {
    constexpr size_t kKeepBytes = size_t{256} << 20;
    constexpr size_t kMaxPooled = 64;
    if (ws->capacity() > kKeepBytes) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.size() < kMaxPooled) free_.push_back(std::move(ws));
  }

 private:
  std::mutex mutex_;
  std::vector<std::unique_ptr<Workspace>> free_;
};

WorkspacePool& workspace_pool() {
  static WorkspacePool* pool = new WorkspacePool();  // never destroyed: safe at interpreter exit
  return *pool;
}

// The source image as planar uint8 channels (1: grey, 3: RGB), converted the way Pillow's
// convert("RGB") would. Grey stays one plane: resampling R = G = B = L gives the same bytes.
// Rows are converted on demand, in order, so that they are still in cache when first used.
class Source {
 public:
  Source(const ImageView& view, Workspace& ws) : view_(view), np_(planes_of(view.format)) {
    const size_t n = static_cast<size_t>(view.width) * view.height;
    if (view.format == PixelFormat::kL8) {
      planes_[0] = static_cast<const uint8_t*>(view.data);
      ready_ = view.height;
    } else {
      ws.planes.resize(n * np_);
      for (int c = 0; c < np_; ++c) planes_[c] = ws.planes.data() + c * n;
    }
  }
  int nplanes() const { return np_; }
  const uint8_t* plane(int c) const { return planes_[c]; }

  // Makes rows [0, y1) of every plane available.
  void ensure_rows(int y1) {
    if (y1 <= ready_) return;
    const size_t w = view_.width;
    const size_t i0 = ready_ * w, i1 = y1 * w;
    uint8_t* d0 = const_cast<uint8_t*>(planes_[0]);
    const uint8_t* s8 = static_cast<const uint8_t*>(view_.data);
    switch (view_.format) {
      case PixelFormat::kLA8:  // alpha dropped
        for (size_t i = i0; i < i1; ++i) d0[i] = s8[2 * i];
        break;
      case PixelFormat::kRGB8:
        detail::deinterleave3(s8 + 3 * i0, i1 - i0, 3, d0 + i0, const_cast<uint8_t*>(planes_[1]) + i0,
                              const_cast<uint8_t*>(planes_[2]) + i0);
        break;
      case PixelFormat::kRGBA8:  // alpha (or padding) dropped, no compositing
        detail::deinterleave3(s8 + 4 * i0, i1 - i0, 4, d0 + i0, const_cast<uint8_t*>(planes_[1]) + i0,
                              const_cast<uint8_t*>(planes_[2]) + i0);
        break;
      case PixelFormat::kI16: {  // Pillow's I;16 -> RGB clips at 255, it does not rescale
        const uint16_t* s16 = static_cast<const uint16_t*>(view_.data);
        for (size_t i = i0; i < i1; ++i) d0[i] = static_cast<uint8_t>(s16[i] > 255 ? 255 : s16[i]);
        break;
      }
      default:
        break;
    }
    ready_ = y1;
  }

 private:
  ImageView view_;
  int np_;
  int ready_ = 0;
  const uint8_t* planes_[3] = {nullptr, nullptr, nullptr};
};

// One (in_w, in_h) -> (out_w, out_h) resize, following Pillow's ImagingResampleInner.
struct ResizePlan {
  int in_w = 0, in_h = 0, out_w = 0, out_h = 0;
  bool need_h = false, need_v = false;
  bool vertical_first = false;  // both passes needed and the pass order puts the vertical one first
  ResampleCoeffs hc, vc;
  int y_first = 0, y_last = 0;  // source rows the vertical pass reads
};

ResizePlan make_plan(int in_w, int in_h, int out_w, int out_h, PassOrder order) {
  ResizePlan p;
  p.in_w = in_w;
  p.in_h = in_h;
  p.out_w = out_w;
  p.out_h = out_h;
  p.need_h = out_w != in_w;
  p.need_v = out_h != in_h;
  p.vc = bicubic_coeffs(in_h, out_h);
  p.y_first = p.vc.first[0];
  p.y_last = p.vc.first[out_h - 1] + p.vc.count[out_h - 1];
  if (p.need_h) p.hc = bicubic_coeffs(in_w, out_w);
  const int64_t dh = static_cast<int64_t>(in_h) - out_h, dw = static_cast<int64_t>(in_w) - out_w;
  p.vertical_first = order == PassOrder::kPillow && p.need_h && p.need_v && dh > 0 && dh > dw * 2;
  return p;
}

// Horizontal pass of `rows` (<= kStrip) rows of in_w bytes (row stride sstride) in each plane, into
// rows of out_w bytes (row stride out_w) at dst[c]: transpose, combine columns as lines, transpose.
template <int NP>
void horizontal_rows(const uint8_t* const src[NP], ptrdiff_t sstride, int rows, const ResizePlan& p,
                     uint8_t* const dst[NP], Workspace& ws) {
  ws.tstrip.resize(static_cast<size_t>(p.in_w) * kStrip);
  ws.hstrip.resize(static_cast<size_t>(p.out_w) * kStrip);
  for (int c = 0; c < NP; ++c) {
    detail::transpose_bytes(src[c], sstride, rows, p.in_w, ws.tstrip.data(), rows);
    for (int xo = 0; xo < p.out_w; ++xo) {
      detail::combine_lines(ws.tstrip.data() + p.hc.first[xo] * rows, rows,
                            &p.hc.weights[static_cast<size_t>(xo) * p.hc.ksize], p.hc.count[xo], rows,
                            ws.hstrip.data() + static_cast<ptrdiff_t>(xo) * rows);
    }
    detail::transpose_bytes(ws.hstrip.data(), rows, p.out_w, rows, dst[c], p.out_w);
  }
}

// Runs the plan and hands each output row to sink(y, rows), rows[c] = out_w bytes of plane c,
// in increasing y.
template <int NP, typename Sink>
void run_resize(Source& src, const ResizePlan& p, Workspace& ws, Sink&& sink) {
  const ptrdiff_t w = p.in_w;
  const uint8_t* row[NP];
  ws.lines.resize(static_cast<size_t>(p.out_w) * NP);

  if (p.vertical_first) {  // strips of output rows: vertical pass from the source, then horizontal
    const size_t vplane = static_cast<size_t>(kStrip) * w;
    ws.vstrip.resize(vplane * NP);
    ws.inter.resize(static_cast<size_t>(kStrip) * p.out_w * NP);
    const uint8_t* vsrc[NP];
    uint8_t* hdst[NP];
    for (int c = 0; c < NP; ++c) {
      vsrc[c] = ws.vstrip.data() + c * vplane;
      hdst[c] = ws.inter.data() + static_cast<size_t>(c) * kStrip * p.out_w;
    }
    for (int o0 = 0; o0 < p.out_h; o0 += kStrip) {
      const int o1 = std::min(o0 + kStrip, p.out_h);
      src.ensure_rows(p.vc.first[o1 - 1] + p.vc.count[o1 - 1]);
      for (int c = 0; c < NP; ++c) {
        uint8_t* v = ws.vstrip.data() + c * vplane;
        for (int yo = o0; yo < o1; ++yo) {
          detail::combine_lines(src.plane(c) + p.vc.first[yo] * w, w,
                                &p.vc.weights[static_cast<size_t>(yo) * p.vc.ksize], p.vc.count[yo], p.in_w,
                                v + (yo - o0) * w);
        }
      }
      horizontal_rows<NP>(vsrc, w, o1 - o0, p, hdst, ws);
      for (int y = o0; y < o1; ++y) {
        for (int c = 0; c < NP; ++c) row[c] = hdst[c] + static_cast<ptrdiff_t>(y - o0) * p.out_w;
        sink(y, row);
      }
    }
    return;
  }

  // Rows with the horizontal pass done: the source itself, or strips resampled as they are needed.
  const uint8_t* inter[NP];
  ptrdiff_t istride;
  int irow0;  // source row of inter's first row
  int ready;  // inter holds source rows [irow0, ready)
  if (p.need_h) {
    const size_t iplane = static_cast<size_t>(p.y_last - p.y_first) * p.out_w;
    ws.inter.resize(iplane * NP);
    for (int c = 0; c < NP; ++c) inter[c] = ws.inter.data() + c * iplane;
    istride = p.out_w;
    irow0 = p.y_first;
  } else {
    for (int c = 0; c < NP; ++c) inter[c] = src.plane(c);
    istride = w;
    irow0 = 0;
  }
  ready = irow0;
  auto make_ready = [&](int y1) {  // inter rows up to source row y1 (exclusive)
    while (ready < y1) {
      const int s1 = p.need_h ? std::min(ready + kStrip, p.y_last) : y1;
      src.ensure_rows(s1);
      if (p.need_h) {
        const uint8_t* s[NP];
        uint8_t* d[NP];
        for (int c = 0; c < NP; ++c) {
          s[c] = src.plane(c) + ready * w;
          d[c] = const_cast<uint8_t*>(inter[c]) + static_cast<ptrdiff_t>(ready - irow0) * istride;
        }
        horizontal_rows<NP>(s, w, s1 - ready, p, d, ws);
      }
      ready = s1;
    }
  };
  if (p.need_v) {
    for (int yo = 0; yo < p.out_h; ++yo) {
      make_ready(p.vc.first[yo] + p.vc.count[yo]);
      const int32_t* k = &p.vc.weights[static_cast<size_t>(yo) * p.vc.ksize];
      for (int c = 0; c < NP; ++c) {
        uint8_t* line = ws.lines.data() + c * p.out_w;
        detail::combine_lines(inter[c] + (p.vc.first[yo] - irow0) * istride, istride, k, p.vc.count[yo], p.out_w,
                              line);
        row[c] = line;
      }
      sink(yo, row);
    }
  } else {  // same height: output row y is inter's row y (irow0 == 0: the vertical bounds span it all)
    for (int y = 0; y < p.out_h; ++y) {
      make_ready(y + 1);
      for (int c = 0; c < NP; ++c) row[c] = inter[c] + (y - irow0) * istride;
      sink(y, row);
    }
  }
}

// Writes canvas rows into the (rows x npw) tiles of a (n, 3, s, s) block through the LUT. Canvas
// columns [x0, x0 + w) come from the image row; the rest, and rows without data, are black.
template <typename T, int NP>
struct TileWriter {
  T* out;
  int s;
  int npw;
  int x0;
  int w;
  const NormalizeLut<T>* lut;
  T* buf;  // s values of scratch

  void write_row(int cy, const uint8_t* const* rows) const {
    const int ti = cy / s, r = cy % s;
    const size_t plane = static_cast<size_t>(s) * s;
    for (int tj = 0; tj < npw; ++tj) {
      T* tile = out + static_cast<size_t>(ti * npw + tj) * 3 * plane + static_cast<size_t>(r) * s;
      const int c0 = tj * s;
      // tile-local columns: [0, a) black, [a, b) image, [b, s) black
      const int a = rows ? std::clamp(x0 - c0, 0, s) : s;
      const int b = rows ? std::clamp(x0 + w - c0, a, s) : s;
      for (int c = 0; c < 3; ++c) {
        const std::array<T, 256>& L = (*lut)[c];
        const T black = L[0];
        for (int x = 0; x < a; ++x) buf[x] = black;
        if (b > a) {
          const uint8_t* p = rows[NP == 3 ? c : 0] + (c0 + a - x0);
          for (int x = a; x < b; ++x) buf[x] = L[p[x - a]];
        }
        for (int x = b; x < s; ++x) buf[x] = black;
        detail::stream_out(tile + c * plane, buf, s);
      }
    }
  }
};

template <typename T, int NP>
void process_image_np(const ImageView& img, int tile, Size2 shape, const NormalizeLut<T>& lut, T* out,
                      PassOrder order, Workspace& ws) {
  const Size2 size{img.width, img.height};
  const Size2 grid{shape.w * tile, shape.h * tile};
  const ResizePad geo = resize_and_pad_geometry(size, grid);
  const ResizePlan base = make_plan(size.w, size.h, tile, tile, order);
  const ResizePlan main = make_plan(size.w, size.h, geo.new_w, geo.new_h, order);
  Source src(img, ws);

  std::vector<T> row_buf(tile);
  // Base tile: the whole image squeezed to (tile, tile).
  const TileWriter<T, NP> base_writer{out, tile, 1, 0, tile, &lut, row_buf.data()};
  run_resize<NP>(src, base, ws, [&](int y, const uint8_t* const* rows) { base_writer.write_row(y, rows); });

  // Grid tiles: the aspect-preserving resize pasted at (paste_x, paste_y) on a black canvas.
  const TileWriter<T, NP> grid_writer{out + static_cast<size_t>(3) * tile * tile, tile, shape.w, geo.paste_x,
                                      geo.new_w, &lut, row_buf.data()};
  for (int cy = 0; cy < geo.paste_y; ++cy) grid_writer.write_row(cy, nullptr);
  run_resize<NP>(src, main, ws,
                 [&](int y, const uint8_t* const* rows) { grid_writer.write_row(y + geo.paste_y, rows); });
  for (int cy = geo.paste_y + geo.new_h; cy < grid.h; ++cy) grid_writer.write_row(cy, nullptr);
  detail::stream_fence();  // non-temporal stores are visible to other threads after this
}

template <typename T>
void process_image(const ImageView& img, int tile, Size2 shape, const NormalizeLut<T>& lut, T* out,
                   PassOrder order, Workspace& ws) {
  if (planes_of(img.format) == 3) {
    process_image_np<T, 3>(img, tile, shape, lut, out, order, ws);
  } else {
    process_image_np<T, 1>(img, tile, shape, lut, out, order, ws);
  }
}

template <typename T>
void run_batch(const std::vector<ImageView>& images, int tile, const BatchPlan& plan, const NormalizeLut<T>& lut,
               T* out, int num_threads, PassOrder order) {
  const size_t n = images.size();
  if (n == 0) return;
  if (plan.grid_shapes.size() != n || plan.first_tile.size() != n) {
    throw std::invalid_argument("anyres_preprocess: plan was made for " + std::to_string(plan.grid_shapes.size()) +
                                " images, got " + std::to_string(n));
  }
  // Biggest images first so that the last ones to finish are small.
  std::vector<size_t> by_size(n);
  std::iota(by_size.begin(), by_size.end(), size_t{0});
  std::stable_sort(by_size.begin(), by_size.end(), [&](size_t a, size_t b) {
    return static_cast<int64_t>(images[a].width) * images[a].height >
           static_cast<int64_t>(images[b].width) * images[b].height;
  });
  int nt = num_threads > 0 ? num_threads : static_cast<int>(std::thread::hardware_concurrency());
  nt = std::max(1, std::min<int>(nt, static_cast<int>(n)));
  const size_t tile_elems = static_cast<size_t>(3) * tile * tile;

  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&]() {
    try {
      std::unique_ptr<Workspace> ws = workspace_pool().acquire();
      for (;;) {
        const size_t k = next.fetch_add(1);
        if (k >= n) break;
        const size_t i = by_size[k];
        process_image<T>(images[i], tile, plan.grid_shapes[i], lut, out + plan.first_tile[i] * tile_elems, order,
                         *ws);
      }
      workspace_pool().release(std::move(ws));
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next.store(n);
    }
  };
  if (nt == 1) {
    worker();
  } else {
    std::vector<std::thread> threads;
    threads.reserve(nt - 1);
    for (int t = 1; t < nt; ++t) threads.emplace_back(worker);
    worker();
    for (std::thread& th : threads) th.join();
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace

void resize_bicubic_rgb(const ImageView& src_view, int out_w, int out_h, uint8_t* dst, PassOrder order) {
  if (src_view.width <= 0 || src_view.height <= 0 || out_w <= 0 || out_h <= 0) {
    throw std::invalid_argument("resize_bicubic_rgb: sizes must be positive, got " +
                                size_str({src_view.width, src_view.height}) + " -> " + size_str({out_w, out_h}));
  }
  Workspace ws;
  Source src(src_view, ws);
  const ResizePlan plan = make_plan(src_view.width, src_view.height, out_w, out_h, order);
  const size_t row_out = static_cast<size_t>(out_w) * 3;
  auto write = [&](int y, const uint8_t* r, const uint8_t* g, const uint8_t* b) {
    uint8_t* d = dst + y * row_out;
    for (int x = 0; x < out_w; ++x) {
      d[3 * x] = r[x];
      d[3 * x + 1] = g[x];
      d[3 * x + 2] = b[x];
    }
  };
  if (src.nplanes() == 3) {
    run_resize<3>(src, plan, ws, [&](int y, const uint8_t* const* rows) { write(y, rows[0], rows[1], rows[2]); });
  } else {
    run_resize<1>(src, plan, ws, [&](int y, const uint8_t* const* rows) { write(y, rows[0], rows[0], rows[0]); });
  }
}

namespace testing {
void force_generic_kernels(bool on) { detail::g_force_generic.store(on); }
}  // namespace testing

NormalizeLut<float> make_normalize_lut(const float mean[3], const float stdv[3]) {
  NormalizeLut<float> lut;
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) lut[c][v] = (static_cast<float>(v) / 255.0f - mean[c]) / stdv[c];
  }
  return lut;
}

BatchPlan plan_batch(const std::vector<ImageView>& images, const std::vector<Size2>& grids, int tile) {
  if (tile <= 0) throw std::invalid_argument("anyres: tile size must be positive, got " + std::to_string(tile));
  if (grids.empty()) throw std::invalid_argument("anyres: empty list of grids");
  for (const Size2& g : grids) {
    if (g.w <= 0 || g.h <= 0 || g.w % tile != 0 || g.h % tile != 0) {
      throw std::invalid_argument("anyres: grid " + size_str(g) + " must be positive multiples of the tile size " +
                                  std::to_string(tile));
    }
  }
  BatchPlan plan;
  plan.grid_shapes.reserve(images.size());
  plan.tiles_per_image.reserve(images.size());
  plan.first_tile.reserve(images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    const ImageView& v = images[i];
    if (v.width <= 0 || v.height <= 0 || v.data == nullptr) {
      throw std::invalid_argument("anyres: image " + std::to_string(i) + " has size (w, h) = " +
                                  size_str({v.width, v.height}) + "; expected a non-empty image");
    }
    if (input_channels(v.format) == 0) throw std::invalid_argument("anyres: image " + std::to_string(i) + ": bad format");
    const Size2 shape = grid_shape({v.width, v.height}, grids, tile);
    plan.grid_shapes.push_back(shape);
    plan.tiles_per_image.push_back(1 + static_cast<int64_t>(shape.w) * shape.h);
    plan.first_tile.push_back(plan.total_tiles);
    plan.total_tiles += plan.tiles_per_image.back();
  }
  return plan;
}

void anyres_preprocess(const std::vector<ImageView>& images, int tile, const BatchPlan& plan,
                       const NormalizeLut<float>& lut, float* out, int num_threads, PassOrder order) {
  run_batch<float>(images, tile, plan, lut, out, num_threads, order);
}

void anyres_preprocess(const std::vector<ImageView>& images, int tile, const BatchPlan& plan,
                       const NormalizeLut<uint16_t>& lut, uint16_t* out, int num_threads, PassOrder order) {
  run_batch<uint16_t>(images, tile, plan, lut, out, num_threads, order);
}

}  // namespace anyres
}  // namespace xgenmm
