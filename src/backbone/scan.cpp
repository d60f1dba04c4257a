// The chunked selective scan (see scan.rs for the math) as one libtorch autograd function whose
// backward pass recomputes each chunk from the state saved before it instead of keeping its
// [B, T, D, N] temporaries from the forward pass: training saves the inputs plus one [B, D, N]
// state per chunk, not O(B L D N). A chunk is solved by a loop over the recurrence on CPU
// float32/float64, and in closed form with ATen ops elsewhere (or when asked: tests, benches).
// Every entry returns nullptr or an error message, as ../ffi_error.h says.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "../ffi_error.h"
#include "parallel.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Tokens [start, start + len) solved together.
struct Span {
  int64_t start;
  int64_t len;
};

struct Inputs {
  at::Tensor u, delta, a, b, c;  // [B, L, D], [B, L, D], [D, N], [B, L, N], [B, L, N]
};

// The spans: chunks of `chunk` tokens, halved until each one's largest decay max|S| stays within
// `max_decay` (single tokens take the recurrence step itself and are never split). The decay of
// every span of one halving level comes back in a single device-to-host read, so moderate
// decays cost one read per scan rather than one per chunk.
std::vector<Span> plan_spans(const Inputs& in, int64_t chunk, double max_decay) {
  TORCH_CHECK(chunk > 0, "scan chunk must be positive, got ", chunk);
  const int64_t len = in.delta.size(1);
  const auto fastest = in.a.detach().abs().amax({-1}).to(at::kDouble);  // [D]
  // Prefix sums of delta * fastest in float64: a span's decay bound per (batch, channel) is the
  // difference of two entries.
  auto prefix = in.delta.detach().to(at::kDouble).cumsum(1).mul_(fastest);  // [B, L, D]
  prefix = at::cat({at::zeros_like(prefix.narrow(1, 0, 1)), prefix}, 1);   // [B, L + 1, D]

  std::vector<Span> done, todo;
  for (int64_t s = 0; s < len; s += chunk) {
    todo.push_back({s, std::min(chunk, len - s)});
  }
  while (!todo.empty()) {
    std::vector<int64_t> starts, ends;
    for (const auto& sp : todo) {
      starts.push_back(sp.start);
      ends.push_back(sp.start + sp.len);
    }
    const auto opts = at::TensorOptions().dtype(at::kLong);
    const auto idx = [&](const std::vector<int64_t>& v) {
      return at::tensor(v, opts).to(prefix.device());
    };
    const auto decay = (prefix.index_select(1, idx(ends)) - prefix.index_select(1, idx(starts)))
                           .amax({0, 2})
                           .cpu();  // [spans]
    const auto d = decay.accessor<double, 1>();
    std::vector<Span> next;
    for (size_t i = 0; i < todo.size(); i++) {
      const auto sp = todo[i];
      if (sp.len == 1 || !(d[i] > max_decay)) {
        done.push_back(sp);
      } else {
        const int64_t half = sp.len / 2;
        next.push_back({sp.start, half});
        next.push_back({sp.start + half, sp.len - half});
      }
    }
    todo = std::move(next);
  }
  std::sort(done.begin(), done.end(), [](Span x, Span y) { return x.start < y.start; });
  return done;
}

// One span's temporaries, all [B, T, D, N].
struct Solved {
  at::Tensor x;    // delta_t B_t u_t: the input added to the state at token t
  at::Tensor eS;   // exp(S_t), S_t the log-decay from the span start through token t
  at::Tensor enS;  // exp(-S_t); undefined for a single token, where it may overflow
  at::Tensor h;    // the states
};

at::Tensor tokens(const at::Tensor& t, Span sp) { return t.narrow(1, sp.start, sp.len); }

// The states of the span's tokens from the state `h0` before it (undefined: zeros).
Solved solve(const Inputs& in, Span sp, const at::Tensor& h0) {
  const auto dt = tokens(in.delta, sp).unsqueeze(-1);  // [B, T, D, 1]
  Solved s;
  s.x = (dt * tokens(in.u, sp).unsqueeze(-1)) * tokens(in.b, sp).unsqueeze(2);
  auto log_decay = dt * in.a;
  if (sp.len == 1) {
    s.eS = log_decay.exp_();
    s.h = h0.defined() ? at::addcmul(s.x, s.eS, h0.unsqueeze(1)) : s.x;
    return s;
  }
  s.eS = log_decay.cumsum_(1).exp_();
  s.enS = s.eS.reciprocal();  // exact enough: plan_spans keeps exp(|S|) far from overflow
  auto acc = (s.enS * s.x).cumsum_(1);
  if (h0.defined()) {
    acc.add_(h0.unsqueeze(1));
  }
  s.h = acc.mul_(s.eS);
  return s;
}

// y [B, L, D]; fills `states` (when given) with the state before every span but the first.
at::Tensor scan_forward(const Inputs& in, const std::vector<Span>& spans,
                        std::vector<at::Tensor>* states) {
  auto y = at::empty(in.u.sizes(), in.u.options());
  at::Tensor h;
  for (const auto& sp : spans) {
    if (states != nullptr && h.defined()) {
      states->push_back(h.clone());  // a view would keep the whole span's states alive
    }
    const auto s = solve(in, sp, h);
    tokens(y, sp).copy_(at::matmul(s.h, tokens(in.c, sp).unsqueeze(-1)).squeeze(-1));
    h = s.h.select(1, sp.len - 1);
  }
  return y;
}

struct Grads {
  at::Tensor u, delta, a, b, c;
};

// Adds one span's contribution to the gradients. `carry` holds dL/dh at the span's last token
// from the tokens after it (undefined: none) and is replaced by dL/dh before the span.
void span_backward(const Inputs& in, Span sp, const at::Tensor& h0, const at::Tensor& gy,
                   at::Tensor& carry, Grads& g) {
  auto s = solve(in, sp, h0);
  const auto gys = tokens(gy, sp);                      // [B, T, D]
  const auto dt = tokens(in.delta, sp);                 // [B, T, D]
  const auto u = tokens(in.u, sp);                      // [B, T, D]
  const auto b = tokens(in.b, sp);                      // [B, T, N]
  auto gh = gys.unsqueeze(-1) * tokens(in.c, sp).unsqueeze(2);  // through y_t alone
  if (sp.len == 1) {
    if (carry.defined()) {
      gh.add_(carry.unsqueeze(1));
    }
    carry = (s.eS * gh).squeeze(1);
  } else {
    // dL/dh_t = exp(-S_t) (sum_{s >= t} exp(S_s) q_s + exp(S_T) carry): the reverse scan in the
    // same closed form as the forward one, stable on the same spans.
    gh.mul_(s.eS);
    gh = gh.flip({1}).cumsum_(1).flip({1});
    if (carry.defined()) {
      gh.add_(s.eS.narrow(1, sp.len - 1, 1) * carry.unsqueeze(1));
    }
    carry = gh.select(1, 0).clone();  // exp(S_0) dL/dh_0 = dL/dh before the span
    gh.mul_(s.enS);
  }
  tokens(g.c, sp).copy_(at::matmul(gys.unsqueeze(-2), s.h).squeeze(-2));
  const auto gx_b = at::matmul(gh, b.unsqueeze(-1)).squeeze(-1);  // sum_n dL/dx_t B_t: [B, T, D]
  tokens(g.u, sp).copy_(gx_b * dt);
  tokens(g.b, sp).copy_(at::matmul((dt * u).unsqueeze(-2), gh).squeeze(-2));
  // dL/d(delta_t A) = dL/dh_t * exp(delta_t A) h_{t-1} = dL/dh_t * (h_t - x_t).
  const auto g_log_decay = s.h.sub_(s.x).mul_(gh);
  tokens(g.delta, sp).copy_((g_log_decay * in.a).sum(-1).add_(gx_b * u));
  g.a.add_((g_log_decay * dt.unsqueeze(-1)).sum(at::IntArrayRef{0, 1}));
}

Grads scan_backward(const Inputs& in, const std::vector<Span>& spans,
                    const std::vector<at::Tensor>& states, const at::Tensor& gy) {
  Grads g{at::empty_like(in.u), at::empty_like(in.delta), at::zeros_like(in.a),
          at::empty_like(in.b), at::empty_like(in.c)};
  at::Tensor carry;
  for (size_t i = spans.size(); i-- > 0;) {
    const auto h0 = i == 0 ? at::Tensor() : states[i - 1];
    span_backward(in, spans[i], h0, gy, carry, g);
  }
  return g;
}

// ---------------------------------------------------------------------------------------------
// The CPU kernel: the recurrence itself, looping over the (batch, channel) lanes in parallel.
// On a CPU the closed form's [B, T, D, N] temporaries cost a memory pass per op (cumsum along
// tokens alone was half the time), while the loop touches each state once and needs no decay
// check: exp(delta A) <= 1 never overflows. Chunks of T tokens remain the unit of recomputation:
// the forward pass keeps the state before each chunk, the backward pass re-runs one chunk at a
// time into a [T + 1, N] buffer per lane and walks it in reverse. Only one chunk's decays,
// [B, T, D, N], exist at a time.

// Plain-array views of contiguous inputs; index helpers say which layout each one has.
template <typename scalar_t>
struct Lanes {
  const scalar_t *u, *delta, *a, *b, *c;  // [B, L, D], [B, L, D], [D, N], [B, L, N], [B, L, N]
  int64_t batch, len, d, n;
  int64_t tok(int64_t bi, int64_t t, int64_t di) const { return (bi * len + t) * d + di; }
  int64_t row(int64_t bi, int64_t t) const { return (bi * len + t) * n; }
};

template <typename scalar_t>
Lanes<scalar_t> lanes(const Inputs& in) {
  return {in.u.data_ptr<scalar_t>(), in.delta.data_ptr<scalar_t>(), in.a.data_ptr<scalar_t>(),
          in.b.data_ptr<scalar_t>(), in.c.data_ptr<scalar_t>(), in.u.size(0), in.u.size(1),
          in.u.size(2), in.a.size(1)};
}

// sum_j p[j] q[j] over 8 independent partial sums: without -ffast-math the compiler keeps a
// single running sum in order, one dependent add per element, which made the loops latency-bound.
template <typename T>
T dot(const T* __restrict p, const T* __restrict q, int64_t n) {
  constexpr int64_t kWidth = 8;
  T part[kWidth] = {};
  int64_t j = 0;
  for (; j + kWidth <= n; j += kWidth) {
    for (int64_t l = 0; l < kWidth; l++) {
      part[l] += p[j + l] * q[j + l];
    }
  }
  T sum = 0;
  for (; j < n; j++) {
    sum += p[j] * q[j];
  }
  for (int64_t l = 0; l < kWidth; l++) {
    sum += part[l];
  }
  return sum;
}

// h = decay * h + du * b over one lane's N states (restrict: the arrays never overlap, so the
// loop vectorises).
template <typename T>
void step(T* __restrict h, const T* __restrict decay, const T* __restrict b, T du, int64_t n) {
  for (int64_t j = 0; j < n; j++) {
    h[j] = decay[j] * h[j] + du * b[j];
  }
}

// One token of the reverse scan for one lane, elementwise over its N states. In: `carry` =
// dL/dh_t from later tokens. Out: `gh` = dL/dh_t, `gl` = dL/d(delta_t A) = dL/dh_t exp(delta_t A)
// h_{t-1}, `carry` = dL/dh_{t-1}; adds this token's terms to the B, C and A gradients.
template <typename T>
void step_back(T* __restrict carry, T* __restrict gh, T* __restrict gl, T* __restrict gb,
               T* __restrict gc, T* __restrict ga, const T* __restrict c,
               const T* __restrict decay, const T* __restrict h, const T* __restrict h_prev,
               T gy, T du, T dt, int64_t n) {
  for (int64_t j = 0; j < n; j++) {
    gh[j] = carry[j] + c[j] * gy;
    gc[j] += gy * h[j];
    gb[j] += gh[j] * du;
    gl[j] = gh[j] * decay[j] * h_prev[j];
    ga[j] += gl[j] * dt;
    carry[j] = gh[j] * decay[j];
  }
}

// exp(delta_t A) for tokens [start, start + len): [B, T, D, N], by libtorch's vectorised exp
// (the loops below would otherwise spend most of their time in scalar exp calls).
at::Tensor chunk_decay(const Inputs& in, int64_t start, int64_t len) {
  return (in.delta.narrow(1, start, len).unsqueeze(-1) * in.a).exp_();
}

// y [B, L, D]; with `states` ([chunks - 1, B, D, N]) defined, the state before every chunk but
// the first is written there.
template <typename scalar_t>
void loop_forward(const Inputs& in, int64_t chunk, at::Tensor& y, at::Tensor& states) {
  const auto x = lanes<scalar_t>(in);
  auto* out = y.data_ptr<scalar_t>();
  const at::Tensor state = at::zeros({x.batch, x.d, x.n}, in.u.options());  // per lane
  auto* h_all = state.data_ptr<scalar_t>();
  for (int64_t start = 0; start < x.len; start += chunk) {
    const int64_t len = std::min(chunk, x.len - start);
    if (states.defined() && start > 0) {
      states[start / chunk - 1].copy_(state);
    }
    const at::Tensor decay_t = chunk_decay(in, start, len);
    const auto* decay = decay_t.data_ptr<scalar_t>();
    mdlm_parallel_items(x.batch * x.d, [&](int64_t begin, int64_t end, int64_t) {
      for (int64_t lane = begin; lane < end; lane++) {
        const int64_t bi = lane / x.d, di = lane % x.d;
        scalar_t* h = h_all + lane * x.n;
        for (int64_t i = 0; i < len; i++) {
          const int64_t t = start + i;
          const scalar_t du = x.delta[x.tok(bi, t, di)] * x.u[x.tok(bi, t, di)];
          const scalar_t* dec = decay + ((bi * len + i) * x.d + di) * x.n;
          const scalar_t* b = x.b + x.row(bi, t);
          const scalar_t* c = x.c + x.row(bi, t);
          step(h, dec, b, du, x.n);
          out[x.tok(bi, t, di)] = dot(c, h, x.n);
        }
      }
    });
  }
}

// The gradients, chunk by chunk from the last. B and C are shared by all channels and A by all
// batches, so their gradients are summed per thread and the partial sums added at the end.
template <typename scalar_t>
Grads loop_backward(const Inputs& in, int64_t chunk, const at::Tensor& states,
                    const at::Tensor& gy_t) {
  const auto x = lanes<scalar_t>(in);
  const int64_t threads = at::get_num_threads();
  Grads g{at::empty_like(in.u), at::empty_like(in.delta), at::Tensor(), at::Tensor(),
          at::Tensor()};
  const at::Tensor part_a = at::zeros({threads, x.d, x.n}, in.a.options());
  const at::Tensor part_b = at::zeros({threads, x.batch, x.len, x.n}, in.b.options());
  const at::Tensor part_c = at::zeros({threads, x.batch, x.len, x.n}, in.c.options());
  // dL/dh_t from the tokens after t, per lane: zero after the last token.
  const at::Tensor carry_t = at::zeros({x.batch, x.d, x.n}, in.u.options());
  const auto* gy = gy_t.data_ptr<scalar_t>();
  auto* gu = g.u.data_ptr<scalar_t>();
  auto* gdelta = g.delta.data_ptr<scalar_t>();
  auto* pa = part_a.data_ptr<scalar_t>();
  auto* pb = part_b.data_ptr<scalar_t>();
  auto* pc = part_c.data_ptr<scalar_t>();
  auto* carry_all = carry_t.data_ptr<scalar_t>();
  const int64_t chunks = (x.len + chunk - 1) / chunk;
  for (int64_t k = chunks; k-- > 0;) {
    const int64_t start = k * chunk, len = std::min(chunk, x.len - start);
    const at::Tensor decay_t = chunk_decay(in, start, len);
    const auto* decay_all = decay_t.data_ptr<scalar_t>();
    const scalar_t* h0_all = k > 0 ? states[k - 1].data_ptr<scalar_t>() : nullptr;
    mdlm_parallel_items(x.batch * x.d, [&](int64_t begin, int64_t end, int64_t tid) {
      scalar_t* gb_all = pb + tid * x.batch * x.len * x.n;
      scalar_t* gc_all = pc + tid * x.batch * x.len * x.n;
      // hs[i] is the state before the chunk's token i, hs[i + 1] the state after it.
      std::vector<scalar_t> hs((len + 1) * x.n), gh(x.n), gl(x.n);
      for (int64_t lane = begin; lane < end; lane++) {
        const int64_t bi = lane / x.d, di = lane % x.d;
        const scalar_t* a = x.a + di * x.n;
        scalar_t* ga = pa + (tid * x.d + di) * x.n;
        scalar_t* carry = carry_all + lane * x.n;
        const auto decay = [&](int64_t i) { return decay_all + ((bi * len + i) * x.d + di) * x.n; };
        if (h0_all == nullptr) {
          std::fill(hs.begin(), hs.begin() + x.n, scalar_t(0));
        } else {
          std::copy(h0_all + lane * x.n, h0_all + (lane + 1) * x.n, hs.begin());
        }
        for (int64_t i = 0; i < len; i++) {
          const int64_t t = start + i;
          const scalar_t du = x.delta[x.tok(bi, t, di)] * x.u[x.tok(bi, t, di)];
          const scalar_t* b = x.b + x.row(bi, t);
          const scalar_t* dec = decay(i);
          std::copy(hs.data() + i * x.n, hs.data() + (i + 1) * x.n, hs.data() + (i + 1) * x.n);
          step(hs.data() + (i + 1) * x.n, dec, b, du, x.n);
        }
        for (int64_t i = len; i-- > 0;) {
          const int64_t t = start + i;
          const scalar_t dt = x.delta[x.tok(bi, t, di)];
          const scalar_t uu = x.u[x.tok(bi, t, di)];
          const scalar_t du = dt * uu;
          const scalar_t gyv = gy[x.tok(bi, t, di)];
          const scalar_t* b = x.b + x.row(bi, t);
          const scalar_t* c = x.c + x.row(bi, t);
          const scalar_t* dec = decay(i);
          const scalar_t* h_prev = hs.data() + i * x.n;
          const scalar_t* h = h_prev + x.n;
          scalar_t* gb = gb_all + x.row(bi, t);
          scalar_t* gc = gc_all + x.row(bi, t);
          step_back(carry, gh.data(), gl.data(), gb, gc, ga, c, dec, h, h_prev, gyv, du, dt, x.n);
          const scalar_t g_bx = dot(gh.data(), b, x.n);  // sum_j dL/dx_t[j] B_t[j]
          gu[x.tok(bi, t, di)] = g_bx * dt;
          gdelta[x.tok(bi, t, di)] = dot(gl.data(), a, x.n) + g_bx * uu;
        }
      }
    });
  }
  g.a = part_a.sum(0);
  g.b = part_b.sum(0);
  g.c = part_c.sum(0);
  return g;
}

// Whether the CPU kernel takes this scan: CPU tensors, all float32 or all float64 (it makes
// them contiguous).
bool loop_applies(const Inputs& in) {
  const auto kind = in.u.scalar_type();
  const auto same = [&](const at::Tensor& t) {
    return t.scalar_type() == kind && t.device().is_cpu();
  };
  return (kind == at::kFloat || kind == at::kDouble) && same(in.u) && same(in.delta) &&
         same(in.a) && same(in.b) && same(in.c);
}

Inputs contiguous(const Inputs& in) {
  return {in.u.contiguous(), in.delta.contiguous(), in.a.contiguous(), in.b.contiguous(),
          in.c.contiguous()};
}

at::Tensor loop_scan(const Inputs& in, int64_t chunk, at::Tensor* states) {
  auto y = at::empty(in.u.sizes(), in.u.options());
  at::Tensor saved;
  if (states != nullptr) {
    const int64_t chunks = (in.u.size(1) + chunk - 1) / chunk;
    saved = at::empty({std::max<int64_t>(chunks - 1, 0), in.u.size(0), in.u.size(2), in.a.size(1)},
                      in.u.options());
    *states = saved;
  }
  AT_DISPATCH_FLOATING_TYPES(in.u.scalar_type(), "selective_scan_loop",
                             [&] { loop_forward<scalar_t>(in, chunk, y, saved); });
  return y;
}

Grads loop_grads(const Inputs& in, int64_t chunk, const at::Tensor& states, const at::Tensor& gy) {
  Grads g;
  AT_DISPATCH_FLOATING_TYPES(in.u.scalar_type(), "selective_scan_loop_backward",
                             [&] { g = loop_backward<scalar_t>(in, chunk, states, gy); });
  return g;
}

std::vector<int64_t> flatten(const std::vector<Span>& spans) {
  std::vector<int64_t> out;
  for (const auto& sp : spans) {
    out.push_back(sp.start);
    out.push_back(sp.len);
  }
  return out;
}

std::vector<Span> unflatten(const std::vector<int64_t>& flat) {
  std::vector<Span> out;
  for (size_t i = 0; i + 1 < flat.size(); i += 2) {
    out.push_back({flat[i], flat[i + 1]});
  }
  return out;
}

// Saves the inputs and the state before each chunk (loop) or span (closed form); the backward
// pass recomputes everything else.
class ChunkedScan : public torch::autograd::Function<ChunkedScan> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& u, const at::Tensor& delta,
                            const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                            int64_t chunk, double max_decay, bool loop) {
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["loop"] = loop;
    if (loop) {
      const auto in = contiguous(Inputs{u, delta, a, b, c});
      at::Tensor states;
      auto y = loop_scan(in, chunk, &states);
      ctx->save_for_backward({in.u, in.delta, in.a, in.b, in.c, states});
      return y;
    }
    const Inputs in{u, delta, a, b, c};
    const auto spans = plan_spans(in, chunk, max_decay);
    std::vector<at::Tensor> states;
    auto y = scan_forward(in, spans, &states);
    ctx->saved_data["spans"] = flatten(spans);
    variable_list saved{u, delta, a, b, c};
    saved.insert(saved.end(), states.begin(), states.end());
    ctx->save_for_backward(std::move(saved));
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    // The gradients come from loops and in-place ops that record no graph of their own.
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "the chunked selective scan has no double backward (create_graph=True); use "
                "the sequential scan for higher-order gradients");
    const auto saved = ctx->get_saved_variables();
    const Inputs in{saved[0], saved[1], saved[2], saved[3], saved[4]};
    auto gy = grad_out[0].defined() ? grad_out[0].contiguous() : at::zeros_like(in.u);
    Grads g;
    if (ctx->saved_data["loop"].toBool()) {
      g = loop_grads(in, ctx->saved_data["chunk"].toInt(), saved[5], gy.to(in.u.scalar_type()));
    } else {
      const std::vector<at::Tensor> states(saved.begin() + 5, saved.end());
      g = scan_backward(in, unflatten(ctx->saved_data["spans"].toIntVector()), states, gy);
    }
    return {g.u, g.delta, g.a, g.b, g.c, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// `closed_form`: use the ATen closed form even where the CPU loop applies (tests, benches).
at::Tensor chunked_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& a,
                        const at::Tensor& b, const at::Tensor& c, int64_t chunk,
                        double max_decay, bool closed_form) {
  TORCH_CHECK(chunk > 0, "scan chunk must be positive, got ", chunk);
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(), "u and delta must be [B, L, D], got ",
              u.sizes(), " and ", delta.sizes());
  TORCH_CHECK(a.dim() == 2 && a.size(0) == u.size(2), "A must be [D, N], got ", a.sizes());
  TORCH_CHECK(b.dim() == 3 && b.sizes() == c.sizes() && b.size(0) == u.size(0) &&
                  b.size(1) == u.size(1) && b.size(2) == a.size(1),
              "B and C must be [B, L, N], got ", b.sizes(), " and ", c.sizes());
  const Inputs in{u, delta, a, b, c};
  const bool loop = !closed_form && loop_applies(in);
  const bool wants_grad =
      at::GradMode::is_enabled() &&
      (u.requires_grad() || delta.requires_grad() || a.requires_grad() || b.requires_grad() ||
       c.requires_grad());
  if (wants_grad) {
    return ChunkedScan::apply(u, delta, a, b, c, chunk, max_decay, loop);
  }
  if (loop) {
    return loop_scan(contiguous(in), chunk, nullptr);
  }
  return scan_forward(in, plan_spans(in, chunk, max_decay), nullptr);
}

}  // namespace

#define MDLM_TRY(...) MDLM_CATCH_INTO_ERROR("unknown C++ exception in the selective scan", __VA_ARGS__)

extern "C" {

// `*out` receives a new tensor y [B, L, D]; see chunked_scan (`closed_form` != 0: force it).
char* mdlm_selective_scan_chunked(const at::Tensor* u, const at::Tensor* delta,
                                  const at::Tensor* a, const at::Tensor* b, const at::Tensor* c,
                                  int64_t chunk, double max_decay, int closed_form,
                                  at::Tensor** out) {
  MDLM_TRY(*out = new at::Tensor(
               chunked_scan(*u, *delta, *a, *b, *c, chunk, max_decay, closed_form != 0)))
}

// The spans plan_spans chooses: `*n` of them, starts and lengths in a malloc'd array of 2 n
// int64 (start, len) pairs the caller frees.
char* mdlm_selective_scan_spans(const at::Tensor* delta, const at::Tensor* a, int64_t chunk,
                                double max_decay, int64_t** spans, size_t* n) {
  MDLM_TRY({
    const Inputs in{at::Tensor(), *delta, *a, at::Tensor(), at::Tensor()};
    const auto plan = plan_spans(in, chunk, max_decay);
    auto* buf = static_cast<int64_t*>(std::malloc(2 * plan.size() * sizeof(int64_t)));
    TORCH_CHECK(buf != nullptr || plan.empty(), "out of memory for ", plan.size(), " spans");
    for (size_t i = 0; i < plan.size(); i++) {
      buf[2 * i] = plan[i].start;
      buf[2 * i + 1] = plan[i].len;
    }
    *spans = buf;
    *n = plan.size();
  })
}

}  // extern "C"
