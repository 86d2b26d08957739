import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../logger.js';
import { within } from '../timers.js';

// The HTTP port: liveness, readiness and plain-text metrics. Readiness is computed from its parts on
// every probe (bounded), so /readyz says which dependency is missing.

export interface ReadinessCheck {
  readonly name: string;
  readonly check: () => Promise<void>;
}

export interface HttpServerDeps {
  readonly logger: Logger;
  /** True once config is loaded and the gRPC listener is bound; false again from SIGTERM on. */
  readonly isServing: () => boolean;
  readonly readiness: readonly ReadinessCheck[];
  /** Prometheus text exposition. */
  readonly metrics?: () => string | Promise<string>;
  /** Extra routes (e.g. /v1/usage, /webhooks/stripe); return false when the path is not theirs. */
  readonly routes?: (req: http.IncomingMessage, res: http.ServerResponse) => boolean | Promise<boolean>;
}

export interface RunningHttpServer {
  readonly server: http.Server;
  readonly port: number;
  /** Stops accepting, lets requests in flight finish for up to `graceMs`, then drops what is left. */
  close(graceMs?: number): Promise<void>;
}

const PROBE_TIMEOUT_MS = 1000;
/** How long shutdown lets HTTP requests in flight finish: probes, /v1/usage and webhooks take milliseconds. */
const CLOSE_GRACE_MS = 2000;

function json(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  });
  res.end(text);
}

async function probe(c: ReadinessCheck): Promise<string | null> {
  try {
    await within(c.check(), PROBE_TIMEOUT_MS, () => {
      throw new Error(`no answer within ${PROBE_TIMEOUT_MS} ms`);
    });
    return null;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

export async function startHttpServer(deps: HttpServerDeps, host: string, port: number): Promise<RunningHttpServer> {
  const server = http.createServer((req, res) => {
    void handle(req, res).catch((err: unknown) => {
      deps.logger.error({ event: 'http.internal_error', err: err instanceof Error ? err.message : String(err) }, 'HTTP handler failed');
      if (!res.headersSent) json(res, 500, { code: 'INTERNAL', message: 'Internal error.' });
      else res.destroy();
    });
  });

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method === 'GET' && path === '/healthz') return json(res, 200, { status: 'ok' });
    if (req.method === 'GET' && path === '/readyz') {
      const results = await Promise.all(deps.readiness.map(async (c) => [c.name, await probe(c)] as const));
      const checks: Record<string, string> = { serving: deps.isServing() ? 'ok' : 'not serving' };
      for (const [name, err] of results) checks[name] = err ?? 'ok';
      const ready = Object.values(checks).every((v) => v === 'ok');
      return json(res, ready ? 200 : 503, { status: ready ? 'ready' : 'not ready', checks });
    }
    if (req.method === 'GET' && path === '/metrics' && deps.metrics) {
      const text = await deps.metrics();
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
      res.end(text);
      return;
    }
    if (deps.routes && (await deps.routes(req, res))) return;
    json(res, 404, { code: 'NOT_FOUND', message: 'Not found.' });
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    server,
    port: (server.address() as AddressInfo).port,
    // Shutdown waits for requests in flight, but not for ever: a client trickling a request body would hold
    // `server.close()` open (Node stops enforcing its request timeouts once closing starts), and with it
    // the steps behind it in shutdown (the alert queue's last write, the final usage report).
    close: (graceMs = CLOSE_GRACE_MS) =>
      new Promise<void>((resolve) => {
        const cutoff = setTimeout(() => server.closeAllConnections(), graceMs);
        cutoff.unref();
        server.close(() => {
          clearTimeout(cutoff);
          resolve();
        });
        server.closeIdleConnections();
      }),
  };
}
