// Loaded by bin/usage-limiter.js before anything else (`await import()`, so that nothing the server uses is
// loaded before the SDK and its hooks are in place). Only `serve` gets telemetry: the admin commands are
// short-lived and have nothing worth exporting.
import { register } from 'node:module';
import { loadTelemetrySettings } from '../config/telemetry-env.js';
import { startGlobalTelemetry } from './telemetry.js';

const command = process.argv[2] ?? 'serve';
if (command === 'serve') {
  const settings = loadTelemetrySettings();
  if (settings.otlpTraces) {
    // The server is ESM: instrumentation reaches its imports (grpc-js, ioredis, http) through
    // import-in-the-middle's loader hook, limited to the modules that are instrumented.
    register('@opentelemetry/instrumentation/hook.mjs', import.meta.url, {
      data: { include: ['@grpc/grpc-js', 'ioredis', 'pg', 'http', 'https', 'node:http', 'node:https'] },
    });
  }
  await startGlobalTelemetry(settings);
}
