#include "flatpipe/rpc/server_call.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>

namespace flatpipe {

namespace {

Status on_io_thread_error(const char* what) {
  return Status(StatusCode::failed_precondition,
                std::string("blocking ") + what +
                    " called on the I/O thread would deadlock; use async_" + what +
                    " or run handlers on a pool (RuntimeOptions::handler_threads)");
}

}  // namespace

Status ServerCall::write(Buffer message) const {
  if (session_->on_io_thread()) return on_io_thread_error("write");
  detail::SyncSlot<Status> slot;
  session_->write(call_, std::move(message), [&slot](Status st) { slot.set(std::move(st)); });
  return slot.wait(session_->blocking_spin());
}

ReadResult ServerCall::read() const {
  if (session_->on_io_thread()) return on_io_thread_error("read");
  detail::SyncSlot<ReadResult> slot;
  session_->read(call_, [&slot](ReadResult r) { slot.set(std::move(r)); });
  return slot.wait(session_->blocking_spin());
}

Status MethodTable::add(MethodInfo method) {
  if (method.id == 0) {
    return Status(StatusCode::invalid_argument, "method id 0 is reserved (method '" + method.name + "')");
  }
  if (!method.handler) return Status(StatusCode::invalid_argument, "method '" + method.name + "' has no handler");
  auto [it, inserted] = methods_.try_emplace(method.id, std::move(method));
  if (!inserted) {
    return Status(StatusCode::already_exists, "methods '" + it->second.name + "' and '" + method.name +
                                                  "' share id " + std::to_string(it->first));
  }
  return {};
}

Status MethodTable::add_coroutine(std::uint32_t id, std::string name, CallKind kind, CoroutineHandler handler,
                                  StreamQos qos) {
  if (!handler) return Status(StatusCode::invalid_argument, "method '" + name + "' has no handler");
  return add({id, std::move(name), kind, [h = std::move(handler)](ServerCall call) {
                auto ex = call.session().io().get_executor();
                asio::co_spawn(
                    ex, [h, call]() -> asio::awaitable<void> { co_await h(call); },
                    [call](std::exception_ptr e) {
                      if (!e) return;
                      try {
                        std::rethrow_exception(e);
                      } catch (const std::exception& err) {
                        call.finish(Status(StatusCode::internal, std::string("handler threw: ") + err.what()));
                      } catch (...) {
                        call.finish(Status(StatusCode::internal, "handler threw an exception"));
                      }
                    });
              },
              qos});
}

Status MethodTable::add_unary(std::uint32_t id, std::string name,
                              std::function<Result<Buffer>(CallContext&, const Buffer&)> fn) {
  if (!fn) return Status(StatusCode::invalid_argument, "method '" + name + "' has no handler");
  return add({id, std::move(name), CallKind::unary,
              [fn = std::move(fn)](ServerCall call) { call.finish(fn(call.context(), call.request())); }});
}

const MethodInfo* MethodTable::find(std::uint32_t id) const noexcept {
  auto it = methods_.find(id);
  return it == methods_.end() ? nullptr : &it->second;
}

}  // namespace flatpipe
