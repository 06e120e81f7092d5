#include "common/thread_pool.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PYV4_PAUSE() _mm_pause()
#else
#define PYV4_PAUSE() ((void)0)
#endif

namespace pyv4 {

// A decode step issues a few hundred short parallel regions back to back.
// Waking a sleeping thread costs a futex round trip (tens of microseconds on a
// busy host), so both sides spin briefly before blocking: ~20-50 us, enough
// to bridge the gap between two regions of one step, short enough not to
// steal a core from other processes for long when the pool goes idle.
static constexpr std::chrono::microseconds kSpin{30};

// Spins until done() or kSpin has passed; true if done() became true.
template <class Done>
static bool spin_until(Done done) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (done()) return true;
    PYV4_PAUSE();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) return done();
  }
}

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = std::max(1u, std::thread::hardware_concurrency());
  n_threads_ = n_threads;
  cursors_.reset(new Cursor[n_threads_]);
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true, std::memory_order_release);
  }
  cv_start_.notify_all();
  for (auto& t : workers_) t.join();
}

// A thread's part of the current job: its own range (chunk `index`), or with
// balancing its own range piece by piece and then what is left of the others'.
void ThreadPool::run_share(int index) {
  if (job_piece_ > 0) {
    for (int k = 0; k < job_used_; ++k) {
      const int r = (index + k) % job_used_;
      const int64_t lo = job_chunk_ * r, hi = std::min(job_n_, lo + job_chunk_);
      for (;;) {
        const int64_t begin = lo + cursors_[r].next.fetch_add(job_piece_, std::memory_order_relaxed);
        if (begin >= hi) break;
        job_(job_ctx_, begin, std::min(hi, begin + job_piece_), index);
      }
    }
    return;
  }
  const int64_t begin = std::min<int64_t>(job_n_, job_chunk_ * index);
  const int64_t end = std::min<int64_t>(job_n_, begin + job_chunk_);
  if (begin < end) job_(job_ctx_, begin, end, index);
}

void ThreadPool::run(int64_t n, int64_t grain, bool balanced, Call call, void* ctx) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t n_grains = (n + grain - 1) / grain;
  const int used = static_cast<int>(std::min<int64_t>(n_threads_, n_grains));
  if (used == 1) {
    call(ctx, 0, n, 0);
    return;
  }
  const int64_t chunk_grains = (n_grains + used - 1) / used;
  const int64_t chunk = chunk_grains * grain;
  const int64_t piece =
      balanced ? ((chunk_grains + kPiecesPerThread - 1) / kPiecesPerThread) * grain : 0;
  {
    // The job fields are published by the release increment of generation_;
    // the lock orders it with workers that are about to sleep.
    std::lock_guard<std::mutex> lock(mu_);
    job_ = call;
    job_ctx_ = ctx;
    job_n_ = n;
    job_chunk_ = chunk;
    job_used_ = used;
    job_piece_ = piece;
    for (int i = 0; i < used; ++i) cursors_[i].next.store(0, std::memory_order_relaxed);
    pending_.store(n_threads_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  cv_start_.notify_all();
  run_share(0);
  if (!spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; })) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_done_.wait(lock, [this] { return pending_.load(std::memory_order_acquire) == 0; });
  }
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0;
  for (;;) {
    const bool woke = spin_until([&] {
      return generation_.load(std::memory_order_acquire) != seen || stop_.load(std::memory_order_acquire);
    });
    if (!woke) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_start_.wait(lock, [&] {
        return stop_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen;
      });
    }
    if (stop_.load(std::memory_order_acquire)) return;
    seen = generation_.load(std::memory_order_acquire);
    run_share(index);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mu_);  // pairs with the waiter's predicate check
      cv_done_.notify_one();
    }
  }
}

}  // namespace pyv4
