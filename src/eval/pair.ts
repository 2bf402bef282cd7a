// A dense model and a converted one compared or timed together must be the same network before and after the
// conversion: otherwise the inputs of one fail inside the other (ONNX Runtime's Gather index error, a shape error),
// or the numbers compare two unrelated models. Checked on the analysed structures before anything runs.
import type { VarStructure } from '../analysis/var-structure';
import { networkDifference } from '../calib/check-inputs';
import { MoefyError } from '../errors';
import type { Model } from '../ir/model';
import { THRESHOLD_INPUT } from '../op';

export interface PairSide {
  file: string;
  model: Model;
  structure: VarStructure;
}

/** "name float32 [?, 679, 32]" for each real input (moe_threshold, an input of the converted model only, left out). */
function signature(m: Model): string[] {
  return m.graph.inputs.filter((v) => !v.tensor && v.name !== THRESHOLD_INPUT).map((v) => `${v.name} (type ${v.elemType()}, shape [${(v.shape() ?? []).map((d) => (typeof d === 'number' ? d : '?')).join(', ')}])`);
}

/**
 * Throws, naming the first difference, when `moe` is not a conversion of `dense`. `moeMayBeDense`: the dense model
 * may stand in for its conversion (eval's check of its own harness).
 */
export function checkPair(dense: PairSide, moe: PairSide, o: { moeMayBeDense?: boolean } = {}): void {
  if (dense.structure.blocks.some((b) => b.moe)) throw new MoefyError(`${dense.file} is a converted model: give the dense model first, then its conversion`);
  if (!o.moeMayBeDense && !moe.structure.blocks.some((b) => b.moe)) throw new MoefyError(`${moe.file} holds no DynamicMoE node: give the dense model first, then its conversion`);
  const d = dense.structure, m = moe.structure;
  const kind = (x: VarStructure) => (x.kind === 'full' ? 'full sequence' : 'step');
  const facts: [string, unknown, unknown][] = [
    ['graph kind', kind(d), kind(m)],
    ['step scale', d.stepScale ?? 'any', m.stepScale ?? 'any'],
  ];
  const diff = facts.find(([, a, b]) => a !== b) ?? networkDifference(d, m);
  if (diff) throw new MoefyError(`${moe.file} is not a conversion of ${dense.file}: ${diff[0]} ${diff[2]} against ${diff[1]} in the dense model`);
  const sd = signature(dense.model), sm = signature(moe.model);
  const odd = sm.find((x) => !sd.includes(x)) ?? sd.find((x) => !sm.includes(x));
  if (odd) throw new MoefyError(`${moe.file} is not a conversion of ${dense.file}: the models' inputs differ (${odd} is in one only)`);
}
