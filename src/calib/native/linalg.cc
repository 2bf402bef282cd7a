// moefy linear algebra addon: the float64 solves of calibration (expert repair's ridge least squares) and the Gram
// matrices they are built from, through OpenBLAS/LAPACK linked statically, on one thread so that the result does
// not depend on the core count. JavaScript passes typed arrays; they are read and written in place.
#include <napi.h>

#include <string>
#include <vector>

extern "C" {
void dposv_(const char* uplo, const int* n, const int* nrhs, double* a, const int* lda, double* b, const int* ldb,
            int* info);
void dsymm_(const char* side, const char* uplo, const int* m, const int* n, const double* alpha, const double* a,
            const int* lda, const double* b, const int* ldb, const double* beta, double* c, const int* ldc);
void ssyrk_(const char* uplo, const char* trans, const int* n, const int* k, const float* alpha, const float* a,
            const int* lda, const float* beta, float* c, const int* ldc);
void openblas_set_num_threads(int);
}

namespace {

double* F64(const Napi::Value& v, size_t want, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a Float64Array");
  auto a = v.As<Napi::Float64Array>();
  if (a.ElementLength() != want)
    throw Napi::RangeError::New(v.Env(), std::string(what) + " has " + std::to_string(a.ElementLength()) +
                                             " values, expected " + std::to_string(want));
  return a.Data();
}

int Dim(const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 1 && d <= 1 << 20) || d != static_cast<int>(d))
    throw Napi::RangeError::New(v.Env(), std::string(what) + " must be a whole number in 1…2^20");
  return static_cast<int>(d);
}

// solveSpd(A, B, n, k): A [n, n] symmetric positive definite (row-major = column-major), B [n, k] row-major.
// On return B holds X with A·X = B and A its Cholesky factor. Returns LAPACK's info (0: solved; > 0: not positive
// definite at that pivot).
Napi::Value SolveSpd(const Napi::CallbackInfo& info) {
  const int n = Dim(info[2], "n"), k = Dim(info[3], "k");
  double* A = F64(info[0], static_cast<size_t>(n) * n, "A");
  double* B = F64(info[1], static_cast<size_t>(n) * k, "B");
  openblas_set_num_threads(1);
  // LAPACK is column-major: B [n, k] row-major is Bᵀ [k, n]; solve A·X = B as Xᵀ·A = Bᵀ by transposing through a
  // column-major copy.
  std::vector<double> bt(static_cast<size_t>(n) * k);
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < k; ++c) bt[static_cast<size_t>(c) * n + i] = B[static_cast<size_t>(i) * k + c];
  int status = 0;
  dposv_("L", &n, &k, A, &n, bt.data(), &n, &status);
  if (status == 0)
    for (int i = 0; i < n; ++i)
      for (int c = 0; c < k; ++c) B[static_cast<size_t>(i) * k + c] = bt[static_cast<size_t>(c) * n + i];
  return Napi::Number::New(info.Env(), status);
}

// quadForm(G, W, n, k): Σ_ij Wᵀ G W over the trace, tr(Wᵀ·G·W), for G [n, n] symmetric and W [n, k] row-major.
Napi::Value QuadForm(const Napi::CallbackInfo& info) {
  const int n = Dim(info[2], "n"), k = Dim(info[3], "k");
  const double* G = F64(info[0], static_cast<size_t>(n) * n, "G");
  const double* W = F64(info[1], static_cast<size_t>(n) * k, "W");
  openblas_set_num_threads(1);
  // Row-major W [n, k] is column-major Wᵀ [k, n]; Wᵀ·G (G symmetric) = dsymm from the right.
  std::vector<double> wg(static_cast<size_t>(n) * k);
  const double one = 1, zero = 0;
  dsymm_("R", "L", &k, &n, &one, G, &n, W, &k, &zero, wg.data(), &k);
  double s = 0;
  for (size_t i = 0; i < wg.size(); ++i) s += wg[i] * W[i];
  return Napi::Number::New(info.Env(), s);
}

// gramAdd(G, A, n, h, ld): G[i·ld + j] += Σ_t A[t, i]·A[t, j] for i ≤ j < h (the upper triangle of the row-major
// float64 G, which is what dposv/dsymm with "L" read), A [n, h] row-major float32: one ssyrk (half the products of a
// full AᵀA) in float32, summed into float64 as the chunks of the moments are.
Napi::Value GramAdd(const Napi::CallbackInfo& info) {
  const int n = Dim(info[2], "n"), h = Dim(info[3], "h"), ld = Dim(info[4], "ld");
  if (ld < h) throw Napi::RangeError::New(info.Env(), "ld must be at least h");
  double* G = F64(info[0], static_cast<size_t>(ld) * ld, "G");
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw Napi::TypeError::New(info.Env(), "A must be a Float32Array");
  auto a = info[1].As<Napi::Float32Array>();
  if (a.ElementLength() != static_cast<size_t>(n) * h)
    throw Napi::RangeError::New(info.Env(), "A has " + std::to_string(a.ElementLength()) + " values, expected n·h");
  openblas_set_num_threads(1);
  // Row-major A [n, h] is column-major Aᵀ [h, n]: Aᵀ·(Aᵀ)ᵀ = AᵀA with trans "N"; its column-major lower triangle
  // (r ≥ c at c·h + r) is the row-major upper one.
  // One buffer per thread for its life, reused by every chunk (64 MB at VAR-d16's h 4096; beta 0 overwrites it).
  thread_local std::vector<float> c;
  if (c.size() < static_cast<size_t>(h) * h) c.resize(static_cast<size_t>(h) * h);
  const float one = 1, zero = 0;
  ssyrk_("L", "N", &h, &n, &one, a.Data(), &h, &zero, c.data(), &h);
  for (int col = 0; col < h; ++col) {
    const float* src = c.data() + static_cast<size_t>(col) * h;
    double* dst = G + static_cast<size_t>(col) * ld;
    for (int r = col; r < h; ++r) dst[r] += src[r];
  }
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("gramAdd", Napi::Function::New(env, GramAdd));
  exports.Set("solveSpd", Napi::Function::New(env, SolveSpd));
  exports.Set("quadForm", Napi::Function::New(env, QuadForm));
  return exports;
}

}  // namespace

NODE_API_MODULE(moefy_linalg, Init)
