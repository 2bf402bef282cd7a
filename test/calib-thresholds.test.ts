import { test } from 'node:test';
import assert from 'node:assert';
import { activeFraction, chooseThresholds, thresholdsFromTau, ScaleCalibration } from '../src/calib/thresholds';
import { gaussian, rng } from '../src/calib/random';
import { MoefyError } from '../src/errors';

/** Synthetic router outputs: skewed per-token expert norms; finer scales are more concentrated. */
function synth(seed: number, samples: number, E = 16, layers = 2): ScaleCalibration[] {
  const r = rng(seed), g = gaussian(r);
  return [64, 100, 169, 256].map((tokens, s) => {
    const N = Math.round((tokens * samples) / 64);
    const norms: Float32Array[] = [], trueNorms: Float32Array[] = [];
    for (let l = 0; l < layers; l++) {
      const p = new Float32Array(N * E), t = new Float32Array(N * E);
      for (let i = 0; i < N * E; i++) {
        const v = Math.exp((1 + 0.3 * s) * g());
        t[i] = v;
        p[i] = v * Math.exp(0.2 * g());
      }
      norms.push(p);
      trueNorms.push(t);
    }
    return { tokensPerSample: tokens, norms, trueNorms, E };
  });
}

function spend(perScale: ScaleCalibration[], th: number[]): number {
  let num = 0, den = 0;
  perScale.forEach((sc, s) => {
    const f = sc.norms.map((a) => activeFraction(a, a.length / sc.E, sc.E, th[s]));
    num += sc.tokensPerSample * (f.reduce((x, y) => x + y, 0) / f.length);
    den += sc.tokensPerSample;
  });
  return num / den;
}

test('chooseThresholds meets the budget within 0.02, non-decreasing; held-out active fraction within 0.05', () => {
  const cal = synth(1, 64), held = synth(2, 64);
  for (const budget of [0.15, 0.3, 0.45, 0.6, 0.8, 0.95]) {
    const r = chooseThresholds(cal, budget);
    assert.strictEqual(r.thresholds.length, 4);
    for (let s = 1; s < 4; s++) assert.ok(r.thresholds[s] >= r.thresholds[s - 1], `non-decreasing: ${r.thresholds}`);
    for (const t of r.thresholds) assert.ok(t >= 0 && t <= 1);
    assert.ok(Math.abs(r.spent - budget) <= 0.02, `budget ${budget}: spent ${r.spent}`);
    assert.ok(Math.abs(spend(cal, r.thresholds) - r.spent) < 1e-9, 'reported spend is the real one');
    assert.ok(Math.abs(spend(held, r.thresholds) - budget) <= 0.05, `held-out spend ${spend(held, r.thresholds)} for ${budget}`);
    assert.strictEqual(r.clamped, undefined);
  }
});

test('chooseThresholds is optimal on its grid (vs exhaustive search over monotone choices)', () => {
  const cal = synth(3, 16, 8, 1).slice(0, 3);
  const step = 0.1, grid = Array.from({ length: 11 }, (_, k) => Math.round(k * step * 10) / 10);
  for (const budget of [0.3, 0.5]) {
    const r = chooseThresholds(cal, budget, { gridStep: step });
    let bestLoss = Infinity;
    const lossOf = (th: number[]) => {
      let l = 0, den = 0;
      cal.forEach((sc, s) => {
        const p = sc.norms[0], t = sc.trueNorms![0], E = sc.E, N = p.length / E;
        let acc = 0;
        for (let n = 0; n < N; n++) {
          let m = 0, tot = 0, skip = 0;
          for (let e = 0; e < E; e++) m = Math.max(m, p[n * E + e]);
          for (let e = 0; e < E; e++) {
            tot += t[n * E + e] ** 2;
            if (p[n * E + e] < Math.fround(Math.fround(th[s]) * m)) skip += t[n * E + e] ** 2;
          }
          acc += skip / tot;
        }
        l += sc.tokensPerSample * (acc / N);
        den += sc.tokensPerSample;
      });
      return l / den;
    };
    for (const a of grid) for (const b of grid) for (const c of grid) {
      if (!(a <= b && b <= c)) continue;
      const sp = spend(cal, [a, b, c]);
      if (sp <= budget - 0.001 && sp >= budget - 0.02) bestLoss = Math.min(bestLoss, lossOf([a, b, c]));
    }
    assert.ok(Math.abs(r.skippedEnergy - lossOf(r.thresholds)) < 1e-9);
    assert.ok(r.skippedEnergy <= bestLoss + 1e-9, `DP ${r.skippedEnergy} vs exhaustive ${bestLoss}`);
  }
});

test('budget clamps: below argmax-only and dense', () => {
  const cal = synth(4, 8, 4, 1);
  const lo = chooseThresholds(cal, 0.05);
  assert.strictEqual(lo.clamped, 'below-minimum');
  assert.deepStrictEqual(lo.thresholds, [1, 1, 1, 1]);
  assert.ok(Math.abs(lo.spent - 0.25) < 1e-6 && lo.note.length > 0);
  const hi = chooseThresholds(cal, 1);
  assert.strictEqual(hi.clamped, 'dense');
  assert.deepStrictEqual(hi.thresholds, [0, 0, 0, 0]);
  assert.ok(Math.abs(hi.spent - 1) < 1e-12);
});

test('activeFraction and thresholdsFromTau', () => {
  const norms = Float32Array.from([1, 0.5, 0.2, 0.1, /* */ 0, 0, 3, 2.9]);
  assert.strictEqual(activeFraction(norms, 2, 4, 0), 1);
  assert.strictEqual(activeFraction(norms, 2, 4, 1), 2 / 8);
  assert.strictEqual(activeFraction(norms, 2, 4, 0.5), 4 / 8);
  assert.strictEqual(activeFraction(norms, 2, 4, 0.15), 5 / 8);
  const th = thresholdsFromTau([0.81839, 0.81302, 0.78686]);
  assert.ok(Math.abs(th[0] - 0.18161) < 1e-12 && Math.abs(th[2] - 0.21314) < 1e-12);
});

test('determinism: same inputs give identical thresholds', () => {
  const a = chooseThresholds(synth(5, 16), 0.5), b = chooseThresholds(synth(5, 16), 0.5);
  assert.deepStrictEqual(a, b);
});

test('bad inputs throw MoefyError', () => {
  const cal = synth(6, 4, 4, 1);
  for (const b of [0, -0.1, 1.01, NaN]) assert.throws(() => chooseThresholds(cal, b), MoefyError);
  assert.throws(() => activeFraction(new Float32Array(4), 1, 4, -0.01), MoefyError);
  assert.throws(() => activeFraction(new Float32Array(4), 1, 4, 1.5), MoefyError);
  assert.throws(() => activeFraction(new Float32Array(5), 1, 4, 0.5), MoefyError);
  assert.throws(() => thresholdsFromTau([1.2]), MoefyError);
  assert.throws(() => chooseThresholds([], 0.5), MoefyError);
  assert.throws(() => chooseThresholds([{ tokensPerSample: 4, norms: [new Float32Array(7)], E: 4 }], 0.5), MoefyError);
});

test('chooseThresholds: a very sparse model (most predicted norms a hair above 0) still meets the budget', () => {
  // 4 of 32 experts carry each token; the others are predicted at 1e-6…1e-4 of the max, as a √norm router
  // squared back does on a 99%-sparse model. A linear grid would jump from 100% active to 1/8.
  const r = rng(11);
  const E = 32, N = 3000;
  const mk = (): Float32Array => {
    const a = new Float32Array(N * E);
    for (let i = 0; i < N; i++) {
      for (let e = 0; e < E; e++) a[i * E + e] = 10 ** (-6 + 2 * r());
      for (let k = 0; k < 4; k++) a[i * E + Math.floor(r() * E)] = 0.5 + r();
    }
    return a;
  };
  const perScale: ScaleCalibration[] = [100, 169, 256].map((t) => ({ tokensPerSample: t, norms: [mk()], E }));
  const c = chooseThresholds(perScale, 0.5);
  assert.ok(Math.abs(c.spent - 0.5) <= 0.02, `spent ${c.spent} (thresholds ${c.thresholds.join(',')})`);
  for (let s = 1; s < c.thresholds.length; s++) assert.ok(c.thresholds[s] >= c.thresholds[s - 1]);
  assert.ok(c.thresholds.every((t) => t > 0 && t < 1e-3), `thresholds ${c.thresholds.join(',')}`);
});

/** Experts that run per token under a rule, counted plainly from the contract's table (not through src/op). */
function plainCount(p: Float32Array, o: number, E: number, rule: 'absolute' | 'topk', t: number): number {
  const row = Array.from(p.subarray(o, o + E));
  if (!(Math.fround(t) > 0)) return E;
  const max = Math.max(...row);
  if (rule === 'absolute') return row.filter((v) => v >= Math.fround(t) || v === max).length;
  const k = Math.max(1, E - Math.floor(Math.fround(Math.fround(t) * E)));
  const kth = [...row].sort((a, b) => b - a)[k - 1];
  return row.filter((v) => v >= kth).length;
}

function plainSpend(perScale: ScaleCalibration[], th: number[], rule: 'absolute' | 'topk'): number {
  let num = 0, den = 0;
  perScale.forEach((sc, s) => {
    let on = 0, n = 0;
    for (const a of sc.norms) for (let o = 0; o < a.length; o += sc.E, n++) on += plainCount(a, o, sc.E, rule, th[s]);
    num += sc.tokensPerSample * (on / (n * sc.E));
    den += sc.tokensPerSample;
  });
  return num / den;
}

for (const rule of ['absolute', 'topk'] as const) {
  test(`chooseThresholds under ${rule}: the budget met (counted by the rule's plain definition), non-decreasing, held-out within 0.05`, () => {
    const cal = synth(7, 64), held = synth(8, 64);
    for (const budget of [0.3, 0.5, 0.7]) {
      const r = chooseThresholds(cal, budget, { routing: rule });
      for (let s = 1; s < 4; s++) assert.ok(r.thresholds[s] >= r.thresholds[s - 1], `non-decreasing: ${r.thresholds}`);
      const spent = plainSpend(cal, r.thresholds, rule);
      assert.ok(Math.abs(spent - r.spent) < 1e-9, `${rule} ${budget}: reported ${r.spent}, counted ${spent}`);
      assert.ok(r.spent <= budget + 1e-9 && r.spent >= budget - 0.02, `${rule} ${budget}: spent ${r.spent}`);
      assert.ok(Math.abs(plainSpend(held, r.thresholds, rule) - budget) <= 0.05, `held-out spend for ${budget}`);
      r.activeFractions.forEach((f, s) => {
        const fs = cal[s].norms.map((a) => activeFraction(a, a.length / 16, 16, r.thresholds[s], rule));
        assert.ok(Math.abs(f - fs.reduce((x, y) => x + y, 0) / fs.length) < 1e-12);
      });
      if (rule === 'topk') {
        // Each threshold is one k, and the spend of a scale is k/E (no ties in these norms).
        for (const [s, t] of r.thresholds.entries()) {
          const k = 16 - Math.floor(Math.fround(Math.fround(t) * 16));
          assert.ok(Math.abs(r.activeFractions[s] - k / 16) < 1e-12, `scale ${s}: t ${t}, k ${k}, fraction ${r.activeFractions[s]}`);
        }
      }
    }
  });
}

test('chooseThresholds clamps under top-k and absolute to the argmax alone', () => {
  const cal = synth(9, 8, 4, 1);
  for (const rule of ['absolute', 'topk'] as const) {
    const lo = chooseThresholds(cal, 0.05, { routing: rule });
    assert.strictEqual(lo.clamped, 'below-minimum');
    assert.ok(Math.abs(lo.spent - 0.25) < 1e-6, `${rule}: ${lo.spent}`);
    assert.ok(Math.abs(plainSpend(cal, lo.thresholds, rule) - 0.25) < 1e-6);
  }
  // An absolute threshold is in the norms' unit: above 1 is allowed.
  assert.strictEqual(activeFraction(Float32Array.from([3, 2, 0.5, 0.1]), 1, 4, 1.5, 'absolute'), 2 / 4);
  assert.throws(() => activeFraction(Float32Array.from([3, 2, 0.5, 0.1]), 1, 4, 1.5, 'topk'), MoefyError);
});
