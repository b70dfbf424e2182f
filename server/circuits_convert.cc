#include "server/circuits_convert.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/heatmap.h"
#include "core/image.h"
#include "core/status_macros.h"
#include "server/convert.h"

namespace featviz::server {
namespace {

absl::Status DatasetFitsModel(const core::Dataset& dataset,
                              const core::Model& model,
                              absl::string_view field) {
  const core::ModelCard& card = model.card();
  if (dataset.images.size(1) != card.channels ||
      dataset.images.size(2) != card.height ||
      dataset.images.size(3) != card.width) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": dataset ", dataset.name, " has images of shape [",
        dataset.images.size(1), ", ", dataset.images.size(2), ", ",
        dataset.images.size(3), "] but model ", card.name, " takes [",
        card.channels, ", ", card.height, ", ", card.width, "]"));
  }
  return absl::OkStatus();
}

ResolvedImages Gather(const core::Dataset& dataset,
                      std::vector<int64_t> indices) {
  ResolvedImages out;
  const at::Tensor index = at::tensor(indices, at::kLong);
  out.images = dataset.images.index_select(0, index);
  const at::Tensor labels = dataset.labels.index_select(0, index);
  out.labels.assign(labels.data_ptr<int64_t>(),
                    labels.data_ptr<int64_t>() + labels.numel());
  out.indices = std::move(indices);
  return out;
}

}  // namespace

DatasetNeed NeedOf(const core::Model& model) {
  return NeedOf(model.card(), model.card().channels);
}

absl::StatusOr<ResolvedImages> ResolveImages(const v1::ImageInput& input,
                                             const core::Model& model,
                                             const DatasetRegistry& datasets,
                                             int64_t max_images,
                                             absl::string_view field) {
  ResolvedImages out;
  switch (input.source_case()) {
    case v1::ImageInput::kImages: {
      const std::string images_field = absl::StrCat(field, ".images");
      FEATVIZ_ASSIGN_OR_RETURN(at::Tensor images,
                               TensorFromProto(input.images(), images_field));
      if (images.dim() == 3) images = images.unsqueeze(0);
      FEATVIZ_RETURN_IF_ERROR(
          Prefixed(images_field, core::CheckImagesFit(model, images)));
      if (images.size(0) > max_images) {
        return absl::InvalidArgumentError(
            absl::StrCat(images_field, ": at most ", max_images,
                         " images per request, got ", images.size(0)));
      }
      if (!at::isfinite(images).all().item<bool>()) {
        return absl::InvalidArgumentError(
            absl::StrCat(images_field, ": pixels must be finite"));
      }
      out.images = images.clamp(0, 1);
      return out;
    }
    case v1::ImageInput::kDataset: {
      const v1::DatasetSlice& slice = input.dataset();
      const std::string slice_field = absl::StrCat(field, ".dataset");
      FEATVIZ_ASSIGN_OR_RETURN(
          const core::DatasetPtr dataset,
          datasets.Pick(slice.dataset(), NeedOf(model),
                        absl::StrCat(slice_field, ".dataset")));
      FEATVIZ_RETURN_IF_ERROR(DatasetFitsModel(*dataset, model, slice_field));
      std::vector<int64_t> indices;
      if (slice.indices_size() > 0) {
        if (slice.indices_size() > max_images) {
          return absl::InvalidArgumentError(
              absl::StrCat(slice_field, ".indices: at most ", max_images,
                           " images per request, got ", slice.indices_size()));
        }
        for (int i = 0; i < slice.indices_size(); ++i) {
          const int64_t index = slice.indices(i);
          if (index < 0 || index >= dataset->size()) {
            return absl::OutOfRangeError(absl::StrCat(
                slice_field, ".indices[", i, "]: index ", index,
                " out of range for dataset ", dataset->name, " with ",
                dataset->size(), " images"));
          }
          indices.push_back(index);
        }
        return Gather(*dataset, std::move(indices));
      }
      // A range, of the whole dataset or of one class.
      std::vector<int64_t> pool;
      std::string pool_name = absl::StrCat("dataset ", dataset->name);
      if (slice.has_label()) {
        if (!dataset->labelled()) {
          return absl::InvalidArgumentError(
              absl::StrCat(slice_field, ".label: dataset ", dataset->name,
                           " has no labels"));
        }
        if (slice.label() < 0 ||
            slice.label() >= static_cast<int64_t>(dataset->class_names.size())) {
          return absl::OutOfRangeError(absl::StrCat(
              slice_field, ".label: class ", slice.label(),
              " out of range for dataset ", dataset->name, " with ",
              dataset->class_names.size(), " classes"));
        }
        pool = dataset->IndicesOfClass(slice.label());
        pool_name = absl::StrCat("class ", slice.label(), " of dataset ",
                                 dataset->name);
      } else {
        pool.resize(dataset->size());
        std::iota(pool.begin(), pool.end(), 0);
      }
      const int64_t count = slice.count() == 0 ? 1 : slice.count();
      if (count < 0 || count > max_images) {
        return absl::InvalidArgumentError(
            absl::StrCat(slice_field, ".count must be in [1, ", max_images,
                         "], got ", slice.count()));
      }
      const int64_t size = pool.size();
      // Compared without adding, so that a start near 2^63 cannot overflow.
      if (slice.start() < 0 || slice.start() > size - count) {
        return absl::OutOfRangeError(absl::StrCat(
            slice_field, ": ", count, " images from start ", slice.start(),
            " out of range for ", pool_name, " with ", size, " images"));
      }
      indices.assign(pool.begin() + slice.start(),
                     pool.begin() + slice.start() + count);
      return Gather(*dataset, std::move(indices));
    }
    case v1::ImageInput::SOURCE_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": give images or a dataset slice"));
}

ResolvedImages ClassImages(const core::Dataset& dataset, int64_t label,
                           int64_t count) {
  std::vector<int64_t> indices = dataset.IndicesOfClass(label);
  if (static_cast<int64_t>(indices.size()) > count) indices.resize(count);
  return Gather(dataset, std::move(indices));
}

v1::Dataset DatasetToProto(const core::Dataset& dataset) {
  v1::Dataset out;
  out.set_name(dataset.name);
  out.set_size(dataset.size());
  for (int d = 1; d < 4; ++d) out.add_image_shape(dataset.images.size(d));
  for (size_t c = 0; c < dataset.class_names.size(); ++c) {
    out.add_class_names(dataset.class_names[c]);
    out.add_class_counts(
        (dataset.labels == static_cast<int64_t>(c)).sum().item<int64_t>());
  }
  out.set_source(dataset.source);
  out.set_owner(dataset.owner);
  out.set_uploaded(dataset.uploaded);
  out.set_size_bytes(dataset.bytes());
  return out;
}

absl::StatusOr<v1::LayerActivations> ActivationsToProto(
    const core::LayerActivations& layer, const at::Tensor& images,
    bool overlay_png) {
  v1::LayerActivations out;
  out.set_layer(layer.layer);
  for (int64_t c : layer.channels) out.add_channels(c);
  *out.mutable_maps() = TensorToProto(layer.maps);
  for (size_t k = 0; k < layer.channels.size(); ++k) {
    v1::ChannelStats* stats = out.add_stats();
    stats->set_channel(layer.channels[k]);
    stats->set_mean(layer.mean[k].item<double>());
    stats->set_max(layer.max[k].item<double>());
    stats->set_fraction_active(layer.fraction_active[k].item<double>());
  }
  if (overlay_png && layer.maps.dim() == 4) {
    for (int64_t b = 0; b < layer.maps.size(0); ++b) {
      for (size_t k = 0; k < layer.channels.size(); ++k) {
        FEATVIZ_ASSIGN_OR_RETURN(
            std::string png,
            core::EncodePng(core::Overlay(images[b], layer.maps[b][k],
                                          layer.max[k].item<double>())));
        out.add_overlay_png(std::move(png));
      }
    }
  }
  return out;
}

absl::StatusOr<v1::AttributeResponse> AttributionToProto(
    const core::Attribution& attribution, const at::Tensor& images,
    bool gradcam_png) {
  v1::AttributeResponse out;
  out.set_layer(attribution.layer);
  const int64_t k = attribution.scores.size(0);
  std::vector<int64_t> order(k);
  std::iota(order.begin(), order.end(), 0);
  const float* score = attribution.scores.data_ptr<float>();
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return score[a] > score[b]; });
  for (int64_t c : order) {
    v1::ChannelScore* s = out.add_scores();
    s->set_channel(c);
    s->set_score(score[c]);
    if (attribution.linear_path) {
      s->set_direct_weight(attribution.direct_weights[c].item<double>());
    }
  }
  out.set_linear_path(attribution.linear_path);
  *out.mutable_per_image() = TensorToProto(attribution.per_image);
  out.set_images(attribution.per_image.size(0));
  if (attribution.gradcam.defined()) {
    *out.mutable_gradcam() = TensorToProto(attribution.gradcam);
    if (gradcam_png) {
      for (int64_t b = 0; b < attribution.gradcam.size(0); ++b) {
        FEATVIZ_ASSIGN_OR_RETURN(
            std::string png,
            core::EncodePng(core::Overlay(images[b], attribution.gradcam[b], 1)));
        out.add_gradcam_png(std::move(png));
      }
    }
  }
  return out;
}

}  // namespace featviz::server
