// Measures CheckRequest decode speed for the protobuf runtimes that install here, to choose one:
//  - proto-loader's deserializer (protobufjs reflection + toObject with our loader options): what the
//    server uses;
//  - protobufjs Type.decode alone (message instances, no toObject), i.e. what statically generated
//    protobufjs code (pbjs -t static-module) compiles to: same generated decoder, minus the conversion.
// google-protobuf's generator (protoc-gen-js) cannot be installed from the registries here.
// Run: npx tsx bench/decode.ts
import { createRequire } from 'node:module';
import protobuf from 'protobufjs';
const require = createRequire(import.meta.url);
import { buildCheckRequest } from '../src/cli/check-command.js';
import { authorizationService, PROTO_INCLUDE_DIRS } from '../src/grpc/protos.js';

const def = authorizationService().service.Check!;
const request = buildCheckRequest({
  key: 'vk_live_FREE_PLAN_KEY',
  method: 'GET',
  path: '/usage?page=2',
  target: '',
  headers: [
    ['accept-encoding', 'gzip, deflate, br'],
    ['accept-language', 'en-US,en;q=0.9'],
    ['x-forwarded-for', '203.0.113.7'],
    ['x-envoy-expected-rq-timeout-ms', '15000'],
    ['traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'],
    ['cookie', 'session=abc123; theme=dark'],
    ['content-length', '0'],
  ],
  requestId: '925c104a-482d-4b6c-bd08-02a8d031e6c1',
  timeoutMs: 1000,
});
const bytes = def.requestSerialize(request);

const root = new protobuf.Root();
root.resolvePath = (_origin, target) => {
  for (const dir of PROTO_INCLUDE_DIRS) {
    const p = `${dir}/${target}`;
    try {
      require('node:fs').accessSync(p);
      return p;
    } catch {}
  }
  return target;
};
await root.load('envoy/service/auth/v3/external_auth.proto', { keepCase: true });
const CheckRequest = root.lookupType('envoy.service.auth.v3.CheckRequest');

function measure(name: string, fn: () => unknown): number {
  for (let i = 0; i < 20_000; i++) fn();
  const n = 200_000;
  const t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) fn();
  const ns = Number(process.hrtime.bigint() - t) / n;
  console.log(`${name.padEnd(44)} ${(ns / 1000).toFixed(2)} µs/decode  ${Math.round(1e9 / ns).toLocaleString()} /s`);
  return ns;
}

console.log(`CheckRequest: ${bytes.length} bytes, ${Object.keys((request as any).attributes.request.http.headers).length} headers`);
measure('proto-loader deserialize (used)', () => def.requestDeserialize(bytes));
measure('protobufjs Type.decode (static-code equivalent)', () => CheckRequest.decode(bytes));
