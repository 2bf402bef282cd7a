import { test } from 'node:test';
import assert from 'node:assert';
import { computeExpertNorms, computeHiddenActivations } from '../src/calib/expert-norms';
import { expertNormsReference } from './helpers/expert-norms-reference';
import { activate as act, ActivationKind as FfnActivation } from '../src/op';
import { MoefyError } from '../src/errors';
import { rng } from '../src/calib/random';

function randn(r: () => number, n: number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (r() * 2 - 1) * scale;
  return a;
}

for (const activation of ['relu', 'gelu_tanh', 'gelu'] as FfnActivation[]) {
  test(`computeExpertNorms equals a plain TS computation (${activation})`, async () => {
    const r = rng(7);
    const N = 37, D = 12, H = 24, E = 4;
    const X = randn(r, N * D), W1 = randn(r, D * H, 0.5), B1 = randn(r, H, 0.3), W2 = randn(r, H * D, 0.5);
    const want = expertNormsReference(X, N, D, W1, B1, W2, E, activation);
    let max = 0;
    for (const v of want) max = Math.max(max, v);
    for (const method of ['direct', 'gram'] as const) {
      const got = await computeExpertNorms(X, N, D, W1, B1, W2, E, activation, { chunk: 10, method });
      assert.strictEqual(got.length, N * E);
      // direct: float32 rounding only; gram: the square is formed first, so small norms lose relative precision.
      for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i] - want[i]) <= (method === 'direct' ? 1e-4 * (1 + Math.abs(want[i])) : 1e-3 * max), `${method} ${i}: ${got[i]} vs ${want[i]}`);
    }
    const h = await computeHiddenActivations(X, N, D, W1, B1, activation, { chunk: 16 });
    for (let t = 0; t < N; t += 5) for (let j = 0; j < H; j += 3) {
      let a = B1[j];
      for (let d = 0; d < D; d++) a += X[t * D + d] * W1[d * H + j];
      assert.ok(Math.abs(h[t * H + j] - act(a, activation)) < 1e-4);
    }
  });
}

test('computeExpertNorms is deterministic (byte-equal)', async () => {
  const r = rng(8);
  const N = 300, D = 16, H = 32, E = 4;
  const X = randn(r, N * D), W1 = randn(r, D * H, 0.5), B1 = randn(r, H, 0.3), W2 = randn(r, H * D, 0.5);
  const a = await computeExpertNorms(X, N, D, W1, B1, W2, E, 'gelu_tanh');
  const b = await computeExpertNorms(X, N, D, W1, B1, W2, E, 'gelu_tanh');
  assert.deepStrictEqual(Buffer.from(a.buffer), Buffer.from(b.buffer));
});

test('computeExpertNorms rejects E not dividing H', async () => {
  await assert.rejects(computeExpertNorms(new Float32Array(4), 1, 4, new Float32Array(24), new Float32Array(6), new Float32Array(24), 4, 'relu'), MoefyError);
});
