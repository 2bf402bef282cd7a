// ONNX Runtime 1.30's telemetry writes `.ses` and `mat-debug-<pid>.log` into the temp dir for every process that opens
// a session (onnxruntime-node's and the runtime's alike), unless ORT_DISABLE_TELEMETRY is set; moefy leaves nothing
// behind, so importing moefy sets it unless the user has. Read when a session is created (measured), so a module
// imported before any session is early enough. bin/moefy.js loads it first for the CLI.
if (process.env.ORT_DISABLE_TELEMETRY === undefined) process.env.ORT_DISABLE_TELEMETRY = '1';
export {};
