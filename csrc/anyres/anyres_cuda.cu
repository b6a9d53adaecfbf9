// CUDA anyres packing kernel: see anyres_cuda.h. One launch for the whole batch; block (t, b)
// writes rows [b * kRowsPerBlock, ...) of output tile t, one thread per output pixel (all three
// channels), consecutive threads on consecutive columns so that the stores of a warp are
// contiguous. The block's image record and the normalisation LUT are staged in shared memory; the
// source bytes and the coefficient tables are read through the read-only cache (neighbouring
// pixels read overlapping source windows and the same coefficients).
#include "anyres/anyres_cuda.h"

namespace xgenmm {
namespace anyres {
namespace gpu {

namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = 8;  // 8 rows of a 384-wide tile: 12 pixels per thread, one LUT load
constexpr int kLutSize = 3 * 256;
constexpr unsigned kMaxGridY = 65535;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    anyres_pack_kernel(PackDeviceArgs args, const T* __restrict__ lut, T* __restrict__ out) {
  __shared__ T s_lut[kLutSize];
  __shared__ pack::PackImage s_image;
  __shared__ int32_t s_index;
  const int64_t t = blockIdx.x;
  for (int i = threadIdx.x; i < kLutSize; i += blockDim.x) s_lut[i] = lut[i];
  if (threadIdx.x == 0) {
    const pack::PackTile tile = args.tiles[t];
    s_image = args.images[tile.image];
    s_index = tile.index;
  }
  __syncthreads();

  const int32_t s = args.tile;
  const int32_t y0 = static_cast<int32_t>(blockIdx.y) * kRowsPerBlock;
  const int32_t rows = min(kRowsPerBlock, s - y0);
  T* tile_out = out + t * 3 * static_cast<int64_t>(s) * s;
  for (int32_t e = threadIdx.x; e < rows * s; e += blockDim.x) {
    const int32_t y = y0 + e / s, x = e % s;
    pack::pack_pixel<T>(args.src, args.coeffs, s, s_image, s_index, s_lut, tile_out, x, y);
  }
}

template <typename T>
cudaError_t launch(const PackDeviceArgs& args, const T* lut, T* out, cudaStream_t stream) {
  if (args.num_tiles == 0) return cudaSuccess;
  if (args.tile <= 0 || args.num_tiles < 0 || args.num_tiles > 0x7fffffff) return cudaErrorInvalidValue;
  const unsigned row_blocks = static_cast<unsigned>((args.tile + kRowsPerBlock - 1) / kRowsPerBlock);
  if (row_blocks > kMaxGridY) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(args.num_tiles), row_blocks);
  anyres_pack_kernel<T><<<grid, kThreads, 0, stream>>>(args, lut, out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_anyres_pack(const PackDeviceArgs& args, const float* lut, float* out, cudaStream_t stream) {
  return launch<float>(args, lut, out, stream);
}

cudaError_t launch_anyres_pack(const PackDeviceArgs& args, const uint16_t* lut, uint16_t* out, cudaStream_t stream) {
  return launch<uint16_t>(args, lut, out, stream);
}

}  // namespace gpu
}  // namespace anyres
}  // namespace xgenmm
