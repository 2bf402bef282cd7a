{
  "targets": [
    {
      "target_name": "moefy_linalg",
      "sources": ["linalg.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-fvisibility=hidden"],
      "libraries": ["<!(node -p \"process.env.MOEFY_BLAS_LIBRARY\")", "-lpthread", "-lm", "-Wl,--exclude-libs,ALL"]
    }
  ]
}
