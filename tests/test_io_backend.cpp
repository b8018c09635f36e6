// The I/O backend under a kernel that refuses io_uring (as Docker's default seccomp profile does).
//
// Each test runs in a child process (a death test) that installs a seccomp filter failing
// io_uring_setup with EPERM; the filter cannot be removed, so it must not touch the test runner.
//   - default (epoll) build: a Runtime is created and connects a client over tcp: nothing in the
//     default build needs io_uring.
//   - FLATPIPE_IO_URING build: the Runtime constructor throws std::runtime_error naming the cause
//     and the way back (-DFLATPIPE_IO_URING=OFF), instead of failing later at the first socket.
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#include <gtest/gtest.h>

#include "flatpipe/flatpipe.hpp"

namespace {

// Makes io_uring_setup fail with EPERM for this process from now on.
bool refuse_io_uring() {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, static_cast<std::uint32_t>(offsetof(seccomp_data, nr))),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<std::uint32_t>(__NR_io_uring_setup), 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program{static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])), filter};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return false;
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) == 0;
}

// The child's whole life: refuse io_uring, make a Runtime, serve and call one echo over tcp.
// Exits 0 with "epoll-ok" or "refused: <what>" on stderr; 1 when something else went wrong.
[[noreturn]] void run_without_io_uring() {
  if (!refuse_io_uring()) {
    std::fprintf(stderr, "could not install the seccomp filter\n");
    std::exit(1);
  }
  try {
    flatpipe::Runtime runtime;
    flatpipe::Server server(runtime);
    flatpipe::Status added = server.add_unary(
        1, "test.Echo", [](flatpipe::CallContext&, const flatpipe::Buffer& request) -> flatpipe::Result<flatpipe::Buffer> {
          return request;
        });
    if (!added.ok()) {
      std::fprintf(stderr, "add failed: %s\n", added.to_string().c_str());
      std::exit(1);
    }
    auto bound = server.listen("tcp://127.0.0.1:0");
    if (!bound.ok()) {
      std::fprintf(stderr, "listen failed: %s\n", bound.status().to_string().c_str());
      std::exit(1);
    }
    auto client = flatpipe::Client::connect(runtime, *bound);
    if (!client.ok()) {
      std::fprintf(stderr, "connect failed: %s\n", client.status().to_string().c_str());
      std::exit(1);
    }
    const std::uint8_t bytes[] = {1, 2, 3};
    auto reply = client->call(1, flatpipe::Buffer::copy(bytes, sizeof bytes));
    if (!reply.ok() || reply->size() != 3) {
      std::fprintf(stderr, "call failed\n");
      std::exit(1);
    }
    std::fprintf(stderr, "epoll-ok\n");
    std::exit(0);
  } catch (const std::runtime_error& e) {
    std::fprintf(stderr, "refused: %s\n", e.what());
    std::exit(0);
  }
}

TEST(IoBackendDeathTest, AKernelThatRefusesIoUringGetsTheBackendsDocumentedBehaviour) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
#if defined(ASIO_HAS_IO_URING_AS_DEFAULT)
  EXPECT_EXIT(run_without_io_uring(), testing::ExitedWithCode(0),
              "refused: flatpipe was built with FLATPIPE_IO_URING=ON but io_uring is not available here.*"
              "-DFLATPIPE_IO_URING=OFF");
#else
  EXPECT_EXIT(run_without_io_uring(), testing::ExitedWithCode(0), "epoll-ok");
#endif
}

}  // namespace
