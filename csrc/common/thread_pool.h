// A fixed set of worker threads reused for every parallel region.
//
// Threads are created once (per Model), spin briefly and then park on a
// condition variable between jobs, so a parallel_for costs no thread creation,
// no heap allocation and, inside a decode step, usually no futex wake-up.
// parallel_for gives each thread one contiguous index range (for a GEMV, its
// own block of weight rows); parallel_for_balanced cuts the range into a few
// pieces per thread that the threads claim as they go.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace pyv4 {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // n_threads <= 0: hardware concurrency
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(begin, end, thread_index) on disjoint ranges covering [0, n),
  // ranges aligned to `grain` (except the last). Blocks until all are done.
  // The calling thread takes part as thread 0. Not re-entrant. `fn` is passed
  // by reference through a plain function pointer, so a call allocates nothing
  // whatever the lambda captures. fn must not throw (it runs on worker threads).
  template <class F>
  void parallel_for(int64_t n, int64_t grain, F&& fn) {
    dispatch(n, grain, false, fn);
  }

  // The same contract, except that a thread may get several ranges. Each
  // thread still owns the contiguous range parallel_for would give it and runs
  // it front to back, but in kPiecesPerThread pieces (aligned to `grain`)
  // claimed from a per-range cursor; a thread done with its own range claims
  // the pieces left in the others'. When one core is slowed (another process,
  // a vCPU the hypervisor preempts), the others take over the rest of its
  // range instead of waiting for it; otherwise every thread streams its own
  // rows as before (handing out pieces in one global order cost a GEMV 5-14 %
  // of its bandwidth: each thread's stream restarted at every piece).
  template <class F>
  void parallel_for_balanced(int64_t n, int64_t grain, F&& fn) {
    dispatch(n, grain, true, fn);
  }

 private:
  static constexpr int kPiecesPerThread = 8;
  using Call = void (*)(void* ctx, int64_t begin, int64_t end, int thread);
  template <class Fn>
  void dispatch(int64_t n, int64_t grain, bool balanced, Fn& fn) {
    run(n, grain, balanced,
        [](void* ctx, int64_t b, int64_t e, int t) { (*static_cast<Fn*>(ctx))(b, e, t); },
        const_cast<void*>(static_cast<const void*>(&fn)));
  }
  void run(int64_t n, int64_t grain, bool balanced, Call call, void* ctx);
  void run_share(int index);
  void worker(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  Call job_ = nullptr;
  void* job_ctx_ = nullptr;
  int64_t job_n_ = 0, job_chunk_ = 0;
  int job_used_ = 0;        // threads with a range of their own
  int64_t job_piece_ = 0;   // balanced: indices per piece (0: static)
  struct alignas(64) Cursor {
    std::atomic<int64_t> next{0};  // offset of the range's next unclaimed piece
  };
  std::unique_ptr<Cursor[]> cursors_;  // one per thread's range
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace pyv4
