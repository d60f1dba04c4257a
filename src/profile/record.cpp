// The recorder behind `mdlm::profile`: a global RecordFunction callback (the hook torch's own
// profiler uses) that keeps, per finished op, its name, thread, start and end, and whether it is
// top-level — an `aten::` op that no other `aten::` op on the same thread encloses, the count a
// GPU pays in kernel launches and the rule `torch.profiler`-based op counts use.
#include <ATen/record_function.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct Event {
  std::string name;
  uint32_t tid;
  int64_t t0_ns;
  int64_t t1_ns;
  bool top;
};

std::mutex events_mu;
std::vector<Event> events;
at::CallbackHandle handle = 0;
std::atomic<uint32_t> next_tid{0};

// Per thread: how many `aten::` ops are open, and a small stable id for the trace.
thread_local int aten_depth = 0;
thread_local uint32_t tid = UINT32_MAX;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Open : at::ObserverContext {
  int64_t t0_ns;
  bool aten;
  bool top;
};

std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
  auto ctx = std::make_unique<Open>();
  ctx->aten = std::strncmp(fn.name(), "aten::", 6) == 0;
  ctx->top = ctx->aten && aten_depth == 0;
  if (ctx->aten) {
    aten_depth++;
  }
  ctx->t0_ns = now_ns();
  return ctx;
}

void on_end(const at::RecordFunction& fn, at::ObserverContext* raw) {
  int64_t t1 = now_ns();
  auto* ctx = static_cast<Open*>(raw);
  if (ctx->aten) {
    aten_depth--;
  }
  if (tid == UINT32_MAX) {
    tid = next_tid++;
  }
  std::lock_guard<std::mutex> lock(events_mu);
  events.push_back(Event{fn.name(), tid, ctx->t0_ns, t1, ctx->top});
}

}  // namespace

extern "C" {

// Starts recording (dropping what an earlier recording kept); 0, or 1 when already recording.
int mdlm_prof_start() {
  if (handle != 0) {
    return 1;
  }
  {
    std::lock_guard<std::mutex> lock(events_mu);
    events.clear();
  }
  handle = at::addGlobalCallback(
      at::RecordFunctionCallback(&on_start, &on_end)
          .scopes({at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION,
                   at::RecordScope::USER_SCOPE}));
  return 0;
}

// Stops recording; returns how many events were kept.
int64_t mdlm_prof_stop() {
  if (handle != 0) {
    at::removeCallback(handle);
    handle = 0;
  }
  std::lock_guard<std::mutex> lock(events_mu);
  return static_cast<int64_t>(events.size());
}

int64_t mdlm_prof_now_ns() { return now_ns(); }

// Keeps this thread's ops out of every recording (a batch-preparing thread's copies are not
// part of the step being profiled). RecordFunction's switch is thread-local.
void mdlm_prof_ignore_this_thread() { at::enableRecordFunction(false); }

// Event `i` of the last recording: its name (valid until the next start), thread, times, and
// whether it is a top-level aten op. Returns 0, or 1 when `i` is out of range.
int mdlm_prof_event(int64_t i, const char** name, uint32_t* thread, int64_t* t0_ns, int64_t* t1_ns,
                    int* top) {
  std::lock_guard<std::mutex> lock(events_mu);
  if (i < 0 || static_cast<size_t>(i) >= events.size()) {
    return 1;
  }
  const Event& e = events[static_cast<size_t>(i)];
  *name = e.name.c_str();
  *thread = e.tid;
  *t0_ns = e.t0_ns;
  *t1_ns = e.t1_ns;
  *top = e.top ? 1 : 0;
  return 0;
}

}  // extern "C"
