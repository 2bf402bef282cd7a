// A converted model from C++ ONNX Runtime with moefy's kernel (the README's C++ example; test/ort-compat.test.ts
// builds and runs it). Feeds zeros for the graph inputs (symbolic dims = 1) and moe_threshold = THRESHOLD on every
// scale, and prints the first output's sum. An empty LIB runs the op's function body instead.
//
//   g++ -std=c++17 run_moe.cc -I<onnxruntime headers> -L<dir of libonnxruntime.so> -lonnxruntime -o run_moe
//   ./run_moe model.moe.onnx "$(npx moefy lib-path)" 0.4
#include <onnxruntime_cxx_api.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s MODEL LIB THRESHOLD\n", argv[0]);
    return 2;
  }
  try {
    Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "moefy");  // ERROR: moe_threshold is an initializer that is also an input
    Ort::SessionOptions so;
    if (argv[2][0]) so.RegisterCustomOpsLibrary(argv[2]);  // libmoefy_ops.so: the DynamicMoE kernel
    Ort::Session session(env, argv[1], so);
    Ort::AllocatorWithDefaultOptions alloc;
    std::vector<std::string> names;
    std::vector<Ort::Value> values;
    std::vector<std::vector<uint8_t>> buffers;  // zero-filled input data, kept alive for the run
    Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    auto feed = [&](const std::string& name, ONNXTensorElementDataType type, std::vector<int64_t> shape, size_t elem) {
      size_t n = 1;
      for (auto& d : shape) n *= static_cast<size_t>(d = d < 0 ? 1 : d);
      buffers.emplace_back(n * elem, 0);
      names.push_back(name);
      values.push_back(Ort::Value::CreateTensor(cpu, static_cast<void*>(buffers.back().data()), n * elem, shape.data(), shape.size(), type));
    };
    for (size_t i = 0; i < session.GetInputCount(); ++i) {
      Ort::TypeInfo ti = session.GetInputTypeInfo(i);  // owns what info points into
      auto info = ti.GetTensorTypeAndShapeInfo();
      const auto type = info.GetElementType();
      const size_t elem = type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 || type == ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE ? 8
                          : type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? 2 : 4;
      feed(session.GetInputNameAllocated(i, alloc).get(), type, info.GetShape(), elem);
    }
    // moe_threshold (one value per scale) is an overridable initializer, not a graph input: feed it by name.
    for (size_t i = 0; i < session.GetOverridableInitializerCount(); ++i) {
      if (std::string(session.GetOverridableInitializerNameAllocated(i, alloc).get()) != "moe_threshold") continue;
      Ort::TypeInfo ti = session.GetOverridableInitializerTypeInfo(i);
      auto shape = ti.GetTensorTypeAndShapeInfo().GetShape();
      feed("moe_threshold", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, shape, 4);
      std::vector<float> t(static_cast<size_t>(shape[0]), std::strtof(argv[3], nullptr));
      std::memcpy(buffers.back().data(), t.data(), t.size() * sizeof(float));
    }
    std::vector<const char*> in;
    for (auto& n : names) in.push_back(n.c_str());
    auto out_name = session.GetOutputNameAllocated(0, alloc);
    const char* out[] = {out_name.get()};
    auto result = session.Run(Ort::RunOptions{nullptr}, in.data(), values.data(), in.size(), out, 1);
    const float* y = result[0].GetTensorData<float>();
    double sum = 0;
    for (size_t i = 0; i < result[0].GetTensorTypeAndShapeInfo().GetElementCount(); ++i) sum += y[i];
    std::printf("%s sum %.9g\n", out[0], sum);
    return 0;
  } catch (const Ort::Exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
