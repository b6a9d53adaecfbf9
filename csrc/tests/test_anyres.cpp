// Standalone checks of csrc/anyres (no torch, no Python): known values for the grid arithmetic,
// the mask, and Pillow-produced resize outputs; invariants of the tile pipeline. Run by ctest.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "anyres/anyres.h"
#include "tests/check.h"

using namespace xgenmm::anyres;

namespace {

const std::vector<Size2> kGrids = {{384, 768}, {768, 384}, {768, 768}, {1152, 384}, {384, 1152}};

bool same(Size2 a, Size2 b) { return a.w == b.w && a.h == b.h; }

void test_best_grid() {
  CHECK(same(select_best_resolution({1000, 700}, kGrids), {768, 768}));
  CHECK(same(select_best_resolution({2000, 500}, kGrids), {1152, 384}));
  CHECK(same(select_best_resolution({500, 2000}, kGrids), {384, 1152}));
  CHECK(same(select_best_resolution({384, 384}, kGrids), {384, 768}));  // tie on pixels and waste: first
  const std::vector<Size2> reversed(kGrids.rbegin(), kGrids.rend());
  CHECK(same(select_best_resolution({384, 384}, reversed), {768, 384}));
  CHECK(same(select_best_resolution({1, 2000}, kGrids), {384, 768}));  // every grid keeps 0 pixels
  CHECK(same(grid_shape({1000, 700}, kGrids, 384), {2, 2}));
}

void test_geometry() {
  const ResizePad a = resize_and_pad_geometry({1000, 700}, {768, 768});
  CHECK(a.new_w == 768 && a.new_h == 538 && a.paste_x == 0 && a.paste_y == 115);
  const ResizePad b = resize_and_pad_geometry({1, 2000}, {384, 768});
  CHECK(b.new_w == 1 && b.new_h == 768 && b.paste_x == 191 && b.paste_y == 0);
  const ResizePad c = resize_and_pad_geometry({100, 50}, {768, 384});
  CHECK(c.new_w == 768 && c.new_h == 384 && c.paste_x == 0 && c.paste_y == 0);
}

void test_masks() {
  const MapPadding rows = feature_map_padding({1000, 700}, 54, 54);
  CHECK(rows.rows && rows.pad == 8);
  const MapPadding cols = feature_map_padding({700, 1000}, 54, 54);
  CHECK(!cols.rows && cols.pad == 8);
  const std::vector<uint8_t> m = feature_map_mask({1000, 700}, {2, 2}, 27);
  CHECK(m.size() == 54u * 54u);
  bool ok = true;
  for (int r = 0; r < 54; ++r) {
    for (int c = 0; c < 54; ++c) ok &= m[r * 54 + c] == ((r < 8 || r >= 46) ? 0 : 1);
  }
  CHECK(ok);
  // pad == 0 keeps everything (the original zeroes [h - pad:], empty for pad == 0)
  const std::vector<uint8_t> full = feature_map_mask({770, 768}, {2, 2}, 27);
  bool all_ones = true;
  for (uint8_t v : full) all_ones &= v == 1;
  CHECK(all_ones);
  // a 2000x1 image: every map row is padding
  const std::vector<uint8_t> none = feature_map_mask({2000, 1}, {1, 2}, 27);
  bool all_zero = true;
  for (uint8_t v : none) all_zero &= v == 0;
  CHECK(all_zero);
  // perceiver masks: (1 + 4) rows of 729, base row all ones, chunk 0 starts with 8 zero map rows
  const std::vector<float> pm = anyres_feature_mask({1000, 700}, kGrids, 384, 27);
  CHECK(pm.size() == 5u * 729u);
  CHECK(pm[0] == 1.0f && pm[728] == 1.0f);
  CHECK(pm[729] == 0.0f && pm[729 + 431] == 0.0f && pm[729 + 432] == 1.0f);
}

void test_coefficients() {
  for (auto [in, out] : std::vector<std::pair<int, int>>{{1000, 384}, {383, 384}, {7, 300}, {2000, 1}}) {
    const ResampleCoeffs c = bicubic_coeffs(in, out);
    CHECK(c.out_size == out && static_cast<int>(c.first.size()) == out);
    bool ok = true;
    for (int i = 0; i < out; ++i) {
      int64_t sum = 0;
      for (int j = 0; j < c.count[i]; ++j) sum += c.weights[static_cast<size_t>(i) * c.ksize + j];
      ok &= std::llabs(sum - (int64_t{1} << kPrecisionBits)) <= c.count[i];  // normalised, then rounded
      ok &= c.first[i] >= 0 && c.first[i] + c.count[i] <= in;
    }
    CHECK(ok);
  }
}

// An 8x6 grey image and Pillow 13.0's Image.resize(size, BICUBIC) of it.
std::vector<uint8_t> pattern() {
  std::vector<uint8_t> a(48);
  for (int i = 0; i < 48; ++i) a[i] = static_cast<uint8_t>((i * 37 + 11) % 256);
  return a;
}

bool resize_equals(int w, int h, PassOrder order, const std::vector<int>& expected_grey) {
  const std::vector<uint8_t> src = pattern();
  std::vector<uint8_t> dst(static_cast<size_t>(w) * h * 3);
  resize_bicubic_rgb({src.data(), 8, 6, PixelFormat::kL8}, w, h, dst.data(), order);
  for (size_t i = 0; i < expected_grey.size(); ++i) {
    for (int c = 0; c < 3; ++c) {
      if (dst[3 * i + c] != expected_grey[i]) return false;
    }
  }
  return true;
}

void test_resize_known_values() {
  CHECK(resize_equals(3, 5, PassOrder::kPillow,
                      {48, 153, 146, 97, 186, 80, 154, 158, 73, 196, 98, 121, 178, 80, 176}));
  CHECK(resize_equals(5, 2, PassOrder::kPillow, {68, 132, 181, 140, 69, 183, 173, 95, 93, 153}));
  // 8x6 -> 7x2 shrinks the height by more than twice the width change: Pillow 13 goes vertical first
  CHECK(resize_equals(7, 2, PassOrder::kPillow, {59, 102, 152, 182, 162, 104, 61, 171, 199, 150, 94, 81, 116, 165}));
  CHECK(resize_equals(7, 2, PassOrder::kHorizontalFirst,
                      {59, 102, 152, 182, 162, 104, 61, 171, 199, 150, 95, 82, 116, 165}));
  CHECK(resize_equals(11, 9, PassOrder::kPillow,
                      {6,   27,  57,  84,  111, 138, 164, 191, 251, 152, 0,   25,  46,  76,  103, 130, 157,
                       189, 228, 166, 81,  25,  56,  77,  107, 134, 160, 191, 216, 216, 62,  16,  63,  82,
                       103, 133, 160, 186, 237, 214, 50,  36,  64,  89,  109, 130, 159, 187, 237, 195, 103,
                       26,  55,  96,  116, 136, 156, 189, 216, 232, 114, 10,  64,  92,  122, 143, 162, 182,
                       226, 249, 88,  37,  60,  91,  118, 148, 169, 193, 223, 210, 128, 47,  53,  96,  122,
                       149, 179, 200, 212, 252, 185, 11,  51,  89,  114, 141, 168, 198, 219}));
}

void test_identity_resize_is_copy() {
  std::mt19937 rng(7);
  std::vector<uint8_t> src(13 * 9 * 3);
  for (uint8_t& v : src) v = static_cast<uint8_t>(rng());
  std::vector<uint8_t> dst(src.size());
  resize_bicubic_rgb({src.data(), 13, 9, PixelFormat::kRGB8}, 13, 9, dst.data());
  CHECK(dst == src);
  // RGBA drops alpha; I;16 clips at 255
  std::vector<uint8_t> rgba = {1, 2, 3, 200, 4, 5, 6, 0};
  std::vector<uint8_t> out(6);
  resize_bicubic_rgb({rgba.data(), 2, 1, PixelFormat::kRGBA8}, 2, 1, out.data());
  CHECK((out == std::vector<uint8_t>{1, 2, 3, 4, 5, 6}));
  std::vector<uint16_t> i16 = {7, 255, 256, 60000};
  std::vector<uint8_t> out16(12);
  resize_bicubic_rgb({i16.data(), 4, 1, PixelFormat::kI16}, 4, 1, out16.data());
  CHECK((out16 == std::vector<uint8_t>{7, 7, 7, 255, 255, 255, 255, 255, 255, 255, 255, 255}));
}

// A constant image: tiles hold lut[v] where the image lands, lut[0] (black) in the padding.
void test_pipeline_constant_image() {
  const int tile = 4;
  const std::vector<Size2> grids = {{4, 8}, {8, 4}, {8, 8}};
  std::vector<uint8_t> img(10 * 5 * 3, 200);  // W = 10, H = 5
  const std::vector<ImageView> views = {{img.data(), 10, 5, PixelFormat::kRGB8}};
  const BatchPlan plan = plan_batch(views, grids, tile);
  CHECK(plan.total_tiles == 3 && same(plan.grid_shapes[0], {2, 1}));  // 8x4 grid
  const ResizePad geo = resize_and_pad_geometry({10, 5}, {8, 4});
  CHECK(geo.new_w == 8 && geo.new_h == 4);
  const float mean[3] = {0.5f, 0.5f, 0.5f}, stdv[3] = {0.5f, 0.5f, 0.5f};
  const NormalizeLut<float> lut = make_normalize_lut(mean, stdv);
  std::vector<float> out(plan.total_tiles * 3 * tile * tile, -100.0f);
  anyres_preprocess(views, tile, plan, lut, out.data(), 1);
  bool ok = true;
  for (float v : out) ok &= v == lut[0][200];
  CHECK(ok);
  CHECK(lut[0][0] == -1.0f && lut[0][255] == 1.0f);
  CHECK(lut[1][200] == (200.0f / 255.0f - 0.5f) / 0.5f);

  // 10x2 -> grid 8x4 with new size 8x2 pasted at y = 1: rows 0 and 3 of the grid tiles are black
  std::vector<uint8_t> wide(10 * 2 * 3, 200);
  const std::vector<ImageView> wv = {{wide.data(), 10, 2, PixelFormat::kRGB8}};
  const BatchPlan wp = plan_batch(wv, grids, tile);
  std::vector<float> wout(wp.total_tiles * 3 * tile * tile, -100.0f);
  anyres_preprocess(wv, tile, wp, lut, wout.data(), 1);
  ok = true;
  for (int t = 1; t < wp.total_tiles; ++t) {
    for (int c = 0; c < 3; ++c) {
      for (int y = 0; y < tile; ++y) {
        for (int x = 0; x < tile; ++x) {
          const float v = wout[((t * 3 + c) * tile + y) * tile + x];
          ok &= v == ((y == 0 || y == 3) ? lut[c][0] : lut[c][200]);
        }
      }
    }
  }
  CHECK(ok);
}

void test_threads_identical() {
  std::mt19937 rng(3);
  std::vector<std::vector<uint8_t>> data;
  std::vector<ImageView> views;
  const int sizes[][2] = {{1000, 700}, {31, 400}, {384, 384}, {900, 120}, {2, 3}, {640, 641}};
  for (const auto& s : sizes) {
    data.emplace_back(static_cast<size_t>(s[0]) * s[1] * 3);
    for (uint8_t& v : data.back()) v = static_cast<uint8_t>(rng());
  }
  for (size_t i = 0; i < data.size(); ++i) views.push_back({data[i].data(), sizes[i][0], sizes[i][1], PixelFormat::kRGB8});
  const BatchPlan plan = plan_batch(views, kGrids, 384);
  const float mean[3] = {0.5f, 0.5f, 0.5f}, stdv[3] = {0.5f, 0.5f, 0.5f};
  const NormalizeLut<float> lut = make_normalize_lut(mean, stdv);
  std::vector<float> a(plan.total_tiles * 3 * 384 * 384), b(a.size());
  anyres_preprocess(views, 384, plan, lut, a.data(), 1);
  anyres_preprocess(views, 384, plan, lut, b.data(), 3);
  CHECK(a == b);
}

// The portable kernels and the AVX2 ones (where the CPU has them) give the same bytes.
void test_generic_kernels_match() {
  std::mt19937 rng(11);
  const int sizes[][2] = {{1000, 700}, {333, 1201}, {2000, 90}, {65, 64}};
  const int targets[][2] = {{384, 384}, {768, 538}, {1152, 103}, {97, 1000}, {1000, 50}};
  bool ok = true;
  for (const auto& s : sizes) {
    std::vector<uint8_t> src(static_cast<size_t>(s[0]) * s[1] * 3);
    for (uint8_t& v : src) v = static_cast<uint8_t>(rng());
    for (const auto& t : targets) {
      std::vector<uint8_t> fast(static_cast<size_t>(t[0]) * t[1] * 3), generic(fast.size());
      for (PassOrder order : {PassOrder::kPillow, PassOrder::kHorizontalFirst}) {
        testing::force_generic_kernels(false);
        resize_bicubic_rgb({src.data(), s[0], s[1], PixelFormat::kRGB8}, t[0], t[1], fast.data(), order);
        testing::force_generic_kernels(true);
        resize_bicubic_rgb({src.data(), s[0], s[1], PixelFormat::kRGB8}, t[0], t[1], generic.data(), order);
        ok &= fast == generic;
      }
    }
  }
  testing::force_generic_kernels(false);
  CHECK(ok);
}

void test_errors() {
  bool threw = false;
  try {
    std::vector<uint8_t> px(3);
    plan_batch({{px.data(), 1, 1, PixelFormat::kRGB8}}, {{100, 384}}, 384);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
}

}  // namespace

int main() {
  test_best_grid();
  test_geometry();
  test_masks();
  test_coefficients();
  test_resize_known_values();
  test_identity_resize_is_copy();
  test_pipeline_constant_image();
  test_threads_identical();
  test_generic_kernels_match();
  test_errors();
  return xgenmm::testing::finish("test_anyres");
}
