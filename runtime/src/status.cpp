#include "flatpipe/status.hpp"

#include <array>

namespace flatpipe {
namespace {

constexpr std::array<const char*, kMaxStatusCode + 1> kNames = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

class StatusCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "flatpipe"; }
  std::string message(int value) const override {
    if (value < 0 || value > kMaxStatusCode) return "invalid flatpipe status";
    return kNames[static_cast<std::size_t>(value)];
  }
};

}  // namespace

const char* status_name(StatusCode code) noexcept {
  const auto v = static_cast<std::size_t>(code);
  return v < kNames.size() ? kNames[v] : "INVALID_STATUS";
}

std::optional<StatusCode> status_from_name(std::string_view name) noexcept {
  for (std::size_t i = 0; i < kNames.size(); ++i) {
    if (name == kNames[i]) return static_cast<StatusCode>(i);
  }
  return std::nullopt;
}

StatusCode status_from_wire(std::uint8_t value) noexcept {
  return value <= kMaxStatusCode ? static_cast<StatusCode>(value) : StatusCode::unknown;
}

const std::error_category& status_category() noexcept {
  static const StatusCategory category;
  return category;
}

std::error_code make_error_code(StatusCode code) noexcept {
  return {static_cast<int>(code), status_category()};
}

std::string Status::to_string() const {
  std::string out = status_name(code_);
  if (!message_.empty()) {
    out += ": ";
    out += message_;
  }
  return out;
}

}  // namespace flatpipe
