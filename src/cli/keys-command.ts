// `usage-limiter keys ...` and `usage-limiter alerts secret ...`: thin argument parsing and printing over
// src/keys/key-admin.ts. A new key's plaintext is the only thing written to stdout (so scripts can capture
// it); everything a person reads goes to stderr.
import { parseArgs } from 'node:util';
import { tenantWebhookSecret } from '../alerts/webhook.js';
import { eq } from 'drizzle-orm';
import type { DatabaseHandle } from '../db/client.js';
import { tenants } from '../db/schema.js';
import { AppError } from '../errors.js';
import { createKey, listKeys, parseDuration, parseInstant, revokeKey, rotateKey, type KeyInfo } from '../keys/key-admin.js';

export { KEYS_USAGE } from './keys-usage.js';

export interface KeysIo {
  readonly out: (text: string) => void;
  readonly err: (text: string) => void;
  readonly now?: () => number;
}

const iso = (d: Date | null) => (d === null ? '-' : d.toISOString());

function statusText(k: KeyInfo): string {
  if (k.status === 'revoking') return `valid until ${iso(k.revokedAt)}`;
  if (k.status === 'revoked') return `revoked ${iso(k.revokedAt)}`;
  if (k.status === 'expired') return `expired ${iso(k.expiresAt)}`;
  return 'active';
}

export function formatKeyTable(keys: readonly KeyInfo[]): string {
  const rows = [
    ['ID', 'PREFIX', 'NAME', 'CREATED', 'EXPIRES', 'STATUS'],
    ...keys.map((k) => [k.id, k.prefix, k.name ?? '-', iso(k.createdAt), iso(k.expiresAt), statusText(k)]),
  ];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}

function publicView(k: KeyInfo) {
  return {
    id: k.id,
    tenantId: k.tenantId,
    prefix: k.prefix,
    name: k.name,
    createdAt: iso(k.createdAt),
    expiresAt: k.expiresAt && iso(k.expiresAt),
    revokedAt: k.revokedAt && iso(k.revokedAt),
    status: k.status,
  };
}

function required(value: string | undefined, flag: string): string {
  if (value === undefined || value.trim() === '') throw new AppError('BAD_REQUEST', `${flag} is required`);
  return value.trim();
}

export async function keysCommand(args: readonly string[], openDb: () => Promise<DatabaseHandle>, io: KeysIo): Promise<number> {
  const [sub, ...rest] = args;
  const { values, positionals } = parseArgs({
    args: rest as string[],
    options: {
      tenant: { type: 'string' },
      name: { type: 'string' },
      expires: { type: 'string' },
      grace: { type: 'string' },
      json: { type: 'boolean', default: false },
    },
    allowPositionals: true,
    strict: true,
  });
  const now = io.now;
  const expiresAt = values.expires === undefined ? undefined : parseInstant(values.expires, '--expires');
  const db = await openDb();
  try {
    switch (sub) {
      case 'create': {
        const { key, plaintext } = await createKey(db, { tenantId: required(values.tenant, '--tenant'), name: values.name, expiresAt, now });
        io.err(`Created key ${key.prefix}… (id ${key.id}) for tenant ${key.tenantId}${key.expiresAt ? `, expires ${iso(key.expiresAt)}` : ''}.`);
        io.err('It is shown only this once: store it now.');
        io.out(plaintext);
        return 0;
      }
      case 'list': {
        const keys = await listKeys(db, required(values.tenant, '--tenant'), now);
        io.out(values.json ? JSON.stringify(keys.map(publicView), null, 2) : formatKeyTable(keys));
        return 0;
      }
      case 'revoke': {
        const key = await revokeKey(db, required(positionals[0], '<prefix|id>'), { tenantId: values.tenant, now });
        io.err(`Revoked key ${key.prefix} (id ${key.id}, tenant ${key.tenantId}) at ${iso(key.revokedAt)}.`);
        return 0;
      }
      case 'rotate': {
        const graceMs = parseDuration(values.grace ?? '24h');
        const r = await rotateKey(db, required(positionals[0], '<prefix|id>'), { graceMs, tenantId: values.tenant, expiresAt, now });
        io.err(`Old key ${r.old.prefix} (id ${r.old.id}) stays valid until ${iso(r.old.revokedAt)}.`);
        io.err(`New key ${r.key.prefix}… (id ${r.key.id}) for tenant ${r.key.tenantId}. It is shown only this once: store it now.`);
        io.out(r.plaintext);
        return 0;
      }
      default:
        throw new AppError('BAD_REQUEST', `unknown keys command "${sub ?? ''}"; one of: create, list, revoke, rotate`);
    }
  } finally {
    await db.close();
  }
}

/**
 * `alerts secret --tenant T`: derived from ALERT_WEBHOOK_SECRET, so nothing is stored.
 * `alerts webhook --tenant T --url U | --clear`: the tenant's own webhook (tenants.alert_webhook_url).
 */
export async function alertsCommand(
  args: readonly string[],
  globalSecret: string | undefined,
  openDb: () => Promise<DatabaseHandle>,
  io: KeysIo,
): Promise<number> {
  const [sub, ...rest] = args;
  const { values } = parseArgs({
    args: rest as string[],
    options: { tenant: { type: 'string' }, url: { type: 'string' }, clear: { type: 'boolean', default: false } },
    strict: true,
  });
  const tenantId = required(values.tenant, '--tenant');
  if (sub === 'secret') {
    if (!globalSecret) throw new AppError('BAD_REQUEST', 'ALERT_WEBHOOK_SECRET is not set: alerts are not signed or sent');
    io.out(tenantWebhookSecret(globalSecret, tenantId));
    return 0;
  }
  if (sub !== 'webhook') throw new AppError('BAD_REQUEST', `unknown alerts command "${sub ?? ''}"; one of: secret, webhook`);
  if ((values.url === undefined) === (values.clear !== true)) throw new AppError('BAD_REQUEST', 'give either --url URL or --clear');
  let url: string | null = null;
  if (values.url !== undefined) {
    const parsed = URL.canParse(values.url) ? new URL(values.url) : null;
    if (parsed === null || (parsed.protocol !== 'https:' && parsed.protocol !== 'http:')) {
      throw new AppError('BAD_REQUEST', '--url must be an http:// or https:// URL');
    }
    url = parsed.toString();
  }
  const db = await openDb();
  try {
    const updated = await db.db.update(tenants).set({ alertWebhookUrl: url }).where(eq(tenants.id, tenantId)).returning({ id: tenants.id });
    if (updated.length === 0) throw new AppError('NotFound', `tenant "${tenantId}" does not exist`);
  } finally {
    await db.close();
  }
  io.err(url === null ? `Tenant ${tenantId} has no alert webhook of its own now.` : `Alerts of tenant ${tenantId} now also go to ${url}.`);
  if (url !== null && !globalSecret) io.err('Note: ALERT_WEBHOOK_SECRET is not set, so no webhook is sent until it is.');
  return 0;
}
