// Anyres image preprocessing (SPEC §3), pure C++17, no torch.
//
// Two parts:
//   1. Grid arithmetic mirroring xgenmm_fast/data/anyres.py formula by formula (same double-precision
//      operation order, so the same roundings): best grid, resize/pad geometry, feature-map mask.
//   2. A bicubic resampler reproducing Pillow's Image.resize(size, Image.BICUBIC) on 8-bit images
//      bit-exactly (separable two-pass fixed-point convolution in Pillow's pass order), and the
//      per-image pipeline: best grid -> resize -> paste centred on black -> s x s tiles, plus the
//      base tile (original resized straight to s x s), normalised into a caller-owned buffer
//      (total_tiles, 3, s, s), CHW, parallel over images.
//
// The GPU path (anyres_cuda.h, one kernel for a batch uploaded as one flat buffer) computes the
// same values per output pixel with the code in anyres_pack_device.h, from tables that
// anyres_pack.h builds with the functions below; its CPU emulation (anyres_pack_emulate) is
// tested against anyres_preprocess bit for bit.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace xgenmm {
namespace anyres {

// Pillow's fixed-point precision for 8-bit resampling: 32 bits - 8 (pixel) - 2 (overshoot + sign).
constexpr int kPrecisionBits = 32 - 8 - 2;

struct Size2 {
  int w;  // width (PIL's size[0])
  int h;  // height (PIL's size[1])
};

// ---------------------------------------------------------------------------------------------
// Grid arithmetic (xgenmm_fast/data/anyres.py)
// ---------------------------------------------------------------------------------------------

// Grid (width, height) keeping the most image pixels, ties to the least waste, then the first.
Size2 select_best_resolution(Size2 image, const std::vector<Size2>& grids);

// Tiles (across, down) of the best grid: (gw / tile, gh / tile).
Size2 grid_shape(Size2 image, const std::vector<Size2>& grids, int tile);

struct ResizePad {
  int new_w, new_h;      // size of the aspect-preserving resize
  int paste_x, paste_y;  // top-left corner of that resize on the black (gw, gh) canvas
};
ResizePad resize_and_pad_geometry(Size2 image, Size2 target);

struct MapPadding {
  bool rows;  // true: rows [0, pad) and [h - pad, h) are padding; false: the same on columns
  int pad;
};
MapPadding feature_map_padding(Size2 image, int map_w, int map_h);

// 0/1 mask, row-major [grid.h * g][grid.w * g] over the tiles' joint feature map (SPEC §3.4).
std::vector<uint8_t> feature_map_mask(Size2 image, Size2 grid_shape, int g);

// Perceiver masks with the grouping quirk (SPEC §3.5): row-major [(1 + n)][g * g] as float 0/1;
// row 0 (base tile) all ones, then the joint map's mask flattened row-major in n chunks of g * g.
std::vector<float> anyres_feature_mask(Size2 image, const std::vector<Size2>& grids, int tile, int g);

// ---------------------------------------------------------------------------------------------
// Pixels
// ---------------------------------------------------------------------------------------------

// Input layouts, converted to RGB exactly as Pillow's convert("RGB") does for the matching mode.
enum class PixelFormat {
  kL8,     // uint8 [H, W]    "L":     R = G = B = L
  kLA8,    // uint8 [H, W, 2] "LA":    alpha dropped
  kRGB8,   // uint8 [H, W, 3] "RGB"
  kRGBA8,  // uint8 [H, W, 4] "RGBA"/"RGBX": 4th channel dropped, no compositing
  kI16,    // uint16 [H, W]   "I;16":  R = G = B = min(v, 255) (Pillow clips, it does not rescale)
};

// A contiguous image: rows of width * channels(format) elements, no padding between rows.
struct ImageView {
  const void* data;
  int width;
  int height;
  PixelFormat format;
};

// Order of the two resampling passes. Older Pillow (11.x, early 12.x) always resampled rows first:
// horizontal pass over the source rows the vertical pass needs, then vertical. Pillow 13 runs the
// vertical pass first when the height shrinks by more than twice the width change,
// (in_h - out_h) > 0 && (in_h - out_h) > 2 * (in_w - out_w), and it is not in the release notes.
// The orders round differently, so bit-exactness needs the order of the Pillow one compares with;
// xgenmm_fast.data.preprocess probes the installed Pillow once to choose.
enum class PassOrder {
  kPillow,           // Pillow 13's rule above (default)
  kHorizontalFirst,  // older Pillow
};

// Pillow's per-axis resampling coefficients for one (in_size -> out_size) bicubic resize.
struct ResampleCoeffs {
  int in_size = 0;
  int out_size = 0;
  int ksize = 0;                 // coefficients stored per output index (only `count` are used)
  std::vector<int> first;        // [out_size] first input index
  std::vector<int> count;        // [out_size] number of input indices
  std::vector<int32_t> weights;  // [out_size * ksize] fixed point, kPrecisionBits fraction bits
};
ResampleCoeffs bicubic_coeffs(int in_size, int out_size);

// Equals np.asarray(Image.convert("RGB").resize((out_w, out_h), Image.BICUBIC)) byte for byte.
// dst: [out_h, out_w, 3] uint8.
void resize_bicubic_rgb(const ImageView& src, int out_w, int out_h, uint8_t* dst,
                        PassOrder order = PassOrder::kPillow);

// ---------------------------------------------------------------------------------------------
// Batch pipeline
// ---------------------------------------------------------------------------------------------

// lut[c][v] = (float(v) / 255.f - mean[c]) / std[c] in float32: ToTensor + Normalize bit for bit.
template <typename T>
using NormalizeLut = std::array<std::array<T, 256>, 3>;
NormalizeLut<float> make_normalize_lut(const float mean[3], const float stdv[3]);

struct BatchPlan {
  std::vector<Size2> grid_shapes;         // per image (npw, nph)
  std::vector<int64_t> tiles_per_image;   // per image 1 + npw * nph
  std::vector<int64_t> first_tile;        // per image, index of its base tile in the output
  int64_t total_tiles = 0;
};
// Validates sizes and grids (positive, multiples of tile) and throws std::invalid_argument.
BatchPlan plan_batch(const std::vector<ImageView>& images, const std::vector<Size2>& grids, int tile);

// Writes every image's [base, tile_0, ..., tile_{n-1}] into out: (plan.total_tiles, 3, tile, tile),
// image i starting at plan.first_tile[i]. num_threads <= 0: std::thread::hardware_concurrency().
// The uint16_t overload writes 16-bit float bit patterns from a caller-made LUT (bf16 / fp16).
void anyres_preprocess(const std::vector<ImageView>& images, int tile, const BatchPlan& plan,
                       const NormalizeLut<float>& lut, float* out, int num_threads,
                       PassOrder order = PassOrder::kPillow);
void anyres_preprocess(const std::vector<ImageView>& images, int tile, const BatchPlan& plan,
                       const NormalizeLut<uint16_t>& lut, uint16_t* out, int num_threads,
                       PassOrder order = PassOrder::kPillow);

namespace testing {
// Use the portable kernels even where AVX2 ones exist, so tests can compare the two (process-wide).
void force_generic_kernels(bool on);
}  // namespace testing

}  // namespace anyres
}  // namespace xgenmm
