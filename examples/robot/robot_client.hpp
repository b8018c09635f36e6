// run_robot_client(): what robot_client and robot_demo do against a robot.
//
// Calls GetPose (unary, blocking, at 20 Hz on the calling thread) while, on the runtime's I/O
// thread, coroutines read the IMU stream at 200 Hz and lidar scans at 10 Hz (server streaming),
// upload a 2048 x 2048 map in 64 KiB row blocks at 100/s (client streaming) and drive teleop at 50 Hz
// (bidi). Then prints one line per stream: messages, rate, latency p50/p99, status.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <asio/co_spawn.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/use_future.hpp>

#include "robot_flatpipe.hpp"
#include "robot_service.hpp"

namespace robot_example {

struct StreamReport {
  StreamReport(std::string name_, std::string kind_) : name(std::move(name_)), kind(std::move(kind_)) {}

  std::string name;
  std::string kind;
  std::uint64_t messages = 0;
  double seconds = 0;
  std::vector<double> latency_us;            // measured here
  std::optional<std::pair<double, double>> remote_p50_p99;  // measured by the robot
  flatpipe::Status status;
};

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
inline double us_since(std::uint64_t stamp_ns) { return static_cast<double>(now_ns() - stamp_ns) / 1e3; }

// Reads a sensor stream to its end. Latency: the sample's stamp to its arrival here.
template <class T>
asio::awaitable<void> read_sensor(flatpipe::ClientReader<T> reader, StreamReport& report) {
  const auto t0 = Clock::now();
  for (;;) {
    auto m = co_await reader.async_read(asio::use_awaitable);
    if (!m) {
      report.status = m.status();
      break;
    }
    if (!*m) {
      report.status = co_await reader.async_finish(asio::use_awaitable);
      break;
    }
    report.latency_us.push_back(us_since((**m)->stamp_ns()));
    ++report.messages;
  }
  report.seconds = seconds_since(t0);
}

// Uploads a map at 100 chunks/s (so that it shares the link with the sensor streams instead of
// swamping them). Latency: measured by the robot (MapAck).
inline asio::awaitable<void> upload_map(robot::Robot::Client stub, flatpipe::CallOptions options,
                                        StreamReport& report) {
  constexpr std::uint32_t kWidth = 2048, kHeight = 2048, kRowsPerChunk = 32;
  const auto t0 = Clock::now();
  asio::steady_timer timer(co_await asio::this_coro::executor);
  auto next = t0;
  auto up = stub.UploadMap(options);
  if (!up) {
    report.status = up.status();
    co_return;
  }
  for (std::uint32_t row = 0, seq = 0; row < kHeight; row += kRowsPerChunk, ++seq) {
    auto b = up->builder();  // in the connection's memory: no copy on shm://
    std::int8_t* cells = nullptr;
    auto cells_off = b.CreateUninitializedVector(std::size_t{kWidth} * kRowsPerChunk, &cells);
    // Free space with a wall every 256 cells each way.
    for (std::uint32_t r = 0; r < kRowsPerChunk; ++r) {
      std::int8_t* line = cells + std::size_t{r} * kWidth;
      std::memset(line, (row + r) % 256 == 0 ? 100 : 0, kWidth);
      for (std::uint32_t x = 0; x < kWidth; x += 256) line[x] = 100;
    }
    b.Finish(robot::CreateMapChunk(b, now_ns(), seq, kWidth, kHeight, 0.05f, row, cells_off));
    if (auto st = co_await up->async_write(std::move(b), asio::use_awaitable); !st.ok()) {
      report.status = st;
      report.seconds = seconds_since(t0);
      co_return;
    }
    ++report.messages;
    next += std::chrono::milliseconds(10);
    timer.expires_at(next);
    co_await timer.async_wait(asio::use_awaitable);
  }
  up->write_done();
  auto ack = co_await up->async_finish(asio::use_awaitable);
  report.seconds = seconds_since(t0);
  if (!ack) {
    report.status = ack.status();
    co_return;
  }
  if ((*ack)->chunks() != report.messages) {
    report.status = flatpipe::Status(flatpipe::StatusCode::data_loss,
                                     "the robot acknowledged " + std::to_string((*ack)->chunks()) + " of " +
                                         std::to_string(report.messages) + " chunks");
    co_return;
  }
  report.remote_p50_p99 = {(*ack)->latency_p50_us(), (*ack)->latency_p99_us()};
}

// Drives for `seconds` at 50 Hz, one state back per command, then stops the robot.
// Latency: command sent to its state received (round trip).
inline asio::awaitable<void> drive(robot::Robot::Client stub, double seconds, flatpipe::CallOptions options,
                                   StreamReport& report) {
  const auto t0 = Clock::now();
  auto tele = stub.Teleop(options);
  if (!tele) {
    report.status = tele.status();
    co_return;
  }
  asio::steady_timer timer(co_await asio::this_coro::executor);
  auto next = Clock::now();
  const auto end = next + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  for (std::uint32_t seq = 0;; ++seq) {
    const bool last = Clock::now() >= end;
    auto b = tele->builder();
    flatbuffers::Offset<void> command;
    robot::Command type;
    if (last) {
      command = robot::CreateStop(b, b.CreateString("teleop session over")).Union();
      type = robot::Command_Stop;
    } else {
      // A slow circle.
      command = robot::CreateTwist(b, 0.5f, 0.25f).Union();
      type = robot::Command_Twist;
    }
    const std::uint64_t stamp = now_ns();
    b.Finish(robot::CreateTeleopCommand(b, stamp, seq, type, command));
    if (auto st = co_await tele->async_write(std::move(b), asio::use_awaitable); !st.ok()) {
      report.status = st;
      break;
    }
    auto state = co_await tele->async_read(asio::use_awaitable);
    if (!state || !*state) {
      report.status = state ? flatpipe::Status(flatpipe::StatusCode::data_loss, "the robot ended teleop early")
                            : state.status();
      break;
    }
    if ((**state)->seq() != seq || (**state)->command_stamp_ns() != stamp) {
      report.status = flatpipe::Status(flatpipe::StatusCode::data_loss,
                                       "state " + std::to_string((**state)->seq()) + " answers command " +
                                           std::to_string(seq) + "?");
      break;
    }
    report.latency_us.push_back(us_since(stamp));
    ++report.messages;
    if (last) {
      tele->write_done();
      auto rest = co_await tele->async_read(asio::use_awaitable);
      if (!rest) {
        report.status = rest.status();
      } else if (*rest) {
        report.status = flatpipe::Status(flatpipe::StatusCode::data_loss, "a state after the last command");
      } else {
        report.status = co_await tele->async_finish(asio::use_awaitable);
      }
      break;
    }
    next += std::chrono::milliseconds(20);
    timer.expires_at(next);
    co_await timer.async_wait(asio::use_awaitable);
  }
  report.seconds = seconds_since(t0);
}

inline void print_reports(const std::vector<StreamReport>& reports, std::FILE* out) {
  std::fprintf(out, "%-10s %-7s %9s %11s %10s %10s  %s\n", "stream", "kind", "messages", "rate", "p50", "p99",
               "status");
  for (const auto& r : reports) {
    const double rate = r.seconds > 0 ? static_cast<double>(r.messages) / r.seconds : 0.0;
    double p50 = percentile(r.latency_us, 0.50), p99 = percentile(r.latency_us, 0.99);
    if (r.remote_p50_p99) std::tie(p50, p99) = *r.remote_p50_p99;
    std::fprintf(out, "%-10s %-7s %9llu %9.1f/s %7.1f us %7.1f us  %s\n", r.name.c_str(), r.kind.c_str(),
                 static_cast<unsigned long long>(r.messages), rate, p50, p99, r.status.to_string().c_str());
  }
  std::fprintf(out,
               "latency: GetPose and Teleop round trip; Imu and Scans sample stamp to arrival; UploadMap chunk "
               "stamp to arrival at the robot (one-way figures need one clock: same machine)\n");
}

// Runs every stream against the robot at `uri` for about `seconds`; prints the reports to `out`.
// Returns 0 when every stream ended OK with messages, 1 otherwise.
inline int run_robot_client(flatpipe::Runtime& runtime, const std::string& uri, double seconds, std::FILE* out) {
  auto connected = robot::Robot::connect(runtime, uri);
  if (!connected) {
    std::fprintf(out, "robot_client: connect %s: %s\n", uri.c_str(), connected.status().to_string().c_str());
    return 1;
  }
  robot::Robot::Client stub = *connected;
  std::fprintf(out, "robot_client: connected to %s, streaming for %.1f s\n", uri.c_str(), seconds);
  std::fflush(out);

  std::vector<StreamReport> reports{
      {"GetPose", "unary"}, {"Imu", "server"}, {"Scans", "server"}, {"UploadMap", "client"}, {"Teleop", "bidi"}};

  // Every stream ends on its own; the deadline only guards against a robot that stops answering.
  const auto duration_ms = static_cast<std::uint32_t>(std::lround(seconds * 1000));
  auto options = [&] { return flatpipe::CallOptions::with_timeout(std::chrono::milliseconds(duration_ms) + std::chrono::seconds(10)); };
  std::vector<std::future<void>> running;
  auto sensor_request = [&](float hz) {
    robot::StreamRequestT request;  // the object API, packed when sent
    request.rate_hz = hz;
    request.duration_ms = duration_ms;
    return request;
  };
  if (auto imu = stub.Imu(sensor_request(200), options())) {
    running.push_back(asio::co_spawn(runtime.io(), read_sensor(std::move(*imu), reports[1]), asio::use_future));
  } else {
    reports[1].status = imu.status();
  }
  if (auto scans = stub.Scans(sensor_request(10), options())) {
    running.push_back(asio::co_spawn(runtime.io(), read_sensor(std::move(*scans), reports[2]), asio::use_future));
  } else {
    reports[2].status = scans.status();
  }
  running.push_back(asio::co_spawn(runtime.io(), upload_map(stub, options(), reports[3]), asio::use_future));
  running.push_back(asio::co_spawn(runtime.io(), drive(stub, seconds, options(), reports[4]), asio::use_future));

  // GetPose, blocking, from this thread at 20 Hz.
  const auto t0 = Clock::now();
  robot::PoseRequestT pose_request;
  pose_request.frame = "map";
  for (auto next = t0; seconds_since(t0) < seconds; next += std::chrono::milliseconds(50)) {
    const std::uint64_t sent = now_ns();
    auto pose = stub.GetPose(pose_request, flatpipe::CallOptions::with_timeout(std::chrono::seconds(2)));
    if (!pose) {
      reports[0].status = pose.status();
      break;
    }
    reports[0].latency_us.push_back(us_since(sent));
    ++reports[0].messages;
    std::this_thread::sleep_until(next + std::chrono::milliseconds(50));
  }
  reports[0].seconds = seconds_since(t0);

  for (auto& f : running) f.get();
  print_reports(reports, out);
  for (const auto& r : reports) {
    if (!r.status.ok() || r.messages == 0) return 1;
  }
  return 0;
}

}  // namespace robot_example
