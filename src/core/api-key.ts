import { createHash } from 'node:crypto';

// API keys are stored and looked up only as SHA-256 hashes. Looking a key up by its hash in a map or an
// index means no comparison ever runs over the secret itself, so nothing leaks through timing.

export function hashApiKey(plaintext: string): string {
  return createHash('sha256').update(plaintext, 'utf8').digest('hex');
}

/**
 * A short display prefix that identifies a key to a person without revealing it: at most 10 characters
 * and never more than a third of the key.
 */
export function displayPrefix(plaintext: string): string {
  const n = Math.min(10, Math.floor(plaintext.length / 3));
  return plaintext.slice(0, n);
}
