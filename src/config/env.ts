import { fileURLToPath } from 'node:url';
import { z } from 'zod';

// The only module that reads process.env. Everything is validated once at start, frozen, and passed down;
// a bad value stops the process with a message naming the variable.

// z.coerce.number() alone reads '' as 0 and '0x10' as 16: a variable set to nothing (`GRPC_PORT=` in an env
// file) or to something that is not a decimal number must stop startup, naming it, not become a number.
const decimal = (v: unknown) => (typeof v === 'string' && !/^\s*[-+]?\d+(\.\d+)?\s*$/.test(v) ? Number.NaN : v);
const number = () => z.coerce.number({ error: 'must be a decimal number' });
const port = z.preprocess(decimal, number().int().min(0).max(65535));
/** A positive whole number, at most `max`. */
const positiveInt = (max = Number.MAX_SAFE_INTEGER) => z.preprocess(decimal, number().int().positive().max(max));
const bool = z
  .enum(['true', 'false', '1', '0', 'yes', 'no'])
  .transform((v) => v === 'true' || v === '1' || v === 'yes');
const optionalString = z
  .string()
  .optional()
  .transform((v) => (v === undefined || v.trim() === '' ? undefined : v.trim()));
// host:port, the host a name, an IPv4 address or a bracketed IPv6 address.
const CLUSTER_NODE = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9][A-Za-z0-9.-]*)):(\d{1,5})$/;

const schema = z.object({
  // Loopback unless told otherwise: the gRPC port takes access-log entries that give reservations back and
  // answers Checks to anyone (a key oracle), so it must face Envoy alone. Containers set 0.0.0.0 (Dockerfile,
  // docker-compose.yml, k8s) behind their own fences (published on loopback, a NetworkPolicy).
  GRPC_HOST: z.string().min(1).default('127.0.0.1'),
  GRPC_PORT: port.default(9191),
  HTTP_HOST: z.string().min(1).default('127.0.0.1'),
  HTTP_PORT: port.default(8081),
  DATABASE_URL: optionalString.pipe(
    z
      .string()
      .regex(/^postgres(ql)?:\/\//, 'must be a postgres:// or postgresql:// URL')
      // The driver parses it with `new URL()`: caught here, it names the variable instead of failing later
      // with a bare "Invalid URL" (a `/`, `#` or `@` in the password must be percent-encoded).
      .refine((v) => URL.canParse(v), 'must be a valid URL (percent-encode special characters in the password)')
      .optional(),
  ),
  DATA_DIR: z.string().min(1).default('.data'),
  REDIS_URL: optionalString.pipe(
    z
      .string()
      .regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL')
      .optional(),
  ),
  /** Seed nodes of a Redis Cluster, `host:port,host:port`; the client discovers the rest. */
  REDIS_CLUSTER_NODES: optionalString.pipe(
    z
      .string()
      .transform((v, ctx) => {
        const nodes = v
          .split(',')
          .map((entry) => entry.trim())
          .filter((entry) => entry !== '')
          .map((entry) => {
            const m = CLUSTER_NODE.exec(entry);
            const port = Number(m?.[3]);
            return m && port >= 1 && port <= 65535 ? Object.freeze({ host: (m[1] ?? m[2]) as string, port }) : null;
          });
        if (nodes.length === 0 || nodes.includes(null)) {
          ctx.addIssue({ code: 'custom', message: 'must be comma-separated host:port seeds, e.g. redis-0:6379,redis-1:6379' });
          return z.NEVER;
        }
        return Object.freeze(nodes as Array<{ readonly host: string; readonly port: number }>);
      })
      .optional(),
  ),
  REDIS_KEY_PREFIX: z.string().default(''),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  APPLY_ON_START: optionalString,
  MIGRATE_ON_START: bool.default(true),
  CHECK_TIMEOUT_MS: positiveInt(60_000).default(100),
  // Repeated 429s of a tenant are answered from memory for at most this long (never past the limit's
  // reset); 0 asks Redis every time.
  DENY_MEMORY_MS: z.preprocess(decimal, number().int().min(0).max(60_000)).default(1000),
  KEY_CACHE_TTL_SECONDS: positiveInt().default(300),
  // Long, because any change to keys clears negative entries on every replica within a second anyway
  // (version poll and NOTIFY); the TTL only bounds how often a flood of one unknown key reaches Postgres.
  KEY_CACHE_NEGATIVE_TTL_SECONDS: positiveInt().default(60),
  KEY_CACHE_MAX_ENTRIES: positiveInt().default(100_000),
  // A timer's delay: above 2^31 - 1 ms Node would fire it every millisecond.
  DIRECTORY_POLL_MS: positiveInt(3_600_000).default(1000),
  STRIPE_SECRET_KEY: optionalString,
  STRIPE_WEBHOOK_SECRET: optionalString,
  STRIPE_API_BASE: optionalString.pipe(z.string().url().optional()),
  // One meter event name for every endpoint (the endpoint travels in the payload), unless STRIPE_METERS
  // maps endpoints to their own event names as JSON, e.g. {"/verify":"verify_calls"}.
  STRIPE_METER_EVENT: z.string().min(1).max(100).default('api_requests'),
  STRIPE_METERS: optionalString.pipe(
    z
      .string()
      .transform((v, ctx) => {
        try {
          const parsed: unknown = JSON.parse(v);
          if (parsed && typeof parsed === 'object' && !Array.isArray(parsed) && Object.values(parsed).every((x) => typeof x === 'string' && x.length > 0 && x.length <= 100)) {
            return parsed as Record<string, string>;
          }
        } catch {
          // fall through to the issue below
        }
        ctx.addIssue({ code: 'custom', message: 'must be a JSON object mapping endpoints to meter event names' });
        return z.NEVER;
      })
      .optional(),
  ),
  USAGE_REPORT_INTERVAL_SECONDS: positiveInt(86_400).default(60),
  /** Bound on one Stripe API call; a slower answer is retried (the meter event identifier keeps it single). */
  STRIPE_TIMEOUT_MS: positiveInt(120_000).default(10_000),
  /** The tier a tenant moves to when its subscription ends; unset: the tier `free` if there is one. */
  STRIPE_CANCELED_TIER: optionalString.pipe(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/, 'must be a tier id').optional()),
  /** How long a reservation waits for its access-log entry before it counts as settled. */
  SETTLEMENT_WINDOW_SECONDS: positiveInt(3600).default(120),
  ALERT_WEBHOOK_URL: optionalString.pipe(z.string().url().optional()),
  ALERT_WEBHOOK_SECRET: optionalString,
  /** Denials of one tenant within the window that raise a `usage.repeated_violations` alert (once per window). */
  VIOLATION_ALERT_COUNT: positiveInt().default(100),
  VIOLATION_ALERT_WINDOW_SECONDS: positiveInt().default(300),
  SHUTDOWN_GRACE_SECONDS: positiveInt(300).default(10),
  /**
   * GET /v1/usage takes the tenant from x-tenant-id (which Envoy sets after ext_authz) instead of requiring the
   * API key. Only safe when the HTTP port is reachable from Envoy alone (the k8s NetworkPolicy).
   */
  USAGE_API_TRUST_TENANT_HEADER: bool.default(false),
});

export interface Config {
  readonly grpcHost: string;
  readonly grpcPort: number;
  readonly httpHost: string;
  readonly httpPort: number;
  /** Unset: embedded PGlite under `dataDir`. */
  readonly databaseUrl: string | undefined;
  readonly dataDir: string;
  /** Unset (and no cluster): counters in process memory (not shared between replicas). */
  readonly redisUrl: string | undefined;
  /** Seed nodes of a Redis Cluster; set only when `redisUrl` is not. */
  readonly redisClusterNodes: ReadonlyArray<{ readonly host: string; readonly port: number }> | undefined;
  readonly redisKeyPrefix: string;
  readonly logLevel: string;
  /** A tenants YAML applied at start; defaults to the demo tenants when the database is embedded. */
  readonly applyOnStart: string | undefined;
  readonly migrateOnStart: boolean;
  readonly checkTimeoutMs: number;
  readonly denyMemoryMs: number;
  readonly keyCacheTtlMs: number;
  readonly keyCacheNegativeTtlMs: number;
  readonly keyCacheMaxEntries: number;
  readonly directoryPollMs: number;
  readonly stripeSecretKey: string | undefined;
  readonly stripeWebhookSecret: string | undefined;
  readonly stripeApiBase: string | undefined;
  readonly stripeMeterEvent: string;
  /** Endpoint → meter event name; endpoints not listed use `stripeMeterEvent`. */
  readonly stripeMeters: Readonly<Record<string, string>>;
  readonly usageReportIntervalMs: number;
  readonly stripeTimeoutMs: number;
  /** Where a canceled subscription leaves its tenant; undefined: `free` if that tier exists, else unchanged. */
  readonly stripeCanceledTier: string | undefined;
  readonly settlementWindowMs: number;
  readonly alertWebhookUrl: string | undefined;
  readonly alertWebhookSecret: string | undefined;
  readonly violationAlertCount: number;
  readonly violationAlertWindowMs: number;
  readonly shutdownGraceMs: number;
  readonly usageApiTrustTenantHeader: boolean;
}

export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

export const DEMO_TENANTS_FILE = fileURLToPath(new URL('../../config/demo-tenants.yaml', import.meta.url));

/** Validates the environment. Throws ConfigError listing every bad variable by name. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const parsed = schema.safeParse(env);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => {
      const name = String(i.path[0] ?? '(environment)');
      // Never echo the offending value: it may be a secret or a URL with a password.
      return `${name}: ${i.message}`;
    });
    throw new ConfigError(problems);
  }
  const e = parsed.data;
  // Unsigned alerts would be indistinguishable from forged ones.
  if (e.ALERT_WEBHOOK_URL !== undefined && e.ALERT_WEBHOOK_SECRET === undefined) {
    throw new ConfigError(['ALERT_WEBHOOK_SECRET: required when ALERT_WEBHOOK_URL is set']);
  }
  const clusterNodes = e.REDIS_CLUSTER_NODES;
  const redisProblems: string[] = [];
  if (clusterNodes !== undefined && e.REDIS_URL !== undefined) {
    redisProblems.push('REDIS_CLUSTER_NODES: REDIS_URL is set too; set REDIS_URL (one Redis) or REDIS_CLUSTER_NODES (a Redis Cluster), not both');
  }
  if (clusterNodes !== undefined && /[{}]/.test(e.REDIS_KEY_PREFIX)) {
    // Redis Cluster hashes the first {...} of a key, which must be the tenant's: braces in the prefix would move it.
    redisProblems.push('REDIS_KEY_PREFIX: must not contain { or } with REDIS_CLUSTER_NODES');
  }
  if (redisProblems.length > 0) throw new ConfigError(redisProblems);
  const config: Config = {
    grpcHost: e.GRPC_HOST,
    grpcPort: e.GRPC_PORT,
    httpHost: e.HTTP_HOST,
    httpPort: e.HTTP_PORT,
    databaseUrl: e.DATABASE_URL,
    dataDir: e.DATA_DIR,
    redisUrl: e.REDIS_URL,
    redisClusterNodes: clusterNodes,
    redisKeyPrefix: e.REDIS_KEY_PREFIX,
    logLevel: e.LOG_LEVEL,
    applyOnStart:
      e.APPLY_ON_START ?? (e.DATABASE_URL === undefined ? DEMO_TENANTS_FILE : undefined),
    migrateOnStart: e.MIGRATE_ON_START,
    checkTimeoutMs: e.CHECK_TIMEOUT_MS,
    denyMemoryMs: e.DENY_MEMORY_MS,
    keyCacheTtlMs: e.KEY_CACHE_TTL_SECONDS * 1000,
    keyCacheNegativeTtlMs: e.KEY_CACHE_NEGATIVE_TTL_SECONDS * 1000,
    keyCacheMaxEntries: e.KEY_CACHE_MAX_ENTRIES,
    directoryPollMs: e.DIRECTORY_POLL_MS,
    stripeSecretKey: e.STRIPE_SECRET_KEY,
    stripeWebhookSecret: e.STRIPE_WEBHOOK_SECRET,
    stripeApiBase: e.STRIPE_API_BASE,
    stripeMeterEvent: e.STRIPE_METER_EVENT,
    stripeMeters: Object.freeze({ ...(e.STRIPE_METERS ?? {}) }),
    usageReportIntervalMs: e.USAGE_REPORT_INTERVAL_SECONDS * 1000,
    stripeTimeoutMs: e.STRIPE_TIMEOUT_MS,
    stripeCanceledTier: e.STRIPE_CANCELED_TIER,
    settlementWindowMs: e.SETTLEMENT_WINDOW_SECONDS * 1000,
    alertWebhookUrl: e.ALERT_WEBHOOK_URL,
    alertWebhookSecret: e.ALERT_WEBHOOK_SECRET,
    violationAlertCount: e.VIOLATION_ALERT_COUNT,
    violationAlertWindowMs: e.VIOLATION_ALERT_WINDOW_SECONDS * 1000,
    shutdownGraceMs: e.SHUTDOWN_GRACE_SECONDS * 1000,
    usageApiTrustTenantHeader: e.USAGE_API_TRUST_TENANT_HEADER,
  };
  return Object.freeze(config);
}

/** A log-safe view of the configuration: secrets and credentials in URLs are masked. */
export function describeConfig(c: Config): Record<string, unknown> {
  const maskUrl = (u: string | undefined) => {
    if (u === undefined) return undefined;
    try {
      const url = new URL(u);
      if (url.password) url.password = '***';
      return url.toString();
    } catch {
      return '***';
    }
  };
  return {
    ...c,
    databaseUrl: maskUrl(c.databaseUrl) ?? '(embedded PGlite)',
    redisUrl: maskUrl(c.redisUrl) ?? (c.redisClusterNodes ? undefined : '(in-process memory)'),
    redisClusterNodes: c.redisClusterNodes?.map((n) => `${n.host.includes(':') ? `[${n.host}]` : n.host}:${n.port}`).join(','),
    stripeSecretKey: c.stripeSecretKey ? '***' : undefined,
    stripeWebhookSecret: c.stripeWebhookSecret ? '***' : undefined,
    alertWebhookSecret: c.alertWebhookSecret ? '***' : undefined,
  };
}
