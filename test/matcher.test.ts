// Issue 2, item 4: the pattern matcher. Commuted Add/Mul operands match; a failing pattern reports the closest partial
// match with the node and the predicate that failed; analyseVar turns a corrupted GELU chain into a MoefyError
// that names the node.
import { test } from 'node:test';
import assert from 'node:assert';
import { attr, Graph, Node, Value } from '../src/ir/graph';
import { describeFailure, match, matchAny, P } from '../src/ir/match';
import { Tensor } from '../src/onnx/tensor';
import { AttributeType, DataType, TensorProto } from '../src/onnx/schema';
import { ACTIVATION_PATTERNS } from '../src/analysis/patterns';
import { analyseVar } from '../src/analysis/var-structure';
import { loadModel } from '../src/onnx/io';
import { MoefyError } from '../src/errors';
import { fixture } from './helpers/fixtures';

function newGraph(): Graph {
  return new Graph('t');
}

/** A float scalar as a Constant node, the way PyTorch exports them. */
function constant(g: Graph, name: string, value: number): Value {
  const t: TensorProto = { dims: [], data_type: DataType.FLOAT, raw_data: new Uint8Array(Float32Array.of(value).buffer) };
  return g.addNode({ op: 'Constant', inputs: [], outputs: [`${name}_output_0`], name, attrs: [{ name: 'value', type: AttributeType.TENSOR, t }] }).output(0);
}

function input(g: Graph, name: string): Value {
  const v = g.getOrCreate(name);
  g.inputs.push(v);
  return v;
}

function op(g: Graph, opType: string, name: string, inputs: Value[]): Value {
  return g.addNode({ op: opType, inputs, outputs: [`${name}_output_0`], name }).output(0);
}

test('matcher: Add and Mul match with their operands in either order', () => {
  const g = newGraph();
  const x = input(g, 'x');
  const b = g.addInitializer('bias', Tensor.fromFloat32(Float32Array.of(1, 2, 3), [3]));
  const add1 = op(g, 'Add', 'add_xb', [x, b]).producer!;
  const add2 = op(g, 'Add', 'add_bx', [b, x]).producer!;
  const pat = P.op('Add', [P.any('x'), P.init('b')], { capture: 'add' });
  for (const n of [add1, add2]) {
    const r = match(n, pat);
    assert.ok(r.ok, `${n.name}: ${r.ok ? '' : describeFailure(r.failure)}`);
    assert.strictEqual(r.values.x, x);
    assert.strictEqual(r.values.b, b);
    assert.strictEqual(r.nodes.add, n);
  }
  const half = constant(g, 'half', 0.5);
  const mul1 = op(g, 'Mul', 'mul_xh', [x, half]).producer!;
  const mul2 = op(g, 'Mul', 'mul_hx', [half, x]).producer!;
  for (const n of [mul1, mul2]) {
    const r = match(n, P.op('Mul', [P.scalar(0.5), P.any('x')]));
    assert.ok(r.ok, n.name);
    assert.strictEqual(r.values.x, x);
  }
  // Sub does not commute: Sub(0.5, x) is not Sub(x, 0.5).
  const sub = op(g, 'Sub', 'sub_hx', [half, x]).producer!;
  const rs = match(sub, P.op('Sub', [P.any('x'), P.scalar(0.5)]));
  assert.ok(!rs.ok);
  assert.strictEqual(rs.failure.node, sub);
  assert.match(rs.failure.predicate, /input 1 should be the constant 0\.5/);
  // Nested: Mul(Add(b, x), 0.5) against Mul(0.5, Add(x, b)): both levels commuted.
  const nested = op(g, 'Mul', 'nested', [op(g, 'Add', 'inner', [b, x]), half]).producer!;
  const rn = match(nested, P.op('Mul', [P.scalar(0.5), P.op('Add', [P.any('x'), P.init('b')], { capture: 'inner' })]));
  assert.ok(rn.ok);
  assert.strictEqual(rn.nodes.inner.name, 'inner');
  assert.deepStrictEqual(rn.matched.map((n) => n.name), ['nested', 'inner']);
});

interface GeluChain {
  g: Graph;
  pre: Value;
  root: Node;
  nodes: Record<string, Node>;
}

/**
 * PyTorch's tanh-GELU decomposition (research doc §5.1), node names as in the export:
 * 0.5 · (x · (1 + tanh(0.7978845834732056 · (x + 0.044715 · x·(x·x))))). `swap` writes every commutative op with its
 * operands the other way round; `consts` overrides a constant.
 */
function geluChain(opts: { swap?: boolean; consts?: Partial<Record<'c3' | 'k' | 'one' | 'half', number>> } = {}): GeluChain {
  const g = newGraph();
  const c = { c3: 0.044715, k: 0.7978845834732056, one: 1, half: 0.5, ...opts.consts };
  const sw = (a: Value, b: Value) => (opts.swap ? [b, a] : [a, b]);
  const x = input(g, 'x');
  const pre = op(g, 'Relu', '/ffn/fc1/Add', [x]); // stands in for fc1's output
  const a = '/ffn/act/';
  const sq = op(g, 'Mul', `${a}Mul`, [pre, pre]);
  const cube = op(g, 'Mul', `${a}Mul_1`, sw(pre, sq));
  const m2 = op(g, 'Mul', `${a}Mul_2`, sw(constant(g, `${a}Constant`, c.c3), cube));
  const inner = op(g, 'Add', `${a}Add`, sw(pre, m2));
  const m3 = op(g, 'Mul', `${a}Mul_3`, sw(constant(g, `${a}Constant_1`, c.k), inner));
  const th = op(g, 'Tanh', `${a}Tanh`, [m3]);
  const a1 = op(g, 'Add', `${a}Add_1`, sw(constant(g, `${a}Constant_2`, c.one), th));
  const m4 = op(g, 'Mul', `${a}Mul_4`, sw(pre, a1));
  const m5 = op(g, 'Mul', `${a}Mul_5`, sw(constant(g, `${a}Constant_3`, c.half), m4));
  const nodes = Object.fromEntries(g.nodes.map((n) => [n.name, n]));
  return { g, pre, root: m5.producer!, nodes };
}

const geluPatterns = ACTIVATION_PATTERNS.map((a) => ({ name: a.name, pattern: a.pattern }));

test('matcher: the tanh-GELU chain matches as exported and with every operand commuted', () => {
  for (const swap of [false, true]) {
    const c = geluChain({ swap });
    const r = matchAny(c.root, geluPatterns);
    assert.ok(r.ok, `swap=${swap}: ${r.ok ? '' : describeFailure(r.failure)}`);
    assert.strictEqual(r.name, 'tanh-GELU chain');
    assert.strictEqual(r.values.pre, c.pre);
    // The 9 compute nodes of the chain, no Constant and not fc1.
    assert.deepStrictEqual(r.matched.map((n) => n.name).sort(), Object.keys(c.nodes).filter((k) => k.startsWith('/ffn/act/Mul') || /Add|Tanh/.test(k)).filter((k) => k.startsWith('/ffn/act/') && !k.includes('Constant')).sort());
    assert.strictEqual(r.matched.length, 9);
  }
});

test('matcher: a wrong constant reports the closest partial match with its node and the expected constant', () => {
  const cases: { key: 'c3' | 'k' | 'one' | 'half'; value: number; node: string; expect: RegExp }[] = [
    { key: 'half', value: 0.6, node: '/ffn/act/Mul_5', expect: /should be the constant 0\.5, found 0\.6/ },
    { key: 'c3', value: 0.05, node: '/ffn/act/Mul_2', expect: /should be the constant 0\.044715, found 0\.05/ },
    { key: 'k', value: 0.7, node: '/ffn/act/Mul_3', expect: /should be the constant 0\.79788\d*, found 0\.(7|69999)/ },
    { key: 'one', value: 2, node: '/ffn/act/Add_1', expect: /should be the constant 1, found 2/ },
  ];
  for (const swap of [false, true]) {
    for (const k of cases) {
      const c = geluChain({ swap, consts: { [k.key]: k.value } });
      const r = matchAny(c.root, geluPatterns);
      assert.ok(!r.ok, `${k.key}=${k.value} must not match`);
      const where = `${k.key}=${k.value} swap=${swap}: got ${describeFailure(r.failure)} (pattern '${r.name}')`;
      assert.strictEqual(r.failure.node?.name, k.node, where);
      assert.match(r.failure.predicate, k.expect, where);
      assert.strictEqual(r.name, 'tanh-GELU chain', where);
      assert.match(describeFailure(r.failure), new RegExp(`at node '${k.node.replace(/[/.]/g, '\\$&')}' \\(Mul|Add\\)`));
    }
  }
});

test('matcher: structural failures name the node (wrong op, extra consumer)', () => {
  // Tanh replaced by Sigmoid.
  const c = geluChain();
  const tanh = c.nodes['/ffn/act/Tanh'];
  tanh.opType = 'Sigmoid';
  const r = matchAny(c.root, geluPatterns);
  assert.ok(!r.ok);
  assert.strictEqual(r.failure.node?.name, '/ffn/act/Add_1');
  assert.match(r.failure.predicate, /should be computed by Tanh, found '\/ffn\/act\/Tanh' \(Sigmoid\)/);
  // An intermediate value with a second consumer: the chain is not private.
  const d = geluChain();
  d.g.addNode({ op: 'Identity', inputs: [d.nodes['/ffn/act/Tanh'].output(0)], outputs: ['leak'], name: 'leak' });
  const r2 = match(d.root, ACTIVATION_PATTERNS.find((a) => a.name === 'tanh-GELU chain')!.pattern);
  assert.ok(!r2.ok);
  assert.strictEqual(r2.failure.node?.name, '/ffn/act/Tanh');
  assert.match(r2.failure.predicate, /also used elsewhere \(2 uses\)/);
});

test('matcher: where-predicates on attributes are reported (Gelu approximate)', () => {
  const g = newGraph();
  const x = input(g, 'x');
  const n = g.addNode({ op: 'Gelu', inputs: [x], outputs: ['y'], name: 'gelu', attrs: [attr.string('approximate', 'tanh')] });
  const r = matchAny(n, geluPatterns);
  assert.ok(r.ok);
  assert.strictEqual(r.name, 'Gelu(approximate=tanh)');
  const r2 = match(n, ACTIVATION_PATTERNS.find((a) => a.name === 'Gelu')!.pattern);
  assert.ok(!r2.ok);
  assert.strictEqual(r2.failure.node, n);
  assert.match(r2.failure.predicate, /approximate is 'tanh', not 'none'/);
});

test('analyseVar: a fixture whose GELU chain has a corrupted Constant throws a MoefyError naming the node', () => {
  const cases = [
    { node: '/blocks.1/ffn/act/Mul_5', value: 0.6, expect: /constant 0\.5, found 0\.6/ },
    { node: '/blocks.0/ffn/act/Mul_2', value: 0.05, expect: /constant 0\.044715, found 0\.05/ },
    { node: '/blocks.1/ffn/act/Add_1', value: 2, expect: /constant 1, found 2/ },
  ];
  for (const c of cases) {
    const m = loadModel(fixture('var_tiny_full.onnx'));
    const n = m.graph.nodes.find((x) => x.name === c.node);
    assert.ok(n, c.node);
    const k = n.inputs.findIndex((v) => v?.producer?.opType === 'Constant');
    assert.ok(k >= 0, `${c.node} has a Constant input`);
    const constNode = n.inputs[k]!.producer!;
    assert.strictEqual(n.inputs[k]!.scalar() !== undefined, true);
    constNode.setAttr({ name: 'value', type: AttributeType.TENSOR, t: { dims: [], data_type: DataType.FLOAT, raw_data: new Uint8Array(Float32Array.of(c.value).buffer) } });
    assert.throws(
      () => analyseVar(m),
      (e: unknown) => {
        assert.ok(e instanceof MoefyError, `not a MoefyError: ${e}`);
        assert.ok(e.message.includes(`'${c.node}'`), `message does not name ${c.node}: ${e.message}`);
        assert.match(e.message, c.expect);
        assert.match(e.message, /FFN pattern does not match/);
        return true;
      },
    );
  }
  // The uncorrupted model is fine.
  assert.strictEqual(analyseVar(loadModel(fixture('var_tiny_full.onnx'))).blocks.length, 2);
});

test('matcher: constants match within two ulps of their own type (float32 2^-22, float16 2^-9 relative), not further', () => {
  const g = newGraph();
  const x = input(g, 'x');
  const k = 0.7978845608028654; // √(2/π)
  const half = (v: number) => g.addInitializer('h', Tensor.fromFloats(Float32Array.of(v), [], DataType.FLOAT16));
  const cases: { c: Value; ok: boolean; what: string }[] = [
    { c: constant(g, 'ts', 0.797884583), ok: true, what: "TorchScript's float32 0.797884583" },
    { c: constant(g, 'dyn', 0.797884524), ok: true, what: "the dynamo exporter's float32 0.797884524" },
    { c: constant(g, 'off', k * (1 + 1e-5)), ok: false, what: 'float32, 1e-5 relative off' },
    { c: half(k), ok: true, what: 'float16 rounding of √(2/π)' },
    { c: half(k * (1 + 4e-3)), ok: false, what: 'float16, 4e-3 relative off' },
  ];
  for (const { c, ok, what } of cases) {
    const n = op(g, 'Mul', `mul_${what.length}_${c.name}`, [c, x]).producer!;
    const r = match(n, P.op('Mul', [P.scalar(k), P.any('x')]));
    assert.strictEqual(r.ok, ok, `${what}: ${r.ok ? 'matched' : describeFailure(r.failure)}`);
  }
});
