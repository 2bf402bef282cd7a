#!/usr/bin/env node
'use strict';
// ONNX Runtime 1.30's telemetry writes `.ses` and `mat-debug-<pid>.log` into the temp dir on every session; moefy
// leaves nothing behind, so it is off unless the user set the variable.
if (process.env.ORT_DISABLE_TELEMETRY === undefined) process.env.ORT_DISABLE_TELEMETRY = '1';
require('../dist/src/cli/main.js').main(process.argv.slice(2));
