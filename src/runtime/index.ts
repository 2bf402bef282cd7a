/**
 * moefy runtime: ONNX Runtime sessions (on the libonnxruntime.so.1 that onnxruntime-node ships) with the moefy
 * custom-op library registered. Takes and returns onnxruntime-common Tensors.
 */
import '../files/ort-telemetry'; // before any session
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Tensor } from 'onnxruntime-common';
import { MoefyError } from '../errors';
import type { IoDType } from '../io/dtypes';
import { packageRoot } from '../files/package-root';
import { ortMessage } from '../format';

export { dynamicMoeReference } from './reference';
export type { DynamicMoeInputs, DynamicMoeAttributes, DynamicMoeResult, Activation } from './reference';
export { summarizeActive, scaleOfPositions, formatActiveSummary } from './summary';
export type { ActiveSummary, ScaleActiveSummary } from './summary';

/** Element types the runtime takes and returns (the same set as moefy's tensor-set I/O). */
export type TensorType = IoDType;

const SUPPORTED_TYPES = new Set<string>([
  'float32', 'float16', 'float64', 'int8', 'uint8', 'int16', 'uint16', 'int32', 'uint32', 'int64', 'uint64', 'bool',
]);

export interface MoefySessionOptions {
  /** Threads of the intra-op pool (the DynamicMoE kernel parallelises on it). 0/undefined: ORT default (cores). */
  intraOpNumThreads?: number;
  interOpNumThreads?: number;
  /** 0 verbose, 1 info, 2 warning, 3 error (default), 4 fatal. */
  logSeverity?: 0 | 1 | 2 | 3 | 4;
  graphOptimizationLevel?: 'disabled' | 'basic' | 'extended' | 'all';
  executionMode?: 'sequential' | 'parallel';
  enableCpuMemArena?: boolean;
  enableMemPattern?: boolean;
  /** Register libmoefy_ops.so (default true). false: a stock session (DynamicMoE then runs its function body). */
  registerMoefyOps?: boolean;
  /** Use this custom-op library instead of libPath(). */
  customOpsLibrary?: string;
  /** Session config entries (AddSessionConfigEntry). */
  config?: Record<string, string>;
  /**
   * Execution providers besides the CPU: 'cuda' or {name: 'cuda', deviceId}. CUDA needs ONNX Runtime's CUDA
   * provider library next to libonnxruntime.so.1 and a libmoefy_ops.so built with CUDA; it also sets the session
   * config entry moefy.cuda = 1 so that the library registers its CUDA kernel.
   */
  executionProviders?: (string | { name: string; deviceId?: number })[];
  /** Symbolic dimension overrides (AddFreeDimensionOverrideByName). */
  freeDimensionOverrides?: Record<string, number>;
}

export interface IoMetadata {
  name: string;
  /** Element type, or null for non-tensor values. */
  type: TensorType | null;
  /** Fixed sizes as numbers, symbolic dims as their name, unknown as null. */
  dims: (number | string | null)[];
}

export interface MoefySession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly inputMetadata: readonly IoMetadata[];
  readonly outputMetadata: readonly IoMetadata[];
  /** Initializers that a feed may override (e.g. the converter's `moe_threshold`); not in inputNames. */
  readonly overridableInitializerNames: readonly string[];
  readonly overridableInitializerMetadata: readonly IoMetadata[];
  /** Runs the model. `fetches`: output names to return (default: all). Inputs are passed without copying. */
  run(feeds: Record<string, Tensor>, fetches?: readonly string[]): Promise<Record<string, Tensor>>;
  /** Frees the native session (runs in flight finish first). */
  release(): void;
}

interface NativeTensor {
  type: string;
  dims: number[];
  data: ArrayBufferView;
}
interface NativeSession {
  run(feeds: Record<string, NativeTensor>, outputs: string[]): Promise<Record<string, NativeTensor>>;
  release(): void;
  inputs(): IoMetadata[];
  outputs(): IoMetadata[];
  overridableInitializers(): IoMetadata[];
}
interface NativeAddon {
  init(ortLibraryPath: string, logSeverity: number): string;
  createSession(model: string | Uint8Array, options: Record<string, unknown>): Promise<NativeSession>;
}


/** Absolute path of libmoefy_ops.so (env MOEFY_OPS_LIB overrides). Does not check that it exists. */
export function libPath(): string {
  const env = process.env.MOEFY_OPS_LIB;
  if (env) return path.resolve(env);
  return path.join(packageRoot(), 'kernels', 'build', 'libmoefy_ops.so');
}

/** Absolute path of the addon (env MOEFY_RUNTIME_ADDON overrides). */
export function addonPath(): string {
  const env = process.env.MOEFY_RUNTIME_ADDON;
  if (env) return path.resolve(env);
  return path.join(packageRoot(), 'src', 'runtime', 'addon', 'build', 'Release', 'moefy_runtime.node');
}

/**
 * The libonnxruntime.so.1 shipped by onnxruntime-node (the one ONNX Runtime instance of the process); env
 * MOEFY_ORT_LIBRARY points the runtime at another ONNX Runtime build (the compatibility check uses it).
 */
export function ortLibraryPath(): string {
  const env = process.env.MOEFY_ORT_LIBRARY;
  if (env) {
    if (!fs.existsSync(env)) throw new MoefyError(`MOEFY_ORT_LIBRARY=${env}: no such file`);
    return path.resolve(env);
  }
  let pkg: string;
  try {
    pkg = require.resolve('onnxruntime-node/package.json');
  } catch {
    throw new MoefyError('onnxruntime-node is not installed');
  }
  const arch = process.arch === 'arm64' ? 'arm64' : 'x64';
  const p = path.join(path.dirname(pkg), 'bin', 'napi-v6', process.platform, arch, 'libonnxruntime.so.1');
  if (!fs.existsSync(p)) throw new MoefyError(`ONNX Runtime library not found at ${p}`);
  return p;
}

let addon: NativeAddon | undefined;
let ortVersionStr = '';
function loadAddon(logSeverity: number): NativeAddon {
  if (addon) return addon;
  const p = addonPath();
  if (!fs.existsSync(p)) throw new MoefyError(`moefy runtime addon not built (${p} missing): run npm run build`);
  let a: NativeAddon;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    a = require(p) as NativeAddon;
  } catch (e) {
    throw new MoefyError(`cannot load the moefy runtime addon ${p}: ${(e as Error).message.split('\n')[0]}`);
  }
  try {
    ortVersionStr = a.init(ortLibraryPath(), logSeverity);
  } catch (e) {
    throw new MoefyError((e as Error).message);
  }
  addon = a;
  return a;
}

/** Version of the ONNX Runtime the runtime uses (loads it on first call). */
export function ortVersion(): string {
  loadAddon(3);
  return ortVersionStr;
}

const OPT_LEVEL = { disabled: 0, basic: 1, extended: 2, all: 99 } as const;

function toNative(name: string, t: Tensor): NativeTensor {
  if (!t || typeof t !== 'object' || !('dims' in t) || !('type' in t)) {
    throw new MoefyError(`input "${name}" is not a Tensor`);
  }
  if (!SUPPORTED_TYPES.has(t.type)) throw new MoefyError(`input "${name}": tensor type ${t.type} is not supported`);
  if (t.location !== undefined && t.location !== 'cpu') throw new MoefyError(`input "${name}": tensor is not on the CPU`);
  const data = t.data as unknown as ArrayBufferView;
  if (!ArrayBuffer.isView(data)) throw new MoefyError(`input "${name}": tensor data is not a typed array`);
  return { type: t.type, dims: [...t.dims], data };
}

class Session implements MoefySession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly inputMetadata: readonly IoMetadata[];
  readonly outputMetadata: readonly IoMetadata[];
  readonly overridableInitializerNames: readonly string[];
  readonly overridableInitializerMetadata: readonly IoMetadata[];
  constructor(private native: NativeSession | null) {
    this.inputMetadata = native!.inputs();
    this.outputMetadata = native!.outputs();
    this.overridableInitializerMetadata = native!.overridableInitializers();
    this.overridableInitializerNames = this.overridableInitializerMetadata.map((m) => m.name);
    this.inputNames = this.inputMetadata.map((m) => m.name);
    this.outputNames = this.outputMetadata.map((m) => m.name);
  }
  async run(feeds: Record<string, Tensor>, fetches?: readonly string[]): Promise<Record<string, Tensor>> {
    if (!this.native) throw new MoefyError('session was released');
    const nf: Record<string, NativeTensor> = {};
    for (const [k, v] of Object.entries(feeds)) {
      if (!this.inputNames.includes(k) && !this.overridableInitializerNames.includes(k)) {
        throw new MoefyError(`unknown input "${k}" (model inputs: ${this.inputNames.join(', ')})`);
      }
      nf[k] = toNative(k, v);
    }
    const outs = fetches ? [...fetches] : [...this.outputNames];
    for (const o of outs) {
      if (!this.outputNames.includes(o)) {
        throw new MoefyError(`unknown output "${o}" (model outputs: ${this.outputNames.join(', ')})`);
      }
    }
    let res: Record<string, NativeTensor>;
    try {
      res = await this.native.run(nf, outs);
    } catch (e) {
      throw new MoefyError(`run failed: ${ortMessage((e as Error).message)}`);
    }
    const out: Record<string, Tensor> = {};
    for (const o of outs) {
      const r = res[o];
      out[o] = new Tensor(r.type as 'float32', r.data as Float32Array, r.dims);
    }
    return out;
  }
  release(): void {
    this.native?.release();
    this.native = null;
  }
}

/** Opens a session on a model file path or its bytes, with libmoefy_ops.so registered. */
export async function createSession(model: string | Uint8Array, options: MoefySessionOptions = {}): Promise<MoefySession> {
  const a = loadAddon(options.logSeverity ?? 3);
  const o: Record<string, unknown> = {};
  if (options.intraOpNumThreads !== undefined) o.intraOpNumThreads = options.intraOpNumThreads;
  if (options.interOpNumThreads !== undefined) o.interOpNumThreads = options.interOpNumThreads;
  o.logSeverityLevel = options.logSeverity ?? 3;
  if (options.graphOptimizationLevel) o.graphOptimizationLevel = OPT_LEVEL[options.graphOptimizationLevel];
  if (options.executionMode) o.executionMode = options.executionMode === 'parallel' ? 1 : 0;
  if (options.enableCpuMemArena !== undefined) o.enableCpuMemArena = options.enableCpuMemArena ? 1 : 0;
  if (options.enableMemPattern !== undefined) o.enableMemPattern = options.enableMemPattern ? 1 : 0;
  const config: Record<string, string> = { ...(options.config ?? {}) };
  for (const ep of options.executionProviders ?? []) {
    const name = typeof ep === 'string' ? ep : ep.name;
    if (name === 'cpu') continue;
    if (name !== 'cuda') throw new MoefyError(`unsupported execution provider "${name}" (cpu, cuda)`);
    o.cudaDeviceId = typeof ep === 'string' ? 0 : (ep.deviceId ?? 0);
    config['moefy.cuda'] ??= '1';
  }
  if (Object.keys(config).length) o.config = config;
  if (options.freeDimensionOverrides) o.freeDimensionOverrides = options.freeDimensionOverrides;
  if (options.registerMoefyOps !== false) {
    const lib = options.customOpsLibrary ?? libPath();
    if (!fs.existsSync(lib)) throw new MoefyError(`moefy op library not built (${lib} missing): run npm run build`);
    o.customOpsLibrary = lib;
  }
  if (typeof model === 'string') {
    if (!fs.existsSync(model)) throw new MoefyError(`model not found: ${model}`);
    model = path.resolve(model);
  }
  let native: NativeSession;
  try {
    native = await a.createSession(model, o);
  } catch (e) {
    throw new MoefyError(`${typeof model === 'string' ? `${path.relative(process.cwd(), model) || model}: ` : ''}ONNX Runtime cannot open the model: ${ortMessage((e as Error).message)}`);
  }
  return new Session(native);
}
