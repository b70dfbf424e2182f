// Example digits for machines without the MNIST files: each digit drawn from
// a TrueType font (Debian's DejaVu Sans by default) with stb_truetype, then
// randomly rotated, scaled, sheared, shifted and thickened, and framed like
// MNIST (the digit in a 20x20 box centred in 28x28, white on black). They
// are stand-ins for real handwriting so the circuit tools have inputs to run
// on; the demo says when it uses them.
#ifndef FEATVIZ_CORE_DIGITS_H_
#define FEATVIZ_CORE_DIGITS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "core/dataset.h"

namespace featviz::core {

inline constexpr char kDefaultDigitFont[] =
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

// `per_class` images of each digit 0-9 (labelled, class-major order), the
// same for the same seed. NotFound when the font file is missing;
// InvalidArgument when it is not a TrueType font with digit glyphs.
absl::StatusOr<DatasetPtr> DrawDigits(int64_t per_class, uint64_t seed,
                                      const std::string& font_path =
                                          kDefaultDigitFont);

}  // namespace featviz::core

#endif  // FEATVIZ_CORE_DIGITS_H_
