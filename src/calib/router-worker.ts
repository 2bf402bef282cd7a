// Worker thread of runRouterJobs: runs one layer's router job at a time in single-threaded ORT sessions and moves
// the captured inputs and the results back to the main thread.
import { parentPort } from 'node:worker_threads';
import { MoefyError } from '../errors';
import { RouterJob, runRouterJob } from './router-pool';

parentPort!.on('message', async ({ job }: { job: RouterJob }) => {
  try {
    const result = await runRouterJob(job, 1);
    const moved = [job.X.buffer, result.trueNorms.buffer, result.predicted.buffer, result.router.W1.buffer, result.router.W2.buffer] as ArrayBuffer[];
    parentPort!.postMessage({ result, X: job.X }, [...new Set(moved)]);
  } catch (e) {
    parentPort!.postMessage({ error: { message: (e as Error).message, moefy: e instanceof MoefyError } });
  }
});
