// Router training of several layers at once: one worker thread per core, each running its layers' expert norms,
// training and predictions in single-threaded ORT sessions. Measured at d16 size: a 2-thread ORT session spends 40%
// more CPU on the same training steps than a 1-thread one (its small ops wait on each other), so two layers side by
// side in 1-thread sessions finish sooner than one layer after another in 2-thread sessions. Every layer runs
// single-threaded, also without workers: its result depends only on its inputs and seed, never on the number of
// cores or the scheduling (ORT's sums differ in the last bits between 1 and 2 threads).
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { MoefyError } from '../errors';
import type { ActivationKind } from '../op';
import { computeExpertNorms } from './expert-norms';
import { predictNorms, trainRouter, TrainRouterOptions, TrainRouterResult } from './router-train';

export interface RouterJob {
  /** Captured FFN inputs [N, D]. Lent to a worker while it trains (its buffer is moved, then moved back). */
  X: Float32Array;
  N: number;
  D: number;
  /** The FFN's expert-contiguous weights. */
  W1: Float32Array;
  B1: Float32Array;
  W2: Float32Array;
  E: number;
  activation: ActivationKind;
  /** Regress √norm (squared back for `predicted`). */
  sqrt: boolean;
  train: Omit<TrainRouterOptions, 'onProgress' | 'threads'>;
}

export interface RouterJobResult {
  router: TrainRouterResult;
  /** True expert norms [N, E]. */
  trueNorms: Float32Array;
  /** The router's predicted norms [N, E] (squared when sqrt). */
  predicted: Float32Array;
}

/** One layer: norms, training and predictions (in whichever thread calls it). */
export async function runRouterJob(j: RouterJob, threads?: number): Promise<RouterJobResult> {
  const trueNorms = await computeExpertNorms(j.X, j.N, j.D, j.W1, j.B1, j.W2, j.E, j.activation, { threads });
  // Fitting √norm weighs the small norms near the threshold more than MSE on raw norms does (measured: better
  // routing at equal active fraction); the emitted router squares its output back into a norm.
  const fit = j.sqrt ? trueNorms.map(Math.sqrt) : trueNorms;
  const router = await trainRouter(j.X, fit, j.N, j.D, j.E, { ...j.train, threads });
  const width = router.width;
  const p = await predictNorms(j.X, j.N, j.D, router.W1, router.W2, j.E, width, threads);
  return { router, trueNorms, predicted: j.sqrt ? p.map((x) => x * x) : p };
}

/** Whether a typed array owns its whole buffer (then the buffer can be moved to a worker instead of copied). */
function ownsBuffer(a: Float32Array): boolean {
  return a.byteOffset === 0 && a.byteLength === a.buffer.byteLength && !(a.buffer instanceof SharedArrayBuffer);
}

/**
 * Runs the jobs on up to `workers` threads (default: the machine's cores, at most one per job), results in job order.
 * A job's X is moved to its worker and back: it is unusable (length 0) while the job runs, and whole again after.
 */
export async function runRouterJobs(jobs: RouterJob[], opts: { workers?: number; onDone?: (done: number) => void } = {}): Promise<RouterJobResult[]> {
  const n = Math.max(1, Math.min(jobs.length, opts.workers ?? os.availableParallelism()));
  const results: RouterJobResult[] = new Array(jobs.length);
  if (n === 1) {
    for (let k = 0; k < jobs.length; k++) {
      results[k] = await runRouterJob(jobs[k], 1);
      opts.onDone?.(k + 1);
    }
    return results;
  }
  const pool = Array.from({ length: n }, () => new Worker(path.join(__dirname, 'router-worker.js')));
  let next = 0, done = 0;
  try {
    await Promise.all(pool.map((w) => new Promise<void>((resolve, reject) => {
      let current = -1;
      let lentX: Float32Array | null = null;
      const give = () => {
        if (next >= jobs.length) {
          resolve();
          return;
        }
        current = next++;
        const j = jobs[current];
        lentX = ownsBuffer(j.X) ? j.X : null;
        const X = lentX ?? j.X.slice();
        w.postMessage({ job: { ...j, X } }, [X.buffer as ArrayBuffer]);
      };
      w.on('message', (m: { result?: RouterJobResult; X?: Float32Array; error?: { message: string; moefy: boolean } }) => {
        if (m.error) {
          reject(m.error.moefy ? new MoefyError(m.error.message) : new Error(m.error.message));
          return;
        }
        if (lentX && m.X) jobs[current].X = m.X;
        results[current] = m.result!;
        opts.onDone?.(++done);
        give();
      });
      w.on('error', reject);
      w.on('exit', (code) => {
        if (code !== 0) reject(new Error(`router worker exited with code ${code}`));
      });
      give();
    })));
  } finally {
    await Promise.all(pool.map((w) => w.terminate()));
  }
  return results;
}
