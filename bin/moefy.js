#!/usr/bin/env node
'use strict';
// ONNX Runtime's telemetry off before anything opens a session (src/files/ort-telemetry.ts).
require('../dist/src/files/ort-telemetry.js');
require('../dist/src/cli/main.js').main(process.argv.slice(2));
