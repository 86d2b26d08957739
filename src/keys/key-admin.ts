// API key lifecycle for the `keys` command: create (the plaintext exists only in the return value, printed
// once), list (display prefixes, never hashes), revoke, rotate (the old key keeps working for a grace
// period: its revoked_at is set in the future, which the Check honours), expiry. Every change bumps the
// directory version (database triggers) and NOTIFYs, so every replica's key cache follows within moments.
import { randomBytes } from 'node:crypto';
import { and, asc, eq, sql } from 'drizzle-orm';
import { hashApiKey } from '../core/api-key.js';
import type { DatabaseHandle } from '../db/client.js';
import { apiKeys, tenants, type ApiKeyRow } from '../db/schema.js';
import { AppError } from '../errors.js';

/** Recognisable in logs, configs and secret scanners; the random part carries 256 bits. */
export const GENERATED_KEY_PREFIX = 'ul_live_';
/** The display prefix of a generated key: the fixed part and 8 random characters (48 of its 256 bits). */
const DISPLAY_RANDOM_CHARS = 8;

export interface GeneratedKey {
  readonly plaintext: string;
  readonly prefix: string;
}

export function generateKey(): GeneratedKey {
  const plaintext = `${GENERATED_KEY_PREFIX}${randomBytes(32).toString('base64url')}`;
  return { plaintext, prefix: plaintext.slice(0, GENERATED_KEY_PREFIX.length + DISPLAY_RANDOM_CHARS) };
}

export type KeyStatus = 'active' | 'expired' | 'revoked' | 'revoking';

/** What `keys list` shows: never the hash, never the plaintext. */
export interface KeyInfo {
  readonly id: string;
  readonly tenantId: string;
  readonly prefix: string;
  readonly name: string | null;
  readonly createdAt: Date;
  readonly expiresAt: Date | null;
  readonly revokedAt: Date | null;
  /** `revoking`: revoked at a future time (a rotation's grace period), still valid until then. */
  readonly status: KeyStatus;
}

export interface CreatedKey {
  readonly key: KeyInfo;
  /** Shown once; not stored anywhere. */
  readonly plaintext: string;
}

function statusOf(row: Pick<ApiKeyRow, 'expiresAt' | 'revokedAt'>, nowMs: number): KeyStatus {
  if (row.revokedAt !== null && row.revokedAt.getTime() <= nowMs) return 'revoked';
  if (row.expiresAt !== null && row.expiresAt.getTime() <= nowMs) return 'expired';
  if (row.revokedAt !== null) return 'revoking';
  return 'active';
}

function info(row: ApiKeyRow, nowMs: number): KeyInfo {
  return {
    id: row.id,
    tenantId: row.tenantId,
    prefix: row.keyPrefix,
    name: row.name,
    createdAt: row.createdAt,
    expiresAt: row.expiresAt,
    revokedAt: row.revokedAt,
    status: statusOf(row, nowMs),
  };
}

async function assertTenant(handle: DatabaseHandle, tenantId: string): Promise<void> {
  const found = await handle.db.select({ id: tenants.id }).from(tenants).where(eq(tenants.id, tenantId));
  if (found.length === 0) throw new AppError('NotFound', `tenant "${tenantId}" does not exist`, { context: { tenantId } });
}

export interface CreateKeyOptions {
  readonly tenantId: string;
  readonly name?: string;
  readonly expiresAt?: Date;
  readonly now?: () => number;
}

export async function createKey(handle: DatabaseHandle, o: CreateKeyOptions): Promise<CreatedKey> {
  const nowMs = (o.now ?? Date.now)();
  if (o.expiresAt && o.expiresAt.getTime() <= nowMs) throw new AppError('BAD_REQUEST', '--expires must be in the future');
  await assertTenant(handle, o.tenantId);
  const { plaintext, prefix } = generateKey();
  const [row] = await handle.db
    .insert(apiKeys)
    .values({
      keyHash: hashApiKey(plaintext),
      keyPrefix: prefix,
      tenantId: o.tenantId,
      name: o.name ?? null,
      expiresAt: o.expiresAt ?? null,
    })
    .returning();
  return { key: info(row!, nowMs), plaintext };
}

export async function listKeys(handle: DatabaseHandle, tenantId: string, now: () => number = Date.now): Promise<KeyInfo[]> {
  await assertTenant(handle, tenantId);
  const rows = await handle.db.select().from(apiKeys).where(eq(apiKeys.tenantId, tenantId)).orderBy(asc(apiKeys.createdAt), asc(apiKeys.id));
  const nowMs = now();
  return rows.map((r) => info(r, nowMs));
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A key by id, or by its display prefix (exact, as `keys list` prints it), optionally within one tenant. */
export async function findKey(handle: DatabaseHandle, ref: string, tenantId?: string): Promise<ApiKeyRow> {
  const byRef = UUID.test(ref) ? eq(apiKeys.id, ref) : eq(apiKeys.keyPrefix, ref);
  const rows = await handle.db
    .select()
    .from(apiKeys)
    .where(tenantId === undefined ? byRef : and(byRef, eq(apiKeys.tenantId, tenantId)));
  if (rows.length === 0) throw new AppError('NotFound', `no key matches "${ref}"${tenantId ? ` in tenant "${tenantId}"` : ''}`);
  if (rows.length > 1) {
    const ids = rows.map((r) => `${r.id} (tenant ${r.tenantId})`).join(', ');
    throw new AppError('BAD_REQUEST', `"${ref}" matches ${rows.length} keys: ${ids}; give the id, or --tenant`);
  }
  return rows[0]!;
}

/** Revokes now. A key already revoked earlier keeps its earlier time; a pending rotation is cut short. */
export async function revokeKey(
  handle: DatabaseHandle,
  ref: string,
  o: { tenantId?: string; now?: () => number } = {},
): Promise<KeyInfo> {
  const nowMs = (o.now ?? Date.now)();
  const row = await findKey(handle, ref, o.tenantId);
  const at = new Date(nowMs);
  const [updated] = await handle.db
    .update(apiKeys)
    .set({ revokedAt: sql`least(coalesce(${apiKeys.revokedAt}, 'infinity'::timestamptz), ${at.toISOString()}::timestamptz)` })
    .where(eq(apiKeys.id, row.id))
    .returning();
  return info(updated!, nowMs);
}

export interface RotatedKey extends CreatedKey {
  readonly old: KeyInfo;
}

/**
 * Issues a new key for the same tenant (same name) and schedules the old one's revocation `graceMs` from
 * now, in one transaction. Clients switch to the new key within the grace period.
 */
export async function rotateKey(
  handle: DatabaseHandle,
  ref: string,
  o: { graceMs: number; tenantId?: string; expiresAt?: Date; now?: () => number },
): Promise<RotatedKey> {
  const nowMs = (o.now ?? Date.now)();
  if (!Number.isFinite(o.graceMs) || o.graceMs < 0) throw new AppError('BAD_REQUEST', '--grace must be a duration >= 0');
  if (o.expiresAt && o.expiresAt.getTime() <= nowMs) throw new AppError('BAD_REQUEST', '--expires must be in the future');
  const target = await findKey(handle, ref, o.tenantId);
  if (statusOf(target, nowMs) === 'revoked' || statusOf(target, nowMs) === 'expired') {
    throw new AppError('BAD_REQUEST', `key ${target.keyPrefix} (${target.id}) is ${statusOf(target, nowMs)}: create a new key instead`);
  }
  const { plaintext, prefix } = generateKey();
  const revokeAt = new Date(nowMs + o.graceMs);
  return handle.db.transaction(async (tx) => {
    const [old] = await tx
      .update(apiKeys)
      .set({ revokedAt: sql`least(coalesce(${apiKeys.revokedAt}, 'infinity'::timestamptz), ${revokeAt.toISOString()}::timestamptz)` })
      .where(eq(apiKeys.id, target.id))
      .returning();
    const [created] = await tx
      .insert(apiKeys)
      .values({
        keyHash: hashApiKey(plaintext),
        keyPrefix: prefix,
        tenantId: target.tenantId,
        name: target.name,
        expiresAt: o.expiresAt ?? null,
      })
      .returning();
    return { key: info(created!, nowMs), plaintext, old: info(old!, nowMs) };
  });
}

/** `90s`, `15m`, `24h`, `7d`, `500ms`, or a bare number of seconds. */
export function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(text.trim());
  if (!m) throw new AppError('BAD_REQUEST', `"${text}" is not a duration (e.g. 30s, 15m, 24h, 7d)`);
  const n = Number(m[1]);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] ?? 's'] ?? 1000;
  return Math.round(n * unit);
}

/** An ISO 8601 date-time with an explicit zone (so "when" never depends on the operator's machine). */
export function parseInstant(text: string, flag: string): Date {
  if (!/^\d{4}-\d{2}-\d{2}T.*(Z|[+-]\d{2}:?\d{2})$/.test(text.trim())) {
    throw new AppError('BAD_REQUEST', `${flag} must be an ISO 8601 time with a zone, e.g. 2027-01-01T00:00:00Z`);
  }
  const d = new Date(text.trim());
  if (Number.isNaN(d.getTime())) throw new AppError('BAD_REQUEST', `${flag}: "${text}" is not a valid time`);
  return d;
}
