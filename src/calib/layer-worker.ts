// Worker thread of the layer pool (layer-pool.ts): runs one layer's job at a time in single-threaded ORT sessions and
// moves the inputs it was lent and its results back to the main thread.
import { parentPort, workerData } from 'node:worker_threads';
import { MoefyError } from '../errors';
import { JobMessage, resultBuffers, runJob } from './layer-pool';

parentPort!.on('message', async (m: JobMessage) => {
  // The lent inputs go back with the result or the error.
  const lent = Object.fromEntries(m.lent.map((f) => [f, m.job[f] as Float32Array]));
  const lentBuffers = Object.values(lent).map((a) => a.buffer as ArrayBuffer);
  try {
    const result = await runJob(m.kind, m.module, m.job, 1, (workerData as { stop: Int32Array }).stop);
    parentPort!.postMessage({ result, lent }, [...new Set([...lentBuffers, ...resultBuffers(m.kind, result)])]);
  } catch (e) {
    parentPort!.postMessage({ error: { message: (e as Error).message, moefy: e instanceof MoefyError }, lent }, lentBuffers);
  }
});
