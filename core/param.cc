#include "core/param.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace featviz::core {
namespace {

// Lucid's FFT images come out of the inverse transform with a spread about
// four times what a sigmoid wants; dividing keeps the start near mid-gray.
constexpr double kFftImageDivisor = 4.0;

// Square root of the colour covariance of ImageNet photos (its SVD factors),
// a measured constant used by every feature-visualisation library.
constexpr float kColourSqrt[3][3] = {{0.26f, 0.09f, 0.02f},
                                     {0.27f, 0.00f, -0.05f},
                                     {0.27f, -0.09f, 0.03f}};

// Images MacoMagnitudeFromImages reads per chunk.
constexpr int64_t kMacoChunk = 256;

// The RGB decorrelation matrix, scaled so its largest column has unit norm
// (the covariance root is only defined up to that).
at::Tensor ColourMatrix() {
  at::Tensor m = at::empty({3, 3});
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) m[i][j] = kColourSqrt[i][j];
  }
  return m / m.norm(2, {0}).max();
}

at::Tensor FftFrequencies(int64_t n, bool real_half) {
  // Cycles per pixel, in numpy.fft.fftfreq / rfftfreq order.
  const int64_t count = real_half ? n / 2 + 1 : n;
  std::vector<float> f(count);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t k = (real_half || i < (n + 1) / 2) ? i : i - n;
    f[i] = static_cast<float>(k) / static_cast<float>(n);
  }
  return at::tensor(f);
}

// |f| of every rfft2 bin of an height x width image, [H, W/2 + 1].
at::Tensor RadialFrequencies(int64_t height, int64_t width) {
  const at::Tensor fy = FftFrequencies(height, false).view({-1, 1});
  const at::Tensor fx = FftFrequencies(width, true).view({1, -1});
  return (fy * fy + fx * fx).sqrt();
}

}  // namespace

const char* ParamKindName(ParamKind kind) {
  switch (kind) {
    case ParamKind::kPixel:
      return "pixel";
    case ParamKind::kFft:
      return "fft";
    case ParamKind::kMaco:
      return "maco";
  }
  return "unknown";
}

absl::StatusOr<ParamKind> ParseParamKind(absl::string_view name) {
  if (name == "pixel") return ParamKind::kPixel;
  if (name == "fft") return ParamKind::kFft;
  if (name == "maco") return ParamKind::kMaco;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown parameterisation '", name, "'; expected pixel, fft or maco"));
}

at::Tensor DefaultMacoMagnitude(int64_t channels, int64_t height,
                                int64_t width) {
  const double floor = 1.0 / static_cast<double>(std::max(height, width));
  return RadialFrequencies(height, width)
      .clamp_min(floor)
      .reciprocal()
      .unsqueeze(0)
      .expand({channels, height, width / 2 + 1})
      .contiguous();
}

namespace {

// InvalidArgument naming `what` unless `images` is [N, C, H, W] with N >= 1
// and H, W >= min_side.
absl::Status CheckImageStack(const at::Tensor& images, const char* what,
                             int64_t min_side) {
  if (images.defined() && images.dim() == 4 && images.size(0) >= 1 &&
      images.size(2) >= min_side && images.size(3) >= min_side) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      what, " needs images [N, C, H, W] with N >= 1",
      min_side > 1 ? absl::StrCat(" and H, W >= ", min_side) : "", ", got ",
      images.defined() ? c10::str(images.sizes()) : "none"));
}

}  // namespace

absl::StatusOr<at::Tensor> MacoMagnitudeFromImages(const at::Tensor& images,
                                                   int64_t height,
                                                   int64_t width,
                                                   bool decorrelate) {
  FEATVIZ_RETURN_IF_ERROR(CheckImageStack(images, "MaCo magnitude", 1));
  if (height < 1 || width < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MaCo magnitude needs a positive size, got ", height, "x", width));
  }
  try {
    at::NoGradGuard no_grad;
    const int64_t n = std::min(images.size(0), kMacoMaxImages);
    const int64_t channels = images.size(1);
    at::Tensor inverse_colour;
    if (channels == 3 && decorrelate) inverse_colour = at::inverse(ColourMatrix());
    at::Tensor sum = at::zeros({channels, height, width / 2 + 1});
    for (int64_t start = 0; start < n; start += kMacoChunk) {
      at::Tensor x = images.narrow(0, start, std::min(kMacoChunk, n - start))
                         .to(at::kCPU, at::kFloat);
      if (x.size(2) != height || x.size(3) != width) {
        const std::vector<int64_t> size = {height, width};
        x = at::upsample_bilinear2d(x, at::IntArrayRef(size), false);
      }
      x = x - x.mean({2, 3}, true);
      if (inverse_colour.defined()) {
        x = at::einsum("ij,bjhw->bihw", {inverse_colour, x});
      }
      sum += at::fft_rfft2(x, c10::nullopt, {-2, -1}, "ortho").abs().sum(0);
    }
    return (sum / static_cast<double>(n)).contiguous();
  } catch (const std::exception& e) {
    return TorchError(e, "estimating the MaCo magnitude");
  }
}

namespace {

// Mean over channels of the standard deviation of
// sigmoid(gain * y + offset_c) for standardised samples `y` ([C, n], after
// the colour matrix), with each channel's offset chosen so that its mean
// pixel is `mean[c]`. Returns the spread; fills `offset`.
double ToneSpread(const at::Tensor& y, const at::Tensor& mean, double gain,
                  at::Tensor& offset) {
  const int64_t channels = y.size(0);
  at::Tensor low = at::full({channels, 1}, -6.0, at::kDouble);
  at::Tensor high = at::full({channels, 1}, 6.0, at::kDouble);
  for (int i = 0; i < 40; ++i) {  // Bisection: the mean rises with the offset.
    const at::Tensor mid = (low + high) / 2;
    const at::Tensor above =
        at::sigmoid(gain * y + mid).mean(1, true) > mean.view({channels, 1});
    high = at::where(above, mid, high);
    low = at::where(above, low, mid);
  }
  offset = ((low + high) / 2).view({channels});
  return at::sigmoid(gain * y + offset.view({channels, 1}))
      .std(1)
      .mean()
      .item<double>();
}

}  // namespace

absl::StatusOr<MacoTone> MacoToneFromImages(const at::Tensor& images,
                                            bool decorrelate) {
  FEATVIZ_RETURN_IF_ERROR(CheckImageStack(images, "MaCo tone", 2));
  try {
    at::NoGradGuard no_grad;
    const at::Tensor x = images.narrow(0, 0, std::min(images.size(0), kMacoMaxImages))
                             .to(at::kCPU, at::kDouble);
    const int64_t channels = x.size(1);
    const at::Tensor mean = x.mean({0, 2, 3}).clamp(0.02, 0.98);
    const double spread =
        x.transpose(0, 1).flatten(1).std(1).mean().item<double>();
    // Standardised samples, as a MaCo image's pixels before the colour
    // matrix (a fixed draw: the tone depends on the images only).
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
    at::Tensor y = at::randn({channels, 8192}, gen, at::kDouble);
    y = (y - y.mean()) / y.pow(2).mean().sqrt();
    if (channels == 3 && decorrelate) y = at::matmul(ColourMatrix().to(at::kDouble), y);
    double low = 0.25, high = 8.0;
    at::Tensor offset;
    for (int i = 0; i < 30; ++i) {  // The spread rises with the gain.
      const double mid = (low + high) / 2;
      (ToneSpread(y, mean, mid, offset) > spread ? high : low) = mid;
    }
    MacoTone tone;
    tone.gain = (low + high) / 2;
    ToneSpread(y, mean, tone.gain, offset);
    tone.offset = offset.to(at::kFloat).contiguous();
    return tone;
  } catch (const std::exception& e) {
    return TorchError(e, "estimating the MaCo tone");
  }
}

ImageParam::ImageParam(ParamOptions options, const c10::Device& device)
    : options_(std::move(options)) {
  if (options_.channels == 3 && options_.decorrelate) {
    colour_ = ColourMatrix().to(device);
  }
}

absl::StatusOr<std::unique_ptr<ImageParam>> ImageParam::Create(
    const ParamOptions& options, uint64_t seed, const c10::Device& device) {
  const ParamOptions& o = options;
  if (o.batch < 1 || o.channels < 1 || o.height < 1 || o.width < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image parameterisation needs a positive batch and size, got batch ",
        o.batch, " and ", o.channels, "x", o.height, "x", o.width));
  }
  if (!std::isfinite(o.decay_power) || o.decay_power < 0 ||
      o.decay_power > 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("decay_power must be in [0, 4], got ", o.decay_power));
  }
  if (!std::isfinite(o.init_std) || o.init_std < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("init_std must be >= 0, got ", o.init_std));
  }
  if (o.kind == ParamKind::kMaco && o.magnitude.defined()) {
    const at::Tensor& m = o.magnitude;
    if (m.dim() != 3 || (m.size(0) != 1 && m.size(0) != o.channels) ||
        m.size(1) != o.height || m.size(2) != o.width / 2 + 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "MaCo magnitude has shape ", c10::str(m.sizes()), ", expected [",
          o.channels, ", ", o.height, ", ", o.width / 2 + 1, "] for ",
          o.channels, "x", o.height, "x", o.width, " images"));
    }
  }
  at::Tensor init;
  if (o.init_image.defined()) {
    init = o.init_image.dim() == 3 ? o.init_image.unsqueeze(0) : o.init_image;
    if (init.dim() != 4 || (init.size(0) != 1 && init.size(0) != o.batch) ||
        init.size(1) != o.channels || init.size(2) != o.height ||
        init.size(3) != o.width) {
      return absl::InvalidArgumentError(absl::StrCat(
          "init image has shape ", c10::str(o.init_image.sizes()),
          ", expected [", o.channels, ", ", o.height, ", ", o.width, "]"));
    }
  }

  std::unique_ptr<ImageParam> param(new ImageParam(options, device));
  try {
    // Drawn on the CPU from the job's own generator, then moved: the same
    // seed gives the same start on every device.
    at::Generator gen = at::detail::createCPUGenerator(seed);
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    at::Tensor variable;
    if (o.kind == ParamKind::kPixel) {
      variable =
          at::randn({o.batch, o.channels, o.height, o.width}, gen, f32) *
          o.init_std;
      variable = variable.to(device);
      if (init.defined()) {
        variable = variable + param->FromImage(
                                  init.to(device, at::kFloat).expand_as(variable));
      }
    } else if (o.kind == ParamKind::kMaco) {
      at::Tensor magnitude =
          o.magnitude.defined()
              ? o.magnitude.to(at::kFloat)
              : DefaultMacoMagnitude(o.channels, o.height, o.width);
      if (!at::isfinite(magnitude).all().item<bool>() ||
          (magnitude < 0).any().item<bool>()) {
        return absl::InvalidArgumentError(
            "MaCo magnitude must be finite and non-negative");
      }
      param->spectrum_scale_ = magnitude.to(device);
      if (!std::isfinite(o.tone_gain) || o.tone_gain < 0.01 ||
          o.tone_gain > 100) {
        return absl::InvalidArgumentError(absl::StrCat(
            "MaCo tone gain must be in [0.01, 100], got ", o.tone_gain));
      }
      if (o.tone_offset.defined()) {
        if (o.tone_offset.dim() != 1 || o.tone_offset.size(0) != o.channels ||
            !at::isfinite(o.tone_offset).all().item<bool>()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "MaCo tone offset must be ", o.channels,
              " finite values, got shape ", c10::str(o.tone_offset.sizes())));
        }
        param->tone_offset_ =
            o.tone_offset.to(device, at::kFloat).view({1, o.channels, 1, 1});
      }
      if (init.defined()) {
        // The start image's phase; its magnitude is replaced by the fixed one.
        at::Tensor pre = param->FromImage(
            init.to(device, at::kFloat)
                .expand({o.batch, o.channels, o.height, o.width}));
        variable = at::angle(
            at::fft_rfft2(pre, c10::nullopt, {-2, -1}, "ortho"));
      } else {
        // A random phase: uniform over the circle. It is not standardised
        // while optimising (an angle is valid at any value, and scaling it
        // would pull a random start's phases towards zero).
        variable = (at::rand({o.batch, o.channels, o.height, o.width / 2 + 1},
                             gen, f32) *
                        2 - 1) *
                   M_PI;
        variable = variable.to(device);
      }
    } else {
      const at::Tensor freq = RadialFrequencies(o.height, o.width);
      const double floor = 1.0 / static_cast<double>(std::max(o.height, o.width));
      param->spectrum_scale_ =
          freq.clamp_min(floor).pow(-o.decay_power).to(device);
      variable = at::randn({o.batch, o.channels, o.height, o.width / 2 + 1, 2},
                           gen, f32) *
                 o.init_std;
      variable = variable.to(device);
      if (init.defined()) {
        at::Tensor pre = param->FromImage(
            init.to(device, at::kFloat)
                .expand({o.batch, o.channels, o.height, o.width}));
        at::Tensor spectrum =
            at::fft_rfft2(pre * kFftImageDivisor, c10::nullopt, {-2, -1},
                          "ortho") /
            param->spectrum_scale_;
        variable = variable + at::view_as_real(spectrum);
      }
    }
    param->parameters_.push_back(variable.contiguous().detach().requires_grad_(true));
  } catch (const std::exception& e) {
    return TorchError(e, "creating the image parameterisation");
  }
  return param;
}

// MaCo's tone offset (undefined for the other kinds) is added after the
// colour matrix; FromImage takes it off again.
at::Tensor ImageParam::ToImage(const at::Tensor& pre) const {
  at::Tensor x = pre;
  if (colour_.defined()) x = at::einsum("ij,bjhw->bihw", {colour_, x});
  if (tone_offset_.defined()) x = x + tone_offset_;
  return at::sigmoid(x);
}

at::Tensor ImageParam::FromImage(const at::Tensor& image) const {
  at::Tensor x = at::logit(image.clamp(1e-3, 1 - 1e-3));
  if (tone_offset_.defined()) x = x - tone_offset_;
  if (colour_.defined()) {
    x = at::einsum("ij,bjhw->bihw", {at::inverse(colour_), x});
  }
  return x;
}

at::Tensor ImageParam::ImageFrom(const at::Tensor& variable) const {
  if (options_.kind == ParamKind::kPixel) return ToImage(variable);
  if (options_.kind == ParamKind::kMaco) {
    const at::Tensor magnitude = spectrum_scale_.expand_as(variable);
    at::Tensor spectrum =
        at::complex(magnitude * at::cos(variable), magnitude * at::sin(variable));
    at::Tensor pre = at::fft_irfft2(
        spectrum, c10::IntArrayRef{options_.height, options_.width}, {-2, -1},
        "ortho");
    // Standardised image by image, so that neither the magnitude's scale
    // nor the other images of a batch change a picture.
    pre = pre - pre.mean({1, 2, 3}, true);
    pre = pre / (pre.pow(2).mean({1, 2, 3}, true).sqrt() + 1e-5);
    if (options_.tone_gain != 1.0) pre = pre * options_.tone_gain;
    return ToImage(pre);
  }
  at::Tensor spectrum = at::view_as_complex(variable) * spectrum_scale_;
  at::Tensor pre = at::fft_irfft2(
      spectrum, c10::IntArrayRef{options_.height, options_.width}, {-2, -1},
      "ortho");
  return ToImage(pre / kFftImageDivisor);
}

bool ImageParam::SameShape(const ImageParam& other) const {
  const ParamOptions& a = options_;
  const ParamOptions& b = other.options_;
  return a.kind == b.kind && a.channels == b.channels &&
         a.height == b.height && a.width == b.width &&
         a.decay_power == b.decay_power &&
         colour_.defined() == other.colour_.defined() &&
         (a.kind != ParamKind::kMaco ||
          (a.magnitude.is_same(b.magnitude) && a.tone_gain == b.tone_gain &&
           a.tone_offset.is_same(b.tone_offset)));
}

}  // namespace featviz::core
