#include "flatpipe/rpc/server.hpp"

#include <condition_variable>

namespace flatpipe {

Server::Server(Runtime& runtime, ServerOptions options) : runtime_(runtime), options_(std::move(options)) {}

Server::~Server() { shutdown(std::chrono::milliseconds(0)); }

Status Server::add(MethodInfo method) {
  std::lock_guard lk(mu_);
  if (listening_) return Status(StatusCode::failed_precondition, "add methods before the server listens");
  return methods_->add(std::move(method));
}

Status Server::add_unary(std::uint32_t id, std::string name,
                         std::function<Result<Buffer>(CallContext&, const Buffer&)> fn) {
  std::lock_guard lk(mu_);
  if (listening_) return Status(StatusCode::failed_precondition, "add methods before the server listens");
  return methods_->add_unary(id, std::move(name), std::move(fn));
}

Status Server::add_coroutine(std::uint32_t id, std::string name, CallKind kind, CoroutineHandler handler) {
  std::lock_guard lk(mu_);
  if (listening_) return Status(StatusCode::failed_precondition, "add methods before the server listens");
  return methods_->add_coroutine(id, std::move(name), kind, std::move(handler));
}

void Server::on_connection(std::function<void(Client)> fn) {
  std::lock_guard lk(mu_);
  on_connection_ = std::move(fn);
}

Result<std::string> Server::listen(std::string_view uri) {
  auto ep = Endpoint::parse(uri);
  if (!ep) return ep.status();
  Transport* transport = runtime_.transports().find(ep->scheme);
  if (!transport) {
    return Status(StatusCode::invalid_argument, "no transport for scheme '" + ep->scheme + "'");
  }
  {
    std::lock_guard lk(mu_);
    if (stopping_) return Status(StatusCode::failed_precondition, "server is shut down");
    listening_ = true;
  }
  TransportContext ctx{runtime_.io(), {}};
  ctx.limits.max_frame = options_.session.max_frame;
  std::weak_ptr<int> alive = alive_;
  auto listener = transport->listen(*ep, ctx, [this, alive](std::shared_ptr<FrameConnection> conn) {
    if (auto a = alive.lock()) accept(std::move(conn));
    else conn->close(Status(StatusCode::unavailable, "server is gone"), false);
  });
  if (!listener) return listener.status();
  std::string local = (*listener)->local_endpoint();
  std::lock_guard lk(mu_);
  listeners_.push_back(std::move(*listener));
  return local;
}

void Server::accept(std::shared_ptr<FrameConnection> conn) {
  std::shared_ptr<Session> session;
  std::function<void(Client)> on_connection;
  {
    std::lock_guard lk(mu_);
    if (stopping_) {
      conn->close(Status(StatusCode::unavailable, "server is shutting down"), false);
      return;
    }
    session = std::make_shared<Session>(Session::Role::acceptor, std::move(conn), runtime_.io(), options_.session,
                                        methods_, runtime_.handler_executor());
    sessions_.insert(session);
    on_connection = on_connection_;
  }
  std::weak_ptr<int> alive = alive_;
  std::weak_ptr<Session> weak = session;
  session->set_on_closed([this, alive, weak](const Status&) {
    auto a = alive.lock();
    auto s = weak.lock();
    if (!a || !s) return;
    std::lock_guard lk(mu_);
    sessions_.erase(s);
  });
  session->start();
  if (on_connection) on_connection(Client::attach(session));
}

void Server::shutdown(std::chrono::milliseconds grace) {
  std::vector<std::shared_ptr<Listener>> listeners;
  std::set<std::shared_ptr<Session>> sessions;
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
    listeners.swap(listeners_);
    sessions = sessions_;
  }
  for (auto& l : listeners) l->close();

  const bool may_block = !runtime_.io().get_executor().running_in_this_thread();
  if (grace.count() > 0 && !sessions.empty()) {
    struct Drain {
      std::mutex mu;
      std::condition_variable cv;
      std::size_t left;
    };
    auto drain = std::make_shared<Drain>();
    drain->left = sessions.size();
    for (auto& s : sessions) {
      s->drain([drain] {
        std::lock_guard lk(drain->mu);
        if (--drain->left == 0) drain->cv.notify_all();
      });
    }
    if (may_block) {
      std::unique_lock lk(drain->mu);
      drain->cv.wait_for(lk, grace, [&] { return drain->left == 0; });
    }
  }
  for (auto& s : sessions) s->close(Status(StatusCode::unavailable, "server shut down"));
  if (!may_block) return;
  // Wait (bounded) until the connections reported closed, so nothing runs after we return.
  const auto until = Clock::now() + std::chrono::seconds(2);
  while (Clock::now() < until) {
    bool any_open = false;
    for (auto& s : sessions) any_open = any_open || s->is_open();
    if (!any_open) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::lock_guard lk(mu_);
  sessions_.clear();
}

std::size_t Server::connection_count() const {
  std::lock_guard lk(mu_);
  return sessions_.size();
}

std::vector<std::string> Server::endpoints() const {
  std::lock_guard lk(mu_);
  std::vector<std::string> out;
  for (const auto& l : listeners_) out.push_back(l->local_endpoint());
  return out;
}

SessionStats Server::stats() const {
  std::lock_guard lk(mu_);
  SessionStats total;
  for (const auto& s : sessions_) {
    const SessionStats one = s->stats();
    total.frames_received += one.frames_received;
    total.frames_ignored += one.frames_ignored;
    total.calls_opened += one.calls_opened;
    total.calls_accepted += one.calls_accepted;
    total.messages_dropped_latest += one.messages_dropped_latest;
  }
  return total;
}

}  // namespace flatpipe
