// Anyres tile packing one output pixel at a time: the arithmetic of the CUDA kernel
// (anyres_cuda.cu), written once as __host__ __device__ functions so that its CPU emulation
// (anyres_pack.cpp, bound as _C.anyres_pack_emulated) runs the very same code and can be compared
// with the C++ CPU path (anyres.cpp) in tests without a GPU.
//
// No torch, no standard containers: plain structs of fixed-width fields (the host builds them,
// anyres_pack.h, and copies them to the device byte for byte) and inline functions.
//
// Output pixel (tile t, row y, column x) of a batch, all three channels at once:
//   t -> (image i, index k in the image); k == 0 is the base tile: pixel (x, y) of the image
//   resized straight to s x s. k >= 1 is grid tile k - 1, row-major over the (tiles_x, tiles_y)
//   grid: canvas pixel (cx, cy) = ((k-1) % tiles_x * s + x, (k-1) / tiles_x * s + y); black (0)
//   outside the aspect-preserving resize pasted at (paste_x, paste_y), else that resize's pixel.
//   A resized pixel is Pillow's bicubic convolution (anyres.cpp): per pass an int32 accumulator
//   starting at 2^21 plus the uint8 inputs times the fixed-point weights, clipped to uint8 after
//   each pass; the passes that Pillow skips (same size on that axis) are skipped, and the pass
//   order is the plan's (PassOrder, decided on the host). Integer sums do not depend on the order
//   of their terms, so only the pass order and the clip between passes matter, and those are
//   Pillow's: the result is bit-exact with the CPU path. The uint8 value v of channel c becomes
//   lut[c * 256 + v] (the CPU path's normalisation LUT, float32 or 16-bit float bit patterns).
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define XGENMM_HD __host__ __device__ __forceinline__
#else
#define XGENMM_HD inline
#endif

namespace xgenmm {
namespace anyres {
namespace pack {

// Pillow's fixed-point fraction bits for 8-bit resampling (anyres.h kPrecisionBits; checked equal).
constexpr int kPackPrecisionBits = 22;

// Source formats, the values of anyres.h's PixelFormat (checked in anyres_pack.cpp).
enum PackFormat : int32_t {
  kPackL8 = 0,     // uint8 [H, W]       R = G = B = L
  kPackLA8 = 1,    // uint8 [H, W, 2]    alpha dropped
  kPackRGB8 = 2,   // uint8 [H, W, 3]
  kPackRGBA8 = 3,  // uint8 [H, W, 4]    4th channel dropped
  kPackI16 = 4,    // uint16 [H, W]      little-endian, R = G = B = min(v, 255)
};

// One resize (in_w, in_h) -> (out_w, out_h) of an image. A coefficient table at offset o of the
// coefficient buffer, for an axis with n outputs and ksize K, is int32 [first: n][count: n][weights:
// n * K]: output j reads inputs first[j] .. first[j] + count[j] - 1 with weights[j * K + 0 ..].
struct PackResize {
  int32_t out_w, out_h;
  int32_t h_table;         // offset of the horizontal table; -1: no horizontal pass (out_w == in_w)
  int32_t v_table;         // offset of the vertical table; -1: no vertical pass (out_h == in_h)
  int32_t h_ksize, v_ksize;
  int32_t vertical_first;  // 1: vertical pass first (Pillow 13's rule), 0: horizontal first
  int32_t reserved;
};

struct PackImage {
  int64_t src_offset;        // byte offset of the image in the source buffer (rows of W * channels)
  int32_t width, height;
  int32_t format;            // PackFormat
  int32_t tiles_x, tiles_y;  // grid shape (tiles across, down)
  int32_t paste_x, paste_y;  // top-left of the aspect-preserving resize on the (tiles_x s, tiles_y s) canvas
  int32_t reserved;
  PackResize base;           // (width, height) -> (s, s)
  PackResize grid;           // (width, height) -> (new_w, new_h)
};

struct PackTile {
  int32_t image;  // index into the image table
  int32_t index;  // 0: base tile, k >= 1: grid tile k - 1 (row-major)
};

// ---------------------------------------------------------------------------------------------
// Arithmetic
// ---------------------------------------------------------------------------------------------

XGENMM_HD int32_t pack_clip8(int32_t acc) {  // Pillow's clip8
  const int32_t v = acc >> kPackPrecisionBits;
  return v < 0 ? 0 : (v > 255 ? 255 : v);
}

// Planes the resampler works on: 3 for RGB / RGBA, 1 for the grey formats (R = G = B).
template <int kFormat>
struct FormatTraits {
  static constexpr int kPlanes = (kFormat == kPackRGB8 || kFormat == kPackRGBA8) ? 3 : 1;
  static constexpr int kBytes = kFormat == kPackLA8 ? 2 : kFormat == kPackRGB8 ? 3 : kFormat == kPackRGBA8 ? 4
                                : kFormat == kPackI16 ? 2 : 1;  // bytes per pixel
};

// Plane values of source pixel `i` (row-major index) into v[0 .. kPlanes).
template <int kFormat>
XGENMM_HD void load_pixel(const uint8_t* img, int64_t i, int32_t* v) {
  const uint8_t* p = img + i * FormatTraits<kFormat>::kBytes;
  if (kFormat == kPackRGB8 || kFormat == kPackRGBA8) {
    v[0] = p[0];
    v[1] = p[1];
    v[2] = p[2];
  } else if (kFormat == kPackI16) {
    const int32_t u = static_cast<int32_t>(p[0]) | (static_cast<int32_t>(p[1]) << 8);
    v[0] = u > 255 ? 255 : u;
  } else {  // L, LA: the first byte
    v[0] = p[0];
  }
}

// Pixel (x, y) of a resize of the image, planes into out[0 .. kPlanes).
template <int kFormat>
XGENMM_HD void resized_pixel(const uint8_t* img, int32_t width, const int32_t* coeffs, const PackResize& r,
                             int32_t x, int32_t y, int32_t* out) {
  constexpr int NP = FormatTraits<kFormat>::kPlanes;
  constexpr int32_t kBias = 1 << (kPackPrecisionBits - 1);
  const bool need_h = r.h_table >= 0, need_v = r.v_table >= 0;
  int32_t hfirst = x, hcount = 1;
  const int32_t* hw = nullptr;
  if (need_h) {
    const int32_t* t = coeffs + r.h_table;
    hfirst = t[x];
    hcount = t[r.out_w + x];
    hw = t + 2 * r.out_w + static_cast<int64_t>(x) * r.h_ksize;
  }
  int32_t vfirst = y, vcount = 1;
  const int32_t* vw = nullptr;
  if (need_v) {
    const int32_t* t = coeffs + r.v_table;
    vfirst = t[y];
    vcount = t[r.out_h + y];
    vw = t + 2 * r.out_h + static_cast<int64_t>(y) * r.v_ksize;
  }
  int32_t px[NP];

  if (!need_h && !need_v) {  // same size: a copy
    load_pixel<kFormat>(img, static_cast<int64_t>(y) * width + x, out);
    return;
  }
  if (!need_v) {  // horizontal pass only
    int32_t acc[NP];
    for (int c = 0; c < NP; ++c) acc[c] = kBias;
    const int64_t row = static_cast<int64_t>(y) * width + hfirst;
    for (int32_t k = 0; k < hcount; ++k) {
      load_pixel<kFormat>(img, row + k, px);
      for (int c = 0; c < NP; ++c) acc[c] += px[c] * hw[k];
    }
    for (int c = 0; c < NP; ++c) out[c] = pack_clip8(acc[c]);
    return;
  }
  if (!need_h) {  // vertical pass only
    int32_t acc[NP];
    for (int c = 0; c < NP; ++c) acc[c] = kBias;
    for (int32_t j = 0; j < vcount; ++j) {
      load_pixel<kFormat>(img, static_cast<int64_t>(vfirst + j) * width + x, px);
      for (int c = 0; c < NP; ++c) acc[c] += px[c] * vw[j];
    }
    for (int c = 0; c < NP; ++c) out[c] = pack_clip8(acc[c]);
    return;
  }
  int32_t acc[NP];
  for (int c = 0; c < NP; ++c) acc[c] = kBias;
  if (!r.vertical_first) {  // rows resampled horizontally (clipped), then combined vertically
    for (int32_t j = 0; j < vcount; ++j) {
      int32_t inner[NP];
      for (int c = 0; c < NP; ++c) inner[c] = kBias;
      const int64_t row = static_cast<int64_t>(vfirst + j) * width + hfirst;
      for (int32_t k = 0; k < hcount; ++k) {
        load_pixel<kFormat>(img, row + k, px);
        for (int c = 0; c < NP; ++c) inner[c] += px[c] * hw[k];
      }
      for (int c = 0; c < NP; ++c) acc[c] += pack_clip8(inner[c]) * vw[j];
    }
  } else {  // columns resampled vertically (clipped), then combined horizontally
    for (int32_t k = 0; k < hcount; ++k) {
      int32_t inner[NP];
      for (int c = 0; c < NP; ++c) inner[c] = kBias;
      const int64_t col = static_cast<int64_t>(vfirst) * width + hfirst + k;
      for (int32_t j = 0; j < vcount; ++j) {
        load_pixel<kFormat>(img, col + static_cast<int64_t>(j) * width, px);
        for (int c = 0; c < NP; ++c) inner[c] += px[c] * vw[j];
      }
      for (int c = 0; c < NP; ++c) acc[c] += pack_clip8(inner[c]) * hw[k];
    }
  }
  for (int c = 0; c < NP; ++c) out[c] = pack_clip8(acc[c]);
}

// Pixel (x, y) of tile `index` of the image through the LUT into tile_out (see pack_pixel).
template <int kFormat, typename T>
XGENMM_HD void pack_pixel_as(const uint8_t* src, const int32_t* coeffs, int32_t s, const PackImage& im,
                             int32_t index, const T* lut, T* tile_out, int32_t x, int32_t y) {
  constexpr int NP = FormatTraits<kFormat>::kPlanes;
  const uint8_t* img = src + im.src_offset;
  int32_t v[NP];
  for (int c = 0; c < NP; ++c) v[c] = 0;  // the black canvas
  if (index == 0) {
    resized_pixel<kFormat>(img, im.width, coeffs, im.base, x, y, v);
  } else {
    const int32_t k = index - 1;
    const int32_t cx = (k % im.tiles_x) * s + x - im.paste_x;
    const int32_t cy = (k / im.tiles_x) * s + y - im.paste_y;
    if (cx >= 0 && cx < im.grid.out_w && cy >= 0 && cy < im.grid.out_h) {
      resized_pixel<kFormat>(img, im.width, coeffs, im.grid, cx, cy, v);
    }
  }
  const int64_t plane = static_cast<int64_t>(s) * s;
  T* p = tile_out + static_cast<int64_t>(y) * s + x;
  for (int c = 0; c < 3; ++c) p[c * plane] = lut[c * 256 + v[NP == 3 ? c : 0]];
}

// Writes pixel (x, y) of tile `index` of image `im` into tile_out, the tile's (3, s, s) block:
// tile_out[(c * s + y) * s + x] = lut[c * 256 + value_c] for c = 0, 1, 2. Returns false (and writes
// nothing) for an unknown format; the host validates formats, so that does not happen.
template <typename T>
XGENMM_HD bool pack_pixel(const uint8_t* src, const int32_t* coeffs, int32_t s, const PackImage& im, int32_t index,
                          const T* lut, T* tile_out, int32_t x, int32_t y) {
  switch (im.format) {
    case kPackL8: pack_pixel_as<kPackL8, T>(src, coeffs, s, im, index, lut, tile_out, x, y); return true;
    case kPackLA8: pack_pixel_as<kPackLA8, T>(src, coeffs, s, im, index, lut, tile_out, x, y); return true;
    case kPackRGB8: pack_pixel_as<kPackRGB8, T>(src, coeffs, s, im, index, lut, tile_out, x, y); return true;
    case kPackRGBA8: pack_pixel_as<kPackRGBA8, T>(src, coeffs, s, im, index, lut, tile_out, x, y); return true;
    case kPackI16: pack_pixel_as<kPackI16, T>(src, coeffs, s, im, index, lut, tile_out, x, y); return true;
    default: return false;
  }
}

}  // namespace pack
}  // namespace anyres
}  // namespace xgenmm
