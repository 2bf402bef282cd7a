// The FFN patterns PyTorch and other exporters write, as matcher patterns. Each activation pattern is rooted at the
// node that produces the hidden activation and captures `pre`, the fc1 output it is applied to.
import { Node } from '../ir/graph';
import { OpPattern, P } from '../ir/match';
import { ActivationKind, GELU_TANH } from '../op';

export type { ActivationKind };

export interface ActivationPattern {
  name: string;
  kind: ActivationKind;
  pattern: OpPattern;
}

const SQRT_2_OVER_PI = GELU_TANH.sqrt2OverPi;
const GELU_CUBIC = GELU_TANH.cubic;

// tanh(√(2/π)·(x + 0.044715·x³)): x³ as Mul(x, Mul(x, x)) (torch < 2.x), or Pow(x, 3).
const cube = () => P.op('Mul', [P.same('pre'), P.op('Mul', [P.same('pre'), P.same('pre')])]);
const cubePow = () => P.op('Pow', [P.same('pre'), P.scalar(3)]);
const tanhOf = (c: OpPattern) =>
  P.op('Tanh', [P.op('Mul', [P.scalar(SQRT_2_OVER_PI), P.op('Add', [P.same('pre'), P.op('Mul', [P.scalar(GELU_CUBIC), c])])])]);
const onePlus = (inner: OpPattern) => P.op('Add', [P.scalar(1), inner]);

const approxIs = (want: string) => (n: Node) => {
  const got = n.attrString('approximate', 'none');
  return got === want ? null : `approximate is '${got}', not '${want}'`;
};

export const ACTIVATION_PATTERNS: ActivationPattern[] = [
  { name: 'Relu', kind: 'relu', pattern: P.op('Relu', [P.any('pre')]) },
  { name: 'Gelu(approximate=tanh)', kind: 'gelu_tanh', pattern: P.op('Gelu', [P.any('pre')], { where: approxIs('tanh') }) },
  { name: 'Gelu', kind: 'gelu', pattern: P.op('Gelu', [P.any('pre')], { where: approxIs('none') }) },
  // PyTorch's decomposition below opset 20: 0.5 · (x · (1 + tanh(...))).
  { name: 'tanh-GELU chain', kind: 'gelu_tanh', pattern: P.op('Mul', [P.scalar(0.5), P.op('Mul', [P.any('pre'), onePlus(tanhOf(cube()))])]) },
  { name: 'tanh-GELU chain (Pow)', kind: 'gelu_tanh', pattern: P.op('Mul', [P.scalar(0.5), P.op('Mul', [P.any('pre'), onePlus(tanhOf(cubePow()))])]) },
  // x · (0.5 · (1 + tanh(...))): the dynamo exporter of torch 2.14 (onnxscript 0.7), Pow for the cube.
  { name: 'tanh-GELU chain (x·0.5(1+tanh), Pow)', kind: 'gelu_tanh', pattern: P.op('Mul', [P.any('pre'), P.op('Mul', [P.scalar(0.5), onePlus(tanhOf(cubePow()))])]) },
  // (0.5 · x) · (1 + tanh(...)), as other exporters and hand-written graphs associate it.
  { name: 'tanh-GELU chain (0.5x first)', kind: 'gelu_tanh', pattern: P.op('Mul', [P.op('Mul', [P.scalar(0.5), P.any('pre')]), onePlus(tanhOf(cube()))]) },
  // erf GELU: (x · (erf(x / √2) + 1)) · 0.5, or with x · (1/√2).
  { name: 'erf-GELU chain', kind: 'gelu', pattern: P.op('Mul', [P.scalar(0.5), P.op('Mul', [P.any('pre'), onePlus(P.op('Erf', [P.op('Div', [P.same('pre'), P.scalar(Math.SQRT2)], { commute: false })]))])]) },
  { name: 'erf-GELU chain (Mul 1/√2)', kind: 'gelu', pattern: P.op('Mul', [P.scalar(0.5), P.op('Mul', [P.any('pre'), onePlus(P.op('Erf', [P.op('Mul', [P.same('pre'), P.scalar(Math.SQRT1_2)])]))])]) },
  { name: 'erf-GELU chain (0.5x first)', kind: 'gelu', pattern: P.op('Mul', [P.op('Mul', [P.scalar(0.5), P.any('pre')]), onePlus(P.op('Erf', [P.op('Div', [P.same('pre'), P.scalar(Math.SQRT2)], { commute: false })]))]) },
];
