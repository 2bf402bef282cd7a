// Pass: replace each FFN by the router subgraph (ffn_in → norms) and an ai.moefy::DynamicMoE node with the
// permuted expert weights; one `moe_threshold` graph input (one value per scale, calibrated defaults in its
// initializer) feeds every node, so a deployer can trade quality for compute per run without re-exporting.
import { MoefyError } from '../errors';
import { attr, Value } from '../ir/graph';
import { DataType } from '../onnx/schema';
import { Tensor } from '../onnx/tensor';
import { emitActivationIR } from './activation-ir';
import { dynamicMoeFunction, MOE_DOMAIN, MOE_OP, MOE_OPSET, THRESHOLD_INPUT } from '../op';
import { ConversionState, PassResult } from './types';

export function insert(st: ConversionState): PassResult {
  const m = st.model;
  const g = m.graph;
  const opset = m.opset('') ?? 0;
  const acts = new Set(st.expertActivation);
  if (acts.size > 1) throw new MoefyError(`the FFNs use different activations (${[...acts].join(', ')}); one DynamicMoE function body cannot serve them`);
  const activation = st.expertActivation[0];
  const numScales = st.structure.layout.patchNums.length;

  const thr = g.addInitializer(THRESHOLD_INPUT, Tensor.fromFloat32(Float32Array.from(st.thresholds), [numScales]));
  thr.setTensorType(DataType.FLOAT, [numScales]);
  g.inputs.push(thr);

  st.sites.forEach((s, k) => {
    const E = st.options.experts;
    const w = st.weights[k];
    const r = st.routers[k];
    const prefix = `/moefy/block${s.block}`;
    // Gemm-style FFNs run on [B·L, D] rows between two Reshapes: the op wants [B, L, D].
    let X: Value = s.ffnIn;
    let Yold: Value = s.output;
    if (s.fc1.node.opType === 'Gemm') {
      const rs = s.ffnIn.producer;
      const back = s.output.useCount === 1 ? s.output.uses()[0].node : null;
      if (!rs || rs.opType !== 'Reshape' || !back || back.opType !== 'Reshape')
        throw new MoefyError(`block ${s.block}: Gemm FFN ${s.fc1.node.describe()} is not between Reshapes to and from [B, L, D]`);
      X = rs.inputs[0]!;
      Yold = back.output(0);
    }
    const D = s.D, H = s.H;
    const rw1 = g.addInitializer(`${prefix}/router.W1`, Tensor.fromFloat32(r.W1, [D, r.width]));
    const rw2 = g.addInitializer(`${prefix}/router.W2`, Tensor.fromFloat32(r.W2, [r.width, E]));
    const anchor = Yold.uses()[0]?.node;
    const h = g.addNode({ op: 'MatMul', inputs: [X, rw1], outputs: [`${prefix}/router/MatMul`], name: `${prefix}/router/MatMul`, before: anchor });
    const a = emitActivationIR(g, 'gelu', h.output(0), opset, `${prefix}/router/gelu`);
    const p = g.addNode({ op: 'MatMul', inputs: [a, rw2], outputs: [`${prefix}/router/MatMul_1`], name: `${prefix}/router/MatMul_1` });
    let norms = g.addNode({ op: 'Abs', inputs: [p.output(0)], outputs: [r.squared ? `${prefix}/router/Abs` : `${prefix}/norms`], name: `${prefix}/router/Abs` }).output(0);
    if (r.squared) norms = g.addNode({ op: 'Mul', inputs: [norms, norms], outputs: [`${prefix}/norms`], name: `${prefix}/router/Square` }).output(0);
    norms.setTensorType(DataType.FLOAT, [null, null, E]);
    g.valueInfo.push(norms);

    const W1 = g.addInitializer(`${prefix}/moe.W1`, Tensor.fromFloat32(w.W1, [D, H]));
    const B1 = g.addInitializer(`${prefix}/moe.B1`, Tensor.fromFloat32(w.B1, [H]));
    const W2 = g.addInitializer(`${prefix}/moe.W2`, Tensor.fromFloat32(w.W2, [H, D]));
    const B2 = g.addInitializer(`${prefix}/moe.B2`, Tensor.fromFloat32(w.B2 ?? new Float32Array(D), [D]));
    const moe = g.addNode({
      op: MOE_OP, domain: MOE_DOMAIN, name: `${prefix}/DynamicMoE`,
      inputs: [X, norms, W1, B1, W2, B2, null, thr],
      // `active` is always wired: the function body computes it, and the runtime's per-scale summary reads it.
      outputs: [`${prefix}/moe_out`, `${prefix}/active`],
      attrs: [attr.int('num_experts', E), attr.string('activation', activation), attr.ints('patch_nums', st.structure.layout.patchNums), attr.floats('threshold', st.thresholds)],
    });
    const Y = moe.output(0);
    Y.setTensorType(DataType.FLOAT, [null, null, D]);
    g.valueInfo.push(Y);
    g.replaceAllUses(Yold, Y, 'move');
  });
  g.removeDeadNodes();
  g.toposort();
  m.setOpset(MOE_DOMAIN, MOE_OPSET);
  m.addFunction(dynamicMoeFunction(activation, opset));
  // Model-local functions need IR 8.
  if (m.irVersion < 8) m.proto.ir_version = 8;
  return { name: 'insert', summary: `replaced ${st.sites.length} FFNs by routers + ${MOE_DOMAIN}::${MOE_OP} (${st.options.experts} experts of ${st.sites[0].H / st.options.experts})` };
}
