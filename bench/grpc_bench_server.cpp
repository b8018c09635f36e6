// grpc_bench_server --listen URI [--threads N]
//
// The Bench service (bench.fbs) in gRPC C++ with FlatBuffers messages, from `flatc --cpp --grpc`:
// gRPC's asynchronous server, its documented high-performance form, with one completion queue
// and one polling thread per core (N, default: the number of cores); handlers run on the polling
// threads, as flatpipe's run on its I/O thread. Every reply is a fresh Blob built with
// flatbuffers::grpc::MessageBuilder (straight into gRPC slices), every request goes through the
// Verifier.
//
// Prints `listening <uri>`, serves until standard input closes, then prints its peak RSS and
// thread count and exits.
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "bench.grpc.fb.h"
#include "bench_common.hpp"

namespace {

using flatpipe_bench::Blob;
using flatpipe_bench::StreamRequest;
template <class T>
using Msg = flatbuffers::grpc::Message<T>;
using Service = flatpipe_bench::Bench::AsyncService;

Msg<Blob> make_blob(std::uint64_t seq, const std::uint8_t* data, std::size_t size) {
  flatbuffers::grpc::MessageBuilder mb(static_cast<flatbuffers::uoffset_t>(bench::builder_size(size)));
  bench::build_blob(mb, seq, data, size);
  return mb.ReleaseMessage<Blob>();
}

const grpc::Status kBadMessage(grpc::StatusCode::INVALID_ARGUMENT, "bad message");

// One outstanding operation's tag: the call it belongs to.
class Call {
 public:
  virtual ~Call() = default;
  virtual void proceed(bool ok) = 0;
};

class UnaryCall final : public Call {
 public:
  UnaryCall(Service* svc, grpc::ServerCompletionQueue* cq) : svc_(svc), cq_(cq) {
    svc_->RequestUnary(&ctx_, &request_, &responder_, cq_, cq_, this);
  }
  void proceed(bool ok) override {
    if (!ok || finishing_) {
      delete this;
      return;
    }
    new UnaryCall(svc_, cq_);
    finishing_ = true;
    bench::BlobView v;
    if (!bench::verify_blob(request_.data(), request_.size(), v)) {
      responder_.FinishWithError(kBadMessage, this);
      return;
    }
    responder_.Finish(make_blob(v.seq, v.data, v.size), grpc::Status::OK, this);
  }

 private:
  Service* svc_;
  grpc::ServerCompletionQueue* cq_;
  grpc::ServerContext ctx_;
  Msg<Blob> request_;
  grpc::ServerAsyncResponseWriter<Msg<Blob>> responder_{&ctx_};
  bool finishing_ = false;
};

class ServerStreamCall final : public Call {
 public:
  ServerStreamCall(Service* svc, grpc::ServerCompletionQueue* cq) : svc_(svc), cq_(cq) {
    svc_->RequestServerStream(&ctx_, &request_, &writer_, cq_, cq_, this);
  }
  void proceed(bool ok) override {
    switch (state_) {
      case State::requested: {
        if (!ok) {
          delete this;
          return;
        }
        new ServerStreamCall(svc_, cq_);
        const StreamRequest* sr = nullptr;
        if (!bench::verify_stream_request(request_.data(), request_.size(), sr)) {
          state_ = State::finishing;
          writer_.Finish(kBadMessage, this);
          return;
        }
        count_ = sr->count();
        size_ = sr->size();
        until_ = bench::Clock::now() + std::chrono::milliseconds(sr->millis());
        state_ = State::writing;
        write_next();
        return;
      }
      case State::writing:
        if (!ok) {  // the caller went away
          state_ = State::finishing;
          writer_.Finish(grpc::Status::CANCELLED, this);
          return;
        }
        write_next();
        return;
      case State::finishing:
        delete this;
        return;
    }
  }

 private:
  enum class State { requested, writing, finishing };
  void write_next() {
    if (sent_ < count_ && bench::Clock::now() < until_) {
      writer_.Write(make_blob(sent_++, bench::pattern(), size_), this);
    } else {
      state_ = State::finishing;
      writer_.Finish(grpc::Status::OK, this);
    }
  }

  Service* svc_;
  grpc::ServerCompletionQueue* cq_;
  grpc::ServerContext ctx_;
  Msg<StreamRequest> request_;
  grpc::ServerAsyncWriter<Msg<Blob>> writer_{&ctx_};
  State state_ = State::requested;
  std::uint64_t count_ = 0, sent_ = 0;
  std::size_t size_ = 0;
  bench::Clock::time_point until_;
};

class ClientStreamCall final : public Call {
 public:
  ClientStreamCall(Service* svc, grpc::ServerCompletionQueue* cq) : svc_(svc), cq_(cq) {
    svc_->RequestClientStream(&ctx_, &reader_, cq_, cq_, this);
  }
  void proceed(bool ok) override {
    switch (state_) {
      case State::requested:
        if (!ok) {
          delete this;
          return;
        }
        new ClientStreamCall(svc_, cq_);
        state_ = State::reading;
        reader_.Read(&message_, this);
        return;
      case State::reading: {
        if (!ok) {  // the caller ended its stream
          state_ = State::finishing;
          reader_.Finish(make_blob(received_, nullptr, 0), grpc::Status::OK, this);
          return;
        }
        bench::BlobView v;
        if (!bench::verify_blob(message_.data(), message_.size(), v)) {
          state_ = State::finishing;
          reader_.FinishWithError(kBadMessage, this);
          return;
        }
        ++received_;
        reader_.Read(&message_, this);
        return;
      }
      case State::finishing:
        delete this;
        return;
    }
  }

 private:
  enum class State { requested, reading, finishing };
  Service* svc_;
  grpc::ServerCompletionQueue* cq_;
  grpc::ServerContext ctx_;
  grpc::ServerAsyncReader<Msg<Blob>, Msg<Blob>> reader_{&ctx_};
  Msg<Blob> message_;
  State state_ = State::requested;
  std::uint64_t received_ = 0;
};

class BidiCall final : public Call {
 public:
  BidiCall(Service* svc, grpc::ServerCompletionQueue* cq) : svc_(svc), cq_(cq) {
    svc_->RequestBidi(&ctx_, &stream_, cq_, cq_, this);
  }
  void proceed(bool ok) override {
    switch (state_) {
      case State::requested:
        if (!ok) {
          delete this;
          return;
        }
        new BidiCall(svc_, cq_);
        state_ = State::reading;
        stream_.Read(&message_, this);
        return;
      case State::reading: {
        if (!ok) {
          state_ = State::finishing;
          stream_.Finish(grpc::Status::OK, this);
          return;
        }
        bench::BlobView v;
        if (!bench::verify_blob(message_.data(), message_.size(), v)) {
          state_ = State::finishing;
          stream_.Finish(kBadMessage, this);
          return;
        }
        state_ = State::writing;
        stream_.Write(make_blob(v.seq, v.data, v.size), this);
        return;
      }
      case State::writing:
        if (!ok) {
          state_ = State::finishing;
          stream_.Finish(grpc::Status::CANCELLED, this);
          return;
        }
        state_ = State::reading;
        stream_.Read(&message_, this);
        return;
      case State::finishing:
        delete this;
        return;
    }
  }

 private:
  enum class State { requested, reading, writing, finishing };
  Service* svc_;
  grpc::ServerCompletionQueue* cq_;
  grpc::ServerContext ctx_;
  grpc::ServerAsyncReaderWriter<Msg<Blob>, Msg<Blob>> stream_{&ctx_};
  Msg<Blob> message_;
  State state_ = State::requested;
};

// tcp://HOST:PORT -> HOST:PORT; unix:///path stays (gRPC's own form).
std::string grpc_address(const std::string& uri) {
  if (uri.rfind("tcp://", 0) == 0) return uri.substr(6);
  return uri;
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen;
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--listen" && i + 1 < argc) {
      listen = argv[++i];
    } else if (arg == "--threads" && i + 1 < argc) {
      threads = static_cast<unsigned>(std::max(1, std::atoi(argv[++i])));
    } else {
      std::fprintf(stderr, "usage: grpc_bench_server --listen URI [--threads N]\n");
      return 2;
    }
  }
  if (listen.empty()) {
    std::fprintf(stderr, "usage: grpc_bench_server --listen URI [--threads N]\n");
    return 2;
  }
  const std::string transport = bench::transport_of(listen);
  if (transport == "unix") ::unlink(listen.substr(7).c_str());

  Service service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(grpc_address(listen), grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.SetMaxSendMessageSize(64 << 20);
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs;
  for (unsigned i = 0; i < threads; ++i) cqs.push_back(builder.AddCompletionQueue());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "grpc_bench_server: cannot listen on %s\n", listen.c_str());
    return 1;
  }

  // Requests waiting for calls, per queue: a few unary ones (calls arrive many at a time), one of
  // each stream kind; each call posts its successor as it starts.
  constexpr int kUnaryPosted = 8;
  for (auto& cq : cqs) {
    for (int i = 0; i < kUnaryPosted; ++i) new UnaryCall(&service, cq.get());
    new ServerStreamCall(&service, cq.get());
    new ClientStreamCall(&service, cq.get());
    new BidiCall(&service, cq.get());
  }
  std::vector<std::thread> pollers;
  for (auto& cq : cqs) {
    pollers.emplace_back([q = cq.get()] {
      void* tag = nullptr;
      bool ok = false;
      while (q->Next(&tag, &ok)) static_cast<Call*>(tag)->proceed(ok);
    });
  }

  const std::string bound = transport == "tcp" ? "tcp://" + grpc_address(listen).substr(0, grpc_address(listen).rfind(':')) +
                                                     ":" + std::to_string(port)
                                               : listen;
  std::printf("listening %s\n", bound.c_str());
  std::fflush(stdout);

  char buf[256];
  while (std::fread(buf, 1, sizeof buf, stdin) > 0) {
  }
  bench::ThreadWatermark watermark;
  watermark.sample();
  bench::emit_process("grpc", transport, "server", watermark);
  if (transport == "unix") ::unlink(listen.substr(7).c_str());
  // No orderly shutdown: the figures are printed, the process ends.
  std::_Exit(0);
}
