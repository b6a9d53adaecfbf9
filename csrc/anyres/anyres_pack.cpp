// Tables for the one-kernel anyres packing and its CPU emulation: see anyres_pack.h.
#include "anyres/anyres_pack.h"

#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>

namespace xgenmm {
namespace anyres {

static_assert(pack::kPackPrecisionBits == kPrecisionBits, "device and CPU resamplers must use Pillow's precision");
static_assert(static_cast<int>(PixelFormat::kL8) == pack::kPackL8 && static_cast<int>(PixelFormat::kLA8) == pack::kPackLA8 &&
                  static_cast<int>(PixelFormat::kRGB8) == pack::kPackRGB8 &&
                  static_cast<int>(PixelFormat::kRGBA8) == pack::kPackRGBA8 &&
                  static_cast<int>(PixelFormat::kI16) == pack::kPackI16,
              "PackFormat values must be PixelFormat's");
static_assert(sizeof(pack::PackResize) == 32 && sizeof(pack::PackImage) == 104 && sizeof(pack::PackTile) == 8,
              "the tables are copied to the device byte for byte: keep their layout fixed");

int pack_bytes_per_pixel(PixelFormat format) {
  switch (format) {
    case PixelFormat::kL8: return 1;
    case PixelFormat::kLA8: return 2;
    case PixelFormat::kRGB8: return 3;
    case PixelFormat::kRGBA8: return 4;
    case PixelFormat::kI16: return 2;
  }
  return 0;
}

namespace {

// Appends Pillow's coefficients for one axis (in -> out) once per distinct pair; returns the offset.
class CoeffTables {
 public:
  explicit CoeffTables(std::vector<int32_t>& buf) : buf_(buf) {}

  int32_t add(int in_size, int out_size, int32_t* ksize) {
    const auto key = std::make_pair(in_size, out_size);
    auto it = offsets_.find(key);
    if (it != offsets_.end()) {
      *ksize = ksizes_[key];
      return it->second;
    }
    const ResampleCoeffs c = bicubic_coeffs(in_size, out_size);
    const size_t offset = buf_.size();
    if (offset + 2 * static_cast<size_t>(out_size) + c.weights.size() >
        static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
      throw std::invalid_argument("anyres pack: the batch's coefficient tables exceed 2^31 entries; split the batch");
    }
    buf_.insert(buf_.end(), c.first.begin(), c.first.end());
    buf_.insert(buf_.end(), c.count.begin(), c.count.end());
    buf_.insert(buf_.end(), c.weights.begin(), c.weights.end());
    offsets_[key] = static_cast<int32_t>(offset);
    ksizes_[key] = c.ksize;
    *ksize = c.ksize;
    return static_cast<int32_t>(offset);
  }

 private:
  std::vector<int32_t>& buf_;
  std::map<std::pair<int, int>, int32_t> offsets_;
  std::map<std::pair<int, int>, int32_t> ksizes_;
};

// The resize (in_w, in_h) -> (out_w, out_h) as anyres.cpp's make_plan decides it: a pass per axis
// whose size changes, vertical first under Pillow 13's rule.
pack::PackResize make_resize(CoeffTables& tables, int in_w, int in_h, int out_w, int out_h, PassOrder order) {
  pack::PackResize r{};
  r.out_w = out_w;
  r.out_h = out_h;
  r.h_table = r.v_table = -1;
  const bool need_h = out_w != in_w, need_v = out_h != in_h;
  if (need_h) r.h_table = tables.add(in_w, out_w, &r.h_ksize);
  if (need_v) r.v_table = tables.add(in_h, out_h, &r.v_ksize);
  const int64_t dh = static_cast<int64_t>(in_h) - out_h, dw = static_cast<int64_t>(in_w) - out_w;
  r.vertical_first = (order == PassOrder::kPillow && need_h && need_v && dh > 0 && dh > dw * 2) ? 1 : 0;
  return r;
}

template <typename T>
void emulate(const uint8_t* src, const PackPlan& plan, const T* lut, T* out) {
  const int s = plan.tile;
  const size_t tile_elems = static_cast<size_t>(3) * s * s;
  for (size_t t = 0; t < plan.tiles.size(); ++t) {
    const pack::PackTile& tile = plan.tiles[t];
    const pack::PackImage& im = plan.images[static_cast<size_t>(tile.image)];
    T* tile_out = out + t * tile_elems;
    for (int y = 0; y < s; ++y) {
      for (int x = 0; x < s; ++x) {
        if (!pack::pack_pixel<T>(src, plan.coeffs.data(), s, im, tile.index, lut, tile_out, x, y)) {
          throw std::logic_error("anyres_pack_emulate: image " + std::to_string(tile.image) + " has format code " +
                                 std::to_string(im.format));
        }
      }
    }
  }
}

}  // namespace

PackPlan make_pack_plan(const std::vector<PackSource>& images, int64_t src_bytes, const std::vector<Size2>& grids,
                        int tile, PassOrder order) {
  // plan_batch checks the tile, the grids and the image sizes and picks the grids; it reads only
  // sizes and formats (and rejects null data), so the views point at a placeholder byte.
  static const uint8_t kPlaceholder = 0;
  std::vector<ImageView> views;
  views.reserve(images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    const PackSource& im = images[i];
    const int bpp = pack_bytes_per_pixel(im.format);
    if (bpp == 0) throw std::invalid_argument("anyres pack: image " + std::to_string(i) + ": bad format");
    if (im.width > 0 && im.height > 0) {
      const int64_t bytes = static_cast<int64_t>(im.width) * im.height * bpp;
      if (im.offset < 0 || im.offset > src_bytes || bytes > src_bytes - im.offset) {
        throw std::invalid_argument("anyres pack: image " + std::to_string(i) + " (" + std::to_string(bytes) +
                                    " bytes at offset " + std::to_string(im.offset) +
                                    ") does not lie inside the source buffer of " + std::to_string(src_bytes) +
                                    " bytes");
      }
    }
    views.push_back(ImageView{&kPlaceholder, im.width, im.height, im.format});
  }
  const BatchPlan batch = plan_batch(views, grids, tile);

  PackPlan plan;
  plan.tile = tile;
  plan.tiles_per_image = batch.tiles_per_image;
  plan.grid_shapes = batch.grid_shapes;
  if (batch.total_tiles > std::numeric_limits<int32_t>::max()) {
    throw std::invalid_argument("anyres pack: " + std::to_string(batch.total_tiles) +
                                " tiles in one batch; at most 2^31 - 1");
  }
  plan.images.reserve(images.size());
  plan.tiles.reserve(static_cast<size_t>(batch.total_tiles));
  CoeffTables tables(plan.coeffs);
  for (size_t i = 0; i < images.size(); ++i) {
    const PackSource& src = images[i];
    const Size2 shape = batch.grid_shapes[i];
    const ResizePad geo = resize_and_pad_geometry({src.width, src.height}, {shape.w * tile, shape.h * tile});
    pack::PackImage im{};
    im.src_offset = src.offset;
    im.width = src.width;
    im.height = src.height;
    im.format = static_cast<int32_t>(src.format);
    im.tiles_x = shape.w;
    im.tiles_y = shape.h;
    im.paste_x = geo.paste_x;
    im.paste_y = geo.paste_y;
    im.base = make_resize(tables, src.width, src.height, tile, tile, order);
    im.grid = make_resize(tables, src.width, src.height, geo.new_w, geo.new_h, order);
    plan.images.push_back(im);
    for (int64_t k = 0; k < batch.tiles_per_image[i]; ++k) {
      plan.tiles.push_back(pack::PackTile{static_cast<int32_t>(i), static_cast<int32_t>(k)});
    }
  }
  return plan;
}

void anyres_pack_emulate(const uint8_t* src, const PackPlan& plan, const float* lut, float* out) {
  emulate<float>(src, plan, lut, out);
}

void anyres_pack_emulate(const uint8_t* src, const PackPlan& plan, const uint16_t* lut, uint16_t* out) {
  emulate<uint16_t>(src, plan, lut, out);
}

}  // namespace anyres
}  // namespace xgenmm
