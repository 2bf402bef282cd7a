// Stage relufy → Activations: the experts' activation per FFN (ReLU, as DMoE-VAR, which expects a model fine-tuned
// with ReLU; or with --activation keep the model's own), and how much the change moves each FFN's output on the
// captured inputs. relufied() is the model as the converted model's stream computes it (its FFNs with ReLU), which
// capture runs.
import * as ort from 'onnxruntime-node';
import { emitActivationIR } from '../analysis/activation-ir';
import { fc1Weights, fc2Weights } from '../analysis/ffn-weights';
import type { FfnSite } from '../analysis/var-structure';
import type { ExpertActivationOption } from '../convert-options';
import { Graph } from '../ir/graph';
import { Model, ModelCopy } from '../ir/model';
import { encodeModel } from '../onnx/io';
import { DataType } from '../onnx/schema';
import { Tensor } from '../onnx/tensor';
import { ActivationKind } from '../op';
import { stage } from './stage';
import { activationChangeWarning } from './warnings';
import type { LayerCapture } from './types';

/** The experts' activation for an FFN whose own is `original`. */
export function expertActivation(original: ActivationKind, option: ExpertActivationOption): ActivationKind {
  return option === 'keep' ? original : 'relu';
}

export const relufyStage = stage({
  name: 'relufy',
  needs: ['sites', 'sample', 'recipe'],
  gives: 'activations',
  steps: () => 1,
  run: async ({ sites, sample, recipe }) => {
    const original = sites.map((s) => s.activation.kind);
    const experts = original.map((a) => expertActivation(a, recipe.activation));
    const change: (number | null)[] = [];
    for (const [k, site] of sites.entries()) change.push(original[k] === experts[k] ? null : await outputChange(site, sample.layers[k], experts[k]));
    return { original, experts, change };
  },
  summary: (a, { recipe }) => {
    if (recipe.activation === 'keep') return `kept the model's activation (${[...new Set(a.original)].join(', ')}) in the experts`;
    const changed = a.original.filter((x) => x !== 'relu').length;
    return changed ? `replaced ${changed} GELU activation(s) by ReLU` : 'activations already ReLU';
  },
  notes: (a) => (a.change.some((c) => c !== null) ? [`relufy: FFN output change on calibration data per layer: ${a.change.map((c) => (c === null ? '-' : (c * 100).toFixed(1) + '%')).join(', ')}`] : []),
  // Repaired experts are fitted to the model's own FFN: the activation change is what the repair undoes.
  warnings: (a, { recipe }) => {
    const w = recipe.repair ? null : activationChangeWarning(a.change, a.original, a.experts);
    return w ? [w] : [];
  },
  layerReport: (a, k) => ({ relufyRelChange: a.change[k], activation: a.experts[k], originalActivation: a.original[k] }),
});

/** A copy of the model whose FFNs compute with ReLU (with the map from the model's values and nodes to the copy's). */
export function relufied(model: Model, sites: FfnSite[]): ModelCopy {
  const c = model.clone();
  const g = c.model.graph;
  for (const s of sites) {
    if (s.activation.kind === 'relu') continue;
    const fc2 = c.nodeOf(s.fc2.node);
    const relu = g.addNode({ op: 'Relu', inputs: [c.valueOf(s.fc1.output)], outputs: [`${s.hidden.name}_relu`], name: `${s.fc2.node.name || 'ffn'}_relufy/Relu`, before: fc2 });
    fc2.setInput(0, relu.output(0));
  }
  g.removeDeadNodes();
  return c;
}

/** Relative change ‖FFN_experts(x) − FFN(x)‖ / ‖FFN(x)‖ of one layer on its captured inputs, computed in ORT. */
async function outputChange(site: FfnSite, c: LayerCapture, experts: ActivationKind): Promise<number> {
  const { W1, B1 } = fc1Weights(site);
  const { W2 } = fc2Weights(site);
  const g = new Graph('relufy_check');
  const x = g.getOrCreate('X');
  x.setTensorType(DataType.FLOAT, [null, c.D]);
  g.inputs.push(x);
  const D = c.D, H = site.H;
  const w1 = g.addInitializer('W1', Tensor.fromFloat32(W1, [D, H]));
  const b1 = g.addInitializer('B1', Tensor.fromFloat32(B1, [H]));
  const w2 = g.addInitializer('W2', Tensor.fromFloat32(W2, [H, D]));
  const pre = g.addNode({ op: 'Add', inputs: [g.addNode({ op: 'MatMul', inputs: [x, w1] }).output(0), b1] }).output(0);
  const model = new Model({ ir_version: 8, opset_import: [{ version: 17 }], graph: {} } as never, g);
  const ys = [site.activation.kind, experts].map((kind, j) => g.addNode({ op: 'MatMul', inputs: [emitActivationIR(g, kind, pre, 17, `a${j}`), w2], outputs: [`Y${j}`] }).output(0).name);
  const diff = g.addNode({ op: 'Sub', inputs: [g.value(ys[1]), g.value(ys[0])] }).output(0);
  const num = g.addNode({ op: 'ReduceSumSquare', inputs: [diff], attrs: [{ name: 'keepdims', type: 2, i: 0 }], outputs: ['num'] }).output(0);
  const den = g.addNode({ op: 'ReduceSumSquare', inputs: [g.value(ys[0])], attrs: [{ name: 'keepdims', type: 2, i: 0 }], outputs: ['den'] }).output(0);
  g.outputs.push(num, den);
  const sess = await ort.InferenceSession.create(encodeModel(model));
  const X = c.X.data;
  let sn = 0, sd = 0;
  const chunk = 4096;
  for (let t = 0; t < c.N; t += chunk) {
    const n = Math.min(chunk, c.N - t);
    const r = await sess.run({ X: new ort.Tensor('float32', X.subarray(t * D, (t + n) * D), [n, D]) });
    sn += Number(r.num.data[0]);
    sd += Number(r.den.data[0]);
  }
  await sess.release();
  return sd > 0 ? Math.sqrt(sn / sd) : 0;
}
