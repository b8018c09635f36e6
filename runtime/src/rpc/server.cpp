#include "flatpipe/rpc/server.hpp"

#include <condition_variable>

namespace flatpipe {

Server::Server(Runtime& runtime, ServerOptions options) : state_(std::make_shared<State>()) {
  state_->runtime = &runtime;
  state_->options = std::move(options);
}

Server::~Server() { shutdown(std::chrono::milliseconds(0)); }

namespace {
Status too_late() { return Status(StatusCode::failed_precondition, "add methods before the server listens"); }
}  // namespace

Status Server::add(MethodInfo method) {
  std::lock_guard lk(state_->mu);
  if (state_->listening) return too_late();
  return state_->methods->add(std::move(method));
}

Status Server::add_unary(std::uint32_t id, std::string name,
                         std::function<Result<Buffer>(CallContext&, const Buffer&)> fn) {
  std::lock_guard lk(state_->mu);
  if (state_->listening) return too_late();
  return state_->methods->add_unary(id, std::move(name), std::move(fn));
}

Status Server::add_coroutine(std::uint32_t id, std::string name, CallKind kind, CoroutineHandler handler,
                             StreamQos qos) {
  std::lock_guard lk(state_->mu);
  if (state_->listening) return too_late();
  return state_->methods->add_coroutine(id, std::move(name), kind, std::move(handler), qos);
}

void Server::on_connection(std::function<void(Client)> fn) {
  std::lock_guard lk(state_->mu);
  state_->on_connection = std::move(fn);
}

Result<std::string> Server::listen(std::string_view uri) {
  auto ep = Endpoint::parse(uri);
  if (!ep) return ep.status();
  Runtime& runtime = *state_->runtime;
  Transport* transport = runtime.transports().find(ep->scheme);
  if (!transport) {
    std::string known;
    for (const auto& s : runtime.transports().schemes()) known += (known.empty() ? "" : ", ") + s;
    return Status(StatusCode::invalid_argument, "no transport for scheme '" + ep->scheme + "' (known: " + known + ")");
  }
  {
    std::lock_guard lk(state_->mu);
    if (state_->stopping) return Status(StatusCode::failed_precondition, "server is shut down");
    state_->listening = true;
  }
  TransportContext ctx{runtime.io(), {}};
  ctx.limits.max_frame = state_->options.session.max_frame;
  std::weak_ptr<State> weak = state_;
  auto listener = transport->listen(*ep, ctx, [weak](std::shared_ptr<FrameConnection> conn) {
    if (auto state = weak.lock()) {
      accept(state, std::move(conn));
    } else {
      conn->close(Status(StatusCode::unavailable, "server is gone"), false);
    }
  });
  if (!listener) return listener.status();
  std::string local = (*listener)->local_endpoint();
  std::lock_guard lk(state_->mu);
  state_->listeners.push_back(std::move(*listener));
  return local;
}

void Server::accept(const std::shared_ptr<State>& state, std::shared_ptr<FrameConnection> conn) {
  std::shared_ptr<Session> session;
  std::function<void(Client)> on_connection;
  {
    std::lock_guard lk(state->mu);
    if (state->stopping) {
      conn->close(Status(StatusCode::unavailable, "server is shutting down"), false);
      return;
    }
    session = std::make_shared<Session>(Session::Role::acceptor, std::move(conn), state->runtime->io(),
                                        state->options.session, state->methods,
                                        state->runtime->handler_executor(), state->runtime->idle_spin());
    state->sessions.insert(session);
    on_connection = state->on_connection;
  }
  std::weak_ptr<State> weak_state = state;
  std::weak_ptr<Session> weak_session = session;
  session->set_on_closed([weak_state, weak_session](const Status&) {
    auto st = weak_state.lock();
    auto s = weak_session.lock();
    if (!st || !s) return;
    std::lock_guard lk(st->mu);
    st->sessions.erase(s);
  });
  session->start();
  if (on_connection) on_connection(Client::attach(session));
}

void Server::shutdown(std::chrono::milliseconds grace) {
  std::vector<std::shared_ptr<Listener>> listeners;
  std::set<std::shared_ptr<Session>> sessions;
  {
    std::lock_guard lk(state_->mu);
    state_->stopping = true;
    listeners.swap(state_->listeners);
    sessions = state_->sessions;
  }
  for (auto& l : listeners) l->close();

  const bool may_block = !state_->runtime->io().get_executor().running_in_this_thread();
  if (grace.count() > 0 && !sessions.empty()) {
    struct Drain {
      std::mutex mu;
      std::condition_variable cv;
      std::size_t left = 0;
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
  // Wait (bounded) until the connections reported closed, so no handler starts after we return.
  const auto until = Clock::now() + std::chrono::seconds(2);
  while (Clock::now() < until) {
    bool any_open = false;
    for (auto& s : sessions) any_open = any_open || s->is_open();
    if (!any_open) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::lock_guard lk(state_->mu);
  state_->sessions.clear();
}

std::size_t Server::connection_count() const {
  std::lock_guard lk(state_->mu);
  return state_->sessions.size();
}

std::vector<std::string> Server::endpoints() const {
  std::lock_guard lk(state_->mu);
  std::vector<std::string> out;
  for (const auto& l : state_->listeners) out.push_back(l->local_endpoint());
  return out;
}

SessionStats Server::stats() const {
  std::lock_guard lk(state_->mu);
  SessionStats total;
  for (const auto& s : state_->sessions) {
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
