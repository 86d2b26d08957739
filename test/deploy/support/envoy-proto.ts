// Validates Envoy YAML against Envoy's own API protos (shipped in @grpc/grpc-js-xds/deps), the way Envoy's
// JSON/YAML loader reads it: there is no Envoy binary here to run `envoy --mode validate`.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import protobuf from 'protobufjs';

const require = createRequire(import.meta.url);

/** Where the Envoy, xDS, googleapis and PGV protos live: the folder k6 users pass as PROTO_ROOT too. */
export const PROTO_DEPS_ROOT = path.join(
  path.dirname(require.resolve('@grpc/grpc-js-xds/package.json')),
  'deps',
);

export const PROTO_INCLUDE_DIRS = [
  path.join(PROTO_DEPS_ROOT, 'envoy-api'),
  path.join(PROTO_DEPS_ROOT, 'xds'),
  path.join(PROTO_DEPS_ROOT, 'googleapis'),
  path.join(PROTO_DEPS_ROOT, 'protoc-gen-validate'),
  // google/protobuf/descriptor.proto (imported by the annotation protos) ships with protobufjs.
  path.dirname(require.resolve('protobufjs/package.json')),
];

export const BOOTSTRAP_TYPE = 'envoy.config.bootstrap.v3.Bootstrap';

export interface Problem {
  readonly path: string;
  readonly message: string;
}

/** Every message the walk visited, so tests can assert on e.g. all HeaderValueOptions wherever they sit. */
export interface Visited {
  readonly type: string;
  readonly path: string;
  // Loosely typed on purpose: tests navigate arbitrary Envoy YAML after the walk has validated it.
  readonly value: Record<string, any>;
}

export interface ValidationResult {
  readonly problems: Problem[];
  readonly visited: Visited[];
}

const WRAPPERS: Record<string, string> = {
  'google.protobuf.DoubleValue': 'double',
  'google.protobuf.FloatValue': 'float',
  'google.protobuf.Int64Value': 'int64',
  'google.protobuf.UInt64Value': 'uint64',
  'google.protobuf.Int32Value': 'int32',
  'google.protobuf.UInt32Value': 'uint32',
  'google.protobuf.BoolValue': 'bool',
  'google.protobuf.StringValue': 'string',
  'google.protobuf.BytesValue': 'bytes',
};

/** Well-known types whose JSON form is not an object of their fields. */
const SPECIAL_JSON = new Set([
  ...Object.keys(WRAPPERS),
  'google.protobuf.Duration',
  'google.protobuf.Timestamp',
  'google.protobuf.FieldMask',
  'google.protobuf.Struct',
  'google.protobuf.Value',
  'google.protobuf.ListValue',
]);

const DURATION = /^-?\d+(\.\d{1,9})?s$/;
const TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;
const INTEGER_STRING = /^-?\d+$/;
const BASE64 = /^[A-Za-z0-9+/_-]*={0,2}$/;

const INT_RANGES: Record<string, readonly [number, number]> = {
  int32: [-(2 ** 31), 2 ** 31 - 1],
  sint32: [-(2 ** 31), 2 ** 31 - 1],
  sfixed32: [-(2 ** 31), 2 ** 31 - 1],
  uint32: [0, 2 ** 32 - 1],
  fixed32: [0, 2 ** 32 - 1],
};
const INT64 = new Set(['int64', 'sint64', 'sfixed64', 'uint64', 'fixed64']);

const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

const lowerCamel = (snake: string) => snake.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

const typeNameOf = (url: string) => url.slice(url.lastIndexOf('/') + 1);

export class EnvoyProtoValidator {
  private readonly root: protobuf.Root;
  private readonly fieldIndex = new WeakMap<protobuf.Type, Map<string, protobuf.Field>>();

  private constructor(root: protobuf.Root) {
    this.root = root;
  }

  /** Loads the bootstrap proto (and everything it imports); extension protos load on demand by `@type`. */
  static load(): EnvoyProtoValidator {
    const root = new protobuf.Root();
    root.resolvePath = (_origin, target) => {
      if (path.isAbsolute(target)) return target;
      for (const dir of PROTO_INCLUDE_DIRS) {
        const candidate = path.join(dir, target);
        if (existsSync(candidate)) return candidate;
      }
      // Let protobufjs fall back to its bundled well-known types (any, duration, struct...).
      return target;
    };
    root.loadSync('envoy/config/bootstrap/v3/bootstrap.proto', { keepCase: true });
    root.resolveAll();
    return new EnvoyProtoValidator(root);
  }

  validateBootstrap(doc: unknown): ValidationResult {
    return this.validate(BOOTSTRAP_TYPE, doc);
  }

  validate(typeName: string, doc: unknown): ValidationResult {
    const type = this.lookupMessage(typeName);
    if (!type) throw new Error(`unknown message type ${typeName}`);
    const result: ValidationResult = { problems: [], visited: [] };
    this.checkMessage(type, doc, '', result);
    return result;
  }

  /**
   * Resolves a message by full name, loading every proto of its package from the deps folder the first
   * time: that is how an `@type` naming an extension (ext_authz, router, ALS...) becomes known.
   */
  lookupMessage(fullName: string): protobuf.Type | undefined {
    const found = this.tryLookup(fullName);
    if (found) return found;
    const parts = fullName.split('.');
    // The package is a prefix of the name; nested messages make the remainder longer than one segment.
    for (let cut = parts.length - 1; cut > 0; cut--) {
      const rel = parts.slice(0, cut).join('/');
      const dir = PROTO_INCLUDE_DIRS.map((d) => path.join(d, rel)).find(
        (d) => existsSync(d) && statSync(d).isDirectory(),
      );
      if (!dir) continue;
      const files = readdirSync(dir)
        .filter((f) => f.endsWith('.proto'))
        .map((f) => `${rel}/${f}`);
      if (files.length === 0) continue;
      this.root.loadSync(files, { keepCase: true });
      this.root.resolveAll();
      return this.tryLookup(fullName);
    }
    return undefined;
  }

  private tryLookup(fullName: string): protobuf.Type | undefined {
    try {
      const t = this.root.lookup(fullName.startsWith('.') ? fullName : `.${fullName}`);
      return t instanceof protobuf.Type ? t : undefined;
    } catch {
      return undefined;
    }
  }

  private fields(type: protobuf.Type): Map<string, protobuf.Field> {
    let index = this.fieldIndex.get(type);
    if (!index) {
      index = new Map();
      for (const f of type.fieldsArray) {
        index.set(f.name, f);
        // Envoy's loader accepts the proto JSON name (lowerCamel) as well as the declared name.
        index.set(lowerCamel(f.name), f);
      }
      this.fieldIndex.set(type, index);
    }
    return index;
  }

  private checkMessage(type: protobuf.Type, value: unknown, at: string, out: ValidationResult): void {
    const name = type.fullName.replace(/^\./, '');
    if (name === 'google.protobuf.Any') return this.checkAny(value, at, out);
    if (SPECIAL_JSON.has(name)) return this.checkSpecial(name, value, at, out);
    if (!isPlainObject(value)) {
      out.problems.push({ path: at, message: `expected a ${name} object, got ${describe(value)}` });
      return;
    }
    out.visited.push({ type: name, path: at, value });
    const index = this.fields(type);
    const seen = new Set<protobuf.Field>();
    for (const [key, v] of Object.entries(value)) {
      const here = at ? `${at}.${key}` : key;
      const field = index.get(key);
      if (!field) {
        out.problems.push({ path: here, message: `unknown field "${key}" on ${name}` });
        continue;
      }
      if (seen.has(field)) {
        out.problems.push({ path: here, message: `field ${field.name} set twice (snake_case and lowerCamel)` });
        continue;
      }
      seen.add(field);
      if (v === null) continue; // proto JSON: null means "unset"
      if (field.options?.deprecated === true) {
        out.problems.push({
          path: here,
          message:
            name === 'envoy.config.core.v3.HeaderValueOption' && field.name === 'append'
              ? 'HeaderValueOption.append is deprecated: set append_action (OVERWRITE_IF_EXISTS_OR_ADD) instead'
              : `deprecated field ${name}.${field.name}`,
        });
      }
      this.checkField(field, v, here, out);
    }
    this.checkOneofs(type, value, at, out);
    this.checkRequired(type, value, at, out);
  }

  private checkField(field: protobuf.Field, v: unknown, at: string, out: ValidationResult): void {
    if (field instanceof protobuf.MapField) {
      if (!isPlainObject(v)) {
        out.problems.push({ path: at, message: `map field ${field.name} expects an object, got ${describe(v)}` });
        return;
      }
      for (const [k, item] of Object.entries(v)) this.checkSingle(field, item, `${at}.${k}`, out);
      return;
    }
    if (field.repeated) {
      if (!Array.isArray(v)) {
        out.problems.push({ path: at, message: `repeated field ${field.name} expects a list, got ${describe(v)}` });
        return;
      }
      const min = field.options?.['(validate.rules).repeated.min_items'];
      if (typeof min === 'number' && v.length < min) {
        out.problems.push({ path: at, message: `${field.name} needs at least ${min} item(s)` });
      }
      v.forEach((item, i) => this.checkSingle(field, item, `${at}[${i}]`, out));
      return;
    }
    this.checkSingle(field, v, at, out);
  }

  private checkSingle(field: protobuf.Field, v: unknown, at: string, out: ValidationResult): void {
    field.resolve();
    const resolved = field.resolvedType;
    if (resolved instanceof protobuf.Type) return this.checkMessage(resolved, v, at, out);
    if (resolved instanceof protobuf.Enum) return this.checkEnum(resolved, v, at, out);
    this.checkScalar(field.type, v, at, out);
    this.checkScalarRules(field, v, at, out);
  }

  private checkEnum(e: protobuf.Enum, v: unknown, at: string, out: ValidationResult): void {
    if (e.fullName === '.google.protobuf.NullValue' && v === null) return;
    const ok =
      (typeof v === 'string' && Object.prototype.hasOwnProperty.call(e.values, v)) ||
      (typeof v === 'number' && Object.values(e.values).includes(v));
    if (!ok) {
      out.problems.push({
        path: at,
        message: `${describe(v)} is not a value of enum ${e.fullName.replace(/^\./, '')} (${Object.keys(e.values).join(', ')})`,
      });
    }
  }

  private checkScalar(kind: string, v: unknown, at: string, out: ValidationResult): void {
    const fail = () => out.problems.push({ path: at, message: `expected ${kind}, got ${describe(v)}` });
    switch (kind) {
      case 'string':
        if (typeof v !== 'string') fail();
        return;
      case 'bool':
        if (typeof v !== 'boolean') fail();
        return;
      case 'bytes':
        if (typeof v !== 'string' || !BASE64.test(v)) fail();
        return;
      case 'double':
      case 'float':
        if (!(typeof v === 'number' || (typeof v === 'string' && (Number.isFinite(Number(v)) || ['NaN', 'Infinity', '-Infinity'].includes(v))))) fail();
        return;
      default: {
        const range = INT_RANGES[kind];
        if (range) {
          const n = typeof v === 'string' && INTEGER_STRING.test(v) ? Number(v) : v;
          if (typeof n !== 'number' || !Number.isInteger(n) || n < range[0] || n > range[1]) fail();
          return;
        }
        if (INT64.has(kind)) {
          const okNumber = typeof v === 'number' && Number.isInteger(v);
          const okString = typeof v === 'string' && INTEGER_STRING.test(v);
          if (!(okNumber || okString) || (kind.startsWith('u') || kind.startsWith('fixed')) && Number(v) < 0) fail();
          return;
        }
        out.problems.push({ path: at, message: `unsupported scalar type ${kind}` });
      }
    }
  }

  /** The protoc-gen-validate rules that Envoy enforces at load time and that are cheap to mirror here. */
  private checkScalarRules(field: protobuf.Field, v: unknown, at: string, out: ValidationResult): void {
    const opts = field.options ?? {};
    for (const [key, rule] of Object.entries(opts)) {
      const m = /^\(validate\.rules\)\.([a-z0-9]+)\.([a-z_]+)$/.exec(key);
      if (!m) continue;
      const [, kind, op] = m as unknown as [string, string, string];
      if (kind === 'string' && op === 'min_len' && typeof v === 'string' && v.length < Number(rule)) {
        out.problems.push({ path: at, message: `${field.name} must be at least ${String(rule)} character(s)` });
      }
      if (kind === 'bool' && op === 'const' && typeof v === 'boolean' && v !== rule) {
        out.problems.push({ path: at, message: `${field.name} must be ${String(rule)}` });
      }
      if (typeof v === 'number' && typeof rule === 'number' && kind !== 'string' && kind !== 'repeated') {
        const bad =
          (op === 'gt' && !(v > rule)) ||
          (op === 'gte' && !(v >= rule)) ||
          (op === 'lt' && !(v < rule)) ||
          (op === 'lte' && !(v <= rule)) ||
          (op === 'const' && v !== rule);
        if (bad) out.problems.push({ path: at, message: `${field.name} violates ${op} ${rule}` });
      }
    }
  }

  private checkAny(value: unknown, at: string, out: ValidationResult): void {
    if (!isPlainObject(value)) {
      out.problems.push({ path: at, message: `expected an Any object with "@type", got ${describe(value)}` });
      return;
    }
    const url = value['@type'];
    if (typeof url !== 'string' || !url.includes('/')) {
      out.problems.push({ path: at, message: 'Any without a "@type" URL' });
      return;
    }
    const typeName = typeNameOf(url);
    const type = this.lookupMessage(typeName);
    if (!type) {
      out.problems.push({ path: `${at}.@type`, message: `unknown @type ${url}` });
      return;
    }
    const { '@type': _ignored, ...rest } = value;
    if (SPECIAL_JSON.has(typeName)) {
      this.checkSpecial(typeName, rest.value, `${at}.value`, out);
      return;
    }
    this.checkMessage(type, rest, at, out);
  }

  private checkSpecial(name: string, v: unknown, at: string, out: ValidationResult): void {
    const wrapped = WRAPPERS[name];
    if (wrapped) return this.checkScalar(wrapped, v, at, out);
    const fail = (what: string) => out.problems.push({ path: at, message: `${name} expects ${what}, got ${describe(v)}` });
    switch (name) {
      case 'google.protobuf.Duration':
        if (typeof v !== 'string' || !DURATION.test(v)) fail('a string like "0.25s"');
        return;
      case 'google.protobuf.Timestamp':
        if (typeof v !== 'string' || !TIMESTAMP.test(v)) fail('an RFC 3339 string');
        return;
      case 'google.protobuf.FieldMask':
        if (typeof v !== 'string') fail('a comma-separated string');
        return;
      case 'google.protobuf.Struct':
        if (!isPlainObject(v)) fail('an object');
        return;
      case 'google.protobuf.ListValue':
        if (!Array.isArray(v)) fail('a list');
        return;
      case 'google.protobuf.Value':
        return; // free-form
    }
  }

  private checkOneofs(type: protobuf.Type, value: Record<string, unknown>, at: string, out: ValidationResult): void {
    const index = this.fields(type);
    for (const oneof of type.oneofsArray) {
      const set = oneof.fieldsArray.filter((f) =>
        [f.name, lowerCamel(f.name)].some((k) => value[k] !== undefined && value[k] !== null && index.get(k) === f),
      );
      if (set.length > 1) {
        out.problems.push({
          path: at,
          message: `oneof ${oneof.name} of ${type.name} has ${set.length} members set (${set.map((f) => f.name).join(', ')})`,
        });
      }
      if (set.length === 0 && oneof.options?.['(validate.required)'] === true) {
        out.problems.push({ path: at, message: `oneof ${oneof.name} of ${type.name} is required` });
      }
    }
  }

  private checkRequired(type: protobuf.Type, value: Record<string, unknown>, at: string, out: ValidationResult): void {
    for (const f of type.fieldsArray) {
      const opts = f.options ?? {};
      const required = Object.entries(opts).some(
        ([k, v]) => /^\(validate\.rules\)\.(message|duration|timestamp|any)\.required$/.test(k) && v === true,
      );
      // Inside a oneof, "required" only means the chosen member must not be empty.
      if (!required || f.partOf) continue;
      const present = [f.name, lowerCamel(f.name)].some((k) => value[k] !== undefined && value[k] !== null);
      if (!present) out.problems.push({ path: at, message: `${type.name}.${f.name} is required` });
    }
  }
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${JSON.stringify(v)}`;
}

/** Formats problems for an assertion message. */
export function formatProblems(problems: readonly Problem[]): string {
  return problems.map((p) => `  ${p.path || '(root)'}: ${p.message}`).join('\n');
}
