// moefy runtime addon: opens ONNX Runtime sessions on the libonnxruntime.so.1 that onnxruntime-node ships (dlopen +
// OrtGetApiBase), registers the moefy custom-op library, and runs models. Tensors cross the boundary as plain
// {type, dims, data} objects; the TypeScript side wraps them in onnxruntime-common Tensors.
#include <dlfcn.h>
#include <napi.h>
#include "ort_api.h"  // kernels/src: the C API version the project requests, defined once

#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

constexpr uint32_t kApiVersion = moefy::kOrtApiVersion;

const OrtApi* g_api = nullptr;
OrtEnv* g_env = nullptr;
std::string g_version;
std::mutex g_mu;

struct OrtError {
  std::string msg;
};

void Check(OrtStatus* st) {
  if (st) {
    std::string m = g_api->GetErrorMessage(st);
    g_api->ReleaseStatus(st);
    throw OrtError{m};
  }
}

struct TypeName {
  const char* name;
  ONNXTensorElementDataType type;
  size_t size;
};
const TypeName kTypes[] = {
    {"float32", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, 4},   {"float16", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, 2},
    {"float64", ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE, 8},  {"int8", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, 1},
    {"uint8", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, 1},     {"int16", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16, 2},
    {"uint16", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16, 2},   {"int32", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, 4},
    {"uint32", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32, 4},   {"int64", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, 8},
    {"uint64", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64, 8},   {"bool", ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL, 1},
};

const TypeName* ByName(const std::string& n) {
  for (auto& t : kTypes)
    if (n == t.name) return &t;
  return nullptr;
}
const TypeName* ByType(ONNXTensorElementDataType ty) {
  for (auto& t : kTypes)
    if (ty == t.type) return &t;
  return nullptr;
}

Napi::Value MakeTyped(Napi::Env env, const TypeName* t, Napi::ArrayBuffer ab, size_t n) {
  switch (t->type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return Napi::Float32Array::New(env, n, ab, 0);
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return Napi::Float64Array::New(env, n, ab, 0);
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: return Napi::Uint16Array::New(env, n, ab, 0);
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return Napi::Int8Array::New(env, n, ab, 0);
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return Napi::Uint8Array::New(env, n, ab, 0);
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return Napi::Int16Array::New(env, n, ab, 0);
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return Napi::Int32Array::New(env, n, ab, 0);
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32: return Napi::Uint32Array::New(env, n, ab, 0);
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return Napi::BigInt64Array::New(env, n, ab, 0);
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64: return Napi::BigUint64Array::New(env, n, ab, 0);
    default: return env.Undefined();
  }
}

// Output buffers from 64 KiB to 64 MiB come from a pool of recycled blocks (an ArrayBuffer over a block returns it
// when collected): a fresh JavaScript buffer per run is fresh memory from the OS, whose page faults, zeroing and
// unmapping dominated a small model's run (1 MiB output, 2 cores: mean 0.70 -> 0.27 ms per run, min 0.19 -> 0.14).
// Blocks are sized to the page and reused for outputs of the same size (a loop's outputs repeat their sizes), 64-byte
// aligned; at most kPoolKeep bytes are kept free (with 64 MiB, blocks were freed and paged in again: V8 collects the
// outputs of more than 64 MiB of runs at a time).
class OutputPool {
 public:
  static constexpr size_t kMin = size_t(64) << 10;
  static constexpr size_t kMax = size_t(64) << 20;
  static constexpr size_t kPoolKeep = size_t(256) << 20;

  // An ArrayBuffer of `bytes` holding a copy of data; null on failure (the caller then copies the usual way).
  static napi_value Copy(napi_env env, const void* data, size_t bytes) {
    const size_t cap = (bytes + 4095) / 4096 * 4096;
    void* p = Take(cap);
    if (!p) return nullptr;
    std::memcpy(p, data, bytes);
    napi_value ab = nullptr;
    if (napi_create_external_arraybuffer(env, p, bytes, Return, reinterpret_cast<void*>(cap), &ab) != napi_ok) {
      Give(p, cap);
      bool pending = false;  // e.g. a runtime that forbids external buffers: clear what the failed call left
      if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
        napi_value ignored;
        napi_get_and_clear_last_exception(env, &ignored);
      }
      return nullptr;
    }
    return ab;
  }

 private:
  static void* Take(size_t cap) {
    {
      std::lock_guard<std::mutex> lk(mu());
      auto it = free_blocks().find(cap);
      if (it != free_blocks().end()) {
        void* p = it->second;
        free_blocks().erase(it);
        kept() -= cap;
        return p;
      }
    }
    return std::aligned_alloc(64, cap);
  }
  static void Give(void* p, size_t cap) {
    {
      std::lock_guard<std::mutex> lk(mu());
      if (kept() + cap <= kPoolKeep) {
        free_blocks().emplace(cap, p);
        kept() += cap;
        return;
      }
    }
    std::free(p);
  }
  // Finalizers may run on any thread that owns an environment (worker threads): hence the lock.
  static void Return(napi_env, void* p, void* hint) { Give(p, reinterpret_cast<size_t>(hint)); }
  // Function-local statics, never destroyed: a finalizer may still run at exit.
  static std::mutex& mu() {
    static auto* m = new std::mutex;
    return *m;
  }
  static std::unordered_multimap<size_t, void*>& free_blocks() {
    static auto* v = new std::unordered_multimap<size_t, void*>;
    return *v;
  }
  static size_t& kept() {
    static size_t k = 0;
    return k;
  }
};

// An output's data as a new ArrayBuffer (a pooled block for large outputs).
Napi::ArrayBuffer OutputBuffer(Napi::Env env, const void* data, size_t bytes) {
  if (bytes >= OutputPool::kMin && bytes <= OutputPool::kMax) {
    if (napi_value ab = OutputPool::Copy(env, data, bytes)) return Napi::ArrayBuffer(env, ab);
  }
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, bytes);
  if (bytes) std::memcpy(ab.Data(), data, bytes);
  return ab;
}

// init(ortLibraryPath, logSeverity) -> version string. Idempotent.
Napi::Value Init(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lk(g_mu);
  if (g_api) return Napi::String::New(env, g_version);
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "init(ortLibraryPath, logSeverity)");
  std::string path = info[0].As<Napi::String>();
  int severity = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 3;
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) throw Napi::Error::New(env, std::string("cannot load ONNX Runtime: ") + dlerror());
  using GetApiBaseFn = const OrtApiBase* (*)();
  auto get_base = reinterpret_cast<GetApiBaseFn>(dlsym(h, "OrtGetApiBase"));
  if (!get_base) throw Napi::Error::New(env, "OrtGetApiBase not found in " + path);
  const OrtApiBase* base = get_base();
  const OrtApi* api = base->GetApi(kApiVersion);
  if (!api)
    throw Napi::Error::New(env, std::string("ONNX Runtime ") + base->GetVersionString() + " is too old: moefy needs " +
                                    moefy::kOrtFloorName + " or newer (C API " + std::to_string(kApiVersion) + ")");
  g_api = api;
  g_version = base->GetVersionString();
  try {
    Check(api->CreateEnv(static_cast<OrtLoggingLevel>(severity), "moefy", &g_env));
  } catch (const OrtError& e) {
    g_api = nullptr;
    throw Napi::Error::New(env, "cannot create the ONNX Runtime environment: " + e.msg);
  }
  return Napi::String::New(env, g_version);
}

struct SessionOptionsSpec {
  int intra = 0, inter = 0, severity = -1, opt_level = -1, exec_mode = -1;
  int mem_arena = -1, mem_pattern = -1;
  std::string custom_lib;
  std::vector<std::pair<std::string, std::string>> config;
  std::vector<std::pair<std::string, int64_t>> free_dims;
  int cuda_device = -1;  // >= 0: append the CUDA execution provider on this device
};

struct IoInfo {
  std::string name;
  int type = 0;  // ONNX element type (0 when not a tensor)
  std::vector<int64_t> dims;
  std::vector<std::string> sym;
};

class SessionWrap;

struct SessionState {
  OrtSession* session = nullptr;
  OrtSessionOptions* options = nullptr;
  std::vector<IoInfo> inputs, outputs, overridable;
  ~SessionState() {
    if (session) g_api->ReleaseSession(session);
    if (options) g_api->ReleaseSessionOptions(options);
  }
};

enum class IoKind { Input, Output, Overridable };

std::vector<IoInfo> ReadIo(OrtSession* s, IoKind kind) {
  OrtAllocator* alloc = nullptr;
  Check(g_api->GetAllocatorWithDefaultOptions(&alloc));
  size_t n = 0;
  Check(kind == IoKind::Input    ? g_api->SessionGetInputCount(s, &n)
        : kind == IoKind::Output ? g_api->SessionGetOutputCount(s, &n)
                                 : g_api->SessionGetOverridableInitializerCount(s, &n));
  std::vector<IoInfo> out(n);
  for (size_t i = 0; i < n; ++i) {
    char* name = nullptr;
    Check(kind == IoKind::Input    ? g_api->SessionGetInputName(s, i, alloc, &name)
          : kind == IoKind::Output ? g_api->SessionGetOutputName(s, i, alloc, &name)
                                   : g_api->SessionGetOverridableInitializerName(s, i, alloc, &name));
    out[i].name = name;
    Check(g_api->AllocatorFree(alloc, name));
    OrtTypeInfo* ti = nullptr;
    Check(kind == IoKind::Input    ? g_api->SessionGetInputTypeInfo(s, i, &ti)
          : kind == IoKind::Output ? g_api->SessionGetOutputTypeInfo(s, i, &ti)
                                   : g_api->SessionGetOverridableInitializerTypeInfo(s, i, &ti));
    const OrtTensorTypeAndShapeInfo* tsi = nullptr;
    OrtStatus* st = g_api->CastTypeInfoToTensorInfo(ti, &tsi);
    if (!st && tsi) {
      ONNXTensorElementDataType et;
      size_t nd = 0;
      st = g_api->GetTensorElementType(tsi, &et);
      if (!st) st = g_api->GetDimensionsCount(tsi, &nd);
      if (!st) {
        out[i].type = et;
        out[i].dims.resize(nd);
        st = g_api->GetDimensions(tsi, out[i].dims.data(), nd);
      }
      if (!st) {
        std::vector<const char*> sym(nd, nullptr);
        st = g_api->GetSymbolicDimensions(tsi, sym.data(), nd);
        if (!st)
          for (auto p : sym) out[i].sym.push_back(p ? p : "");
      }
    }
    if (st) g_api->ReleaseStatus(st);
    g_api->ReleaseTypeInfo(ti);
  }
  return out;
}

class CreateWorker : public Napi::AsyncWorker {
 public:
  CreateWorker(Napi::Env env, std::string path, std::vector<uint8_t> bytes, SessionOptionsSpec spec)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), path_(std::move(path)),
        bytes_(std::move(bytes)), spec_(std::move(spec)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      state_.reset(new SessionState());
      Check(g_api->CreateSessionOptions(&state_->options));
      OrtSessionOptions* o = state_->options;
      if (spec_.intra > 0) Check(g_api->SetIntraOpNumThreads(o, spec_.intra));
      if (spec_.inter > 0) Check(g_api->SetInterOpNumThreads(o, spec_.inter));
      if (spec_.severity >= 0) Check(g_api->SetSessionLogSeverityLevel(o, spec_.severity));
      if (spec_.opt_level >= 0) Check(g_api->SetSessionGraphOptimizationLevel(o, static_cast<GraphOptimizationLevel>(spec_.opt_level)));
      if (spec_.exec_mode >= 0) Check(g_api->SetSessionExecutionMode(o, static_cast<ExecutionMode>(spec_.exec_mode)));
      if (spec_.mem_arena == 0) Check(g_api->DisableCpuMemArena(o));
      if (spec_.mem_pattern == 0) Check(g_api->DisableMemPattern(o));
      if (spec_.cuda_device >= 0) {
        OrtCUDAProviderOptionsV2* cuda = nullptr;
        Check(g_api->CreateCUDAProviderOptions(&cuda));
        std::string dev = std::to_string(spec_.cuda_device);
        const char* keys[] = {"device_id"};
        const char* vals[] = {dev.c_str()};
        OrtStatus* st = g_api->UpdateCUDAProviderOptions(cuda, keys, vals, 1);
        if (!st) st = g_api->SessionOptionsAppendExecutionProvider_CUDA_V2(o, cuda);
        g_api->ReleaseCUDAProviderOptions(cuda);
        try {
          Check(st);
        } catch (const OrtError& e) {
          throw OrtError{"cannot use the CUDA execution provider: " + e.msg};
        }
      }
      for (auto& kv : spec_.config) Check(g_api->AddSessionConfigEntry(o, kv.first.c_str(), kv.second.c_str()));
      for (auto& kv : spec_.free_dims) Check(g_api->AddFreeDimensionOverrideByName(o, kv.first.c_str(), kv.second));
      if (!spec_.custom_lib.empty()) {
        try {
          Check(g_api->RegisterCustomOpsLibrary_V2(o, spec_.custom_lib.c_str()));
        } catch (const OrtError& e) {
          throw OrtError{"cannot register the moefy op library " + spec_.custom_lib + ": " + e.msg};
        }
      }
      if (!path_.empty()) {
        Check(g_api->CreateSession(g_env, path_.c_str(), o, &state_->session));
      } else {
        Check(g_api->CreateSessionFromArray(g_env, bytes_.data(), bytes_.size(), o, &state_->session));
        std::vector<uint8_t>().swap(bytes_);
      }
      state_->inputs = ReadIo(state_->session, IoKind::Input);
      state_->outputs = ReadIo(state_->session, IoKind::Output);
      state_->overridable = ReadIo(state_->session, IoKind::Overridable);
    } catch (const OrtError& e) {
      state_.reset();
      SetError(e.msg);
    } catch (const std::exception& e) {
      state_.reset();
      SetError(e.what());
    }
  }
  void OnOK() override;
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::string path_;
  std::vector<uint8_t> bytes_;
  SessionOptionsSpec spec_;
  std::unique_ptr<SessionState> state_;
};

Napi::Array IoToJs(Napi::Env env, const std::vector<IoInfo>& io) {
  Napi::Array a = Napi::Array::New(env, io.size());
  for (size_t i = 0; i < io.size(); ++i) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", io[i].name);
    const TypeName* t = ByType(static_cast<ONNXTensorElementDataType>(io[i].type));
    o.Set("type", t ? Napi::Value(Napi::String::New(env, t->name)) : env.Null());
    Napi::Array d = Napi::Array::New(env, io[i].dims.size());
    for (size_t j = 0; j < io[i].dims.size(); ++j) {
      if (io[i].dims[j] >= 0) d.Set(j, Napi::Number::New(env, static_cast<double>(io[i].dims[j])));
      else if (j < io[i].sym.size() && !io[i].sym[j].empty()) d.Set(j, io[i].sym[j]);
      else d.Set(j, env.Null());
    }
    o.Set("dims", d);
    a.Set(i, o);
  }
  return a;
}

class SessionWrap : public Napi::ObjectWrap<SessionWrap> {
 public:
  static Napi::FunctionReference ctor;
  static void Define(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "Session",
                                   {InstanceMethod("run", &SessionWrap::Run), InstanceMethod("release", &SessionWrap::Release),
                                    InstanceMethod("inputs", &SessionWrap::Inputs), InstanceMethod("outputs", &SessionWrap::Outputs),
                                    InstanceMethod("overridableInitializers", &SessionWrap::Overridable)});
    ctor = Napi::Persistent(f);
    ctor.SuppressDestruct();
    exports.Set("Session", f);
  }
  SessionWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SessionWrap>(info) {}
  std::shared_ptr<SessionState> state;

  Napi::Value Inputs(const Napi::CallbackInfo& info) { return state ? IoToJs(info.Env(), state->inputs) : Napi::Array::New(info.Env()); }
  Napi::Value Outputs(const Napi::CallbackInfo& info) { return state ? IoToJs(info.Env(), state->outputs) : Napi::Array::New(info.Env()); }
  Napi::Value Overridable(const Napi::CallbackInfo& info) {
    return state ? IoToJs(info.Env(), state->overridable) : Napi::Array::New(info.Env());
  }
  Napi::Value Release(const Napi::CallbackInfo& info) {
    state.reset();  // running workers hold their own reference
    return info.Env().Undefined();
  }
  Napi::Value Run(const Napi::CallbackInfo& info);
};
Napi::FunctionReference SessionWrap::ctor;

void CreateWorker::OnOK() {
  Napi::Object obj = SessionWrap::ctor.New({});
  SessionWrap::Unwrap(obj)->state = std::shared_ptr<SessionState>(state_.release());
  deferred_.Resolve(obj);
}

// createSession(model: string | Uint8Array, options) -> Promise<Session>
Napi::Value CreateSession(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!g_api) throw Napi::Error::New(env, "moefy runtime: init() was not called");
  std::string path;
  std::vector<uint8_t> bytes;
  if (info.Length() < 1) throw Napi::TypeError::New(env, "createSession(model, options)");
  if (info[0].IsString()) {
    path = info[0].As<Napi::String>();
  } else if (info[0].IsTypedArray()) {
    Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
    const uint8_t* p = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    bytes.assign(p, p + ta.ByteLength());
  } else {
    throw Napi::TypeError::New(env, "model must be a path or a Uint8Array");
  }
  SessionOptionsSpec spec;
  if (info.Length() > 1 && info[1].IsObject()) {
    Napi::Object o = info[1].As<Napi::Object>();
    auto num = [&](const char* k, int* dst) {
      if (o.Has(k) && o.Get(k).IsNumber()) *dst = o.Get(k).As<Napi::Number>().Int32Value();
    };
    num("intraOpNumThreads", &spec.intra);
    num("interOpNumThreads", &spec.inter);
    num("logSeverityLevel", &spec.severity);
    num("graphOptimizationLevel", &spec.opt_level);
    num("executionMode", &spec.exec_mode);
    num("enableCpuMemArena", &spec.mem_arena);
    num("enableMemPattern", &spec.mem_pattern);
    num("cudaDeviceId", &spec.cuda_device);
    if (o.Has("customOpsLibrary") && o.Get("customOpsLibrary").IsString())
      spec.custom_lib = o.Get("customOpsLibrary").As<Napi::String>();
    if (o.Has("config") && o.Get("config").IsObject()) {
      Napi::Object c = o.Get("config").As<Napi::Object>();
      Napi::Array keys = c.GetPropertyNames();
      for (uint32_t i = 0; i < keys.Length(); ++i) {
        std::string k = keys.Get(i).ToString();
        spec.config.emplace_back(k, c.Get(k).ToString().Utf8Value());
      }
    }
    if (o.Has("freeDimensionOverrides") && o.Get("freeDimensionOverrides").IsObject()) {
      Napi::Object c = o.Get("freeDimensionOverrides").As<Napi::Object>();
      Napi::Array keys = c.GetPropertyNames();
      for (uint32_t i = 0; i < keys.Length(); ++i) {
        std::string k = keys.Get(i).ToString();
        spec.free_dims.emplace_back(k, static_cast<int64_t>(c.Get(k).ToNumber().Int64Value()));
      }
    }
  }
  auto* w = new CreateWorker(env, std::move(path), std::move(bytes), std::move(spec));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

class RunWorker : public Napi::AsyncWorker {
 public:
  RunWorker(Napi::Env env, std::shared_ptr<SessionState> st)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), state_(std::move(st)) {}
  ~RunWorker() override {
    for (auto* v : in_values_) g_api->ReleaseValue(v);
    for (auto* v : out_values_)
      if (v) g_api->ReleaseValue(v);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

  std::vector<std::string> in_names_, out_names_;
  std::vector<OrtValue*> in_values_;
  std::vector<Napi::ObjectReference> keep_;

  void Execute() override {
    try {
      std::vector<const char*> in(in_names_.size()), out(out_names_.size());
      for (size_t i = 0; i < in.size(); ++i) in[i] = in_names_[i].c_str();
      for (size_t i = 0; i < out.size(); ++i) out[i] = out_names_[i].c_str();
      out_values_.assign(out.size(), nullptr);
      Check(g_api->Run(state_->session, nullptr, in.data(), in_values_.data(), in.size(), out.data(), out.size(),
                       out_values_.data()));
    } catch (const OrtError& e) {
      SetError(e.msg);
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    try {
      Napi::Object res = Napi::Object::New(env);
      for (size_t i = 0; i < out_values_.size(); ++i) {
        OrtValue* v = out_values_[i];
        int is_tensor = 0;
        Check(g_api->IsTensor(v, &is_tensor));
        if (!is_tensor) throw OrtError{"output " + out_names_[i] + " is not a tensor"};
        OrtTensorTypeAndShapeInfo* tsi = nullptr;
        Check(g_api->GetTensorTypeAndShape(v, &tsi));
        ONNXTensorElementDataType et;
        size_t nd = 0, count = 0;
        OrtStatus* st = g_api->GetTensorElementType(tsi, &et);
        std::vector<int64_t> dims;
        if (!st) st = g_api->GetDimensionsCount(tsi, &nd);
        if (!st) {
          dims.resize(nd);
          st = g_api->GetDimensions(tsi, dims.data(), nd);
        }
        if (!st) st = g_api->GetTensorShapeElementCount(tsi, &count);
        g_api->ReleaseTensorTypeAndShapeInfo(tsi);
        Check(st);
        const TypeName* t = ByType(et);
        if (!t) throw OrtError{"output " + out_names_[i] + " has an unsupported element type " + std::to_string(et)};
        void* data = nullptr;
        if (count) Check(g_api->GetTensorMutableData(v, &data));
        Napi::ArrayBuffer ab = OutputBuffer(env, data, count * t->size);
        Napi::Object o = Napi::Object::New(env);
        o.Set("type", t->name);
        Napi::Array d = Napi::Array::New(env, nd);
        for (size_t j = 0; j < nd; ++j) d.Set(j, Napi::Number::New(env, static_cast<double>(dims[j])));
        o.Set("dims", d);
        o.Set("data", MakeTyped(env, t, ab, count));
        res.Set(out_names_[i], o);
        g_api->ReleaseValue(v);
        out_values_[i] = nullptr;
      }
      keep_.clear();
      deferred_.Resolve(res);
    } catch (const OrtError& e) {
      keep_.clear();
      deferred_.Reject(Napi::Error::New(env, e.msg).Value());
    }
  }
  void OnError(const Napi::Error& e) override {
    keep_.clear();
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<SessionState> state_;
  std::vector<OrtValue*> out_values_;
};

// run(feeds: {name: {type, dims, data}}, outputNames: string[]) -> Promise<{name: {type, dims, data}}>
Napi::Value SessionWrap::Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!state) throw Napi::Error::New(env, "session was released");
  if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsArray())
    throw Napi::TypeError::New(env, "run(feeds, outputNames)");
  auto* w = new RunWorker(env, state);
  std::unique_ptr<RunWorker> guard(w);
  static OrtMemoryInfo* cpu = nullptr;
  if (!cpu) {
    try {
      Check(g_api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &cpu));
    } catch (const OrtError& e) {
      throw Napi::Error::New(env, e.msg);
    }
  }
  Napi::Object feeds = info[0].As<Napi::Object>();
  Napi::Array keys = feeds.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    std::string name = keys.Get(i).ToString();
    Napi::Value fv = feeds.Get(name);
    if (!fv.IsObject()) throw Napi::TypeError::New(env, "feed " + name + " is not a tensor");
    Napi::Object f = fv.As<Napi::Object>();
    std::string tname = f.Get("type").ToString();
    const TypeName* t = ByName(tname);
    if (!t) throw Napi::TypeError::New(env, "feed " + name + ": unsupported tensor type " + tname);
    Napi::Value dv = f.Get("dims"), datav = f.Get("data");
    if (!dv.IsArray() || !datav.IsTypedArray()) throw Napi::TypeError::New(env, "feed " + name + ": needs dims and data");
    Napi::Array da = dv.As<Napi::Array>();
    std::vector<int64_t> dims(da.Length());
    size_t count = 1;
    for (uint32_t j = 0; j < da.Length(); ++j) {
      double d = da.Get(j).ToNumber().DoubleValue();
      if (!(d >= 0) || d != static_cast<double>(static_cast<int64_t>(d)))
        throw Napi::TypeError::New(env, "feed " + name + ": invalid dims");
      dims[j] = static_cast<int64_t>(d);
      count *= static_cast<size_t>(dims[j]);
    }
    Napi::TypedArray ta = datav.As<Napi::TypedArray>();
    if (ta.ByteLength() != count * t->size)
      throw Napi::TypeError::New(env, "feed " + name + ": data holds " + std::to_string(ta.ByteLength()) +
                                          " bytes, type and dims need " + std::to_string(count * t->size));
    uint8_t* p = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    static uint8_t empty_dummy[8];
    if (count == 0 || p == nullptr) p = empty_dummy;
    OrtValue* v = nullptr;
    try {
      Check(g_api->CreateTensorWithDataAsOrtValue(cpu, p, count * t->size, dims.data(), dims.size(), t->type, &v));
    } catch (const OrtError& e) {
      throw Napi::Error::New(env, "feed " + name + ": " + e.msg);
    }
    w->in_values_.push_back(v);
    w->in_names_.push_back(name);
    w->keep_.push_back(Napi::Persistent(ta.As<Napi::Object>()));
  }
  Napi::Array outs = info[1].As<Napi::Array>();
  for (uint32_t i = 0; i < outs.Length(); ++i) w->out_names_.push_back(outs.Get(i).ToString());
  Napi::Promise pr = w->Promise();
  guard.release()->Queue();
  return pr;
}

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  exports.Set("init", Napi::Function::New(env, Init));
  exports.Set("createSession", Napi::Function::New(env, CreateSession));
  SessionWrap::Define(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(moefy_runtime, InitModule)
