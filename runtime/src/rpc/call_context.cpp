#include "flatpipe/rpc/call.hpp"

namespace flatpipe {

void CallContext::on_cancel(std::function<void()> fn) {
  {
    std::lock_guard lk(mu_);
    if (!cancelled_.load(std::memory_order_acquire)) {
      touched_.store(true, std::memory_order_release);
      on_cancel_.push_back(std::move(fn));
      return;
    }
  }
  fn();
}

void CallContext::cancel() {
  std::vector<std::function<void()>> callbacks;
  {
    std::lock_guard lk(mu_);
    if (cancelled_.exchange(true, std::memory_order_acq_rel)) return;
    callbacks.swap(on_cancel_);
  }
  for (auto& fn : callbacks) fn();
}

std::optional<std::string_view> CallContext::metadata_value(std::string_view key) const noexcept {
  for (const auto& [k, v] : metadata_) {
    if (k == key) return std::string_view(v);
  }
  return std::nullopt;
}

void CallContext::add_trailing_metadata(std::string key, std::string value) {
  std::lock_guard lk(mu_);
  touched_.store(true, std::memory_order_release);
  trailing_.emplace_back(std::move(key), std::move(value));
}

Metadata CallContext::take_trailing_metadata() {
  // Trailing metadata is added before the call finishes (the handler's thread, which finishes
  // it); a registration racing with the finish is dropped either way (see on_cancel).
  if (!touched_.load(std::memory_order_acquire)) return {};
  std::lock_guard lk(mu_);
  on_cancel_.clear();  // the call is ending normally: registrations are dropped
  return std::move(trailing_);
}

}  // namespace flatpipe
