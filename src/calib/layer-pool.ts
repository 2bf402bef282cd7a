// Per-layer calibration work (neuron clustering; router norms, training and predictions; expert repair) run for
// several layers at once: one worker thread per core, each running its layer in single-threaded ORT sessions. Measured at d16 size: a
// 2-thread ORT session spends 40% more CPU on the same router training steps than a 1-thread one (its small ops wait
// on each other), so two layers side by side in 1-thread sessions finish sooner than one layer after another in
// 2-thread sessions. Every layer runs single-threaded, also without workers: its result depends only on its inputs
// and seed, never on the number of cores or the scheduling (ORT's sums differ in the last bits between 1 and 2
// threads).
//
// The kinds of job are registered, not listed here: a module defines one with layerJobKind(), which a worker loads
// (by the module's path) the first time it is given a job of that kind. A job's big inputs are Lendable: the pool
// moves them to the worker and back, and gives them back to their owner itself.
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { MoefyError } from '../errors';
import { onInterrupt } from '../files/temp';

/**
 * A float32 array the pool may lend to a worker thread: moved there and back rather than copied (a layer's captured
 * inputs are 178 MB at d16). Its owner reads it through `data`, the same array before and after a job.
 */
export class Lendable {
  #data: Float32Array | null;
  constructor(data: Float32Array) {
    this.#data = data;
  }
  get data(): Float32Array {
    if (!this.#data) throw new Error('an array lent to a calibration worker was read before it came back');
    return this.#data;
  }
  /** @internal The array to post: moved (then unreadable here until given back) when it owns its buffer, else a copy. */
  lend(): { array: Float32Array; moved: boolean } {
    const a = this.data;
    if (a.byteOffset === 0 && a.byteLength === a.buffer.byteLength && !(a.buffer instanceof SharedArrayBuffer)) {
      this.#data = null;
      return { array: a, moved: true };
    }
    return { array: a.slice(), moved: false };
  }
  /** @internal */
  giveBack(a: Float32Array): void {
    this.#data = a;
  }
}

/** A job as the thread that runs it sees it: its Lendable fields are plain arrays there. */
export type InWorker<J> = { [K in keyof J]: J[K] extends Lendable ? Float32Array : J[K] };

export interface JobContext {
  /** ORT intra-op threads for the job's sessions (1: see above). */
  threads: number;
  /** Throws when the pool is stopping (between epochs, say): the job ends with the pool's error. */
  checkStop(): void;
}

/** A kind of per-layer job. */
export interface LayerJobKind<J, R> {
  /** Unique among the kinds. */
  name: string;
  /** The file that defines the kind (its `__filename`): a worker thread loads it to learn the kind. */
  module: string;
  run(job: InWorker<J>, ctx: JobContext): Promise<R>;
  /** The result's buffers, moved back to the main thread rather than copied. */
  resultBuffers(result: R): ArrayBufferLike[];
}

export interface PoolOptions {
  /** Worker threads (default: the machine's cores, at most one per job; 1 runs the jobs in this thread). */
  workers?: number;
  onDone?: (done: number) => void;
}

/** Runs jobs of one kind, results in job order; Lendable inputs are lent to the workers and given back. */
export interface LayerJobs<J, R> {
  readonly kind: LayerJobKind<J, R>;
  run(jobs: J[], opts?: PoolOptions): Promise<R[]>;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const KINDS = new Map<string, LayerJobKind<any, any>>();

/** Registers a kind of job (at its module's load, in the main thread and in every worker that loads the module). */
export function layerJobKind<J extends object, R>(kind: LayerJobKind<J, R>): LayerJobs<J, R> {
  const known = KINDS.get(kind.name);
  if (known && known.module !== kind.module) throw new Error(`two kinds of layer job are named '${kind.name}' (${known.module}, ${kind.module})`);
  KINDS.set(kind.name, kind);
  return { kind, run: (jobs, opts = {}) => runLayerJobs(kind, jobs, opts) };
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

/** What the pool posts to a worker for one job. */
export interface JobMessage {
  kind: string;
  module: string;
  job: Record<string, unknown>;
  /** The fields of `job` that are lent arrays, to post back. */
  lent: string[];
}

/** Runs one job of a registered kind in this thread (a worker's, or the pool's without workers). */
export async function runJob(kind: string, module: string, job: object, threads: number, flag: Int32Array = stopFlag): Promise<unknown> {
  if (!KINDS.has(kind)) require(module);
  const k = KINDS.get(kind);
  if (!k) throw new Error(`${module} defines no layer job kind '${kind}'`);
  checkStop(flag);
  return k.run(job, { threads, checkStop: () => checkStop(flag) });
}

/** The buffers a result of `kind` hands back to the main thread (moved, not copied). */
export function resultBuffers(kind: string, result: unknown): ArrayBuffer[] {
  return [...new Set(KINDS.get(kind)!.resultBuffers(result))].filter((b): b is ArrayBuffer => b instanceof ArrayBuffer && b.byteLength > 0);
}

const lentFields = (job: object): string[] => Object.entries(job).filter(([, v]) => v instanceof Lendable).map(([k]) => k);

/** The job as it runs in this thread: Lendable fields read in place. */
function inThisThread<J extends object>(job: J): InWorker<J> {
  return Object.fromEntries(Object.entries(job).map(([k, v]) => [k, v instanceof Lendable ? v.data : v])) as InWorker<J>;
}

async function runLayerJobs<J extends object, R>(kind: LayerJobKind<J, R>, jobs: J[], opts: PoolOptions): Promise<R[]> {
  const n = Math.max(1, Math.min(jobs.length, opts.workers ?? os.availableParallelism()));
  const results: R[] = new Array(jobs.length);
  if (n === 1) {
    for (let k = 0; k < jobs.length; k++) {
      results[k] = (await runJob(kind.name, kind.module, inThisThread(jobs[k]), 1)) as R;
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
      let moved: string[] = [];
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
        const job = jobs[current] as Record<string, unknown>;
        const lent = lentFields(job);
        const view: Record<string, unknown> = { ...job };
        const transfer: ArrayBuffer[] = [];
        moved = [];
        for (const f of lent) {
          const { array, moved: m } = (job[f] as Lendable).lend();
          view[f] = array;
          transfer.push(array.buffer as ArrayBuffer);
          if (m) moved.push(f);
        }
        const message: JobMessage = { kind: kind.name, module: kind.module, job: view, lent };
        w.postMessage(message, transfer);
      };
      w.on('message', (m: { result?: R; lent?: Record<string, Float32Array>; error?: { message: string; moefy: boolean } }) => {
        const job = jobs[current] as Record<string, unknown>;
        for (const f of moved) if (m.lent?.[f]) (job[f] as Lendable).giveBack(m.lent[f]);
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
