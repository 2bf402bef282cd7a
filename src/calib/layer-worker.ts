// Worker thread of the layer pool (layer-pool.ts): runs one layer's job at a time in single-threaded ORT sessions and
// moves the inputs it was lent and its results back to the main thread.
import { parentPort, workerData } from 'node:worker_threads';
import { MoefyError } from '../errors';
import { ClusterJobResult, LayerJob, RouterJobResult, runLayerJob } from './layer-pool';

parentPort!.on('message', async ({ job }: { job: LayerJob }) => {
  try {
    const result = await runLayerJob(job, 1, (workerData as { stop: Int32Array }).stop);
    let moved: ArrayBuffer[];
    if (job.kind === 'router') {
      const r = result as RouterJobResult;
      moved = [job.job.X.buffer, r.trueNorms.buffer, r.predicted.buffer, r.router.W1.buffer, r.router.W2.buffer] as ArrayBuffer[];
    } else {
      const r = result as ClusterJobResult;
      moved = [r.layout.order.buffer, r.layout.labels.buffer] as ArrayBuffer[];
    }
    parentPort!.postMessage({ result, X: job.kind === 'router' ? job.job.X : undefined }, [...new Set(moved)]);
  } catch (e) {
    // The lent inputs go back with the error.
    const X = job.kind === 'router' ? job.job.X : undefined;
    parentPort!.postMessage({ error: { message: (e as Error).message, moefy: e instanceof MoefyError }, X }, X ? [X.buffer as ArrayBuffer] : []);
  }
});
