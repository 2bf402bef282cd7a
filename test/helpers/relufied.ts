// The reference for threshold-0 exactness: the dense model with its GELUs swapped for ReLU by the relufy pass alone.
import { analyseVar } from '../../src/analysis/var-structure';
import { encodeModel, loadModel } from '../../src/onnx/io';
import { relufy } from '../../src/passes/relufy';
import { ConversionState } from '../../src/passes/types';

export function relufied(file: string, patchNums?: number[]): Uint8Array {
  const model = loadModel(file);
  const structure = analyseVar(model, { patchNums });
  relufy({ model, structure, options: { activation: 'relu' }, sites: structure.blocks.map((b) => b.ffn!), layers: [] } as unknown as ConversionState);
  return encodeModel(model);
}
