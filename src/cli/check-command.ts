import { randomUUID } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import * as grpc from '@grpc/grpc-js';
import type { CheckResponseMessage } from '../grpc/check-mapping.js';
import { authorizationService, httpStatusNumber } from '../grpc/protos.js';

// `usage-limiter check`: sends one CheckRequest shaped the way Envoy builds it and prints the answer as
// the HTTP response a client would see, so a person can try the server without Envoy.

export interface CheckCommandOptions {
  readonly key: string | undefined;
  readonly method: string;
  readonly path: string;
  readonly target: string;
  readonly headers: ReadonlyArray<readonly [string, string]>;
  readonly requestId: string | undefined;
  readonly timeoutMs: number;
}

/** A CheckRequest as Envoy fills it for an HTTP/1.1 request (the fields the server reads, and the usual rest). */
export function buildCheckRequest(o: CheckCommandOptions): Record<string, unknown> {
  const requestId = o.requestId ?? randomUUID();
  const headers: Record<string, string> = {
    ':authority': 'localhost:3000',
    ':method': o.method,
    ':path': o.path,
    ':scheme': 'http',
    accept: '*/*',
    'user-agent': 'usage-limiter-check/1',
    'x-forwarded-proto': 'http',
    'x-request-id': requestId,
  };
  if (o.key !== undefined) headers['x-api-key'] = o.key;
  for (const [k, v] of o.headers) headers[k.toLowerCase()] = v;
  const nowMs = Date.now();
  return {
    attributes: {
      source: { address: { socket_address: { address: '127.0.0.1', port_value: 50_000 } } },
      destination: { address: { socket_address: { address: '127.0.0.1', port_value: 3000 } } },
      request: {
        time: { seconds: String(Math.floor(nowMs / 1000)), nanos: (nowMs % 1000) * 1e6 },
        http: {
          id: requestId,
          method: o.method,
          headers,
          path: o.path,
          host: 'localhost:3000',
          scheme: 'http',
          protocol: 'HTTP/1.1',
        },
      },
    },
  };
}

type HeaderList = Array<{ header?: { key?: string; value?: string } }>;

function printHeaders(list: HeaderList | undefined, out: string[]): void {
  for (const h of list ?? []) out.push(`${h.header?.key ?? ''}: ${h.header?.value ?? ''}`);
}

/** Renders a CheckResponse as an HTTP response (status line, headers, body) plus what reaches upstream. */
export function renderCheckResponse(res: CheckResponseMessage): string {
  const out: string[] = [];
  if (res.denied_response) {
    const code = httpStatusNumber(res.denied_response.status?.code ?? 403);
    out.push(`HTTP/1.1 ${code} ${STATUS_CODES[code] ?? ''}`.trimEnd());
    printHeaders(res.denied_response.headers, out);
    out.push('', res.denied_response.body ?? '');
    return out.join('\n');
  }
  const ok = res.ok_response;
  out.push('HTTP/1.1 200 OK  (allowed: Envoy forwards the request upstream)');
  printHeaders(ok?.response_headers_to_add, out);
  out.push('', '# upstream request headers set:');
  printHeaders(ok?.headers, out);
  if (ok?.headers_to_remove?.length) out.push(`# upstream request headers removed: ${ok.headers_to_remove.join(', ')}`);
  const fields = res.dynamic_metadata?.fields ?? {};
  const meta = Object.entries(fields).map(([k, v]) => `${k}=${String(v.stringValue ?? v.boolValue ?? '')}`);
  if (meta.length) out.push(`# dynamic metadata: ${meta.join(' ')}`);
  return out.join('\n');
}

export function sendCheck(o: CheckCommandOptions): Promise<CheckResponseMessage> {
  const Client = authorizationService();
  const client = new Client(o.target, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    Check: (req: unknown, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: CheckResponseMessage) => void) => void;
  };
  return new Promise<CheckResponseMessage>((resolve, reject) => {
    client.Check(
      buildCheckRequest(o),
      { deadline: Date.now() + o.timeoutMs },
      (err: grpc.ServiceError | null, res: CheckResponseMessage) => {
        client.close();
        if (err) reject(new Error(`Check to ${o.target} failed: ${err.details || err.message}`));
        else resolve(res);
      },
    );
  });
}
