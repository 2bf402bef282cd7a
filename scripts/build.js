#!/usr/bin/env node
// `npm install` builds everything: TypeScript, then the kernels and the Node addon (scripts/build-native.js), then
// the Python environment of the exporter's tests (scripts/python-env.js: .venv/, made when missing or out of date).
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const run = (cmd, args) => execFileSync(cmd, args, { cwd: root, stdio: 'inherit' });

console.log('moefy: compiling TypeScript');
run(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', 'tsconfig.json']);
const native = path.join(root, 'scripts', 'build-native.js');
if (fs.existsSync(native)) run(process.execPath, [native]);
run(process.execPath, [path.join(root, 'scripts', 'python-env.js')]);
