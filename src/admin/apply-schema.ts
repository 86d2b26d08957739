// The `usage-limiter apply -f FILE.yaml` format and its validation. Parsing is pure: it turns text into a
// validated, normalised document (plaintext keys already replaced by hash and display prefix) or into the full
// list of problems, each `FILE: path: reason`, so an operator fixes a file in one pass instead of one error a run.
// Checks that need the database (tiers defined only there, keys owned by other tenants) run in apply.ts.
import { LineCounter, parseDocument } from 'yaml';
import { z } from 'zod';
import { displayPrefix, hashApiKey } from '../core/api-key.js';
import { normalizePath } from '../core/path.js';
import { MAX_API_KEY_LENGTH } from '../core/request.js';
import type { FailurePolicy, MonthlyQuota, ReadRateLimit, TenantStatus } from '../core/types.js';

export const DEFAULT_ALERT_THRESHOLDS: readonly number[] = [0.8, 0.9, 1.0];

export interface ApplyTier {
  readonly id: string;
  readonly readRateLimit: ReadRateLimit | null;
  readonly monthlyQuota: MonthlyQuota;
  /** Sorted ascending, without duplicates. */
  readonly alertThresholds: readonly number[];
  readonly failurePolicy: FailurePolicy;
  /**
   * Stripe price lookup keys or price ids whose subscriptions put a tenant on this tier (webhook sync).
   * Undefined: not managed by the file (a new tier gets none, an existing one keeps its own).
   */
  readonly stripePrices: readonly string[] | undefined;
  /** Where it came from, e.g. `tiers[0]`, for problems found later against the database. */
  readonly path: string;
}

/**
 * An `undefined` optional field is not managed by the file: a new row gets the default and an existing row keeps
 * its value (a billing integration may have set it). `null` clears it.
 */
export interface ApplyKey {
  readonly keyHash: string;
  readonly keyPrefix: string;
  readonly name: string | null | undefined;
  readonly expiresAtMs: number | null | undefined;
  readonly path: string;
}

export interface ApplyTenant {
  readonly id: string;
  readonly tierId: string;
  readonly status: TenantStatus | undefined;
  readonly stripeCustomerId: string | null | undefined;
  readonly apiKeys: readonly ApplyKey[];
  readonly path: string;
}

export interface ApplyDocument {
  readonly fileName: string;
  readonly tiers: readonly ApplyTier[];
  readonly tenants: readonly ApplyTenant[];
}

export type ParseResult = { ok: true; doc: ApplyDocument } | { ok: false; problems: string[] };

const MAX_INT = 2_147_483_647;
const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
// Ids end up in Redis keys (`usage:<tenant>:...`) and headers, where `:`, `{`, `}` or spaces would break them.
const ID_RULE = 'must be 1-128 letters, digits, "_", "-" or ".", starting with a letter or digit';
const KEY_MIN = 12;
// The Check treats longer keys as malformed without a lookup, so importing one would make a dead key.
const KEY_MAX = MAX_API_KEY_LENGTH;
const KEY_RE = /^[\x21-\x7e]+$/;
const ENDPOINT_RULE = 'must start with "/", have no spaces, "?" or "#", and use "*" only as a final "/*"';
const ENDPOINT_RE = /^\/[^\s?#*]*(\/\*)?$/;
const KEY_FIELDS = ['key', 'name', 'expiresAt'];

/** A schema-level message that still says "is required" when the field is missing. */
const says = (message: string) => (iss: { input?: unknown }) => (iss.input === undefined ? 'is required' : message);

const positiveInt = z
  .number({ error: says('must be a positive integer') })
  .int({ error: 'must be a positive integer' })
  .positive({ error: 'must be a positive integer' })
  .max(MAX_INT, { error: `must be at most ${MAX_INT}` });

const id = z.string({ error: says(ID_RULE) }).regex(ID_RE, { error: ID_RULE });

const PRICE_RULE = 'must be a Stripe price lookup key or price id: 1-200 printable characters without spaces';
const stripePrice = z
  .string({ error: says(PRICE_RULE) })
  .regex(/^[\x21-\x7e]{1,200}$/, { error: PRICE_RULE });

const threshold = z
  .number({ error: says('must be a number greater than 0 and at most 1') })
  .gt(0, { error: 'must be greater than 0 and at most 1' })
  .lte(1, { error: 'must be greater than 0 and at most 1' });

const tierSchema = z
  .object({
    id,
    readRateLimit: z.object({ requests: positiveInt, perSeconds: positiveInt }).strict().optional(),
    monthlyQuota: z
      .object({ total: positiveInt.optional(), endpoints: z.record(z.string(), positiveInt).optional() })
      .strict()
      .optional(),
    alertThresholds: z.array(threshold).optional(),
    failurePolicy: z.enum(['allow', 'deny'], { error: says('must be "allow" or "deny"') }).optional(),
    stripePrices: z.array(stripePrice, { error: says('must be a list') }).optional(),
  })
  .strict();

const keyString = z
  .string({ error: says('must be a string (quote it if it looks like a number)') })
  .min(KEY_MIN, { error: `must be at least ${KEY_MIN} characters` })
  .max(KEY_MAX, { error: `must be at most ${KEY_MAX} characters` })
  .regex(KEY_RE, { error: 'must be printable ASCII without spaces' });

const keyItem = z.preprocess(
  (v) => (typeof v === 'string' ? { key: v } : v),
  z
    .object(
      {
        key: keyString,
        name: z.string({ error: says('must be a string') }).min(1, { error: 'must not be empty' }).max(200).nullable().optional(),
        expiresAt: z
          .iso.datetime({ offset: true, error: says('must be an ISO-8601 date-time with a time zone, e.g. 2027-01-31T00:00:00Z') })
          .nullable()
          .optional(),
      },
      { error: says('must be an API key (a string) or a mapping with key, name, expiresAt') },
    )
    .strict(),
);

const tenantSchema = z
  .object({
    id,
    tier: id,
    status: z.enum(['active', 'suspended'], { error: says('must be "active" or "suspended"') }).optional(),
    stripeCustomerId: z.string({ error: says('must be a string') }).min(1, { error: 'must not be empty' }).nullable().optional(),
    apiKeys: z.array(keyItem, { error: says('must be a list') }).optional(),
  })
  .strict();

const fileSchema = z
  .object(
    {
      tiers: z.array(tierSchema, { error: says('must be a list') }).optional(),
      tenants: z.array(tenantSchema, { error: says('must be a list') }).optional(),
    },
    { error: 'must be a mapping with "tiers" and/or "tenants"' },
  )
  .strict();

type RawFile = z.infer<typeof fileSchema>;
type Path = readonly PropertyKey[];
interface Problem {
  readonly path: Path;
  readonly message: string;
}

export function parseApplyFile(text: string, fileName: string): ParseResult {
  const lineCounter = new LineCounter();
  // prettyErrors off: yaml would quote the offending source line, which may be a plaintext key.
  const yamlDoc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  if (yamlDoc.errors.length > 0) {
    return {
      ok: false,
      problems: yamlDoc.errors.map((e) => {
        const pos = lineCounter.linePos(e.pos[0]);
        return `${fileName}:${pos.line}:${pos.col}: YAML syntax error: ${firstLine(e.message)}`;
      }),
    };
  }
  let raw: unknown;
  try {
    raw = yamlDoc.toJS({ maxAliasCount: 100 }) ?? {};
  } catch (err) {
    // e.g. an alias bomb; the message names no source text.
    return { ok: false, problems: [`${fileName}: YAML error: ${err instanceof Error ? firstLine(err.message) : String(err)}`] };
  }

  const problems: Problem[] = [];
  const parsed = fileSchema.safeParse(raw, { error: defaultMessage });
  if (!parsed.success) {
    for (const issue of parsed.error.issues) problems.push(...fromIssue(issue, raw));
  }
  problems.push(...crossCheck(raw));
  if (problems.length > 0 || !parsed.success) {
    return { ok: false, problems: sortProblems(problems).map((p) => formatProblem(fileName, p)) };
  }
  if (!parsed.data.tiers?.length && !parsed.data.tenants?.length) {
    return { ok: false, problems: [`${fileName}: nothing to apply: expected "tiers" and/or "tenants"`] };
  }
  return { ok: true, doc: normalise(parsed.data, fileName) };
}

function normalise(data: RawFile, fileName: string): ApplyDocument {
  const tiers = (data.tiers ?? []).map((t, i): ApplyTier => ({
    id: t.id,
    readRateLimit: t.readRateLimit ? { requests: t.readRateLimit.requests, perSeconds: t.readRateLimit.perSeconds } : null,
    monthlyQuota: { total: t.monthlyQuota?.total ?? null, endpoints: { ...(t.monthlyQuota?.endpoints ?? {}) } },
    alertThresholds: [...new Set(t.alertThresholds ?? DEFAULT_ALERT_THRESHOLDS)].sort((a, b) => a - b),
    failurePolicy: t.failurePolicy ?? 'allow',
    stripePrices: t.stripePrices === undefined ? undefined : [...new Set(t.stripePrices)],
    path: formatPath(['tiers', i]),
  }));
  const tenants = (data.tenants ?? []).map((t, i): ApplyTenant => ({
    id: t.id,
    tierId: t.tier,
    status: t.status,
    stripeCustomerId: t.stripeCustomerId,
    apiKeys: (t.apiKeys ?? []).map((k, j): ApplyKey => ({
      keyHash: hashApiKey(k.key),
      keyPrefix: displayPrefix(k.key),
      name: k.name,
      expiresAtMs: k.expiresAt === undefined || k.expiresAt === null ? k.expiresAt : Date.parse(k.expiresAt),
      path: formatPath(['tenants', i, 'apiKeys', j]),
    })),
    path: formatPath(['tenants', i]),
  }));
  return { fileName, tiers, tenants };
}

/** Messages for issues whose schema did not set its own. Never includes the input value. */
function defaultMessage(iss: z.core.$ZodRawIssue): string {
  if (iss.code === 'invalid_type') {
    if (iss.input === undefined) return 'is required';
    const expected: Record<string, string> = { object: 'a mapping', array: 'a list', string: 'a string', number: 'a number' };
    return `must be ${expected[iss.expected] ?? iss.expected}`;
  }
  if (iss.code === 'too_big') return `must be at most ${String(iss.maximum)} characters`;
  return 'is invalid';
}

function fromIssue(issue: z.core.$ZodIssue, raw: unknown): Problem[] {
  if (issue.code === 'unrecognized_keys') {
    const inKeyItem = issue.path.includes('apiKeys');
    return issue.keys.map((key) =>
      inKeyItem
        ? // The field name itself could be a pasted key, so it is not echoed.
          { path: issue.path, message: `unknown field (allowed: ${KEY_FIELDS.join(', ')})` }
        : { path: [...issue.path, key], message: unknownFieldMessage(key, issue.path) },
    );
  }
  // A key given as a bare string was validated as `{ key }`; report it at the list item.
  const path = issue.path;
  const last = path[path.length - 1];
  if (last === 'key' && typeof getAt(raw, path.slice(0, -1)) === 'string') {
    return [{ path: path.slice(0, -1), message: issue.message }];
  }
  return [{ path, message: issue.message }];
}

const FIELDS_AT: Record<string, readonly string[]> = {
  '': ['tiers', 'tenants'],
  tier: ['id', 'readRateLimit', 'monthlyQuota', 'alertThresholds', 'failurePolicy', 'stripePrices'],
  readRateLimit: ['requests', 'perSeconds'],
  monthlyQuota: ['total', 'endpoints'],
  tenant: ['id', 'tier', 'status', 'stripeCustomerId', 'apiKeys'],
};

function unknownFieldMessage(key: string, parent: Path): string {
  const last = parent[parent.length - 1];
  const scope =
    parent.length === 0 ? '' : typeof last === 'string' ? last : parent[0] === 'tiers' ? 'tier' : 'tenant';
  const allowed = FIELDS_AT[scope] ?? [];
  const guess = allowed.find((f) => editDistance(f.toLowerCase(), key.toLowerCase()) <= 2);
  return guess ? `unknown field (did you mean "${guess}"?)` : `unknown field (allowed: ${allowed.join(', ')})`;
}

/** Rules across items, run on the raw data so they are reported even when other fields are malformed. */
function crossCheck(raw: unknown): Problem[] {
  const problems: Problem[] = [];
  const tiers = asArray(getAt(raw, ['tiers']));
  const tenants = asArray(getAt(raw, ['tenants']));

  const firstTier = new Map<string, number>();
  // A subscription's price must name one tier; the same price on two tiers would be a coin toss.
  const firstPrice = new Map<string, string>();
  tiers.forEach((t, i) => {
    asArray(getAt(t, ['stripePrices'])).forEach((price, j) => {
      if (typeof price !== 'string') return;
      const seen = firstPrice.get(price);
      const here = formatPath(['tiers', i, 'stripePrices', j]);
      if (seen === undefined) firstPrice.set(price, here);
      else if (!seen.startsWith(`tiers[${i}].`)) {
        problems.push({ path: ['tiers', i, 'stripePrices', j], message: `Stripe price "${price}" already maps to ${seen}` });
      }
    });
  });
  tiers.forEach((t, i) => {
    const tierId = getAt(t, ['id']);
    if (typeof tierId === 'string') {
      const seen = firstTier.get(tierId);
      if (seen === undefined) firstTier.set(tierId, i);
      else problems.push({ path: ['tiers', i, 'id'], message: `duplicate tier id "${tierId}" (first at tiers[${seen}])` });
    }
    const quota = getAt(t, ['monthlyQuota']);
    const endpoints = getAt(quota, ['endpoints']);
    if (isRecord(endpoints)) {
      // Two spellings of one endpoint (`/verify`, `/Verify/`) would meter the same requests under two limits,
      // of which the Check would enforce one and /v1/usage show the other.
      const firstSpelling = new Map<string, string>();
      for (const endpoint of Object.keys(endpoints)) {
        if (!ENDPOINT_RE.test(endpoint)) {
          problems.push({ path: ['tiers', i, 'monthlyQuota', 'endpoints', endpoint], message: `endpoint ${ENDPOINT_RULE}` });
          continue;
        }
        const same = endpoint.endsWith('/*') ? `${normalizePath(endpoint.slice(0, -2))}/*` : normalizePath(endpoint);
        const seen = firstSpelling.get(same);
        if (seen === undefined) firstSpelling.set(same, endpoint);
        else problems.push({ path: ['tiers', i, 'monthlyQuota', 'endpoints', endpoint], message: `is the same endpoint as "${seen}"` });
      }
    }
    if (getAt(quota, ['total']) !== undefined && (!isRecord(endpoints) || Object.keys(endpoints).length === 0)) {
      problems.push({
        path: ['tiers', i, 'monthlyQuota', 'total'],
        message: 'applies to metered endpoints, but monthlyQuota.endpoints lists none',
      });
    }
  });

  const firstTenant = new Map<string, number>();
  const firstCustomer = new Map<string, number>();
  const firstKey = new Map<string, string>();
  tenants.forEach((t, i) => {
    const tenantId = getAt(t, ['id']);
    if (typeof tenantId === 'string') {
      const seen = firstTenant.get(tenantId);
      if (seen === undefined) firstTenant.set(tenantId, i);
      else problems.push({ path: ['tenants', i, 'id'], message: `duplicate tenant id "${tenantId}" (first at tenants[${seen}])` });
    }
    const customer = getAt(t, ['stripeCustomerId']);
    if (typeof customer === 'string' && customer !== '') {
      const seen = firstCustomer.get(customer);
      if (seen === undefined) firstCustomer.set(customer, i);
      else {
        problems.push({
          path: ['tenants', i, 'stripeCustomerId'],
          message: `Stripe customer already used by tenants[${seen}]`,
        });
      }
    }
    asArray(getAt(t, ['apiKeys'])).forEach((k, j) => {
      const key = typeof k === 'string' ? k : getAt(k, ['key']);
      if (typeof key !== 'string') return;
      const here = formatPath(['tenants', i, 'apiKeys', j]);
      // Compared by hash so no plaintext is kept around longer than needed.
      const hash = hashApiKey(key);
      const seen = firstKey.get(hash);
      if (seen === undefined) firstKey.set(hash, here);
      else problems.push({ path: ['tenants', i, 'apiKeys', j], message: `the same key is already listed at ${seen}` });
    });
  });
  return problems;
}

// Problems in file order: tiers, then tenants, each by item index; zod's order within an item.
function sortProblems(problems: Problem[]): Problem[] {
  const rank = (p: Problem): [number, number] => {
    const section = p.path[0] === 'tiers' ? 1 : p.path[0] === 'tenants' ? 2 : 0;
    const index = typeof p.path[1] === 'number' ? p.path[1] : -1;
    return [section, index];
  };
  return problems
    .map((p, order) => ({ p, order, r: rank(p) }))
    .sort((a, b) => a.r[0] - b.r[0] || a.r[1] - b.r[1] || a.order - b.order)
    .map((x) => x.p);
}

export function formatProblem(fileName: string, p: Problem): string {
  return p.path.length === 0 ? `${fileName}: ${p.message}` : `${fileName}: ${formatPath(p.path)}: ${p.message}`;
}

/** `tiers[0].monthlyQuota.endpoints["/verify"]` */
export function formatPath(path: Path): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (typeof seg === 'string' && /^[A-Za-z_][A-Za-z0-9_]*$/.test(seg)) out += out === '' ? seg : `.${seg}`;
    else out += `[${JSON.stringify(String(seg))}]`;
  }
  return out;
}

function firstLine(message: string): string {
  return message.split('\n')[0]?.replace(/ at line \d+, column \d+:?$/, '') ?? message;
}

function getAt(value: unknown, path: Path): unknown {
  let cur = value;
  for (const seg of path) {
    if (typeof seg === 'number') cur = Array.isArray(cur) ? cur[seg] : undefined;
    else cur = isRecord(cur) ? cur[String(seg)] : undefined;
  }
  return cur;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function asArray(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min((prev[j] ?? 0) + 1, (cur[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length] ?? 0;
}
