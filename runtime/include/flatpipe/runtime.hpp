// Runtime: the threads and the transports that clients and servers share.
//
// By default a Runtime runs one I/O thread of its own and handlers run on it (they must not
// block; use the async_ or coroutine forms). With handler_threads > 0, handlers run on a pool of
// that size and may block. A user who already has an asio::io_context hands it in and runs it
// themselves; flatpipe then starts no I/O thread.
//
// Lifetime: a Runtime must outlive every Client and Server made with it. Its destructor stops
// and joins the threads it started; a borrowed io_context is left as it is.
#pragma once

#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include <asio/any_io_executor.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/thread_pool.hpp>

#include "flatpipe/transport/transport.hpp"

namespace flatpipe {

struct RuntimeOptions {
  unsigned io_threads = 1;       // ignored when the io_context is borrowed
  unsigned handler_threads = 0;  // 0: handlers run on the I/O thread
  // Busy polling: after its last handler, an I/O thread of the Runtime keeps polling for new work
  // (a reply, the next request) for this long before it sleeps in the kernel. A sleeping thread
  // costs a wakeup per message, which on virtual machines (an idle vCPU halts) is most of a
  // loopback round trip; polling costs CPU only after activity, at most this long each time the
  // thread goes idle. 0 disables it: the thread sleeps as soon as it has nothing to do. Ignored
  // when the io_context is borrowed (its owner runs it) and on the io_uring backend
  // (FLATPIPE_IO_URING, docs/runtime.md). Blocking calls (Client::call, a stream's
  // read() or write(), ServerCall's on a handler pool) poll for their outcome as long.
  std::chrono::microseconds idle_spin{50};
};

class Runtime {
 public:
  Runtime() : Runtime(RuntimeOptions{}) {}
  explicit Runtime(RuntimeOptions options);
  // Borrows `io`: the caller runs it (io.run()) for as long as flatpipe is used.
  explicit Runtime(asio::io_context& io, RuntimeOptions options = {});
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  asio::io_context& io() noexcept { return *io_; }
  TransportRegistry& transports() noexcept { return transports_; }
  // Where handlers run; a null executor means the I/O thread.
  asio::any_io_executor handler_executor() const;
  // RuntimeOptions::idle_spin as given (also for a borrowed io_context: blocking calls use it).
  std::chrono::microseconds idle_spin() const noexcept { return idle_spin_; }
  // Threads this Runtime started (I/O and handler pool).
  std::size_t thread_count() const noexcept;

 private:
  std::unique_ptr<asio::io_context> owned_io_;
  asio::io_context* io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::vector<std::thread> io_threads_;
  std::unique_ptr<asio::thread_pool> pool_;
  unsigned pool_size_ = 0;
  std::chrono::microseconds idle_spin_;
  TransportRegistry transports_;
};

}  // namespace flatpipe
