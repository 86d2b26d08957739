import { hash } from 'node:crypto';

// API keys are stored and looked up only as SHA-256 hashes. Looking a key up by its hash in a map or an
// index means no comparison ever runs over the secret itself, so nothing leaks through timing.

// Hashed on every Check: the one-shot `crypto.hash` (Node 20.12+) costs about a quarter of a
// createHash().update().digest() chain, which builds a Hash stream object per call.
export function hashApiKey(plaintext: string): string {
  return hash('sha256', plaintext, 'hex');
}

/**
 * A short display prefix that identifies a key to a person without revealing it: at most 10 characters
 * and never more than a third of the key.
 */
export function displayPrefix(plaintext: string): string {
  const n = Math.min(10, Math.floor(plaintext.length / 3));
  return plaintext.slice(0, n);
}
