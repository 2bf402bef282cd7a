// Model.clone: a copy a stage rewrites while its input stays as it was. The copy of a real export encodes to the
// same bytes; rewriting the copy (nodes, initializers, metadata, opsets) leaves the original's bytes unchanged.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { test } from 'node:test';
import { analyseVar } from '../src/analysis/var-structure';
import { decodeModel, encodeModel } from '../src/onnx/io';
import { Tensor } from '../src/onnx/tensor';
import { fixture } from './helpers/fixtures';

test('a clone encodes to the original bytes; rewriting it leaves the original alone', () => {
  const bytes = fs.readFileSync(fixture('var_tiny_full.onnx'));
  const m = decodeModel(bytes);
  const c = m.clone();
  assert.ok(Buffer.from(encodeModel(c.model)).equals(bytes), 'the clone encodes to the file');
  const site = analyseVar(c.model).blocks[0].ffn!;
  const g = c.model.graph;
  // Rewire the first FFN's output through a new node, prune, add an initializer, change the model-level fields.
  const neg = g.addNode({ op: 'Neg', inputs: [site.output], outputs: ['neg'] });
  g.replaceAllUses(site.output, neg.output(0), 'move');
  neg.setInput(0, site.output);
  g.addInitializer('extra', Tensor.fromFloat32(Float32Array.of(1), [1]));
  g.removeDeadNodes();
  g.toposort();
  c.model.setMetadata('k', 'v');
  c.model.setOpset('', 99);
  c.model.proto.producer_name = 'other';
  assert.ok(!Buffer.from(encodeModel(c.model)).equals(bytes));
  assert.ok(Buffer.from(encodeModel(m)).equals(bytes), 'the original still encodes to the file');
  // The original's values are mapped to the copy's, by identity.
  const orig = analyseVar(m).blocks[0].ffn!;
  assert.equal(c.valueOf(orig.output), site.output);
  assert.equal(c.nodeOf(orig.fc1.node).name, orig.fc1.node.name);
  assert.notEqual(c.nodeOf(orig.fc1.node), orig.fc1.node);
  assert.equal(orig.output.useCount, 1, "the original's uses are its own");
});
