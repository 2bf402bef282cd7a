// moefy linear algebra addon: the float64 solves of calibration (expert repair's ridge least squares) through
// OpenBLAS/LAPACK, linked statically, on one thread so that the result does not depend on the core count.
// JavaScript passes Float64Arrays; they are read and written in place.
#include <napi.h>

#include <string>
#include <vector>

extern "C" {
void dposv_(const char* uplo, const int* n, const int* nrhs, double* a, const int* lda, double* b, const int* ldb,
            int* info);
void dsymm_(const char* side, const char* uplo, const int* m, const int* n, const double* alpha, const double* a,
            const int* lda, const double* b, const int* ldb, const double* beta, double* c, const int* ldc);
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

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("solveSpd", Napi::Function::New(env, SolveSpd));
  exports.Set("quadForm", Napi::Function::New(env, QuadForm));
  return exports;
}

}  // namespace

NODE_API_MODULE(moefy_linalg, Init)
