// PNG through libpng, contact sheets with stb_easy_font labels, and .npy.
//
// libpng reports errors by longjmp-ing to a setjmp the caller set. The
// functions that call setjmp (WritePngRows, ReadPngHeader, ReadPngRows) hold
// only plain C values, so the jump skips no destructor; everything that owns
// memory lives in their callers, which libpng never jumps through.
#include "core/image.h"

#include <png.h>

#include <algorithm>
#include <utility>
#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "core/status_macros.h"

// stb_easy_font defines every function `static`; we use only two of them.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include <stb_easy_font.h>
#pragma GCC diagnostic pop

// .npy data is written as raw host bytes under a little-endian descriptor.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "EncodeNpy assumes a little-endian host"
#endif

namespace featviz::core {
namespace {

// Decoding refuses larger images so that a corrupt header cannot make us
// allocate gigabytes before libpng notices the data is missing.
constexpr png_uint_32 kMaxPngSide = 16384;
constexpr size_t kMaxPngBytes = size_t{1} << 30;

// A contact sheet this large is a mistake (a huge `scale`), not a picture.
constexpr double kMaxGridPixels = double{1 << 28};

// stb_easy_font glyphs occupy rows [0, 9) of a 12-row line (descenders
// included); starting the ink 2 rows down leaves a gap under the picture.
// client/python/featviz_client/images.py draws its labels to the same
// measurements; change both together.
constexpr int64_t kFontLineHeight = 12;
constexpr int64_t kFontTopMargin = 2;

// What ends a label shortened to fit its cell.
constexpr char kEllipsis[] = "...";

std::string ShapeString(const at::Tensor& tensor) {
  return absl::StrCat("[", absl::StrJoin(tensor.sizes(), ", "), "]");
}

// Checks that `image` is a float [C, H, W] picture with C = 1 or 3.
absl::Status CheckImage(const at::Tensor& image) {
  if (!image.defined()) {
    return absl::InvalidArgumentError("image tensor is undefined");
  }
  if (image.dim() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image must be [C, H, W], got shape ", ShapeString(image)));
  }
  if (image.size(0) != 1 && image.size(0) != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("image must have 1 (gray) or 3 (RGB) channels, got shape ",
                     ShapeString(image),
                     "; other band counts are shown through their composite "
                     "(core/bands.h)"));
  }
  if (image.size(1) == 0 || image.size(2) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("image is empty, shape ", ShapeString(image)));
  }
  if (!c10::isFloatingType(image.scalar_type())) {
    return absl::InvalidArgumentError(
        absl::StrCat("image must be a floating-point tensor in [0, 1], got ",
                     c10::toString(image.scalar_type())));
  }
  return absl::OkStatus();
}

// A CPU float copy with values in [0, 1]; NaN becomes 0 so that it cannot
// reach an integer conversion, where it would be undefined.
at::Tensor ClampedCpuFloat(const at::Tensor& tensor) {
  return tensor.detach()
      .to(at::kCPU)
      .to(at::kFloat)
      .nan_to_num(0.0)
      .clamp(0.0, 1.0);
}

absl::Status WriteFile(const std::string& path, absl::string_view bytes) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) {
    return absl::ErrnoToStatus(
        errno, absl::StrCat("cannot open ", path, " for writing"));
  }
  if (std::fwrite(bytes.data(), 1, bytes.size(), file) != bytes.size()) {
    const int error = errno;
    std::fclose(file);
    return absl::ErrnoToStatus(error, absl::StrCat("cannot write ", path));
  }
  // Buffered data reaches the disk only here, so a full disk shows up here.
  if (std::fclose(file) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot write ", path));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  }
  std::string bytes;
  char buffer[1 << 16];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file)) > 0) {
    bytes.append(buffer, n);
  }
  const bool failed = std::ferror(file) != 0;
  const int error = errno;
  std::fclose(file);
  if (failed) {
    return absl::ErrnoToStatus(error, absl::StrCat("cannot read ", path));
  }
  return bytes;
}

// ---------------------------------------------------------------------------
// libpng plumbing.

// Where the error callback leaves libpng's message: the callback must not
// return, so it cannot hand the message back any other way.
struct PngErrorState {
  char message[256];
};

void PngError(png_structp png, png_const_charp message) {
  auto* state = static_cast<PngErrorState*>(png_get_error_ptr(png));
  std::snprintf(state->message, sizeof(state->message), "%s", message);
  png_longjmp(png, 1);
}

// Warnings (an unknown ancillary chunk, a bad gamma value) do not stop us,
// and libpng's default would print them on stderr.
void PngWarning(png_structp, png_const_charp) {}

struct PngWriteSink {
  std::string* out;
};

void PngWriteData(png_structp png, png_bytep data, png_size_t length) {
  auto* sink = static_cast<PngWriteSink*>(png_get_io_ptr(png));
  bool out_of_memory = false;
  try {
    sink->out->append(reinterpret_cast<const char*>(data), length);
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  }
  // Outside the catch block: png_error longjmps, and jumping out of a
  // handler would leak the exception object.
  if (out_of_memory) png_error(png, "out of memory while encoding PNG");
}

void PngFlush(png_structp) {}

// Encodes 8-bit rows into sink->out. Holds only C values (see file comment).
bool WritePngRows(png_bytep* rows, png_uint_32 width, png_uint_32 height,
                  int color_type, PngWriteSink* sink, PngErrorState* error) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, error,
                                            PngError, PngWarning);
  if (png == nullptr) {
    std::snprintf(error->message, sizeof(error->message),
                  "cannot create libpng write struct");
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (info == nullptr) {
    png_destroy_write_struct(&png, nullptr);
    std::snprintf(error->message, sizeof(error->message),
                  "cannot create libpng info struct");
    return false;
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_set_write_fn(png, sink, PngWriteData, PngFlush);
  png_set_IHDR(png, info, width, height, 8, color_type, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return true;
}

struct PngReadSource {
  const unsigned char* data;
  size_t size;
  size_t offset;
};

void PngReadData(png_structp png, png_bytep out, png_size_t length) {
  auto* source = static_cast<PngReadSource*>(png_get_io_ptr(png));
  if (length > source->size - source->offset) {
    png_error(png, "PNG data ends early");
  }
  std::memcpy(out, source->data + source->offset, length);
  source->offset += length;
}

// The decoded layout after our transforms: 1 or 3 channels of 8 or 16 bits.
struct PngLayout {
  png_uint_32 width;
  png_uint_32 height;
  int channels;
  int bit_depth;
  size_t row_bytes;
};

// Reads the header and sets up the transforms that turn any PNG into gray or
// RGB without alpha. Holds only C values (see file comment).
bool ReadPngHeader(png_structp png, png_infop info, PngLayout* layout) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_info(png, info);
  const int color_type = png_get_color_type(png, info);
  const int bit_depth = png_get_bit_depth(png, info);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) {
    png_set_expand_gray_1_2_4_to_8(png);
  }
  // Palette expansion also turns a tRNS chunk into an alpha channel, which
  // we drop like any other.
  if ((color_type & PNG_COLOR_MASK_ALPHA) != 0 ||
      png_get_valid(png, info, PNG_INFO_tRNS) != 0) {
    png_set_strip_alpha(png);
  }
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  layout->width = png_get_image_width(png, info);
  layout->height = png_get_image_height(png, info);
  layout->channels = png_get_channels(png, info);
  layout->bit_depth = png_get_bit_depth(png, info);
  layout->row_bytes = png_get_rowbytes(png, info);
  return true;
}

// Reads the pixels into `rows`. Holds only C values (see file comment).
bool ReadPngRows(png_structp png, png_bytep* rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_image(png, rows);
  png_read_end(png, nullptr);
  return true;
}

// Owns a libpng read struct for the C++ side, which libpng never jumps over.
class PngReader {
 public:
  explicit PngReader(PngErrorState* error)
      : png_(png_create_read_struct(PNG_LIBPNG_VER_STRING, error, PngError,
                                    PngWarning)),
        info_(png_ == nullptr ? nullptr : png_create_info_struct(png_)) {}
  ~PngReader() {
    if (png_ != nullptr) png_destroy_read_struct(&png_, &info_, nullptr);
  }
  PngReader(const PngReader&) = delete;
  PngReader& operator=(const PngReader&) = delete;

  png_structp png() const { return png_; }
  png_infop info() const { return info_; }

 private:
  png_structp png_;
  png_infop info_;
};

// ---------------------------------------------------------------------------
// Labels.

// stb_easy_font indexes its glyph table by (c - 32) with no bounds check, so
// anything outside printable ASCII becomes '?', one per UTF-8 character.
std::string PrintableAscii(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x80 && byte < 0xc0) continue;  // UTF-8 continuation byte
    out.push_back(byte >= ' ' && byte <= '~' ? c : '?');
  }
  return out;
}

// A label's font size before the sheet's labels are fitted: a 1-pixel font
// is unreadable under a big picture.
int64_t TextScaleForCell(int64_t cell_width) {
  return std::clamp<int64_t>(cell_width / 64 + 1, 1, 4);
}

// Blank columns kept inside each side of a cell at font size `s`, so that
// the labels of neighbouring cells never touch, even on a sheet without
// padding.
int64_t LabelMargin(int64_t cell_w, int64_t s) {
  return std::min(s, cell_w / 4);
}

struct Quad {
  int64_t x0, y0, x1, y1;  // font units, [x0, x1) x [y0, y1)
};

// `text` (printable ASCII) as stb_easy_font draws it at size 1.
std::vector<Quad> LabelQuads(const std::string& text) {
  // At most 11 quads of 64 bytes per glyph ('X'); room for 16.
  std::vector<float> vertices(text.size() * 16 * 16 + 16);
  std::string buffer = text;  // stb_easy_font takes a mutable char*
  const int num_quads =
      stb_easy_font_print(0.0f, 0.0f, buffer.data(), nullptr, vertices.data(),
                          static_cast<int>(vertices.size() * sizeof(float)));
  std::vector<Quad> quads;
  quads.reserve(num_quads);
  for (int q = 0; q < num_quads; ++q) {
    // Each vertex is 16 bytes: x, y, z as floats, then 4 colour bytes.
    const float* v = vertices.data() + q * 16;
    float x0 = v[0], x1 = v[0], y0 = v[1], y1 = v[1];
    for (int k = 1; k < 4; ++k) {
      x0 = std::min(x0, v[4 * k]);
      x1 = std::max(x1, v[4 * k]);
      y0 = std::min(y0, v[4 * k + 1]);
      y1 = std::max(y1, v[4 * k + 1]);
    }
    quads.push_back(
        {std::lround(x0), std::lround(y0), std::lround(x1), std::lround(y1)});
  }
  return quads;
}

// The horizontal extent [x0, x1) of the ink in font units (0, 0 when there
// is none).
std::pair<int64_t, int64_t> InkExtent(const std::vector<Quad>& quads) {
  if (quads.empty()) return {0, 0};
  int64_t ink_x0 = quads[0].x0, ink_x1 = quads[0].x1;
  for (const Quad& q : quads) {
    ink_x0 = std::min(ink_x0, q.x0);
    ink_x1 = std::max(ink_x1, q.x1);
  }
  return {ink_x0, ink_x1};
}

// The width of `text`'s ink (printable ASCII) in font units.
int64_t InkWidth(const std::string& text) {
  const auto [x0, x1] = InkExtent(LabelQuads(text));
  return x1 - x0;
}

// The font size of every label of a sheet: `text_scale`, lowered until the
// longest label fits its cell less the margins. One size for the whole
// sheet, so that "sad" and "surprise" under neighbouring pictures read
// alike; a label that does not fit even at 1 is shortened (FitLabel).
int64_t SheetTextScale(const std::vector<std::string>& labels,
                       int64_t cell_w, int64_t text_scale) {
  int64_t widest = 0;
  for (const std::string& label : labels) {
    widest = std::max(widest, InkWidth(PrintableAscii(label)));
  }
  int64_t s = text_scale;
  while (s > 1 && widest * s > cell_w - 2 * s) --s;
  return s;
}

// `text` (printable ASCII) as it fits `box_w` pixels at font size `s`: whole
// when it fits, else its start (which names it best) followed by "...", so
// that a cut label reads as cut. Empty when not even "..." fits.
std::string FitLabel(const std::string& text, int64_t box_w, int64_t s) {
  if (InkWidth(text) * s <= box_w) return text;
  for (size_t keep = text.size(); keep-- > 0;) {
    std::string shorter = text.substr(0, keep);
    while (!shorter.empty() && shorter.back() == ' ') shorter.pop_back();
    shorter += kEllipsis;
    if (InkWidth(shorter) * s <= box_w) return shorter;
  }
  return "";
}

// Draws `label` at font size `s` centred in the box [box_x, box_x + box_w) x
// [box_y, box_y + box_h) of a [3, H, W] sheet, shortened to fit the box
// (FitLabel) and clipped to it, so that it cannot spill into its
// neighbours.
void DrawLabel(const std::string& label, int64_t box_x, int64_t box_y,
               int64_t box_w, int64_t box_h, int64_t s, float ink,
               at::Tensor& sheet) {
  const std::vector<Quad> quads =
      LabelQuads(FitLabel(PrintableAscii(label), box_w, s));
  if (quads.empty()) return;
  const auto [ink_x0, ink_x1] = InkExtent(quads);
  const int64_t slack = std::max<int64_t>(0, box_w - (ink_x1 - ink_x0) * s);
  const int64_t origin_x = box_x + slack / 2 - ink_x0 * s;
  const int64_t origin_y = box_y + kFontTopMargin * s;

  auto pixels = sheet.accessor<float, 3>();
  for (const Quad& q : quads) {
    const int64_t x0 = std::max(box_x, origin_x + q.x0 * s);
    const int64_t x1 = std::min(box_x + box_w, origin_x + q.x1 * s);
    const int64_t y0 = std::max(box_y, origin_y + q.y0 * s);
    const int64_t y1 = std::min(box_y + box_h, origin_y + q.y1 * s);
    for (int64_t y = y0; y < y1; ++y) {
      for (int64_t x = x0; x < x1; ++x) {
        for (int64_t c = 0; c < 3; ++c) pixels[c][y][x] = ink;
      }
    }
  }
}

int64_t CeilSqrt(int64_t n) {
  int64_t root = static_cast<int64_t>(std::sqrt(static_cast<double>(n)));
  while (root * root < n) ++root;
  while (root > 1 && (root - 1) * (root - 1) >= n) --root;
  return root;
}

}  // namespace

// ---------------------------------------------------------------------------
// PNG.

absl::StatusOr<std::string> EncodePng(const at::Tensor& image) {
  FEATVIZ_RETURN_IF_ERROR(CheckImage(image));
  const int64_t channels = image.size(0);
  const int64_t height = image.size(1);
  const int64_t width = image.size(2);
  if (width > PNG_UINT_31_MAX || height > PNG_UINT_31_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("image too large for PNG, shape ", ShapeString(image)));
  }
  const at::Tensor bytes = ClampedCpuFloat(image)
                               .mul(255.0)
                               .round()
                               .to(at::kByte)
                               .permute({1, 2, 0})
                               .contiguous();
  uint8_t* data = bytes.data_ptr<uint8_t>();
  std::vector<png_bytep> rows(height);
  for (int64_t y = 0; y < height; ++y) rows[y] = data + y * width * channels;

  std::string out;
  PngWriteSink sink{&out};
  PngErrorState error{};
  if (!WritePngRows(rows.data(), static_cast<png_uint_32>(width),
                    static_cast<png_uint_32>(height),
                    channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB,
                    &sink, &error)) {
    return absl::InternalError(absl::StrCat("PNG encoding of shape ",
                                            ShapeString(image),
                                            " failed: ", error.message));
  }
  return out;
}

absl::Status WritePng(const at::Tensor& image, const std::string& path) {
  absl::StatusOr<std::string> png = EncodePng(image);
  if (!png.ok()) {
    return absl::Status(
        png.status().code(),
        absl::StrCat("cannot write ", path, ": ", png.status().message()));
  }
  return WriteFile(path, *png);
}

absl::StatusOr<at::Tensor> DecodePng(absl::string_view png_bytes) {
  constexpr size_t kSignatureBytes = 8;
  if (png_bytes.size() < kSignatureBytes ||
      png_sig_cmp(reinterpret_cast<png_const_bytep>(png_bytes.data()), 0,
                  kSignatureBytes) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not a PNG: no PNG signature in ", png_bytes.size(), " bytes"));
  }
  PngErrorState error{};
  PngReader reader(&error);
  if (reader.png() == nullptr || reader.info() == nullptr) {
    return absl::InternalError("cannot create libpng read structs");
  }
  PngReadSource source{reinterpret_cast<const unsigned char*>(png_bytes.data()),
                       png_bytes.size(), 0};
  png_set_read_fn(reader.png(), &source, PngReadData);
  png_set_user_limits(reader.png(), kMaxPngSide, kMaxPngSide);

  PngLayout layout{};
  if (!ReadPngHeader(reader.png(), reader.info(), &layout)) {
    return absl::InvalidArgumentError(
        absl::StrCat("corrupt PNG: ", error.message));
  }
  if ((layout.channels != 1 && layout.channels != 3) ||
      (layout.bit_depth != 8 && layout.bit_depth != 16)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported PNG layout: ", layout.channels, " channels of ",
        layout.bit_depth, " bits after conversion"));
  }
  const size_t bytes_per_sample = layout.bit_depth / 8;
  if (layout.width == 0 || layout.height == 0 ||
      layout.row_bytes !=
          size_t{layout.width} * layout.channels * bytes_per_sample ||
      layout.row_bytes > kMaxPngBytes / layout.height) {
    return absl::InvalidArgumentError(
        absl::StrCat("PNG of ", layout.width, "x", layout.height,
                     " is too large or inconsistent to decode"));
  }

  // Default-initialised (not zeroed): a lying header costs address space,
  // not touched memory, before libpng finds the data missing.
  std::unique_ptr<uint8_t[]> pixels(
      new (std::nothrow) uint8_t[layout.row_bytes * layout.height]);
  if (pixels == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "out of memory decoding a ", layout.width, "x", layout.height, " PNG"));
  }
  std::vector<png_bytep> rows(layout.height);
  for (png_uint_32 y = 0; y < layout.height; ++y) {
    rows[y] = pixels.get() + y * layout.row_bytes;
  }
  if (!ReadPngRows(reader.png(), rows.data())) {
    return absl::InvalidArgumentError(
        absl::StrCat("corrupt PNG: ", error.message));
  }

  const int64_t channels = layout.channels;
  const int64_t height = layout.height;
  const int64_t width = layout.width;
  at::Tensor image = at::empty({channels, height, width}, at::kFloat);
  auto out = image.accessor<float, 3>();
  for (int64_t y = 0; y < height; ++y) {
    const uint8_t* row = rows[y];
    for (int64_t x = 0; x < width; ++x) {
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t i = x * channels + c;
        if (layout.bit_depth == 8) {
          out[c][y][x] = static_cast<float>(row[i]) / 255.0f;
        } else {
          // PNG stores 16-bit samples big-endian.
          const unsigned v = (unsigned{row[2 * i]} << 8) | row[2 * i + 1];
          out[c][y][x] = static_cast<float>(v) / 65535.0f;
        }
      }
    }
  }
  return image;
}

absl::StatusOr<at::Tensor> ReadPng(const std::string& path) {
  FEATVIZ_ASSIGN_OR_RETURN(const std::string bytes, ReadFile(path));
  absl::StatusOr<at::Tensor> image = DecodePng(bytes);
  if (!image.ok()) {
    return absl::Status(image.status().code(),
                        absl::StrCat(path, ": ", image.status().message()));
  }
  return image;
}

// ---------------------------------------------------------------------------
// Contact sheets.

absl::StatusOr<at::Tensor> MakeGrid(const at::Tensor& images,
                                    const GridOptions& options) {
  if (!images.defined()) {
    return absl::InvalidArgumentError("grid images tensor is undefined");
  }
  if (images.dim() != 4 || (images.size(1) != 1 && images.size(1) != 3)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "grid images must be [N, C, H, W] with C = 1 or 3, got shape ",
        ShapeString(images),
        "; other band counts are shown through their composite "
        "(core/bands.h)"));
  }
  const int64_t n = images.size(0);
  const int64_t height = images.size(2);
  const int64_t width = images.size(3);
  if (n == 0 || height == 0 || width == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("grid has nothing to show, shape ", ShapeString(images)));
  }
  if (!c10::isFloatingType(images.scalar_type())) {
    return absl::InvalidArgumentError(
        absl::StrCat("grid images must be floating-point in [0, 1], got ",
                     c10::toString(images.scalar_type())));
  }
  if (options.scale < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("grid scale must be at least 1, got ", options.scale));
  }
  if (options.padding < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "grid padding must not be negative, got ", options.padding));
  }
  if (options.columns < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "grid columns must not be negative, got ", options.columns));
  }
  if (!options.labels.empty() &&
      static_cast<int64_t>(options.labels.size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "grid has ", n, " images but ", options.labels.size(), " labels"));
  }
  if (!(options.background >= 0.0f && options.background <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "grid background must be in [0, 1], got ", options.background));
  }

  // More columns than images would only widen the sheet with empty cells.
  const int64_t columns =
      options.columns > 0 ? std::min(options.columns, n) : CeilSqrt(n);
  const int64_t rows = (n + columns - 1) / columns;
  const int64_t padding = options.padding;
  const double cell_w_estimate = static_cast<double>(width) * options.scale;
  const double cell_h_estimate = static_cast<double>(height) * options.scale;
  // Checked in double before any int64 product can overflow.
  if ((padding + columns * (cell_w_estimate + padding)) *
          (padding + rows * (cell_h_estimate + 4 * kFontLineHeight + padding)) >
      kMaxGridPixels) {
    return absl::InvalidArgumentError(
        absl::StrCat("grid of ", n, " images of ", height, "x", width,
                     " at scale ", options.scale, " would be too large"));
  }
  const int64_t cell_w = width * options.scale;
  const int64_t cell_h = height * options.scale;
  const int64_t text_scale =
      SheetTextScale(options.labels, cell_w, TextScaleForCell(cell_w));
  const int64_t label_h =
      options.labels.empty() ? 0 : kFontLineHeight * text_scale;
  const int64_t sheet_w = padding + columns * (cell_w + padding);
  const int64_t sheet_h = padding + rows * (cell_h + label_h + padding);

  at::Tensor cells = ClampedCpuFloat(images);
  if (cells.size(1) == 1) cells = cells.expand({n, 3, height, width});
  if (options.scale > 1) {
    cells = cells.repeat_interleave(options.scale, 2)
                .repeat_interleave(options.scale, 3);
  }
  at::Tensor sheet =
      at::full({3, sheet_h, sheet_w}, options.background, at::kFloat);
  // Dark text unless the sheet is dark itself.
  const float ink = options.background >= 0.5f ? 0.0f : 1.0f;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t x0 = padding + (i % columns) * (cell_w + padding);
    const int64_t y0 = padding + (i / columns) * (cell_h + label_h + padding);
    sheet.narrow(1, y0, cell_h).narrow(2, x0, cell_w).copy_(cells[i]);
    if (label_h > 0) {
      const int64_t margin = LabelMargin(cell_w, text_scale);
      DrawLabel(options.labels[i], x0 + margin, y0 + cell_h,
                cell_w - 2 * margin, label_h, text_scale, ink, sheet);
    }
  }
  return sheet;
}

// ---------------------------------------------------------------------------
// NumPy.

absl::StatusOr<std::string> EncodeNpy(const at::Tensor& tensor) {
  if (!tensor.defined()) {
    return absl::InvalidArgumentError(
        "cannot write an undefined tensor as .npy");
  }
  const char* descr = nullptr;
  switch (tensor.scalar_type()) {
    case at::kFloat:
      descr = "<f4";
      break;
    case at::kDouble:
      descr = "<f8";
      break;
    case at::kLong:
      descr = "<i8";
      break;
    case at::kInt:
      descr = "<i4";
      break;
    case at::kByte:
      descr = "|u1";
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot write a ", c10::toString(tensor.scalar_type()),
          " tensor as .npy; supported: Float, Double, Long, Int, Byte"));
  }
  // Python tuple syntax: a 1-tuple needs its trailing comma.
  std::string shape = absl::StrCat("(", absl::StrJoin(tensor.sizes(), ", "),
                                   tensor.dim() == 1 ? ",)" : ")");
  std::string header =
      absl::StrCat("{'descr': '", descr,
                   "', 'fortran_order': False, 'shape': ", shape, ", }");
  // Magic (6) + version (2) + length (2) + header + '\n' is padded to a
  // multiple of 64, as NumPy does, so the data is aligned for mmap.
  constexpr size_t kPreamble = 10;
  const size_t unpadded = kPreamble + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  if (header.size() > 0xffff) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shape ", ShapeString(tensor), " does not fit an .npy 1.0 header"));
  }

  const at::Tensor data = tensor.detach().to(at::kCPU).contiguous();
  const size_t data_bytes = data.nbytes();
  std::string out;
  out.reserve(kPreamble + header.size() + data_bytes);
  out.append("\x93NUMPY", 6);
  out.push_back('\x01');  // format 1.0
  out.push_back('\x00');
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  out += header;
  if (data_bytes > 0) {
    out.append(static_cast<const char*>(data.data_ptr()), data_bytes);
  }
  return out;
}

absl::Status WriteNpy(const at::Tensor& tensor, const std::string& path) {
  absl::StatusOr<std::string> npy = EncodeNpy(tensor);
  if (!npy.ok()) {
    return absl::Status(
        npy.status().code(),
        absl::StrCat("cannot write ", path, ": ", npy.status().message()));
  }
  return WriteFile(path, *npy);
}

}  // namespace featviz::core
