// Pass: each FFN's GELU becomes ReLU (DMoE-VAR expects a model fine-tuned with ReLU), or with --activation keep the
// model's own activation stays and the experts use it. The change each layer's FFN output suffers on the
// calibration data is measured later (relufyReport), once the inputs have been captured.
import * as ort from 'onnxruntime-node';
import { fc1Weights, fc2Weights } from '../analysis/ffn-weights';
import type { FfnSite } from '../analysis/var-structure';
import type { ExpertActivationOption } from '../convert-options';
import { Graph } from '../ir/graph';
import { Model } from '../ir/model';
import { encodeModel } from '../onnx/io';
import { DataType } from '../onnx/schema';
import { Tensor } from '../onnx/tensor';
import { ActivationKind } from '../op';
import type { FfnInputSample } from '../stages/types';
import { emitActivationIR } from '../analysis/activation-ir';

/** The FFNs' activations before relufy, and the ones the experts use. */
export interface Activations {
  original: ActivationKind[];
  experts: ActivationKind[];
  summary: string;
}

/** Rewrites each non-ReLU FFN activation of `sites` into ReLU (unless 'keep'); the sites are updated to match. */
export function relufy(model: Model, sites: FfnSite[], activation: ExpertActivationOption): Activations {
  const original = sites.map((s) => s.activation.kind);
  if (activation === 'keep') {
    return { original, experts: [...original], summary: `kept the model's activation (${[...new Set(original)].join(', ')}) in the experts` };
  }
  const g = model.graph;
  let changed = 0;
  for (const s of sites) {
    if (s.activation.kind === 'relu') continue;
    const pre = s.fc1.output;
    const relu = g.addNode({ op: 'Relu', inputs: [pre], outputs: [`${s.hidden.name}_relu`], name: `${s.fc2.node.name || 'ffn'}_relufy/Relu`, before: s.fc2.node });
    s.fc2.node.setInput(0, relu.output(0));
    s.hidden = relu.output(0);
    s.activation = { kind: 'relu', pattern: 'Relu', nodes: [relu] };
    changed++;
  }
  g.removeDeadNodes();
  return { original, experts: sites.map(() => 'relu' as ActivationKind), summary: changed ? `replaced ${changed} GELU activation(s) by ReLU` : 'activations already ReLU' };
}

/** Relative change ‖FFN_relu(x) − FFN_orig(x)‖ / ‖FFN_orig(x)‖ per layer on the captured inputs, computed in ORT. */
export async function relufyReport(sites: FfnSite[], acts: Activations, sample: FfnInputSample): Promise<(number | null)[]> {
  const out: (number | null)[] = [];
  for (let k = 0; k < sites.length; k++) {
    const orig = acts.original[k];
    if (orig === acts.experts[k]) {
      out.push(null);
      continue;
    }
    const site = sites[k];
    const c = sample.layers[k];
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
    const ys = [orig, acts.experts[k]].map((kind, j) => g.addNode({ op: 'MatMul', inputs: [emitActivationIR(g, kind, pre, 17, `a${j}`), w2], outputs: [`Y${j}`] }).output(0).name);
    const diff = g.addNode({ op: 'Sub', inputs: [g.value(ys[1]), g.value(ys[0])] }).output(0);
    const num = g.addNode({ op: 'ReduceSumSquare', inputs: [diff], attrs: [{ name: 'keepdims', type: 2, i: 0 }], outputs: ['num'] }).output(0);
    const den = g.addNode({ op: 'ReduceSumSquare', inputs: [g.value(ys[0])], attrs: [{ name: 'keepdims', type: 2, i: 0 }], outputs: ['den'] }).output(0);
    g.outputs.push(num, den);
    const sess = await ort.InferenceSession.create(encodeModel(model));
    let sn = 0, sd = 0;
    const chunk = 4096;
    for (let t = 0; t < c.N; t += chunk) {
      const n = Math.min(chunk, c.N - t);
      const r = await sess.run({ X: new ort.Tensor('float32', c.X.subarray(t * D, (t + n) * D), [n, D]) });
      sn += Number(r.num.data[0]);
      sd += Number(r.den.data[0]);
    }
    await sess.release();
    out.push(sd > 0 ? Math.sqrt(sn / sd) : 0);
  }
  return out;
}
