// What differs between exporters beyond the FFN's op pattern: where a linear's weight is stored (the dynamo
// exporter of torch 2.5-2.8 transposes the [out, in] parameter at run time; from torch 2.9 the optimizer folds that
// Transpose into a new initializer), which float type the model computes in, and the name-scope metadata that
// replaces the TorchScript exporter's '/blocks.N/...' node names.
import { MoefyError } from '../errors';
import { Node, Value } from '../ir/graph';
import { DataType } from '../onnx/schema';

/** A linear's weight: an initializer, or Transpose(perm=[1,0]) of one (then stored [out, in]). */
export interface StoredWeight {
  weight: Value;
  /** The run-time Transpose (dynamo exporter, torch 2.5-2.8): the initializer is PyTorch's [out, in]. */
  transpose?: Node;
}

export function storedWeight(v: Value | null | undefined): StoredWeight | null {
  if (!v) return null;
  if (v.tensor) return v.tensor.dims.length === 2 ? { weight: v } : null;
  const t = v.producer;
  if (!t || t.opType !== 'Transpose' || t.domain !== '') return null;
  const w = t.inputs[0];
  if (!w?.tensor || w.tensor.dims.length !== 2) return null;
  const perm = t.attrInts('perm');
  if (perm && !(perm[0] === 1 && perm[1] === 0)) return null;
  return { weight: w, transpose: t };
}

/** The float type an FFN computes in (its weights'). */
export type FloatPrecision = 'float32' | 'float16' | 'bfloat16';

export const PRECISION_DTYPE: Record<FloatPrecision, number> = { float32: DataType.FLOAT, float16: DataType.FLOAT16, bfloat16: DataType.BFLOAT16 };

export function precisionOf(weight: Value, where: string): FloatPrecision {
  const dt = weight.tensor?.dataType;
  if (dt === DataType.FLOAT) return 'float32';
  if (dt === DataType.FLOAT16) return 'float16';
  if (dt === DataType.BFLOAT16) return 'bfloat16';
  throw new MoefyError(`${where}: weight '${weight.name}' has ONNX data type ${dt}; moefy reads float32, float16 and bfloat16 models`);
}

/**
 * Conversion needs ONNX Runtime to run the model (calibration capture) and the emitted op: bfloat16 is refused, as
 * ONNX Runtime's CPU provider has no bfloat16 kernels for MatMul, Add or the activations (checked with
 * onnxruntime-node 1.30: "Could not find an implementation for MatMul(13)").
 */
export function checkConvertible(precisions: FloatPrecision[]): void {
  if (precisions.includes('bfloat16'))
    throw new MoefyError(`bfloat16 models cannot be converted: ONNX Runtime's CPU provider has no bfloat16 MatMul/Add kernels, so the model cannot be run for calibration; export it in float16 or float32`);
}

/** The module path of a dynamo export's node from its `pkg.torch.onnx.name_scopes` metadata (null: none). */
export function nameScopes(n: Node): string[] | null {
  const e = n.proto.metadata_props?.find((p) => p.key === 'pkg.torch.onnx.name_scopes');
  if (!e?.value) return null;
  try {
    const v = JSON.parse(e.value.replace(/'/g, '"'));
    return Array.isArray(v) ? v.map(String) : null;
  } catch {
    return null;
  }
}

/**
 * The module path of a node: from the dynamo exporter's name scopes (the last scope before the FX node name, e.g.
 * 'var.blocks.0.ffn.fc1'), else from a TorchScript node name ('/blocks.0/ffn/fc1/MatMul' → 'blocks.0.ffn.fc1').
 */
export function modulePath(n: Node): string | null {
  const sc = nameScopes(n);
  if (sc && sc.length >= 2) return sc[sc.length - 2] || null;
  const parts = n.name.split('/').filter(Boolean);
  return n.name.startsWith('/') && parts.length >= 2 ? parts.slice(0, -1).join('.') : null;
}
