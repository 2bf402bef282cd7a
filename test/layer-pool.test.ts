// The layer pool runs registered kinds of job: a kind defined in its own module (test/helpers/scale-job.ts) runs in
// worker threads that load that module, with results in job order and the lent arrays given back to their owners.
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { threadId } from 'node:worker_threads';
import { Lendable } from '../src/calib/layer-pool';
import { scaleJobs } from './helpers/scale-job';

const arrays = () => [1, 2, 3, 4, 5].map((k) => Float32Array.from({ length: 1000 }, (_, i) => (i % 7) + k));

test('a kind registered by its own module runs in the workers; results in job order; lent arrays given back', async () => {
  const data = arrays();
  const lent = data.map((a) => new Lendable(a));
  const jobs = lent.map((X, k) => ({ X, factor: k + 1 }));
  const done: number[] = [];
  const r = await scaleJobs.run(jobs, { workers: 2, onDone: (d) => done.push(d) });
  assert.deepEqual(done, [1, 2, 3, 4, 5]);
  const want = arrays();
  r.forEach((x, k) => {
    assert.notEqual(x.thread, threadId, 'ran in a worker');
    assert.equal(x.sum, want[k].reduce((a, b) => a + b, 0) * (k + 1));
    assert.deepEqual([...x.scaled.subarray(0, 3)], [...want[k].subarray(0, 3)].map((v) => v * (k + 1)));
    // Moved to the worker and back: the owner reads the array the job saw (its write included).
    assert.equal(lent[k].data.length, 1000);
    assert.equal(lent[k].data[0], -1);
    assert.deepEqual([...lent[k].data.subarray(1)], [...want[k].subarray(1)]);
  });
});

test('an array that does not own its buffer is lent as a copy: the owner keeps it as it was', async () => {
  const whole = Float32Array.from({ length: 2000 }, (_, i) => i);
  const view = whole.subarray(500, 1500);
  const lent = new Lendable(view);
  const [r] = await scaleJobs.run([{ X: lent, factor: 2 }, { X: new Lendable(Float32Array.of(1)), factor: 1 }], { workers: 2 });
  assert.equal(r.sum, 2 * (500 + 1499) * 500);
  assert.equal(lent.data, view);
  assert.equal(view[0], 500, 'the copy was written, not the view');
});

test('without workers the jobs run in this thread on the arrays themselves', async () => {
  const a = Float32Array.of(1, 2, 3);
  const lent = new Lendable(a);
  const [r] = await scaleJobs.run([{ X: lent, factor: 3 }], { workers: 1 });
  assert.equal(r.thread, threadId);
  assert.equal(r.sum, 18);
  assert.equal(lent.data, a);
  assert.equal(a[0], -1);
});
