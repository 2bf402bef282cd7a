// One router training step as a graph of its own (the training runs K steps in an ONNX Loop, src/calib/router-train.ts):
// for the gradient check and for checking the Loop against K single steps.
import { GraphBuilder } from '../../src/calib/ort-graph';
import { stepOps } from '../../src/calib/router-train';

/** The training-step graph (gradOutputs: also output the unclipped gradients gW1, gW2, for the gradient check). */
export function buildTrainStep(D: number, E: number, width: number, betas: [number, number], eps = 1e-8, gradOutputs = false): GraphBuilder {
  const b = new GraphBuilder('router_train_step');
  const r = stepOps(b, {
    X: b.input('X', ['B', D]), T: b.input('T', ['B', E]),
    W1: b.input('W1', [D, width]), W2: b.input('W2', [width, E]),
    M1: b.input('M1', [D, width]), V1: b.input('V1', [D, width]), M2: b.input('M2', [width, E]), V2: b.input('V2', [width, E]),
    c1: b.input('c1', []), c2: b.input('c2', []), gscale: b.input('gscale', []), clip: b.input('clip', []),
  }, betas, eps);
  b.output(r.loss, 'loss');
  if (gradOutputs) {
    b.output(r.gW1, 'gW1');
    b.output(r.gW2, 'gW2');
  }
  for (const [k, tag] of [['W', '1'], ['M', '1'], ['V', '1'], ['W', '2'], ['M', '2'], ['V', '2']] as const) b.output(r[`${k}${tag}`], `${k}${tag}_out`);
  return b;
}

