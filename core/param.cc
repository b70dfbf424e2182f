#include "core/param.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "absl/strings/str_cat.h"
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

}  // namespace

const char* ParamKindName(ParamKind kind) {
  return kind == ParamKind::kPixel ? "pixel" : "fft";
}

absl::StatusOr<ParamKind> ParseParamKind(absl::string_view name) {
  if (name == "pixel") return ParamKind::kPixel;
  if (name == "fft") return ParamKind::kFft;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown parameterisation '", name, "'; expected pixel or fft"));
}

ImageParam::ImageParam(ParamOptions options, const c10::Device& device)
    : options_(std::move(options)) {
  if (options_.channels == 3 && options_.decorrelate) {
    at::Tensor m = at::empty({3, 3});
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) m[i][j] = kColourSqrt[i][j];
    }
    // Scale so the largest column has unit norm, as the covariance root is
    // only defined up to that.
    m = m / m.norm(2, {0}).max();
    colour_ = m.to(device);
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
    } else {
      const at::Tensor fy = FftFrequencies(o.height, false).view({-1, 1});
      const at::Tensor fx = FftFrequencies(o.width, true).view({1, -1});
      const at::Tensor freq = (fy * fy + fx * fx).sqrt();
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

at::Tensor ImageParam::ToImage(const at::Tensor& pre) const {
  at::Tensor x = pre;
  if (colour_.defined()) x = at::einsum("ij,bjhw->bihw", {colour_, x});
  return at::sigmoid(x);
}

at::Tensor ImageParam::FromImage(const at::Tensor& image) const {
  at::Tensor x = at::logit(image.clamp(1e-3, 1 - 1e-3));
  if (colour_.defined()) {
    x = at::einsum("ij,bjhw->bihw", {at::inverse(colour_), x});
  }
  return x;
}

at::Tensor ImageParam::ImageFrom(const at::Tensor& variable) const {
  if (options_.kind == ParamKind::kPixel) return ToImage(variable);
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
         colour_.defined() == other.colour_.defined();
}

}  // namespace featviz::core
