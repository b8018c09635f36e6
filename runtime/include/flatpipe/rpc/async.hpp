// Glue between the Session's callback entry points and asio completion tokens, and the helper
// that turns them into blocking calls.
//
// async_op<Signature>(executor, token, start): `start` receives a UniqueFunction to call exactly
// once with the outcome; the user's handler then runs on its associated executor (for a
// coroutine, the coroutine's; for a plain callback, `executor`), dispatched inline when already
// there. Any asio token works: a callback, asio::use_awaitable, asio::use_future, asio::deferred.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>

#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/dispatch.hpp>
#include <asio/post.hpp>
#include <asio/execution/outstanding_work.hpp>
#include <asio/io_context.hpp>
#include <asio/prefer.hpp>

#include "flatpipe/util/spin.hpp"
#include "flatpipe/util/unique_function.hpp"

namespace flatpipe::detail {

template <class Signature>
struct completion_arg;
template <class Arg>
struct completion_arg<void(Arg)> {
  using type = Arg;
};

// An operation that completes while its own initiation is still running (a stream write with
// credit to spare) runs its handler inline only up to kMaxInlineDepth nested completions on this
// thread, then posts it: a callback that starts the next operation cannot grow the stack without
// bound, and a burst of writes does not pay a scheduler round per message. The depth also sets
// how many messages a writer on the I/O thread queues before the connection's posted flush runs:
// 64, the default stream credit, lets a whole window of small messages leave in one gathered
// write (16 cost a quarter of the 1 KiB stream rate in system calls and TCP segments).
inline thread_local int initiation_depth = 0;
inline thread_local int inline_depth = 0;
inline constexpr int kMaxInlineDepth = 64;

// True when `ex` is an io_context's executor (held directly or in an any_io_executor) and the
// calling thread runs that io_context: where asio::dispatch would run a handler inline anyway.
template <class Executor>
bool runs_here(const Executor& ex) noexcept {
  using Plain = asio::io_context::basic_executor_type<std::allocator<void>, 0>;
  using Tracked = asio::io_context::basic_executor_type<std::allocator<void>, 4>;
  if constexpr (std::is_same_v<Executor, asio::any_io_executor>) {
    if (const auto* t = ex.template target<Tracked>()) return t->running_in_this_thread();
    if (const auto* p = ex.template target<Plain>()) return p->running_in_this_thread();
    return false;
  } else if constexpr (std::is_same_v<Executor, Plain> || std::is_same_v<Executor, Tracked>) {
    return ex.running_in_this_thread();
  } else {
    return false;
  }
}

template <class Signature, class Executor, class Token, class Start>
auto async_op(const Executor& executor, Token&& token, Start&& start) {
  using Arg = typename completion_arg<Signature>::type;
  return asio::async_initiate<Token, Signature>(
      [executor](auto handler, std::decay_t<Start> start_fn) {
        // The handler's executor, tracking outstanding work so that its io_context does not run
        // out of work while the operation is pending. (An executor_work_guard would hold the
        // executor twice, and the completion would no longer fit UniqueFunction's inline room.)
        auto target = asio::prefer(asio::get_associated_executor(handler, executor),
                                   asio::execution::outstanding_work.tracked);
        ++initiation_depth;
        start_fn(UniqueFunction<void(Arg)>(
            [handler = std::move(handler), target = std::move(target)](Arg outcome) mutable {
              auto invoke = [handler = std::move(handler), outcome = std::move(outcome)]() mutable {
                std::move(handler)(std::move(outcome));
              };
              if (initiation_depth > 0 && inline_depth >= kMaxInlineDepth) {
                asio::post(target, std::move(invoke));
              } else {
                ++inline_depth;
                // On the handler's own I/O thread (a coroutine resumed by the reply that its
                // connection just read) call it as dispatch would, without the type-erased
                // executor copies and work-count updates dispatch makes on the way.
                if (runs_here(target)) {
                  invoke();
                } else {
                  asio::dispatch(target, std::move(invoke));
                }
                --inline_depth;
              }
            }));
        --initiation_depth;
      },
      token, std::forward<Start>(start));
}

// A one-shot slot a blocking caller waits on. set() from any thread, once; wait() from one.
template <class T>
class SyncSlot {
 public:
  void set(T value) {
    // Notify under the lock: the waiter may destroy the slot as soon as it sees the value (a
    // waiter that saw ready_ while spinning takes the lock before it returns, so it cannot).
    std::lock_guard lk(mu_);
    value_.emplace(std::move(value));
    ready_.store(true, std::memory_order_release);
    cv_.notify_one();
    woke_waiter = true;
  }
  // Blocks until set(). Polls for up to `spin` first (RuntimeOptions::idle_spin): a value that
  // comes within it is taken without the sleep and wakeup of the condition variable.
  T wait(std::chrono::nanoseconds spin = std::chrono::nanoseconds::zero()) {
    detail::spin_until([this] { return ready_.load(std::memory_order_acquire); }, spin, /*offer_cpu=*/true);
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return value_.has_value(); });
    return std::move(*value_);
  }
  template <class TimePoint>
  std::optional<T> wait_until(const TimePoint& at) {
    std::unique_lock lk(mu_);
    if (!cv_.wait_until(lk, at, [&] { return value_.has_value(); })) return std::nullopt;
    return std::move(*value_);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<T> value_;
  std::atomic<bool> ready_{false};
};

}  // namespace flatpipe::detail
