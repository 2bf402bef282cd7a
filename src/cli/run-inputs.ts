// `moefy run`'s inputs against the model's signature: a wrong type or shape is one line in moefy's words before the
// run, not ONNX Runtime's error text after it.
import type { Tensor } from 'onnxruntime-common';
import { MoefyError } from '../errors';
import type { IoMetadata } from '../runtime';

export function checkRunInputs(meta: readonly IoMetadata[], feeds: Record<string, Tensor>, where: string): void {
  // A symbolic dimension (the batch 'B') is one size in every input that has it.
  const sizes = new Map<string, { name: string; size: number }>();
  for (const m of meta) {
    const t = feeds[m.name];
    if (!t || m.type === null) continue;
    if (t.type !== m.type) throw new MoefyError(`--inputs ${where}: '${m.name}' is ${t.type}, the model expects ${m.type}`);
    const fixed = (d: number | string | null): d is number => typeof d === 'number' && d >= 0;
    const bad = t.dims.length !== m.dims.length || m.dims.some((d, i) => fixed(d) && d !== t.dims[i]);
    if (bad) throw new MoefyError(`--inputs ${where}: '${m.name}' has shape [${t.dims.join(', ')}], the model expects [${m.dims.map((d) => (fixed(d) ? d : d || '?')).join(', ')}]`);
    m.dims.forEach((d, k) => {
      if (typeof d !== 'string' || !d) return;
      const seen = sizes.get(d);
      if (seen && seen.size !== t.dims[k]) throw new MoefyError(`--inputs ${where}: '${m.name}' has ${t.dims[k]} along '${d}', '${seen.name}' has ${seen.size}`);
      sizes.set(d, seen ?? { name: m.name, size: t.dims[k] });
    });
  }
}
