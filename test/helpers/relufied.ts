// The reference for threshold-0 exactness: the dense model with its GELUs swapped for ReLU by the relufy pass alone.
import { analyseVar } from '../../src/analysis/var-structure';
import { encodeModel, loadModel } from '../../src/onnx/io';
import { relufy } from '../../src/passes/relufy';

export function relufied(file: string, patchNums?: number[]): Uint8Array {
  const model = loadModel(file);
  const structure = analyseVar(model, { patchNums });
  relufy(model, structure.blocks.map((b) => b.ffn!), 'relu');
  return encodeModel(model);
}
