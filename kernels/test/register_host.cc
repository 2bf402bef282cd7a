// A minimal ONNX Runtime host for the compatibility tests: loads the given libonnxruntime.so, registers the given
// custom-op library on fresh session options and prints the runtime's version and the registration's outcome
// ("registered" or "error: <message>"). Requests the lowest C API version that has RegisterCustomOpsLibrary_V2
// (14), so it runs on runtimes older than the library's floor. Built by test/ort-compat.test.ts.
//
//   register_host <libonnxruntime.so> <libmoefy_ops.so>
#include <dlfcn.h>

#include <cstdio>

#include "ort_api.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <libonnxruntime.so> <custom-op library>\n", argv[0]);
    return 2;
  }
  void* h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    std::fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
    return 2;
  }
  using GetApiBaseFn = const OrtApiBase* (*)();
  auto get_base = reinterpret_cast<GetApiBaseFn>(dlsym(h, "OrtGetApiBase"));
  const OrtApiBase* base = get_base ? get_base() : nullptr;
  const OrtApi* api = base ? base->GetApi(14) : nullptr;
  if (!api) {
    std::fprintf(stderr, "%s serves no C API 14\n", argv[1]);
    return 2;
  }
  std::printf("version %s\n", base->GetVersionString());
  OrtSessionOptions* so = nullptr;
  if (OrtStatus* st = api->CreateSessionOptions(&so)) {
    std::printf("error: %s\n", api->GetErrorMessage(st));
    return 2;
  }
  OrtStatus* st = api->RegisterCustomOpsLibrary_V2(so, argv[2]);
  if (st) {
    std::printf("error: %s\n", api->GetErrorMessage(st));
    api->ReleaseStatus(st);
  } else {
    std::printf("registered\n");
  }
  api->ReleaseSessionOptions(so);
  return 0;
}
