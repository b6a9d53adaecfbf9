// Host side of the one-kernel anyres packing (the CUDA path, anyres_cuda.h): the tables its
// per-pixel code (anyres_pack_device.h) reads, and a CPU emulation that runs that code over every
// output pixel. Pure C++17, no torch, no CUDA.
//
// The batch's images live in one flat byte buffer (uploaded to the GPU once): image i is a
// contiguous [H, W, C] array at byte offset PackSource::offset. make_pack_plan computes what the
// CPU path (anyres.cpp) computes per image, best grid, resize/pad geometry and Pillow's bicubic
// coefficients (the same bicubic_coeffs; identical (in, out) axes share one table), and lays it out
// as PackImage / PackTile / int32 tables.
#pragma once

#include <cstdint>
#include <vector>

#include "anyres/anyres.h"
#include "anyres/anyres_pack_device.h"

namespace xgenmm {
namespace anyres {

struct PackSource {
  int64_t offset;  // byte offset in the source buffer
  int width;
  int height;
  PixelFormat format;
};

struct PackPlan {
  int tile = 0;
  std::vector<pack::PackImage> images;  // per image
  std::vector<pack::PackTile> tiles;    // per output tile (total_tiles)
  std::vector<int32_t> coeffs;          // coefficient tables (layout: anyres_pack_device.h)
  std::vector<int64_t> tiles_per_image;
  std::vector<Size2> grid_shapes;       // per image (tiles across, down)
  int64_t total_tiles() const { return static_cast<int64_t>(tiles.size()); }
};

// Bytes of one pixel in the source buffer for a format (1, 2, 3, 4 or 2 for I;16).
int pack_bytes_per_pixel(PixelFormat format);

// Validates grids and sizes as plan_batch does, and that every image lies inside a buffer of
// src_bytes bytes; throws std::invalid_argument naming the image.
PackPlan make_pack_plan(const std::vector<PackSource>& images, int64_t src_bytes, const std::vector<Size2>& grids,
                        int tile, PassOrder order);

// CPU emulation of the CUDA kernel: pack::pack_pixel for every (tile, y, x) of the plan, one thread.
// src: the flat source buffer; lut: [3 * 256] (c * 256 + v); out: (total_tiles, 3, tile, tile).
// Equals anyres_preprocess on the same images bit for bit (what the tests check).
void anyres_pack_emulate(const uint8_t* src, const PackPlan& plan, const float* lut, float* out);
void anyres_pack_emulate(const uint8_t* src, const PackPlan& plan, const uint16_t* lut, uint16_t* out);

}  // namespace anyres
}  // namespace xgenmm
