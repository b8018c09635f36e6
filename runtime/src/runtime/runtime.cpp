#include "flatpipe/runtime.hpp"

namespace flatpipe {

Runtime::Runtime(RuntimeOptions options)
    : owned_io_(std::make_unique<asio::io_context>(static_cast<int>(std::max(1u, options.io_threads)))),
      io_(owned_io_.get()),
      transports_(TransportRegistry::with_defaults()) {
  work_.emplace(io_->get_executor());
  for (unsigned i = 0; i < std::max(1u, options.io_threads); ++i) {
    io_threads_.emplace_back([io = io_] { io->run(); });
  }
  if (options.handler_threads > 0) {
    pool_ = std::make_unique<asio::thread_pool>(options.handler_threads);
    pool_size_ = options.handler_threads;
  }
}

Runtime::Runtime(asio::io_context& io, RuntimeOptions options)
    : io_(&io), transports_(TransportRegistry::with_defaults()) {
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
    // Runtime), so connections close and the objects they hold are released.
    owned_io_->restart();
    for (int round = 0; round < 64 && owned_io_->poll() > 0; ++round) {
    }
  }
}

asio::any_io_executor Runtime::handler_executor() const {
  if (pool_) return pool_->get_executor();
  return {};
}

std::size_t Runtime::thread_count() const noexcept { return io_threads_.size() + pool_size_; }

}  // namespace flatpipe
