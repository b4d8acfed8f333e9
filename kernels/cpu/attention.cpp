// Attention on the CPU: linear attention with the NaLa or the ReLU feature map (NALAFORMER.md
// section 1) and softmax attention, forward and backward. docs/nala_backward.md derives the
// gradients and names the quantities used here.
//
// Linear attention, per head, in passes over the tokens, each parallel over heads and chunks of
// kChunkTokens tokens (a chunk's partial sums go to the workspace, so the result does not depend
// on the number of threads):
//   forward   1. per key chunk: sum_j K'_j^T v_j = K'^T V and sum_j phiK_j;
//             2. S and kbar = (sum over the chunks) / N;
//             3. per query chunk: z_i and o_i = z_i Q'_i S;
//   backward  1. per query chunk: dq_i, and the partial sums of dS = sum_i z_i Q'_i^T do_i and
//                dkbar = sum_i dden_i phiQ_i;
//             2. dS / N and dkbar / N: the gradients that each key's terms of S and kbar receive;
//             3. per key chunk: dk_j and dv_j.
// A pass builds its chunk's feature rows and does its D x d products as GEMMs (see the passes).
// Features are recomputed from q and k where they are needed; only S, kbar and z are saved.
//
// Softmax attention is tiled like FlashAttention: blocks of kBlockTokens queries meet blocks of
// keys with an online softmax (running max and sum), so no n x n matrix exists.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/cpu/scratch.h"
#include "kernels/cpu/vector_math.h"
#include "kernels/kernels.h"

namespace nala::kernels::cpu {
namespace {

// One token's features live in arrays on the stack, so the head dim is bounded.
constexpr int64_t kMaxHeadDim = 128;
constexpr int64_t kMaxFeatureDim = 2 * kMaxHeadDim;
// Linear attention sums a head's tokens in chunks of this many.
constexpr int64_t kChunkTokens = 256;
// Softmax attention's blocks of queries and of keys.
constexpr int64_t kBlockTokens = 32;
// Added to the normaliser's denominator: z_i = 1 / (phiQ_i . kbar + eps).
constexpr double kDenominatorEps = 1e-6;

void check_head_dim(const char* kernel, int64_t d) {
  if (d <= 0 || d % 4 != 0 || d > kMaxHeadDim)
    throw std::invalid_argument(std::string(kernel) + ": head dim " + std::to_string(d) +
                                " is not a positive multiple of 4 up to " +
                                std::to_string(kMaxHeadDim));
}

int64_t num_chunks(int64_t n) { return (n + kChunkTokens - 1) / kChunkTokens; }

template <typename T>
T dot(int64_t len, const T* a, const T* b) {
  T sum = 0;
  for (int64_t c = 0; c < len; ++c) sum += a[c] * b[c];
  return sum;
}

// ---- the rotary (NALAFORMER.md sections 1 and 3) ----

// y = rho(x) = x cos + rot(x) sin, rot(x)[2t] = -x[2t+1], rot(x)[2t+1] = x[2t] (length d).
template <typename T>
void rotary(int64_t d, const T* x, const T* sin, const T* cos, T* y) {
  for (int64_t t = 0; t < d / 2; ++t) {
    const int64_t c = 2 * t;
    y[c] = x[c] * cos[c] - x[c + 1] * sin[c];
    y[c + 1] = x[c + 1] * cos[c + 1] + x[c] * sin[c + 1];
  }
}

// y = rho^T(g) = g cos - rot(g sin), the transpose of rho, which carries a gradient back.
template <typename T>
void rotary_transposed(int64_t d, const T* g, const T* sin, const T* cos, T* y) {
  for (int64_t t = 0; t < d / 2; ++t) {
    const int64_t c = 2 * t;
    y[c] = g[c] * cos[c] + g[c + 1] * sin[c + 1];
    y[c + 1] = g[c + 1] * cos[c + 1] - g[c] * sin[c];
  }
}

// ---- the feature maps ----
// Both maps are phi = split(x) of a "signed feature" x of length d:
//   split(x) = [relu(x), relu(-x)] (NaLa, width 2d) or relu(x) (ReLU, width d).
// The key's signed feature is kappa = k^3 (NaLa) or k (ReLU); the query's is
// sigma_c = sign(q_c) (|q_c| / n)^p (NaLa, so that split(sigma) = [a^p, b^p]) or q_c (ReLU).

template <FeatureMap fm>
constexpr int64_t kHalves = fm == FeatureMap::Nala ? 2 : 1;

template <FeatureMap fm, typename T>
T key_signed(T k) {
  if constexpr (fm == FeatureMap::Nala) return k * k * k;
  return k;
}

// dk from dkappa.
template <FeatureMap fm, typename T>
T key_signed_backward(T k, T dkappa) {
  if constexpr (fm == FeatureMap::Nala) return 3 * k * k * dkappa;
  return dkappa;
}

// What the NaLa query map needs of a whole row: n = ||q||, 1/n (0 for an all-zero row, whose
// direction is taken as 0) and the power p = 3 (0.5 + tanh n).
template <typename T>
struct QueryScale {
  T norm = 0, inv_norm = 0, power = 1;
};

template <FeatureMap fm, typename T>
QueryScale<T> query_scale(int64_t d, const T* q) {
  QueryScale<T> s;
  if constexpr (fm == FeatureMap::Nala) {
    s.norm = std::sqrt(dot(d, q, q));
    s.inv_norm = s.norm > 0 ? 1 / s.norm : T(0);
    s.power = 3 * (T(0.5) + std::tanh(s.norm));
  }
  return s;
}

// m^p for m in [0, 1] and p in [1.5, 4.5] (the NaLa query map's m = |q_c| / n and power). In
// float it is 2^(p log2 m) evaluated in double and free of branches and calls, so that the loop
// over a row's columns vectorises (std::pow is a call per element). With m = 2^e f and f in
// [sqrt(1/2), sqrt(2)):
//   log2 m = e + (2 / ln 2) atanh(t),  t = (f - 1) / (f + 1),  |t| < 0.172,
//   atanh(t) = t + t^3/3 + ... + t^9/9   (the first term left out is below 3e-9 of the sum),
// and 2^y by exp2_branchless (vector_math.h, to 2e-11): both well under float's rounding (6e-8),
// so the float result matches std::pow's to an ulp or so.
inline float power(float m_float, float p) {
  const double m = m_float;
  uint64_t bits;
  std::memcpy(&bits, &m, sizeof bits);
  int64_t e = static_cast<int64_t>(bits >> 52) - 1023;  // m > 0 is normal in double
  bits = (bits & ((uint64_t(1) << 52) - 1)) | (uint64_t(1023) << 52);
  double f;
  std::memcpy(&f, &bits, sizeof f);  // f in [1, 2)
  const bool high = f > 1.4142135623730951;
  f = high ? f / 2 : f;
  e += high ? 1 : 0;
  const double t = (f - 1) / (f + 1), t2 = t * t;
  const double atanh_t = t * (1 + t2 * (1.0 / 3 + t2 * (1.0 / 5 + t2 * (1.0 / 7 + t2 / 9))));
  // 2^y with y clamped to [-1000, 1000], a NaN to -1000 (p is NaN only in a row holding a NaN,
  // whose m are then 0 or NaN: the final select returns those as they are).
  const double power_of_two =
      exp2_branchless(p * (static_cast<double>(e) + 2.8853900817779268 * atanh_t));
  return m > 0 ? static_cast<float>(power_of_two) : m_float;  // 0^p = 0; NaN stays NaN
}
inline double power(double m, double p) { return std::pow(m, p); }

template <FeatureMap fm, typename T>
T query_signed(T q, const QueryScale<T>& s) {
  if constexpr (fm == FeatureMap::Nala)
    return std::copysign(power(std::abs(q) * s.inv_norm, s.power), q);
  return q;
}

// dq of a row from dsigma. For NaLa, with m_c = |q_c| / n (docs/nala_backward.md, step 6):
//   A = sum_c dsigma_c sigma_c ln m_c,  B = sum_c dsigma_c sigma_c,
//   dn = 3 sech^2(n) A - (p / n) B,
//   dq_c = p dsigma_c sigma_c / q_c + dn q_c / n   (0 where q_c = 0).
template <FeatureMap fm, typename T>
void query_signed_backward(int64_t d, const T* q, const T* sigma, const T* dsigma,
                           const QueryScale<T>& s, T* dq) {
  if constexpr (fm == FeatureMap::Nala) {
    T power_term = 0, scale_term = 0;  // A and B
    for (int64_t c = 0; c < d; ++c) {
      if (sigma[c] == 0) continue;
      const T weight = dsigma[c] * sigma[c];
      power_term += weight * std::log(std::abs(q[c]) * s.inv_norm);
      scale_term += weight;
    }
    const T sech = 1 / std::cosh(s.norm);
    const T dnorm = 3 * sech * sech * power_term - s.power * s.inv_norm * scale_term;
    for (int64_t c = 0; c < d; ++c) {
      const T direct = q[c] != 0 ? s.power * dsigma[c] * sigma[c] / q[c] : T(0);
      dq[c] = direct + dnorm * q[c] * s.inv_norm;
    }
  } else {
    std::copy(dsigma, dsigma + d, dq);
  }
}

template <FeatureMap fm, typename T>
void split_signs(int64_t d, const T* x, T* phi) {
  for (int64_t c = 0; c < d; ++c) {
    phi[c] = std::max(x[c], T(0));
    if constexpr (fm == FeatureMap::Nala) phi[d + c] = std::max(-x[c], T(0));
  }
}

// dx from dphi: dx_c = [x_c > 0] dphi_c - [x_c < 0] dphi_{d+c}.
template <FeatureMap fm, typename T>
void split_signs_backward(int64_t d, const T* x, const T* dphi, T* dx) {
  for (int64_t c = 0; c < d; ++c) {
    dx[c] = x[c] > 0 ? dphi[c] : T(0);
    if constexpr (fm == FeatureMap::Nala)
      if (x[c] < 0) dx[c] = -dphi[d + c];
  }
}

// rho on each d-wide half of a feature, with the same tables.
template <FeatureMap fm, typename T>
void rotary_halves(int64_t d, const T* phi, const T* sin, const T* cos, T* rotated) {
  for (int64_t h = 0; h < kHalves<fm>; ++h) rotary(d, phi + h * d, sin, cos, rotated + h * d);
}

template <FeatureMap fm, typename T>
void rotary_halves_transposed(int64_t d, const T* g, const T* sin, const T* cos, T* y) {
  for (int64_t h = 0; h < kHalves<fm>; ++h) rotary_transposed(d, g + h * d, sin, cos, y + h * d);
}

// One key row's kappa, phiK and K' = rho(phiK).
template <FeatureMap fm, typename T>
void key_features(int64_t d, const T* k, const T* sin, const T* cos, T* kappa, T* phi, T* rotated) {
  for (int64_t c = 0; c < d; ++c) kappa[c] = key_signed<fm>(k[c]);
  split_signs<fm>(d, kappa, phi);
  rotary_halves<fm>(d, phi, sin, cos, rotated);
}

// One query row's sigma, phiQ and Q' = rho(phiQ); returns the row's scale.
template <FeatureMap fm, typename T>
QueryScale<T> query_features(int64_t d, const T* q, const T* sin, const T* cos, T* sigma, T* phi,
                             T* rotated) {
  const QueryScale<T> s = query_scale<fm>(d, q);
#pragma omp simd
  for (int64_t c = 0; c < d; ++c) sigma[c] = query_signed<fm>(q[c], s);
  split_signs<fm>(d, sigma, phi);
  rotary_halves<fm>(d, phi, sin, cos, rotated);
  return s;
}

// ---- linear attention: the passes ----
// Each pass works on a chunk of a head's tokens: it builds the chunk's feature rows (K' or Q',
// rows x D) in this thread's scratch, then does its D x d products over the whole chunk as
// matrix products with the library's GEMM (kernels/cpu/matmul.cpp: packed panels, register
// blocks), instead of a rank-1 update per token whose D x d sum would stream through L1 once
// per token. Called inside a parallel loop, the GEMM runs on the calling thread.

struct ChunkFeatures {};  // the tag of the passes' per-thread scratch (scratch.h)

// C (m x n, leading dim n) = op(A) op(B) for one chunk: the GEMM of kernel_list.inc, once.
template <typename T>
void chunk_product(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a,
                   int64_t lda, const T* b, int64_t ldb, T* c) {
  gemm(trans_a, trans_b, m, n, k, T(1), a, lda, 0, b, ldb, 0, T(0), c, n, 0, 1);
}

// Forward pass 1 over a chunk of keys: kv_sum = K'^T V (D x d) = sum_j K'_j^T v_j, and
// key_sum = sum_j phiK_j.
template <FeatureMap fm, typename T>
void sum_key_chunk(int64_t tokens, int64_t d, const T* k, const T* v, const T* sin, const T* cos,
                   T* kv_sum, T* key_sum) {
  const int64_t width = feature_dim(fm, d);
  T kappa[kMaxHeadDim], phi[kMaxFeatureDim] = {};
  T* rotated = thread_scratch<ChunkFeatures, T>(tokens * width);  // K', tokens x D
  std::fill(key_sum, key_sum + width, T(0));
  for (int64_t j = 0; j < tokens; ++j) {
    key_features<fm>(d, k + j * d, sin + j * d, cos + j * d, kappa, phi, rotated + j * width);
    for (int64_t c = 0; c < width; ++c) key_sum[c] += phi[c];
  }
  chunk_product(true, false, width, d, tokens, rotated, width, v, d, kv_sum);
}

// Pass 2: matrix = scale * the sum of the chunks' partials, each a matrix of matrix_size
// elements followed by a vector of vector_size; vector likewise.
template <typename T>
void sum_partials(int64_t chunks, int64_t matrix_size, int64_t vector_size, T scale,
                  const T* partials, T* matrix, T* vector) {
  const int64_t partial_size = matrix_size + vector_size;
  for (int64_t i = 0; i < partial_size; ++i) {
    T sum = 0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partials[chunk * partial_size + i];
    if (i < matrix_size)
      matrix[i] = scale * sum;
    else
      vector[i - matrix_size] = scale * sum;
  }
}

// Forward pass 3 over a chunk of queries: z_i = 1 / (phiQ_i . kbar + eps) and o_i = z_i Q'_i S,
// the chunk's O = diag(z) Q' S.
template <FeatureMap fm, typename T>
void attend_query_chunk(int64_t tokens, int64_t d, const T* q, const T* sin, const T* cos,
                        const T* state, const T* kbar, T* o, T* z) {
  const int64_t width = feature_dim(fm, d);
  T sigma[kMaxHeadDim], phi[kMaxFeatureDim] = {};
  T* rotated = thread_scratch<ChunkFeatures, T>(tokens * width);  // Q', tokens x D
  for (int64_t i = 0; i < tokens; ++i) {
    query_features<fm>(d, q + i * d, sin + i * d, cos + i * d, sigma, phi, rotated + i * width);
    z[i] = 1 / (dot(width, phi, kbar) + T(kDenominatorEps));
  }
  chunk_product(false, false, tokens, d, width, rotated, width, state, d, o);
  for (int64_t i = 0; i < tokens; ++i)
    for (int64_t e = 0; e < d; ++e) o[i * d + e] *= z[i];
}

// Backward pass 1 over a chunk of queries: dq of each, and the chunk's partial sums
//   dstate = sum_i z_i Q'_i^T do_i = Q'^T (z do) (D x d),  dkbar = sum_i dden_i phiQ_i (D),
// where, with dQ' = (z do) S^T, the denominator's gradient is dden_i = -z_i Q'_i . dQ'_i.
template <FeatureMap fm, typename T>
void query_chunk_backward(int64_t tokens, int64_t d, const T* q, const T* sin, const T* cos,
                          const T* state, const T* kbar, const T* z, const T* dout, T* dq,
                          T* dstate, T* dkbar) {
  const int64_t width = feature_dim(fm, d);
  T phi[kMaxFeatureDim] = {}, dphi[kMaxFeatureDim], dsigma[kMaxHeadDim];
  T* rotated = thread_scratch<ChunkFeatures, T>(tokens * (2 * width + 2 * d));  // Q', tokens x D
  T* drotated = rotated + tokens * width;                                       // dQ', tokens x D
  T* zdo = drotated + tokens * width;  // z_i do_i, tokens x d
  T* sigma = zdo + tokens * d;         // tokens x d
  QueryScale<T> scales[kChunkTokens];
  for (int64_t i = 0; i < tokens; ++i) {
    scales[i] = query_features<fm>(d, q + i * d, sin + i * d, cos + i * d, sigma + i * d, phi,
                                   rotated + i * width);
    for (int64_t e = 0; e < d; ++e) zdo[i * d + e] = z[i] * dout[i * d + e];
  }
  chunk_product(false, true, tokens, width, d, zdo, d, state, d, drotated);
  chunk_product(true, false, width, d, tokens, rotated, width, zdo, d, dstate);
  std::fill(dkbar, dkbar + width, T(0));
  for (int64_t i = 0; i < tokens; ++i) {
    const T* row_sin = sin + i * d;
    const T* row_cos = cos + i * d;
    const T* row_sigma = sigma + i * d;
    const T dden = -z[i] * dot(width, rotated + i * width, drotated + i * width);
    rotary_halves_transposed<fm>(d, drotated + i * width, row_sin, row_cos, dphi);
    for (int64_t c = 0; c < width; ++c) dphi[c] += dden * kbar[c];
    split_signs_backward<fm>(d, row_sigma, dphi, dsigma);
    query_signed_backward<fm>(d, q + i * d, row_sigma, dsigma, scales[i], dq + i * d);
    split_signs<fm>(d, row_sigma, phi);
    for (int64_t c = 0; c < width; ++c) dkbar[c] += dden * phi[c];
  }
}

// Backward pass 3 over a chunk of keys, from dstate_token = dS / N (D x d) and
// dkbar_token = dkbar / N:
//   dv = K' dstate_token,  dK' = V dstate_token^T,  dphiK = rho^T(dK') + dkbar_token,
// then dk through the sign split and the cube.
template <FeatureMap fm, typename T>
void key_chunk_backward(int64_t tokens, int64_t d, const T* k, const T* v, const T* sin,
                        const T* cos, const T* dstate_token, const T* dkbar_token, T* dk, T* dv) {
  const int64_t width = feature_dim(fm, d);
  T kappa[kMaxHeadDim], phi[kMaxFeatureDim] = {}, dphi[kMaxFeatureDim], dkappa[kMaxHeadDim];
  T* rotated = thread_scratch<ChunkFeatures, T>(2 * tokens * width);  // K', tokens x D
  T* drotated = rotated + tokens * width;                             // dK', tokens x D
  for (int64_t j = 0; j < tokens; ++j)
    key_features<fm>(d, k + j * d, sin + j * d, cos + j * d, kappa, phi, rotated + j * width);
  chunk_product(false, false, tokens, d, width, rotated, width, dstate_token, d, dv);
  chunk_product(false, true, tokens, width, d, v, d, dstate_token, d, drotated);
  for (int64_t j = 0; j < tokens; ++j) {
    const T* kj = k + j * d;
    for (int64_t c = 0; c < d; ++c) kappa[c] = key_signed<fm>(kj[c]);
    rotary_halves_transposed<fm>(d, drotated + j * width, sin + j * d, cos + j * d, dphi);
    for (int64_t c = 0; c < width; ++c) dphi[c] += dkbar_token[c];
    split_signs_backward<fm>(d, kappa, dphi, dkappa);
    for (int64_t c = 0; c < d; ++c) dk[j * d + c] = key_signed_backward<fm>(kj[c], dkappa[c]);
  }
}

// ---- linear attention: the kernels ----
// The workspace holds, per head, one partial sum per chunk (a D x d matrix then a D vector),
// then (backward) the head's dS / N and dkbar / N in the same layout.

// Runs pass(h, chunk, first, rows, at) over every (head, chunk) pair, in parallel: the chunk's
// tokens [first, first + rows) of head h, whose rows of a (bh, n, d) tensor start at element `at`.
template <typename Pass>
void for_each_chunk(int64_t bh, int64_t n, int64_t d, Pass pass) {
  const int64_t chunks = num_chunks(n);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t h = 0; h < bh; ++h)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t first = chunk * kChunkTokens;
      pass(h, chunk, first, std::min(kChunkTokens, n - first), (h * n + first) * d);
    }
}

template <FeatureMap fm, typename T>
void linear_forward(int64_t bh, int64_t n, int64_t d, const T* q, const T* k, const T* v,
                    const T* sin, const T* cos, T* o, T* state, T* kbar, T* z, T* workspace) {
  const int64_t width = feature_dim(fm, d);
  const int64_t partial_size = width * d + width;
  const int64_t chunks = num_chunks(n);
  for_each_chunk(bh, n, d, [&](int64_t h, int64_t chunk, int64_t first, int64_t rows, int64_t at) {
    T* partial = workspace + (h * chunks + chunk) * partial_size;
    sum_key_chunk<fm>(rows, d, k + at, v + at, sin + first * d, cos + first * d, partial,
                      partial + width * d);
  });
#pragma omp parallel for schedule(static)
  for (int64_t h = 0; h < bh; ++h)
    sum_partials(chunks, width * d, width, T(1) / T(n), workspace + h * chunks * partial_size,
                 state + h * width * d, kbar + h * width);
  for_each_chunk(bh, n, d, [&](int64_t h, int64_t, int64_t first, int64_t rows, int64_t at) {
    attend_query_chunk<fm>(rows, d, q + at, sin + first * d, cos + first * d, state + h * width * d,
                           kbar + h * width, o + at, z + h * n + first);
  });
}

template <FeatureMap fm, typename T>
void linear_backward(int64_t bh, int64_t n, int64_t d, const T* q, const T* k, const T* v,
                     const T* sin, const T* cos, const T* state, const T* kbar, const T* z,
                     const T* dout, T* dq, T* dk, T* dv, T* workspace) {
  const int64_t width = feature_dim(fm, d);
  const int64_t partial_size = width * d + width;
  const int64_t chunks = num_chunks(n);
  T* token_grads = workspace + bh * chunks * partial_size;  // dS / N and dkbar / N per head
  for_each_chunk(bh, n, d, [&](int64_t h, int64_t chunk, int64_t first, int64_t rows, int64_t at) {
    T* partial = workspace + (h * chunks + chunk) * partial_size;
    query_chunk_backward<fm>(rows, d, q + at, sin + first * d, cos + first * d,
                             state + h * width * d, kbar + h * width, z + h * n + first, dout + at,
                             dq + at, partial, partial + width * d);
  });
#pragma omp parallel for schedule(static)
  for (int64_t h = 0; h < bh; ++h) {
    T* grads = token_grads + h * partial_size;
    sum_partials(chunks, width * d, width, T(1) / T(n), workspace + h * chunks * partial_size,
                 grads, grads + width * d);
  }
  for_each_chunk(bh, n, d, [&](int64_t h, int64_t, int64_t first, int64_t rows, int64_t at) {
    const T* grads = token_grads + h * partial_size;
    key_chunk_backward<fm>(rows, d, k + at, v + at, sin + first * d, cos + first * d, grads,
                           grads + width * d, dk + at, dv + at);
  });
}

// ---- softmax attention ----

// Softmax scores are d^-1/2 rho(q_i) . rho(k_j); rows [first, first + rows) of x (n, d), rotated.
template <typename T>
void rotate_rows(int64_t first, int64_t rows, int64_t d, const T* x, const T* sin, const T* cos,
                 T* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t at = (first + r) * d;
    rotary(d, x + at, sin + at, cos + at, y + r * d);
  }
}

// One head's block of queries [first, first + rows): o and lse by an online softmax over the
// key blocks. For each query row, with m the running max and l the running sum:
//   m' = max(m, max_j s_j),  l' = e^(m - m') l + sum_j e^(s_j - m'),
//   o' = e^(m - m') o + sum_j e^(s_j - m') v_j;   finally o /= l, lse = m + ln l.
template <typename T>
void softmax_forward_block(int64_t n, int64_t d, int64_t first, int64_t rows, const T* q,
                           const T* k, const T* v, const T* sin, const T* cos, T* o, T* lse) {
  const T scale = 1 / std::sqrt(T(d));
  T rq[kBlockTokens * kMaxHeadDim], rk[kBlockTokens * kMaxHeadDim];
  T row_max[kBlockTokens], row_sum[kBlockTokens], p[kBlockTokens];
  rotate_rows(first, rows, d, q, sin, cos, rq);
  std::fill(row_max, row_max + rows, -std::numeric_limits<T>::infinity());
  std::fill(row_sum, row_sum + rows, T(0));
  std::fill(o + first * d, o + (first + rows) * d, T(0));
  for (int64_t key_first = 0; key_first < n; key_first += kBlockTokens) {
    const int64_t keys = std::min(kBlockTokens, n - key_first);
    rotate_rows(key_first, keys, d, k, sin, cos, rk);
    for (int64_t r = 0; r < rows; ++r) {
      T block_max = row_max[r];
      for (int64_t j = 0; j < keys; ++j) {
        p[j] = scale * dot(d, rq + r * d, rk + j * d);
        block_max = std::max(block_max, p[j]);
      }
      const T rescale = std::exp(row_max[r] - block_max);
      T* oi = o + (first + r) * d;
      row_sum[r] *= rescale;
      for (int64_t e = 0; e < d; ++e) oi[e] *= rescale;
      for (int64_t j = 0; j < keys; ++j) {
        p[j] = std::exp(p[j] - block_max);
        row_sum[r] += p[j];
        const T* vj = v + (key_first + j) * d;
        for (int64_t e = 0; e < d; ++e) oi[e] += p[j] * vj[e];
      }
      row_max[r] = block_max;
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    T* oi = o + (first + r) * d;
    for (int64_t e = 0; e < d; ++e) oi[e] /= row_sum[r];
    lse[first + r] = row_max[r] + std::log(row_sum[r]);
  }
}

// The softmax backward recomputes P_ij = e^(s_ij - lse_i) from the saved lse; with
// dP_ij = do_i . v_j and D_i = do_i . o_i, the score's gradient is ds_ij = P_ij (dP_ij - D_i).

// dq for one head's block of queries: drq_i = d^-1/2 sum_j ds_ij rho(k_j), dq_i = rho^T(drq_i).
template <typename T>
void softmax_backward_query_block(int64_t n, int64_t d, int64_t first, int64_t rows, const T* q,
                                  const T* k, const T* v, const T* sin, const T* cos, const T* lse,
                                  const T* delta, const T* dout, T* dq) {
  const T scale = 1 / std::sqrt(T(d));
  T rq[kBlockTokens * kMaxHeadDim], rk[kBlockTokens * kMaxHeadDim];
  T drq[kBlockTokens * kMaxHeadDim] = {};
  rotate_rows(first, rows, d, q, sin, cos, rq);
  for (int64_t key_first = 0; key_first < n; key_first += kBlockTokens) {
    const int64_t keys = std::min(kBlockTokens, n - key_first);
    rotate_rows(key_first, keys, d, k, sin, cos, rk);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = first + r;
      for (int64_t j = 0; j < keys; ++j) {
        const T prob = std::exp(scale * dot(d, rq + r * d, rk + j * d) - lse[i]);
        const T ds = prob * (dot(d, dout + i * d, v + (key_first + j) * d) - delta[i]);
        for (int64_t c = 0; c < d; ++c) drq[r * d + c] += scale * ds * rk[j * d + c];
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t at = (first + r) * d;
    rotary_transposed(d, drq + r * d, sin + at, cos + at, dq + at);
  }
}

// dk and dv for one head's block of keys:
//   dv_j = sum_i P_ij do_i,  drk_j = d^-1/2 sum_i ds_ij rho(q_i),  dk_j = rho^T(drk_j).
template <typename T>
void softmax_backward_key_block(int64_t n, int64_t d, int64_t first, int64_t rows, const T* q,
                                const T* k, const T* v, const T* sin, const T* cos, const T* lse,
                                const T* delta, const T* dout, T* dk, T* dv) {
  const T scale = 1 / std::sqrt(T(d));
  T rq[kBlockTokens * kMaxHeadDim], rk[kBlockTokens * kMaxHeadDim];
  T drk[kBlockTokens * kMaxHeadDim] = {};
  rotate_rows(first, rows, d, k, sin, cos, rk);
  std::fill(dv + first * d, dv + (first + rows) * d, T(0));
  for (int64_t query_first = 0; query_first < n; query_first += kBlockTokens) {
    const int64_t queries = std::min(kBlockTokens, n - query_first);
    rotate_rows(query_first, queries, d, q, sin, cos, rq);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t j = first + r;
      T* dvj = dv + j * d;
      for (int64_t qi = 0; qi < queries; ++qi) {
        const int64_t i = query_first + qi;
        const T* doi = dout + i * d;
        const T prob = std::exp(scale * dot(d, rq + qi * d, rk + r * d) - lse[i]);
        const T ds = prob * (dot(d, doi, v + j * d) - delta[i]);
        for (int64_t e = 0; e < d; ++e) dvj[e] += prob * doi[e];
        for (int64_t c = 0; c < d; ++c) drk[r * d + c] += scale * ds * rq[qi * d + c];
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t at = (first + r) * d;
    rotary_transposed(d, drk + r * d, sin + at, cos + at, dk + at);
  }
}

int64_t num_blocks(int64_t n) { return (n + kBlockTokens - 1) / kBlockTokens; }

}  // namespace

// ---- the kernels of kernel_list.inc ----

int64_t linear_attention_workspace_size(FeatureMap fm, int64_t bh, int64_t n, int64_t d) {
  const int64_t width = feature_dim(fm, d);
  return bh * (num_chunks(n) + 1) * (width * d + width);
}

template <typename T>
void linear_attention_forward(FeatureMap fm, int64_t bh, int64_t n, int64_t d, const T* q,
                              const T* k, const T* v, const T* sin, const T* cos, T* o, T* state,
                              T* kbar, T* z, T* workspace) {
  check_head_dim("linear_attention_forward", d);
  if (bh == 0 || n == 0) return;
  if (fm == FeatureMap::Nala)
    linear_forward<FeatureMap::Nala>(bh, n, d, q, k, v, sin, cos, o, state, kbar, z, workspace);
  else
    linear_forward<FeatureMap::Relu>(bh, n, d, q, k, v, sin, cos, o, state, kbar, z, workspace);
}

template <typename T>
void linear_attention_backward(FeatureMap fm, int64_t bh, int64_t n, int64_t d, const T* q,
                               const T* k, const T* v, const T* sin, const T* cos, const T* state,
                               const T* kbar, const T* z, const T* dout, T* dq, T* dk, T* dv,
                               T* workspace) {
  check_head_dim("linear_attention_backward", d);
  if (bh == 0 || n == 0) return;
  if (fm == FeatureMap::Nala)
    linear_backward<FeatureMap::Nala>(bh, n, d, q, k, v, sin, cos, state, kbar, z, dout, dq, dk, dv,
                                      workspace);
  else
    linear_backward<FeatureMap::Relu>(bh, n, d, q, k, v, sin, cos, state, kbar, z, dout, dq, dk, dv,
                                      workspace);
}

template <typename T>
void softmax_attention_forward(int64_t bh, int64_t n, int64_t d, const T* q, const T* k, const T* v,
                               const T* sin, const T* cos, T* o, T* lse) {
  check_head_dim("softmax_attention_forward", d);
  const int64_t blocks = num_blocks(n);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t h = 0; h < bh; ++h)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t at = h * n * d;
      const int64_t first = block * kBlockTokens;
      softmax_forward_block(n, d, first, std::min(kBlockTokens, n - first), q + at, k + at, v + at,
                            sin, cos, o + at, lse + h * n);
    }
}

// The workspace holds D_i = do_i . o_i, (bh, n).
int64_t softmax_attention_workspace_size(int64_t bh, int64_t n, int64_t /*d*/) { return bh * n; }

template <typename T>
void softmax_attention_backward(int64_t bh, int64_t n, int64_t d, const T* q, const T* k,
                                const T* v, const T* sin, const T* cos, const T* o, const T* lse,
                                const T* dout, T* dq, T* dk, T* dv, T* workspace) {
  check_head_dim("softmax_attention_backward", d);
  T* delta = workspace;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < bh * n; ++row) delta[row] = dot(d, dout + row * d, o + row * d);
  const int64_t blocks = num_blocks(n);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t h = 0; h < bh; ++h)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t at = h * n * d;
      const int64_t first = block * kBlockTokens;
      const int64_t rows = std::min(kBlockTokens, n - first);
      softmax_backward_query_block(n, d, first, rows, q + at, k + at, v + at, sin, cos, lse + h * n,
                                   delta + h * n, dout + at, dq + at);
      softmax_backward_key_block(n, d, first, rows, q + at, k + at, v + at, sin, cos, lse + h * n,
                                 delta + h * n, dout + at, dk + at, dv + at);
    }
}

#define NALA_INSTANTIATE(T)                                                                     \
  template void linear_attention_forward<T>(FeatureMap, int64_t, int64_t, int64_t, const T*,    \
                                            const T*, const T*, const T*, const T*, T*, T*, T*, \
                                            T*, T*);                                            \
  template void linear_attention_backward<T>(FeatureMap, int64_t, int64_t, int64_t, const T*,   \
                                             const T*, const T*, const T*, const T*, const T*,  \
                                             const T*, const T*, const T*, T*, T*, T*, T*);     \
  template void softmax_attention_forward<T>(int64_t, int64_t, int64_t, const T*, const T*,     \
                                             const T*, const T*, const T*, T*, T*);             \
  template void softmax_attention_backward<T>(int64_t, int64_t, int64_t, const T*, const T*,    \
                                              const T*, const T*, const T*, const T*, const T*, \
                                              const T*, T*, T*, T*, T*);
NALA_INSTANTIATE(float)
NALA_INSTANTIATE(double)
#undef NALA_INSTANTIATE

}  // namespace nala::kernels::cpu
