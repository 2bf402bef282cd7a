// A kind of layer job defined outside src/ (as a new one would be): it scales a lent array by a factor in place and
// returns the sum of the scaled values, a new array, and the thread it ran in.
import { threadId } from 'node:worker_threads';
import { Lendable, layerJobKind } from '../../src/calib/layer-pool';

export interface ScaleJob {
  X: Lendable;
  factor: number;
}

export interface ScaleJobResult {
  sum: number;
  scaled: Float32Array;
  thread: number;
}

export const scaleJobs = layerJobKind<ScaleJob, ScaleJobResult>({
  name: 'test-scale',
  module: __filename,
  async run(j) {
    const scaled = Float32Array.from(j.X, (v) => v * j.factor);
    // Writing into the lent array must not reach the owner's copy when the pool copied it, and must come back when moved.
    j.X[0] = -1;
    return { sum: scaled.reduce((a, b) => a + b, 0), scaled, thread: threadId };
  },
  resultBuffers: (r) => [r.scaled.buffer],
});
