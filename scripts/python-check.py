#!/usr/bin/env python3
"""Runs converted models in Python ONNX Runtime with libmoefy_ops.so and checks them against the op's function body
(the same model in a session without the library), with the calibrated thresholds and with moe_threshold fed.
Needs only onnxruntime and numpy (e.g. Debian's python3-onnxruntime python3-numpy); sets no environment variable.

    python3 scripts/python-check.py LIB MODEL.onnx INPUTS_DIR [MODEL.onnx INPUTS_DIR ...]

INPUTS_DIR: a tensor folder (manifest.json: name -> {file, dtype, shape}, raw little-endian .bin files), as moefy
reads and writes them. Prints one line per model and run; exits 1 if any output differs by more than 1e-4
(relative to the output's largest magnitude) or the fed thresholds change nothing."""
import json
import os
import sys

import numpy as np
import onnxruntime as ort


def load_inputs(folder, names, limit=2):
    with open(os.path.join(folder, "manifest.json")) as f:
        manifest = json.load(f)
    out = {}
    for name in names:
        m = manifest[name]
        a = np.fromfile(os.path.join(folder, m["file"]), dtype=np.dtype(m["dtype"])).reshape(m["shape"])
        out[name] = a[:limit] if a.ndim and a.shape[0] > limit else a  # a couple of samples are enough
    return out


def rel_max_err(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b)) / max(np.max(np.abs(b.astype(np.float64))), 1e-12))


def main(argv):
    if len(argv) < 3 or len(argv) % 2 == 0:
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    lib, pairs = argv[0], list(zip(argv[1::2], argv[2::2]))
    print(f"onnxruntime {ort.__version__}, library {lib}")
    failed = False
    for model, folder in pairs:
        so = ort.SessionOptions()
        so.register_custom_ops_library(lib)
        so.log_severity_level = 3  # moe_threshold is an initializer that is also a graph input: ORT warns (see README)
        kernel = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        plain = ort.SessionOptions()
        plain.log_severity_level = 3
        body = ort.InferenceSession(model, plain, providers=["CPUExecutionProvider"])
        feeds = load_inputs(folder, [i.name for i in kernel.get_inputs()])
        over = {i.name: i for i in kernel.get_overridable_initializers()}
        if "moe_threshold" not in over:
            print(f"{model}: no overridable moe_threshold")
            failed = True
            continue
        n = over["moe_threshold"].shape[0]
        runs = [("calibrated thresholds", feeds), ("moe_threshold fed (0.6)", {**feeds, "moe_threshold": np.full([n], 0.6, np.float32)})]
        outs = []
        for label, f in runs:
            a = kernel.run(None, f)
            b = body.run(None, f)
            err = max(rel_max_err(x, y) for x, y in zip(a, b))
            outs.append(a[0])
            ok = err < 1e-4
            failed |= not ok
            print(f"{os.path.basename(model)}: {label}: kernel vs function body, max relative error {err:.2e} {'ok' if ok else 'FAIL'}")
        changed = rel_max_err(outs[0], outs[1]) > 1e-4
        failed |= not changed
        print(f"{os.path.basename(model)}: the fed thresholds {'changed' if changed else 'did NOT change'} the output")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
