#include "flatpipe/runtime.hpp"

#include <chrono>
#include <stdexcept>
#include <string>
#include <system_error>

#include <asio/steady_timer.hpp>

namespace flatpipe {

namespace {

// Built with FLATPIPE_IO_URING, every asio object needs an io_uring instance, which a kernel or
// container may refuse (Docker's default seccomp profile, kernel.io_uring_disabled): fail here,
// with the reason, rather than at the first connection with asio's bare system_error.
void check_io_backend(asio::io_context& io) {
#if defined(ASIO_HAS_IO_URING_AS_DEFAULT)
  try {
    asio::steady_timer probe(io);  // creates asio's io_uring service (and its ring) for `io`
  } catch (const std::system_error& e) {
    throw std::runtime_error(std::string("flatpipe was built with FLATPIPE_IO_URING=ON but io_uring is not available "
                                         "here (") +
                             e.what() + "); rebuild with -DFLATPIPE_IO_URING=OFF");
  }
#else
  (void)io;
#endif
}

// An I/O thread's loop: io.run(), except that after the last ready handler the thread polls for
// up to `spin` (RuntimeOptions::idle_spin) before it blocks in the kernel again. Between polls it
// offers its CPU to other runnable threads (sched_yield), so that polling never keeps the thread
// it waits for (the peer, a caller to be woken) off a CPU. Returns when `io` is stopped; a
// handler's exception propagates, as from run().
//
// Not on asio's io_uring backend: there a socket read completes through task work that the kernel
// runs when the thread next enters it. Polling, the thread entered the kernel about once per call
// (strace: one io_uring_enter per call, almost no sched_yield), and round trips took 104 us
// instead of 33. That backend waits in io_uring_enter, which takes the data with the wakeup.
void run_io_thread(asio::io_context& io, std::chrono::microseconds spin) {
#if defined(ASIO_HAS_IO_URING_AS_DEFAULT)
  spin = std::chrono::microseconds(0);
#endif
  if (spin.count() <= 0) {
    io.run();
    return;
  }
  using clock = std::chrono::steady_clock;
  while (io.run_one() > 0) {
    auto last_work = clock::now();
    for (;;) {
      if (io.poll() > 0) {
        last_work = clock::now();
      } else if (io.stopped() || clock::now() - last_work >= spin) {
        break;
      } else {
        std::this_thread::yield();
      }
    }
  }
}

}  // namespace

Runtime::Runtime(RuntimeOptions options)
    : owned_io_(std::make_unique<asio::io_context>(static_cast<int>(std::max(1u, options.io_threads)))),
      io_(owned_io_.get()),
      idle_spin_(options.idle_spin),
      transports_(TransportRegistry::with_defaults()) {
  check_io_backend(*io_);
  work_.emplace(io_->get_executor());
  for (unsigned i = 0; i < std::max(1u, options.io_threads); ++i) {
    io_threads_.emplace_back([io = io_, spin = options.idle_spin] { run_io_thread(*io, spin); });
  }
  if (options.handler_threads > 0) {
    pool_ = std::make_unique<asio::thread_pool>(options.handler_threads);
    pool_size_ = options.handler_threads;
  }
}

Runtime::Runtime(asio::io_context& io, RuntimeOptions options)
    : io_(&io), idle_spin_(options.idle_spin), transports_(TransportRegistry::with_defaults()) {
  check_io_backend(io);
  if (options.handler_threads > 0) {
    pool_ = std::make_unique<asio::thread_pool>(options.handler_threads);
    pool_size_ = options.handler_threads;
  }
}

Runtime::~Runtime() {
  if (pool_) pool_->join();
  work_.reset();
  if (owned_io_) {
    owned_io_->stop();
    for (auto& t : io_threads_) t.join();
    // Run what was queued before the stop (e.g. the close of a Client dropped just before the
    // Runtime), so connections close and the objects they hold are released. A closed socket's
    // pending read may complete a moment later rather than at once (asio's io_uring backend
    // cancels it asynchronously; its shutdown would drop it without destroying the handler, and
    // with it the connection): wait briefly for what is still outstanding.
    owned_io_->restart();
    for (int round = 0; round < 64; ++round) {
      std::size_t ran = owned_io_->poll();
      if (ran == 0 && !owned_io_->stopped()) ran = owned_io_->run_one_for(std::chrono::milliseconds(20));
      if (ran == 0) break;
    }
  }
}

asio::any_io_executor Runtime::handler_executor() const {
  if (pool_) return pool_->get_executor();
  return {};
}

std::size_t Runtime::thread_count() const noexcept { return io_threads_.size() + pool_size_; }

}  // namespace flatpipe
