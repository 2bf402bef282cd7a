// Worker thread of the layer pool (layer-pool.ts): runs one layer's job at a time in single-threaded ORT sessions and
// moves the inputs it was lent and its results back to the main thread.
import { parentPort, workerData } from 'node:worker_threads';
import { MoefyError } from '../errors';
import { LayerJob, lendsInputs, resultBuffers, runLayerJob } from './layer-pool';

parentPort!.on('message', async ({ job }: { job: LayerJob }) => {
  try {
    const result = await runLayerJob(job, 1, (workerData as { stop: Int32Array }).stop);
    parentPort!.postMessage({ result, X: lendsInputs(job) ? job.job.X : undefined }, resultBuffers(job, result));
  } catch (e) {
    // The lent inputs go back with the error.
    const X = lendsInputs(job) ? job.job.X : undefined;
    parentPort!.postMessage({ error: { message: (e as Error).message, moefy: e instanceof MoefyError }, X }, X ? [X.buffer as ArrayBuffer] : []);
  }
});
