// VAR's signature: what each input and output of an export is for. The exporter keeps VAR's own names (label_B,
// x_BLCv_wo_first_l, cfg, past_key_i, present_key_i, logits_BLV, ...); this module is the one place that knows them,
// and the other modules ask it (by Value for an analysed model, by name for a session's inputs or a tensor set).
import { MoefyError } from '../errors';
import type { Graph, Value } from '../ir/graph';

/** The teacher-forcing data of a full-sequence graph by VAR's names: its two inputs and the ground-truth tokens. */
export const TEACHER_FORCING = { label: 'label_B', tokens: 'x_BLCv_wo_first_l', groundTruth: 'gt_idx_BL' } as const;

/** The exporter's KV-cache names: past_key_i / past_value_i in, present_key_i / present_value_i out. */
export const isKvInputName = (name: string): boolean => /past_(key|value)/.test(name);
export const isKvOutputName = (name: string): boolean => /present_(key|value)/.test(name);
/** The past_* input a present_* output feeds at the next step. */
export const kvInputFor = (present: string): string => present.replace('present_', 'past_');
/** The present_* output that feeds a past_* input at the next step. */
export const kvOutputFor = (past: string): string => past.replace('past_', 'present_');

/**
 * What a VAR graph input is, by its name: the class labels ([B] int64), the classifier-free-guidance strength of
 * step graphs (a float scalar), a KV-cache tensor, or the token features (anything else).
 */
export type InputRole = 'label' | 'cfg' | 'kv' | 'tokens';

export function inputRole(name: string): InputRole {
  if (isKvInputName(name)) return 'kv';
  if (/label/.test(name)) return 'label';
  if (/cfg/i.test(name)) return 'cfg';
  return 'tokens';
}

/** The KV cache of a step graph: past_* inputs and present_* outputs, by the exporter's names. */
export interface KvCache {
  inputs: Value[];
  outputs: Value[];
}

export interface VarSignature {
  /** The class labels input. */
  label: Value | null;
  /** The CFG strength input (step graphs with guidance inside). */
  cfg: Value | null;
  /** The token-feature input ([B, l, Cvae]; x_BLCv_wo_first_l in full graphs), null in the first step's graph. */
  tokens: Value | null;
  /** The logits output (named *logit*, else the first output). */
  logits: Value;
  /** Step graphs' KV cache (empty lists for full-sequence graphs). */
  kv: KvCache;
}

export function readSignature(g: Graph): VarSignature {
  const inputs = g.inputs.filter((v) => !v.tensor);
  const role = (r: InputRole) => inputs.find((v) => inputRole(v.name) === r) ?? null;
  const logits = g.outputs.find((o) => /logit/i.test(o.name)) ?? g.outputs[0];
  if (!logits) throw new MoefyError('the model has no outputs');
  return {
    label: role('label'),
    cfg: role('cfg'),
    tokens: inputs.find((v) => inputRole(v.name) === 'tokens' && (v.shape()?.length ?? 0) === 3) ?? null,
    logits,
    kv: { inputs: g.inputs.filter((v) => isKvInputName(v.name)), outputs: g.outputs.filter((v) => isKvOutputName(v.name)) },
  };
}

/** Tokens of a full-sequence graph from its token input [B, L − 1, Cvae] (VAR feeds every token but the first), else null. */
export function fullSequenceTokens(v: Value): number | null {
  const s = v.shape();
  return s && s.length === 3 && typeof s[1] === 'number' && /first_l/.test(v.name) ? s[1] + 1 : null;
}
