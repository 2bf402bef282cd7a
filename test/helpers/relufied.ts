// The reference for threshold-0 exactness: the dense model with its GELUs swapped for ReLU (what the converted
// model's stream computes without repair), alone.
import { analyseVar } from '../../src/analysis/var-structure';
import { encodeModel, loadModel } from '../../src/onnx/io';
import { relufied as relufiedCopy } from '../../src/stages/relufy';

export function relufied(file: string, patchNums?: number[]): Uint8Array {
  const model = loadModel(file);
  const structure = analyseVar(model, { patchNums });
  return encodeModel(relufiedCopy(model, structure.blocks.map((b) => b.ffn!)).model);
}
