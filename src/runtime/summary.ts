/** Experts-used-per-scale summaries from DynamicMoE `active` outputs (int32 [B, L], experts run per token). */
import { Tensor } from 'onnxruntime-common';
import { MoefyError } from '../errors';
import { scaleOfPositions, VAR_PATCH_NUMS } from '../op';

export { scaleOfPositions };

export interface ScaleActiveSummary {
  scale: number;
  patchNum: number;
  /** token count over all given layers and batch rows */
  tokens: number;
  /** mean experts run per token */
  meanActive: number;
  /** meanActive / numExperts when numExperts is known */
  fraction?: number;
}

export interface ActiveSummary {
  layers: number;
  perScale: ScaleActiveSummary[];
  meanActive: number;
  numExperts?: number;
}

/**
 * Mean active experts per scale over one or more `active` tensors (e.g. one per MoE layer).
 * `patchNums` default: VAR 256px (1,2,3,4,5,6,8,10,13,16).
 */
export function summarizeActive(
  active: Tensor | readonly Tensor[] | Record<string, Tensor>,
  options: { patchNums?: readonly number[]; scaleIndex?: number; numExperts?: number } = {},
): ActiveSummary {
  const patchNums = options.patchNums ?? VAR_PATCH_NUMS;
  const list: Tensor[] = active instanceof Tensor ? [active] : Array.isArray(active) ? [...active] : Object.values(active);
  const sums = new Float64Array(patchNums.length);
  const counts = new Float64Array(patchNums.length);
  for (const t of list) {
    if (t.type !== 'int32' && t.type !== 'int64') throw new MoefyError(`active output must be int32, got ${t.type}`);
    const dims = t.dims;
    const L = dims.length >= 1 ? dims[dims.length - 1] : 1;
    const scales = scaleOfPositions(L, patchNums, options.scaleIndex);
    if (!scales) throw new MoefyError(`cannot tell the scale of ${L} tokens (patch_nums ${patchNums.join(',')}); give the scale index`);
    const data = t.data as Int32Array | BigInt64Array;
    for (let i = 0; i < data.length; i++) {
      const s = scales[i % L];
      sums[s] += Number(data[i]);
      counts[s] += 1;
    }
  }
  const perScale: ScaleActiveSummary[] = [];
  let total = 0;
  let n = 0;
  patchNums.forEach((p, s) => {
    if (counts[s] === 0) return;
    const mean = sums[s] / counts[s];
    const entry: ScaleActiveSummary = { scale: s, patchNum: p, tokens: counts[s], meanActive: mean };
    if (options.numExperts) entry.fraction = mean / options.numExperts;
    perScale.push(entry);
    total += sums[s];
    n += counts[s];
  });
  return { layers: list.length, perScale, meanActive: n ? total / n : 0, numExperts: options.numExperts };
}

/** Human-readable lines, scales numbered from 1 as on the command line: `scale 8 (10x10): 12.50 experts/token (39.1%)`. */
export function formatActiveSummary(s: ActiveSummary): string[] {
  const lines = s.perScale.map(
    (e) =>
      `scale ${e.scale + 1} (${e.patchNum}x${e.patchNum}): ${e.meanActive.toFixed(2)} experts/token` +
      (e.fraction !== undefined ? ` (${(100 * e.fraction).toFixed(1)}%)` : ''),
  );
  lines.push(`all: ${s.meanActive.toFixed(2)} experts/token over ${s.layers} layer(s)`);
  return lines;
}
