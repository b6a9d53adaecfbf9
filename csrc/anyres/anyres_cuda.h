// CUDA anyres packing: decoded images of any sizes, uploaded once as one flat byte buffer, become
// the encoder's (total_tiles, 3, s, s) tiles (base tile first per image, then the grid tiles) in
// one kernel launch: resize, paste on black, tile, normalise, written as float32 or 16-bit floats.
// The per-pixel arithmetic is anyres_pack_device.h's (bit-exact with the C++ CPU path; its CPU
// emulation is tested without a GPU); the tables come from anyres_pack.h's make_pack_plan.
//
// No torch here: the launchers take raw device pointers and a stream, so that this file and
// anyres_cuda.cu compile with plain nvcc (scripts/nvcc_check.sh). The torch front is in
// csrc/bindings.cpp (built when setup.py's CUDA hook is on).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "anyres/anyres_pack_device.h"

namespace xgenmm {
namespace anyres {
namespace gpu {

// Device pointers to a batch's tables and pixels (layouts: anyres_pack_device.h).
struct PackDeviceArgs {
  const uint8_t* src = nullptr;            // flat source bytes
  const pack::PackImage* images = nullptr;  // [num_images]
  const pack::PackTile* tiles = nullptr;    // [num_tiles]
  const int32_t* coeffs = nullptr;          // coefficient tables
  int64_t num_tiles = 0;
  int32_t tile = 0;                         // s
};

// Enqueues the kernel on `stream`: out (device, (num_tiles, 3, s, s)) from lut (device, [3 * 256],
// c * 256 + v: float32 values, or bfloat16 / float16 bit patterns). Returns the launch's error
// (cudaSuccess, or cudaErrorInvalidValue for a tile size the grid cannot cover); an empty batch
// launches nothing.
cudaError_t launch_anyres_pack(const PackDeviceArgs& args, const float* lut, float* out, cudaStream_t stream);
cudaError_t launch_anyres_pack(const PackDeviceArgs& args, const uint16_t* lut, uint16_t* out, cudaStream_t stream);

}  // namespace gpu
}  // namespace anyres
}  // namespace xgenmm
