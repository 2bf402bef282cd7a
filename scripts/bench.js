#!/usr/bin/env node
// `npm run bench`: every benchmark in one run (dense and MoE side by side, as ratios). Not part of `npm test`.
// `npm run bench kernel -- --level avx2`: one benchmark; the arguments after its name go to it.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const only = process.argv[2];
const extra = process.argv.slice(3);
const benches = ['kernel-bench', 'ukernel-bench', 'model-bench', 'foundation-bench', 'calib-bench', 'pipeline-bench'];
for (const b of benches) {
  if (only && !b.startsWith(only)) continue;
  const file = path.join(root, 'dist', 'bench', `${b}.js`);
  if (!fs.existsSync(file)) continue;
  console.log(`\n=== ${b} ===`);
  // ONNX Runtime 1.30 writes telemetry files (.ses, mat-debug-*.log) into the temp dir per session otherwise.
  execFileSync(process.execPath, ['--expose-gc', file, ...extra], { cwd: root, stdio: 'inherit', env: { ORT_DISABLE_TELEMETRY: '1', ...process.env } });
}
