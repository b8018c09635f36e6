// RobotService: a simulated robot serving robot.fbs's Robot service.
//
// The pose integrates the teleop commands it is given; the IMU and lidar streams are synthetic
// but shaped like the real thing (200 Hz samples, 360-beam scans at 10 Hz). Every handler runs on
// the connection's I/O thread and never blocks: streams are coroutines paced by timers.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include "robot_flatpipe.hpp"

namespace robot_example {

using Clock = std::chrono::steady_clock;

// CLOCK_MONOTONIC in nanoseconds: comparable between processes of one machine only.
inline std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count());
}

// The p-th percentile (0..1) of `values`; 0 when empty. Takes a copy: it reorders.
inline double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  const auto k = static_cast<std::size_t>(p * static_cast<double>(values.size() - 1) + 0.5);
  std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(k), values.end());
  return values[k];
}

// Ticks at a request's rate until its duration is over (forever when duration_ms is 0).
class Pacer {
 public:
  Pacer(asio::any_io_executor executor, const robot::StreamRequest& request, double default_hz)
      : timer_(std::move(executor)) {
    const double hz = request.rate_hz() > 0 ? std::min<double>(request.rate_hz(), 10'000.0) : default_hz;
    period_ = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.0 / hz));
    next_ = Clock::now();
    if (request.duration_ms() > 0) end_ = next_ + std::chrono::milliseconds(request.duration_ms());
  }

  // Waits for the next tick; false once the duration is over. Ticks are on a fixed grid, so a
  // late tick does not shift the ones after it.
  asio::awaitable<bool> next() {
    if (end_ && Clock::now() >= *end_) co_return false;
    timer_.expires_at(next_);
    std::error_code ignored;
    co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    next_ += period_;
    co_return true;
  }

 private:
  asio::steady_timer timer_;
  Clock::duration period_{};
  Clock::time_point next_;
  std::optional<Clock::time_point> end_;
};

class RobotService final : public robot::Robot::Server {
 public:
  flatpipe::Reply<robot::Pose> GetPose(const flatpipe::ServerCall& call,
                                       flatpipe::Message<robot::PoseRequest> request) override {
    if (request->frame() && request->frame()->string_view() != "map") {
      return flatpipe::Status(flatpipe::StatusCode::not_found,
                              "unknown frame '" + request->frame()->str() + "': this robot knows \"map\"");
    }
    auto b = call.builder();
    b.Finish(pose(b));
    return b;  // taken without copying (the builder's memory is the connection's)
  }

  asio::awaitable<flatpipe::Status> Imu(flatpipe::ServerWriter<robot::ImuSample> out,
                                        flatpipe::Message<robot::StreamRequest> request) override {
    Pacer pacer(co_await asio::this_coro::executor, *request, 200.0);
    for (std::uint32_t seq = 0; co_await pacer.next(); ++seq) {
      const double t = static_cast<double>(seq) / 200.0;
      const robot::Vec3 accel(0.05f * static_cast<float>(std::sin(t)), 0.0f, 9.81f);
      const robot::Vec3 gyro(0.0f, 0.0f, angular_velocity());
      const robot::Quat orientation = heading();
      auto b = out.builder();
      b.Finish(robot::CreateImuSample(b, now_ns(), seq, &accel, &gyro, &orientation));
      if (auto st = co_await out.async_write(std::move(b), asio::use_awaitable); !st.ok()) co_return st;
    }
    co_return flatpipe::Status();
  }

  asio::awaitable<flatpipe::Status> Scans(flatpipe::ServerWriter<robot::LidarScan> out,
                                          flatpipe::Message<robot::StreamRequest> request) override {
    constexpr int kBeams = 360;
    constexpr float kPi = 3.14159265f;
    Pacer pacer(co_await asio::this_coro::executor, *request, 10.0);
    std::vector<float> ranges(kBeams);
    std::vector<robot::Vec3> points(kBeams);
    for (std::uint32_t seq = 0; co_await pacer.next(); ++seq) {
      for (int i = 0; i < kBeams; ++i) {
        // A 6 m x 4 m room with the robot off-centre, plus a little wobble per scan.
        const float angle = -kPi + static_cast<float>(i) * (2 * kPi / kBeams);
        const float c = std::cos(angle), s = std::sin(angle);
        const float to_x = c > 0 ? 3.0f / c : (c < 0 ? -1.0f / c : 1e9f);
        const float to_y = s > 0 ? 2.5f / s : (s < 0 ? -1.5f / s : 1e9f);
        const float r = std::min(to_x, to_y) + 0.01f * static_cast<float>(seq % 5);
        ranges[static_cast<std::size_t>(i)] = r;
        points[static_cast<std::size_t>(i)] = robot::Vec3(r * c, r * s, 0.0f);
      }
      auto b = out.builder(8192);
      const auto ranges_off = b.CreateVector(ranges);
      const auto points_off = b.CreateVectorOfStructs(points);
      b.Finish(robot::CreateLidarScan(b, now_ns(), seq, -kPi, 2 * kPi / kBeams, 30.0f, ranges_off, points_off));
      if (auto st = co_await out.async_write(std::move(b), asio::use_awaitable); !st.ok()) co_return st;
    }
    co_return flatpipe::Status();
  }

  asio::awaitable<flatpipe::Reply<robot::MapAck>> UploadMap(flatpipe::ServerReader<robot::MapChunk> in) override {
    std::vector<double> latency_us;
    robot::MapAckT ack;
    std::uint32_t width = 0, height = 0, next_row = 0;
    for (;;) {
      auto m = co_await in.async_read(asio::use_awaitable);
      if (!m) co_return m.status();
      if (!*m) break;  // the uploader ended its stream: the map is complete
      const robot::MapChunk& chunk = ***m;
      latency_us.push_back(static_cast<double>(now_ns() - chunk.stamp_ns()) / 1e3);
      if (ack.chunks == 0) {
        width = chunk.width();
        height = chunk.height();
      }
      const std::size_t cells = chunk.cells() ? chunk.cells()->size() : 0;
      if (width == 0 || chunk.width() != width || chunk.height() != height || chunk.first_row() != next_row ||
          cells % width != 0 || chunk.first_row() + cells / width > height) {
        co_return flatpipe::Status(flatpipe::StatusCode::invalid_argument,
                                   "map chunk " + std::to_string(chunk.seq()) + " does not continue the " +
                                       std::to_string(width) + "x" + std::to_string(height) + " map at row " +
                                       std::to_string(next_row));
      }
      next_row += static_cast<std::uint32_t>(cells / width);
      ++ack.chunks;
      ack.cells += cells;
    }
    if (next_row != height) {
      co_return flatpipe::Status(flatpipe::StatusCode::invalid_argument,
                                 "map ended at row " + std::to_string(next_row) + " of " + std::to_string(height));
    }
    ack.latency_p50_us = percentile(latency_us, 0.50);
    ack.latency_p99_us = percentile(latency_us, 0.99);
    co_return ack;  // the object API: packed by the runtime
  }

  asio::awaitable<flatpipe::Status> Teleop(
      flatpipe::ServerReaderWriter<robot::TeleopCommand, robot::TeleopState> stream) override {
    for (;;) {
      auto m = co_await stream.async_read(asio::use_awaitable);
      if (!m) co_return m.status();
      if (!*m) break;  // the driver ended its side
      const robot::TeleopCommand& cmd = ***m;
      bool stopped = false;
      switch (cmd.command_type()) {
        case robot::Command_Twist:
          drive(cmd.command_as_Twist()->linear(), cmd.command_as_Twist()->angular(), cmd.stamp_ns());
          break;
        case robot::Command_Stop:
          drive(0, 0, cmd.stamp_ns());
          stopped = true;
          break;
        default:
          co_return flatpipe::Status(flatpipe::StatusCode::invalid_argument,
                                     "teleop command " + std::to_string(cmd.seq()) + " carries no command");
      }
      auto b = stream.builder();
      const auto state_pose = pose(b);
      b.Finish(robot::CreateTeleopState(b, cmd.stamp_ns(), cmd.seq(), state_pose, stopped));
      if (auto st = co_await stream.async_write(std::move(b), asio::use_awaitable); !st.ok()) co_return st;
    }
    co_return flatpipe::Status();
  }

 private:
  // Integrates a velocity command over the time since the previous one (at most 0.1 s).
  void drive(float linear, float angular, std::uint64_t stamp_ns) {
    std::lock_guard lk(mu_);
    const double dt =
        last_command_ns_ == 0 ? 0.0 : std::min(0.1, static_cast<double>(stamp_ns - last_command_ns_) / 1e9);
    last_command_ns_ = stamp_ns;
    x_ += linear_ * std::cos(theta_) * dt;
    y_ += linear_ * std::sin(theta_) * dt;
    theta_ += angular_ * dt;
    linear_ = linear;
    angular_ = angular;
  }

  flatbuffers::Offset<robot::Pose> pose(flatbuffers::FlatBufferBuilder& b) {
    auto frame = b.CreateString("map");
    std::lock_guard lk(mu_);
    const robot::Vec3 position(static_cast<float>(x_), static_cast<float>(y_), 0.0f);
    const robot::Quat orientation = heading_locked();
    return robot::CreatePose(b, now_ns(), frame, &position, &orientation);
  }

  float angular_velocity() {
    std::lock_guard lk(mu_);
    return static_cast<float>(angular_);
  }
  robot::Quat heading() {
    std::lock_guard lk(mu_);
    return heading_locked();
  }
  robot::Quat heading_locked() const {
    return robot::Quat(0.0f, 0.0f, static_cast<float>(std::sin(theta_ / 2)), static_cast<float>(std::cos(theta_ / 2)));
  }

  std::mutex mu_;
  double x_ = 0, y_ = 0, theta_ = 0;
  double linear_ = 0, angular_ = 0;
  std::uint64_t last_command_ns_ = 0;
};

}  // namespace robot_example
