// ORT accepts the CUDA DynamicMoE registration (kernels/cuda/register_cuda.cc) next to the CPU op, and the opt-in
// switch moefy.cuda is honoured: in a CPU-only session (onnxruntime-node has no CUDA EP) the CUDA kernels registered
// with moefy.cuda = "1" must neither break the op schema nor take the node, so results equal the CPU kernel's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { Tensor } from 'onnxruntime-node';
import { createSession, libPath } from '../src/runtime';
import { buildDynamicMoeModel, randomArray, rng } from './helpers/test-models';

function builtWithCuda(): boolean {
  // register_cuda.cc names its provider; the string is in the library only when the CUDA kernel was built in.
  return fs.readFileSync(libPath()).includes(Buffer.from('CUDAExecutionProvider'));
}

test('CUDA registration (moefy.cuda=1) is accepted by ORT and leaves CPU sessions on the CPU kernel', async (t) => {
  if (!fs.existsSync(libPath()) || !builtWithCuda()) {
    t.skip('libmoefy_ops.so was built without the CUDA kernel (nvcc not found at build time)');
    return;
  }
  const r = rng(11);
  const D = 24, E = 6, S = 8, H = E * S, B = 2, L = 14;
  const w = {
    W1: randomArray(r, D * H, 1 / Math.sqrt(D)),
    B1: randomArray(r, H, 0.1),
    W2: randomArray(r, H * D, 1 / Math.sqrt(H)),
    B2: randomArray(r, D, 0.1),
  };
  const model = buildDynamicMoeModel({
    D, E, S, patchNums: [1, 2, 3], threshold: [0, 0.4, 0.8], weights: w, withB2: true, withActive: true,
  });
  const X = new Tensor('float32', randomArray(r, B * L * D), [B, L, D]);
  const norms = new Tensor('float32', Float32Array.from(randomArray(r, B * L * E), Math.abs), [B, L, E]);

  const plain = await createSession(model, { intraOpNumThreads: 1 });
  const withCuda = await createSession(model, { intraOpNumThreads: 1, config: { 'moefy.cuda': '1' } });
  try {
    const a = await plain.run({ X, norms });
    const b = await withCuda.run({ X, norms });
    assert.deepEqual(Array.from(b.active.data as Int32Array), Array.from(a.active.data as Int32Array));
    assert.deepEqual(Array.from(b.Y.data as Float32Array), Array.from(a.Y.data as Float32Array));
    const active = Array.from(a.active.data as Int32Array);
    assert.ok(active.some((v) => v < E), 'the thresholds must switch some experts off');
  } finally {
    plain.release();
    withCuda.release();
  }
});
