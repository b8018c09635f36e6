// Status codes, Status and Result<T>: how every flatpipe operation reports failure.
//
// No exception crosses the public API. An operation that can fail returns a Status (code plus
// readable text) or a Result<T> (a T or a non-OK Status). The codes are the canonical set a gRPC
// user knows, with gRPC's numbers, and they travel on the wire unchanged in full mode
// (docs/protocol.md, "Status codes").
#pragma once

#include <cassert>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

namespace flatpipe {

enum class StatusCode : std::uint8_t {
  ok = 0,
  cancelled = 1,
  unknown = 2,
  invalid_argument = 3,
  deadline_exceeded = 4,
  not_found = 5,
  already_exists = 6,
  permission_denied = 7,
  resource_exhausted = 8,
  failed_precondition = 9,
  aborted = 10,
  out_of_range = 11,
  unimplemented = 12,
  internal = 13,
  unavailable = 14,
  data_loss = 15,
  unauthenticated = 16,
};

inline constexpr std::uint8_t kMaxStatusCode = 16;

// "UNIMPLEMENTED", "DEADLINE_EXCEEDED", ...; "INVALID_STATUS" for a value outside the set.
const char* status_name(StatusCode code) noexcept;
// The inverse of status_name; nullopt when `name` is not one of the canonical names.
std::optional<StatusCode> status_from_name(std::string_view name) noexcept;
// A byte from the wire mapped to a code; out-of-range values become UNKNOWN.
StatusCode status_from_wire(std::uint8_t value) noexcept;

const std::error_category& status_category() noexcept;
std::error_code make_error_code(StatusCode code) noexcept;

// A status code and a human-readable message. Default-constructed: OK with no message.
class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  bool ok() const noexcept { return code_ == StatusCode::ok; }
  StatusCode code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }
  std::error_code error_code() const noexcept { return make_error_code(code_); }

  // "OK", or "NAME: message" (the form carried in Error frames to netpipe peers).
  std::string to_string() const;

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  StatusCode code_ = StatusCode::ok;
  std::string message_;
};

// Either a T or a non-OK Status. Constructing a Result from an OK Status is a programming error
// (asserted); use the T constructor instead.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT(implicit)
  Result(Status status) : v_(std::in_place_index<1>, std::move(status)) {  // NOLINT(implicit)
    assert(!std::get<1>(v_).ok() && "Result built from an OK status");
  }
  Result(StatusCode code, std::string message) : Result(Status(code, std::move(message))) {}

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  T& value() & { assert(ok()); return std::get<0>(v_); }
  const T& value() const& { assert(ok()); return std::get<0>(v_); }
  T&& value() && { assert(ok()); return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  // The failure; an OK Status when the Result holds a value.
  Status status() const { return ok() ? Status() : std::get<1>(v_); }
  StatusCode code() const noexcept { return ok() ? StatusCode::ok : std::get<1>(v_).code(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace flatpipe

template <>
struct std::is_error_code_enum<flatpipe::StatusCode> : std::true_type {};
