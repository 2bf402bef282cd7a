// Per-layer calibration work (neuron clustering; router norms, training and predictions; expert repair) run for
// several layers at once: one worker thread per core, each running its layer in single-threaded ORT sessions. Measured at d16 size: a
// 2-thread ORT session spends 40% more CPU on the same router training steps than a 1-thread one (its small ops wait
// on each other), so two layers side by side in 1-thread sessions finish sooner than one layer after another in
// 2-thread sessions. Every layer runs single-threaded, also without workers: its result depends only on its inputs
// and seed, never on the number of cores or the scheduling (ORT's sums differ in the last bits between 1 and 2
// threads).
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { ActivationKind } from '../op';
import { MoefyError } from '../errors';
import { onInterrupt } from '../files/temp';
import { computeExpertNorms, computeHiddenActivations } from './expert-norms';
import { clusterNeurons, ExpertLayout } from './kmeans';
import { predictNorms, trainRouter, TrainRouterOptions, TrainRouterResult } from './router-train';
import { ffnOutputs, repairExperts } from './repair';
import { trainExperts } from './expert-train';

/** A layer's captured FFN inputs and its expert-contiguous FFN: what router and repair jobs start from. */
export interface LayerFfn {
  /** Captured FFN inputs [N, D]. Lent to a worker while its job runs (the buffer is moved, then moved back). */
  X: Float32Array;
  N: number;
  D: number;
  W1: Float32Array;
  B1: Float32Array;
  W2: Float32Array;
  E: number;
  /** The experts' activation. */
  activation: ActivationKind;
}

export interface RouterJob extends LayerFfn {
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

export interface ClusterJob {
  /** fc1 [D, H] and its bias, in the original neuron order. */
  W1: Float32Array;
  B1: Float32Array;
  D: number;
  H: number;
  E: number;
  activation: ActivationKind;
  /** Calibration tokens [n, D] for clustering by co-activation and the concentration report. */
  Xs: Float32Array;
  n: number;
  by: 'weights' | 'activations';
  seed: number;
}

export interface ClusterJobResult {
  layout: ExpertLayout;
  /** Mean fraction of experts holding 90% of a token's activation mass. */
  concentration: number | null;
}

/** The FFN's weights before the repair; X holds the dense model's FFN inputs. */
export interface RepairJob extends LayerFfn {
  B2: Float32Array | null;
  /** The dense FFN's own activation (the fit's target is that FFN). */
  original: ActivationKind;
  /** [N, E] 1 where the routing runs the expert on the token. */
  mask: Uint8Array;
  /** Gradient epochs after the closed form (0: closed form only). */
  epochs: number;
  seed: number;
}

export interface RepairJobResult {
  W1: Float32Array;
  B1: Float32Array;
  W2: Float32Array;
  B2: Float32Array;
  ridge: number;
  heldOutRelErrBefore: number;
  heldOutRelErrClosedForm: number;
  heldOutRelErrAfter: number;
  /** Best epoch of the gradient fit (0: closed form only). */
  epochs: number;
}

/**
 * Set by stopLayerJobs(): workers end their current job at the next epoch (its error says so), the pool starts none.
 * Shared with every worker, so a signal handler can stop them before the process exits (process.exit while a worker
 * is inside an ORT call aborts the process: the native addon throws into a dying environment).
 */
const stopFlag = new Int32Array(new SharedArrayBuffer(4));

/** Asks running layer jobs to stop (at the next epoch) and the pools to start no more; the pools then reject. */
export function stopLayerJobs(): void {
  Atomics.store(stopFlag, 0, 1);
}

/** Value of stopFlag when a signal stopped the jobs: the pool then never settles (the process is exiting). */
const INTERRUPTED = 2;

function checkStop(flag: Int32Array): void {
  if (Atomics.load(flag, 0)) throw new MoefyError('calibration stopped');
}

/** One layer's router: norms, training and predictions (in whichever thread calls it). */
export async function runRouterJob(j: RouterJob, threads?: number, flag: Int32Array = stopFlag): Promise<RouterJobResult> {
  const trueNorms = await computeExpertNorms(j.X, j.N, j.D, j.W1, j.B1, j.W2, j.E, j.activation, { threads });
  checkStop(flag);
  // Fitting √norm weighs the small norms near the threshold more than MSE on raw norms does (measured: better
  // routing at equal active fraction); the emitted router squares its output back into a norm.
  const fit = j.sqrt ? trueNorms.map(Math.sqrt) : trueNorms;
  const router = await trainRouter(j.X, fit, j.N, j.D, j.E, { ...j.train, threads, onProgress: () => checkStop(flag) });
  const p = await predictNorms(j.X, j.N, j.D, router.W1, router.W2, j.E, router.width, threads);
  return { router, trueNorms, predicted: j.sqrt ? p.map((x) => x * x) : p };
}

/** One layer's neurons split into experts. */
export async function runClusterJob(j: ClusterJob, threads?: number): Promise<ClusterJobResult> {
  const acts = await computeHiddenActivations(j.Xs, j.n, j.D, j.W1, j.B1, j.activation, { threads });
  const r = await clusterNeurons(j.W1, j.D, j.H, j.E, { by: j.by, activations: acts, N: j.n, seed: j.seed, threads });
  return { layout: { experts: r.experts, expertSize: r.expertSize, order: r.order, labels: r.labels }, concentration: r.concentration?.expertsFor90 ?? null };
}

/** One layer's experts refitted to the dense FFN under the routing: the closed form, then the gradient epochs. */
export async function runRepairJob(j: RepairJob, threads?: number, flag: Int32Array = stopFlag): Promise<RepairJobResult> {
  const w = { W1: j.W1, B1: j.B1, W2: j.W2, B2: j.B2 };
  // The gradient epochs need the dense outputs as an array; the closed form alone computes them in its moments.
  const target = j.epochs > 0 ? await ffnOutputs(j.X, j.N, j.D, w, j.original, 4096, threads) : null;
  checkStop(flag);
  const routing = { mask: j.mask, E: j.E };
  const fit = await repairExperts({ X: j.X, N: j.N, D: j.D, target: target ?? { denseActivation: j.original }, weights: w, activation: j.activation, routing }, { threads });
  const out: RepairJobResult = {
    W1: j.W1, B1: j.B1, W2: fit.W2, B2: fit.B2, ridge: fit.ridge,
    heldOutRelErrBefore: fit.heldOut.before, heldOutRelErrClosedForm: fit.heldOut.after, heldOutRelErrAfter: fit.heldOut.after, epochs: 0,
  };
  if (target) {
    checkStop(flag);
    const t = await trainExperts({ X: j.X, N: j.N, D: j.D, target, weights: { ...w, W2: fit.W2, B2: fit.B2 }, activation: j.activation, routing }, { epochs: j.epochs, seed: j.seed, threads, onEpoch: () => checkStop(flag) });
    Object.assign(out, t.weights);
    out.heldOutRelErrAfter = t.heldOutAfter;
    out.epochs = t.bestEpoch;
  }
  return out;
}

export type LayerJob = { kind: 'router'; job: RouterJob } | { kind: 'cluster'; job: ClusterJob } | { kind: 'repair'; job: RepairJob };
export type LayerJobResult = RouterJobResult | ClusterJobResult | RepairJobResult;

export async function runLayerJob(j: LayerJob, threads?: number, flag: Int32Array = stopFlag): Promise<LayerJobResult> {
  checkStop(flag);
  if (j.kind === 'router') return runRouterJob(j.job, threads, flag);
  if (j.kind === 'repair') return runRepairJob(j.job, threads, flag);
  return runClusterJob(j.job, threads);
}

/** Router and repair jobs borrow the layer's captured inputs (moved to the worker and back). */
export function lendsInputs(j: LayerJob): j is { kind: 'router'; job: RouterJob } | { kind: 'repair'; job: RepairJob } {
  return j.kind === 'router' || j.kind === 'repair';
}

/** The buffers a result hands back to the main thread (moved, not copied). */
export function resultBuffers(j: LayerJob, result: LayerJobResult): ArrayBuffer[] {
  const bufs: ArrayBufferLike[] = [];
  if (j.kind === 'router') {
    const r = result as RouterJobResult;
    bufs.push(j.job.X.buffer, r.trueNorms.buffer, r.predicted.buffer, r.router.W1.buffer, r.router.W2.buffer);
  } else if (j.kind === 'repair') {
    const r = result as RepairJobResult;
    bufs.push(j.job.X.buffer, r.W1.buffer, r.B1.buffer, r.W2.buffer, r.B2.buffer);
  } else {
    const r = result as ClusterJobResult;
    bufs.push(r.layout.order.buffer, r.layout.labels.buffer);
  }
  return [...new Set(bufs)].filter((b): b is ArrayBuffer => b instanceof ArrayBuffer && b.byteLength > 0);
}

/** Whether a typed array owns its whole buffer (then the buffer can be moved to a worker instead of copied). */
function ownsBuffer(a: Float32Array): boolean {
  return a.byteOffset === 0 && a.byteLength === a.buffer.byteLength && !(a.buffer instanceof SharedArrayBuffer);
}

interface PoolOptions {
  /** Worker threads (default: the machine's cores, at most one per job; 1 runs the jobs in this thread). */
  workers?: number;
  onDone?: (done: number) => void;
}

async function runLayerJobs<R>(jobs: LayerJob[], opts: PoolOptions): Promise<R[]> {
  const n = Math.max(1, Math.min(jobs.length, opts.workers ?? os.availableParallelism()));
  const results: R[] = new Array(jobs.length);
  if (n === 1) {
    for (let k = 0; k < jobs.length; k++) {
      results[k] = (await runLayerJob(jobs[k], 1)) as R;
      opts.onDone?.(k + 1);
    }
    return results;
  }
  const pool = Array.from({ length: n }, () => new Worker(path.join(__dirname, 'layer-worker.js'), { workerData: { stop: stopFlag } }));
  let next = 0, done = 0;
  // On a failure no new job starts, but running ones finish: terminating a worker inside an ORT call aborts the
  // whole process (the native addon throws into a dying environment).
  let failure: Error | null = null;
  let idle: Promise<void[]> | null = null;
  // On SIGINT/SIGTERM (the CLI's handler) the running jobs stop and the process exits once the workers are idle.
  const unregister = onInterrupt(async () => {
    Atomics.store(stopFlag, 0, INTERRUPTED);
    await idle;
  });
  try {
    idle = Promise.all(pool.map((w) => new Promise<void>((resolve) => {
      let current = -1;
      let lent = false;
      let idle = false;
      // Idle workers take no more jobs; an exit after that is our own terminate().
      const stop = (e?: Error) => {
        if (idle) return;
        if (e) failure ??= e;
        idle = true;
        resolve();
      };
      const give = () => {
        if (!failure && Atomics.load(stopFlag, 0)) failure = new MoefyError('calibration stopped');
        if (failure || next >= jobs.length) {
          stop();
          return;
        }
        current = next++;
        const j = jobs[current];
        // A router or repair job's captured inputs are moved to the worker and back rather than copied (178 MB a
        // layer at d16).
        if (lendsInputs(j)) {
          lent = ownsBuffer(j.job.X);
          const X = lent ? j.job.X : j.job.X.slice();
          w.postMessage({ job: { kind: j.kind, job: { ...j.job, X } } }, [X.buffer as ArrayBuffer]);
        } else w.postMessage({ job: j });
      };
      w.on('message', (m: { result?: R; X?: Float32Array; error?: { message: string; moefy: boolean } }) => {
        const j = jobs[current];
        if (lendsInputs(j) && lent && m.X) j.job.X = m.X;
        if (m.error) {
          stop(m.error.moefy ? new MoefyError(m.error.message) : new Error(m.error.message));
          return;
        }
        results[current] = m.result!;
        opts.onDone?.(++done);
        give();
      });
      w.on('error', (e) => stop(e));
      w.on('exit', (code) => stop(code !== 0 ? new Error(`calibration worker exited with code ${code}`) : undefined));
      give();
    })));
    await idle;
  } finally {
    unregister();
    // Every worker is idle here (or gone).
    await Promise.all(pool.map((w) => w.terminate()));
  }
  if (Atomics.load(stopFlag, 0) === INTERRUPTED) await new Promise(() => {});
  if (failure) throw failure;
  return results;
}

/**
 * Routers of several layers, results in job order. A job's X is moved to its worker and back: it is unusable
 * (length 0) while the job runs, and whole again after (jobs[k].X is then the returned array).
 */
export async function runRouterJobs(jobs: RouterJob[], opts: PoolOptions = {}): Promise<RouterJobResult[]> {
  const wrapped: LayerJob[] = jobs.map((job) => ({ kind: 'router', job }));
  const r = await runLayerJobs<RouterJobResult>(wrapped, opts);
  wrapped.forEach((w, k) => (jobs[k].X = (w.job as RouterJob).X));
  return r;
}

/** Expert repairs of several layers, results in job order; X is lent as in runRouterJobs. */
export async function runRepairJobs(jobs: RepairJob[], opts: PoolOptions = {}): Promise<RepairJobResult[]> {
  const wrapped: LayerJob[] = jobs.map((job) => ({ kind: 'repair', job }));
  const r = await runLayerJobs<RepairJobResult>(wrapped, opts);
  wrapped.forEach((w, k) => (jobs[k].X = (w.job as RepairJob).X));
  return r;
}

/** Expert layouts of several layers, results in job order. */
export async function runClusterJobs(jobs: ClusterJob[], opts: PoolOptions = {}): Promise<ClusterJobResult[]> {
  return runLayerJobs<ClusterJobResult>(jobs.map((job) => ({ kind: 'cluster', job })), opts);
}
