import { createRequire } from 'node:module';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

// Envoy's exact API protos ship inside @grpc/grpc-js-xds (deps/). They are loaded at start with
// protobufjs (through proto-loader); nothing is hand-written or copied. Debian's protoc cannot compile them
// (its bundled validate.proto predates `ignore_empty`), and google-protobuf's generator does not install
// from npm. Statically generated protobufjs code compiles to the same decoder as reflection: measured with
// bench/decode.ts on a 687-byte, 16-header CheckRequest, proto-loader's deserializer takes 11.3 µs and a
// bare protobufjs Type.decode 9.3 µs, so reflection it is. The server itself decodes only the fields it
// uses (check-request-decoder.ts); these full definitions serve clients, tests and the access log service.

const require = createRequire(import.meta.url);
const XDS_DEPS = path.join(path.dirname(require.resolve('@grpc/grpc-js-xds/package.json')), 'deps');

export const PROTO_INCLUDE_DIRS = [
  path.join(XDS_DEPS, 'envoy-api'),
  path.join(XDS_DEPS, 'xds'),
  path.join(XDS_DEPS, 'googleapis'),
  path.join(XDS_DEPS, 'protoc-gen-validate'),
];

// keepCase: messages use the proto field names (snake_case), as Envoy's docs do.
// enums as strings, 64-bit ints as strings; no defaults, so an absent field reads as undefined.
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: false,
  oneofs: true,
  includeDirs: PROTO_INCLUDE_DIRS,
};

let definition: protoLoader.PackageDefinition | null = null;
let cached: grpc.GrpcObject | null = null;

export function packageDefinition(): protoLoader.PackageDefinition {
  definition ??= protoLoader.loadSync(
    ['envoy/service/auth/v3/external_auth.proto', 'envoy/service/accesslog/v3/als.proto'],
    LOADER_OPTIONS,
  );
  return definition;
}

/** The loaded Envoy services used by the server and the `check` CLI. Loaded once per process. */
export function envoyProtos(): grpc.GrpcObject {
  cached ??= grpc.loadPackageDefinition(packageDefinition());
  return cached;
}

let httpStatusByName: Map<string, number> | null = null;

/**
 * `envoy.type.v3.HttpStatus.code` decodes as an enum name (`TooManyRequests`); clients want the number.
 * Read from the proto's own enum descriptor rather than a copied table.
 */
export function httpStatusNumber(code: string | number | undefined): number {
  if (typeof code === 'number') return code;
  if (httpStatusByName === null) {
    const desc = packageDefinition()['envoy.type.v3.StatusCode'] as unknown as {
      type: { value: Array<{ name: string; number: number }> };
    };
    httpStatusByName = new Map(desc.type.value.map((v) => [v.name, v.number]));
  }
  return code === undefined ? Number.NaN : (httpStatusByName.get(code) ?? Number(code));
}

function lookup(root: grpc.GrpcObject, dotted: string): unknown {
  let node: unknown = root;
  for (const part of dotted.split('.')) node = (node as Record<string, unknown>)[part];
  return node;
}

export function authorizationService(): grpc.ServiceClientConstructor {
  return lookup(envoyProtos(), 'envoy.service.auth.v3.Authorization') as grpc.ServiceClientConstructor;
}

export function accessLogService(): grpc.ServiceClientConstructor {
  return lookup(envoyProtos(), 'envoy.service.accesslog.v3.AccessLogService') as grpc.ServiceClientConstructor;
}

interface DescriptorField {
  name: string;
  number: number;
}
interface Descriptor {
  field?: DescriptorField[];
  nestedType?: Array<Descriptor & { name: string }>;
  enumType?: Array<{ name: string; value: Array<{ name: string; number: number }> }>;
}

function descriptor(typeName: string): Descriptor {
  const def = packageDefinition() as unknown as Record<string, { type?: Descriptor } | undefined>;
  const direct = def[typeName]?.type;
  if (direct) return direct;
  // Nested messages (AttributeContext.Request) are found through their parent's descriptor.
  const dot = typeName.lastIndexOf('.');
  const nested = dot > 0 ? descriptor(typeName.slice(0, dot)).nestedType?.find((t) => t.name === typeName.slice(dot + 1)) : undefined;
  if (!nested) throw new Error(`proto type ${typeName} not found`);
  return nested;
}

/** A field's number, read from the loaded Envoy protos (for the hand-written codecs of the Check). */
export function protoFieldNumber(typeName: string, field: string): number {
  const f = descriptor(typeName).field?.find((x) => x.name === field);
  if (!f) throw new Error(`proto field ${typeName}.${field} not found`);
  return f.number;
}

/** The number of a value of an enum declared inside a message, read from the loaded protos. */
export function protoNestedEnumValue(typeName: string, enumName: string, valueName: string): number {
  const v = descriptor(typeName).enumType?.find((e) => e.name === enumName)?.value.find((x) => x.name === valueName);
  if (!v) throw new Error(`proto enum value ${typeName}.${enumName}.${valueName} not found`);
  return v.number;
}
