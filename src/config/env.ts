import { fileURLToPath } from 'node:url';
import { z } from 'zod';

// The only module that reads process.env. Everything is validated once at start, frozen, and passed down;
// a bad value stops the process with a message naming the variable.

const port = z.coerce.number().int().min(0).max(65535);
const positiveInt = z.coerce.number().int().positive();
const bool = z
  .enum(['true', 'false', '1', '0', 'yes', 'no'])
  .transform((v) => v === 'true' || v === '1' || v === 'yes');
const optionalString = z
  .string()
  .optional()
  .transform((v) => (v === undefined || v.trim() === '' ? undefined : v.trim()));

const schema = z.object({
  GRPC_HOST: z.string().min(1).default('0.0.0.0'),
  GRPC_PORT: port.default(9191),
  HTTP_HOST: z.string().min(1).default('0.0.0.0'),
  HTTP_PORT: port.default(8081),
  DATABASE_URL: optionalString.pipe(
    z
      .string()
      .regex(/^postgres(ql)?:\/\//, 'must be a postgres:// or postgresql:// URL')
      .optional(),
  ),
  DATA_DIR: z.string().min(1).default('.data'),
  REDIS_URL: optionalString.pipe(
    z
      .string()
      .regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL')
      .optional(),
  ),
  REDIS_KEY_PREFIX: z.string().default(''),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  APPLY_ON_START: optionalString,
  MIGRATE_ON_START: bool.default(true),
  CHECK_TIMEOUT_MS: positiveInt.max(60_000).default(100),
  KEY_CACHE_TTL_SECONDS: positiveInt.default(300),
  KEY_CACHE_NEGATIVE_TTL_SECONDS: positiveInt.default(5),
  KEY_CACHE_MAX_ENTRIES: positiveInt.default(100_000),
  DIRECTORY_POLL_MS: positiveInt.default(1000),
  STRIPE_SECRET_KEY: optionalString,
  STRIPE_WEBHOOK_SECRET: optionalString,
  STRIPE_API_BASE: optionalString.pipe(z.string().url().optional()),
});

export interface Config {
  readonly grpcHost: string;
  readonly grpcPort: number;
  readonly httpHost: string;
  readonly httpPort: number;
  /** Unset: embedded PGlite under `dataDir`. */
  readonly databaseUrl: string | undefined;
  readonly dataDir: string;
  /** Unset: counters in process memory (not shared between replicas). */
  readonly redisUrl: string | undefined;
  readonly redisKeyPrefix: string;
  readonly logLevel: string;
  /** A tenants YAML applied at start; defaults to the demo tenants when the database is embedded. */
  readonly applyOnStart: string | undefined;
  readonly migrateOnStart: boolean;
  readonly checkTimeoutMs: number;
  readonly keyCacheTtlMs: number;
  readonly keyCacheNegativeTtlMs: number;
  readonly keyCacheMaxEntries: number;
  readonly directoryPollMs: number;
  readonly stripeSecretKey: string | undefined;
  readonly stripeWebhookSecret: string | undefined;
  readonly stripeApiBase: string | undefined;
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
  const config: Config = {
    grpcHost: e.GRPC_HOST,
    grpcPort: e.GRPC_PORT,
    httpHost: e.HTTP_HOST,
    httpPort: e.HTTP_PORT,
    databaseUrl: e.DATABASE_URL,
    dataDir: e.DATA_DIR,
    redisUrl: e.REDIS_URL,
    redisKeyPrefix: e.REDIS_KEY_PREFIX,
    logLevel: e.LOG_LEVEL,
    applyOnStart:
      e.APPLY_ON_START ?? (e.DATABASE_URL === undefined ? DEMO_TENANTS_FILE : undefined),
    migrateOnStart: e.MIGRATE_ON_START,
    checkTimeoutMs: e.CHECK_TIMEOUT_MS,
    keyCacheTtlMs: e.KEY_CACHE_TTL_SECONDS * 1000,
    keyCacheNegativeTtlMs: e.KEY_CACHE_NEGATIVE_TTL_SECONDS * 1000,
    keyCacheMaxEntries: e.KEY_CACHE_MAX_ENTRIES,
    directoryPollMs: e.DIRECTORY_POLL_MS,
    stripeSecretKey: e.STRIPE_SECRET_KEY,
    stripeWebhookSecret: e.STRIPE_WEBHOOK_SECRET,
    stripeApiBase: e.STRIPE_API_BASE,
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
    redisUrl: maskUrl(c.redisUrl) ?? '(in-process memory)',
    stripeSecretKey: c.stripeSecretKey ? '***' : undefined,
    stripeWebhookSecret: c.stripeWebhookSecret ? '***' : undefined,
  };
}
