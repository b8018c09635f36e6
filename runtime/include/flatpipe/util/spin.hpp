// Busy-waiting, bounded: what flatpipe does instead of sleeping for a short while, where a
// sleeping thread's wakeup (a system call, on a virtual machine a halted vCPU) costs more than
// the wait itself.
#pragma once

#include <chrono>
#include <thread>

namespace flatpipe::detail {

// Tells the CPU this is a spin-wait loop (eases the sibling hyper-thread and the exit from the
// loop). Does not yield to other threads.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Set by a thread that has just readied a blocked waiter (SyncSlot::set). A polling loop on that
// thread that finds it set clears it and offers its CPU once (sched_yield): the waiter may be
// runnable on this very CPU.
inline thread_local bool woke_waiter = false;

// Calls `ready()` until it returns true or `budget` has passed; returns its last answer. Never
// blocks; `ready` must be cheap and must not block. A budget of zero or less asks once.
// With `offer_cpu`, the thread yields (sched_yield) between rounds of checks: a thread that
// spins while the one it waits for is runnable but has no CPU (more busy threads than cores)
// would otherwise delay what it waits for, by up to a scheduler time slice.
template <class Ready>
bool spin_until(Ready&& ready, std::chrono::nanoseconds budget, bool offer_cpu = false) {
  if (ready()) return true;
  if (budget.count() <= 0) return false;
  const auto end = std::chrono::steady_clock::now() + budget;
  for (;;) {
    for (int i = 0; i < 16; ++i) {  // the clock is read once per 16 checks
      cpu_relax();
      if (ready()) return true;
    }
    if (std::chrono::steady_clock::now() >= end) return ready();
    if (offer_cpu) {
      std::this_thread::yield();
      if (ready()) return true;
    }
  }
}

}  // namespace flatpipe::detail
