{
  "targets": [
    {
      "target_name": "moefy_runtime",
      "sources": ["moefy_runtime.cc"],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "<!(node -p \"process.env.MOEFY_ORT_INCLUDE_DIR || ''\")",
        "../../../kernels/src"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "ORT_API_MANUAL_INIT"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-fvisibility=hidden"],
      "libraries": ["-ldl"]
    }
  ]
}
