// Loaded by bin/usage-limiter.js before anything else (`await import()`, so that nothing the server uses is
// loaded before the SDK and its hooks are in place). Only `serve` gets telemetry: the admin commands are
// short-lived and have nothing worth exporting.
// The SDK is imported only for `serve`: loading it costs the short-lived commands (check, keys, apply)
// most of a second of start-up.
import { register } from 'node:module';

const command = process.argv[2] ?? 'serve';
if (command === 'serve') {
  const { loadTelemetrySettings } = await import('../config/telemetry-env.js');
  const { startGlobalTelemetry } = await import('./telemetry.js');
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
